"""An element's run waits for the loads of its prerequisites that other runs have in progress.

A backfill of every element (or two runs launched one after the other) starts an element's run while the
run of an element it references is still writing to Medplum. Refused at once, the run would have to be
launched again by hand; so the blocking check `prerequisites_loaded` first waits until no run in progress
still has to load a prerequisite (its `medplum_resources` is planned and not yet materialized), up to
`prerequisite_wait_seconds`, and then judges what is in Medplum. Only runs already started are waited
for: a queued one may be waiting for this run's slot."""

import time
from collections.abc import Collection
from dataclasses import dataclass

from dagster import (
    AssetCheckExecutionContext,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)

from migration_assets.pipeline.partitions import PARTITION_TAG

POLL_SECONDS = 0.25
_LOAD_ASSET = AssetKey("medplum_resources")
_IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
_PLANNED_OR_DONE = {DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_MATERIALIZATION}


@dataclass(frozen=True)
class Loading:
    run_id: str
    element: str


def loads_in_progress(instance: DagsterInstance, elements: Collection[str], own_run_id: str) -> list[Loading]:
    """The started runs other than this one that will load one of `elements` and have not yet."""
    loading = []
    for run in instance.get_runs(filters=RunsFilter(statuses=_IN_PROGRESS)):
        element = run.tags.get(PARTITION_TAG, "")
        if run.run_id == own_run_id or element not in elements:
            continue
        seen = {
            record.event_log_entry.dagster_event_type
            for record in instance.get_records_for_run(run.run_id, of_type=_PLANNED_OR_DONE).records
            if record.event_log_entry.dagster_event and record.event_log_entry.dagster_event.asset_key == _LOAD_ASSET
        }
        if seen == {DagsterEventType.ASSET_MATERIALIZATION_PLANNED}:
            loading.append(Loading(run.run_id, element))
    return loading


def wait_for_loads(
    context: AssetCheckExecutionContext, elements: Collection[str], timeout_seconds: float
) -> tuple[float, list[Loading]]:
    """Waits while another run is loading one of `elements`; returns the seconds waited and the loads
    still in progress when `timeout_seconds` ran out (none when every one finished)."""
    started = time.monotonic()
    told: set[str] = set()
    while True:
        loading = loads_in_progress(context.instance, elements, context.run.run_id)
        waited = time.monotonic() - started
        if not loading or waited >= timeout_seconds:
            return waited, loading
        for load in loading:
            if load.run_id not in told:
                told.add(load.run_id)
                context.log.info(f"waiting for run {load.run_id} to finish loading {load.element}")
        time.sleep(POLL_SECONDS)
