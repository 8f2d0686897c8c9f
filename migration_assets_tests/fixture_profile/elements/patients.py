"""patients: legacy `patients` rows to FHIR Patient, the root every other element refers to."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    DATE,
    DataElement,
    FrameModel,
    SourceSystem,
    frame_columns,
    future_date,
    invalid_date,
    quarantine,
)
from migration_assets.elements.fhir_json import identifier, present

from ..sample_data import UPDATED_AT

# Legacy gender codes to FHIR's; any other code quarantines the row (never guessed).
GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown"}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return tables["patients"].with_columns(source_table=pl.lit("patients"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    rows = source.with_columns(
        birth_date=pl.col("birth_date").str.strip_chars(),
        fhir_gender=pl.col("gender").str.strip_chars().str.to_uppercase().replace_strict(GENDER, default=None),
    )
    resource = pl.struct(
        pl.lit("Patient").alias("resourceType"),
        identifier(system.identifier_system("patient"), pl.col("patient_id")).alias("identifier"),
        pl.concat_list(
            pl.struct(present(pl.col("first_name")).alias("given"), pl.col("last_name").alias("family"))
        ).alias("name"),
        pl.col("birth_date").alias("birthDate"),
        pl.col("fhir_gender").alias("gender"),
    )
    frame = rows.select(
        frame_columns("Patient", system.identifier_system("patient"), pl.col("patient_id"), resource),
        gender=pl.col("fhir_gender"),
        birth_date=pl.col("birth_date"),
        source_gender=pl.col("gender"),
    )
    frame = quarantine(frame, "invalid_date", invalid_date("birth_date"), "birth_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("birth_date"), "birth_date lies in the future")
    frame = quarantine(
        frame,
        "unknown_code",
        pl.col("source_gender").is_not_null() & pl.col("gender").is_null(),
        "gender code has no FHIR mapping (expected M, F, O or U)",
    )
    return frame.drop("source_gender")


class PatientFrame(FrameModel):
    gender: str = pa.Field(isin=sorted(GENDER.values()), nullable=True)
    birth_date: str = pa.Field(str_matches=DATE, nullable=True)


ELEMENT = DataElement(
    name="patients",
    description="Patients: legacy patients to FHIR Patient, keyed by patient_id.",
    mapping_version="1.0.0",
    source_tables={"patients": "patient_id"},
    requires=(),
    extract=extract,
    transform=transform,
    schemas={"Patient": PatientFrame},
    patient_column="identifier_value",
    change_column=UPDATED_AT,
)
