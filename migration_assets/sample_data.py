"""Sample legacy EHR generator.

Produces the tables of Medplum's "Building Migration Pipelines" guide (patients, conditions,
patient_conditions, encounters, encounter_notes) at any size, deterministically for a seed, and
writes them to SQLite, PostgreSQL, or a folder of CSV / Parquet files.

Randomness is a counter-based splitmix64 written as polars expressions: every random value is a
pure function of (seed, stream, row key), so generation is vectorised, needs no numpy, and the same
seed + size gives byte-identical tables regardless of thread scheduling.

CLI: ``python -m migration_assets.sample_data --url sqlite:///.demo/legacy.db --patients 1000``
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import polars as pl

from migration_assets.source import parse_source_url, redact_url

__all__ = [
    "CONDITION_CATALOGUE",
    "ENCOUNTER_TYPES",
    "TABLES",
    "TABLE_PRIMARY_KEYS",
    "build_sample_tables",
    "generate_sample_ehr",
    "write_tables",
]

# Parents first: the order in which tables are written and (in reverse) dropped.
TABLES: tuple[str, ...] = ("patients", "conditions", "patient_conditions", "encounters", "encounter_notes")

TABLE_PRIMARY_KEYS: dict[str, str] = {
    "patients": "patient_id",
    "conditions": "condition_id",
    "patient_conditions": "patient_condition_id",
    "encounters": "encounter_id",
    "encounter_notes": "note_id",
}

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("patient_id", "first_name", "last_name", "birth_date", "gender"),
    "conditions": ("condition_id", "condition_name", "icd10_code"),
    "patient_conditions": ("patient_condition_id", "patient_id", "condition_id", "onset_date"),
    "encounters": ("encounter_id", "patient_id", "date", "type"),
    "encounter_notes": ("note_id", "encounter_id", "note_text"),
}

# (local code, name, ICD-10-CM code, relative prevalence weight). HT001 / DM002 are the guide's.
CONDITION_CATALOGUE: tuple[tuple[str, str, str, float], ...] = (
    ("HT001", "Hypertension", "I10", 20.0),
    ("DM002", "Diabetes", "E11", 10.0),
    ("AS003", "Asthma", "J45.909", 5.0),
    ("HL004", "Hyperlipidemia", "E78.5", 12.0),
    ("CO005", "Chronic obstructive pulmonary disease", "J44.9", 3.0),
    ("DP006", "Major depressive disorder", "F32.9", 5.0),
    ("AX007", "Generalized anxiety disorder", "F41.1", 5.0),
    ("OA008", "Osteoarthritis of knee", "M17.9", 4.0),
    ("HF009", "Heart failure", "I50.9", 2.0),
    ("AF010", "Atrial fibrillation", "I48.91", 2.0),
    ("CK011", "Chronic kidney disease", "N18.9", 2.0),
    ("HY012", "Hypothyroidism", "E03.9", 4.0),
    ("OB013", "Obesity", "E66.9", 6.0),
    ("GR014", "Gastro-esophageal reflux disease", "K21.9", 4.0),
    ("MG015", "Migraine", "G43.909", 3.0),
    ("LB016", "Low back pain", "M54.50", 4.0),
    ("AR017", "Allergic rhinitis", "J30.9", 3.0),
    ("OP018", "Osteoporosis", "M81.0", 2.0),
    ("CA019", "Coronary artery disease", "I25.10", 2.0),
    ("PR020", "Prediabetes", "R73.03", 3.0),
)

# (type, weight). Downstream mapping must know this closed set.
ENCOUNTER_TYPES: tuple[tuple[str, float], ...] = (
    ("checkup", 0.45),
    ("followup", 0.25),
    ("emergency", 0.15),
    ("telehealth", 0.15),
)

_MALE_FIRST = (
    "John", "Michael", "David", "James", "Robert", "William", "Daniel", "Thomas", "Christopher", "Matthew",
    "Anthony", "Mark", "Joseph", "Carlos", "José", "Luis", "Mohammed", "Ahmed", "Wei", "Hiroshi", "Raj",
    "Arjun", "Liam", "Noah", "Ethan", "Lucas", "Mateo", "François", "Björn", "Seán",
)
_FEMALE_FIRST = (
    "Jane", "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Sarah", "Karen",
    "Emily", "Olivia", "Emma", "Sophia", "Isabella", "María", "Zoë", "Chloé", "Renée", "Fatima", "Aisha",
    "Mei", "Yuki", "Priya", "Ananya", "Ingrid", "Siobhán", "Lucía", "Amélie", "Noor",
)
_NEUTRAL_FIRST = ("Alex", "Sam", "Jordan", "Taylor", "Robin", "Casey", "Morgan", "Jamie", "Riley", "Avery")
_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernández", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Pérez", "Thompson", "White", "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young",
    "Nguyễn", "Trần", "Kim", "Park", "Chen", "Wang", "Patel", "Singh", "Khan", "O'Brien", "O'Connor",
    "Müller", "Schröder", "Dubois", "Ødegård", "Kowalski", "Novák", "Silva", "Gonçalves", "Ivanova",
)

_NOTE_OPENERS: dict[str, tuple[str, ...]] = {
    "checkup": (
        "Routine check-up.",
        "Annual wellness visit.",
        "Scheduled preventive visit.",
    ),
    "followup": (
        "Follow-up visit.",
        "Follow-up on recent lab results.",
        "Return visit to review treatment response.",
    ),
    "emergency": (
        "Emergency visit due to chest pain.",
        "Emergency visit due to severe headache.",
        "Emergency visit after a fall at home.",
    ),
    "telehealth": (
        "Telehealth consultation.",
        "Video visit at patient's request.",
        "Telephone follow-up.",
    ),
}
_NOTE_FINDINGS = (
    "Patient's hypertension is well-controlled.",
    "Blood pressure elevated at 150/95.",
    "HbA1c 7.2%, slightly above target.",
    "No acute distress; vitals within normal limits.",
    "Patient reports improved sleep and energy.",
    "Mild shortness of breath on exertion.",
    "Patient reports intermittent lower back pain.",
    "Weight stable since last visit.",
    "Patient's diabetes is poorly controlled.",
    "Lungs clear to auscultation; heart regular rate and rhythm.",
)
_NOTE_PLANS = (
    "Diabetes management plan reviewed.",
    "Continue current medications.",
    "Further tests ordered.",
    "Medication dose adjusted; recheck in 4 weeks.",
    "Referred to cardiology.",
    "Lifestyle counselling provided (diet, exercise).",
    "Return if symptoms worsen.",
    "Labs ordered: CBC, BMP, lipid panel.",
)

# Fixed "today" so output never depends on the wall clock.
_BIRTH_MIN = dt.date(1930, 1, 1)
_BIRTH_MAX = dt.date(2020, 12, 31)
_DATA_END = dt.date(2025, 6, 30)
_ENCOUNTERS_START = dt.date(2015, 1, 1)
_EPOCH = dt.date(1970, 1, 1)

# Poisson(2) CDF: counts of conditions / encounters per generated patient (mean ~2, capped at 8).
_POISSON2_CDF = (0.1353, 0.4060, 0.6767, 0.8571, 0.9473, 0.9834, 0.9955, 0.9989)

_M64 = (1 << 64) - 1


def _splitmix64_int(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _u64(v: int) -> pl.Expr:
    return pl.lit(v, dtype=pl.UInt64)


def _uniform(key: pl.Expr, seed: int, stream: int) -> pl.Expr:
    """Uniform float in [0, 1) from splitmix64(key + offset(seed, stream)); UInt64 arithmetic wraps."""
    offset = _splitmix64_int(_splitmix64_int(seed & _M64) ^ (stream * 0xD1B54A32D192ED03 & _M64))
    x = key.cast(pl.UInt64) + _u64(offset)
    x = x + _u64(0x9E3779B97F4A7C15)
    x = (x ^ (x // _u64(1 << 30))) * _u64(0xBF58476D1CE4E5B9)
    x = (x ^ (x // _u64(1 << 27))) * _u64(0x94D049BB133111EB)
    x = x ^ (x // _u64(1 << 31))
    # Top 53 bits -> exact double in [0, 1).
    return (x // _u64(1 << 11)).cast(pl.Float64) / float(1 << 53)


def _pick(options: tuple[str, ...], u: pl.Expr) -> pl.Expr:
    idx = (u * len(options)).floor().cast(pl.UInt32)
    return pl.lit(pl.Series(options, dtype=pl.String)).gather(idx)


def _weighted_index(weights: tuple[float, ...], u: pl.Expr) -> pl.Expr:
    """Index i with probability weights[i] / sum(weights), for u uniform in [0, 1)."""
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights[:-1]:
        acc += w / total
        cum.append(acc)
    # Thresholds <= u = chosen index (one binary search per row).
    return pl.lit(pl.Series(cum, dtype=pl.Float64)).search_sorted(u, side="right").cast(pl.UInt32)


def _pick_weighted(options: tuple[str, ...], weights: tuple[float, ...], u: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(options, dtype=pl.String)).gather(_weighted_index(weights, u))


def _poisson2(u: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(_POISSON2_CDF, dtype=pl.Float64)).search_sorted(u, side="right").cast(pl.UInt32)


def _days(d: dt.date) -> int:
    return (d - _EPOCH).days


def _iso(days: pl.Expr) -> pl.Expr:
    return days.cast(pl.Int32).cast(pl.Date).cast(pl.String)


def _key(prefix: str, number: pl.Expr, width: int) -> pl.Expr:
    return pl.lit(prefix) + number.cast(pl.String).str.zfill(width)


def _width(max_number: int) -> int:
    # At least 6 digits so ids look alike across sizes; wider when the size needs it.
    return max(6, len(str(max_number)))


def _guide_tables() -> dict[str, pl.DataFrame]:
    s = pl.String
    return {
        "patients": pl.DataFrame(
            {
                "patient_id": ["P001", "P002"],
                "first_name": ["John", "Jane"],
                "last_name": ["Doe", "Smith"],
                "birth_date": ["1980-07-15", "1992-11-30"],
                "gender": ["M", "F"],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["patients"], s),
        ),
        "patient_conditions": pl.DataFrame(
            {
                "patient_condition_id": ["PC001", "PC002", "PC003"],
                "patient_id": ["P001", "P001", "P002"],
                "condition_id": ["HT001", "DM002", "HT001"],
                "onset_date": ["2022-03-15", "2023-01-10", "2023-02-22"],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["patient_conditions"], s),
        ),
        "encounters": pl.DataFrame(
            {
                "encounter_id": ["E001", "E002"],
                "patient_id": ["P001", "P002"],
                "date": ["2023-06-15", "2023-06-16"],
                "type": ["checkup", "emergency"],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["encounters"], s),
        ),
        "encounter_notes": pl.DataFrame(
            {
                "note_id": ["N001", "N002"],
                "encounter_id": ["E001", "E002"],
                "note_text": [
                    (
                        "Routine check-up. Patient's hypertension is well-controlled. "
                        "Diabetes management plan reviewed."
                    ),
                    (
                        "Emergency visit due to severe headache. Patient's hypertension may need adjustment. "
                        "Further tests ordered."
                    ),
                ],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["encounter_notes"], s),
        ),
    }


def build_sample_tables(patients: int = 1000, seed: int = 7) -> dict[str, pl.DataFrame]:
    """Build the legacy tables in memory (all columns pl.String).

    ``patients`` is the total patient count including the guide's P001 and P002, so ``patients=2``
    yields exactly the guide's dataset. Same (patients, seed) -> identical frames.
    """
    if patients < 2:
        raise ValueError(f"patients must be >= 2 (the guide's P001 and P002 are always included), got {patients}")
    guide = _guide_tables()
    conditions = pl.DataFrame(
        {
            "condition_id": [c[0] for c in CONDITION_CATALOGUE],
            "condition_name": [c[1] for c in CONDITION_CATALOGUE],
            "icd10_code": [c[2] for c in CONDITION_CATALOGUE],
        },
        schema=dict.fromkeys(TABLE_COLUMNS["conditions"], pl.String),
    )

    # --- patients: numbers 3..patients, every attribute a function of (seed, stream, number).
    birth_lo, birth_span = _days(_BIRTH_MIN), _days(_BIRTH_MAX) - _days(_BIRTH_MIN) + 1
    n = pl.col("n")
    genders = ("M", "F", "O", "U")
    gen = pl.DataFrame({"n": pl.int_range(3, patients + 1, dtype=pl.UInt64, eager=True)}).with_columns(
        g=_weighted_index((0.485, 0.485, 0.015, 0.015), _uniform(n, seed, 1)),
        u_first=_uniform(n, seed, 2),
        birth_days=(pl.lit(birth_lo) + (_uniform(n, seed, 4) * birth_span).floor().cast(pl.Int64)),
        last_name=_pick(_LAST, _uniform(n, seed, 3)),
        n_conditions=_poisson2(_uniform(n, seed, 5)),
        n_encounters=_poisson2(_uniform(n, seed, 6)),
    )
    # One flat first-name list; each gender draws from its own slice (O/U from neutral names).
    first_names = _MALE_FIRST + _FEMALE_FIRST + _NEUTRAL_FIRST
    offsets = (0, len(_MALE_FIRST), len(_MALE_FIRST) + len(_FEMALE_FIRST), len(_MALE_FIRST) + len(_FEMALE_FIRST))
    sizes = (len(_MALE_FIRST), len(_FEMALE_FIRST), len(_NEUTRAL_FIRST), len(_NEUTRAL_FIRST))
    g = pl.col("g")
    first_idx = pl.lit(pl.Series(offsets, dtype=pl.UInt32)).gather(g) + (
        pl.col("u_first") * pl.lit(pl.Series(sizes, dtype=pl.Float64)).gather(g)
    ).floor().cast(pl.UInt32)
    gen = gen.with_columns(
        gender=pl.lit(pl.Series(genders, dtype=pl.String)).gather(g),
        first_name=pl.lit(pl.Series(first_names, dtype=pl.String)).gather(first_idx),
    )
    pwidth = _width(patients)
    gen = gen.with_columns(patient_id=_key("P", n, pwidth))
    patients_df = pl.concat(
        [
            guide["patients"],
            gen.select(
                "patient_id", "first_name", "last_name", birth_date=_iso(pl.col("birth_days")), gender="gender"
            ),
        ]
    )

    # --- patient_conditions: explode per-patient counts; row key = patient number * 16 + ordinal.
    end = _days(_DATA_END)
    rowkey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    pc = (
        gen.select("n", "patient_id", "birth_days", k=pl.int_ranges(0, "n_conditions", dtype=pl.UInt32))
        .explode("k")
        .drop_nulls("k")
        .with_columns(u_cond=_uniform(rowkey, seed, 7), u_onset=_uniform(rowkey, seed, 8))
        .with_columns(
            condition_id=_pick_weighted(
                tuple(c[0] for c in CONDITION_CATALOGUE), tuple(c[3] for c in CONDITION_CATALOGUE), pl.col("u_cond")
            ),
            # Strictly after birth, no later than the fixed data end date.
            onset_days=pl.col("birth_days")
            + 1
            + (pl.col("u_onset") * (end - pl.col("birth_days"))).floor().cast(pl.Int64),
        )
        # A patient has each condition at most once.
        .unique(subset=["n", "condition_id"], keep="first", maintain_order=True)
    )
    pc_width = _width(pc.height + 3)
    pc = pc.select(
        patient_condition_id=_key("PC", pl.int_range(4, pl.len() + 4, dtype=pl.UInt64), pc_width),
        patient_id="patient_id",
        condition_id="condition_id",
        onset_date=_iso(pl.col("onset_days")),
    )

    # --- encounters: recent (since 2015 or birth), chronological within each patient.
    enc_start = _days(_ENCOUNTERS_START)
    types = tuple(t[0] for t in ENCOUNTER_TYPES)
    enc = (
        gen.select("n", "patient_id", "birth_days", k=pl.int_ranges(0, "n_encounters", dtype=pl.UInt32))
        .explode("k")
        .drop_nulls("k")
        .with_columns(
            lo=pl.max_horizontal(pl.col("birth_days") + 1, pl.lit(enc_start)),
            u_date=_uniform(rowkey, seed, 9),
            t=_weighted_index(tuple(t[1] for t in ENCOUNTER_TYPES), _uniform(rowkey, seed, 10)),
            has_note=_uniform(rowkey, seed, 11) < 0.85,
            u_open=_uniform(rowkey, seed, 12),
            u_find=_uniform(rowkey, seed, 13),
            u_plan=_uniform(rowkey, seed, 14),
        )
        .with_columns(
            days=pl.col("lo") + (pl.col("u_date") * (end - pl.col("lo") + 1)).floor().cast(pl.Int64),
            type=pl.lit(pl.Series(types, dtype=pl.String)).gather(pl.col("t")),
        )
        .sort("n", "days", "k")
    )
    enc_width = _width(enc.height + 2)
    enc = enc.with_columns(encounter_id=_key("E", pl.int_range(3, pl.len() + 3, dtype=pl.UInt64), enc_width))
    encounters_df = pl.concat(
        [
            guide["encounters"],
            enc.select("encounter_id", "patient_id", date=_iso(pl.col("days")), type="type"),
        ]
    )

    # --- encounter_notes: one for most encounters; text = opener(type) + finding + plan.
    # Openers: one flat list, the same number of variants per encounter type, in ENCOUNTER_TYPES order.
    openers = tuple(o for t in types for o in _NOTE_OPENERS[t])
    per_type = len(_NOTE_OPENERS[types[0]])
    assert all(len(_NOTE_OPENERS[t]) == per_type for t in types)
    opener_idx = pl.col("t") * per_type + (pl.col("u_open") * per_type).floor().cast(pl.UInt32)
    notes = enc.filter("has_note").select(
        "encounter_id",
        note_text=pl.concat_str(
            [
                pl.lit(pl.Series(openers, dtype=pl.String)).gather(opener_idx),
                _pick(_NOTE_FINDINGS, pl.col("u_find")),
                _pick(_NOTE_PLANS, pl.col("u_plan")),
            ],
            separator=" ",
        ),
    )
    note_width = _width(notes.height + 2)
    notes = notes.select(
        note_id=_key("N", pl.int_range(3, pl.len() + 3, dtype=pl.UInt64), note_width),
        encounter_id="encounter_id",
        note_text="note_text",
    )

    return {
        "patients": patients_df,
        "conditions": conditions,
        "patient_conditions": pl.concat([guide["patient_conditions"], pc]),
        "encounters": encounters_df,
        "encounter_notes": pl.concat([guide["encounter_notes"], notes]),
    }


# ---------------------------------------------------------------------------------------------------
# Writers


def _create_table_sql(table: str, primary_key: bool = True) -> str:
    cols = [f'"{c}" TEXT' + (" NOT NULL" if c == TABLE_PRIMARY_KEYS[table] else "") for c in TABLE_COLUMNS[table]]
    if primary_key:
        cols.append(f'PRIMARY KEY ("{TABLE_PRIMARY_KEYS[table]}")')
    return f'CREATE TABLE "{table}" ({", ".join(cols)})'


def _write_sqlite(path: Path, tables: dict[str, pl.DataFrame]) -> None:
    import adbc_driver_sqlite.dbapi as sqlite_adbc

    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite_adbc.connect(str(path)) as conn:
        cur = conn.cursor()
        for table in reversed(TABLES):
            cur.execute(f'DROP TABLE IF EXISTS "{table}"')
        for table in TABLES:
            cur.execute(_create_table_sql(table))
            # Arrow ingest is a prepared bulk insert: ~1M rows/s, vs far slower executemany.
            cur.adbc_ingest(table, tables[table].to_arrow(), mode="append")
        conn.commit()
        cur.close()


def _write_postgres(url: str, tables: dict[str, pl.DataFrame]) -> None:
    import adbc_driver_postgresql.dbapi as pg_adbc

    with pg_adbc.connect(url) as conn:
        cur = conn.cursor()
        for table in reversed(TABLES):
            cur.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
        for table in TABLES:
            # ADBC ingest uses COPY; the primary key is added afterwards because building the index
            # once is cheaper than maintaining it row by row.
            cur.execute(_create_table_sql(table, primary_key=False))
            cur.adbc_ingest(table, tables[table].to_arrow(), mode="append")
            cur.execute(f'ALTER TABLE "{table}" ADD PRIMARY KEY ("{TABLE_PRIMARY_KEYS[table]}")')
        conn.commit()
        cur.close()


def write_tables(url: str, tables: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Write frames to a source URL (see migration_assets.source for the URL forms)."""
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        _write_sqlite(Path(location), tables)
    elif kind == "postgresql":
        _write_postgres(location, tables)
    elif kind in ("csv", "parquet", "folder"):
        folder = Path(location)
        folder.mkdir(parents=True, exist_ok=True)
        for table, df in tables.items():
            if kind == "csv":
                df.write_csv(folder / f"{table}.csv")
            else:  # a plain folder gets Parquet: typed, compact, fastest to read back
                df.write_parquet(folder / f"{table}.parquet")
    else:  # pragma: no cover - parse_source_url already rejects unknown schemes
        raise ValueError(f"cannot write to {redact_url(url)}")
    return {table: df.height for table, df in tables.items()}


def generate_sample_ehr(url: str, patients: int = 1000, seed: int = 7) -> dict[str, int]:
    """(Re)create the legacy EHR tables at ``url``; returns table -> row count."""
    return write_tables(url, build_sample_tables(patients, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a sample legacy EHR (Medplum migration guide tables).")
    parser.add_argument("--url", required=True, help="sqlite:///x.db | postgresql://user@host:port/db | csv:///dir | parquet:///dir")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    counts = generate_sample_ehr(args.url, patients=args.patients, seed=args.seed)
    print(f"wrote {redact_url(args.url)}")
    for table, count in counts.items():
        print(f"{table}\t{count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
