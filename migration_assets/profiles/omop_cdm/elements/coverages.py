"""PAYER_PLAN_PERIOD to Coverage: the person as beneficiary over the period, the payer as payor (a logical
reference by the payer's source value: OMOP holds no payer organizations) and its kind (SOPT) as type, the
plan as a `plan` class, the sponsor as policyHolder and the family's identifier as subscriberId."""

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
    "payer_source_value": "payor: a logical reference (identifier under <base>/identifier/payer) displaying the payer "
    "as the source names it",
    "payer_concept_id": "type from CONCEPT: the kind of payer, a SOPT code under https://nahdo.org/sopt (the source "
    "value kept locally)",
    "plan_source_value": "class plan: value the plan's source value, name the plan concept's name",
    "payer_plan_period_end_date": "period.end; none while the coverage runs",
    "sponsor_source_value": "policyHolder: a logical reference (identifier under <base>/identifier/sponsor) displaying "
    "the sponsor, who finances the plan (R4: the party who owns the policy, e.g. the subscriber's employer)",
    "sponsor_concept_id": "policyHolder.display where no sponsor_source_value names the sponsor: the concept's "
    "name, the kind of sponsor (concept 0 names none); the sample names every sponsor, so its probe sees no change",
    "family_source_value": "subscriberId: the identifier every person of one policy shares (OMOP: often the common "
    "digits of their enrollment ids), which is R4's subscriber id (a member id is subscriberId and dependent)",
}
STOP_REASON = (
    "R4 Coverage has no element for why a coverage ended (status is the record's state, not the enrollment's), nor "
    "has R5, so no cross-version extension carries it, and the profile invents none: period.end says when it ended"
)
UNSUPPORTED = {
    "stop_reason_concept_id": STOP_REASON,
    "stop_reason_source_value": STOP_REASON,
    "stop_reason_source_concept_id": STOP_REASON,
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    persons = key_flags(table(tables, "person"), "person_id", "person_in_source")
    rows = table(tables, "payer_plan_period").join(persons, on="person_id", how="left", maintain_order="left")
    rows = with_concept(rows, tables, "payer_concept_id", "code")
    rows = with_concept(rows, tables, "sponsor_concept_id", "sponsor")
    return with_concept(rows, tables, "plan_concept_id", "plan").with_columns(source_table=pl.lit("payer_plan_period"))


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    coverage_system = system.identifier_system("payer-plan-period")
    rows = source.with_columns(
        start=day("payer_plan_period_start_date"),
        end=day("payer_plan_period_end_date"),
        payer=text(pl.col("payer_source_value")),
        plan=text(pl.col("plan_source_value")),
        sponsor=text(pl.col("sponsor_source_value")),
    )
    # The payer type (SOPT) is the Coverage's type; the payor is the payer the source names.
    payor = logical_reference(system, "payer", pl.col("payer"), pl.col("payer"))
    # Concept 0 ("No matching concept") names no sponsor.
    sponsor_kind = pl.when(pl.col("sponsor_concept_id").fill_null("0") != "0").then(text(pl.col("sponsor_name")))
    policy_holder = logical_reference(
        system, "sponsor", pl.col("sponsor"), pl.coalesce(pl.col("sponsor"), sponsor_kind)
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
        policy_holder.alias("policyHolder"),
        text(pl.col("family_source_value")).alias("subscriberId"),
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


def logical_reference(system: SourceSystem, kind: str, value: pl.Expr, display: pl.Expr) -> pl.Expr:
    """A Reference by identifier (`<base>/identifier/<kind>`, when `value` is given) and display: OMOP knows payers
    and sponsors by name only, as no resource of their own; null when neither is given."""
    by_identifier = pl.when(value.is_not_null()).then(
        pl.struct(pl.lit(system.identifier_system(kind)).alias("system"), value.alias("value"))
    )
    return pl.when(value.is_not_null() | display.is_not_null()).then(
        pl.struct(by_identifier.alias("identifier"), display.alias("display"))
    )


class CoverageFrame(FrameModel):
    code_mapped: bool = pa.Field()


SOURCE_TABLES = {
    "payer_plan_period": "payer_plan_period_id",
    "person": "person_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="coverages",
    description="OMOP PAYER_PLAN_PERIOD to FHIR Coverage: beneficiary, period, payor, type, plan, sponsor and family.",
    mapping_version="1.1.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("payer_plan_period", "payer_concept_id", "plan_concept_id", "sponsor_concept_id"),
    requires=("persons",),
    extract=extract,
    transform=transform,
    schemas={"Coverage": CoverageFrame},
    patient_column="person_id",
    review_flags={"code_mapped": False},
)
