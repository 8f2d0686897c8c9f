"""The regular sync of one data element (phases dual_write and backfill), as plain functions over the legacy
source, the manifest and Medplum (no Dagster import).

Sync: each legacy table has an `updated_at` column (ISO text, UTC, fixed width). The sync keeps, per
element and table, the largest `updated_at` of its last successful run (the watermark, in the
manifest's database, table `adoption_sync_watermarks`). A tick reads the element's tables, maps them
with the element's own transform (same frame, unit keys and quarantine rules as a full migration) and
keeps the units touched by a row changed since the watermark (minus a small look-back): the unit's
own row, or a row it is joined with (a patient's renamed Condition, an encounter's notes). Those go
through `migrate()`, so prerequisites are checked as usual and rows whose content hash has not changed
are still not sent. A table without `updated_at` cannot be tracked: all its units are candidates and
the content hash decides (a warning says so).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import polars as pl

from migration_assets.elements.base import DataElement, SourceSystem, build_frame, read_element_tables
from migration_assets.elements.files import legacy_files
from migration_assets.ledger.files import FileHashes
from migration_assets.ledger.manifest import Manifest
from migration_assets.ledger.sync_state import SyncState
from migration_assets.medplum import MedplumClient
from migration_assets.phases import ElementPhase
from migration_assets.pipeline.loader import LoadResult, LoadSettings, migrate
from migration_assets.source import column_max, redact_url

# Rows stamped up to this long before the watermark are looked at again: a transaction that committed
# late with an earlier timestamp is not missed (the content hash keeps the rest from being resent).
DEFAULT_LOOKBACK_SECONDS = 120

# -- reading the element from the legacy store ------------------------------------------------------


def read_legacy(url: str, element: DataElement) -> dict[str, pl.DataFrame]:
    return read_element_tables(element, url)


def legacy_frame(
    element: DataElement, tables: Mapping[str, pl.DataFrame], system: SourceSystem, source_url: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The element's extracted rows and FHIR frame, exactly as a full migration builds them (the
    mapping never sees the change column), with the files and BLOBs of the database at `source_url`
    (the ones already in use when None)."""
    plain = {
        name: frame.drop(element.change_column, strict=False) if element.change_column else frame
        for name, frame in tables.items()
    }
    with legacy_files(source_url) if source_url else nullcontext():
        rows = element.extract(plain)
    return rows, build_frame(element, rows, system)


def _key_of_row(element: DataElement, rows: pl.DataFrame) -> pl.Expr:
    """Each extracted row's own source key: the primary key column of its source table."""
    expr: pl.Expr = pl.lit(None, pl.String)
    for table in rows["source_table"].unique().to_list():
        key = element.source_tables.get(table)
        if key and key in rows.columns:
            expr = pl.when(pl.col("source_table") == table).then(pl.col(key).cast(pl.String)).otherwise(expr)
    return expr


@dataclass
class Candidates:
    mask: pl.Series  # per frame row: to be synced
    changed_rows: dict[str, int]  # per table: rows changed since its watermark (-1: not tracked)
    new_marks: dict[str, str | None]
    untracked: list[str]
    retried: int = 0
    backfilled: int = 0


def select_candidates(
    element: DataElement,
    tables: Mapping[str, pl.DataFrame],
    rows: pl.DataFrame,
    frame: pl.DataFrame,
    marks: Mapping[str, str | None],
    phase: ElementPhase,
    known: pl.DataFrame,
    lookback_seconds: int = DEFAULT_LOOKBACK_SECONDS,
) -> Candidates:
    """Which frame rows a sync sends: those touched by a changed row, the units a past run left
    pending or rejected, and (in phases that backfill) units never loaded; whole bundle groups."""
    behaviour = phase.behaviour
    everything = pl.Series([True] * rows.height, dtype=pl.Boolean)
    touched = pl.Series([False] * rows.height, dtype=pl.Boolean)
    changed_rows: dict[str, int] = {}
    new_marks: dict[str, str | None] = {}
    untracked: list[str] = []
    changed_at = element.change_column
    for table, data in tables.items():
        if changed_at is None or changed_at not in data.columns:
            untracked.append(table)
            changed_rows[table] = -1
            new_marks[table] = None
            touched = everything
            continue
        newest = data[changed_at].max()
        new_marks[table] = None if newest is None else str(newest)
        since = _since(
            marks.get(table), table in marks, phase, behaviour.first_sync_from, lookback_seconds, element.change_format
        )
        changed = data if since is None else data.filter(pl.col(changed_at) > since)
        changed_rows[table] = changed.height
        if changed.is_empty():
            continue
        key = element.source_tables.get(table)
        if since is None or key is None or key not in rows.columns:
            touched = everything  # cannot tell which units a change of this table touches: all are candidates
            continue
        touched = touched | rows[key].cast(pl.String).is_in(changed[key].cast(pl.String).to_list()).fill_null(False)
    keys = (
        rows.with_columns(_source_key=_key_of_row(element, rows))
        .filter(touched)
        .select("source_table", source_key="_source_key")
        .unique()
    )
    mask = (
        frame.select("source_table", "source_key")
        .join(
            keys.with_columns(_hit=pl.lit(True)), on=["source_table", "source_key"], how="left", maintain_order="left"
        )["_hit"]
        .fill_null(False)
    )
    if touched.all():
        mask = pl.Series([True] * frame.height, dtype=pl.Boolean)
    ledger = frame.select("source_table", "unit_key").join(
        known.select("source_table", "unit_key", "disposition"),
        on=["source_table", "unit_key"],
        how="left",
        maintain_order="left",
    )["disposition"]
    retry = ledger.is_in(["pending", "rejected"]).fill_null(False)
    backfill = ledger.is_null() if behaviour.backfills else pl.Series([False] * frame.height, dtype=pl.Boolean)
    result = Candidates(
        mask | retry | backfill,
        changed_rows,
        new_marks,
        untracked,
        retried=int((retry & ~mask).sum()),
        backfilled=int((backfill & ~mask & ~retry).sum()),
    )
    # A transaction goes whole: a note's change sends its encounter with it, and the other way round.
    result.mask = (
        pl.DataFrame({"g": frame["bundle_group"], "m": result.mask}).select(pl.col("m").any().over("g")).to_series()
    )
    return result


def _since(
    mark: str | None, has_mark: bool, phase: ElementPhase, first_from: str, lookback: int, change_format: str
) -> str | None:
    """The change time after which rows count as changed; None: every row."""
    if mark is None:
        if has_mark or first_from == "beginning" or phase.since is None:
            return None
        # dual write: what changed since dual writing began
        return dt.datetime.combine(phase.since, dt.time(), tzinfo=dt.UTC).strftime(change_format)
    try:
        moment = dt.datetime.strptime(mark, change_format).replace(tzinfo=dt.UTC)
    except ValueError:
        return mark  # not in the declared format: compare as given, without look-back
    return (moment - dt.timedelta(seconds=lookback)).strftime(change_format)


# -- the sync ---------------------------------------------------------------------------------------


class SyncRefused(RuntimeError):
    """The element's phase does not allow a sync (deprecated); the message says why."""


@dataclass
class SyncOutcome:
    element: str
    phase: str
    mode: str  # write or verify
    candidates: int = 0
    changed_rows: dict[str, int] = field(default_factory=dict)
    watermarks_before: dict[str, str | None] = field(default_factory=dict)
    watermarks_after: dict[str, str | None] = field(default_factory=dict)
    untracked_tables: list[str] = field(default_factory=list)
    retried: int = 0
    backfilled: int = 0
    result: LoadResult | None = None
    message: str = ""


def sync_element(
    client: MedplumClient,
    ledger: Manifest,
    run_id: str,
    element: DataElement,
    phase: ElementPhase,
    phases_version: str,
    source_url: str,
    system: SourceSystem,
    settings: LoadSettings,
    lookback_seconds: int = DEFAULT_LOOKBACK_SECONDS,
    on_progress: Callable[[int, int], None] | None = None,
) -> SyncOutcome:
    """One tick of the sync of one element, as its phase says (phases.PHASE_BEHAVIOUR)."""
    behaviour = phase.behaviour
    if behaviour.sync == "off":
        raise SyncRefused(f"{phase.describe()}: it is no longer synced ({behaviour.summary})")
    state = SyncState(ledger)
    outcome = SyncOutcome(element.name, phase.phase, behaviour.sync, watermarks_before=state.watermarks(element.name))
    state.start(run_id, element.name, phase, phases_version)
    if behaviour.sync == "verify":
        outcome.message = (
            f"{phase.describe()}: Medplum is the system of record; nothing is written from the "
            "legacy side, the dual-write check of this run reads Medplum back and compares."
        )
        state.finish(run_id, element.name, "verified", 0, {})
        return outcome
    try:
        # The legacy files and BLOBs are this database's; unchanged files are not read again.
        with legacy_files(source_url, FileHashes(ledger.engine)):
            tables = read_legacy(source_url, element)
            rows, frame = legacy_frame(element, tables, system)
            chosen = select_candidates(
                element,
                tables,
                rows,
                frame,
                outcome.watermarks_before,
                phase,
                ledger.units(element.name),
                lookback_seconds,
            )
            outcome.changed_rows, outcome.watermarks_after = chosen.changed_rows, chosen.new_marks
            outcome.untracked_tables, outcome.retried, outcome.backfilled = (
                chosen.untracked,
                chosen.retried,
                chosen.backfilled,
            )
            outcome.candidates = int(chosen.mask.sum())
            if outcome.candidates:
                outcome.result = migrate(
                    client,
                    ledger,
                    run_id,
                    element,
                    frame.filter(chosen.mask),
                    redact_url(source_url),
                    settings,
                    on_progress,
                )
    except Exception:
        state.finish(run_id, element.name, "failed", outcome.candidates, {})
        raise
    # Only a sync that ran to its end moves the watermark; rejected units are retried next tick.
    state.advance(element.name, run_id, outcome.watermarks_after)
    counts = outcome.result.counts if outcome.result else {}
    state.finish(run_id, element.name, "finished", outcome.candidates, counts)
    outcome.message = (
        f"{phase.describe()}: {outcome.candidates} of {frame.height} units touched by a change "
        f"({counts.get('sent', 0)} sent, {counts.get('not_sent_unchanged', 0)} unchanged)"
    )
    return outcome


def pending_changes(
    url: str, element: DataElement, marks: Mapping[str, str | None]
) -> tuple[dict[str, str | None], list[str]]:
    """For a sensor: the newest change time of each table (one MAX query each), and the tables that
    changed after their watermark (every tracked table when there is no watermark yet)."""
    newest: dict[str, str | None] = {}
    changed: list[str] = []
    if element.change_column is None:
        return newest, changed
    for table in element.source_tables:
        try:
            newest[table] = column_max(url, table, element.change_column)
        except KeyError:
            newest[table] = None
            continue
        if newest[table] is not None and (table not in marks or (marks[table] or "") < (newest[table] or "")):
            changed.append(table)
    return newest, changed


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
