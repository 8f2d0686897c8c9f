"""Procedures: legacy `procedures` rows to FHIR Procedure, keyed by procedure_id.

The legacy application records each procedure under a code system it names: `CPT` (office
procedures) or `SNOMED` (history recorded from elsewhere). The code is written in that standard system
when it has the system's shape (CPT: four digits and a digit or F/T/U; SNOMED CT: 6 to 18 digits); an
unknown system or a malformed code is quarantined (`unknown_code`), never guessed. Status is
`completed` (the table records procedures done); performedDateTime keeps the date's precision; an
impossible or future date is quarantined. The encounter, when given, must be the same patient's
(orphan otherwise).
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
from migration_assets.elements.terminology import CPT, SNOMED_CT
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT

# Each legacy code system name, with its FHIR system URI and the shape of its codes.
CODE_SYSTEMS = {"CPT": (CPT, r"^\d{4}[0-9FTU]$"), "SNOMED": (SNOMED_CT, r"^\d{6,18}$")}

REGISTER_NOTES = {
    "code_system": "CPT -> http://www.ama-assn.org/go/cpt, SNOMED -> http://snomed.info/sct; any other quarantined",
    "code": "written in its system when it has the system's shape; otherwise quarantined (unknown_code)",
    "performed_date": "performedDateTime at its precision; impossible or future date quarantined",
    "encounter_id": "encounter, conditional reference when given; not in encounters or another patient's: quarantined",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    encounters = (
        tables["encounters"]
        .unique("encounter_id", keep="first")
        .select("encounter_id", encounter_patient="patient_id", encounter_in_source=pl.lit(True))
    )
    return (
        tables["procedures"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .join(encounters, on="encounter_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("procedures"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    encounter_system = system.identifier_system("encounter")
    procedure_system = system.identifier_system("procedure")
    legacy_system = text(pl.col("code_system")).str.to_uppercase()
    code = text(pl.col("code"))
    uri = legacy_system.replace_strict({k: v[0] for k, v in CODE_SYSTEMS.items()}, default=None, return_dtype=pl.String)
    shaped = pl.lit(False)
    for name, (_, shape) in CODE_SYSTEMS.items():
        shaped = shaped | ((legacy_system == name) & code.str.contains(shape))
    rows = source.with_columns(
        code=code,
        system_uri=uri,
        code_valid=shaped.fill_null(False),
        performed_date=text(pl.col("performed_date")),
        subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        encounter_reference=conditional_reference("Encounter", encounter_system, pl.col("encounter_id")),
    )
    resource = pl.struct(
        pl.lit("Procedure").alias("resourceType"),
        identifier(procedure_system, pl.col("procedure_id")).alias("identifier"),
        pl.lit("completed").alias("status"),
        codeable_concept(
            coding(pl.col("system_uri"), pl.col("code"), text(pl.col("description"))), text=text(pl.col("description"))
        ).alias("code"),
        reference(pl.col("subject_reference")).alias("subject"),
        reference(pl.col("encounter_reference")).alias("encounter"),
        pl.col("performed_date").alias("performedDateTime"),
    )
    frame = rows.select(
        frame_columns(
            "Procedure",
            procedure_system,
            pl.col("procedure_id"),
            resource,
            references=[
                expected_reference("subject", "Patient", patient_system, pl.col("patient_id")),
                pl.when(pl.col("encounter_id").is_not_null()).then(
                    expected_reference("encounter", "Encounter", encounter_system, pl.col("encounter_id"))
                ),
            ],
        ),
        patient_id=pl.col("patient_id"),
        subject_reference=pl.col("subject_reference"),
        performed_date=pl.col("performed_date"),
        code_valid=pl.col("code_valid"),
        encounter_id=pl.col("encounter_id"),
        patient_in_source=pl.col("patient_in_source"),
        encounter_in_source=pl.col("encounter_in_source"),
        other_patients_encounter=pl.col("encounter_patient").is_not_null()
        & (pl.col("encounter_patient") != pl.col("patient_id")),
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine_orphans(frame, "encounter_id", "encounters", "encounter_in_source", required=False)
    frame = quarantine(
        frame,
        "mismatched_reference",
        pl.col("other_patients_encounter"),
        "encounter_id names another patient's encounter",
    )
    frame = quarantine(
        frame,
        "unknown_code",
        ~pl.col("code_valid"),
        "code_system is not CPT or SNOMED, or code does not have that system's shape",
    )
    frame = quarantine(frame, "invalid_date", invalid_date("performed_date"), "performed_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("performed_date"), "performed_date lies in the future")
    frame = frame.with_columns(pl.col("references").list.filter(pl.element().is_not_null()))
    return frame.drop(
        "code_valid", "encounter_id", "patient_in_source", "encounter_in_source", "other_patients_encounter"
    )


class ProcedureFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    performed_date: str = pa.Field(str_matches=DATE)


ELEMENT = DataElement(
    name="procedures",
    description="Procedures to FHIR Procedure, coded in CPT or SNOMED CT as the legacy row names it.",
    mapping_version="1.0.0",
    source_tables={"procedures": "procedure_id", "patients": "patient_id", "encounters": "encounter_id"},
    requires=("patients", "encounters"),
    extract=extract,
    transform=transform,
    schemas={"Procedure": ProcedureFrame},
    patient_column="patient_id",
    change_column=UPDATED_AT,
)
