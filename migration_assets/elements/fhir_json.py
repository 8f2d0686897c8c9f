"""FHIR JSON built with polars expressions over whole columns.

polars' `struct.json_encode()` is fast (about 2 M rows/s, 25x a Python `json.dumps` loop) but writes
`null`, `[]` and `{}`, which FHIR forbids. `fhir_json` removes them with regular expressions that only
match structure: inside an encoded string every `"` is escaped, so `,"key":null` and `{"key":null`
can only be a member of an object, never text inside a value.
"""

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from migration_assets.medplum.search import SEARCH_ESCAPES, URL_ESCAPES

_EMPTY = r"(?:null|\[\]|\{\}|\[\{\}\])"
# `,"key":empty` goes entirely; `{"key":empty,` keeps its brace (captured as $1).
_EMPTY_MEMBER = r',"[A-Za-z0-9_]+":' + _EMPTY + r'|(\{)"[A-Za-z0-9_]+":' + _EMPTY + ",?"
# Each pass removes one level of emptiness ({"a":{"b":null}} needs two); our resources nest less.
_PASSES = 3


_MAY_HOLD_EMPTY = r":(?:null|\[\]|\{\}|\[\{\}\])[,}\]]"


def fhir_json(resource: pl.Expr) -> pl.Expr:
    """The resource struct as FHIR JSON text with no null, no empty array and no empty object."""
    return resource.struct.json_encode().map_batches(_drop_empty_members, return_dtype=pl.String, is_elementwise=True)


def _drop_empty_members(text: pl.Series) -> pl.Series:
    # The regular expressions cost about 1 s per million resources and pass; only the rows that
    # hold an empty member (few, in well-filled data) pay for them.
    needs_cleaning = text.str.contains(_MAY_HOLD_EMPTY).fill_null(False)
    if not needs_cleaning.any():
        return text
    cleaned = text.filter(needs_cleaning)
    for _ in range(_PASSES):
        cleaned = cleaned.str.replace_all(_EMPTY_MEMBER, "$1")
    return text.scatter(needs_cleaning.arg_true(), cleaned)


# --- FHIR JSON written as text, member by member ---
#
# Encoding a struct costs little, but a resource with lists of nested structs, or with many members that
# are often absent (each an empty member for `fhir_json` to clean), costs several microseconds a row. A
# mapping that must run at millions of rows can write its JSON as text instead: `json_object` leaves an
# absent member out as it goes, and a nested part shared by many rows can be written once and joined on.


@dataclass(frozen=True)
class FhirText:
    """A resource already written as FHIR JSON text (by `json_object`), for `frame_columns`; `meta_source`:
    the provenance its JSON opens with when written with it (`json_resource_of`'s), else None."""

    json: pl.Expr
    meta_source: str | None = None


def json_string(value: pl.Expr | str) -> pl.Expr:
    """A text column as JSON string literals (quotes and escapes as JSON writes them); null where null.
    A Python string is written once, as a literal."""
    if isinstance(value, str):
        return pl.lit(json.dumps(value, ensure_ascii=False))
    # The escapes in one pass, between quotes (null stays null): a fifth less CPU than encoding a struct
    # `{"s":...}` and cutting the text out of it, with the same bytes (a test holds the two together).
    return pl.concat_str(pl.lit('"'), value.str.replace_many(JSON_ESCAPES), pl.lit('"'))


# What a JSON encoder (polars' and Python's, ensure_ascii off) escapes in a string: the quote, the backslash
# and the control characters U+0000-U+001F, five of them by their short form.
JSON_ESCAPES: dict[str, str] = {"\\": "\\\\", '"': '\\"'} | {
    chr(code): {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(code, f"\\u{code:04x}") for code in range(32)
}


def json_object(**members: pl.Expr) -> pl.Expr:
    """`{"name":value,...}` of the members whose JSON text (json_string, json_array, json_object or a
    literal) is not null, in the order given; null when none is (FHIR has no empty object)."""
    parts = [pl.concat_str(pl.lit(f'"{name}":'), value) for name, value in members.items()]
    written = pl.concat_str(pl.lit("{"), pl.concat_str(parts, separator=",", ignore_nulls=True), pl.lit("}"))
    return written.replace("{}", None)


def json_resource(resource_type: str, **members: pl.Expr) -> pl.Expr:
    """`{"resourceType":...,"name":value,...}`: a resource as `json_object` writes an object, the members
    whose JSON text is not null in the order given. Every member is copied once into one text: nested
    concatenations (members, then separators, then braces) copied a 650-byte resource three times, and
    fresh memory for each copy of a million of them cost about 0.3 s."""
    return json_resource_of(resource_type, *(json_member(name, value) for name, value in members.items()))


def json_member(name: str, value: pl.Expr) -> pl.Expr:
    """`,"name":value` (value JSON text), a member as `json_resource_of` takes it; null where value is null."""
    return pl.concat_str(pl.lit(f',"{name}":'), value)


def json_resource_of(resource_type: str, *members: pl.Expr, meta_source: str | None = None) -> pl.Expr:
    """`{"resourceType":...` and the members given whole as `,"name":value` text, those not null, in order.
    A member shared by many rows can be looked up whole, name and all (copied once into the resource instead
    of first into a member of its own: 0.08 CPU s per million OMOP Patients for their 400-byte extensions).

    `meta_source` (the transform's `system.mapping_source`) opens the resource with its provenance, written
    here rather than spliced in after (`base.with_provenance`): a copy fewer of each resource, 0.2 CPU s per
    million OMOP Patients."""
    opening = (provenance_opening(meta_source) if meta_source is not None else "{") + '"resourceType":'
    return pl.concat_str(pl.lit(opening + json.dumps(resource_type)), *members, pl.lit("}"), ignore_nulls=True)


def provenance_opening(source: str) -> str:
    """`{"meta":{"source":...},`, how a resource with its provenance opens."""
    return '{"meta":{"source":' + json.dumps(source) + "},"


def json_array(*items: pl.Expr) -> pl.Expr:
    """`[item,...]` of the items (JSON text) that are not null; null when none is (FHIR has no empty array)."""
    listed = pl.concat_str(pl.lit("["), pl.concat_str(items, separator=",", ignore_nulls=True), pl.lit("]"))
    return listed.replace("[]", None)


def identifier(system: pl.Expr | str, value: pl.Expr | str) -> pl.Expr:
    """`[{"system": ..., "value": ...}]`, the resource's one source identifier."""
    return pl.concat_list(pl.struct(_expr(system).alias("system"), _expr(value).alias("value")))


def coding(system: pl.Expr | str, code: pl.Expr | str, display: pl.Expr | str | None = None) -> pl.Expr:
    """A Coding struct; null when the code is null (and so dropped from the JSON)."""
    code_expr = _expr(code)
    fields = [_expr(system).alias("system"), code_expr.alias("code")]
    if display is not None:
        fields.append(_expr(display).alias("display"))
    return pl.when(code_expr.is_not_null()).then(pl.struct(fields))


def present(*values: pl.Expr) -> pl.Expr:
    """A JSON array of the values that are not null. (`list.drop_nulls` costs several times a
    `list.filter`; a single value needs neither.)"""
    if len(values) == 1:
        return pl.when(values[0].is_not_null()).then(pl.concat_list(values[0]))
    return pl.concat_list(*values).list.filter(pl.element().is_not_null())


def without_nulls(values: pl.Expr) -> pl.Expr:
    """A list column without its null items."""
    return values.list.filter(pl.element().is_not_null())


def codeable_concept(*codings: pl.Expr, text: pl.Expr | None = None) -> pl.Expr:
    """A CodeableConcept of the codings that are present (a local code first, then its mapped
    standard codes) and an optional text."""
    fields = [present(*codings).alias("coding")]
    if text is not None:
        fields.append(text.alias("text"))
    return pl.struct(fields)


def reference(target: pl.Expr) -> pl.Expr:
    """`{"reference": target}`, null when the target is null."""
    return pl.when(target.is_not_null()).then(pl.struct(target.alias("reference")))


def _expr(value: pl.Expr | str) -> pl.Expr:
    return value if isinstance(value, pl.Expr) else pl.lit(value, dtype=pl.String)


def conditional_reference(resource_type: str | pl.Expr, system: str | pl.Expr, value: pl.Expr) -> pl.Expr:
    """`Patient?identifier=SYS|VALUE` for a whole column, escaped by the same rules as
    `medplum.search.conditional_url` (a test holds the two together)."""
    token = pl.concat_str(_escaped(_expr(system), SEARCH_ESCAPES), pl.lit("|"), _escaped(value, SEARCH_ESCAPES))
    return pl.concat_str(_expr(resource_type), pl.lit("?identifier="), _escaped(token, URL_ESCAPES))


def _escaped(text: pl.Expr, escapes: tuple[tuple[str, str], ...]) -> pl.Expr:
    for special, replacement in escapes:
        text = text.str.replace_all(special, replacement, literal=True)
    return text


def json_leaves(value: Any, path: str = "", bracket_indexes: bool = False) -> dict[str, Any]:
    """Every leaf of parsed FHIR JSON by its path: `name.0.family`, or `name[0].family` with
    `bracket_indexes`. Used to compare resources field by field."""
    if isinstance(value, dict):
        items = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = (
            (f"{path}[{index}]" if bracket_indexes else (f"{path}.{index}" if path else str(index)), item)
            for index, item in enumerate(value)
        )
    else:
        return {path: value}
    leaves: dict[str, Any] = {}
    for item_path, item in items:
        leaves.update(json_leaves(item, item_path, bracket_indexes))
    return leaves
