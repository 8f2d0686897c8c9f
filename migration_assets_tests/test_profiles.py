"""Profiles: a schema the platform has never seen plugs in from its own folder, and a broken contract
is an error that names the element and the field."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from migration_assets.active import PROFILE
from migration_assets.commands.scaffold import scaffold_element, scaffold_profile
from migration_assets.elements.base import ContractError, DataElement, SourceSystem, build_frame
from migration_assets.elements.profile import Profile, ProfileError, load_profile


def demo(work: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`make demo` in a process of its own (the profile in use is chosen when the platform is imported),
    with its state under `work` and the local Medplum server it starts itself."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MEDPLUM_") and name not in ("LEGACY_DB_URL", "MANIFEST_DB_URL", "ELEMENTS")
    }
    environment.update(MIGRATION_WORK_DIR=str(work), DAGSTER_HOME=str(work / "dagster_home"), **env)
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "migration_assets.commands.demo", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def summary_row(output: str, element: str) -> dict[str, str]:
    """The element's row of the demo's summary table, by column name."""
    lines = output.splitlines()
    columns = next(line.split() for line in lines if line.startswith("element ") and "result" in line)
    row = next(line.split() for line in lines if line.startswith(f"{element} ") and len(line.split()) == len(columns))
    return dict(zip(columns, row, strict=True))


@pytest.mark.integration
def test_a_new_profile_loads_green_before_it_is_edited_and_reruns_send_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "my_clinic"
    scaffold_profile(folder)
    scaffold_element("referrals", str(folder))
    first = demo(tmp_path / "work", "--patients", "2", MIGRATION_PROFILE=str(folder))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "profile my_clinic" in first.stdout
    for element in ("records", "referrals"):
        row = summary_row(first.stdout, element)
        assert [row[name] for name in ("result", "source_rows", "quarantined", "sent", "created", "checks")] == [
            "ok",
            "3",
            "0",
            "3",
            "3",
            "6/6",
        ], row
    again = demo(tmp_path / "work", "--patients", "2", MIGRATION_PROFILE=str(folder))
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary_row(again.stdout, "records")["sent"] == "0"  # nothing sent


@pytest.mark.integration
def test_a_prerequisite_neither_chosen_nor_loaded_is_a_clear_error(tmp_path: Path) -> None:
    result = demo(tmp_path / "work", "--patients", "5", ELEMENTS="conditions")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "conditions needs patients, which is neither chosen nor loaded: ELEMENTS=patients,conditions" in (
        result.stderr
    )


def test_an_unknown_element_or_profile_says_what_there_is() -> None:
    with pytest.raises(ValueError, match="unknown data element 'labs' in profile fixture_profile; known: patients"):
        PROFILE.chosen(["patients", "labs"])
    with pytest.raises(ProfileError, match=r"no profile 'no_such_schema'.*a shipped one \(omop_cdm, seed_ehr\)"):
        load_profile("no_such_schema")
    with pytest.raises(ProfileError, match="is not a Python package"):
        load_profile("/no/such/folder")


def test_the_chosen_elements_run_in_load_order() -> None:
    assert PROFILE.chosen(["visits", "patients"]) == ("patients", "visits")
    assert PROFILE.chosen(None) == PROFILE.load_order


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source_tables": ("patients",)}, "field `source_tables` must map each source table to its primary key"),
        ({"source_tables": {"patients": ""}}, "field `source_tables` gives table 'patients' no primary key column"),
        ({"name": "Patients!"}, "field `name` must be lower case"),
        ({"patient_column": 3}, "field `patient_column` must be a frame column name"),
        ({"review_flags": {"code_mapped": "no"}}, "field `review_flags` must map frame columns"),
        ({"schemas": {}}, "field `schemas` must map each resource type"),
        ({"requires": ("nothing_like_it",)}, "field `requires` names unknown elements ['nothing_like_it']"),
        ({"lookup_tables": {"codes": {"patients": ("code",)}}}, "field `lookup_tables` names 'codes', which is not"),
        ({"lookup_tables": {"patients": {"visits": ("patient_id",)}}}, "gives 'patients' naming tables ['visits']"),
        ({"optional_tables": {"visits": ("visit_id",)}}, "field `optional_tables` gives 'visits', which must be"),
        ({"optional_tables": {"patients": ("name",)}}, "gives 'patients', which must be one of its source_tables"),
    ],
)
def test_a_broken_contract_names_the_element_and_the_field(change: dict[str, object], message: str) -> None:
    broken = replace(PROFILE.element("patients"), **change)  # type: ignore[arg-type]
    with pytest.raises((ContractError, ProfileError), match=message.replace("[", r"\[").replace("]", r"\]")):
        Profile(name="broken", description="a test", elements=(broken,), phases_file=PROFILE.phases_file)


def test_a_frame_without_a_declared_column_is_refused_by_name() -> None:
    element: DataElement = replace(PROFILE.element("conditions"), review_flags={"code_was_mapped": False})
    tables = PROFILE.sample(patients=3)
    rows = element.extract({table: tables[table] for table in element.source_tables})
    with pytest.raises(ContractError, match=r"'conditions': field `review_flags` names \['code_was_mapped'\]"):
        build_frame(element, rows, SourceSystem(PROFILE.identifier_base_uri))


def test_a_table_with_two_keys_is_refused() -> None:
    patients = PROFILE.element("patients")
    other = replace(PROFILE.element("conditions"), source_tables={"conditions": "condition_id", "patients": "mrn"})
    with pytest.raises(ProfileError, match="gives patients the key 'mrn', but patients gives it 'patient_id'"):
        Profile(name="broken", description="a test", elements=(patients, other), phases_file=PROFILE.phases_file)
