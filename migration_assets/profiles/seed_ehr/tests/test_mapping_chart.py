"""Mapping tests for the rest of the chart: exact FHIR JSON for a typical and an odd row of each
element, the odd rows that are quarantined with their rule, and the register kept in step with the code."""

import json

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.mapping.register import REGENERATE, REGISTER_PATH, mapping_register, render_markdown
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import TABLE_COLUMNS, build_sample_tables
from migration_assets.profiles.seed_ehr.terminology import MAPS, TERMINOLOGY_DIR

BASE = "https://ehr.example-clinic.org/fhir"
SYSTEM = SourceSystem(BASE)
PATIENT_REF = f"Patient?identifier={BASE}/identifier/patient|"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def seed() -> dict[str, pl.DataFrame]:
    return build_sample_tables(patients=2)


def frame_of(element: str, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return build_frame(PROFILE.element(element), PROFILE.element(element).extract(tables), SYSTEM)


def by_key(frame: pl.DataFrame) -> dict[str, dict]:
    """Each resource by source key, without its meta (checked to be the provenance of its mapping)."""
    written = {}
    for row in frame.iter_rows(named=True):
        resource = json.loads(row["resource"])
        assert resource.pop("meta")["source"].startswith(f"{BASE}/mapping/")
        written[row["source_key"]] = resource
    return written


def rules(frame: pl.DataFrame) -> dict[str, str | None]:
    return dict(zip(frame["unit_key"], frame["quarantine_rule"], strict=True))


def table(name: str, rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=dict.fromkeys(TABLE_COLUMNS[name], pl.String), orient="row")


def with_rows(tables: dict[str, pl.DataFrame], name: str, rows: list[tuple]) -> dict[str, pl.DataFrame]:
    return {**tables, name: pl.concat([tables[name], table(name, rows)])}


# -- practitioners ---------------------------------------------------------------------------------


def test_practitioner_with_a_valid_npi_and_one_whose_invalid_npi_is_dropped_not_the_practitioner(seed):
    tables = with_rows(
        seed,
        "practitioners",
        [
            ("DR900", "Ann", "Lee", "1234567890", "Cardiology"),  # wrong check digit
            ("DR901", "Bo", None, " 1234567893 ", "Pediatrics"),  # valid once trimmed; no last name
        ],
    )
    frame = frame_of("practitioners", tables)
    written = by_key(frame)
    assert written["DR001"] == {
        "resourceType": "Practitioner",
        "identifier": [
            {"system": f"{BASE}/identifier/practitioner", "value": "DR001"},
            {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"},
        ],
        "name": [{"given": ["Maria"], "family": "Alvarez"}],
    }
    assert written["DR900"] == {
        "resourceType": "Practitioner",
        "identifier": [{"system": f"{BASE}/identifier/practitioner", "value": "DR900"}],
        "name": [{"given": ["Ann"], "family": "Lee"}],
    }
    assert written["DR901"]["identifier"][1]["value"] == "1234567893"
    assert rules(frame)["DR900"] is None
    assert frame.filter(pl.col("npi_dropped"))["source_key"].to_list() == ["DR900"]


# -- encounters and their practitioner -------------------------------------------------------------


def test_encounter_participant_and_unknown_practitioner_quarantined_with_its_note(seed):
    tables = with_rows(seed, "encounters", [("E900", "P001", "2024-01-05", "followup", "DR404")])
    tables = with_rows(tables, "encounter_notes", [("N900", "E900", "Follow-up visit.")])
    frame = frame_of("encounters", tables)
    written = by_key(frame)
    assert written["E001"]["participant"] == [
        {"individual": {"reference": f"Practitioner?identifier={BASE}/identifier/practitioner|DR001"}}
    ]
    assert "participant" not in written["E002"]
    expected_paths = frame.filter(pl.col("source_key") == "E001")["references"].to_list()[0]
    assert [(r["path"], r["resource_type"], r["identifier_value"]) for r in expected_paths] == [
        ("subject", "Patient", "P001"),
        ("participant.0.individual", "Practitioner", "DR001"),
    ]
    quarantined = rules(frame)
    assert quarantined["E900"] == "orphan_reference" and quarantined["N900"] == "group_quarantined"
    assert quarantined["E001"] is None and quarantined["E002"] is None


# -- medications -----------------------------------------------------------------------------------


def test_medication_statements_typical_and_odd(seed):
    tables = with_rows(
        seed,
        "patient_medications",
        [
            (
                "PM900",
                "P002",
                "ATV20",
                "Atorvastatin 20 mg tablet",
                "Take 1 tablet at bedtime",
                " discontinued ",
                "2019",
                "2019-05-02",
            ),  # unmapped local code, year-only start, status in other case and padded
            ("PM901", "P002", "LIS10", "Lisinopril 10 mg tablet", "daily", "Pending review", "2020-01-01", None),
            ("PM902", "P002", "LIS10", "Lisinopril 10 mg tablet", "daily", "Active", "2021-02-30", None),
            ("PM903", "P002", "LIS10", "Lisinopril 10 mg tablet", "daily", "Completed", "2021-05", "2021-04-30"),
            ("PM904", "P404", "LIS10", "Lisinopril 10 mg tablet", "daily", "Active", "2021-05", None),
        ],
    )
    frame = frame_of("medications", tables)
    written = by_key(frame)
    assert written["PM002"] == {
        "resourceType": "MedicationStatement",
        "identifier": [{"system": f"{BASE}/identifier/patient-medication", "value": "PM002"}],
        "status": "active",
        "medicationCodeableConcept": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/drug", "code": "MET500", "display": "Metformin 500 mg tablet"},
                {"system": RXNORM, "code": "861007", "display": "metformin hydrochloride 500 MG Oral Tablet"},
            ],
            "text": "Metformin 500 mg tablet",
        },
        "subject": {"reference": f"{PATIENT_REF}P001"},
        "effectivePeriod": {"start": "2023-01"},
        "dosage": [{"text": "Take 1 tablet by mouth twice daily with meals"}],
    }
    assert written["PM900"] == {
        "resourceType": "MedicationStatement",
        "identifier": [{"system": f"{BASE}/identifier/patient-medication", "value": "PM900"}],
        "status": "stopped",
        "medicationCodeableConcept": {
            "coding": [{"system": f"{BASE}/CodeSystem/drug", "code": "ATV20", "display": "Atorvastatin 20 mg tablet"}],
            "text": "Atorvastatin 20 mg tablet",
        },
        "subject": {"reference": f"{PATIENT_REF}P002"},
        "effectivePeriod": {"start": "2019", "end": "2019-05-02"},
        "dosage": [{"text": "Take 1 tablet at bedtime"}],
    }
    assert dict(zip(frame["source_key"], frame["code_mapped"], strict=True))["PM900"] is False
    assert {k: v for k, v in rules(frame).items() if v} == {
        "PM901": "unknown_code",
        "PM902": "invalid_date",
        "PM903": "invalid_period",
        "PM904": "orphan_reference",
    }


# -- allergies -------------------------------------------------------------------------------------


def test_allergy_intolerances_typical_and_odd(seed):
    tables = with_rows(
        seed,
        "patient_allergies",
        [
            (
                "AL900",
                "P001",
                "ALG-SHELL",
                "Shellfish",
                None,
                None,
                "Resolved",
                None,
                "2019-07",
            ),  # unmapped, no reaction
            ("AL901", "P001", "ALG-PCN", "Penicillin", "Rash", "high", "Active", "Confirmed", None),
            ("AL902", "P001", "ALG-PCN", "Penicillin", None, "mild", "Active", "Confirmed", None),
            ("AL903", "P001", "ALG-PCN", "Penicillin", "Rash", "Mild", None, "Confirmed", None),
            ("AL904", "P001", "ALG-PCN", "Penicillin", "Rash", "MILD", "Active", "maybe", None),
        ],
    )
    frame = frame_of("allergies", tables)
    written = by_key(frame)
    assert written["AL001"] == {
        "resourceType": "AllergyIntolerance",
        "identifier": [{"system": f"{BASE}/identifier/patient-allergy", "value": "AL001"}],
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}
            ]
        },
        "code": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/allergen", "code": "ALG-PCN", "display": "Penicillin"},
                {"system": "http://snomed.info/sct", "code": "764146007", "display": "Penicillin (substance)"},
            ],
            "text": "Penicillin",
        },
        "patient": {"reference": f"{PATIENT_REF}P002"},
        "recordedDate": "2015-04-02",
        "reaction": [{"manifestation": [{"text": "Hives"}], "severity": "moderate"}],
    }
    assert written["AL900"] == {
        "resourceType": "AllergyIntolerance",
        "identifier": [{"system": f"{BASE}/identifier/patient-allergy", "value": "AL900"}],
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "resolved"}
            ]
        },
        "code": {
            "coding": [{"system": f"{BASE}/CodeSystem/allergen", "code": "ALG-SHELL", "display": "Shellfish"}],
            "text": "Shellfish",
        },
        "patient": {"reference": f"{PATIENT_REF}P001"},
        "recordedDate": "2019-07",
    }
    assert {k: v for k, v in rules(frame).items() if v} == {
        "AL901": "unknown_code",
        "AL902": "missing_value",
        "AL903": "missing_value",
        "AL904": "unknown_code",
    }


# -- observations ----------------------------------------------------------------------------------


def test_observations_typical_and_odd(seed):
    tables = with_rows(
        seed,
        "observations",
        [
            # Unmapped test, comparator, date-only; a Fahrenheit value in a non-UCUM unit, two decimals kept.
            ("OB900", "P001", None, "lab", "CRP", "C-reactive protein", "<0.5", "mg/L", None, "5.0", "2024-08-09"),
            (
                "OB901",
                "P001",
                "E001",
                "Vital",
                "TEMP",
                "Body temperature",
                "98.60",
                "F",
                None,
                None,
                "2023-06-15T09:30:00-04:00",
            ),
            ("OB902", "P001", None, "lab", "GLU", "Glucose", "hemolyzed", "mg/dL", "70", "99", "2024-01-02"),
            ("OB903", "P001", "E001", "vital", "HR", "Heart rate", "72", "/min", None, None, "2023-06-15 09:30"),
            ("OB904", "P001", "E002", "vital", "HR", "Heart rate", "72", "/min", None, None, "2023-06-16"),
            ("OB905", "P001", "E404", "vital", "HR", "Heart rate", "72", "/min", None, None, "2023-06-16"),
            ("OB906", "P001", None, "imaging", "HR", "Heart rate", "72", "/min", None, None, "2023-06-16"),
        ],
    )
    frame = frame_of("observations", tables)
    written = by_key(frame)
    lab_category = [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                    "display": "Laboratory",
                }
            ]
        }
    ]
    assert written["OB003"] == {
        "resourceType": "Observation",
        "identifier": [{"system": f"{BASE}/identifier/observation", "value": "OB003"}],
        "status": "final",
        "category": lab_category,
        "code": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/observation-test", "code": "HBA1C", "display": "Hemoglobin A1c"},
                {"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c/Hemoglobin.total in Blood"},
            ],
            "text": "Hemoglobin A1c",
        },
        "subject": {"reference": f"{PATIENT_REF}P001"},
        "effectiveDateTime": "2023-06-10",
        "valueQuantity": {"value": 7.2, "unit": "%", "system": UCUM, "code": "%"},
        "referenceRange": [
            {
                "low": {"value": 4.0, "unit": "%", "system": UCUM, "code": "%"},
                "high": {"value": 5.6, "unit": "%", "system": UCUM, "code": "%"},
            }
        ],
    }
    assert written["OB001"]["encounter"] == {"reference": f"Encounter?identifier={BASE}/identifier/encounter|E001"}
    assert written["OB001"]["effectiveDateTime"] == "2023-06-15T09:30:00-04:00"
    assert written["OB900"] == {
        "resourceType": "Observation",
        "identifier": [{"system": f"{BASE}/identifier/observation", "value": "OB900"}],
        "status": "final",
        "category": lab_category,
        "code": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/observation-test", "code": "CRP", "display": "C-reactive protein"}
            ],
            "text": "C-reactive protein",
        },
        "subject": {"reference": f"{PATIENT_REF}P001"},
        "effectiveDateTime": "2024-08-09",
        "valueQuantity": {"value": 0.5, "comparator": "<", "unit": "mg/L", "system": UCUM, "code": "mg/L"},
        "referenceRange": [{"high": {"value": 5.0, "unit": "mg/L", "system": UCUM, "code": "mg/L"}}],
    }
    # The number exactly as given (98.60, not 98.6), the non-UCUM unit as text without a code.
    raw = frame.filter(pl.col("source_key") == "OB901")["resource"].item()
    assert '"valueQuantity":{"value":98.60,"unit":"F"}' in raw
    assert written["OB901"]["category"][0]["coding"][0]["code"] == "vital-signs"
    assert dict(zip(frame["source_key"], frame["code_mapped"], strict=True))["OB900"] is False
    assert {k: v for k, v in rules(frame).items() if v} == {
        "OB902": "non_numeric_value",
        "OB903": "invalid_date",
        "OB904": "mismatched_reference",
        "OB905": "orphan_reference",
        "OB906": "unknown_code",
    }
    refs = frame.filter(pl.col("source_key") == "OB001")["references"].to_list()[0]
    assert [(r["path"], r["resource_type"], r["identifier_value"]) for r in refs] == [
        ("subject", "Patient", "P001"),
        ("encounter", "Encounter", "E001"),
    ]


# -- the default sample and the register ------------------------------------------------------------


def test_default_sample_quarantines_well_under_the_threshold_and_reports_unmapped_codes():
    tables = build_sample_tables(patients=1000)
    for name in ("practitioners", "medications", "allergies", "observations", "encounters"):
        frame = frame_of(name, tables)
        share = frame["quarantine_rule"].is_not_null().mean()
        assert share < 0.02, (name, share)
        if "code_mapped" in frame.columns:
            assert 0 < (~frame["code_mapped"]).sum() < frame.height / 2, name


def test_every_terminology_map_has_a_version():
    maps = {path.stem for path in TERMINOLOGY_DIR.glob("*.csv")} - {"VERSIONS"}
    assert maps == set(MAPS.versions()["map"].to_list())
    assert MAPS.versions()["version"].str.contains(r"^\d+\.\d+\.\d+$").all()


def test_register_dispositions():
    register = mapping_register(PROFILE.element("practitioners"))
    rows = {(r["source_field"], r["target_path"]): r["disposition"] for r in register.iter_rows(named=True)}
    assert rows == {
        ("practitioner_id", "Practitioner.identifier[0].value"): "direct",
        ("first_name", "Practitioner.name[0].given[0]"): "direct",
        ("last_name", "Practitioner.name[0].family"): "direct",
        ("npi", "Practitioner.identifier[1].value"): "direct",
        ("specialty", ""): "unsupported",
    }


@pytest.mark.integration  # probes every field of every element through the mapping (20 s): not the unit tier
def test_the_register_in_the_repository_is_up_to_date():
    expected = render_markdown()
    actual = REGISTER_PATH.read_text(encoding="utf-8") if REGISTER_PATH.exists() else ""
    assert actual == expected, f"{REGISTER_PATH} is out of date with the mapping code: run `{REGENERATE}`"


def test_the_terminology_maps_asset_loads_every_versioned_map(tmp_path):
    from dagster import materialize

    from migration_assets.mapping.assets import terminology_maps
    from migration_assets.pipeline.resources import PolarsParquetIOManager

    result = materialize(
        [terminology_maps], resources={"frames_io_manager": PolarsParquetIOManager(base_dir=str(tmp_path))}
    )

    maps = result.output_for_node("terminology_maps")
    assert {"icd10cm", "rxnorm", "loinc", "allergy_snomed"} <= set(maps["map"].to_list())
    assert maps["version"].null_count() == 0 and (maps["codes"] > 0).all()
