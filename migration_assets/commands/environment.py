"""Setting up what `make demo` and `make dev` need: the Dagster home, the legacy source and a Medplum
server (the local one unless MEDPLUM_BASE_URL points at another)."""

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from migration_assets.active import PROFILE, write_sample
from migration_assets.devtools.local_medplum import free_port, port_is_free, running_local_medplum
from migration_assets.paths import DEFAULT_LEGACY_DB_URL, REPO_ROOT, WORK_DIR
from migration_assets.source import redact_url

MEDPLUM_ENV = ("MEDPLUM_BASE_URL", "MEDPLUM_CLIENT_ID", "MEDPLUM_CLIENT_SECRET")


# A new instance: SQLite storage, no telemetry, no "Join the Dagster community" dialog over the UI,
# and two runs at a time: queued runs start in load order, and a run whose element references one still
# loading in the other waits for that load (pipeline/waiting.py) while its own first steps are done.
# dagster.postgres.yaml shows the PostgreSQL variant.
DEFAULT_INSTANCE_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 2
"""


def _local_server_port() -> int:
    """The port the local server had last time (kept beside its data file), when it is free; else a
    free one, kept for next time."""
    kept = WORK_DIR / "medplum_local.port"
    if kept.exists() and kept.read_text().strip().isdigit() and port_is_free(int(kept.read_text())):
        return int(kept.read_text())
    port = free_port()
    kept.write_text(str(port))
    return port


def ensure_dagster_home() -> str:
    """DAGSTER_HOME (default: .dagster_home in the repository), with DEFAULT_INSTANCE_YAML unless it
    already has a dagster.yaml of its own."""
    home = os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home"))
    os.makedirs(home, exist_ok=True)
    config = os.path.join(home, "dagster.yaml")
    if not os.path.exists(config):
        with open(config, "w") as out:
            out.write(DEFAULT_INSTANCE_YAML)
    return home


def ensure_legacy_source(patients: int) -> str:
    """LEGACY_DB_URL when set; otherwise a freshly generated sample legacy database."""
    if "LEGACY_DB_URL" in os.environ:
        return os.environ["LEGACY_DB_URL"]
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    rows = write_sample(DEFAULT_LEGACY_DB_URL, patients=patients)
    print(f"sample legacy database of profile {PROFILE.name} at {redact_url(DEFAULT_LEGACY_DB_URL)}: {rows}")
    os.environ["LEGACY_DB_URL"] = DEFAULT_LEGACY_DB_URL
    return DEFAULT_LEGACY_DB_URL


@contextmanager
def medplum_server(port: int | None = None) -> Iterator[str]:
    """The Medplum base URL to migrate into; starts (and later stops) the local server when
    MEDPLUM_BASE_URL is not set, and exports its settings for the resources' EnvVars."""
    if os.environ.get("MEDPLUM_BASE_URL"):
        missing = [name for name in MEDPLUM_ENV if not os.environ.get(name)]
        if missing:
            raise SystemExit(f"MEDPLUM_BASE_URL is set but {', '.join(missing)} is not")
        yield os.environ["MEDPLUM_BASE_URL"]
        return
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    # The store is kept in a file so that, like a real server, it outlives the process; and its address
    # too, as far as the port is free: the books are kept per target, and a target is its base URL.
    with running_local_medplum(
        port or _local_server_port(), log_path=WORK_DIR / "medplum_local.log", data_file=WORK_DIR / "medplum_local.json"
    ) as server:
        os.environ.update(
            MEDPLUM_BASE_URL=server.base_url,
            MEDPLUM_CLIENT_ID=server.client_id,
            MEDPLUM_CLIENT_SECRET=server.client_secret,
        )
        try:
            yield server.base_url
        finally:
            for name in MEDPLUM_ENV:
                os.environ.pop(name, None)


def quiet_dagster_warnings() -> None:
    """Dagster's warnings about its own preview features (the partitioned asset checks) are nothing a
    person running a command can act on: not printed (`make demo V=1` shows them)."""
    warnings.filterwarnings("ignore", category=Warning, module=r"dagster(\.|$)")
    # The multi-asset check's specs are made in our module, so their warning names it, not dagster.
    warnings.filterwarnings("ignore", message=_PARTITIONED_CHECK_WARNING)
    # The steps' own processes (DAGSTER_EXECUTOR=multiprocess) import the checks again: the same preview
    # warning, filtered through their environment (a message prefix: the only form a variable can say).
    os.environ.setdefault("PYTHONWARNINGS", f"ignore:{_PARTITIONED_CHECK_WARNING}")


_PARTITIONED_CHECK_WARNING = "Specifying a partitions_def on an AssetCheckSpec"


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in this process's environment for the block (its child processes inherit them), then
    each variable as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
