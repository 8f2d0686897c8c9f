"""The books belong to their Medplum: a target is a server and a project, and what one target holds
never decides what is sent to another. Over real HTTP: one local server, two credentials, two projects."""

import json

import httpx
import polars as pl
import pytest

from migration_assets.ledger.history import describe
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.verify.census import resources_with_identifier
from migration_assets_tests.fixtures_local_medplum import fhir_client, get_token

pytestmark = pytest.mark.integration

PATIENT_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"
TARGET_B = {"project-b-client": "project-b-secret"}


def eligible(summary) -> int:
    return summary.counts["source_rows"] - summary.counts["quarantined"]


def assert_green(summaries) -> None:
    for summary in summaries:
        assert summary.ok, (summary.element, summary.error, summary.failure_messages)


def test_each_credential_of_the_local_server_acts_in_its_own_project(platform_factory):
    platform_a = platform_factory.new(patients=5, more_clients=TARGET_B)
    platform_b = platform_a.through(*next(iter(TARGET_B.items())))
    with platform_a.client() as a, platform_b.client() as b:
        assert a.target.base_url == b.target.base_url
        assert a.target.project_id and b.target.project_id and a.target.project_id != b.target.project_id
    token = get_token(platform_b.server)
    me = httpx.get(platform_b.server.base_url + "auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["project"]["id"] == b.target.project_id, "GET /auth/me names the project, as Medplum's does"
    with fhir_client(platform_a.server) as fhir:
        assert fhir.post("Patient", json={"resourceType": "Patient"}).status_code == 201
        assert fhir.get("Patient").json()["total"] >= 1
    with fhir_client(platform_b.server, token) as fhir:
        assert fhir.get("Patient").json().get("total", 0) == 0, "project B does not see project A's resources"


def test_switching_targets_starts_new_books_and_switching_back_finds_the_old_ones(platform_factory):
    platform_a = platform_factory.new(patients=30, more_clients=TARGET_B)
    platform_b = platform_a.through(*next(iter(TARGET_B.items())))

    assert_green(platform_a.run_all())
    into_b = platform_b.run_all()

    assert_green(into_b)
    for summary in into_b:
        assert summary.counts["created"] == eligible(summary) > 0, (summary.element, summary.counts)
        assert summary.counts["not_sent_unchanged"] == 0
    with platform_b.client() as client:
        target_b = client.target
    evidence = json.loads((platform_b.work / "evidence" / "patients" / "reconciliation.json").read_text())
    assert evidence["evidence"]["medplum_project"] == target_b.project_id

    back_to_a = platform_a.run_all()

    assert_green(back_to_a)
    for summary in back_to_a:
        assert summary.counts["sent"] == 0, (summary.element, summary.counts)
        assert summary.counts["not_sent_unchanged"] == eligible(summary)
        # The idempotency check's skip is A's own: A's last run verified this content.
        assert "not resubmitted: this run wrote nothing" in summary_check_description(platform_a, summary.element)

    with platform_a.client() as client:
        target_a = client.target
    with platform_a.manifest() as books_of_a:
        key = books_of_a.units("patients")["unit_key"][0]
    with Manifest(platform_a.manifest_url) as ledger:
        history = describe(ledger, key, "patients")
    assert target_a.project_id in history and target_b.project_id in history, history


def summary_check_description(platform, element: str) -> str:
    """The description of the latest idempotent_reload evaluation of `element` in the platform's instance."""
    records = platform.instance.event_log_storage.get_asset_check_execution_history(
        next(key for key in platform.defs.resolve_asset_graph().asset_check_keys if key.name == "idempotent_reload"),
        limit=20,
    )
    for record in records:
        evaluation = record.event.get_dagster_event().event_specific_data if record.event else None
        if evaluation is not None and evaluation.partition == element:
            return evaluation.description or ""
    return ""


def test_the_idempotency_skip_never_crosses_targets(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Manifest(url, "http://a/#1") as a, Manifest(url, "http://a/#2") as b:
        a.record_verified("patients", "shard 0 of 1", "f" * 64, "run-a")
        assert a.verified_run("patients", "shard 0 of 1", "f" * 64) == "run-a"
        assert b.verified_run("patients", "shard 0 of 1", "f" * 64) is None
        a.record_verified("patients", "shard 0 of 1", None, "run-a2")
        assert a.verified_run("patients", "shard 0 of 1", "f" * 64) is None, "a failed verdict forgets the skip"


def test_a_target_that_lost_a_third_of_its_patients_is_healed_by_one_run(platform_factory):
    platform = platform_factory.new(patients=30)
    assert_green(platform.run_all())
    with platform.client() as client:
        patients = sorted(resources_with_identifier(client, "Patient", PATIENT_SYSTEM), key=lambda found: found[0])
    deleted = patients[::3]
    with fhir_client(platform.server) as fhir:
        for _, resource in deleted:
            assert fhir.delete(f"Patient/{resource['id']}").status_code == 200

    healed = platform.run_all()

    assert_green(healed)
    by_element = {summary.element: summary for summary in healed}
    assert by_element["patients"].counts["lost_in_target"] == len(deleted) == by_element["patients"].counts["created"]
    dependents = [s for s in healed if s.element != "patients" and s.counts["lost_in_target"]]
    assert dependents, "resources pointing at a patient that was written again are sent again with the new id"
    with platform.client() as client:
        values = [value for value, _ in resources_with_identifier(client, "Patient", PATIENT_SYSTEM)]
    assert sorted(values) == sorted(value for value, _ in patients), "every patient exactly once"

    rerun = platform.run_all()

    assert_green(rerun)
    assert all(summary.counts["sent"] == 0 for summary in rerun)


def test_a_client_names_its_target_from_the_token_or_from_auth_me(local_medplum):
    with MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client:
        target = client.target
    assert target.base_url == local_medplum.base_url and len(target.project_id) == 36
    assert str(target) == f"{local_medplum.base_url} project {target.project_id}"
    assert pl.Series([target.key]).str.contains("#").all()
