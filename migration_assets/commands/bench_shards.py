"""The `shards` stage of make bench: one element (patients) loaded in one launch in-process, in 2 and 4
shards on local processes (multiprocess executor), and in 4 shards on 2 Celery workers, each against a
fresh local server paced to a real Medplum's capacity. Each launch is `dagster job execute` with its own
instance; the figure is the load's wall time, from the first shard step's start to the last one's end."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterEventType, DagsterInstance

from migration_assets.active import PROFILE
from migration_assets.commands.environment import environment
from migration_assets.commands.workers import celery_run_config, delete_queue, start_workers, wait_until_consuming
from migration_assets.devtools.local_medplum import running_local_medplum

# (label, executor, shards, Celery workers)
SETUPS = (
    ("in process, 1 shard", "in_process", 1, 0),
    ("2 shards, local processes", "multiprocess", 2, 0),
    ("4 shards, local processes", "multiprocess", 4, 0),
    ("4 shards, 2 Celery workers", "celery", 4, 2),
)
# The profile's root element (seed_ehr: patients): it needs no other element loaded first.
ELEMENT = PROFILE.bench_pair()[0]


def bench_shards(source_url: str, work: Path, points_per_second: float) -> list[dict[str, Any]]:
    return [
        _one(label, executor, shards, workers, source_url, work / f"shards-{number}", points_per_second)
        for number, (label, executor, shards, workers) in enumerate(SETUPS)
    ]


def _one(
    label: str, executor: str, shards: int, worker_count: int, source_url: str, work: Path, points_per_second: float
) -> dict[str, Any]:
    home = work / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        server = stack.enter_context(
            running_local_medplum(log_path=work / "medplum.log", points_per_second=points_per_second)
        )
        env = {
            **os.environ,
            "MEDPLUM_BASE_URL": server.base_url,
            "MEDPLUM_CLIENT_ID": server.client_id,
            "MEDPLUM_CLIENT_SECRET": server.client_secret,
            "LEGACY_DB_URL": source_url,
            "MANIFEST_DB_URL": f"sqlite:///{work / 'manifest.db'}",
            "MIGRATION_WORK_DIR": str(work),
            "DAGSTER_HOME": str(home),
            "DAGSTER_EXECUTOR": executor,
            "CELERY_QUEUE": queue,
        }
        run_config: dict[str, Any] = {"resources": {"migration_settings": {"config": {"shard_count": shards}}}}
        if executor == "celery":
            run_config.update(celery_run_config(queue))
            with environment(env):
                workers = start_workers(worker_count, queue, home, log_dir=work)
            stack.callback(delete_queue, queue)
            stack.callback(_stop, workers)
            wait_until_consuming(queue, worker_count, workers)
        elif executor == "multiprocess":
            run_config["execution"] = {"config": {"max_concurrent": shards + 1}}
        (work / "run.yaml").write_text(yaml.safe_dump(run_config))
        started = time.monotonic()
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "job",
                "execute",
                "-m",
                "migration_assets.definitions",
                "-j",
                "migrate_data_element",
                "-c",
                str(work / "run.yaml"),
                "--tags",
                json.dumps({"dagster/partition": ELEMENT}),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        run_seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"{label}: the run failed: {done.stdout[-2000:]}")
        instance = DagsterInstance.from_config(str(home))
        run = instance.get_runs(limit=1)[0]
        times, created = _load_window(instance, run.run_id)
        instance.dispose()
    load_seconds = max(times) - min(times)
    return {
        "setup": label,
        "executor": executor,
        "shards": shards,
        "celery_workers": worker_count,
        "resources": created,
        "load_seconds": round(load_seconds, 2),
        "resources_per_s": round(created / load_seconds),
        "run_seconds": round(run_seconds, 1),
    }


def _load_window(instance: DagsterInstance, run_id: str) -> tuple[list[float], int]:
    """The start and end times of the run's shard steps, and the resources the load created."""
    times = [
        record.event_log_entry.timestamp
        for kind in (DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS)
        for record in instance.get_records_for_run(run_id, of_type=kind).records
        if ".load_shard[" in (record.event_log_entry.step_key or "")
    ]
    created = 0
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key.path == ["medplum_resources"]:
            value = materialization.metadata.get("created")
            created = int(value.value) if value is not None and isinstance(value.value, int) else 0
    return times, created


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=30)
