"""Polars expressions that build FHIR R4 datatypes from legacy columns, for any profile.

Conventions, the same as fhir_json.py's:
- Every value argument is a polars expression; a plain `str` is a literal (a fixed code such as
  `use="official"`), never a column name.
- A builder returns null where FHIR would have nothing to write (a name with no part, a contact point
  with no value), and its lists hold no nulls: `fhir_json` then drops the member, so the JSON never
  holds null, `[]` or `{}`. (fhir_json only removes empty *members*; an empty struct inside an
  array would stay, which is why lists are filtered here.)
- Text parts are trimmed, and a blank text is treated as absent: FHIR strings may not be empty.
- Checks (`valid_npi`, `ends_before_start`, ...) are boolean expressions for `quarantine` or a
  review flag; they are False, never null, when the value is absent.
"""

from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial
from typing import NamedTuple

import polars as pl

from migration_assets.elements.fhir_json import coding, present
from migration_assets.elements.terminology import UCUM

# --- value sets the builders check literal codes against (FHIR R4, required bindings) ---

NAME_USES = frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"})
ADDRESS_USES = frozenset({"home", "work", "temp", "old", "billing"})
CONTACT_POINT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
CONTACT_POINT_USES = frozenset({"home", "work", "temp", "old", "mobile"})
QUANTITY_COMPARATORS = frozenset({"<", "<=", ">=", ">"})

DATA_ABSENT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
DATA_ABSENT_REASON_EXTENSION = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
# The codes of the data-absent-reason code system (R4) with their displays.
DATA_ABSENT_REASONS: Mapping[str, str] = {
    "unknown": "Unknown",
    "asked-unknown": "Asked But Unknown",
    "temp-unknown": "Temporarily Unknown",
    "not-asked": "Not Asked",
    "asked-declined": "Asked But Declined",
    "masked": "Masked",
    "not-applicable": "Not Applicable",
    "unsupported": "Unsupported",
    "as-text": "As Text",
    "error": "Error",
    "not-a-number": "Not a Number (NaN)",
    "negative-infinity": "Negative Infinity (NINF)",
    "positive-infinity": "Positive Infinity (PINF)",
    "not-performed": "Not Performed",
    "not-permitted": "Not Permitted",
}

# FHIR R4's decimal (its regex, which is a JSON number): no leading zeros, no leading "+", no bare ".5".
DECIMAL = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
# A FHIR dateTime with a time: seconds and a UTC offset are required (R4 dateTime regex).
DATE_TIME = r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|[+-](0\d|1[0-4]):[0-5]\d)$"

NPI_PREFIX = "80840"

# A decimal travels through polars' JSON encoder as text behind this marker; `embed_decimals` then
# removes the marker and the quotes, so the number reaches the JSON digit for digit. (A float would
# lose "5.10"'s trailing zero, and 0.1 + its binary error.) The encoder writes it as `\u0001`.
_DECIMAL_MARKER = "\u0001"
_MARKED_DECIMAL = r'"\\u0001(' + DECIMAL + ')"'


def text(value: pl.Expr) -> pl.Expr:
    """The text trimmed, null when it is blank (FHIR strings may not be empty)."""
    trimmed = value.cast(pl.String).str.strip_chars()
    return pl.when(trimmed != "").then(trimmed)


def per_distinct(columns: Sequence[str], derive: Callable[[pl.LazyFrame], pl.LazyFrame]) -> pl.Expr:
    """A struct of the columns `derive` adds to a frame of the text `columns` (keeping its other columns),
    derived once per distinct combination of their values in each batch polars hands it (it splits the
    column among its threads) and joined back onto the rows, in order.

    For values many rows share whose derivation costs more than the join: a million OMOP persons have some
    tens of thousands of distinct births and deaths (8,400 in the benchmark's), and their dates, their JSON
    and their date rules cost 0.65 CPU s row by row against about 0.28 per distinct combination. (Called once
    with the whole column, it cost less CPU but ran what follows on one core: a lower rate.)"""
    given = pl.LazyFrame(schema=dict.fromkeys(columns, pl.String))
    derived = {name: kind for name, kind in derive(given).collect_schema().items() if name not in columns}
    return pl.struct(*columns).map_batches(
        partial(_derived_per_distinct, list(columns), derive, list(derived)),
        return_dtype=pl.Struct(derived),
        is_elementwise=True,
    )


def _derived_per_distinct(
    columns: list[str], derive: Callable[[pl.LazyFrame], pl.LazyFrame], derived: list[str], rows: pl.Series
) -> pl.Series:
    frame = rows.struct.unnest()
    # Each distinct combination found and joined back by a hash of the row: a join on one integer instead of
    # the text columns, 0.26 CPU s per million OMOP persons' births against 0.33. The joined rows' values are then
    # compared with the rows' own, so a hash shared by two combinations cannot go unnoticed.
    keys = frame.hash_rows().alias("_distinct")
    firsts = keys.is_first_distinct()
    distinct = derive(frame.filter(firsts).with_columns(keys.filter(firsts)).lazy())
    table = distinct.select("_distinct", *columns, *derived).collect()
    joined = keys.to_frame().join(table, on="_distinct", how="left", maintain_order="left")
    if not joined.select(columns).equals(frame):
        table = derive(frame.unique().lazy()).select(*columns, *derived).collect()
        joined = frame.join(table, on=columns, how="left", maintain_order="left", nulls_equal=True)
    return joined.select(pl.struct(derived).alias(rows.name)).to_series()


def _literal_or_expr(value: pl.Expr | str | None, allowed: Collection[str], what: str) -> pl.Expr:
    """A fixed code checked against its value set now, or an expression passed through."""
    if value is None:
        return pl.lit(None, dtype=pl.String)
    if isinstance(value, pl.Expr):
        return value
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {sorted(allowed)}")
    return pl.lit(value, dtype=pl.String)


def _texts(values: tuple[pl.Expr, ...]) -> pl.Expr | None:
    """The present texts as a list (null when none), or None when no column was given."""
    if not values:
        return None
    parts = present(*[text(value) for value in values])
    return pl.when(parts.list.len() > 0).then(parts)


def _struct_if_any(fields: list[pl.Expr]) -> pl.Expr:
    """The struct of `fields`, or null when every field is null (nothing to write)."""
    return pl.when(pl.any_horizontal(field.is_not_null() for field in fields)).then(pl.struct(fields))


# --- HumanName, Address, ContactPoint, Period ---


def human_name(
    *,
    family: pl.Expr | None = None,
    given: tuple[pl.Expr, ...] = (),
    prefix: tuple[pl.Expr, ...] = (),
    suffix: tuple[pl.Expr, ...] = (),
    use: pl.Expr | str | None = None,
    name_text: pl.Expr | None = None,
) -> pl.Expr:
    """A HumanName struct: `use`, `text`, `family`, `given` (one entry per given column that has a value,
    in column order: first then middle name), `prefix`, `suffix`. Null when the name has no part
    (FHIR: an element must have a value or children); `use` alone is not a name."""
    named = {
        "family": text(family) if family is not None else None,
        "given": _texts(given),
        "prefix": _texts(prefix),
        "suffix": _texts(suffix),
        "text": text(name_text) if name_text is not None else None,
    }
    parts = [expr.alias(name) for name, expr in named.items() if expr is not None]
    if not parts:
        raise ValueError("human_name needs at least one of family, given, prefix, suffix or name_text")
    use_expr = _literal_or_expr(use, NAME_USES, "HumanName.use")
    return pl.when(pl.any_horizontal(part.is_not_null() for part in parts)).then(
        pl.struct(use_expr.alias("use"), *parts)
    )


def address(
    *,
    lines: tuple[pl.Expr, ...] = (),
    city: pl.Expr | None = None,
    state: pl.Expr | None = None,
    postal_code: pl.Expr | None = None,
    country: pl.Expr | None = None,
    use: pl.Expr | str | None = None,
) -> pl.Expr:
    """An Address struct: `use`, `line` (one entry per line column that has a value, in order), `city`,
    `state`, `postalCode`, `country`, each as given (trimmed). Null when no part has a value. Nothing
    is normalised: a state or country is written as the legacy system spelled it."""
    named = {
        "line": _texts(lines),
        "city": text(city) if city is not None else None,
        "state": text(state) if state is not None else None,
        "postalCode": text(postal_code) if postal_code is not None else None,
        "country": text(country) if country is not None else None,
    }
    parts = [expr.alias(name) for name, expr in named.items() if expr is not None]
    if not parts:
        raise ValueError("address needs at least one of lines, city, state, postal_code or country")
    use_expr = _literal_or_expr(use, ADDRESS_USES, "Address.use")
    return pl.when(pl.any_horizontal(part.is_not_null() for part in parts)).then(
        pl.struct(use_expr.alias("use"), *parts)
    )


def contact_point(system: pl.Expr | str, value: pl.Expr, use: pl.Expr | str | None = None) -> pl.Expr:
    """A ContactPoint struct `{system, value, use}`; null when the value is blank, so an empty phone
    column writes nothing. FHIR cpt-2 requires a system with every value: pass a literal system
    (checked against CONTACT_POINT_SYSTEMS), or quarantine the rows whose mapped system is null."""
    system_expr = _literal_or_expr(system, CONTACT_POINT_SYSTEMS, "ContactPoint.system")
    use_expr = _literal_or_expr(use, CONTACT_POINT_USES, "ContactPoint.use")
    cleaned = text(value)
    return pl.when(cleaned.is_not_null()).then(
        pl.struct(system_expr.alias("system"), cleaned.alias("value"), use_expr.alias("use"))
    )


def telecom(*contact_points: pl.Expr) -> pl.Expr:
    """The contact points that have a value, as a list (a resource's `telecom`); empty lists are
    dropped by fhir_json."""
    return present(*contact_points)


def period(start: pl.Expr | None = None, end: pl.Expr | None = None) -> pl.Expr:
    """A Period struct `{start, end}` of dates or dateTimes as given (trimmed); null when both are
    absent. FHIR per-1 (start <= end) is not enforced here: quarantine with `ends_before_start`."""
    fields = [text(value).alias(name) for name, value in (("start", start), ("end", end)) if value is not None]
    if not fields:
        raise ValueError("period needs a start or an end")
    return _struct_if_any(fields)


def ends_before_start(start: pl.Expr, end: pl.Expr) -> pl.Expr:
    """True where a period's end lies before its start (FHIR per-1), for a quarantine rule.

    Two dateTimes with offsets are compared as instants (10:00+05:00 is before 06:00Z). Otherwise the
    values are compared at the precision both have (2020 against 2019-12-31 compares years): FHIR
    leaves comparisons across precisions undecided, so only a certain violation counts. False when
    either side is absent."""
    start_text, end_text = text(start), text(end)
    both_instants = start_text.str.contains(DATE_TIME) & end_text.str.contains(DATE_TIME)
    instant_order = _instant(end_text) < _instant(start_text)
    # A date, or the date part of a dateTime, at the shorter of the two precisions.
    length = pl.min_horizontal(start_text.str.len_chars(), end_text.str.len_chars(), pl.lit(10))
    date_order = end_text.str.slice(0, length) < start_text.str.slice(0, length)
    return pl.when(both_instants).then(instant_order).otherwise(date_order).fill_null(False)


def _instant(value: pl.Expr) -> pl.Expr:
    # polars' %z does not read "Z"; it is the +00:00 offset.
    with_offset = value.str.replace(r"Z$", "+00:00")
    return with_offset.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%z", time_zone="UTC", strict=False)


# --- exact decimals and Quantity ---


def is_decimal(value: pl.Expr) -> pl.Expr:
    """True where the text, exactly as given (no trimming), is a FHIR decimal; False when absent."""
    return value.str.contains(f"^{DECIMAL}$").fill_null(False)


def decimal(value: pl.Expr) -> pl.Expr:
    """A decimal field value that reaches the JSON as a number written exactly as given ("5.10" stays
    5.10, FHIR decimals keep their precision); null when the text is not a FHIR decimal. The resource's
    JSON must then go through `embed_decimals`."""
    return pl.when(is_decimal(value)).then(pl.lit(_DECIMAL_MARKER) + value)


def embed_decimals(resource_json: pl.Expr) -> pl.Expr:
    """FHIR JSON text with every `decimal()` value turned from marked text into a bare JSON number.

    Apply it to the `resource` column after `frame_columns`. Forgetting it cannot go unnoticed: the
    marker is a control character, which the shared `control_character` rule quarantines."""
    return resource_json.str.replace_all(_MARKED_DECIMAL, "$1")


def split_comparator(value: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """("<", "0.5") from "<0.5" or "< 0.5", (null, "7.20") from "7.20": a Quantity's comparator and
    decimal text. Both null when the (trimmed) text is not a decimal with an optional comparator."""
    pattern = rf"^(<=|>=|<|>)?\s*({DECIMAL})$"
    trimmed = value.str.strip_chars()
    return trimmed.str.extract(pattern, 1), trimmed.str.extract(pattern, 2)


def ucum_codes(units: pl.DataFrame | Collection[str], column: str = "code") -> list[str]:
    """The UCUM codes of a map frame (its `column`) or of a set, as the list `quantity` checks units against."""
    if isinstance(units, pl.DataFrame):
        if column not in units.columns:
            raise ValueError(f"UCUM map has no column {column!r} (columns: {units.columns})")
        return units[column].drop_nulls().unique().sort().to_list()
    return sorted(units)


def quantity(
    value: pl.Expr,
    unit: pl.Expr | None,
    ucum_units: pl.DataFrame | Collection[str],
    comparator: pl.Expr | None = None,
) -> pl.Expr:
    """A Quantity struct `{value, comparator, unit, system, code}`; null when `value` is not a FHIR
    decimal or the comparator is not a FHIR one.

    - value: the decimal text, written exactly (see `decimal`; the JSON needs `embed_decimals`).
    - unit: kept exactly as given (a blank unit is left out). `system` (UCUM) and `code` are added only when the unit is
      itself one of `ucum_units` (a UCUM map frame with a `code` column, or a set of codes): a unit
      is never converted or guessed ("mm[Hg]" gets a code, "mmHg" does not). FHIR qty-3: a code
      needs a system, so both come together.
    - comparator: one of QUANTITY_COMPARATORS or null (`split_comparator` gives one); any other
      value makes the whole quantity null (the element quarantines it), since dropping it would
      change the value's meaning. Left out of the struct when not given (no nulls to clean).
    """
    fields = [decimal(value).alias("value")]
    writable = is_decimal(value)
    if comparator is not None:
        fields.append(comparator.alias("comparator"))
        # Dropping an unknown comparator would turn "<0.5" into 0.5: no quantity rather than a wrong one.
        writable = writable & (comparator.is_null() | comparator.is_in(sorted(QUANTITY_COMPARATORS)))
    if unit is not None:
        # As given, not trimmed (the UCUM check compares it exactly); only a blank unit is absent.
        unit_text = pl.when(unit.str.strip_chars() != "").then(unit)
        is_ucum = unit_text.is_in(ucum_codes(ucum_units))
        fields += [
            unit_text.alias("unit"),
            pl.when(is_ucum).then(pl.lit(UCUM)).alias("system"),
            pl.when(is_ucum).then(unit_text).alias("code"),
        ]
    return pl.when(writable).then(pl.struct(fields))


# --- CodeableConcept from a vocabulary table ---


class MappedConcept(NamedTuple):
    """A CodeableConcept and whether its local code found a standard code (for `review_flags`)."""

    concept: pl.Expr
    mapped: pl.Expr


def vocabulary_concept(
    local_code: pl.Expr,
    local_system: str,
    vocabulary: pl.DataFrame,
    *,
    standard_system: str | None = None,
    local_display: pl.Expr | None = None,
    concept_text: pl.Expr | None = None,
) -> MappedConcept:
    """A CodeableConcept of a local code mapped through a vocabulary table, and a `mapped` flag.

    The vocabulary has `local_code`, `code` (the standard code; null: not mapped), optional `display`
    and optional `system` (else `standard_system` names the one system of the whole table). The
    local coding is always kept, under the profile's `local_system`; the standard coding is added
    only where the table maps the local code (FHIR: codings of one concept, the local one first).
    `mapped` is False where it does not (also for an absent local code), so an element can declare
    `review_flags={"code_mapped": False}`. A local code listed twice is an error: the map would be
    ambiguous."""
    missing = {"local_code", "code"} - set(vocabulary.columns)
    if missing:
        raise ValueError(f"vocabulary table lacks columns {sorted(missing)} (columns: {vocabulary.columns})")
    if "system" not in vocabulary.columns and standard_system is None:
        raise ValueError("vocabulary table has no `system` column: pass standard_system")
    mapped_rows = vocabulary.filter(pl.col("local_code").is_not_null() & pl.col("code").is_not_null())
    repeated = mapped_rows.filter(pl.col("local_code").is_duplicated())["local_code"].unique().sort().to_list()
    if repeated:
        raise ValueError(f"vocabulary table maps local codes more than once: {repeated[:10]}")

    def looked_up(column: str) -> pl.Expr:
        return local_code.replace_strict(
            mapped_rows["local_code"], mapped_rows[column].cast(pl.String), default=None, return_dtype=pl.String
        )

    standard_code = looked_up("code")
    system = looked_up("system") if "system" in vocabulary.columns else pl.lit(standard_system, dtype=pl.String)
    display = looked_up("display") if "display" in vocabulary.columns else None
    fields = [
        present(
            coding(local_system, local_code, local_display),
            coding(system, standard_code, display),
        ).alias("coding")
    ]
    if concept_text is not None:
        fields.append(text(concept_text).alias("text"))
    return MappedConcept(concept=pl.struct(fields), mapped=standard_code.is_not_null())


# --- dataAbsentReason ---


def _absent_code(code: pl.Expr | str) -> pl.Expr:
    if isinstance(code, str):
        return _literal_or_expr(code, DATA_ABSENT_REASONS, "data-absent-reason code")
    return pl.when(code.is_in(list(DATA_ABSENT_REASONS))).then(code)


def data_absent_reason(code: pl.Expr | str) -> pl.Expr:
    """The CodeableConcept for an element named `dataAbsentReason` (Observation, Observation.component):
    one coding of http://terminology.hl7.org/CodeSystem/data-absent-reason with its display. A literal
    code outside the code system is an error; an expression's unknown codes give null."""
    absent = _absent_code(code)
    display = absent.replace_strict(DATA_ABSENT_REASONS, default=None, return_dtype=pl.String)
    return pl.when(absent.is_not_null()).then(
        pl.struct(present(coding(DATA_ABSENT_REASON_SYSTEM, absent, display)).alias("coding"))
    )


def data_absent_extension(code: pl.Expr | str) -> pl.Expr:
    """`[{"url": ".../StructureDefinition/data-absent-reason", "valueCode": code}]`, the extension list
    that says why a required element has no value. On a complex element put it in the element's
    `extension`; on a primitive use `absent_primitive`. Null when the code is null or unknown."""
    absent = _absent_code(code)
    extension = pl.struct(pl.lit(DATA_ABSENT_REASON_EXTENSION).alias("url"), absent.alias("valueCode"))
    return pl.when(absent.is_not_null()).then(pl.concat_list(extension))


def absent_primitive(value: pl.Expr, code: pl.Expr | str) -> pl.Expr:
    """The `_name` companion of a primitive `name` (FHIR JSON: `"_birthDate": {"extension": [...]}`):
    the data-absent-reason extension where `value` is null, null where the value is present (a value
    and a reason for its absence would contradict each other)."""
    extension = data_absent_extension(code)
    return pl.when(text(value).is_null() & extension.is_not_null()).then(pl.struct(extension.alias("extension")))


# --- identifier checks ---


def matches(value: pl.Expr, pattern: str) -> pl.Expr:
    """True where the whole text matches `pattern` (anchored here); False when absent. For identifier
    formats (an MRN of 8 digits: `matches(mrn, r"\\d{8}")`) and code formats."""
    return value.str.contains(f"^(?:{pattern})$").fill_null(False)


def valid_npi(npi: pl.Expr) -> pl.Expr:
    """True for a ten-digit NPI whose check digit passes Luhn over 80840 + the NPI (CMS' rule for the
    us-npi identifier system); False when absent."""
    digits = pl.lit(NPI_PREFIX) + npi
    total = pl.lit(0, dtype=pl.Int64)
    for position in range(15):
        digit = digits.str.slice(position, 1).cast(pl.Int64, strict=False)
        if (14 - position) % 2 == 1:  # every second digit from the right, check digit excluded
            digit = digit * 2
            digit = pl.when(digit > 9).then(digit - 9).otherwise(digit)
        total = total + digit
    return (npi.str.contains(r"^\d{10}$") & (total % 10 == 0)).fill_null(False)


def checked_identifier(system: str | pl.Expr, value: pl.Expr, valid: pl.Expr) -> pl.Expr:
    """An Identifier struct `{system, value}` where `valid` holds (e.g. `valid_npi(value)`), null
    otherwise: an identifier that fails its system's check is not written under that system."""
    system_expr = system if isinstance(system, pl.Expr) else pl.lit(system, dtype=pl.String)
    return pl.when(valid.fill_null(False) & value.is_not_null()).then(
        pl.struct(system_expr.alias("system"), value.alias("value"))
    )
