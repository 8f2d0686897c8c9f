"""An OMOP export that leaves out a table, through Dagster into the local Medplum server (the demo command, as
test_end_to_end runs it): an optional table absent is read as empty and named in the `legacy_source`
asset's metadata while its element still loads; a required table absent fails the run with its name."""

from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from migration_assets.elements.profile import load_profile
from migration_assets.profiles.omop_cdm.sample_data import build_sample_tables
from migration_assets.source import write_tables

from .test_end_to_end import demo, summary

PROFILE = load_profile("omop_cdm")
# The notes element and the elements it needs: a short run.
NOTES_AND_PREREQUISITES = "persons,providers,care_sites,locations,visits,notes"


def export_without(work: Path, table: str) -> str:
    """A SQLite OMOP export of 5 persons lacking `table`; returns its URL."""
    work.mkdir(parents=True)
    url = f"sqlite:///{work / 'cdm.db'}"
    sample = build_sample_tables(5)
    write_tables(url, {name: rows for name, rows in sample.items() if name != table}, {})
    return url


def legacy_source_metadata(work: Path, element: str) -> dict[str, object]:
    """The metadata of the latest `legacy_source` materialization of `element` in the demo's Dagster instance."""
    with DagsterInstance.from_config(str(work / "dagster_home")) as instance:
        events = instance.fetch_materializations(AssetKey("legacy_source"), limit=100).records
        materialization = next(
            event.asset_materialization for event in events if event.asset_materialization.partition == element
        )
        return {name: entry.value for name, entry in materialization.metadata.items()}


@pytest.mark.integration
def test_an_absent_optional_table_is_named_in_the_metadata_and_its_element_loads(tmp_path: Path) -> None:
    work = tmp_path / "work"
    url = export_without(work, "note")
    run = demo(work, patients=5, LEGACY_DB_URL=url, ELEMENTS=NOTES_AND_PREREQUISITES)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    notes = summary(run.stdout)["notes"]
    assert notes["result"] == "ok" and notes["source_rows"] == "0" and notes["checks"] == "6/6", notes
    metadata = legacy_source_metadata(work, "notes")
    assert metadata["absent_optional_tables"] == "note" and metadata["table_rows/note"] == 0
    # An element whose tables are all there says nothing of absent tables.
    assert "absent_optional_tables" not in legacy_source_metadata(work, "persons")


@pytest.mark.integration
def test_an_absent_required_table_fails_the_run_naming_it(tmp_path: Path) -> None:
    work = tmp_path / "work"
    url = export_without(work, "person")
    run = demo(work, patients=5, LEGACY_DB_URL=url, ELEMENTS="persons")
    assert run.returncode != 0
    assert "table 'person' not found" in run.stdout + run.stderr, run.stdout[-3000:] + run.stderr[-3000:]
