"""Legacy files (scanned letters, consents, lab PDFs, images) as FHIR Attachments.

An element writes an attachment whose `url` is `LEGACY_FILE_URL_PREFIX + <path of the file>` with the
file's `contentType`, `size` and `hash` (SHA-1, base64, as FHIR defines it). The loader uploads the
file to a Binary (once per content, pipeline/attachments.py) and writes `Binary/<id>` in its place
just before sending: the content hash of the row covers the path, size and SHA-1, so an unchanged file
sends nothing again, and a changed one sends its resource once more with the new Binary.

`file_facts_frame` gives an element what it needs to write, and quarantine on, each file.
"""

from collections.abc import Iterable
from pathlib import Path

import polars as pl

from migration_assets import config
from migration_assets.medplum.binary import file_facts

LEGACY_FILE_URL_PREFIX = "urn:legacy-file:"
# The default limits on a legacy file (MAX_FILE_BYTES and ALLOWED_FILE_TYPES set the clinic's own):
# elements quarantine by them, and the uploader refuses by them.
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
DEFAULT_ALLOWED_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/tiff", "text/plain"})


def file_limits() -> tuple[int, frozenset[str]]:
    """The largest file and the content types allowed, as configured."""
    return config.max_file_bytes() or DEFAULT_MAX_FILE_BYTES, config.allowed_file_types() or DEFAULT_ALLOWED_TYPES


def resolved_path(name: str) -> str:
    """A file path of the legacy table as a path on this machine: absolute as given, relative ones
    under LEGACY_FILES_DIR (the legacy system's document folder) when it is set."""
    folder = config.legacy_files_dir()
    return name if Path(name).is_absolute() or folder is None else str(Path(folder) / name)


def file_facts_frame(paths: Iterable[str | None]) -> pl.DataFrame:
    """One row per path: `file_exists`, `file_size` and `file_sha1` (base64); null facts for a
    missing path or file. Each file is read once, in chunks."""
    rows: list[tuple[str | None, bool, int | None, str | None]] = []
    for name in paths:
        path = Path(name) if name else None
        if path is not None and path.is_file():
            facts = file_facts(path)
            rows.append((name, True, facts.size, facts.sha1_base64))
        else:
            rows.append((name, False, None, None))
    return pl.DataFrame(
        rows,
        schema={"file_path": pl.String, "file_exists": pl.Boolean, "file_size": pl.Int64, "file_sha1": pl.String},
        orient="row",
    )
