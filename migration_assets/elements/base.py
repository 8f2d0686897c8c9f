"""What a data element is, and the steps every element shares: quarantine rules, pandera validation
and content hashes. The element modules beside this one are the only code that knows FHIR shapes.

A FHIR frame has one row per resource. Its common columns (FRAME_COLUMNS) say where the row came
from, which identifier the resource is written under, what it references, its JSON, and whether it
was quarantined and why. Element-specific columns (gender, dates, ...) stay beside them so that
pandera can validate them.
"""

import dataclasses
import datetime
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final, TypeVar

import pandera.polars as pa
import polars as pl
import polars_hash

from migration_assets.elements.fhir_json import FhirText, fhir_json, provenance_opening
from migration_assets.source import has_table, read_rows_with, read_table

REFERENCE_DTYPE = pl.Struct(
    {"path": pl.String, "resource_type": pl.String, "identifier_system": pl.String, "identifier_value": pl.String}
)

FRAME_COLUMNS: dict[str, pl.DataType] = {
    "source_table": pl.String(),
    "source_key": pl.String(),
    # The manifest's key for the row: the source key, made unique when the source key is missing or
    # repeated (such rows are quarantined, and still each accounted for).
    "unit_key": pl.String(),
    "resource_type": pl.String(),
    "identifier_system": pl.String(),
    "identifier_value": pl.String(),
    # Rows sharing a bundle_group are written in one transaction (an Encounter and its note).
    "bundle_group": pl.String(),
    "full_url": pl.String(),
    "references": pl.List(REFERENCE_DTYPE),
    "resource": pl.String(),
    "content_hash": pl.String(),
    "quarantine_rule": pl.String(),
    "quarantine_reason": pl.String(),
}


@dataclass(frozen=True)
class SourceSystem:
    """One legacy system: every identifier system and local code system is derived from its base URI."""

    base_uri: str
    # The `meta.source` of the mapping running, as `transformed` hands the system to an element's transform: a
    # mapping that writes its JSON as text may open each resource with it (`json_resource_of`), in the one copy
    # that writes the resource, and say so (`FhirText.meta_source`). None outside a transform.
    mapping_source: str | None = None

    def __post_init__(self) -> None:
        if not self.base_uri.strip() or "://" not in self.base_uri and not self.base_uri.startswith("urn:"):
            raise ValueError(f"identifier base URI must be an absolute URI, got {self.base_uri!r}")

    def identifier_system(self, kind: str) -> str:
        return f"{self.base_uri.rstrip('/')}/identifier/{kind}"

    def code_system(self, name: str) -> str:
        return f"{self.base_uri.rstrip('/')}/CodeSystem/{name}"

    def provenance(self, element: str, mapping_version: str) -> str:
        """The `meta.source` of every resource an element writes: the legacy system and the mapping
        (element and version) that made it, so a Medplum user can tell migrated data apart."""
        return f"{self.base_uri.rstrip('/')}/mapping/{element}/{mapping_version}"

    def running(self, element: "DataElement") -> "SourceSystem":
        """The system as the element's transform sees it: with the element's provenance as `mapping_source`."""
        return dataclasses.replace(self, mapping_source=self.provenance(element.name, element.mapping_version))


@dataclass(frozen=True, kw_only=True)
class DataElement:
    """A unit of phased adoption: one partition of every asset. Every field is part of the contract
    between a profile and the platform; `check_element_contract` validates them when a profile loads.

    `extract` joins the source tables into one row per source unit; `transform` maps those rows to
    FHIR frame rows with polars expressions, lazily (build_frame runs it as one query), filling
    `quarantine_rule` where a mapping rule refuses a row; `schemas` validates the rows of each
    resource type; `transactional` sends each bundle_group as one transaction (inside a batch of
    transactions) instead of plain batch entries.
    """

    name: str
    description: str
    mapping_version: str
    # Every legacy table `extract` reads, with its primary key column (the sync and chart review find
    # a unit's legacy row by it).
    source_tables: Mapping[str, str]
    requires: tuple[str, ...]
    extract: Callable[[Mapping[str, pl.DataFrame]], pl.DataFrame]
    transform: Callable[[pl.LazyFrame, SourceSystem], pl.LazyFrame]
    schemas: Mapping[str, type[pa.DataFrameModel]]
    # The frame column holding the source key of the patient a unit belongs to (chart review groups a
    # patient's units by it); None declares that the element holds no patient's data (practitioners).
    patient_column: str | None
    # Frame columns that flag a value a reviewer should look at, each with the value that flags it
    # (`{"code_mapped": False}`: a local code with no standard mapping; `{"npi_dropped": True}`).
    review_flags: Mapping[str, bool] = field(default_factory=dict)
    # The column of every source table holding the time of its row's last change, as fixed-width UTC
    # text in `change_format` (so that it compares as text); None: the sync cannot pick out changes.
    change_column: str | None = None
    change_format: str = "%Y-%m-%dT%H:%M:%S.%fZ"
    transactional: bool = False
    # Source tables read only for the rows the others name (a vocabulary of millions of concepts of which
    # the data uses a few hundred): table -> {naming table: its columns holding the table's key}. The
    # platform reads the naming tables, then only the rows of this one whose key they hold (its key is
    # its `source_tables` entry); column names match in either case.
    lookup_tables: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    # Source tables an export may leave out (OMOP's DEATH, CARE_SITE, NOTE, ...), each with the columns of
    # the empty table read in its place: table -> columns. A missing one is logged and named in the run's
    # metadata; a missing table not listed here is an error naming it and where it was looked for.
    optional_tables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Load tuning: entries (or transactions) per batch bundle, and the most bundles in flight at once (the
    # load adapts the number in flight up to this while the server does not push back).
    batch_size: int = 100
    concurrency: int = 4


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_element_contract(element: DataElement) -> None:
    """Every declared field of `element` usable, or an error naming the element and the field."""

    def wrong(field_name: str, problem: str) -> ContractError:
        return ContractError(f"data element {element.name!r}: field `{field_name}` {problem}")

    if not isinstance(element.name, str) or not _NAME.match(element.name):
        raise wrong("name", "must be lower case letters, digits and _ (it is a Dagster partition key)")
    for name in ("description", "mapping_version"):
        if not isinstance(getattr(element, name), str) or not getattr(element, name).strip():
            raise wrong(name, "is empty")
    if not isinstance(element.source_tables, Mapping) or not element.source_tables:
        raise wrong(
            "source_tables", "must map each source table to its primary key column, e.g. {'patients': 'patient_id'}"
        )
    for table, key in element.source_tables.items():
        if not isinstance(key, str) or not key:
            raise wrong("source_tables", f"gives table {table!r} no primary key column")
    if isinstance(element.requires, str) or not all(isinstance(r, str) for r in element.requires):
        raise wrong("requires", "must be a tuple of element names")
    for name in ("extract", "transform"):
        if not callable(getattr(element, name)):
            raise wrong(name, "is not callable")
    if not element.schemas or not all(
        isinstance(model, type) and issubclass(model, pa.DataFrameModel) for model in element.schemas.values()
    ):
        raise wrong("schemas", "must map each resource type to a pandera DataFrameModel")
    if element.patient_column is not None and not isinstance(element.patient_column, str):
        raise wrong("patient_column", "must be a frame column name, or None for data that belongs to no patient")
    if not all(isinstance(c, str) and isinstance(v, bool) for c, v in element.review_flags.items()):
        raise wrong("review_flags", "must map frame columns to the boolean value that flags a row")
    for table, naming in element.lookup_tables.items():
        if table not in element.source_tables:
            raise wrong("lookup_tables", f"names {table!r}, which is not one of its source_tables")
        strays = sorted(set(naming) - set(element.source_tables) | set(naming) & set(element.lookup_tables))
        if strays or any(isinstance(columns, str) for columns in naming.values()):
            raise wrong(
                "lookup_tables",
                f"gives {table!r} naming tables {strays or list(naming)} that are not "
                "plain source tables with a tuple of columns each",
            )
    for table, columns in element.optional_tables.items():
        if isinstance(columns, str) or element.source_tables.get(table) not in columns:
            raise wrong(
                "optional_tables",
                f"gives {table!r}, which must be one of its source_tables with a tuple of columns holding its key",
            )
    if element.batch_size < 1 or element.concurrency < 1:
        raise wrong("batch_size" if element.batch_size < 1 else "concurrency", "must be at least 1")


def check_frame_columns(element: DataElement, columns: Iterable[str]) -> None:
    """The frame columns the element's contract names are there: a clear error, never a silent skip."""
    present = set(columns)
    declared = {
        "patient_column": [element.patient_column] if element.patient_column else [],
        "review_flags": list(element.review_flags),
    }
    for field_name, names in declared.items():
        missing = [name for name in names if name not in present]
        if missing:
            raise ContractError(
                f"data element {element.name!r}: field `{field_name}` names {missing}, "
                f"which its transform does not produce"
            )


def read_element_tables(element: DataElement, url: str, absent: list[str] | None = None) -> dict[str, pl.DataFrame]:
    """The source tables `extract` reads, from the legacy database at `url`: each whole, except a lookup
    table, of which only the rows the others name are read. An optional table the source does not hold
    is read as an empty one of its declared columns and appended to `absent` when given (legacy_source logs
    it and names it in its metadata)."""
    tables: dict[str, pl.DataFrame] = {}
    for name, columns in element.optional_tables.items():
        if not has_table(url, name):
            tables[name] = pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
            if absent is not None:
                absent.append(name)
    for name in element.source_tables:
        if name not in element.lookup_tables and name not in tables:
            tables[name] = read_table(url, name)
    for name, naming in element.lookup_tables.items():
        if name in tables:
            continue
        keys: set[str] = set()
        for naming_table, columns in naming.items():
            frame = tables[naming_table]
            by_lower = {column.lower(): column for column in frame.columns}
            for column in (by_lower[c.lower()] for c in columns if c.lower() in by_lower):
                keys.update(frame.get_column(column).drop_nulls().cast(pl.String).unique().to_list())
        tables[name] = read_rows_with(url, name, element.source_tables[name], keys)
    return tables


class ContractError(ValueError):
    """An element whose declared contract does not hold."""


class FrameModel(pa.DataFrameModel):
    """Checks every resource row passes, whatever its type."""

    source_key: str = pa.Field(str_length={"min_value": 1})
    identifier_system: str = pa.Field(str_matches=r"^(https?://|urn:)\S+$")
    identifier_value: str = pa.Field(str_matches=r"^\S(.*\S)?$")
    resource: str = pa.Field(str_startswith="{")

    class Config:
        strict = False


DATE = r"^\d{4}(-\d{2}(-\d{2})?)?$"
CONDITIONAL_REFERENCE = r"^[A-Z][A-Za-z]+\?identifier=\S+\|\S+$"


# The rules apply alike to an eager frame and to a lazy one (an element's transform).
Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def quarantine(frame: Frame, rule: str, condition: pl.Expr, reason: pl.Expr | str) -> Frame:
    """Mark rows matching `condition` with `rule` and `reason`, keeping the first rule a row broke."""
    reason_expr = reason if isinstance(reason, pl.Expr) else pl.lit(reason)
    # The condition as a column of its own: used by both expressions below, polars would evaluate
    # it twice (an invalid-date test over a million rows cost 0.17 s each time).
    hit = pl.col("_quarantine_hit")
    return (
        frame.with_columns(_quarantine_hit=condition.fill_null(False) & pl.col("quarantine_rule").is_null())
        .with_columns(
            quarantine_rule=pl.when(hit).then(pl.lit(rule)).otherwise(pl.col("quarantine_rule")),
            quarantine_reason=pl.when(hit).then(reason_expr).otherwise(pl.col("quarantine_reason")),
        )
        .drop("_quarantine_hit")
    )


def build_frame(element: DataElement, source: pl.DataFrame | pl.LazyFrame, system: SourceSystem) -> pl.DataFrame:
    """The element's FHIR frame with every shared rule applied: keys present and unique, pandera
    schema per resource type, content hashes. Nothing is dropped: refused rows are quarantined.

    (frame_parts.py builds the same frame slice by slice for large elements: `apply_row_rules` per
    slice, `apply_frame_rules` once over the slices' key columns.)"""
    frame = apply_row_rules(element, transformed(element, in_chunks(source), system), system)
    ruled = apply_frame_rules(element, frame.select(RULED_BY_FRAME_INPUTS))
    frame = frame.with_columns(ruled.select(RULED_BY_FRAME_OUTPUTS))
    return frame.select(*FRAME_COLUMNS, *[name for name in frame.columns if name not in FRAME_COLUMNS])


# Rows per chunk of a source frame. polars' in-memory engine spreads an expression over a column's chunks,
# one core each: a source gathered into one chunk (a join's output, as most extracts are) ran the mapping,
# the rules and the hash on one core.
CHUNK_ROWS: Final = 50_000


def in_chunks(source: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The source rows as a lazy frame whose columns hold at most CHUNK_ROWS rows a chunk (zero-copy slices,
    same rows in the same order)."""
    if isinstance(source, pl.LazyFrame) or source.height <= CHUNK_ROWS:
        return source.lazy()
    slices = [source.slice(start, CHUNK_ROWS) for start in range(0, source.height, CHUNK_ROWS)]
    return pl.concat(slices, rechunk=False).lazy()


def transformed(element: DataElement, rows: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    """The element's transform of `rows`, given the system with the element's provenance (`running`)."""
    return element.transform(rows, system.running(element))


def apply_row_rules(element: DataElement, frame: pl.DataFrame | pl.LazyFrame, system: SourceSystem) -> pl.DataFrame:
    """The shared rules that look at one row at a time (a missing key, a control character, the
    pandera schema), the resource's provenance (`meta.source`) and the row's content hash: the same
    whether the frame is whole or a slice.

    Given the element's transform as a LazyFrame, the mapping, these rules and the hash run as one
    polars query (on POLARS_ENGINE), which spreads them over every core."""
    frame = frame.lazy()
    frame = quarantine(
        frame,
        "missing_key",
        pl.col("identifier_value").is_null() | (pl.col("identifier_value").str.strip_chars() == ""),
        pl.format("{} has no source key", pl.col("source_table")),
    )
    # Bad-input tests: a control character in any text value was sent and refused by Medplum (400
    # "Invalid string format"; in a transactional element the whole bundle group failed with it).
    # FHIR strings may not hold them, and stripping would alter the record: quarantine instead.
    code = control_character(pl.col("resource"))
    frame = quarantine(
        frame,
        "control_character",
        code.is_not_null(),
        pl.format("a text value holds control character U+{}, which FHIR strings may not contain", code),
    )
    # Provenance goes in before the hash: the hash covers exactly what is sent, so an unchanged
    # reload sends nothing, and a new mapping version (a new meta.source) sends every row once.
    frame = provenance_added(frame, system.provenance(element.name, element.mapping_version))
    hashed = frame.with_columns(content_hash=content_digest(pl.col("resource"))).collect(engine=POLARS_ENGINE)
    check_frame_columns(element, hashed.columns)
    return _quarantine_schema_failures(hashed, element.schemas)


def with_provenance(resource: pl.Expr, source: str) -> pl.Expr:
    """The resource JSON with `"meta":{"source":...}` as its first member. Element mappings write no
    meta (Medplum keeps a written meta.source and meta.tag and adds its own versionId and lastUpdated), or
    write this one as they write the resource (`provenance_added`)."""
    # The first `{` replaced, one copy of each resource: a test, a concatenation and a choice between two
    # columns cost 0.21 CPU s per million OMOP Patients (0.09 seed EHR Patients) against 0.11 (0.055); an
    # anchored regular expression, 0.16 (0.11). A resource opens with `{`; a text that does not is no
    # resource and pandera quarantines it (FrameModel.resource), whatever this did to it.
    return resource.str.replace("{", provenance_opening(source), literal=True, n=1).alias("resource")


# A frame column `frame_columns` adds where the mapping wrote the resources' meta.source itself (`FhirText`):
# true on those rows, null on others (a frame of two kinds of rows). Read and dropped by `apply_row_rules`.
PROVENANCE_WRITTEN: Final = "provenance_written"


def provenance_added(frame: Frame, source: str) -> Frame:
    """The frame's resources with their provenance (`with_provenance`); those whose mapping wrote it already
    (PROVENANCE_WRITTEN) as written, not copied again: 0.2 CPU s per million OMOP Patients."""
    if PROVENANCE_WRITTEN not in frame.collect_schema():
        return frame.with_columns(with_provenance(pl.col("resource"), source))
    rows = pl.struct(pl.col("resource"), pl.col(PROVENANCE_WRITTEN))
    opened = rows.map_batches(partial(_open_unwritten, source), return_dtype=pl.String, is_elementwise=True)
    return frame.with_columns(opened.alias("resource")).drop(PROVENANCE_WRITTEN)


def _open_unwritten(source: str, rows: pl.Series) -> pl.Series:
    resources, written = rows.struct.field("resource"), rows.struct.field(PROVENANCE_WRITTEN).fill_null(False)
    if written.all():
        return resources
    opened = pl.select(with_provenance(pl.lit(resources), source)).to_series()
    return resources.zip_with(written, opened)


# The engine an element's lazy transform runs on. Not the streaming one: in polars 2.1 it panicked on
# the bad-input encounters ("assertion failed: i < self.len()"), depending on how the input was chunked.
POLARS_ENGINE: Final = "in-memory"


# What the whole-frame rules read, and what they decide.
RULED_BY_FRAME_INPUTS = (
    "source_table",
    "source_key",
    "resource_type",
    "identifier_value",
    "bundle_group",
    "quarantine_rule",
    "quarantine_reason",
)
RULED_BY_FRAME_OUTPUTS = ("unit_key", "quarantine_rule", "quarantine_reason")


def apply_frame_rules(element: DataElement, keys: pl.DataFrame) -> pl.DataFrame:
    """The shared rules that need every row of the element at once, over its key columns only
    (RULED_BY_FRAME_INPUTS, in source order): unique keys, whole transactions, and the unit key of
    each row. Returns the same rows with RULED_BY_FRAME_OUTPUTS decided."""
    # Memory matters here (millions of rows): each test first looks at one column, then compares the
    # whole key only among the few rows that share a value.
    duplicated = pl.lit(_repeated(keys, "identifier_value", ("resource_type", "identifier_value")))
    keys = quarantine(
        keys, "duplicate_key", duplicated, pl.format("source key {} appears more than once", pl.col("identifier_value"))
    )
    if element.transactional:
        keys = _quarantine_whole_groups(keys)
    position = pl.int_range(pl.len()).over("source_table") + 1
    unit_key = (
        pl.when(pl.col("source_key").is_null() | pl.lit(_repeated(keys, "source_key", ("source_table", "source_key"))))
        .then(pl.format("{}#row{}", pl.col("source_key").fill_null("<missing>"), position))
        .otherwise(pl.col("source_key"))
    )
    return keys.with_columns(unit_key=unit_key)


def _repeated(frame: pl.DataFrame, column: str, key: tuple[str, ...]) -> pl.Series:
    """True for the rows whose `key` (which includes `column`) appears more than once, `column` not null."""
    repeated = pl.Series(column, dtype=pl.Boolean).extend_constant(False, frame.height)
    values = frame[column]
    # Counting distinct hashes of the values costs a tenth of finding the repeated values, and usually
    # finds none: distinct hashes mean distinct values (a collision only sends us the exact way).
    if values.hash().n_unique() == values.len() - max(values.null_count() - 1, 0):
        return repeated
    candidates = (
        frame.select(key).with_row_index("_row").filter(pl.col(column).is_not_null() & pl.col(column).is_duplicated())
    )
    rows = candidates.filter(pl.struct(key).is_duplicated())["_row"]
    return repeated.scatter(rows, True) if len(rows) else repeated


# A control character other than tab, line feed and carriage return, as the JSON text writes it:
# `\u0000`-`\u001f` (tab, LF and CR are written `\t` `\n` `\r`), `\b` or `\f`. An even run of
# backslashes before it is escaped backslashes, i.e. literal text, and does not count.
_CONTROL_ESCAPE = r"(?:^|[^\\])(?:\\\\)*\\(u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])|[bf])"


def control_character(resource: pl.Expr) -> pl.Expr:
    """The first control character FHIR forbids found in a resource's JSON text, as four hex digits
    (`0007`); null when there is none."""
    return resource.map_batches(_control_characters, return_dtype=pl.String, is_elementwise=True)


def _control_characters(texts: pl.Series) -> pl.Series:
    # The full expression costs about 2 s per million resources; a search for the escapes it needs
    # (a backslash before u00, b or f) is a tenth of that, so only the rows holding one pay for it.
    maybe = texts.str.contains(r"\\(?:u00|b|f)").fill_null(False)
    found = pl.Series(texts.name, dtype=pl.String).extend_constant(None, len(texts))
    if not maybe.any():
        return found
    escape = texts.filter(maybe).str.extract(_CONTROL_ESCAPE, 1)
    codes = pl.select(
        pl.when(pl.lit(escape) == "b")
        .then(pl.lit("0008"))
        .when(pl.lit(escape) == "f")
        .then(pl.lit("000C"))
        .otherwise(pl.lit(escape).str.slice(1).str.to_uppercase())
    ).to_series()
    return found.scatter(maybe.arg_true(), codes)


def schema_failures(frame: pl.DataFrame, schemas: Mapping[str, type[pa.DataFrameModel]]) -> pl.DataFrame:
    """Pandera's failure cases for the rows not already quarantined, with the source key of each."""
    failures: list[pl.DataFrame] = []
    indexed = frame.with_row_index("_row")
    for resource_type, model in schemas.items():
        rows = indexed.filter((pl.col("resource_type") == resource_type) & pl.col("quarantine_rule").is_null())
        try:
            model.validate(rows, lazy=True)
        except pa.errors.SchemaErrors as errors:
            cases = errors.failure_cases.filter(pl.col("index").is_not_null())
            failures.append(
                cases.select(
                    _row=rows["_row"].gather(cases["index"].cast(pl.UInt32)),
                    resource_type=pl.lit(resource_type),
                    column=pl.col("column"),
                    check=pl.col("check"),
                    failure_case=pl.col("failure_case").cast(pl.String),
                )
            )
    if not failures:
        return pl.DataFrame(
            schema={
                "_row": pl.UInt32,
                "resource_type": pl.String,
                "column": pl.String,
                "check": pl.String,
                "failure_case": pl.String,
            }
        )
    return pl.concat(failures, how="vertical")


def _quarantine_schema_failures(frame: pl.DataFrame, schemas: Mapping[str, type[pa.DataFrameModel]]) -> pl.DataFrame:
    failures = schema_failures(frame, schemas)
    if failures.is_empty():
        return frame
    # One reason per row, naming every rule it broke; the failing value is left out on purpose (it
    # may be patient data) and stays in the source table.
    per_row = failures.group_by("_row").agg(
        reason=pl.format("{} failed {}", pl.col("column"), pl.col("check")).unique().sort().str.join("; ")
    )
    marked = frame.with_row_index("_row").join(per_row, on="_row", how="left")
    return quarantine(marked, "schema", pl.col("reason").is_not_null(), pl.col("reason")).drop("_row", "reason")


def _quarantine_whole_groups(frame: pl.DataFrame) -> pl.DataFrame:
    """A transaction is all or nothing: when one row of a bundle group is quarantined, so is the rest."""
    first_problems = (
        frame.filter(pl.col("quarantine_rule").is_not_null() & pl.col("bundle_group").is_not_null())
        .group_by("bundle_group", maintain_order=True)
        .agg(
            _first_problem=pl.format(
                "{} {} was quarantined ({})", pl.col("resource_type"), pl.col("source_key"), pl.col("quarantine_rule")
            ).first()
        )
    )
    marked = frame.join(first_problems, on="bundle_group", how="left", maintain_order="left")
    return quarantine(
        marked, "group_quarantined", pl.col("_first_problem").is_not_null(), pl.col("_first_problem")
    ).drop("_first_problem")


def content_digest(text: pl.Expr) -> pl.Expr:
    """The hex XXH3-128 digest of each text, as XXH3 writes it (big-endian, 32 hex digits): the content hash
    that decides what is sent again. polars' own hash may change between releases and this one must not, so
    the polars-hash plugin, held to the xxhash library's digest by a test. Only our own output is compared
    with our own output, so a 128-bit hash suffices: 0.08 CPU s per million OMOP Patients (728 MB), where
    SHA-256 takes 0.57, a third of their whole transform."""
    return (
        polars_hash.NonCryptographicHashingNameSpace(text)
        .xxh3_128(return_binary=True, byte_order="big")
        .bin.encode("hex")
    )


def frame_columns(
    resource_type: str,
    identifier_system: str,
    key: pl.Expr,
    resource: pl.Expr | FhirText,
    *,
    references: list[pl.Expr] | None = None,
    bundle_group: pl.Expr | None = None,
    full_url: pl.Expr | None = None,
) -> list[pl.Expr]:
    """The FRAME_COLUMNS of a resource row whose source key is also its identifier value. `resource` is a
    struct (written as FHIR JSON by `fhir_json`) or JSON text already (`FhirText`)."""
    return [
        pl.col("source_table"),
        key.alias("source_key"),
        pl.lit(resource_type).alias("resource_type"),
        pl.lit(identifier_system).alias("identifier_system"),
        key.alias("identifier_value"),
        (bundle_group if bundle_group is not None else key).alias("bundle_group"),
        (full_url if full_url is not None else pl.lit(None, pl.String)).alias("full_url"),
        reference_list(references or []).alias("references"),
        (resource.json if isinstance(resource, FhirText) else fhir_json(resource)).alias("resource"),
        pl.lit(None, pl.String).alias("content_hash"),
        pl.lit(None, pl.String).alias("quarantine_rule"),
        pl.lit(None, pl.String).alias("quarantine_reason"),
        *([pl.lit(True).alias(PROVENANCE_WRITTEN)] if isinstance(resource, FhirText) and resource.meta_source else []),
    ]


def reference_list(references: list[pl.Expr]) -> pl.Expr:
    """The row's expected references (REFERENCE_DTYPE structs) as a list, without the null ones."""
    if not references:
        return pl.lit([], dtype=pl.List(REFERENCE_DTYPE))
    if len(references) == 1:
        return pl.concat_list(references).list.filter(pl.element().is_not_null())
    # polars' concat_list of several struct columns costs about 7 µs a row; going through a long
    # frame (one row per reference, then grouped back) costs a twentieth of that.
    fields = [reference.alias(f"r{number}") for number, reference in enumerate(references)]
    return pl.struct(fields).map_batches(
        _long_reference_list, return_dtype=pl.List(REFERENCE_DTYPE), is_elementwise=True
    )


def _long_reference_list(rows: pl.Series) -> pl.Series:
    wide = rows.struct.unnest().with_row_index("_row")
    lists = (
        wide.unpivot(index="_row", value_name="reference")
        .drop_nulls("reference")
        .sort("_row", maintain_order=True)
        .group_by("_row", maintain_order=True)
        .agg(pl.col("reference"))
    )
    every_row = wide.select("_row").join(lists, on="_row", how="left", maintain_order="left")
    return every_row["reference"].fill_null(pl.lit([], dtype=pl.List(REFERENCE_DTYPE))).alias(rows.name)


def stable_urn_uuid(system: str, key: pl.Expr) -> pl.Expr:
    """A `urn:uuid:` full URL derived from an identifier (UUID version 5 of `system|key` in the URL
    namespace), the same on every run so the content hash of the resources that point at it does not
    change."""
    return key.map_batches(partial(_uuid5_urns, f"{system}|"), return_dtype=pl.String, is_elementwise=True)


def _uuid5_urns(prefix: str, keys: pl.Series) -> pl.Series:
    # uuid.uuid5 itself costs about 7 µs a key; the same digest, its version and variant bits set
    # by hand, costs a fifth of that.
    seeded = hashlib.sha1(uuid.NAMESPACE_URL.bytes + prefix.encode())
    urns: list[str | None] = []
    for key in keys:
        if key is None:
            urns.append(None)
            continue
        digest = seeded.copy()
        digest.update(key.encode())
        x = digest.hexdigest()
        variant = "89ab"[int(x[16], 16) & 3]
        urns.append(f"urn:uuid:{x[:8]}-{x[8:12]}-5{x[13:16]}-{variant}{x[17:20]}-{x[20:32]}")
    return pl.Series(keys.name, urns, dtype=pl.String)


def invalid_date(column: str) -> pl.Expr:
    """True where a source date is present but not a real FHIR date (YYYY, YYYY-MM or YYYY-MM-DD).

    Partial dates are kept with their precision; 1980-02-30 or 1980-13 are refused, never coerced.
    """
    text = pl.col(column).str.strip_chars()
    # Well formed, a year is real and a year-month is real when its month is 01-12; only a full date needs
    # a calendar. (Padding partial dates to full ones for the parser copied every date: 0.29 CPU s per
    # million against 0.17.)
    length = text.str.len_bytes()
    real = (
        (length == 4)
        | ((length == 7) & text.str.slice(5).is_between(pl.lit("01"), pl.lit("12")))
        | text.str.to_date("%Y-%m-%d", strict=False).is_not_null()
    )
    return text.is_not_null() & ~(text.str.contains(DATE) & real)


def future_date(column: str, today: pl.Expr | None = None) -> pl.Expr:
    """True where a (well-formed) source date lies after today."""
    return pl.col(column).str.slice(0, 10) > (today if today is not None else pl.lit(datetime.date.today().isoformat()))


def expected_reference(path: str, resource_type: str, system: str, key: pl.Expr) -> pl.Expr:
    """Which resource a reference must resolve to, by identifier, for the integrity checks."""
    return pl.struct(
        pl.lit(path).alias("path"),
        pl.lit(resource_type).alias("resource_type"),
        pl.lit(system).alias("identifier_system"),
        key.alias("identifier_value"),
    )


def key_flags(parent: pl.DataFrame, key: str, flag: str) -> pl.DataFrame:
    """The distinct keys of a parent table, each with `flag` = True, to left-join onto child rows."""
    return parent.select(key).unique().with_columns(pl.lit(True).alias(flag))


def quarantine_orphans(frame: Frame, key: str, table: str, flag: str, required: bool = True) -> Frame:
    """Quarantine rows whose `key` names no row of `table` in the source (`flag` false or null); a
    missing key is an orphan too when the reference is required."""
    missing = pl.col(key).is_null()
    orphan = ~pl.col(flag).fill_null(False) & (~missing | pl.lit(required))
    reason = (
        pl.when(missing)
        .then(pl.lit(f"{key} is missing"))
        .otherwise(pl.format(f"{key} {{}} is not in the {table} table", pl.col(key)))
    )
    return quarantine(frame, "orphan_reference", orphan, reason)
