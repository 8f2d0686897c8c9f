"""A simulated old application: it keeps writing to the legacy database (SQLite or PostgreSQL) while
the migration runs, as the clinic's EHR does until its data elements are cut over.

It adds patients and problem-list entries, renames patients and changes onset dates, each write
stamped with a fresh `updated_at` (UPDATED_AT_FORMAT, strictly increasing). It can also make a write
that does *not* touch `updated_at` (`silent_update`): the kind of bug in an old service's dual write
that only the dual-write reconciliation check catches.

What it did is returned as (table, key, kind) triples: identifiers only, never the values.
`RunningApp` runs it in its own process while a test or the demo migrates.

CLI (the demo):
``python -m migration_assets.profiles.seed_ehr.legacy_app --url sqlite:///.demo/legacy_ehr.db --seconds 60``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from migration_assets.profiles.seed_ehr.sample_data import (
    _LAST,
    CONDITION_CATALOGUE,
    TABLE_PRIMARY_KEYS,
    TABLES,
    UPDATED_AT,
    UPDATED_AT_FORMAT,
)
from migration_assets.source import parse_source_url, redact_url

# Stamp given to existing rows when the column is first added (older than anything the app writes).
BASELINE_STAMP = "2000-01-01T00:00:00.000000Z"
_FIRST_NAMES = ("Ada", "Ben", "Chloé", "Dev", "Elif", "Femi", "Goran", "Hana", "Ilse", "Jonas", "Keiko", "Luis")


@dataclass(frozen=True)
class Change:
    table: str
    key: str
    kind: str  # insert, update, silent_update, touch


def legacy_engine(url: str) -> sa.Engine:
    """A writable engine on the legacy database (the platform itself only ever reads it)."""
    kind, location = parse_source_url(url)
    if kind == "sqlite":
        # No pooled connection keeps the file open between writes.
        return sa.create_engine(f"sqlite:///{location}", connect_args={"timeout": 30}, poolclass=sa.NullPool)
    if kind == "postgresql":
        return sa.create_engine("postgresql+psycopg2://" + location.split("://", 1)[1])
    raise ValueError(f"the simulated application writes to SQL databases only, not {redact_url(url)}")


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime(UPDATED_AT_FORMAT)


class LegacyApp:
    """The old application's writes. Thread-safe: one lock around each write."""

    def __init__(self, url: str, seed: int = 0, clock: Callable[[], str] = now_stamp) -> None:
        self.url = url
        self.engine = legacy_engine(url)
        self.random = random.Random(seed)
        self.seed = seed
        self._clock = clock
        self._last_stamp = ""
        self._lock = threading.Lock()
        self.changes: list[Change] = []
        self.ensure_updated_at()
        self._counter = self._count_own_rows()

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------

    def ensure_updated_at(self) -> list[str]:
        """Add the `updated_at` column to every legacy table that lacks it (existing rows get
        BASELINE_STAMP), as an application starts tracking changes for the sync. Returns the tables
        that got the column. (No WAL journal for SQLite: the readers' ADBC driver bundles another
        SQLite version, and the two corrupt each other's view of a shared WAL index.)"""
        added = []
        with self.engine.begin() as db:
            inspector = sa.inspect(db)
            for table in TABLES:
                if not inspector.has_table(table):
                    continue
                if UPDATED_AT not in {c["name"] for c in inspector.get_columns(table)}:
                    db.exec_driver_sql(f'ALTER TABLE "{table}" ADD COLUMN "{UPDATED_AT}" TEXT')
                    db.execute(sa.text(f'UPDATE "{table}" SET "{UPDATED_AT}" = :s'), {"s": BASELINE_STAMP})
                    added.append(table)
        return added

    def _count_own_rows(self) -> int:
        with self.engine.connect() as db:
            return int(
                db.execute(
                    sa.text("SELECT COUNT(*) FROM patients WHERE patient_id LIKE :p"), {"p": f"{self._prefix()}%"}
                ).scalar_one()
            )

    def _prefix(self) -> str:
        return f"PAPP{self.seed:02d}-"

    # -- writes ---------------------------------------------------------------------------------

    def stamp(self) -> str:
        """A fresh updated_at, strictly after the previous one of this application."""
        value = self._clock()
        if value <= self._last_stamp:
            last = dt.datetime.strptime(self._last_stamp, UPDATED_AT_FORMAT).replace(tzinfo=dt.UTC)
            value = (last + dt.timedelta(microseconds=1)).strftime(UPDATED_AT_FORMAT)
        self._last_stamp = value
        return value

    def new_patient(self) -> str:
        with self._lock:
            self._counter += 1
            key = f"{self._prefix()}{self._counter:05d}"
            birth = dt.date(1940, 1, 1) + dt.timedelta(days=self.random.randrange(0, 29000))
            self._insert(
                "patients",
                {
                    "patient_id": key,
                    "first_name": self.random.choice(_FIRST_NAMES),
                    "last_name": self.random.choice(_LAST),
                    "birth_date": birth.isoformat(),
                    "gender": self.random.choice("MF"),
                },
                key,
            )
            return key

    def rename_patient(self, key: str | None = None) -> str:
        """A new last name (marriage, a typo fixed at the front desk)."""
        with self._lock:
            key = key or self._random_key("patients")
            name = self.random.choice(_LAST) + "-" + self.random.choice(_LAST)
            self._update("patients", key, {"last_name": name}, touch=True)
            return key

    def new_condition(self, patient_id: str | None = None) -> str:
        with self._lock:
            patient_id = patient_id or self._random_key("patients")
            key = f"PCAPP{self.seed:02d}-{len(self.changes) + 1:06d}-{self.random.randrange(10**6):06d}"
            onset = dt.date(2015, 1, 1) + dt.timedelta(days=self.random.randrange(0, 3800))
            self._insert(
                "patient_conditions",
                {
                    "patient_condition_id": key,
                    "patient_id": patient_id,
                    "condition_id": self.random.choice(CONDITION_CATALOGUE)[0],
                    "onset_date": onset.isoformat(),
                },
                key,
            )
            return key

    def change_onset(self, key: str | None = None) -> str:
        with self._lock:
            key = key or self._random_key("patient_conditions")
            onset = dt.date(2015, 1, 1) + dt.timedelta(days=self.random.randrange(0, 3800))
            self._update("patient_conditions", key, {"onset_date": onset.isoformat()}, touch=True)
            return key

    def silent_update(self, table: str, key: str, values: dict[str, Any]) -> None:
        """Change a row without touching updated_at: a write the sync cannot see."""
        with self._lock:
            self._update(table, key, values, touch=False)

    def touch(self, table: str, key: str) -> None:
        """Save a row again unchanged: a fresh updated_at (how a silent change gets repaired)."""
        with self._lock:
            self._update(table, key, {}, touch=True)

    def step(self) -> Change:
        """One write, of a random kind, as the clinic's day goes."""
        action = self.random.choices(
            (self.new_patient, self.rename_patient, self.new_condition, self.change_onset), weights=(3, 4, 2, 1)
        )[0]
        action()
        return self.changes[-1]

    def run(self, stop: threading.Event, interval: float = 0.02, limit: int | None = None) -> list[Change]:
        """Write until `stop` is set (or `limit` writes), one every `interval` seconds."""
        done: list[Change] = []
        while not stop.is_set() and (limit is None or len(done) < limit):
            done.append(self.step())
            stop.wait(interval)
        return done

    # -- SQL ------------------------------------------------------------------------------------

    def _insert(self, table: str, values: dict[str, Any], key: str) -> None:
        row = {**values, UPDATED_AT: self.stamp()}
        names = ", ".join(f'"{c}"' for c in row)
        params = ", ".join(f":{c}" for c in row)
        with self.engine.begin() as db:
            db.execute(sa.text(f'INSERT INTO "{table}" ({names}) VALUES ({params})'), row)
        self.changes.append(Change(table, key, "insert"))

    def _update(self, table: str, key: str, values: dict[str, Any], touch: bool) -> None:
        row = {**values, **({UPDATED_AT: self.stamp()} if touch else {})}
        if not row:
            return
        sets = ", ".join(f'"{c}" = :{c}' for c in row)
        pk = TABLE_PRIMARY_KEYS[table]
        with self.engine.begin() as db:
            updated = db.execute(sa.text(f'UPDATE "{table}" SET {sets} WHERE "{pk}" = :_key'), {**row, "_key": key})
        if updated.rowcount != 1:
            raise KeyError(f"{table} has no row {key!r}")
        kind = "silent_update" if not touch else ("update" if values else "touch")
        self.changes.append(Change(table, key, kind))

    def _random_key(self, table: str) -> str:
        pk = TABLE_PRIMARY_KEYS[table]
        with self.engine.connect() as db:
            count = int(db.execute(sa.text(f'SELECT COUNT(*) FROM "{table}"')).scalar_one())
            return str(
                db.execute(
                    sa.text(f'SELECT "{pk}" FROM "{table}" ORDER BY "{pk}" LIMIT 1 OFFSET :n'),
                    {"n": self.random.randrange(count)},
                ).scalar_one()
            )


class RunningApp:
    """The simulated application running in its own process (as the real one does: the platform's
    readers and this writer must not share a process, since SQLite's POSIX locks are per process and
    the ADBC driver brings a second SQLite library into it)."""

    def __init__(self, url: str, seed: int = 0, interval: float = 0.02, seconds: float = 3600.0) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "migration_assets.profiles.seed_ehr.legacy_app",
                "--url",
                url,
                "--seed",
                str(seed),
                "--interval",
                str(interval),
                "--seconds",
                str(seconds),
                "--jsonl",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        # The first line says the application is up (columns added): wait for it.
        ready = self.process.stdout.readline()
        if not ready.startswith('{"ready"'):
            self.process.kill()
            raise RuntimeError(
                f"simulated application did not start: {ready}"
                + (self.process.stderr.read() if self.process.stderr else "")
            )

    def stop(self, timeout: float = 30.0) -> list[Change]:
        """Ask it to stop (SIGTERM ends its loop after the current write) and return what it wrote."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0:
            raise RuntimeError(f"simulated application failed ({self.process.returncode}): {err[-2000:]}")
        return [Change(**json.loads(line)) for line in out.splitlines() if line.startswith('{"table"')]

    def wait(self, timeout: float = 60.0) -> list[Change]:
        self.process.wait(timeout=timeout)
        return self.stop(timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulate the old application writing to the legacy database.")
    parser.add_argument("--url", required=True, help="sqlite:///legacy.db | postgresql://user@host:port/db")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", action="store_true", help="print each write as a JSON line (table, key, kind)")
    args = parser.parse_args(argv)
    app = LegacyApp(args.url, seed=args.seed)
    stop = threading.Event()
    # Set from a thread of its own: the handler runs on the main thread, which may be holding the event's
    # lock inside stop.wait() at that instant, and Event.set() would then wait for it forever.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop.set).start())
    timer = threading.Timer(args.seconds, stop.set)
    timer.start()
    if args.jsonl:
        print(json.dumps({"ready": True}), flush=True)
    done = 0
    try:
        while not stop.is_set():
            change = app.step()
            done += 1
            if args.jsonl:
                print(json.dumps(asdict(change)), flush=True)
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
        app.close()
    kinds: dict[str, int] = {}
    for change in app.changes:
        kinds[f"{change.table}/{change.kind}"] = kinds.get(f"{change.table}/{change.kind}", 0) + 1
    print(f"wrote to {redact_url(args.url)}: {kinds}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
