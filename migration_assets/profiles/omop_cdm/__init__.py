"""OMOP CDM 5.4: the tables every OMOP database has (PERSON, VISIT_OCCURRENCE, CONDITION_OCCURRENCE, ...)
to FHIR R4, codes from its CONCEPT table."""

from pathlib import Path

from migration_assets.elements.profile import Profile, discover_elements
from migration_assets.profiles.omop_cdm.sample_data import build_sample_tables

HERE = Path(__file__).parent

PROFILE = Profile(
    name="omop_cdm",
    description="An OMOP CDM 5.4 database: persons, providers, care sites, locations, visits and their details, "
    "conditions, drug exposures, procedures, measurements, observations, notes, specimens, device exposures and "
    "payer plan periods.",
    elements=discover_elements(f"{__name__}.elements"),
    phases_file=HERE / "phases.yaml",
    sample_tables=build_sample_tables,
    terminology_dir=HERE / "terminology",
    # The CDM's DDL makes its primary keys optional: the sample repeats a few, as exports do.
    primary_keys_enforced=False,
)
