"""What `make demo` prints: the live view's plain lines when the output is not a terminal, and a summary
that says, for a failed element, what was done before it failed and which check failed and why."""

import io
import logging

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
    assert "patients: sending" in shown and "bundles sent" in shown
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
