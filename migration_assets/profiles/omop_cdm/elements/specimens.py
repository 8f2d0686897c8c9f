"""SPECIMEN to Specimen.

- type from specimen_concept_id (CONCEPT, SNOMED CT specimen), the source value kept locally.
- accessionIdentifier from specimen_source_id (the laboratory's own id, which a person searches for).
- collection: collectedDateTime the date, quantity (the number as given; UCUM unit from unit_concept_id,
  else unit_source_value as text only), bodySite from anatomic_site_concept_id (concept 0 keeps
  anatomic_site_source_value; neither: none).
- disease_status_concept_id is not migrated: Specimen has no place for the donor's disease status
  (Specimen.condition is the specimen's own state, e.g. haemolysed).
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    DataElement,
    FrameModel,
    SourceSystem,
    frame_columns,
    future_date,
    invalid_date,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import decimal, embed_decimals, is_decimal, text
from migration_assets.elements.fhir_json import identifier, reference, without_nulls
from migration_assets.elements.terminology import UCUM
from migration_assets.profiles.omop_cdm.omop import (
    concept,
    concept_mapped,
    concepts_named_by,
    day,
    expected_patient,
    optional_among,
    patient_reference,
    table,
    with_concept,
)

REGISTER_NOTES = {
    "specimen_source_id": "accessionIdentifier under the specimen-source-id system",
    "quantity": "collection.quantity, the number as given; a value that is no number is quarantined",
    "unit_concept_id": "UCUM concept_code as unit, system and code; else unit_source_value as unit text only",
    "anatomic_site_concept_id": "collection.bodySite from CONCEPT; concept 0 keeps anatomic_site_source_value",
    "disease_status_concept_id": "not migrated (no Specimen element holds the donor's disease status)",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    persons = key_flags(table(tables, "person"), "person_id", "person_in_source")
    rows = table(tables, "specimen").join(persons, on="person_id", how="left", maintain_order="left")
    rows = with_concept(rows, tables, "specimen_concept_id", "code")
    rows = with_concept(rows, tables, "unit_concept_id", "unit")
    return with_concept(rows, tables, "anatomic_site_concept_id", "site").with_columns(source_table=pl.lit("specimen"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    specimen_system = system.identifier_system("specimen")
    ucum_unit = (pl.col("unit_vocabulary") == "UCUM") & (pl.col("unit_concept_id").fill_null("0") != "0")
    unit_text = pl.coalesce(pl.when(ucum_unit).then(pl.col("unit_code")), text(pl.col("unit_source_value")))
    amount = text(pl.col("quantity"))
    site_given = (pl.col("anatomic_site_concept_id").fill_null("0") != "0") | text(
        pl.col("anatomic_site_source_value")
    ).is_not_null()
    rows = source.with_columns(collected=day("specimen_date"), amount=amount)
    resource = pl.struct(
        pl.lit("Specimen").alias("resourceType"),
        identifier(specimen_system, pl.col("specimen_id")).alias("identifier"),
        pl.when(text(pl.col("specimen_source_id")).is_not_null())
        .then(
            pl.struct(
                pl.lit(system.identifier_system("specimen-source-id")).alias("system"),
                text(pl.col("specimen_source_id")).alias("value"),
            )
        )
        .alias("accessionIdentifier"),
        concept(system, "specimen_concept_id", "code", "specimen_source_value").alias("type"),
        reference(patient_reference(system)).alias("subject"),
        pl.struct(
            pl.col("collected").alias("collectedDateTime"),
            pl.when(is_decimal(pl.col("amount")))
            .then(
                pl.struct(
                    decimal(pl.col("amount")).alias("value"),
                    unit_text.alias("unit"),
                    pl.when(ucum_unit).then(pl.lit(UCUM)).alias("system"),
                    pl.when(ucum_unit).then(pl.col("unit_code")).alias("code"),
                )
            )
            .alias("quantity"),
            pl.when(site_given)
            .then(concept(system, "anatomic_site_concept_id", "site", "anatomic_site_source_value"))
            .alias("bodySite"),
        ).alias("collection"),
    )
    frame = rows.select(
        *frame_columns(
            "Specimen", specimen_system, pl.col("specimen_id"), resource, references=[expected_patient(system)]
        ),
        "person_id",
        "person_in_source",
        "collected",
        code_mapped=concept_mapped("specimen_concept_id", "code"),
        bad_quantity=pl.col("amount").is_not_null() & ~is_decimal(pl.col("amount")),
    )
    frame = frame.with_columns(without_nulls(pl.col("references")), embed_decimals(pl.col("resource")))
    frame = quarantine_orphans(frame, "person_id", "person", "person_in_source")
    frame = quarantine(frame, "missing_value", pl.col("collected").is_null(), "specimen_date is empty")
    frame = quarantine(frame, "invalid_date", invalid_date("collected"), "specimen_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("collected"), "specimen_date lies in the future")
    frame = quarantine(frame, "non_numeric_value", pl.col("bad_quantity"), "quantity is not a number")
    return frame.drop("person_in_source", "bad_quantity")


class SpecimenFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {"specimen": "specimen_id", "person": "person_id", "concept": "concept_id"}

ELEMENT = DataElement(
    name="specimens",
    description="OMOP SPECIMEN to FHIR Specimen (type and body site from CONCEPT, quantity with UCUM).",
    mapping_version="1.0.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("specimen", "specimen_concept_id", "unit_concept_id", "anatomic_site_concept_id"),
    requires=("persons",),
    extract=extract,
    transform=transform,
    schemas={"Specimen": SpecimenFrame},
    patient_column="person_id",
    review_flags={"code_mapped": False},
)
