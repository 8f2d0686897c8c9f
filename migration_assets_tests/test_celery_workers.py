"""Four shards of one launch on two Celery workers over the machine's RabbitMQ (dagster-celery), one of
them killed in the middle of a shard: the event log shows where each shard step ran, the books balance,
the local Medplum holds each source identifier exactly once, and the killed worker's shard was delivered
again and loaded by the other (acks_late).

Steady from run to run: a queue of the test's own, deleted at its end; the launches wait until both workers
consume it (asked over the broker, not read from their logs); the worker is killed only while one of its
shard steps has started and not ended; the checks that run at once on both workers never see each other's
work half done (the idempotency check's resubmission leaves the books as they are until answered)."""

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

from migration_assets.commands.workers import celery_run_config, delete_queue, start_workers, wait_until_consuming
from migration_assets.devtools.local_medplum import running_local_medplum
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.profiles.seed_ehr.sample_data import generate_sample_ehr

pytestmark = pytest.mark.integration

BROKER = ("127.0.0.1", 5672)
# A launch's time on a machine shared with other work: generous, the test waits only as long as it runs.
LAUNCH_TIMEOUT_S = 300


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


def _wait_ready(queue: str, workers: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """Until both workers consume the test's queue, as they answer over the broker: a worker whose log says
    ready may still be connecting, and the first shards would then all go to the other."""
    try:
        wait_until_consuming(queue, len(workers), workers, timeout=180)
    except RuntimeError as problem:
        tails = "\n".join((logs / f"worker{n}.log").read_text()[-1500:] for n in range(1, len(workers) + 1))
        pytest.fail(f"{problem}\n{tails}")


def _children(pid: int) -> set[int]:
    """The process and its descendants (a thread or process may end while it is read: skipped)."""
    found = {pid}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found |= _children(int(child))
    return found


def _running_in(instance: DagsterInstance, run_id: str, pids: set[int]) -> list[str]:
    """The shard steps of the run that started in one of `pids` and have not ended yet."""
    ended = {
        entry.step_key
        for kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE)
        for entry in _shard_steps(instance, run_id, kind)
    }
    return [
        entry.step_key
        for entry in _shard_steps(instance, run_id, DagsterEventType.STEP_START)
        if entry.dagster_event.pid in pids and entry.step_key not in ended
    ]


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
    # Paced like a real Medplum so that a shard lasts seconds: long enough to be killed in the middle.
    with running_local_medplum(log_path=tmp_path / "medplum.log", points_per_second=5000) as server:
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
            _wait_ready(queue, workers, tmp_path)
            instance = DagsterInstance.get()
            # 1. Practitioners in four shards: the steps spread over both workers.
            launch = _launch("practitioners", tmp_path / "run.yaml", env)
            output = launch.communicate(timeout=LAUNCH_TIMEOUT_S)[0].decode()
            assert launch.returncode == 0, output[-3000:]
            first = instance.get_runs(limit=1)[0]
            assert first.status == DagsterRunStatus.SUCCESS
            outputs = _shard_steps(instance, first.run_id, DagsterEventType.STEP_OUTPUT)
            assert len(outputs) == 4
            worker_pids = {pid: number for number, worker in enumerate(workers) for pid in _children(worker.pid)}
            ran_in = {worker_pids.get(entry.dagster_event.pid) for entry in outputs}
            assert ran_in == {0, 1}, f"the shard steps ran in both workers: {ran_in}"

            # 2. Patients in four shards, worker 0 killed while a shard step runs in it.
            launch = _launch("patients", tmp_path / "run.yaml", env)
            deadline = time.monotonic() + LAUNCH_TIMEOUT_S
            killed_step = None
            while killed_step is None and time.monotonic() < deadline and launch.poll() is None:
                runs = instance.get_runs(limit=1)
                if runs and runs[0].run_id != first.run_id:
                    running = _running_in(instance, runs[0].run_id, _children(workers[0].pid))
                    if running:
                        killed_step = running[0]
                        os.killpg(workers[0].pid, signal.SIGKILL)
                time.sleep(0.1)
            assert killed_step is not None, "no shard step ran in worker 0"
            output = launch.communicate(timeout=LAUNCH_TIMEOUT_S)[0].decode()
            assert launch.returncode == 0, output[-3000:]
            second = instance.get_runs(limit=1)[0]
            assert second.status == DagsterRunStatus.SUCCESS
            outputs = _shard_steps(instance, second.run_id, DagsterEventType.STEP_OUTPUT)
            assert len(outputs) == 4
            survivor = _children(workers[1].pid)
            redone = [entry for entry in outputs if entry.step_key == killed_step]
            assert [entry.dagster_event.pid in survivor for entry in redone] == [True], (
                f"{killed_step}: killed in worker 0 in the middle, then run again by worker 1 alone"
            )
            for run in (first, second):
                evaluations = [
                    record.event_log_entry.dagster_event.event_specific_data
                    for record in instance.get_records_for_run(
                        run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
                    ).records
                ]
                checks = {evaluation.check_name: evaluation.passed for evaluation in evaluations}
                said = {evaluation.check_name: evaluation.description for evaluation in evaluations}
                # accounting_balanced: the books balance; reconciliation: every unit found once. The checks
                # run at once on both workers: none may see another's work half done.
                assert checks.get("accounting_balanced") and checks.get("reconciliation"), said
                assert all(checks.values()), said
        finally:
            for worker in workers:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=30)
            os.environ.clear()
            os.environ.update(saved)
            delete_queue(queue)  # nothing of this test stays on the broker

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
