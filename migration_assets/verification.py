"""What the asset checks verify, as plain functions over frames, the manifest and Medplum:
prerequisites, reference integrity, identifier census and reconciliation, and the books."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from migration_assets.elements import ELEMENTS, get_element, prerequisites
from migration_assets.elements.base import quarantine
from migration_assets.manifest import DISPOSITIONS, Manifest
from migration_assets.medplum import MedplumClient, identifier_token

CENSUS_PAGE_SIZE = 1000
# How many identifiers one search asks for at once (they travel in the URL).
LOOKUP_CHUNK = 100


def census(client: MedplumClient, resource_type: str, identifier_system: str) -> pl.DataFrame:
    """Every resource of `resource_type` carrying an identifier in `identifier_system`, one row per
    (identifier value, resource): duplicates show as repeated values."""
    rows = []
    params = {"identifier": f"{identifier_token(identifier_system, '')}", "_count": str(CENSUS_PAGE_SIZE)}
    for resource in client.search(resource_type, params):
        for ident in resource.get("identifier", []):
            if ident.get("system") == identifier_system:
                rows.append((ident.get("value"), resource["id"], resource))
    return pl.DataFrame(
        {
            "identifier_value": [row[0] for row in rows],
            "resource_id": [row[1] for row in rows],
            "resource": [row[2] for row in rows],
        },
        schema={"identifier_value": pl.String, "resource_id": pl.String, "resource": pl.Object},
    )


def find_by_identifiers(
    client: MedplumClient, resource_type: str, system: str, values: Sequence[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(identifier value, resource) for every resource of `resource_type` carrying one of `values`
    under `system`, searched LOOKUP_CHUNK values at a time (they travel in the URL)."""
    for start in range(0, len(values), LOOKUP_CHUNK):
        chunk = values[start : start + LOOKUP_CHUNK]
        params = {"identifier": ",".join(identifier_token(system, value) for value in chunk), "_count": "1000"}
        for resource in client.search(resource_type, params):
            for ident in resource.get("identifier", []):
                if ident.get("system") == system:
                    yield ident.get("value"), resource


def existing_identifiers(client: MedplumClient, resource_type: str, system: str, values: Sequence[str]) -> set[str]:
    """Which of `values` exist in Medplum under `system`."""
    return {value for value, _ in find_by_identifiers(client, resource_type, system, values)} & set(values)


# -- prerequisites ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrerequisiteReport:
    """References of eligible rows to resources of earlier elements, and which of those are missing.

    `explained` targets are missing because the ledger says why (quarantined or rejected there): the
    rows pointing at them are quarantined. `unexplained` ones block the load: the prerequisite
    element has not been loaded (or not since its source changed)."""

    checked: int
    explained: pl.DataFrame  # resource_type, identifier_system, identifier_value, element, disposition, rule
    unexplained: pl.DataFrame  # resource_type, identifier_system, identifier_value, element

    @property
    def blocking_elements(self) -> list[str]:
        return sorted(set(self.unexplained["element"].to_list()))

    def message(self) -> str:
        if self.unexplained.is_empty():
            return f"all {self.checked} referenced resources of earlier data elements are in Medplum"
        per_element = self.unexplained.group_by("element").len().sort("element")
        parts = [
            f"{row['len']} {row['element']} resources (e.g. {self._examples(row['element'])})"
            for row in per_element.iter_rows(named=True)
        ]
        names = ", ".join(f"'{name}'" for name in self.blocking_elements)
        return f"not in Medplum: {'; '.join(parts)}. Materialize the partition(s) {names} first."

    def _examples(self, element: str) -> str:
        values = self.unexplained.filter(pl.col("element") == element)["identifier_value"].head(3).to_list()
        return ", ".join(values)


def check_prerequisites(
    client: MedplumClient, manifest: Manifest, element_name: str, frame: pl.DataFrame
) -> PrerequisiteReport:
    own_types = set(get_element(element_name).schemas)
    producers = pl.DataFrame(
        [(resource_type, element.name) for element in ELEMENTS for resource_type in element.schemas],
        schema={"resource_type": pl.String, "element": pl.String},
        orient="row",
    )
    targets = (
        frame.filter(pl.col("quarantine_rule").is_null())
        .select(pl.col("references").explode())
        .unnest("references")
        .drop_nulls("resource_type")
        .filter(~pl.col("resource_type").is_in(list(own_types)))
        .select("resource_type", "identifier_system", "identifier_value")
        .unique()
        .join(producers, on="resource_type", how="left")
    )
    ledger = pl.concat(
        [manifest.units(name) for name in prerequisites(element_name)] or [manifest.units(element_name).clear()]
    ).select("resource_type", "identifier_system", "identifier_value", "disposition", "rule", "reason")
    known = targets.join(ledger, on=["resource_type", "identifier_system", "identifier_value"], how="left")
    explained = known.filter(pl.col("disposition").is_in(["quarantined", "rejected", "skipped"]))
    not_loaded = known.filter(pl.col("disposition").is_null() | (pl.col("disposition") == "pending"))
    # Not in the ledger as loaded: perhaps written by other means (dual writes), so Medplum decides.
    missing = [not_loaded.clear()]
    for (resource_type, system), group in not_loaded.group_by("resource_type", "identifier_system"):
        present = existing_identifiers(client, str(resource_type), str(system), group["identifier_value"].to_list())
        missing.append(group.filter(~pl.col("identifier_value").is_in(list(present))))
    return PrerequisiteReport(
        checked=targets.height,
        explained=explained,
        unexplained=pl.concat(missing).select("resource_type", "identifier_system", "identifier_value", "element"),
    )


def quarantine_unloadable(frame: pl.DataFrame, report: PrerequisiteReport) -> pl.DataFrame:
    """Quarantine the rows that reference a resource the ledger says will not be in Medplum."""
    if report.explained.is_empty():
        return frame
    reasons = report.explained.select(
        "identifier_system",
        "identifier_value",
        why=pl.format("{} {} was not loaded ({})", pl.col("resource_type"), pl.col("identifier_value"),
                      pl.col("rule").fill_null(pl.col("disposition"))),
    )
    blocked = (
        frame.with_row_index("_row")
        .select("_row", "references")
        .explode("references")
        .unnest("references")
        .join(reasons, on=["identifier_system", "identifier_value"])
        .group_by("_row")
        .agg(pl.col("why").first())
    )
    marked = frame.with_row_index("_row").join(blocked, on="_row", how="left")
    return quarantine(marked, "prerequisite_not_loaded", pl.col("why").is_not_null(), pl.col("why")).drop("_row", "why")


# -- reconciliation and reference integrity --------------------------------------------------------


@dataclass(frozen=True)
class Reconciliation:
    expected: int  # eligible source rows (not quarantined)
    found: int  # expected identifiers found in Medplum
    missing: pl.DataFrame  # resource_type, identifier_value, unit_key, disposition
    unexpected: pl.DataFrame  # resource_type, identifier_value, resource_id
    duplicates: pl.DataFrame  # resource_type, identifier_value, copies

    @property
    def passed(self) -> bool:
        return self.missing.is_empty() and self.unexpected.is_empty() and self.duplicates.is_empty()


def take_census(client: MedplumClient, frame: pl.DataFrame) -> dict[tuple[str, str], pl.DataFrame]:
    """The census of every (resource type, identifier system) the frame writes."""
    kinds = frame.select("resource_type", "identifier_system").unique().iter_rows()
    return {(rt, system): census(client, rt, system) for rt, system in kinds}


def reconcile(frame: pl.DataFrame, units: pl.DataFrame, censuses: dict[tuple[str, str], pl.DataFrame]) -> Reconciliation:
    """Source rows against resources found by identifier."""
    found = pl.concat(
        [c.select("identifier_value", "resource_id").with_columns(resource_type=pl.lit(rt), identifier_system=pl.lit(s))
         for (rt, s), c in censuses.items()]
        or [pl.DataFrame(schema={"identifier_value": pl.String, "resource_id": pl.String, "resource_type": pl.String,
                                 "identifier_system": pl.String})]
    )
    keys = ["resource_type", "identifier_system", "identifier_value"]
    dispositions = units.select("source_table", "unit_key", "disposition")
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
        .select("resource_type", "identifier_value", "unit_key", "disposition")
    )
    unexpected = found.join(in_source, on=keys, how="anti").select("resource_type", "identifier_value", "resource_id")
    duplicates = (
        found.group_by(keys).agg(copies=pl.len()).filter(pl.col("copies") > 1).select("resource_type", "identifier_value", "copies")
    )
    return Reconciliation(
        expected=expected.height,
        found=expected.join(found, on=keys, how="semi").height,
        missing=missing,
        unexpected=unexpected,
        duplicates=duplicates,
    )


def reference_problems(
    client: MedplumClient, frame: pl.DataFrame, censuses: dict[tuple[str, str], pl.DataFrame]
) -> tuple[int, pl.DataFrame]:
    """Check every reference of every loaded resource: it must point at an existing resource of the
    expected type that carries the expected identifier (the row's own patient, encounter, ...).

    Returns how many references were checked and one row per problem."""
    target_fields = ["target_path", "target_resource_type", "target_identifier_system", "target_identifier_value"]
    expectations = (
        frame.filter(pl.col("quarantine_rule").is_null())
        .select("resource_type", "identifier_system", "identifier_value", "references")
        .explode("references")
        .filter(pl.col("references").is_not_null())
        .with_columns(pl.col("references").struct.rename_fields(target_fields))
        .unnest("references")
    )
    loaded: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (rt, system), found in censuses.items():
        for value, resource in zip(found["identifier_value"].to_list(), found["resource"].to_list()):
            loaded[(rt, system, value)] = resource
    target_ids = target_identifiers(client, expectations)
    problems = []
    for row in expectations.iter_rows(named=True):
        resource = loaded.get((row["resource_type"], row["identifier_system"], row["identifier_value"]))
        if resource is None:
            continue  # not loaded: reconciliation reports it
        actual = _reference_at(resource, row["target_path"])
        expected_ref = target_ids.get((row["target_resource_type"], row["target_identifier_system"], row["target_identifier_value"]))
        problem = None
        if actual is None:
            problem = "reference missing"
        elif not actual.startswith(f"{row['target_resource_type']}/"):
            problem = f"points at {actual.split('/')[0]}, expected {row['target_resource_type']}"
        elif expected_ref is None:
            problem = "expected target not found in Medplum"
        elif actual != expected_ref:
            problem = "points at another resource than the source row's"
        if problem:
            problems.append({"resource_type": row["resource_type"], "identifier_value": row["identifier_value"],
                             "path": row["target_path"], "reference": actual, "problem": problem})
    schema = {"resource_type": pl.String, "identifier_value": pl.String, "path": pl.String, "reference": pl.String,
              "problem": pl.String}
    return expectations.height, pl.DataFrame(problems, schema=schema)


def target_identifiers(client: MedplumClient, expectations: pl.DataFrame) -> dict[tuple[str, str, str], str]:
    """`Type/id` of each expected target, found by its identifier."""
    targets = expectations.select("target_resource_type", "target_identifier_system", "target_identifier_value").unique()
    found: dict[tuple[str, str, str], str] = {}
    for (rt, system), group in targets.group_by("target_resource_type", "target_identifier_system"):
        values = group["target_identifier_value"].to_list()
        for value, resource in find_by_identifiers(client, str(rt), str(system), values):
            found[(str(rt), str(system), value)] = f"{rt}/{resource['id']}"
    return found


def _reference_at(resource: dict[str, Any], path: str) -> str | None:
    """The reference at a dotted path; a number steps into a list (`participant.0.individual`)."""
    value: Any = resource
    for part in path.split("."):
        if isinstance(value, list):
            value = value[int(part)] if part.isdigit() and int(part) < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return value.get("reference") if isinstance(value, dict) else None


# -- the books -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Books:
    """Every source unit of the frame and its one disposition in the ledger."""

    source_units: int
    dispositions: dict[str, int]  # every DISPOSITIONS name, and "none" for units the ledger lacks

    @property
    def accounted(self) -> int:
        return sum(self.dispositions[name] for name in ("successful", "rejected", "skipped", "quarantined"))

    @property
    def balanced(self) -> bool:
        return self.accounted == self.source_units and self.dispositions["pending"] == 0


def accounting(frame: pl.DataFrame, units: pl.DataFrame) -> Books:
    """source units = successful + rejected + skipped + quarantined, with nothing pending or missing.
    (The ledger's primary key makes two dispositions for one unit impossible.)"""
    mine = frame.select("source_table", "unit_key").join(units, on=["source_table", "unit_key"], how="left")
    dispositions = {name: int((mine["disposition"] == name).sum()) for name in DISPOSITIONS}
    dispositions["none"] = int(mine["disposition"].is_null().sum())
    return Books(source_units=frame.height, dispositions=dispositions)


def sample_groups(frame: pl.DataFrame, size: int, seed: int) -> pl.DataFrame:
    """`size` bundle groups of the frame chosen at random with a recorded seed (all when size is 0 or
    at least the number of groups): whole groups, since a transaction goes whole or not at all."""
    groups = frame["bundle_group"].unique().sort()
    if size <= 0 or size >= len(groups):
        return frame
    chosen = groups.sample(size, seed=seed)
    return frame.filter(pl.col("bundle_group").is_in(chosen.implode()))
