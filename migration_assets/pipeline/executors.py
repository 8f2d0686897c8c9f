"""The executor every job runs on, chosen by DAGSTER_EXECUTOR (config.py), never by editing code.

- `in_process` (default): every step in the run's process; the fastest on one machine for small loads.
- `multiprocess`: each step in a subprocess of the run (shard steps in parallel on one machine); run
  config `execution: config: {max_concurrent: N}`.
- `celery`: each step a Celery task on the workers listening to the broker (dagster-celery, `make
  workers`); run config `execution: config: {broker: ..., config_source: {task_default_queue: ...}}`.
  Needs a Dagster instance (PostgreSQL, or one DAGSTER_HOME on one machine) and IO-manager storage that
  the run and every worker reach.
"""

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from migration_assets import config

EXECUTORS = ("in_process", "multiprocess", "celery")


def chosen_executor() -> ExecutorDefinition:
    name = config.executor_name() or "in_process"
    if name == "in_process":
        # Each step in a subprocess costs 20-45 s a run here; in process it is about 5 s.
        return in_process_executor
    if name == "multiprocess":
        return multiprocess_executor
    if name == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as missing:
            raise RuntimeError(
                "DAGSTER_EXECUTOR=celery needs dagster-celery: pip install -e '.[celery]' (make setup installs it)"
            ) from missing
        executor: ExecutorDefinition = celery_executor
        return executor
    raise ValueError(f"DAGSTER_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {name!r}")
