"""VISIT_OCCURRENCE to Encounter: class from visit_concept_id (v3 ActCode: inpatient IMP, outpatient
AMB, emergency EMER, ...; any other concept: AMB is not assumed, the row is quarantined as unknown_code),
type from the visit concept, period from the start/end dates, subject, participant (the provider, when
the visit names one), serviceProvider (the care site)."""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    DataElement,
    FrameModel,
    SourceSystem,
    expected_reference,
    frame_columns,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import ends_before_start, period
from migration_assets.elements.fhir_json import (
    coding,
    conditional_reference,
    identifier,
    reference,
    without_nulls,
)
from migration_assets.elements.terminology import V3_ACT_CODE
from migration_assets.profiles.omop_cdm.omop import (
    concept,
    concept_mapped,
    concepts_named_by,
    day,
    event_rules,
    expected_patient,
    optional_among,
    patient_reference,
    table,
    with_concept,
)
from migration_assets.profiles.omop_cdm.terminology import read_map

REGISTER_NOTES = {
    "visit_concept_id": "Encounter.class (v3 ActCode) by terminology/visit_classes.csv; an unlisted one is quarantined",
    "provider_id": "participant individual when present (a visit with no provider has no participant)",
    "care_site_id": "serviceProvider Organization",
}
VISIT_CLASS = {concept: (code, display) for concept, _name, code, display in read_map("visit_classes").iter_rows()}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    visits = table(tables, "visit_occurrence")
    persons = key_flags(table(tables, "person"), "person_id", "person_in_source")
    providers = key_flags(table(tables, "provider"), "provider_id", "provider_in_source")
    sites = key_flags(table(tables, "care_site"), "care_site_id", "care_site_in_source")
    rows = (
        visits.join(persons, on="person_id", how="left", maintain_order="left")
        .join(providers, on="provider_id", how="left", maintain_order="left")
        .join(sites, on="care_site_id", how="left", maintain_order="left")
        # A visit is its own visit: the shared event rules then hold trivially for it.
        .with_columns(visit_person_id=pl.col("person_id"), source_table=pl.lit("visit_occurrence"))
    )
    return with_concept(rows, tables, "visit_concept_id", "code")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    visit_system = system.identifier_system("visit")
    provider_system = system.identifier_system("provider")
    site_system = system.identifier_system("care-site")
    class_code = pl.col("visit_concept_id").replace_strict(
        {k: v[0] for k, v in VISIT_CLASS.items()}, default=None, return_dtype=pl.String
    )
    class_display = pl.col("visit_concept_id").replace_strict(
        {k: v[1] for k, v in VISIT_CLASS.items()}, default=None, return_dtype=pl.String
    )
    rows = source.with_columns(
        start=day("visit_start_date"), end=day("visit_end_date"), class_code=class_code, class_display=class_display
    )
    resource = pl.struct(
        pl.lit("Encounter").alias("resourceType"),
        identifier(visit_system, pl.col("visit_occurrence_id")).alias("identifier"),
        pl.lit("finished").alias("status"),
        coding(V3_ACT_CODE, pl.col("class_code"), pl.col("class_display")).alias("class"),
        pl.concat_list(concept(system, "visit_concept_id", "code", "visit_source_value")).alias("type"),
        reference(patient_reference(system)).alias("subject"),
        pl.concat_list(
            pl.struct(
                reference(conditional_reference("Practitioner", provider_system, pl.col("provider_id"))).alias(
                    "individual"
                )
            )
        ).alias("participant"),
        period(pl.col("start"), pl.col("end")).alias("period"),
        reference(conditional_reference("Organization", site_system, pl.col("care_site_id"))).alias("serviceProvider"),
    )
    frame = rows.select(
        *frame_columns(
            "Encounter",
            visit_system,
            pl.col("visit_occurrence_id"),
            resource,
            references=[
                expected_patient(system),
                pl.when(pl.col("provider_id").is_not_null()).then(
                    expected_reference(
                        "participant.0.individual", "Practitioner", provider_system, pl.col("provider_id")
                    )
                ),
                pl.when(pl.col("care_site_id").is_not_null()).then(
                    expected_reference("serviceProvider", "Organization", site_system, pl.col("care_site_id"))
                ),
            ],
        ),
        "person_id",
        "visit_occurrence_id",
        "visit_person_id",
        "person_in_source",
        "provider_id",
        "provider_in_source",
        "care_site_id",
        "care_site_in_source",
        "start",
        "end",
        "visit_concept_id",
        class_code=pl.col("class_code"),
        code_mapped=concept_mapped("visit_concept_id", "code"),
    )
    frame = frame.with_columns(without_nulls(pl.col("references")))
    frame = event_rules(frame, "start")
    frame = quarantine_orphans(frame, "provider_id", "provider", "provider_in_source", required=False)
    frame = quarantine_orphans(frame, "care_site_id", "care_site", "care_site_in_source", required=False)
    frame = quarantine(
        frame,
        "unknown_code",
        pl.col("class_code").is_null(),
        pl.format("visit_concept_id {} has no encounter class", pl.col("visit_concept_id")),
    )
    frame = quarantine(
        frame,
        "ends_before_start",
        ends_before_start(pl.col("start"), pl.col("end")),
        "visit_end_date lies before visit_start_date",
    )
    return frame.drop("visit_person_id", "person_in_source", "provider_in_source", "care_site_in_source")


class EncounterFrame(FrameModel):
    class_code: str = pa.Field(isin=sorted({code for code, _ in VISIT_CLASS.values()}))
    code_mapped: bool


SOURCE_TABLES = {
    "visit_occurrence": "visit_occurrence_id",
    "person": "person_id",
    "provider": "provider_id",
    "care_site": "care_site_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="visits",
    description="OMOP VISIT_OCCURRENCE to FHIR Encounter (class from visit_concept_id).",
    mapping_version="1.0.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("visit_occurrence", "visit_concept_id"),
    requires=("persons", "providers", "care_sites"),
    extract=extract,
    transform=transform,
    schemas={"Encounter": EncounterFrame},
    patient_column="person_id",
)
