"""`make dev`: the Dagster UI on the migration's code location, with everything it needs.

Sets up DAGSTER_HOME (default .dagster_home/), the legacy source (LEGACY_DB_URL, else the sample at
.demo/legacy_ehr.db, generated only when it does not exist yet or with --regenerate, so the UI keeps
its data between sessions) and a Medplum server (the local one unless MEDPLUM_BASE_URL is set), then
runs `dagster dev` on workspace.yaml at http://127.0.0.1:$DAGSTER_PORT (default 3000).

Ctrl-C or SIGTERM stops `dagster dev` (SIGINT to its process group, SIGKILL after a timeout) and the
local Medplum server. `dagster dev` runs in its own process group because, started from a
non-interactive shell, it would otherwise inherit an ignored SIGINT and never stop.
"""

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

from migration_assets.commands.environment import ensure_dagster_home, ensure_legacy_source, medplum_server
from migration_assets.paths import DEFAULT_LEGACY_DB_URL, REPO_ROOT

WORKSPACE = REPO_ROOT / "workspace.yaml"
DAGSTER = Path(sys.executable).parent / "dagster"
DEFAULT_PORT = 3000
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0

_stopping = False


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    """The first SIGINT/SIGTERM unwinds main() (which stops everything); later ones only say so,
    so a second Ctrl-C cannot interrupt the shutdown half-way and leave processes behind."""
    global _stopping
    if _stopping:
        print(f"{signal.Signals(signum).name}: already stopping, please wait", file=sys.stderr, flush=True)
        return
    _stopping = True
    raise KeyboardInterrupt(signal.Signals(signum).name)


def ensure_dev_legacy_source(patients: int, regenerate: bool) -> str:
    """LEGACY_DB_URL when set; otherwise the default sample, generated only when missing (or asked)."""
    if "LEGACY_DB_URL" in os.environ:
        if regenerate:
            raise SystemExit("--regenerate only rewrites the default sample: unset LEGACY_DB_URL to use it")
        return os.environ["LEGACY_DB_URL"]
    sample = Path(DEFAULT_LEGACY_DB_URL.removeprefix("sqlite:///"))
    if sample.exists() and not regenerate:
        print(f"sample legacy EHR at {sample} (kept; --regenerate to rebuild it)")
        os.environ["LEGACY_DB_URL"] = DEFAULT_LEGACY_DB_URL
        return DEFAULT_LEGACY_DB_URL
    try:
        return ensure_legacy_source(patients)
    except BaseException:
        sample.unlink(missing_ok=True)  # a half-written sample would otherwise be kept next time
        raise


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_dagster_dev(port: int) -> subprocess.Popen[bytes]:
    """`dagster dev` in its own process group (session), with this process's environment."""
    if not DAGSTER.exists():
        raise SystemExit(f"{DAGSTER} not found: run `make setup`")
    return subprocess.Popen(
        [str(DAGSTER), "dev", "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for_ui(process: subprocess.Popen[bytes], url: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dagster dev exited with code {process.returncode} before the UI answered")
        try:
            if httpx.get(url + "/server_info", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the Dagster UI did not answer {url}/server_info within {timeout:.0f} s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGINT to the group (dagster dev then stops its webserver, daemon and code server), SIGKILL to
    whatever is left of the group after `timeout`."""
    pgid = process.pid  # start_new_session: the child leads its own group
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.poll()
        if not _group_alive(pgid):
            break
        time.sleep(0.2)
    else:
        print(f"dagster dev did not stop within {timeout:.0f} s: killing it", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    process.wait()


def run(port: int, patients: int, regenerate: bool) -> int:
    if port_in_use(port):
        raise SystemExit(f"port {port} on 127.0.0.1 is in use (another `make dev`?): set DAGSTER_PORT")
    home = ensure_dagster_home()
    ensure_dev_legacy_source(patients, regenerate)
    with medplum_server() as base_url:
        print(f"DAGSTER_HOME={home}\nMedplum: {base_url}", flush=True)
        url = f"http://127.0.0.1:{port}"
        process = start_dagster_dev(port)
        try:
            print(f"starting the Dagster UI at {url} ...", flush=True)
            wait_for_ui(process, url)
            print(f"\nDagster UI: {url}  (Ctrl-C stops it and the local Medplum server)\n", flush=True)
            return process.wait()
        finally:
            global _stopping
            _stopping = True  # from here on a signal must not interrupt the cleanup
            print("stopping dagster dev ...", flush=True)
            stop_process_group(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="store_true", help="rebuild the default sample legacy EHR")
    parser.add_argument("--patients", type=int, default=1000, help="size of a generated sample (default 1000)")
    args = parser.parse_args(argv)
    port = int(os.environ.get("DAGSTER_PORT") or DEFAULT_PORT)
    # Our own handlers, installed before any child starts: the children then get the default
    # dispositions back on exec, even when this process was started with SIGINT ignored.
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        code = run(port, args.patients, args.regenerate)
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 130
    print(f"dagster dev exited with code {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
