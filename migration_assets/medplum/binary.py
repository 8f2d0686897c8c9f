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
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from migration_assets.medplum.client import MedplumClient
from migration_assets.medplum.errors import MedplumError

log = logging.getLogger(__name__)

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
    Retries a lost connection, a 5xx and a 429 (each retry sends the bytes again from their start); any
    other refusal is a MedplumError naming the status and `name` (never the content)."""
    url = client.fhir_base + "Binary"
    problem = ""
    for attempt in range(1, client.retry.max_attempts + 1):
        token = client.bearer()
        try:
            response = client.http.post(
                url,
                content=chunks(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            )
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 201:
                binary_id = response.json().get("id")
                if not isinstance(binary_id, str) or not binary_id:
                    raise MedplumError(f"POST Binary answered 201 without an id ({name})")
                return binary_id
            if response.status_code == 401:
                client.invalidate_token(token)
            elif response.status_code != 429 and response.status_code < 500:
                raise MedplumError(f"POST Binary answered {response.status_code} for {name}: {response.text[:300]}")
            problem = f"{response.status_code}"
        if attempt < client.retry.max_attempts:
            delay = client.retry.backoff(attempt)
            log.warning("POST Binary failed (%s); retry %d in %.1fs", problem, attempt, delay)
            time.sleep(delay)
    raise MedplumError(f"POST Binary gave up after {client.retry.max_attempts} attempts: {problem}")
