"""Sample legacy EHR generator: determinism, the guide's rows, integrity and plausibility."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import polars as pl
import pytest

from migration_assets.elements.builders import valid_npi
from migration_assets.profiles.seed_ehr.sample_data import (
    CONDITION_CATALOGUE,
    ENCOUNTER_TYPES,
    NULLABLE_COLUMNS,
    TABLE_COLUMNS,
    TABLE_PRIMARY_KEYS,
    TABLES,
    _width,
    build_sample_tables,
    generate_sample_ehr,
    main,
    sample_with_files,
)

GUIDE_PATIENTS = [
    ("P001", "John", "Doe", "1980-07-15", "M"),
    ("P002", "Jane", "Smith", "1992-11-30", "F"),
]
GUIDE_PATIENT_CONDITIONS = [
    ("PC001", "P001", "HT001", "2022-03-15"),
    ("PC002", "P001", "DM002", "2023-01-10"),
    ("PC003", "P002", "HT001", "2023-02-22"),
]
GUIDE_ENCOUNTERS = [
    ("E001", "P001", "2023-06-15", "checkup", "DR001"),
    ("E002", "P002", "2023-06-16", "emergency", None),
]
GUIDE_NOTES = [
    (
        "N001",
        "E001",
        "Routine check-up. Patient's hypertension is well-controlled. Diabetes management plan reviewed.",
    ),
    (
        "N002",
        "E002",
        ("Emergency visit due to severe headache. Patient's hypertension may need adjustment. Further tests ordered."),
    ),
]


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return build_sample_tables(5000, seed=7)


def test_tables_and_columns(tables: dict[str, pl.DataFrame]) -> None:
    assert tuple(tables) == TABLES
    assert tables["patients"].columns == ["patient_id", "first_name", "last_name", "birth_date", "gender"]
    assert tables["conditions"].columns == ["condition_id", "condition_name", "icd10_code"]
    assert tables["patient_conditions"].columns == ["patient_condition_id", "patient_id", "condition_id", "onset_date"]
    assert tables["encounters"].columns == ["encounter_id", "patient_id", "date", "type", "practitioner_id"]
    assert tables["encounter_notes"].columns == ["note_id", "encounter_id", "note_text"]
    assert set(TABLE_COLUMNS) == set(TABLES) == set(TABLE_PRIMARY_KEYS)
    for name, df in tables.items():
        assert tuple(df.columns) == TABLE_COLUMNS[name]
        assert TABLE_PRIMARY_KEYS[name] in df.columns
        assert set(df.schema.values()) == {pl.String}
        filled = [c for c in df.columns if c not in NULLABLE_COLUMNS.get(name, ())]
        assert df.select(filled).null_count().sum_horizontal().item() == 0, name


def test_guide_rows_come_first_and_exact(tables: dict[str, pl.DataFrame]) -> None:
    assert tables["patients"].head(2).rows() == GUIDE_PATIENTS
    assert tables["patient_conditions"].head(3).rows() == GUIDE_PATIENT_CONDITIONS
    assert tables["encounters"].head(2).rows() == GUIDE_ENCOUNTERS
    assert tables["encounter_notes"].head(2).rows() == GUIDE_NOTES
    cond = dict(
        zip(
            tables["conditions"]["condition_id"],
            tables["conditions"].select("condition_name", "icd10_code").rows(),
            strict=True,
        )
    )
    assert cond["HT001"] == ("Hypertension", "I10")
    assert cond["DM002"] == ("Diabetes", "E11")


def test_two_patients_is_exactly_the_guide() -> None:
    t = build_sample_tables(2)
    assert t["patients"].rows() == GUIDE_PATIENTS
    assert t["patient_conditions"].rows() == GUIDE_PATIENT_CONDITIONS
    assert t["encounters"].rows() == GUIDE_ENCOUNTERS
    assert t["encounter_notes"].rows() == GUIDE_NOTES
    # The rest of the chart: the guide's patients get a few rows of each, and the clinic at least
    # three practitioners.
    assert t["practitioners"].height == 3 and t["practitioners"]["practitioner_id"][0] == "DR001"
    assert t["patient_medications"]["patient_medication_id"].to_list() == ["PM001", "PM002", "PM003"]
    assert t["patient_allergies"]["patient_allergy_id"].to_list() == ["AL001"]
    assert t["observations"]["observation_id"].to_list() == ["OB001", "OB002", "OB003", "OB004"]
    with pytest.raises(ValueError, match="patients must be >= 2"):
        build_sample_tables(1)


def test_deterministic_per_seed() -> None:
    a, b, c = build_sample_tables(3000, 11), build_sample_tables(3000, 11), build_sample_tables(3000, 12)
    for table in TABLES:
        assert a[table].equals(b[table]), table
    assert not a["patients"].equals(c["patients"])
    # Serialised bytes are identical too.
    assert a["encounter_notes"].write_csv() == b["encounter_notes"].write_csv()


def test_keys_unique_and_styled(tables: dict[str, pl.DataFrame]) -> None:
    pats = tables["patients"]
    assert pats.height == 5000
    assert pats["patient_id"].is_unique().all()
    assert pats["patient_id"][2] == "P000003" and pats["patient_id"][-1] == "P005000"
    for table, key, pattern in [
        ("patient_conditions", "patient_condition_id", r"^PC\d{3,}$"),
        ("encounters", "encounter_id", r"^E\d{3,}$"),
        ("encounter_notes", "note_id", r"^N\d{3,}$"),
        ("practitioners", "practitioner_id", r"^DR\d{3,}$"),
        ("patient_medications", "patient_medication_id", r"^PM\d{3,}$"),
        ("patient_allergies", "patient_allergy_id", r"^AL\d{3,}$"),
        ("observations", "observation_id", r"^OB\d{3,}$"),
        ("patients", "patient_id", r"^P\d{3,}$"),
    ]:
        assert tables[table][key].is_unique().all(), table
        assert tables[table][key].str.contains(pattern).all(), table


def test_key_width_grows_with_size() -> None:
    # 6 digits by default, 7 for a million patients; the guide's ids never change.
    assert _width(1000) == 6 and _width(999_999) == 6 and _width(1_000_000) == 7


def test_referential_integrity(tables: dict[str, pl.DataFrame]) -> None:
    pats, conds = tables["patients"], tables["conditions"]
    pc, enc, notes = tables["patient_conditions"], tables["encounters"], tables["encounter_notes"]
    assert pc.join(pats, on="patient_id", how="anti").height == 0
    assert pc.join(conds, on="condition_id", how="anti").height == 0
    assert enc.join(pats, on="patient_id", how="anti").height == 0
    assert notes.join(enc, on="encounter_id", how="anti").height == 0
    assert notes["encounter_id"].is_unique().all()  # at most one note per encounter
    assert pc.select("patient_id", "condition_id").is_unique().all()
    pract = tables["practitioners"]
    assert enc.drop_nulls("practitioner_id").join(pract, on="practitioner_id", how="anti").height == 0
    for table in ("patient_medications", "patient_allergies", "observations"):
        assert tables[table].join(pats, on="patient_id", how="anti").height == 0, table
    obs = tables["observations"].drop_nulls("encounter_id")
    # An observation taken at an encounter belongs to that encounter's patient.
    assert obs.join(enc, on=["encounter_id", "patient_id"], how="anti").height == 0


def test_the_rest_of_the_chart_at_scale_and_with_a_few_odd_values(tables: dict[str, pl.DataFrame]) -> None:
    n = tables["patients"].height
    pract, meds, allergies, obs = (
        tables[t] for t in ("practitioners", "patient_medications", "patient_allergies", "observations")
    )
    assert pract.height == n // 50
    assert 1.3 < meds.height / n < 1.7
    assert 0.4 < allergies.height / n < 0.6
    assert 4.5 < obs.height / n < 5.5
    assert 0.85 < tables["encounters"]["practitioner_id"].is_not_null().mean() < 0.97  # type: ignore[operator]
    # Odd values, each a small share: invalid or missing NPIs, partial and impossible dates,
    # non-UCUM units, non-numeric results, unknown statuses and severities, times without offset.
    npi_ok = pract.select(valid_npi(pl.col("npi"))).to_series()
    assert 0.85 < npi_ok.mean() < 0.99  # type: ignore[operator]
    assert 0 < meds["start_date"].str.len_chars().is_in([4, 7]).mean() < 0.1  # type: ignore[operator]
    assert 0 < meds["start_date"].str.contains("-02-30").sum() < n * 0.01
    assert 0 < (meds["status"] == "Pending review").sum() < n * 0.02
    assert 0 < (allergies["severity"] == "high").sum() < allergies.height * 0.02
    assert obs["unit"].is_in(["mmHg", "bpm", "F", "lbs", "uIU/mL"]).any()
    assert 0 < obs["value"].is_in(["hemolyzed", "QNS", "see comment"]).sum() < obs.height * 0.01
    with_offset = obs["observed_at"].str.contains(r"T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")
    date_only = obs["observed_at"].str.contains(r"^\d{4}-\d{2}(-\d{2})?$")
    assert (with_offset | date_only).mean() > 0.99  # type: ignore[operator]
    assert with_offset.any() and date_only.any()


def test_plausible_distributions(tables: dict[str, pl.DataFrame]) -> None:
    pats, pc, enc, notes = (tables[t] for t in ("patients", "patient_conditions", "encounters", "encounter_notes"))
    n = pats.height
    assert 1.6 < pc.height / n < 2.2
    assert 1.8 < enc.height / n < 2.2
    assert 0.75 < notes.height / enc.height < 0.95
    assert set(pats["gender"].unique()) == {"M", "F", "O", "U"}
    assert pats["gender"].is_in(["M", "F"]).mean() > 0.9  # type: ignore[operator]
    assert set(enc["type"].unique()) == {t for t, _ in ENCOUNTER_TYPES}
    assert 15 <= len(CONDITION_CATALOGUE) <= 25
    birth = pats["birth_date"].str.to_date("%Y-%m-%d")
    assert str(birth.min()) >= "1930-01-01"
    assert str(birth.max()) <= "2020-12-31"
    # Accented and apostrophised names appear.
    names = set(pats["first_name"]) | set(pats["last_name"])
    assert names & {"José", "Zoë", "Nguyễn", "O'Brien"}


def test_dates_after_birth(tables: dict[str, pl.DataFrame]) -> None:
    pats = tables["patients"].select("patient_id", birth=pl.col("birth_date").str.to_date())
    pc = tables["patient_conditions"].join(pats, on="patient_id").with_columns(d=pl.col("onset_date").str.to_date())
    enc = tables["encounters"].join(pats, on="patient_id").with_columns(d=pl.col("date").str.to_date())
    assert pc.filter(pl.col("d") <= pl.col("birth")).height == 0
    assert enc.filter(pl.col("d") <= pl.col("birth")).height == 0
    assert str(enc["d"].max()) <= "2025-06-30"


def test_generate_csv_and_parquet(tmp_path: Path) -> None:
    expected = build_sample_tables(50, 3)
    counts = generate_sample_ehr(f"csv:///{tmp_path}/csv", patients=50, seed=3)
    assert counts == {t: df.height for t, df in expected.items()}
    generate_sample_ehr(f"parquet:///{tmp_path}/pq", patients=50, seed=3)
    # The documents' file paths name the folder their files were written to, beside each database.
    expected = sample_with_files(expected, f"parquet:///{tmp_path}/pq")
    for table in TABLES:
        assert (tmp_path / "csv" / f"{table}.csv").is_file()
        assert pl.read_parquet(tmp_path / "pq" / f"{table}.parquet").equals(expected[table])
    # Byte-identical rerun.
    first = (tmp_path / "csv" / "encounter_notes.csv").read_bytes()
    generate_sample_ehr(f"csv:///{tmp_path}/csv", patients=50, seed=3)
    assert (tmp_path / "csv" / "encounter_notes.csv").read_bytes() == first


def test_cli_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "legacy.db"
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--url", f"sqlite:///{db}", "--patients", "20", "--seed", "1"]) == 0
    assert db.is_file()
    text = out.getvalue()
    assert "patients\t20" in text and "conditions\t20" in text
