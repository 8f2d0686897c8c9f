"""Materialization and check metadata a migration lead reads in the Dagster UI: counts as numbers
(so the UI plots them across runs) and problems as tables. Never a secret, never patient details
beyond identifiers."""

from collections.abc import Mapping
from typing import Any

import polars as pl
from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

TABLE_ROW_LIMIT = 50


def table(frame: pl.DataFrame, limit: int = TABLE_ROW_LIMIT) -> MetadataValue:
    """A frame as a UI table (the first `limit` rows; the count says how many there were)."""
    shown = frame.head(limit).with_columns(pl.all().cast(pl.String))
    schema = TableSchema(columns=[TableColumn(name, "string") for name in shown.columns])
    records = [
        TableRecord({k: ("" if v is None else v) for k, v in row.items()}) for row in shown.iter_rows(named=True)
    ]
    return MetadataValue.table(records=records, schema=schema)


def counts(values: Mapping[str, int]) -> dict[str, Any]:
    return {name: MetadataValue.int(int(value)) for name, value in values.items()}


def quarantine_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """Quarantined rows per rule and reason, with a few unit keys each."""
    return (
        frame.filter(pl.col("quarantine_rule").is_not_null())
        .group_by("quarantine_rule", "quarantine_reason")
        .agg(rows=pl.len(), examples=pl.col("unit_key").head(5).str.join(", "))
        .sort("rows", descending=True)
    )
