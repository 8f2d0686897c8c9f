"""Frames built in parts (bounded memory for large elements) are the frames build_frame makes: the
same rows with the same rules, unit keys and hashes, every bundle group whole in one part."""

import polars as pl
import pytest

from migration_assets.active import ELEMENTS, PROFILE
from migration_assets.elements import base
from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.pipeline.frame_parts import build_frame_parts
from migration_assets.source import read_table
from migration_assets_tests.test_bad_input import build_bad_source

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
UNIT = ["source_table", "unit_key"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The sample source and the bad-input catalogue (missing and repeated keys, quarantined
    transaction partners, control characters, ...), each as the tables of every element."""
    bad_url = build_bad_source(tmp_path_factory.mktemp("bad") / "legacy.db")
    names = {table for element in ELEMENTS for table in element.source_tables}
    return {"sample": PROFILE.sample(200), "bad": {name: read_table(bad_url, name) for name in names}}


@pytest.mark.parametrize("kind", ["sample", "bad"])
@pytest.mark.parametrize("element", ELEMENTS, ids=lambda element: element.name)
def test_parts_hold_the_frame_build_frame_makes_with_whole_groups(sources, kind, element, tmp_path):
    source = element.extract(sources[kind])
    whole = build_frame(element, source, SYSTEM)
    parts = build_frame_parts(element, source, SYSTEM, tmp_path / "frame", part_rows=37)

    assert len(parts) == max(1, -(-source.height // 37)), "one part per slice of source rows"
    rebuilt = parts.read().select(whole.columns)
    assert rebuilt.sort(UNIT).equals(whole.sort(UNIT)), "the parts hold other rows, rules or hashes than build_frame"
    groups = pl.concat([part.select("bundle_group").unique() for part in parts])
    assert groups["bundle_group"].is_duplicated().sum() == 0, "a bundle group spans two parts"


def test_the_bad_catalogue_exercises_every_rule_that_needs_the_whole_frame(sources):
    rules = set()
    for element in ELEMENTS:
        frame = build_frame(element, element.extract(sources["bad"]), SYSTEM)
        rules |= set(frame["quarantine_rule"].drop_nulls().to_list())
        rules |= {"repeated_unit_key"} if frame["unit_key"].str.contains("#row").any() else set()
    assert {"duplicate_key", "missing_key", "group_quarantined", "repeated_unit_key"} <= rules


def test_a_small_element_is_one_part_in_build_frame_order(sources, tmp_path):
    element = ELEMENTS[0]
    source = element.extract(sources["sample"])
    parts = build_frame_parts(element, source, SYSTEM, tmp_path / "frame")
    assert len(parts) == 1
    assert parts.read().equals(build_frame(element, source, SYSTEM))


def test_an_empty_source_still_has_one_part_with_the_frame_columns(sources, tmp_path):
    element = ELEMENTS[0]
    source = element.extract(sources["sample"]).clear()
    parts = build_frame_parts(element, source, SYSTEM, tmp_path / "frame")
    assert len(parts) == 1 and parts.height == 0
    assert parts.read().columns == build_frame(element, source, SYSTEM).columns


@pytest.mark.parametrize("element", ELEMENTS, ids=lambda element: element.name)
def test_a_source_cut_into_chunks_builds_the_same_frame(sources, element, monkeypatch):
    source = element.extract(sources["bad"]).rechunk()
    whole = build_frame(element, source, SYSTEM)
    monkeypatch.setattr(base, "CHUNK_ROWS", 7)
    assert base.in_chunks(source).collect().n_chunks() == -(-source.height // 7) or source.height <= 7
    assert build_frame(element, source, SYSTEM).equals(whole)
