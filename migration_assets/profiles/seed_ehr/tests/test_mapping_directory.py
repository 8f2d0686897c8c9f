"""Mapping tests for the clinic's directory: organizations, locations and practitioner roles. Exact FHIR
JSON for the sample rows, and the odd rows quarantined with their rule."""

import json

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import TABLE_COLUMNS, build_sample_tables

BASE = "https://ehr.example-clinic.org/fhir"
SYSTEM = SourceSystem(BASE)
ORG_REF = f"Organization?identifier={BASE}/identifier/organization|"


@pytest.fixture(scope="module")
def seed() -> dict[str, pl.DataFrame]:
    return build_sample_tables(patients=60)


def frame_of(element: str, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return build_frame(PROFILE.element(element), PROFILE.element(element).extract(tables), SYSTEM)


def by_key(frame: pl.DataFrame) -> dict[str, dict]:
    written = {}
    for row in frame.iter_rows(named=True):
        resource = json.loads(row["resource"])
        assert resource.pop("meta")["source"].startswith(f"{BASE}/mapping/")
        written[row["unit_key"]] = resource
    return written


def rules(frame: pl.DataFrame) -> dict[str, str | None]:
    return dict(zip(frame["unit_key"], frame["quarantine_rule"], strict=True))


def with_rows(tables: dict[str, pl.DataFrame], name: str, rows: list[tuple]) -> dict[str, pl.DataFrame]:
    added = pl.DataFrame(rows, schema=dict.fromkeys(TABLE_COLUMNS[name], pl.String), orient="row")
    return {**tables, name: pl.concat([tables[name], added])}


def test_organizations_with_npi_and_tax_id_and_the_odd_ones_quarantined(seed):
    tables = with_rows(
        seed,
        "organizations",
        [
            ("ORG900", "Corner Pharmacy", "pharmacy", "1654321789", None, None),  # kind with no map entry
            ("ORG901", "Nameless Lab", "lab", "1234567890", "123456789", None),  # bad NPI, tax id not NN-NNNNNNN
            ("ORG902", "Old Referrer", "referring_practice", "1234567890", "11-2223334", None),  # bad NPI dropped
        ],
    )
    frame = frame_of("organizations", tables)
    written = by_key(frame)
    assert written["ORG001"] == {
        "resourceType": "Organization",
        "identifier": [
            {"system": f"{BASE}/identifier/organization", "value": "ORG001"},
            {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1654321789"},
            {"system": "urn:oid:2.16.840.1.113883.4.4", "value": "12-3456789"},
        ],
        "active": True,
        "type": [
            {
                "coding": [
                    {"system": f"{BASE}/CodeSystem/organization-kind", "code": "clinic"},
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    },
                ]
            }
        ],
        "name": "Riverside Family Health",
        "telecom": [{"system": "phone", "value": "555-0100", "use": "work"}],
    }
    # A lab known by its tax id only.
    assert [i["system"] for i in written["ORG003"]["identifier"]][1:] == ["urn:oid:2.16.840.1.113883.4.4"]
    assert rules(frame) == {
        **{f"ORG00{n}": None for n in range(1, 6)},
        "ORG900": "unknown_code",
        "ORG901": "missing_value",
        "ORG902": None,
    }
    assert frame.filter(pl.col("source_key") == "ORG902")["npi_dropped"].item() is True
    assert len(written["ORG902"]["identifier"]) == 2


def test_locations_with_address_and_managing_organization_orphans_quarantined(seed):
    tables = with_rows(
        seed,
        "locations",
        [
            ("LOC900", "ORG999", "Closed site", "1 Gone Road", "Springfield", "MA", "01103", None),
            ("LOC901", "ORG001", "Somewhere", None, None, None, None, None),
        ],
    )
    frame = frame_of("locations", tables)
    written = by_key(frame)
    assert written["LOC001"] == {
        "resourceType": "Location",
        "identifier": [{"system": f"{BASE}/identifier/location", "value": "LOC001"}],
        "status": "active",
        "name": "Riverside Family Health - Main Street",
        "telecom": [{"system": "phone", "value": "555-0101", "use": "work"}],
        "address": {
            "use": "work",
            "line": ["120 Main Street"],
            "city": "Springfield",
            "state": "MA",
            "postalCode": "01103",
        },
        "managingOrganization": {"reference": f"{ORG_REF}ORG001"},
    }
    assert rules(frame) == {
        "LOC001": None,
        "LOC002": None,
        "LOC003": None,
        "LOC900": "orphan_reference",
        "LOC901": "missing_value",
    }


def test_practitioner_roles_link_practitioner_organization_location_with_specialty(seed):
    tables = with_rows(
        seed,
        "practitioner_roles",
        [
            ("PR900", "DR404", "ORG001", "LOC001", "Pediatrics", "Y"),  # no such practitioner
            ("PR901", "DR001", "ORG001", "LOC404", "Pediatrics", "Y"),  # no such location
            ("PR902", "DR001", "ORG005", None, "Geriatrics", "maybe"),  # active neither Y nor N
            ("PR903", "DR001", "ORG005", None, "Geriatrics", "y"),  # at no site; specialty with no NUCC code
        ],
    )
    frame = frame_of("practitioner_roles", tables)
    written = by_key(frame)
    assert written["PR-DR001"] == {
        "resourceType": "PractitionerRole",
        "identifier": [{"system": f"{BASE}/identifier/practitioner-role", "value": "PR-DR001"}],
        "active": False,
        "practitioner": {"reference": f"Practitioner?identifier={BASE}/identifier/practitioner|DR001"},
        "organization": {"reference": f"{ORG_REF}ORG001"},
        "location": [{"reference": f"Location?identifier={BASE}/identifier/location|LOC001"}],
        "specialty": [
            {
                "coding": [
                    {"system": f"{BASE}/CodeSystem/specialty", "code": "Family Medicine", "display": "Family Medicine"},
                    {"system": "http://nucc.org/provider-taxonomy", "code": "207Q00000X", "display": "Family Medicine"},
                ]
            }
        ],
    }
    quarantined = {key: rule for key, rule in rules(frame).items() if rule}
    assert quarantined == {"PR900": "orphan_reference", "PR901": "orphan_reference", "PR902": "unknown_code"}
    assert "location" not in written["PR903"]
    assert written["PR903"]["specialty"] == [
        {"coding": [{"system": f"{BASE}/CodeSystem/specialty", "code": "Geriatrics", "display": "Geriatrics"}]}
    ]
    assert frame.filter(pl.col("source_key") == "PR903")["specialty_mapped"].item() is False
    paths = [r["path"] for r in frame.filter(pl.col("source_key") == "PR903")["references"].item()]
    assert paths == ["practitioner", "organization"]


def test_the_directory_loads_before_the_roles_that_point_at_it():
    order = list(PROFILE.load_order)
    for parent in ("practitioners", "organizations", "locations"):
        assert order.index(parent) < order.index("practitioner_roles")
    assert order.index("organizations") < order.index("locations")
