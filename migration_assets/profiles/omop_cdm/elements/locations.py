"""LOCATION to Location (address; latitude/longitude as position when both are present)."""

from collections.abc import Mapping

import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns
from migration_assets.elements.builders import decimal, embed_decimals, text
from migration_assets.elements.fhir_json import identifier
from migration_assets.profiles.omop_cdm.elements.care_sites import location_address
from migration_assets.profiles.omop_cdm.omop import optional_among, table


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return table(tables, "location").with_columns(source_table=pl.lit("location"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    latitude, longitude = decimal(text(pl.col("latitude"))), decimal(text(pl.col("longitude")))
    resource = pl.struct(
        pl.lit("Location").alias("resourceType"),
        identifier(system.identifier_system("location"), pl.col("location_id")).alias("identifier"),
        pl.lit("active").alias("status"),
        text(pl.col("location_source_value")).alias("name"),
        location_address().alias("address"),
        pl.when(latitude.is_not_null() & longitude.is_not_null())
        .then(pl.struct(longitude.alias("longitude"), latitude.alias("latitude")))
        .alias("position"),
    )
    frame = source.select(
        frame_columns("Location", system.identifier_system("location"), pl.col("location_id"), resource)
    )
    return frame.with_columns(embed_decimals(pl.col("resource")))


SOURCE_TABLES = {"location": "location_id"}

ELEMENT = DataElement(
    name="locations",
    description="OMOP LOCATION to FHIR Location.",
    mapping_version="1.0.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    requires=(),
    extract=extract,
    transform=transform,
    schemas={"Location": FrameModel},
    patient_column=None,
)
