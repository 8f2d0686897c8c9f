"""The reconciliation report of a data element: what was extracted, what became of each unit, what
Medplum holds. Kept as JSON (everything) and CSV (the figures) evidence files beside the run."""

import csv
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.elements.base import DataElement
from migration_assets.ledger.manifest import Manifest, dagster_run_of
from migration_assets.medplum import MedplumClient
from migration_assets.verify.books import accounting
from migration_assets.verify.census import RunCensus, census_kinds, take_census
from migration_assets.verify.reconcile import RECONCILE_UNIT_COLUMNS, reconcile

IDENTIFIER_LIST_LIMIT = 1000


def reconciliation_report(
    client: MedplumClient,
    manifest: Manifest,
    element: DataElement,
    frame: pl.DataFrame,
    source_url: str,
    run_census: RunCensus | None = None,
    load_run_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """The report of `element` in the target of `client` (whose books `manifest` holds). The census is
    `run_census` (the run's, shared with its checks), else one taken now. A missing resource the ledger
    records as loaded is a lost write: the next load finds it too and sends it again. The attempts are
    those of every shard step of the load of `load_run_ids` (Dagster runs: a launch and its re-executions),
    else of the Dagster run that recorded the element's latest ledger run."""
    censuses = run_census.get(client, frame) if run_census else take_census(client, frame)
    units = manifest.units(element.name, RECONCILE_UNIT_COLUMNS)
    recon = reconcile(frame, units, censuses)
    lost = recon.lost_writes.select("resource_type", "identifier_value", "source_table", "unit_key")
    books = accounting(frame, units)
    load = _load_runs(manifest, element.name, load_run_ids)
    last_run = load[-1] if load else {}
    attempts = manifest.attempt_counts([run["run_id"] for run in load], element.name)
    shards = _latest_per_shard(load)
    return {
        "element": element.name,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "passed": recon.passed and books.balanced,
        "evidence": {
            "medplum_base_url": client.target.base_url,
            "medplum_project": client.target.project_id,
            "source_url": source_url,
            "source_tables": list(element.source_tables),
            "extract": (element.extract.__doc__ or "").strip()
            or f"{element.extract.__module__}.{element.extract.__name__}",
            "mapping_version": element.mapping_version,
            "last_run_id": dagster_run_of(last_run["run_id"]) if last_run else None,
            # Every shard's latest status: finished once each shard step (re-executed or not) finished.
            "last_run_status": ", ".join(sorted({run["status"] for run in shards})) or None,
            "load_runs": [
                {"ledger_run_id": run["run_id"], "shard": run["shard"], "status": run["status"]} for run in load
            ],
            "pipeline_version": last_run.get("pipeline_version"),
            "census": run_census.how(census_kinds(frame)) if run_census else "whole census, read for this report",
        },
        "figures": {
            **{
                f"source_rows/{table}": n
                for table, n in frame.group_by("source_table").len().sort("source_table").iter_rows()
            },
            "source_units": books.source_units,
            "eligible": books.source_units - books.dispositions["quarantined"],
            **{f"disposition/{name}": n for name, n in books.dispositions.items()},
            "attempts_last_run": attempts.get("attempts", 0),
            "units_retried_last_run": attempts.get("units_retried", 0),
            "target_expected": recon.expected,
            "target_found": recon.found,
            "missing": recon.missing.height,
            "unexpected": recon.unexpected.height,
            "duplicated": recon.duplicates.height,
            "lost_writes": lost.height,
        },
        "missing": recon.missing.head(IDENTIFIER_LIST_LIMIT).to_dicts(),
        "unexpected": recon.unexpected.head(IDENTIFIER_LIST_LIMIT).to_dicts(),
        "duplicated": recon.duplicates.head(IDENTIFIER_LIST_LIMIT).to_dicts(),
        "lost_writes": lost.head(IDENTIFIER_LIST_LIMIT).to_dicts(),
    }


def _load_runs(manifest: Manifest, element: str, load_run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The ledger runs (one per shard step and attempt) of the load the report covers, oldest first."""
    found = manifest.load_runs(element, load_run_ids)
    if not found:
        # A report materialized without a load in its run: the latest load's.
        last = manifest.last_run(element)
        found = manifest.load_runs(element, [dagster_run_of(last["run_id"])]) if last else []
    return found


def _latest_per_shard(load: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest ledger run of each shard: a shard re-executed from failure counts by its rerun."""
    return list({run["shard"]: run for run in load}.values())


def write_evidence(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """`reconciliation.json` (the whole report) and `reconciliation.csv` (figure, value)."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = directory / "reconciliation.json", directory / "reconciliation.csv"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    with csv_path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["figure", "value"])
        writer.writerow(["passed", report["passed"]])
        writer.writerows(report["figures"].items())
    return json_path, csv_path
