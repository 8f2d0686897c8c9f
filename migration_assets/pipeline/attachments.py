"""Files and BLOBs uploaded as Binaries right before the resources that attach them are sent.

An element writes an attachment of a legacy file with the url `urn:legacy-file:<path>`, of a BLOB with
`urn:legacy-blob:<table>/<column>/<key column>/<key>` (elements/files.py). For each row about to be sent,
`with_uploaded_files` uploads the bytes through the FileUploader (once per content and target,
ledger/files.py; the Binary is booked before the resource is sent, so a run killed in between reuses it)
and writes `Binary/<id>` in its place. The row's content hash is left as the frame computed it (on the
url, size and SHA-1), so a rerun sends nothing.

Bytes the uploader refuses at load time (gone since the frame was built, changed since, of a type not
allowed, too large) never stop the load: the row becomes a quarantined unit with the uploader's rule
and reason, and the books still balance. The next run builds the frame again and loads it if it can.
"""

import json
from typing import Any

import polars as pl

from migration_assets.elements.files import LEGACY_BLOB_URL_PREFIX, LEGACY_FILE_URL_PREFIX, file_limits, legacy_content
from migration_assets.ledger.files import FileHashes, FileUploader, UploadedFiles
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum.binary import FileFacts
from migration_assets.medplum.client import MedplumClient


def uploader_for(client: MedplumClient, manifest: Manifest) -> FileUploader:
    """The uploader of this target, booking its uploads beside the manifest, with the clinic's limits
    (MAX_FILE_BYTES, ALLOWED_FILE_TYPES)."""
    max_bytes, allowed_types = file_limits()
    return FileUploader(
        client,
        UploadedFiles(manifest.engine, client.target.key),
        max_bytes=max_bytes,
        allowed_types=allowed_types,
        hashes=FileHashes(manifest.engine),
    )


def attaches_files(rows: pl.DataFrame) -> bool:
    if not rows.height:
        return False
    resources = rows["resource"]
    return bool(
        (
            resources.str.contains(LEGACY_FILE_URL_PREFIX, literal=True)
            | resources.str.contains(LEGACY_BLOB_URL_PREFIX, literal=True)
        ).any()
    )


def with_uploaded_files(rows: pl.DataFrame, uploader: FileUploader) -> pl.DataFrame:
    """`rows` with every legacy attachment url replaced by the Binary holding its bytes; a row whose bytes
    the uploader refused keeps its resource and gets the refusal's `quarantine_rule` and
    `quarantine_reason` instead (the caller quarantines it)."""
    resources, rules, reasons = [], [], []
    for text, rule, reason in zip(rows["resource"], rows["quarantine_rule"], rows["quarantine_reason"], strict=True):
        if rule is None and (LEGACY_FILE_URL_PREFIX in text or LEGACY_BLOB_URL_PREFIX in text):
            resource = json.loads(text)
            for attachment in _attachments(resource):
                refusal = _upload(attachment, uploader)
                if refusal is not None:
                    rule, reason = refusal
                    break
            else:
                text = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
        resources.append(text)
        rules.append(rule)
        reasons.append(reason)
    return rows.with_columns(
        resource=pl.Series(resources, dtype=pl.String),
        quarantine_rule=pl.Series(rules, dtype=pl.String),
        quarantine_reason=pl.Series(reasons, dtype=pl.String),
    )


def _attachments(value: Any) -> list[dict[str, Any]]:
    """Every object holding a legacy file or BLOB url, anywhere in the resource."""
    found = []
    if isinstance(value, dict):
        url = value.get("url")
        if isinstance(url, str) and url.startswith((LEGACY_FILE_URL_PREFIX, LEGACY_BLOB_URL_PREFIX)):
            found.append(value)
        for member in value.values():
            found.extend(_attachments(member))
    elif isinstance(value, list):
        for item in value:
            found.extend(_attachments(item))
    return found


def _upload(attachment: dict[str, Any], uploader: FileUploader) -> tuple[str, str] | None:
    """Upload the attachment's bytes and point it at their Binary; the (rule, reason) of a refusal."""
    content = legacy_content(attachment["url"])
    assert content is not None  # _attachments found only legacy urls
    expected = FileFacts(attachment.get("size", -1), attachment.get("hash", ""), "")
    outcome = uploader.upload(content, str(attachment.get("contentType", "")), expected=expected)
    if outcome.binary_id is None:
        return str(outcome.refused_rule), f"at load time: {outcome.refused_reason}"
    attachment["url"] = f"Binary/{outcome.binary_id}"
    return None
