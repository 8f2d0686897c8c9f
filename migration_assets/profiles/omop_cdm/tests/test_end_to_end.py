"""The OMOP profile through the whole platform over real HTTP (the local Medplum server `make demo`
starts), twice: every element loads green, and the second run sends nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from migration_assets.commands.demo import SUMMARY_COUNTS

ELEMENTS = ("care_sites", "locations", "persons", "providers", "visits", "conditions", "drugs", "procedures",
            "measurements", "observations")


def demo(work: Path) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("MEDPLUM_") and name not in ("LEGACY_DB_URL", "MANIFEST_DB_URL", "ELEMENTS")}
    environment.update(MIGRATION_WORK_DIR=str(work), DAGSTER_HOME=str(work / "dagster_home"),
                       MIGRATION_PROFILE="omop_cdm")
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "migration_assets.commands.demo", "--patients", "30"],
                          env=environment, capture_output=True, text=True, timeout=600, check=False)


def summary(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines() if line.split()[:1] and
            line.split()[0] in ELEMENTS and len(line.split()) == 1 + len(SUMMARY_COUNTS) + 2}


@pytest.mark.integration
def test_an_omop_database_loads_green_and_a_second_run_sends_nothing(tmp_path: Path) -> None:
    first = demo(tmp_path / "work")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = summary(first.stdout)
    assert set(rows) == set(ELEMENTS)
    for row in rows.values():
        # element, source rows, quarantined, sent, created, ..., checks passed, checks failed
        assert row[2] == "0" and row[3] == row[1] == row[4] and row[-1] == "0", row
    again = demo(tmp_path / "work")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for element, row in summary(again.stdout).items():
        assert row[3] == "0" and row[-1] == "0", (element, row)
