"""The sample profile's own odd rows, at the frame (the platform's bad-input catalogue runs on the fixture
profile: migration_assets_tests/test_bad_input.py): medication statuses and periods, encounter types and
practitioners. Each is quarantined with its rule and reason, or mapped at the precision the source has."""

import json

import polars as pl

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import TABLE_COLUMNS, build_sample_tables

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
LISINOPRIL = ("P001", "LIS10", "Lisinopril 10 mg tablet", "Take 1")


def frame_with(element: str, table: str, rows: list[tuple]) -> pl.DataFrame:
    tables = build_sample_tables(patients=2)
    extra = pl.DataFrame(rows, schema=dict.fromkeys(TABLE_COLUMNS[table], pl.String), orient="row")
    tables[table] = pl.concat([tables[table], extra])
    chosen = PROFILE.element(element)
    return build_frame(chosen, chosen.extract(tables), SYSTEM)


def unit(frame: pl.DataFrame, key: str) -> dict:
    (row,) = frame.filter(pl.col("unit_key") == key).iter_rows(named=True)
    return row


def test_medication_statuses_and_periods():
    frame = frame_with(
        "medications",
        "patient_medications",
        [
            ("PM-STATUS", *LISINOPRIL, "paused-ish", "2022-01-01", None),
            ("PM-PERIOD", *LISINOPRIL, "Completed", "2022-05-01", "2022-04-30"),
            ("PM-PARTIAL", *LISINOPRIL, "Active", "2020-05", None),
            ("PM-CASE", *LISINOPRIL, "  ON HOLD ", "2021", "2021-06"),
        ],
    )
    status, period = unit(frame, "PM-STATUS"), unit(frame, "PM-PERIOD")
    assert (status["quarantine_rule"], status["quarantine_reason"]) == (
        "unknown_code",
        "status paused-ish has no entry in terminology/medication_status.csv",
    )
    assert (period["quarantine_rule"], period["quarantine_reason"]) == (
        "invalid_period",
        "end_date lies before start_date",
    )
    # Partial dates keep their precision; a status written "  ON HOLD " maps like "on hold".
    partial = json.loads(unit(frame, "PM-PARTIAL")["resource"])
    assert partial["effectivePeriod"] == {"start": "2020-05"}
    on_hold = json.loads(unit(frame, "PM-CASE")["resource"])
    assert on_hold["status"] == "on-hold" and on_hold["effectivePeriod"] == {"start": "2021", "end": "2021-06"}


def test_encounters_of_an_unknown_practitioner_or_type_are_quarantined():
    frame = frame_with(
        "encounters",
        "encounters",
        [
            ("E-NODOC", "P001", "2023-01-04", "checkup", "DR-NOBODY"),
            ("E-TYPE", "P001", "2023-01-05", "séance", "DR001"),
        ],
    )
    nodoc, odd_type = unit(frame, "E-NODOC"), unit(frame, "E-TYPE")
    assert (nodoc["quarantine_rule"], nodoc["quarantine_reason"]) == (
        "orphan_reference",
        "practitioner_id DR-NOBODY is not in the practitioners table",
    )
    assert (odd_type["quarantine_rule"], odd_type["quarantine_reason"]) == (
        "unknown_code",
        "encounter type has no entry in terminology/encounter_types.csv",
    )
