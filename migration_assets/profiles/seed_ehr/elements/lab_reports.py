"""Lab reports: legacy `lab_reports` (one per patient, draw and panel) with `lab_report_results` (the
observations of each report) to FHIR DiagnosticReport, keyed by report_id.

The report groups its Observations through `result` (conditional references on the observations'
identifiers, in the order of the results table). Its code is the local panel code, plus the LOINC panel
where terminology/lab_panels.csv maps it (`code_mapped`). Category LAB (v2-0074), status `final`,
effectiveDateTime the draw date at its precision, performer the laboratory Organization when given.

A result that the observations element quarantines would make the report point at nothing: the report
is quarantined with it (`result_quarantined`) rather than written with a part of its panel missing. So
is a report with no result, a result naming an observation not in the source (orphan), a laboratory not
in organizations, and an impossible or future date.
"""

from collections.abc import Mapping

import pandera.polars as pa
import polars as pl

from migration_assets.elements.base import (
    CONDITIONAL_REFERENCE,
    DATE,
    DataElement,
    FrameModel,
    SourceSystem,
    build_frame,
    expected_reference,
    frame_columns,
    future_date,
    invalid_date,
    key_flags,
    quarantine,
    quarantine_orphans,
)
from migration_assets.elements.builders import text
from migration_assets.elements.fhir_json import (
    codeable_concept,
    coding,
    conditional_reference,
    identifier,
    reference,
)
from migration_assets.profiles.seed_ehr.elements import observations
from migration_assets.profiles.seed_ehr.sample_data import UPDATED_AT
from migration_assets.profiles.seed_ehr.terminology import LOINC, read_map

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
# Quarantine decisions do not depend on the identifier base URI: any system will do to ask for them.
_PROBE = SourceSystem("urn:seed-ehr:probe")

REGISTER_NOTES = {
    "panel_code": "local coding always; LOINC panel added where terminology/lab_panels.csv maps it",
    "collected_date": "effectiveDateTime at its precision; impossible or future date quarantined",
    "lab_id": "performer, conditional reference to the laboratory Organization; not in organizations: quarantined",
    "observation_id": "(lab_report_results) result[n], conditional reference; a quarantined or unknown "
    "observation quarantines the report",
}


def extract(tables: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    known_patients = key_flags(tables["patients"], "patient_id", "patient_in_source")
    known_labs = key_flags(tables["organizations"], "organization_id", "lab_in_source").rename(
        {"organization_id": "lab_id"}
    )
    observed = (
        build_frame(observations.ELEMENT, observations.extract(tables), _PROBE)
        .select(observation_id="source_key", observation_quarantined=pl.col("quarantine_rule").is_not_null())
        .unique("observation_id", keep="first")
    )
    results = (
        tables["lab_report_results"]
        .join(observed, on="observation_id", how="left", maintain_order="left")
        .group_by("report_id", maintain_order=True)
        .agg(
            result_ids=pl.col("observation_id"),
            unknown_result=pl.col("observation_id").filter(pl.col("observation_quarantined").is_null()).first(),
            quarantined_result=pl.col("observation_id")
            .filter(pl.col("observation_quarantined").fill_null(False))
            .first(),
        )
    )
    return (
        tables["lab_reports"]
        .join(known_patients, on="patient_id", how="left", maintain_order="left")
        .join(known_labs, on="lab_id", how="left", maintain_order="left")
        .join(results, on="report_id", how="left", maintain_order="left")
        .with_columns(source_table=pl.lit("lab_reports"))
    )


def transform(source: pl.LazyFrame, system: SourceSystem) -> pl.LazyFrame:
    patient_system = system.identifier_system("patient")
    report_system = system.identifier_system("lab-report")
    observation_system = system.identifier_system("observation")
    organization_system = system.identifier_system("organization")
    panels = (
        read_map("lab_panels")
        .lazy()
        .rename({"local_code": "panel_code", "code": "loinc_code", "display": "loinc_display"})
    )
    rows = source.with_columns(
        panel_code=text(pl.col("panel_code")),
        collected_date=text(pl.col("collected_date")),
        subject_reference=conditional_reference("Patient", patient_system, pl.col("patient_id")),
        lab_reference=conditional_reference("Organization", organization_system, pl.col("lab_id")),
        result_references=pl.col("result_ids").list.eval(
            pl.struct(conditional_reference("Observation", observation_system, pl.element()).alias("reference"))
        ),
    ).join(panels, on="panel_code", how="left", maintain_order="left")
    resource = pl.struct(
        pl.lit("DiagnosticReport").alias("resourceType"),
        identifier(report_system, pl.col("report_id")).alias("identifier"),
        pl.lit("final").alias("status"),
        pl.concat_list(codeable_concept(coding(V2_0074, pl.lit("LAB"), pl.lit("Laboratory")))).alias("category"),
        codeable_concept(
            coding(system.code_system("lab-panel"), pl.col("panel_code"), text(pl.col("panel_name"))),
            coding(LOINC, pl.col("loinc_code"), pl.col("loinc_display")),
            text=text(pl.col("panel_name")),
        ).alias("code"),
        reference(pl.col("subject_reference")).alias("subject"),
        pl.col("collected_date").alias("effectiveDateTime"),
        pl.when(pl.col("lab_id").is_not_null())
        .then(pl.concat_list(reference(pl.col("lab_reference"))))
        .alias("performer"),
        pl.col("result_references").alias("result"),
    )
    result_paths = pl.col("result_ids").list.eval(
        pl.struct(
            pl.format("result.{}", pl.int_range(pl.len())).alias("path"),
            pl.lit("Observation").alias("resource_type"),
            pl.lit(observation_system).alias("identifier_system"),
            pl.element().alias("identifier_value"),
        )
    )
    frame = rows.select(
        frame_columns(
            "DiagnosticReport",
            report_system,
            pl.col("report_id"),
            resource,
            references=[
                expected_reference("subject", "Patient", patient_system, pl.col("patient_id")),
                pl.when(pl.col("lab_id").is_not_null()).then(
                    expected_reference("performer.0", "Organization", organization_system, pl.col("lab_id"))
                ),
            ],
        ),
        result_paths=result_paths,
        patient_id=pl.col("patient_id"),
        subject_reference=pl.col("subject_reference"),
        collected_date=pl.col("collected_date"),
        code_mapped=pl.col("loinc_code").is_not_null(),
        lab_id=pl.col("lab_id"),
        patient_in_source=pl.col("patient_in_source"),
        lab_in_source=pl.col("lab_in_source"),
        result_count=pl.col("result_ids").list.len().fill_null(0),
        unknown_result=pl.col("unknown_result"),
        quarantined_result=pl.col("quarantined_result"),
    )
    frame = frame.with_columns(
        references=pl.concat_list(
            pl.col("references").list.filter(pl.element().is_not_null()), pl.col("result_paths").fill_null([])
        )
    )
    frame = quarantine_orphans(frame, "patient_id", "patients", "patient_in_source")
    frame = quarantine_orphans(frame, "lab_id", "organizations", "lab_in_source", required=False)
    frame = quarantine(
        frame, "missing_value", pl.col("result_count") == 0, "report has no result in lab_report_results"
    )
    frame = quarantine(
        frame,
        "orphan_reference",
        pl.col("unknown_result").is_not_null(),
        pl.format("observation_id {} is not in the observations table", pl.col("unknown_result")),
    )
    frame = quarantine(
        frame,
        "result_quarantined",
        pl.col("quarantined_result").is_not_null(),
        pl.format("result observation {} was quarantined by the observations element", pl.col("quarantined_result")),
    )
    frame = quarantine(frame, "invalid_date", invalid_date("collected_date"), "collected_date is not a real date")
    frame = quarantine(frame, "future_date", future_date("collected_date"), "collected_date lies in the future")
    return frame.drop(
        "result_paths",
        "lab_id",
        "patient_in_source",
        "lab_in_source",
        "result_count",
        "unknown_result",
        "quarantined_result",
    )


class DiagnosticReportFrame(FrameModel):
    subject_reference: str = pa.Field(str_matches=CONDITIONAL_REFERENCE)
    collected_date: str = pa.Field(str_matches=DATE)


ELEMENT = DataElement(
    name="lab_reports",
    description="Lab reports to FHIR DiagnosticReport grouping the Observations of one panel (LOINC panels).",
    mapping_version="1.0.0",
    # The observations' own tables too: extract asks the observations element which results it quarantines.
    source_tables={
        **observations.ELEMENT.source_tables,
        "lab_reports": "report_id",
        "lab_report_results": "report_result_id",
        "organizations": "organization_id",
    },
    requires=("patients", "organizations", "observations"),
    extract=extract,
    transform=transform,
    schemas={"DiagnosticReport": DiagnosticReportFrame},
    patient_column="patient_id",
    review_flags={"code_mapped": False},
    change_column=UPDATED_AT,
)
