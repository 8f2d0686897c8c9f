"""PERSON (and DEATH) to Patient.

- gender from gender_concept_id (8507 male, 8532 female, 8551 unknown, 8521 other); concept 0 or any
  other leaves gender absent (never guessed from the source value).
- birthDate from birth_datetime's date, else year/month/day at the precision given (a year alone stays a year).
- US Core race and ethnicity extensions from race_concept_id / ethnicity_concept_id (OMB codes).
- DEATH.death_date as deceasedDateTime (a date).
- identifier: person_id under the profile's `person` system, and person_source_value (the legacy MRN).
"""

import json
from collections.abc import Mapping
from typing import Any

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    DATE,
    DataElement,
    FrameModel,
    SourceSystem,
    frame_columns,
    future_date,
    invalid_date,
    quarantine,
)
from migration_assets.elements.builders import per_distinct, text
from migration_assets.elements.fhir_json import FhirText, json_member, json_resource_of, json_string
from migration_assets.profiles.omop_cdm.omop import day, optional_among, table
from migration_assets.profiles.omop_cdm.terminology import lookup, read_map

REGISTER_NOTES = {
    "gender_concept_id": "terminology/genders.csv (8507 male, 8532 female, ...); concept 0 or any other: no gender",
    "year_of_birth": "birthDate at the precision given: year, year-month or full date",
    "birth_datetime": "its date part, preferred over year/month/day",
    "race_concept_id": "US Core race extension, OMB category from terminology/races.csv",
    "ethnicity_concept_id": "US Core ethnicity extension, OMB category from terminology/ethnicities.csv",
    "death_date": "deceasedDateTime (a date)",
}
GENDER = lookup("genders", "concept_id", "gender")
# The same codes as the Patient's gender member, looked up whole rather than written row by row.
GENDER_MEMBER = {concept: f',"gender":{json.dumps(gender)}' for concept, gender in GENDER.items()}
OMB = "urn:oid:2.16.840.1.113883.6.238"
# OMOP Race / Ethnicity concepts -> (OMB code, display)
RACE = {concept: (code, display) for concept, code, display in read_map("races").iter_rows()}
ETHNICITY = {concept: (code, display) for concept, code, display in read_map("ethnicities").iter_rows()}
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    deaths = table(tables, "death").unique("person_id", keep="first").select("person_id", "death_date")
    return (
        table(tables, "person")
        .join(deaths, on="person_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("person"))
    )


def _omb_extension(kind: str, category: tuple[str, str] | None) -> list[dict[str, Any]]:
    """The US Core race or ethnicity extension of one OMB category (none for an unknown concept)."""
    if category is None:
        return []
    code, display = category
    return [
        {
            "url": f"{US_CORE}/us-core-{kind}",
            "extension": [
                {"url": "ombCategory", "valueCoding": {"system": OMB, "code": code, "display": display}},
                {"url": "text", "valueString": display},
            ],
        }
    ]


def _extensions() -> dict[str, str | None]:
    """The extension member of every race and ethnicity pair (`race|ethnicity`, an unknown one ""), as JSON
    text `,"extension":[...]`: written once and looked up per row (building and encoding the nested lists
    per row cost about 40 µs a person; a lookup keeps the rows' chunks, over which polars spreads the work,
    where a join gathered them into one)."""
    lists = {
        f"{race}|{ethnicity}": _omb_extension("race", RACE.get(race))
        + _omb_extension("ethnicity", ETHNICITY.get(ethnicity))
        for race in [*RACE, ""]
        for ethnicity in [*ETHNICITY, ""]
    }
    return {
        key: ',"extension":' + json.dumps(value, separators=(",", ":"), ensure_ascii=False) if value else None
        for key, value in lists.items()
    }


EXTENSIONS = _extensions()


def _known(column: str, concepts: Mapping[str, Any]) -> pl.Expr:
    """The concept when the map knows it, else ""."""
    return pl.when(pl.col(column).is_in(list(concepts)).fill_null(False)).then(pl.col(column)).otherwise(pl.lit(""))


def _two(column: str) -> pl.Expr:
    return text(pl.col(column)).str.zfill(2)


DATE_COLUMNS = ("birth_datetime", "year_of_birth", "month_of_birth", "day_of_birth", "death_date")


def _dates(people: pl.LazyFrame) -> pl.LazyFrame:
    """The birth date and the death date of each person, their JSON members and their date rules' verdicts."""
    # year, year-month or year-month-day: a part is written only when the parts before it are there.
    day_part = pl.concat_str(pl.lit("-"), _two("day_of_birth")).fill_null("")
    month_part = pl.concat_str(pl.lit("-"), _two("month_of_birth"), day_part).fill_null("")
    parts = pl.concat_str(text(pl.col("year_of_birth")), month_part)
    return people.with_columns(
        birth_date=pl.coalesce(day("birth_datetime"), parts), deceased=day("death_date")
    ).with_columns(
        birth_member=json_member("birthDate", json_string(pl.col("birth_date"))),
        birth_invalid=invalid_date("birth_date"),
        birth_future=future_date("birth_date"),
        deceased_member=json_member("deceasedDateTime", json_string(pl.col("deceased"))),
        deceased_invalid=invalid_date("deceased"),
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    pair = pl.concat_str(_known("race_concept_id", RACE), pl.lit("|"), _known("ethnicity_concept_id", ETHNICITY))
    frame = source.with_columns(
        extension_member=pair.replace_strict(EXTENSIONS, default=None, return_dtype=pl.String),
        # Written once per distinct birth and death (8,400 among the benchmark's million persons, tens of
        # thousands among real ones): 0.28 CPU s per million against 0.65 row by row.
        dates=per_distinct(DATE_COLUMNS, _dates),
        fhir_gender=pl.col("gender_concept_id").replace_strict(GENDER, default=None, return_dtype=pl.String),
    ).unnest("dates")
    person_system = system.identifier_system("person")
    source_value = text(pl.col("person_source_value"))
    # Written as JSON text member by member: a Patient with two identifiers and nested extensions, encoded
    # as a struct and cleaned of its absent members, cost about 25 µs a person. The members shared by many
    # rows (extensions, gender) are looked up whole, their names with them.
    resource = json_resource_of(
        "Patient",
        pl.concat_str(
            # The systems are the same on every row: written once into the literal around the values.
            pl.lit(f',"identifier":[{{"system":{json.dumps(person_system)},"value":'),
            json_string(pl.col("person_id")),
            pl.concat_str(
                pl.lit(f'}},{{"system":{json.dumps(system.identifier_system("person-source-value"))},"value":'),
                json_string(source_value),
            ).fill_null(""),
            pl.lit("}]"),
        ),
        pl.col("extension_member"),
        pl.col("gender_concept_id").replace_strict(GENDER_MEMBER, default=None, return_dtype=pl.String),
        pl.col("birth_member"),
        pl.col("deceased_member"),
        meta_source=system.mapping_source,
    )
    frame = frame.select(
        frame_columns("Patient", person_system, pl.col("person_id"), FhirText(resource, system.mapping_source)),
        gender=pl.col("fhir_gender"),
        birth_date=pl.col("birth_date"),
        deceased=pl.col("deceased"),
        birth_invalid=pl.col("birth_invalid"),
        birth_future=pl.col("birth_future"),
        deceased_invalid=pl.col("deceased_invalid"),
    )
    frame = quarantine(frame, "invalid_date", pl.col("birth_invalid"), "birth date is not a real date")
    frame = quarantine(frame, "future_date", pl.col("birth_future"), "birth date lies in the future")
    frame = quarantine(frame, "invalid_date", pl.col("deceased_invalid"), "death_date is not a real date")
    return frame.drop("birth_invalid", "birth_future", "deceased_invalid")


class PatientFrame(FrameModel):
    gender: str = pa.Field(isin=sorted(set(GENDER.values())), nullable=True)
    birth_date: str = pa.Field(str_matches=DATE, nullable=True)
    deceased: str = pa.Field(str_matches=DATE, nullable=True)


SOURCE_TABLES = {"person": "person_id", "death": "person_id"}

ELEMENT = DataElement(
    name="persons",
    description="OMOP PERSON (with DEATH) to FHIR Patient with US Core race and ethnicity, keyed by person_id.",
    mapping_version="1.0.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    requires=(),
    extract=extract,
    transform=transform,
    schemas={"Patient": PatientFrame},
    patient_column="identifier_value",
)
