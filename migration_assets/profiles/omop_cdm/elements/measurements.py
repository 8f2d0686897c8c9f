"""MEASUREMENT to Observation (and observations.py reuses it for the OBSERVATION table).

- code from measurement_concept_id (LOINC mostly), the source value kept as a local coding.
- value_as_number -> valueQuantity written exactly as given, comparator from operator_concept_id; the
  unit is the UCUM concept_code of unit_concept_id (system and code UCUM), else unit_source_value as
  text only (never converted or guessed).
- value_as_concept_id -> valueCodeableConcept (e.g. LOINC answer Positive / Negative).
- OBSERVATION's value_as_string -> valueString.
- no value at all (ordered, never resulted, as exports have) -> dataAbsentReason `unknown`: the chart
  shows the test was recorded without a result instead of hiding it.
- range_low / range_high -> referenceRange in the value's unit.
- status final; category laboratory for CONCEPT class "Lab Test"; effectiveDateTime the date.
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import DataElement, FrameModel, SourceSystem, frame_columns, quarantine
from migration_assets.elements.builders import data_absent_reason, decimal, embed_decimals, is_decimal, text
from migration_assets.elements.fhir_json import codeable_concept, coding, identifier, reference, without_nulls
from migration_assets.elements.terminology import UCUM
from migration_assets.profiles.omop_cdm.omop import (
    EVENT_REVIEW_FLAGS,
    VISIT_DETAIL_NOTE,
    concept,
    concept_mapped,
    concepts_named_by,
    day,
    encounter_reference,
    event_rows,
    event_rules,
    expected_encounter,
    expected_patient,
    optional_among,
    patient_reference,
    table,
    visit_detail_columns,
    with_concept,
)
from migration_assets.profiles.omop_cdm.terminology import lookup

REGISTER_NOTES = {
    "value_as_number": "valueQuantity, the number as given",
    "unit_concept_id": "UCUM concept_code as unit, system and code; else unit_source_value as unit text only",
    "value_as_concept_id": "valueCodeableConcept from CONCEPT when there is no number",
    "range_low": "referenceRange.low in the value's unit",
    "range_high": "referenceRange.high in the value's unit",
    "visit_detail_id": VISIT_DETAIL_NOTE,
}
# OMOP Meas Value Operator concepts -> FHIR Quantity comparator ("=" is no comparator).
OPERATORS = lookup("value_operators", "concept_id", "comparator")
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def observation_rows(tables: Mapping[str, pl.DataFrame], name: str, concept_column: str) -> pl.DataFrame:
    rows = event_rows(tables, name, concept_column)
    rows = with_concept(rows, tables, "value_as_concept_id", "value")
    rows = with_concept(rows, tables, "unit_concept_id", "unit")
    classes = (
        table(tables, "concept")
        .unique("concept_id")
        .select(pl.col("concept_id").alias(concept_column), code_class=pl.col("concept_class_id"))
    )
    return rows.join(classes, on=concept_column, how="left", maintain_order="left")


def observation_transform(
    source: pl.LazyFrame,
    system: SourceSystem,
    *,
    id_column: str,
    concept_column: str,
    date_column: str,
    source_column: str,
) -> pl.LazyFrame:
    for column in ("operator_concept_id", "range_low", "range_high", "value_as_string", "unit_source_value"):
        if column not in source.collect_schema().names():
            source = source.with_columns(pl.lit(None, pl.String).alias(column))
    ucum_unit = (pl.col("unit_vocabulary") == "UCUM") & (pl.col("unit_concept_id").fill_null("0") != "0")
    rows = source.with_columns(
        effective=day(date_column),
        number=text(pl.col("value_as_number")),
        unit_text=pl.coalesce(pl.when(ucum_unit).then(pl.col("unit_code")), text(pl.col("unit_source_value"))),
        unit_ucum=pl.when(ucum_unit).then(pl.col("unit_code")),
        value_concept=(pl.col("value_as_concept_id").fill_null("0") != "0") & pl.col("value_code").is_not_null(),
    )

    def quantity(number: pl.Expr, comparator: pl.Expr | None = None) -> pl.Expr:
        fields = [decimal(number).alias("value")]
        if comparator is not None:
            fields.append(comparator.alias("comparator"))
        fields += [
            pl.col("unit_text").alias("unit"),
            pl.when(pl.col("unit_ucum").is_not_null()).then(pl.lit(UCUM)).alias("system"),
            pl.col("unit_ucum").alias("code"),
        ]
        return pl.when(is_decimal(number)).then(pl.struct(fields))

    has_number = is_decimal(pl.col("number"))
    has_string = text(pl.col("value_as_string")).is_not_null()
    observation_system = system.identifier_system(id_column.removesuffix("_id").replace("_", "-"))
    resource = pl.struct(
        pl.lit("Observation").alias("resourceType"),
        identifier(observation_system, pl.col(id_column)).alias("identifier"),
        pl.lit("final").alias("status"),
        pl.when(pl.col("code_class") == "Lab Test")
        .then(pl.concat_list(codeable_concept(coding(CATEGORY, pl.lit("laboratory"), pl.lit("Laboratory")))))
        .alias("category"),
        concept(system, concept_column, "code", source_column).alias("code"),
        reference(patient_reference(system)).alias("subject"),
        reference(encounter_reference(system)).alias("encounter"),
        pl.col("effective").alias("effectiveDateTime"),
        quantity(
            pl.col("number"),
            pl.col("operator_concept_id").replace_strict(OPERATORS, default=None, return_dtype=pl.String),
        ).alias("valueQuantity"),
        pl.when(~has_number & pl.col("value_concept"))
        .then(concept(system, "value_as_concept_id", "value", None))
        .alias("valueCodeableConcept"),
        pl.when(~has_number & ~pl.col("value_concept")).then(text(pl.col("value_as_string"))).alias("valueString"),
        pl.when(~has_number & ~pl.col("value_concept") & ~has_string)
        .then(data_absent_reason("unknown"))
        .alias("dataAbsentReason"),
        pl.concat_list(
            pl.struct(
                quantity(text(pl.col("range_low"))).alias("low"), quantity(text(pl.col("range_high"))).alias("high")
            )
        ).alias("referenceRange"),
    )
    frame = rows.select(
        *frame_columns(
            "Observation",
            observation_system,
            pl.col(id_column),
            resource,
            references=[expected_patient(system), expected_encounter(system)],
        ),
        "person_id",
        "visit_occurrence_id",
        "visit_person_id",
        "person_in_source",
        "effective",
        *visit_detail_columns(),
        code_mapped=concept_mapped(concept_column, "code"),
        bad_number=pl.col("number").is_not_null() & ~has_number,
    )
    frame = frame.with_columns(without_nulls(pl.col("references")), embed_decimals(pl.col("resource")))
    frame = event_rules(frame, "effective")
    frame = quarantine(frame, "non_numeric_value", pl.col("bad_number"), "value_as_number is not a number")
    return frame.drop("bad_number")


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    return observation_rows(tables, "measurement", "measurement_concept_id")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    return observation_transform(
        source,
        system,
        id_column="measurement_id",
        concept_column="measurement_concept_id",
        date_column="measurement_date",
        source_column="measurement_source_value",
    )


class ObservationFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "measurement": "measurement_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="measurements",
    description="OMOP MEASUREMENT to FHIR Observation (valueQuantity with UCUM, coded values, reference ranges).",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("measurement", "measurement_concept_id", "value_as_concept_id", "unit_concept_id"),
    requires=("persons", "visits", "visit_details"),
    extract=extract,
    transform=transform,
    schemas={"Observation": ObservationFrame},
    patient_column="person_id",
    review_flags=EVENT_REVIEW_FLAGS,
)
