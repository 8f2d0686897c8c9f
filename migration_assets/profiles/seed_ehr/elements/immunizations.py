"""Immunizations: legacy `immunizations` rows to FHIR Immunization, keyed by immunization_id.

- vaccineCode: the CVX code as the legacy table holds it, written in CVX when terminology/cvx.csv knows
  it; an unknown code is quarantined (`unknown_code`): a vaccine record nobody can name is not kept.
- status from terminology/immunization_status.csv (`given` -> completed, `not given` -> not-done); an
  unknown status is quarantined. A dose not given needs its reason (statusReason, v3 ActReason through
  terminology/immunization_reasons.csv); a not-done row without a known reason is quarantined
  (`missing_value`), as FHIR asks for one and we do not invent it.
- lotNumber as written; site through terminology/immunization_sites.csv (v3 ActSite), kept as local
  text when unmapped; occurrenceDateTime at its precision (impossible or future quarantined).
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
from migration_assets.elements.builders import text
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    reference,
)
from migration_assets.elements.terminology import CVX
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import read_map

ACT_SITE = "http://terminology.hl7.org/CodeSystem/v3-ActSite"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

REGISTER_NOTES = {
    "cvx_code": "vaccineCode in CVX where terminology/cvx.csv knows it; unknown code quarantined (unknown_code)",
    "status": "terminology/immunization_status.csv (given -> completed, not given -> not-done); unknown quarantined",
    "not_given_reason": "statusReason (v3 ActReason, terminology/immunization_reasons.csv); required when not-done",
    "lot_number": "lotNumber as written",
    "site": "site in v3 ActSite where terminology/immunization_sites.csv maps it, else local coding",
    "administered_date": "occurrenceDateTime at its precision; impossible or future date quarantined",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    return (
        tables["immunizations"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("immunizations"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    immunization_system = system.identifier_system("immunization")
    cvx = read_map("cvx").lazy().rename({"local_code": "cvx_code", "code": "cvx", "display": "cvx_display"})
    sites = (
        read_map("immunization_sites")
        .lazy()
        .rename({"local_code": "site", "code": "site_code", "display": "site_display"})
    )
    reasons = (
        read_map("immunization_reasons")
        .lazy()
        .rename({"local_code": "not_given_reason", "code": "reason_code", "display": "reason_display"})
    )
    statuses = read_map("immunization_status").lazy().rename({"status": "fhir_status"})
    rows = (
        source.with_columns(
            cvx_code=text(pl.col("cvx_code")),
            site=text(pl.col("site")),
            not_given_reason=text(pl.col("not_given_reason")).str.to_lowercase(),
            legacy_status=text(pl.col("status")).str.to_lowercase(),
            administered_date=text(pl.col("administered_date")),
            subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        )
        .join(cvx, on="cvx_code", how="left", maintain_order="left")
        .join(sites, on="site", how="left", maintain_order="left")
        .join(reasons, on="not_given_reason", how="left", maintain_order="left")
        .join(statuses, on="legacy_status", how="left", maintain_order="left")
    )
    not_done = pl.col("fhir_status") == "not-done"
    resource = pl.struct(
        pl.lit("Immunization").alias("resourceType"),
        identifier(immunization_system, pl.col("immunization_id")).alias("identifier"),
        pl.col("fhir_status").alias("status"),
        pl.when(not_done)
        .then(codeable_concept(coding(ACT_REASON, pl.col("reason_code"), pl.col("reason_display"))))
        .alias("statusReason"),
        codeable_concept(coding(CVX, pl.col("cvx"), pl.col("cvx_display")), text=text(pl.col("vaccine_name"))).alias(
            "vaccineCode"
        ),
        reference(pl.col("subject_reference")).alias("patient"),
        pl.col("administered_date").alias("occurrenceDateTime"),
        text(pl.col("lot_number")).alias("lotNumber"),
        pl.when(pl.col("site").is_not_null())
        .then(
            codeable_concept(
                coding(system.code_system("immunization-site"), pl.col("site")),
                coding(ACT_SITE, pl.col("site_code"), pl.col("site_display")),
            )
        )
        .alias("site"),
    )
    frame = rows.select(
        frame_columns(
            "Immunization",
            immunization_system,
            pl.col("immunization_id"),
            resource,
            references=[expected_reference("patient", "Patient", patient_system, pl.col("patient_id"))],
        ),
        patient_id=pl.col("patient_id"),
        subject_reference=pl.col("subject_reference"),
        administered_date=pl.col("administered_date"),
        status=pl.col("fhir_status"),
        patient_in_source=pl.col("patient_in_source"),
        cvx_known=pl.col("cvx").is_not_null(),
        reason_missing=not_done & pl.col("reason_code").is_null(),
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(frame, "unknown_code", ~pl.col("cvx_known"), "cvx_code has no entry in terminology/cvx.csv")
    frame = quarantine(
        frame, "unknown_code", pl.col("status").is_null(), "status has no entry in terminology/immunization_status.csv"
    )
    frame = quarantine(
        frame, "missing_value", pl.col("reason_missing"), "a dose not given has no known not_given_reason"
    )
    frame = quarantine(frame, "invalid_date", invalid_date("administered_date"), "administered_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("administered_date"), "administered_date lies in the future")
    return frame.drop("patient_in_source", "cvx_known", "reason_missing")


class ImmunizationFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    administered_date: str = pa.Field(str_matches=DATE)
    status: str = pa.Field(isin=["completed", "not-done", "entered-in-error"])


ELEMENT = DataElement(
    name="immunizations",
    description="Immunizations to FHIR Immunization: CVX, lot, site, and not-done doses with their reason.",
    mapping_version="1.0.0",
    source_tables={"immunizations": "immunization_id", "patients": "patient_id"},
    requires=("patients",),
    extract=extract,
    transform=transform,
    schemas={"Immunization": ImmunizationFrame},
    patient_column="patient_id",
    change_column=UPDATED_AT,
)
