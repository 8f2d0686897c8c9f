"""The OMOP profile through the whole platform over real HTTP (the local Medplum server `make demo`
starts), twice: every element loads green, and the second run sends nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_mapping import SAMPLE_DUPLICATES

ELEMENTS = (
    "care_sites",
    "locations",
    "persons",
    "providers",
    "visits",
    "visit_details",
    "conditions",
    "drugs",
    "procedures",
    "measurements",
    "observations",
    "notes",
    "specimens",
    "devices",
    "coverages",
)


def demo(work: Path, patients: int = 30, **settings: str) -> subprocess.CompletedProcess[str]:
    """The demo command on the omop_cdm profile, its files under `work`; `settings`: more environment
    (LEGACY_DB_URL, ELEMENTS)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MEDPLUM_") and name not in ("LEGACY_DB_URL", "MANIFEST_DB_URL", "ELEMENTS")
    }
    environment.update(
        MIGRATION_WORK_DIR=str(work), DAGSTER_HOME=str(work / "dagster_home"), MIGRATION_PROFILE="omop_cdm"
    )
    environment.update(settings)
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "migration_assets.commands.demo", "--patients", str(patients)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def summary(output: str) -> dict[str, dict[str, str]]:
    """The demo's summary table: element -> column -> cell (numbers without their thousands commas)."""
    lines = output.splitlines()
    header = next(number for number, line in enumerate(lines) if line.startswith("element ") and "result" in line)
    columns = lines[header].split()
    rows = (line.split() for line in lines[header + 2 :] if line.strip())
    return {
        row[0]: dict(zip(columns, (cell.replace(",", "") for cell in row), strict=True))
        for row in rows
        if row[0] in ELEMENTS and len(row) == len(columns)
    }


@pytest.mark.integration
def test_an_omop_database_loads_green_and_a_second_run_sends_nothing(tmp_path: Path) -> None:
    first = demo(tmp_path / "work")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = summary(first.stdout)
    assert set(rows) == set(ELEMENTS)
    for element, row in rows.items():
        # The sample's duplicate rows (both copies of each repeated key) are quarantined, every other row sent.
        quarantined = SAMPLE_DUPLICATES.get(element, 0)
        assert int(row["quarantined"]) == quarantined, (element, row)
        assert int(row["sent"]) == int(row["created"]) == int(row["source_rows"]) - quarantined, (element, row)
        assert row["result"] == "ok" and row["checks"] == "6/6", (element, row)
    again = demo(tmp_path / "work")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for element, row in summary(again.stdout).items():
        assert row["sent"] == "0" and row["result"] == "ok" and row["checks"] == "6/6", (element, row)
