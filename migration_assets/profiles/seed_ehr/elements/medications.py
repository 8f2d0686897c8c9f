"""The medication list: legacy `patient_medications` to FHIR MedicationStatement.

MedicationStatement, not MedicationRequest: the legacy table is the chart's medication *list*, the
current and past medications the clinic knows the patient takes or took (some started elsewhere,
some over the counter), with a status such as active, discontinued or completed and start and end
dates. That is what MedicationStatement records. A MedicationRequest is an order with a prescriber,
an authoredOn date and dispense details, none of which the list has; writing the list as requests
would invent orders. Prescriptions, when a legacy prescriptions table is migrated, become
MedicationRequest in their own element.

Rules: the local drug code is always kept as a coding in the local code system; an RxNorm coding is
added only where terminology/rxnorm.csv maps the local code (`code_mapped` says which). The legacy
status is mapped through terminology/medication_status.csv; an unknown status is quarantined. The
dates keep their precision (YYYY, YYYY-MM or YYYY-MM-DD); an impossible or future date, or an end
before the start, is quarantined. The sig is kept as dosage text.
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
from migration_assets.elements.builders import ends_before_start
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    reference,
)
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import RXNORM, read_map

STATUSES = ("active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown", "not-taken")

REGISTER_NOTES = {
    "drug_code": "local coding always; RxNorm coding added only where terminology/rxnorm.csv maps it",
    "status": "terminology/medication_status.csv, case-insensitive; unknown status quarantined (unknown_code)",
    "start_date": "kept at its precision; impossible or future date quarantined",
    "end_date": "kept at its precision; impossible, future or before start_date quarantined",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    return (
        tables["patient_medications"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("patient_medications"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    rxnorm = (
        read_map("rxnorm")
        .lazy()
        .rename({"local_code": "drug_code", "code": "rxnorm_code", "display": "rxnorm_display"})
    )
    statuses = read_map("medication_status").lazy()
    patient_system = system.identifier_system("patient")
    medication_system = system.identifier_system("patient-medication")
    subject = conditional_reference("Patient", patient_system, pl.col("patient_id"))
    rows = (
        source.with_columns(
            start_date=pl.col("start_date").str.strip_chars(),
            end_date=pl.col("end_date").str.strip_chars(),
            legacy_status=pl.col("status").str.strip_chars().str.to_lowercase(),
        )
        .join(rxnorm, on="drug_code", how="left", maintain_order="left")
        .join(
            statuses.rename({"status": "fhir_status"}),
            left_on="legacy_status",
            right_on="legacy_status",
            how="left",
            maintain_order="left",
        )
    )
    resource = pl.struct(
        pl.lit("MedicationStatement").alias("resourceType"),
        identifier(medication_system, pl.col("patient_medication_id")).alias("identifier"),
        pl.col("fhir_status").alias("status"),
        codeable_concept(
            coding(system.code_system("drug"), pl.col("drug_code"), pl.col("drug_name")),
            coding(RXNORM, pl.col("rxnorm_code"), pl.col("rxnorm_display")),
            text=pl.col("drug_name"),
        ).alias("medicationCodeableConcept"),
        reference(subject).alias("subject"),
        pl.struct(pl.col("start_date").alias("start"), pl.col("end_date").alias("end")).alias("effectivePeriod"),
        pl.concat_list(pl.struct(pl.col("dosage_text").alias("text"))).alias("dosage"),
    )
    frame = rows.select(
        frame_columns(
            "MedicationStatement",
            medication_system,
            pl.col("patient_medication_id"),
            resource,
            references=[expected_reference("subject", "Patient", patient_system, pl.col("patient_id"))],
        ),
        patient_id=pl.col("patient_id"),
        subject_reference=subject,
        status=pl.col("fhir_status"),
        start_date=pl.col("start_date"),
        end_date=pl.col("end_date"),
        code_mapped=pl.col("rxnorm_code").is_not_null(),
        legacy_status=pl.col("legacy_status"),
        patient_in_source=pl.col("patient_in_source").fill_null(False),
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(
        frame,
        "unknown_code",
        pl.col("status").is_null(),
        pl.format("status {} has no entry in terminology/medication_status.csv", pl.col("legacy_status")),
    )
    for column in ("start_date", "end_date"):
        frame = quarantine(frame, "invalid_date", invalid_date(column), f"{column} is not a real date")
        frame = quarantine(frame, "future_date", future_date(column), f"{column} lies in the future")
    frame = quarantine(
        frame,
        "invalid_period",
        ends_before_start(pl.col("start_date"), pl.col("end_date")),
        "end_date lies before start_date",
    )
    return frame.drop("legacy_status", "patient_in_source")


class MedicationStatementFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    status: str = pa.Field(isin=STATUSES)
    start_date: str = pa.Field(str_matches=DATE, nullable=True)
    end_date: str = pa.Field(str_matches=DATE, nullable=True)
    code_mapped: bool


ELEMENT = DataElement(
    name="medications",
    description="The medication list: patient_medications with local and RxNorm codes to FHIR MedicationStatement.",
    mapping_version="1.0.0",
    source_tables={"patient_medications": "patient_medication_id", "patients": "patient_id"},
    requires=("patients",),
    extract=extract,
    transform=transform,
    schemas={"MedicationStatement": MedicationStatementFrame},
    patient_column="patient_id",
    review_flags={"code_mapped": False},
    change_column=UPDATED_AT,
)
