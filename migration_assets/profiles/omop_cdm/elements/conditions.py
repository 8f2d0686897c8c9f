"""CONDITION_OCCURRENCE to Condition: code from condition_concept_id (the source value kept as a
local coding), onset/abatement from the start/end dates, category encounter-diagnosis when the row
names a visit (or a visit detail) else problem-list-item, clinicalStatus resolved when it has an end date
else active, verificationStatus confirmed, subject and encounter (the visit detail's when named, else the
visit's)."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns
from migration_assets.elements.fhir_json import codeable_concept, coding, identifier, reference, without_nulls
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

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
REGISTER_NOTES = {"visit_detail_id": VISIT_DETAIL_NOTE}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return event_rows(tables, "condition_occurrence", "condition_concept_id")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    rows = source.with_columns(start=day("condition_start_date"), end=day("condition_end_date"))
    ended = pl.col("end").is_not_null()
    resource = pl.struct(
        pl.lit("Condition").alias("resourceType"),
        identifier(system.identifier_system("condition"), pl.col("condition_occurrence_id")).alias("identifier"),
        codeable_concept(coding(CLINICAL, pl.when(ended).then(pl.lit("resolved")).otherwise(pl.lit("active")))).alias(
            "clinicalStatus"
        ),
        codeable_concept(coding(VERIFICATION, pl.lit("confirmed"))).alias("verificationStatus"),
        pl.concat_list(
            codeable_concept(
                coding(
                    CATEGORY,
                    pl.when(encounter_reference(system).is_not_null())
                    .then(pl.lit("encounter-diagnosis"))
                    .otherwise(pl.lit("problem-list-item")),
                )
            )
        ).alias("category"),
        concept(system, "condition_concept_id", "code", "condition_source_value").alias("code"),
        reference(patient_reference(system)).alias("subject"),
        reference(encounter_reference(system)).alias("encounter"),
        pl.col("start").alias("onsetDateTime"),
        pl.col("end").alias("abatementDateTime"),
    )
    frame = rows.select(
        *frame_columns(
            "Condition",
            system.identifier_system("condition"),
            pl.col("condition_occurrence_id"),
            resource,
            references=[expected_patient(system), expected_encounter(system)],
        ),
        "person_id",
        "visit_occurrence_id",
        "visit_person_id",
        "person_in_source",
        "start",
        *visit_detail_columns(),
        code_mapped=concept_mapped("condition_concept_id", "code"),
    )
    return event_rules(frame.with_columns(without_nulls(pl.col("references"))), "start")


class ConditionFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "condition_occurrence": "condition_occurrence_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="conditions",
    description="OMOP CONDITION_OCCURRENCE to FHIR Condition, codes from CONCEPT.",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("condition_occurrence", "condition_concept_id"),
    requires=("persons", "visits", "visit_details"),
    extract=extract,
    transform=transform,
    schemas={"Condition": ConditionFrame},
    patient_column="person_id",
    review_flags=EVENT_REVIEW_FLAGS,
)
