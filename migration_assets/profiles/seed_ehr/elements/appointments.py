"""Appointments: legacy `appointments` rows to FHIR Appointment, keyed by appointment_id.

Status through terminology/appointment_status.csv (Scheduled -> booked, Arrived -> arrived, Checked out
-> fulfilled, Cancelled -> cancelled, No Show -> noshow); an unknown status is quarantined. Participants:
the patient, the practitioner and the location when given, each `accepted` (participant status is
required; the patient of a no-show had accepted and did not come: the no-show is the appointment's
status). start and end are instants with
their UTC offset; a booked appointment without both is quarantined (`missing_value`; Medplum refuses
it), and so is an end before its start or a time without an offset. The Encounter the appointment
became is linked through `supportingInformation` (FHIR R4 Appointment has no encounter element; the
Encounter's own `appointment` would make encounters depend on appointments); an unknown encounter or
another patient's is quarantined.
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    CONDITIONAL_REFERENCE,
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
from migration_assets.elements.fhir_json import conditional_reference, identifier, present, reference
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import read_map

INSTANT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$"

REGISTER_NOTES = {
    "status": "terminology/appointment_status.csv (case-insensitive); unknown status quarantined (unknown_code)",
    "start_at": "start, an instant with its UTC offset; a booked appointment needs start and end",
    "end_at": "end; before start or without offset quarantined",
    "patient_id": "participant.0.actor (accepted)",
    "practitioner_id": "participant.n.actor when given (accepted); not in practitioners: quarantined",
    "location_id": "participant.n.actor when given (accepted); not in locations: quarantined",
    "encounter_id": "supportingInformation, the Encounter the appointment became; unknown or another "
    "patient's: quarantined",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    encounters = (
        tables["encounters"]
        .unique("encounter_id", keep="first")
        .select("encounter_id", encounter_patient="patient_id", encounter_in_source=pl.lit(True))
    )
    return (
        tables["appointments"]
        .join(
            key_flags(tables["patients"], "patient_id", "patient_in_source"),
            on="patient_id",
            how="left",
            maintain_order="left",
        )
        .join(
            key_flags(tables["practitioners"], "practitioner_id", "practitioner_in_source"),
            on="practitioner_id",
            how="left",
            maintain_order="left",
        )
        .join(
            key_flags(tables["locations"], "location_id", "location_in_source"),
            on="location_id",
            how="left",
            maintain_order="left",
        )
        .join(encounters, on="encounter_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("appointments"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    practitioner_system = system.identifier_system("practitioner")
    location_system = system.identifier_system("location")
    encounter_system = system.identifier_system("encounter")
    appointment_system = system.identifier_system("appointment")
    statuses = read_map("appointment_status").lazy().rename({"status": "fhir_status"})
    rows = source.with_columns(
        legacy_status=text(pl.col("status")).str.to_lowercase(),
        start_at=text(pl.col("start_at")),
        end_at=text(pl.col("end_at")),
        subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        practitioner_reference=conditional_reference("Practitioner", practitioner_system, pl.col("practitioner_id")),
        location_reference=conditional_reference("Location", location_system, pl.col("location_id")),
        encounter_reference=conditional_reference("Encounter", encounter_system, pl.col("encounter_id")),
    ).join(statuses, on="legacy_status", how="left", maintain_order="left")

    def participant(target: str) -> pl.Expr:
        return pl.when(pl.col(target).is_not_null()).then(
            pl.struct(reference(pl.col(target)).alias("actor"), pl.lit("accepted").alias("status"))
        )

    resource = pl.struct(
        pl.lit("Appointment").alias("resourceType"),
        identifier(appointment_system, pl.col("appointment_id")).alias("identifier"),
        pl.col("fhir_status").alias("status"),
        pl.col("start_at").alias("start"),
        pl.col("end_at").alias("end"),
        present(pl.when(pl.col("encounter_id").is_not_null()).then(reference(pl.col("encounter_reference")))).alias(
            "supportingInformation"
        ),
        present(
            participant("subject_reference"), participant("practitioner_reference"), participant("location_reference")
        ).alias("participant"),
    )
    # Participant positions follow the ones present: the patient first, then practitioner, then location.
    practitioner_position = pl.lit(1)
    location_position = pl.lit(1) + pl.col("practitioner_id").is_not_null().cast(pl.Int32)
    frame = rows.select(
        frame_columns(
            "Appointment",
            appointment_system,
            pl.col("appointment_id"),
            resource,
            references=[
                expected_reference("participant.0.actor", "Patient", patient_system, pl.col("patient_id")),
                pl.when(pl.col("practitioner_id").is_not_null()).then(
                    pl.struct(
                        pl.format("participant.{}.actor", practitioner_position).alias("path"),
                        pl.lit("Practitioner").alias("resource_type"),
                        pl.lit(practitioner_system).alias("identifier_system"),
                        pl.col("practitioner_id").alias("identifier_value"),
                    )
                ),
                pl.when(pl.col("location_id").is_not_null()).then(
                    pl.struct(
                        pl.format("participant.{}.actor", location_position).alias("path"),
                        pl.lit("Location").alias("resource_type"),
                        pl.lit(location_system).alias("identifier_system"),
                        pl.col("location_id").alias("identifier_value"),
                    )
                ),
                pl.when(pl.col("encounter_id").is_not_null()).then(
                    expected_reference("supportingInformation.0", "Encounter", encounter_system, pl.col("encounter_id"))
                ),
            ],
        ),
        patient_id=pl.col("patient_id"),
        subject_reference=pl.col("subject_reference"),
        status=pl.col("fhir_status"),
        start_at=pl.col("start_at"),
        end_at=pl.col("end_at"),
        practitioner_id=pl.col("practitioner_id"),
        location_id=pl.col("location_id"),
        encounter_id=pl.col("encounter_id"),
        patient_in_source=pl.col("patient_in_source"),
        practitioner_in_source=pl.col("practitioner_in_source"),
        location_in_source=pl.col("location_in_source"),
        encounter_in_source=pl.col("encounter_in_source"),
        other_patients_encounter=pl.col("encounter_patient").is_not_null()
        & (pl.col("encounter_patient") != pl.col("patient_id")),
    )
    instant_bad = (pl.col("start_at").is_not_null() & ~pl.col("start_at").str.contains(INSTANT)) | (
        pl.col("end_at").is_not_null() & ~pl.col("end_at").str.contains(INSTANT)
    )
    as_time = "%Y-%m-%dT%H:%M:%S%:z"
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine_orphans(frame, "practitioner_id", "practitioners", "practitioner_in_source", required=False)
    frame = quarantine_orphans(frame, "location_id", "locations", "location_in_source", required=False)
    frame = quarantine_orphans(frame, "encounter_id", "encounters", "encounter_in_source", required=False)
    frame = quarantine(
        frame,
        "mismatched_reference",
        pl.col("other_patients_encounter"),
        "encounter_id names another patient's encounter",
    )
    frame = quarantine(
        frame, "unknown_code", pl.col("status").is_null(), "status has no entry in terminology/appointment_status.csv"
    )
    frame = quarantine(frame, "invalid_date", instant_bad, "start_at or end_at is not a time with its UTC offset")
    frame = quarantine(
        frame,
        "missing_value",
        (pl.col("status") == "booked") & (pl.col("start_at").is_null() | pl.col("end_at").is_null()),
        "a booked appointment has no start_at or end_at",
    )
    frame = quarantine(
        frame,
        "ends_before_start",
        pl.col("end_at").str.to_datetime(as_time, strict=False)
        < pl.col("start_at").str.to_datetime(as_time, strict=False),
        "end_at lies before start_at",
    )
    frame = frame.with_columns(pl.col("references").list.filter(pl.element().is_not_null()))
    return frame.drop(
        "practitioner_id",
        "location_id",
        "encounter_id",
        "patient_in_source",
        "practitioner_in_source",
        "location_in_source",
        "encounter_in_source",
        "other_patients_encounter",
    )


class AppointmentFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    status: str = pa.Field(isin=["booked", "arrived", "fulfilled", "cancelled", "noshow"])


ELEMENT = DataElement(
    name="appointments",
    description="Appointments (booked, arrived, cancelled, no-show) to FHIR Appointment with participants and "
    "the Encounter each became.",
    mapping_version="1.0.0",
    source_tables={
        "appointments": "appointment_id",
        "patients": "patient_id",
        "practitioners": "practitioner_id",
        "locations": "location_id",
        "encounters": "encounter_id",
    },
    requires=("patients", "practitioners", "locations", "encounters"),
    extract=extract,
    transform=transform,
    schemas={"Appointment": AppointmentFrame},
    patient_column="patient_id",
    change_column=UPDATED_AT,
)
