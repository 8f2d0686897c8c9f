"""make workers [WORKERS=2]: Celery workers for this code location (dagster-celery), in the foreground
until Ctrl-C. Each worker runs the steps of runs launched with DAGSTER_EXECUTOR=celery; they need the
same environment as the code location (MEDPLUM_*, LEGACY_DB_URL, MANIFEST_DB_URL, DAGSTER_HOME: the
instance the runs use) and reach the broker at CELERY_BROKER_URL, listening to CELERY_QUEUE."""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance

from migration_assets import config


def celery_settings(queue: str | None = None) -> dict[str, Any]:
    """The dagster-celery executor config shared by the workers and the runs: the broker, and a task
    acknowledged only once its step has finished (acks_late), so a worker killed in the middle of a step
    hands it back to the broker, which delivers it to another worker."""
    return {
        "broker": config.celery_broker_url(),
        "backend": "rpc://",
        "config_source": {
            "task_default_queue": queue or config.celery_queue(),
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            # One step at a time per worker process: a worker never holds a shard another could run.
            "worker_prefetch_multiplier": 1,
            "worker_concurrency": 1,
        },
    }


def celery_run_config(queue: str | None = None) -> dict[str, Any]:
    """The run config's `execution` section of a run on the Celery workers (DAGSTER_EXECUTOR=celery)."""
    return {"execution": {"config": celery_settings(queue)}}


def worker_command(config_file: Path, queue: str, name: str) -> list[str]:
    dagster_celery = shutil.which("dagster-celery", path=str(Path(sys.executable).parent)) or "dagster-celery"
    return [
        dagster_celery,
        "worker",
        "start",
        "-A",
        "dagster_celery.app",
        "-y",
        str(config_file),
        "-q",
        queue,
        "-n",
        name,
        "--loglevel",
        "INFO",
    ]  # dagster-celery names it <name>@<host>


def write_worker_config(directory: Path, queue: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"celery-{queue}.yaml"
    # dagster-celery's worker reads the executor config as a run config's `execution` section.
    path.write_text(yaml.safe_dump(celery_run_config(queue)))
    return path


def start_workers(count: int, queue: str, home: Path, log_dir: Path | None = None) -> list[subprocess.Popen[bytes]]:
    """`count` workers as processes of their own (each in its own process group: killing one kills its pool)."""
    # dagster-celery starts the `celery` command of this environment.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "DAGSTER_EXECUTOR": "celery", "DAGSTER_HOME": str(home), "PATH": path}
    config_file = write_worker_config(home, queue)
    # The instance's storage made once here: workers starting together would race to create it.
    DagsterInstance.from_config(str(home)).dispose()
    workers = []
    for number in range(1, count + 1):
        log = (log_dir / f"worker{number}.log").open("wb") if log_dir else None
        workers.append(
            subprocess.Popen(
                worker_command(config_file, queue, f"worker{number}-{queue}"),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=True,
            )
        )
    return workers


def _broker_app() -> Any:
    """A Celery app on the broker alone, to ask the workers over it (`celery inspect`)."""
    from celery import Celery

    return Celery("dagster", broker=config.celery_broker_url())


def wait_until_consuming(
    queue: str, count: int, workers: list[subprocess.Popen[bytes]] | None = None, timeout: float = 180.0
) -> None:
    """Until `count` workers consume `queue`, as they answer over the broker (`celery inspect
    active_queues`). A worker whose log says ready may still be connecting: a task sent then goes to the
    others. Raises when a worker of `workers` exits or the time runs out."""
    app = _broker_app()
    deadline = time.monotonic() + timeout
    try:
        while True:
            exited = [worker.pid for worker in workers or [] if worker.poll() is not None]
            if exited:
                raise RuntimeError(f"Celery worker (pid {exited[0]}) exited before it consumed {queue!r}")
            answers = app.control.inspect(timeout=2.0).active_queues() or {}
            consuming = [name for name, queues in answers.items() if any(q["name"] == queue for q in queues)]
            if len(consuming) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(consuming)} of {count} Celery workers consume {queue!r} after {timeout:.0f} s"
                )
            time.sleep(0.5)
    finally:
        app.close()


def delete_queue(queue: str) -> None:
    """Remove `queue` from the broker with whatever it still holds (a test's or a bench's own queue)."""
    app = _broker_app()
    try:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    home = Path(os.environ.get("DAGSTER_HOME") or config.REPO_ROOT / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    queue = config.celery_queue()
    # SIGTERM stops the workers too (each in a session of its own, so not in this process's group).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    workers = start_workers(args.workers, queue, home)
    try:
        wait_until_consuming(queue, args.workers, workers)
        print(
            f"{args.workers} Celery workers consume queue {queue!r} of {config.celery_broker_url().split('@')[-1]}; "
            f"launch runs with DAGSTER_EXECUTOR=celery. Ctrl-C stops them.",
            flush=True,
        )
        for worker in workers:
            worker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.wait()


if __name__ == "__main__":
    main()
