"""A load killed halfway is picked up by the next run from the manifest: nothing duplicated, nothing
left pending, units already loaded with unchanged content not sent again."""

import os
import re
import signal
import sqlite3
import subprocess
import sys

import polars as pl
import pytest

from migration_assets.ledger.manifest import Attempt, Manifest
from migration_assets.verify.census import census

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

# Loads the patients element bundle by bundle, slowly, printing its progress; the test kills it. Its last
# argument: "conditional" (conditional PUTs, sync bundles) or "mixed" (plain POSTs after a census of the
# target, sync bundles with an async job beside them).
LOADER = """
import pathlib, sys, tempfile, time
from migration_assets.active import get_element
from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.pipeline.loader import LoadSettings, migrate
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.source import read_table

from migration_assets.verify.census import RunCensus

base_url, client_id, secret, source_url, manifest_url, writes = sys.argv[1:7]
element = get_element("patients")
frame = build_frame(element, element.extract({"patients": read_table(source_url, "patients")}),
                    SourceSystem("https://ehr.example-clinic.org/fhir"))

def progress(done, total):
    print(f"units {done} of {total}", flush=True)

# Slow enough to be killed halfway: each bundle takes a fifth of a second more than Medplum needs.
real_submit = MedplumClient.submit_batch
def slow_submit(self, *args, **kwargs):
    time.sleep(0.2)
    return real_submit(self, *args, **kwargs)
MedplumClient.submit_batch = slow_submit

with MedplumClient(base_url, client_id, secret) as client, Manifest(manifest_url, client.target.key) as manifest:
    if writes == "mixed":
        before = RunCensus(pathlib.Path(tempfile.mkdtemp()), "killed-run")
        settings = LoadSettings(batch_size=10, creates="post", mode="mixed")
        migrate(client, manifest, "killed-run", element, frame, source_url, settings, progress,
                census_of_target=lambda keys: before.get(client, keys))
    else:
        migrate(client, manifest, "killed-run", element, frame, source_url, LoadSettings(batch_size=10), progress)
"""


@pytest.mark.parametrize("writes", ["conditional", "mixed"])
def test_a_killed_load_resumes_without_duplicates_or_pending_units(platform_factory, writes):
    # In mixed mode the first bundle goes as an async job, and the bundles after it are recorded once it is
    # answered (in submission order): more of them, so that the kill still finds some unrecorded.
    patients = 400 if writes == "mixed" else 200
    platform = platform_factory.new(patients=patients, name=writes)
    server = platform.server
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LOADER,
            server.base_url,
            server.client_id,
            server.client_secret,
            platform.source_url,
            platform.manifest_url,
            writes,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    assert process.stdout is not None
    for line in process.stdout:
        # Progress is reported once a bundle's outcomes are stored (a few bundles at a time).
        if line.startswith("units ") and int(line.split()[1]) >= 10:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    with platform.manifest() as manifest:
        before = manifest.units("patients")["disposition"].value_counts()
    dispositions = dict(before.iter_rows())
    assert dispositions.get("pending", 0) > 0 and dispositions.get("successful", 0) >= 10

    rerun = platform.run("patients")

    assert rerun.ok, (rerun.failure_messages, rerun.error)
    assert rerun.counts["not_sent_unchanged"] == dispositions["successful"]
    assert rerun.counts["not_sent_unchanged"] + rerun.counts["sent"] == patients
    with platform.manifest() as manifest:
        after = manifest.units("patients")
    assert after["disposition"].to_list() == ["successful"] * patients
    with platform.client() as client:
        held = census(client, "Patient", "https://ehr.example-clinic.org/fhir/identifier/patient")
    assert held.height == patients
    assert held.group_by("identifier_value").len().filter(pl.col("len") > 1).is_empty()


def test_the_ledger_keeps_one_timestamp_format_whichever_way_a_row_was_written(tmp_path):
    # The loader's records bypass SQLAlchemy's per-row handling on SQLite; they must still store
    # timestamps as SQLAlchemy does, or the same column would hold two formats.
    path = tmp_path / "ledger.db"
    frame = pl.DataFrame(
        {
            "source_table": ["patients"] * 2,
            "unit_key": ["P1", "P2"],
            "resource_type": ["Patient"] * 2,
            "identifier_system": ["https://x/patient"] * 2,
            "identifier_value": ["P1", "P2"],
            "quarantine_rule": [None, "invalid_date"],
            "quarantine_reason": [None, "birth_date"],
        }
    )
    with Manifest(f"sqlite:///{path}") as manifest:
        manifest.register_units("run", "patients", frame, pl.Series([True, False]))
        manifest.record_results(
            "run",
            "patients",
            [Attempt("patients", "P1", 1, 0, 201, "Patient/p1/_history/1", None, "hash")],
            [True],
            ["p1"],
            ["1"],
            [None],
        )
        units = manifest.units("patients").sort("unit_key")
    with sqlite3.connect(path) as db:
        stored = [
            row[0]
            for row in db.execute(
                "SELECT updated_at FROM manifest_units UNION ALL SELECT attempted_at FROM manifest_attempts"
            )
        ]
    assert len(stored) == 3 and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", text) for text in stored), (
        stored
    )
    assert units["disposition"].to_list() == ["successful", "quarantined"]
    assert units["updated_at"].dtype == pl.Datetime(time_zone="UTC") and units["updated_at"].null_count() == 0
