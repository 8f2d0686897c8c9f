"""Chart review samples (Medplum's testing guidance): patients picked three ways, and for each one an
HTML page with the legacy rows and the Medplum resources side by side, unit by unit.

* repeatable: the first N patients by key (the same on every run);
* random: N patients drawn with a seed, recorded in the index so the draw can be repeated;
* risk-based: patients with identifier conflicts (missing or duplicate keys, orphan references),
  odd values (quarantined rows, local codes without a standard mapping, values dropped), and the
  patients with the most records.

Pages hold patient data: they are written to files for a reviewer (owner-readable only); what goes
to logs and metadata is identifiers and counts.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.active import LOAD_ORDER, PROFILE, get_element
from migration_assets.adoption.dual_write import ATTACHMENT_FIELDS, attachments, compare_stores, found_resources
from migration_assets.adoption.sync import legacy_frame, read_legacy
from migration_assets.elements.base import SourceSystem, check_frame_columns
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient

IDENTIFIER_CONFLICT_RULES = ("missing_key", "duplicate_key", "orphan_reference", "prerequisite_not_loaded")


@dataclass
class Sample:
    kind: str  # repeatable, random, risk
    patients: list[str]
    seed: int | None = None
    reasons: dict[str, list[str]] = field(default_factory=dict)


def patient_units(frames: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per unit that belongs to a patient: element, patient, unit and what makes it risky. An
    element whose `patient_column` is None holds no patient's data and is left out."""
    parts = []
    for element_name, frame in frames.items():
        element = get_element(element_name)
        check_frame_columns(element, frame.columns)
        if element.patient_column is None:
            continue
        odd = pl.col("quarantine_rule").is_not_null() & ~pl.col("quarantine_rule").is_in(IDENTIFIER_CONFLICT_RULES)
        for column, flagged in element.review_flags.items():
            odd = odd | (pl.col(column) == flagged).fill_null(False)
        parts.append(
            frame.select(
                element=pl.lit(element_name),
                patient_id=pl.col(element.patient_column).cast(pl.String),
                source_table="source_table",
                source_key="source_key",
                unit_key="unit_key",
                resource_type="resource_type",
                identifier_value="identifier_value",
                quarantine_rule="quarantine_rule",
                conflict=pl.col("quarantine_rule").is_in(IDENTIFIER_CONFLICT_RULES).fill_null(False),
                odd=odd.fill_null(False),
            )
        )
    return pl.concat(parts).filter(pl.col("patient_id").is_not_null())


def repeatable_sample(units: pl.DataFrame, size: int) -> Sample:
    patients = sorted(units["patient_id"].unique().to_list())[:size]
    return Sample("repeatable", patients, reasons={p: ["first by key"] for p in patients})


def random_sample(units: pl.DataFrame, size: int, seed: int | None = None) -> Sample:
    """`size` patients drawn with `seed` (a fresh one when None; either way it is recorded)."""
    seed = secrets.randbelow(2**31) if seed is None else seed
    patients = sorted(units["patient_id"].unique().to_list())
    picked = sorted(random.Random(seed).sample(patients, min(size, len(patients))))
    return Sample("random", picked, seed=seed, reasons={p: [f"drawn with seed {seed}"] for p in picked})


def risk_sample(units: pl.DataFrame, size: int) -> Sample:
    """Patients in turn from each risk: identifier conflicts, odd values, most records."""
    per_patient = units.group_by("patient_id").agg(
        records=pl.len(),
        conflicts=pl.col("conflict").sum(),
        odd=pl.col("odd").sum(),
        conflict_rules=pl.col("quarantine_rule").filter(pl.col("conflict")).unique().sort(),
        odd_rules=pl.col("quarantine_rule").filter(pl.col("odd")).drop_nulls().unique().sort(),
    )
    rankings = [
        (
            "identifier conflict",
            per_patient.filter(pl.col("conflicts") > 0).sort(["conflicts", "patient_id"], descending=[True, False]),
        ),
        ("odd values", per_patient.filter(pl.col("odd") > 0).sort(["odd", "patient_id"], descending=[True, False])),
        ("most records", per_patient.sort(["records", "patient_id"], descending=[True, False])),
    ]
    reasons: dict[str, list[str]] = {}
    queues = [(label, ranked.iter_rows(named=True)) for label, ranked in rankings]
    while len(reasons) < size and queues:
        for label, rows in list(queues):
            row = next((r for r in rows if r["patient_id"] not in reasons), None)
            if row is None:
                queues.remove((label, rows))
                continue
            detail = {
                "identifier conflict": f"{row['conflicts']} units: {', '.join(row['conflict_rules'])}",
                "odd values": f"{row['odd']} units: "
                + (", ".join(row["odd_rules"]) or "unmapped codes or dropped values"),
                "most records": f"{row['records']} records",
            }[label]
            reasons[row["patient_id"]] = [f"{label} ({detail})"]
            if len(reasons) == size:
                break
    return Sample("risk", sorted(reasons), reasons=reasons)


@dataclass
class ChartReview:
    directory: Path
    index: Path
    samples: list[Sample]
    pages: dict[str, Path]


def build_chart_review(
    client: MedplumClient,
    ledger: Manifest,
    source_url: str,
    system: SourceSystem,
    directory: Path,
    size: int = 5,
    seed: int | None = None,
    elements: Sequence[str] | None = None,
) -> ChartReview:
    """The three samples and a review page per sampled patient, with index.html and index.json."""
    names = [name for name in (elements or LOAD_ORDER)]
    tables: dict[str, pl.DataFrame] = {}
    frames = {}
    for name in names:
        element = get_element(name)
        element_tables = read_legacy(source_url, element)
        tables.update(element_tables)
        frames[name] = legacy_frame(element, element_tables, system, source_url)[1]
    units = patient_units(frames)
    samples = [repeatable_sample(units, size), random_sample(units, size, seed), risk_sample(units, size)]
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pages = {}
    for patient in sorted({p for sample in samples for p in sample.patients}):
        why = {s.kind: s.reasons.get(patient, []) for s in samples if patient in s.patients}
        page = directory / f"patient-{_file_name(patient)}.html"
        page.write_text(_patient_page(client, ledger, patient, why, units, frames, tables))
        pages[patient] = page
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    index_json = directory / "index.json"
    index_json.write_text(
        json.dumps(
            {
                "generated_at": generated,
                "source": "legacy store and Medplum",
                "size": size,
                "samples": [
                    {"kind": s.kind, "seed": s.seed, "patients": s.patients, "reasons": s.reasons} for s in samples
                ],
                "pages": {p: path.name for p, path in pages.items()},
            },
            indent=2,
        )
    )
    index = directory / "index.html"
    index.write_text(_index_page(samples, pages, generated))
    return ChartReview(directory, index, samples, pages)


def _file_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
.unit{display:grid;grid-template-columns:1fr 1fr;gap:1rem;margin:1rem 0;padding:.5rem}
.unit{border:1px solid #ddd;border-radius:6px}
.unit h3{grid-column:1/3;font-size:.95rem;margin:0}
.unit .attachment{grid-column:1/3}
table{border-collapse:collapse;font-size:.85rem}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
pre{background:#f6f8fa;padding:.5rem;font-size:.8rem;white-space:pre-wrap;margin:0}
.ok{color:#1a7f37}.bad{color:#cf222e}.warn{color:#9a6700}
"""


def _patient_page(
    client: MedplumClient,
    ledger: Manifest,
    patient: str,
    why: Mapping[str, list[str]],
    units: pl.DataFrame,
    frames: Mapping[str, pl.DataFrame],
    tables: Mapping[str, pl.DataFrame],
) -> str:
    esc = html.escape
    body = [f"<h1>Chart review: patient {esc(patient)}</h1>", "<ul>"]
    body += [f"<li><b>{esc(kind)} sample</b>: {esc('; '.join(reasons))}</li>" for kind, reasons in why.items()]
    body.append(
        "</ul><p>Left: the legacy rows. Right: the resource in Medplum (by its source identifier). "
        "Differences are compared on the fields the mapping writes.</p>"
    )
    mine = units.filter(pl.col("patient_id") == patient)
    for element in frames:
        keys = mine.filter(pl.col("element") == element)
        if keys.is_empty():
            continue
        frame = frames[element].join(
            keys.select("source_table", "unit_key"), on=["source_table", "unit_key"], how="semi"
        )
        eligible = frame.filter(pl.col("quarantine_rule").is_null())
        found = found_resources(client, eligible, None) if eligible.height else {}
        diffs = compare_stores(client, element, frame, ledger.units(element), look_for_extras=False).discrepancies
        body.append(f"<h2>{esc(element)} ({frame.height} units)</h2>")
        for row in frame.iter_rows(named=True):
            legacy = _legacy_row(tables, row["source_table"], row["source_key"])
            copies = found.get((row["resource_type"], row["identifier_system"], row["identifier_value"]), [])
            mine_diffs = diffs.filter(
                (pl.col("resource_type") == row["resource_type"])
                & (pl.col("identifier_value") == row["identifier_value"])
            )
            if row["quarantine_rule"]:
                quarantine_why = f"{row['quarantine_rule']}: {row['quarantine_reason'] or ''}"
                status = f'<span class="warn">quarantined ({esc(quarantine_why)})</span>'
            elif mine_diffs.is_empty():
                status = '<span class="ok">matches</span>'
            else:
                status = (
                    '<span class="bad">'
                    + esc("; ".join(f"{k} {f}".strip() for k, f in mine_diffs.select("kind", "field").iter_rows()))
                    + "</span>"
                )
            body.append(
                f'<div class="unit"><h3>{esc(row["source_table"])} {esc(str(row["source_key"]))} → '
                f"{esc(row['resource_type'])}: {status}</h3>"
            )
            body.append("<div><b>Legacy</b>" + _table(legacy) + "</div>")
            built = attachments(json.loads(row["resource"]))
            if built:
                body.append(_attachment_table(built, [a for c in copies for a in attachments(c)]))
            medplum = "".join(
                f"<pre>{html.escape(json.dumps(c, indent=2, ensure_ascii=False), quote=False)}</pre>" for c in copies
            )
            body.append(f"<div><b>Medplum</b>{medplum or '<p class=bad>not in Medplum</p>'}</div></div>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Chart review {esc(patient)}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def _attachment_table(legacy: list[dict[str, Any]], medplum: list[dict[str, Any]]) -> str:
    """A document's bytes, legacy against Medplum: content type, size and SHA-1 should agree; the
    legacy file or BLOB is in Medplum as a Binary."""
    esc = html.escape
    rows = []
    for number, built in enumerate(legacy):
        stored = medplum[number] if number < len(medplum) else {}
        for name in ATTACHMENT_FIELDS:
            mine, theirs = built.get(name), stored.get(name)
            same = mine == theirs or (name == "url" and str(theirs or "").startswith("Binary/"))
            mark = '<span class="ok">✓</span>' if same else '<span class="bad">✗</span>'
            rows.append(
                f"<tr><th>{esc(name)}</th><td>{esc(str(mine))}</td><td>{esc(str(theirs))}</td><td>{mark}</td></tr>"
            )
    head = "<tr><th>attachment</th><th>legacy</th><th>Medplum</th><th></th></tr>"
    return f'<div class="attachment"><b>Document</b><table>{head}{"".join(rows)}</table></div>'


def _legacy_row(tables: Mapping[str, pl.DataFrame], table: str, key: str | None) -> list[dict[str, Any]]:
    data = tables.get(table)
    pk = PROFILE.primary_keys().get(table)
    if data is None or pk is None or key is None or pk not in data.columns:
        return []
    return data.filter(pl.col(pk).cast(pl.String) == key).to_dicts()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='bad'>no legacy row</p>"
    esc = html.escape
    dash = chr(8212)  # an em dash where the legacy row has no value
    cells = "".join(
        f"<tr><th>{esc(name)}</th>"
        + "".join(f"<td>{esc(dash if r[name] is None else str(r[name]))}</td>" for r in rows)
        + "</tr>"
        for name in rows[0]
    )
    return f"<table>{cells}</table>"


def _index_page(samples: Sequence[Sample], pages: Mapping[str, Path], generated: str) -> str:
    esc = html.escape
    parts = [f"<h1>Chart review samples</h1><p>Generated {esc(generated)}.</p>"]
    for sample in samples:
        seed = f" (seed {sample.seed})" if sample.seed is not None else ""
        parts.append(f"<h2>{esc(sample.kind)}{esc(seed)}: {len(sample.patients)} patients</h2><ul>")
        parts += [
            f'<li><a href="{esc(pages[p].name)}">{esc(p)}</a>: {esc("; ".join(sample.reasons.get(p, [])))}</li>'
            for p in sample.patients
        ]
        parts.append("</ul>")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Chart review</title><style>{_STYLE}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )
