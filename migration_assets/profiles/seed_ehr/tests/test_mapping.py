"""Mapping tests: the seed's exact rows become the FHIR the seed shows (identifier systems aside, and
dates kept at the precision the source has), and odd rows are quarantined with a precise reason."""

import json

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.elements.fhir_json import conditional_reference, fhir_json
from migration_assets.medplum import conditional_url
from migration_assets.profiles.seed_ehr import PROFILE
from migration_assets.profiles.seed_ehr.sample_data import build_sample_tables

BASE = "https://ehr.example-clinic.org/fhir"
SYSTEM = SourceSystem(BASE)
PATIENT = f"{BASE}/identifier/patient"


@pytest.fixture(scope="module")
def seed_tables() -> dict[str, pl.DataFrame]:
    return build_sample_tables(patients=2)


def resources(element: str, tables: dict[str, pl.DataFrame]) -> dict[str, dict]:
    frame = build_frame(PROFILE.element(element), PROFILE.element(element).extract(tables), SYSTEM)
    assert frame["quarantine_rule"].null_count() == frame.height
    return {row["source_key"]: without_provenance(element, row["resource"]) for row in frame.iter_rows(named=True)}


def without_provenance(element: str, text: str) -> dict:
    """The resource without its meta, after checking that meta names the legacy system and the mapping."""
    resource = json.loads(text)
    version = PROFILE.element(element).mapping_version
    assert resource.pop("meta") == {"source": f"{BASE}/mapping/{element}/{version}"}
    return resource


def test_seed_patients(seed_tables):
    patients = resources("patients", seed_tables)
    assert patients["P001"] == {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT, "value": "P001"}],
        "name": [{"given": ["John"], "family": "Doe"}],
        "birthDate": "1980-07-15",
        "gender": "male",
    }
    assert patients["P002"]["name"] == [{"given": ["Jane"], "family": "Smith"}]
    assert patients["P002"]["gender"] == "female"
    assert patients["P002"]["birthDate"] == "1992-11-30"


def test_seed_conditions(seed_tables):
    conditions = resources("problem_list", seed_tables)
    assert conditions["PC001"] == {
        "resourceType": "Condition",
        "identifier": [{"system": f"{BASE}/identifier/patient-condition", "value": "PC001"}],
        "subject": {"reference": f"Patient?identifier={PATIENT}|P001"},
        "code": {
            "coding": [
                {"system": f"{BASE}/CodeSystem/condition", "code": "HT001", "display": "Hypertension"},
                {
                    "system": "http://hl7.org/fhir/sid/icd-10-cm",
                    "code": "I10",
                    "display": "Essential (primary) hypertension",
                },
            ],
            "text": "Hypertension",
        },
        "onsetDateTime": "2022-03-15",
    }
    assert conditions["PC002"]["code"]["coding"][1] == {
        "system": "http://hl7.org/fhir/sid/icd-10-cm",
        "code": "E11",
        "display": "Type 2 diabetes mellitus",
    }
    assert conditions["PC003"]["subject"] == {"reference": f"Patient?identifier={PATIENT}|P002"}
    assert conditions["PC003"]["onsetDateTime"] == "2023-02-22"


def test_seed_encounters_and_notes(seed_tables):
    written = resources("encounters", seed_tables)
    encounter, note = written["E002"], written["N002"]
    assert {k: v for k, v in encounter.items()} == {
        "resourceType": "Encounter",
        "identifier": [{"system": f"{BASE}/identifier/encounter", "value": "E002"}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER", "display": "emergency"},
        "type": [
            {"coding": [{"system": f"{BASE}/CodeSystem/encounter-type", "code": "emergency", "display": "Emergency"}]}
        ],
        "subject": {"reference": f"Patient?identifier={PATIENT}|P002"},
        # The source has a date: kept at day precision rather than the seed's invented midnight.
        "period": {"start": "2023-06-16"},
    }
    assert note == {
        "resourceType": "ClinicalImpression",
        # The seed POSTs notes, which duplicates them on every rerun: ours carry their note_id.
        "identifier": [{"system": f"{BASE}/identifier/encounter-note", "value": "N002"}],
        "status": "completed",
        "subject": {"reference": f"Patient?identifier={PATIENT}|P002"},
        "encounter": {"reference": note["encounter"]["reference"]},
        "effectiveDateTime": "2023-06-16",
        "summary": "Emergency visit due to severe headache. Patient's hypertension may need adjustment. "
        "Further tests ordered.",
    }
    assert note["encounter"]["reference"].startswith("urn:uuid:")
    assert written["E001"]["class"]["code"] == "AMB"
    assert written["N001"]["encounter"]["reference"] != note["encounter"]["reference"]


def test_encounter_and_its_note_share_a_transaction_and_a_stable_urn(seed_tables):
    element = PROFILE.element("encounters")
    first = build_frame(element, element.extract(seed_tables), SYSTEM)
    again = build_frame(element, element.extract(seed_tables), SYSTEM)
    rows = first.filter(pl.col("bundle_group") == "E001")
    assert sorted(rows["resource_type"].to_list()) == ["ClinicalImpression", "Encounter"]
    assert first["content_hash"].to_list() == again["content_hash"].to_list()


@pytest.mark.parametrize(
    "value",
    ["P001", "A,B", "Q|101", "cost$5", "back\\slash", "with space", "a&b=c", "50%+1#x", "é漢😀", "\\,|$"],
)
def test_conditional_references_escape_like_the_client(value):
    from_frame = pl.select(conditional_reference("Patient", PATIENT, pl.lit(value))).item()
    assert from_frame == conditional_url("Patient", PATIENT, value)


def test_fhir_json_drops_null_empty_arrays_and_empty_objects_but_not_text_that_looks_like_them():
    frame = pl.DataFrame(
        {"a": [None], "b": [[]], "text": ['x,"k":null}{"k":[]']},
        schema={"a": pl.String, "b": pl.List(pl.String), "text": pl.String},
    )
    resource = pl.struct(
        pl.lit("Patient").alias("resourceType"),
        pl.col("a").alias("gender"),
        pl.col("b").alias("given"),
        pl.struct(pl.col("a").alias("x")).alias("empty"),
        pl.col("text").alias("note"),
    )
    encoded = frame.select(fhir_json(resource)).item()
    assert json.loads(encoded) == {"resourceType": "Patient", "note": 'x,"k":null}{"k":[]'}


def odd_patients() -> pl.DataFrame:
    rows = [
        ("P1", "Ann", "Lee", "1980-02-30", "F"),  # impossible date
        ("P2", "Bo", "Kim", "1980", "M"),  # year only: kept as is
        ("P3", "Cy", "Fox", "1980-07", "m"),  # year and month; lower-case code
        ("P4", "Di", "Ray", "2990-01-01", "F"),  # future birth date
        ("P5", "Ed", "Poe", "1970-01-01", "X"),  # unknown gender code
        ("P6", "Fa", "Day", "1970-01-01", "F"),
        ("P6", "Fb", "Day", "1970-01-01", "F"),  # duplicate source key
        (None, "Gi", "Ng", "1970-01-01", "F"),  # missing key
        (" P7", "Ha", "Oz", "1970-01-01", "F"),  # key with a surrounding space
        ("P8", "José", "Nguyễn", "13/01/1970", None),  # not a date format
        ("P9", None, None, None, None),  # nothing but the key
    ]
    return pl.DataFrame(rows, schema=["patient_id", "first_name", "last_name", "birth_date", "gender"], orient="row")


def test_odd_patients_are_kept_or_quarantined_with_their_rule():
    element = PROFILE.element("patients")
    frame = build_frame(element, element.extract({"patients": odd_patients()}), SYSTEM)
    rules = dict(zip(frame["unit_key"], frame["quarantine_rule"], strict=True))
    assert rules == {
        "P1": "invalid_date",
        "P2": None,
        "P3": None,
        "P4": "future_date",
        "P5": "unknown_code",
        "P6#row6": "duplicate_key",
        "P6#row7": "duplicate_key",
        "<missing>#row8": "missing_key",
        " P7": "schema",
        "P8": "invalid_date",
        "P9": None,
    }
    by_key = {row["unit_key"]: without_provenance("patients", row["resource"]) for row in frame.iter_rows(named=True)}
    assert by_key["P2"]["birthDate"] == "1980"
    assert by_key["P3"]["birthDate"] == "1980-07" and by_key["P3"]["gender"] == "male"
    assert by_key["P9"] == {"resourceType": "Patient", "identifier": [{"system": PATIENT, "value": "P9"}]}
    assert frame.height == odd_patients().height
