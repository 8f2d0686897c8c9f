"""`make soak`: a long run of the whole migration against the local Medplum server with its FHIR quota on.

Generates a sample legacy EHR of `--patients` patients (Parquet, in a work folder of its own: the demo's
`.demo/` is not touched), starts a fresh local Medplum server (memory only) with the FHIR quota on, and
migrates every data element in load order through the real Dagster job `migrate_data_element` on a
Dagster instance of its own (a temporary DAGSTER_HOME), with every check. Once a second a sampler
thread records:

- the resident memory (VmRSS) of this Python process, where the in-process executor runs every step,
  and of the Node server, separately;
- the bundle entries Medplum answered so far, by outcome: created (201), other successes (200: updates
  and the unchanged resubmissions of the idempotency check), refused with 429, other failures. They are
  counted where the client parses each batch answer, resends included, so the count is exact and costs
  a few additions per bundle;
- the client's request statistics (requests, retries, entries resent, rate-limited answers).

Afterwards it reads each element's books from the manifest (source units = successful + rejected +
skipped + quarantined, nothing pending) and prints per-minute throughput, memory over time (min, median,
max, slope), 429s and resends, the books and the check results. It writes `soak.json` and `soak.png`
under `--out` (default .artifacts/soak/) and exits non-zero if a run or a check failed or the books do
not balance.

The quota: the local server charges a conditional PUT that creates inside a batch 140 points (a search
twice and a write), 20 more per conditional reference it resolves, and an unchanged resubmission 120 or
more; the loader budgets 150 points a write and paces itself from the `RateLimit` header. Medplum's
default (50,000 points a minute, about 330 creates a minute) would take some 50 hours for the default
50,000 patients (about 960,000 resources), so the soak's default is 7,500,000 points a minute (about
50,000 writes a minute): under half of what the loader and the local server manage on this 2-core
machine, so it binds, yet the default run finishes in under an hour (docs/soak.md). The idempotency
check resubmits a seeded sample of 2,000 bundle groups per element (--idempotency-sample; 0 = the whole
partition, which doubles the writes).
The Node server gets --max-old-space-size=8192 (unless NODE_OPTIONS is set): its store lives in its heap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from migration_assets.commands.environment import environment, quiet_dagster_warnings
from migration_assets.config import REPO_ROOT
from migration_assets.devtools.local_medplum import start_local_medplum, stop_local_medplum
from migration_assets.medplum import EntryResponse, MedplumClient
from migration_assets.medplum.client import observed_by

OUT_DIR = REPO_ROOT / ".artifacts" / "soak"
# Points per client per quota window (see the module docstring and docs/soak.md for the choice).
DEFAULT_QUOTA = 7_500_000
DEFAULT_WINDOW_SECONDS = 60
NODE_HEAP_MB = 8192
# Bundle groups the idempotent_reload check resubmits per element: a seeded sample, as against a hosted
# Medplum where every resubmitted entry costs quota (0 = the whole partition, which doubles the writes).
DEFAULT_IDEMPOTENCY_SAMPLE = 2_000
DISPOSITIONS_COUNTED = ("successful", "rejected", "skipped", "quarantined", "pending")
# A per-minute throughput is called steady when its coefficient of variation over the full minutes of
# loading stays under this.
STEADY_CV = 0.15
# Memory is called flat when this process's resident memory at the end of the last element is within
# this much of its value at the end of the first (what each element leaves behind, not its peak).
FLAT_GROWTH_MB = 200.0


# -- what the server answered ------------------------------------------------------------------------


@dataclass
class Tally:
    """Running totals, updated by the client's threads and read by the sampler."""

    created: int = 0
    other_ok: int = 0
    throttled: int = 0  # entries answered 429 inside a batch
    failed: int = 0  # entries answered another 4xx/5xx
    bundles: int = 0
    requests: int = 0
    retries: int = 0
    entries_resent: int = 0
    rate_limited: int = 0  # the client's count: rounds of resends after 429s, and requests answered 429
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {name: getattr(self, name) for name in TALLY_FIELDS}


TALLY_FIELDS = (
    "created",
    "other_ok",
    "throttled",
    "failed",
    "bundles",
    "requests",
    "retries",
    "entries_resent",
    "rate_limited",
)


def _count_entry(tally: Tally, status: int, inner: list[Any]) -> None:
    if inner:  # a transaction: one resource per inner entry
        for response in inner:
            _count_entry(tally, response.status, [])
    elif status == 201:
        tally.created += 1
    elif 200 <= status < 300:
        tally.other_ok += 1
    elif status == 429:
        tally.throttled += 1
    else:
        tally.failed += 1


class TallyObserver:
    """Adds what the Medplum clients report (their batch answers and request statistics) to a tally.
    Measurement only: what the clients return is unchanged."""

    COUNTED = ("requests", "retries", "entries_resent", "rate_limited")

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def answered(self, entries: Sequence[EntryResponse]) -> None:
        with self.tally.lock:
            self.tally.bundles += 1
            for entry in entries:
                _count_entry(self.tally, entry.status, entry.inner_responses() if entry.ok else [])

    def counted(self, increments: Mapping[str, int]) -> None:
        with self.tally.lock:
            for name, value in increments.items():
                if name in self.COUNTED:
                    setattr(self.tally, name, getattr(self.tally, name) + value)


# -- the sampler ---------------------------------------------------------------------------------------


def resident_mb(pid: int | str = "self") -> float | None:
    """Current resident memory (VmRSS) of a process in MB; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class Sampler(threading.Thread):
    """Once a second: elapsed seconds, both processes' memory, the tally and the element being run."""

    def __init__(self, tally: Tally, node_pid: int, interval: float = 1.0) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.tally, self.node_pid, self.interval = tally, node_pid, interval
        self.samples: list[dict[str, Any]] = []
        self.element = ""
        self.started = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self._halt.is_set():
            self.take()
            tick += 1
            self._halt.wait(max(0.0, self.started + tick * self.interval - time.monotonic()))

    def take(self) -> None:
        sample: dict[str, Any] = {
            "t": round(time.monotonic() - self.started, 2),
            "element": self.element,
            "python_rss_mb": _round(resident_mb()),
            "node_rss_mb": _round(resident_mb(self.node_pid)),
        }
        sample.update(self.tally.snapshot())
        self.samples.append(sample)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.take()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- one data element ------------------------------------------------------------------------------------


@dataclass
class ElementRun:
    element: str
    seconds: float = 0.0
    run_ok: bool = False
    error: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    books: dict[str, Any] = field(default_factory=dict)
    python_rss_after_mb: float | None = None

    @property
    def checks_ok(self) -> bool:
        return bool(self.checks) and all(check["passed"] for check in self.checks.values())

    @property
    def ok(self) -> bool:
        return self.run_ok and self.checks_ok and bool(self.books.get("balanced"))


def run_element(element: str, instance: Any, defs: Any) -> ElementRun:
    """One run of `migrate_data_element` for one partition, keeping the counts and every check's result."""
    from migration_assets.commands.demo import QUIET_CONSOLE, SUMMARY_COUNTS

    run = ElementRun(element)
    started = time.monotonic()
    result = defs.resolve_job_def("migrate_data_element").execute_in_process(
        partition_key=element, instance=instance, raise_on_error=False, run_config=QUIET_CONSOLE
    )
    run.seconds = round(time.monotonic() - started, 1)
    run.run_ok = result.success
    for materialization in result.asset_materializations_for_node("medplum_resources"):
        run.counts = {
            name: int(value.value)
            for name, value in materialization.metadata.items()
            if name in (*SUMMARY_COUNTS, "http_requests", "http_retries", "entries_resent")
            and isinstance(value.value, int)
        }
    for evaluation in result.get_asset_check_evaluations():
        run.checks[evaluation.check_name] = {
            "passed": bool(evaluation.passed),
            "description": evaluation.description or "",
        }
    if not result.success:
        failure = next((event for event in result.all_events if event.is_step_failure), None)
        error = failure.step_failure_data.error if failure else None
        while error is not None and error.cause is not None:
            error = error.cause
        run.error = error.message.strip()[:2000] if error else "run failed"
    return run


def books(element: str, frames_dir: Path, manifest_url: str, target: str) -> dict[str, Any]:
    """The element's books read straight from the manifest, against the units of its FHIR frame:
    source units = successful + rejected + skipped + quarantined, nothing pending or unrecorded."""
    from migration_assets.ledger.manifest import Manifest
    from migration_assets.pipeline.frame_parts import FrameParts

    # The FHIR frame is stored as parts (a directory); see frame_parts.py.
    frame_path = frames_dir / "fhir_frames" / element
    if not frame_path.is_dir():
        return {"balanced": False, "why": f"no FHIR frame at {frame_path}"}
    units = FrameParts(frame_path).read(["source_table", "unit_key"])
    with Manifest(manifest_url, target) as ledger:
        ledger_units = ledger.units(element, ["source_table", "unit_key", "disposition"])
    joined = units.join(ledger_units, on=["source_table", "unit_key"], how="left")
    figures: dict[str, Any] = {"source_units": units.height}
    for name in DISPOSITIONS_COUNTED:
        figures[name] = int((joined["disposition"] == name).sum())
    figures["unrecorded"] = int(joined["disposition"].is_null().sum())
    settled = sum(figures[name] for name in ("successful", "rejected", "skipped", "quarantined"))
    figures["balanced"] = (
        settled == units.height
        and figures["pending"] == 0
        and figures["unrecorded"] == 0
        and joined.height == units.height
    )
    return figures


# -- the figures ------------------------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB a minute."""
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def memory_figures(samples: list[dict[str, Any]], key: str) -> dict[str, float]:
    points = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
    values = [v for _, v in points]
    if not values:
        return {}
    return {
        "min_mb": round(min(values), 1),
        "median_mb": round(statistics.median(values), 1),
        "max_mb": round(max(values), 1),
        "first_mb": round(values[0], 1),
        "last_mb": round(values[-1], 1),
        "slope_mb_per_min": round(slope_per_minute(points), 2),
    }


def per_minute(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each minute since the start: resources created, all successful entries, 429s, resends, peak
    memory of both processes and the elements run in it."""
    minutes: list[dict[str, Any]] = []
    if not samples:
        return minutes
    previous = samples[0]
    for minute in range(int(samples[-1]["t"] // 60) + 1):
        inside = [s for s in samples if minute * 60 <= s["t"] < (minute + 1) * 60] or [previous]
        last = inside[-1]
        minutes.append(
            {
                "minute": minute + 1,
                "created": last["created"] - previous["created"],
                "written": last["created"] + last["other_ok"] - previous["created"] - previous["other_ok"],
                "throttled_429": last["throttled"] - previous["throttled"],
                "entries_resent": last["entries_resent"] - previous["entries_resent"],
                "python_rss_max_mb": max((s["python_rss_mb"] or 0) for s in inside),
                "node_rss_max_mb": max((s["node_rss_mb"] or 0) for s in inside),
                "elements": sorted({s["element"] for s in inside if s["element"]}),
                "seconds": round(last["t"] - previous["t"], 1),
            }
        )
        previous = last
    return minutes


def steadiness(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput of the loading itself: writes (every successful entry) in each full minute inside a
    span where writes kept coming, without the seconds between elements or spent only on checks
    without writes. Steady when the coefficient of variation stays under STEADY_CV."""
    window: list[int] = []
    rates: list[int] = []
    start = None
    for sample in samples:
        written = sample["created"] + sample["other_ok"]
        if start is None:
            start = (sample["t"], written)
            continue
        if sample["t"] - start[0] >= 60:
            window.append(written - start[1])
            start = (sample["t"], written)
    # A minute with (almost) no writes is a pause between loads (transform, checks that only read).
    busiest = max(window, default=0)
    rates = [count for count in window if count >= 0.5 * busiest]
    if len(rates) < 2:
        return {"minutes": len(rates), "steady": len(rates) > 0, "rates": rates}
    mean = statistics.fmean(rates)
    cv = statistics.pstdev(rates) / mean if mean else 0.0
    return {
        "minutes": len(rates),
        "median_per_min": statistics.median(rates),
        "min_per_min": min(rates),
        "max_per_min": max(rates),
        "mean_per_min": round(mean),
        "cv": round(cv, 3),
        "steady": cv < STEADY_CV,
        "pause_minutes": len(window) - len(rates),
    }


def summarize(report: dict[str, Any]) -> None:
    samples, runs = report["samples"], report["elements"]
    last = samples[-1] if samples else {}
    report["totals"] = {
        name: last.get(name, 0)
        for name in (
            "created",
            "other_ok",
            "throttled",
            "failed",
            "bundles",
            "requests",
            "retries",
            "entries_resent",
            "rate_limited",
        )
    }
    report["per_minute"] = per_minute(samples)
    report["throughput"] = steadiness(samples)
    report["memory"] = {
        "python": memory_figures(samples, "python_rss_mb"),
        "node": memory_figures(samples, "node_rss_mb"),
    }
    after = [r["python_rss_after_mb"] for r in runs if r.get("python_rss_after_mb") is not None]
    report["memory"]["python_after_each_element_mb"] = {r["element"]: r["python_rss_after_mb"] for r in runs}
    report["memory"]["python_flat"] = bool(after) and after[-1] - after[0] <= FLAT_GROWTH_MB
    problems = []
    for run in runs:
        if not run["run_ok"]:
            problems.append(f"{run['element']}: run failed: {run['error'][:300]}")
        failed = [name for name, check in run["checks"].items() if not check["passed"]]
        if failed:
            problems.append(f"{run['element']}: checks failed: {', '.join(failed)}")
        if not run["checks"]:
            problems.append(f"{run['element']}: no check ran")
        if not run["books"].get("balanced"):
            problems.append(f"{run['element']}: books do not balance: {run['books']}")
    if report.get("error"):
        problems.append(report["error"])
    if len(runs) < len(report["load_order"]):
        problems.append(f"only {len(runs)} of {len(report['load_order'])} elements ran")
    report["problems"] = problems
    report["ok"] = not problems


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nsoak: {report['patients']:,} patients, quota {report['quota_points']:,} points per "
        f"{report['quota_window_seconds']} s, {report['seconds'] / 60:.1f} min"
    )
    print("\nper minute")
    _print_table(
        ("min", "created", "written", "429s", "resent", "python MB", "node MB", "elements"),
        [
            (
                str(m["minute"]),
                f"{m['created']:,}",
                f"{m['written']:,}",
                f"{m['throttled_429']:,}",
                f"{m['entries_resent']:,}",
                f"{m['python_rss_max_mb']:,.0f}",
                f"{m['node_rss_max_mb']:,.0f}",
                ",".join(m["elements"]),
            )
            for m in report["per_minute"]
        ],
    )
    t = report["throughput"]
    print(f"\nthroughput while loading: {t}")
    for name in ("python", "node"):
        print(f"memory {name}: {report['memory'][name]}")
    print(
        f"python memory after each element: {report['memory']['python_after_each_element_mb']} "
        f"(flat: {report['memory']['python_flat']})"
    )
    totals = report["totals"]
    print(
        f"totals: {totals['created']:,} created, {totals['other_ok']:,} other successful entries, "
        f"{totals['throttled']:,} entries answered 429, {totals['entries_resent']:,} entries resent, "
        f"{totals['rate_limited']:,} rate-limited rounds, {totals['failed']:,} entries failed, "
        f"{totals['requests']:,} requests"
    )
    print("\nelements")
    _print_table(
        (
            "element",
            "seconds",
            "source units",
            "successful",
            "rejected",
            "skipped",
            "quarantined",
            "pending",
            "balanced",
            "checks",
        ),
        [
            (
                r["element"],
                f"{r['seconds']:,.0f}",
                *(
                    f"{r['books'].get(k, '-'):,}" if isinstance(r["books"].get(k), int) else "-"
                    for k in ("source_units", "successful", "rejected", "skipped", "quarantined", "pending")
                ),
                str(r["books"].get("balanced")),
                f"{sum(c['passed'] for c in r['checks'].values())}/{len(r['checks'])} passed",
            )
            for r in report["elements"]
        ],
    )
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    print(f"\nsoak {'passed' if report['ok'] else 'FAILED'}")


def _print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in (headers, tuple("-" * w for w in widths), *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    minutes = [s["t"] / 60 for s in samples]
    figure, (rate_axis, memory_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    # Writes a second, averaged over 10 s so the plot shows the rate rather than each bundle.
    span = 10
    rate_t, written, created, throttled = [], [], [], []
    for a, b in zip(samples, samples[span:], strict=False):
        seconds = b["t"] - a["t"] or 1
        rate_t.append(b["t"] / 60)
        written.append((b["created"] + b["other_ok"] - a["created"] - a["other_ok"]) / seconds)
        created.append((b["created"] - a["created"]) / seconds)
        throttled.append((b["throttled"] - a["throttled"]) / seconds)
    rate_axis.plot(rate_t, written, label="successful entries / s (creates and resubmissions)", linewidth=0.8)
    rate_axis.plot(rate_t, created, label="created / s", linewidth=0.8)
    rate_axis.plot(rate_t, throttled, label="entries answered 429 / s", linewidth=0.8, color="red")
    rate_axis.set_ylabel("entries / s (10 s average)")
    rate_axis.legend(fontsize=8, loc="upper right")
    rate_axis.set_title(
        f"Soak: {report['patients']:,} patients, quota {report['quota_points']:,} points / "
        f"{report['quota_window_seconds']} s"
    )
    memory_axis.plot(minutes, [s["python_rss_mb"] for s in samples], label="Python (Dagster, in-process executor)")
    memory_axis.plot(minutes, [s["node_rss_mb"] for s in samples], label="Node (local Medplum server)")
    memory_axis.set_ylabel("resident memory (MB)")
    memory_axis.set_xlabel("minutes")
    memory_axis.legend(fontsize=8, loc="upper left")
    # Where each element started.
    for run in report["elements"]:
        for axis in (rate_axis, memory_axis):
            axis.axvline(run["started_s"] / 60, color="grey", linewidth=0.5, linestyle=":")
        memory_axis.annotate(
            run["element"],
            (run["started_s"] / 60, 0),
            xytext=(2, 2),
            textcoords="offset points",
            fontsize=7,
            rotation=90,
            va="bottom",
        )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- the run ----------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def soak(
    patients: int,
    quota: int,
    window: int,
    work: Path,
    idempotency_sample: int,
    on_element: Callable[[ElementRun], None] | None = None,
) -> dict[str, Any]:
    from dagster import DagsterInstance

    from migration_assets.active import LOAD_ORDER, PROFILE
    from migration_assets.commands.environment import DEFAULT_INSTANCE_YAML
    from migration_assets.definitions import make_definitions
    from migration_assets.pipeline.resources import build_resources
    from migration_assets.source import write_tables

    report: dict[str, Any] = {
        "patients": patients,
        "quota_points": quota,
        "quota_window_seconds": window,
        "idempotency_sample_size": idempotency_sample,
        "load_order": list(LOAD_ORDER),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "elements": [],
        "samples": [],
    }
    started = time.monotonic()
    source = work / "source"
    tables = PROFILE.sample(patients)
    if PROFILE.sample_files is not None:  # the documents' files, beside the source
        tables = PROFILE.sample_files(tables, f"parquet://{source}")
    write_tables(f"parquet://{source}", tables, PROFILE.primary_keys())
    report["source_rows"] = {name: frame.height for name, frame in tables.items()}
    del tables
    report["generate_seconds"] = round(time.monotonic() - started, 1)
    log(f"source of {patients:,} patients in {report['generate_seconds']} s: {report['source_rows']}")

    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DEFAULT_INSTANCE_YAML)
    frames_dir, manifest_url = work / "frames", f"sqlite:///{work / 'manifest.db'}"
    # The local server keeps every resource in the Node heap (a real Medplum keeps them in PostgreSQL):
    # 1.35 million resources need about 3 GB of it, near Node's default limit of about 4.3 GB here.
    node_options = os.environ.get("NODE_OPTIONS") or f"--max-old-space-size={NODE_HEAP_MB}"
    report["node_options"] = node_options
    with environment({"NODE_OPTIONS": node_options}):
        server, process = start_local_medplum(
            fhir_quota=quota, quota_window_seconds=window, log_path=work / "medplum_local.log"
        )
    tally = Tally()
    sampler = Sampler(tally, process.pid)
    try:
        with environment(
            {
                "DAGSTER_HOME": str(home),
                "MEDPLUM_BASE_URL": server.base_url,
                "MEDPLUM_CLIENT_ID": server.client_id,
                "MEDPLUM_CLIENT_SECRET": server.client_secret,
            }
        ):
            # The credentials stay in the environment (EnvVar): never in the run config or the instance.
            defs = make_definitions(
                build_resources(
                    legacy_db_url=f"parquet://{source}",
                    manifest_db_url=manifest_url,
                    work_dir=work,
                    idempotency_sample_size=idempotency_sample,
                )
            )
            log(
                f"local Medplum at {server.base_url} (pid {process.pid}), quota {quota:,} points per {window} s; "
                f"elements in order: {', '.join(LOAD_ORDER)}"
            )
            with MedplumClient(server.base_url, server.client_id, server.client_secret) as client:
                target = client.target  # whose books the soak reads
            with DagsterInstance.get() as instance, observed_by(TallyObserver(tally)):
                sampler.start()
                for element in LOAD_ORDER:
                    sampler.element = element
                    element_started = time.monotonic() - sampler.started
                    run = run_element(element, instance, defs)
                    run.books = books(element, frames_dir, manifest_url, target.key)
                    run.python_rss_after_mb = _round(resident_mb())
                    record = asdict(run)
                    record["started_s"] = round(element_started, 1)
                    report["elements"].append(record)
                    log(
                        f"{element}: {'ok' if run.ok else 'FAILED'} in {run.seconds:,.0f} s; counts {run.counts}; "
                        f"books {run.books}; checks passed "
                        f"{sum(c['passed'] for c in run.checks.values())}/{len(run.checks)}; "
                        f"python {run.python_rss_after_mb} MB, node {_round(resident_mb(process.pid))} MB; "
                        f"429 entries so far {tally.throttled:,}"
                    )
                    if on_element:
                        on_element(run)
                    if not run.run_ok:
                        break
    except Exception as exc:  # noqa: BLE001 - the report is still written, with what failed
        report["error"] = f"{type(exc).__name__}: {exc}"
        log(f"soak stopped: {report['error']}")
    finally:
        if sampler.is_alive():
            sampler.stop()
        stop_local_medplum(process)
    report["samples"] = sampler.samples
    report["seconds"] = round(time.monotonic() - started, 1)
    summarize(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=int(os.environ.get("SOAK_PATIENTS", "50000")))
    parser.add_argument(
        "--quota",
        type=int,
        default=int(os.environ.get("SOAK_QUOTA", str(DEFAULT_QUOTA))),
        help=f"FHIR quota points per client and window (default {DEFAULT_QUOTA:,})",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=int(os.environ.get("SOAK_WINDOW", str(DEFAULT_WINDOW_SECONDS))),
        help="quota window in seconds (default 60, as Medplum)",
    )
    parser.add_argument(
        "--idempotency-sample",
        type=int,
        default=DEFAULT_IDEMPOTENCY_SAMPLE,
        help=f"bundle groups the idempotent_reload check resubmits per element (default "
        f"{DEFAULT_IDEMPOTENCY_SAMPLE:,}; 0: the whole partition)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (source, manifest, frames)")
    args = parser.parse_args(argv)
    quiet_dagster_warnings()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.out))
    try:
        report = soak(args.patients, args.quota, args.window, work, args.idempotency_sample)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1))
    if report["samples"]:
        plot(report, args.out / "soak.png")
    print_report(report)
    print(f"\nwrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
