"""conditions: legacy `conditions` rows to FHIR Condition, the code mapped from a terminology CSV."""

from collections.abc import Mapping
from pathlib import Path

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
from migration_assets.elements.terminology import TerminologyMaps

from ..sample_data import UPDATED_AT

MAPS = TerminologyMaps(Path(__file__).resolve().parent.parent / "terminology")


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    return (
        tables["conditions"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("conditions"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    # Every code of the map is known; one without a standard code keeps only its local coding and is
    # flagged for chart review (code_mapped false). A code not in the map is quarantined.
    codes = MAPS.read_map("condition_codes").lazy().rename({"local_code": "code"}).with_columns(in_map=pl.lit(True))
    patient_system = system.identifier_system("patient")
    subject = conditional_reference("Patient", patient_system, pl.col("patient_id"))
    rows = source.join(codes, on="code", how="left", maintain_order="left").with_columns(
        onset_date=pl.col("onset_date").str.strip_chars()
    )
    resource = pl.struct(
        pl.lit("Condition").alias("resourceType"),
        identifier(system.identifier_system("condition"), pl.col("condition_id")).alias("identifier"),
        reference(subject).alias("subject"),
        codeable_concept(
            coding(system.code_system("condition"), pl.col("code"), pl.col("display")),
            coding(pl.col("system"), pl.col("standard_code"), pl.col("display")),
        ).alias("code"),
        pl.col("onset_date").alias("onsetDateTime"),
    )
    frame = rows.select(
        frame_columns(
            "Condition",
            system.identifier_system("condition"),
            pl.col("condition_id"),
            resource,
            references=[expected_reference("subject", "Patient", patient_system, pl.col("patient_id"))],
        ),
        patient_id=pl.col("patient_id"),
        subject_reference=subject,
        onset_date=pl.col("onset_date"),
        code_mapped=pl.col("standard_code").is_not_null(),
        in_map=pl.col("in_map").fill_null(False),
        patient_in_source=pl.col("patient_in_source").fill_null(False),
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(frame, "unmapped_code", ~pl.col("in_map"), "code is not in terminology/condition_codes.csv")
    frame = quarantine(frame, "invalid_date", invalid_date("onset_date"), "onset_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("onset_date"), "onset_date lies in the future")
    return frame.drop("in_map", "patient_in_source")


class ConditionFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    onset_date: str = pa.Field(str_matches=DATE, nullable=True)
    code_mapped: bool


ELEMENT = DataElement(
    name="conditions",
    description="Conditions: legacy conditions to FHIR Condition, the code mapped to ICD-10-CM.",
    mapping_version="1.0.0",
    source_tables={"conditions": "condition_id", "patients": "patient_id"},
    requires=("patients",),
    extract=extract,
    transform=transform,
    schemas={"Condition": ConditionFrame},
    patient_column="patient_id",
    review_flags={"code_mapped": False},
    change_column=UPDATED_AT,
)
