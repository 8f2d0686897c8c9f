"""DEVICE_EXPOSURE to DeviceUseStatement (FHIR R4): the patient's use of a device over a period, the device
contained in the statement with its type from CONCEPT, its UDI device identifier and its production identifier
(lot, serial, dates), the Encounter of its visit detail or visit as context, and the provider as the statement's
`source`."""

import datetime
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
from migration_assets.elements.builders import ends_before_start, period, text
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
# The UDI production identifier (UDI-PI) in GS1's human-readable form: application identifiers (10) lot, (21)
# serial, (11) manufacture date and (17) expiration date (YYMMDD), each at most once, lot and serial at most 20
# characters (GS1 General Specifications).
GS1_PRODUCTION_ID = r"^(?:\((?:10|21)\)[^()]{1,20}|\((?:11|17)\)\d{6})+$"
GS1_LOT, GS1_SERIAL, GS1_MADE, GS1_EXPIRES = "10", "21", "11", "17"
# GS1 dates give the year in two digits: the century is the one that puts the year within 49 years before and
# 50 after the current one (GS1 General Specifications, 7.12).
CURRENT_YEAR = datetime.datetime.now(datetime.UTC).year
PRODUCTION_ID_SYSTEM_KIND = "device-production-id"
REGISTER_NOTES = {
    "device_concept_id": "Device.type from CONCEPT (source value under omop-source-value); the Device is contained, "
    "not a resource of its own: OMOP knows a device only by concept and UDI, and the type reads on the statement",
    "unique_device_id": "contained Device.udiCarrier.deviceIdentifier (the UDI-DI)",
    "production_id": "the UDI-PI in GS1 form split into the contained Device's lotNumber (10), serialNumber (21), "
    "manufactureDate (11) and expirationDate (17; day 00: the month); any other form kept whole as a Device "
    f"identifier under <base>/identifier/{PRODUCTION_ID_SYSTEM_KIND}",
    "device_exposure_end_date": "timingPeriod.end; status completed when given, else active (a device in use)",
    "visit_occurrence_id": f"extension {CONTEXT_EXTENSION}: the visit's Encounter",
    "visit_detail_id": f"extension {CONTEXT_EXTENSION}: {VISIT_DETAIL_NOTE}",
    "provider_id": "source Practitioner when present: who made the statement, the only practitioner R4's "
    "DeviceUseStatement names (it has no performer or recorder)",
}
QUANTITY = (
    "R4 DeviceUseStatement and Device have no quantity (nor R5 DeviceUsage, so no cross-version extension): a "
    "quantity other than 1 is not sent and flags the row quantity_dropped for review"
)
UNSUPPORTED = {
    "quantity": QUANTITY,
    "unit_concept_id": "the unit of quantity, which is not sent",
    "unit_source_value": "the unit of quantity, which is not sent",
    "unit_source_concept_id": "the unit of quantity, which is not sent",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    providers = key_flags(table(tables, "provider"), "provider_id", "provider_in_source")
    rows = event_rows(tables, "device_exposure", "device_concept_id")
    return rows.join(providers, on="provider_id", how="left", maintain_order="left")


def gs1_element(production_id: pl.Expr, ai: str) -> pl.Expr:
    """The value of GS1 application identifier `ai` in a production identifier; null when absent."""
    return production_id.str.extract(rf"\({ai}\)([^()]+)")


def gs1_date(production_id: pl.Expr, ai: str) -> pl.Expr:
    """The date of GS1 application identifier `ai` (YYMMDD) as a FHIR date: `YYYY-MM-DD`, or `YYYY-MM` when the
    day is 00 (GS1: no day given). Null when absent or no real date."""
    yymmdd = gs1_element(production_id, ai)
    two_digits = yymmdd.str.slice(0, 2).cast(pl.Int32, strict=False)
    shift = two_digits - CURRENT_YEAR % 100
    century = CURRENT_YEAR // 100 * 100 + pl.when(shift >= 51).then(-100).when(shift <= -50).then(100).otherwise(0)
    year = (century + two_digits).cast(pl.String)
    month, days = yymmdd.str.slice(2, 2), yymmdd.str.slice(4, 2)
    # Day 00 is checked on the first of its month.
    checked = pl.concat_str(year, month, pl.when(days == "00").then(pl.lit("01")).otherwise(days), separator="-")
    real = checked.str.to_date("%Y-%m-%d", strict=False).is_not_null()
    as_given = pl.when(days == "00").then(pl.concat_str(year, month, separator="-")).otherwise(checked)
    return pl.when(real).then(as_given)


def production_fields(production_id: pl.Expr, identifier_system: str) -> list[pl.Expr]:
    """The Device fields of a UDI production identifier: lot, serial and dates when it is in GS1 form (each
    identifier once, each date real), else the whole value as an identifier under `identifier_system`."""
    given = text(production_id)
    once = [given.str.count_matches(rf"\({ai}\)") <= 1 for ai in (GS1_LOT, GS1_SERIAL, GS1_MADE, GS1_EXPIRES)]
    dates_real = [
        gs1_element(given, ai).is_null() | gs1_date(given, ai).is_not_null() for ai in (GS1_MADE, GS1_EXPIRES)
    ]
    gs1 = pl.all_horizontal(given.str.contains(GS1_PRODUCTION_ID), *once, *dates_real).fill_null(False)
    return [
        pl.when(given.is_not_null() & ~gs1).then(identifier(identifier_system, given)).alias("identifier"),
        pl.when(gs1).then(gs1_date(given, GS1_MADE)).alias("manufactureDate"),
        pl.when(gs1).then(gs1_date(given, GS1_EXPIRES)).alias("expirationDate"),
        pl.when(gs1).then(gs1_element(given, GS1_LOT)).alias("lotNumber"),
        pl.when(gs1).then(gs1_element(given, GS1_SERIAL)).alias("serialNumber"),
    ]


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    exposure_system = system.identifier_system("device-exposure")
    provider_system = system.identifier_system("provider")
    rows = source.with_columns(start=day("device_exposure_start_date"), end=day("device_exposure_end_date"))
    device = pl.struct(
        pl.lit("Device").alias("resourceType"),
        pl.lit(DEVICE_ID).alias("id"),
        pl.concat_list(pl.struct(pl.col("unique_device_id").alias("deviceIdentifier"))).alias("udiCarrier"),
        *production_fields(pl.col("production_id"), system.identifier_system(PRODUCTION_ID_SYSTEM_KIND)),
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
        quantity_dropped=quantity_dropped(),
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


def quantity_dropped() -> pl.Expr:
    """True where the row gives a quantity other than 1, which the statement cannot carry."""
    quantity = text(pl.col("quantity"))
    return (quantity.is_not_null() & (quantity.cast(pl.Float64, strict=False) != 1).fill_null(True)).fill_null(False)


class DeviceUseFrame(FrameModel):
    code_mapped: bool = pa.Field()
    quantity_dropped: bool = pa.Field()


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
    description="OMOP DEVICE_EXPOSURE to FHIR DeviceUseStatement with its device (type, UDI, lot, serial, dates) "
    "contained, codes from CONCEPT.",
    mapping_version="1.2.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("device_exposure", "device_concept_id"),
    requires=("persons", "visits", "visit_details", "providers"),
    extract=extract,
    transform=transform,
    schemas={"DeviceUseStatement": DeviceUseFrame},
    patient_column="person_id",
    review_flags={**EVENT_REVIEW_FLAGS, "quantity_dropped": True},
)
