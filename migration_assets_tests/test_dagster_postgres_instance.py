"""dagster.postgres.yaml works for real: a Dagster instance built from it keeps its runs, event log and
schedule state in PostgreSQL, and a migration run on it (patients into the local Medplum server)
lands there.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth, allowed to create databases); the
test creates a throwaway database and drops it at the end. No skip: an unreachable server fails.
"""

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from psycopg2 import sql

from migration_assets.active import write_sample
from migration_assets.devtools.local_medplum import LocalMedplum
from migration_assets.paths import REPO_ROOT

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

PG_ADMIN_DSN = os.environ.get("DAGSTER_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL_BASE = os.environ.get("DAGSTER_TEST_PG_URL_BASE", "postgresql+psycopg2://postgres@127.0.0.1:5432")
EXAMPLE_CONFIG = REPO_ROOT / "dagster.postgres.yaml"
PATIENTS = 50


def _admin_connection() -> "psycopg2.extensions.connection":
    try:
        connection = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        error = str(exc).strip()
    else:
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        return connection
    pytest.fail(
        f"PostgreSQL is not reachable with {PG_ADMIN_DSN!r} (set DAGSTER_TEST_PG_DSN and "
        f"DAGSTER_TEST_PG_URL_BASE for another server): {error}",
        pytrace=False,
    )


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty database; its name. Dropped afterwards, open connections or not."""
    name = f"dagster_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_connection()
    try:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def _query(database: str, query: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(PG_ADMIN_DSN, dbname=database, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchall()
    finally:
        connection.close()


def test_example_instance_config_runs_a_migration_on_postgres(
    pg_database: str, local_medplum: LocalMedplum, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(EXAMPLE_CONFIG, home / "dagster.yaml")  # the file as a user copies it, unchanged
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    write_sample(legacy_url, patients=PATIENTS)
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": f"{PG_URL_BASE}/{pg_database}",
        "MEDPLUM_BASE_URL": local_medplum.base_url,
        "MEDPLUM_CLIENT_ID": local_medplum.client_id,
        "MEDPLUM_CLIENT_SECRET": local_medplum.client_secret,
        "LEGACY_DB_URL": legacy_url,
        "MANIFEST_DB_URL": f"sqlite:///{tmp_path / 'manifest.db'}",
        "MIGRATION_WORK_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)

    # The definitions are built with resources read from the environment set above (and frames
    # under tmp_path, not .demo/), exactly as definitions.py builds its own.
    from migration_assets.definitions import make_definitions, migrate_element_job
    from migration_assets.pipeline.resources import build_resources

    resources = build_resources(work_dir=tmp_path)
    job = make_definitions(resources).resolve_job_def(migrate_element_job.name)

    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        run_queue = instance.get_concurrency_config().run_queue_config
        assert run_queue is not None and run_queue.max_concurrent_runs == 2

        result = job.execute_in_process(partition_key="patients", instance=instance, raise_on_error=False)
        failures = [event.message for event in result.all_events if event.is_step_failure]
        assert result.success, f"run failed: {failures}"
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks and all(checks.values()), f"failed checks: {checks}"

        # The instance reads the run and the materialization back from PostgreSQL.
        runs = instance.get_runs()
        assert [run.run_id for run in runs] == [result.run_id]
        assert runs[0].status == DagsterRunStatus.SUCCESS
        assert runs[0].tags.get("dagster/partition") == "patients"
        event = instance.get_latest_materialization_event(AssetKey("medplum_resources"))
        assert event is not None and event.asset_materialization is not None
        assert event.run_id == result.run_id
        assert event.asset_materialization.partition == "patients"
        counts = {
            key: int(str(value.value))
            for key, value in event.asset_materialization.metadata.items()
            if key in ("source_rows", "quarantined", "created", "failed")
        }
        assert counts["failed"] == 0
        assert counts["created"] + counts["quarantined"] == counts["source_rows"] == PATIENTS
        assert counts["created"] > 0

    # And they are really in that database, not in SQLite files under DAGSTER_HOME.
    assert _query(pg_database, "SELECT run_id, status FROM runs") == [(result.run_id, "SUCCESS")]
    materializations = _query(
        pg_database,
        "SELECT asset_key, partition FROM event_logs "
        f"WHERE run_id = '{result.run_id}' AND dagster_event_type = 'ASSET_MATERIALIZATION'",
    )
    assert ('["medplum_resources"]', "patients") in materializations
    assert not list(home.rglob("*.db")), f"SQLite storage created under DAGSTER_HOME: {list(home.rglob('*.db'))}"

    # A rerun of the unchanged partition: the idempotency check finds its earlier verdict in the
    # PostgreSQL event log and resubmits nothing.
    with DagsterInstance.from_config(str(home)) as instance:
        again = job.execute_in_process(partition_key="patients", instance=instance, raise_on_error=False)
        assert again.success
        (reload,) = [e for e in again.get_asset_check_evaluations() if e.check_name == "idempotent_reload"]
        assert reload.passed
        assert (reload.description or "").startswith(
            f"resubmitted 0 (not resubmitted: this run wrote nothing, and the content is what run {result.run_id} "
        ), reload.description
