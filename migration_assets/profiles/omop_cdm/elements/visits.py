"""VISIT_OCCURRENCE to Encounter: class from visit_concept_id (v3 ActCode: inpatient IMP, outpatient
AMB, emergency EMER, ...; any other concept: AMB is not assumed, the row is quarantined as unknown_code),
type from the visit concept, period from the start/end dates, subject, participant (the provider, when
the visit names one), serviceProvider (the care site), hospitalization.admitSource and
dischargeDisposition from admitted_from and discharged_to (CONCEPT, the source value kept locally)."""

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
from migration_assets.elements.builders import ends_before_start, period, text
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
    date_rules,
    day,
    expected_patient,
    expected_visit,
    optional_among,
    patient_reference,
    person_and_visit_rules,
    table,
    with_concept,
)
from migration_assets.profiles.omop_cdm.terminology import read_map

# Where a visit (or a visit detail) came from and went to: CONCEPT with the source value kept locally. A CMS
# Place of Service concept is coded under its THO system (terminology/vocabulary_systems.csv); a Visit concept
# (OMOP's own vocabulary) has none and keeps only the local coding.
HOSPITALIZATION_NOTES = {
    "admitted_from_concept_id": "hospitalization.admitSource from CONCEPT: a CMS Place of Service code under its "
    "THO system (the source value kept locally)",
    "admitted_from_source_value": "hospitalization.admitSource: the local coding and text",
    "discharged_to_concept_id": "hospitalization.dischargeDisposition from CONCEPT: a CMS Place of Service code "
    "under its THO system (the source value kept locally)",
    "discharged_to_source_value": "hospitalization.dischargeDisposition: the local coding and text",
}
REGISTER_NOTES = {
    "visit_concept_id": "Encounter.class (v3 ActCode) by terminology/visit_classes.csv; an unlisted one is quarantined",
    "provider_id": "participant individual when present (a visit with no provider has no participant)",
    "care_site_id": "serviceProvider Organization",
    **HOSPITALIZATION_NOTES,
}
# Where the patient came from and went to: `<place>_concept_id` and `<place>_source_value` of a visit row.
PLACES = ("admitted_from", "discharged_to")
PLACE_CONCEPTS = tuple(f"{where}_concept_id" for where in PLACES)
UNSUPPORTED = {
    "preceding_visit_occurrence_id": "R4 Encounter has no place for the visit before this one (partOf and the "
    "associatedEncounter extension say one encounter lies within another, not after it); the visits' periods "
    "give their order",
}
VISIT_CLASS = {concept: (code, display) for concept, _name, code, display in read_map("visit_classes").iter_rows()}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    # A visit is its own visit: the shared event rules then hold trivially for it.
    visits = table(tables, "visit_occurrence").with_columns(visit_person_id=pl.col("person_id"))
    return encounter_rows(tables, visits, "visit_occurrence", "visit_concept_id")


def encounter_rows(
    tables: Mapping[str, pl.DataFrame], rows: pl.DataFrame, table_name: str, concept_column: str
) -> pl.DataFrame:
    """Visit rows (VISIT_OCCURRENCE or VISIT_DETAIL) with their person, provider and care site known or not,
    and their visit concept."""
    persons = key_flags(table(tables, "person"), "person_id", "person_in_source")
    providers = key_flags(table(tables, "provider"), "provider_id", "provider_in_source")
    sites = key_flags(table(tables, "care_site"), "care_site_id", "care_site_in_source")
    rows = (
        rows.join(persons, on="person_id", how="left", maintain_order="left")
        .join(providers, on="provider_id", how="left", maintain_order="left")
        .join(sites, on="care_site_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit(table_name))
    )
    for where in PLACES:
        rows = with_concept(rows, tables, f"{where}_concept_id", where)
    return with_concept(rows, tables, concept_column, "code")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    return encounters(source, system, "visit", "visit_occurrence_id", "visit", part_of=None)


def encounters(
    source: pl.LazyFrame, system: SourceSystem, prefix: str, key: str, kind: str, part_of: pl.Expr | None
) -> pl.LazyFrame:
    """Encounters of visit rows whose columns start with `prefix` (`<prefix>_concept_id`, `_start_date`, ...),
    keyed by `key` under the identifier system `kind`; `part_of`: the Encounter reference of the visit the
    row is part of (None for a visit)."""
    own_system = system.identifier_system(kind)
    provider_system = system.identifier_system("provider")
    site_system = system.identifier_system("care-site")
    concept_column = f"{prefix}_concept_id"
    class_code = pl.col(concept_column).replace_strict(
        {k: v[0] for k, v in VISIT_CLASS.items()}, default=None, return_dtype=pl.String
    )
    class_display = pl.col(concept_column).replace_strict(
        {k: v[1] for k, v in VISIT_CLASS.items()}, default=None, return_dtype=pl.String
    )
    rows = source.with_columns(
        start=day(f"{prefix}_start_date"),
        end=day(f"{prefix}_end_date"),
        class_code=class_code,
        class_display=class_display,
    )
    fields = [
        pl.lit("Encounter").alias("resourceType"),
        identifier(own_system, pl.col(key)).alias("identifier"),
        pl.lit("finished").alias("status"),
        coding(V3_ACT_CODE, pl.col("class_code"), pl.col("class_display")).alias("class"),
        pl.concat_list(concept(system, concept_column, "code", f"{prefix}_source_value")).alias("type"),
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
        pl.when(place_given("admitted_from") | place_given("discharged_to"))
        .then(
            pl.struct(
                place_concept(system, "admitted_from").alias("admitSource"),
                place_concept(system, "discharged_to").alias("dischargeDisposition"),
            )
        )
        .alias("hospitalization"),
    ]
    references = [
        expected_patient(system),
        pl.when(pl.col("provider_id").is_not_null()).then(
            expected_reference("participant.0.individual", "Practitioner", provider_system, pl.col("provider_id"))
        ),
        pl.when(pl.col("care_site_id").is_not_null()).then(
            expected_reference("serviceProvider", "Organization", site_system, pl.col("care_site_id"))
        ),
    ]
    if part_of is not None:
        fields.append(reference(part_of).alias("partOf"))
        references.append(expected_visit(system, "partOf"))
    frame = rows.select(
        *frame_columns("Encounter", own_system, pl.col(key), pl.struct(*fields), references=references),
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
        concept_column,
        class_code=pl.col("class_code"),
        code_mapped=concept_mapped(concept_column, "code"),
    )
    frame = frame.with_columns(without_nulls(pl.col("references")))
    frame = date_rules(person_and_visit_rules(frame), "start")
    frame = quarantine_orphans(frame, "provider_id", "provider", "provider_in_source", required=False)
    frame = quarantine_orphans(frame, "care_site_id", "care_site", "care_site_in_source", required=False)
    frame = quarantine(
        frame,
        "unknown_code",
        pl.col("class_code").is_null(),
        pl.format(f"{concept_column} {{}} has no encounter class", pl.col(concept_column)),
    )
    frame = quarantine(
        frame,
        "ends_before_start",
        ends_before_start(pl.col("start"), pl.col("end")),
        f"{prefix}_end_date lies before {prefix}_start_date",
    )
    return frame.drop("visit_person_id", "person_in_source", "provider_in_source", "care_site_in_source")


def place_given(prefix: str) -> pl.Expr:
    """True where the row says where the patient came from (`admitted_from`) or went to (`discharged_to`):
    its source value or a concept CONCEPT holds."""
    return (
        text(pl.col(f"{prefix}_source_value")).is_not_null()
        | pl.col(f"{prefix}_name").is_not_null()
        | pl.col(f"{prefix}_code").is_not_null()
    )


def place_concept(system: SourceSystem, prefix: str) -> pl.Expr:
    """The CodeableConcept of `<prefix>_concept_id` and its source value; null where neither is given (an
    empty hospitalization is left out whole rather than cleaned member by member)."""
    return pl.when(place_given(prefix)).then(concept(system, f"{prefix}_concept_id", prefix, f"{prefix}_source_value"))


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
    mapping_version="1.2.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("visit_occurrence", "visit_concept_id", *PLACE_CONCEPTS),
    requires=("persons", "providers", "care_sites"),
    extract=extract,
    transform=transform,
    schemas={"Encounter": EncounterFrame},
    patient_column="person_id",
)
