"""DRUG_EXPOSURE to MedicationRequest or MedicationStatement, by drug_type_concept_id: a prescription
(32838 EHR prescription, 38000177 Prescription written, 32833 EHR order) is a MedicationRequest
(intent order, status completed); every other record of taking a drug (dispensing, administration,
self-report, claims) is a MedicationStatement (status completed, effective period). Medication from
drug_concept_id (RxNorm), dosage text from `sig`; quantity and days supply on the request."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns
from migration_assets.elements.builders import decimal, embed_decimals, period, text
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
from migration_assets.profiles.omop_cdm.terminology import read_map

REGISTER_NOTES = {
    "drug_type_concept_id": "MedicationRequest for a type in terminology/drug_request_types.csv, else Statement",
    "drug_concept_id": "medication coding from CONCEPT (RxNorm); concept 0 keeps only the source value",
    "visit_detail_id": VISIT_DETAIL_NOTE,
}
REQUEST_TYPES = read_map("drug_request_types")["concept_id"].to_list()


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return event_rows(tables, "drug_exposure", "drug_concept_id")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    rows = source.with_columns(
        start=day("drug_exposure_start_date"),
        end=day("drug_exposure_end_date"),
        is_request=pl.col("drug_type_concept_id").is_in(REQUEST_TYPES).fill_null(False),
    )
    drug_system = system.identifier_system("drug-exposure")
    dosage = pl.when(text(pl.col("sig")).is_not_null()).then(
        pl.concat_list(pl.struct(text(pl.col("sig")).alias("text")))
    )
    medication = concept(system, "drug_concept_id", "code", "drug_source_value")
    request = pl.struct(
        pl.lit("MedicationRequest").alias("resourceType"),
        identifier(drug_system, pl.col("drug_exposure_id")).alias("identifier"),
        pl.lit("completed").alias("status"),
        pl.lit("order").alias("intent"),
        medication.alias("medicationCodeableConcept"),
        reference(patient_reference(system)).alias("subject"),
        reference(encounter_reference(system)).alias("encounter"),
        pl.col("start").alias("authoredOn"),
        dosage.alias("dosageInstruction"),
        pl.struct(
            pl.when(decimal(text(pl.col("quantity"))).is_not_null())
            .then(pl.struct(decimal(text(pl.col("quantity"))).alias("value")))
            .alias("quantity"),
            pl.when(decimal(text(pl.col("days_supply"))).is_not_null())
            .then(
                pl.struct(
                    decimal(text(pl.col("days_supply"))).alias("value"),
                    pl.lit("d").alias("unit"),
                    pl.lit("http://unitsofmeasure.org").alias("system"),
                    pl.lit("d").alias("code"),
                )
            )
            .alias("expectedSupplyDuration"),
        ).alias("dispenseRequest"),
    )
    statement = pl.struct(
        pl.lit("MedicationStatement").alias("resourceType"),
        identifier(drug_system, pl.col("drug_exposure_id")).alias("identifier"),
        pl.lit("completed").alias("status"),
        medication.alias("medicationCodeableConcept"),
        reference(patient_reference(system)).alias("subject"),
        reference(encounter_reference(system)).alias("context"),
        period(pl.col("start"), pl.col("end")).alias("effectivePeriod"),
        dosage.alias("dosage"),
    )
    frames = []
    for resource_type, resource, wanted, encounter_path in (
        ("MedicationRequest", request, True, "encounter"),
        ("MedicationStatement", statement, False, "context"),
    ):
        frames.append(
            rows.filter(pl.col("is_request") == wanted).select(
                *frame_columns(
                    resource_type,
                    drug_system,
                    pl.col("drug_exposure_id"),
                    resource,
                    references=[expected_patient(system), expected_encounter(system, encounter_path)],
                ),
                "person_id",
                "visit_occurrence_id",
                "visit_person_id",
                "person_in_source",
                "start",
                *visit_detail_columns(),
                code_mapped=concept_mapped("drug_concept_id", "code"),
            )
        )
    frame = pl.concat(frames, how="diagonal_relaxed")
    frame = frame.with_columns(without_nulls(pl.col("references")), embed_decimals(pl.col("resource")))
    return event_rules(frame, "start")


class DrugFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "drug_exposure": "drug_exposure_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="drugs",
    description="OMOP DRUG_EXPOSURE to FHIR MedicationRequest (prescriptions) or MedicationStatement (other records).",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("drug_exposure", "drug_concept_id"),
    requires=("persons", "visits", "visit_details"),
    extract=extract,
    transform=transform,
    schemas={"MedicationRequest": DrugFrame, "MedicationStatement": DrugFrame},
    patient_column="person_id",
    review_flags=EVENT_REVIEW_FLAGS,
)
