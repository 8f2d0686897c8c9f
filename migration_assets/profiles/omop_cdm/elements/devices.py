"""DEVICE_EXPOSURE to DeviceUseStatement (FHIR R4): the patient's use of a device over a period, the device
contained in the statement with its type from CONCEPT and its UDI, the Encounter of its visit detail or visit
as context, and the provider as the statement's `source`."""

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
from migration_assets.elements.builders import ends_before_start, period
from migration_assets.elements.fhir_json import conditional_reference, identifier, reference, without_nulls
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

# R4's DeviceUseStatement has no encounter; R5's DeviceUsage.context is carried back to R4 by its standard
# cross-version extension (derivedFrom may not name an Encounter).
CONTEXT_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DeviceUsage.context"
# The exposure's device, contained: OMOP knows the device only by its concept and UDI, not as a managed
# Device of its own, and a clinician reads the device type on the statement itself.
DEVICE_ID = "device"
REGISTER_NOTES = {
    "device_concept_id": "Device.type from CONCEPT (source value under omop-source-value); the Device is contained, "
    "not a resource of its own: OMOP knows a device only by concept and UDI, and the type reads on the statement",
    "unique_device_id": "contained Device.udiCarrier.deviceIdentifier",
    "device_exposure_end_date": "timingPeriod.end; status completed when given, else active (a device in use)",
    "visit_occurrence_id": f"extension {CONTEXT_EXTENSION}: the visit's Encounter",
    "visit_detail_id": f"extension {CONTEXT_EXTENSION}: {VISIT_DETAIL_NOTE}",
    "provider_id": "source Practitioner when present: who made the statement, the only practitioner R4's "
    "DeviceUseStatement names (it has no performer or recorder)",
}
UNSUPPORTED = {
    "quantity": "R4 DeviceUseStatement and Device have no quantity: the number of devices is not sent",
    "production_id": "the UDI production identifier (lot, serial, dates together) is not split into Device fields",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    providers = key_flags(table(tables, "provider"), "provider_id", "provider_in_source")
    rows = event_rows(tables, "device_exposure", "device_concept_id")
    return rows.join(providers, on="provider_id", how="left", maintain_order="left")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    exposure_system = system.identifier_system("device-exposure")
    provider_system = system.identifier_system("provider")
    rows = source.with_columns(start=day("device_exposure_start_date"), end=day("device_exposure_end_date"))
    device = pl.struct(
        pl.lit("Device").alias("resourceType"),
        pl.lit(DEVICE_ID).alias("id"),
        pl.concat_list(pl.struct(pl.col("unique_device_id").alias("deviceIdentifier"))).alias("udiCarrier"),
        concept(system, "device_concept_id", "code", "device_source_value").alias("type"),
    )
    context = pl.struct(
        pl.lit(CONTEXT_EXTENSION).alias("url"), reference(encounter_reference(system)).alias("valueReference")
    )
    resource = pl.struct(
        pl.lit("DeviceUseStatement").alias("resourceType"),
        pl.concat_list(device).alias("contained"),
        pl.when(encounter_reference(system).is_not_null()).then(pl.concat_list(context)).alias("extension"),
        identifier(exposure_system, pl.col("device_exposure_id")).alias("identifier"),
        pl.when(pl.col("end").is_null()).then(pl.lit("active")).otherwise(pl.lit("completed")).alias("status"),
        reference(patient_reference(system)).alias("subject"),
        period(pl.col("start"), pl.col("end")).alias("timingPeriod"),
        reference(conditional_reference("Practitioner", provider_system, pl.col("provider_id"))).alias("source"),
        reference(pl.lit(f"#{DEVICE_ID}")).alias("device"),
    )
    frame = rows.select(
        *frame_columns(
            "DeviceUseStatement",
            exposure_system,
            pl.col("device_exposure_id"),
            resource,
            references=[
                expected_patient(system),
                expected_encounter(system, "extension.0.valueReference"),
                pl.when(pl.col("provider_id").is_not_null()).then(
                    expected_reference("source", "Practitioner", provider_system, pl.col("provider_id"))
                ),
            ],
        ),
        "person_id",
        "visit_occurrence_id",
        "visit_person_id",
        "person_in_source",
        "provider_id",
        "provider_in_source",
        "start",
        "end",
        *visit_detail_columns(),
        code_mapped=concept_mapped("device_concept_id", "code"),
    )
    frame = event_rules(frame.with_columns(without_nulls(pl.col("references"))), "start")
    frame = quarantine_orphans(frame, "provider_id", "provider", "provider_in_source", required=False)
    frame = quarantine(
        frame,
        "ends_before_start",
        ends_before_start(pl.col("start"), pl.col("end")),
        "device_exposure_end_date lies before device_exposure_start_date",
    )
    return frame.drop("provider_in_source")


class DeviceUseFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "device_exposure": "device_exposure_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "provider": "provider_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="devices",
    description="OMOP DEVICE_EXPOSURE to FHIR DeviceUseStatement with its device contained, codes from CONCEPT.",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("device_exposure", "device_concept_id"),
    requires=("persons", "visits", "visit_details", "providers"),
    extract=extract,
    transform=transform,
    schemas={"DeviceUseStatement": DeviceUseFrame},
    patient_column="person_id",
    review_flags=EVENT_REVIEW_FLAGS,
)
