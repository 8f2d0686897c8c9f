"""Real OMOP exports: CSV, Parquet, SQLite and PostgreSQL (tables in a schema of their own, as a `cdm`
schema holds them), with upper-case table and column names, read and mapped as the generated sample."""

from pathlib import Path

import pytest

from migration_assets.elements.profile import load_profile
from migration_assets.profiles.omop_cdm.sample_data import build_sample_tables
from migration_assets.source import read_table, write_tables
from migration_assets_tests.fixtures_postgres import throwaway_schema_url

from .test_mapping import frame

PROFILE = load_profile("omop_cdm")


def upper_case_export(url: str) -> None:
    sample = build_sample_tables(15, seed=5)
    tables = {name.upper(): table.rename(str.upper) for name, table in sample.items()}
    write_tables(url, tables, {table.upper(): key.upper() for table, key in PROFILE.primary_keys().items()})


def mapped_from(url: str) -> dict[str, list[str]]:
    tables = {table: read_table(url, table) for table in {t for e in PROFILE.elements for t in e.source_tables}}
    return {element: frame(element, tables)["resource"].to_list() for element in PROFILE.load_order}


@pytest.fixture(scope="module")
def expected() -> dict[str, list[str]]:
    sample = build_sample_tables(15, seed=5)
    return {element: frame(element, sample)["resource"].to_list() for element in PROFILE.load_order}


@pytest.mark.parametrize("kind", ["csv", "parquet", "sqlite"])
def test_an_upper_case_export_reads_as_the_sample(kind: str, tmp_path: Path, expected: dict[str, list[str]]) -> None:
    url = f"sqlite:///{tmp_path / 'cdm.db'}" if kind == "sqlite" else f"{kind}://{tmp_path / 'cdm'}"
    upper_case_export(url)
    assert mapped_from(url) == expected


@pytest.mark.integration
def test_a_postgresql_cdm_schema_with_upper_case_names_reads_as_the_sample(expected: dict[str, list[str]]) -> None:
    with throwaway_schema_url("cdm") as url:
        upper_case_export(url)
        assert mapped_from(url) == expected
