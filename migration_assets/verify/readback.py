"""Whether Medplum holds a resource exactly as the loader would send it again: then a resend is a no-op
(Medplum answers a PUT whose content is identical to the stored version without a new version,
MEDPLUM_FACTS.md), so the idempotency check need not spend a write (100 quota points) to show it. What
differs, or cannot be compared, is resent as before and the server decides."""

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from migration_assets.medplum import MedplumClient
from migration_assets.medplum.search import lookup_chunks
from migration_assets.verify.census import LOOKUP_CHUNK

# What Medplum adds to a resource's meta on write; the rest of meta (profile, tag, security, source) is
# the loader's and is compared.
SERVER_META = frozenset({"versionId", "lastUpdated", "author", "project", "compartment", "account", "accounts"})
# A stored attachment reads back as a signed URL of its Binary's storage: `<base>/storage/<id>/<version>?...`.
_SIGNED_BINARY = re.compile(r"^https?://[^?]+/storage/([0-9A-Za-z.-]{1,64})/[^?/]+\?")


def as_compared(resource: Any, links: Mapping[str, str] = {}) -> Any:
    """`resource` without what the server owns: its id, the meta it adds, and a signed Binary URL in the
    place of the `Binary/<id>` that was written; each `urn:uuid:` link of `links` as the `Type/<id>` Medplum
    stored for it (a transaction's entries reference each other by their full URLs)."""
    if isinstance(resource, dict):
        kept = {key: as_compared(value, links) for key, value in resource.items() if key != "id"}
        if isinstance(kept.get("meta"), dict):
            meta = {key: value for key, value in kept["meta"].items() if key not in SERVER_META}
            kept = {key: value for key, value in kept.items() if key != "meta"} | ({"meta": meta} if meta else {})
        return kept
    if isinstance(resource, list):
        return [as_compared(item, links) for item in resource]
    if isinstance(resource, str):
        if signed := _SIGNED_BINARY.match(resource):
            return f"Binary/{signed.group(1)}"
        return links.get(resource, resource)
    return resource


def stored_resources(
    client: MedplumClient, resource_type: str, ids: Iterable[str]
) -> tuple[dict[str, dict[str, Any]], int]:
    """The resources of `resource_type` with these ids that Medplum holds, by id, and the searches it took
    (up to LOOKUP_CHUNK ids a search: 20 quota points each, where reading them one by one costs 1 each)."""
    wanted = sorted(set(ids))
    found: dict[str, dict[str, Any]] = {}
    searches = 0
    for chunk in lookup_chunks(wanted, LOOKUP_CHUNK):
        searches += 1
        for resource in client.search(resource_type, {"_id": ",".join(chunk), "_count": str(len(chunk))}):
            found[resource["id"]] = resource
    return found, searches


def held_as_sent(client: MedplumClient, rows: pl.DataFrame) -> tuple[pl.Series, int]:
    """For each row (`resource_type`, `held_id`: the id of the one resource the target holds for its
    identifier, `full_url` and `resource`: the JSON text the loader would send), whether Medplum holds exactly that
    content (False where nothing is held or anything differs); and the searches it took."""
    same = [False] * rows.height
    searches = 0
    held = rows.with_row_index("_row").filter(pl.col("held_id").is_not_null())
    links = {
        full_url: f"{resource_type}/{held_id}"
        for full_url, resource_type, held_id in held.select("full_url", "resource_type", "held_id").iter_rows()
        if full_url
    }
    for (resource_type,), group in held.group_by("resource_type"):
        stored, searched = stored_resources(client, str(resource_type), group["held_id"])
        searches += searched
        for row, held_id, text in group.select("_row", "held_id", "resource").iter_rows():
            if held_id in stored:
                same[row] = as_compared(json.loads(text), links) == as_compared(stored[held_id])
    return pl.Series("held_as_sent", same, dtype=pl.Boolean), searches
