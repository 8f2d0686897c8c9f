"""An element's run launched while another run loads one of its prerequisites (a backfill of every element
starts them together) waits for that load instead of being refused, up to prerequisite_wait_seconds."""

import logging
import threading
import time
from types import SimpleNamespace

import pytest
from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

from migration_assets.pipeline.partitions import PARTITION_TAG

pytestmark = pytest.mark.integration

# 60 patients at 100 points a create: about two seconds of loading on a server paced to this.
PACE = 3_000


def start_patients_load(platform) -> tuple[threading.Thread, dict]:
    """The patients' run in a thread of its own; returns once Dagster shows it started."""
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(summary=platform.run("patients")))
    thread.start()
    started = RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={PARTITION_TAG: "patients"})
    deadline = time.monotonic() + 60
    while not platform.instance.get_runs(started) and time.monotonic() < deadline:
        time.sleep(0.05)
    return thread, done


def prerequisites_check(platform, element: str):
    [run] = platform.instance.get_runs(RunsFilter(tags={PARTITION_TAG: element}))
    records = platform.instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    [evaluation] = [
        record.event_log_entry.dagster_event.event_specific_data
        for record in records
        if record.event_log_entry.dagster_event.event_specific_data.check_name == "prerequisites_loaded"
    ]
    return evaluation


def test_a_run_started_during_its_prerequisites_load_waits_for_it_and_loads(platform_factory):
    platform = platform_factory.new(patients=60, points_per_second=PACE)
    thread, patients = start_patients_load(platform)
    conditions = platform.run("conditions")
    thread.join()
    assert patients["summary"].ok, patients["summary"]
    assert conditions.ok, conditions
    evaluation = prerequisites_check(platform, "conditions")
    assert evaluation.passed
    assert evaluation.metadata["waited_for_loads_seconds"].value > 0, "it started while the patients loaded"
    assert conditions.counts["failed"] == 0 and conditions.counts["sent"] > 0


def test_the_wait_has_an_end_and_names_the_loads_still_running(platform_factory):
    from migration_assets.pipeline.waiting import loads_in_progress, wait_for_loads

    platform = platform_factory.new(patients=60, points_per_second=PACE)
    thread, _ = start_patients_load(platform)
    # What the check's context gives the wait: the instance, its own run and a log.
    check_context = SimpleNamespace(
        instance=platform.instance, run=SimpleNamespace(run_id="another-run"), log=logging.getLogger("test")
    )
    waited, loading = wait_for_loads(check_context, ["patients"], timeout_seconds=0.3)
    thread.join()
    [load] = loading
    assert load.element == "patients" and waited >= 0.3
    assert loads_in_progress(platform.instance, ["patients"], "another-run") == [], "loaded: nothing to wait for"
    assert wait_for_loads(check_context, ["conditions"], timeout_seconds=30) == (pytest.approx(0, abs=1), [])
