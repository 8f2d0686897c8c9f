"""A run asks for its prerequisites once: the first step makes the report, the others read it as made."""

from pathlib import Path

import polars as pl

from migration_assets.medplum import Target
from migration_assets.verify.prerequisites import LOADED_ID_SCHEMA, PrerequisiteReport, RunPrerequisites

TARGET = Target("http://medplum.example.org/", "project-1")


def report(checked: int) -> PrerequisiteReport:
    missing = pl.DataFrame(
        {"resource_type": ["Patient"], "identifier_system": ["urn:s"], "identifier_value": ["P1"], "element": ["p"]}
    )
    loaded = pl.DataFrame(
        {
            "resource_type": ["Patient"],
            "identifier_system": ["urn:s"],
            "identifier_value": ["P2"],
            "resource_id": ["x"],
        },
        schema=LOADED_ID_SCHEMA,
    )
    explained = missing.with_columns(disposition=pl.lit("quarantined"), rule=pl.lit("bad_date"))
    return PrerequisiteReport(checked=checked, explained=explained, unexplained=missing, loaded_ids=loaded)


def test_the_first_step_of_a_run_makes_the_report_and_the_others_read_it(tmp_path: Path):
    made: list[int] = []

    def make(checked: int):
        def once() -> PrerequisiteReport:
            made.append(checked)
            return report(checked)

        return once

    first = RunPrerequisites.of_run(tmp_path / "evidence", "run-a", TARGET, "conditions")
    taken = first.get(make(3))
    again = RunPrerequisites.of_run(tmp_path / "evidence", "run-a", TARGET, "conditions").get(make(4))
    assert made == [3], "read as made, not made again"
    assert again.checked == 3 and again.blocking_elements == ["p"]
    for name in ("explained", "unexplained", "loaded_ids"):
        assert getattr(again, name).equals(getattr(taken, name))
    later = RunPrerequisites.of_run(tmp_path / "evidence", "run-b", TARGET, "conditions").get(make(5))
    assert made == [3, 5] and later.checked == 5, "another run makes its own"
    other_element = RunPrerequisites.of_run(tmp_path / "evidence", "run-b", TARGET, "encounters").get(make(6))
    assert other_element.checked == 6


def test_a_target_is_blamed_on_the_element_whose_ledger_holds_it_or_its_identifier_system():
    from migration_assets.verify.prerequisites import with_producers

    ledger = pl.DataFrame(
        {
            "resource_type": ["Encounter"],
            "identifier_system": ["urn:visit"],
            "identifier_value": ["V1"],
            "disposition": ["successful"],
            "element": ["visits"],
        }
    )
    targets = pl.DataFrame(
        {
            "resource_type": ["Encounter", "Encounter", "Patient"],
            "identifier_system": ["urn:visit", "urn:visit", "urn:person"],
            "identifier_value": ["V1", "V2", "P1"],
        }
    )
    known = with_producers(targets.join(ledger, on=list(targets.columns), how="left"), ledger)
    blamed = dict(zip(known["identifier_value"], known["element"], strict=True))
    # V1 by the ledger's row, V2 (never loaded) by the system visits writes, P1 by the type patients creates.
    assert blamed == {"V1": "visits", "V2": "visits", "P1": "patients"}
    assert known.height == 3, "each target once"


def test_a_target_two_elements_might_create_counts_once_as_missing():
    missing = pl.DataFrame(
        {
            "resource_type": ["Encounter", "Encounter"],
            "identifier_system": ["urn:x", "urn:x"],
            "identifier_value": ["E1", "E1"],
            "element": ["visit_details", "visits"],
        }
    )
    blamed_on_both = PrerequisiteReport(checked=1, explained=missing.clear(), unexplained=missing)
    assert blamed_on_both.missing == 1 and blamed_on_both.blocking_elements == ["visit_details", "visits"]
