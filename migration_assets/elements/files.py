"""Legacy files (scanned letters, consents, lab PDFs, images) as FHIR Attachments, kept as files in a
folder or as BLOB columns of the legacy database.

An element writes an attachment whose `url` names where the bytes are, with their `contentType`, `size`
and `hash` (SHA-1, base64, as FHIR defines it):

* `LEGACY_FILE_URL_PREFIX + <path of the file>` for a file (`resolved_path`: a path the legacy table
  holds relative is under the document folder, `files_folder`);
* `LEGACY_BLOB_URL_PREFIX + <table>/<column>/<key column>/<key>` for a BLOB (`blob_url`), whose size and
  SHA-1 the source reader gives (source.py reads a binary column as `<column>_size`, `<column>_sha1`).

The loader uploads the bytes to a Binary (once per content, pipeline/attachments.py) and writes
`Binary/<id>` in the url's place just before sending: the content hash of the row covers the url, size
and SHA-1, so unchanged bytes send nothing again, and changed ones send their resource once more with
the new Binary.

`file_facts_frame` gives an element what it needs to write, and quarantine on, each file; with a facts
cache in use (`legacy_files`), a file whose path, size and modification time are unchanged is not read.
"""

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import polars as pl

from migration_assets import config
from migration_assets.medplum.binary import FileFacts, facts_of, file_chunks
from migration_assets.paths import DEFAULT_LEGACY_DB_URL
from migration_assets.source import blob_chunks, blob_size, parse_source_url

LEGACY_FILE_URL_PREFIX = "urn:legacy-file:"
LEGACY_BLOB_URL_PREFIX = "urn:legacy-blob:"
# The default limits on a legacy file (MAX_FILE_BYTES and ALLOWED_FILE_TYPES set the clinic's own):
# elements quarantine by them, and the uploader refuses by them.
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
DEFAULT_ALLOWED_TYPES = frozenset({"application/pdf", "image/png", "image/jpeg", "image/tiff", "text/plain"})


def file_limits() -> tuple[int, frozenset[str]]:
    """The largest file and the content types allowed, as configured."""
    return config.max_file_bytes() or DEFAULT_MAX_FILE_BYTES, config.allowed_file_types() or DEFAULT_ALLOWED_TYPES


class FactsCache(Protocol):
    """Facts of files by (path, size, modification time in ns): ledger/files.py keeps them."""

    def get(self, path: str, size: int, mtime_ns: int) -> FileFacts | None: ...

    def put(self, path: str, size: int, mtime_ns: int, facts: FileFacts) -> None: ...


@dataclass(frozen=True)
class _InUse:
    source_url: str | None = None
    cache: FactsCache | None = None


_IN_USE: ContextVar[_InUse | None] = ContextVar("legacy_files_in_use", default=None)


def _in_use() -> _InUse:
    return _IN_USE.get() or _InUse()


@contextmanager
def legacy_files(source_url: str | None, cache: FactsCache | None = None) -> Iterator[None]:
    """Within the block, legacy files and BLOBs are those of the legacy database at `source_url` (its
    document folder, its BLOB columns), and file facts are cached in `cache`. Outside any block:
    LEGACY_DB_URL (else the default sample) and no cache."""
    token = _IN_USE.set(_InUse(source_url, cache))
    try:
        yield
    finally:
        _IN_USE.reset(token)


def source_url() -> str:
    """The legacy database in use (see `legacy_files`)."""
    return _in_use().source_url or config.legacy_db_url() or DEFAULT_LEGACY_DB_URL


def default_files_dir(url: str) -> Path:
    """The document folder of a legacy database when LEGACY_FILES_DIR does not name one: beside a SQLite
    database (`<name>_files/`), inside a CSV or Parquet folder (`files/`), else one folder per database
    URL in the temporary folder (a server database has no folder of its own)."""
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        database = Path(location)
        return database.parent / f"{database.stem}_files"
    if kind in ("csv", "parquet", "folder"):
        return Path(location) / "files"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"legacy_files_{digest}"


def files_folder() -> Path:
    """The legacy system's document folder: LEGACY_FILES_DIR, else `default_files_dir` of the database
    in use."""
    folder = config.legacy_files_dir()
    return Path(folder) if folder else default_files_dir(source_url())


def resolved_path(name: str) -> str:
    """A file path of the legacy table as a path on this machine: absolute as given, relative ones under
    the document folder (`files_folder`)."""
    return name if Path(name).is_absolute() else str(files_folder() / name)


def cached_file_facts(path: Path, cache: FactsCache | None = None) -> FileFacts | None:
    """Size and hashes of a file (None when it is not a file), read only when the cache (`cache`, else
    the one in use) has no facts for its path, size and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    cache = cache or _in_use().cache
    key = os.path.abspath(path)
    known = cache.get(key, stat.st_size, stat.st_mtime_ns) if cache is not None else None
    if known is not None:
        return known
    facts = facts_of(file_chunks(path))
    if cache is not None:
        cache.put(key, stat.st_size, stat.st_mtime_ns, facts)
    return facts


def file_facts_frame(paths: Iterable[str | None]) -> pl.DataFrame:
    """One row per path: `file_exists`, `file_size` and `file_sha1` (base64); null facts for a
    missing path or file. Each file is read once, in chunks (not at all when the cache knows it)."""
    rows: list[tuple[str | None, bool, int | None, str | None]] = []
    for name in paths:
        facts = cached_file_facts(Path(name)) if name else None
        if facts is not None:
            rows.append((name, True, facts.size, facts.sha1_base64))
        else:
            rows.append((name, False, None, None))
    return pl.DataFrame(
        rows,
        schema={"file_path": pl.String, "file_exists": pl.Boolean, "file_size": pl.Int64, "file_sha1": pl.String},
        orient="row",
    )


def blob_url(table: str, column: str, key_column: str) -> pl.Expr:
    """The attachment url of the BLOB in `column` of the row whose `key_column` is the frame's
    `key_column`."""
    return pl.lit(f"{LEGACY_BLOB_URL_PREFIX}{table}/{column}/{key_column}/") + pl.col(key_column).cast(pl.String)


class LegacyFile:
    """A file of the document folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.gone_reason = "the file named in the row is not on disk"

    def size(self) -> int | None:
        return self.path.stat().st_size if self.path.is_file() else None

    def facts(self, cache: FactsCache | None = None) -> FileFacts | None:
        return cached_file_facts(self.path, cache)

    def chunks(self) -> Iterator[bytes]:
        return file_chunks(self.path)


class LegacyBlob:
    """A BLOB of the legacy database, read by its row's key, one chunk at a time."""

    def __init__(self, url: str, table: str, column: str, key_column: str, key: str) -> None:
        self.url, self.table, self.column, self.key_column, self.key = url, table, column, key_column, key
        self.name = f"{table}.{column} of {key}"
        self.gone_reason = f"the row's {column} is empty (NULL) or the row is gone from {table}"

    def _chunks(self) -> Iterator[bytes] | None:
        return blob_chunks(self.url, self.table, self.column, self.key_column, self.key)

    def size(self) -> int | None:
        return blob_size(self.url, self.table, self.column, self.key_column, self.key)

    def facts(self, cache: FactsCache | None = None) -> FileFacts | None:
        chunks = self._chunks()
        return None if chunks is None else facts_of(chunks)

    def chunks(self) -> Iterator[bytes]:
        chunks = self._chunks()
        if chunks is None:
            raise LookupError(f"{self.name}: {self.gone_reason}")
        return chunks


def legacy_content(url: str) -> LegacyFile | LegacyBlob | None:
    """The file or BLOB an attachment url names; None for any other url."""
    if url.startswith(LEGACY_FILE_URL_PREFIX):
        return LegacyFile(Path(url.removeprefix(LEGACY_FILE_URL_PREFIX)))
    if url.startswith(LEGACY_BLOB_URL_PREFIX):
        table, column, key_column, key = url.removeprefix(LEGACY_BLOB_URL_PREFIX).split("/", 3)
        return LegacyBlob(source_url(), table, column, key_column, key)
    return None


def is_legacy_content(url: object) -> bool:
    return isinstance(url, str) and url.startswith((LEGACY_FILE_URL_PREFIX, LEGACY_BLOB_URL_PREFIX))
