"""What the browser test needs: `dagster dev` on a small sample with the local Medplum server, the
webserver's GraphQL API, and Debian's Chromium for Playwright (the system browser, never a download).

`dagster dev` runs exactly as `make dev` runs it (migration_assets/dev.py: workspace.yaml, its own
process group, stopped with SIGINT to the group), but with everything it keeps in a temporary folder:
DAGSTER_HOME, the legacy source (LEGACY_DB_URL), the manifest (MANIFEST_DB_URL) and the frames and
evidence (MIGRATION_WORK_DIR). The code location reads the Medplum server from MEDPLUM_BASE_URL,
MEDPLUM_CLIENT_ID and MEDPLUM_CLIENT_SECRET, as in production.
"""

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from migration_assets.commands.dev import DAGSTER, WORKSPACE, stop_process_group, wait_for_ui
from migration_assets.commands.environment import DEFAULT_INSTANCE_YAML
from migration_assets.devtools.local_medplum import LocalMedplum, free_port, running_local_medplum
from migration_assets.paths import REPO_ROOT
from migration_assets.profiles.seed_ehr.sample_data import generate_sample_ehr

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# What makes Debian's Chromium run headless on these machines, as root and with a closed network:
# without the background-networking flags its own connections are refused, many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS_DIR = REPO_ROOT / ".artifacts" / "ui"

# The instance of the test is configured as `make dev` configures a new one.
DAGSTER_YAML = DEFAULT_INSTANCE_YAML


def chromium_or_fail() -> Path:
    """Debian's Chromium, or an explanation of how to install it (the browser test never skips)."""
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"Chromium not found at {CHROMIUM}: the browser test drives Debian's chromium package. "
            "Run `make setup` (as root it runs `apt-get install -y chromium`), or install it yourself "
            "and/or set CHROMIUM_PATH. Playwright must not download a browser of its own."
        )
    return CHROMIUM


@dataclass
class DagsterUI:
    url: str
    home: Path
    work: Path
    medplum: LocalMedplum
    log_path: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(
            self.url + "/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=60.0,
            trust_env=False,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # --- what the UI itself asks the webserver -------------------------------------------------

    def launch_partition_backfill(self, asset_keys: list[str], partitions: list[str], title: str) -> str:
        """Asset backfill of `partitions` of `asset_keys`, the mutation the UI's launch dialog sends;
        the daemon then requests the runs."""
        data = self.graphql(
            """
            mutation Launch($params: LaunchBackfillParams!) {
              launchPartitionBackfill(backfillParams: $params) {
                __typename
                ... on LaunchBackfillSuccess { backfillId }
                ... on PythonError { message }
                ... on PartitionKeysNotFoundError { message }
                ... on UnauthorizedError { message }
              }
            }""",
            {
                "params": {
                    "partitionNames": partitions,
                    "assetSelection": [{"path": [key]} for key in asset_keys],
                    "title": title,
                }
            },
        )
        result = data["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise AssertionError(f"launchPartitionBackfill: {result}")
        return str(result["backfillId"])

    def backfill_status(self, backfill_id: str) -> str:
        data = self.graphql(
            """
            query Backfill($id: String!) {
              partitionBackfillOrError(backfillId: $id) {
                __typename
                ... on PartitionBackfill { status }
              }
            }""",
            {"id": backfill_id},
        )
        return str(data["partitionBackfillOrError"].get("status"))

    def partition_statuses(self, asset_key: str) -> dict[str, list[str]]:
        data = self.graphql(
            """
            query Statuses($key: AssetKeyInput!) {
              assetNodeOrError(assetKey: $key) {
                __typename
                ... on AssetNode {
                  assetPartitionStatuses {
                    __typename
                    ... on DefaultPartitionStatuses {
                      materializedPartitions failedPartitions materializingPartitions
                    }
                  }
                }
              }
            }""",
            {"key": {"path": [asset_key]}},
        )
        return dict(data["assetNodeOrError"]["assetPartitionStatuses"])

    def runs(self) -> list[dict[str, Any]]:
        data = self.graphql(
            """
            query Runs {
              runsOrError(limit: 50) {
                __typename
                ... on Runs { results { runId status tags { key value } } }
              }
            }"""
        )
        return list(data["runsOrError"]["results"])

    def wait_for_finished_runs(self, tag: dict[str, str], timeout: float, poll: float = 1.0) -> list[dict[str, Any]]:
        """The runs carrying `tag`, once none of them is still queued or running: a run's last assets
        are materialized while its checks may still run."""
        deadline = time.monotonic() + timeout
        tagged: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            tagged = [run for run in self.runs() if tag in run["tags"]]
            if tagged and all(run["status"] in ("SUCCESS", "FAILURE", "CANCELED") for run in tagged):
                return tagged
            time.sleep(poll)
        raise AssertionError(
            f"runs tagged {tag} not finished within {timeout:.0f} s: {[(r['runId'][:8], r['status']) for r in tagged]}"
        )

    def wait_for_partitions(
        self, asset_key: str, partitions: list[str], timeout: float, poll: float = 2.0
    ) -> dict[str, list[str]]:
        """Until every one of `partitions` of the asset is materialized; fails at the first failed one."""
        deadline = time.monotonic() + timeout
        statuses: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            statuses = self.partition_statuses(asset_key)
            failed = set(partitions) & set(statuses.get("failedPartitions", []))
            if failed:
                raise AssertionError(f"{asset_key}: partitions {sorted(failed)} failed: {statuses}")
            if set(partitions) <= set(statuses.get("materializedPartitions", [])):
                return statuses
            time.sleep(poll)
        raise AssertionError(
            f"{asset_key}: partitions {partitions} not materialized within {timeout:.0f} s: {statuses}; "
            f"runs: {[(r['runId'][:8], r['status']) for r in self.runs()]}"
        )


def dagster_dev_environment(work: Path, home: Path, source_url: str, medplum: LocalMedplum) -> dict[str, str]:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LEGACY_DB_URL": source_url,
        "MANIFEST_DB_URL": f"sqlite:///{work / 'manifest.db'}",
        "MIGRATION_WORK_DIR": str(work),
        "MEDPLUM_BASE_URL": medplum.base_url,
        "MEDPLUM_CLIENT_ID": medplum.client_id,
        "MEDPLUM_CLIENT_SECRET": medplum.client_secret,
    }
    env.pop("DAGSTER_PORT", None)
    return env


@contextmanager
def running_dagster_ui(work: Path, patients: int = 30, startup_timeout: float = 150.0) -> Iterator[DagsterUI]:
    """`dagster dev` (webserver, daemon, code server) on a generated sample and a fresh local Medplum
    server, all under `work`; stopped (SIGINT to its process group) and cleaned up at the end."""
    work.mkdir(parents=True, exist_ok=True)
    home = work / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    source_url = f"sqlite:///{work / 'legacy_ehr.db'}"
    generate_sample_ehr(source_url, patients=patients)
    if not DAGSTER.exists():
        raise RuntimeError(f"{DAGSTER} not found: run `make setup`")
    with running_local_medplum(log_path=work / "medplum_local.log") as medplum:
        port = free_port()
        log_path = work / "dagster_dev.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(DAGSTER), "dev", "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", str(port)],
                cwd=REPO_ROOT,
                env=dagster_dev_environment(work, home, source_url, medplum),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: SIGINT to the group stops it
            )
        ui = DagsterUI(f"http://127.0.0.1:{port}", home, work, medplum, log_path)
        try:
            try:
                wait_for_ui(process, ui.url, timeout=startup_timeout)
                wait_for_code_location(ui, timeout=startup_timeout)
            except SystemExit as exc:  # dev.wait_for_ui speaks to a terminal user
                raise RuntimeError(f"{exc}\n--- dagster dev log ---\n{ui.log_tail()}") from None
            yield ui
        finally:
            stop_process_group(process)


def wait_for_code_location(ui: DagsterUI, timeout: float) -> None:
    """The webserver answers before the code location is loaded; the UI is usable once it is."""
    query = """
    query Locations {
      workspaceOrError {
        __typename
        ... on Workspace {
          locationEntries {
            name
            loadStatus
            locationOrLoadError { __typename ... on PythonError { message } }
          }
        }
      }
    }"""
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        entries = ui.graphql(query)["workspaceOrError"].get("locationEntries", [])
        for entry in entries:
            if entry["name"] == "migration_assets" and entry["loadStatus"] == "LOADED":
                if entry["locationOrLoadError"]["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {entry['locationOrLoadError']['message']}")
                return
        time.sleep(1.0)
    raise RuntimeError(f"code location not loaded within {timeout:.0f} s: {entries}\n{ui.log_tail()}")
