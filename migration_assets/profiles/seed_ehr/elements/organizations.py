"""Organizations: legacy `organizations` rows (the clinic, outside labs, referring practices) to FHIR
Organization, keyed by organization_id.

An organization is written with its local identifier and, where the legacy row has them, its NPI
(http://hl7.org/fhir/sid/us-npi, only when the Luhn check with prefix 80840 passes, as for
practitioners) and its tax id (US EIN, urn:oid:2.16.840.1.113883.4.4, `NN-NNNNNNN`). An invalid NPI
is dropped and flagged (`npi_dropped`); a row left with neither a valid NPI nor a valid tax id is
quarantined (`missing_value`): a referral or lab result cannot be traced to an organization nobody can
identify outside the clinic. The legacy `kind` maps to the HL7 organization-type through
terminology/organization_types.csv, keeping the local kind as a coding too; an unknown kind is
quarantined (`unknown_code`).
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns, quarantine
from migration_assets.elements.builders import contact_point, telecom, text, valid_npi
from migration_assets.elements.fhir_json import codeable_concept, coding, present
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import NPI, read_map

ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
# The US Employer Identification Number (the tax id of a practice or laboratory).
US_EIN = "urn:oid:2.16.840.1.113883.4.4"
TAX_ID = r"^\d{2}-\d{7}$"

REGISTER_NOTES = {
    "organization_id": "source identifier (system .../identifier/organization)",
    "npi": "us-npi identifier only when 10 digits and the Luhn check passes; an invalid NPI is dropped (npi_dropped)",
    "tax_id": "US EIN identifier (urn:oid:2.16.840.1.113883.4.4) when NN-NNNNNNN; no valid NPI nor tax id: "
    "quarantined (missing_value)",
    "kind": "local coding always, plus HL7 organization-type from terminology/organization_types.csv; unknown "
    "kind quarantined (unknown_code)",
    "phone": "telecom phone (work)",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return tables["organizations"].with_columns(source_table=pl.lit("organizations"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    organization_system = system.identifier_system("organization")
    types = read_map("organization_types").lazy().rename({"code": "type_code", "display": "type_display"})
    raw_npi = text(pl.col("npi"))
    raw_tax = text(pl.col("tax_id"))
    frame = source.with_columns(
        written_npi=pl.when(valid_npi(raw_npi)).then(raw_npi),
        npi_dropped=raw_npi.is_not_null() & ~valid_npi(raw_npi).fill_null(False),
        written_tax_id=pl.when(raw_tax.str.contains(TAX_ID)).then(raw_tax),
        kind=text(pl.col("kind")),
    ).join(types, on="kind", how="left", maintain_order="left")
    resource = pl.struct(
        pl.lit("Organization").alias("resourceType"),
        present(
            pl.struct(pl.lit(organization_system).alias("system"), pl.col("organization_id").alias("value")),
            pl.when(pl.col("written_npi").is_not_null()).then(
                pl.struct(pl.lit(NPI).alias("system"), pl.col("written_npi").alias("value"))
            ),
            pl.when(pl.col("written_tax_id").is_not_null()).then(
                pl.struct(pl.lit(US_EIN).alias("system"), pl.col("written_tax_id").alias("value"))
            ),
        ).alias("identifier"),
        pl.lit(True).alias("active"),
        pl.concat_list(
            codeable_concept(
                coding(system.code_system("organization-kind"), pl.col("kind")),
                pl.when(pl.col("type_code").is_not_null()).then(
                    coding(ORGANIZATION_TYPE, pl.col("type_code"), pl.col("type_display"))
                ),
            )
        ).alias("type"),
        text(pl.col("name")).alias("name"),
        telecom(contact_point("phone", pl.col("phone"), "work")).alias("telecom"),
    )
    frame = frame.select(
        frame_columns("Organization", organization_system, pl.col("organization_id"), resource),
        name=text(pl.col("name")),
        npi=pl.col("written_npi"),
        npi_dropped=pl.col("npi_dropped"),
        tax_id=pl.col("written_tax_id"),
        type_known=pl.col("type_code").is_not_null(),
    )
    frame = quarantine(
        frame, "unknown_code", ~pl.col("type_known"), "kind has no entry in terminology/organization_types.csv"
    )
    frame = quarantine(
        frame,
        "missing_value",
        pl.col("npi").is_null() & pl.col("tax_id").is_null(),
        "organization has neither a valid npi nor a valid tax_id",
    )
    return frame.drop("type_known")


class OrganizationFrame(FrameModel):
    name: str = pa.Field(str_length={"min_value": 1})
    npi: str = pa.Field(str_matches=r"^\d{10}$", nullable=True)
    tax_id: str = pa.Field(str_matches=TAX_ID, nullable=True)


ELEMENT = DataElement(
    name="organizations",
    description="Organizations (the clinic, outside labs, referring practices) to FHIR Organization with NPI "
    "and tax id.",
    mapping_version="1.0.0",
    source_tables={"organizations": "organization_id"},
    requires=(),
    extract=extract,
    transform=transform,
    schemas={"Organization": OrganizationFrame},
    patient_column=None,
    review_flags={"npi_dropped": True},
    change_column=UPDATED_AT,
)
