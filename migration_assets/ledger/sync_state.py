"""The sync's own books, in the manifest's database beside its tables and per target as they are: per
element and source table the watermark (the largest `updated_at` of the last successful sync), and a log
of sync runs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from migration_assets.ledger.manifest import Manifest, keep_books_per_target
from migration_assets.phases import ElementPhase

adoption_metadata = sa.MetaData()

watermarks = sa.Table(
    "adoption_sync_watermarks",
    adoption_metadata,
    sa.Column("target", sa.String(512), primary_key=True),
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
    sa.Column("target", sa.String(512), primary_key=True),
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
    """Watermarks and the sync log of the manifest's target, in its database (created beside its tables)."""

    def __init__(self, manifest: Manifest) -> None:
        self.engine = manifest.engine
        self.target = manifest.target
        keep_books_per_target(self.engine, adoption_metadata)
        adoption_metadata.create_all(self.engine)

    def watermarks(self, element: str) -> dict[str, str | None]:
        with self.engine.connect() as db:
            rows = db.execute(
                sa.select(watermarks.c.source_table, watermarks.c.watermark).where(
                    watermarks.c.target == self.target, watermarks.c.element == element
                )
            ).all()
        return {table: mark for table, mark in rows}

    def advance(self, element: str, run_id: str, marks: Mapping[str, str | None]) -> None:
        now = _now()
        with self.engine.begin() as db:
            db.execute(
                sa.delete(watermarks).where(
                    watermarks.c.target == self.target,
                    watermarks.c.element == element,
                    watermarks.c.source_table.in_(list(marks)),
                )
            )
            db.execute(
                sa.insert(watermarks),
                [
                    {
                        "target": self.target,
                        "element": element,
                        "source_table": table,
                        "watermark": mark,
                        "run_id": run_id,
                        "synced_at": now,
                    }
                    for table, mark in marks.items()
                ],
            )

    def start(self, run_id: str, element: str, phase: ElementPhase, phases_version: str) -> None:
        with self.engine.begin() as db:
            db.execute(sa.delete(sync_log).where(*self._sync(run_id, element)))
            db.execute(
                sa.insert(sync_log).values(
                    target=self.target,
                    run_id=run_id,
                    element=element,
                    started_at=_now(),
                    status="running",
                    phase=phase.phase,
                    phases_version=phases_version,
                )
            )

    def finish(self, run_id: str, element: str, status: str, candidates: int | None, counts: Mapping[str, int]) -> None:
        with self.engine.begin() as db:
            db.execute(
                sa.update(sync_log)
                .where(*self._sync(run_id, element))
                .values(finished_at=_now(), status=status, candidates=candidates, counts=json.dumps(dict(counts)))
            )

    def last_syncs(self) -> dict[str, dict[str, Any]]:
        """Per element: its last finished sync (or verification) and the oldest watermark of its tables."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as db:
            for row in db.execute(
                sa.select(sync_log)
                .where(sync_log.c.target == self.target, sync_log.c.status.in_(["finished", "verified"]))
                .order_by(sync_log.c.finished_at)
            ):
                out[row.element] = {
                    "last_sync_at": row.finished_at,
                    "last_sync_run": row.run_id,
                    "last_sync_status": row.status,
                }
            for row in db.execute(
                sa.select(watermarks.c.element, sa.func.min(watermarks.c.watermark).label("mark"))
                .where(watermarks.c.target == self.target)
                .group_by(watermarks.c.element)
            ):
                out.setdefault(row.element, {})["watermark"] = row.mark
        return out

    def _sync(self, run_id: str, element: str) -> tuple[Any, ...]:
        return sync_log.c.target == self.target, sync_log.c.run_id == run_id, sync_log.c.element == element


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
