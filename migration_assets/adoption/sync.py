"""Regular sync, dual-write reconciliation, read readiness and the legacy archive of one data element,
as plain functions over the legacy source, the manifest and Medplum (no Dagster import).

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
import hashlib
import json
import random
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from migration_assets.elements.base import DataElement, SourceSystem, build_frame
from migration_assets.elements.fhir_json import json_leaves
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.paths import state_dir
from migration_assets.phases import DualWriteSample, ElementPhase
from migration_assets.pipeline.loader import LoadResult, LoadSettings, migrate
from migration_assets.source import column_max, read_table, redact_url
from migration_assets.verify.verification import (
    find_by_identifiers,
    reference_problems,
    take_census,
    target_identifiers,
)

# Rows stamped up to this long before the watermark are looked at again: a transaction that committed
# late with an earlier timestamp is not missed (the content hash keeps the rest from being resent).
DEFAULT_LOOKBACK_SECONDS = 120

# -- the watermark store ---------------------------------------------------------------------------

adoption_metadata = sa.MetaData()

watermarks = sa.Table(
    "adoption_sync_watermarks",
    adoption_metadata,
    sa.Column("element", sa.String(64), primary_key=True),
    sa.Column("source_table", sa.String(128), primary_key=True),
    # The largest updated_at seen by the last successful sync; NULL: the table has no updated_at.
    sa.Column("watermark", sa.String(64)),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
)

sync_log = sa.Table(
    "adoption_sync_log",
    adoption_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("element", sa.String(64), primary_key=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),  # running, finished, failed, verified
    sa.Column("phase", sa.String(32), nullable=False),
    sa.Column("phases_version", sa.String(64), nullable=False),
    sa.Column("candidates", sa.Integer),
    sa.Column("counts", sa.Text),  # JSON
)


class SyncState:
    """Watermarks and the sync log, in the manifest's database (created beside its tables)."""

    def __init__(self, manifest: Manifest) -> None:
        self.engine = manifest.engine
        adoption_metadata.create_all(self.engine)

    def watermarks(self, element: str) -> dict[str, str | None]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(watermarks.c.source_table, watermarks.c.watermark)
                              .where(watermarks.c.element == element)).all()
        return {table: mark for table, mark in rows}

    def advance(self, element: str, run_id: str, marks: Mapping[str, str | None]) -> None:
        now = _now()
        with self.engine.begin() as db:
            db.execute(sa.delete(watermarks).where(watermarks.c.element == element,
                                                   watermarks.c.source_table.in_(list(marks))))
            db.execute(sa.insert(watermarks), [
                {"element": element, "source_table": table, "watermark": mark, "run_id": run_id, "synced_at": now}
                for table, mark in marks.items()
            ])

    def start(self, run_id: str, element: str, phase: ElementPhase, phases_version: str) -> None:
        with self.engine.begin() as db:
            db.execute(sa.delete(sync_log).where(sync_log.c.run_id == run_id, sync_log.c.element == element))
            db.execute(sa.insert(sync_log).values(run_id=run_id, element=element, started_at=_now(), status="running",
                                                  phase=phase.phase, phases_version=phases_version))

    def finish(self, run_id: str, element: str, status: str, candidates: int | None, counts: Mapping[str, int]) -> None:
        with self.engine.begin() as db:
            db.execute(sa.update(sync_log).where(sync_log.c.run_id == run_id, sync_log.c.element == element)
                       .values(finished_at=_now(), status=status, candidates=candidates, counts=json.dumps(dict(counts))))

    def last_syncs(self) -> dict[str, dict[str, Any]]:
        """Per element: its last finished sync (or verification) and the oldest watermark of its tables."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as db:
            for row in db.execute(sa.select(sync_log).where(sync_log.c.status.in_(["finished", "verified"]))
                                  .order_by(sync_log.c.finished_at)):
                out[row.element] = {"last_sync_at": row.finished_at, "last_sync_run": row.run_id,
                                    "last_sync_status": row.status}
            for row in db.execute(sa.select(watermarks.c.element, sa.func.min(watermarks.c.watermark).label("mark"))
                                  .group_by(watermarks.c.element)):
                out.setdefault(row.element, {})["watermark"] = row.mark
        return out


# -- reading the element from the legacy store ------------------------------------------------------


def read_legacy(url: str, element: DataElement) -> dict[str, pl.DataFrame]:
    return {table: read_table(url, table) for table in element.source_tables}


def legacy_frame(element: DataElement, tables: Mapping[str, pl.DataFrame], system: SourceSystem) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The element's extracted rows and FHIR frame, exactly as a full migration builds them (the
    mapping never sees the change column)."""
    plain = {name: frame.drop(element.change_column, strict=False) if element.change_column else frame
             for name, frame in tables.items()}
    rows = element.extract(plain)
    return rows, build_frame(element, rows, system)


def _key_of_row(element: DataElement, rows: pl.DataFrame) -> pl.Expr:
    """Each extracted row's own source key: the primary key column of its source table."""
    expr: Any = pl.lit(None, pl.String)
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
        since = _since(marks.get(table), table in marks, phase, behaviour.first_sync_from, lookback_seconds,
                       element.change_format)
        changed = data if since is None else data.filter(pl.col(changed_at) > since)
        changed_rows[table] = changed.height
        if changed.is_empty():
            continue
        key = element.source_tables.get(table)
        if since is None or key is None or key not in rows.columns:
            touched = everything  # cannot tell which units a change of this table touches: all are candidates
            continue
        touched = touched | rows[key].cast(pl.String).is_in(changed[key].cast(pl.String).to_list()).fill_null(False)
    keys = rows.with_columns(_source_key=_key_of_row(element, rows)).filter(touched).select(
        "source_table", source_key="_source_key").unique()
    mask = frame.select("source_table", "source_key").join(
        keys.with_columns(_hit=pl.lit(True)), on=["source_table", "source_key"], how="left", maintain_order="left"
    )["_hit"].fill_null(False)
    if touched.all():
        mask = pl.Series([True] * frame.height, dtype=pl.Boolean)
    ledger = frame.select("source_table", "unit_key").join(
        known.select("source_table", "unit_key", "disposition"), on=["source_table", "unit_key"], how="left",
        maintain_order="left",
    )["disposition"]
    retry = ledger.is_in(["pending", "rejected"]).fill_null(False)
    backfill = ledger.is_null() if behaviour.backfills else pl.Series([False] * frame.height, dtype=pl.Boolean)
    result = Candidates(mask | retry | backfill, changed_rows, new_marks, untracked,
                        retried=int((retry & ~mask).sum()), backfilled=int((backfill & ~mask & ~retry).sum()))
    # A transaction goes whole: a note's change sends its encounter with it, and the other way round.
    result.mask = pl.DataFrame({"g": frame["bundle_group"], "m": result.mask}).select(
        pl.col("m").any().over("g")).to_series()
    return result


def _since(mark: str | None, has_mark: bool, phase: ElementPhase, first_from: str, lookback: int,
           change_format: str) -> str | None:
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
        outcome.message = (f"{phase.describe()}: Medplum is the system of record; nothing is written from the "
                           "legacy side, the dual-write check of this run reads Medplum back and compares.")
        state.finish(run_id, element.name, "verified", 0, {})
        return outcome
    try:
        tables = read_legacy(source_url, element)
        rows, frame = legacy_frame(element, tables, system)
        chosen = select_candidates(element, tables, rows, frame, outcome.watermarks_before, phase, ledger.units(element.name),
                                   lookback_seconds)
        outcome.changed_rows, outcome.watermarks_after = chosen.changed_rows, chosen.new_marks
        outcome.untracked_tables, outcome.retried, outcome.backfilled = chosen.untracked, chosen.retried, chosen.backfilled
        outcome.candidates = int(chosen.mask.sum())
        if outcome.candidates:
            outcome.result = migrate(client, ledger, run_id, element, frame.filter(chosen.mask),
                                        redact_url(source_url), settings, on_progress)
    except Exception:
        state.finish(run_id, element.name, "failed", outcome.candidates, {})
        raise
    # Only a sync that ran to its end moves the watermark; rejected units are retried next tick.
    state.advance(element.name, run_id, outcome.watermarks_after)
    counts = outcome.result.counts if outcome.result else {}
    state.finish(run_id, element.name, "finished", outcome.candidates, counts)
    outcome.message = (f"{phase.describe()}: {outcome.candidates} of {frame.height} units touched by a change "
                       f"({counts.get('sent', 0)} sent, {counts.get('not_sent_unchanged', 0)} unchanged)")
    return outcome


def pending_changes(url: str, element: DataElement, marks: Mapping[str, str | None]) -> tuple[dict[str, str | None], list[str]]:
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


# -- dual-write reconciliation ----------------------------------------------------------------------

IGNORED_FIELDS = ("id", "meta")
DISCREPANCY_KINDS = ("missing_in_medplum", "missing_in_legacy", "duplicated_in_medplum", "stale_in_medplum", "differs")
DISCREPANCY_SCHEMA = {"resource_type": pl.String, "identifier_value": pl.String, "kind": pl.String, "field": pl.String,
                      "legacy_value": pl.String, "medplum_value": pl.String}
_VALUE_LIMIT = 200


@dataclass
class DualWriteReport:
    element: str
    eligible: int  # legacy units expected in Medplum
    quarantined: int  # legacy units not expected (quarantined in the frame or at load time)
    compared: int  # legacy units compared (all eligible, or the sample)
    sample: DualWriteSample
    discrepancies: pl.DataFrame  # DISCREPANCY_SCHEMA, values included: evidence files only
    censuses: dict[tuple[str, str], pl.DataFrame] | None = None  # whole comparisons only

    @property
    def counts(self) -> dict[str, int]:
        found = dict(self.discrepancies.group_by("kind").len().iter_rows())
        return {kind: int(found.get(kind, 0)) for kind in DISCREPANCY_KINDS}

    @property
    def units_with_discrepancies(self) -> int:
        return self.discrepancies.select("resource_type", "identifier_value").n_unique() if self.discrepancies.height else 0

    @property
    def passed(self) -> bool:
        return self.discrepancies.is_empty()

    def summary(self) -> pl.DataFrame:
        """Counts per kind and field (no values): the table the UI shows."""
        return (self.discrepancies.group_by("resource_type", "kind", "field")
                .agg(units=pl.len(), examples=pl.col("identifier_value").head(5).str.join(", "))
                .sort("units", descending=True))


def compare_stores(
    client: MedplumClient,
    element_name: str,
    frame: pl.DataFrame,
    units: pl.DataFrame,
    sample: DualWriteSample | None = None,
    look_for_extras: bool = True,
) -> DualWriteReport:
    """The legacy store (as FHIR built from its rows) against Medplum, record by record and field by
    field on the fields the mapping writes (ignoring id and meta; references compared by the resource
    they point at). With `sample.size`, only that many legacy units, drawn with `sample.seed`, are
    compared and resources only in Medplum are not looked for (nor when `look_for_extras` is False:
    `frame` is then a part of the element, e.g. one patient's units)."""
    sample = sample or DualWriteSample()
    load_quarantined = units.filter(pl.col("disposition") == "quarantined").select("source_table", "unit_key")
    in_frame = frame.filter(pl.col("quarantine_rule").is_null())
    eligible = in_frame.join(load_quarantined, on=["source_table", "unit_key"], how="anti")
    stale_candidates = frame.join(eligible.select("source_table", "unit_key"), on=["source_table", "unit_key"], how="anti")
    chosen = eligible
    if sample.size is not None and sample.size < eligible.height:
        keys = sorted(eligible.select(pl.format("{}|{}", "resource_type", "identifier_value")).to_series().to_list())
        picked = set(random.Random(sample.seed).sample(keys, sample.size))
        chosen = eligible.filter(pl.format("{}|{}", "resource_type", "identifier_value").is_in(list(picked)))
    whole = chosen.height == eligible.height and look_for_extras
    censuses = None
    read_whole: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    if whole:
        # One read of everything: the census (identifiers, ids, references) for the checks below, and
        # the whole resources kept on the side for the field-by-field comparison.
        def keep(resource_type: str, system: str, value: str, resource: dict[str, Any]) -> None:
            read_whole.setdefault((resource_type, system, value), []).append(resource)

        censuses = take_census(client, frame, visit=keep)
    found = _found_resources(client, chosen, read_whole if whole else None)
    target_ids = target_identifiers(client, _expectations(chosen))
    problems: list[dict[str, Any]] = []
    mapped_fields = _mapped_fields(chosen)
    for row in chosen.iter_rows(named=True):
        key = (row["resource_type"], row["identifier_system"], row["identifier_value"])
        copies = found.get(key, [])
        if not copies:
            problems.append(_problem(row, "missing_in_medplum", "", None, None))
            continue
        if len(copies) > 1:
            problems.append(_problem(row, "duplicated_in_medplum", "", None, str(len(copies))))
            continue
        built = _with_resolved_references(json.loads(row["resource"]), row["references"], target_ids)
        medplum_copy: dict[str, Any] = copies[0]
        fields = mapped_fields[row["resource_type"]]
        legacy_leaves = json_leaves({k: v for k, v in built.items() if k in fields})
        medplum_leaves = json_leaves({k: v for k, v in medplum_copy.items() if k in fields})
        for path in sorted(set(legacy_leaves) | set(medplum_leaves)):
            if legacy_leaves.get(path) != medplum_leaves.get(path):
                problems.append(_problem(row, "differs", path, legacy_leaves.get(path), medplum_leaves.get(path)))
    if censuses is not None:
        known = frame.select("resource_type", "identifier_system", "identifier_value")
        stale = {(r["resource_type"], r["identifier_system"], r["identifier_value"]): r
                 for r in stale_candidates.iter_rows(named=True)}
        for (resource_type, system), census in censuses.items():
            legacy_values = set(known.filter((pl.col("resource_type") == resource_type)
                                             & (pl.col("identifier_system") == system))["identifier_value"].to_list())
            for value in sorted(set(census["identifier_value"].to_list())):
                stale_row = stale.get((resource_type, system, value))
                if stale_row is not None:
                    problems.append(_problem(stale_row, "stale_in_medplum", "", stale_row["quarantine_rule"] or "quarantined", None))
                elif value not in legacy_values:
                    problems.append({"resource_type": resource_type, "identifier_value": value,
                                     "kind": "missing_in_legacy", "field": "", "legacy_value": None, "medplum_value": None})
    return DualWriteReport(
        element=element_name,
        eligible=eligible.height,
        quarantined=frame.height - eligible.height,
        compared=chosen.height,
        sample=sample if not whole else DualWriteSample(None, sample.seed),
        discrepancies=pl.DataFrame(problems, schema=DISCREPANCY_SCHEMA),
        censuses=censuses,
    )


def _problem(row: Mapping[str, Any], kind: str, path: str, legacy: Any, medplum: Any) -> dict[str, Any]:
    return {"resource_type": row["resource_type"], "identifier_value": row["identifier_value"], "kind": kind,
            "field": path, "legacy_value": _text(legacy), "medplum_value": _text(medplum)}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _VALUE_LIMIT else text[: _VALUE_LIMIT - 1] + "…"


def _found_resources(
    client: MedplumClient, chosen: pl.DataFrame, already_read: dict[tuple[str, str, str], list[dict[str, Any]]] | None
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """The Medplum resources carrying each chosen identifier: `already_read` (while taking the census),
    else searched in chunks."""
    if already_read is not None:
        return already_read
    found: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for (resource_type, system), group in chosen.group_by("resource_type", "identifier_system"):
        values = group["identifier_value"].to_list()
        for value, resource in find_by_identifiers(client, str(resource_type), str(system), values):
            found.setdefault((str(resource_type), str(system), value), []).append(resource)
    return found


def _expectations(frame: pl.DataFrame) -> pl.DataFrame:
    schema = {"target_resource_type": pl.String, "target_identifier_system": pl.String, "target_identifier_value": pl.String}
    refs = frame.select(pl.col("references").explode()).filter(pl.col("references").is_not_null())
    if refs.is_empty():
        return pl.DataFrame(schema=schema)
    return refs.unnest("references").select(
        target_resource_type="resource_type", target_identifier_system="identifier_system",
        target_identifier_value="identifier_value",
    ).unique()


def _mapped_fields(frame: pl.DataFrame) -> dict[str, set[str]]:
    """Per resource type, the top-level fields the mapping writes in any row (minus id and meta)."""
    fields: dict[str, set[str]] = {}
    for resource_type, text in frame.select("resource_type", "resource").iter_rows():
        fields.setdefault(resource_type, set()).update(json.loads(text))
    return {rt: names - set(IGNORED_FIELDS) for rt, names in fields.items()}


def _with_resolved_references(
    resource: dict[str, Any], references: Sequence[Mapping[str, Any]] | None, target_ids: Mapping[tuple[str, str, str], str]
) -> dict[str, Any]:
    """The built resource with each conditional (or urn:uuid) reference replaced by the `Type/id` its
    target has in Medplum, as the server stores it; an unresolvable one names what was expected."""
    for ref in references or []:
        if ref is None or ref.get("path") is None:
            continue
        key = (ref["resource_type"], ref["identifier_system"], ref["identifier_value"])
        value = target_ids.get(key) or f"{key[0]} with identifier {key[2]} (not in Medplum)"
        node: Any = resource
        parts = ref["path"].split(".")
        for part in parts:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            elif isinstance(node, dict):
                node = node.get(part)
            if node is None:
                break
        if isinstance(node, dict) and "reference" in node:
            node["reference"] = value
    return resource


def write_discrepancies(report: DualWriteReport, directory: Path) -> tuple[Path, Path]:
    """`dual_write.json` (counts and every discrepancy) and `dual_write.csv` (one row each), readable by
    their owner only: they hold legacy and Medplum values, i.e. patient data."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = directory / "dual_write.json", directory / "dual_write.csv"
    payload = {
        "element": report.element, "generated_at": _now().isoformat(timespec="seconds"),
        "passed": report.passed, "eligible": report.eligible, "compared": report.compared,
        "quarantined_not_compared": report.quarantined,
        "sample": {"size": report.sample.size, "seed": report.sample.seed},
        "counts": report.counts, "discrepancies": report.discrepancies.to_dicts(),
    }
    for path in (json_path, csv_path):
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    report.discrepancies.write_csv(csv_path)
    return json_path, csv_path


# -- read readiness ---------------------------------------------------------------------------------


def assess_readiness(
    client: MedplumClient, ledger: Manifest, element: DataElement, frame: pl.DataFrame, phase: ElementPhase,
    phases_version: str,
) -> tuple[dict[str, Any], DualWriteReport, pl.DataFrame]:
    """Whether reads of the element can move to Medplum: every unit compared (no sample), nothing
    missing on either side, no differing field, no duplicate, every reference intact, no load left
    half done. Returns the readiness document (what the feature flag reads), the comparison and the
    reference problems."""
    units = ledger.units(element.name)
    report = compare_stores(client, element.name, frame, units)
    assert report.censuses is not None
    checked, problems = reference_problems(client, frame, report.censuses)
    pending = int((frame.select("source_table", "unit_key")
                   .join(units, on=["source_table", "unit_key"], how="inner")["disposition"] == "pending").sum())
    counts = report.counts
    criteria = {
        "missing_in_medplum": counts["missing_in_medplum"],
        "missing_in_legacy": counts["missing_in_legacy"],
        "duplicated_in_medplum": counts["duplicated_in_medplum"],
        "stale_in_medplum": counts["stale_in_medplum"],
        "units_with_differing_fields": report.discrepancies.filter(pl.col("kind") == "differs")
        .select("resource_type", "identifier_value").n_unique(),
        "reference_problems": problems.height,
        "units_pending": pending,
    }
    ready = all(value == 0 for value in criteria.values())
    reasons = [f"{value} {name.replace('_', ' ')}" for name, value in criteria.items() if value]
    behaviour = phase.behaviour
    reads_from = {"legacy": "legacy", "medplum": "medplum"}.get(
        behaviour.reads_from, "medplum" if ready else "legacy"
    )
    document = {
        "element": element.name,
        "ready": ready,
        # What a feature flag should do now: before read_from_medplum always legacy; in it, Medplum only
        # while ready; from front_end_write on, Medplum (the legacy store is no longer written).
        "reads_from": reads_from,
        "phase": phase.phase,
        "phase_since": phase.since.isoformat() if phase.since else None,
        "phases_version": phases_version,
        "mapping_version": element.mapping_version,
        "generated_at": _now().isoformat(timespec="seconds"),
        "criteria": {**criteria, "units_compared": report.compared, "references_checked": checked,
                     "quarantined_not_expected": report.quarantined},
        "reasons": reasons,
    }
    return document, report, problems


def write_readiness(document: Mapping[str, Any], directory: Path) -> Path:
    """`<directory>/<element>.json`, replaced atomically so a flag never reads half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{document['element']}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=2))
    partial.replace(path)
    return path


# -- deprecation: the frozen export ---------------------------------------------------------------

CHECKSUM_FILE = "SHA256SUMS"
EXPORT_DESCRIPTION = "export.json"


@dataclass(frozen=True)
class LegacyArchive:
    directory: Path
    checksums: dict[str, str]  # file name -> SHA-256
    rows: dict[str, int]  # table -> rows


def export_legacy_tables(
    url: str, element: DataElement, base_dir: Path, phase: ElementPhase, phases_version: str,
    final_verification: Mapping[str, Any],
) -> LegacyArchive:
    """Every legacy table of the element as Parquet in a new folder, with `export.json` (what, when,
    under which configuration, the final verification, kept until when) and SHA256SUMS (sha256sum
    format, every other file); then files and folder are made read-only."""
    exported_at = _now()
    directory = base_dir / element.name / exported_at.strftime("%Y%m%dT%H%M%S%fZ")
    directory.mkdir(parents=True)
    rows = {}
    for table in element.source_tables:
        data = read_table(url, table)
        data.write_parquet(directory / f"{table}.parquet")
        rows[table] = data.height
    keep_from = max(phase.since or exported_at.date(), exported_at.date())
    description = {
        "element": element.name,
        "source": redact_url(url),
        "tables": rows,
        "exported_at": exported_at.isoformat(timespec="seconds"),
        "phase": phase.phase,
        "phase_since": phase.since.isoformat() if phase.since else None,
        "phases_version": phases_version,
        "mapping_version": element.mapping_version,
        "keep_until": (keep_from + dt.timedelta(days=phase.verification_period_days)).isoformat(),
        "final_verification": dict(final_verification),
    }
    (directory / EXPORT_DESCRIPTION).write_text(json.dumps(description, indent=2, default=str))
    checksums = {path.name: _sha256(path) for path in sorted(directory.iterdir())}
    (directory / CHECKSUM_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in checksums.items()))
    for path in directory.iterdir():
        path.chmod(0o444)
    directory.chmod(0o555)
    return LegacyArchive(directory, checksums, rows)


def verify_archive(directory: Path) -> list[str]:
    """What is wrong with a frozen export: a file changed, missing or unlisted, or writable."""
    problems = []
    listed: dict[str, str] = {}
    sums = directory / CHECKSUM_FILE
    if not sums.is_file():
        return [f"{CHECKSUM_FILE} missing"]
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name, digest in listed.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif _sha256(path) != digest:
            problems.append(f"{name} does not match its checksum")
    for path in directory.iterdir():
        if path.name not in listed and path.name != CHECKSUM_FILE:
            problems.append(f"{path.name} is not in {CHECKSUM_FILE}")
        if stat.S_IMODE(path.stat().st_mode) & 0o222:
            problems.append(f"{path.name} is writable")
    if stat.S_IMODE(directory.stat().st_mode) & 0o222:
        problems.append("the export folder is writable")
    return problems


def latest_archive(base_dir: Path, element: str) -> Path | None:
    folder = base_dir / element
    found = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return found[-1] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- where files go ---------------------------------------------------------------------------------


def adoption_dir(evidence_dir: str | Path, name: str) -> Path:
    """Folders beside the evidence folder (.demo/readiness, .demo/legacy_archive, .demo/chart_review
    by default); READINESS_DIR, LEGACY_ARCHIVE_DIR and CHART_REVIEW_DIR override them."""
    return state_dir(evidence_dir, name)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
