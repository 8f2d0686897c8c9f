"""Prerequisites: the resources of earlier elements that an element's rows reference, which of them are
missing in Medplum, and why (the ledger's quarantine or rejection)."""

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from migration_assets.active import PROFILE, get_element, prerequisites
from migration_assets.elements.base import quarantine
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient, Target
from migration_assets.paths import state_dir
from migration_assets.verify.census import exclusive_lock, existing_identifiers

# A referenced resource, as the frames' references and the ledger name it.
_TARGET = ["resource_type", "identifier_system", "identifier_value"]
LOADED_ID_SCHEMA = pl.Schema(
    {
        "resource_type": pl.String,
        "identifier_system": pl.String,
        "identifier_value": pl.String,
        "resource_id": pl.String,
    }
)


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
    def missing(self) -> int:
        """Targets not in Medplum (one blamed on two elements that create its type counts once)."""
        return self.unexplained.unique(_TARGET).height

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
    targets = (
        frame.filter(pl.col("quarantine_rule").is_null())
        .select(pl.col("references").explode())
        .unnest("references")
        .drop_nulls("resource_type")
        .filter(~pl.col("resource_type").is_in(list(own_types)))
        .select(_TARGET)
        .unique()
    )
    # Only the columns used: a million units with every column weigh about half a gigabyte.
    columns = ("resource_type", "identifier_system", "identifier_value", "disposition", "rule", "reason", "resource_id")
    ledger = pl.concat(
        [manifest.units(name, columns).with_columns(element=pl.lit(name)) for name in prerequisites(element_name)]
        or [manifest.units(element_name, columns).clear().with_columns(element=pl.lit(None, pl.String))]
    )
    known = with_producers(targets.join(ledger, on=_TARGET, how="left"), ledger)
    explained = known.filter(pl.col("disposition").is_in(["quarantined", "rejected", "skipped"]))
    not_loaded = known.filter(pl.col("disposition").is_null() | (pl.col("disposition") == "pending"))
    # Not in the ledger as loaded: perhaps written by other means (dual writes), so Medplum decides.
    missing = [not_loaded.clear()]
    for (resource_type, system), group in not_loaded.group_by("resource_type", "identifier_system"):
        values = group["identifier_value"].unique().to_list()
        present = existing_identifiers(client, str(resource_type), str(system), values)
        missing.append(group.filter(~pl.col("identifier_value").is_in(list(present))))
    loaded = known.filter((pl.col("disposition") == "successful") & pl.col("resource_id").is_not_null())
    return PrerequisiteReport(
        checked=targets.height,
        explained=explained.drop("resource_id"),
        unexplained=pl.concat(missing).select(*_TARGET, "element"),
        loaded_ids=loaded.select(list(LOADED_ID_SCHEMA)).cast(LOADED_ID_SCHEMA),
    )


def with_producers(known: pl.DataFrame, ledger: pl.DataFrame) -> pl.DataFrame:
    """Each referenced target with the element that creates it: the one whose ledger holds it; else the one
    whose ledger holds its identifier system; else every element of the profile that creates its type
    (two elements may create one type, visits and visit details both Encounters: then each is named)."""
    producers = pl.DataFrame(
        [(resource_type, element.name) for element in PROFILE.elements for resource_type in element.schemas],
        schema={"resource_type": pl.String, "element": pl.String},
        orient="row",
    )
    systems = ledger.select("resource_type", "identifier_system", "element").unique()
    in_ledger = known.filter(pl.col("element").is_not_null())
    by_system = (
        known.filter(pl.col("element").is_null())
        .drop("element")
        .join(systems, on=["resource_type", "identifier_system"], how="left")
    )
    by_type = (
        by_system.filter(pl.col("element").is_null()).drop("element").join(producers, on="resource_type", how="left")
    )
    return pl.concat([in_ledger, by_system.filter(pl.col("element").is_not_null()), by_type], how="vertical")


def quarantine_unloadable(frame: pl.DataFrame, report: PrerequisiteReport) -> pl.DataFrame:
    """Quarantine the rows that reference a resource the ledger says will not be in Medplum."""
    if report.explained.is_empty():
        return frame
    reasons = report.explained.select(
        "identifier_system",
        "identifier_value",
        why=pl.format(
            "{} {} was not loaded ({})",
            pl.col("resource_type"),
            pl.col("identifier_value"),
            pl.col("rule").fill_null(pl.col("disposition")),
        ),
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


@dataclass(frozen=True)
class RunPrerequisites:
    """The prerequisite report as one Dagster run sees it: made once, by the first step that asks (the
    blocking check, before the load), and read as it was by the load's shard steps and the idempotency
    check, so a run asks the ledger and Medplum once. Kept beside the evidence folder, per target and
    element, for the latest run only."""

    directory: Path
    run_id: str

    @classmethod
    def of_run(cls, evidence_dir: str | Path, run_id: str, target: Target, element_name: str) -> "RunPrerequisites":
        return cls(state_dir(evidence_dir, "prerequisites") / target.slug / element_name, run_id)

    def get(self, make: Callable[[], PrerequisiteReport]) -> PrerequisiteReport:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.directory.with_name(self.directory.name + ".lock")):
            stored = self._read()
            if stored is not None:
                return stored
            report = make()
            self._write(report)
            return report

    def _read(self) -> PrerequisiteReport | None:
        meta = self.directory / "run.json"
        if not meta.exists() or json.loads(meta.read_text())["run_id"] != self.run_id:
            return None
        checked = json.loads(meta.read_text())["checked"]
        frames = {name: pl.read_parquet(self.directory / f"{name}.parquet") for name in _REPORT_FRAMES}
        return PrerequisiteReport(checked=checked, **frames)

    def _write(self, report: PrerequisiteReport) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        for name in _REPORT_FRAMES:
            getattr(report, name).write_parquet(self.directory / f"{name}.parquet")
        # Written last: a step killed while writing leaves no report a later step would take as whole.
        (self.directory / "run.json").write_text(json.dumps({"run_id": self.run_id, "checked": report.checked}))


_REPORT_FRAMES = ("explained", "unexplained", "loaded_ids")
