"""PROVIDER to Practitioner: name as text, gender from its concept, NPI only when its check digit
passes (an invalid one stays in the source and is flagged `npi_dropped`)."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns
from migration_assets.elements.builders import checked_identifier, human_name, text, valid_npi
from migration_assets.elements.fhir_json import present
from migration_assets.elements.terminology import NPI
from migration_assets.profiles.omop_cdm.elements.persons import GENDER
from migration_assets.profiles.omop_cdm.omop import optional_among, table


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return table(tables, "provider").with_columns(source_table=pl.lit("provider"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    provider_system = system.identifier_system("provider")
    npi = text(pl.col("npi"))
    resource = pl.struct(
        pl.lit("Practitioner").alias("resourceType"),
        present(
            pl.struct(pl.lit(provider_system).alias("system"), pl.col("provider_id").alias("value")),
            checked_identifier(NPI, npi, valid_npi(npi)),
        ).alias("identifier"),
        present(human_name(name_text=pl.col("provider_name"))).alias("name"),
        pl.col("gender_concept_id").replace_strict(GENDER, default=None, return_dtype=pl.String).alias("gender"),
    )
    return source.select(
        frame_columns("Practitioner", provider_system, pl.col("provider_id"), resource),
        npi_dropped=npi.is_not_null() & ~valid_npi(npi),
    )


class PractitionerFrame(FrameModel):
    npi_dropped: bool = pa.Field()


SOURCE_TABLES = {"provider": "provider_id"}

ELEMENT = DataElement(
    name="providers",
    description="OMOP PROVIDER to FHIR Practitioner (NPI only when valid).",
    mapping_version="1.0.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    requires=(),
    extract=extract,
    transform=transform,
    schemas={"Practitioner": PractitionerFrame},
    patient_column=None,
    review_flags={"npi_dropped": True},
)
