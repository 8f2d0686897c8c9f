"""CARE_SITE to Organization (name, its LOCATION's address, care_site_source_value as an identifier)."""

from collections.abc import Mapping

import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns
from migration_assets.elements.builders import address, text
from migration_assets.elements.fhir_json import identifier
from migration_assets.profiles.omop_cdm.omop import optional_among, table

ADDRESS_COLUMNS = ["location_id", "address_1", "address_2", "city", "state", "zip"]


def location_address() -> pl.Expr:
    return address(
        lines=(pl.col("address_1"), pl.col("address_2")),
        city=pl.col("city"),
        state=pl.col("state"),
        postal_code=pl.col("zip"),
    )


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    locations = table(tables, "location").select(
        *[c for c in ADDRESS_COLUMNS if c in table(tables, "location").columns]
    )
    return (
        table(tables, "care_site")
        .join(locations.unique("location_id"), on="location_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("care_site"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    resource = pl.struct(
        pl.lit("Organization").alias("resourceType"),
        identifier(system.identifier_system("care-site"), pl.col("care_site_id")).alias("identifier"),
        pl.lit(True).alias("active"),
        pl.coalesce(text(pl.col("care_site_name")), text(pl.col("care_site_source_value"))).alias("name"),
        pl.concat_list(location_address()).list.filter(pl.element().is_not_null()).alias("address"),
    )
    return source.select(
        frame_columns("Organization", system.identifier_system("care-site"), pl.col("care_site_id"), resource)
    )


SOURCE_TABLES = {"care_site": "care_site_id", "location": "location_id"}

ELEMENT = DataElement(
    name="care_sites",
    description="OMOP CARE_SITE to FHIR Organization with its LOCATION's address.",
    mapping_version="1.0.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    requires=(),
    extract=extract,
    transform=transform,
    schemas={"Organization": FrameModel},
    patient_column=None,
)
