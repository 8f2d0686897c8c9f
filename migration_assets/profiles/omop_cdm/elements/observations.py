"""OBSERVATION to Observation, by the same rules as MEASUREMENT (measurements.py), plus value_as_string
as valueString. Identifiers under the `observation` system, apart from the measurements'."""

from collections.abc import Mapping

import polars as pl

from migration_assets.elements.base import DataElement, SourceSystem
from migration_assets.profiles.omop_cdm.elements.measurements import (
    ObservationFrame,
    observation_rows,
    observation_transform,
)
from migration_assets.profiles.omop_cdm.omop import (
    EVENT_REVIEW_FLAGS,
    VISIT_DETAIL_NOTE,
    concepts_named_by,
    optional_among,
)

REGISTER_NOTES = {"visit_detail_id": VISIT_DETAIL_NOTE}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return observation_rows(tables, "observation", "observation_concept_id")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    return observation_transform(
        source,
        system,
        id_column="observation_id",
        concept_column="observation_concept_id",
        date_column="observation_date",
        source_column="observation_source_value",
    )


SOURCE_TABLES = {
    "observation": "observation_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="observations",
    description="OMOP OBSERVATION to FHIR Observation (coded, numeric and text values).",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("observation", "observation_concept_id", "value_as_concept_id", "unit_concept_id"),
    requires=("persons", "visits", "visit_details"),
    extract=extract,
    transform=transform,
    schemas={"Observation": ObservationFrame},
    patient_column="person_id",
    review_flags=EVENT_REVIEW_FLAGS,
)
