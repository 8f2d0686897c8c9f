"""The census: what Medplum holds of an element, by identifier (the identifier value, the resource id
and the references it holds), taken page by page and kept per run in census files."""

import fcntl
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.medplum import MedplumClient, Target, identifier_token
from migration_assets.medplum.search import lookup_chunks
from migration_assets.paths import state_dir

CENSUS_PAGE_SIZE = 1000
# How many identifiers (or ids) one search asks for at once: a page's worth, so that one search answers
# them (beyond a few dozen the client sends the query as a POST body: MedplumClient.search).
LOOKUP_CHUNK = CENSUS_PAGE_SIZE


#
# A census keeps, per resource, only what the checks read: the identifier value, the resource id and
# the references it holds (path -> reference). Whole resources of a large element would weigh
# gigabytes, and the census files would hold patient data the checks do not need.

CENSUS_REFERENCE = pl.Struct({"path": pl.String, "reference": pl.String})
CENSUS_SCHEMA = pl.Schema(
    [("identifier_value", pl.String()), ("resource_id", pl.String()), ("references", pl.List(CENSUS_REFERENCE))]
)
# (resource type, identifier system) -> its census, one row per (identifier value, resource).
Censuses = dict[tuple[str, str], pl.DataFrame]
# Called with (resource type, identifier system, identifier value, resource) for each census row, for
# a caller that needs more of the resources than the census keeps (the dual-write comparison).
ResourceVisitor = Callable[[str, str, str, dict[str, Any]], None]
# The census of one (resource type, identifier system), however it is kept.
KindCensusReader = Callable[[str, str], pl.DataFrame]


def resources_with_identifier(
    client: MedplumClient,
    resource_type: str,
    identifier_system: str,
    since: datetime | None = None,
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
        (child, key)
        for key, child in resource.items()
        if isinstance(child, dict | list) and (roots is None or key in roots)
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
    for row, (value, resource) in enumerate(
        resources_with_identifier(client, resource_type, identifier_system, since, elements)
    ):
        if visit is not None:
            visit(resource_type, identifier_system, value, resource)
        values.append(value)
        ids.append(resource["id"])
        for path, reference in references_in(resource, roots):
            owners.append(row)
            paths.append(path)
            references.append(reference)
    held = (
        pl.DataFrame(
            {"row": owners, "path": paths, "reference": references},
            schema={"row": pl.UInt32, "path": pl.String, "reference": pl.String},
        )
        .group_by("row")
        .agg(references=pl.struct("path", "reference"))
    )
    return (
        pl.DataFrame(
            {"identifier_value": values, "resource_id": ids},
            schema={"identifier_value": pl.String, "resource_id": pl.String},
        )
        .with_row_index("row")
        .join(held, on="row", how="left", maintain_order="left")
        .select(
            "identifier_value",
            "resource_id",
            pl.col("references").fill_null(pl.lit([], dtype=CENSUS_SCHEMA["references"])),
        )
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
    def of_run(cls, evidence_dir: str | Path, run_id: str, target: Target, incremental: bool = True) -> "RunCensus":
        """The census of run `run_id` in `target`, in that target's census folder beside `evidence_dir`."""
        return cls(census_dir(evidence_dir) / target.slug, run_id, incremental)

    def path(self, resource_type: str, identifier_system: str) -> Path:
        system = hashlib.sha256(identifier_system.encode()).hexdigest()[:16]
        return self.directory / f"{re.sub(r'[^A-Za-z0-9]', '_', resource_type)}-{system}.parquet"

    def get(self, client: MedplumClient, frame: pl.DataFrame) -> Censuses:
        """This run's census of the kinds the frame writes, with the references it expects."""
        roots = reference_roots(frame)
        return {(rt, system): self.of_kind(client, rt, system, roots) for rt, system in census_kinds(frame)}

    def of_kind(
        self,
        client: MedplumClient,
        resource_type: str,
        identifier_system: str,
        roots: frozenset[str] | None = frozenset(),
    ) -> pl.DataFrame:
        """This run's census of one kind, with the references under `roots` (None: all). One process at
        a time per kind, so two checks of a run never both read Medplum."""
        path = self.path(resource_type, identifier_system)
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_name(path.name + ".lock")):
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

    def _bring_up_to_date(
        self,
        client: MedplumClient,
        resource_type: str,
        identifier_system: str,
        roots: frozenset[str] | None,
        stored: KindCensus | None,
    ) -> KindCensus:
        total, started = client.count(resource_type, {"identifier": identifier_token(identifier_system, "")})
        as_of = started - CENSUS_CLOCK_MARGIN if started is not None else None
        if self.incremental and stored is not None and stored.as_of is not None and _covers(stored.roots, roots):
            changed = census(client, resource_type, identifier_system, roots=stored.roots, since=stored.as_of)
            kept = stored.table.filter(~pl.col("resource_id").is_in(changed["resource_id"].implode()))
            merged = pl.concat([kept, changed])
            if merged["resource_id"].n_unique() == total:
                since = stored.as_of.strftime("%Y-%m-%d %H:%M:%S")
                return KindCensus(
                    merged,
                    as_of,
                    stored.roots,
                    self.run_id,
                    f"{changed.height:,} created or changed since {since} UTC read, {total:,} in Medplum",
                )
        keep = roots if stored is None or roots is None or stored.roots is None else stored.roots | roots
        # Nothing there (a first load): the count said it all, no page to read.
        table = census(client, resource_type, identifier_system, roots=keep) if total else CENSUS_SCHEMA.to_frame()
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
    return table.with_columns(
        pl.col("references").list.filter(root.is_in(pl.Series(sorted(wanted), dtype=pl.String).implode()))
    )


def _read_kind(path: Path) -> KindCensus | None:
    if not path.exists():
        return None
    meta = pl.read_parquet_metadata(path)
    roots = json.loads(meta["roots"])
    return KindCensus(
        pl.read_parquet(path),
        datetime.fromisoformat(meta["as_of"]) if meta["as_of"] else None,
        None if roots is None else frozenset(roots),
        meta["run_id"],
        meta["how"],
    )


def _write_kind(stored: KindCensus, path: Path) -> None:
    """Written whole under another name, then renamed: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.touch(mode=0o600, exist_ok=True)
    partial.chmod(0o600)
    stored.table.write_parquet(
        partial,
        metadata={
            "as_of": stored.as_of.isoformat() if stored.as_of else "",
            "roots": json.dumps(None if stored.roots is None else sorted(stored.roots)),
            "run_id": stored.run_id,
            "how": stored.how,
        },
    )
    partial.replace(path)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """One process at a time (the steps of a run may run in several) holds the lock file `path`."""
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
    under `system`, searched up to LOOKUP_CHUNK values at a time (lookup_chunks)."""
    tokens = [identifier_token(system, value) for value in values]
    for chunk in lookup_chunks(tokens, LOOKUP_CHUNK):
        params = {"identifier": ",".join(chunk), "_count": str(CENSUS_PAGE_SIZE)}
        for resource in client.search(resource_type, params):
            for ident in resource.get("identifier", []):
                if ident.get("system") == system:
                    yield ident.get("value"), resource


def existing_identifiers(client: MedplumClient, resource_type: str, system: str, values: Sequence[str]) -> set[str]:
    """Which of `values` exist in Medplum under `system`."""
    return {value for value, _ in find_by_identifiers(client, resource_type, system, values)} & set(values)
