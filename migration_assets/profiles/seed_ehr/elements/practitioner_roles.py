"""Practitioner roles: legacy `practitioner_roles` rows (who works where, in which specialty) to FHIR
PractitionerRole linking the Practitioner, the Organization and the Location, keyed by
practitioner_role_id.

The legacy specialty is kept as a local coding always; a NUCC provider taxonomy coding is added where
terminology/specialty_nucc.csv maps it (`specialty_mapped` says which; an unmapped specialty is not a
reason to leave the role out). `active` is Y or N; anything else is quarantined (`unknown_code`). A
practitioner, organization or location that is not in its legacy table is an orphan and quarantines
the role (the location may be empty: a role at no particular site).
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
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    present,
    reference,
    without_nulls,
)
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import read_map

NUCC = "http://nucc.org/provider-taxonomy"

REGISTER_NOTES = {
    "practitioner_role_id": "source identifier (system .../identifier/practitioner-role)",
    "practitioner_id": "practitioner, conditional reference; not in practitioners: quarantined (orphan_reference)",
    "organization_id": "organization, conditional reference; not in organizations: quarantined (orphan_reference)",
    "location_id": "location.0, conditional reference when given; not in locations: quarantined (orphan_reference)",
    "specialty": "local coding always; NUCC taxonomy coding added where terminology/specialty_nucc.csv maps it",
    "active": "Y -> true, N -> false; anything else quarantined (unknown_code)",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return (
        tables["practitioner_roles"]
        .join(
            key_flags(tables["practitioners"], "practitioner_id", "practitioner_in_source"),
            on="practitioner_id",
            how="left",
            maintain_order="left",
        )
        .join(
            key_flags(tables["organizations"], "organization_id", "organization_in_source"),
            on="organization_id",
            how="left",
            maintain_order="left",
        )
        .join(
            key_flags(tables["locations"], "location_id", "location_in_source"),
            on="location_id",
            how="left",
            maintain_order="left",
        )
        .with_columns(source_table=pl.lit("practitioner_roles"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    role_system = system.identifier_system("practitioner-role")
    practitioner_system = system.identifier_system("practitioner")
    organization_system = system.identifier_system("organization")
    location_system = system.identifier_system("location")
    nucc = read_map("specialty_nucc").lazy().rename({"code": "nucc_code", "display": "nucc_display"})
    active = text(pl.col("active")).str.to_uppercase()
    rows = (
        source.with_columns(specialty=text(pl.col("specialty")), active_flag=active)
        .join(nucc, on="specialty", how="left", maintain_order="left")
        .with_columns(
            practitioner_reference=conditional_reference(
                "Practitioner", practitioner_system, pl.col("practitioner_id")
            ),
            organization_reference=conditional_reference(
                "Organization", organization_system, pl.col("organization_id")
            ),
            location_reference=conditional_reference("Location", location_system, pl.col("location_id")),
        )
    )
    resource = pl.struct(
        pl.lit("PractitionerRole").alias("resourceType"),
        identifier(role_system, pl.col("practitioner_role_id")).alias("identifier"),
        pl.when(pl.col("active_flag") == "Y").then(True).when(pl.col("active_flag") == "N").then(False).alias("active"),
        reference(pl.col("practitioner_reference")).alias("practitioner"),
        reference(pl.col("organization_reference")).alias("organization"),
        present(pl.when(pl.col("location_id").is_not_null()).then(reference(pl.col("location_reference")))).alias(
            "location"
        ),
        present(
            pl.when(pl.col("specialty").is_not_null()).then(
                codeable_concept(
                    coding(system.code_system("specialty"), pl.col("specialty"), pl.col("specialty")),
                    pl.when(pl.col("nucc_code").is_not_null()).then(
                        coding(NUCC, pl.col("nucc_code"), pl.col("nucc_display"))
                    ),
                )
            )
        ).alias("specialty"),
    )
    frame = rows.select(
        frame_columns(
            "PractitionerRole",
            role_system,
            pl.col("practitioner_role_id"),
            resource,
            references=[
                expected_reference("practitioner", "Practitioner", practitioner_system, pl.col("practitioner_id")),
                expected_reference("organization", "Organization", organization_system, pl.col("organization_id")),
                pl.when(pl.col("location_id").is_not_null()).then(
                    expected_reference("location.0", "Location", location_system, pl.col("location_id"))
                ),
            ],
        ),
        practitioner_reference=pl.col("practitioner_reference"),
        organization_reference=pl.col("organization_reference"),
        practitioner_id=pl.col("practitioner_id"),
        organization_id=pl.col("organization_id"),
        location_id=pl.col("location_id"),
        practitioner_in_source=pl.col("practitioner_in_source"),
        organization_in_source=pl.col("organization_in_source"),
        location_in_source=pl.col("location_in_source"),
        active_flag=pl.col("active_flag"),
        specialty_mapped=pl.col("nucc_code").is_not_null() | pl.col("specialty").is_null(),
    )
    frame = quarantine_orphans(frame, "practitioner_id", "practitioners", "practitioner_in_source")
    frame = quarantine_orphans(frame, "organization_id", "organizations", "organization_in_source")
    frame = quarantine_orphans(frame, "location_id", "locations", "location_in_source", required=False)
    frame = quarantine(
        frame, "unknown_code", ~pl.col("active_flag").is_in(["Y", "N"]).fill_null(False), "active is neither Y nor N"
    )
    frame = frame.with_columns(without_nulls(pl.col("references")))
    return frame.drop(
        "practitioner_in_source",
        "organization_in_source",
        "location_in_source",
        "active_flag",
        "practitioner_id",
        "organization_id",
        "location_id",
    )


class PractitionerRoleFrame(FrameModel):
    practitioner_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    organization_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)


ELEMENT = DataElement(
    name="practitioner_roles",
    description="Practitioner roles to FHIR PractitionerRole: practitioner, organization, location and "
    "specialty (NUCC where mapped).",
    mapping_version="1.0.0",
    source_tables={
        "practitioner_roles": "practitioner_role_id",
        "practitioners": "practitioner_id",
        "organizations": "organization_id",
        "locations": "location_id",
    },
    requires=("practitioners", "organizations", "locations"),
    extract=extract,
    transform=transform,
    schemas={"PractitionerRole": PractitionerRoleFrame},
    patient_column=None,
    review_flags={"specialty_mapped": False},
    change_column=UPDATED_AT,
)
