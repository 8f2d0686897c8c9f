"""The OMOP mapping, table by table, on hand-made rows and on the generated sample."""

import base64
import json

import polars as pl
import pytest

from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.elements.profile import load_profile
from migration_assets.profiles.omop_cdm.sample_data import COLUMNS as OMOP_COLUMNS
from migration_assets.profiles.omop_cdm.sample_data import CONCEPT_COLUMNS, CONCEPTS, build_sample_tables

PROFILE = load_profile("omop_cdm")
SYSTEM = SourceSystem("https://omop.example.org/fhir")
LOCAL = "https://omop.example.org/fhir/CodeSystem/omop-source-value"
PLACE_OF_SERVICE = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"


def tables(**rows: list[dict]) -> dict[str, pl.DataFrame]:
    """Empty OMOP tables, with the given rows in some, every value text as the source reader gives them."""
    out = {"concept": pl.DataFrame([dict(zip(CONCEPT_COLUMNS, c, strict=True)) for c in CONCEPTS]).cast(pl.String)}
    for name, columns in OMOP_COLUMNS.items():
        given = rows.get(name, [])
        out[name] = pl.DataFrame(
            [{c: (None if r.get(c) is None else str(r[c])) for c in columns} for r in given],
            schema={c: pl.String for c in columns},
            orient="row",
        )
    return out


def frame(element: str, source: dict[str, pl.DataFrame]) -> pl.DataFrame:
    chosen = PROFILE.element(element)
    return build_frame(chosen, chosen.extract(source), SYSTEM)


def resources(built: pl.DataFrame) -> list[dict]:
    return [json.loads(text) for text in built["resource"]]


PERSON = {
    "person_id": 1,
    "gender_concept_id": 8532,
    "year_of_birth": 1950,
    "race_concept_id": 8516,
    "ethnicity_concept_id": 38003563,
    "person_source_value": "MRN1",
}
VISIT = {
    "visit_occurrence_id": 7,
    "person_id": 1,
    "visit_concept_id": 9203,
    "visit_start_date": "2020-05-01",
    "visit_end_date": "2020-05-02",
    "provider_id": None,
    "care_site_id": None,
}


def test_a_person_becomes_a_patient_with_year_precision_race_ethnicity_and_death() -> None:
    built = frame(
        "persons",
        tables(
            person=[
                PERSON,
                {
                    **PERSON,
                    "person_id": 2,
                    "month_of_birth": 3,
                    "birth_datetime": "1950-03-04 10:00:00",
                    "gender_concept_id": 0,
                },
            ],
            death=[{"person_id": 1, "death_date": "2021-06-30"}],
        ),
    )
    first, second = resources(built)
    assert built["quarantine_rule"].null_count() == 2
    assert first["gender"] == "female" and first["birthDate"] == "1950" and first["deceasedDateTime"] == "2021-06-30"
    assert {"system": "https://omop.example.org/fhir/identifier/person-source-value", "value": "MRN1"} in first[
        "identifier"
    ]
    race, ethnicity = first["extension"]
    assert race["url"].endswith("us-core-race") and race["extension"][0]["valueCoding"]["code"] == "2054-5"
    assert ethnicity["extension"][0]["valueCoding"]["code"] == "2135-2"
    # concept 0: no gender rather than a guess; birth_datetime wins over the year and month
    assert "gender" not in second and second["birthDate"] == "1950-03-04"


def test_an_impossible_birth_date_is_quarantined() -> None:
    built = frame("persons", tables(person=[{**PERSON, "month_of_birth": 2, "day_of_birth": 30}]))
    assert built["quarantine_rule"].to_list() == ["invalid_date"]


def test_a_provider_keeps_its_npi_only_when_valid() -> None:
    built = frame(
        "providers",
        tables(
            provider=[
                {"provider_id": 1, "provider_name": "Dr A", "npi": "1234567893"},
                {"provider_id": 2, "provider_name": "Dr B", "npi": "1234567890"},
            ]
        ),
    )
    good, bad = resources(built)
    assert {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"} in good["identifier"]
    assert len(bad["identifier"]) == 1 and built["npi_dropped"].to_list() == [False, True]


def test_a_visit_becomes_an_encounter_with_its_class_and_no_participant_without_a_provider() -> None:
    built = frame(
        "visits",
        tables(
            person=[PERSON], visit_occurrence=[VISIT, {**VISIT, "visit_occurrence_id": 8, "visit_concept_id": 12345}]
        ),
    )
    encounter = resources(built)[0]
    assert encounter["class"]["code"] == "EMER" and encounter["period"] == {"start": "2020-05-01", "end": "2020-05-02"}
    assert "participant" not in encounter
    assert built["quarantine_rule"].to_list() == [None, "unknown_code"]


DETAIL = {
    "visit_detail_id": 70,
    "person_id": 1,
    "visit_detail_concept_id": 9201,
    "visit_detail_start_date": "2020-05-01",
    "visit_detail_end_date": "2020-05-02",
    "provider_id": 3,
    "care_site_id": 2,
    "visit_detail_source_value": "ICU",
    "visit_occurrence_id": 7,
}


def test_a_visit_detail_is_an_encounter_part_of_its_visits_encounter() -> None:
    built = frame(
        "visit_details",
        tables(
            person=[PERSON, {**PERSON, "person_id": 2}],
            visit_occurrence=[VISIT],
            provider=[{"provider_id": 3}],
            care_site=[{"care_site_id": 2}],
            visit_detail=[
                DETAIL,
                # No provider: no participant, as for a visit.
                {**DETAIL, "visit_detail_id": 71, "provider_id": None},
                {**DETAIL, "visit_detail_id": 72, "visit_occurrence_id": None},
                {**DETAIL, "visit_detail_id": 73, "visit_occurrence_id": 99},
                {**DETAIL, "visit_detail_id": 74, "person_id": 2},
                {**DETAIL, "visit_detail_id": 75, "visit_detail_concept_id": 12345},
            ],
        ),
    )
    assert built["quarantine_rule"].to_list() == [
        None,
        None,
        "missing_value",
        "orphan_reference",
        "mismatched_reference",
        "unknown_code",
    ]
    detail, no_provider = resources(built)[:2]
    assert detail["identifier"] == [{"system": "https://omop.example.org/fhir/identifier/visit-detail", "value": "70"}]
    assert detail["partOf"] == {"reference": "Encounter?identifier=https://omop.example.org/fhir/identifier/visit|7"}
    assert detail["class"]["code"] == "IMP" and detail["period"] == {"start": "2020-05-01", "end": "2020-05-02"}
    assert detail["subject"]["reference"].endswith("person|1")
    assert detail["participant"][0]["individual"]["reference"].endswith("provider|3")
    assert detail["serviceProvider"]["reference"].endswith("care-site|2")
    assert {"system": LOCAL, "code": "ICU"} in detail["type"][0]["coding"]
    assert "participant" not in no_provider and no_provider["partOf"] == detail["partOf"]


def test_a_visit_and_its_details_say_where_the_patient_came_from_and_went_to() -> None:
    stay = {
        "admitted_from_concept_id": 8870,
        "admitted_from_source_value": "ER",
        "discharged_to_concept_id": 8863,
        "discharged_to_source_value": None,
    }
    source = tables(
        person=[PERSON],
        visit_occurrence=[{**VISIT, **stay}],
        visit_detail=[
            {**DETAIL, "provider_id": None, "care_site_id": None, **stay},
            # Concept 0 with a local value, and nothing at all: no hospitalization.
            {
                **DETAIL,
                "visit_detail_id": 71,
                "provider_id": None,
                "care_site_id": None,
                "discharged_to_concept_id": 0,
                "discharged_to_source_value": "AMA",
            },
            {**DETAIL, "visit_detail_id": 72, "provider_id": None, "care_site_id": None},
        ],
    )
    (visit,) = resources(frame("visits", source))
    details = frame("visit_details", source)
    assert details["quarantine_rule"].null_count() == 3
    detail, local, bare = resources(details)
    # A CMS Place of Service concept is coded under its THO system, the source value kept beside it; the
    # concept's name is the text.
    expected = {
        "admitSource": {
            "coding": [
                {"system": PLACE_OF_SERVICE, "code": "23", "display": "Emergency Room - Hospital"},
                {"system": LOCAL, "code": "ER"},
            ],
            "text": "Emergency Room - Hospital",
        },
        "dischargeDisposition": {
            "coding": [{"system": PLACE_OF_SERVICE, "code": "31", "display": "Skilled Nursing Facility"}],
            "text": "Skilled Nursing Facility",
        },
    }
    assert visit["hospitalization"] == detail["hospitalization"] == expected
    assert local["hospitalization"] == {
        "dischargeDisposition": {"coding": [{"system": LOCAL, "code": "AMA"}], "text": "AMA"}
    }
    assert "hospitalization" not in bare


def test_a_visit_details_preceding_and_parent_details_are_declared_unsupported() -> None:
    from migration_assets.profiles.omop_cdm.elements import visit_details, visits

    assert set(visit_details.UNSUPPORTED) == {"preceding_visit_detail_id", "parent_visit_detail_id"}
    assert set(visits.UNSUPPORTED) == {"preceding_visit_occurrence_id"}


DEVICE = {
    "device_exposure_id": 40,
    "person_id": 1,
    "device_concept_id": 4030875,
    "device_exposure_start_date": "2020-05-01",
    "device_type_concept_id": 32817,
    "unique_device_id": "(01)00643169007222(17)260101",
    "quantity": 1,
    "visit_occurrence_id": 7,
    "device_source_value": "PACER-DDD",
}


def test_a_device_exposures_provider_is_the_statements_source() -> None:
    exposures = [
        {**DEVICE, "provider_id": 3},
        {**DEVICE, "device_exposure_id": 41},
        {**DEVICE, "device_exposure_id": 42, "provider_id": 99},
    ]
    source = tables(person=[PERSON], visit_occurrence=[VISIT], provider=[{"provider_id": 3}], device_exposure=exposures)
    built = frame("devices", source)
    assert built["quarantine_rule"].to_list() == [None, None, "orphan_reference"]
    assert built["quarantine_reason"][2] == "provider_id 99 is not in the provider table"
    named, unnamed = resources(built)[:2]
    assert named["source"] == {
        "reference": "Practitioner?identifier=https://omop.example.org/fhir/identifier/provider|3"
    }
    assert "source" not in unnamed
    assert {r["path"] for r in built["references"][0]} == {"subject", "extension.0.valueReference", "source"}


def test_a_device_exposure_is_a_device_use_statement_with_its_device_contained() -> None:
    built = frame(
        "devices",
        tables(
            person=[PERSON, {**PERSON, "person_id": 2}],
            visit_occurrence=[VISIT],
            device_exposure=[
                DEVICE,
                # Ended, of no visit, concept 0 and no UDI.
                {
                    **DEVICE,
                    "device_exposure_id": 41,
                    "device_exposure_end_date": "2020-06-01",
                    "visit_occurrence_id": None,
                    "device_concept_id": 0,
                    "unique_device_id": None,
                    "device_source_value": "GLUCOMETER-X",
                },
                {**DEVICE, "device_exposure_id": 42, "person_id": 2},
                {**DEVICE, "device_exposure_id": 43, "device_exposure_end_date": "2020-04-01"},
            ],
        ),
    )
    assert built["quarantine_rule"].to_list() == [None, None, "mismatched_reference", "ends_before_start"]
    assert built["code_mapped"].to_list()[:2] == [True, False]
    implant, meter = resources(built)[:2]
    assert implant["identifier"] == [
        {"system": "https://omop.example.org/fhir/identifier/device-exposure", "value": "40"}
    ]
    assert implant["status"] == "active" and implant["timingPeriod"] == {"start": "2020-05-01"}
    assert implant["subject"]["reference"].endswith("person|1") and implant["device"] == {"reference": "#device"}
    (device,) = implant["contained"]
    assert device["resourceType"] == "Device" and device["id"] == "device"
    assert device["udiCarrier"] == [{"deviceIdentifier": "(01)00643169007222(17)260101"}]
    assert {"system": "http://snomed.info/sct", "code": "14106009", "display": "Cardiac pacemaker, device"} in device[
        "type"
    ]["coding"]
    (context,) = implant["extension"]
    assert context["valueReference"]["reference"].endswith("identifier/visit|7")
    assert meter["status"] == "completed" and meter["timingPeriod"] == {"start": "2020-05-01", "end": "2020-06-01"}
    assert "extension" not in meter and "udiCarrier" not in meter["contained"][0]
    assert meter["contained"][0]["type"]["text"] == "GLUCOMETER-X"


def test_a_gs1_production_identifier_becomes_the_devices_lot_serial_and_dates() -> None:
    exposures = [
        {**DEVICE, "unique_device_id": "00643169007222", "production_id": "(17)260101(10)A213B1(21)PM0042"},
        # Day 00: the month only; a two-digit year 99 is 1999 (within 49 years before the current one).
        {**DEVICE, "device_exposure_id": 41, "production_id": "(11)990300(21)SN7"},
        # Not GS1 (a bare serial), an impossible date, a repeated identifier: kept whole, never guessed.
        {**DEVICE, "device_exposure_id": 42, "production_id": "SN 88-1203"},
        {**DEVICE, "device_exposure_id": 43, "production_id": "(17)261301(10)X1"},
        {**DEVICE, "device_exposure_id": 44, "production_id": "(10)A1(10)B2"},
        {**DEVICE, "device_exposure_id": 45, "production_id": None},
    ]
    built = frame("devices", tables(person=[PERSON], visit_occurrence=[VISIT], device_exposure=exposures))
    assert built["quarantine_rule"].null_count() == len(exposures)
    devices = [resource["contained"][0] for resource in resources(built)]
    production = ("identifier", "lotNumber", "serialNumber", "manufactureDate", "expirationDate")
    parts = [{name: device[name] for name in production if name in device} for device in devices]
    assert devices[0]["udiCarrier"] == [{"deviceIdentifier": "00643169007222"}]
    assert parts[0] == {"lotNumber": "A213B1", "serialNumber": "PM0042", "expirationDate": "2026-01-01"}
    assert parts[1] == {"serialNumber": "SN7", "manufactureDate": "1999-03"}
    kept_whole = "https://omop.example.org/fhir/identifier/device-production-id"
    for given, part in zip(("SN 88-1203", "(17)261301(10)X1", "(10)A1(10)B2"), parts[2:5], strict=True):
        assert part == {"identifier": [{"system": kept_whole, "value": given}]}
    assert parts[5] == {}


def test_a_device_quantity_other_than_one_is_flagged_and_its_unit_declared_unsupported() -> None:
    from migration_assets.profiles.omop_cdm.elements import devices

    exposures = [
        DEVICE,
        {**DEVICE, "device_exposure_id": 41, "quantity": "2"},
        {**DEVICE, "device_exposure_id": 42, "quantity": None},
        {**DEVICE, "device_exposure_id": 43, "quantity": "1.0"},
        {**DEVICE, "device_exposure_id": 44, "quantity": "several"},
    ]
    built = frame("devices", tables(person=[PERSON], visit_occurrence=[VISIT], device_exposure=exposures))
    assert built["quantity_dropped"].to_list() == [False, True, False, False, True]
    assert all("quantity" not in json.dumps(resource) for resource in resources(built))
    assert PROFILE.element("devices").review_flags["quantity_dropped"] is True
    assert set(devices.UNSUPPORTED) == {"quantity", "unit_concept_id", "unit_source_value", "unit_source_concept_id"}


PLAN_PERIOD = {
    "payer_plan_period_id": 50,
    "person_id": 1,
    "payer_plan_period_start_date": "2018-01-01",
    "payer_plan_period_end_date": "2021-12-31",
    "payer_concept_id": 0,
    "payer_source_value": "BCBS-MA",
    "plan_concept_id": 0,
    "plan_source_value": "PPO-GOLD",
}


def test_a_payer_plan_period_is_a_coverage_with_payor_and_plan_from_the_source_values() -> None:
    built = frame(
        "coverages",
        tables(
            person=[PERSON],
            payer_plan_period=[
                PLAN_PERIOD,
                # Still running, and naming no plan: no period end, no class.
                {
                    **PLAN_PERIOD,
                    "payer_plan_period_id": 51,
                    "payer_plan_period_end_date": None,
                    "plan_source_value": None,
                },
                {**PLAN_PERIOD, "payer_plan_period_id": 52, "payer_source_value": None},
                {**PLAN_PERIOD, "payer_plan_period_id": 53, "person_id": 9},
                {**PLAN_PERIOD, "payer_plan_period_id": 54, "payer_plan_period_end_date": "2017-01-01"},
            ],
        ),
    )
    assert built["quarantine_rule"].to_list() == [None, None, "missing_value", "orphan_reference", "ends_before_start"]
    coverage, running = resources(built)[:2]
    assert coverage["identifier"] == [
        {"system": "https://omop.example.org/fhir/identifier/payer-plan-period", "value": "50"}
    ]
    assert coverage["status"] == "active" and coverage["beneficiary"]["reference"].endswith("person|1")
    assert coverage["period"] == {"start": "2018-01-01", "end": "2021-12-31"}
    assert coverage["payor"] == [
        {
            "identifier": {"system": "https://omop.example.org/fhir/identifier/payer", "value": "BCBS-MA"},
            "display": "BCBS-MA",
        }
    ]
    (plan,) = coverage["class"]
    assert plan["value"] == "PPO-GOLD" and plan["type"]["coding"][0]["code"] == "plan"
    assert running["period"] == {"start": "2018-01-01"} and "class" not in running
    assert built["code_mapped"].to_list()[:2] == [False, False]


def test_a_coverage_has_its_payer_type_in_sopt_its_sponsor_and_its_family() -> None:
    from migration_assets.profiles.omop_cdm.elements import coverages

    group = {
        **PLAN_PERIOD,
        "payer_concept_id": 2000000102,
        "sponsor_concept_id": 0,
        "sponsor_source_value": "ACME-MANUFACTURING",
        "family_source_value": "F0000001",
        "stop_reason_concept_id": 0,
        "stop_reason_source_value": "PLAN-CHANGE",
    }
    periods = [
        group,
        # A sponsor known by its kind only (a concept CONCEPT holds): a display-only policyHolder.
        {**group, "payer_plan_period_id": 51, "sponsor_source_value": None, "sponsor_concept_id": 99},
        # Concept 0 and no source value: no sponsor, no family.
        {**group, "payer_plan_period_id": 52, "sponsor_source_value": None, "family_source_value": None},
    ]
    sponsor_kind = {**dict(zip(CONCEPT_COLUMNS, CONCEPTS[0], strict=True)), "concept_id": 99}
    sponsor_kind.update(concept_name="Large group health plan", vocabulary_id="Sponsor", concept_code="99")
    source = tables(person=[PERSON], payer_plan_period=periods)
    source["concept"] = pl.concat([source["concept"], pl.DataFrame([sponsor_kind]).cast(pl.String)])
    built = frame("coverages", source)
    assert built["quarantine_rule"].null_count() == 3 and built["code_mapped"].to_list() == [True, True, True]
    named, kind_only, none = resources(built)
    assert named["type"] == {
        "coding": [
            {"system": "https://nahdo.org/sopt", "code": "612", "display": "BC Managed Care - PPO"},
            {"system": LOCAL, "code": "BCBS-MA"},
        ],
        "text": "BC Managed Care - PPO",
    }
    # The payor is the payer the source names; its kind is the type.
    assert named["payor"] == [
        {
            "identifier": {"system": "https://omop.example.org/fhir/identifier/payer", "value": "BCBS-MA"},
            "display": "BCBS-MA",
        }
    ]
    assert named["policyHolder"] == {
        "identifier": {"system": "https://omop.example.org/fhir/identifier/sponsor", "value": "ACME-MANUFACTURING"},
        "display": "ACME-MANUFACTURING",
    }
    assert named["subscriberId"] == "F0000001"
    assert kind_only["policyHolder"] == {"display": "Large group health plan"}
    assert "policyHolder" not in none and "subscriberId" not in none
    assert "PLAN-CHANGE" not in built["resource"][0]
    assert set(coverages.UNSUPPORTED) == {
        "stop_reason_concept_id",
        "stop_reason_source_value",
        "stop_reason_source_concept_id",
    }


def test_codes_come_from_concept_and_concept_zero_keeps_the_source_value_unmapped() -> None:
    conditions = [
        {
            "condition_occurrence_id": 1,
            "person_id": 1,
            "condition_concept_id": 201826,
            "condition_start_date": "2020-05-01",
            "visit_occurrence_id": 7,
            "condition_source_value": "E11.9",
        },
        {
            "condition_occurrence_id": 2,
            "person_id": 1,
            "condition_concept_id": 0,
            "condition_start_date": "2020-05-01",
            "condition_source_value": "LOCAL-9",
        },
    ]
    built = frame("conditions", tables(person=[PERSON], visit_occurrence=[VISIT], condition_occurrence=conditions))
    mapped, local = resources(built)
    assert mapped["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "44054006",
        "display": "Type 2 diabetes mellitus",
    }
    assert mapped["encounter"]["reference"].endswith("visit|7")
    assert local["code"] == {"coding": [{"system": LOCAL, "code": "LOCAL-9"}], "text": "LOCAL-9"}
    assert built["code_mapped"].to_list() == [True, False]


def test_an_event_of_an_unknown_person_or_another_persons_visit_is_quarantined() -> None:
    conditions = [
        {
            "condition_occurrence_id": 1,
            "person_id": 99,
            "condition_concept_id": 201826,
            "condition_start_date": "2020-05-01",
        },
        {
            "condition_occurrence_id": 2,
            "person_id": 2,
            "condition_concept_id": 201826,
            "condition_start_date": "2020-05-01",
            "visit_occurrence_id": 7,
        },
    ]
    built = frame(
        "conditions",
        tables(person=[PERSON, {**PERSON, "person_id": 2}], visit_occurrence=[VISIT], condition_occurrence=conditions),
    )
    assert built["quarantine_rule"].to_list() == ["orphan_reference", "mismatched_reference"]


@pytest.mark.parametrize(
    ("type_concept", "resource_type"), [(32838, "MedicationRequest"), (32865, "MedicationStatement")]
)
def test_a_drug_exposure_is_a_request_or_a_statement_by_its_type(type_concept: int, resource_type: str) -> None:
    drug = {
        "drug_exposure_id": 1,
        "person_id": 1,
        "drug_concept_id": 1308216,
        "drug_exposure_start_date": "2020-05-01",
        "drug_type_concept_id": type_concept,
        "quantity": "30",
        "sig": "1 daily",
        "drug_source_value": "314076",
    }
    built = frame("drugs", tables(person=[PERSON], drug_exposure=[drug]))
    resource = resources(built)[0]
    assert resource["resourceType"] == resource_type and built["quarantine_rule"][0] is None
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == "314076"


def test_measurements_have_ucum_quantities_ranges_coded_values_and_absent_values() -> None:
    base = {"person_id": 1, "measurement_date": "2020-05-01", "measurement_concept_id": 3004410}
    rows = [
        {
            **base,
            "measurement_id": 1,
            "value_as_number": "7.20",
            "unit_concept_id": 8554,
            "range_low": "4.0",
            "range_high": "5.6",
            "operator_concept_id": None,
        },
        {
            **base,
            "measurement_id": 2,
            "value_as_number": "0.5",
            "operator_concept_id": 4171756,
            "unit_source_value": "mg/dl",
            "unit_concept_id": 0,
        },
        {**base, "measurement_id": 3, "measurement_concept_id": 706163, "value_as_concept_id": 45884084},
        {**base, "measurement_id": 4},
    ]
    numeric, below, coded, empty = resources(frame("measurements", tables(person=[PERSON], measurement=rows)))
    assert numeric["valueQuantity"] == {"value": 7.20, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert numeric["referenceRange"][0]["low"]["value"] == 4.0 and numeric["code"]["coding"][0]["code"] == "4548-4"
    assert below["valueQuantity"] == {"value": 0.5, "comparator": "<", "unit": "mg/dl"}
    assert coded["valueCodeableConcept"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "LA6576-8",
        "display": "Positive",
    }
    assert empty["dataAbsentReason"]["coding"][0]["code"] == "unknown" and "valueQuantity" not in empty


def test_an_observation_keeps_a_text_value() -> None:
    row = {
        "observation_id": 1,
        "person_id": 1,
        "observation_concept_id": 4275495,
        "observation_date": "2020-05-01",
        "value_as_string": "former smoker",
    }
    resource = resources(frame("observations", tables(person=[PERSON], observation=[row])))[0]
    assert resource["valueString"] == "former smoker"


NOTE = {
    "note_id": 5,
    "person_id": 1,
    "note_date": "2020-05-01",
    "note_type_concept_id": 44814645,
    "note_class_concept_id": 3030023,
    "note_title": "Progress note",
    "note_text": "Seen today.\r\nCôté gauche: no swelling.",
    "provider_id": 3,
    "visit_occurrence_id": 7,
    "note_source_value": "progress",
}


def test_a_note_becomes_a_document_reference_with_its_text_inline() -> None:
    notes = [NOTE, {**NOTE, "note_id": 6, "note_class_concept_id": 0, "note_title": None, "provider_id": None}]
    source = tables(
        person=[PERSON], visit_occurrence=[VISIT], provider=[{"provider_id": 3, "provider_name": "Dr. X"}], note=notes
    )
    built = frame("notes", source)
    full, bare = resources(built)
    assert built["quarantine_rule"].null_count() == 2 and built["code_mapped"].to_list() == [True, False]
    attachment = full["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8" and attachment["title"] == "Progress note"
    # The text exactly as stored: line breaks and accents survive the round trip.
    assert base64.b64decode(attachment["data"]).decode("utf-8") == NOTE["note_text"]
    assert full["type"]["coding"][0] == {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
    assert full["category"][0]["coding"][0]["code"] == "clinical-note"
    assert full["author"][0]["reference"].endswith("provider|3")
    assert full["context"] == {
        "encounter": [{"reference": "Encounter?identifier=https://omop.example.org/fhir/identifier/visit|7"}],
        "period": {"start": "2020-05-01"},
    }
    assert "author" not in bare and "description" not in bare
    assert bare["type"] == {"coding": [{"system": LOCAL, "code": "progress"}], "text": "progress"}
    paths = {reference["path"] for reference in built["references"][0]}
    assert paths == {"subject", "context.encounter.0", "author.0"}


def test_a_note_without_text_of_an_unknown_provider_or_another_persons_visit_is_quarantined() -> None:
    notes = [
        {**NOTE, "note_text": "  "},
        {**NOTE, "note_id": 6, "provider_id": 99},
        {**NOTE, "note_id": 7, "person_id": 2},
        {**NOTE, "note_id": 8, "note_date": "2020-02-30"},
    ]
    source = tables(
        person=[PERSON, {**PERSON, "person_id": 2}],
        visit_occurrence=[VISIT],
        provider=[{"provider_id": 3}],
        note=notes,
    )
    assert frame("notes", source)["quarantine_rule"].to_list() == [
        "missing_value",
        "orphan_reference",
        "mismatched_reference",
        "invalid_date",
    ]


CONDITION = {
    "condition_occurrence_id": 1,
    "person_id": 1,
    "condition_concept_id": 201826,
    "condition_start_date": "2020-05-01",
    "visit_occurrence_id": 7,
    "visit_detail_id": 70,
}
DETAIL_ENCOUNTER = "Encounter?identifier=https://omop.example.org/fhir/identifier/visit-detail|70"
VISIT_ENCOUNTER = "Encounter?identifier=https://omop.example.org/fhir/identifier/visit|7"


def test_an_event_naming_a_visit_detail_references_the_details_encounter() -> None:
    conditions = [
        CONDITION,
        # A detail and no visit: still the detail's Encounter (it is part of its visit's).
        {**CONDITION, "condition_occurrence_id": 2, "visit_occurrence_id": None},
        {**CONDITION, "condition_occurrence_id": 3, "visit_detail_id": None},
        {**CONDITION, "condition_occurrence_id": 4, "visit_detail_id": 99},
        {**CONDITION, "condition_occurrence_id": 5, "visit_detail_id": 71},
        {**CONDITION, "condition_occurrence_id": 6, "visit_detail_id": 80},
    ]
    source = tables(
        person=[PERSON, {**PERSON, "person_id": 2}],
        visit_occurrence=[VISIT, {**VISIT, "visit_occurrence_id": 8}],
        visit_detail=[
            DETAIL,
            {**DETAIL, "visit_detail_id": 71, "person_id": 2},
            {**DETAIL, "visit_detail_id": 80, "visit_occurrence_id": 8},
        ],
        condition_occurrence=conditions,
    )
    built = frame("conditions", source)
    assert built["quarantine_rule"].to_list() == [
        None,
        None,
        None,
        "orphan_reference",
        "mismatched_reference",
        "mismatched_reference",
    ]
    assert built["quarantine_reason"].to_list()[3:] == [
        "visit_detail_id 99 is not in the visit_detail table",
        "visit_detail_id 71 belongs to another person",
        "visit_detail_id 80 is not part of visit_occurrence_id 7",
    ]
    detailed, detail_only, visit_only = resources(built)[:3]
    assert detailed["encounter"] == detail_only["encounter"] == {"reference": DETAIL_ENCOUNTER}
    assert visit_only["encounter"] == {"reference": VISIT_ENCOUNTER}
    assert detail_only["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    encounter_of = {
        row["source_key"]: [r for r in row["references"] if r["path"] == "encounter"]
        for row in built.head(3).iter_rows(named=True)
    }
    assert encounter_of["1"] == [
        {
            "path": "encounter",
            "resource_type": "Encounter",
            "identifier_system": "https://omop.example.org/fhir/identifier/visit-detail",
            "identifier_value": "70",
        }
    ]
    assert encounter_of["3"][0]["identifier_system"].endswith("/identifier/visit")
    assert built["visit_detail_dropped"].to_list()[:3] == [False, False, False]


def test_without_visit_detail_rows_an_event_naming_one_falls_back_to_its_visit_and_is_flagged() -> None:
    # VISIT_DETAIL absent from the export reads as an empty table: no detail's Encounter can be loaded.
    conditions = [CONDITION, {**CONDITION, "condition_occurrence_id": 2, "visit_occurrence_id": None}]
    built = frame("conditions", tables(person=[PERSON], visit_occurrence=[VISIT], condition_occurrence=conditions))
    with_visit, without = resources(built)
    assert built["quarantine_rule"].to_list() == [None, None]
    assert with_visit["encounter"] == {"reference": VISIT_ENCOUNTER} and "encounter" not in without
    assert without["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert built["visit_detail_dropped"].to_list() == [True, True]
    assert PROFILE.element("conditions").review_flags["visit_detail_dropped"] is True


EVENT_ROWS = {
    "conditions": ("condition_occurrence", CONDITION, "encounter"),
    "drugs": (
        "drug_exposure",
        {
            "drug_exposure_id": 1,
            "person_id": 1,
            "drug_concept_id": 1308216,
            "drug_exposure_start_date": "2020-05-01",
            "drug_type_concept_id": 32865,
            "visit_occurrence_id": 7,
            "visit_detail_id": 70,
        },
        "context",
    ),
    "procedures": (
        "procedure_occurrence",
        {
            "procedure_occurrence_id": 1,
            "person_id": 1,
            "procedure_concept_id": 4249893,
            "procedure_date": "2020-05-01",
            "visit_occurrence_id": 7,
            "visit_detail_id": 70,
        },
        "encounter",
    ),
    "measurements": (
        "measurement",
        {
            "measurement_id": 1,
            "person_id": 1,
            "measurement_concept_id": 3027018,
            "measurement_date": "2020-05-01",
            "visit_occurrence_id": 7,
            "visit_detail_id": 70,
        },
        "encounter",
    ),
    "observations": (
        "observation",
        {
            "observation_id": 1,
            "person_id": 1,
            "observation_concept_id": 4275495,
            "observation_date": "2020-05-01",
            "visit_occurrence_id": 7,
            "visit_detail_id": 70,
        },
        "encounter",
    ),
    "notes": ("note", {**NOTE, "provider_id": None, "visit_detail_id": 70}, "context.encounter.0"),
    "devices": ("device_exposure", {**DEVICE, "visit_detail_id": 70}, "extension.0.valueReference"),
}


@pytest.mark.parametrize("element", sorted(EVENT_ROWS))
def test_every_event_references_the_visit_detail_it_names_and_is_loaded_after_the_details(element: str) -> None:
    table_name, row, path = EVENT_ROWS[element]
    key = PROFILE.element(element).source_tables[table_name]
    source = tables(
        person=[PERSON],
        visit_occurrence=[VISIT],
        visit_detail=[DETAIL],
        **{table_name: [row, {**row, key: 2, "visit_detail_id": 99}]},
    )
    built = frame(element, source)
    assert built["quarantine_rule"].to_list() == [None, "orphan_reference"], element
    (encounter,) = [r for r in built["references"][0] if r["resource_type"] == "Encounter"]
    assert encounter["path"] == path
    assert (encounter["identifier_system"], encounter["identifier_value"]) == (
        "https://omop.example.org/fhir/identifier/visit-detail",
        "70",
    )
    assert DETAIL_ENCOUNTER in built["resource"][0]
    # The detail's Encounter is loaded first: the element requires visit_details.
    assert "visit_details" in PROFILE.element(element).requires
    assert PROFILE.load_order.index("visit_details") < PROFILE.load_order.index(element)


SPECIMEN = {
    "specimen_id": 4,
    "person_id": 1,
    "specimen_concept_id": 4001225,
    "specimen_date": "2020-05-01",
    "quantity": "5.0",
    "unit_concept_id": 8587,
    "anatomic_site_concept_id": 4300877,
    "specimen_source_id": "ACC-1",
    "specimen_source_value": "VENBLD",
    "unit_source_value": "mL",
    "anatomic_site_source_value": "arm vein",
}


def test_a_specimen_has_its_type_accession_quantity_and_body_site() -> None:
    rows = [
        SPECIMEN,
        {
            **SPECIMEN,
            "specimen_id": 5,
            "specimen_concept_id": 0,
            "quantity": "1",
            "unit_concept_id": 0,
            "unit_source_value": "tube",
            "anatomic_site_concept_id": 0,
            "anatomic_site_source_value": None,
            "specimen_source_id": None,
        },
    ]
    built = frame("specimens", tables(person=[PERSON], specimen=rows))
    full, local = resources(built)
    assert built["quarantine_rule"].null_count() == 2 and built["code_mapped"].to_list() == [True, False]
    assert full["type"]["coding"][0]["code"] == "122555007"
    assert full["accessionIdentifier"] == {
        "system": "https://omop.example.org/fhir/identifier/specimen-source-id",
        "value": "ACC-1",
    }
    assert full["collection"]["quantity"] == {
        "value": 5.0,
        "unit": "mL",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }
    assert full["collection"]["bodySite"]["coding"][0]["code"] == "50094009"
    assert full["collection"]["collectedDateTime"] == "2020-05-01"
    # A unit that is no UCUM concept stays text; no site given, no bodySite; no lab id, no accession.
    assert local["collection"] == {"collectedDateTime": "2020-05-01", "quantity": {"value": 1, "unit": "tube"}}
    assert "accessionIdentifier" not in local and local["type"]["coding"] == [{"system": LOCAL, "code": "VENBLD"}]


def test_a_specimen_of_an_unknown_person_or_with_a_bad_quantity_or_date_is_quarantined() -> None:
    rows = [
        {**SPECIMEN, "person_id": 99},
        {**SPECIMEN, "specimen_id": 5, "quantity": "five"},
        {**SPECIMEN, "specimen_id": 6, "specimen_date": None},
        {**SPECIMEN, "specimen_id": 7, "specimen_date": "2999-01-01"},
    ]
    assert frame("specimens", tables(person=[PERSON], specimen=rows))["quarantine_rule"].to_list() == [
        "orphan_reference",
        "non_numeric_value",
        "missing_value",
        "future_date",
    ]


def test_the_terminology_maps_are_versioned_and_read_by_the_elements() -> None:
    from migration_assets.elements.terminology import TerminologyMaps

    assert PROFILE.terminology_dir is not None
    catalogue = TerminologyMaps(PROFILE.terminology_dir).catalogue()
    assert set(catalogue["map"]) == {
        "vocabulary_systems",
        "genders",
        "races",
        "ethnicities",
        "visit_classes",
        "value_operators",
        "drug_request_types",
    }
    assert catalogue.filter(pl.col("codes") == 0).is_empty()
    # No code list is left in the mapping code: the maps the elements use are the CSVs' rows.
    from migration_assets.profiles.omop_cdm.elements import persons, visits
    from migration_assets.profiles.omop_cdm.omop import VOCABULARY_SYSTEMS

    assert VOCABULARY_SYSTEMS["LOINC"] == "http://loinc.org" and persons.GENDER["8532"] == "female"
    assert VOCABULARY_SYSTEMS["CMS Place of Service"] == PLACE_OF_SERVICE
    assert VOCABULARY_SYSTEMS["SOPT"] == "https://nahdo.org/sopt"
    assert visits.VISIT_CLASS["9203"] == ("EMER", "emergency")


def test_upper_case_column_names_read_the_same() -> None:
    source = tables(person=[PERSON])
    upper = {name: table.rename(str.upper) for name, table in source.items()}
    assert frame("persons", upper)["resource"].to_list() == frame("persons", source)["resource"].to_list()


# The sample's duplicate rows, by element: each copy of a repeated key is quarantined.
SAMPLE_DUPLICATES = {"conditions": 2, "drugs": 2, "measurements": 2}


def test_the_sample_is_deterministic_and_maps_with_only_its_duplicates_quarantined() -> None:
    sample = build_sample_tables(40, seed=3)
    assert all(sample[name].equals(table) for name, table in build_sample_tables(40, seed=3).items())
    for element in PROFILE.load_order:
        built = frame(element, sample)
        quarantined = built.filter(pl.col("quarantine_rule").is_not_null())
        assert built.height > 0 and quarantined.height == SAMPLE_DUPLICATES.get(element, 0), element
        assert set(quarantined["quarantine_rule"]) <= {"duplicate_key"}, element
        # every source row stays a unit of its own, the repeated ones too
        assert (
            built["unit_key"].n_unique()
            == built.height
            == sample[next(iter(PROFILE.element(element).source_tables))].height
        )
    assert sample["condition_occurrence"].is_duplicated().sum() == sample["drug_exposure"].is_duplicated().sum() == 2
    assert sample["measurement"]["measurement_id"].is_duplicated().sum() == 2
    assert not sample["measurement"].is_duplicated().any()
    # the oddities real exports have
    assert sample["person"]["month_of_birth"].null_count() > 0
    assert sample["visit_occurrence"]["provider_id"].null_count() > 0
    assert sample["measurement"]["value_as_number"].null_count() > 0
    assert (sample["condition_occurrence"]["condition_concept_id"] == "0").any()
    assert sample["note"]["visit_occurrence_id"].null_count() > 0 and sample["note"]["note_title"].null_count() > 0
    assert sample["note"]["note_text"].str.contains("\r\n").any()
    assert sample["specimen"]["quantity"].null_count() > 0 and (sample["specimen"]["unit_concept_id"] == "0").any()
    # events of a visit naming one of its details, or only the visit; where inpatients came from and went to
    for name in ("condition_occurrence", "drug_exposure", "measurement", "note", "device_exposure"):
        assert 0 < sample[name]["visit_detail_id"].null_count() < sample[name].height, name
    for name in ("visit_occurrence", "visit_detail"):
        assert sample[name]["admitted_from_source_value"].is_not_null().any(), name
        assert (sample[name]["discharged_to_concept_id"] == "0").any(), name
    assert 0 < sample["device_exposure"]["provider_id"].null_count() < sample["device_exposure"].height
    # payers by their kind in SOPT, some of an employer's group plan; production identifiers in GS1 form or not
    assert frame("coverages", sample)["code_mapped"].all()
    assert 0 < sample["payer_plan_period"]["sponsor_source_value"].null_count() < sample["payer_plan_period"].height
    production = sample["device_exposure"]["production_id"].drop_nulls()
    assert production.str.starts_with("(").any() and not production.str.starts_with("(").all()


@pytest.mark.integration  # a platform subprocess that probes every field (30 s): not the unit tier
def test_the_register_in_the_repository_is_up_to_date() -> None:
    # The register module documents the active profile, chosen when the platform is imported: a process of its own.
    import os
    import subprocess
    import sys

    check = (
        "from migration_assets.mapping.register import REGISTER_PATH, render_markdown; "
        "import sys; sys.exit(0 if REGISTER_PATH.read_text(encoding='utf-8') == render_markdown() else 1)"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        env={**os.environ, "MIGRATION_PROFILE": "omop_cdm"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        "mapping_register.md is out of date: run MIGRATION_PROFILE=omop_cdm "
        "python -m migration_assets.mapping.register\n" + result.stderr[-2000:]
    )
