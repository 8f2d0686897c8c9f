"""The platform end to end against the local Medplum server, on a real Dagster instance."""

import json
import sqlite3

import polars as pl
import pytest

from migration_assets.active import LOAD_ORDER, write_sample
from migration_assets.verify.census import census

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

PATIENT_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"
ALL_CHECKS = {
    "schema",
    "prerequisites_loaded",
    "reference_integrity",
    "idempotent_reload",
    "reconciliation",
    "accounting_balanced",
}


def test_every_element_migrates_with_every_check_green_and_a_rerun_creates_nothing(platform_factory):
    platform = platform_factory.new(patients=60)

    first = platform.run_all()
    for summary in first:
        assert summary.ok, (summary.element, summary.error, summary.checks_failed)
        assert set(summary.checks_passed) == ALL_CHECKS
        assert summary.counts["created"] == summary.counts["source_rows"] - summary.counts["quarantined"] > 0
    assert [s.element for s in first] == list(LOAD_ORDER)

    second = platform.run_all()
    for summary in second:
        assert summary.ok, (summary.element, summary.error, summary.checks_failed)
        assert summary.counts["created"] == 0
        assert summary.counts["not_sent_unchanged"] == summary.counts["source_rows"] - summary.counts["quarantined"]

    with platform.client() as client:
        patients = census(client, "Patient", PATIENT_SYSTEM)
    assert patients.height == 60
    assert patients["identifier_value"].n_unique() == 60
    evidence = json.loads((platform.work / "evidence" / "patients" / "reconciliation.json").read_text())
    assert evidence["passed"] is True
    assert evidence["figures"]["target_found"] == evidence["figures"]["target_expected"] == 60
    assert evidence["evidence"]["mapping_version"] == "1.0.0"
    assert (platform.work / "evidence" / "patients" / "reconciliation.csv").read_text().startswith("figure,value")


def test_a_changed_source_row_is_sent_again(platform_factory):
    platform = platform_factory.new(patients=20)
    assert platform.run("patients").ok
    with sqlite3.connect(platform.source_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE patients SET last_name = 'Doe-Smith' WHERE patient_id = 'P001'")

    rerun = platform.run("patients")

    assert rerun.ok, rerun.checks_failed
    assert rerun.counts["updated"] == 1
    assert rerun.counts["not_sent_unchanged"] == 19
    with platform.client() as client:
        (patient,) = client.search("Patient", {"identifier": f"{PATIENT_SYSTEM}|P001"})
    assert patient["name"][0]["family"] == "Doe-Smith"


def test_a_missing_prerequisite_blocks_the_load_and_names_it(platform_factory):
    platform = platform_factory.new(patients=10)

    summary = platform.run("conditions")

    assert not summary.ok
    assert "prerequisites_loaded" in summary.checks_failed
    with platform.client() as client:
        assert list(client.search("Condition", {"_count": "10"})) == []
    with platform.manifest() as manifest:
        assert manifest.units("conditions").is_empty()
    assert "Materialize the partition(s) 'patients' first" in summary.failure_messages["prerequisites_loaded"]


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_bad_rows_are_quarantined_with_their_reason_and_the_rest_loads(platform_factory, ledger, request):
    manifest_url = request.getfixturevalue("postgres_schema_url") if ledger == "postgresql" else None
    platform = platform_factory.new(patients=60, manifest_url=manifest_url)
    with sqlite3.connect(platform.source_url.removeprefix("sqlite:///")) as db:
        db.executemany(
            "INSERT INTO patients VALUES (?, ?, ?, ?, ?)",
            [("PBAD1", "Ann", "Lee", "1980-02-30", "F"), ("PBAD2", "Bo", "Kim", "1990-01-01", "X")],
        )
        db.execute("INSERT INTO conditions VALUES ('CBAD', 'PNONE', 'HT', '2020-01-01')")

    summaries = {s.element: s for s in platform.run_all()}

    assert summaries["patients"].counts["quarantined"] == 2
    assert summaries["patients"].counts["created"] == 60
    # the orphan inserted here, and the sample's own unknown code (CODD1)
    assert summaries["conditions"].counts["quarantined"] == 2
    for summary in summaries.values():
        assert "reconciliation" in summary.checks_passed, summary.checks_failed
    with platform.manifest() as manifest:
        units = manifest.units("patients")
        conditions = manifest.units("conditions")
    bad = units.filter(pl.col("unit_key").is_in(["PBAD1", "PBAD2"])).sort("unit_key")
    assert bad["disposition"].to_list() == ["quarantined", "quarantined"]
    assert bad["rule"].to_list() == ["invalid_date", "unknown_code"]
    orphan = conditions.filter(pl.col("unit_key") == "CBAD")
    assert orphan["rule"].to_list() == ["orphan_reference"]
    assert "PNONE" in orphan["reason"][0]
    unknown = conditions.filter(pl.col("unit_key") == "CODD1")
    assert unknown["rule"].to_list() == ["unmapped_code"]


def test_too_many_quarantined_rows_fail_the_schema_check_and_block_the_load(platform_factory):
    platform = platform_factory.new(patients=10)
    with sqlite3.connect(platform.source_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE patients SET gender = 'Z' WHERE patient_id IN ('P001', 'P002')")

    summary = platform.run("patients")

    assert not summary.ok
    assert summary.checks_failed == ["schema"]
    assert "2 of 10 rows quarantined" in summary.failure_messages["schema"]
    with platform.client() as client:
        assert list(client.search("Patient", {"_count": "10"})) == []


def test_postgresql_as_the_legacy_source(platform_factory, postgres_schema_url):
    write_sample(postgres_schema_url, patients=30)
    platform = platform_factory.new(source_url=postgres_schema_url)

    summaries = platform.run_all()

    for summary in summaries:
        assert summary.ok, (summary.element, summary.failure_messages, summary.error)
    assert summaries[0].counts["created"] == 30


def test_the_backfill_refuses_an_element_past_its_write_phases(platform_factory, tmp_path, monkeypatch):
    phases = tmp_path / "phases.yaml"
    phases.write_text(
        "version: 1\ndefault_phase: backfill\nelements:\n"
        "  patients:\n    phase: front_end_write\n    since: 2025-06-01\n"
    )
    monkeypatch.setenv("ADOPTION_PHASES_FILE", str(phases))
    platform = platform_factory.new(patients=10)

    summary = platform.run("patients")

    assert not summary.ok
    assert "phase front_end_write" in summary.error
    with platform.client() as client:
        assert list(client.search("Patient", {"_count": "10"})) == []
