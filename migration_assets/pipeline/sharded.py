"""`medplum_resources`: one data element written to Medplum by `shard_count` shard steps of one run.

A graph-backed asset (Dagster's `graph_asset`) keeps the asset key, its partitions, its lineage and
the asset checks of a plain asset, while its graph fans out with dynamic outputs: `plan_shards` emits one
output per key-hash shard, `load_shard` runs once per shard (each a step of its own, so the executor
puts them on other processes or Celery workers, and a failed shard is re-executed alone from failure),
and `combine_shards` adds their counts up into the asset's one materialization. The checks then run once,
over the whole element. Launching N runs, one per shard, needed an extra unsharded run before the
checks could see the whole element; a dynamic fan-out inside the asset needs neither.
"""

import dataclasses
import os
import socket
import time
from typing import Any

import polars as pl
from dagster import (
    AssetIn,
    DynamicOut,
    DynamicOutput,
    Failure,
    In,
    MetadataValue,
    OpExecutionContext,
    Output,
    graph_asset,
    op,
)

from migration_assets.active import get_element
from migration_assets.elements.files import legacy_files
from migration_assets.medplum import Target
from migration_assets.phases import load_phases
from migration_assets.pipeline.assets import OWNERS, target_metadata
from migration_assets.pipeline.frame_parts import FrameParts
from migration_assets.pipeline.loader import COUNT_NAMES, TRANSACTIONS_OFF, migrate
from migration_assets.pipeline.partitions import DATA_ELEMENTS
from migration_assets.pipeline.progress import LoadProgress, publish
from migration_assets.pipeline.reporting import counts, table
from migration_assets.pipeline.resources import (
    LegacySource,
    ManifestStore,
    MedplumResource,
    MigrationSettings,
)
from migration_assets.verify.census import RunCensus
from migration_assets.verify.prerequisites import RunPrerequisites

# Caps the steps writing to Medplum at once across all runs and workers: set the pool's limit on the
# instance (`concurrency: pools: ...` or `dagster instance concurrency set medplum_writes 2`).
WRITES_POOL = "medplum_writes"

_FAILURE_SCHEMA = {
    "source_table": pl.String,
    "unit_key": pl.String,
    "resource_type": pl.String,
    "status": pl.Int64,
    "outcome": pl.String,
}


def ledger_run_id(run_id: str, shard_index: int, shard_count: int) -> str:
    """The run a shard step records in the ledger: the Dagster run itself without sharding, else the run
    with its shard (each shard is a run of the ledger, so a killed shard shows as interrupted alone)."""
    return run_id if shard_count == 1 else f"{run_id}.{shard_index}of{shard_count}"


@op(out=DynamicOut(int), description="One output per key-hash shard of the element (shard_count).")
def plan_shards(context: OpExecutionContext, migration_settings: MigrationSettings) -> Any:
    element = get_element(context.partition_key)
    phase = load_phases().of(element.name)
    if phase.behaviour.sync != "write":
        # Past this phase Medplum is the system of record: legacy rows must not overwrite it.
        raise Failure(
            f"{element.name} is in phase {phase.phase} (phases.yaml): nothing is loaded from the legacy "
            f"store any more. {phase.behaviour.summary}"
        )
    if migration_settings.shard_count < 1:
        raise Failure(f"shard_count must be at least 1, got {migration_settings.shard_count}")
    for index in range(migration_settings.shard_count):
        yield DynamicOutput(index, mapping_key=f"shard_{index}")


@op(
    pool=WRITES_POOL,
    ins={"fhir_frames": In(FrameParts)},
    description="The units of one shard written to Medplum, each outcome in the manifest.",
)
def load_shard(
    context: OpExecutionContext,
    fhir_frames: FrameParts,
    shard_index: int,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> Output[dict[str, Any]]:
    element = get_element(context.partition_key)
    shard_count = migration_settings.shard_count
    settings = dataclasses.replace(
        migration_settings.load_settings(element), shard_count=shard_count, shard_index=shard_index
    )
    run_id = context.run.run_id
    with medplum.open_client() as client, manifest.open(client.target) as ledger:
        # What the target holds before the load, one census per run shared by its shards (the first
        # shard takes it, the others read it as it was): units the ledger records as loaded that the
        # target lost are sent again.
        before_load = RunCensus.of_run(
            migration_settings.evidence_dir,
            f"{run_id}-before-load",
            client.target,
            migration_settings.incremental_census,
        )
        # BLOB attachments are read from this legacy database when they are uploaded.
        with legacy_files(legacy_db.url):
            result = migrate(
                client,
                ledger,
                ledger_run_id(run_id, shard_index, shard_count),
                element,
                fhir_frames,
                legacy_db.display_url,
                settings,
                on_progress=_ProgressLog(context, element.name),
                census_of_target=lambda keys: before_load.get(client, keys),
                # As the blocking check prerequisites_loaded made it for this run (or the first shard without it).
                run_prerequisites=RunPrerequisites.of_run(
                    migration_settings.evidence_dir, run_id, client.target, element.name
                ),
            )
        stats = client.stats
        target = client.target
    context.log.info(
        f"{element.name} shard {shard_index} of {shard_count} into {target}: {result.counts}, "
        f"{stats.quota_wait_seconds:.1f}s waited on the FHIR quota, at most {result.most_in_flight} bundles in flight"
    )
    if result.transaction_bundles is False:
        context.log.warning(f"{element.name}: {TRANSACTIONS_OFF}")
    summary = {
        **result.counts,
        "http_requests": stats.requests,
        "http_retries": stats.retries,
        "entries_resent": stats.entries_resent,
    }
    return Output(
        {
            "counts": summary,
            "failures": result.failures,
            "target": target.key,
            "quota_wait_seconds": stats.quota_wait_seconds,
            "most_in_flight": result.most_in_flight,
            "transactions_off": result.transaction_bundles is False,
        },
        # Where the step ran: with Celery, the worker that took it.
        metadata={
            "shard": f"{shard_index} of {shard_count}",
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            **counts(summary),
        },
    )


@op(description="The shards' counts added up: the materialization of medplum_resources.")
def combine_shards(
    context: OpExecutionContext, shards: list[dict[str, Any]], migration_settings: MigrationSettings
) -> Output[dict[str, int]]:
    element = get_element(context.partition_key)
    total = {
        name: sum(shard["counts"].get(name, 0) for shard in shards)
        for name in (*COUNT_NAMES, "http_requests", "http_retries", "entries_resent")
    }
    failures = [failure for shard in shards for failure in shard["failures"]]
    return Output(
        total,
        metadata={
            **target_metadata(Target.from_key(shards[0]["target"])),
            "mapping_version": element.mapping_version,
            "adoption_phase": load_phases().of(element.name).phase,
            "load_mode": migration_settings.load_settings(element).mode,
            "shards": len(shards),
            **counts(total),
            # Pacing to the FHIR quota and waits before resending what it refused, in seconds (all shards).
            "quota_wait_seconds": MetadataValue.float(round(sum(shard["quota_wait_seconds"] for shard in shards), 1)),
            # The most bundles one shard had in flight (the load adapts it to the server's pushback).
            "most_in_flight": MetadataValue.int(max(shard["most_in_flight"] for shard in shards)),
            **(
                {"transaction_bundles": MetadataValue.text(f"off: {TRANSACTIONS_OFF}")}
                if any(shard["transactions_off"] for shard in shards)
                else {}
            ),
            "failures": table(pl.DataFrame(failures, schema=_FAILURE_SCHEMA)),
        },
    )


@graph_asset(
    name="medplum_resources",
    partitions_def=DATA_ELEMENTS,
    ins={"fhir_frames": AssetIn()},
    group_name="migration",
    kinds={"medplum"},
    owners=OWNERS,
    tags={"stage": "load"},
    description="The data element's resources in Medplum, written by conditional PUT on their source identifiers.\n\n"
    "Sent in batches (or batches of transactions) by `shard_count` shard steps (key-hash shards of the bundle "
    "groups, on as many processes or workers as the executor gives); each entry's outcome is in the manifest, "
    "the counts and any failures in the metadata.",
)
def medplum_resources(fhir_frames: FrameParts) -> Any:
    loads = plan_shards().map(lambda shard: load_shard(fhir_frames, shard))
    return combine_shards(loads.collect())


class _ProgressLog:
    """A load step's progress: every bundle's units to this process's listeners (make demo's live view),
    and a line to the step's log each time another twentieth of the units is done, at most one every
    LOG_EVERY_SECONDS (and the last): each line is an event the instance stores, and a small load's twenty
    cost more than they tell."""

    LOG_EVERY_SECONDS = 5.0

    def __init__(self, context: OpExecutionContext, element: str) -> None:
        self.context, self.element, self.logged = context, element, 0
        self.last_line = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        publish(LoadProgress(self.element, done, total))
        twentieths = done * 20 // max(1, total)
        now = time.monotonic()
        if twentieths > self.logged and (done >= total or now - self.last_line >= self.LOG_EVERY_SECONDS):
            self.logged, self.last_line = twentieths, now
            self.context.log.info(f"{done:,} of {total:,} units sent")
