"""Allergies: legacy `patient_allergies` to FHIR AllergyIntolerance.

Rules: the local allergen code is always kept as a coding in the local code system; a SNOMED CT
coding is added only where terminology/allergy_snomed.csv maps the local code (`code_mapped`).
Clinical and verification status are mapped (case-insensitively) to the HL7 code systems; an unknown
value is quarantined, and so is a missing clinical status (FHIR requires one unless the record was
entered in error). The reaction becomes the reaction's manifestation text with its severity (mild,
moderate or severe, case-insensitive; anything else is quarantined; a severity with no reaction
cannot be written, since a reaction needs a manifestation, and is quarantined too).
"""

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
    present,
    reference,
)
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import SNOMED_CT, read_map

CLINICAL_STATUS_SYSTEM = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
VERIFICATION_STATUS_SYSTEM = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
# Legacy values (lower case) to the HL7 codes; anything else is quarantined.
CLINICAL_STATUS = {"active": "active", "inactive": "inactive", "resolved": "resolved"}
VERIFICATION_STATUS = {"confirmed": "confirmed", "unconfirmed": "unconfirmed", "refuted": "refuted"}
SEVERITIES = ("mild", "moderate", "severe")

REGISTER_NOTES = {
    "allergen_code": "local coding always; SNOMED CT coding added only where terminology/allergy_snomed.csv maps it",
    "clinical_status": "active|inactive|resolved (case-insensitive) to allergyintolerance-clinical; "
    "missing or unknown quarantined",
    "verification_status": "confirmed|unconfirmed|refuted (case-insensitive) to allergyintolerance-verification; "
    "unknown quarantined",
    "severity": "mild|moderate|severe (case-insensitive); unknown, or given without a reaction, quarantined",
    "recorded_date": "kept at its precision; impossible or future date quarantined",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    return (
        tables["patient_allergies"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("patient_allergies"))
    )


def _status(column: str, mapping: dict[str, str]) -> pl.Expr:
    return (
        pl.col(column)
        .str.strip_chars()
        .str.to_lowercase()
        .replace_strict(mapping, default=None, return_dtype=pl.String)
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    snomed = (
        read_map("allergy_snomed")
        .lazy()
        .rename({"local_code": "allergen_code", "code": "snomed_code", "display": "snomed_display"})
    )
    patient_system = system.identifier_system("patient")
    allergy_system = system.identifier_system("patient-allergy")
    patient = conditional_reference("Patient", patient_system, pl.col("patient_id"))
    legacy_severity = pl.col("severity").str.strip_chars().str.to_lowercase()
    rows = source.with_columns(
        recorded_date=pl.col("recorded_date").str.strip_chars(),
        fhir_clinical_status=_status("clinical_status", CLINICAL_STATUS),
        fhir_verification_status=_status("verification_status", VERIFICATION_STATUS),
        fhir_severity=pl.when(legacy_severity.is_in(SEVERITIES)).then(legacy_severity),
    ).join(snomed, on="allergen_code", how="left", maintain_order="left")
    resource = pl.struct(
        pl.lit("AllergyIntolerance").alias("resourceType"),
        identifier(allergy_system, pl.col("patient_allergy_id")).alias("identifier"),
        codeable_concept(coding(CLINICAL_STATUS_SYSTEM, pl.col("fhir_clinical_status"))).alias("clinicalStatus"),
        codeable_concept(coding(VERIFICATION_STATUS_SYSTEM, pl.col("fhir_verification_status"))).alias(
            "verificationStatus"
        ),
        codeable_concept(
            coding(system.code_system("allergen"), pl.col("allergen_code"), pl.col("allergen_name")),
            coding(SNOMED_CT, pl.col("snomed_code"), pl.col("snomed_display")),
            text=pl.col("allergen_name"),
        ).alias("code"),
        reference(patient).alias("patient"),
        pl.col("recorded_date").alias("recordedDate"),
        present(
            pl.when(pl.col("reaction").is_not_null()).then(
                pl.struct(
                    pl.concat_list(pl.struct(pl.col("reaction").alias("text"))).alias("manifestation"),
                    pl.col("fhir_severity").alias("severity"),
                )
            )
        ).alias("reaction"),
    )
    frame = rows.select(
        frame_columns(
            "AllergyIntolerance",
            allergy_system,
            pl.col("patient_allergy_id"),
            resource,
            references=[expected_reference("patient", "Patient", patient_system, pl.col("patient_id"))],
        ),
        patient_id=pl.col("patient_id"),
        patient_reference=patient,
        clinical_status=pl.col("fhir_clinical_status"),
        verification_status=pl.col("fhir_verification_status"),
        severity=pl.col("fhir_severity"),
        recorded_date=pl.col("recorded_date"),
        code_mapped=pl.col("snomed_code").is_not_null(),
        legacy=pl.struct("clinical_status", "verification_status", "severity", "reaction"),
        patient_in_source=pl.col("patient_in_source").fill_null(False),
    )
    legacy = pl.col("legacy").struct
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(frame, "missing_value", legacy.field("clinical_status").is_null(), "clinical_status is empty")
    frame = quarantine(
        frame,
        "unknown_code",
        pl.col("clinical_status").is_null(),
        pl.format("clinical_status {} is not active, inactive or resolved", legacy.field("clinical_status")),
    )
    frame = quarantine(
        frame,
        "unknown_code",
        legacy.field("verification_status").is_not_null() & pl.col("verification_status").is_null(),
        pl.format(
            "verification_status {} is not confirmed, unconfirmed or refuted", legacy.field("verification_status")
        ),
    )
    frame = quarantine(
        frame,
        "unknown_code",
        legacy.field("severity").is_not_null() & pl.col("severity").is_null(),
        pl.format("severity {} is not mild, moderate or severe", legacy.field("severity")),
    )
    frame = quarantine(
        frame,
        "missing_value",
        legacy.field("severity").is_not_null() & legacy.field("reaction").is_null(),
        "severity is given without a reaction",
    )
    frame = quarantine(frame, "invalid_date", invalid_date("recorded_date"), "recorded_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("recorded_date"), "recorded_date lies in the future")
    return frame.drop("legacy", "patient_in_source")


class AllergyIntoleranceFrame(FrameModel):
    patient_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    clinical_status: str = pa.Field(isin=sorted(CLINICAL_STATUS.values()))
    verification_status: str = pa.Field(isin=sorted(VERIFICATION_STATUS.values()), nullable=True)
    severity: str = pa.Field(isin=SEVERITIES, nullable=True)
    recorded_date: str = pa.Field(str_matches=DATE, nullable=True)
    code_mapped: bool


ELEMENT = DataElement(
    name="allergies",
    description="Allergies: patient_allergies with local and SNOMED CT codes to FHIR AllergyIntolerance.",
    mapping_version="1.0.0",
    source_tables={"patient_allergies": "patient_allergy_id", "patients": "patient_id"},
    requires=("patients",),
    extract=extract,
    transform=transform,
    schemas={"AllergyIntolerance": AllergyIntoleranceFrame},
    patient_column="patient_id",
    review_flags={"code_mapped": False},
    change_column=UPDATED_AT,
)
