"""The problem list: legacy `patient_conditions` (with the `conditions` catalogue) to FHIR Condition."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    CONDITIONAL_REFERENCE,
    DATE,
    DataElement,
    FrameModel,
    SourceSystem,
    expected_reference,
    frame_columns,
    future_date,
    invalid_date,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    reference,
)
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import ICD10CM, read_map


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    catalogue = tables["conditions"].with_columns(condition_in_catalogue=pl.lit(True)).unique("condition_id")
    return (
        tables["patient_conditions"]
        .join(catalogue, on="condition_id", how="left")
        .join(known_patients, on="patient_id", how="left")
        .with_columns(source_table=pl.lit("patient_conditions"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    icd10 = read_map("icd10cm").lazy().rename({"code": "icd10_code", "display": "icd10_display"})
    patient_system = system.identifier_system("patient")
    subject = conditional_reference("Patient", patient_system, pl.col("patient_id"))
    resource = pl.struct(
        pl.lit("Condition").alias("resourceType"),
        identifier(system.identifier_system("patient-condition"), pl.col("patient_condition_id")).alias("identifier"),
        reference(subject).alias("subject"),
        codeable_concept(
            coding(system.code_system("condition"), pl.col("condition_id"), pl.col("condition_name")),
            coding(ICD10CM, pl.col("icd10_code"), pl.col("icd10_display")),
            text=pl.col("condition_name"),
        ).alias("code"),
        pl.col("onset_date").alias("onsetDateTime"),
    )
    frame = (
        source.with_columns(onset_date=pl.col("onset_date").str.strip_chars())
        .join(icd10, on="icd10_code", how="left")
        .select(
            frame_columns(
                "Condition",
                system.identifier_system("patient-condition"),
                pl.col("patient_condition_id"),
                resource,
                references=[expected_reference("subject", "Patient", patient_system, pl.col("patient_id"))],
            ),
            patient_id=pl.col("patient_id"),
            subject_reference=subject,
            onset_date=pl.col("onset_date"),
            icd10_mapped=pl.col("icd10_display").is_not_null(),
            patient_in_source=pl.col("patient_in_source").fill_null(False),
            condition_in_catalogue=pl.col("condition_in_catalogue").fill_null(False),
        )
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(
        frame, "unknown_code", ~pl.col("condition_in_catalogue"), "condition_id is not in the conditions catalogue"
    )
    frame = quarantine(frame, "invalid_date", invalid_date("onset_date"), "onset_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("onset_date"), "onset_date lies in the future")
    return frame.drop("patient_in_source", "condition_in_catalogue")


class ConditionFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    onset_date: str = pa.Field(str_matches=DATE, nullable=True)


ELEMENT = DataElement(
    name="problem_list",
    description="The problem list: patient_conditions with their local and ICD-10 codes to FHIR Condition.",
    mapping_version="1.0.0",
    source_tables={
        "patient_conditions": "patient_condition_id",
        "conditions": "condition_id",
        "patients": "patient_id",
    },
    requires=("patients",),
    extract=extract,
    transform=transform,
    schemas={"Condition": ConditionFrame},
    patient_column="patient_id",
    change_column=UPDATED_AT,
)
