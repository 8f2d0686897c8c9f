"""The books of uploaded files: which file content (SHA-256) is in which Binary of a target.

Binary has no conditional create and cannot be searched (MEDPLUM_FACTS.md), so a file is known to be
in Medplum only because these books say so. `FileUploader.upload` records a Binary here right after
its upload and before anything references it: a run killed between the upload and the
DocumentReference leaves the Binary in the books, and the next run reuses it instead of uploading the
file twice. A rerun uploads nothing; a changed file has another hash and is uploaded once more.

Beside them, the facts of every file read (`file_hashes`: path, size and modification time in ns ->
SHA-1 and SHA-256), so that a rerun reads no file whose path, size and modification time are unchanged
(a file's hash does not depend on the target: one cache for every target of the same books database).
A file refused here (gone since the frame was built, changed since, of a type not allowed, too large)
is an outcome with its rule and reason, which the loader records as that unit's quarantine.
"""

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from migration_assets.elements.files import DEFAULT_ALLOWED_TYPES, DEFAULT_MAX_FILE_BYTES, LegacyBlob, LegacyFile
from migration_assets.ledger.manifest import engine_for
from migration_assets.medplum.binary import FileFacts, upload_binary
from migration_assets.medplum.client import MedplumClient

metadata = sa.MetaData()

uploaded_files = sa.Table(
    "uploaded_files",
    metadata,
    sa.Column("target", sa.String(512), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("binary_id", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha1_base64", sa.String(28), nullable=False),
    sa.Column("content_type", sa.String(128), nullable=False),
    sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
)


file_hashes = sa.Table(
    "file_hashes",
    metadata,
    sa.Column("path", sa.String(4096), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("sha1_base64", sa.String(28), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
)


class FileHashes:
    """The facts of the files read, by path, size and modification time (elements/files.FactsCache)."""

    def __init__(self, url_or_engine: str | sa.Engine) -> None:
        self.engine = engine_for(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        metadata.create_all(self.engine)

    def get(self, path: str, size: int, mtime_ns: int) -> FileFacts | None:
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(file_hashes.c.sha1_base64, file_hashes.c.sha256).where(
                    file_hashes.c.path == path, file_hashes.c.size == size, file_hashes.c.mtime_ns == mtime_ns
                )
            ).one_or_none()
        return None if found is None else FileFacts(size, found.sha1_base64, found.sha256)

    def put(self, path: str, size: int, mtime_ns: int, facts: FileFacts) -> None:
        values = {"size": size, "mtime_ns": mtime_ns, "sha1_base64": facts.sha1_base64, "sha256": facts.sha256_hex}
        with self.engine.begin() as connection:
            updated = connection.execute(file_hashes.update().where(file_hashes.c.path == path).values(**values))
            if updated.rowcount == 0:
                try:
                    with connection.begin_nested():
                        connection.execute(file_hashes.insert().values(path=path, **values))
                except IntegrityError:  # another process hashed it meanwhile: its facts are as good
                    pass


class UploadedFiles:
    """The uploaded-files table of one target (a server and a project)."""

    def __init__(self, url_or_engine: str | sa.Engine, target: str = "") -> None:
        self.engine = engine_for(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.target = target
        metadata.create_all(self.engine)

    def binary_for(self, sha256: str) -> str | None:
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(uploaded_files.c.binary_id).where(
                    uploaded_files.c.target == self.target, uploaded_files.c.sha256 == sha256
                )
            ).scalar_one_or_none()
        return found

    def record(self, facts: FileFacts, binary_id: str, content_type: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                uploaded_files.insert().values(
                    target=self.target,
                    sha256=facts.sha256_hex,
                    binary_id=binary_id,
                    size=facts.size,
                    sha1_base64=facts.sha1_base64,
                    content_type=content_type,
                    uploaded_at=datetime.now(UTC),
                )
            )

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).select_from(uploaded_files).where(uploaded_files.c.target == self.target)
                ).scalar_one()
            )


@dataclass(frozen=True)
class FileOutcome:
    """What became of one file: its Binary (uploaded now or earlier), or the reason it was refused."""

    binary_id: str | None
    facts: FileFacts | None
    uploaded: bool
    refused_rule: str | None = None
    refused_reason: str | None = None


class FileUploader:
    """Uploads each file (or BLOB) at most once per target, with the limits the clinic allows."""

    def __init__(
        self,
        client: MedplumClient,
        books: UploadedFiles,
        *,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        allowed_types: Collection[str] = DEFAULT_ALLOWED_TYPES,
        hashes: FileHashes | None = None,
    ) -> None:
        self.client = client
        self.books = books
        self.max_bytes = max_bytes
        self.allowed_types = frozenset(allowed_types)
        self.hashes = hashes

    def upload(
        self, content: Path | LegacyFile | LegacyBlob, content_type: str, expected: FileFacts | None = None
    ) -> FileOutcome:
        """The Binary of `content` (a path is a LegacyFile), uploaded now unless the books hold its bytes;
        or why it was refused. With `expected` (the size and SHA-1 the frame wrote), bytes that differ
        are refused as `file_changed`: the resource would describe other bytes than its Binary holds."""
        content = LegacyFile(content) if isinstance(content, Path) else content
        if content_type not in self.allowed_types:
            return _refused("disallowed_content_type", f"content type {content_type} is not one the clinic allows")
        size = content.size()
        if size is None:
            return _refused("missing_file", content.gone_reason)
        if size > self.max_bytes:
            return _refused("file_too_large", f"file of {size} bytes is over the limit of {self.max_bytes} bytes")
        facts = content.facts(self.hashes)
        if facts is None:
            return _refused("missing_file", content.gone_reason)
        if expected is not None and (facts.size, facts.sha1_base64) != (expected.size, expected.sha1_base64):
            return _refused("file_changed", "the bytes changed since the frame was built; the next run loads them")
        known = self.books.binary_for(facts.sha256_hex)
        if known is not None:
            return FileOutcome(known, facts, False)
        binary_id = upload_binary(self.client, content.chunks, content_type, content.name)
        # Recorded before anything references it: see the module's docstring.
        self.books.record(facts, binary_id, content_type)
        return FileOutcome(binary_id, facts, True)


def _refused(rule: str, reason: str) -> FileOutcome:
    return FileOutcome(None, None, False, rule, reason)
