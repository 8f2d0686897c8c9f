"""What `make demo` prints: the live view's plain lines when the output is not a terminal, and a summary
that says, for a failed element, what was done before it failed and which check failed and why; and the
demo on the multiprocess executor (DAGSTER_EXECUTOR), its steps in processes of their own."""

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance
from rich.console import Console

from migration_assets.commands.demo import ElementSummary, element_line, migrate_element, summary_lines
from migration_assets.commands.live import LiveView
from migration_assets_tests.fixtures_platform import PlatformFactory


def test_plain_lines_and_a_failed_check_in_the_summary(platform_factory: PlatformFactory) -> None:
    platform = platform_factory.new(patients=40)
    out = io.StringIO()
    summaries: list[ElementSummary] = []
    with LiveView(Console(file=out, width=200)) as view:
        assert not view.live  # not a terminal: plain lines
        # Visits before their patients: the blocking prerequisites_loaded check refuses them.
        for element in ("visits", "patients"):
            with view.element(element):
                summaries.append(migrate_element(element, platform.instance, platform.defs))
            view.print(element_line(summaries[-1]))
    shown = out.getvalue()
    assert "patients: sending" in shown and "units sent" in shown
    assert "patients: ok in" in shown and " sent (" in shown
    assert "visits: FAILED" in shown

    visits, patients = summaries
    assert patients.ok and patients.rate and patients.load_seconds
    assert not visits.ok and visits.checks_failed == ["prerequisites_loaded"]
    lines = summary_lines(summaries, 12.3, platform.work / "evidence")
    row = next(line for line in lines if line.startswith("visits"))
    assert "FAILED" in row and row.split()[2] != "-"  # its source rows are known though nothing was loaded
    failure = lines.index(next(line for line in lines if line.startswith("visits FAILED")))
    assert "legacy_source (" in lines[failure] and "fhir_frames (" in lines[failure]
    check_line = lines[failure + 1]
    assert check_line.startswith("  check prerequisites_loaded failed: ") and "patients" in check_line
    assert "2 elements in 12.3 s, 1 failed" in lines
    assert any(str(platform.work / "evidence") in line for line in lines)


def test_retries_and_quota_waits_are_shown_as_they_happen() -> None:
    out = io.StringIO()
    client_log = logging.getLogger("migration_assets.medplum.client")
    with LiveView(Console(file=out, width=200)) as view, view.element("visits"):
        client_log.info("FHIR quota nearly spent (%d points left); waiting %.0fs for its reset", 120, 31.0)
        view.counted({"retries": 1, "rate_limited": 1})
    assert "visits: FHIR quota nearly spent (120 points left); waiting 31s for its reset" in out.getvalue()
    # Outside the view the platform's records go back to Python's own handling.
    assert logging.getLogger("migration_assets").propagate


def test_quota_wait_is_a_column_when_the_load_reports_it() -> None:
    waited = ElementSummary(
        "patients",
        run_ok=True,
        counts={"sent": 10},
        figures={"quota_wait_seconds": 61.5},
        checks_passed=["schema"],
        seconds=70.0,
        load_seconds=65.0,
    )
    lines = summary_lines([waited, ElementSummary("conditions", run_ok=True)], 80.0)
    assert "quota_wait_s" in lines[1] and "61.5" in next(line for line in lines if line.startswith("patients"))
    assert "quota_wait_s" not in summary_lines([ElementSummary("conditions", run_ok=True)], 1.0)[1]


@pytest.mark.integration
def test_the_demo_on_the_multiprocess_executor_runs_each_shard_in_a_process_of_its_own(tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "dagster_home"
    home.mkdir()
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({"resources": {"migration_settings": {"config": {"shard_count": 2}}}}))
    # The demo's own sample, local server and ledger under `work`; nothing of the caller's environment.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MEDPLUM_") and name not in ("LEGACY_DB_URL", "MANIFEST_DB_URL", "ELEMENTS")
    }
    environment.update(
        MIGRATION_WORK_DIR=str(work),
        DAGSTER_HOME=str(home),
        DAGSTER_EXECUTOR="multiprocess",
        ELEMENTS="patients",
        RUN_CONFIG=str(run_config),
    )
    done = subprocess.run(
        [sys.executable, "-m", "migration_assets.commands.demo", "--patients", "5"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Warning" not in done.stderr, "the steps' processes are as quiet as the demo's own"
    row = next(line.split() for line in done.stdout.splitlines() if line.startswith("patients "))
    assert row[1:3] == ["ok", "5"] and row[-4] == "6/6", row  # result, source rows, checks
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        pids = {
            record.event_log_entry.step_key: record.event_log_entry.dagster_event.pid
            for record in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records
        }
        (run_start,) = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_START).records
    shards = {pids[f"medplum_resources.load_shard[shard_{index}]"] for index in range(2)}
    assert len(shards) == 2 and run_start.event_log_entry.dagster_event.pid not in shards, pids
