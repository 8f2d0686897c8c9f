"""Phased adoption in Dagster: where every element stands, the regular sync (with a schedule and a
sensor per element), the dual-write check, read readiness, the deprecation export and chart review.

Thin wrappers: the work is in phases.py, sync.py and chart_review.py. Metadata and logs carry
identifiers and counts only; values (patient data) go to evidence files and review pages.
"""

import json
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetSelection,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SkipReason,
    asset,
    asset_check,
    define_asset_job,
    schedule,
    sensor,
)
from pydantic import Field

from migration_assets.active import LOAD_ORDER, get_element
from migration_assets.adoption.archive import export_legacy_tables, latest_archive, verify_archive
from migration_assets.adoption.chart_review import build_chart_review
from migration_assets.adoption.dual_write import compare_stores, write_discrepancies
from migration_assets.adoption.readiness import assess_readiness, write_readiness
from migration_assets.adoption.sync import (
    SyncRefused,
    legacy_frame,
    pending_changes,
    read_legacy,
    select_candidates,
    sync_element,
)
from migration_assets.ledger.sync_state import SyncState
from migration_assets.paths import state_dir
from migration_assets.phases import PHASE_BEHAVIOUR, ElementPhase, PhaseConfigError, PhasesConfig, load_phases
from migration_assets.pipeline.loader import PrerequisitesMissing
from migration_assets.pipeline.partitions import DATA_ELEMENTS
from migration_assets.pipeline.reporting import counts, table
from migration_assets.pipeline.resources import (
    LegacySource,
    ManifestStore,
    MedplumResource,
    MigrationSettings,
)

GROUP = "adoption"


def _phases() -> PhasesConfig:
    try:
        return load_phases()
    except PhaseConfigError as error:
        raise Failure(description=f"invalid phases configuration: {error}") from None


def _phase_metadata(config: PhasesConfig, phase: ElementPhase) -> dict[str, Any]:
    return {
        "phase": phase.phase,
        "phase_since": phase.since.isoformat() if phase.since else "",
        "phases_version": config.version,
        "phases_file": MetadataValue.path(str(config.path)),
        "phase_behaviour": phase.behaviour.summary,
    }


def _behaviour_table() -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "phase": b.phase,
                "sync": b.sync,
                "first_sync_from": b.first_sync_from,
                "backfills": str(b.backfills),
                "reads_from": b.reads_from,
                "writes": b.writes,
                "archive": str(b.archive),
            }
            for b in PHASE_BEHAVIOUR.values()
        ]
    )


# -- where every element stands --------------------------------------------------------------------


@asset(
    group_name=GROUP,
    kinds={"yaml"},
    description="Where every data element stands in its adoption: phase and since when (from the versioned "
    "phases.yaml, validated), what the phase lets run, the last sync and its watermark, read readiness and "
    "the legacy archive.",
)
def adoption_status(
    context: AssetExecutionContext,
    medplum: MedplumResource,
    manifest: ManifestStore,
    migration_settings: MigrationSettings,
) -> MaterializeResult:
    config = _phases()
    with manifest.open(medplum.target()) as ledger:
        syncs = SyncState(ledger).last_syncs()
    readiness_dir = state_dir(migration_settings.evidence_dir, "readiness")
    archive_dir = state_dir(migration_settings.evidence_dir, "legacy_archive")
    rows = []
    for name in LOAD_ORDER:
        phase = config.of(name)
        readiness_file = readiness_dir / f"{name}.json"
        readiness = json.loads(readiness_file.read_text()) if readiness_file.is_file() else {}
        archive = latest_archive(archive_dir, name)
        sync = syncs.get(name, {})
        rows.append(
            {
                "element": name,
                "phase": phase.phase + ("" if phase.declared else " (default)"),
                "since": phase.since.isoformat() if phase.since else "",
                "sync": phase.behaviour.sync,
                "reads_from": readiness.get(
                    "reads_from", "legacy" if phase.behaviour.reads_from != "medplum" else "medplum"
                ),
                "read_ready": str(readiness.get("ready", "not assessed")),
                "last_sync_at": str(sync.get("last_sync_at") or ""),
                "watermark": str(sync.get("watermark") or ""),
                "legacy_archive": archive.name if archive else "",
            }
        )
    status = pl.DataFrame(rows)
    context.log.info(f"phases version {config.version}: " + ", ".join(f"{r['element']}={r['phase']}" for r in rows))
    return MaterializeResult(
        metadata={
            "phases_version": config.version,
            "phases_file": MetadataValue.path(str(config.path)),
            "elements": table(status, limit=100),
            "phase_behaviour": table(_behaviour_table()),
            **counts(
                {
                    f"elements_in/{phase}": sum(1 for r in rows if r["phase"].split(" ")[0] == phase)
                    for phase in PHASE_BEHAVIOUR
                }
            ),
            "warnings": "; ".join(config.warnings) or "none",
        }
    )


# -- the sync -------------------------------------------------------------------------------------


@asset(
    partitions_def=DATA_ELEMENTS,
    group_name=GROUP,
    kinds={"medplum", "sql"},
    description="One tick of the regular sync of a data element, as its phase says: legacy rows changed since "
    "the last successful sync (watermark on updated_at, kept in the manifest database) are re-mapped and "
    "loaded idempotently; front_end_write only verifies; deprecated refuses.",
)
def legacy_sync(
    context: AssetExecutionContext,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> MaterializeResult:
    element = get_element(context.partition_key)
    config = _phases()
    phase = config.of(element.name)
    try:
        with medplum.open_client() as client, manifest.open(client.target) as ledger:
            outcome = sync_element(
                client,
                ledger,
                context.run.run_id,
                element,
                phase,
                config.version,
                legacy_db.url,
                migration_settings.source_system,
                migration_settings.load_settings(element),
            )
    except SyncRefused as refused:
        context.log.warning(str(refused))
        raise Failure(description=str(refused), metadata=_phase_metadata(config, phase)) from None
    except PrerequisitesMissing as missing:
        raise Failure(description=f"sync of {element.name} waits for its prerequisites: {missing}") from None
    context.log.info(outcome.message)
    for table_name in outcome.untracked_tables:
        context.log.warning(f"{table_name} has no updated_at column: every unit it feeds is compared by content hash")
    result = outcome.result.counts if outcome.result else {}
    return MaterializeResult(
        metadata={
            **_phase_metadata(config, phase),
            "mode": outcome.mode,
            "message": outcome.message,
            **counts({"candidates": outcome.candidates, "retried": outcome.retried, "backfilled": outcome.backfilled}),
            **counts({f"changed_rows/{t}": n for t, n in outcome.changed_rows.items() if n >= 0}),
            **counts({k: v for k, v in result.items()}),
            "watermarks": table(
                pl.DataFrame(
                    [
                        {"table": t, "before": outcome.watermarks_before.get(t) or "", "after": mark or "(not tracked)"}
                        for t, mark in outcome.watermarks_after.items()
                    ],
                    schema={"table": pl.String, "before": pl.String, "after": pl.String},
                )
            ),
            "failures": table(
                pl.DataFrame(outcome.result.failures)
                if outcome.result and outcome.result.failures
                else pl.DataFrame(schema={"unit_key": pl.String})
            ),
        }
    )


@asset_check(
    asset=legacy_sync,
    partitions_def=DATA_ELEMENTS,
    description="Dual-write reconciliation: the legacy store and Medplum compared record by record and field by "
    "field (FHIR built from the legacy rows against the resource read from Medplum; id and meta ignored; "
    "references by target). Every discrepancy (missing on one side, duplicated, stale, differing values) is "
    "counted; values go to the evidence files only. In dual_write, only units touched since the phase began "
    "are expected; a seeded sample is compared when phases.yaml sets dual_write_sample.",
)
def dual_write_consistency(
    context: AssetCheckExecutionContext,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> AssetCheckResult:
    element = get_element(context.partition_key)
    config = _phases()
    phase = config.of(element.name)
    tables = read_legacy(legacy_db.url, element)
    rows, frame = legacy_frame(element, tables, migration_settings.source_system, legacy_db.url)
    with medplum.open_client() as client, manifest.open(client.target) as ledger:
        units = ledger.units(element.name)
        if phase.behaviour.first_sync_from == "phase_start":
            frame = frame.filter(select_candidates(element, tables, rows, frame, {}, phase, units, 0).mask)
        report = compare_stores(
            client,
            element.name,
            frame,
            units,
            phase.dual_write_sample,
            look_for_extras=phase.behaviour.first_sync_from != "phase_start",
        )
    json_path, csv_path = write_discrepancies(report, Path(migration_settings.evidence_dir) / element.name)
    sample = f"seeded sample of {report.compared} (seed {report.sample.seed})" if report.sample.size else "every unit"
    context.log.info(f"{element.name}: {report.units_with_discrepancies} units with discrepancies of {report.compared}")
    return AssetCheckResult(
        passed=report.passed,
        severity=AssetCheckSeverity.ERROR if phase.behaviour.readiness_is_blocking else AssetCheckSeverity.WARN,
        description=f"{report.units_with_discrepancies} of {report.compared} units compared ({sample}) differ between "
        f"the legacy store and Medplum: " + ", ".join(f"{n} {k}" for k, n in report.counts.items() if n)
        if not report.passed
        else f"{report.compared} units compared ({sample}): the legacy store and Medplum agree",
        metadata={
            **counts(
                {
                    "compared": report.compared,
                    "eligible": report.eligible,
                    "quarantined_not_compared": report.quarantined,
                    "units_with_discrepancies": report.units_with_discrepancies,
                }
            ),
            **counts({f"discrepancies/{k}": n for k, n in report.counts.items()}),
            "discrepancies": table(report.summary()),
            "sample_seed": report.sample.seed,
            "evidence_json": MetadataValue.path(str(json_path)),
            "evidence_csv": MetadataValue.path(str(csv_path)),
            **_phase_metadata(config, phase),
        },
    )


# -- read readiness -------------------------------------------------------------------------------


@asset(
    partitions_def=DATA_ELEMENTS,
    group_name=GROUP,
    kinds={"json"},
    description="Whether reads of the data element can move to Medplum (every unit compared: nothing missing "
    "on either side, no differing field, no duplicate, references intact, no load half done), written as "
    "readiness/<element>.json for an application's feature flag (ready, reads_from).",
)
def read_readiness(
    context: AssetExecutionContext,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> MaterializeResult:
    element = get_element(context.partition_key)
    config = _phases()
    phase = config.of(element.name)
    _, frame = legacy_frame(
        element, read_legacy(legacy_db.url, element), migration_settings.source_system, legacy_db.url
    )
    with medplum.open_client() as client, manifest.open(client.target) as ledger:
        document, report, problems = assess_readiness(client, ledger, element, frame, phase, config.version)
    document["source"] = legacy_db.display_url
    path = write_readiness(document, state_dir(migration_settings.evidence_dir, "readiness"))
    write_discrepancies(report, Path(migration_settings.evidence_dir) / element.name)
    context.log.info(f"{element.name}: ready={document['ready']} reads_from={document['reads_from']}")
    return MaterializeResult(
        metadata={
            "ready": document["ready"],
            "reads_from": document["reads_from"],
            "reasons": "; ".join(document["reasons"]) or "none",
            **counts(document["criteria"]),
            "readiness_file": MetadataValue.path(str(path)),
            "discrepancies": table(report.summary()),
            "reference_problems": table(problems),
            **_phase_metadata(config, phase),
        }
    )


@asset_check(
    asset=read_readiness,
    partitions_def=DATA_ELEMENTS,
    description="Reads can move to Medplum: the readiness file says ready. A warning before the element reaches "
    "read_from_medplum, an error from then on (reads already depend on it).",
)
def reads_can_move_to_medplum(
    context: AssetCheckExecutionContext, migration_settings: MigrationSettings
) -> AssetCheckResult:
    name = context.partition_key
    phase = _phases().of(name)
    path = state_dir(migration_settings.evidence_dir, "readiness") / f"{name}.json"
    document: dict[str, Any] = (
        json.loads(path.read_text()) if path.is_file() else {"ready": False, "reasons": ["not assessed"]}
    )
    return AssetCheckResult(
        passed=bool(document["ready"]),
        severity=AssetCheckSeverity.ERROR if phase.behaviour.readiness_is_blocking else AssetCheckSeverity.WARN,
        description=(
            f"{name}: reads can move to Medplum"
            if document["ready"]
            else f"{name}: not ready: {'; '.join(document.get('reasons', []))}"
        ),
        metadata={
            "readiness_file": MetadataValue.path(str(path)),
            "reads_from": document.get("reads_from", "legacy"),
            "phase": phase.phase,
        },
    )


# -- deprecation ----------------------------------------------------------------------------------


@asset(
    partitions_def=DATA_ELEMENTS,
    group_name=GROUP,
    kinds={"parquet"},
    description="Deprecation of a data element: a final verification (the readiness criteria, all must hold) and "
    "a frozen, read-only export of its legacy tables as Parquet with export.json and a SHA256SUMS checksum "
    "manifest, kept for the verification period. Refused unless the element is in phase deprecated.",
)
def legacy_archive(
    context: AssetExecutionContext,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> MaterializeResult:
    element = get_element(context.partition_key)
    config = _phases()
    phase = config.of(element.name)
    if not phase.behaviour.archive:
        raise Failure(description=f"{phase.describe()}: the legacy tables are archived when it is deprecated")
    _, frame = legacy_frame(
        element, read_legacy(legacy_db.url, element), migration_settings.source_system, legacy_db.url
    )
    with medplum.open_client() as client, manifest.open(client.target) as ledger:
        document, _, _ = assess_readiness(client, ledger, element, frame, phase, config.version)
    if not document["ready"]:
        raise Failure(
            description=f"final verification of {element.name} failed: {'; '.join(document['reasons'])}",
            metadata=counts(document["criteria"]),
        )
    archive = export_legacy_tables(
        legacy_db.url,
        element,
        state_dir(migration_settings.evidence_dir, "legacy_archive"),
        phase,
        config.version,
        document,
    )
    description = json.loads((archive.directory / "export.json").read_text())
    context.log.info(f"{element.name}: legacy tables exported to {archive.directory}")
    return MaterializeResult(
        metadata={
            "archive": MetadataValue.path(str(archive.directory)),
            "keep_until": description["keep_until"],
            "checksums": table(
                pl.DataFrame({"file": list(archive.checksums), "sha256": list(archive.checksums.values())})
            ),
            **counts({f"rows/{t}": n for t, n in archive.rows.items()}),
            **counts(document["criteria"]),
            **_phase_metadata(config, phase),
        }
    )


@asset_check(
    asset=legacy_archive,
    partitions_def=DATA_ELEMENTS,
    description="The latest frozen export of the element is intact: every file matches SHA256SUMS, nothing is "
    "missing or unlisted, and files and folder are read-only.",
)
def legacy_archive_intact(
    context: AssetCheckExecutionContext, migration_settings: MigrationSettings
) -> AssetCheckResult:
    directory = latest_archive(state_dir(migration_settings.evidence_dir, "legacy_archive"), context.partition_key)
    problems = verify_archive(directory) if directory else ["no export"]
    return AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or f"{directory}: every checksum matches, read-only",
        metadata={"archive": MetadataValue.path(str(directory or "")), **counts({"problems": len(problems)})},
    )


# -- chart review -----------------------------------------------------------------------------------


class ChartReviewConfig(Config):
    sample_size: int = Field(default=5, description="Patients per sample (repeatable, random, risk-based).")
    seed: int | None = Field(default=None, description="Seed of the random sample; a fresh one (recorded) when unset.")
    elements: list[str] = Field(default_factory=list, description="Data elements to show; all when empty.")


@asset(
    group_name=GROUP,
    kinds={"html"},
    description="Chart review samples: the first patients by key, a random draw with a recorded seed, and the "
    "riskiest patients (identifier conflicts, odd values, most records); a page per patient with the legacy "
    "rows and the Medplum resources side by side. Open index.html (path in the metadata).",
)
def chart_review(
    context: AssetExecutionContext,
    config: ChartReviewConfig,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> MaterializeResult:
    directory = state_dir(migration_settings.evidence_dir, "chart_review") / context.run.run_id
    with medplum.open_client() as client, manifest.open(client.target) as ledger:
        review = build_chart_review(
            client,
            ledger,
            legacy_db.url,
            migration_settings.source_system,
            directory,
            config.sample_size,
            config.seed,
            config.elements or None,
        )
    seed = next(s.seed for s in review.samples if s.kind == "random")
    context.log.info(f"chart review: {len(review.pages)} pages, random seed {seed}")
    return MaterializeResult(
        metadata={
            "index": MetadataValue.path(str(review.index)),
            "index_json": MetadataValue.path(str(review.directory / "index.json")),
            "random_seed": seed,
            **counts({"pages": len(review.pages)}),
            **{f"sample/{s.kind}": ", ".join(s.patients) for s in review.samples},
        }
    )


# -- jobs, schedules and sensors ------------------------------------------------------------------

sync_job = define_asset_job(
    "sync_data_element",
    selection=AssetSelection.assets(legacy_sync),
    description="One tick of the regular sync of a data element (pick its partition), with the dual-write check.",
)
readiness_job = define_asset_job(
    "assess_read_readiness",
    selection=AssetSelection.assets(read_readiness),
    description="Assess whether reads of a data element can move to Medplum; writes its readiness file.",
)
deprecation_job = define_asset_job(
    "deprecate_data_element",
    selection=AssetSelection.assets(legacy_archive),
    description="Final verification and frozen export of a deprecated data element's legacy tables.",
)
overview_job = define_asset_job(
    "adoption_overview",
    selection=AssetSelection.assets(adoption_status, chart_review),
    description="Where every element stands, and the chart review samples.",
)

SYNC_CRON = "*/15 * * * *"


def _sync_schedule(element: str):  # type: ignore[no-untyped-def]
    @schedule(
        name=f"sync_{element}_every_15_minutes",
        cron_schedule=SYNC_CRON,
        job=sync_job,
        description=f"Sync {element} every 15 minutes (skipped when its phase is deprecated).",
    )
    def _schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        phase = load_phases().of(element)
        if phase.behaviour.sync == "off":
            return SkipReason(f"{phase.describe()}: no longer synced")
        return RunRequest(partition_key=element, tags={"adoption/phase": phase.phase})

    return _schedule


def _sync_sensor(element: str):  # type: ignore[no-untyped-def]
    @sensor(
        name=f"sync_{element}_on_legacy_change",
        job=sync_job,
        minimum_interval_seconds=30,
        description=f"Sync {element} as soon as a legacy row it reads has an updated_at after the watermark.",
    )
    def _sensor(
        context: SensorEvaluationContext, legacy_db: LegacySource, medplum: MedplumResource, manifest: ManifestStore
    ) -> RunRequest | SkipReason:
        phase = load_phases().of(element)
        if phase.behaviour.sync == "off":
            return SkipReason(f"{phase.describe()}: no longer synced")
        with manifest.open(medplum.target()) as ledger:
            marks = SyncState(ledger).watermarks(element)
        newest, changed = pending_changes(legacy_db.url, get_element(element), marks)
        if not changed:
            untracked = [t for t, mark in newest.items() if mark is None]
            extra = f" ({', '.join(untracked)} not tracked: no updated_at)" if untracked else ""
            return SkipReason(f"no legacy row of {element} changed since the last sync{extra}")
        state = "|".join(f"{t}={newest[t]}" for t in sorted(newest))
        return RunRequest(
            partition_key=element,
            run_key=f"{element}:{phase.phase}:{state}",
            tags={"adoption/phase": phase.phase, "adoption/changed_tables": ",".join(changed)},
        )

    return _sensor


ADOPTION_ASSETS = [adoption_status, legacy_sync, read_readiness, legacy_archive, chart_review]
ADOPTION_CHECKS = [dual_write_consistency, reads_can_move_to_medplum, legacy_archive_intact]
ADOPTION_JOBS = [sync_job, readiness_job, deprecation_job, overview_job]
# One schedule and one sensor per data element.
ADOPTION_SCHEDULES = [_sync_schedule(element) for element in LOAD_ORDER]
ADOPTION_SENSORS = [_sync_sensor(element) for element in LOAD_ORDER]
