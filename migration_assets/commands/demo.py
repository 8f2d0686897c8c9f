"""`make demo`: migrate every data element of the profile (or those ELEMENTS names) in dependency order
with every check, print a summary per element, and exit non-zero when a run or a check failed.

RUN_CONFIG=file.yaml (or --run-config) gives every run the settings the launchpad takes, e.g.
`resources: {migration_settings: {config: {quarantine_threshold: 0.1}}}`."""

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance, Definitions
from dagster_shared.error import SerializableErrorInfo

from migration_assets import config
from migration_assets.active import LOAD_ORDER, PROFILE, prerequisites
from migration_assets.commands.environment import ensure_dagster_home, ensure_legacy_source, medplum_server
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import Target
from migration_assets.pipeline.resources import ManifestStore, MedplumResource

# Step-by-step events stay in the instance (and the UI); the console gets the element's own lines.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
SUMMARY_COUNTS = ("source_rows", "quarantined", "sent", "created", "updated", "unchanged", "not_sent_unchanged",
                  "lost_in_target", "failed", "pending_quota", "half_written")


@dataclass
class ElementSummary:
    element: str
    run_ok: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    checks_passed: list[str] = field(default_factory=list)
    checks_failed: list[str] = field(default_factory=list)
    # What each failed check said: it names what is wrong (and, for prerequisites, what to load first).
    failure_messages: dict[str, str] = field(default_factory=dict)
    error: str = ""
    # Seconds the load waited on Medplum's FHIR quota (pacing and resends of what it refused).
    quota_wait_seconds: float = 0.0
    # Set when the project writes transactions like batches (its transaction-bundles feature is off).
    transactions_off: str = ""

    @property
    def ok(self) -> bool:
        return self.run_ok and not self.checks_failed


def migrate_element(element: str, instance: DagsterInstance, defs: Definitions,
                    run_config: Mapping[str, Any] | None = None) -> ElementSummary:
    """One run of the migration job for one partition, on the real Dagster instance."""
    summary = ElementSummary(element)
    job = defs.resolve_job_def("migrate_data_element")
    result = job.execute_in_process(
        partition_key=element, instance=instance, raise_on_error=False, run_config={**QUIET_CONSOLE, **(run_config or {})}
    )
    summary.run_ok = result.success
    for materialization in result.asset_materializations_for_node("medplum_resources"):
        summary.counts = {
            name: value.value
            for name, value in materialization.metadata.items()
            if name in SUMMARY_COUNTS and isinstance(value.value, int)
        }
        waited = materialization.metadata.get("quota_wait_seconds")
        summary.quota_wait_seconds = float(waited.value) if waited is not None and isinstance(waited.value, float) else 0.0
        off = materialization.metadata.get("transaction_bundles")
        summary.transactions_off = str(off.value) if off is not None else ""
    for evaluation in result.get_asset_check_evaluations():
        (summary.checks_passed if evaluation.passed else summary.checks_failed).append(evaluation.check_name)
        if not evaluation.passed:
            summary.failure_messages[evaluation.check_name] = evaluation.description or ""
    if not result.success:
        failure = next((event for event in result.all_events if event.is_step_failure), None)
        summary.error = _root_message(failure.step_failure_data.error) if failure else "run failed"
    return summary


def _root_message(error: SerializableErrorInfo | None) -> str:
    """The message of the innermost cause: Dagster wraps the asset's own error ("Error occurred while
    executing op ...") around the one that says what went wrong."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error else "run failed"


def print_summary(summaries: list[ElementSummary]) -> None:
    headers = ("element", *SUMMARY_COUNTS, "checks passed", "checks failed")
    rows = [
        (s.element, *(str(s.counts.get(name, "-")) for name in SUMMARY_COUNTS), str(len(s.checks_passed)),
         ", ".join(s.checks_failed) or "0")
        for s in summaries
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print()
    for line in (headers, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    waited = sum(s.quota_wait_seconds for s in summaries)
    print(f"\nwaited {waited:.1f}s on the FHIR quota in all "
          f"({', '.join(f'{s.element} {s.quota_wait_seconds:.1f}s' for s in summaries if s.quota_wait_seconds)})"
          if waited else "\nwaited 0s on the FHIR quota")
    # Said once, whatever the number of transactional elements.
    off = next((s.transactions_off for s in summaries if s.transactions_off), "")
    if off:
        print(f"\nWARNING: {off.removeprefix('off: ')}")
    for s in summaries:
        for check, message in s.failure_messages.items():
            print(f"\n{s.element}: check {check} failed: {message}")
        if s.error and not s.failure_messages:
            print(f"\n{s.element}: {s.error}")


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
                    problems.append(f"{element} needs {needed}, which is neither chosen nor loaded: "
                                    f"ELEMENTS={','.join(sorted({needed, *chosen}, key=PROFILE.load_order.index))}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000, help="size of the generated sample (default 1000)")
    parser.add_argument("--run-config", type=Path, default=config.run_config_file(),
                        help="a run-config YAML file for every run (default: RUN_CONFIG)")
    args = parser.parse_args(argv)
    run_config = read_run_config(args.run_config)
    ensure_dagster_home()
    ensure_legacy_source(args.patients)
    summaries = []
    with medplum_server(), DagsterInstance.get() as instance:
        # Imported once the environment is set: the resources read it.
        from migration_assets.definitions import defs

        manifest: ManifestStore = (defs.resources or {})["manifest"]
        medplum: MedplumResource = (defs.resources or {})["medplum"]
        # The credentials resolved from the environment (EnvVar), as a run resolves them.
        target = medplum.process_config_and_initialize().target()
        problems = missing_prerequisites(LOAD_ORDER, manifest.url, target)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 2
        print(f"profile {PROFILE.name}: migrating into {target} in order: {', '.join(LOAD_ORDER)}")
        for element in LOAD_ORDER:
            summaries.append(migrate_element(element, instance, defs, run_config))
            print(f"{element}: {'ok' if summaries[-1].ok else 'FAILED'}", flush=True)
    print_summary(summaries)
    return 0 if all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
