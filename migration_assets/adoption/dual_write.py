"""Dual-write reconciliation: legacy and Medplum compared unit by unit (or on a sample), field by field
over the fields the mapping writes; discrepancies as JSON and CSV. A document's attachment is compared on
its contentType, size and hash (SHA-1 of the bytes): the legacy side names a file or BLOB where Medplum
names the Binary holding the bytes."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.elements.fhir_json import json_leaves
from migration_assets.elements.files import is_legacy_content
from migration_assets.medplum import MedplumClient
from migration_assets.phases import DualWriteSample
from migration_assets.verify.census import find_by_identifiers, take_census
from migration_assets.verify.reconcile import target_identifiers

IGNORED_FIELDS = ("id", "meta")
DISCREPANCY_KINDS = ("missing_in_medplum", "missing_in_legacy", "duplicated_in_medplum", "stale_in_medplum", "differs")
DISCREPANCY_SCHEMA = {
    "resource_type": pl.String,
    "identifier_value": pl.String,
    "kind": pl.String,
    "field": pl.String,
    "legacy_value": pl.String,
    "medplum_value": pl.String,
}
_VALUE_LIMIT = 200


@dataclass
class DualWriteReport:
    element: str
    eligible: int  # legacy units expected in Medplum
    quarantined: int  # legacy units not expected (quarantined in the frame or at load time)
    compared: int  # legacy units compared (all eligible, or the sample)
    sample: DualWriteSample
    discrepancies: pl.DataFrame  # DISCREPANCY_SCHEMA, values included: evidence files only
    censuses: dict[tuple[str, str], pl.DataFrame] | None = None  # whole comparisons only

    @property
    def counts(self) -> dict[str, int]:
        found = dict(self.discrepancies.group_by("kind").len().iter_rows())
        return {kind: int(found.get(kind, 0)) for kind in DISCREPANCY_KINDS}

    @property
    def units_with_discrepancies(self) -> int:
        return (
            self.discrepancies.select("resource_type", "identifier_value").n_unique()
            if self.discrepancies.height
            else 0
        )

    @property
    def passed(self) -> bool:
        return self.discrepancies.is_empty()

    def summary(self) -> pl.DataFrame:
        """Counts per kind and field (no values): the table the UI shows."""
        return (
            self.discrepancies.group_by("resource_type", "kind", "field")
            .agg(units=pl.len(), examples=pl.col("identifier_value").head(5).str.join(", "))
            .sort("units", descending=True)
        )


def compare_stores(
    client: MedplumClient,
    element_name: str,
    frame: pl.DataFrame,
    units: pl.DataFrame,
    sample: DualWriteSample | None = None,
    look_for_extras: bool = True,
) -> DualWriteReport:
    """The legacy store (as FHIR built from its rows) against Medplum, record by record and field by
    field on the fields the mapping writes (ignoring id and meta; references compared by the resource
    they point at). With `sample.size`, only that many legacy units, drawn with `sample.seed`, are
    compared and resources only in Medplum are not looked for (nor when `look_for_extras` is False:
    `frame` is then a part of the element, e.g. one patient's units)."""
    sample = sample or DualWriteSample()
    load_quarantined = units.filter(pl.col("disposition") == "quarantined").select("source_table", "unit_key")
    in_frame = frame.filter(pl.col("quarantine_rule").is_null())
    eligible = in_frame.join(load_quarantined, on=["source_table", "unit_key"], how="anti")
    stale_candidates = frame.join(
        eligible.select("source_table", "unit_key"), on=["source_table", "unit_key"], how="anti"
    )
    chosen = eligible
    if sample.size is not None and sample.size < eligible.height:
        keys = sorted(eligible.select(pl.format("{}|{}", "resource_type", "identifier_value")).to_series().to_list())
        picked = set(random.Random(sample.seed).sample(keys, sample.size))
        chosen = eligible.filter(pl.format("{}|{}", "resource_type", "identifier_value").is_in(list(picked)))
    whole = chosen.height == eligible.height and look_for_extras
    censuses = None
    read_whole: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    if whole:
        # One read of everything: the census (identifiers, ids, references) for the checks below, and
        # the whole resources kept on the side for the field-by-field comparison.
        def keep(resource_type: str, system: str, value: str, resource: dict[str, Any]) -> None:
            read_whole.setdefault((resource_type, system, value), []).append(resource)

        censuses = take_census(client, frame, visit=keep)
    found = found_resources(client, chosen, read_whole if whole else None)
    target_ids = target_identifiers(client, _expectations(chosen))
    problems: list[dict[str, Any]] = []
    mapped_fields = _mapped_fields(chosen)
    for row in chosen.iter_rows(named=True):
        key = (row["resource_type"], row["identifier_system"], row["identifier_value"])
        copies = found.get(key, [])
        if not copies:
            problems.append(_problem(row, "missing_in_medplum", "", None, None))
            continue
        if len(copies) > 1:
            problems.append(_problem(row, "duplicated_in_medplum", "", None, str(len(copies))))
            continue
        built = _with_resolved_references(json.loads(row["resource"]), row["references"], target_ids)
        medplum_copy: dict[str, Any] = copies[0]
        fields = mapped_fields[row["resource_type"]]
        legacy_leaves = json_leaves({k: v for k, v in built.items() if k in fields})
        medplum_leaves = json_leaves({k: v for k, v in medplum_copy.items() if k in fields})
        for path in sorted(set(legacy_leaves) | set(medplum_leaves)):
            legacy_value, medplum_value = legacy_leaves.get(path), medplum_leaves.get(path)
            if legacy_value != medplum_value and not _same_bytes_elsewhere(legacy_value, medplum_value):
                problems.append(_problem(row, "differs", path, legacy_value, medplum_value))
    if censuses is not None:
        known = frame.select("resource_type", "identifier_system", "identifier_value")
        stale = {
            (r["resource_type"], r["identifier_system"], r["identifier_value"]): r
            for r in stale_candidates.iter_rows(named=True)
        }
        for (resource_type, system), census in censuses.items():
            legacy_values = set(
                known.filter((pl.col("resource_type") == resource_type) & (pl.col("identifier_system") == system))[
                    "identifier_value"
                ].to_list()
            )
            for value in sorted(set(census["identifier_value"].to_list())):
                stale_row = stale.get((resource_type, system, value))
                if stale_row is not None:
                    problems.append(
                        _problem(stale_row, "stale_in_medplum", "", stale_row["quarantine_rule"] or "quarantined", None)
                    )
                elif value not in legacy_values:
                    problems.append(
                        {
                            "resource_type": resource_type,
                            "identifier_value": value,
                            "kind": "missing_in_legacy",
                            "field": "",
                            "legacy_value": None,
                            "medplum_value": None,
                        }
                    )
    return DualWriteReport(
        element=element_name,
        eligible=eligible.height,
        quarantined=frame.height - eligible.height,
        compared=chosen.height,
        sample=sample if not whole else DualWriteSample(None, sample.seed),
        discrepancies=pl.DataFrame(problems, schema=DISCREPANCY_SCHEMA),
        censuses=censuses,
    )


def _same_bytes_elsewhere(legacy: Any, medplum: Any) -> bool:
    """An attachment url naming a legacy file or BLOB against a Medplum Binary: where the bytes live
    differs by design; whether they are the same bytes is compared on contentType, size and hash."""
    return is_legacy_content(legacy) and isinstance(medplum, str) and medplum.startswith("Binary/")


ATTACHMENT_FIELDS = ("contentType", "size", "hash", "url")


def attachments(resource: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The attachments of a resource (a DocumentReference's content), each with ATTACHMENT_FIELDS: what
    chart review shows of a document beside its legacy row."""
    found = []
    for content in (resource or {}).get("content") or []:
        attachment = content.get("attachment") if isinstance(content, Mapping) else None
        if isinstance(attachment, Mapping):
            found.append({name: attachment.get(name) for name in ATTACHMENT_FIELDS})
    return found


def _problem(row: Mapping[str, Any], kind: str, path: str, legacy: Any, medplum: Any) -> dict[str, Any]:
    return {
        "resource_type": row["resource_type"],
        "identifier_value": row["identifier_value"],
        "kind": kind,
        "field": path,
        "legacy_value": _text(legacy),
        "medplum_value": _text(medplum),
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _VALUE_LIMIT else text[: _VALUE_LIMIT - 1] + "…"


def found_resources(
    client: MedplumClient, chosen: pl.DataFrame, already_read: dict[tuple[str, str, str], list[dict[str, Any]]] | None
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """The Medplum resources carrying each chosen identifier: `already_read` (while taking the census),
    else searched in chunks."""
    if already_read is not None:
        return already_read
    found: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for (resource_type, system), group in chosen.group_by("resource_type", "identifier_system"):
        values = group["identifier_value"].to_list()
        for value, resource in find_by_identifiers(client, str(resource_type), str(system), values):
            found.setdefault((str(resource_type), str(system), value), []).append(resource)
    return found


def _expectations(frame: pl.DataFrame) -> pl.DataFrame:
    schema = {
        "target_resource_type": pl.String,
        "target_identifier_system": pl.String,
        "target_identifier_value": pl.String,
    }
    refs = frame.select(pl.col("references").explode()).filter(pl.col("references").is_not_null())
    if refs.is_empty():
        return pl.DataFrame(schema=schema)
    return (
        refs.unnest("references")
        .select(
            target_resource_type="resource_type",
            target_identifier_system="identifier_system",
            target_identifier_value="identifier_value",
        )
        .unique()
    )


def _mapped_fields(frame: pl.DataFrame) -> dict[str, set[str]]:
    """Per resource type, the top-level fields the mapping writes in any row (minus id and meta)."""
    fields: dict[str, set[str]] = {}
    for resource_type, text in frame.select("resource_type", "resource").iter_rows():
        fields.setdefault(resource_type, set()).update(json.loads(text))
    return {rt: names - set(IGNORED_FIELDS) for rt, names in fields.items()}


def _with_resolved_references(
    resource: dict[str, Any],
    references: Sequence[Mapping[str, Any]] | None,
    target_ids: Mapping[tuple[str, str, str], str],
) -> dict[str, Any]:
    """The built resource with each conditional (or urn:uuid) reference replaced by the `Type/id` its
    target has in Medplum, as the server stores it; an unresolvable one names what was expected."""
    for ref in references or []:
        if ref is None or ref.get("path") is None:
            continue
        key = (ref["resource_type"], ref["identifier_system"], ref["identifier_value"])
        value = target_ids.get(key) or f"{key[0]} with identifier {key[2]} (not in Medplum)"
        node: Any = resource
        parts = ref["path"].split(".")
        for part in parts:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            elif isinstance(node, dict):
                node = node.get(part)
            if node is None:
                break
        if isinstance(node, dict) and "reference" in node:
            node["reference"] = value
    return resource


def write_discrepancies(report: DualWriteReport, directory: Path) -> tuple[Path, Path]:
    """`dual_write.json` (counts and every discrepancy) and `dual_write.csv` (one row each), readable by
    their owner only: they hold legacy and Medplum values, i.e. patient data."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = directory / "dual_write.json", directory / "dual_write.csv"
    payload = {
        "element": report.element,
        "generated_at": _now().isoformat(timespec="seconds"),
        "passed": report.passed,
        "eligible": report.eligible,
        "compared": report.compared,
        "quarantined_not_compared": report.quarantined,
        "sample": {"size": report.sample.size, "seed": report.sample.seed},
        "counts": report.counts,
        "discrepancies": report.discrepancies.to_dicts(),
    }
    for path in (json_path, csv_path):
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    report.discrepancies.write_csv(csv_path)
    return json_path, csv_path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
