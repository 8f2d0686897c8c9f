"""The census of a run (read once, kept as Parquet, shared by the checks and the report), lost writes
healed through the ledger, and runs left `running` by a killed process."""

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from migration_assets.active import get_element
from migration_assets.definitions import make_definitions
from migration_assets.ledger.history import describe
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.pipeline.frame_parts import REFERENCE_COLUMNS, FrameParts
from migration_assets.pipeline.resources import MedplumResource, MigrationSettings, build_resources
from migration_assets.verify import census as census_module
from migration_assets.verify import reconcile
from migration_assets.verify.books import sample_groups
from migration_assets.verify.census import CENSUS_SCHEMA, RunCensus, references_in, resources_with_identifier
from migration_assets.verify.evidence import reconciliation_report
from migration_assets.verify.reconcile import reference_problems
from migration_assets_tests.fixtures_local_medplum import fhir_client, get_token
from migration_assets_tests.test_targets import summary_check_description

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

PATIENT_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"


def check_message(summary, name: str) -> str:
    assert name in summary.checks_passed + summary.checks_failed, f"check {name} did not run: {summary}"
    return summary.failure_messages.get(name, "")


def counting_censuses(monkeypatch) -> list[tuple[str, str, str]]:
    """Every census read from Medplum, as (resource type, identifier system, "whole" or "changes"): a
    spy around the real one."""
    taken: list[tuple[str, str, str]] = []
    real_census = census_module.census

    def spy(client, resource_type, identifier_system, visit=None, roots=None, since=None):
        taken.append((resource_type, identifier_system, "whole" if since is None else "changes"))
        return real_census(client, resource_type, identifier_system, visit, roots, since)

    monkeypatch.setattr(census_module, "census", spy)
    return taken


# -- one census per run ----------------------------------------------------------------------------


def test_the_checks_and_the_report_of_a_run_read_medplum_once(platform_factory, monkeypatch):
    platform = platform_factory.new(patients=30)
    taken = counting_censuses(monkeypatch)
    folder = platform.work / "census"

    first = platform.run("patients")

    assert first.ok, (first.error, first.failure_messages)
    assert taken == [("Patient", PATIENT_SYSTEM, "changes")], (
        "the load counts what the target holds before sending (nothing: no page read), then reference_integrity, "
        "idempotent_reload, reconciliation and the report share one census per run, of what changed since that "
        f"count; Medplum was read for {taken}"
    )
    (census_file,) = folder.glob("*/*.parquet")
    census = pl.read_parquet(census_file)
    assert set(census.columns) == set(CENSUS_SCHEMA), "the census keeps identifiers, ids and references, not resources"
    assert census.height == 30
    assert stat.S_IMODE(census_file.stat().st_mode) == 0o600
    run_ids = [run.run_id for run in platform.instance.get_runs()]
    assert pl.read_parquet_metadata(census_file)["run_id"] == run_ids[0]
    with platform.manifest() as manifest:
        assert manifest.last_run("patients")["shard"] == "0/1", "the load records its shard in the run row"

    second = platform.run("patients")

    assert second.ok, (second.error, second.failure_messages)
    assert taken[1:] == [("Patient", PATIENT_SYSTEM, "changes")] * 2, "the next run reads what changed since"
    assert [path.name for path in folder.glob("*/*.parquet")] == [census_file.name], (
        "one census file per kind and target"
    )
    evidence = json.loads((platform.work / "evidence" / "patients" / "reconciliation.json").read_text())
    assert evidence["evidence"]["census"].startswith("Patient: ") and "30 in Medplum" in evidence["evidence"]["census"]


def test_a_census_reads_only_what_changed_since_the_last_one_and_a_whole_one_when_the_count_disagrees(
    local_medplum, fhir, tmp_path, monkeypatch
):
    # Values no other test uses: the session server is shared, and `identifier=SYS|A,B` means SYS|A or B.
    system = f"urn:test:census:{uuid.uuid4()}"

    def put(value: str, **details: str) -> str:
        answer = fhir.put(
            f"Patient?identifier={system}|{value}",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": system, "value": value}],
                "name": [{"family": "Never-In-A-Census-File"}],
                **details,
            },
        )
        assert answer.status_code in (200, 201), answer.text
        return str(answer.json()["id"])

    ids = {value: put(value) for value in ("census-A", "census-B", "census-C")}
    # Past the margin a census takes off the clock, so the next one has nothing to re-read.
    monkeypatch.setattr(census_module, "CENSUS_CLOCK_MARGIN", timedelta(seconds=1))
    time.sleep(4)
    taken = counting_censuses(monkeypatch)
    with MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client:

        def census_in(run_id: str) -> list[tuple[str, str]]:
            found = RunCensus(tmp_path, run_id).of_kind(client, "Patient", system)
            return sorted(found.select("identifier_value", "resource_id").iter_rows())

        assert census_in("run-1") == sorted(ids.items())
        requests = client.stats.requests
        assert census_in("run-1") == sorted(ids.items()) and client.stats.requests == requests, (
            "the rest of a run reads the file"
        )
        assert census_in("run-2") == sorted(ids.items())
        assert "0 created or changed since" in RunCensus(tmp_path, "run-2").how([("Patient", system)])

        put("census-B", gender="female")
        ids["census-D"] = put("census-D")
        assert census_in("run-3") == sorted(ids.items()), "a change and a creation, merged"
        duplicate = fhir.post(
            "Patient", json={"resourceType": "Patient", "identifier": [{"system": system, "value": "census-D"}]}
        )
        assert census_in("run-4") == sorted([*ids.items(), ("census-D", duplicate.json()["id"])]), "a duplicate shows"

        assert fhir.delete(f"Patient/{ids.pop('census-A')}").status_code == 200
        assert fhir.delete(f"Patient/{duplicate.json()['id']}").status_code == 200
        assert census_in("run-5") == sorted(ids.items()), "deleted: the count tells, a whole census follows"
        moved = ids.pop("census-C")
        answer = fhir.put(
            f"Patient/{moved}",
            json={
                "resourceType": "Patient",
                "id": moved,
                "identifier": [{"system": "urn:test:elsewhere", "value": "census-C"}],
            },
        )
        assert answer.status_code == 200, answer.text
        assert census_in("run-6") == sorted(ids.items()), "an identifier gone: the count tells too"

        assert census_in("run-7") == sorted(ids.items())
        assert RunCensus(tmp_path, "run-8", incremental=False).of_kind(client, "Patient", system).height == 2

    assert [how for _, _, how in taken] == [
        "whole",
        "changes",
        "changes",
        "changes",
        "changes",
        "whole",
        "changes",
        "whole",
        "changes",
        "whole",
    ]
    (census_file,) = tmp_path.glob("*.parquet")
    assert b"Never-In-A-Census-File" not in census_file.read_bytes()
    assert stat.S_IMODE(census_file.stat().st_mode) == 0o600


def test_the_idempotency_check_resubmits_the_whole_partition_up_to_its_sample_size_and_says_so(platform_factory):
    assert MigrationSettings().idempotency_sample_size == 200
    groups = pl.DataFrame({"bundle_group": [f"G{n:04}" for n in range(1500)], "row": range(1500)})
    assert sample_groups(groups.head(1000), 1000, seed=1).height == 1000
    sampled = sample_groups(groups, 1000, seed=1)
    assert sampled["bundle_group"].n_unique() == 1000
    assert sampled.equals(sample_groups(groups, 1000, seed=1)), "a recorded seed draws the same sample"

    platform = platform_factory.new(patients=30)
    whole = _reload_description(platform, platform.defs)
    assert "whole partition: 30 bundle groups" in whole, whole

    # An unchanged rerun would resubmit nothing (below): here every run resubmits.
    settings = MigrationSettings(
        evidence_dir=str(platform.work / "evidence"), idempotency_sample_size=10, idempotency_skip_verified=False
    )
    sampled = _reload_description(platform, make_definitions({**_resources(platform), "migration_settings": settings}))
    assert (
        "resubmitted 0 (sample of 10 of 30 bundle groups (10 rows), seed 20261121; "
        "10 read back exactly as they would be sent)" in sampled
    ), sampled
    # Asked to, it resubmits every sampled resource (a write each): the write path itself exercised.
    settings = MigrationSettings(
        evidence_dir=str(platform.work / "evidence"),
        idempotency_sample_size=10,
        idempotency_skip_verified=False,
        idempotency_by_reading=False,
    )
    written = _reload_description(platform, make_definitions({**_resources(platform), "migration_settings": settings}))
    assert "resubmitted 10 (sample of 10 of 30 bundle groups (10 rows), seed 20261121): 0 created" in written, written


def test_the_entries_of_a_transaction_read_back_as_sent_with_their_links_resolved(platform_factory):
    # A visit and its notes go in one transaction, the notes naming the visit by its urn:uuid: Medplum
    # stores `Encounter/<id>` there, which is the same link.
    platform = platform_factory.new(patients=5)
    assert platform.run("patients").ok
    visits = platform.run("visits")
    assert visits.ok, visits.failure_messages
    description = summary_check_description(platform, "visits")
    sent = visits.counts["sent"]
    assert description.startswith("resubmitted 0 (whole partition: "), description
    assert f"; {sent} read back exactly as they would be sent)" in description, (sent, description)


def test_the_idempotency_check_resubmits_what_medplum_holds_otherwise_and_fails_when_that_changes_it(
    platform_factory,
):
    platform = platform_factory.new(patients=3)
    assert "3 read back exactly as they would be sent" in _reload_description(platform, platform.defs)
    # Someone edits a migrated Patient in Medplum: a reload would now change it back.
    with MedplumClient(platform.server.base_url, platform.server.client_id, platform.server.client_secret) as client:
        (patient,) = client.search("Patient", {"identifier": f"{PATIENT_SYSTEM}|P001"})
        patient["name"][0]["family"] = "Edited-In-Medplum"
        (answer,) = client.submit_batch(
            [json.dumps({"request": {"method": "PUT", "url": f"Patient/{patient['id']}"}, "resource": patient})]
        )
        assert answer.ok, answer
    settings = MigrationSettings(evidence_dir=str(platform.work / "evidence"), idempotency_skip_verified=False)
    defs = make_definitions({**_resources(platform), "migration_settings": settings})
    evaluation = _reload_evaluation(platform, defs)
    assert not evaluation.passed
    assert evaluation.description.startswith(
        "resubmitted 1 (whole partition: 3 bundle groups; 2 read back exactly as they would be sent): "
        "0 created, 1 updated"
    ), evaluation.description


def test_an_unchanged_rerun_resubmits_nothing_an_earlier_check_verified(platform_factory):
    platform = platform_factory.new(patients=30)
    assert "whole partition: 30 bundle groups" in _reload_description(platform, platform.defs)
    first_run = platform.instance.get_runs(limit=1)[0].run_id

    # Nothing written and the same content: the first run's resubmission stands; no request is a write.
    unchanged = _reload_description(platform, platform.defs)
    assert unchanged.startswith(
        f"resubmitted 0 (not resubmitted: this run wrote nothing, and the content is "
        f"what run {first_run} resubmitted without a change)"
    ), unchanged
    assert "0 duplicated identifiers" in unchanged, "the census part of the check still runs"
    assert "resubmitted 0 (not resubmitted" in _reload_description(platform, platform.defs), (
        "a skip passes the verifying run on"
    )

    # One patient changed in the source: that run writes, and the check resubmits again.
    with sqlite3.connect(platform.source_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE patients SET last_name = 'Changed' WHERE patient_id = 'P001'")
    assert "whole partition: 30 bundle groups" in _reload_description(platform, platform.defs)
    # And with the skip off, an unchanged run resubmits too.
    settings = MigrationSettings(evidence_dir=str(platform.work / "evidence"), idempotency_skip_verified=False)
    forced = _reload_description(platform, make_definitions({**_resources(platform), "migration_settings": settings}))
    assert "whole partition: 30 bundle groups" in forced, forced


def _resources(platform) -> dict[str, object]:
    server = platform.server
    resources = build_resources(
        medplum=MedplumResource(
            base_url=server.base_url, client_id=server.client_id, client_secret=server.client_secret
        ),
        legacy_db_url=platform.source_url,
        manifest_db_url=platform.manifest_url,
        work_dir=platform.work,
    )
    del resources["migration_settings"]  # each test gives its own
    return resources


def _reload_evaluation(platform, defs):
    """One patients run; the evaluation of its idempotent_reload check."""
    result = defs.resolve_job_def("migrate_data_element").execute_in_process(
        partition_key="patients", instance=platform.instance, raise_on_error=False
    )
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "idempotent_reload"]
    return evaluation


def _reload_description(platform, defs) -> str:
    """One patients run; what its idempotent_reload check said (it must pass)."""
    evaluation = _reload_evaluation(platform, defs)
    assert evaluation.passed, evaluation.description
    return evaluation.description or ""


# -- what the census keeps, and reference integrity from it --------------------------------------


def test_the_census_keeps_each_reference_at_the_path_the_frames_name():
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "identifier": [{"system": "S", "value": "E1"}],
        "subject": {"reference": "Patient/p1", "display": "not kept"},
        "participant": [{"type": [{"text": "x"}]}, {"individual": {"reference": "Practitioner/r2"}}],
        "meta": {"versionId": "1"},
    }
    assert references_in(encounter) == [("participant.1.individual", "Practitioner/r2"), ("subject", "Patient/p1")]
    assert references_in({"resourceType": "Patient", "id": "p"}) == []
    assert references_in(encounter, roots=frozenset({"subject"})) == [("subject", "Patient/p1")], (
        "with roots, only the references under those elements"
    )


def test_a_census_keeps_only_the_references_the_frame_expects():
    expected = [
        {
            "path": "participant.0.individual",
            "resource_type": "Practitioner",
            "identifier_system": "R",
            "identifier_value": "R1",
        }
    ]
    frame = pl.DataFrame(
        {
            "resource_type": ["Encounter"] * 2,
            "identifier_system": ["S"] * 2,
            "identifier_value": ["E1", "E2"],
            "references": [expected, []],
        }
    )
    resources = [
        {
            "resourceType": "Encounter",
            "id": "e1",
            "identifier": [{"system": "S", "value": "E1"}],
            "subject": {"reference": "Patient/p1"},
            "participant": [{"individual": {"reference": "Practitioner/r1"}}],
        }
    ]

    assert census_module.reference_roots(frame) == {"participant"}
    assert census_module.reference_roots(frame.drop("references")) is None, "no references column: keep them all"
    (found,) = census_module.take_census(SearchOnly(resources, every=True), frame).values()
    assert found["references"].to_list() == [[{"path": "participant.0.individual", "reference": "Practitioner/r1"}]]


def test_each_census_row_holds_its_own_resources_references():
    resources = [
        {
            "resourceType": "Encounter",
            "id": "e1",
            "identifier": [{"system": "S", "value": "E1"}],
            "subject": {"reference": "Patient/p1"},
        },
        {"resourceType": "Encounter", "id": "e2", "identifier": [{"system": "S", "value": "E2"}]},
        {
            "resourceType": "Encounter",
            "id": "e3",
            "identifier": [{"system": "S", "value": "E3"}, {"system": "S", "value": "E3b"}],
            "participant": [{"individual": {"reference": "Practitioner/r1"}}],
            "subject": {"reference": "Patient/p3"},
        },
    ]
    found = census_module.census(SearchOnly(resources, every=True), "Encounter", "S")

    assert found.schema == CENSUS_SCHEMA
    assert found.rows() == [
        ("E1", "e1", [{"path": "subject", "reference": "Patient/p1"}]),
        ("E2", "e2", []),
        (
            "E3",
            "e3",
            [
                {"path": "participant.0.individual", "reference": "Practitioner/r1"},
                {"path": "subject", "reference": "Patient/p3"},
            ],
        ),
        (
            "E3b",
            "e3",
            [
                {"path": "participant.0.individual", "reference": "Practitioner/r1"},
                {"path": "subject", "reference": "Patient/p3"},
            ],
        ),
    ]


class SearchOnly:
    """A Medplum that answers identifier searches from a fixed list (or, `every`, with all of it)."""

    def __init__(self, resources: list[dict], every: bool = False) -> None:
        self.resources, self.every = resources, every

    def search(self, resource_type: str, params: dict[str, str]):
        if self.every:  # a census: everything in the system
            yield from self.resources
            return
        wanted = params["identifier"].split(",")
        for resource in self.resources:
            ident = resource["identifier"][0]
            token = f"{ident['system']}|{ident['value']}"
            # `system|` (a census) matches every value of the system.
            if resource["resourceType"] == resource_type and (token in wanted or f"{ident['system']}|" in wanted):
                yield resource


@pytest.mark.parametrize("targets_read_by", ["identifier search", "census of the target kind"])
def test_reference_problems_are_found_from_the_census_alone(targets_read_by, monkeypatch):
    if targets_read_by == "census of the target kind":  # more targets than a census page holds
        monkeypatch.setattr(reconcile, "CENSUS_PAGE_SIZE", 1)
    patient_system, condition_system = "https://x/patient", "https://x/condition"
    patients = [
        {"resourceType": "Patient", "id": f"id-{key}", "identifier": [{"system": patient_system, "value": key}]}
        for key in ("P1", "P2")
    ]

    def expecting(patient_key: str) -> list[dict]:
        return [
            {
                "path": "subject",
                "resource_type": "Patient",
                "identifier_system": patient_system,
                "identifier_value": patient_key,
            }
        ]

    frame = pl.DataFrame(
        {
            "resource_type": ["Condition"] * 5,
            "identifier_system": [condition_system] * 5,
            "identifier_value": ["C-right", "C-wrong-patient", "C-no-subject", "C-wrong-type", "C-not-loaded"],
            "references": [expecting("P1"), expecting("P1"), expecting("P2"), expecting("P2"), expecting("P2")],
            "quarantine_rule": [None] * 5,
        }
    )
    census = pl.DataFrame(
        {
            "identifier_value": ["C-right", "C-wrong-patient", "C-no-subject", "C-wrong-type"],
            "resource_id": ["c1", "c2", "c3", "c4"],
            "references": [
                [{"path": "subject", "reference": "Patient/id-P1"}],
                [{"path": "subject", "reference": "Patient/id-P2"}],
                [],
                [{"path": "subject", "reference": "Group/g1"}],
            ],
        },
        schema=CENSUS_SCHEMA,
    )

    checked, problems = reference_problems(SearchOnly(patients), frame, {("Condition", condition_system): census})

    assert checked == 5
    assert problems.select("identifier_value", "problem").rows() == [
        ("C-wrong-patient", "points at another resource than the source row's"),
        ("C-no-subject", "reference missing"),
        ("C-wrong-type", "points at Group, expected Patient"),
    ]


# -- lost writes ------------------------------------------------------------------------------------


def test_a_write_lost_after_its_acknowledgement_is_sent_again_by_the_next_load(platform_factory):
    platform = platform_factory.new(patients=30)
    assert platform.run("patients").ok
    with platform.client() as client:
        key, lost = sorted(resources_with_identifier(client, "Patient", PATIENT_SYSTEM), key=lambda found: found[0])[6]
    with fhir_client(platform.server, get_token(platform.server)) as fhir:
        deleted = fhir.delete(f"Patient/{lost['id']}")
    assert deleted.status_code == 200, deleted.text

    healed = platform.run("patients")

    assert healed.ok, (healed.error, healed.failure_messages)
    assert healed.counts["lost_in_target"] == 1, "the load's census before sending found the loss"
    assert healed.counts["sent"] == 1 and healed.counts["created"] == 1
    with platform.client() as client:
        values = [value for value, _ in resources_with_identifier(client, "Patient", PATIENT_SYSTEM)]
    assert values.count(key) == 1 and len(values) == 30
    with platform.manifest() as manifest:
        unit = manifest.units("patients").filter(pl.col("identifier_value") == key).row(0, named=True)
    assert unit["disposition"] == "successful" and unit["resource_id"] != lost["id"]
    evidence = json.loads((platform.work / "evidence" / "patients" / "reconciliation.json").read_text())
    assert evidence["passed"] is True and evidence["figures"]["lost_writes"] == 0


def test_a_write_lost_after_the_load_is_reported_by_the_checks_without_writing(platform_factory):
    platform = platform_factory.new(patients=30)
    assert platform.run("patients").ok
    with platform.client() as client:
        key, lost = sorted(resources_with_identifier(client, "Patient", PATIENT_SYSTEM), key=lambda found: found[0])[3]
    with fhir_client(platform.server, get_token(platform.server)) as fhir:
        assert fhir.delete(f"Patient/{lost['id']}").status_code == 200
    frame = FrameParts(platform.work / "frames" / "fhir_frames" / "patients").read(REFERENCE_COLUMNS)
    with platform.client() as client, platform.manifest() as manifest:
        report = reconciliation_report(client, manifest, get_element("patients"), frame, platform.source_url)
    assert report["figures"]["lost_writes"] == 1 and [row["identifier_value"] for row in report["lost_writes"]] == [key]
    with platform.manifest() as manifest:
        unit = manifest.units("patients").filter(pl.col("identifier_value") == key).row(0, named=True)
    assert unit["disposition"] == "successful", "the checks and the report only read the books; the load heals"


# -- runs left running -----------------------------------------------------------------------------


def _killed_run(manifest_url: str, run_id: str, shard: tuple[int, int]) -> None:
    """A process that starts a run, registers unit P001 for it, and is killed with SIGKILL."""
    program = f"""
import os, signal
import polars as pl
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
manifest = Manifest({manifest_url!r})
manifest.start_run({run_id!r}, "patients", "1.0.0", "sqlite:///legacy.db", {{"patients": 1}}, shard={shard!r})
frame = pl.DataFrame({{"source_table": ["patients"], "unit_key": ["P001"], "resource_type": ["Patient"],
                      "identifier_system": [{PATIENT_SYSTEM!r}], "identifier_value": ["P001"],
                      "quarantine_rule": [None], "quarantine_reason": [None]}},
                     schema_overrides={{"quarantine_rule": pl.String, "quarantine_reason": pl.String}})
manifest.register_units({run_id!r}, "patients", frame, pl.Series([True]))
os.kill(os.getpid(), signal.SIGKILL)
"""
    finished = subprocess.run([sys.executable, "-c", program], check=False, capture_output=True, text=True, timeout=120)
    assert finished.returncode == -signal.SIGKILL, finished.stderr


def test_a_run_left_running_by_a_killed_process_is_marked_interrupted_by_the_next_run(tmp_path: Path, capsys):
    manifest_url = f"sqlite:///{tmp_path / 'manifest.db'}"
    _killed_run(manifest_url, "killed-run", (0, 1))
    with Manifest(manifest_url) as manifest:
        manifest.start_run("other-shard", "patients", "1.0.0", "sqlite:///legacy.db", {}, shard=(1, 2))
        manifest.start_run("other-element", "practitioners", "1.0.0", "sqlite:///legacy.db", {})
        assert manifest.runs("patients", ["killed-run"])[0]["status"] == "running"

        manifest.start_run("next-run", "patients", "1.0.0", "sqlite:///legacy.db", {"patients": 1}, shard=(0, 1))

        status = {
            run["run_id"]: run["status"] for element in ("patients", "practitioners") for run in manifest.runs(element)
        }
        assert status == {
            "killed-run": "interrupted",
            "other-shard": "running",
            "next-run": "running",
            "other-element": "running",
        }
        assert manifest.runs("patients", ["killed-run"])[0]["finished_at"] is not None
        story = describe(manifest, "P001", "patients")
    assert "run killed-run  INTERRUPTED" in story, story

    from migration_assets.ledger.history import main

    assert main(["P001", "--manifest", manifest_url]) == 0
    assert "INTERRUPTED" in capsys.readouterr().out


def test_a_ledger_created_before_runs_had_a_shard_gets_the_column(tmp_path: Path):
    path = tmp_path / "old.db"
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE manifest_runs (run_id VARCHAR(64) NOT NULL, element VARCHAR(64) NOT NULL, "
            "started_at DATETIME NOT NULL, finished_at DATETIME, status VARCHAR(16) NOT NULL, "
            "mapping_version VARCHAR(32) NOT NULL, pipeline_version VARCHAR(64) NOT NULL, source_url TEXT NOT NULL, "
            "source_rows TEXT NOT NULL, counts TEXT, PRIMARY KEY (run_id, element))"
        )
        db.execute(
            "INSERT INTO manifest_runs VALUES ('old', 'patients', '2026-01-01 00:00:00', NULL, 'running', "
            "'1.0.0', 'x', 'sqlite:///l.db', '{}', NULL)"
        )
    with Manifest(f"sqlite:///{path}") as manifest:
        manifest.start_run("new", "patients", "1.0.0", "sqlite:///l.db", {})
        runs = {run["run_id"]: (run["status"], run["shard"]) for run in manifest.runs("patients")}
    assert runs == {"old": ("interrupted", None), "new": ("running", "0/1")}
    assert os.path.exists(path)


def test_without_the_servers_clock_every_census_is_a_whole_one(tmp_path: Path):
    # Fault the local server cannot produce: answers without a Date header, so there is no server time
    # to read changes from.
    searches: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
        if request.url.params.get("_summary") == "count":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": 1})
        searches.append(str(request.url))
        patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "S", "value": "P1"}]}
        return httpx.Response(
            200,
            json={
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": patient, "search": {"mode": "match"}}],
            },
        )

    with MedplumClient("http://fake/", "id", "secret", transport=httpx.MockTransport(handler)) as client:
        assert client.count("Patient", {"identifier": "S|"}) == (1, None)
        for run_id in ("run-1", "run-2"):
            assert RunCensus(tmp_path, run_id).of_kind(client, "Patient", "S")["resource_id"].to_list() == ["p1"]
    assert len(searches) == 2 and not any("_lastUpdated" in url for url in searches)
