"""`make bench`: how fast the platform loads, against what the server can take, on one data set.

Generates the sample source (BENCH_PATIENTS patients, default 2,000, with their conditions), then
runs, each against a fresh local Medplum server:

- ceiling: pre-built batch bundles of conditional PUTs, nothing else, for a grid of batch sizes and
  concurrencies (the best is "what the server can take");
- naive: one conditional PUT per request, in sequence, on a subset;
- `medplum bulk import` (@medplum/cli, POSTs in transactions of 25: not idempotent; run twice to show it);
- the platform's loader alone (load_frame) on the same grid, and its unchanged reload;
- the platform end to end through Dagster (read, transform, validate, load, checks), first load and
  unchanged reload, the elements' runs one after another as make demo runs them;
- paced: the ceiling, the end-to-end first load and an unchanged reload again, on a server paced to
  a real Medplum's capacity (BENCH_PACED_WRITES_PER_S, default 800 plain writes a second, the top of
  the range in MEDPLUM_FACTS.md), where the local server in memory writes tens of times faster;
- transform alone (patients: source rows a second);
- the ledger alone: registering and settling LEDGER_UNITS units, in SQLite and, when
  BENCH_LEDGER_PG_URL is set, in PostgreSQL (where shards on several machines keep it);
- peak memory of the transform step and of the load step, each in its own process (as Dagster's
  multiprocess executor or a Kubernetes step runs them), for BENCH_MEMORY_PATIENTS patients with
  their conditions and encounters; the load step writes to an in-process stub Medplum, so what is
  measured is the loader's memory, not the server's.

Prints a table, writes .artifacts/bench/bench.json and .artifacts/bench/throughput.png.

Stages can be picked: `python -m migration_assets.commands.bench --stages transform,memory --patients 1000000`.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from migration_assets import config
from migration_assets.active import LOAD_ORDER, PROFILE, get_element
from migration_assets.commands.environment import quiet_dagster_warnings
from migration_assets.config import REPO_ROOT
from migration_assets.devtools.local_medplum import SERVER_DIR, LocalMedplum, running_local_medplum
from migration_assets.elements.base import POLARS_ENGINE, SourceSystem, build_frame, read_element_tables
from migration_assets.elements.files import legacy_files
from migration_assets.ledger.manifest import Attempt, Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.medplum.ratelimit import POINTS_PER_WRITE
from migration_assets.pipeline.frame_parts import FrameParts, build_frame_parts
from migration_assets.pipeline.loader import (
    LEDGER_COLUMNS,
    RECORD_FLUSH_ROWS,
    LoadSettings,
    entry_texts,
    load_frame,
    migrate,
    with_direct_references,
)
from migration_assets.source import write_tables

OUT_DIR = REPO_ROOT / ".artifacts" / "bench"
SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
# The benchmark's data, as the profile says: a root element (seed_ehr: patients) and one referencing it
# (problem_list). The end-to-end stages run the ELEMENTS chosen instead, when ELEMENTS is set.
ELEMENTS = PROFILE.bench_pair()
ROOT, CHILD = ELEMENTS
MEMORY_ELEMENTS = PROFILE.bench_memory_elements or ELEMENTS
# The grid of the ceiling and loader stages; BENCH_GRID="100x2,400x4" picks points instead.
BATCH_SIZES = (25, 100, 400)
CONCURRENCIES = (1, 2, 4)


def grid() -> list[tuple[int, int]]:
    chosen = os.environ.get("BENCH_GRID", "")
    if chosen:
        return [(int(b), int(c)) for b, c in (point.split("x") for point in chosen.split(","))]
    return [(batch_size, concurrency) for batch_size in BATCH_SIZES for concurrency in CONCURRENCIES]


NAIVE_SUBSET = 300  # patients (with their conditions) for the one-request-per-resource run
STAGES = ("transform", "ceiling", "naive", "cli", "loader", "e2e", "paced", "memory", "ledger", "shards")
# The paced stage's server: a real Medplum's capacity (MEDPLUM_FACTS.md: 50 to 800 writes a second; the
# top of that range leaves the platform's own work the largest share), counted in quota points.
PACED_WRITES_PER_S = float(os.environ.get("BENCH_PACED_WRITES_PER_S", "800"))
MEDPLUM_CLI = SERVER_DIR / "node_modules" / ".bin" / "medplum"

TARGETS = {
    "e2e_vs_ceiling": "end-to-end first load >= 90% of the ceiling",
    "unchanged_reload": "unchanged reload of 100,000 resources < 10 s with zero writes",
    "transform_rate": "transform >= 1,000,000 patient rows/s",
    "peak_memory": "peak memory < 2 GB for 1,000,000 patients with conditions and encounters",
}


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB: VmHWM (per address space, so a probe started
    from a large parent does not inherit its peak as ru_maxrss does across fork and exec), else
    getrusage's ru_maxrss (KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- data --------------------------------------------------------------------------------------------


def write_source(patients: int, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    tables = PROFILE.sample(patients)
    generated = time.perf_counter() - started
    if PROFILE.sample_files is not None:  # the documents' files, beside the source
        tables = PROFILE.sample_files(tables, f"parquet://{folder}")
    write_tables(f"parquet://{folder}", tables, PROFILE.primary_keys())
    return {
        "patients": patients,
        "rows": {name: frame.height for name, frame in tables.items()},
        "generate_seconds": round(generated, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


def element_frame(source_url: str, name: str, system: SourceSystem = SYSTEM) -> pl.DataFrame:
    element = get_element(name)
    tables = read_element_tables(element, source_url)
    with legacy_files(source_url):  # the documents' folder is the source's
        return build_frame(element, element.extract(tables), system)


def eligible(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("quarantine_rule").is_null())


# -- transform alone ---------------------------------------------------------------------------------


# Transform timings swing by a third between runs on a shared 2-core machine: each is taken this many
# times, and the best and the median are reported.
TRANSFORM_REPEATS = 3


def bench_transform(source_url: str) -> dict[str, Any]:
    element = get_element(ROOT)
    started = time.perf_counter()
    source = element.extract(read_element_tables(element, source_url))
    read = time.perf_counter() - started
    mapping, full = [], []
    for _ in range(TRANSFORM_REPEATS):
        started = time.perf_counter()
        element.transform(source.lazy(), SYSTEM).collect(engine=POLARS_ENGINE)
        mapping.append(time.perf_counter() - started)
        started = time.perf_counter()
        frame = build_frame(element, source, SYSTEM)
        full.append(time.perf_counter() - started)
        quarantined = int(frame["quarantine_rule"].is_not_null().sum())
        del frame  # no run's frame held while the next runs (omop_cdm.bench_persons.rate says why)
    mapping.sort()
    full.sort()
    middle = TRANSFORM_REPEATS // 2
    return {
        "source_rows": source.height,
        "read_seconds": round(read, 3),
        "repeats": TRANSFORM_REPEATS,
        "mapping_seconds": round(mapping[0], 3),
        "mapping_rows_per_s": round(source.height / mapping[0]),
        "mapping_rows_per_s_median": round(source.height / mapping[middle]),
        "transform_validate_hash_seconds": round(full[0], 3),
        "transform_rows_per_s": round(source.height / full[0]),
        "transform_rows_per_s_median": round(source.height / full[middle]),
        "quarantined": quarantined,
    }


# -- ceiling: pre-built bundles, nothing else ------------------------------------------------------------


def token(server: LocalMedplum) -> str:
    answer = httpx.post(
        server.token_url,
        data={"grant_type": "client_credentials", "client_id": server.client_id, "client_secret": server.client_secret},
        trust_env=False,
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def bundles(texts: list[str], batch_size: int) -> list[bytes]:
    return [
        ('{"resourceType":"Bundle","type":"batch","entry":[' + ",".join(texts[i : i + batch_size]) + "]}").encode()
        for i in range(0, len(texts), batch_size)
    ]


def send_bundles(
    server: LocalMedplum, phases: list[list[bytes]], concurrency: int, written_ids: list[str | None] | None = None
) -> tuple[float, int, int]:
    """Send each phase's bundles `concurrency` at a time (a phase ends before the next starts:
    Conditions reference Patients); seconds, entries ok, entries failed. The ids of the resources
    written are appended to `written_ids` when given."""
    headers = {"Authorization": f"Bearer {token(server)}", "Content-Type": "application/fhir+json"}
    ok = failed = 0
    with httpx.Client(base_url=server.fhir_base_url, headers=headers, timeout=300, trust_env=False) as http:

        def post(body: bytes) -> list[dict[str, Any]]:
            answer = http.post("", content=body)
            answer.raise_for_status()
            return list(answer.json()["entry"])

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for phase in phases:
                for entries in pool.map(post, phase):
                    statuses = [int(str(e["response"]["status"]).split()[0]) for e in entries]
                    ok += sum(200 <= s < 300 for s in statuses)
                    failed += sum(not 200 <= s < 300 for s in statuses)
                    if written_ids is not None:
                        written_ids.extend((e.get("resource") or {}).get("id") for e in entries)
        return time.perf_counter() - started, ok, failed


def bench_ceiling(
    texts: dict[str, list[str]], settings: list[tuple[int, int]], points_per_second: float = 0
) -> list[dict[str, Any]]:
    points = []
    total = sum(len(t) for t in texts.values())
    for batch_size, concurrency in settings:
        phases = [bundles(texts[name], batch_size) for name in ELEMENTS]
        with running_local_medplum(points_per_second=points_per_second) as server:
            seconds, ok, failed = send_bundles(server, phases, concurrency)
        points.append(
            {
                "batch_size": batch_size,
                "concurrency": concurrency,
                "resources": total,
                "ok": ok,
                "failed": failed,
                "seconds": round(seconds, 3),
                "resources_per_s": round(ok / seconds, 1),
            }
        )
        log(f"ceiling batch {batch_size:>4} x {concurrency}: {ok / seconds:8.1f} resources/s ({failed} failed)")
    return points


def bench_ceiling_direct(
    frames: dict[str, pl.DataFrame], batch_size: int, concurrency: int, points_per_second: float = 0
) -> dict[str, Any]:
    """The ceiling again, with what the platform sends by default: the Conditions' subjects as
    `Patient/<id>` (ids from the Patients' batch-response; the Conditions' bundles are built between
    the two timed phases)."""
    patients, conditions = (eligible(frames[name]) for name in ELEMENTS)
    written_ids: list[str | None] = []
    with running_local_medplum(points_per_second=points_per_second) as server:
        first, ok, failed = send_bundles(
            server, [bundles(entry_texts(patients).to_list(), batch_size)], concurrency, written_ids
        )
        ids = patients.select("resource_type", "identifier_system", "identifier_value").with_columns(
            resource_id=pl.Series(written_ids, dtype=pl.String)
        )
        direct = with_direct_references(conditions, ids)
        second, ok_then, failed_then = send_bundles(
            server, [bundles(entry_texts(direct).to_list(), batch_size)], concurrency
        )
    seconds, ok, failed = first + second, ok + ok_then, failed + failed_then
    log(f"ceiling with direct references, batch {batch_size} x {concurrency}: {ok / seconds:8.1f} resources/s")
    return {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "ok": ok,
        "failed": failed,
        "seconds": round(seconds, 3),
        "resources_per_s": round(ok / seconds, 1),
    }


# -- naive: one conditional PUT per request ----------------------------------------------------------


def bench_naive(frames: dict[str, pl.DataFrame], subset_patients: int) -> dict[str, Any]:
    patients = eligible(frames[ROOT]).head(subset_patients)
    keys = patients["identifier_value"].to_list()
    # The child's units of those patients, found by the column that ties a unit to its patient.
    tie = get_element(CHILD).patient_column or "unit_key"
    conditions = eligible(frames[CHILD]).filter(pl.col(tie).is_in(keys))
    rows = [
        row
        for frame in (patients, conditions)
        for row in frame.select("resource_type", "identifier_system", "identifier_value", "resource").iter_rows()
    ]
    with running_local_medplum() as server:
        headers = {"Authorization": f"Bearer {token(server)}", "Content-Type": "application/fhir+json"}
        ok = 0
        with httpx.Client(base_url=server.fhir_base_url, headers=headers, timeout=60, trust_env=False) as http:
            started = time.perf_counter()
            for resource_type, system, value, body in rows:
                answer = http.put(resource_type, params={"identifier": f"{system}|{value}"}, content=body.encode())
                ok += answer.status_code in (200, 201)
            seconds = time.perf_counter() - started
    log(f"naive: {ok / seconds:.1f} resources/s")
    return {"resources": len(rows), "ok": ok, "seconds": round(seconds, 3), "resources_per_s": round(ok / seconds, 1)}


# -- medplum bulk import -----------------------------------------------------------------------------


def bench_cli(frames: dict[str, pl.DataFrame], work: Path) -> dict[str, Any]:
    if not MEDPLUM_CLI.exists():
        return {
            "ran": False,
            "why": f"{MEDPLUM_CLI} not installed (make setup installs @medplum/cli as a devDependency)",
        }
    files = []
    for name in ELEMENTS:
        frame = eligible(frames[name])
        path = work / f"{frame['resource_type'][0]}.ndjson"
        path.write_text("\n".join(frame["resource"].to_list()) + "\n")
        files.append((path, frame.height))
    total = sum(n for _, n in files)
    with running_local_medplum() as server:
        home = work / "cli_home"
        home.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "HOME": str(home),
            "MEDPLUM_BASE_URL": server.base_url,
            "MEDPLUM_CLIENT_ID": server.client_id,
            "MEDPLUM_CLIENT_SECRET": server.client_secret,
        }
        node = SERVER_DIR / "node_modules" / ".bin" / "node"
        runs = []
        for attempt in (1, 2):
            started = time.perf_counter()
            errors = []
            for path, _ in files:
                done = subprocess.run(
                    [str(node), str(MEDPLUM_CLI), "bulk", "import", str(path), "--num-resources-per-request", "25"],
                    check=False,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=3600,
                )
                if done.returncode != 0:
                    errors.append(f"{path.name}: exit {done.returncode}: {last_error_line(done.stderr or done.stdout)}")
            seconds = time.perf_counter() - started
            with MedplumClient(server.base_url, server.client_id, server.client_secret) as client:
                stored = {
                    rt: int(client.get_json(rt, {"_summary": "count", "_total": "accurate"}).get("total", -1))
                    for rt in ("Patient", "Condition")
                }
            runs.append(
                {
                    "seconds": round(seconds, 3),
                    "resources_per_s": round(total / seconds, 1),
                    "stored_after": stored,
                    "errors": errors,
                }
            )
            log(f"medplum bulk import run {attempt}: {seconds:.1f} s, stored {stored}, errors {errors}")
            if attempt == 1 and errors:
                return {"ran": False, "why": "; ".join(errors)}
    return {
        "ran": True,
        "resources": total,
        "first": runs[0],
        "second": runs[1],
        "note": "POSTs in transactions of 25: not idempotent, a second run stores every resource again",
    }


def last_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "Error" in line] or output.splitlines() or [""]
    return lines[0].strip()[:300]


# -- the platform's loader alone -------------------------------------------------------------------------


def bench_loader(frames: dict[str, pl.DataFrame], work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    points = []
    reload: dict[str, Any] = {}
    total = sum(eligible(frames[name]).height for name in ELEMENTS)
    for batch_size, concurrency in grid():
        settings = LoadSettings(batch_size=batch_size, concurrency=concurrency)
        manifest_url = f"sqlite:///{work / f'loader-{batch_size}-{concurrency}.db'}"
        with running_local_medplum() as server:
            seconds, counts, _ = run_loader(server, manifest_url, frames, settings)
            point = {
                "batch_size": batch_size,
                "concurrency": concurrency,
                "resources": total,
                "created": counts["created"],
                "failed": counts["failed"],
                "seconds": round(seconds, 3),
                "resources_per_s": round(counts["created"] / seconds, 1),
            }
            if not reload:
                again, counts, requests = run_loader(server, manifest_url, frames, settings, run_id="reload")
                reload = {
                    "resources": total,
                    "seconds": round(again, 3),
                    "requests": requests,
                    "sent": counts["sent"],
                    "not_sent_unchanged": counts["not_sent_unchanged"],
                }
        points.append(point)
        log(f"loader  batch {batch_size:>4} x {concurrency}: {point['resources_per_s']:8.1f} resources/s")
    return points, reload


def run_loader(
    server: LocalMedplum,
    manifest_url: str,
    frames: dict[str, pl.DataFrame],
    settings: LoadSettings,
    run_id: str = "bench",
) -> tuple[float, dict[str, int], int]:
    totals: dict[str, int] = {}
    with (
        MedplumClient(server.base_url, server.client_id, server.client_secret) as client,
        Manifest(manifest_url) as manifest,
    ):
        started = time.perf_counter()
        for name in ELEMENTS:
            result = load_frame(client, manifest, run_id, get_element(name), frames[name], settings)
            for key, value in result.counts.items():
                totals[key] = totals.get(key, 0) + value
        return time.perf_counter() - started, totals, client.stats.requests


# -- end to end through Dagster --------------------------------------------------------------------------


# The first load, then two unchanged reloads. The second shows the steady state: its checks' census
# reads only what changed since the first reload's, where the first reload re-reads the last seconds
# of the first load.
E2E_PHASES = ("first", "reload", "reload_again")


def bench_e2e(
    source_url: str,
    work: Path,
    batch_size: int,
    concurrency: int,
    points_per_second: float = 0,
    phases: tuple[str, ...] = E2E_PHASES,
) -> dict[str, Any]:

    from migration_assets.definitions import make_definitions
    from migration_assets.pipeline.resources import MedplumResource, build_resources

    report: dict[str, Any] = {"batch_size": batch_size, "concurrency": concurrency}
    with (
        running_local_medplum(points_per_second=points_per_second) as server,
        tempfile.TemporaryDirectory(dir=work) as home,
    ):
        state = Path(home)  # the run's own ledger, evidence and frames: each call starts afresh
        resources = build_resources(
            medplum=MedplumResource(
                base_url=server.base_url, client_id=server.client_id, client_secret=server.client_secret
            ),
            legacy_db_url=source_url,
            manifest_db_url=f"sqlite:///{state / 'manifest.db'}",
            work_dir=state,
            batch_size=batch_size,
            concurrency=concurrency,
        )
        job = make_definitions(resources).resolve_job_def("migrate_data_element")
        with bench_instance(home) as instance:
            for label in phases:
                phase: dict[str, Any] = {}
                started = time.perf_counter()
                # One after another, as make demo runs them (the remote bench launches them as a backfill:
                # run_elements): threads of one process would share the interpreter between one element's
                # checks and the next one's load, which their own processes do not (88-89% of the paced
                # ceiling at 35,000 patients that way, against 90% one after another).
                phase["elements"] = {
                    name: run_element(job, instance, name)
                    for name in (LOAD_ORDER if config.element_selection() else ELEMENTS)
                }
                phase["seconds"] = round(time.perf_counter() - started, 3)
                for key in ("load_step_seconds", "after_load_check_seconds", "loaded", "sent", "resubmitted_by_checks"):
                    phase[key] = round(sum(e[key] for e in phase["elements"].values()), 3)
                phase["ok"] = all(e["ok"] for e in phase["elements"].values())
                report[label] = phase
                log(
                    f"e2e {label}: {phase['seconds']:.1f} s, load steps {phase['load_step_seconds']:.1f} s, "
                    f"sent {phase['sent']}, ok={phase['ok']}"
                )
    first = report["first"]
    report["first"]["resources_per_s"] = round(first["loaded"] / first["seconds"], 1)
    report["first"]["load_step_resources_per_s"] = round(first["loaded"] / first["load_step_seconds"], 1)
    return report


# Runs at once, as a backfill of every element launches them on an instance whose run queue takes two
# (dagster.postgres.yaml, make dev): an element's run starts once the one before it has started, and its
# blocking prerequisite check waits for the loads it needs (pipeline/waiting.py).
RUNS_AT_ONCE = 2


# The runs in threads of one process share its standard output, and Dagster's capture of a run's output
# (a dup2 of the descriptor) would leave it in one run's log file: the bench's runs keep no step logs.
_NO_STEP_LOGS = {
    "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}
}


def bench_instance(home: str) -> Any:
    """A Dagster instance (SQLite, in `home`) for runs launched by run_elements."""
    from dagster import DagsterInstance

    return DagsterInstance.local_temp(tempdir=home, overrides=_NO_STEP_LOGS)


def run_elements(job: Any, instance: Any, names: Collection[str]) -> dict[str, dict[str, Any]]:
    """Each element's run (run_element), launched in load order as a backfill launches them."""
    from dagster import DagsterRunStatus, RunsFilter

    from migration_assets.pipeline.partitions import PARTITION_TAG

    launched = [s for s in DagsterRunStatus if s not in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED)]
    runs = {}
    with ThreadPoolExecutor(max_workers=RUNS_AT_ONCE, thread_name_prefix="run") as pool:
        for name in names:
            of_element = RunsFilter(tags={PARTITION_TAG: name}, statuses=launched)
            before = len(instance.get_runs(of_element))
            runs[name] = pool.submit(run_element, job, instance, name)
            while len(instance.get_runs(of_element)) == before and not runs[name].done():
                time.sleep(0.02)
    return {name: run.result() for name, run in runs.items()}


def run_element(job: Any, instance: Any, name: str) -> dict[str, Any]:
    from dagster import DagsterEventType

    started = time.perf_counter()
    result = job.execute_in_process(
        partition_key=name,
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    seconds = time.perf_counter() - started
    steps: dict[str, float] = {}
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    for record in instance.all_logs(result.run_id, of_type=kinds):
        event = record.dagster_event
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        else:
            ends[event.step_key] = record.timestamp
            steps[event.step_key] = round(record.timestamp - starts.get(event.step_key, record.timestamp), 3)
    # The load is the graph medplum_resources' shard steps: from the first one's start to the last one's end
    # (its plan_shards step may run while the run still waits for a prerequisite's load).
    load_steps = [key for key in steps if key.startswith("medplum_resources.load_shard")]
    load_seconds = (
        max(ends[key] for key in load_steps) - min(starts.get(key, ends[key]) for key in load_steps)
        if load_steps
        else 0.0
    )
    counts = {}
    for materialization in result.asset_materializations_for_node("medplum_resources"):
        counts = {k: v.value for k, v in materialization.metadata.items() if isinstance(v.value, int)}
    evaluations = result.get_asset_check_evaluations()
    checks = {e.check_name: e.passed for e in evaluations}
    # What the idempotency check resubmitted (updates by id: writes, though they change nothing).
    reload_checks = [e.metadata for e in evaluations if e.check_name == "idempotent_reload"]
    resubmitted = sum(int(m["sent"].value) for m in reload_checks if "sent" in m)
    return {
        "ok": result.success and all(checks.values()),
        "seconds": round(seconds, 3),
        "steps": steps,
        "load_step_seconds": round(load_seconds, 3),
        # The checks of the loaded resources and the report: they read Medplum back.
        "after_load_check_seconds": round(
            sum(
                seconds
                for step, seconds in steps.items()
                if step.startswith("medplum_resources_") or step == "reconciliation_report"
            ),
            3,
        ),
        "loaded": int(counts.get("created", 0)) + int(counts.get("updated", 0)) + int(counts.get("unchanged", 0)),
        "sent": int(counts.get("sent", 0)),
        "resubmitted_by_checks": resubmitted,
        "checks": checks,
        "quota_points": int(counts.get("quota_points", 0)),
        "check_write_points": resubmitted * POINTS_PER_WRITE,
    }


# -- the ledger alone ---------------------------------------------------------------------------------

LEDGER_UNITS = 20_000


def bench_ledger(work: Path) -> dict[str, Any]:
    """Seconds to register LEDGER_UNITS units, record their outcomes (2,000 at a time, as the loader
    flushes them) and read them back, in SQLite and, with BENCH_LEDGER_PG_URL, in PostgreSQL."""
    urls = {"sqlite": f"sqlite:///{work / 'ledger.db'}"}
    if os.environ.get("BENCH_LEDGER_PG_URL"):
        urls["postgresql"] = os.environ["BENCH_LEDGER_PG_URL"]
    keys = [f"P{number:07d}" for number in range(LEDGER_UNITS)]
    frame = pl.DataFrame(
        {
            "source_table": "patients",
            "unit_key": keys,
            "resource_type": "Patient",
            "identifier_system": SYSTEM.identifier_system("patient"),
            "identifier_value": keys,
            "quarantine_rule": None,
            "quarantine_reason": None,
        },
        schema_overrides={"quarantine_rule": pl.String, "quarantine_reason": pl.String},
    )
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}
    measured = {}
    for name, url in urls.items():
        element = f"bench-{uuid.uuid4().hex[:8]}"  # a fresh element in a ledger that may hold others
        with Manifest(url) as manifest:
            started = time.perf_counter()
            manifest.register_units("bench", element, frame, pl.Series([True] * LEDGER_UNITS))
            registered = time.perf_counter() - started
            started = time.perf_counter()
            for start in range(0, LEDGER_UNITS, RECORD_FLUSH_ROWS):
                chunk = [
                    Attempt("patients", key, 1, number, 201, f"Patient/{key}/_history/1", outcome, "0" * 64)
                    for number, key in enumerate(keys[start : start + RECORD_FLUSH_ROWS])
                ]
                manifest.record_results(
                    "bench",
                    element,
                    chunk,
                    [True] * len(chunk),
                    [a.unit_key for a in chunk],
                    ["1"] * len(chunk),
                    [None] * len(chunk),
                )
            recorded = time.perf_counter() - started
            started = time.perf_counter()
            manifest.units(element, LEDGER_COLUMNS)  # what a load reads before it sends
            read = time.perf_counter() - started
        measured[name] = {
            "units": LEDGER_UNITS,
            "register_seconds": round(registered, 2),
            "record_seconds": round(recorded, 2),
            "read_seconds": round(read, 3),
            "units_per_s": round(LEDGER_UNITS / (registered + recorded)),
        }
        log(f"ledger {name}: {measured[name]}")
    return measured


# -- memory: each step in its own process ----------------------------------------------------------------


class StubMedplum:
    """An in-process Medplum that answers every batch entry 201: the load step's own memory and CPU,
    without a server."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "stub", "expires_in": 3600})
        if request.method == "GET":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})
        count = len(json.loads(request.content)["entry"])
        entries = [
            {"response": {"status": "201 Created", "location": f"X/{uuid.uuid4()}/_history/1"}} for _ in range(count)
        ]
        return httpx.Response(
            200,
            json={"resourceType": "Bundle", "type": "batch-response", "entry": entries},
            headers={"RateLimit": '"fhirInteractions";r=50000;t=60'},
        )


# The three steps of a data element as Dagster runs them, each in its own process: the legacy_source
# step (read and join the source tables), the fhir_frames step (built in parts from the stored source)
# and the medplum_resources step (the parts sent one at a time).


def probe_extract(source_url: str, element_name: str, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    element = get_element(element_name)
    with legacy_files(source_url):
        rows = element.extract(read_element_tables(element, source_url))
    rows.write_parquet(out)  # what the IO manager does with the legacy_source output
    return {"rows": rows.height, "seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(rss_mb())}


def probe_transform(source_path: Path, element_name: str, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    parts = build_frame_parts(get_element(element_name), pl.scan_parquet(source_path), SYSTEM, out)
    return {
        "rows": parts.height,
        "parts": len(parts),
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(rss_mb()),
    }


def probe_load(parts_path: Path, element_name: str, manifest_url: str) -> dict[str, Any]:
    started = time.perf_counter()
    element = get_element(element_name)
    client = MedplumClient("http://stub/", "stub", "stub", transport=httpx.MockTransport(StubMedplum()))
    with client, Manifest(manifest_url) as manifest:
        # Prerequisites are found in the probe's own ledger (the stub holds nothing to search).
        result = migrate(
            client,
            manifest,
            f"probe-{element_name}",
            element,
            FrameParts(parts_path),
            "probe",
            LoadSettings(batch_size=element.batch_size, concurrency=element.concurrency),
        )
    return {
        "rows": result.counts["source_rows"],
        "sent": result.counts["sent"],
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(rss_mb()),
    }


def bench_memory(patients: int, work: Path) -> dict[str, Any]:
    folder = work / f"memory-source-{patients}"
    generated = run_probe(["generate", str(patients), str(folder)])
    log(f"memory: source of {patients} patients written in {generated['seconds']} s ({generated['peak_rss_mb']} MB)")
    steps = {}
    manifest_url = f"sqlite:///{work / f'memory-manifest-{patients}.db'}"
    for name in MEMORY_ELEMENTS:
        source_path, parts_path = work / f"memory-{name}-source.parquet", work / f"memory-{name}-frame"
        shutil.rmtree(parts_path, ignore_errors=True)
        extract = run_probe(["extract", f"parquet:///{folder}", name, str(source_path)])
        transform = run_probe(["transform", str(source_path), name, str(parts_path)])
        load = run_probe(["load", str(parts_path), name, manifest_url])
        steps[name] = {"extract": extract, "transform": transform, "load": load}
        log(
            f"memory {name}: {transform['rows']} rows in {transform['parts']} parts; extract "
            f"{extract['peak_rss_mb']} MB, transform {transform['peak_rss_mb']} MB ({transform['seconds']} s), "
            f"load {load['peak_rss_mb']} MB ({load['seconds']} s)"
        )
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "patients": patients,
        "source": generated,
        "steps": steps,
        **{
            f"peak_{step}_mb": max(s[step]["peak_rss_mb"] for s in steps.values())
            for step in ("extract", "transform", "load")
        },
    }


def run_probe(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "migration_assets.commands.bench", "--probe", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=7200,
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe {args} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def probe_main(args: list[str]) -> int:
    kind, *rest = args
    if kind == "generate":
        answer = write_source(int(rest[0]), Path(rest[1]))
        answer["peak_rss_mb"] = round(rss_mb())
    elif kind == "extract":
        answer = probe_extract(rest[0], rest[1], Path(rest[2]))
    elif kind == "transform":
        answer = probe_transform(Path(rest[0]), rest[1], Path(rest[2]))
    elif kind == "transform-rate":
        answer = bench_transform(rest[0])
    else:
        answer = probe_load(Path(rest[0]), rest[1], rest[2])
    print(json.dumps(answer))
    return 0


# -- report ------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def best(points: list[dict[str, Any]]) -> dict[str, Any]:
    return max(points, key=lambda p: p["resources_per_s"])


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, figure, note) rows for the printed table."""
    rows: list[tuple[str, str, str]] = []
    ceiling = best(report["ceiling"]) if report.get("ceiling") else None
    if ceiling:
        rows.append(
            (
                "ceiling (pre-built batches of conditional PUTs)",
                f"{ceiling['resources_per_s']:,.0f} res/s",
                f"batch {ceiling['batch_size']} x {ceiling['concurrency']} in flight",
            )
        )
    if report.get("ceiling_direct"):
        rows.append(
            (
                "ceiling, references to Patients direct",
                f"{report['ceiling_direct']['resources_per_s']:,.0f} res/s",
                "as the platform sends them (direct_references on)",
            )
        )
    if "naive" in report:
        n = report["naive"]
        rows.append(
            (
                "naive: one conditional PUT per request",
                f"{n['resources_per_s']:,.0f} res/s",
                f"{n['resources']} resources in sequence",
            )
        )
    if "cli" in report:
        c = report["cli"]
        if c["ran"]:
            rows.append(
                (
                    "medplum bulk import (@medplum/cli)",
                    f"{c['first']['resources_per_s']:,.0f} res/s",
                    f"POSTs; rerun left {c['second']['stored_after']}"
                    + (f", failed: {c['second']['errors'][0][:70]}" if c["second"]["errors"] else ""),
                )
            )
        else:
            rows.append(("medplum bulk import (@medplum/cli)", "did not run", c["why"][:100]))
    if report.get("loader"):
        b = best(report["loader"])
        rows.append(
            (
                "platform loader alone (load_frame)",
                f"{b['resources_per_s']:,.0f} res/s",
                f"batch {b['batch_size']} x {b['concurrency']}"
                + (f"; {b['resources_per_s'] / ceiling['resources_per_s']:.0%} of ceiling" if ceiling else ""),
            )
        )
        r = report["loader_reload"]
        rows.append(
            (
                "platform loader, unchanged reload",
                f"{r['seconds']:.2f} s",
                f"{r['resources']} resources, {r['requests']} requests",
            )
        )
    if "e2e" in report:
        e = report["e2e"]
        first = e["first"]
        rows.append(
            (
                "platform end to end, first load (with checks)",
                f"{first['resources_per_s']:,.0f} res/s",
                f"{first['seconds']:.1f} s"
                + (f" = {first['resources_per_s'] / ceiling['resources_per_s']:.0%} of ceiling" if ceiling else ""),
            )
        )
        without = first["loaded"] / (first["seconds"] - first["after_load_check_seconds"])
        rows.append(
            (
                "  the same without the after-load checks",
                f"{without:,.0f} res/s",
                f"checks {first['after_load_check_seconds']:.1f} s"
                + (f"; {without / ceiling['resources_per_s']:.0%} of ceiling" if ceiling else ""),
            )
        )
        rows.append(
            (
                "  its load steps alone",
                f"{first['load_step_resources_per_s']:,.0f} res/s",
                f"{first['load_step_seconds']:.1f} s"
                + (
                    f" = {first['load_step_resources_per_s'] / ceiling['resources_per_s']:.0%} of ceiling"
                    if ceiling
                    else ""
                ),
            )
        )
        for label, what in (("reload", "unchanged reload"), ("reload_again", "unchanged reload again")):
            again = e[label]
            rows.append(
                (
                    f"platform end to end, {what}",
                    f"{again['seconds']:.1f} s",
                    (
                        f"sent {again['sent']}, resubmitted by the checks {again['resubmitted_by_checks']}; "
                        f"load steps {again['load_step_seconds']:.2f} s, "
                        f"checks {again['after_load_check_seconds']:.2f} s"
                    ),
                )
            )
    if "paced" in report:
        p = report["paced"]
        top = max(p["ceiling"]["resources_per_s"], p["ceiling_direct"]["resources_per_s"])
        rows.append(
            (
                f"server paced to {p['writes_per_s']:,.0f} writes/s ({p['points_per_second']:,.0f} points/s): ceiling",
                f"{top:,.0f} res/s",
                (
                    f"the better of conditional ({p['ceiling']['resources_per_s']:,.0f}) and direct "
                    f"({p['ceiling_direct']['resources_per_s']:,.0f}) references"
                ),
            )
        )
        first = p["e2e"]["first"]
        rows.append(
            (
                "  platform end to end, first load (with checks)",
                f"{first['resources_per_s']:,.0f} res/s",
                (
                    f"{first['seconds']:.1f} s = {first['resources_per_s'] / top:.0%} of that ceiling; "
                    f"load steps {first['load_step_resources_per_s'] / top:.0%}; the checks resubmitted "
                    f"{first['resubmitted_by_checks']:,}"
                ),
            )
        )
        again = p["e2e"]["reload"]
        rows.append(
            (
                "  platform end to end, unchanged reload",
                f"{again['seconds']:.1f} s",
                f"sent {again['sent']}, resubmitted by the checks {again['resubmitted_by_checks']}",
            )
        )
    if "transform" in report:
        t = report["transform"]
        rows.append(
            (
                "transform alone, patients (mapping, rules, pandera, content hash)",
                f"{t['transform_rows_per_s']:,.0f} rows/s",
                f"{t['source_rows']:,} rows, best of {t['repeats']}; median {t['transform_rows_per_s_median']:,.0f}",
            )
        )
        rows.append(
            (
                "  the mapping alone",
                f"{t['mapping_rows_per_s']:,.0f} rows/s",
                f"median {t['mapping_rows_per_s_median']:,.0f}",
            )
        )
    if "memory" in report:
        m = report["memory"]
        rows.append(
            (
                f"peak memory, {m['patients']:,} patients + conditions + encounters",
                f"{max(m['peak_extract_mb'], m['peak_transform_mb'], m['peak_load_mb']):,} MB",
                (
                    f"extract step {m['peak_extract_mb']} MB, transform step {m['peak_transform_mb']} MB, "
                    f"load step {m['peak_load_mb']} MB"
                ),
            )
        )
    for name, ledger in report.get("ledger", {}).items():
        rows.append(
            (
                f"ledger in {name}",
                f"{ledger['units_per_s']:,.0f} units/s",
                (
                    f"{ledger['units']:,} units registered in {ledger['register_seconds']} s, outcomes recorded in "
                    f"{ledger['record_seconds']} s, read back in {ledger['read_seconds']} s"
                ),
            )
        )
    rows.append(("peak memory of this bench process", f"{rss_mb():,.0f} MB", "ru_maxrss"))
    return rows


def print_table(rows: list[tuple[str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for key, style, label in (("ceiling", "-", "ceiling"), ("loader", "--", "platform loader")):
        for concurrency in CONCURRENCIES:
            points = sorted(
                (p for p in report.get(key, []) if p["concurrency"] == concurrency), key=lambda p: p["batch_size"]
            )
            if points:
                axis.plot(
                    [p["batch_size"] for p in points],
                    [p["resources_per_s"] for p in points],
                    style,
                    marker="o",
                    label=f"{label}, {concurrency} in flight",
                )
    if "naive" in report:
        axis.axhline(report["naive"]["resources_per_s"], color="grey", linestyle=":", label="naive (1 PUT/request)")
    axis.set_xscale("log")
    axis.set_xlabel("batch size (entries per bundle)")
    axis.set_ylabel("resources / s")
    axis.set_title(f"Load throughput on the local Medplum server, {report['patients']:,} patients")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        return probe_main(argv[1:])
    quiet_dagster_warnings()
    if os.environ.get("BENCH_TARGET", "local") == "remote":
        from migration_assets.commands import bench_remote

        remote_stages = os.environ.get("BENCH_STAGES") or ",".join(bench_remote.STAGES)
        return bench_remote.run(int(os.environ.get("BENCH_PATIENTS", "500")), remote_stages.split(","))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=int(os.environ.get("BENCH_PATIENTS", "2000")))
    parser.add_argument(
        "--memory-patients",
        type=int,
        default=int(os.environ.get("BENCH_MEMORY_PATIENTS", "0")),
        help="patients for the memory probe (default: --patients)",
    )
    parser.add_argument("--stages", default=os.environ.get("BENCH_STAGES", ",".join(STAGES)))
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "patients": args.patients,
        "stages": stages,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "targets": TARGETS,
    }
    with work_dir(args.out) as work:
        if set(stages) - {"memory", "ledger"}:
            source = work / "source"
            report["source"] = write_source(args.patients, source)
            source_url = f"parquet:///{source}"
            log(f"source: {report['source']['rows']}")
        # The built frames and their entry texts (gigabytes at a million patients) only for the stages
        # that send them: the transform is timed in a process that holds no more than its own work.
        if set(stages) & {"ceiling", "naive", "cli", "loader", "paced"}:
            frames = {name: element_frame(source_url, name) for name in ELEMENTS}
            texts = {name: entry_texts(eligible(frames[name])).to_list() for name in ELEMENTS}
            report["resources"] = {name: len(t) for name, t in texts.items()}
        for stage, run in stage_runners(locals()).items():
            if stage in stages:
                run(report)
    rows = summary_rows(report)
    report["table"] = [list(row) for row in rows]
    report["peak_rss_mb"] = round(rss_mb())
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    if report.get("ceiling") or report.get("loader"):
        plot(report, args.out / "throughput.png")
    print()
    print_table(rows)
    print(
        f"\nwrote {args.out / 'bench.json'}"
        + (f" and {args.out / 'throughput.png'}" if report.get("ceiling") or report.get("loader") else "")
    )
    return 0


def stage_runners(scope: dict[str, Any]) -> dict[str, Callable[[dict[str, Any]], None]]:
    args, work = scope["args"], scope["work"]

    def transform(report: dict[str, Any]) -> None:
        # In a process of its own, as the fhir_frames step runs: this one holds what generating the
        # sample left behind.
        report["transform"] = run_probe(["transform-rate", scope["source_url"]])
        log(f"transform: {report['transform']}")

    def tuned(report: dict[str, Any]) -> tuple[int, int]:
        # The ceiling's best setting; without the ceiling stage, the first BENCH_GRID point (else 100 x 2).
        if report.get("ceiling"):
            top = best(report["ceiling"])
            return top["batch_size"], top["concurrency"]
        return grid()[0] if os.environ.get("BENCH_GRID") else (100, 2)

    def ceiling(report: dict[str, Any]) -> None:
        report["ceiling"] = bench_ceiling(scope["texts"], grid())
        report["ceiling_direct"] = bench_ceiling_direct(scope["frames"], *tuned(report))

    def naive(report: dict[str, Any]) -> None:
        report["naive"] = bench_naive(scope["frames"], NAIVE_SUBSET)

    def cli(report: dict[str, Any]) -> None:
        report["cli"] = bench_cli(scope["frames"], work)

    def loader(report: dict[str, Any]) -> None:
        report["loader"], report["loader_reload"] = bench_loader(scope["frames"], work)

    def e2e(report: dict[str, Any]) -> None:
        report["e2e"] = bench_e2e(scope["source_url"], work, *tuned(report))

    def paced(report: dict[str, Any]) -> None:
        # The ceiling and the first load again, on a server paced to a real Medplum's capacity.
        points_per_second = PACED_WRITES_PER_S * POINTS_PER_WRITE
        setting = tuned(report)
        report["paced"] = {
            "writes_per_s": PACED_WRITES_PER_S,
            "points_per_second": points_per_second,
            "ceiling": bench_ceiling(scope["texts"], [setting], points_per_second)[0],
            "ceiling_direct": bench_ceiling_direct(scope["frames"], *setting, points_per_second),
            "e2e": bench_e2e(scope["source_url"], work, *setting, points_per_second, phases=("first", "reload")),
        }

    def memory(report: dict[str, Any]) -> None:
        report["memory"] = bench_memory(args.memory_patients or args.patients, work)

    def ledger(report: dict[str, Any]) -> None:
        report["ledger"] = bench_ledger(work)

    def shards(report: dict[str, Any]) -> None:
        # One launch, in process, in 2 and 4 shards on local processes and on 2 Celery workers (bench_shards.py).
        from migration_assets.commands.bench_shards import bench_shards

        report["shards"] = bench_shards(scope["source_url"], work, PACED_WRITES_PER_S * POINTS_PER_WRITE)
        for point in report["shards"]:
            log(f"shards: {point}")

    return {
        "transform": transform,
        "ceiling": ceiling,
        "naive": naive,
        "cli": cli,
        "loader": loader,
        "e2e": e2e,
        "paced": paced,
        "memory": memory,
        "ledger": ledger,
        "shards": shards,
    }


@contextmanager
def work_dir(out: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
