"""`make demo`: migrate every data element of the profile (or those ELEMENTS names) in dependency order
with every check, print a summary per element, and exit non-zero when a run or a check failed.

RUN_CONFIG=file.yaml (or --run-config) gives every run the settings the launchpad takes, e.g.
`resources: {migration_settings: {config: {quarantine_threshold: 0.1}}}`."""

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    JobDefinition,
    JobExecutionResult,
    execute_job,
    reconstructable,
)
from dagster_shared.error import SerializableErrorInfo

from migration_assets import config
from migration_assets.active import LOAD_ORDER, PROFILE, prerequisites
from migration_assets.commands.environment import (
    ensure_dagster_home,
    ensure_legacy_source,
    medplum_server,
    quiet_dagster_warnings,
)
from migration_assets.commands.live import LiveView
from migration_assets.commands.workers import celery_run_config
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import Target
from migration_assets.pipeline.cutover_report import write_report
from migration_assets.pipeline.partitions import PARTITION_TAG
from migration_assets.pipeline.progress import LoadProgress, listening
from migration_assets.pipeline.resources import (
    ManifestStore,
    MedplumResource,
    MigrationSettings,
    keeping_built_values,
)

# Dagster's own log lines stay in the instance (and the UI); the console gets them with -v.
VERBOSE_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
SUMMARY_COUNTS = (
    "source_rows",
    "quarantined",
    "sent",
    "created",
    "updated",
    "unchanged",
    "not_sent_unchanged",
    "lost_in_target",
    "failed",
    "pending_quota",
    "half_written",
)
# Figures of the load's metadata that are not counts (the seconds spent waiting for the FHIR quota).
SUMMARY_FIGURES = ("quota_wait_seconds",)
LOAD_STEP = "medplum_resources"


@dataclass
class ElementSummary:
    element: str
    run_ok: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    checks_passed: list[str] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)
    # What each failed check said: it names what is wrong (and, for prerequisites, what to load first).
    failure_messages: dict[str, str] = field(default_factory=dict)
    error: str = ""
    failed_step: str = ""
    # What was done before the run failed, step by step ("fhir_frames: 1000 resources, 3 quarantined").
    done: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_seconds: float | None = None
    units: tuple[int, int] | None = None  # the last (sent, total) the load reported
    # Set when the project writes transactions like batches (its transaction-bundles feature is off).
    transactions_off: str = ""

    @property
    def ok(self) -> bool:
        return self.run_ok and not self.checks_failed

    @property
    def rate(self) -> float | None:
        """Resources sent per second of the load step."""
        sent = self.counts.get("sent")
        return sent / self.load_seconds if sent and self.load_seconds else None


class _LastProgress:
    def __init__(self, element: str) -> None:
        self.element = element
        self.last: tuple[int, int] | None = None

    def load_progress(self, progress: LoadProgress) -> None:
        if progress.element == self.element:
            self.last = (progress.units_done, progress.units_total)


def migrate_element(
    element: str,
    instance: DagsterInstance,
    defs: Definitions,
    run_config: Mapping[str, Any] | None = None,
    verbose: bool = False,
    rebuilt: Callable[[], JobDefinition] | None = None,
) -> ElementSummary:
    """One run of the migration job for one partition, on the real Dagster instance: in this process, or,
    given `rebuilt` (a module's function that other processes call to rebuild the job), on the job's executor
    (DAGSTER_EXECUTOR: subprocesses, Celery workers)."""
    summary = ElementSummary(element)
    started = time.monotonic()
    progress = _LastProgress(element)
    run_config = {
        **(VERBOSE_CONSOLE if verbose else QUIET_CONSOLE),
        **keeping_built_values(run_config or {}, defs.resources or {}),
    }
    with listening(progress):
        if rebuilt is None:
            result: ExecuteInProcessResult | JobExecutionResult = defs.resolve_job_def(
                "migrate_data_element"
            ).execute_in_process(partition_key=element, instance=instance, raise_on_error=False, run_config=run_config)
        else:
            with execute_job(
                reconstructable(rebuilt), instance, run_config=run_config, tags={PARTITION_TAG: element}
            ) as result:
                pass  # its events are all in the result; nothing of the run's resources is read after it
    summary.seconds = time.monotonic() - started
    summary.units = progress.last
    summary.run_ok = result.success
    summary.done = _steps_done(result)
    for materialization in result.asset_materializations_for_node(LOAD_STEP):
        summary.counts = {
            name: value.value
            for name, value in materialization.metadata.items()
            if name in SUMMARY_COUNTS and isinstance(value.value, int)
        }
        summary.figures = {
            name: float(value.value)
            for name, value in materialization.metadata.items()
            if name in SUMMARY_FIGURES and isinstance(value.value, int | float)
        }
        off = materialization.metadata.get("transaction_bundles")
        summary.transactions_off = str(off.value) if off is not None else ""
    if not summary.counts:
        # The load did not finish: what the element's frame holds is still known.
        for materialization in result.asset_materializations_for_node("fhir_frames"):
            meta = materialization.metadata
            summary.counts = {
                name: int(meta[key].value)  # type: ignore[arg-type]
                for name, key in (("source_rows", "resources"), ("quarantined", "quarantined"))
                if key in meta
            }
    summary.load_seconds = _step_seconds(instance, result.run_id, LOAD_STEP)
    for evaluation in result.get_asset_check_evaluations():
        (summary.checks_passed if evaluation.passed else summary.checks_failed).append(evaluation.check_name)
        if not evaluation.passed:
            summary.failure_messages[evaluation.check_name] = evaluation.description or ""
    if not result.success:
        failure = next((event for event in result.all_events if event.is_step_failure), None)
        summary.failed_step = failure.step_key or "" if failure else ""
        summary.error = _root_message(failure.step_failure_data.error) if failure else "run failed"
    return summary


def _steps_done(result: ExecuteInProcessResult | JobExecutionResult) -> list[str]:
    """One phrase per asset the run materialized, with its main figures."""
    done = []
    for node, figures in (
        ("legacy_source", ("rows",)),
        ("fhir_frames", ("resources", "quarantined")),
        (LOAD_STEP, ("sent", "failed")),
        ("reconciliation_report", ("missing",)),
    ):
        for materialization in result.asset_materializations_for_node(node):
            meta = materialization.metadata
            said = ", ".join(f"{meta[name].value:,} {name}" for name in figures if name in meta)
            done.append(f"{node} ({said})" if said else node)
    return done


def _step_seconds(instance: DagsterInstance, run_id: str, step: str) -> float | None:
    """How long the step ran (from its first start to its last end: a graph-backed asset's steps are
    `<step>.<op>`, its shards among them), from the instance's event log."""
    starts: list[float] = []
    ends: list[float] = []
    for entry in instance.all_logs(
        run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    ):
        if entry.step_key != step and not (entry.step_key or "").startswith(step + "."):
            continue
        (starts if entry.dagster_event_type == DagsterEventType.STEP_START else ends).append(entry.timestamp)
    return max(ends) - min(starts) if starts and ends else None


def _root_message(error: SerializableErrorInfo | None) -> str:
    """The message of the innermost cause: Dagster wraps the asset's own error ("Error occurred while
    executing op ...") around the one that says what went wrong."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error else "run failed"


def one_line(text: str) -> str:
    """The first line of a message, the part a person reads."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def element_line(s: ElementSummary) -> str:
    """The element's line of the summary, as the live view prints it when the element ends."""
    counts = s.counts
    sent = counts.get("sent")
    said = [
        f"{sent:,} sent ({counts.get('created', 0):,} created, {counts.get('updated', 0):,} updated)"
        if sent
        else f"nothing sent ({counts.get('not_sent_unchanged', 0):,} unchanged)"
        if sent == 0
        else "",
        f"{counts['failed']:,} failed" if counts.get("failed") else "",
        f"{s.rate:,.0f}/s" if s.rate else "",
        f"checks {len(s.checks_passed)}/{len(s.checks_passed) + len(s.checks_failed)}",
    ]
    return f"{s.element}: {'ok' if s.ok else 'FAILED'} in {s.seconds:.1f} s, " + ", ".join(
        part for part in said if part
    )


def _figure(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.1f}{unit}"


def summary_lines(
    summaries: list[ElementSummary], seconds: float, evidence_dir: Path | None = None, report: Path | None = None
) -> list[str]:
    """The summary a person reads once: per element the counts, the time and the rate; for each failed
    element what was done before and what failed, in one line each; the total time, the evidence and the cutover
    report."""
    show_wait = any(s.figures.get("quota_wait_seconds") for s in summaries)
    # One word a column: scripts (and the tests) read the table by its header.
    headers = (
        "element",
        "result",
        *SUMMARY_COUNTS,
        "checks",
        "time_s",
        "load_s",
        "sent_per_s",
        *(("quota_wait_s",) if show_wait else ()),
    )
    rows = [
        (
            s.element,
            "ok" if s.ok else "FAILED",
            *(f"{s.counts[name]:,}" if name in s.counts else "-" for name in SUMMARY_COUNTS),
            f"{len(s.checks_passed)}/{len(s.checks_passed) + len(s.checks_failed)}",
            f"{s.seconds:.1f}",
            _figure(s.load_seconds),
            "-" if s.rate is None else f"{s.rate:,.0f}",
            *((_figure(s.figures.get("quota_wait_seconds")),) if show_wait else ()),
        )
        for s in summaries
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [""]
    for line in (headers, tuple("-" * w for w in widths), *rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    for s in summaries:
        if s.ok:
            continue
        lines.append("")
        what = f"{s.element} FAILED" + (f" in step {s.failed_step}" if s.failed_step else "")
        lines.append(
            f"{what}; done before: {', '.join(s.done) or 'nothing'}"
            + (f"; {s.units[0]:,} of {s.units[1]:,} units sent" if s.units else "")
        )
        for check, message in s.failure_messages.items():
            lines.append(f"  check {check} failed: {one_line(message)}")
        if s.error and not s.failure_messages:  # a blocking check's failure is the run's error too
            lines.append(f"  error: {one_line(s.error)}")
    waited = sum(s.figures.get("quota_wait_seconds", 0.0) for s in summaries)
    if waited:
        lines.append("")
        lines.append(f"waited {waited:.1f} s on the FHIR quota in all")
    # Said once, whatever the number of transactional elements.
    off = next((s.transactions_off for s in summaries if s.transactions_off), "")
    if off:
        lines.append("")
        lines.append(f"WARNING: {off.removeprefix('off: ')}")
    lines.append("")
    failed = sum(not s.ok for s in summaries)
    lines.append(f"{len(summaries)} elements in {seconds:.1f} s" + (f", {failed} failed" if failed else ", all ok"))
    if evidence_dir is not None:
        lines.append(f"evidence: {evidence_dir}/<element>/reconciliation.json and .csv")
    if report is not None:
        lines.append(f"cutover report: {report}")
    return lines


def print_summary(
    summaries: list[ElementSummary],
    seconds: float | None = None,
    evidence_dir: Path | None = None,
    report: Path | None = None,
) -> None:
    total = seconds if seconds is not None else sum(s.seconds for s in summaries)
    print("\n".join(summary_lines(summaries, total, evidence_dir, report)))


def read_run_config(path: Path | None) -> dict[str, Any]:
    """The run-config YAML file, if one is given; a clear error when it is not a mapping."""
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as problem:
        raise SystemExit(f"run config {path}: {problem}") from None
    if not isinstance(loaded, dict):
        raise SystemExit(f"run config {path}: expected a mapping such as `resources: {{...}}`")
    return loaded


def executor_run(
    run_config: dict[str, Any], job: Callable[[], JobDefinition]
) -> tuple[dict[str, Any], Callable[[], JobDefinition] | None]:
    """The run config and the job for DAGSTER_EXECUTOR: in process, the job of the definitions as they are
    (None); on subprocesses or Celery workers, the job they rebuild from its module. A Celery run gets the
    broker and queue of `make workers` unless the run config says its own."""
    executor = config.executor_name() or "in_process"
    if executor == "in_process":
        return run_config, None
    if executor == "celery" and "execution" not in run_config:
        run_config = {**run_config, **celery_run_config()}
    return run_config, job


def missing_prerequisites(chosen: Sequence[str], manifest_url: str, target: Target) -> list[str]:
    """One line per chosen element whose prerequisite is neither chosen nor loaded into `target` before
    (its books there hold no successful unit of it)."""
    problems = []
    with Manifest(manifest_url, target.key) as ledger:
        for element in chosen:
            for needed in prerequisites(element):
                if needed in chosen:
                    continue
                loaded = ledger.units(needed, columns=["disposition"])["disposition"].eq("successful").any()
                if not loaded:
                    problems.append(
                        f"{element} needs {needed}, which is neither chosen nor loaded: "
                        f"ELEMENTS={','.join(sorted({needed, *chosen}, key=PROFILE.load_order.index))}"
                    )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000, help="size of the generated sample (default 1000)")
    parser.add_argument(
        "--run-config",
        type=Path,
        default=config.run_config_file(),
        help="a run-config YAML file for every run (default: RUN_CONFIG)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print Dagster's log lines and warnings too (they are always in the Dagster instance)",
    )
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_dagster_warnings()
    run_config = read_run_config(args.run_config)
    if config.executor_name() == "celery" and not config.medplum_base_url():
        # The workers write to Medplum from their own processes: a server this command starts is unknown to them.
        print(
            "DAGSTER_EXECUTOR=celery: the Celery workers write to Medplum too, so they need its address: start the "
            "server they share (make medplum: http://127.0.0.1:8103/) and set MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID "
            "and MEDPLUM_CLIENT_SECRET for make workers and make demo alike (README, Scaling out)",
            file=sys.stderr,
        )
        return 2
    ensure_dagster_home()
    ensure_legacy_source(args.patients)
    summaries = []
    started = time.monotonic()
    with medplum_server(), DagsterInstance.get() as instance:
        # Imported once the environment is set: the resources read it.
        from migration_assets.definitions import defs, migration_job

        manifest: ManifestStore = (defs.resources or {})["manifest"]
        medplum: MedplumResource = (defs.resources or {})["medplum"]
        settings: MigrationSettings = (defs.resources or {})["migration_settings"]
        # The credentials resolved from the environment (EnvVar), as a run resolves them.
        target = medplum.process_config_and_initialize().target()
        problems = missing_prerequisites(LOAD_ORDER, manifest.url, target)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 2
        run_config, rebuilt = executor_run(run_config, migration_job)
        with LiveView() as view:
            view.print(f"profile {PROFILE.name}: migrating into {target} in order: {', '.join(LOAD_ORDER)}")
            for element in LOAD_ORDER:
                with view.element(element):
                    summaries.append(
                        migrate_element(element, instance, defs, run_config, verbose=args.verbose, rebuilt=rebuilt)
                    )
                view.print(element_line(summaries[-1]))
        report = write_report(instance, manifest.url, Path(settings.evidence_dir), target.key)
    print_summary(summaries, time.monotonic() - started, Path(settings.evidence_dir), report)
    return 0 if all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
