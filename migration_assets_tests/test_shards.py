"""One launch, many shards: a shard step that fails is re-executed alone from failure (Dagster's
ReexecutionOptions.from_failure on a persistent instance), and the evidence counts the attempts of every
shard step of the load."""

import json
import os
from pathlib import Path

import sqlalchemy as sa
from dagster import (
    DagsterEventType,
    DagsterInstance,
    EnvVar,
    JobDefinition,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from migration_assets.commands.demo import migrate_element
from migration_assets.definitions import make_definitions
from migration_assets.ledger.manifest import Manifest, attempts, dagster_run_of
from migration_assets.pipeline.resources import MedplumResource, build_resources, keeping_built_values
from migration_assets.verify.census import census
from migration_assets_tests.fault_proxy import Fault, FaultProxy
from migration_assets_tests.test_faults import ALL_CHECKS, BATCH, PATIENT_SYSTEM

SHARDS = 3
PATIENTS = 60
# The sample always holds the guide's patient P001: Medplum refuses every batch holding it, so the one
# shard whose key hash holds it fails, and no other.
DOOMED_KEY = b'"P001"'


def migration_job() -> JobDefinition:
    """The migration job wired from the environment, as definitions.py wires it (a re-execution rebuilds
    the job from this function), with three tries per request so that the refused shard fails fast."""
    medplum = MedplumResource(
        base_url=EnvVar("MEDPLUM_BASE_URL"),
        client_id=EnvVar("MEDPLUM_CLIENT_ID"),
        client_secret=EnvVar("MEDPLUM_CLIENT_SECRET"),
        max_attempts=3,
        timeout_seconds=10.0,
    )
    resources = build_resources(medplum=medplum, work_dir=Path(os.environ["MIGRATION_WORK_DIR"]))
    return make_definitions(resources).resolve_job_def("migrate_data_element")


def _steps(instance: DagsterInstance, run_id: str, kind: DagsterEventType) -> set[str]:
    return {
        record.event_log_entry.step_key or ""
        for record in instance.get_records_for_run(run_id, of_type=kind).records
        if record.event_log_entry.step_key
    }


def _checks(instance: DagsterInstance, run_id: str) -> dict[str, bool]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    return {
        record.event_log_entry.dagster_event.event_specific_data.check_name: (
            record.event_log_entry.dagster_event.event_specific_data.passed
        )
        for record in records
        if record.event_log_entry.dagster_event is not None
    }


def test_a_failed_shard_is_re_executed_alone_from_failure(platform_factory, monkeypatch):
    platform = platform_factory.new(patients=PATIENTS)
    server, instance = platform.server, platform.instance
    with FaultProxy(server.base_url) as proxy:
        for name, value in {
            "MEDPLUM_BASE_URL": proxy.base_url,
            "MEDPLUM_CLIENT_ID": server.client_id,
            "MEDPLUM_CLIENT_SECRET": server.client_secret,
            "LEGACY_DB_URL": platform.source_url,
            "MANIFEST_DB_URL": platform.manifest_url,
            "MIGRATION_WORK_DIR": str(platform.work),
            "DAGSTER_EXECUTOR": "in_process",
        }.items():
            monkeypatch.setenv(name, value)
        job = reconstructable(migration_job)
        # A resource's run config replaces the values it was built with: the evidence folder is said again.
        settings = {"shard_count": SHARDS, "batch_size": 5, "evidence_dir": str(platform.work / "evidence")}
        run_config = {"resources": {"migration_settings": {"config": settings}}}
        tags = {"dagster/partition": "patients"}
        proxy.plan(Fault("status", status=503, count=999, method="POST", path=BATCH, body_contains=DOOMED_KEY))

        with execute_job(job, instance, run_config=run_config, tags=tags) as failed:
            assert not failed.success

        # One shard step failed, the others loaded their units; nothing after the load ran.
        parent = failed.run_id
        failed_steps = _steps(instance, parent, DagsterEventType.STEP_FAILURE)
        shard_steps = {f"medplum_resources.load_shard[shard_{index}]" for index in range(SHARDS)}
        assert len(failed_steps) == 1 and failed_steps < shard_steps, failed_steps
        (doomed,) = failed_steps
        succeeded = _steps(instance, parent, DagsterEventType.STEP_SUCCESS)
        assert shard_steps - failed_steps <= succeeded
        assert "medplum_resources.combine_shards" not in succeeded
        assert not _checks(instance, parent).keys() & {"reconciliation", "accounting_balanced"}
        with platform.manifest(through=proxy.base_url) as ledger:
            load = {run["shard"]: run["status"] for run in ledger.load_runs("patients", [parent])}
            pending_before = ledger.units("patients").filter(ledger.units("patients")["disposition"] == "pending")
        doomed_shard = f"{doomed.split('shard_')[1].rstrip(']')}/{SHARDS}"
        assert load == {f"{i}/{SHARDS}": "failed" if f"{i}/{SHARDS}" == doomed_shard else "finished" for i in range(3)}
        assert pending_before.height > 0

        # Medplum takes the batch again: re-execute the run from failure.
        proxy.clear()
        requests_before = len(proxy.requests(method="POST", path=BATCH))
        options = ReexecutionOptions.from_failure(parent, instance)
        with execute_job(job, instance, reexecution_options=options, tags=tags) as rerun:
            assert rerun.success

        # Only the failed shard and what follows the load ran again.
        started = _steps(instance, rerun.run_id, DagsterEventType.STEP_START)
        assert doomed in started
        assert not started & succeeded, f"steps that had succeeded ran again: {started & succeeded}"
        assert {"medplum_resources.combine_shards", "reconciliation_report"} <= started
        checks = _checks(instance, rerun.run_id)
        assert ALL_CHECKS - {"schema", "prerequisites_loaded"} <= checks.keys() and all(checks.values()), checks

        with platform.manifest(through=proxy.base_url) as ledger:
            units = ledger.units("patients")
            load_runs = ledger.load_runs("patients", [parent, rerun.run_id])
            with ledger.engine.connect() as db:
                rows = db.execute(
                    sa.select(attempts.c.run_id, attempts.c.unit_key, attempts.c.http_status).where(
                        attempts.c.run_id.in_([run["run_id"] for run in load_runs])
                    )
                ).all()
            sent = [(run_id, unit_key) for run_id, unit_key, status in rows if status < 300]
    # The rerun's one ledger run is the doomed shard's, and it sent only what that shard had left pending.
    rerun_runs = [run for run in load_runs if dagster_run_of(run["run_id"]) == rerun.run_id]
    assert [(run["shard"], run["status"]) for run in rerun_runs] == [(doomed_shard, "finished")]
    assert {key for run_id, key in sent if run_id == rerun_runs[0]["run_id"]} == set(pending_before["unit_key"])
    assert len(proxy.requests(method="POST", path=BATCH)) > requests_before
    # Nothing sent twice: one successful write per unit over both runs, each identifier once in Medplum.
    assert sorted(key for _, key in sent) == sorted(set(units["unit_key"]))
    assert units["disposition"].to_list() == ["successful"] * PATIENTS
    with platform.client() as client:
        found = census(client, "Patient", PATIENT_SYSTEM)
    assert found.height == PATIENTS and found["identifier_value"].n_unique() == PATIENTS

    # The evidence counts the attempts of every shard step of the load, the failed one's and its rerun's.
    evidence = json.loads((platform.work / "evidence" / "patients" / "reconciliation.json").read_text())
    assert evidence["passed"] is True
    assert evidence["evidence"]["last_run_id"] == rerun.run_id
    assert evidence["evidence"]["last_run_status"] == "finished"
    assert sorted(run["ledger_run_id"] for run in evidence["evidence"]["load_runs"]) == sorted(
        run["run_id"] for run in load_runs
    )
    assert len(evidence["evidence"]["load_runs"]) == SHARDS + 1
    assert evidence["figures"]["attempts_last_run"] >= PATIENTS == len(sent)


def test_the_ledger_runs_of_a_load_are_its_shard_steps(tmp_path: Path):
    with Manifest(f"sqlite:///{tmp_path / 'manifest.db'}") as ledger:
        for run_id, shard in (("run-a.0of2", (0, 2)), ("run-a.1of2", (1, 2)), ("run-b", (0, 1)), ("run-a-x", (0, 1))):
            ledger.start_run(run_id, "patients", "1.0.0", "sqlite:///legacy.db", {"patients": 2}, shard=shard)
        assert [run["run_id"] for run in ledger.load_runs("patients", ["run-a"])] == ["run-a.0of2", "run-a.1of2"]
        assert [run["run_id"] for run in ledger.load_runs("patients", ["run-b"])] == ["run-b"]
        assert ledger.load_runs("patients", []) == []
    assert dagster_run_of("run-a.1of2") == "run-a" and dagster_run_of("run-b") == "run-b"


def test_a_run_config_of_a_resource_keeps_the_values_it_was_built_with(tmp_path: Path):
    resources = build_resources(work_dir=tmp_path, batch_size=5)
    run_config = {"resources": {"migration_settings": {"config": {"shard_count": 2, "batch_size": 7}}}}

    kept = keeping_built_values(
        {"resources": {**run_config["resources"], "medplum": {"config": {"max_attempts": 2}}}}, resources
    )

    assert kept["resources"]["migration_settings"]["config"] == {
        "evidence_dir": str(tmp_path / "evidence"),
        "batch_size": 7,  # the run config's own wins
        "shard_count": 2,
    }
    # The resources holding credentials are left as given: a credential never enters a run's config.
    assert kept["resources"]["medplum"] == {"config": {"max_attempts": 2}}
    assert keeping_built_values({}, resources) == {}


def test_a_sharded_run_from_a_run_config_writes_its_evidence_where_the_platform_keeps_it(platform_factory):
    platform = platform_factory.new(patients=20)
    run_config = {"resources": {"migration_settings": {"config": {"shard_count": 2}}}}

    summary = migrate_element("patients", platform.instance, platform.defs, run_config)

    assert summary.ok, (summary.error, summary.failure_messages)
    evidence = json.loads((platform.work / "evidence" / "patients" / "reconciliation.json").read_text())
    assert sorted(run["shard"] for run in evidence["evidence"]["load_runs"]) == ["0/2", "1/2"]
    assert evidence["figures"]["attempts_last_run"] == 20 == summary.counts["sent"]
