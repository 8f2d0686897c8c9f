"""The cutover report: one self-contained HTML page for the people who sign off a cutover.

Per data element: the books (source units = successful + quarantined + rejected + skipped + pending),
the checks of its latest run with their one-line verdicts, the quarantine by rule, the throughput of
its latest load over time (an inline SVG), and links to its evidence files. Written by `make report`
and by the `cutover_report` asset, from what the runs left: the ledger (per target), the Dagster
instance's check evaluations and the evidence folder. It reads Medplum not at all."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from dagster import (
    AssetCheckEvaluation,
    AssetExecutionContext,
    DagsterEventType,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    RunsFilter,
    asset,
)
from jinja2 import Environment, PackageLoader, select_autoescape

from migration_assets.active import LOAD_ORDER
from migration_assets.ledger.manifest import Manifest, attempts, runs
from migration_assets.medplum import Target
from migration_assets.paths import state_dir
from migration_assets.pipeline.partitions import PARTITION_TAG
from migration_assets.pipeline.resources import ManifestStore, MigrationSettings

DISPOSITIONS = ("successful", "quarantined", "rejected", "skipped", "pending")


@dataclass
class CheckVerdict:
    name: str
    passed: bool
    verdict: str  # the first line of what the check said


@dataclass
class ElementReport:
    element: str
    books: dict[str, int]
    run_id: str | None = None
    run_status: str = "never run"
    checks: list[CheckVerdict] = field(default_factory=list)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    throughput: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, writes a second)
    evidence: list[Path] = field(default_factory=list)

    @property
    def source_units(self) -> int:
        return sum(self.books.values())

    @property
    def balanced(self) -> bool:
        return self.books.get("pending", 0) == 0

    @property
    def ok(self) -> bool:
        return self.run_status == "SUCCESS" and self.balanced and all(check.passed for check in self.checks)

    @property
    def throughput_svg(self) -> str:
        return throughput_svg(self.throughput)


def latest_target(manifest_url: str) -> str | None:
    """The target of the ledger's most recent run: whom `make report` reports on by default."""
    with Manifest(manifest_url) as ledger, ledger.engine.connect() as db:
        return db.execute(sa.select(runs.c.target).order_by(runs.c.started_at.desc()).limit(1)).scalar()


def gather(
    instance: DagsterInstance, manifest_url: str, target: str, evidence_dir: Path, elements: list[str] | None = None
) -> list[ElementReport]:
    reports = []
    with Manifest(manifest_url, target) as ledger:
        for element in elements or LOAD_ORDER:
            units = ledger.units(element, ["disposition", "rule", "reason"])
            counted = dict(units.group_by("disposition").len().iter_rows())
            report = ElementReport(element, {name: int(counted.get(name, 0)) for name in DISPOSITIONS})
            report.quarantine = (
                units.filter(pl.col("disposition") == "quarantined")
                .group_by("rule")
                .agg(units=pl.len(), reason=pl.col("reason").first())
                .sort("units", descending=True)
                .to_dicts()
            )
            report.throughput = _throughput(ledger, element)
            _add_checks(report, instance)
            report.evidence = sorted((evidence_dir / element).glob("*.*")) if (evidence_dir / element).is_dir() else []
            reports.append(report)
    return reports


def _add_checks(report: ElementReport, instance: DagsterInstance) -> None:
    """The check evaluations of the element's latest Dagster run."""
    latest = instance.get_runs(RunsFilter(tags={PARTITION_TAG: report.element}), limit=1)
    if not latest:
        return
    run = latest[0]
    report.run_id, report.run_status = run.run_id, run.status.value
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if not isinstance(evaluation, AssetCheckEvaluation):
            continue
        said = (evaluation.description or "").strip().splitlines()
        report.checks.append(CheckVerdict(evaluation.check_name, evaluation.passed, said[0] if said else ""))


def _throughput(ledger: Manifest, element: str) -> list[tuple[float, int]]:
    """Writes answered per second over the element's latest run that wrote anything (its attempts' times)."""
    where = (attempts.c.target == ledger.target, attempts.c.element == element)
    with ledger.engine.connect() as db:
        run_id = db.execute(
            sa.select(attempts.c.run_id).where(*where).order_by(attempts.c.attempt_id.desc()).limit(1)
        ).scalar()
        if run_id is None:
            return []
        times = (
            db.execute(sa.select(attempts.c.attempted_at).where(*where, attempts.c.run_id == run_id)).scalars().all()
        )
    stamps = sorted(_seconds(value) for value in times)
    start, span = stamps[0], stamps[-1] - stamps[0]
    # About sixty points whatever the load's length, each a rate per second (a tenth of a second at least).
    step = max(0.1, span / 60)
    buckets = [0] * (int(span / step) + 1)
    for stamp in stamps:
        buckets[int((stamp - start) / step)] += 1
    return [(number * step, round(count / step)) for number, count in enumerate(buckets)]


def _seconds(value: datetime | str) -> float:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def throughput_svg(points: list[tuple[float, int]], width: int = 440, height: int = 120) -> str:
    """Writes per second over the load as a small inline SVG bar chart (no image file, no plot library).
    The times are when the outcomes were stored, at most a second after their answers."""
    if not points:
        return '<p class="muted">no load recorded</p>'
    top = max(count for _, count in points) or 1
    span = points[-1][0] + (points[1][0] if len(points) > 1 else 0.1)
    left, bottom, right = 60, height - 20, width - 10
    bar = (right - left) / len(points)
    bars = "".join(
        f'<rect x="{left + number * bar:.1f}" y="{bottom - (count / top) * (bottom - 10):.1f}" '
        f'width="{max(bar - 1, 1):.1f}" height="{(count / top) * (bottom - 10):.1f}" fill="#2563eb"/>'
        for number, (_, count) in enumerate(points)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="writes per second over {span:.1f} s">{bars}'
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>'
        f'<line x1="{left}" y1="10" x2="{left}" y2="{bottom}" stroke="#999"/>'
        f'<text x="{left - 4}" y="14" text-anchor="end" font-size="10">{top:,}/s</text>'
        f'<text x="{left - 4}" y="{bottom}" text-anchor="end" font-size="10">0</text>'
        f'<text x="{right}" y="{height - 4}" text-anchor="end" font-size="10">{span:.1f} s</text></svg>'
    )


def render(reports: list[ElementReport], target: str, generated_at: datetime) -> str:
    environment = Environment(
        loader=PackageLoader("migration_assets.pipeline", "templates"), autoescape=select_autoescape(["html"])
    )
    return environment.get_template("cutover_report.html").render(
        reports=reports,
        target=str(Target.from_key(target)),
        generated_at=generated_at.isoformat(timespec="seconds"),
        dispositions=DISPOSITIONS,
        all_ok=all(report.ok for report in reports),
        evidence_href=lambda path: Path(path).resolve().as_uri(),
    )


def write_report(
    instance: DagsterInstance,
    manifest_url: str,
    evidence_dir: Path,
    target: str | None = None,
    directory: Path | None = None,
) -> Path:
    """Renders the report of `target` (default: the ledger's latest) into `directory` (default:
    .demo/reports beside the evidence) as cutover-<UTC time>.html, and returns its path."""
    target = target or latest_target(manifest_url)
    if target is None:
        raise SystemExit("the ledger holds no run yet: run `make demo` (or materialize an element) first")
    now = datetime.now(UTC)
    page = render(gather(instance, manifest_url, target, evidence_dir), target, now)
    directory = directory or state_dir(evidence_dir, "reports")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"cutover-{now:%Y%m%dT%H%M%SZ}.html"
    path.write_text(page)
    return path


@asset(
    group_name="reporting",
    kinds={"html"},
    owners=["team:migration"],
    description="The cutover report: one HTML page per data element's books, check verdicts, quarantine by rule, "
    "throughput over time and evidence links, for the people who sign off a cutover.\n\n"
    "Of the target of the ledger's latest run; written beside the evidence folder (reports/).",
)
def cutover_report(
    context: AssetExecutionContext, manifest: ManifestStore, migration_settings: MigrationSettings
) -> MaterializeResult:
    path = write_report(context.instance, manifest.url, Path(migration_settings.evidence_dir))
    return MaterializeResult(
        metadata={
            "report": MetadataValue.path(str(path)),
            "target": str(Target.from_key(latest_target(manifest.url) or "")),
        }
    )
