"""Every environment variable the platform reads, in one place, each read when it is needed (a test or a
long-running process that changes one sees the change). Secrets are not read here: the Medplum client
credentials reach the resources through Dagster's EnvVar, so they never enter the run config."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

MEDPLUM_ENV = ("MEDPLUM_BASE_URL", "MEDPLUM_CLIENT_ID", "MEDPLUM_CLIENT_SECRET")


def _text(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def work_dir() -> Path:
    """Where the platform keeps its local state by default (MIGRATION_WORK_DIR, else .demo/)."""
    return Path(_text("MIGRATION_WORK_DIR") or REPO_ROOT / ".demo").resolve()


def profile_spec() -> str | None:
    """MIGRATION_PROFILE: a shipped profile's name, an installed one's, a module or a folder."""
    return _text("MIGRATION_PROFILE")


def element_selection() -> tuple[str, ...] | None:
    """ELEMENTS: the data elements to run (comma-separated), None for all of the profile's."""
    chosen = _text("ELEMENTS")
    return tuple(name.strip() for name in chosen.split(",") if name.strip()) if chosen else None


def legacy_db_url() -> str | None:
    return _text("LEGACY_DB_URL")


def manifest_db_url() -> str | None:
    return _text("MANIFEST_DB_URL")


def identifier_base_uri() -> str | None:
    return _text("IDENTIFIER_BASE_URI")


def load_mode() -> str | None:
    """LOAD_MODE: `sync` (batch bundles), `async` (Prefer: respond-async jobs) or `mixed` (both at once)."""
    return _text("LOAD_MODE")


def phases_file() -> Path | None:
    """ADOPTION_PHASES_FILE: a phases file other than the profile's own."""
    chosen = _text("ADOPTION_PHASES_FILE")
    return Path(chosen) if chosen else None


def state_dir(name: str) -> Path | None:
    """<NAME>_DIR (CENSUS_DIR, READINESS_DIR, ...): where one kind of local state goes instead of work_dir()."""
    chosen = _text(f"{name.upper()}_DIR")
    return Path(chosen) if chosen else None


def medplum_base_url() -> str | None:
    return _text("MEDPLUM_BASE_URL")


def run_config_file() -> Path | None:
    """RUN_CONFIG: a run-config YAML file (as the launchpad takes it) for every run `make demo` launches."""
    chosen = _text("RUN_CONFIG")
    return Path(chosen) if chosen else None


def max_file_bytes() -> int | None:
    """MAX_FILE_BYTES: the largest legacy file uploaded as a Binary; a larger one is quarantined."""
    value = _text("MAX_FILE_BYTES")
    return int(value) if value else None


def allowed_file_types() -> frozenset[str] | None:
    """ALLOWED_FILE_TYPES: the content types of legacy files the clinic allows (comma-separated)."""
    value = _text("ALLOWED_FILE_TYPES")
    return frozenset(kind.strip() for kind in value.split(",") if kind.strip()) if value else None


def legacy_files_dir() -> str | None:
    """LEGACY_FILES_DIR: the legacy system's document folder, for file paths its tables hold relative."""
    return _text("LEGACY_FILES_DIR")


def executor_name() -> str | None:
    """DAGSTER_EXECUTOR: `in_process` (default), `multiprocess` or `celery` (pipeline/executors.py)."""
    return _text("DAGSTER_EXECUTOR")


def celery_broker_url() -> str:
    """CELERY_BROKER_URL: the broker of `make workers` and of the Celery runs' default config."""
    return _text("CELERY_BROKER_URL") or "pyamqp://guest:guest@127.0.0.1:5672//"


def celery_queue() -> str:
    """CELERY_QUEUE: the Celery queue the workers of `make workers` listen to and Celery runs send to."""
    return _text("CELERY_QUEUE") or "dagster"
