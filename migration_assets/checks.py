"""Asset checks per data element: the validation report a migration lead reads before trusting the
data in Medplum. Each check calls verification.py and turns its answer into a readable result."""

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetIn,
    MetadataValue,
    asset_check,
)

from migration_assets.assets import fhir_frames, medplum_resources
from migration_assets.elements import get_element
from migration_assets.elements.base import schema_failures
from migration_assets.loader import load_frame
from migration_assets.partitions import DATA_ELEMENTS
from migration_assets.reporting import counts, quarantine_summary, table
from migration_assets.resources import ManifestStore, MedplumResource, MigrationSettings
from migration_assets.verification import (
    accounting,
    check_prerequisites,
    reconcile,
    reference_problems,
    sample_groups,
    take_census,
)

_FRAME = {"fhir_frames": AssetIn("fhir_frames")}


@asset_check(
    asset=fhir_frames,
    partitions_def=DATA_ELEMENTS,
    blocking=True,
    description="Pandera validation of the FHIR frame. Rows breaking a rule are quarantined; the check warns "
    "while the quarantined share stays under the threshold and fails (blocking the load) above it.",
)
def schema(
    context: AssetCheckExecutionContext, fhir_frames: pl.DataFrame, migration_settings: MigrationSettings
) -> AssetCheckResult:
    element = get_element(context.partition_key)
    still_failing = schema_failures(fhir_frames, element.schemas)
    quarantined = int(fhir_frames["quarantine_rule"].is_not_null().sum())
    share = quarantined / fhir_frames.height if fhir_frames.height else 0.0
    passed = still_failing.is_empty() and share <= migration_settings.quarantine_threshold
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR if not passed else AssetCheckSeverity.WARN,
        description=f"{quarantined} of {fhir_frames.height} rows quarantined ({share:.1%}; threshold "
        f"{migration_settings.quarantine_threshold:.0%})",
        metadata={
            **counts({"rows": fhir_frames.height, "quarantined": quarantined, "failing_after_quarantine": still_failing.height}),
            "quarantined_share": MetadataValue.float(round(share, 4)),
            "quarantine": table(quarantine_summary(fhir_frames)),
            "failing_rules": table(still_failing.drop("_row", "failure_case")),
        },
    )


@asset_check(
    asset=fhir_frames,
    partitions_def=DATA_ELEMENTS,
    blocking=True,
    description="Every resource of an earlier data element that this one references is in Medplum "
    "(or explained in the manifest); otherwise the load is refused, naming the missing elements.",
)
def prerequisites_loaded(
    context: AssetCheckExecutionContext, fhir_frames: pl.DataFrame, medplum: MedplumResource, manifest: ManifestStore
) -> AssetCheckResult:
    with medplum.open_client() as client, manifest.open() as ledger:
        report = check_prerequisites(client, ledger, context.partition_key, fhir_frames)
    return AssetCheckResult(
        passed=not report.blocking_elements,
        description=report.message(),
        metadata={
            **counts({"referenced": report.checked, "missing": report.unexplained.height,
                      "explained_missing": report.explained.height}),
            "missing_targets": table(report.unexplained),
        },
    )


@asset_check(
    asset=medplum_resources,
    partitions_def=DATA_ELEMENTS,
    additional_ins=_FRAME,
    description="Every reference in the loaded resources resolves to an existing resource of the expected type, "
    "and to the right one (the referenced Patient carries the source row's patient_id).",
)
def reference_integrity(
    context: AssetCheckExecutionContext, fhir_frames: pl.DataFrame, medplum: MedplumResource
) -> AssetCheckResult:
    with medplum.open_client() as client:
        checked, problems = reference_problems(client, fhir_frames, take_census(client, fhir_frames))
    return AssetCheckResult(
        passed=problems.is_empty(),
        description=f"{checked - problems.height} of {checked} references resolve to the expected resource",
        metadata={**counts({"references_checked": checked, "problems": problems.height}), "problems": table(problems)},
    )


@asset_check(
    asset=medplum_resources,
    partitions_def=DATA_ELEMENTS,
    additional_ins=_FRAME,
    description="Resubmitting the partition creates nothing and changes nothing, and each source identifier "
    "matches exactly one resource in Medplum.",
)
def idempotent_reload(
    context: AssetCheckExecutionContext,
    fhir_frames: pl.DataFrame,
    medplum: MedplumResource,
    manifest: ManifestStore,
    migration_settings: MigrationSettings,
) -> AssetCheckResult:
    element = get_element(context.partition_key)
    settings = migration_settings.load_settings(element, resend_unchanged=True)
    resubmitted = sample_groups(
        fhir_frames, migration_settings.idempotency_sample_size, migration_settings.idempotency_sample_seed
    )
    with medplum.open_client() as client, manifest.open() as ledger:
        result = load_frame(client, ledger, f"{context.run.run_id}-reload", element.name, element.transactional,
                            resubmitted, settings)
        duplicates = reconcile(fhir_frames, ledger.units(element.name), take_census(client, fhir_frames)).duplicates
    changed = result.counts["created"] + result.counts["updated"]
    passed = changed == 0 and result.counts["failed"] == 0 and duplicates.is_empty()
    return AssetCheckResult(
        passed=passed,
        description=f"resubmitted {result.counts['sent']}: {result.counts['created']} created, "
        f"{result.counts['updated']} updated, {result.counts['failed']} failed; {duplicates.height} duplicated identifiers",
        metadata={**counts({k: result.counts[k] for k in ("sent", "created", "updated", "unchanged", "failed")}),
                  "sample": "whole partition" if resubmitted.height == fhir_frames.height
                  else f"{resubmitted.height} rows, seed {migration_settings.idempotency_sample_seed}",
                  "duplicates": table(duplicates)},
    )


@asset_check(
    asset=medplum_resources,
    partitions_def=DATA_ELEMENTS,
    additional_ins=_FRAME,
    description="Source rows against resources found in Medplum by identifier: missing, unexpected and "
    "duplicate identifiers listed, each missing one with its disposition in the manifest.",
)
def reconciliation(
    context: AssetCheckExecutionContext, fhir_frames: pl.DataFrame, medplum: MedplumResource, manifest: ManifestStore
) -> AssetCheckResult:
    with medplum.open_client() as client, manifest.open() as ledger:
        report = reconcile(fhir_frames, ledger.units(context.partition_key), take_census(client, fhir_frames))
    return AssetCheckResult(
        passed=report.passed,
        description=f"{report.found} of {report.expected} expected resources found; {report.missing.height} missing, "
        f"{report.unexpected.height} unexpected, {report.duplicates.height} duplicated",
        metadata={
            **counts({"expected": report.expected, "found": report.found, "missing": report.missing.height,
                      "unexpected": report.unexpected.height, "duplicated": report.duplicates.height}),
            "missing_identifiers": table(report.missing),
            "unexpected_identifiers": table(report.unexpected),
            "duplicate_identifiers": table(report.duplicates),
        },
    )


@asset_check(
    asset=medplum_resources,
    partitions_def=DATA_ELEMENTS,
    additional_ins=_FRAME,
    description="The books: every source unit has exactly one disposition, source units = successful + "
    "rejected + skipped + quarantined, and nothing is left pending after the run.",
)
def accounting_balanced(
    context: AssetCheckExecutionContext, fhir_frames: pl.DataFrame, manifest: ManifestStore
) -> AssetCheckResult:
    with manifest.open() as ledger:
        books = accounting(fhir_frames, ledger.units(context.partition_key))
    d = books.dispositions
    return AssetCheckResult(
        passed=books.balanced,
        description=f"{books.source_units} source units = {d['successful']} successful + {d['rejected']} rejected + "
        f"{d['skipped']} skipped + {d['quarantined']} quarantined; {d['pending']} pending, {d['none']} unrecorded",
        # "none" in the books is a unit the ledger has no disposition for: shown as "unrecorded".
        metadata=counts({"source_units": books.source_units,
                         **{("unrecorded" if name == "none" else name): n for name, n in d.items()}}),
    )


ALL_CHECKS = [schema, prerequisites_loaded, reference_integrity, idempotent_reload, reconciliation, accounting_balanced]
