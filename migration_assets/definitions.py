"""Every asset, check, resource and job of the migration, registered in one place.

Configuration comes from the environment: MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID and
MEDPLUM_CLIENT_SECRET (through EnvVar, so the secret never lands in the run config), LEGACY_DB_URL,
MANIFEST_DB_URL and IDENTIFIER_BASE_URI (with local defaults under .demo/).
"""

import os

from dagster import AssetSelection, Definitions, EnvVar, define_asset_job, in_process_executor

from migration_assets.adoption_assets import (
    ADOPTION_ASSETS,
    ADOPTION_CHECKS,
    ADOPTION_JOBS,
    ADOPTION_SCHEDULES,
    ADOPTION_SENSORS,
)
from migration_assets.assets import fhir_frames, legacy_source, medplum_resources, reconciliation_report
from migration_assets.checks import ALL_CHECKS
from migration_assets.paths import DEFAULT_LEGACY_DB_URL, DEFAULT_MANIFEST_URL, FRAMES_DIR
from migration_assets.register_assets import mapping_register_asset, terminology_maps
from migration_assets.resources import (
    LegacySource,
    ManifestStore,
    MedplumResource,
    MigrationSettings,
    PolarsParquetIOManager,
)

ASSETS = [
    legacy_source, fhir_frames, medplum_resources, reconciliation_report, mapping_register_asset, terminology_maps,
    *ADOPTION_ASSETS,
]

migrate_element_job = define_asset_job(
    "migrate_data_element",
    selection=AssetSelection.groups("migration"),
    description="Extract, transform, validate and load one data element (pick its partition), with every check.",
)


def resources_from_environment() -> dict[str, object]:
    return {
        "medplum": MedplumResource(
            base_url=EnvVar("MEDPLUM_BASE_URL"),
            client_id=EnvVar("MEDPLUM_CLIENT_ID"),
            client_secret=EnvVar("MEDPLUM_CLIENT_SECRET"),
        ),
        "legacy_db": LegacySource(url=os.environ.get("LEGACY_DB_URL", DEFAULT_LEGACY_DB_URL)),
        "manifest": ManifestStore(url=os.environ.get("MANIFEST_DB_URL", DEFAULT_MANIFEST_URL)),
        "migration_settings": MigrationSettings(
            identifier_base_uri=os.environ.get("IDENTIFIER_BASE_URI", MigrationSettings().identifier_base_uri)
        ),
        "frames_io_manager": PolarsParquetIOManager(base_dir=str(FRAMES_DIR)),
    }


def make_definitions(resources: dict[str, object]) -> Definitions:
    return Definitions(
        assets=ASSETS,
        asset_checks=[*ALL_CHECKS, *ADOPTION_CHECKS],
        jobs=[migrate_element_job, *ADOPTION_JOBS],
        schedules=ADOPTION_SCHEDULES,
        sensors=ADOPTION_SENSORS,
        resources=resources,
        # Each step in a subprocess costs 20-45 s a run here; in process it is about 5 s.
        executor=in_process_executor,
    )


defs = make_definitions(resources_from_environment())
