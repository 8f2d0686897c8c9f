"""Asset checks per data element: the validation report a migration lead reads before trusting the
data in Medplum. Each check calls verify/ and turns its answer into a readable result."""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetIn,
    MetadataValue,
    multi_asset_check,
)

from migration_assets.active import get_element, prerequisites
from migration_assets.elements.base import schema_failures
from migration_assets.elements.files import legacy_files
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient, Target
from migration_assets.pipeline.assets import fhir_frames
from migration_assets.pipeline.frame_parts import KEY_COLUMNS, REFERENCE_COLUMNS, FrameParts
from migration_assets.pipeline.loader import (
    LEDGER_COLUMNS,
    Known,
    LoadResult,
    held_in_target,
    in_flight_start,
    in_shard,
    load_frame,
)
from migration_assets.pipeline.partitions import DATA_ELEMENTS
from migration_assets.pipeline.reporting import counts, quarantine_summary, table
from migration_assets.pipeline.resources import LegacySource, ManifestStore, MedplumResource, MigrationSettings
from migration_assets.pipeline.sharded import medplum_resources
from migration_assets.pipeline.waiting import wait_for_loads
from migration_assets.verify.books import accounting, content_fingerprint, sample_groups
from migration_assets.verify.census import RunCensus, census_kinds
from migration_assets.verify.prerequisites import RunPrerequisites, check_prerequisites
from migration_assets.verify.reconcile import RECONCILE_UNIT_COLUMNS, reconcile, reference_problems

_FRAME = {"fhir_frames": AssetIn("fhir_frames")}
Shared = TypeVar("Shared")


def _run_census(context: AssetCheckExecutionContext, settings: MigrationSettings, target: Target) -> RunCensus:
    """The census of this run in `target`: the first check (or the report) that asks brings it up to
    date after the load, the others read it from its files."""
    return RunCensus.of_run(settings.evidence_dir, context.run.run_id, target, settings.incremental_census)


def _run_prerequisites(
    context: AssetCheckExecutionContext, settings: MigrationSettings, target: Target
) -> RunPrerequisites:
    """The prerequisite report of this run: made by the first step that asks, read by the others."""
    return RunPrerequisites.of_run(settings.evidence_dir, context.run.run_id, target, context.partition_key)


@dataclass
class _Frame:
    """What the blocking checks of the frame share in their one step."""

    context: AssetCheckExecutionContext
    fhir_frames: FrameParts
    medplum: MedplumResource
    manifest: ManifestStore
    migration_settings: MigrationSettings


def schema(checked: _Frame) -> AssetCheckResult:
    context, fhir_frames, migration_settings = checked.context, checked.fhir_frames, checked.migration_settings
    element = get_element(context.partition_key)
    # Part by part: pandera reads the resources too.
    still_failing = pl.concat([schema_failures(part, element.schemas) for part in fhir_frames])
    keys = fhir_frames.read(KEY_COLUMNS)
    quarantined = int(keys["quarantine_rule"].is_not_null().sum())
    share = quarantined / keys.height if keys.height else 0.0
    passed = still_failing.is_empty() and share <= migration_settings.quarantine_threshold
    return AssetCheckResult(
        check_name="schema",
        passed=passed,
        severity=AssetCheckSeverity.ERROR if not passed else AssetCheckSeverity.WARN,
        description=f"{quarantined} of {keys.height} rows quarantined ({share:.1%}; threshold "
        f"{migration_settings.quarantine_threshold:.0%})",
        metadata={
            **counts(
                {"rows": keys.height, "quarantined": quarantined, "failing_after_quarantine": still_failing.height}
            ),
            "quarantined_share": MetadataValue.float(round(share, 4)),
            "quarantine": table(quarantine_summary(keys)),
            "failing_rules": table(still_failing.drop("_row", "failure_case")),
        },
    )


def prerequisites_loaded(checked: _Frame) -> AssetCheckResult:
    context, migration_settings = checked.context, checked.migration_settings
    waited, still_loading = wait_for_loads(
        context, prerequisites(context.partition_key), migration_settings.prerequisite_wait_seconds
    )
    with checked.medplum.open_client() as client, checked.manifest.open(client.target) as ledger:
        # The run's report: the load's shard steps and the idempotency check read it as made here.
        report = _run_prerequisites(context, migration_settings, client.target).get(
            lambda: check_prerequisites(
                client, ledger, context.partition_key, checked.fhir_frames.read(REFERENCE_COLUMNS)
            )
        )
    description = report.message()
    if report.blocking_elements and still_loading:
        runs = ", ".join(f"{load.element} in run {load.run_id}" for load in still_loading)
        description += f" Still loading after {waited:.0f} s of waiting: {runs}."
    return AssetCheckResult(
        check_name="prerequisites_loaded",
        passed=not report.blocking_elements,
        description=description,
        metadata={
            **counts(
                {
                    "referenced": report.checked,
                    "missing": report.missing,
                    "explained_missing": report.explained.height,
                }
            ),
            # How long the check waited for other runs loading the elements this one references.
            "waited_for_loads_seconds": MetadataValue.float(round(waited, 2)),
            "missing_targets": table(report.unexplained),
        },
    )


# The blocking checks of the frame, in the order they run: the frame's own validity first, then what it
# references (which may wait for another run's load).
_BEFORE_LOAD: dict[str, tuple[Callable[[_Frame], AssetCheckResult], str]] = {
    "schema": (
        schema,
        "Pandera validation of the FHIR frame. Rows breaking a rule are quarantined; the check warns while the "
        "quarantined share stays under the threshold and fails (blocking the load) above it.",
    ),
    "prerequisites_loaded": (
        prerequisites_loaded,
        "Every resource of an earlier data element that this one references is in Medplum (or explained in the "
        "manifest); otherwise the load is refused, naming the missing elements. While another run is loading one "
        "of those elements, the check first waits for that load to finish (prerequisite_wait_seconds).",
    ),
}


@multi_asset_check(
    name="fhir_frames_checks",
    specs=[
        AssetCheckSpec(name, asset=fhir_frames, partitions_def=DATA_ELEMENTS, blocking=True, description=description)
        for name, (_, description) in _BEFORE_LOAD.items()
    ],
    ins=_FRAME,
    can_subset=True,
    description="The blocking checks of the frame, in one step: either failing keeps the element out of Medplum.",
)
def frame_checks(
    context: AssetCheckExecutionContext,
    fhir_frames: FrameParts,
    medplum: MedplumResource,
    manifest: ManifestStore,
    migration_settings: MigrationSettings,
) -> Iterator[AssetCheckResult]:
    yield from _selected(context, _BEFORE_LOAD, _Frame(context, fhir_frames, medplum, manifest, migration_settings))


@dataclass
class _Loaded:
    """What the checks of the loaded resources share in their one step: the frame, one client and one
    ledger, and the run's census and prerequisite report."""

    context: AssetCheckExecutionContext
    fhir_frames: FrameParts
    client: MedplumClient
    ledger: Manifest
    legacy_db: LegacySource
    migration_settings: MigrationSettings

    def run_census(self) -> RunCensus:
        return _run_census(self.context, self.migration_settings, self.client.target)

    def run_prerequisites(self) -> RunPrerequisites:
        return _run_prerequisites(self.context, self.migration_settings, self.client.target)


def reference_integrity(loaded: _Loaded) -> AssetCheckResult:
    frame = loaded.fhir_frames.read(REFERENCE_COLUMNS)
    client = loaded.client
    run_census = loaded.run_census()
    checked, problems = reference_problems(
        client, frame, run_census.get(client, frame), partial(run_census.of_kind, client)
    )
    return AssetCheckResult(
        check_name="reference_integrity",
        passed=problems.is_empty(),
        description=f"{checked - problems.height} of {checked} references resolve to the expected resource",
        metadata={**counts({"references_checked": checked, "problems": problems.height}), "problems": table(problems)},
    )


def idempotent_reload(loaded: _Loaded) -> AssetCheckResult:
    context, fhir_frames, migration_settings = loaded.context, loaded.fhir_frames, loaded.migration_settings
    client, ledger = loaded.client, loaded.ledger
    element = get_element(context.partition_key)
    settings = migration_settings.load_settings(element, resend_unchanged=True)
    size, seed = migration_settings.idempotency_sample_size, migration_settings.idempotency_sample_seed
    shard = f"shard {settings.shard_index} of {settings.shard_count}"
    # With the expected references: the run's census keeps only those (whichever check takes it).
    keys = fhir_frames.read((*REFERENCE_COLUMNS, "content_hash"))
    # One read of the element's ledger serves the reconciliation and the resubmission.
    units = ledger.units(element.name, list(dict.fromkeys([*RECONCILE_UNIT_COLUMNS, *LEDGER_COLUMNS, "last_run_id"])))
    unsettled = in_shard(
        keys.join(units.filter(pl.col("disposition") == "pending"), on=["source_table", "unit_key"], how="semi"),
        settings,
    )
    if not unsettled.is_empty():
        # The load did not settle these (the quota's wait ran out, the run was stopped): a resubmission
        # now would write them, and this check's verdict would depend on it.
        return AssetCheckResult(
            check_name="idempotent_reload",
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description=f"not resubmitted: the load left {unsettled.height} units pending (the next load sends "
            "them); the check runs again after a load that settles them",
            metadata=counts({"pending_units": unsettled.height}),
        )
    # The census before resubmitting, as the load left Medplum (whichever check of the run takes
    # it): a copy the resubmission itself would create counts as created below.
    censuses = loaded.run_census().get(client, keys)
    report = reconcile(keys, units, censuses)
    # Lost writes are the next load's to send again (and the reconciliation's to report), not this
    # check's: resubmitted here they would count as created, and which check ran first would decide.
    lost = report.lost_writes
    lost_groups = keys.join(lost, on=["source_table", "unit_key"], how="semi")["bundle_group"]
    candidates = keys.filter(~pl.col("bundle_group").is_in(lost_groups.implode()).fill_null(False))
    fingerprint = content_fingerprint(in_shard(candidates.filter(pl.col("quarantine_rule").is_null()), settings), shard)
    # The run's shard steps record themselves as <run id>.<i>of<n> (sharded.ledger_run_id).
    written_now = units.filter(
        pl.col("last_run_id").str.starts_with(context.run.run_id)
        & pl.col("disposition").is_in(["successful", "rejected"])
    ).height
    verified_in = (
        ledger.verified_run(element.name, shard, fingerprint)
        if migration_settings.idempotency_skip_verified and written_now == 0 and lost.is_empty()
        else None
    )
    if verified_in is None:
        # Whole rows (resources included) only for the groups resubmitted.
        chosen_groups = sample_groups(candidates, size, seed)["bundle_group"].unique()
        resubmitted = fhir_frames.scan().filter(pl.col("bundle_group").is_in(chosen_groups.implode())).collect()
        # Each to the resource the census found for its identifier (an update by id, no search): the
        # census itself shows an identifier held twice, and Medplum answers an unchanged update fast.
        with legacy_files(loaded.legacy_db.url):  # the resubmitted BLOB attachments are read from there
            result = load_frame(
                client,
                ledger,
                f"{context.run.run_id}-reload",
                element,
                resubmitted,
                settings,
                known=Known(
                    prerequisites=loaded.run_prerequisites().get(
                        lambda: check_prerequisites(client, ledger, element.name, keys)
                    ),
                    ledger=units.select(LEDGER_COLUMNS),
                    held=held_in_target(censuses),
                    # Where the load settled: the resubmission needs no probing from the start either.
                    in_flight_start=in_flight_start(ledger),
                ),
            )
    else:
        resubmitted, result = candidates.clear(), LoadResult()
    duplicates = report.duplicates
    changed = result.counts["created"] + result.counts["updated"]
    passed = changed == 0 and result.counts["failed"] == 0 and duplicates.is_empty()
    # What a later unchanged run of this target may skip: only content a passing resubmission verified.
    ledger.record_verified(element.name, shard, fingerprint if passed else None, verified_in or context.run.run_id)
    groups, chosen = candidates["bundle_group"].n_unique(), resubmitted["bundle_group"].n_unique()
    if verified_in is not None:
        sample = (
            f"not resubmitted: this run wrote nothing, and the content is what run {verified_in} "
            "resubmitted without a change"
        )
    elif resubmitted.height == candidates.height:
        sample = f"whole partition: {groups} bundle groups"
    else:
        sample = f"sample of {chosen} of {groups} bundle groups ({resubmitted.height} rows), seed {seed}"
    if not lost.is_empty():
        sample += f", without {lost_groups.n_unique()} holding a lost write (the next load sends it again)"
    if result.counts["held_as_sent"]:
        sample += f"; {result.counts['held_as_sent']} read back exactly as they would be sent"
    return AssetCheckResult(
        check_name="idempotent_reload",
        passed=passed,
        description=f"resubmitted {result.counts['sent']} ({sample}): {result.counts['created']} created, "
        f"{result.counts['updated']} updated, {result.counts['failed']} failed; "
        f"{duplicates.height} duplicated identifiers",
        metadata={
            **counts(
                {
                    k: result.counts[k]
                    for k in ("held_as_sent", "sent", "created", "updated", "unchanged", "failed", "quota_points")
                }
            ),
            **counts(
                {
                    "bundle_groups": groups,
                    "bundle_groups_resubmitted": chosen,
                    "lost_writes_not_resubmitted": lost.height,
                }
            ),
            "sample": sample,
            # What a later unchanged run compares, and the run whose resubmission verified it.
            "content_fingerprint": fingerprint,
            "verified_in_run": verified_in or context.run.run_id,
            "duplicates": table(duplicates),
        },
    )


def reconciliation(loaded: _Loaded) -> AssetCheckResult:
    keys = loaded.fhir_frames.read(REFERENCE_COLUMNS)  # the census keeps the references the frame expects
    run_census = loaded.run_census()
    censuses = run_census.get(loaded.client, keys)
    report = reconcile(keys, loaded.ledger.units(loaded.context.partition_key, RECONCILE_UNIT_COLUMNS), censuses)
    target = loaded.client.target
    lost = report.lost_writes.select("resource_type", "identifier_value", "source_table", "unit_key")
    details = ""
    if not report.missing.is_empty():
        details = (
            f" (missing: {', '.join(report.missing['identifier_value'].head(5).to_list())}"
            + (", ..." if report.missing.height > 5 else "")
            + ")"
        )
    if not lost.is_empty():
        details += f"; {lost.height} of the missing were acknowledged by Medplum: the next load sends them again"
    return AssetCheckResult(
        check_name="reconciliation",
        passed=report.passed,
        description=f"{report.found} of {report.expected} expected resources found in {target}; "
        f"{report.missing.height} missing, {report.unexpected.height} unexpected, "
        f"{report.duplicates.height} duplicated{details}",
        metadata={
            **counts(
                {
                    "expected": report.expected,
                    "found": report.found,
                    "missing": report.missing.height,
                    "unexpected": report.unexpected.height,
                    "duplicated": report.duplicates.height,
                    "lost_writes": lost.height,
                }
            ),
            "medplum_project": MetadataValue.text(target.project_id),
            "missing_identifiers": table(report.missing),
            "lost_writes": table(lost),
            "unexpected_identifiers": table(report.unexpected),
            "duplicate_identifiers": table(report.duplicates),
            "census": run_census.how(census_kinds(keys)),
        },
    )


def accounting_balanced(loaded: _Loaded) -> AssetCheckResult:
    books = accounting(
        loaded.fhir_frames.read(KEY_COLUMNS),
        loaded.ledger.units(loaded.context.partition_key, RECONCILE_UNIT_COLUMNS),
    )
    d = books.dispositions
    return AssetCheckResult(
        check_name="accounting_balanced",
        passed=books.balanced,
        description=f"{books.source_units} source units = {d['successful']} successful + {d['rejected']} rejected + "
        f"{d['skipped']} skipped + {d['quarantined']} quarantined; {d['pending']} pending, {d['none']} unrecorded",
        # "none" in the books is a unit the ledger has no disposition for: shown as "unrecorded".
        metadata=counts(
            {
                "source_units": books.source_units,
                **{("unrecorded" if name == "none" else name): n for name, n in d.items()},
            }
        ),
    )


# The checks of the loaded resources, in the order they run. The books and the resubmission come before
# the reconciliation, as when each was a step of its own (Dagster ran those in this order).
_AFTER_LOAD: dict[str, tuple[Callable[[_Loaded], AssetCheckResult], str]] = {
    "accounting_balanced": (
        accounting_balanced,
        "The books: every source unit has exactly one disposition, source units = successful + "
        "rejected + skipped + quarantined, and nothing is left pending after the run.",
    ),
    "idempotent_reload": (
        idempotent_reload,
        "Resubmitting the partition creates nothing and changes nothing, and each source identifier "
        "matches exactly one resource in Medplum (each resubmitted as an update by id of the resource the run's "
        "census found for its identifier). Resubmitted: the whole partition up to idempotency_sample_size "
        "bundle groups (200 by default), above that a sample of that many groups drawn with a recorded seed; "
        "with idempotency_by_reading (the default), the sampled resources are read back first and only those "
        "Medplum does not hold exactly as they would be sent are resubmitted (a resend of identical content "
        "changes nothing). Not resubmitted when this run wrote nothing and the partition's content is exactly "
        "what an earlier passing resubmission verified (idempotency_skip_verified).",
    ),
    "reconciliation": (
        reconciliation,
        "Source rows against resources found in Medplum by identifier: missing, unexpected and "
        "duplicate identifiers listed, each missing one with its disposition in the manifest. A missing resource "
        "the manifest records as loaded is listed as a lost write: the next load finds it missing in its own census "
        "and sends it again (the check only reads).",
    ),
    "reference_integrity": (
        reference_integrity,
        "Every reference in the loaded resources resolves to an existing resource of the expected type, "
        "and to the right one (the referenced Patient carries the source row's patient_id).",
    ),
}


@multi_asset_check(
    # "medplum_resources_" like the step keys of single checks: the bench counts these as after-load checks.
    name="medplum_resources_checks",
    specs=[
        AssetCheckSpec(
            name,
            asset=medplum_resources,
            additional_deps=[fhir_frames],
            partitions_def=DATA_ELEMENTS,
            description=description,
        )
        for name, (_, description) in _AFTER_LOAD.items()
    ],
    ins=_FRAME,
    can_subset=True,
    description="The checks of the loaded resources, in one step: one client, one ledger and one census for "
    "all of them (a step each cost the run a quarter of a second on a real Medplum, and more events).",
)
def loaded_resource_checks(
    context: AssetCheckExecutionContext,
    fhir_frames: FrameParts,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> Iterator[AssetCheckResult]:
    with medplum.open_client() as client, manifest.open(client.target) as ledger:
        yield from _selected(
            context, _AFTER_LOAD, _Loaded(context, fhir_frames, client, ledger, legacy_db, migration_settings)
        )


def _selected(
    context: AssetCheckExecutionContext,
    checks: Mapping[str, tuple[Callable[[Shared], AssetCheckResult], str]],
    shared: Shared,
) -> Iterator[AssetCheckResult]:
    """The checks of a multi-asset check step the run selected, in their order, given what they share."""
    selected = {key.name for key in context.selected_asset_check_keys}
    for name, (check, _) in checks.items():
        if name in selected:
            yield check(shared)


ALL_CHECKS = [frame_checks, loaded_resource_checks]
