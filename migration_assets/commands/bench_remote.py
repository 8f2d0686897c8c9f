"""`BENCH_TARGET=remote make bench`: the platform side by side with `medplum bulk import` on the Medplum
that MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID and MEDPLUM_CLIENT_SECRET name. It writes test data there: every
measurement under an identifier system of its own, so that none sees another's resources (the CLI's
POSTs are counted as they are).

On the same sample (BENCH_PATIENTS patients and their Conditions, which reference them):
- `medplum bulk import` (@medplum/cli: POSTs in transactions of 25; not rerun: a rerun copies everything);
- the loader alone (migrate, element by element) writing by conditional PUT, as without a census of the
  target, and writing by what its census before the load says the target holds (updates by id), with each
  create mode (conditional PUT, plain POST: as plain batch entries and in transactions of 50), one bundle in
  flight, then an unchanged reload; each create mode again with the bundles in flight adapted to the
  server's pushback (the default), as async bundles (`Prefer: respond-async`), and mixed (the adapted sync
  bundles with one async job beside them);
- the platform end to end through Dagster with every check and its default settings, with the elements in
  the phase initial_load (plain POST creates) and in backfill (conditional creates), and in initial_load with
  the load mode mixed, then an unchanged reload;
  the elements' runs launched as a backfill launches them, two at a time (bench.run_elements).
Prints each figure with its ratio to the CLI and the FHIR quota points per resource of what the load (and,
end to end, the checks) sent, as hosted Medplum charges them (write 100, search 20, read 1, async work
nothing: MEDPLUM_FACTS.md), writes .artifacts/bench/remote.json and remote.png.
BENCH_STAGES=cli,loader,e2e,quota picks the measurements (quota: what the server's own RateLimit header charges
for a sync batch and an async job of 50 creates). The CLI runs always, first and again last: every
ratio is to the mean of its two rates (each measurement adds to the project, and the server slows a
little as it grows)."""

import dataclasses
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.active import PROFILE, get_element
from migration_assets.commands.environment import environment
from migration_assets.config import REPO_ROOT
from migration_assets.devtools.local_medplum import SERVER_DIR
from migration_assets.elements.base import SourceSystem
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.medplum.client import observed_by
from migration_assets.medplum.ratelimit import POINTS_PER_SEARCH, POINTS_PER_WRITE
from migration_assets.medplum.responses import EntryResponse
from migration_assets.pipeline.loader import LoadSettings, migrate
from migration_assets.verify.census import Censuses, RunCensus

OUT_DIR = REPO_ROOT / ".artifacts" / "bench"
ELEMENTS = PROFILE.bench_pair()
MEDPLUM_CLI = SERVER_DIR / "node_modules" / ".bin" / "medplum"
CLI_POINTS_PER_RESOURCE = 100  # one POST each; a transaction adds none
BATCH_SIZE = 100
STAGES = ("cli", "loader", "e2e", "quota")
CLI = "medplum bulk import (@medplum/cli)"
# The CLI again after everything else: the project grows with each measurement and the server slows a
# little with it, so each ratio is to the mean of the CLI's first and last rate, not to the first alone.
CLI_AGAIN = "medplum bulk import, again at the end"


def log(message: str) -> None:
    print(f"[bench remote {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fresh_system() -> SourceSystem:
    """An identifier base of its own for one measurement."""
    return SourceSystem(f"https://bench-{uuid.uuid4().hex[:10]}.example.org/fhir")


def frames(source_url: str, system: SourceSystem) -> dict[str, pl.DataFrame]:
    from migration_assets.commands.bench import element_frame

    return {name: element_frame(source_url, name, system) for name in ELEMENTS}


def eligible_count(built: dict[str, pl.DataFrame]) -> int:
    return sum(int(frame["quarantine_rule"].is_null().sum()) for frame in built.values())


def client() -> MedplumClient:
    return MedplumClient(
        os.environ["MEDPLUM_BASE_URL"], os.environ["MEDPLUM_CLIENT_ID"], os.environ["MEDPLUM_CLIENT_SECRET"]
    )


def bench_cli(source_url: str, work: Path) -> dict[str, Any]:
    built = frames(source_url, fresh_system())
    files = []
    for name, frame in built.items():
        path = work / f"{name}.ndjson"
        path.write_text("\n".join(frame.filter(pl.col("quarantine_rule").is_null())["resource"].to_list()) + "\n")
        files.append(path)
    env = {**os.environ, "HOME": str(work)}  # the CLI keeps its own state under HOME
    started = time.perf_counter()
    for path in files:
        done = subprocess.run(
            [
                str(SERVER_DIR / "node_modules" / ".bin" / "node"),
                str(MEDPLUM_CLI),
                "bulk",
                "import",
                str(path),
                "--num-resources-per-request",
                "25",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=7200,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"medplum bulk import {path.name} failed: {(done.stderr or done.stdout)[-500:]}")
    seconds = time.perf_counter() - started
    resources = eligible_count(built)
    return {
        "resources": resources,
        "seconds": round(seconds, 2),
        "resources_per_s": round(resources / seconds, 1),
        **quota_per_resource(CLI_POINTS_PER_RESOURCE * resources, 0, resources),
    }


def bench_loader(
    source_url: str,
    work: Path,
    creates: str | None,
    adaptive: bool = False,
    mode: str = "sync",
    transaction_size: int = LoadSettings.transaction_size,
) -> dict[str, Any]:
    """The loader alone: by conditional PUT (`creates` None: no census of the target), or by what the
    census before the load says the target holds; one bundle in flight, or as many as the server takes
    (`adaptive`, up to the default ceiling); creates and updates by id in transactions of
    `transaction_size` (1: plain batch entries); then an unchanged reload."""
    settings = LoadSettings(
        batch_size=BATCH_SIZE,
        creates=creates or "post",
        mode=mode,
        adaptive=adaptive,
        transaction_size=transaction_size,
    )
    if not adaptive:
        settings = dataclasses.replace(settings, concurrency=1)
    built = frames(source_url, fresh_system())
    ledger_url = f"sqlite:///{work / f'loader-{creates}-{uuid.uuid4().hex[:6]}.db'}"
    figures: dict[str, Any] = {"resources": eligible_count(built)}
    for label in ("first", "reload"):
        totals: dict[str, int] = {}
        reads = ReadsAndSearches()
        started = time.perf_counter()
        with observed_by(reads), client() as medplum, Manifest(ledger_url, medplum.target.key) as ledger:
            census = RunCensus(work / f"census-{ledger_url[-9:-3]}", f"{label}-{creates}")

            def census_of_target(
                keys: pl.DataFrame, medplum: MedplumClient = medplum, census: RunCensus = census
            ) -> Censuses:
                return census.get(medplum, keys)

            for name in ELEMENTS:
                result = migrate(
                    medplum,
                    ledger,
                    label,
                    get_element(name),
                    built[name],
                    "bench",
                    settings,
                    census_of_target=census_of_target if creates else None,
                )
                for key, value in result.counts.items():
                    totals[key] = totals.get(key, 0) + value
                totals["most_in_flight"] = max(totals.get("most_in_flight", 0), result.most_in_flight)
        seconds = time.perf_counter() - started
        figures[label] = {
            "seconds": round(seconds, 2),
            "sent": totals["sent"],
            "created": totals["created"],
            "failed": totals["failed"],
            "quota_points": totals["quota_points"],
            "read_points": reads.points,  # the census's searches
            "most_in_flight": totals["most_in_flight"],
            "in_flight_decreased": totals["in_flight_decreased"],
        }
    first = figures["first"]
    figures["resources_per_s"] = round(figures["resources"] / first["seconds"], 1)
    figures.update(quota_per_resource(first["quota_points"], first["read_points"], first["sent"]))
    return figures


def bench_e2e(source_url: str, work: Path, phase: str, load_mode: str = "sync") -> dict[str, Any]:
    """Every element of ELEMENTS through Dagster with every check and the default settings but `load_mode`,
    the elements in `phase` (which decides how absent resources are created), then an unchanged reload."""
    from dagster import EnvVar

    from migration_assets.commands.bench import bench_instance, run_elements
    from migration_assets.definitions import make_definitions
    from migration_assets.pipeline.resources import MedplumResource, build_resources

    state = Path(tempfile.mkdtemp(dir=work, prefix=f"e2e-{phase}-"))
    phases = state / "phases.yaml"
    phases.write_text(f"version: 1\ndefault_phase: {phase}\n")
    resources = build_resources(
        medplum=MedplumResource(
            base_url=EnvVar("MEDPLUM_BASE_URL"),
            client_id=EnvVar("MEDPLUM_CLIENT_ID"),
            client_secret=EnvVar("MEDPLUM_CLIENT_SECRET"),
        ),
        legacy_db_url=source_url,
        manifest_db_url=f"sqlite:///{state / 'manifest.db'}",
        work_dir=state,
        batch_size=BATCH_SIZE,
        identifier_base_uri=fresh_system().base_uri,
        load_mode=load_mode,
    )
    job = make_definitions(resources).resolve_job_def("migrate_data_element")
    figures: dict[str, Any] = {"resources": eligible_count(frames(source_url, fresh_system()))}
    with environment({"ADOPTION_PHASES_FILE": str(phases)}), bench_instance(str(state)) as instance:
        for label in ("first", "reload"):
            reads = ReadsAndSearches()
            started = time.perf_counter()
            with observed_by(reads):
                elements = list(run_elements(job, instance, ELEMENTS).values())
            figures[label] = {
                "seconds": round(time.perf_counter() - started, 2),
                "ok": all(element["ok"] for element in elements),
                # Every read and search of the run's steps (the census, the prerequisites, the checks).
                "read_points": reads.points,
                **{
                    key: round(sum(element[key] for element in elements), 2)
                    for key in (
                        "sent",
                        "quota_points",
                        "check_write_points",
                        "load_step_seconds",
                        "after_load_check_seconds",
                        "resubmitted_by_checks",
                    )
                },
                # Where the time went, step by step (remote.json): what a change to the platform should move.
                "steps": {name: element["steps"] for name, element in zip(ELEMENTS, elements, strict=True)},
            }
    if not figures["first"]["ok"]:
        # A rate of a run that failed (or whose checks did) would measure nothing worth a row.
        raise SystemExit(f"end to end in {phase}: the first run failed or a check did not pass (see the log above)")
    figures["resources_per_s"] = round(figures["resources"] / figures["first"]["seconds"], 1)
    # The checks' writes and every read count too: they are spent on the same migration.
    first = figures["first"]
    figures.update(
        quota_per_resource(first["quota_points"] + first["check_write_points"], first["read_points"], first["sent"])
    )
    return figures


def quota_per_resource(write_points: int, read_points: int, sent: int) -> dict[str, float]:
    """The FHIR quota points a written resource cost: its writes' (the CLI's 100), the reads' (the CLI
    reads nothing), and both."""
    return {
        "write_points_per_resource": round(write_points / max(1, sent), 2),
        "read_points_per_resource": round(read_points / max(1, sent), 2),
        "quota_points_per_resource": round((write_points + read_points) / max(1, sent), 2),
    }


# The most creates the quota stage sends in one async job to overrun the quota: more only on a raised quota.
MOST_OVERRUN_CREATES = 1_500


def quota_seen(creates: int = 50) -> dict[str, Any]:
    """What this server's own RateLimit header charges, beside what the table counts (hosted Medplum's prices):
    the points it lost for `creates` Patient creates sent as a sync batch and as an async job (each read between
    two count searches, 20 points each taken off; again if the quota's window reset in between); then, where the
    quota is small enough, whether one async job of more creates than the quota has left is answered in full."""
    seen: dict[str, Any] = {}
    with client() as medplum:

        def remaining() -> int:
            medplum.count("Patient", {"identifier": f"{fresh_system().identifier_system('probe')}|"})
            return medplum.remaining_quota()["fhirInteractions"]

        def creates_of(count: int) -> list[str]:
            system = fresh_system().identifier_system("patient")
            return [
                json.dumps(
                    {
                        "request": {"method": "POST", "url": "Patient"},
                        "resource": {"resourceType": "Patient", "identifier": [{"system": system, "value": str(n)}]},
                    }
                )
                for n in range(count)
            ]

        for mode in ("sync", "async"):
            for _ in range(3):
                before = remaining()
                medplum.submit_batch(creates_of(creates), respond_async=mode == "async")
                after = remaining()
                if after < before:  # else the quota's window reset in between
                    what = "an async job" if mode == "async" else "a sync batch"
                    seen[f"{what} of {creates} creates"] = before - after - POINTS_PER_SEARCH
                    break
        overrun = remaining() // POINTS_PER_WRITE + 100
        if overrun <= MOST_OVERRUN_CREATES:
            resent = medplum.stats.entries_resent
            answers = medplum.submit_batch(creates_of(overrun), respond_async=True)
            refused = medplum.stats.entries_resent - resent  # refused (429) and resent after the quota's reset
            created = sum(answer.status == 201 for answer in answers)
            seen[f"an async job of {overrun} creates, over the quota left"] = (
                f"{created - refused} answered 201 at once, {refused} refused"
            )
    return seen


class ReadsAndSearches:
    """The quota points of the FHIR reads (1) and searches (20) of every client while it observes them."""

    def __init__(self) -> None:
        self.points = 0
        self._lock = threading.Lock()

    def counted(self, increments: Mapping[str, int]) -> None:
        with self._lock:
            self.points += increments.get("reads", 0) + increments.get("searches", 0) * POINTS_PER_SEARCH

    def answered(self, entries: Sequence[EntryResponse]) -> None:
        pass


def run(patients: int, stages: Collection[str] = STAGES, out: Path = OUT_DIR) -> int:
    from migration_assets.commands.bench import write_source

    missing = [n for n in ("MEDPLUM_BASE_URL", "MEDPLUM_CLIENT_ID", "MEDPLUM_CLIENT_SECRET") if not os.environ.get(n)]
    if missing:
        raise SystemExit(
            f"BENCH_TARGET=remote needs {', '.join(missing)}: the Medplum to measure (it writes test data)"
        )
    out.mkdir(parents=True, exist_ok=True)
    with client() as medplum:
        target = str(medplum.target)
    log(f"measuring against {target} with {patients} patients and their conditions")
    report: dict[str, Any] = {
        "target": target,
        "patients": patients,
        "batch_size": BATCH_SIZE,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with tempfile.TemporaryDirectory(dir=out, prefix="remote-") as folder:
        work = Path(folder)
        write_source(patients, work / "source")
        source_url = f"parquet:///{work / 'source'}"
        # (stage, what): BENCH_STAGES picks stages; the CLI always runs, first and last, and every ratio
        # is to the mean of its two rates.
        every: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
            ("cli", CLI): lambda: bench_cli(source_url, work),
            ("loader", "loader, conditional PUTs (no census)"): lambda: bench_loader(source_url, work, None),
            ("loader", "loader, census + conditional creates"): lambda: bench_loader(source_url, work, "conditional"),
            ("loader", "loader, census + plain POST creates, plain entries"): lambda: bench_loader(
                source_url, work, "post", transaction_size=1
            ),
            ("loader", "loader, census + plain POST creates"): lambda: bench_loader(source_url, work, "post"),
            ("loader", "loader, conditional creates, adaptive in flight"): lambda: bench_loader(
                source_url, work, "conditional", adaptive=True
            ),
            ("loader", "loader, plain POST, adaptive in flight"): lambda: bench_loader(
                source_url, work, "post", adaptive=True
            ),
            ("loader", "loader, plain POST, async bundles"): lambda: bench_loader(
                source_url, work, "post", mode="async"
            ),
            ("loader", "loader, plain POST, adaptive, mixed"): lambda: bench_loader(
                source_url, work, "post", adaptive=True, mode="mixed"
            ),
            ("e2e", "end to end, every check, phase backfill"): lambda: bench_e2e(source_url, work, "backfill"),
            ("e2e", "end to end, every check, phase initial_load"): lambda: bench_e2e(source_url, work, "initial_load"),
            ("e2e", "end to end, every check, initial_load, mixed"): lambda: bench_e2e(
                source_url, work, "initial_load", load_mode="mixed"
            ),
            ("cli", CLI_AGAIN): lambda: bench_cli(source_url, work),
        }
        measures = {name: measure for (stage, name), measure in every.items() if stage == "cli" or stage in stages}
        for name, measure in measures.items():
            report[name] = measure()
            log(f"{name}: {json.dumps(report[name])}")
        if "quota" in stages:  # last: it may spend the quota's minute
            report["quota_seen"] = quota_seen()
            log(f"the server's RateLimit header: {json.dumps(report['quota_seen'])}")
    cli_rate = (report[CLI]["resources_per_s"] + report[CLI_AGAIN]["resources_per_s"]) / 2
    report["cli_resources_per_s"] = round(cli_rate, 1)
    rows = [
        (
            name,
            report[name]["resources_per_s"],
            report[name]["resources_per_s"] / cli_rate,
            report[name]["write_points_per_resource"],
            report[name]["read_points_per_resource"],
            report[name].get("reload", {}).get("sent", "-"),
        )
        for name in measures
    ]
    report["table"] = rows
    (out / "remote.json").write_text(json.dumps(report, indent=2))
    plot(rows, target, out / "remote.png")
    print(
        f"\nagainst {target}: {patients} patients with their conditions, batches of {BATCH_SIZE}; "
        f"x CLI: to the mean of the CLI's first and last rate, {cli_rate:,.1f}/s"
    )
    print(
        f"{'what':50} {'resources/s':>12} {'x CLI':>6} {'quota points a resource: writes':>32} {'reads':>6} "
        f"{'reload sent':>12} {'in flight':>10}"
    )
    for (name, rate, ratio, writes, reads, reload_sent), name_again in zip(rows, measures, strict=True):
        in_flight = report[name_again].get("first", {}).get("most_in_flight", "-")
        print(f"{name:50} {rate:12,.1f} {ratio:6.2f} {writes:32.2f} {reads:6.2f} {reload_sent!s:>12} {in_flight!s:>10}")
    for what, points in report.get("quota_seen", {}).items():
        said = f"{points:,} points" if isinstance(points, int) else points
        print(f"this server's RateLimit header: {what}: {said}")
    print(f"\nwrote {out / 'remote.json'} and {out / 'remote.png'}")
    return 0


def plot(rows: list[tuple[str, float, float, float, float, Any]], target: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4))
    axes.barh([row[0] for row in rows][::-1], [row[1] for row in rows][::-1], color="#4477aa")
    for y, (_, rate, ratio, *_) in enumerate(rows[::-1]):
        axes.text(rate, y, f" {rate:,.0f}/s ({ratio:.2f}x)", va="center", fontsize=8)
    axes.set_xlabel("resources per second (first load)")
    axes.set_title(f"against {target}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
