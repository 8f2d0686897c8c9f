"""Reconciliation (every eligible unit found in Medplum once, at the resource the ledger recorded) and
reference integrity (every reference resolves to the resource its identifier names)."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from migration_assets.medplum import MedplumClient
from migration_assets.verify.census import (
    CENSUS_PAGE_SIZE,
    CENSUS_SCHEMA,
    Censuses,
    KindCensusReader,
    find_by_identifiers,
    resources_with_identifier,
)


@dataclass(frozen=True)
class Reconciliation:
    expected: int  # eligible source rows (not quarantined)
    found: int  # expected identifiers found in Medplum
    missing: pl.DataFrame  # resource_type, identifier_value, source_table, unit_key, disposition, reason
    unexpected: pl.DataFrame  # resource_type, identifier_value, resource_id
    duplicates: pl.DataFrame  # resource_type, identifier_value, copies

    @property
    def passed(self) -> bool:
        return self.missing.is_empty() and self.unexpected.is_empty() and self.duplicates.is_empty()

    @property
    def lost_writes(self) -> pl.DataFrame:
        """Missing resources the ledger records as loaded successfully: Medplum acknowledged the
        write, yet the resource is not there (deleted since, or a server restored from an older
        backup). The next load finds them too, and sends them again (lost_in_target)."""
        return self.missing.filter(pl.col("disposition") == "successful")


def _census_rows(censuses: Censuses) -> pl.DataFrame:
    """Every census as one frame, with its resource type and identifier system."""
    empty = pl.DataFrame(schema={**CENSUS_SCHEMA, "resource_type": pl.String, "identifier_system": pl.String})
    parts = [
        found.with_columns(resource_type=pl.lit(rt), identifier_system=pl.lit(system))
        for (rt, system), found in censuses.items()
    ]
    return pl.concat([empty, *parts], how="vertical_relaxed")


# What reconcile() and accounting() read of the ledger: a million units with every column weigh
# about half a gigabyte.
RECONCILE_UNIT_COLUMNS = ("source_table", "unit_key", "disposition", "reason")


def reconcile(frame: pl.DataFrame, units: pl.DataFrame, censuses: Censuses) -> Reconciliation:
    """Source rows against resources found by identifier (`units`: at least RECONCILE_UNIT_COLUMNS)."""
    found = _census_rows(censuses).select("identifier_value", "resource_id", "resource_type", "identifier_system")
    keys = ["resource_type", "identifier_system", "identifier_value"]
    dispositions = units.select("source_table", "unit_key", "disposition", "reason")
    # Rows quarantined at load time (their prerequisite was refused) are not expected either.
    expected = (
        frame.filter(pl.col("quarantine_rule").is_null())
        .join(dispositions.filter(pl.col("disposition") == "quarantined"), on=["source_table", "unit_key"], how="anti")
        .select(*keys, "source_table", "unit_key")
    )
    in_source = frame.select(keys).unique()
    missing = (
        expected.join(found, on=keys, how="anti")
        .join(dispositions, on=["source_table", "unit_key"], how="left")
        .select("resource_type", "identifier_value", "source_table", "unit_key", "disposition", "reason")
    )
    unexpected = found.join(in_source, on=keys, how="anti").select("resource_type", "identifier_value", "resource_id")
    duplicates = (
        found.group_by(keys)
        .agg(copies=pl.len())
        .filter(pl.col("copies") > 1)
        .select("resource_type", "identifier_value", "copies")
    )
    return Reconciliation(
        expected=expected.height,
        found=expected.join(found, on=keys, how="semi").height,
        missing=missing,
        unexpected=unexpected,
        duplicates=duplicates,
    )


def lost_in_target(
    frame: pl.DataFrame, units: pl.DataFrame, censuses: Censuses, target_ids: pl.DataFrame
) -> pl.DataFrame:
    """The units the ledger records as loaded whose resource the target no longer holds as written:
    missing (deleted by hand, or the server was restored from an older backup), or pointing at a
    resource of an earlier element that is gone or was written again under a new id (`target_ids`:
    LOADED_ID_SCHEMA, the ids the ledger records now). One row per unit: source_table, unit_key, reason.

    `frame` holds REFERENCE_COLUMNS, `units` RECONCILE_UNIT_COLUMNS, `censuses` the element's kinds."""
    missing = reconcile(frame, units, censuses).lost_writes.select(
        "source_table", "unit_key", reason=pl.lit("not found in the target")
    )
    keys = ["resource_type", "identifier_system", "identifier_value"]
    held = (
        _census_rows(censuses)
        .unique(subset=keys, keep="last")
        .select(*keys, "references")
        .explode("references")
        .drop_nulls("references")
        .unnest("references")
        .rename({"reference": "held"})
    )
    expected = target_ids.select(
        target_resource_type="resource_type",
        target_identifier_system="identifier_system",
        target_identifier_value="identifier_value",
        wanted=pl.format("{}/{}", pl.col("resource_type"), pl.col("resource_id")),
    )
    successful = units.filter(pl.col("disposition") == "successful").select("source_table", "unit_key")
    stale = (
        frame.filter(pl.col("quarantine_rule").is_null())
        .join(successful, on=["source_table", "unit_key"], how="semi")
        .select(*keys, "source_table", "unit_key", "references")
        .explode("references")
        .drop_nulls("references")
        .with_columns(
            pl.col("references").struct.rename_fields(
                ["path", "target_resource_type", "target_identifier_system", "target_identifier_value"]
            )
        )
        .unnest("references")
        .join(expected, on=["target_resource_type", "target_identifier_system", "target_identifier_value"])
        .join(held, on=[*keys, "path"])
        .filter(pl.col("held") != pl.col("wanted"))
        .select(
            "source_table",
            "unit_key",
            reason=pl.format(
                "{} points at {}, which the target no longer holds as {}",
                pl.col("path"),
                pl.col("held"),
                pl.col("target_identifier_value"),
            ),
        )
    )
    return pl.concat([missing, stale]).unique(subset=["source_table", "unit_key"], keep="first", maintain_order=True)


REFERENCE_PROBLEM_SCHEMA = pl.Schema(
    {
        "resource_type": pl.String,
        "identifier_value": pl.String,
        "path": pl.String,
        "reference": pl.String,
        "problem": pl.String,
    }
)


def reference_problems(
    client: MedplumClient, frame: pl.DataFrame, censuses: Censuses, census_of: KindCensusReader | None = None
) -> tuple[int, pl.DataFrame]:
    """Check every reference of every loaded resource: it must point at an existing resource of the
    expected type that carries the expected identifier (the row's own patient, encounter, ...). The
    references held by the resources come from the census; the expected targets are searched, or
    read from `census_of` (see target_identifiers).

    Returns how many references were checked and one row per problem."""
    keys = ["resource_type", "identifier_system", "identifier_value"]
    target_fields = ["target_path", "target_resource_type", "target_identifier_system", "target_identifier_value"]
    expectations = (
        frame.filter(pl.col("quarantine_rule").is_null())
        .select(*keys, "references")
        .explode("references")
        .filter(pl.col("references").is_not_null())
        .with_columns(pl.col("references").struct.rename_fields(target_fields))
        .unnest("references")
    )
    # One resource per identifier (a duplicate is the reconciliation's finding): its references.
    loaded = _census_rows(censuses).unique(subset=keys, keep="last", maintain_order=True)
    held = (
        loaded.select(*keys, "references")
        .explode("references")
        .drop_nulls("references")
        .unnest("references")
        .rename({"path": "target_path", "reference": "actual"})
    )
    targets = pl.DataFrame(
        [(*key, reference) for key, reference in target_identifiers(client, expectations, census_of).items()],
        schema={
            "target_resource_type": pl.String,
            "target_identifier_system": pl.String,
            "target_identifier_value": pl.String,
            "expected_reference": pl.String,
        },
        orient="row",
    )
    actual, wanted_type = pl.col("actual"), pl.col("target_resource_type")
    problem = (
        pl.when(actual.is_null())
        .then(pl.lit("reference missing"))
        .when(~actual.str.starts_with(wanted_type + "/"))
        .then(pl.format("points at {}, expected {}", actual.str.split("/").list.first(), wanted_type))
        .when(pl.col("expected_reference").is_null())
        .then(pl.lit("expected target not found in Medplum"))
        .when(actual != pl.col("expected_reference"))
        .then(pl.lit("points at another resource than the source row's"))
    )
    problems = (
        expectations.join(loaded.select(keys), on=keys, how="semi", maintain_order="left")  # not loaded: reconciliation
        .join(held, on=[*keys, "target_path"], how="left", maintain_order="left")
        .join(
            targets,
            on=["target_resource_type", "target_identifier_system", "target_identifier_value"],
            how="left",
            maintain_order="left",
        )
        .with_columns(problem=problem)
        .filter(pl.col("problem").is_not_null())
        .select("resource_type", "identifier_value", path="target_path", reference="actual", problem="problem")
    )
    return expectations.height, problems.cast(REFERENCE_PROBLEM_SCHEMA)


def target_identifiers(
    client: MedplumClient, expectations: pl.DataFrame, census_of: KindCensusReader | None = None
) -> dict[tuple[str, str, str], str]:
    """`Type/id` of each expected target, found by its identifier: searched LOOKUP_CHUNK identifiers at
    a time, or, for more than a census page's worth of targets, from the census of their kind
    (`census_of(resource type, identifier system)`, which reads only what changed since the last one)
    or else read with every resource of the kind in pages of CENSUS_PAGE_SIZE."""
    targets = expectations.select(
        "target_resource_type", "target_identifier_system", "target_identifier_value"
    ).unique()
    found: dict[tuple[str, str, str], str] = {}
    for (rt, system), group in targets.group_by("target_resource_type", "target_identifier_system"):
        rt, system = str(rt), str(system)
        values = group["target_identifier_value"].to_list()
        matches: Iterator[tuple[str, dict[str, Any]]]
        if len(values) > CENSUS_PAGE_SIZE and census_of is not None:
            held = census_of(rt, system).join(
                group.select(identifier_value="target_identifier_value"), on="identifier_value", how="semi"
            )
            found.update(
                {
                    (rt, system, value): f"{rt}/{rid}"
                    for value, rid in held.select("identifier_value", "resource_id").iter_rows()
                }
            )
            continue
        if len(values) > CENSUS_PAGE_SIZE:
            wanted = set(values)
            matches = (
                (value, resource)
                for value, resource in resources_with_identifier(client, rt, system, elements=frozenset())
                if value in wanted
            )
        else:
            matches = find_by_identifiers(client, rt, system, values)
        for value, resource in matches:
            found[(rt, system, value)] = f"{rt}/{resource['id']}"
    return found
