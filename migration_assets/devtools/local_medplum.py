"""Start and stop the local Medplum server (medplum_local/server.mjs) from Python.

Used by the demo and the tests; no Dagster import. The server needs the Node 22 binary that
`make setup` installs into medplum_local/node_modules/.bin/node.

With `data_file`, the server keeps its store in that NDJSON file (MEDPLUM_LOCAL_DATA_FILE): loaded at
start, saved 2 s after the last write and on stop, like a real Medplum server's database. Without it,
the store is in memory only (and a MEDPLUM_LOCAL_DATA_FILE in the environment is ignored).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from migration_assets.config import REPO_ROOT

SERVER_DIR = REPO_ROOT / "medplum_local"
NODE_BINARY = SERVER_DIR / "node_modules" / ".bin" / "node"

# A project as Medplum creates it: the FHIR quota at its default (50,000 points a minute per user) and
# the transaction-bundles feature off. `running_local_medplum(**STOCK_PROJECT)`.
STOCK_PROJECT = {"fhir_quota": 50_000, "quota_window_seconds": 60, "transaction_bundles": False}
SERVER_SCRIPT = SERVER_DIR / "server.mjs"

DEFAULT_CLIENT_ID = "local-migration-client"
DEFAULT_CLIENT_SECRET = "local-migration-secret"
STARTUP_TIMEOUT_S = 30.0


class LocalMedplumError(RuntimeError):
    """The local Medplum server could not be started."""


@dataclass(frozen=True)
class LocalMedplum:
    base_url: str  # e.g. "http://127.0.0.1:8103/"; the FHIR base is base_url + "fhir/R4/"
    client_id: str
    client_secret: str

    @property
    def fhir_base_url(self) -> str:
        return self.base_url + "fhir/R4/"

    @property
    def token_url(self) -> str:
        return self.base_url + "oauth2/token"

    def as_client(self, client_id: str, client_secret: str) -> LocalMedplum:
        """The same server through another credential (one of `more_clients`): another project."""
        return LocalMedplum(self.base_url, client_id, client_secret)


def port_is_free(port: int) -> bool:
    """True when nothing listens on `port` of 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server binds it: connections of its previous run still closing do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_local_medplum(
    port: int | None = None,
    *,
    fhir_quota: int = 0,
    quota_window_seconds: int = 60,
    transaction_bundles: bool = True,
    token_ttl: int = 3600,
    log_path: Path | None = None,
    data_file: Path | None = None,
    points_per_second: float = 0,
    more_clients: Mapping[str, str] | None = None,
) -> tuple[LocalMedplum, subprocess.Popen[bytes]]:
    """Starts the server in its own process group and waits until /healthcheck answers.

    `data_file`: persist the store there (loaded now if it exists; a corrupt or unreadable file makes
    this raise LocalMedplumError with the server's message). None: memory only.
    `points_per_second`: pace the server to that much work a second, counted in Medplum's quota points
    (a write 100, a search 20, a read or a resource a search returns 1). 0: as fast as it goes.
    `more_clients`: more accepted credentials (client id -> secret), each acting in its own project, as
    clients of different projects on one Medplum server (`server.as_client(client_id, secret)`).
    """
    if not NODE_BINARY.exists():
        raise LocalMedplumError(
            f"Node 22 binary not found at {NODE_BINARY}: run `make setup` "
            "(it runs `npm ci` in medplum_local/) before starting the local Medplum server."
        )
    port = port or free_port()
    client_id = os.environ.get("MEDPLUM_CLIENT_ID") or DEFAULT_CLIENT_ID
    client_secret = os.environ.get("MEDPLUM_CLIENT_SECRET") or DEFAULT_CLIENT_SECRET
    env = {
        **os.environ,
        "MEDPLUM_LOCAL_PORT": str(port),
        "MEDPLUM_CLIENT_ID": client_id,
        "MEDPLUM_CLIENT_SECRET": client_secret,
        "MEDPLUM_LOCAL_FHIR_QUOTA": str(fhir_quota),
        "MEDPLUM_LOCAL_QUOTA_WINDOW_SECONDS": str(quota_window_seconds),
        "MEDPLUM_LOCAL_TRANSACTION_BUNDLES": "true" if transaction_bundles else "false",
        "MEDPLUM_LOCAL_TOKEN_TTL": str(token_ttl),
        "MEDPLUM_LOCAL_POINTS_PER_SECOND": str(points_per_second),
        "MEDPLUM_LOCAL_CLIENTS": ",".join(f"{key}:{secret}" for key, secret in (more_clients or {}).items()),
    }
    env.pop("MEDPLUM_LOCAL_DATA_FILE", None)
    if data_file is not None:
        # Absolute: the server runs with cwd=medplum_local/.
        env["MEDPLUM_LOCAL_DATA_FILE"] = str(Path(data_file).resolve())
    # Server output goes to the log file, or to an anonymous temporary file that is only read
    # when startup fails (a pipe nobody drains could block or break the server later).
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    server = LocalMedplum(f"http://127.0.0.1:{port}/", client_id, client_secret)
    # The parent closes its handle once the server is up; the child keeps its own descriptor.
    with log_path.open("ab+") if log_path is not None else tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [str(NODE_BINARY), str(SERVER_SCRIPT)],
            cwd=SERVER_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop_local_medplum() signals the whole group
        )
        try:
            _wait_until_healthy(server, process, output)
        except BaseException:
            stop_local_medplum(process)
            raise
    return server, process


def _wait_until_healthy(server: LocalMedplum, process: subprocess.Popen[bytes], output: IO[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)
            details = output.read().decode("utf-8", "replace")[-4000:] or "(no output)"
            raise LocalMedplumError(
                f"local Medplum server exited with code {process.returncode} during startup:\n{details}"
            )
        try:
            if httpx.get(server.base_url + "healthcheck", timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise LocalMedplumError(
        f"local Medplum server did not answer {server.base_url}healthcheck within {STARTUP_TIMEOUT_S:.0f} s"
    )


def stop_local_medplum(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM to the server's process group, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)


@contextmanager
def running_local_medplum(
    port: int | None = None,
    *,
    fhir_quota: int = 0,
    quota_window_seconds: int = 60,
    transaction_bundles: bool = True,
    token_ttl: int = 3600,
    log_path: Path | None = None,
    data_file: Path | None = None,
    points_per_second: float = 0,
    more_clients: Mapping[str, str] | None = None,
) -> Iterator[LocalMedplum]:
    """Runs the local Medplum server for the duration of the `with` block."""
    server, process = start_local_medplum(
        port,
        fhir_quota=fhir_quota,
        quota_window_seconds=quota_window_seconds,
        transaction_bundles=transaction_bundles,
        token_ttl=token_ttl,
        log_path=log_path,
        data_file=data_file,
        points_per_second=points_per_second,
        more_clients=more_clients,
    )
    try:
        yield server
    finally:
        stop_local_medplum(process)
