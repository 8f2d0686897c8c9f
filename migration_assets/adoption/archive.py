"""Deprecation: the element's legacy tables frozen as a read-only, checksummed Parquet export."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_assets.elements.base import DataElement, read_element_tables
from migration_assets.phases import ElementPhase
from migration_assets.source import redact_url

CHECKSUM_FILE = "SHA256SUMS"
EXPORT_DESCRIPTION = "export.json"


@dataclass(frozen=True)
class LegacyArchive:
    directory: Path
    checksums: dict[str, str]  # file name -> SHA-256
    rows: dict[str, int]  # table -> rows


def export_legacy_tables(
    url: str,
    element: DataElement,
    base_dir: Path,
    phase: ElementPhase,
    phases_version: str,
    final_verification: Mapping[str, Any],
) -> LegacyArchive:
    """Every legacy table of the element as Parquet in a new folder, with `export.json` (what, when,
    under which configuration, the final verification, kept until when) and SHA256SUMS (sha256sum
    format, every other file); then files and folder are made read-only."""
    exported_at = _now()
    directory = base_dir / element.name / exported_at.strftime("%Y%m%dT%H%M%S%fZ")
    directory.mkdir(parents=True)
    rows = {}
    for table, data in read_element_tables(element, url).items():
        data.write_parquet(directory / f"{table}.parquet")
        rows[table] = data.height
    keep_from = max(phase.since or exported_at.date(), exported_at.date())
    description = {
        "element": element.name,
        "source": redact_url(url),
        "tables": rows,
        "exported_at": exported_at.isoformat(timespec="seconds"),
        "phase": phase.phase,
        "phase_since": phase.since.isoformat() if phase.since else None,
        "phases_version": phases_version,
        "mapping_version": element.mapping_version,
        "keep_until": (keep_from + dt.timedelta(days=phase.verification_period_days)).isoformat(),
        "final_verification": dict(final_verification),
    }
    (directory / EXPORT_DESCRIPTION).write_text(json.dumps(description, indent=2, default=str))
    checksums = {path.name: _sha256(path) for path in sorted(directory.iterdir())}
    (directory / CHECKSUM_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in checksums.items()))
    for path in directory.iterdir():
        path.chmod(0o444)
    directory.chmod(0o555)
    return LegacyArchive(directory, checksums, rows)


def verify_archive(directory: Path) -> list[str]:
    """What is wrong with a frozen export: a file changed, missing or unlisted, or writable."""
    problems = []
    listed: dict[str, str] = {}
    sums = directory / CHECKSUM_FILE
    if not sums.is_file():
        return [f"{CHECKSUM_FILE} missing"]
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name, digest in listed.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif _sha256(path) != digest:
            problems.append(f"{name} does not match its checksum")
    for path in directory.iterdir():
        if path.name not in listed and path.name != CHECKSUM_FILE:
            problems.append(f"{path.name} is not in {CHECKSUM_FILE}")
        if stat.S_IMODE(path.stat().st_mode) & 0o222:
            problems.append(f"{path.name} is writable")
    if stat.S_IMODE(directory.stat().st_mode) & 0o222:
        problems.append("the export folder is writable")
    return problems


def latest_archive(base_dir: Path, element: str) -> Path | None:
    folder = base_dir / element
    found = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return found[-1] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
