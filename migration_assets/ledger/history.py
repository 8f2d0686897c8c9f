"""What happened to one source key? `python -m migration_assets.ledger.history P0123 [--element patients]`
prints its units in the manifest of every target (disposition, rule, reason, resource), every submission
attempt, and the runs that touched it with their status (`interrupted`: the run never finished, its process was
killed before a later run of the same element and shard started)."""

import argparse
import json
import sys

from migration_assets import config
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum.target import Target
from migration_assets.paths import DEFAULT_MANIFEST_URL

UNIT_FIELDS = (
    "element",
    "source_table",
    "unit_key",
    "resource_type",
    "identifier_value",
    "disposition",
    "rule",
    "reason",
    "resource_id",
    "version_id",
    "content_hash",
    "last_run_id",
    "updated_at",
)


def describe(manifest: Manifest, key: str, element: str | None) -> str:
    found = manifest.history(element, key)
    if not found["units"]:
        return f"{key}: no unit with this key in the manifest" + (f" for {element}" if element else "")
    lines = []
    for unit in found["units"]:
        lines.append(
            f"{unit['element']} / {unit['source_table']} / {unit['unit_key']}  in {Target.from_key(unit['target'])}"
        )
        lines.extend(f"  {name}: {unit[name]}" for name in UNIT_FIELDS[3:] if unit[name] is not None)
    lines.append(f"attempts ({len(found['attempts'])}):")
    for attempt in found["attempts"]:
        outcome = json.loads(attempt["outcome"]) if attempt["outcome"] else None
        diagnostics = "; ".join(
            (issue.get("details") or {}).get("text") or issue.get("diagnostics", "")
            for issue in (outcome or {}).get("issue", [])
        )
        lines.append(
            f"  {attempt['attempted_at']}  {attempt['element']}  run {attempt['run_id']}  "
            f"bundle {attempt['bundle_number']} entry {attempt['entry_number']}  HTTP {attempt['http_status']}  "
            f"{attempt['location'] or ''}  {diagnostics}"
        )
    lines.append(f"runs ({len(found['runs'])}):")
    for run in found["runs"]:
        finished = f"ended {run['finished_at']}" if run["finished_at"] else "not ended"
        shard = f"  shard {run['shard']}" if run["shard"] else ""
        lines.append(
            f"  {run['started_at']}  {run['element']}  run {run['run_id']}  {run['status'].upper()}  {finished}"
            f"{shard}  {Target.from_key(run['target'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("key", help="the source key (unit key), e.g. P0123")
    parser.add_argument("--element", help="limit to one data element")
    parser.add_argument("--manifest", default=config.manifest_db_url() or DEFAULT_MANIFEST_URL)
    args = parser.parse_args(argv)
    with Manifest(args.manifest) as manifest:
        print(describe(manifest, args.key, args.element))
    return 0


if __name__ == "__main__":
    sys.exit(main())
