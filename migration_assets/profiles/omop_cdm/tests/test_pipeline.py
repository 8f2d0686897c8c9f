"""An OMOP export that leaves out a table, through Dagster into the local Medplum server (the demo command, as
test_end_to_end runs it): an optional table absent is read as empty and named in the `legacy_source`
asset's metadata while its element still loads (without VISIT_DETAIL, the events that name a detail fall back
to their visit's Encounter, flagged); a required table absent fails the run with its name."""

from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from migration_assets.elements.profile import load_profile
from migration_assets.profiles.omop_cdm.sample_data import build_sample_tables
from migration_assets.source import write_tables

from .test_end_to_end import demo, summary

PROFILE = load_profile("omop_cdm")


def with_prerequisites(element: str) -> str:
    """`element` and the elements it needs, as ELEMENTS: a short run."""
    return ",".join((*PROFILE.prerequisites(element), element))


def export_without(work: Path, table: str, persons: int = 5) -> str:
    """A SQLite OMOP export of `persons` lacking `table`; returns its URL."""
    work.mkdir(parents=True)
    url = f"sqlite:///{work / 'cdm.db'}"
    sample = build_sample_tables(persons)
    write_tables(url, {name: rows for name, rows in sample.items() if name != table}, {})
    return url


def legacy_source_metadata(work: Path, element: str, asset: str = "legacy_source") -> dict[str, object]:
    """The metadata of the latest `asset` materialization of `element` in the demo's Dagster instance."""
    with DagsterInstance.from_config(str(work / "dagster_home")) as instance:
        events = instance.fetch_materializations(AssetKey(asset), limit=100).records
        materialization = next(
            event.asset_materialization for event in events if event.asset_materialization.partition == element
        )
        return {name: entry.value for name, entry in materialization.metadata.items()}


@pytest.mark.integration
def test_an_absent_optional_table_is_named_in_the_metadata_and_its_element_loads(tmp_path: Path) -> None:
    work = tmp_path / "work"
    url = export_without(work, "note")
    run = demo(work, patients=5, LEGACY_DB_URL=url, ELEMENTS=with_prerequisites("notes"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    notes = summary(run.stdout)["notes"]
    assert notes["result"] == "ok" and notes["source_rows"] == "0" and notes["checks"] == "6/6", notes
    metadata = legacy_source_metadata(work, "notes")
    assert metadata["absent_optional_tables"] == "note" and metadata["table_rows/note"] == 0
    # An element whose tables are all there says nothing of absent tables.
    assert "absent_optional_tables" not in legacy_source_metadata(work, "persons")


@pytest.mark.integration
def test_without_visit_detail_the_events_naming_a_detail_load_on_their_visit_flagged(tmp_path: Path) -> None:
    work = tmp_path / "work"
    # 30 persons: the sample's duplicate pair stays under the schema check's 5% threshold.
    url = export_without(work, "visit_detail", persons=30)
    named = build_sample_tables(30)["condition_occurrence"]["visit_detail_id"].is_not_null().sum()
    run = demo(work, patients=30, LEGACY_DB_URL=url, ELEMENTS=with_prerequisites("conditions"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    conditions = summary(run.stdout)["conditions"]
    assert conditions["result"] == "ok" and conditions["checks"] == "6/6", conditions
    assert int(conditions["sent"]) == int(conditions["source_rows"]) - 2, conditions  # the duplicate pair
    assert legacy_source_metadata(work, "conditions")["absent_optional_tables"] == "visit_detail"
    assert 0 < named == legacy_source_metadata(work, "conditions", "fhir_frames")["flagged/visit_detail_dropped"]


@pytest.mark.integration
def test_an_absent_required_table_fails_the_run_naming_it(tmp_path: Path) -> None:
    work = tmp_path / "work"
    url = export_without(work, "person")
    run = demo(work, patients=5, LEGACY_DB_URL=url, ELEMENTS="persons")
    assert run.returncode != 0
    assert "table 'person' not found" in run.stdout + run.stderr, run.stdout[-3000:] + run.stderr[-3000:]
