"""The transform rate of OMOP persons beside the seed EHR's patients, the same number of each:
`.venv/bin/python -m migration_assets.profiles.omop_cdm.bench_persons [--persons 1000000] [--repeats 3]
[--rounds 1]`.

Each profile's generator writes BASE_ROWS people (with their oddities: year-only births, concept 0, ...),
copied until there are `--persons` of them (each copy's keys get a suffix: every row is its own unit).
The time is `build_frame` (the element's transform and every shared rule: keys, control characters,
provenance, content hash, pandera), as rows a second: the first run, as a Dagster step builds its frame
once in a process of its own (each subject runs in a fresh process), and the best of `--repeats` runs, with
the user and system CPU seconds of that run over every thread, which other work on a shared machine
disturbs less than the wall time. `--rounds` measures the pair that many times, one after the other, and
prints the medians of the persons' rate over the patients'.

`--stages` adds, for each, the CPU seconds of build_frame's steps run one at a time on materialized frames
(best of `--repeats`), and the mean size of a resource's JSON: where the time goes."""

import argparse
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable

import polars as pl

from migration_assets.elements.base import (
    POLARS_ENGINE,
    RULED_BY_FRAME_INPUTS,
    SourceSystem,
    apply_frame_rules,
    build_frame,
    content_digest,
    control_character,
    in_chunks,
    provenance_added,
    schema_failures,
    transformed,
)
from migration_assets.elements.profile import load_profile

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
BASE_ROWS = 10_000
SUBJECTS = (("seed_ehr", "patients"), ("omop_cdm", "persons"))


def tiled(profile_name: str, element_name: str, rows: int) -> dict[str, pl.DataFrame]:
    """The element's source tables for `rows` people: the generated BASE_ROWS, copied with new keys."""
    profile = load_profile(profile_name)
    element = profile.element(element_name)
    sample = profile.sample(min(rows, BASE_ROWS), 7)
    copies = -(-rows // BASE_ROWS)
    tables = {}
    for table, key in element.source_tables.items():
        frame = sample[table]
        tables[table] = pl.concat(
            frame.with_columns(pl.format("{}-{}", pl.col(key), pl.lit(copy))) for copy in range(copies)
        )
    people = next(iter(element.source_tables))
    tables[people] = tables[people].head(rows)
    return tables


def rate(profile_name: str, element_name: str, rows: int, repeats: int) -> tuple[int, float, float, float, float]:
    """(rows, wall seconds, user and system CPU seconds of every thread of the fastest of `repeats` build_frame
    runs, wall seconds of the first run). The system seconds are mostly the kernel handing the process fresh
    memory, which grows with the bytes written."""
    element = load_profile(profile_name).element(element_name)
    source = element.extract(tiled(profile_name, element_name, rows))
    runs = []
    for _ in range(repeats):
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        # Each run starts as a step's build does, with no earlier frame held: a run beside the frame of the
        # one before wrote into fresh memory, and the page faults of the persons' 728 MB made it a third
        # slower, the patients' 299 MB a tenth.
        height = build_frame(element, source, SYSTEM).height
        after = resource.getrusage(resource.RUSAGE_SELF)
        runs.append((time.perf_counter() - started, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))
    best, user, system = min(runs)
    return height, best, user, system, runs[0][0]


def stages(profile_name: str, element_name: str, rows: int, repeats: int) -> dict[str, float]:
    """CPU seconds of each step of build_frame, one at a time (the fused query overlaps them), best of
    `repeats`; and the mean bytes of a resource's JSON."""
    element = load_profile(profile_name).element(element_name)
    source = element.extract(tiled(profile_name, element_name, rows))
    provenance = SYSTEM.provenance(element.name, element.mapping_version)

    def cpu(step: Callable[[], pl.DataFrame]) -> tuple[float, pl.DataFrame]:
        def timed() -> tuple[float, pl.DataFrame]:
            started = time.process_time()
            out = step()
            return time.process_time() - started, out

        # As in `rate`, no run's result is held while the next runs.
        earlier = min((timed()[0] for _ in range(repeats - 1)), default=float("inf"))
        last, out = timed()
        return min(earlier, last), out

    seconds: dict[str, float] = {}
    seconds["mapping (transform and its rules)"], mapped = cpu(
        lambda: transformed(element, in_chunks(source), SYSTEM).collect(engine=POLARS_ENGINE)
    )
    seconds["control characters"], _ = cpu(lambda: mapped.select(control_character(pl.col("resource"))))
    seconds["provenance (meta.source)"], sourced = cpu(lambda: provenance_added(mapped, provenance))
    seconds["content hash (XXH3-128)"], hashed = cpu(
        lambda: sourced.with_columns(content_hash=content_digest(pl.col("resource")))
    )
    seconds["pandera"], _ = cpu(lambda: schema_failures(hashed, element.schemas))
    seconds["whole-frame rules (keys)"], _ = cpu(
        lambda: apply_frame_rules(element, hashed.select(RULED_BY_FRAME_INPUTS))
    )
    seconds["mean resource bytes"] = sourced.select(pl.col("resource").str.len_bytes().mean()).item()
    return seconds


def measured_apart(
    profile_name: str, element_name: str, rows: int, repeats: int
) -> tuple[int, float, float, float, float]:
    """`rate` in a fresh process, as a step runs: nothing an earlier measurement allocated is reused."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(rate, (profile_name, element_name, rows, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="measure the pair this many times")
    parser.add_argument("--stages", action="store_true", help="also the CPU seconds of each step")
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {"best": [], "first run": []}
    for _ in range(args.rounds):
        best, first = {}, {}
        for profile_name, element_name in SUBJECTS:
            height, seconds, user, system, first_seconds = measured_apart(
                profile_name, element_name, args.persons, args.repeats
            )
            best[element_name], first[element_name] = seconds, first_seconds
            print(
                f"{profile_name}.{element_name}: {height:,} rows, the first run {first_seconds:.2f} s = "
                f"{height / first_seconds:,.0f} rows/s; best of {args.repeats} {seconds:.2f} s = "
                f"{height / seconds:,.0f} rows/s (CPU s over every thread: {user:.2f} user, {system:.2f} system)",
                flush=True,
            )
        # A rate's ratio is the inverse of the times'.
        ratios["best"].append(best["patients"] / best["persons"])
        ratios["first run"].append(first["patients"] / first["persons"])
        print("persons' rate / patients': " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in ratios.items()), flush=True)
    if args.rounds > 1:
        print(
            f"medians of {args.rounds} rounds: "
            + ", ".join(f"{k} {statistics.median(v):.2f} ({min(v):.2f} to {max(v):.2f})" for k, v in ratios.items())
        )
    if args.stages:
        found = {subject: stages(*subject, args.persons, args.repeats) for subject in SUBJECTS}
        names = [f"{profile}.{element}" for profile, element in SUBJECTS]
        print(f"{'CPU seconds of each step':36}" + "".join(f"{name:>20}" for name in names))
        for step in found[SUBJECTS[0]]:
            print(f"{step:36}" + "".join(f"{found[subject][step]:>20.2f}" for subject in SUBJECTS), flush=True)


if __name__ == "__main__":
    main()
