"""PAYER_PLAN_PERIOD to Coverage: the person as beneficiary over the period, the payer as payor (a logical
reference by the payer's source value: OMOP holds no payer organizations), the plan as a `plan` class."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    DataElement,
    FrameModel,
    SourceSystem,
    frame_columns,
    invalid_date,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import ends_before_start, period, text
from migration_assets.elements.fhir_json import codeable_concept, coding, identifier, reference, without_nulls
from migration_assets.profiles.omop_cdm.omop import (
    concept,
    concept_mapped,
    concepts_named_by,
    day,
    expected_patient,
    optional_among,
    patient_reference,
    table,
    with_concept,
)

COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
REGISTER_NOTES = {
    "payer_source_value": "payor: a logical reference (identifier under <base>/identifier/payer) with the payer's name",
    "payer_concept_id": "type from CONCEPT, and the payor's display when the concept maps",
    "plan_source_value": "class plan: value the plan's source value, name the plan concept's name",
    "payer_plan_period_end_date": "period.end; none while the coverage runs",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    persons = key_flags(table(tables, "person"), "person_id", "person_in_source")
    rows = table(tables, "payer_plan_period").join(persons, on="person_id", how="left", maintain_order="left")
    rows = with_concept(rows, tables, "payer_concept_id", "code")
    return with_concept(rows, tables, "plan_concept_id", "plan").with_columns(source_table=pl.lit("payer_plan_period"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    coverage_system = system.identifier_system("payer-plan-period")
    rows = source.with_columns(
        start=day("payer_plan_period_start_date"),
        end=day("payer_plan_period_end_date"),
        payer=text(pl.col("payer_source_value")),
        payer_name=pl.coalesce(text(pl.col("code_name")), text(pl.col("payer_source_value"))),
        plan=text(pl.col("plan_source_value")),
    )
    payor = pl.struct(
        pl.struct(pl.lit(system.identifier_system("payer")).alias("system"), pl.col("payer").alias("value")).alias(
            "identifier"
        ),
        pl.col("payer_name").alias("display"),
    )
    plan_class = pl.struct(
        codeable_concept(coding(COVERAGE_CLASS, pl.lit("plan"))).alias("type"),
        pl.col("plan").alias("value"),
        text(pl.col("plan_name")).alias("name"),
    )
    resource = pl.struct(
        pl.lit("Coverage").alias("resourceType"),
        identifier(coverage_system, pl.col("payer_plan_period_id")).alias("identifier"),
        pl.lit("active").alias("status"),
        concept(system, "payer_concept_id", "code", "payer_source_value").alias("type"),
        reference(patient_reference(system)).alias("beneficiary"),
        period(pl.col("start"), pl.col("end")).alias("period"),
        pl.concat_list(payor).alias("payor"),
        pl.when(pl.col("plan").is_not_null()).then(pl.concat_list(plan_class)).alias("class"),
    )
    frame = rows.select(
        *frame_columns(
            "Coverage",
            coverage_system,
            pl.col("payer_plan_period_id"),
            resource,
            references=[expected_patient(system, "beneficiary")],
        ),
        "person_id",
        "person_in_source",
        "payer",
        "start",
        "end",
        code_mapped=concept_mapped("payer_concept_id", "code"),
    )
    frame = frame.with_columns(without_nulls(pl.col("references")))
    frame = quarantine_orphans(frame, "person_id", "person", "person_in_source")
    # Coverage.payor is required: a period naming no payer is not sent with an invented one.
    frame = quarantine(frame, "missing_value", pl.col("payer").is_null(), "payer_source_value is empty")
    frame = quarantine(frame, "missing_value", pl.col("start").is_null(), "payer_plan_period_start_date is empty")
    frame = quarantine(frame, "invalid_date", invalid_date("start"), "payer_plan_period_start_date is not a real date")
    frame = quarantine(
        frame,
        "ends_before_start",
        ends_before_start(pl.col("start"), pl.col("end")),
        "payer_plan_period_end_date lies before payer_plan_period_start_date",
    )
    return frame.drop("person_in_source", "payer")


class CoverageFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "payer_plan_period": "payer_plan_period_id",
    "person": "person_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="coverages",
    description="OMOP PAYER_PLAN_PERIOD to FHIR Coverage: beneficiary, period, payor and plan from the source values.",
    mapping_version="1.0.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("payer_plan_period", "payer_concept_id", "plan_concept_id"),
    requires=("persons",),
    extract=extract,
    transform=transform,
    schemas={"Coverage": CoverageFrame},
    patient_column="person_id",
    review_flags={"code_mapped": False},
)
