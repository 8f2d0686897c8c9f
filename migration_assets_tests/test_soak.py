"""The soak command end to end at a tiny size: a real local Medplum server with a FHIR quota of a
one-second window (so the loader paces itself and meets 429s), the real Dagster job for every element,
and the JSON it writes. It fails, never skips, when the server's Node binary or anything else is missing.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from migration_assets.active import LOAD_ORDER
from migration_assets.devtools.local_medplum import NODE_BINARY, REPO_ROOT

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

PATIENTS = 150
# About 2,000 resources at ~150 points each, twice (the idempotency check resubmits them): some thirty
# windows of one second, each spent in a few bundles, so the quota binds and a few entries meet 429.
QUOTA_POINTS = 40_000
WINDOW_SECONDS = 1


def test_soak_runs_end_to_end_with_the_quota_binding_and_balanced_books(tmp_path: Path) -> None:
    assert NODE_BINARY.exists(), f"the local Medplum server needs {NODE_BINARY}: run `make setup`"
    out = tmp_path / "soak"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "migration_assets.commands.soak",
            "--patients",
            str(PATIENTS),
            "--quota",
            str(QUOTA_POINTS),
            "--window",
            str(WINDOW_SECONDS),
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"soak failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = json.loads((out / "soak.json").read_text())
    assert (out / "soak.png").stat().st_size > 10_000

    assert report["ok"] and report["problems"] == []
    assert [run["element"] for run in report["elements"]] == list(LOAD_ORDER)
    for run in report["elements"]:
        b = run["books"]
        assert b["balanced"], run
        assert b["source_units"] == b["successful"] + b["rejected"] + b["skipped"] + b["quarantined"] > 0
        assert b["pending"] == 0 and b["unrecorded"] == 0
        assert run["run_ok"] and len(run["checks"]) == 6 and all(c["passed"] for c in run["checks"].values()), run

    # Sampled once a second for the whole run, both processes' memory included.
    samples = report["samples"]
    assert len(samples) >= 10
    assert all(s["python_rss_mb"] and s["node_rss_mb"] for s in samples[:-1])
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert report["memory"]["python"]["max_mb"] >= report["memory"]["python"]["min_mb"] > 50
    assert report["memory"]["node"]["max_mb"] > 50

    # Everything eligible was created once; the quota bound: 429s met and their entries resent.
    successful = sum(run["books"]["successful"] for run in report["elements"])
    totals = report["totals"]
    assert totals["created"] == successful
    assert totals["throttled"] > 0 and totals["entries_resent"] > 0 and totals["rate_limited"] > 0
    assert totals["failed"] == 0
    assert sum(minute["created"] for minute in report["per_minute"]) == totals["created"]
