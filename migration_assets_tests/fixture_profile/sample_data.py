"""The fixture profile's sample legacy tables: small, the same for the same size and seed, with one row of
each oddity the platform must handle (a bad date, an orphan reference, an unknown code).

    patients   patient_id, first_name, last_name, birth_date, gender     P001, P002, ...
    visits     visit_id, patient_id, visit_date, reason                   three per patient
    visit_notes note_id, visit_id, note_text                              one for every first visit
    conditions condition_id, patient_id, code, onset_date                 one or two per patient

The oddities come with 20 patients or more: fewer rows would put them over the 5% quarantine threshold.
"""

import random
from datetime import UTC, date, datetime, timedelta

import polars as pl

UPDATED_AT = "updated_at"
ODDITIES_FROM = 20  # patients

FIRST_NAMES = ["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"]
LAST_NAMES = ["Lee", "Kim", "Diaz", "Moss", "Nash", "Ortiz", "Park", "Quinn"]
GENDERS = ["M", "F", "F", "M", "O", "U"]
REASONS = ["checkup", "follow-up", "cough", "back pain"]
CODES = ["HT", "DM2", "ASTH", "BACK"]  # BACK is known only locally (terminology/condition_codes.csv)


def build_sample_tables(patients: int, seed: int = 7, updated_at: bool = False) -> dict[str, pl.DataFrame]:
    """The tables, parents first; `updated_at` adds a change column to each (fixed-width UTC text)."""
    rng = random.Random(seed)
    keys = [f"P{i:03d}" for i in range(1, patients + 1)]
    tables = {
        "patients": pl.DataFrame(
            {
                "patient_id": keys,
                "first_name": [rng.choice(FIRST_NAMES) for _ in keys],
                "last_name": [rng.choice(LAST_NAMES) for _ in keys],
                "birth_date": [_day(rng, date(1940, 1, 1), 25000) for _ in keys],
                "gender": [rng.choice(GENDERS) for _ in keys],
            }
        ),
        "visits": _visits(rng, keys),
        "visit_notes": _notes(keys),
        "conditions": _conditions(rng, keys),
    }
    if updated_at:
        tables = {name: _with_updated_at(frame, rng) for name, frame in tables.items()}
    return tables


def _visits(rng: random.Random, patients: list[str]) -> pl.DataFrame:
    rows = [
        (f"V{i:03d}{n}", patient, _day(rng, date(2020, 1, 1), 1800), rng.choice(REASONS))
        for i, patient in enumerate(patients, start=1)
        for n in range(3)
    ]
    if len(patients) >= ODDITIES_FROM:
        rows.append(("VODD1", "PGONE", "2022-03-04", "checkup"))  # orphan: no such patient
        rows.append(("VODD2", patients[0], "2021-02-30", "cough"))  # bad row: no such day
    return pl.DataFrame(rows, schema=["visit_id", "patient_id", "visit_date", "reason"], orient="row")


def _notes(patients: list[str]) -> pl.DataFrame:
    rows = [(f"N{i:03d}", f"V{i:03d}0", f"Seen for a visit, note {i}.") for i in range(1, len(patients) + 1)]
    return pl.DataFrame(rows, schema=["note_id", "visit_id", "note_text"], orient="row")


def _conditions(rng: random.Random, patients: list[str]) -> pl.DataFrame:
    rows = [
        (f"C{i:03d}{n}", patient, rng.choice(CODES), _day(rng, date(2010, 1, 1), 5000))
        for i, patient in enumerate(patients, start=1)
        for n in range(1 + i % 2)
    ]
    if len(patients) >= ODDITIES_FROM:
        rows.append(("CODD1", patients[1], "XYZ", "2020-05-06"))  # unknown code: not in the map
    return pl.DataFrame(rows, schema=["condition_id", "patient_id", "code", "onset_date"], orient="row")


def _day(rng: random.Random, start: date, span_days: int) -> str:
    return (start + timedelta(days=rng.randrange(span_days))).isoformat()


def _with_updated_at(frame: pl.DataFrame, rng: random.Random) -> pl.DataFrame:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    stamps = [
        (start + timedelta(seconds=rng.randrange(365 * 86400))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for _ in range(frame.height)
    ]
    return frame.with_columns(pl.Series(UPDATED_AT, stamps))
