"""Source reader: round trips through SQLite, PostgreSQL (real server), CSV and Parquet."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from migration_assets.active import PROFILE, write_sample
from migration_assets.source import (
    has_table,
    iter_table_batches,
    parse_source_url,
    read_query,
    read_table,
    redact_url,
    write_tables,
)
from migration_assets_tests.fixtures_postgres import throwaway_schema_url

PATIENTS, SEED = 300, 5
PRIMARY_KEYS = PROFILE.primary_keys()


@pytest.fixture(scope="module")
def expected() -> dict[str, pl.DataFrame]:
    return PROFILE.sample(PATIENTS, SEED)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with throwaway_schema_url("src_test") as url:
        yield url


@pytest.fixture(scope="module")
def source_urls(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> dict[str, str]:
    base = tmp_path_factory.mktemp("sources")
    urls = {
        "sqlite": f"sqlite:///{base}/legacy.db",
        "postgresql": pg_url,
        "csv": f"csv:///{base}/csv",
        "parquet": f"parquet:///{base}/parquet",
        "folder": str(base / "parquet"),
    }
    for kind, url in urls.items():
        if kind != "folder":
            write_sample(url, patients=PATIENTS, seed=SEED)
    return urls


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "csv", "parquet", "folder"])
def test_read_table_round_trip(kind: str, source_urls: dict[str, str], expected: dict[str, pl.DataFrame]) -> None:
    for table in expected:
        df = read_table(source_urls[kind], table)
        assert df.schema == expected[table].schema, (kind, table)  # text arrives as pl.String
        key = PRIMARY_KEYS[table]
        assert df.sort(key).equals(expected[table].sort(key)), (kind, table)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "csv", "parquet"])
def test_batches_cover_all_rows_once(kind: str, source_urls: dict[str, str], expected: dict[str, pl.DataFrame]) -> None:
    batches = list(iter_table_batches(source_urls[kind], "visits", batch_rows=97))
    want = expected["visits"]
    assert [b.height for b in batches[:-1]] == [97] * (len(batches) - 1)
    assert 0 < batches[-1].height <= 97
    got = pl.concat(batches)
    assert got.height == want.height
    assert got["visit_id"].is_unique().all()
    assert got.sort("visit_id").equals(want.sort("visit_id"))
    if kind in ("sqlite", "postgresql"):  # SQL batches follow the primary key
        assert got["visit_id"].to_list() == sorted(got["visit_id"].to_list())


def test_read_query(source_urls: dict[str, str], expected: dict[str, pl.DataFrame]) -> None:
    q = "SELECT patient_id, birth_date FROM patients WHERE patient_id IN ('P001', 'P002') ORDER BY patient_id"
    want = expected["patients"].select("patient_id", "birth_date").head(2).rows()
    for kind in ("sqlite", "postgresql"):
        df = read_query(source_urls[kind], q)
        assert df.rows() == want, kind
        assert df.schema["birth_date"] == pl.String
    # SQLAlchemy-style driver suffix is accepted.
    sa_url = source_urls["postgresql"].replace("postgresql://", "postgresql+psycopg2://")
    assert read_query(sa_url, "SELECT count(*) AS n FROM patients").item() == PATIENTS
    with pytest.raises(ValueError, match="SQL source"):
        read_query(source_urls["csv"], "SELECT 1")


def test_sqlite_text_columns_with_leading_nulls(tmp_path: Path) -> None:
    # ADBC infers SQLite types from values; declared TEXT must still arrive as String, nulls and all.
    db = tmp_path / "nulls.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT, empty TEXT, n INTEGER)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, NULL, ?)",
            [(f"{i:06d}", None if i < 70_000 else "x", i) for i in range(70_500)],
        )
    df = read_table(f"sqlite:///{db}", "t")
    assert df.schema == pl.Schema({"id": pl.String, "v": pl.String, "empty": pl.String, "n": pl.Int64})
    assert df["v"].drop_nulls().to_list() == ["x"] * 500
    batches = list(iter_table_batches(f"sqlite:///{db}", "t", batch_rows=30_000))
    assert [b.height for b in batches] == [30_000, 30_000, 10_500]
    assert pl.concat(batches).equals(df)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "csv", "parquet", "folder"])
def test_has_table_tells_a_missing_table_from_an_unreachable_source(
    kind: str, source_urls: dict[str, str], tmp_path: Path
) -> None:
    assert has_table(source_urls[kind], "patients") and has_table(source_urls[kind], "PATIENTS")
    assert not has_table(source_urls[kind], "nope")
    with pytest.raises(FileNotFoundError):
        has_table(f"sqlite:///{tmp_path}/missing.db" if kind == "sqlite" else f"csv:///{tmp_path}/none", "patients")


def test_missing_things_are_clear(source_urls: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        read_table(source_urls["sqlite"], "nope")
    with pytest.raises(ValueError, match="nope"):
        read_table(source_urls["postgresql"], "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        read_table(source_urls["csv"], "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_table_batches(source_urls["parquet"], "nope"))
    with pytest.raises(FileNotFoundError, match="missing.db"):
        read_table(f"sqlite:///{tmp_path}/missing.db", "patients")
    assert not (tmp_path / "missing.db").exists()  # no empty database created as a side effect
    with pytest.raises(FileNotFoundError, match="patients"):
        read_table(f"csv:///{tmp_path}/no_such_dir", "patients")
    with pytest.raises(ValueError, match="unsupported source URL scheme 'mysql'.*db.example"):
        read_table("mysql://root:hunter2@db.example/ehr", "patients")
    with pytest.raises(ValueError, match="invalid table name"):
        read_table(source_urls["sqlite"], "patients; DROP TABLE patients")


def test_missing_table_error_redacts_password(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        read_table("postgresql://postgres:s3cret@127.0.0.1:5432/test", "no_such_table_xyz")
    assert "s3cret" not in str(info.value)
    assert "no_such_table_xyz" in str(info.value)


def test_redact_url() -> None:
    assert redact_url("postgresql://alice:s3cret@db:5432/ehr") == "postgresql://db:5432/ehr"
    assert redact_url("postgresql+psycopg2://alice@db/ehr?sslmode=require&password=x") == (
        "postgresql+psycopg2://db/ehr?sslmode=require"
    )
    assert redact_url("postgresql://u:p@ss@db/ehr") == "postgresql://db/ehr"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert redact_url("/data/legacy") == "/data/legacy"


def test_parse_source_url() -> None:
    assert parse_source_url("sqlite:///rel/x.db") == ("sqlite", "rel/x.db")
    assert parse_source_url("sqlite:////abs/x.db") == ("sqlite", "/abs/x.db")
    assert parse_source_url("postgres://u@h/db") == ("postgresql", "postgresql://u@h/db")
    assert parse_source_url("csv:///data/csv") == ("csv", "/data/csv")  # a file URL: absolute
    assert parse_source_url("csv:////data/csv") == ("csv", "/data/csv")
    assert parse_source_url("/data/folder") == ("folder", "/data/folder")


def test_a_table_named_in_another_case_is_found(tmp_path: Path) -> None:
    """Exports spell table names in upper or lower case: PERSON.csv is the table `person`."""
    frame = pl.DataFrame({"person_id": ["1", "2"]})
    for url in (f"csv://{tmp_path / 'csv'}", f"parquet://{tmp_path / 'parquet'}"):
        write_tables(url, {"PERSON": frame}, {})
        assert read_table(url, "person").equals(frame)
        assert pl.concat(list(iter_table_batches(url, "person", 1))).equals(frame)


@pytest.mark.integration
def test_a_postgresql_table_named_in_another_case_is_found(postgres_schema_url: str) -> None:
    frame = pl.DataFrame({"PERSON_ID": ["1", "2"]})
    write_tables(postgres_schema_url, {"PERSON": frame}, {"PERSON": "PERSON_ID"})
    assert read_table(postgres_schema_url, "person").equals(frame)
    assert pl.concat(list(iter_table_batches(postgres_schema_url, "person", 1))).equals(frame)
