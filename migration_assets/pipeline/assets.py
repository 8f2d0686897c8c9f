"""The three assets of every data element: source rows, FHIR frame, Medplum resources.

Thin wrappers: the work is in elements/, loader.py and verify/."""

import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, AssetIn, DagsterRun, MaterializeResult, MetadataValue, Output, asset

from migration_assets.active import get_element, prerequisites
from migration_assets.elements.base import DataElement
from migration_assets.elements.files import legacy_files
from migration_assets.ledger.files import FileHashes
from migration_assets.medplum import Target
from migration_assets.pipeline.frame_parts import REFERENCE_COLUMNS, FrameParts, build_frame_parts
from migration_assets.pipeline.partitions import DATA_ELEMENTS
from migration_assets.pipeline.reporting import counts, quarantine_summary, table
from migration_assets.pipeline.resources import (
    LegacySource,
    ManifestStore,
    MedplumResource,
    MigrationSettings,
)
from migration_assets.verify.census import RunCensus
from migration_assets.verify.evidence import reconciliation_report as build_reconciliation_report
from migration_assets.verify.evidence import write_evidence

FRAMES_IO = "frames_io_manager"
OWNERS = ["team:migration"]


@asset(
    partitions_def=DATA_ELEMENTS,
    io_manager_key=FRAMES_IO,
    group_name="migration",
    kinds={"polars", "sql"},
    owners=OWNERS,
    tags={"stage": "extract"},
    description="Legacy EHR rows of the data element, read from the legacy database.\n\n"
    "One row per source unit, joined with what its mapping needs; the count per source table is in the metadata.",
)
def legacy_source(
    context: AssetExecutionContext, legacy_db: LegacySource, manifest: ManifestStore
) -> Output[pl.DataFrame]:
    element = get_element(context.partition_key)
    absent: list[str] = []
    tables = legacy_db.read_tables(element, absent)
    for name in absent:
        context.log.warning(f"optional table {name} is not in {legacy_db.display_url}: read as empty")
    # The legacy files are this database's; a file unchanged since an earlier run is not read again.
    hashes = FileHashes(manifest.url)
    try:
        with legacy_files(legacy_db.url, hashes):
            rows = element.extract(tables)
    finally:
        hashes.engine.dispose()
    return Output(
        rows,
        metadata={
            "source_url": legacy_db.display_url,
            "source_tables": ", ".join(element.source_tables),
            "rows": MetadataValue.int(rows.height),
            **counts({f"table_rows/{name}": frame.height for name, frame in tables.items()}),
            **({"absent_optional_tables": ", ".join(absent)} if absent else {}),
        },
    )


@asset(
    partitions_def=DATA_ELEMENTS,
    io_manager_key=FRAMES_IO,
    group_name="migration",
    kinds={"polars", "pandera"},
    owners=OWNERS,
    tags={"stage": "transform"},
    description="FHIR resources of the data element, mapped and validated, ready to load.\n\n"
    "One row per resource with its identifier and JSON; rows that break a mapping or schema rule are "
    "quarantined with the rule and reason (the quarantine table in the metadata), never sent.",
)
def fhir_frames(
    context: AssetExecutionContext, legacy_source: pl.LazyFrame, migration_settings: MigrationSettings
) -> Output[FrameParts]:
    element = get_element(context.partition_key)
    # Built slice by slice into parts of whole bundle groups (bounded memory); the IO manager moves
    # the parts into place.
    staging = Path(tempfile.mkdtemp(prefix=f"fhir_frames-{element.name}-"))
    try:
        parts = build_frame_parts(element, legacy_source, migration_settings.source_system, staging / "parts")
        return Output(parts, metadata=_frame_metadata(element, parts))
    except BaseException:
        # The IO manager moves the parts (and their staging folder) into place; before it does, a
        # failure leaves nothing behind in the temporary folder.
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _frame_metadata(element: DataElement, parts: FrameParts) -> dict[str, Any]:
    # The metadata needs the rules and review flags of every row, not the resources.
    frame = parts.read([*_SUMMARY_COLUMNS, *element.review_flags])
    quarantined = int(frame["quarantine_rule"].is_not_null().sum())
    return {
        "mapping_version": element.mapping_version,
        "requires": ", ".join(prerequisites(element.name)) or "nothing",
        **counts(
            {
                "resources": frame.height,
                "quarantined": quarantined,
                "eligible": frame.height - quarantined,
                "parts": len(parts),
            }
        ),
        "quarantine": table(quarantine_summary(frame)),
        "resources_by_type": table(frame.group_by("resource_type").len().sort("resource_type")),
        # The rows each of the element's review flags marks: local codes with no approved standard
        # mapping (kept local, never guessed), values dropped rather than written invalid, ...
        **counts(
            {f"flagged/{name}": int((frame[name] == flagged).sum()) for name, flagged in element.review_flags.items()}
        ),
    }


_SUMMARY_COLUMNS = ("source_table", "unit_key", "resource_type", "quarantine_rule", "quarantine_reason")


def target_metadata(target: Target) -> dict[str, MetadataValue]:
    """The Medplum the step wrote to or read (never a credential)."""
    return {
        "medplum_base_url": MetadataValue.url(target.base_url),
        "medplum_project": MetadataValue.text(target.project_id or "(not named by the server)"),
    }


@asset(
    partitions_def=DATA_ELEMENTS,
    # Written by the shard steps of sharded.py.
    deps=["medplum_resources"],
    ins={"fhir_frames": AssetIn()},
    group_name="migration",
    kinds={"json", "csv"},
    owners=OWNERS,
    tags={"stage": "report"},
    description="Reconciliation report of the data element, with its evidence files (JSON and CSV).\n\n"
    "Source rows and eligible units, dispositions, retry attempts, resources expected and found in Medplum, "
    "missing, unexpected and duplicate identifiers; with the source, mapping version and time as evidence.",
)
def reconciliation_report(
    context: AssetExecutionContext,
    fhir_frames: FrameParts,
    medplum: MedplumResource,
    manifest: ManifestStore,
    legacy_db: LegacySource,
    migration_settings: MigrationSettings,
) -> MaterializeResult:
    element = get_element(context.partition_key)
    with medplum.open_client() as client, manifest.open(client.target) as ledger:
        report = build_reconciliation_report(
            client,
            ledger,
            element,
            fhir_frames.read(REFERENCE_COLUMNS),
            legacy_db.display_url,
            RunCensus.of_run(
                migration_settings.evidence_dir,
                context.run.run_id,
                client.target,
                migration_settings.incremental_census,
            ),
            load_run_ids=_launch_runs(context),
        )
        target = client.target
    json_path, csv_path = write_evidence(report, Path(migration_settings.evidence_dir) / element.name)
    figures = pl.DataFrame({"figure": list(report["figures"]), "value": list(report["figures"].values())})
    return MaterializeResult(
        metadata={
            "passed": report["passed"],
            **counts({name: value for name, value in report["figures"].items() if "/" not in name}),
            "figures": table(figures, limit=100),
            "evidence_json": MetadataValue.path(str(json_path)),
            "evidence_csv": MetadataValue.path(str(csv_path)),
            "mapping_version": element.mapping_version,
            **target_metadata(target),
        }
    )


def _launch_runs(context: AssetExecutionContext) -> list[str]:
    """This run and the runs it re-executes, parent by parent (re-executed from failure, the shard steps
    that had succeeded stay those runs'), so that the evidence counts every shard step of the load."""
    ids: list[str] = []
    run: DagsterRun | None = context.run
    while run is not None:
        ids.append(run.run_id)
        run = context.instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    return ids
