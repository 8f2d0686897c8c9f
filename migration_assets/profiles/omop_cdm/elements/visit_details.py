"""VISIT_DETAIL to Encounter: a part of a visit (a stay in a ward, a transfer, a consultation within the
stay) is an Encounter `partOf` its VISIT_OCCURRENCE's Encounter, with class, type, period, subject,
participant, serviceProvider and hospitalization (admitted from, discharged to) as the visit's own
Encounter has them (elements/visits.py). The events that name a detail reference this Encounter
(omop.encounter_reference)."""

from collections.abc import Mapping

import polars as pl

from migration_assets.elements.base import DataElement, SourceSystem, quarantine
from migration_assets.profiles.omop_cdm.elements.visits import (
    HOSPITALIZATION_NOTES,
    PLACE_CONCEPTS,
    EncounterFrame,
    encounter_rows,
    encounters,
)
from migration_assets.profiles.omop_cdm.omop import (
    concepts_named_by,
    optional_among,
    table,
    visit_reference,
)

REGISTER_NOTES = {
    "visit_detail_concept_id": "Encounter.class (v3 ActCode) by terminology/visit_classes.csv, as for a visit",
    "visit_occurrence_id": "partOf: the Encounter of the visit the detail is part of",
    "provider_id": "participant individual when present (a detail with no provider has no participant)",
    "care_site_id": "serviceProvider Organization",
    **HOSPITALIZATION_NOTES,
}
UNSUPPORTED = {
    "preceding_visit_detail_id": "R4 Encounter has no place for the encounter before this one (partOf and the "
    "associatedEncounter extension say one encounter lies within another, not after it); the details' periods "
    "give their order",
    "parent_visit_detail_id": "partOf holds the visit's Encounter and R4 allows one; the parent detail's Encounter "
    "instead would be one of this element's own, which the same load may not have written yet",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    visits = (
        table(tables, "visit_occurrence")
        .unique("visit_occurrence_id", keep="first")
        .select("visit_occurrence_id", visit_person_id=pl.col("person_id"))
    )
    details = table(tables, "visit_detail").join(visits, on="visit_occurrence_id", how="left", maintain_order="left")
    return encounter_rows(tables, details, "visit_detail", "visit_detail_concept_id")


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    frame = encounters(
        source, system, "visit_detail", "visit_detail_id", "visit-detail", part_of=visit_reference(system)
    )
    # CDM 5.4 requires visit_occurrence_id (an unknown one is an orphan by the event rules): a detail of no
    # visit is not sent as an Encounter part of nothing.
    return quarantine(frame, "missing_value", pl.col("visit_occurrence_id").is_null(), "visit_occurrence_id is empty")


SOURCE_TABLES = {
    "visit_detail": "visit_detail_id",
    "person": "person_id",
    "visit_occurrence": "visit_occurrence_id",
    "provider": "provider_id",
    "care_site": "care_site_id",
    "concept": "concept_id",
}

ELEMENT = DataElement(
    name="visit_details",
    description="OMOP VISIT_DETAIL to FHIR Encounter, partOf its visit's Encounter.",
    mapping_version="1.2.0",
    source_tables=SOURCE_TABLES,
    optional_tables=optional_among(SOURCE_TABLES),
    lookup_tables=concepts_named_by("visit_detail", "visit_detail_concept_id", *PLACE_CONCEPTS),
    requires=("persons", "providers", "care_sites", "visits"),
    extract=extract,
    transform=transform,
    schemas={"Encounter": EncounterFrame},
    patient_column="person_id",
)
