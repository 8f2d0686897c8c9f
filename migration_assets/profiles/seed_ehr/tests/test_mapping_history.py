"""Mapping tests for procedures, immunizations, lab reports and appointments: the FHIR JSON of sample
rows, and the odd rows quarantined with their rule."""

import json

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import TABLE_COLUMNS, build_sample_tables

BASE = "https://ehr.example-clinic.org/fhir"
SYSTEM = SourceSystem(BASE)


def ref(resource_type: str, kind: str, key: str) -> dict[str, str]:
    return {"reference": f"{resource_type}?identifier={BASE}/identifier/{kind}|{key}"}


@pytest.fixture(scope="module")
def seed() -> dict[str, pl.DataFrame]:
    return build_sample_tables(patients=2)


def frame_of(element: str, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return build_frame(PROFILE.element(element), PROFILE.element(element).extract(tables), SYSTEM)


def by_key(frame: pl.DataFrame) -> dict[str, dict]:
    written = {}
    for row in frame.iter_rows(named=True):
        resource = json.loads(row["resource"])
        assert resource.pop("meta")["source"].startswith(f"{BASE}/mapping/")
        written[row["unit_key"]] = resource
    return written


def quarantined(frame: pl.DataFrame) -> dict[str, str]:
    return {key: rule for key, rule in zip(frame["unit_key"], frame["quarantine_rule"], strict=True) if rule}


def with_rows(tables: dict[str, pl.DataFrame], name: str, rows: list[tuple]) -> dict[str, pl.DataFrame]:
    added = pl.DataFrame(rows, schema=dict.fromkeys(TABLE_COLUMNS[name], pl.String), orient="row")
    return {**tables, name: pl.concat([tables[name], added], how="vertical_relaxed")}


def test_procedures_in_cpt_or_snomed_and_the_odd_ones(seed):
    tables = with_rows(
        seed,
        "procedures",
        [
            ("PX1", "P001", "E001", "CPT", "93000", "Electrocardiogram", "2023-06-15"),
            ("PX2", "P002", None, "snomed", "73761001", "Colonoscopy", "2019"),
            ("PX3", "P001", None, "ICD9", "45.23", "Colonoscopy", "2019-01-01"),  # no such system here
            ("PX4", "P001", None, "CPT", "9300", "Too short", "2019-01-01"),
            ("PX5", "P001", "E002", "CPT", "93000", "Another patient's visit", "2023-06-16"),
            ("PX6", "P009", None, "CPT", "93000", "Unknown patient", "2023-06-16"),
            ("PX7", "P001", None, "CPT", "93000", "Impossible date", "2023-02-30"),
        ],
    )
    frame = frame_of("procedures", tables)
    written = by_key(frame)
    assert written["PX1"] == {
        "resourceType": "Procedure",
        "identifier": [{"system": f"{BASE}/identifier/procedure", "value": "PX1"}],
        "status": "completed",
        "code": {
            "coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "93000", "display": "Electrocardiogram"}],
            "text": "Electrocardiogram",
        },
        "subject": ref("Patient", "patient", "P001"),
        "encounter": ref("Encounter", "encounter", "E001"),
        "performedDateTime": "2023-06-15",
    }
    assert written["PX2"]["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert written["PX2"]["performedDateTime"] == "2019"
    assert quarantined(frame) == {
        "PX3": "unknown_code",
        "PX4": "unknown_code",
        "PX5": "mismatched_reference",
        "PX6": "orphan_reference",
        "PX7": "invalid_date",
    }


def test_immunizations_given_and_not_done_with_reason(seed):
    tables = with_rows(
        seed,
        "immunizations",
        [
            ("IM1", "P001", "140", "Flu shot", "2023-10-02", "LT123456", "LD", "given", None),
            ("IM2", "P002", "208", "COVID-19", "2023-10-02", None, None, "not given", "refused"),
            ("IM3", "P002", "208", "COVID-19", "2023-10-02", None, None, "not given", None),  # no reason
            ("IM4", "P002", "999", "Unknown vaccine", "2023-10-02", None, "LA", "given", None),
            ("IM5", "P002", "140", "Flu shot", "2023-10-02", None, "LA", "pending", None),
            ("IM6", "P001", "140", "Flu shot", "2023-10-02", "LT9", "left buttock", "given", None),
        ],
    )
    frame = frame_of("immunizations", tables)
    written = by_key(frame)
    assert written["IM1"] == {
        "resourceType": "Immunization",
        "identifier": [{"system": f"{BASE}/identifier/immunization", "value": "IM1"}],
        "status": "completed",
        "vaccineCode": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/sid/cvx",
                    "code": "140",
                    "display": "Influenza, seasonal, injectable, preservative free",
                }
            ],
            "text": "Flu shot",
        },
        "patient": ref("Patient", "patient", "P001"),
        "occurrenceDateTime": "2023-10-02",
        "lotNumber": "LT123456",
        "site": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/immunization-site", "code": "LD"},
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActSite", "code": "LD", "display": "left deltoid"},
            ]
        },
    }
    assert written["IM2"]["status"] == "not-done"
    assert written["IM2"]["statusReason"] == {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": "PATOBJ",
                "display": "patient objection",
            }
        ]
    }
    # An unmapped site stays local.
    assert written["IM6"]["site"] == {
        "coding": [{"system": f"{BASE}/CodeSystem/immunization-site", "code": "left buttock"}]
    }
    assert quarantined(frame) == {"IM3": "missing_value", "IM4": "unknown_code", "IM5": "unknown_code"}


def test_lab_reports_group_the_observations_of_one_panel(seed):
    tables = with_rows(
        seed,
        "observations",
        [
            ("OB90", "P001", None, "lab", "CHOL", "Cholesterol, total", "190", "mg/dL", None, "200", "2023-07-01"),
            ("OB91", "P001", None, "lab", "HDL", "HDL cholesterol", "55", "mg/dL", "40", None, "2023-07-01"),
            ("OB92", "P001", None, "lab", "TRIG", "Triglycerides", "hemolyzed", "mg/dL", None, "150", "2023-08-01"),
        ],
    )
    tables = with_rows(
        tables,
        "lab_reports",
        [
            ("LR90", "P001", "LIPID", "Lipid panel", "2023-07-01", "ORG002"),
            ("LR91", "P001", "LIPID", "Lipid panel", "2023-08-01", "ORG002"),  # its result is quarantined
            ("LR92", "P001", "LIPID", "Lipid panel", "2023-09-01", "ORG002"),  # names an unknown observation
            ("LR93", "P001", "LIPID", "Lipid panel", "2023-09-01", None),  # no result at all
        ],
    )
    tables = with_rows(
        tables,
        "lab_report_results",
        [
            ("X1", "LR90", "OB90"),
            ("X2", "LR90", "OB91"),
            ("X3", "LR91", "OB92"),
            ("X4", "LR92", "OB404"),
        ],
    )
    frame = frame_of("lab_reports", tables)
    written = by_key(frame)
    assert written["LR90"] == {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": f"{BASE}/identifier/lab-report", "value": "LR90"}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB", "display": "Laboratory"}
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/lab-panel", "code": "LIPID", "display": "Lipid panel"},
                {"system": "http://loinc.org", "code": "24331-1", "display": "Lipid 1996 panel - Serum or Plasma"},
            ],
            "text": "Lipid panel",
        },
        "subject": ref("Patient", "patient", "P001"),
        "effectiveDateTime": "2023-07-01",
        "performer": [ref("Organization", "organization", "ORG002")],
        "result": [ref("Observation", "observation", "OB90"), ref("Observation", "observation", "OB91")],
    }
    paths = [r["path"] for r in frame.filter(pl.col("unit_key") == "LR90")["references"].item()]
    assert paths == ["subject", "performer.0", "result.0", "result.1"]
    assert quarantined(frame) == {"LR91": "result_quarantined", "LR92": "orphan_reference", "LR93": "missing_value"}


def test_appointments_statuses_participants_and_the_encounter_they_became(seed):
    tables = with_rows(
        seed,
        "appointments",
        [
            (
                "AP90",
                "P001",
                "DR001",
                "LOC001",
                "2023-06-15T09:00:00-04:00",
                "2023-06-15T09:20:00-04:00",
                "Arrived",
                "E001",
            ),
            ("AP91", "P001", None, None, "2023-06-01T09:00:00-04:00", "2023-06-01T09:20:00-04:00", "No Show", None),
            ("AP92", "P002", None, "LOC002", None, None, "Cancelled", None),  # a cancelled one may lack times
            ("AP93", "P002", None, None, None, None, "Scheduled", None),  # booked without start and end
            ("AP94", "P002", None, None, "2023-06-01T09:00:00-04:00", "2023-06-01T08:00:00-04:00", "Arrived", None),
            ("AP95", "P002", None, None, "2023-06-01 09:00", "2023-06-01 09:20", "Arrived", None),
            ("AP96", "P002", None, None, None, None, "Tentative", None),
            ("AP97", "P002", None, None, None, None, "Cancelled", "E001"),  # P001's encounter
        ],
    )
    frame = frame_of("appointments", tables)
    written = by_key(frame)
    accepted = "accepted"
    assert written["AP90"] == {
        "resourceType": "Appointment",
        "identifier": [{"system": f"{BASE}/identifier/appointment", "value": "AP90"}],
        "status": "arrived",
        "start": "2023-06-15T09:00:00-04:00",
        "end": "2023-06-15T09:20:00-04:00",
        "supportingInformation": [ref("Encounter", "encounter", "E001")],
        "participant": [
            {"actor": ref("Patient", "patient", "P001"), "status": accepted},
            {"actor": ref("Practitioner", "practitioner", "DR001"), "status": accepted},
            {"actor": ref("Location", "location", "LOC001"), "status": accepted},
        ],
    }
    assert written["AP91"]["status"] == "noshow"
    assert written["AP92"]["status"] == "cancelled" and "start" not in written["AP92"]
    paths = [r["path"] for r in frame.filter(pl.col("unit_key") == "AP92")["references"].item()]
    assert paths == ["participant.0.actor", "participant.1.actor"]
    assert quarantined(frame) == {
        "AP93": "missing_value",
        "AP94": "ends_before_start",
        "AP95": "invalid_date",
        "AP96": "unknown_code",
        "AP97": "mismatched_reference",
    }


def test_the_default_sample_of_the_new_elements_loads_nearly_whole():
    tables = build_sample_tables(patients=1000)
    for name in ("procedures", "immunizations", "lab_reports", "appointments"):
        frame = frame_of(name, tables)
        assert frame.height > 100, name
        assert frame["quarantine_rule"].is_not_null().mean() < 0.02, name
    immunizations = by_key(frame_of("immunizations", tables))
    assert {resource["status"] for resource in immunizations.values()} == {"completed", "not-done"}
    appointments = by_key(frame_of("appointments", tables))
    assert {resource["status"] for resource in appointments.values()} == {"arrived", "cancelled", "noshow", "booked"}
