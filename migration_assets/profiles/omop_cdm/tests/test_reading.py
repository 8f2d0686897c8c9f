"""Real OMOP exports: CSV, Parquet, SQLite and PostgreSQL (tables in a schema of their own, as a `cdm`
schema holds them), with upper-case table and column names, read and mapped as the generated sample; and
a real vocabulary's CONCEPT table (millions of rows), of which only the concepts the data names are read."""

from pathlib import Path

import polars as pl
import pytest

from migration_assets.elements.base import read_element_tables
from migration_assets.elements.profile import load_profile
from migration_assets.profiles.omop_cdm.omop import OPTIONAL_TABLES
from migration_assets.profiles.omop_cdm.sample_data import build_sample_tables
from migration_assets.source import parse_source_url, write_tables
from migration_assets_tests.fixtures_postgres import throwaway_schema_url

from .test_mapping import frame

PROFILE = load_profile("omop_cdm")
# A vocabulary's size: OHDSI's standard download holds several million concepts.
VOCABULARY_ROWS = 1_500_000


def upper_case_export(url: str) -> None:
    sample = build_sample_tables(15, seed=5)
    tables = {name.upper(): table.rename(str.upper) for name, table in sample.items()}
    write_tables(url, tables, {table.upper(): key.upper() for table, key in PROFILE.sample_primary_keys().items()})


def read_and_mapped(url: str) -> tuple[dict[str, dict[str, pl.DataFrame]], dict[str, list[str]]]:
    """Each element's tables as the platform reads them, and its resources."""
    read = {element.name: read_element_tables(element, url) for element in PROFILE.elements}
    return read, {name: frame(name, tables)["resource"].to_list() for name, tables in read.items()}


@pytest.fixture(scope="module")
def expected() -> dict[str, list[str]]:
    sample = build_sample_tables(15, seed=5)
    return {element: frame(element, sample)["resource"].to_list() for element in PROFILE.load_order}


@pytest.mark.parametrize("kind", ["csv", "parquet", "sqlite"])
def test_an_upper_case_export_reads_as_the_sample(kind: str, tmp_path: Path, expected: dict[str, list[str]]) -> None:
    url = f"sqlite:///{tmp_path / 'cdm.db'}" if kind == "sqlite" else f"{kind}://{tmp_path / 'cdm'}"
    upper_case_export(url)
    assert read_and_mapped(url)[1] == expected


@pytest.mark.integration
def test_a_postgresql_cdm_schema_with_upper_case_names_reads_as_the_sample(expected: dict[str, list[str]]) -> None:
    with throwaway_schema_url("cdm") as url:
        upper_case_export(url)
        assert read_and_mapped(url)[1] == expected


def vocabulary_export(url: str) -> set[str]:
    """The 15-person sample with a CONCEPT table of VOCABULARY_ROWS concepts, typed as a vocabulary load
    types it (concept_id an integer); returns the concept ids the sample's rows name."""
    sample = build_sample_tables(15, seed=5)
    used = sample.pop("concept")
    filler = pl.DataFrame({"concept_id": pl.int_range(3_000_000_000, 3_000_000_000 + VOCABULARY_ROWS, eager=True)})
    vocabulary = pl.concat(
        [
            used.with_columns(pl.col("concept_id").cast(pl.Int64)),
            filler.with_columns(
                concept_name=pl.format("Filler concept {}", pl.col("concept_id")),
                domain_id=pl.lit("Observation"),
                vocabulary_id=pl.lit("SNOMED"),
                concept_class_id=pl.lit("Clinical Finding"),
                standard_concept=pl.lit("S"),
                concept_code=pl.col("concept_id").cast(pl.String),
            ),
        ]
    )
    write_tables(url, sample, PROFILE.sample_primary_keys())
    kind, location = parse_source_url(url)
    if kind in ("parquet", "csv"):
        path = Path(location) / f"concept.{kind}"
        vocabulary.write_parquet(path) if kind == "parquet" else vocabulary.write_csv(path)
    else:
        import adbc_driver_postgresql.dbapi as pg
        import adbc_driver_sqlite.dbapi as lite

        with lite.connect(location) if kind == "sqlite" else pg.connect(location) as conn, conn.cursor() as cur:
            cur.adbc_ingest("concept", vocabulary.to_arrow(), mode="create")
            cur.execute('CREATE UNIQUE INDEX concept_key ON concept ("concept_id")')
            conn.commit()
    named = set()
    for element in PROFILE.elements:
        for table, columns in element.lookup_tables.get("concept", {}).items():
            for column in columns:
                named |= set(sample[table][column].drop_nulls().to_list())
    return named


def check_only_named_concepts_read(url: str, expected: dict[str, list[str]]) -> None:
    named = vocabulary_export(url)
    read, mapped = read_and_mapped(url)
    assert mapped == expected
    for name, tables in read.items():
        if "concept" in tables:
            concept_ids = set(tables["concept"]["concept_id"].cast(pl.String).to_list())
            # Rows materialized: the concepts the element's rows name that the vocabulary holds, no others.
            assert concept_ids <= named and tables["concept"].height == len(concept_ids) < 40, name


@pytest.mark.parametrize("kind", ["parquet", "sqlite", "csv"])
def test_of_a_vocabulary_of_millions_only_the_named_concepts_are_read(
    kind: str, tmp_path: Path, expected: dict[str, list[str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'cdm.db'}" if kind == "sqlite" else f"{kind}://{tmp_path / 'cdm'}"
    check_only_named_concepts_read(url, expected)


@pytest.mark.integration
def test_of_a_postgresql_vocabulary_only_the_named_concepts_are_read(expected: dict[str, list[str]]) -> None:
    with throwaway_schema_url("cdm") as url:
        check_only_named_concepts_read(url, expected)


@pytest.mark.parametrize("kind", ["csv", "sqlite"])
def test_an_export_without_the_optional_tables_reads_them_as_empty(kind: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cdm.db'}" if kind == "sqlite" else f"{kind}://{tmp_path / 'cdm'}"
    sample = build_sample_tables(15, seed=5)
    write_tables(url, {name: rows for name, rows in sample.items() if name not in OPTIONAL_TABLES}, {})
    for element in PROFILE.elements:
        absent: list[str] = []
        tables = read_element_tables(element, url, absent)
        assert absent == [name for name in element.source_tables if name in OPTIONAL_TABLES], element.name
        assert all(tables[name].is_empty() for name in absent)
        built = frame(element.name, tables)
        if element.name in ("persons", "visits", "conditions", "measurements"):
            assert built.height == sample[next(iter(element.source_tables))].height > 0, element.name
    persons = frame("persons", read_element_tables(PROFILE.element("persons"), url))
    assert persons["quarantine_rule"].null_count() == persons.height
    assert not any('"deceasedDateTime"' in resource for resource in persons["resource"])
    # A visit naming a provider that is not there (no PROVIDER table) is an orphan, as with an empty one.
    visits = frame("visits", read_element_tables(PROFILE.element("visits"), url))
    assert set(visits["quarantine_rule"].drop_nulls()) <= {"orphan_reference"}


@pytest.mark.parametrize("kind", ["csv", "sqlite"])
def test_a_missing_required_table_is_an_error_naming_it_and_where(kind: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cdm.db'}" if kind == "sqlite" else f"{kind}://{tmp_path / 'cdm'}"
    write_tables(url, {name: rows for name, rows in build_sample_tables(15, seed=5).items() if name != "person"}, {})
    where = str(tmp_path / "cdm.db") if kind == "sqlite" else str(tmp_path / "cdm")
    with pytest.raises((FileNotFoundError, ValueError), match=f"table 'person' not found in .*{where}"):
        read_element_tables(PROFILE.element("persons"), url)
