"""Files uploaded as Binaries right before the resources that attach them are sent.

An element writes an attachment of a legacy file with the url `urn:legacy-file:<path>`
(elements/files.py). For each row about to be sent, `with_uploaded_files` uploads each such file
through the FileUploader (once per content and target, ledger/files.py; the Binary is booked before
the resource is sent, so a run killed in between reuses it) and writes `Binary/<id>` in its place. The
row's content hash is left as the frame computed it (on the path, size and SHA-1), so a rerun sends
nothing. A file that changed since the frame was built (its SHA-1 no longer the one written), or that
the uploader refuses, stops the load with an error naming the row: the frame is stale and must be
rebuilt, and sending it would attach bytes the resource does not describe.
"""

import json
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.elements.files import LEGACY_FILE_URL_PREFIX, file_limits
from migration_assets.ledger.files import FileUploader, UploadedFiles
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum.client import MedplumClient
from migration_assets.medplum.errors import MedplumError


def uploader_for(client: MedplumClient, manifest: Manifest) -> FileUploader:
    """The uploader of this target, booking its uploads beside the manifest, with the clinic's limits
    (MAX_FILE_BYTES, ALLOWED_FILE_TYPES)."""
    max_bytes, allowed_types = file_limits()
    return FileUploader(
        client, UploadedFiles(manifest.engine, client.target.key), max_bytes=max_bytes, allowed_types=allowed_types
    )


def attaches_files(rows: pl.DataFrame) -> bool:
    return bool(rows.height) and bool(rows["resource"].str.contains(LEGACY_FILE_URL_PREFIX, literal=True).any())


def with_uploaded_files(rows: pl.DataFrame, uploader: FileUploader) -> pl.DataFrame:
    """`rows` with every legacy-file attachment url replaced by the Binary holding the file."""
    resources = []
    for source_key, text in zip(rows["unit_key"], rows["resource"], strict=True):
        if LEGACY_FILE_URL_PREFIX not in text:
            resources.append(text)
            continue
        resource = json.loads(text)
        for attachment in _attachments(resource):
            _upload(attachment, uploader, source_key)
        resources.append(json.dumps(resource, ensure_ascii=False, separators=(",", ":")))
    return rows.with_columns(resource=pl.Series(resources, dtype=pl.String))


def _attachments(value: Any) -> list[dict[str, Any]]:
    """Every object holding a legacy-file url, anywhere in the resource."""
    found = []
    if isinstance(value, dict):
        url = value.get("url")
        if isinstance(url, str) and url.startswith(LEGACY_FILE_URL_PREFIX):
            found.append(value)
        for member in value.values():
            found.extend(_attachments(member))
    elif isinstance(value, list):
        for item in value:
            found.extend(_attachments(item))
    return found


def _upload(attachment: dict[str, Any], uploader: FileUploader, source_key: str) -> None:
    path = Path(attachment["url"].removeprefix(LEGACY_FILE_URL_PREFIX))
    outcome = uploader.upload(path, str(attachment.get("contentType", "")))
    if outcome.binary_id is None or outcome.facts is None:
        raise MedplumError(
            f"unit {source_key}: its file was refused at load time ({outcome.refused_rule}: "
            f"{outcome.refused_reason}); rebuild the frame, which quarantines it"
        )
    if outcome.facts.sha1_base64 != attachment.get("hash") or outcome.facts.size != attachment.get("size"):
        raise MedplumError(f"unit {source_key}: its file changed since the frame was built; rebuild the frame")
    attachment["url"] = f"Binary/{outcome.binary_id}"
