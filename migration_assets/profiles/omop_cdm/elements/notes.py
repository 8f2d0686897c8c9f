"""NOTE to DocumentReference with the note's text inline: a clinician looks for a visit's notes among the
patient's documents (Medplum's chart lists DocumentReferences), and a DocumentReference is what US Core
and the OMOP-on-FHIR mappings use for clinical notes. (Communication is a message between people, not a
chart note.)

- content[0].attachment: the note_text as UTF-8 `text/plain`, base64 in `data` (the text exactly as
  stored, line breaks included), note_title as its title, note_date as its creation.
- type from note_class_concept_id (CONCEPT: LOINC document ontology), the source value kept locally;
  category US Core `clinical-note`.
- subject, author (the provider, when the note names one), context.encounter (the visit detail's
  Encounter when the note names one, else the visit's, when named) and context.period.start (the date).
- a note without text (note_text is required in the CDM) is quarantined: there is nothing to read.
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    DataElement,
    FrameModel,
    SourceSystem,
    expected_reference,
    frame_columns,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import text
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    reference,
    without_nulls,
)
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
    table,
    visit_detail_columns,
)

REGISTER_NOTES = {
    "note_text": "content.attachment.data: the text as UTF-8 text/plain, base64; an empty one is quarantined",
    "note_title": "description and content.attachment.title",
    "note_class_concept_id": "type from CONCEPT (LOINC document ontology); concept 0 keeps note_source_value",
    "provider_id": "author Practitioner when present",
    "visit_occurrence_id": "context.encounter when present",
    "visit_detail_id": VISIT_DETAIL_NOTE,
}
CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    providers = key_flags(table(tables, "provider"), "provider_id", "provider_in_source")
    rows = event_rows(tables, "note", "note_class_concept_id")
    return rows.join(providers, on="provider_id", how="left", maintain_order="left")


def listed(target: pl.Expr) -> pl.Expr:
    """`[{"reference": target}]` where there is a target, else null (and so left out)."""
    return pl.when(target.is_not_null()).then(pl.concat_list(pl.struct(target.alias("reference"))))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    note_system = system.identifier_system("note")
    provider_system = system.identifier_system("provider")
    rows = source.with_columns(written=day("note_date"), body=pl.col("note_text").fill_null(""))
    attachment = pl.struct(
        pl.lit("text/plain; charset=utf-8").alias("contentType"),
        pl.col("body").str.encode("base64").alias("data"),
        text(pl.col("note_title")).alias("title"),
        pl.col("written").alias("creation"),
    )
    resource = pl.struct(
        pl.lit("DocumentReference").alias("resourceType"),
        identifier(note_system, pl.col("note_id")).alias("identifier"),
        pl.lit("current").alias("status"),
        pl.lit("final").alias("docStatus"),
        concept(system, "note_class_concept_id", "code", "note_source_value").alias("type"),
        pl.concat_list(codeable_concept(coding(CATEGORY, pl.lit("clinical-note"), pl.lit("Clinical Note")))).alias(
            "category"
        ),
        reference(patient_reference(system)).alias("subject"),
        listed(conditional_reference("Practitioner", provider_system, pl.col("provider_id"))).alias("author"),
        text(pl.col("note_title")).alias("description"),
        pl.concat_list(pl.struct(attachment.alias("attachment"))).alias("content"),
        pl.struct(
            listed(encounter_reference(system)).alias("encounter"),
            pl.struct(pl.col("written").alias("start")).alias("period"),
        ).alias("context"),
    )
    frame = rows.select(
        *frame_columns(
            "DocumentReference",
            note_system,
            pl.col("note_id"),
            resource,
            references=[
                expected_patient(system),
                expected_encounter(system, "context.encounter.0"),
                pl.when(pl.col("provider_id").is_not_null()).then(
                    expected_reference("author.0", "Practitioner", provider_system, pl.col("provider_id"))
                ),
            ],
        ),
        "person_id",
        "visit_occurrence_id",
        "visit_person_id",
        "person_in_source",
        "provider_id",
        "provider_in_source",
        "written",
        *visit_detail_columns(),
        has_text=pl.col("body").str.strip_chars() != "",
        code_mapped=concept_mapped("note_class_concept_id", "code"),
    )
    frame = event_rules(frame.with_columns(without_nulls(pl.col("references"))), "written")
    frame = quarantine_orphans(frame, "provider_id", "provider", "provider_in_source", required=False)
    frame = quarantine(frame, "missing_value", ~pl.col("has_text"), "note_text is empty")
    return frame.drop("provider_in_source", "has_text")


class NoteFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "note": "note_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "provider": "provider_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="notes",
    description="OMOP NOTE to FHIR DocumentReference, the note's text inline (text/plain): a clinician finds a "
    "visit's notes among the chart's documents (Communication is a message between people, not a chart note).",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("note", "note_class_concept_id"),
    requires=("persons", "visits", "visit_details", "providers"),
    extract=extract,
    transform=transform,
    schemas={"DocumentReference": NoteFrame},
    patient_column="person_id",
    review_flags=EVENT_REVIEW_FLAGS,
)
