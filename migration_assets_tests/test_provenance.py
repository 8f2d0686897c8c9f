"""Provenance: every resource the platform writes names the legacy system and the mapping (element and
version) in `meta.source`, and the content hash covers it, so an unchanged reload sends nothing and a new
mapping version sends every row once."""

import dataclasses
import json

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import build_sample_tables

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")


def test_every_resource_of_every_element_carries_its_provenance() -> None:
    tables = build_sample_tables(patients=20)
    for element in PROFILE.elements:
        frame = build_frame(element, element.extract(tables), SYSTEM)
        expected = f"https://ehr.example-clinic.org/fhir/mapping/{element.name}/{element.mapping_version}"
        assert {json.loads(text)["meta"]["source"] for text in frame["resource"]} == {expected}, element.name


def test_the_content_hash_covers_the_provenance_and_is_stable() -> None:
    tables = build_sample_tables(patients=5)
    patients = PROFILE.element("patients")
    first = build_frame(patients, patients.extract(tables), SYSTEM)
    again = build_frame(patients, patients.extract(tables), SYSTEM)
    assert first["content_hash"].to_list() == again["content_hash"].to_list()
    bumped = dataclasses.replace(patients, mapping_version="9.9.9")
    changed = build_frame(bumped, bumped.extract(tables), SYSTEM)
    assert not set(first["content_hash"]) & set(changed["content_hash"])
