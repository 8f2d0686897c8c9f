"""visits: legacy `visits` rows to FHIR Encounter, each referring to its patient (loaded first), and
`visit_notes` to ClinicalImpression. A visit and its notes are written in one transaction: the note refers
to its Encounter by the Encounter's `urn:uuid` inside the bundle."""

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
    stable_urn_uuid,
)
from migration_assets.elements.fhir_json import coding, conditional_reference, identifier, reference
from migration_assets.elements.terminology import V3_ACT_CODE

from ..sample_data import UPDATED_AT


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    # Whether the visit's patient exists in the source, for the orphan rule.
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    visits = tables["visits"].join(known_patients, on="patient_id", how="left", maintain_order="left")
    # A note takes its patient and date from its visit (the first, should a visit key be repeated).
    parents = visits.unique("visit_id", keep="first").select(
        "visit_id", "patient_id", "visit_date", "patient_in_source", visit_in_source=pl.lit(True)
    )
    notes = tables["visit_notes"].join(parents, on="visit_id", how="left", maintain_order="left")
    return pl.concat(
        [visits.with_columns(source_table=pl.lit("visits")), notes.with_columns(source_table=pl.lit("visit_notes"))],
        how="diagonal_relaxed",
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    rows = source.with_columns(
        visit_date=pl.col("visit_date").str.strip_chars(),
        subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        # The Encounter's id inside the transaction, the same on every run.
        visit_url=stable_urn_uuid(system.identifier_system("visit"), pl.col("visit_id")),
        patient_in_source=pl.col("patient_in_source").fill_null(False),
    )
    frame = pl.concat(
        [
            _visits(rows.filter(pl.col("source_table") == "visits"), system),
            _notes(rows.filter(pl.col("source_table") == "visit_notes"), system),
        ],
        how="diagonal_relaxed",
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(frame, "invalid_date", invalid_date("visit_date"), "visit_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("visit_date"), "visit_date lies in the future")
    return frame.drop("patient_in_source", "visit_in_source")


def _visits(rows: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    resource = pl.struct(
        pl.lit("Encounter").alias("resourceType"),
        identifier(system.identifier_system("visit"), pl.col("visit_id")).alias("identifier"),
        pl.lit("finished").alias("status"),
        coding(V3_ACT_CODE, pl.lit("AMB"), pl.lit("ambulatory")).alias("class"),
        reference(pl.col("subject_reference")).alias("subject"),
        pl.struct(pl.col("visit_date").alias("start")).alias("period"),
        pl.concat_list(pl.struct(pl.col("reason").alias("text"))).alias("reasonCode"),
    )
    return rows.select(
        *frame_columns(
            "Encounter",
            system.identifier_system("visit"),
            pl.col("visit_id"),
            resource,
            # Declared for reference_integrity and prerequisites_loaded: the path in the resource, and
            # the resource it must resolve to by identifier.
            references=[_subject(system)],
            full_url=pl.col("visit_url"),
        ),
        *_shared_columns(),
        visit_in_source=pl.lit(True),
    )


def _notes(rows: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    resource = pl.struct(
        pl.lit("ClinicalImpression").alias("resourceType"),
        identifier(system.identifier_system("visit-note"), pl.col("note_id")).alias("identifier"),
        pl.lit("completed").alias("status"),
        reference(pl.col("subject_reference")).alias("subject"),
        reference(pl.col("visit_url")).alias("encounter"),
        pl.col("visit_date").alias("effectiveDateTime"),
        pl.col("note_text").alias("summary"),
    )
    frame = rows.select(
        *frame_columns(
            "ClinicalImpression",
            system.identifier_system("visit-note"),
            pl.col("note_id"),
            resource,
            references=[
                _subject(system),
                expected_reference("encounter", "Encounter", system.identifier_system("visit"), pl.col("visit_id")),
            ],
            # In the visit's transaction: a note is written with its visit, or neither is.
            bundle_group=pl.col("visit_id"),
        ),
        *_shared_columns(),
        visit_in_source=pl.col("visit_in_source").fill_null(False),
        note_empty=pl.col("note_text").is_null() | (pl.col("note_text").str.strip_chars() == ""),
    )
    frame = quarantine_orphans(frame, "visit_id", "visits", "visit_in_source")
    return quarantine(frame, "missing_value", pl.col("note_empty"), "note has no text").drop("note_empty")


def _shared_columns() -> list[pl.Expr]:
    """The columns both resource kinds carry, for the rules and the pandera models."""
    return [
        pl.col("patient_id"),
        pl.col("visit_id"),
        pl.col("subject_reference"),
        pl.col("visit_date"),
        pl.col("patient_in_source"),
    ]


def _subject(system: SourceSystem) -> pl.Expr:
    return expected_reference("subject", "Patient", system.identifier_system("patient"), pl.col("patient_id"))


class VisitFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    visit_date: str = pa.Field(str_matches=DATE)


ELEMENT = DataElement(
    name="visits",
    description="Visits to FHIR Encounter, each with its notes as ClinicalImpression in one transaction.",
    mapping_version="1.0.0",
    source_tables={"visits": "visit_id", "visit_notes": "note_id", "patients": "patient_id"},
    requires=("patients",),
    extract=extract,
    transform=transform,
    schemas={"Encounter": VisitFrame, "ClinicalImpression": VisitFrame},
    patient_column="patient_id",
    change_column=UPDATED_AT,
    transactional=True,
)
