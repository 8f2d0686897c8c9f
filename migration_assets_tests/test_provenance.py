"""Provenance: every resource the platform writes names the legacy system and the mapping (element and
version) in `meta.source`, and the content hash covers it, so an unchanged reload sends nothing and a new
mapping version sends every row once."""

import dataclasses
import json

import polars as pl
import xxhash

from migration_assets.elements.base import PROVENANCE_WRITTEN, SourceSystem, build_frame, provenance_added
from migration_assets.elements.fhir_json import provenance_opening
from migration_assets.elements.profile import load_profile
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


def test_the_content_hash_is_the_xxh3_128_digest_of_the_text_sent() -> None:
    # The hash decides what is sent again: a plugin release that changed its digest (polars-hash once changed
    # XXH3-128's byte order) would resend every row, so it is held to the xxhash library's canonical one.
    tables = build_sample_tables(patients=5)
    patients = PROFILE.element("patients")
    frame = build_frame(patients, patients.extract(tables), SYSTEM)
    assert frame["content_hash"].to_list() == [xxhash.xxh3_128_hexdigest(text.encode()) for text in frame["resource"]]


def test_a_mapping_that_writes_its_provenance_gets_it_once_and_a_new_version_changes_it() -> None:
    # OMOP persons write meta.source in the concatenation that writes the resource (json_resource_of).
    omop = load_profile("omop_cdm")
    persons = omop.element("persons")
    source = persons.extract(omop.sample(5, 7))
    first = build_frame(persons, source, SYSTEM)
    expected = f"https://ehr.example-clinic.org/fhir/mapping/persons/{persons.mapping_version}"
    opening = provenance_opening(expected)
    assert all(text.startswith(opening) and text.count('"meta"') == 1 for text in first["resource"])
    bumped = dataclasses.replace(persons, mapping_version="9.9.9")
    changed = build_frame(bumped, source, SYSTEM)
    assert {json.loads(text)["meta"]["source"] for text in changed["resource"]} == {
        "https://ehr.example-clinic.org/fhir/mapping/persons/9.9.9"
    }
    assert not set(first["content_hash"]) & set(changed["content_hash"])


def test_provenance_is_added_to_the_resources_whose_mapping_did_not_write_it() -> None:
    source = "https://ehr.example-clinic.org/fhir/mapping/x/1"
    opening = provenance_opening(source)
    written = opening + '"resourceType":"Patient"}'
    resources = pl.DataFrame(
        {"resource": [written, '{"resourceType":"Patient"}', None], PROVENANCE_WRITTEN: [True, None, None]}
    )
    opened = provenance_added(resources, source)
    assert opened.columns == ["resource"]
    assert opened["resource"].to_list() == [written, written, None]
    every_row_written = provenance_added(resources.head(1), source)["resource"].to_list()
    assert every_row_written == [written]
    assert provenance_added(resources.drop(PROVENANCE_WRITTEN).slice(1), source)["resource"].to_list() == [
        written,
        None,
    ]
