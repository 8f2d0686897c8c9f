"""Encounters and their notes: legacy `encounters` to FHIR Encounter, `encounter_notes` to
ClinicalImpression. An Encounter and its notes are written in one transaction (urn:uuid link).
An encounter's practitioner (nullable `practitioner_id`) becomes its participant; one that is not in
the practitioners table is an orphan reference and quarantines the encounter."""

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
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    reference,
    without_nulls,
)
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import V3_ACT_CODE, read_map


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    known_practitioners = key_flags(tables["practitioners"], "practitioner_id", "practitioner_in_source")
    encounters = (
        tables["encounters"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .join(known_practitioners, on="practitioner_id", how="left", maintain_order="left")
    )
    # A note takes its patient and date from its encounter; duplicated encounter keys must not
    # multiply notes (the duplicates themselves are quarantined with the encounters).
    parents = encounters.unique("encounter_id", keep="first").select(
        "encounter_id", "patient_id", "date", "patient_in_source", encounter_in_source=pl.lit(True)
    )
    notes = tables["encounter_notes"].join(parents, on="encounter_id", how="left")
    return pl.concat(
        [
            encounters.with_columns(source_table=pl.lit("encounters")),
            notes.with_columns(source_table=pl.lit("encounter_notes")),
        ],
        how="diagonal_relaxed",
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    encounter_system = system.identifier_system("encounter")
    source = source.with_columns(
        date=pl.col("date").str.strip_chars(),
        subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        encounter_url=stable_urn_uuid(encounter_system, pl.col("encounter_id")),
        patient_in_source=pl.col("patient_in_source").fill_null(False),
    )
    frame = pl.concat(
        [
            _encounters(source.filter(pl.col("source_table") == "encounters"), system),
            _notes(source.filter(pl.col("source_table") == "encounter_notes"), system),
        ],
        how="diagonal_relaxed",
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(frame, "invalid_date", invalid_date("date"), "date is not a real date")
    frame = quarantine(frame, "future_date", future_date("date"), "date lies in the future")
    frame = quarantine_orphans(frame, "practitioner_id", "practitioners", "practitioner_in_source", required=False)
    # An encounter without a practitioner expects no participant reference.
    frame = frame.with_columns(without_nulls(pl.col("references")))
    return frame.drop("patient_in_source", "encounter_in_source", "type_known", "practitioner_in_source")


def _encounters(rows: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    types = read_map("encounter_types").lazy().with_columns(type_known=pl.lit(True))
    resource = pl.struct(
        pl.lit("Encounter").alias("resourceType"),
        identifier(system.identifier_system("encounter"), pl.col("encounter_id")).alias("identifier"),
        # Every legacy encounter is a past visit: it has ended.
        pl.lit("finished").alias("status"),
        coding(V3_ACT_CODE, pl.col("class_code"), pl.col("class_display")).alias("class"),
        pl.concat_list(
            codeable_concept(coding(system.code_system("encounter-type"), pl.col("type"), pl.col("display")))
        ).alias("type"),
        reference(pl.col("subject_reference")).alias("subject"),
        pl.concat_list(pl.struct(reference(pl.col("practitioner_reference")).alias("individual"))).alias("participant"),
        # The legacy date has day precision; it is kept so, not stretched to a midnight time.
        pl.struct(pl.col("date").alias("start")).alias("period"),
    )
    practitioner_system = system.identifier_system("practitioner")
    frame = (
        rows.join(types, on="type", how="left", maintain_order="left")
        .with_columns(
            type_known=pl.col("type_known").fill_null(False),
            practitioner_reference=conditional_reference(
                "Practitioner", practitioner_system, pl.col("practitioner_id")
            ),
        )
        .select(
            frame_columns(
                "Encounter",
                system.identifier_system("encounter"),
                pl.col("encounter_id"),
                resource,
                references=[
                    _subject(system),
                    pl.when(pl.col("practitioner_id").is_not_null()).then(
                        expected_reference(
                            "participant.0.individual", "Practitioner", practitioner_system, pl.col("practitioner_id")
                        )
                    ),
                ],
                full_url=pl.col("encounter_url"),
            ),
            patient_id=pl.col("patient_id"),
            encounter_id=pl.col("encounter_id"),
            subject_reference=pl.col("subject_reference"),
            date=pl.col("date"),
            class_code=pl.col("class_code"),
            practitioner_id=pl.col("practitioner_id"),
            practitioner_reference=pl.col("practitioner_reference"),
            practitioner_in_source=pl.col("practitioner_in_source"),
            patient_in_source=pl.col("patient_in_source"),
            encounter_in_source=pl.lit(True),
            type_known=pl.col("type_known"),
        )
    )
    return quarantine(
        frame, "unknown_code", ~pl.col("type_known"), "encounter type has no entry in terminology/encounter_types.csv"
    )


def _notes(rows: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    resource = pl.struct(
        pl.lit("ClinicalImpression").alias("resourceType"),
        identifier(system.identifier_system("encounter-note"), pl.col("note_id")).alias("identifier"),
        pl.lit("completed").alias("status"),
        reference(pl.col("subject_reference")).alias("subject"),
        reference(pl.col("encounter_url")).alias("encounter"),
        pl.col("date").alias("effectiveDateTime"),
        pl.col("note_text").alias("summary"),
    )
    frame = rows.select(
        frame_columns(
            "ClinicalImpression",
            system.identifier_system("encounter-note"),
            pl.col("note_id"),
            resource,
            references=[
                _subject(system),
                expected_reference(
                    "encounter", "Encounter", system.identifier_system("encounter"), pl.col("encounter_id")
                ),
            ],
            bundle_group=pl.col("encounter_id"),
        ),
        patient_id=pl.col("patient_id"),
        encounter_id=pl.col("encounter_id"),
        subject_reference=pl.col("subject_reference"),
        date=pl.col("date"),
        class_code=pl.lit(None, pl.String),
        note_empty=pl.col("note_text").is_null() | (pl.col("note_text").str.strip_chars() == ""),
        patient_in_source=pl.col("patient_in_source"),
        encounter_in_source=pl.col("encounter_in_source").fill_null(False),
        type_known=pl.lit(True),
    )
    frame = quarantine_orphans(frame, "encounter_id", "encounters", "encounter_in_source")
    return quarantine(frame, "missing_value", pl.col("note_empty"), "note has no text").drop("note_empty")


def _subject(system: SourceSystem) -> pl.Expr:
    return expected_reference("subject", "Patient", system.identifier_system("patient"), pl.col("patient_id"))


class EncounterFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    practitioner_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE, nullable=True)
    date: str = pa.Field(str_matches=DATE)
    class_code: str = pa.Field(isin=["AMB", "EMER", "IMP", "VR", "HH"])


class ClinicalImpressionFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    date: str = pa.Field(str_matches=DATE)


ELEMENT = DataElement(
    name="encounters",
    description="Encounters to FHIR Encounter, each with its notes as ClinicalImpression in one transaction.",
    mapping_version="1.0.0",
    source_tables={
        "encounters": "encounter_id",
        "encounter_notes": "note_id",
        "patients": "patient_id",
        "practitioners": "practitioner_id",
    },
    requires=("patients", "practitioners"),
    extract=extract,
    transform=transform,
    schemas={"Encounter": EncounterFrame, "ClinicalImpression": ClinicalImpressionFrame},
    patient_column="patient_id",
    change_column=UPDATED_AT,
    transactional=True,
)
