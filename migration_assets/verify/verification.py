"""What the asset checks verify, as plain functions over frames, the manifest and Medplum:
prerequisites, reference integrity, identifier census and reconciliation, and the books."""

import fcntl
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.active import PROFILE, get_element, prerequisites
from migration_assets.elements.base import quarantine
from migration_assets.ledger.manifest import DISPOSITIONS, Manifest
from migration_assets.medplum import MedplumClient, identifier_token
from migration_assets.paths import state_dir

CENSUS_PAGE_SIZE = 1000
# How many identifiers one search asks for at once (they travel in the URL).
LOOKUP_CHUNK = 100

# -- census: what Medplum holds of an element, by identifier ---------------------------------------
#
# A census keeps, per resource, only what the checks read: the identifier value, the resource id and
# the references it holds (path -> reference). Whole resources of a large element would weigh
# gigabytes, and the census files would hold patient data the checks do not need.

CENSUS_REFERENCE = pl.Struct({"path": pl.String, "reference": pl.String})
CENSUS_SCHEMA = pl.Schema([("identifier_value", pl.String()), ("resource_id", pl.String()), ("references", pl.List(CENSUS_REFERENCE))])
# (resource type, identifier system) -> its census, one row per (identifier value, resource).
Censuses = dict[tuple[str, str], pl.DataFrame]
# Called with (resource type, identifier system, identifier value, resource) for each census row, for
# a caller that needs more of the resources than the census keeps (the dual-write comparison).
ResourceVisitor = Callable[[str, str, str, dict[str, Any]], None]
# The census of one (resource type, identifier system), however it is kept.
KindCensusReader = Callable[[str, str], pl.DataFrame]


def resources_with_identifier(
    client: MedplumClient, resource_type: str, identifier_system: str, since: datetime | None = None,
    elements: frozenset[str] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(identifier value, resource) for every resource of `resource_type` carrying an identifier in
    `identifier_system` (with `since`, only those created or changed since then; with `elements`, only
    those top-level elements besides the id and identifiers), in one paged search; a resource with two
    such identifiers comes twice."""
    params = {"identifier": identifier_token(identifier_system, ""), "_count": str(CENSUS_PAGE_SIZE)}
    if elements is not None:
        params["_elements"] = ",".join(["id", "identifier", *sorted(elements)])
    if since is not None:
        params["_lastUpdated"] = "ge" + since.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for resource in client.search(resource_type, params):
        for ident in resource.get("identifier", []):
            if ident.get("system") == identifier_system:
                yield ident.get("value"), resource


def references_in(resource: dict[str, Any], roots: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """Every reference the resource holds as (dotted path, reference); a number in the path steps into
    a list (`participant.0.individual`), as the frames' expected references name them. With `roots`,
    only the references under those top-level elements (walking the whole resource costs most of a
    census's own time)."""
    found: list[tuple[str, str]] = []
    pending: list[tuple[Any, str]] = [
        (child, key) for key, child in resource.items() if isinstance(child, dict | list) and (roots is None or key in roots)
    ]
    while pending:
        node, path = pending.pop()
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str):
                found.append((path, reference))
            children: Iterator[tuple[str, Any]] = iter(node.items())
        else:
            children = ((str(index), child) for index, child in enumerate(node))
        for key, child in children:
            if isinstance(child, dict | list):
                pending.append((child, f"{path}.{key}"))
    return sorted(found)


def reference_roots(frame: pl.DataFrame) -> frozenset[str] | None:
    """The top-level elements under which the frame expects references (`subject`, `participant`, ...);
    None when the frame does not say (no `references` column): then a census records every reference."""
    if "references" not in frame.columns:
        return None
    paths = frame["references"].explode().struct.field("path").drop_nulls()
    return frozenset(paths.str.split(".").list.first().unique().to_list())


def census(
    client: MedplumClient,
    resource_type: str,
    identifier_system: str,
    visit: ResourceVisitor | None = None,
    roots: frozenset[str] | None = None,
    since: datetime | None = None,
) -> pl.DataFrame:
    """Every resource of `resource_type` carrying an identifier in `identifier_system` (with `since`,
    only those created or changed since then), one row per (identifier value, resource) with its id
    and references (CENSUS_SCHEMA; with `roots`, only those under these top-level elements, and only
    those elements are asked for): duplicates show as repeated values. `visit` sees each whole
    resource as it goes by."""
    # Only what the census keeps travels (Medplum honours `_elements`), unless `visit` wants it all.
    elements = roots if visit is None else None
    values, ids = [], []
    # References gathered flat and nested once at the end: polars builds a list-of-struct column from
    # Python dicts about six times slower (4 s for 100,000 resources).
    owners, paths, references = [], [], []
    for row, (value, resource) in enumerate(resources_with_identifier(client, resource_type, identifier_system, since, elements)):
        if visit is not None:
            visit(resource_type, identifier_system, value, resource)
        values.append(value)
        ids.append(resource["id"])
        for path, reference in references_in(resource, roots):
            owners.append(row)
            paths.append(path)
            references.append(reference)
    held = (
        pl.DataFrame({"row": owners, "path": paths, "reference": references},
                     schema={"row": pl.UInt32, "path": pl.String, "reference": pl.String})
        .group_by("row")
        .agg(references=pl.struct("path", "reference"))
    )
    return (
        pl.DataFrame({"identifier_value": values, "resource_id": ids}, schema={"identifier_value": pl.String,
                                                                             "resource_id": pl.String})
        .with_row_index("row")
        .join(held, on="row", how="left", maintain_order="left")
        .select("identifier_value", "resource_id",
                pl.col("references").fill_null(pl.lit([], dtype=CENSUS_SCHEMA["references"])))
    )


def census_kinds(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """The (resource type, identifier system) pairs the frame writes."""
    return sorted(frame.select("resource_type", "identifier_system").unique().iter_rows())


def take_census(client: MedplumClient, frame: pl.DataFrame, visit: ResourceVisitor | None = None) -> Censuses:
    """The census of every (resource type, identifier system) the frame writes, read now, with the
    references the frame expects (every reference when it has no `references` column)."""
    roots = reference_roots(frame)
    return {(rt, system): census(client, rt, system, visit, roots) for rt, system in census_kinds(frame)}


def census_dir(evidence_dir: str | Path) -> Path:
    """Census files go beside the evidence folder: .demo/census by default (CENSUS_DIR overrides it)."""
    return state_dir(evidence_dir, "census")


# Taken off the time a census starts from, beyond what MedplumClient.count already takes off. Medplum
# stamps a resource's lastUpdated before its transaction commits, so a transaction bundle still
# committing when the census starts carries an earlier time; and the clocks of the servers behind a
# load balancer may differ a little. At a real server's 50-800 writes a second, re-reading five
# seconds' worth each time is cheap insurance.
CENSUS_CLOCK_MARGIN = timedelta(seconds=5)


@dataclass(frozen=True)
class KindCensus:
    """The latest census of one (resource type, identifier system), as kept on disk."""

    table: pl.DataFrame  # CENSUS_SCHEMA
    # Every change Medplum made before this server time is in the table; None: not a base for the next.
    as_of: datetime | None
    roots: frozenset[str] | None  # the references kept, by top-level element (None: all)
    run_id: str  # the run that took it
    how: str  # how it was taken, for the checks' reports


@dataclass(frozen=True)
class RunCensus:
    """The census as one Dagster run sees it, per (resource type, identifier system) the run writes or
    references: the first check (or the report) of the run that asks brings it up to date and the
    others read it as it was then, so a run reads Medplum once per kind (again, for what changed,
    only when a concurrent run, such as another shard, brought it up to date in between).

    The latest census of each kind is kept as Parquet in `directory` (identifier values, ids and
    references only, readable by their owner). Bringing it up to date reads only the resources created
    or changed since it was taken (`_lastUpdated`), then compares the count Medplum gives: a deleted
    resource, or one that lost its identifier, is not a change a search can return, so a count that
    differs means a whole census instead. `incremental=False` always takes a whole one."""

    directory: Path
    run_id: str
    incremental: bool = True

    @classmethod
    def of_run(cls, evidence_dir: str | Path, run_id: str, incremental: bool = True) -> "RunCensus":
        """The census of run `run_id`, in the census folder beside `evidence_dir`."""
        return cls(census_dir(evidence_dir), run_id, incremental)

    def path(self, resource_type: str, identifier_system: str) -> Path:
        system = hashlib.sha256(identifier_system.encode()).hexdigest()[:16]
        return self.directory / f"{re.sub(r'[^A-Za-z0-9]', '_', resource_type)}-{system}.parquet"

    def get(self, client: MedplumClient, frame: pl.DataFrame) -> Censuses:
        """This run's census of the kinds the frame writes, with the references it expects."""
        roots = reference_roots(frame)
        return {(rt, system): self.of_kind(client, rt, system, roots) for rt, system in census_kinds(frame)}

    def of_kind(self, client: MedplumClient, resource_type: str, identifier_system: str,
                roots: frozenset[str] | None = frozenset()) -> pl.DataFrame:
        """This run's census of one kind, with the references under `roots` (None: all). One process at
        a time per kind, so two checks of a run never both read Medplum."""
        path = self.path(resource_type, identifier_system)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path.with_name(path.name + ".lock")):
            stored = _read_kind(path)
            if stored is None or stored.run_id != self.run_id or not _covers(stored.roots, roots):
                stored = self._bring_up_to_date(client, resource_type, identifier_system, roots, stored)
                _write_kind(stored, path)
        return _only_roots(stored.table, stored.roots, roots)

    def how(self, kinds: Sequence[tuple[str, str]]) -> str:
        """How this run's census of each kind was taken, for a check's report."""
        # The files' metadata only: the tables of a large element weigh tens of megabytes.
        paths = [(rt, self.path(rt, system)) for rt, system in kinds]
        found = [(rt, pl.read_parquet_metadata(path)) for rt, path in paths if path.exists()]
        return "; ".join(f"{rt}: {meta['how']}" for rt, meta in found if meta["run_id"] == self.run_id)

    def _bring_up_to_date(self, client: MedplumClient, resource_type: str, identifier_system: str,
                          roots: frozenset[str] | None, stored: KindCensus | None) -> KindCensus:
        total, started = client.count(resource_type, {"identifier": identifier_token(identifier_system, "")})
        as_of = started - CENSUS_CLOCK_MARGIN if started is not None else None
        if self.incremental and stored is not None and stored.as_of is not None and _covers(stored.roots, roots):
            changed = census(client, resource_type, identifier_system, roots=stored.roots, since=stored.as_of)
            kept = stored.table.filter(~pl.col("resource_id").is_in(changed["resource_id"].implode()))
            merged = pl.concat([kept, changed])
            if merged["resource_id"].n_unique() == total:
                since = stored.as_of.strftime("%Y-%m-%d %H:%M:%S")
                return KindCensus(merged, as_of, stored.roots, self.run_id,
                                  f"{changed.height:,} created or changed since {since} UTC read, {total:,} in Medplum")
        keep = roots if stored is None or roots is None or stored.roots is None else stored.roots | roots
        table = census(client, resource_type, identifier_system, roots=keep)
        # A census whose count differs saw changes while it paged: not a base for the next one.
        usable = as_of if table["resource_id"].n_unique() == total else None
        why = "" if stored is None or not self.incremental else ", the count had changed since the last one"
        return KindCensus(table, usable, keep, self.run_id, f"whole census, {table.height:,} read{why}")


def _covers(kept: frozenset[str] | None, wanted: frozenset[str] | None) -> bool:
    return kept is None or (wanted is not None and wanted <= kept)


def _only_roots(table: pl.DataFrame, kept: frozenset[str] | None, wanted: frozenset[str] | None) -> pl.DataFrame:
    if wanted is None or kept == wanted:
        return table
    root = pl.element().struct.field("path").str.split(".").list.first()
    return table.with_columns(pl.col("references").list.filter(root.is_in(pl.Series(sorted(wanted), dtype=pl.String).implode())))


def _read_kind(path: Path) -> KindCensus | None:
    if not path.exists():
        return None
    meta = pl.read_parquet_metadata(path)
    roots = json.loads(meta["roots"])
    return KindCensus(pl.read_parquet(path), datetime.fromisoformat(meta["as_of"]) if meta["as_of"] else None,
                      None if roots is None else frozenset(roots), meta["run_id"], meta["how"])


def _write_kind(stored: KindCensus, path: Path) -> None:
    """Written whole under another name, then renamed: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.touch(mode=0o600, exist_ok=True)
    partial.chmod(0o600)
    stored.table.write_parquet(partial, metadata={
        "as_of": stored.as_of.isoformat() if stored.as_of else "",
        "roots": json.dumps(None if stored.roots is None else sorted(stored.roots)),
        "run_id": stored.run_id, "how": stored.how})
    partial.replace(path)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


LOADED_ID_SCHEMA = pl.Schema({"resource_type": pl.String, "identifier_system": pl.String,
                               "identifier_value": pl.String, "resource_id": pl.String})


@dataclass(frozen=True)
class PrerequisiteReport:
    """References of eligible rows to resources of earlier elements, and which of those are missing.

    `explained` targets are missing because the ledger says why (quarantined or rejected there): the
    rows pointing at them are quarantined. `unexplained` ones block the load: the prerequisite
    element has not been loaded (or not since its source changed)."""

    checked: int
    explained: pl.DataFrame  # resource_type, identifier_system, identifier_value, element, disposition, rule
    unexplained: pl.DataFrame  # resource_type, identifier_system, identifier_value, element
    # The targets the ledger records as written, with the id Medplum gave them: resource_type,
    # identifier_system, identifier_value, resource_id.
    loaded_ids: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LOADED_ID_SCHEMA))

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
        [(resource_type, element.name) for element in PROFILE.elements for resource_type in element.schemas],
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
    # Only the columns used: a million units with every column weigh about half a gigabyte.
    columns = ("resource_type", "identifier_system", "identifier_value", "disposition", "rule", "reason", "resource_id")
    ledger = pl.concat(
        [manifest.units(name, columns) for name in prerequisites(element_name)]
        or [manifest.units(element_name, columns).clear()]
    )
    known = targets.join(ledger, on=["resource_type", "identifier_system", "identifier_value"], how="left")
    explained = known.filter(pl.col("disposition").is_in(["quarantined", "rejected", "skipped"]))
    not_loaded = known.filter(pl.col("disposition").is_null() | (pl.col("disposition") == "pending"))
    # Not in the ledger as loaded: perhaps written by other means (dual writes), so Medplum decides.
    missing = [not_loaded.clear()]
    for (resource_type, system), group in not_loaded.group_by("resource_type", "identifier_system"):
        present = existing_identifiers(client, str(resource_type), str(system), group["identifier_value"].to_list())
        missing.append(group.filter(~pl.col("identifier_value").is_in(list(present))))
    loaded = known.filter((pl.col("disposition") == "successful") & pl.col("resource_id").is_not_null())
    return PrerequisiteReport(
        checked=targets.height,
        explained=explained.drop("resource_id"),
        unexplained=pl.concat(missing).select("resource_type", "identifier_system", "identifier_value", "element"),
        loaded_ids=loaded.select(list(LOADED_ID_SCHEMA)).cast(LOADED_ID_SCHEMA),
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
    missing: pl.DataFrame  # resource_type, identifier_value, source_table, unit_key, disposition, reason
    unexpected: pl.DataFrame  # resource_type, identifier_value, resource_id
    duplicates: pl.DataFrame  # resource_type, identifier_value, copies

    @property
    def passed(self) -> bool:
        return self.missing.is_empty() and self.unexpected.is_empty() and self.duplicates.is_empty()

    @property
    def lost_writes(self) -> pl.DataFrame:
        """Missing resources the ledger records as loaded successfully: Medplum acknowledged the
        write, yet the resource is not there (deleted since, or lost by the server). Those already
        set back to pending for it (by another check of the run) count too."""
        return self.missing.filter(
            (pl.col("disposition") == "successful")
            | ((pl.col("disposition") == "pending") & pl.col("reason").str.starts_with(LOST_WRITE_REASON).fill_null(False))
        )


# The ledger's reason for a unit set back to pending because its resource was not found.
LOST_WRITE_REASON = "acknowledged by Medplum but not found at"


def _census_rows(censuses: Censuses) -> pl.DataFrame:
    """Every census as one frame, with its resource type and identifier system."""
    empty = pl.DataFrame(schema={**CENSUS_SCHEMA, "resource_type": pl.String, "identifier_system": pl.String})
    parts = [found.with_columns(resource_type=pl.lit(rt), identifier_system=pl.lit(system))
             for (rt, system), found in censuses.items()]
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
        found.group_by(keys).agg(copies=pl.len()).filter(pl.col("copies") > 1).select("resource_type", "identifier_value", "copies")
    )
    return Reconciliation(
        expected=expected.height,
        found=expected.join(found, on=keys, how="semi").height,
        missing=missing,
        unexpected=unexpected,
        duplicates=duplicates,
    )


def resend_lost_writes(manifest: Manifest, element_name: str, report: Reconciliation) -> pl.DataFrame:
    """Put the units of `report.lost_writes` back to pending, their content hash cleared, so that the
    next load sends them again: otherwise it would skip them as unchanged since their last success.
    Returns them (resource_type, identifier_value, source_table, unit_key), all now pending."""
    lost = report.lost_writes
    newly_lost = lost.filter(pl.col("disposition") == "successful")
    if not newly_lost.is_empty():
        seen_at = datetime.now(UTC).isoformat(timespec="seconds")
        manifest.mark_for_resend(element_name, list(newly_lost.select("source_table", "unit_key").iter_rows()),
                                 f"{LOST_WRITE_REASON} {seen_at}: to be sent again by the next load")
    return lost.select("resource_type", "identifier_value", "source_table", "unit_key")


REFERENCE_PROBLEM_SCHEMA = pl.Schema({"resource_type": pl.String, "identifier_value": pl.String, "path": pl.String,
                                      "reference": pl.String, "problem": pl.String})


def reference_problems(client: MedplumClient, frame: pl.DataFrame, censuses: Censuses,
                       census_of: KindCensusReader | None = None) -> tuple[int, pl.DataFrame]:
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
        schema={"target_resource_type": pl.String, "target_identifier_system": pl.String,
                "target_identifier_value": pl.String, "expected_reference": pl.String},
        orient="row",
    )
    actual, wanted_type = pl.col("actual"), pl.col("target_resource_type")
    problem = (
        pl.when(actual.is_null()).then(pl.lit("reference missing"))
        .when(~actual.str.starts_with(wanted_type + "/"))
        .then(pl.format("points at {}, expected {}", actual.str.split("/").list.first(), wanted_type))
        .when(pl.col("expected_reference").is_null()).then(pl.lit("expected target not found in Medplum"))
        .when(actual != pl.col("expected_reference")).then(pl.lit("points at another resource than the source row's"))
    )
    problems = (
        expectations.join(loaded.select(keys), on=keys, how="semi", maintain_order="left")  # not loaded: reconciliation
        .join(held, on=[*keys, "target_path"], how="left", maintain_order="left")
        .join(targets, on=["target_resource_type", "target_identifier_system", "target_identifier_value"], how="left",
              maintain_order="left")
        .with_columns(problem=problem)
        .filter(pl.col("problem").is_not_null())
        .select("resource_type", "identifier_value", path="target_path", reference="actual", problem="problem")
    )
    return expectations.height, problems.cast(REFERENCE_PROBLEM_SCHEMA)


def target_identifiers(client: MedplumClient, expectations: pl.DataFrame,
                       census_of: KindCensusReader | None = None) -> dict[tuple[str, str, str], str]:
    """`Type/id` of each expected target, found by its identifier: searched LOOKUP_CHUNK identifiers at
    a time, or, for more than a census page's worth of targets, from the census of their kind
    (`census_of(resource type, identifier system)`, which reads only what changed since the last one)
    or else read with every resource of the kind in pages of CENSUS_PAGE_SIZE."""
    targets = expectations.select("target_resource_type", "target_identifier_system", "target_identifier_value").unique()
    found: dict[tuple[str, str, str], str] = {}
    for (rt, system), group in targets.group_by("target_resource_type", "target_identifier_system"):
        rt, system = str(rt), str(system)
        values = group["target_identifier_value"].to_list()
        matches: Iterator[tuple[str, dict[str, Any]]]
        if len(values) > CENSUS_PAGE_SIZE and census_of is not None:
            held = census_of(rt, system).join(group.select(identifier_value="target_identifier_value"),
                                              on="identifier_value", how="semi")
            found.update({(rt, system, value): f"{rt}/{rid}"
                          for value, rid in held.select("identifier_value", "resource_id").iter_rows()})
            continue
        if len(values) > CENSUS_PAGE_SIZE:
            wanted = set(values)
            matches = ((value, resource) for value, resource in resources_with_identifier(client, rt, system, elements=frozenset())
                       if value in wanted)
        else:
            matches = find_by_identifiers(client, rt, system, values)
        for value, resource in matches:
            found[(rt, system, value)] = f"{rt}/{resource['id']}"
    return found


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


# Lines hashed at a time by content_fingerprint.
FINGERPRINT_SLICE = 100_000


def content_fingerprint(frame: pl.DataFrame, scope: str) -> str:
    """SHA-256 of `scope` and the rows' (source table, unit key, content hash), in any order: the same
    exactly when the same units carry the same content."""
    lines = frame.select(pl.concat_str("source_table", "unit_key", pl.col("content_hash").fill_null(""),
                                       separator="\t")).to_series().sort()
    digest = hashlib.sha256(scope.encode())
    # A slice at a time: millions of lines never become Python strings at once.
    for start in range(0, len(lines), FINGERPRINT_SLICE):
        digest.update(("\n" + lines.slice(start, FINGERPRINT_SLICE).str.join("\n").item()).encode())
    return digest.hexdigest()


def sample_groups(frame: pl.DataFrame, size: int, seed: int) -> pl.DataFrame:
    """`size` bundle groups of the frame chosen at random with a recorded seed (all when size is 0 or
    at least the number of groups): whole groups, since a transaction goes whole or not at all."""
    groups = frame["bundle_group"].unique().sort()
    if size <= 0 or size >= len(groups):
        return frame
    chosen = groups.sample(size, seed=seed)
    return frame.filter(pl.col("bundle_group").is_in(chosen.implode()))
