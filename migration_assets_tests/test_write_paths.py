"""How the load writes when it knows what the target holds (its census before sending): a resource the
target holds is updated by id, an absent one created (plain POST, or conditional PUT), a duplicate
left to a conditional PUT that Medplum refuses. Against the local server over real HTTP."""

import json
import uuid
from pathlib import Path

import polars as pl
import pytest

from migration_assets.active import PROFILE, get_element
from migration_assets.devtools.local_medplum import running_local_medplum
from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.pipeline.loader import LoadSettings, entry_texts, held_in_target, migrate, quota_cost
from migration_assets.verify.census import RunCensus, census
from migration_assets_tests.fixtures_local_medplum import fhir_client

PATIENTS = get_element("patients")


def patients_frame(base: str, rows: int = 12) -> pl.DataFrame:
    tables = PROFILE.sample(rows)
    return build_frame(PATIENTS, PATIENTS.extract({"patients": tables["patients"]}), SourceSystem(base))


def load_with_census(server, folder: Path, run_id: str, rows: pl.DataFrame, settings: LoadSettings):
    """migrate() the patients `rows` into `server`, knowing what it holds by a census taken before sending."""
    before = RunCensus(folder / "census", run_id)
    with (
        MedplumClient(server.base_url, server.client_id, server.client_secret) as client,
        Manifest(f"sqlite:///{folder / 'ledger.db'}", client.target.key) as ledger,
    ):
        return migrate(
            client,
            ledger,
            run_id,
            PATIENTS,
            rows,
            "sqlite:///legacy.db",
            settings,
            census_of_target=lambda keys: before.get(client, keys),
        )


def test_entries_are_updates_by_id_creates_or_conditional_puts_by_what_the_target_holds():
    frame = patients_frame("https://paths.example.org/fhir", rows=3).with_columns(
        held_id=pl.Series(["p-1", None, None]), held_many=pl.Series([False, None, True])
    )
    posted, guarded = (
        [json.loads(text) for text in entry_texts(frame, creates).to_list()] for creates in ("post", "conditional")
    )
    assert posted[0]["request"] == {"method": "PUT", "url": "Patient/p-1"} and posted[0]["resource"]["id"] == "p-1"
    assert posted[1]["request"] == {"method": "POST", "url": "Patient"} and "id" not in posted[1]["resource"]
    assert guarded[0]["request"] == posted[0]["request"], "a held resource is updated by id in both modes"
    assert guarded[1]["request"]["url"].startswith("Patient?identifier="), "created by conditional PUT"
    assert posted[2]["request"]["url"].startswith("Patient?identifier="), "a duplicate stays a conditional PUT"
    texts = entry_texts(frame, "post").to_list()
    assert quota_cost(3, texts) == 3 * 100 + 2 * 20, "the conditional PUT searches (twice when it creates)"
    assert quota_cost(3, entry_texts(frame.drop("held_id", "held_many")).to_list()) == 3 * 140


@pytest.mark.integration
@pytest.mark.parametrize("creates", ["post", "conditional"])
def test_a_load_that_knows_the_target_creates_updates_by_id_and_never_duplicates(
    local_medplum, tmp_path: Path, creates: str
):
    base = f"https://paths-{uuid.uuid4().hex[:8]}.example.org/fhir"
    frame = patients_frame(base)
    system = frame["identifier_system"][0]
    settings = LoadSettings(batch_size=5, creates=creates)

    def load(run_id: str, rows: pl.DataFrame):
        return load_with_census(local_medplum, tmp_path, run_id, rows, settings)

    first = load("first", frame)
    assert first.counts["created"] == 12 and first.counts["failed"] == 0

    # One source row changed; and a copy of another made by hand, as a racing writer would.
    changed = frame.with_columns(
        resource=pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.col("resource").str.replace('"gender":"[a-z]+"', '"gender":"unknown"'))
        .otherwise(pl.col("resource")),
        content_hash=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("changed")).otherwise(pl.col("content_hash")),
    )
    copied = json.loads(frame["resource"][1])
    with fhir_client(local_medplum) as fhir:
        assert fhir.post("Patient", json=copied).status_code == 201
    changed = changed.with_columns(
        content_hash=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("also changed")).otherwise(pl.col("content_hash"))
    )

    second = load("second", changed)

    assert second.counts["sent"] == 2 and second.counts["updated"] == 1, second.counts
    assert second.counts["failed"] == 1, "the duplicated identifier is refused, not copied a third time"
    with MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client:
        found = census(client, "Patient", system)
    assert found.height == 13 and found["identifier_value"].n_unique() == 12
    held = held_in_target({("Patient", system): found})
    assert held.filter(pl.col("held_many")).height == 1


def test_the_phase_decides_how_absent_resources_are_created(tmp_path: Path, monkeypatch):
    from migration_assets.pipeline.resources import MigrationSettings

    phases = tmp_path / "phases.yaml"
    phases.write_text("version: 1\ndefault_phase: backfill\nelements:\n  patients: initial_load\n")
    monkeypatch.setenv("ADOPTION_PHASES_FILE", str(phases))
    by_phase = MigrationSettings()
    assert by_phase.load_settings(PATIENTS).creates == "post", "initial_load: the platform is the one writer"
    assert by_phase.load_settings(get_element("conditions")).creates == "conditional", "the old services write too"
    said = MigrationSettings(creates="conditional")
    assert said.load_settings(PATIENTS).creates == "conditional", "a setting for every element wins"


@pytest.mark.integration
def test_creates_go_in_transactions_and_a_refused_one_is_resent_entry_by_entry(local_medplum, tmp_path: Path):
    base = f"https://packed-{uuid.uuid4().hex[:8]}.example.org/fhir"
    frame = patients_frame(base)
    system = frame["identifier_system"][0]
    # The fourth patient is one Medplum refuses: its transaction of five fails whole.
    frame = frame.with_columns(
        resource=pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.col("resource").str.replace('"birthDate":"[^"]*"', '"birthDate":"x"'))
        .otherwise(pl.col("resource"))
    )
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(f"sqlite:///{tmp_path / 'ledger.db'}", client.target.key) as ledger,
    ):
        census_file = RunCensus(tmp_path / "census", "packed")
        result = migrate(
            client,
            ledger,
            "packed",
            PATIENTS,
            frame,
            "sqlite:///legacy.db",
            LoadSettings(batch_size=12, creates="post", transaction_size=5),
            census_of_target=lambda keys: census_file.get(client, keys),
        )
        batches = client.stats.requests
        units = ledger.units("patients")
    assert result.counts["created"] == 11 and result.counts["failed"] == 1, result.counts
    failed = units.filter(pl.col("disposition") == "rejected")["unit_key"].to_list()
    assert failed == [frame["unit_key"][3]], "only the bad entry fails; its transaction's others are written"
    with MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client:
        found = census(client, "Patient", system)
    assert found.height == 11 and found["identifier_value"].n_unique() == 11
    assert batches <= 6, f"one batch of three transactions and one resend of five entries, {batches} requests in all"


@pytest.mark.integration
def test_mixed_mode_sends_one_async_job_beside_the_sync_bundles_and_loads_each_row_once(local_medplum, tmp_path: Path):
    base = f"https://mixed-{uuid.uuid4().hex[:8]}.example.org/fhir"
    frame = patients_frame(base, rows=60)
    system = frame["identifier_system"][0]
    settings = LoadSettings(batch_size=5, creates="post", mode="mixed", concurrency=2)

    def load(run_id: str):
        return load_with_census(local_medplum, tmp_path, run_id, frame, settings)

    first = load("first").counts
    assert first["created"] == first["sent"] == 60 and first["failed"] == 0, first
    # The first bundle went as a job; the sync bundles went on while it was polled, then the next job.
    assert 0 < first["sent_async"] < first["sent"], first
    assert first["quota_points"] == (first["sent"] - first["sent_async"]) * 100, "async jobs are not charged"
    again = load("again").counts
    assert again["sent"] == 0 and again["not_sent_unchanged"] == 60, "every answer was recorded, in order"
    with MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client:
        found = census(client, "Patient", system)
    assert found.height == found["identifier_value"].n_unique() == 60


@pytest.mark.integration
def test_mixed_mode_sends_through_jobs_what_the_quota_would_hold_back(tmp_path: Path):
    # 2,000 points a minute: four sync bundles of five creates. The rest would wait for the quota's reset;
    # async jobs, which hosted Medplum does not charge, carry them instead, one after another.
    frame = patients_frame(f"https://held-{uuid.uuid4().hex[:8]}.example.org/fhir", rows=60)
    settings = LoadSettings(batch_size=5, creates="post", mode="mixed", concurrency=2)
    with running_local_medplum(fhir_quota=2000, quota_window_seconds=60) as server:
        counts = load_with_census(server, tmp_path, "first", frame, settings).counts
        with MedplumClient(server.base_url, server.client_id, server.client_secret) as client:
            found = census(client, "Patient", frame["identifier_system"][0])
    assert counts["created"] == 60 and counts["failed"] == counts["pending_quota"] == 0, counts
    assert counts["quota_points"] <= 2000 and counts["sent_async"] >= 40, counts
    assert found.height == found["identifier_value"].n_unique() == 60
