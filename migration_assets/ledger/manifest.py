"""The run ledger: every source unit, every submission attempt and exactly one disposition each.

A source unit is one row of a legacy table (data element, source table, unit key). Its disposition
is one of DISPOSITIONS; `pending` means "to be sent" and must not survive a finished run. The store
is a plain SQL database (SQLite by default, PostgreSQL in production), created by the platform.

The books are kept per target (medplum/target.py: a server and a project): what one Medplum holds
never decides what is sent to another, and switching back to a target finds its books as they were.
"""

import json
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Self

import polars as pl
import sqlalchemy as sa

DISPOSITIONS = ("successful", "rejected", "skipped", "quarantined", "pending")

metadata = sa.MetaData()


# Every table of the books starts with the target they describe (Target.key; "" in tools and tests that
# name none).
def _target_column() -> sa.Column[str]:
    return sa.Column("target", sa.String(512), primary_key=True)


runs = sa.Table(
    "manifest_runs",
    metadata,
    _target_column(),
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("element", sa.String(64), primary_key=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    # running, finished, failed; or interrupted: still `running` when a later run of the same element and
    # shard started, so its process was killed (or the two runs overlapped).
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("mapping_version", sa.String(32), nullable=False),
    sa.Column("pipeline_version", sa.String(64), nullable=False),
    sa.Column("source_url", sa.Text, nullable=False),  # always without credentials
    sa.Column("source_rows", sa.Text, nullable=False),  # JSON: table -> rows extracted
    sa.Column("counts", sa.Text),  # JSON: the load's summary counts
    sa.Column("shard", sa.String(32)),  # "index/count", e.g. "0/1" without sharding; null in older ledgers
    # The bundles in flight the load settled at (adaptive): where the next load to the target starts.
    sa.Column("settled_in_flight", sa.Integer),
)

units = sa.Table(
    "manifest_units",
    metadata,
    _target_column(),
    sa.Column("element", sa.String(64), primary_key=True),
    sa.Column("source_table", sa.String(128), primary_key=True),
    sa.Column("unit_key", sa.String(512), primary_key=True),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("identifier_system", sa.Text, nullable=False),
    sa.Column("identifier_value", sa.Text),
    sa.Column("disposition", sa.String(16), nullable=False),
    sa.Column("rule", sa.String(64)),  # the quarantine or skip rule
    sa.Column("reason", sa.Text),
    sa.Column("content_hash", sa.String(64)),  # of the last content sent successfully
    sa.Column("resource_id", sa.String(128)),
    sa.Column("version_id", sa.String(128)),
    sa.Column("last_run_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

attempts = sa.Table(
    "manifest_attempts",
    metadata,
    sa.Column("attempt_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(512), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("element", sa.String(64), nullable=False),
    sa.Column("source_table", sa.String(128), nullable=False),
    sa.Column("unit_key", sa.String(512), nullable=False),
    sa.Column("bundle_number", sa.Integer, nullable=False),
    sa.Column("entry_number", sa.Integer, nullable=False),
    sa.Column("http_status", sa.Integer, nullable=False),
    sa.Column("location", sa.Text),
    sa.Column("outcome", sa.Text),  # the OperationOutcome, JSON
    sa.Column("content_hash", sa.String(64)),
    sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_manifest_attempts_target_unit", "target", "element", "source_table", "unit_key"),
)

# The content the idempotent_reload check resubmitted without a change: an unchanged later run of the
# same target need not resubmit it (verify/books.py content_fingerprint).
verified_content = sa.Table(
    "manifest_verified_content",
    metadata,
    _target_column(),
    sa.Column("element", sa.String(64), primary_key=True),
    sa.Column("shard", sa.String(32), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
)

_UNIT_KEY = ("target", "element", "source_table", "unit_key")


def dagster_run_of(ledger_run_id: str) -> str:
    """The Dagster run that recorded a ledger run: the run itself, or the run of a shard step
    (`<run id>.<i>of<n>`, pipeline/sharded.py)."""
    return re.sub(r"\.\d+of\d+$", "", ledger_run_id)


def engine_for(url: str) -> sa.Engine:
    """An engine for `sqlite:///path` or `postgresql://...` (psycopg2, which dagster-postgres brings)."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("postgresql"):
        # psycopg2's own executemany makes a round trip per row (20,000 settled units took 16 s);
        # SQLAlchemy's batches send a page of statements at a time (6 s).
        return sa.create_engine(url, future=True, executemany_mode="values_plus_batch")
    engine = sa.create_engine(url, future=True)
    sa.event.listen(engine, "connect", _sqlite_write_ahead_log)
    return engine


def _sqlite_write_ahead_log(connection: Any, _record: Any) -> None:
    """A write-ahead log, synced at checkpoints rather than at every commit: the loader commits its
    outcomes every couple of thousand rows, and a rollback journal paid two syncs for each. A commit
    can be lost only to a power cut, not to a crash of the process, and its units then stay pending
    and are sent again (every write is conditional). Readers in other processes (the checks, another
    shard) no longer wait for a writer."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def pipeline_version() -> str:
    """The package version and, in a git checkout, the commit."""
    package = version("migration_assets")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return package
    return f"{package}+{commit}"


@dataclass(frozen=True)
class Attempt:
    source_table: str
    unit_key: str
    bundle_number: int
    entry_number: int
    http_status: int
    location: str | None
    outcome: Mapping[str, Any] | None
    content_hash: str | None


class Manifest:
    """The books of one target (`target`: Target.key) in the ledger database at `url`."""

    def __init__(self, url: str, target: str = "") -> None:
        self.engine = engine_for(url)
        self.target = target
        # Created by the platform itself; new tables are added the same way as the schema grows, and
        # columns added since a ledger was created are added to it.
        keep_books_per_target(self.engine, metadata)
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    # -- runs -----------------------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        element: str,
        mapping_version: str,
        source_url: str,
        source_rows: Mapping[str, int],
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        """Record a run of `element` (of `shard`: index, count) as running. Earlier runs of the same
        element and shard still marked running never finished (their process was killed): they
        become `interrupted`, with the time this run noticed it as their end."""
        shard_label = f"{shard[0]}/{shard[1]}"
        now = _now()
        with self.engine.begin() as db:
            db.execute(
                sa.update(runs)
                .where(
                    runs.c.target == self.target,
                    runs.c.element == element,
                    runs.c.status == "running",
                    runs.c.run_id != run_id,
                    # Rows of ledgers older than the shard column: no shard can be told apart.
                    sa.or_(runs.c.shard == shard_label, runs.c.shard.is_(None)),
                )
                .values(status="interrupted", finished_at=now)
            )
            db.execute(sa.delete(runs).where(*self._run(run_id, element)))
            db.execute(
                sa.insert(runs).values(
                    target=self.target,
                    run_id=run_id,
                    element=element,
                    started_at=now,
                    status="running",
                    mapping_version=mapping_version,
                    pipeline_version=pipeline_version(),
                    source_url=source_url,
                    source_rows=json.dumps(dict(source_rows)),
                    shard=shard_label,
                )
            )

    def finish_run(
        self, run_id: str, element: str, status: str, counts: Mapping[str, int], settled_in_flight: int | None = None
    ) -> None:
        with self.engine.begin() as db:
            db.execute(
                sa.update(runs)
                .where(*self._run(run_id, element))
                .values(
                    finished_at=_now(),
                    status=status,
                    counts=json.dumps(dict(counts)),
                    settled_in_flight=settled_in_flight,
                )
            )

    def settled_in_flight(self) -> int | None:
        """The bundles in flight the latest load to this target that judged any settled at."""
        with self.engine.connect() as db:
            return db.execute(
                sa.select(runs.c.settled_in_flight)
                .where(runs.c.target == self.target, runs.c.settled_in_flight.is_not(None))
                .order_by(runs.c.finished_at.desc())
                .limit(1)
            ).scalar()

    def runs(self, element: str, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The runs of `element` (only `run_ids` when given), oldest first."""
        query = (
            sa.select(runs).where(runs.c.target == self.target, runs.c.element == element).order_by(runs.c.started_at)
        )
        if run_ids is not None:
            query = query.where(runs.c.run_id.in_(list(run_ids)))
        with self.engine.connect() as db:
            return [dict(row._mapping) for row in db.execute(query)]

    def last_run(self, element: str) -> dict[str, Any] | None:
        with self.engine.connect() as db:
            row = db.execute(
                sa.select(runs)
                .where(runs.c.target == self.target, runs.c.element == element)
                .order_by(runs.c.started_at.desc())
                .limit(1)
            ).first()
        return dict(row._mapping) if row else None

    # -- units ----------------------------------------------------------------------------------

    def units(self, element: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """Every unit of `element` as it stands (only `columns` when given), read in chunks straight
        into a frame: a million units as Python dicts would take about a gigabyte."""
        selected = [units.c[name] for name in columns] if columns else list(units.columns)
        schema = {column.name: _polars_type(column) for column in selected}
        statement = sa.select(*selected).where(units.c.target == self.target, units.c.element == element)
        with self.engine.connect() as db:
            sqlite = db.dialect.name == "sqlite"
            # SQLite's timestamps arrive as the text SQLAlchemy stored, parsed below a column at a time.
            read_as = {
                name: pl.String() if sqlite and kind == pl.Datetime(time_zone="UTC") else kind
                for name, kind in schema.items()
            }
            fetch = _driver_rows(db, statement) if sqlite else db.execute(statement).fetchmany
            chunks = [pl.DataFrame(rows, schema=read_as, orient="row") for rows in iter(lambda: fetch(50_000), [])]
        frame = pl.concat(chunks) if chunks else pl.DataFrame(schema=read_as)
        return frame.with_columns(
            pl.col(name).str.to_datetime(SQLITE_TIMESTAMP, time_zone="UTC")
            for name, kind in read_as.items()
            if kind != schema[name]
        )

    def register_units(self, run_id: str, element: str, frame: pl.DataFrame, to_send: pl.Series) -> None:
        """Record this run's view of every unit before anything is sent.

        Quarantined rows become `quarantined`; rows about to be sent become `pending` (keeping the
        resource id and hash of their last success); the rest stay as they are. Units the source no
        longer has keep their last disposition: nothing in the ledger is ever deleted.
        """
        now = _now()
        # Filtered in polars: an unchanged reload registers nothing, and its rows never reach Python.
        rows = (
            frame.with_columns(send=to_send)
            .filter(pl.col("quarantine_rule").is_not_null() | pl.col("send"))
            .select(
                "source_table",
                "unit_key",
                "resource_type",
                "identifier_system",
                "identifier_value",
                "quarantine_rule",
                "quarantine_reason",
            )
        )
        records = [
            {
                "target": self.target,
                "element": element,
                "source_table": source_table,
                "unit_key": unit_key,
                "resource_type": resource_type,
                "identifier_system": identifier_system,
                "identifier_value": identifier_value,
                "disposition": "quarantined" if rule else "pending",
                "rule": rule,
                "reason": reason,
                "last_run_id": run_id,
                "updated_at": now,
            }
            for (source_table, unit_key, resource_type, identifier_system, identifier_value, rule, reason) in (
                rows.iter_rows()
            )
        ]
        self._upsert(
            records,
            update=(
                "resource_type",
                "identifier_system",
                "identifier_value",
                "disposition",
                "rule",
                "reason",
                "last_run_id",
                "updated_at",
            ),
        )

    def record_results(
        self,
        run_id: str,
        element: str,
        results: Sequence[Attempt],
        successful: Sequence[bool | None],
        resource_ids: Sequence[str | None],
        version_ids: Sequence[str | None],
        reasons: Sequence[str | None],
    ) -> None:
        """Store the attempts of one bundle and the dispositions they settle: True successful, False
        rejected, None still pending (refused by the quota, or written only in part), with its reason;
        the next run sends it again."""
        now = _now()
        outcome_text = _OutcomeTexts()
        with self.engine.begin() as db:
            _executemany(
                db,
                sa.insert(attempts),
                [
                    {
                        "target": self.target,
                        "run_id": run_id,
                        "element": element,
                        "source_table": attempt.source_table,
                        "unit_key": attempt.unit_key,
                        "bundle_number": attempt.bundle_number,
                        "entry_number": attempt.entry_number,
                        "http_status": attempt.http_status,
                        "location": attempt.location,
                        "outcome": outcome_text(attempt.outcome),
                        "content_hash": attempt.content_hash,
                        "attempted_at": now,
                    }
                    for attempt in results
                ],
            )
            for ok in (True, False, None):
                settled = [
                    {
                        "k_table": attempt.source_table,
                        "k_unit": attempt.unit_key,
                        "disposition": {True: "successful", False: "rejected", None: "pending"}[ok],
                        "rule": "server_rejected" if ok is False else None,
                        "reason": reason,
                        "last_run_id": run_id,
                        "updated_at": now,
                        **({"content_hash": attempt.content_hash, "resource_id": rid, "version_id": vid} if ok else {}),
                    }
                    for attempt, success, rid, vid, reason in zip(
                        results, successful, resource_ids, version_ids, reasons, strict=True
                    )
                    if success is ok
                ]
                if settled:
                    # A rejection or a pending unit keeps the hash, id and version of the unit's last
                    # success.
                    _executemany(
                        db,
                        sa.update(units)
                        .where(*self._each_unit(element))
                        .values({name: sa.bindparam(name) for name in settled[0] if not name.startswith("k_")}),
                        settled,
                    )

    def mark_for_resend(self, element: str, lost: pl.DataFrame) -> None:
        """Units recorded as successful whose resource the target does not hold as written (`lost`:
        source_table, unit_key, reason): back to `pending` with their reason and content hash cleared,
        so that the load sends them again instead of skipping them as unchanged."""
        if lost.is_empty():
            return
        now = _now()
        with self.engine.begin() as db:
            db.execute(
                sa.update(units)
                .where(*self._each_unit(element), units.c.disposition == "successful")
                .values(disposition="pending", content_hash=None, reason=sa.bindparam("why"), updated_at=now),
                [
                    {"k_table": table, "k_unit": key, "why": reason}
                    for table, key, reason in lost.select("source_table", "unit_key", "reason").iter_rows()
                ],
            )

    def history(self, element: str | None, unit_key: str) -> dict[str, Any]:
        """Everything the ledger knows of one source key, in every target's books: its unit rows and
        every attempt, each naming its target."""
        with self.engine.connect() as db:
            unit_filter = [units.c.unit_key == unit_key] + ([units.c.element == element] if element else [])
            attempt_filter = [attempts.c.unit_key == unit_key] + ([attempts.c.element == element] if element else [])
            found_units = [dict(r._mapping) for r in db.execute(sa.select(units).where(*unit_filter))]
            found_attempts = [
                dict(r._mapping)
                for r in db.execute(sa.select(attempts).where(*attempt_filter).order_by(attempts.c.attempt_id))
            ]
            # The load runs that registered or sent them (the idempotency check's resubmissions,
            # `<run>-reload`, have no run row of their own).
            touched = {
                (row["target"], row.get("last_run_id") or row.get("run_id")) for row in (*found_units, *found_attempts)
            }
            found_runs = (
                [
                    dict(r._mapping)
                    for r in db.execute(
                        sa.select(runs)
                        .where(sa.tuple_(runs.c.target, runs.c.run_id).in_(list(touched)))
                        .order_by(runs.c.started_at)
                    )
                ]
                if touched
                else []
            )
        return {"units": found_units, "attempts": found_attempts, "runs": found_runs}

    def load_runs(self, element: str, dagster_run_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The ledger runs of `element` that these Dagster runs recorded, oldest first: each unsharded run
        itself, and each shard step of a sharded one (`<run id>.<i>of<n>`, sharded.ledger_run_id)."""
        ids = list(dagster_run_ids)
        if not ids:
            return []
        query = (
            sa.select(runs)
            .where(
                runs.c.target == self.target,
                runs.c.element == element,
                sa.or_(runs.c.run_id.in_(ids), *(runs.c.run_id.like(f"{run_id}.%") for run_id in ids)),
            )
            .order_by(runs.c.started_at)
        )
        with self.engine.connect() as db:
            return [dict(row._mapping) for row in db.execute(query)]

    def attempt_counts(self, run_ids: Sequence[str], element: str) -> dict[str, int]:
        """Attempts of these ledger runs (a sharded load's shard steps), and how many units needed more
        than one."""
        with self.engine.connect() as db:
            per_unit = (
                sa.select(attempts.c.source_table, attempts.c.unit_key, sa.func.count().label("n"))
                .where(
                    attempts.c.target == self.target,
                    attempts.c.run_id.in_(list(run_ids)),
                    attempts.c.element == element,
                )
                .group_by(attempts.c.source_table, attempts.c.unit_key)
                .subquery()
            )
            total, retried = db.execute(
                sa.select(sa.func.coalesce(sa.func.sum(per_unit.c.n), 0), sa.func.count().filter(per_unit.c.n > 1))
            ).one()
        return {"attempts": int(total), "units_retried": int(retried)}

    # -- the idempotency check's verified content -------------------------------------------------

    def verified_run(self, element: str, shard: str, fingerprint: str) -> str | None:
        """The run whose resubmission verified exactly this content of `element` (`shard`: its label),
        when the check's latest verdict there passed; None otherwise."""
        with self.engine.connect() as db:
            found = db.execute(
                sa.select(verified_content.c.run_id).where(
                    *self._verified(element, shard), verified_content.c.fingerprint == fingerprint
                )
            ).scalar()
        return str(found) if found is not None else None

    def record_verified(self, element: str, shard: str, fingerprint: str | None, run_id: str) -> None:
        """The check's latest verdict: `fingerprint` verified by `run_id`, or None: nothing is."""
        with self.engine.begin() as db:
            db.execute(sa.delete(verified_content).where(*self._verified(element, shard)))
            if fingerprint is not None:
                db.execute(
                    sa.insert(verified_content).values(
                        target=self.target,
                        element=element,
                        shard=shard,
                        fingerprint=fingerprint,
                        run_id=run_id,
                        verified_at=_now(),
                    )
                )

    # -- scoping ----------------------------------------------------------------------------------

    def _run(self, run_id: str, element: str) -> tuple[Any, ...]:
        return runs.c.target == self.target, runs.c.run_id == run_id, runs.c.element == element

    def _verified(self, element: str, shard: str) -> tuple[Any, ...]:
        return (
            verified_content.c.target == self.target,
            verified_content.c.element == element,
            verified_content.c.shard == shard,
        )

    def _each_unit(self, element: str) -> tuple[Any, ...]:
        """The unit of `element` named by each parameter set's `k_table` and `k_unit` (executemany)."""
        return (
            units.c.target == self.target,
            units.c.element == element,
            units.c.source_table == sa.bindparam("k_table"),
            units.c.unit_key == sa.bindparam("k_unit"),
        )

    def _upsert(self, records: Iterable[dict[str, Any]], update: Sequence[str]) -> None:
        """Insert units, or update the given columns of the ones already there."""
        batch = list(records)
        if not batch:
            return
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        with self.engine.begin() as db:
            statement = insert(units)
            statement = statement.on_conflict_do_update(
                index_elements=list(_UNIT_KEY), set_={column: statement.excluded[column] for column in update}
            )
            _executemany(db, statement, batch)


class _OutcomeTexts:
    """OperationOutcomes as JSON text, each distinct one encoded once: a batch's successes repeat the
    same two or three ("Created", "All OK") and encoding them was a fifth of recording an outcome."""

    def __init__(self) -> None:
        self.known: dict[Any, tuple[Mapping[str, Any], str]] = {}

    def __call__(self, outcome: Mapping[str, Any] | None) -> str | None:
        if not outcome:
            return None
        key = outcome.get("id")
        if key in self.known and self.known[key][0] == outcome:
            return self.known[key][1]
        text = json.dumps(outcome)
        self.known[key] = (outcome, text)
        return text


def _executemany(db: sa.Connection, statement: sa.Insert | sa.Update, rows: list[dict[str, Any]]) -> None:
    """`statement` once per row of `rows`. On SQLite the rows go straight to the driver's executemany:
    SQLAlchemy's per-row parameter handling cost twice SQLite's own work, and the loader records every
    outcome on its main thread. Elsewhere SQLAlchemy's batched executemany."""
    if not rows:
        return
    if db.dialect.name != "sqlite":
        db.execute(statement, rows)
        return
    compiled = statement.compile(dialect=db.dialect)
    names = compiled.positiontup or []
    # What SQLAlchemy would do to a value on its way in (only timestamps need it here).
    processors = {
        name: processor
        for name in names
        if (processor := compiled.binds[name].type.dialect_impl(db.dialect).bind_processor(db.dialect))
    }
    fixed = compiled.params  # values bound in the statement itself (the element's name)
    stored: dict[Any, Any] = {}  # a run's rows share their timestamps: converted once each

    def converted(name: str, raw: Any) -> Any:
        if raw is not None and raw not in stored:
            stored[raw] = processors[name](raw)
        return None if raw is None else stored[raw]

    # Column by column (the rows all have the same keys): a tuple built per row and name cost more
    # than SQLite's own work.
    columns = []
    for name in names:
        values = [row[name] for row in rows] if name in rows[0] else [fixed[name]] * len(rows)
        columns.append([converted(name, raw) for raw in values] if name in processors else values)
    db.exec_driver_sql(compiled.string, list(zip(*columns, strict=True)))


def _driver_rows(db: sa.Connection, statement: sa.Select[Any]) -> Callable[[int], Sequence[Any]]:
    """`fetchmany` of `statement` run by the SQLite driver itself: SQLAlchemy's rows cost more than
    SQLite's own reading, and the checks read the ledger several times a run."""
    compiled = statement.compile(dialect=db.dialect)
    parameters = tuple(compiled.params[name] for name in compiled.positiontup or [])
    return db.exec_driver_sql(compiled.string, parameters).cursor.fetchmany


# How SQLAlchemy writes a DateTime into SQLite (and _executemany too).
SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S%.f"


def _now() -> datetime:
    return datetime.now(UTC)


def _add_missing_columns(engine: sa.Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for the (nullable) columns this version added to existing tables."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as db:
                    db.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _polars_type(column: sa.Column[Any]) -> pl.DataType:
    if isinstance(column.type, sa.Integer):
        return pl.Int64()
    if isinstance(column.type, sa.DateTime):
        return pl.Datetime(time_zone="UTC")
    return pl.String()


def keep_books_per_target(engine: sa.Engine, tables: sa.MetaData) -> None:
    """Tables of `tables` written before the books were kept per target (no `target` column): rebuilt
    with one, their rows kept under the unnamed target "". A run against a named target does not read
    them: its first load sends everything once more, as conditional writes that create nothing twice."""
    inspector = sa.inspect(engine)
    for table in tables.sorted_tables:
        if not inspector.has_table(table.name) or "target" in {c["name"] for c in inspector.get_columns(table.name)}:
            continue
        old_columns = [column["name"] for column in inspector.get_columns(table.name)]
        aside = f"{table.name}_before_targets"
        with engine.begin() as db:
            for index in inspector.get_indexes(table.name):
                db.execute(sa.text(f'DROP INDEX "{index["name"]}"'))
            db.execute(sa.text(f"ALTER TABLE {table.name} RENAME TO {aside}"))
            table.create(db)
            kept = [name for name in old_columns if name in table.c]
            names = ", ".join(f'"{name}"' for name in kept)
            db.execute(sa.text(f"INSERT INTO {table.name} (target, {names}) SELECT '', {names} FROM {aside}"))
            db.execute(sa.text(f"DROP TABLE {aside}"))
