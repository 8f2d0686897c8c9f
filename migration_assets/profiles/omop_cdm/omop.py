"""What every OMOP element shares: codes from CONCEPT, the person, visit and visit detail a row names, and
the quarantine rules for them. The vocabulary-to-system map is data (terminology/), not guessed."""

from collections.abc import Mapping

import polars as pl

from migration_assets.elements.base import (
    SourceSystem,
    expected_reference,
    future_date,
    invalid_date,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import text
from migration_assets.elements.fhir_json import codeable_concept, coding, conditional_reference
from migration_assets.profiles.omop_cdm.sample_data import COLUMNS
from migration_assets.profiles.omop_cdm.terminology import lookup

# OMOP vocabulary_id -> FHIR code system URI (terminology/vocabulary_systems.csv). A vocabulary not listed
# (Visit, Type Concept, RxNorm Extension, ...) has no FHIR system: its rows keep their source value under
# the profile's local code system and count as unmapped.
VOCABULARY_SYSTEMS = lookup("vocabulary_systems", "vocabulary_id", "system")
CONCEPT_KEY = "concept_id"


# The CDM tables an export may leave out: the health system (LOCATION, CARE_SITE, PROVIDER), DEATH, the
# clinical tables a source often does not fill (NOTE, SPECIMEN, VISIT_DETAIL, DEVICE_EXPOSURE) and
# PAYER_PLAN_PERIOD. PERSON, VISIT_OCCURRENCE, the other event tables and CONCEPT are required: a missing
# one is an error naming it.
OPTIONAL_TABLES = (
    "location",
    "care_site",
    "provider",
    "death",
    "note",
    "specimen",
    "visit_detail",
    "device_exposure",
    "payer_plan_period",
)


def optional_among(source_tables: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """The element's `optional_tables`: those of its tables the CDM lets an export leave out, each read as an
    empty table of its CDM 5.4 columns when absent."""
    return {name: tuple(COLUMNS[name]) for name in source_tables if name in OPTIONAL_TABLES}


def lower_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """OHDSI tools export column names in upper or lower case: the profile reads them in lower case."""
    return frame.rename({name: name.lower() for name in frame.columns if name != name.lower()})


def table(tables: Mapping[str, pl.DataFrame], name: str) -> pl.DataFrame:
    """A source table, column names in lower case, every value as text (a CSV export and a typed
    database read the same way)."""
    frame = lower_columns(tables[name])
    return frame.with_columns(pl.all().cast(pl.String))


def with_concept(frame: pl.DataFrame, tables: Mapping[str, pl.DataFrame], id_column: str, prefix: str) -> pl.DataFrame:
    """`frame` with the CONCEPT row of `id_column`: `<prefix>_vocabulary`, `_code`, `_name`."""
    concepts = (
        table(tables, "concept")
        .unique(CONCEPT_KEY, keep="first")
        .select(
            pl.col(CONCEPT_KEY).alias(id_column),
            pl.col("vocabulary_id").alias(f"{prefix}_vocabulary"),
            pl.col("concept_code").alias(f"{prefix}_code"),
            pl.col("concept_name").alias(f"{prefix}_name"),
        )
    )
    return frame.join(concepts, on=id_column, how="left", maintain_order="left")


def concepts_named_by(table_name: str, *columns: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """The element's `lookup_tables`: of CONCEPT (millions of rows in a real vocabulary), only the concepts
    `columns` of `table_name` name are read."""
    return {"concept": {table_name: columns}}


def concept_mapped(id_column: str, prefix: str) -> pl.Expr:
    """True where the concept is a real one (not 0) of a vocabulary with a FHIR system."""
    return (
        (pl.col(id_column).fill_null("0") != "0")
        & pl.col(f"{prefix}_code").is_not_null()
        & pl.col(f"{prefix}_vocabulary").is_in(list(VOCABULARY_SYSTEMS))
    ).fill_null(False)


def concept(system: SourceSystem, id_column: str, prefix: str, source_column: str | None) -> pl.Expr:
    """A CodeableConcept: the standard coding where the concept maps (vocabulary system, concept_code,
    concept_name), and the row's source value under the local system `omop-source-value` always."""
    mapped = concept_mapped(id_column, prefix)
    uri = pl.col(f"{prefix}_vocabulary").replace_strict(VOCABULARY_SYSTEMS, default=None, return_dtype=pl.String)
    codings = [coding(uri, pl.when(mapped).then(pl.col(f"{prefix}_code")), pl.col(f"{prefix}_name"))]
    label = text(pl.col(f"{prefix}_name"))
    if source_column is not None:
        codings.append(coding(system.code_system("omop-source-value"), text(pl.col(source_column))))
        label = pl.coalesce(pl.when(mapped).then(label), text(pl.col(source_column)), label)
    return codeable_concept(*codings, text=label)


def patient_reference(system: SourceSystem) -> pl.Expr:
    return conditional_reference("Patient", system.identifier_system("person"), pl.col("person_id"))


def expected_patient(system: SourceSystem, path: str = "subject") -> pl.Expr:
    return expected_reference(path, "Patient", system.identifier_system("person"), pl.col("person_id"))


def visit_reference(system: SourceSystem) -> pl.Expr:
    """The Encounter of the row's VISIT_OCCURRENCE."""
    return conditional_reference("Encounter", system.identifier_system("visit"), pl.col("visit_occurrence_id"))


def expected_visit(system: SourceSystem, path: str) -> pl.Expr:
    return pl.when(pl.col("visit_occurrence_id").is_not_null()).then(
        expected_reference(path, "Encounter", system.identifier_system("visit"), pl.col("visit_occurrence_id"))
    )


def names_visit_detail() -> pl.Expr:
    """True where an event's encounter is its visit detail's: it names one and the export holds visit details.
    An export with no VISIT_DETAIL rows (the table absent or empty: the two read alike) cannot hold the
    detail's Encounter, so the row falls back to its visit's Encounter and is flagged `visit_detail_dropped`."""
    return pl.col("visit_detail_id").is_not_null() & pl.col("visit_details_in_source")


def visit_detail_dropped() -> pl.Expr:
    """The review flag of an event that names a visit detail the export does not carry (no VISIT_DETAIL)."""
    return pl.col("visit_detail_id").is_not_null() & ~pl.col("visit_details_in_source")


def encounter_reference(system: SourceSystem) -> pl.Expr:
    """An event's Encounter: its visit detail's when it names one (elements/visit_details.py), else its visit's."""
    detail = conditional_reference("Encounter", system.identifier_system("visit-detail"), pl.col("visit_detail_id"))
    return pl.when(names_visit_detail()).then(detail).otherwise(visit_reference(system))


def expected_encounter(system: SourceSystem, path: str = "encounter") -> pl.Expr:
    detail = expected_reference(path, "Encounter", system.identifier_system("visit-detail"), pl.col("visit_detail_id"))
    return pl.when(names_visit_detail()).then(detail).otherwise(expected_visit(system, path))


# What the visit detail rules read beside `visit_detail_id`: each event's transform selects them
# (`visit_detail_columns`) and `event_rules` drops them once it has run.
VISIT_DETAIL_RULE_COLUMNS = ("detail_in_source", "detail_person_id", "detail_visit_id", "visit_details_in_source")
# Every event element's review flags: an unmapped code, and a visit detail the export does not carry.
EVENT_REVIEW_FLAGS = {"code_mapped": False, "visit_detail_dropped": True}
VISIT_DETAIL_NOTE = (
    "the encounter is the visit detail's Encounter when the row names one (else the visit's); without VISIT_DETAIL "
    "rows the visit's, flagged visit_detail_dropped"
)


def visit_detail_columns() -> list[pl.Expr]:
    """The visit detail columns an event's frame carries to its rules, and its `visit_detail_dropped` flag."""
    return [
        pl.col("visit_detail_id"),
        *(pl.col(name) for name in VISIT_DETAIL_RULE_COLUMNS),
        visit_detail_dropped().alias("visit_detail_dropped"),
    ]


def event_rows(tables: Mapping[str, pl.DataFrame], name: str, concept_column: str) -> pl.DataFrame:
    """A clinical event table with its person, visit and visit detail known or not, and its concept."""
    persons = key_flags(table(tables, "person"), "person_id", "person_in_source")
    visits = (
        table(tables, "visit_occurrence")
        .unique("visit_occurrence_id", keep="first")
        .select("visit_occurrence_id", visit_person_id=pl.col("person_id"))
    )
    details = (
        table(tables, "visit_detail")
        .unique("visit_detail_id", keep="first")
        .select(
            "visit_detail_id",
            detail_in_source=pl.lit(True),
            detail_person_id=pl.col("person_id"),
            detail_visit_id=pl.col("visit_occurrence_id"),
        )
    )
    rows = (
        table(tables, name)
        .join(persons, on="person_id", how="left", maintain_order="left")
        .join(visits, on="visit_occurrence_id", how="left", maintain_order="left")
        .join(details, on="visit_detail_id", how="left", maintain_order="left")
        .with_columns(visit_details_in_source=pl.lit(not details.is_empty()))
    )
    return with_concept(rows, tables, concept_column, "code").with_columns(source_table=pl.lit(name))


def person_and_visit_rules(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The row's person exists, and its visit, when named, exists and is the person's."""
    frame = quarantine_orphans(frame, "person_id", "person", "person_in_source")
    frame = quarantine(
        frame,
        "orphan_reference",
        pl.col("visit_occurrence_id").is_not_null() & pl.col("visit_person_id").is_null(),
        pl.format("visit_occurrence_id {} is not in the visit_occurrence table", pl.col("visit_occurrence_id")),
    )
    return quarantine(
        frame,
        "mismatched_reference",
        pl.col("visit_person_id") != pl.col("person_id"),
        pl.format("visit_occurrence_id {} belongs to another person", pl.col("visit_occurrence_id")),
    )


def visit_detail_rules(frame: pl.LazyFrame) -> pl.LazyFrame:
    """An event's visit detail, when named and the export holds VISIT_DETAIL, exists, is the person's and is
    part of the event's visit (when the event names one)."""
    named = names_visit_detail()
    frame = quarantine(
        frame,
        "orphan_reference",
        named & ~pl.col("detail_in_source").fill_null(False),
        pl.format("visit_detail_id {} is not in the visit_detail table", pl.col("visit_detail_id")),
    )
    frame = quarantine(
        frame,
        "mismatched_reference",
        named & (pl.col("detail_person_id") != pl.col("person_id")),
        pl.format("visit_detail_id {} belongs to another person", pl.col("visit_detail_id")),
    )
    return quarantine(
        frame,
        "mismatched_reference",
        named
        & pl.col("visit_occurrence_id").is_not_null()
        & pl.col("detail_visit_id").ne_missing(pl.col("visit_occurrence_id")),
        pl.format(
            "visit_detail_id {} is not part of visit_occurrence_id {}",
            pl.col("visit_detail_id"),
            pl.col("visit_occurrence_id"),
        ),
    )


def date_rules(frame: pl.LazyFrame, date_column: str) -> pl.LazyFrame:
    """The row's date is given, real and not in the future."""
    frame = quarantine(frame, "missing_value", pl.col(date_column).is_null(), f"{date_column} is empty")
    frame = quarantine(frame, "invalid_date", invalid_date(date_column), f"{date_column} is not a real date")
    return quarantine(frame, "future_date", future_date(date_column), f"{date_column} lies in the future")


def event_rules(frame: pl.LazyFrame, date_column: str) -> pl.LazyFrame:
    """The rules of every clinical event: its person, visit and visit detail exist and agree, its date is real.
    The columns only these rules read are dropped once they have run."""
    ruled = date_rules(visit_detail_rules(person_and_visit_rules(frame)), date_column)
    return ruled.drop("visit_person_id", "person_in_source", *VISIT_DETAIL_RULE_COLUMNS)


def day(column: str) -> pl.Expr:
    """An OMOP date as a FHIR date (the date part of a datetime text; day precision kept as such)."""
    return text(pl.col(column)).str.slice(0, 10)
