"""The mapping register, generated from the mapping code itself rather than written beside it.

For every data element and every source field it says which FHIR path the field reaches, by what
rule, and with which disposition:

- direct: the value is copied verbatim to the path (perhaps only where it passes a check);
- transformed: the path's value is derived from the field (a code looked up, a reference built, ...);
- excluded: changing the field changes no FHIR path (it is not written; it may still be checked,
  and the quarantine rules it can trigger are named);
- unsupported: the element module declares it cannot map the field yet (`UNSUPPORTED`, a dict of
  column -> why).

How: the element's real `extract` and `build_frame` run on a small probe (rows of the sample legacy
EHR); then each source column is perturbed in two ways (its values rotated among the rows, and each
value mutated: a date moved a year, a number's last digit changed, a text suffixed) and the FHIR
JSON of every resource is compared leaf by leaf with the unperturbed run. A path whose new values
are the perturbed source values is direct; one that only appears or disappears beside a direct
sibling (the `system` next to a copied `value`) is implied and not listed; any other change is
transformed. Element modules may declare `REGISTER_NOTES` (column -> a few words) to state the rule;
without a note the rule says what the probe saw.

Lookup tables (every source table after the first) list only the columns the element uses.

`python -m migration_assets.mapping.register` writes the profile's mapping_register.md for every element.
"""

import importlib
import json
import sys
from collections.abc import Callable, Mapping
from functools import cache

import polars as pl

from migration_assets.active import PROFILE, get_element
from migration_assets.elements.base import DataElement, SourceSystem, build_frame
from migration_assets.elements.fhir_json import json_leaves

PROBE_PATIENTS = 30
PROBE_SEED = 7
PROBE_SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
# Beside the profile's own files: the register documents one legacy schema.
REGISTER_PATH = PROFILE.phases_file.parent / "mapping_register.md"
REGENERATE = "python -m migration_assets.mapping.register"

REGISTER_SCHEMA = {
    "element": pl.String,
    "source_table": pl.String,
    "source_field": pl.String,
    "target_path": pl.String,
    "rule": pl.String,
    "disposition": pl.String,
}
DISPOSITIONS = ("direct", "transformed", "excluded", "unsupported")

Leaves = dict[str, str]
RowKey = tuple[str, str, int]


@cache
def probe_tables() -> dict[str, pl.DataFrame]:
    return PROFILE.sample(patients=PROBE_PATIENTS, seed=PROBE_SEED)


def mapping_register(element: DataElement, tables: Mapping[str, pl.DataFrame] | None = None) -> pl.DataFrame:
    """The register of one data element, probed on `tables` (by default the probe sample)."""
    available = tables or probe_tables()
    missing = sorted(set(element.source_tables) - set(available))
    if missing:
        raise ValueError(f"data element {element.name}: the profile's sample data has no table {missing}")
    source = {name: available[name] for name in element.source_tables}
    module = importlib.import_module(element.extract.__module__)
    notes: Mapping[str, str] = getattr(module, "REGISTER_NOTES", {})
    unsupported: Mapping[str, str] = getattr(module, "UNSUPPORTED", {})
    baseline = _run(element, source)
    rows: list[dict[str, str]] = []
    for position, table in enumerate(element.source_tables):
        for column in source[table].columns:
            # A bare column name in the notes means the element's own (first) table.
            note = notes.get(f"{table}.{column}", notes.get(column) if position == 0 else None)
            why = unsupported.get(f"{table}.{column}", unsupported.get(column)) if position == 0 else None
            if why is not None:
                rows.append(_row(element, table, column, "", why, "unsupported"))
                continue
            paths, checks = _probe_column(element, source, table, column, baseline)
            if not paths:
                if position > 0 and not checks:
                    continue  # a lookup table's column this element does not use
                rule = note or "not written"
                if checks and not note:
                    rule += f"; checked ({', '.join(sorted(checks))})"
                rows.append(_row(element, table, column, "", rule, "excluded"))
                continue
            for path, (disposition, example) in paths.items():
                if note:
                    rule = note
                elif disposition == "direct":
                    rule = "copied as is"
                else:
                    rule = f"derived, e.g. {example}" if example else "decides whether the path is present"
                rows.append(_row(element, table, column, path, rule, disposition))
    return pl.DataFrame(rows, schema=REGISTER_SCHEMA)


def _row(element: DataElement, table: str, column: str, path: str, rule: str, disposition: str) -> dict[str, str]:
    return {
        "element": element.name,
        "source_table": table,
        "source_field": column,
        "target_path": path,
        "rule": rule,
        "disposition": disposition,
    }


# -- probing ---------------------------------------------------------------------------------------


class _Run:
    """Leaves of every resource and the quarantine rule of every row, by (table, type, position)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.leaves: dict[RowKey, Leaves] = {}
        self.rules: dict[RowKey, str | None] = {}
        self.keys: dict[tuple[str, str], list[str]] = {}
        counters: dict[tuple[str, str], int] = {}
        for row in frame.select(
            "source_table", "resource_type", "source_key", "resource", "quarantine_rule"
        ).iter_rows():
            table, resource_type, key, resource, rule = row
            group = (table, resource_type)
            index = counters.get(group, 0)
            counters[group] = index + 1
            self.keys.setdefault(group, []).append(key)
            parsed = json.loads(resource, parse_float=str, parse_int=str)
            self.leaves[(table, resource_type, index)] = {
                path: str(leaf) for path, leaf in json_leaves(parsed, resource_type, bracket_indexes=True).items()
            }
            self.rules[(table, resource_type, index)] = rule


def _run(element: DataElement, tables: Mapping[str, pl.DataFrame]) -> _Run:
    return _Run(build_frame(element, element.extract(tables), PROBE_SYSTEM))


def _rotate(values: pl.Series) -> pl.Series:
    return pl.concat([values.tail(1), values.head(-1)]) if values.len() > 1 else values


def _mutate_one(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) >= 4 and value[:4].isdigit() and (len(value) == 4 or value[4] == "-"):
        return f"{int(value[:4]) - 1:04d}{value[4:]}"  # a date a year earlier, same precision
    if value and value[-1].isdigit() and value.replace(".", "", 1).lstrip("-<>=").isdigit():
        return value[:-1] + str((int(value[-1]) + 1) % 10)  # a number, its last digit changed
    return value + "~x"


def _mutate(values: pl.Series) -> pl.Series:
    return pl.Series(values.name, [_mutate_one(v) for v in values.to_list()], dtype=pl.String)


_PERTURBATIONS: tuple[Callable[[pl.Series], pl.Series], ...] = (_rotate, _mutate)


def _aligned(before: _Run, after: _Run, by_position: bool) -> list[tuple[RowKey, RowKey]]:
    pairs = []
    for group, keys in before.keys.items():
        new_keys = after.keys.get(group, [])
        if not by_position and keys != new_keys and sorted(keys) == sorted(new_keys):
            # Same rows in another order: match them by source key.
            where = {key: index for index, key in enumerate(new_keys)}
            pairs += [((*group, i), (*group, where[key])) for i, key in enumerate(keys)]
        else:
            pairs += [((*group, i), (*group, i)) for i in range(min(len(keys), len(new_keys)))]
    return pairs


def _probe_column(
    element: DataElement, tables: Mapping[str, pl.DataFrame], table: str, column: str, baseline: _Run
) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """Changed paths of `column` -> (disposition, an example), and the quarantine rules it triggers."""
    kinds: dict[str, set[str]] = {}
    examples: dict[str, str] = {}
    checks: set[str] = set()
    original = tables[table][column]
    # When the column is a source key, rows are matched by position (their keys are what changes).
    is_key = any(set(keys) == set(original.drop_nulls().to_list()) for keys in baseline.keys.values())
    for perturb in _PERTURBATIONS:
        changed = perturb(original)
        if changed.equals(original):
            continue
        after = _run(element, {**tables, table: tables[table].with_columns(changed)})
        perturbed_values = {v for v in changed.to_list() if v is not None}
        perturbed_values |= {v.strip() for v in perturbed_values}
        for old_key, new_key in _aligned(baseline, after, by_position=is_key):
            old, new = baseline.leaves[old_key], after.leaves[new_key]
            new_rule = after.rules[new_key]
            if new_rule is not None and new_rule != baseline.rules[old_key]:
                checks.add(new_rule)
            for path in old.keys() | new.keys():
                before_value, after_value = old.get(path), new.get(path)
                if before_value == after_value:
                    continue
                if after_value is None:
                    kind = "dropped"
                elif after_value in perturbed_values:
                    kind = "verbatim"
                elif before_value is None:
                    kind = "appeared"
                else:
                    kind = "other"
                kinds.setdefault(path, set()).add(kind)
                if kind == "other" and path not in examples:
                    source_value = _source_value(tables[table], changed, column)
                    examples[path] = f"{_short(source_value)} → {_short(after_value)}"
    paths: dict[str, tuple[str, str]] = {}
    direct = {
        path for path, found in kinds.items() if "verbatim" in found and found <= {"verbatim", "dropped", "appeared"}
    }
    for path in sorted(kinds, key=_path_order):
        found = kinds[path]
        if path in direct:
            paths[path] = ("direct", "")
        elif found <= {"dropped", "appeared"} and any(_parent(path) == _parent(other) for other in direct):
            continue  # appears with a copied sibling (the system beside a value): implied
        else:
            paths[path] = ("transformed", examples.get(path, ""))
    return paths, checks


def _source_value(frame: pl.DataFrame, changed: pl.Series, column: str) -> str | None:
    # An example only: the first perturbed value that differs from the original.
    for old, new in zip(frame[column].to_list(), changed.to_list(), strict=True):
        if old != new:
            return str(new)
    return None


def _short(value: str | None, width: int = 48) -> str:
    text = "∅" if value is None else value
    return text if len(text) <= width else text[: width - 1] + "…"


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0]


def _path_order(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


# -- Markdown --------------------------------------------------------------------------------------


def full_register() -> pl.DataFrame:
    return pl.concat([mapping_register(element) for element in PROFILE.elements])


def render_markdown(register: pl.DataFrame | None = None) -> str:
    register = register if register is not None else full_register()
    lines = [
        "# Mapping register",
        "",
        f"Generated from the mapping code by `{REGENERATE}`; do not edit by hand (a test fails when",
        "this file and the code disagree). Each element's `extract` and `transform` run on a probe of the",
        f"sample legacy EHR ({PROBE_PATIENTS} patients, seed {PROBE_SEED}); each source field is perturbed and the",
        "FHIR paths that change are listed (see migration_assets/register.py for the method).",
        "",
        "Dispositions: **direct** (copied verbatim), **transformed** (derived), **excluded** (reaches no",
        "FHIR path), **unsupported** (declared unmappable by the element).",
    ]
    for element in PROFILE.elements:
        rows = register.filter(pl.col("element") == element.name)
        lines += [
            "",
            f"## {element.name}",
            "",
            element.description,
            "",
            f"- mapping version: {element.mapping_version}",
            f"- source tables: {', '.join(element.source_tables)}",
            f"- requires: {', '.join(element.requires) or 'nothing'}",
            f"- resource types: {', '.join(element.schemas)}",
            "",
            "| source field | target path | disposition | rule |",
            "|---|---|---|---|",
        ]
        for row in rows.iter_rows(named=True):
            lines.append(
                f"| {row['source_table']}.{row['source_field']} | {_cell(row['target_path']) or '—'} | "
                f"{row['disposition']} | {_cell(row['rule'])} |"
            )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args:
        register = pl.concat([mapping_register(get_element(name)) for name in args])
        print(register)
        return 0
    REGISTER_PATH.parent.mkdir(parents=True, exist_ok=True)
    REGISTER_PATH.write_text(render_markdown(), encoding="utf-8")
    print(f"wrote {REGISTER_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
