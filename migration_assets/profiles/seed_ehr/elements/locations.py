"""Locations: legacy `locations` rows (the clinic's sites, a lab's patient service centre) to FHIR
Location with its address and its managing organization, keyed by location_id.

The managing organization is a conditional reference on the organization's identifier; a location
whose organization_id is not in the organizations table is an orphan and is quarantined. A location
without any address part is quarantined (`missing_value`): a site nobody can find is not a location.
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
from migration_assets.elements.builders import address, contact_point, telecom, text
from migration_assets.elements.fhir_json import conditional_reference, identifier, reference
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT

REGISTER_NOTES = {
    "location_id": "source identifier (system .../identifier/location)",
    "organization_id": "managingOrganization, conditional reference; not in organizations: quarantined "
    "(orphan_reference)",
    "address_line": "address.line (with city, state, postal_code as written); no address part: quarantined",
    "phone": "telecom phone (work)",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known = key_flags(tables["organizations"], "organization_id", "organization_in_source")
    return (
        tables["locations"]
        .join(known, on="organization_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("locations"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    location_system = system.identifier_system("location")
    organization_system = system.identifier_system("organization")
    site = address(
        lines=(pl.col("address_line"),),
        city=pl.col("city"),
        state=pl.col("state"),
        postal_code=pl.col("postal_code"),
        use="work",
    )
    rows = source.with_columns(
        organization_reference=conditional_reference("Organization", organization_system, pl.col("organization_id")),
    )
    resource = pl.struct(
        pl.lit("Location").alias("resourceType"),
        identifier(location_system, pl.col("location_id")).alias("identifier"),
        pl.lit("active").alias("status"),
        text(pl.col("name")).alias("name"),
        telecom(contact_point("phone", pl.col("phone"), "work")).alias("telecom"),
        site.alias("address"),
        reference(pl.col("organization_reference")).alias("managingOrganization"),
    )
    frame = rows.select(
        frame_columns(
            "Location",
            location_system,
            pl.col("location_id"),
            resource,
            references=[
                expected_reference(
                    "managingOrganization", "Organization", organization_system, pl.col("organization_id")
                )
            ],
        ),
        organization_id=pl.col("organization_id"),
        organization_reference=pl.col("organization_reference"),
        organization_in_source=pl.col("organization_in_source"),
        has_address=site.is_not_null(),
    )
    frame = quarantine_orphans(frame, "organization_id", "organizations", "organization_in_source")
    frame = quarantine(frame, "missing_value", ~pl.col("has_address"), "location has no address")
    return frame.drop("organization_in_source", "has_address")


class LocationFrame(FrameModel):
    organization_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)


ELEMENT = DataElement(
    name="locations",
    description="Locations (the clinic's sites, outside service centres) to FHIR Location with address and "
    "managing organization.",
    mapping_version="1.0.0",
    source_tables={"locations": "location_id", "organizations": "organization_id"},
    requires=("organizations",),
    extract=extract,
    transform=transform,
    schemas={"Location": LocationFrame},
    patient_column=None,
    change_column=UPDATED_AT,
)
