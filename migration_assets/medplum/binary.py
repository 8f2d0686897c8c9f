"""Files (and BLOBs of the legacy database) to Medplum Binary resources, streamed.

`POST /fhir/R4/Binary` with the file's own Content-Type and its raw bytes as the body answers 201 with
the Binary (its id). There is no conditional create for Binary and Binary cannot be searched, so whether
a file is already in Medplum is decided on our side (ledger/files.py keeps content hash -> Binary id).

A file is never held whole in memory: it is hashed in one pass of CHUNK_BYTES reads, and uploaded
from a generator of chunks (httpx sends an iterator body with chunked transfer encoding). A retried
upload reopens the file (asks `chunks` for a new iterator).
"""

import base64
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from migration_assets.medplum.client import MedplumClient
from migration_assets.medplum.errors import MedplumError

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileFacts:
    """What FHIR's Attachment says of a file, and the key the books find its upload by."""

    size: int
    sha1_base64: str  # Attachment.hash: the SHA-1 of the bytes, base64 (FHIR R4)
    sha256_hex: str  # the content key of the books (SHA-1 alone is not collision-safe)


def file_facts(path: Path) -> FileFacts:
    """Size and hashes of a file, read once in chunks."""
    return facts_of(file_chunks(path))


def facts_of(chunks: Iterable[bytes]) -> FileFacts:
    """Size and hashes of the bytes `chunks` yields, one chunk at a time."""
    sha1, sha256, size = hashlib.sha1(), hashlib.sha256(), 0
    for chunk in chunks:
        sha1.update(chunk)
        sha256.update(chunk)
        size += len(chunk)
    return FileFacts(size, base64.b64encode(sha1.digest()).decode("ascii"), sha256.hexdigest())


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def upload_binary(client: MedplumClient, chunks: Callable[[], Iterator[bytes]], content_type: str, name: str) -> str:
    """POST the bytes `chunks()` yields as a Binary of `content_type`, streamed; the new Binary's id.
    Retried, paced and waited for on the FHIR quota as every request of the client is (each retry sends
    the bytes again from their start); a refusal is a MedplumError naming `name` (never the content)."""
    try:
        binary_id = client.create_binary(chunks, content_type).get("id")
    except MedplumError as exc:
        raise MedplumError(f"POST Binary for {name}: {exc}") from exc
    if not isinstance(binary_id, str) or not binary_id:
        raise MedplumError(f"POST Binary answered without an id ({name})")
    return binary_id
