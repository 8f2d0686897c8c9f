"""Read readiness: whether reads of an element can move to Medplum, as a document the feature flag reads."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.adoption.dual_write import DualWriteReport, compare_stores
from migration_assets.elements.base import DataElement
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient
from migration_assets.phases import ElementPhase
from migration_assets.verify.reconcile import reference_problems


def assess_readiness(
    client: MedplumClient,
    ledger: Manifest,
    element: DataElement,
    frame: pl.DataFrame,
    phase: ElementPhase,
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
    pending = int(
        (
            frame.select("source_table", "unit_key").join(units, on=["source_table", "unit_key"], how="inner")[
                "disposition"
            ]
            == "pending"
        ).sum()
    )
    counts = report.counts
    criteria = {
        "missing_in_medplum": counts["missing_in_medplum"],
        "missing_in_legacy": counts["missing_in_legacy"],
        "duplicated_in_medplum": counts["duplicated_in_medplum"],
        "stale_in_medplum": counts["stale_in_medplum"],
        "units_with_differing_fields": report.discrepancies.filter(pl.col("kind") == "differs")
        .select("resource_type", "identifier_value")
        .n_unique(),
        "reference_problems": problems.height,
        "units_pending": pending,
    }
    ready = all(value == 0 for value in criteria.values())
    reasons = [f"{value} {name.replace('_', ' ')}" for name, value in criteria.items() if value]
    behaviour = phase.behaviour
    reads_from = {"legacy": "legacy", "medplum": "medplum"}.get(behaviour.reads_from, "medplum" if ready else "legacy")
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
        "criteria": {
            **criteria,
            "units_compared": report.compared,
            "references_checked": checked,
            "quarantined_not_expected": report.quarantined,
        },
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
