"""Four shards of one launch on two Celery workers over the machine's RabbitMQ (dagster-celery), one of
them killed in the middle of a shard: the event log shows where each shard step ran, the books balance,
the local Medplum holds each source identifier exactly once, and the killed worker's shard was delivered
again and loaded by the other (acks_late)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from migration_assets.commands.workers import celery_run_config, start_workers
from migration_assets.devtools.local_medplum import running_local_medplum
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.profiles.seed_ehr.sample_data import generate_sample_ehr

pytestmark = pytest.mark.integration

BROKER = ("127.0.0.1", 5672)


def _broker_reachable() -> None:
    try:
        socket.create_connection(BROKER, timeout=3).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ unreachable at {BROKER[0]}:{BROKER[1]} ({exc}): start it (guest/guest)")


def _launch(element: str, run_config_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One launch of the migration job for `element`, as `dagster job execute` does it from a shell."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "job",
            "execute",
            "-m",
            "migration_assets.definitions",
            "-j",
            "migrate_data_element",
            "-c",
            str(run_config_path),
            "--tags",
            json.dumps({"dagster/partition": element}),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_ready(workers: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for number, worker in enumerate(workers, start=1):
            if worker.poll() is not None:
                pytest.fail(f"worker {number} exited: {(logs / f'worker{number}.log').read_text()[-2000:]}")
        if all(" ready." in (logs / f"worker{n}.log").read_text() for n in range(1, len(workers) + 1)):
            return
        time.sleep(0.5)
    pytest.fail("the Celery workers were not ready within 60 s")


def _children(pid: int) -> set[int]:
    found = {pid}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in children:
            found |= _children(int(child))
    return found


def _shard_steps(instance: DagsterInstance, run_id: str, kind: DagsterEventType) -> list:
    return [
        record.event_log_entry
        for record in instance.get_records_for_run(run_id, of_type=kind).records
        if record.event_log_entry.step_key and ".load_shard[" in record.event_log_entry.step_key
    ]


def test_four_shards_on_two_celery_workers_and_a_killed_worker_loses_nothing(tmp_path: Path):
    _broker_reachable()
    queue = f"test-{uuid.uuid4().hex[:10]}"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    legacy = f"sqlite:///{tmp_path / 'legacy.db'}"
    generate_sample_ehr(legacy, patients=400)
    manifest_url = f"sqlite:///{tmp_path / 'manifest.db'}"
    # Paced like a real Medplum so that a shard lasts long enough to be killed in the middle.
    with running_local_medplum(log_path=tmp_path / "medplum.log", points_per_second=12000) as server:
        env = {
            **os.environ,
            "MEDPLUM_BASE_URL": server.base_url,
            "MEDPLUM_CLIENT_ID": server.client_id,
            "MEDPLUM_CLIENT_SECRET": server.client_secret,
            "LEGACY_DB_URL": legacy,
            "MANIFEST_DB_URL": manifest_url,
            "MIGRATION_WORK_DIR": str(tmp_path / "work"),
            "DAGSTER_HOME": str(home),
            "DAGSTER_EXECUTOR": "celery",
            "CELERY_QUEUE": queue,
        }
        run_config = {**celery_run_config(queue), "resources": {"migration_settings": {"config": {"shard_count": 4}}}}
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config))
        saved = dict(os.environ)
        os.environ.update(env)
        workers = start_workers(2, queue, home, log_dir=tmp_path)
        try:
            _wait_ready(workers, tmp_path)
            instance = DagsterInstance.get()
            # 1. Practitioners in four shards: the steps spread over both workers.
            launch = _launch("practitioners", tmp_path / "run.yaml", env)
            output = launch.communicate(timeout=150)[0].decode()
            assert launch.returncode == 0, output[-3000:]
            first = instance.get_runs(limit=1)[0]
            assert first.status == DagsterRunStatus.SUCCESS
            outputs = _shard_steps(instance, first.run_id, DagsterEventType.STEP_OUTPUT)
            assert len(outputs) == 4
            worker_pids = {pid: number for number, worker in enumerate(workers) for pid in _children(worker.pid)}
            ran_in = {worker_pids.get(entry.dagster_event.pid) for entry in outputs}
            assert ran_in == {0, 1}, f"the shard steps ran in both workers: {ran_in}"

            # 2. Patients in four shards, worker 0 killed as soon as a shard step starts in it.
            launch = _launch("patients", tmp_path / "run.yaml", env)
            deadline = time.monotonic() + 90
            killed_step = None
            while killed_step is None and time.monotonic() < deadline and launch.poll() is None:
                runs = instance.get_runs(limit=1)
                if runs and runs[0].run_id != first.run_id:
                    victims = _children(workers[0].pid)
                    started = [
                        entry
                        for entry in _shard_steps(instance, runs[0].run_id, DagsterEventType.STEP_START)
                        if entry.dagster_event.pid in victims
                    ]
                    if started:
                        killed_step = started[0].step_key
                        os.killpg(workers[0].pid, signal.SIGKILL)
                time.sleep(0.2)
            assert killed_step is not None, "no shard step started in worker 0"
            output = launch.communicate(timeout=150)[0].decode()
            assert launch.returncode == 0, output[-3000:]
            second = instance.get_runs(limit=1)[0]
            assert second.status == DagsterRunStatus.SUCCESS
            outputs = _shard_steps(instance, second.run_id, DagsterEventType.STEP_OUTPUT)
            assert len(outputs) == 4
            survivor = _children(workers[1].pid)
            redone = [entry for entry in outputs if entry.step_key == killed_step]
            assert redone and redone[0].dagster_event.pid in survivor, "the killed shard was delivered again"
            for run in (first, second):
                evaluations = [
                    record.event_log_entry.dagster_event.event_specific_data
                    for record in instance.get_records_for_run(
                        run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
                    ).records
                ]
                checks = {evaluation.check_name: evaluation.passed for evaluation in evaluations}
                # accounting_balanced: the books balance; reconciliation: every unit found once.
                assert checks.get("accounting_balanced") and checks.get("reconciliation"), checks
                assert all(checks.values()), checks
        finally:
            for worker in workers:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=30)
            os.environ.clear()
            os.environ.update(saved)

        # Nothing sent twice: the census of identifiers at the local Medplum is the source's.
        with MedplumClient(server.base_url, server.client_id, server.client_secret) as client:
            target = client.target
            for element, resource_type in (("practitioners", "Practitioner"), ("patients", "Patient")):
                with Manifest(manifest_url, target.key) as manifest:
                    units = manifest.units(element)
                assert units.filter(units["disposition"] == "pending").is_empty(), f"{element}: units pending"
                systems = set(units["identifier_system"].to_list())
                identifiers = [
                    ident["value"]
                    for resource in client.search(resource_type, {"_count": "1000"})
                    for ident in resource.get("identifier", [])
                    if ident.get("system") in systems
                ]
                assert len(identifiers) == len(set(identifiers)), f"{resource_type}: an identifier held twice"
                expected = set(units.filter(units["disposition"] == "successful")["identifier_value"].to_list())
                assert set(identifiers) == expected
