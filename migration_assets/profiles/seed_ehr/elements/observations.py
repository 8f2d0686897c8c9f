"""Vital signs and lab results: legacy `observations` to FHIR Observation.

Rules:
- status is `final` (the legacy table holds resulted values only); category `vital` / `lab` becomes
  vital-signs / laboratory (observation-category); anything else is quarantined.
- code: the local test code is always kept as a coding in the local code system; a LOINC coding is
  added only where terminology/loinc.csv maps the local code (`code_mapped`).
- value: a number, optionally with a comparator (`<0.5`), becomes valueQuantity with the number
  written exactly as given ("7.20" stays 7.20, never 7.2 or 7.200000001) and the unit text as given.
  The unit's UCUM system and code are added only when the legacy unit is itself a UCUM code listed in
  terminology/ucum_units.csv ("mm[Hg]" yes, "mmHg" no): a unit is never converted or guessed.
- Non-numeric values ("hemolyzed", "QNS", "see comment") are quarantined (rule non_numeric_value),
  not written as valueString: every test in the legacy catalogue is quantitative, so such a text is a
  specimen or workflow remark, not a result, and a `final` Observation carrying it would put a
  non-result into the chart. They stay in the source for a person to resolve.
- referenceRange low / high as quantities in the value's unit, when present.
- effectiveDateTime keeps its precision: a date (YYYY, YYYY-MM, YYYY-MM-DD) as a date, a date-time
  as given with seconds and UTC offset. A time without an offset is quarantined (FHIR requires an
  offset and we do not guess the clinic's time zone), and so is an impossible or future date.
- subject, and the encounter when the row has an encounter_id: an unknown encounter is an orphan
  reference, an encounter of another patient a mismatched reference; both are quarantined.
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    CONDITIONAL_REFERENCE,
    DataElement,
    FrameModel,
    SourceSystem,
    expected_reference,
    frame_columns,
    future_date,
    invalid_date,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import embed_decimals, quantity
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    reference,
    without_nulls,
)
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import LOINC, read_map

CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
CATEGORIES = {"vital": ("vital-signs", "Vital Signs"), "lab": ("laboratory", "Laboratory")}
# A JSON number as FHIR accepts it, optionally after a comparator.
NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?"
QUANTITY = rf"^(<=|>=|<|>)?\s*({NUMBER})$"
DATE_TIME = r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|[+-](0\d|1[0-4]):[0-5]\d)$"
EFFECTIVE = r"^\d{4}(-\d{2}(-\d{2})?)?$|" + DATE_TIME[1:]

REGISTER_NOTES = {
    "category": "vital -> vital-signs, lab -> laboratory (observation-category); anything else quarantined",
    "test_code": "local coding always; LOINC coding added only where terminology/loinc.csv maps it",
    "value": "number (with optional comparator) written exactly as given; non-numeric quarantined",
    "unit": "kept as given; UCUM system and code only when it is a UCUM code in terminology/ucum_units.csv",
    "observed_at": "date or date-time with UTC offset, kept at its precision; time without offset quarantined",
    "encounter_id": "encounter reference when present; unknown encounter or another patient's quarantined",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    encounters = (
        tables["encounters"]
        .select("encounter_id", encounter_patient_id=pl.col("patient_id"))
        .unique("encounter_id", keep="first")
    )
    return (
        tables["observations"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .join(encounters, on="encounter_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("observations"))
    )


def _number(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().str.extract(QUANTITY, 2)


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    loinc = (
        read_map("loinc").lazy().rename({"local_code": "test_code", "code": "loinc_code", "display": "loinc_display"})
    )
    ucum = read_map("ucum_units")
    patient_system = system.identifier_system("patient")
    encounter_system = system.identifier_system("encounter")
    observation_system = system.identifier_system("observation")
    legacy_category = pl.col("category").str.strip_chars().str.to_lowercase()
    rows = source.with_columns(
        observed_at=pl.col("observed_at").str.strip_chars(),
        value_number=_number("value"),
        comparator=pl.col("value").str.strip_chars().str.extract(QUANTITY, 1),
        low_number=_number("reference_low"),
        high_number=_number("reference_high"),
        category_code=legacy_category.replace_strict(
            {k: v[0] for k, v in CATEGORIES.items()}, default=None, return_dtype=pl.String
        ),
        category_display=legacy_category.replace_strict(
            {k: v[1] for k, v in CATEGORIES.items()}, default=None, return_dtype=pl.String
        ),
        subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        encounter_reference=conditional_reference("Encounter", encounter_system, pl.col("encounter_id")),
    ).join(loinc, on="test_code", how="left", maintain_order="left")
    resource = pl.struct(
        pl.lit("Observation").alias("resourceType"),
        identifier(observation_system, pl.col("observation_id")).alias("identifier"),
        pl.lit("final").alias("status"),
        pl.concat_list(
            codeable_concept(coding(CATEGORY_SYSTEM, pl.col("category_code"), pl.col("category_display")))
        ).alias("category"),
        codeable_concept(
            coding(system.code_system("observation-test"), pl.col("test_code"), pl.col("test_name")),
            coding(LOINC, pl.col("loinc_code"), pl.col("loinc_display")),
            text=pl.col("test_name"),
        ).alias("code"),
        reference(pl.col("subject_reference")).alias("subject"),
        reference(pl.col("encounter_reference")).alias("encounter"),
        pl.col("observed_at").alias("effectiveDateTime"),
        quantity(pl.col("value_number"), pl.col("unit"), ucum, pl.col("comparator")).alias("valueQuantity"),
        pl.concat_list(
            pl.struct(
                quantity(pl.col("low_number"), pl.col("unit"), ucum).alias("low"),
                quantity(pl.col("high_number"), pl.col("unit"), ucum).alias("high"),
            )
        ).alias("referenceRange"),
    )
    frame = rows.select(
        frame_columns(
            "Observation",
            observation_system,
            pl.col("observation_id"),
            resource,
            references=[
                expected_reference("subject", "Patient", patient_system, pl.col("patient_id")),
                pl.when(pl.col("encounter_id").is_not_null()).then(
                    expected_reference("encounter", "Encounter", encounter_system, pl.col("encounter_id"))
                ),
            ],
        ),
        patient_id=pl.col("patient_id"),
        encounter_id=pl.col("encounter_id"),
        subject_reference=pl.col("subject_reference"),
        encounter_reference=pl.col("encounter_reference"),
        category=pl.col("category_code"),
        effective=pl.col("observed_at"),
        value_number=pl.col("value_number"),
        code_mapped=pl.col("loinc_code").is_not_null(),
        legacy=pl.struct("category", "value", "reference_low", "reference_high", "encounter_patient_id"),
        patient_in_source=pl.col("patient_in_source").fill_null(False),
    )
    frame = frame.with_columns(
        without_nulls(pl.col("references")),
        # Decimals reach the JSON as numbers exactly as given: 7.20 stays 7.20.
        embed_decimals(pl.col("resource")),
    )
    legacy = pl.col("legacy").struct
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine(
        frame,
        "orphan_reference",
        pl.col("encounter_id").is_not_null() & legacy.field("encounter_patient_id").is_null(),
        pl.format("encounter_id {} is not in the encounters table", pl.col("encounter_id")),
    )
    frame = quarantine(
        frame,
        "mismatched_reference",
        legacy.field("encounter_patient_id") != pl.col("patient_id"),
        pl.format("encounter_id {} belongs to another patient", pl.col("encounter_id")),
    )
    frame = quarantine(
        frame,
        "unknown_code",
        pl.col("category").is_null(),
        pl.format("category {} is not vital or lab", legacy.field("category")),
    )
    frame = quarantine(
        frame,
        "missing_value",
        legacy.field("value").is_null() | (legacy.field("value").str.strip_chars() == ""),
        "value is empty",
    )
    frame = quarantine(frame, "non_numeric_value", pl.col("value_number").is_null(), "value is not a number")
    for column in ("reference_low", "reference_high"):
        frame = quarantine(
            frame,
            "non_numeric_value",
            legacy.field(column).is_not_null()
            & legacy.field(column).str.strip_chars().str.extract(QUANTITY, 2).is_null(),
            f"{column} is not a number",
        )
    has_time = pl.col("effective").str.contains("T|:|\\s")
    frame = quarantine(
        frame,
        "invalid_date",
        has_time & ~pl.col("effective").str.contains(DATE_TIME),
        "observed_at has a time but not as YYYY-MM-DDThh:mm:ss with a UTC offset",
    )
    frame = quarantine(
        frame,
        "invalid_date",
        pl.when(has_time).then(_invalid_day("effective")).otherwise(invalid_date("effective")),
        "observed_at is not a real date",
    )
    frame = quarantine(frame, "missing_value", pl.col("effective").is_null(), "observed_at is empty")
    frame = quarantine(frame, "future_date", future_date("effective"), "observed_at lies in the future")
    return frame.drop("legacy", "patient_in_source")


def _invalid_day(column: str) -> pl.Expr:
    return pl.col(column).str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False).is_null()


class ObservationFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    encounter_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE, nullable=True)
    category: str = pa.Field(isin=sorted(code for code, _ in CATEGORIES.values()))
    effective: str = pa.Field(str_matches=EFFECTIVE)
    value_number: str = pa.Field(str_matches=f"^{NUMBER}$")
    code_mapped: bool


ELEMENT = DataElement(
    name="observations",
    description="Vital signs and lab results with local and LOINC codes and their units as given to FHIR Observation.",
    mapping_version="1.0.0",
    source_tables={"observations": "observation_id", "patients": "patient_id", "encounters": "encounter_id"},
    requires=("patients", "encounters"),
    extract=extract,
    transform=transform,
    schemas={"Observation": ObservationFrame},
    patient_column="patient_id",
    review_flags={"code_mapped": False},
    change_column=UPDATED_AT,
)
