"""PROCEDURE_OCCURRENCE to Procedure (status completed, performed date or period, code from CONCEPT, the
encounter of its visit detail or visit)."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns
from migration_assets.elements.builders import period
from migration_assets.elements.fhir_json import identifier, reference, without_nulls
from migration_assets.profiles.omop_cdm.omop import (
    EVENT_REVIEW_FLAGS,
    VISIT_DETAIL_NOTE,
    concept,
    concept_mapped,
    concepts_named_by,
    day,
    encounter_reference,
    event_rows,
    event_rules,
    expected_encounter,
    expected_patient,
    optional_among,
    patient_reference,
    visit_detail_columns,
)

REGISTER_NOTES = {"visit_detail_id": VISIT_DETAIL_NOTE}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return event_rows(tables, "procedure_occurrence", "procedure_concept_id")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    rows = source.with_columns(start=day("procedure_date"), end=day("procedure_end_date"))
    resource = pl.struct(
        pl.lit("Procedure").alias("resourceType"),
        identifier(system.identifier_system("procedure"), pl.col("procedure_occurrence_id")).alias("identifier"),
        pl.lit("completed").alias("status"),
        concept(system, "procedure_concept_id", "code", "procedure_source_value").alias("code"),
        reference(patient_reference(system)).alias("subject"),
        reference(encounter_reference(system)).alias("encounter"),
        pl.when(pl.col("end").is_null()).then(pl.col("start")).alias("performedDateTime"),
        pl.when(pl.col("end").is_not_null()).then(period(pl.col("start"), pl.col("end"))).alias("performedPeriod"),
    )
    frame = rows.select(
        *frame_columns(
            "Procedure",
            system.identifier_system("procedure"),
            pl.col("procedure_occurrence_id"),
            resource,
            references=[expected_patient(system), expected_encounter(system)],
        ),
        "person_id",
        "visit_occurrence_id",
        "visit_person_id",
        "person_in_source",
        "start",
        *visit_detail_columns(),
        code_mapped=concept_mapped("procedure_concept_id", "code"),
    )
    return event_rules(frame.with_columns(without_nulls(pl.col("references"))), "start")


class ProcedureFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "procedure_occurrence": "procedure_occurrence_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="procedures",
    description="OMOP PROCEDURE_OCCURRENCE to FHIR Procedure, codes from CONCEPT.",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("procedure_occurrence", "procedure_concept_id"),
    requires=("persons", "visits", "visit_details"),
    extract=extract,
    transform=transform,
    schemas={"Procedure": ProcedureFrame},
    patient_column="person_id",
    review_flags=EVENT_REVIEW_FLAGS,
)
