"""The books of uploaded files: which file content (SHA-256) is in which Binary of a target.

Binary has no conditional create and cannot be searched (MEDPLUM_FACTS.md), so a file is known to be
in Medplum only because these books say so. `FileUploader.upload` records a Binary here right after
its upload and before anything references it: a run killed between the upload and the
DocumentReference leaves the Binary in the books, and the next run reuses it instead of uploading the
file twice. A rerun uploads nothing; a changed file has another hash and is uploaded once more.
"""

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from migration_assets.elements.files import DEFAULT_ALLOWED_TYPES, DEFAULT_MAX_FILE_BYTES
from migration_assets.ledger.manifest import engine_for
from migration_assets.medplum.binary import FileFacts, file_facts, upload_binary
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
    """Uploads each file at most once per target, with the limits the clinic allows."""

    def __init__(
        self,
        client: MedplumClient,
        books: UploadedFiles,
        *,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        allowed_types: Collection[str] = DEFAULT_ALLOWED_TYPES,
    ) -> None:
        self.client = client
        self.books = books
        self.max_bytes = max_bytes
        self.allowed_types = frozenset(allowed_types)

    def upload(self, path: Path, content_type: str) -> FileOutcome:
        if not path.is_file():
            return FileOutcome(None, None, False, "missing_file", "the file named in the row is not on disk")
        if content_type not in self.allowed_types:
            return FileOutcome(
                None,
                None,
                False,
                "disallowed_content_type",
                f"content type {content_type} is not one the clinic allows",
            )
        size = path.stat().st_size
        if size > self.max_bytes:
            return FileOutcome(
                None, None, False, "file_too_large", f"file of {size} bytes is over the limit of {self.max_bytes} bytes"
            )
        facts = file_facts(path)
        known = self.books.binary_for(facts.sha256_hex)
        if known is not None:
            return FileOutcome(known, facts, False)
        binary_id = upload_binary(self.client, path, content_type)
        # Recorded before anything references it: see the module's docstring.
        self.books.record(facts, binary_id, content_type)
        return FileOutcome(binary_id, facts, True)
