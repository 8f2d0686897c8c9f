"""Practitioners: legacy `practitioners` rows to FHIR Practitioner, keyed by practitioner_id.

The NPI becomes a second identifier (http://hl7.org/fhir/sid/us-npi) only when it is a real NPI: ten
digits whose Luhn check digit, computed with the 80840 prefix, is right. An invalid NPI is not a
reason to leave the practitioner out (encounters point at them): the practitioner is written without
the NPI identifier, the frame's `npi_dropped` column marks the row, and the `fhir_frames` asset
reports how many were dropped. The legacy value stays in the source table for correction.
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns
from migration_assets.elements.builders import valid_npi
from migration_assets.elements.fhir_json import present
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import NPI

# For the mapping register: what each column's rule is, in a few words.
REGISTER_NOTES = {
    "practitioner_id": "source identifier (system .../identifier/practitioner)",
    "npi": "second identifier (us-npi) only when 10 digits and the Luhn check with prefix 80840 passes; "
    "an invalid NPI is dropped (counted in npi_dropped), the practitioner kept",
}
# Source columns this element cannot map yet, and why.
UNSUPPORTED = {
    "specialty": "FHIR R4 puts a specialty on PractitionerRole: the practitioner_roles element writes it from "
    "its own table",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return tables["practitioners"].with_columns(source_table=pl.lit("practitioners"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    practitioner_system = system.identifier_system("practitioner")
    raw_npi = pl.col("npi").str.strip_chars()
    frame = source.with_columns(
        written_npi=pl.when(valid_npi(raw_npi)).then(raw_npi),
        npi_dropped=raw_npi.is_not_null() & (raw_npi != "") & ~valid_npi(raw_npi),
    )
    resource = pl.struct(
        pl.lit("Practitioner").alias("resourceType"),
        present(
            pl.struct(pl.lit(practitioner_system).alias("system"), pl.col("practitioner_id").alias("value")),
            pl.when(pl.col("written_npi").is_not_null()).then(
                pl.struct(pl.lit(NPI).alias("system"), pl.col("written_npi").alias("value"))
            ),
        ).alias("identifier"),
        pl.concat_list(
            pl.struct(
                present(pl.col("first_name")).alias("given"),
                pl.col("last_name").alias("family"),
            )
        ).alias("name"),
    )
    return frame.select(
        frame_columns("Practitioner", practitioner_system, pl.col("practitioner_id"), resource),
        npi=pl.col("written_npi"),
        npi_dropped=pl.col("npi_dropped"),
    )


class PractitionerFrame(FrameModel):
    npi: str = pa.Field(str_matches=r"^\d{10}$", nullable=True)


ELEMENT = DataElement(
    name="practitioners",
    description="Practitioners to FHIR Practitioner with their NPI (where valid) as a second identifier.",
    mapping_version="1.0.0",
    source_tables={"practitioners": "practitioner_id"},
    requires=(),
    extract=extract,
    transform=transform,
    schemas={"Practitioner": PractitionerFrame},
    patient_column=None,
    review_flags={"npi_dropped": True},
    change_column=UPDATED_AT,
)
