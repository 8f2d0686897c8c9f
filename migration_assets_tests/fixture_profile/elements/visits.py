"""visits: legacy `visits` rows to FHIR Encounter, each referring to its patient (loaded first)."""

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
from migration_assets.elements.fhir_json import coding, conditional_reference, identifier, reference
from migration_assets.elements.terminology import V3_ACT_CODE

from ..sample_data import UPDATED_AT


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    # Whether the visit's patient exists in the source, for the orphan rule.
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    return (
        tables["visits"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("visits"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    subject = conditional_reference("Patient", patient_system, pl.col("patient_id"))
    rows = source.with_columns(visit_date=pl.col("visit_date").str.strip_chars())
    resource = pl.struct(
        pl.lit("Encounter").alias("resourceType"),
        identifier(system.identifier_system("visit"), pl.col("visit_id")).alias("identifier"),
        pl.lit("finished").alias("status"),
        coding(V3_ACT_CODE, pl.lit("AMB"), pl.lit("ambulatory")).alias("class"),
        reference(subject).alias("subject"),
        pl.struct(pl.col("visit_date").alias("start")).alias("period"),
        pl.concat_list(pl.struct(pl.col("reason").alias("text"))).alias("reasonCode"),
    )
    frame = rows.select(
        frame_columns(
            "Encounter",
            system.identifier_system("visit"),
            pl.col("visit_id"),
            resource,
            # Declared for reference_integrity and prerequisites_loaded: the path in the resource, and
            # the resource it must resolve to by identifier.
            references=[expected_reference("subject", "Patient", patient_system, pl.col("patient_id"))],
        ),
        patient_id=pl.col("patient_id"),
        subject_reference=subject,
        visit_date=pl.col("visit_date"),
        patient_in_source=pl.col("patient_in_source").fill_null(False),
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(frame, "invalid_date", invalid_date("visit_date"), "visit_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("visit_date"), "visit_date lies in the future")
    return frame.drop("patient_in_source")


class VisitFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    visit_date: str = pa.Field(str_matches=DATE, nullable=True)


ELEMENT = DataElement(
    name="visits",
    description="Visits: legacy visits to FHIR Encounter, keyed by visit_id, each with its patient.",
    mapping_version="1.0.0",
    source_tables={"visits": "visit_id", "patients": "patient_id"},
    requires=("patients",),
    extract=extract,
    transform=transform,
    schemas={"Encounter": VisitFrame},
    patient_column="patient_id",
    change_column=UPDATED_AT,
)
