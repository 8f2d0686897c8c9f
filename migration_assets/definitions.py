"""Every asset, check, resource and job of the migration, registered in one place. The resources come
from the environment (resources.build_resources, config.py)."""

from dagster import AssetSelection, Definitions, JobDefinition, define_asset_job

from migration_assets.adoption.assets import (
    ADOPTION_ASSETS,
    ADOPTION_CHECKS,
    ADOPTION_JOBS,
    ADOPTION_SCHEDULES,
    ADOPTION_SENSORS,
)
from migration_assets.mapping.assets import mapping_register_asset, terminology_maps
from migration_assets.pipeline.assets import fhir_frames, legacy_source, reconciliation_report
from migration_assets.pipeline.checks import ALL_CHECKS
from migration_assets.pipeline.cutover_report import cutover_report
from migration_assets.pipeline.executors import chosen_executor
from migration_assets.pipeline.resources import build_resources
from migration_assets.pipeline.sharded import medplum_resources

ASSETS = [
    legacy_source,
    fhir_frames,
    medplum_resources,
    reconciliation_report,
    mapping_register_asset,
    terminology_maps,
    cutover_report,
    *ADOPTION_ASSETS,
]

migrate_element_job = define_asset_job(
    "migrate_data_element",
    selection=AssetSelection.groups("migration"),
    description="Extract, transform, validate and load one data element (pick its partition), with every check.",
)


def make_definitions(resources: dict[str, object]) -> Definitions:
    return Definitions(
        assets=ASSETS,
        asset_checks=[*ALL_CHECKS, *ADOPTION_CHECKS],
        jobs=[migrate_element_job, *ADOPTION_JOBS],
        schedules=ADOPTION_SCHEDULES,
        sensors=ADOPTION_SENSORS,
        resources=resources,
        # DAGSTER_EXECUTOR: in_process by default, multiprocess or celery (executors.py).
        executor=chosen_executor(),
    )


defs = make_definitions(build_resources())


def migration_job() -> JobDefinition:
    """The migration job of `defs`: what subprocesses and Celery workers rebuild (`reconstructable`) to run
    its steps on the executor DAGSTER_EXECUTOR names (make demo)."""
    return defs.resolve_job_def("migrate_data_element")
