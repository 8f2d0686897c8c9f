"""A small OMOP CDM 5.4 database, the same for the same size and seed: the official table and column
names (lower case, every value text as the platform's writers store it) and a CONCEPT table holding only
the concepts the rows use. It carries the oddities real exports have: concept 0 with a source value,
persons with only a year (or year and month) of birth, visits and visit details with no provider, devices
still in use (no end date) or of no visit, with a production identifier in GS1 form or as a bare serial,
payer plan periods still running, naming no plan, or of an employer's group plan (sponsor and family),
measurements with no value, notes with no visit, provider or title and with line breaks and accents,
specimens with no quantity or with a unit that is no UCUM concept, and duplicate rows: a condition and a
drug exposure repeated exactly, a measurement id given to two measurements. Written without primary keys,
as the CDM's DDL leaves them optional (the profile's `primary_keys_enforced`)."""

import random
from collections.abc import Callable
from typing import Any

import polars as pl

# concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, standard_concept, concept_code
CONCEPTS = [
    (8507, "MALE", "Gender", "Gender", "Gender", "S", "M"),
    (8532, "FEMALE", "Gender", "Gender", "Gender", "S", "F"),
    (8527, "White", "Race", "Race", "Race", "S", "5"),
    (8516, "Black or African American", "Race", "Race", "Race", "S", "3"),
    (8515, "Asian", "Race", "Race", "Race", "S", "2"),
    (38003563, "Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Hispanic"),
    (38003564, "Not Hispanic or Latino", "Ethnicity", "Ethnicity", "Ethnicity", "S", "Not Hispanic"),
    (9201, "Inpatient Visit", "Visit", "Visit", "Visit", "S", "IP"),
    (9202, "Outpatient Visit", "Visit", "Visit", "Visit", "S", "OP"),
    (9203, "Emergency Room Visit", "Visit", "Visit", "Visit", "S", "ER"),
    (32817, "EHR", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976890"),
    (32838, "EHR prescription", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976908"),
    (32865, "Patient self-report", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4976935"),
    (201826, "Type 2 diabetes mellitus", "Condition", "SNOMED", "Clinical Finding", "S", "44054006"),
    (320128, "Essential hypertension", "Condition", "SNOMED", "Clinical Finding", "S", "59621000"),
    (317009, "Asthma", "Condition", "SNOMED", "Clinical Finding", "S", "195967001"),
    (
        45576876,
        "Type 2 diabetes mellitus without complications",
        "Condition",
        "ICD10CM",
        "5-char billing code",
        None,
        "E11.9",
    ),
    (
        40163924,
        "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
        "Drug",
        "RxNorm",
        "Clinical Drug",
        "S",
        "860975",
    ),
    (1308216, "lisinopril 10 MG Oral Tablet", "Drug", "RxNorm", "Clinical Drug", "S", "314076"),
    (4249893, "Colonoscopy", "Procedure", "SNOMED", "Procedure", "S", "73761001"),
    (2514404, "Office or other outpatient visit, established patient", "Procedure", "CPT4", "CPT4", "S", "99213"),
    (3004410, "Hemoglobin A1c/Hemoglobin.total in Blood", "Measurement", "LOINC", "Lab Test", "S", "4548-4"),
    (3027018, "Heart rate", "Measurement", "LOINC", "Clinical Observation", "S", "8867-4"),
    (3004249, "Systolic blood pressure", "Measurement", "LOINC", "Clinical Observation", "S", "8480-6"),
    (
        706163,
        "SARS-CoV-2 (COVID-19) RNA [Presence] in Respiratory specimen by NAA with probe detection",
        "Measurement",
        "LOINC",
        "Lab Test",
        "S",
        "94500-6",
    ),
    (45884084, "Positive", "Meas Value", "LOINC", "Answer", "S", "LA6576-8"),
    (45878583, "Negative", "Meas Value", "LOINC", "Answer", "S", "LA6577-6"),
    (8554, "percent", "Unit", "UCUM", "Unit", "S", "%"),
    (8541, "per minute", "Unit", "UCUM", "Unit", "S", "/min"),
    (8876, "millimeter mercury column", "Unit", "UCUM", "Unit", "S", "mm[Hg]"),
    (4275495, "Tobacco smoking behavior - finding", "Observation", "SNOMED", "Clinical Finding", "S", "365981007"),
    (45765920, "Never smoked tobacco", "Observation", "SNOMED", "Clinical Finding", "S", "266919005"),
    (40766240, "Alcohol intake [Volume/time]", "Observation", "LOINC", "Clinical Observation", "S", "11287-0"),
    # Note classes (LOINC document ontology) and the note type; specimens, their units and body sites.
    (3030023, "Progress note", "Note", "LOINC", "Clinical Observation", "S", "11506-3"),
    (3017575, "Discharge summary", "Note", "LOINC", "Clinical Observation", "S", "18842-5"),
    (44814645, "Note", "Type Concept", "Type Concept", "Type Concept", "S", "OMOP4822233"),
    (4001225, "Venous blood specimen", "Specimen", "SNOMED", "Specimen", "S", "122555007"),
    (4046280, "Urine specimen", "Specimen", "SNOMED", "Specimen", "S", "122575003"),
    (8587, "milliliter", "Unit", "UCUM", "Unit", "S", "mL"),
    # Devices (the concept ids as the sample's CONCEPT table gives them; SNOMED physical objects).
    (4030875, "Cardiac pacemaker, device", "Device", "SNOMED", "Physical Object", "S", "14106009"),
    (45768197, "Positive airway pressure device", "Device", "SNOMED", "Physical Object", "S", "704708001"),
    (4300877, "Structure of median cubital vein", "Spec Anatomic Site", "SNOMED", "Body Structure", "S", "50094009"),
    # Where an inpatient came from and went to (CMS Place of Service concepts of the Visit domain).
    (8536, "Home", "Visit", "CMS Place of Service", "Place of Service", "S", "12"),
    (8870, "Emergency Room - Hospital", "Visit", "CMS Place of Service", "Place of Service", "S", "23"),
    (8863, "Skilled Nursing Facility", "Visit", "CMS Place of Service", "Place of Service", "S", "31"),
    # Kinds of payer (Source of Payment Typology: its codes and names; the concept ids are the sample's own, in
    # OMOP's range for local concepts, as the mapping reads only vocabulary, code and name).
    (2000000101, "MEDICARE", "Payer", "SOPT", "Payer", "S", "1"),
    (2000000102, "BC Managed Care - PPO", "Payer", "SOPT", "Payer", "S", "612"),
    (2000000103, "Self-pay", "Payer", "SOPT", "Payer", "S", "81"),
]
CONCEPT_COLUMNS = [
    "concept_id",
    "concept_name",
    "domain_id",
    "vocabulary_id",
    "concept_class_id",
    "standard_concept",
    "concept_code",
]

CONDITIONS = [(201826, "E11.9"), (320128, "I10"), (317009, "J45.909"), (0, "LOCAL-COND-17")]
DRUGS = [(40163924, "860975"), (1308216, "314076"), (0, "HOUSE-MIX-3")]
PROCEDURES = [(4249893, "45378"), (2514404, "99213")]
# measurement concept, unit concept, unit source, low, high, value generator
NOTES = [(3030023, "progress"), (3017575, "discharge"), (0, "nursing-handover")]
# specimen concept, source value, anatomic site concept, site source value
SPECIMENS = [
    (4001225, "VENBLD", 4300877, "median cubital vein"),
    (4046280, "UR", 0, None),
    (0, "SWAB-X", 0, "left nostril"),
]
# device concept, source value, UDI device identifier (UDI-DI), production identifier (UDI-PI: GS1 application
# identifiers, or a serial as a source without GS1 gives it), ended
DEVICES = [
    (4030875, "PACER-DDD", "00643169007222", "(17)260101(10)A213B1(21)PM0042", False),
    (45768197, "CPAP-AUTO", None, "SN 88-1203", True),
    (0, "GLUCOMETER-X", None, None, True),
]
# payer source value, plan source value (None: the export names no plan), payer concept (SOPT), sponsor source
# value (the employer of a group plan)
PAYERS = [
    ("MEDICARE", "PART-B", 2000000101, None),
    ("BCBS-MA", "PPO-GOLD", 2000000102, "ACME-MANUFACTURING"),
    ("SELF-PAY", None, 2000000103, None),
]
# Visit detail source values: the ward or unit of a part of a visit.
WARDS = ["WARD-3B", "ICU", "ED-TRIAGE", "CARDIO-CONSULT"]
# Where an inpatient stay was admitted from and discharged to: concept and source value (concept 0: a local
# value only).
ADMITTED_FROM = [(8870, "ER"), (8536, "HOME"), (0, "TRANSFER-OSH")]
DISCHARGED_TO = [(8536, "HOME"), (8863, "SNF"), (0, "AMA")]
NOTE_TEXTS = [
    "Patient seen for follow-up.\r\nBP stable on current medication.\r\nPlan: recheck in 3 months.",
    "Résumé: patient reports no côté-effects; continue therapy.",
    "Discharged home in good condition.\n\tFollow up with primary care in one week.",
]
MEASUREMENTS: list[tuple[int, int, str, str, str, Callable[[random.Random], str]]] = [
    (3004410, 8554, "%", "4.0", "5.6", lambda r: f"{r.uniform(4.5, 9.5):.1f}"),
    (3027018, 8541, "/min", "60", "100", lambda r: str(r.randint(55, 110))),
    (3004249, 8876, "mm[Hg]", "90", "120", lambda r: str(r.randint(100, 165))),
]


def _text(rows: list[dict[str, Any]], columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        [{c: (None if row.get(c) is None else str(row[c])) for c in columns} for row in rows],
        schema={c: pl.String for c in columns},
        orient="row",
    )


def build_sample_tables(patients: int, seed: int = 7, updated_at: bool = False) -> dict[str, pl.DataFrame]:
    """OMOP tables for `patients` persons, parents first. (OMOP has no change column: `updated_at` is ignored.)"""
    r = random.Random(seed)
    locations = [
        {
            "location_id": i,
            "address_1": f"{10 + i} Main St",
            "city": "Springfield",
            "state": "MA",
            "zip": f"0110{i}",
            "location_source_value": f"LOC{i}",
        }
        for i in range(1, 4)
    ]
    care_sites = [
        {
            "care_site_id": i,
            "care_site_name": name,
            "place_of_service_concept_id": 0,
            "location_id": i,
            "care_site_source_value": f"CS{i}",
        }
        for i, name in enumerate(["Springfield General", "Riverside Clinic", "Hilltop Family Practice"], 1)
    ]
    # 1234567893 passes the NPI check digit; 1234567890 does not (kept in the source, not written as an NPI).
    providers = [
        {
            "provider_id": i,
            "provider_name": f"Dr. {name}",
            "npi": npi,
            "care_site_id": (i % 3) + 1,
            "gender_concept_id": 8532 if i % 2 else 8507,
            "provider_source_value": f"PRV{i}",
        }
        for i, (name, npi) in enumerate(
            [
                ("Alice Smith", "1234567893"),
                ("Bob Jones", "1234567890"),
                ("Carol Wu", None),
                ("Dev Patel", "1245319599"),
            ],
            1,
        )
    ]
    persons, deaths, visits, conditions, drugs, procedures, measurements, observations = [], [], [], [], [], [], [], []
    notes: list[dict[str, Any]] = []
    specimens: list[dict[str, Any]] = []
    visit_details: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    plan_periods: list[dict[str, Any]] = []
    # Visit details draw from a generator of their own: the other tables stay as they were before them.
    detail_random = random.Random(seed + 1)
    device_random = random.Random(seed + 2)
    plan_random = random.Random(seed + 3)
    # Which visit detail an event names, where an inpatient came from and went to, a device's provider.
    link_random = random.Random(seed + 4)

    def detail_of(details: list[int]) -> int | None:
        """The visit detail an event of a visit names: one of the visit's, or none (recorded on the visit)."""
        return link_random.choice(details) if details and link_random.random() < 0.8 else None

    for p in range(1, patients + 1):
        year, month, day = r.randint(1930, 2015), r.randint(1, 12), r.randint(1, 28)
        precision = r.random()
        gender = r.choice([8507, 8532, 8532, 8507, 0])
        person = {
            "person_id": p,
            "gender_concept_id": gender,
            "year_of_birth": year,
            "month_of_birth": month if precision > 0.1 else None,
            "day_of_birth": day if precision > 0.2 else None,
            "birth_datetime": f"{year}-{month:02d}-{day:02d} 00:00:00" if precision > 0.6 else None,
            "race_concept_id": r.choice([8527, 8516, 8515, 0]),
            "ethnicity_concept_id": r.choice([38003563, 38003564, 0]),
            "location_id": r.randint(1, 3),
            "person_source_value": f"MRN{p:07d}",
            "gender_source_value": {8507: "M", 8532: "F", 0: "X"}[gender],
        }
        persons.append(person)
        # One payer plan period, or two in a row, the last one still running (no end date).
        periods = plan_random.randint(1, 2)
        for n in range(periods):
            payer, plan, payer_concept, sponsor = plan_random.choice(PAYERS)
            ended = n + 1 < periods
            plan_periods.append(
                {
                    "payer_plan_period_id": p * 10 + n,
                    "person_id": p,
                    "payer_plan_period_start_date": f"{2014 + 4 * n}-01-01",
                    "payer_plan_period_end_date": f"{2017 + 4 * n}-12-31" if ended else None,
                    "payer_concept_id": payer_concept,
                    "payer_source_value": payer,
                    "plan_concept_id": 0,
                    "plan_source_value": plan,
                    # An employer's group plan names its sponsor and the family the policy covers.
                    "sponsor_concept_id": 0 if sponsor else None,
                    "sponsor_source_value": sponsor,
                    "family_source_value": f"F{p:07d}" if sponsor else None,
                    "stop_reason_concept_id": 0 if ended else None,
                    "stop_reason_source_value": "PLAN-CHANGE" if ended else None,
                }
            )
        if r.random() < 0.05:
            deaths.append(
                {
                    "person_id": p,
                    "death_date": f"{r.randint(2016, 2023)}-0{r.randint(1, 9)}-1{r.randint(0, 9)}",
                    "death_type_concept_id": 32817,
                }
            )
        for v in range(r.randint(1, 3)):
            vid = p * 10 + v
            start = f"{r.randint(2016, 2024)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
            kind = r.choice([9202, 9202, 9202, 9201, 9203])
            visits.append(
                {
                    "visit_occurrence_id": vid,
                    "person_id": p,
                    "visit_concept_id": kind,
                    "visit_start_date": start,
                    "visit_end_date": start,
                    "visit_type_concept_id": 32817,
                    "provider_id": r.choice([1, 2, 3, 4, None]),
                    "care_site_id": r.randint(1, 3),
                    "visit_source_value": {9201: "IP", 9202: "OP", 9203: "ER"}[kind],
                }
            )
            # An inpatient stay says where the patient came from and went to; its first ward the former, its
            # last ward the latter.
            stay: dict[str, Any] = {}
            if kind == 9201:
                (admitted, admitted_source), (discharged, discharged_source) = (
                    link_random.choice(ADMITTED_FROM),
                    link_random.choice(DISCHARGED_TO),
                )
                stay = {
                    "admitted_from_concept_id": admitted,
                    "admitted_from_source_value": admitted_source,
                    "discharged_to_concept_id": discharged,
                    "discharged_to_source_value": discharged_source,
                }
                visits[-1].update(stay)
            # An inpatient stay moves between wards (the second detail follows the first); some other visits
            # have one detail; a detail may name no provider.
            wards = 2 if kind == 9201 else int(detail_random.random() < 0.3)
            details = [vid * 10 + w for w in range(wards)]
            for w in range(wards):
                first, last = w == 0, w == wards - 1
                visit_details.append(
                    {
                        "visit_detail_id": vid * 10 + w,
                        "person_id": p,
                        "visit_detail_concept_id": kind,
                        "visit_detail_start_date": start,
                        "visit_detail_end_date": start,
                        "visit_detail_type_concept_id": 32817,
                        "provider_id": detail_random.choice([1, 2, 3, 4, None]),
                        "care_site_id": detail_random.randint(1, 3),
                        "visit_detail_source_value": detail_random.choice(WARDS),
                        "preceding_visit_detail_id": vid * 10 + w - 1 if w else None,
                        "visit_occurrence_id": vid,
                        **{
                            name: value
                            for name, value in stay.items()
                            if (first and name.startswith("admitted")) or (last and name.startswith("discharged"))
                        },
                    }
                )
            if device_random.random() < 0.25:
                device, device_source, udi, production, ended = device_random.choice(DEVICES)
                # An implant still in use has no end date; a device given at home names no visit.
                at_visit = device_random.random() > 0.2
                devices.append(
                    {
                        "device_exposure_id": vid,
                        "person_id": p,
                        "device_concept_id": device,
                        "device_exposure_start_date": start,
                        "device_exposure_end_date": start if ended else None,
                        "device_type_concept_id": 32817,
                        "unique_device_id": udi,
                        "production_id": production,
                        "quantity": 1,
                        "provider_id": link_random.choice([1, 2, 3, 4, None]),
                        "visit_occurrence_id": vid if at_visit else None,
                        "visit_detail_id": detail_of(details) if at_visit else None,
                        "device_source_value": device_source,
                    }
                )
            concept, source = r.choice(CONDITIONS)
            conditions.append(
                {
                    "condition_occurrence_id": vid,
                    "person_id": p,
                    "condition_concept_id": concept,
                    "condition_start_date": start,
                    "condition_type_concept_id": 32817,
                    "visit_occurrence_id": vid,
                    "visit_detail_id": detail_of(details),
                    "condition_source_value": source,
                    "condition_source_concept_id": 45576876 if source == "E11.9" else 0,
                }
            )
            concept, source = r.choice(DRUGS)
            drugs.append(
                {
                    "drug_exposure_id": vid,
                    "person_id": p,
                    "drug_concept_id": concept,
                    "drug_exposure_start_date": start,
                    "drug_exposure_end_date": start,
                    "drug_type_concept_id": r.choice([32838, 32838, 32865]),
                    "quantity": "30",
                    "days_supply": "30",
                    "sig": "1 tablet by mouth daily",
                    "visit_occurrence_id": vid,
                    "visit_detail_id": detail_of(details),
                    "drug_source_value": source,
                }
            )
            if r.random() < 0.3:
                concept, source = r.choice(PROCEDURES)
                procedures.append(
                    {
                        "procedure_occurrence_id": vid,
                        "person_id": p,
                        "procedure_concept_id": concept,
                        "procedure_date": start,
                        "procedure_type_concept_id": 32817,
                        "visit_occurrence_id": vid,
                        "visit_detail_id": detail_of(details),
                        "procedure_source_value": source,
                    }
                )
            for m, (concept, unit, unit_source, low, high, value) in enumerate(MEASUREMENTS):
                measurements.append(
                    {
                        "measurement_id": vid * 10 + m,
                        "person_id": p,
                        "measurement_concept_id": concept,
                        "measurement_date": start,
                        "measurement_type_concept_id": 32817,
                        # A measurement with no value, as exports have (ordered, never resulted).
                        "value_as_number": value(r) if r.random() > 0.05 else None,
                        "unit_concept_id": unit,
                        "range_low": low,
                        "range_high": high,
                        "visit_occurrence_id": vid,
                        "visit_detail_id": detail_of(details),
                        "measurement_source_value": {3004410: "4548-4", 3027018: "8867-4", 3004249: "8480-6"}[concept],
                        "unit_source_value": unit_source,
                    }
                )
            if r.random() < 0.3:
                measurements.append(
                    {
                        "measurement_id": vid * 10 + 5,
                        "person_id": p,
                        "measurement_concept_id": 706163,
                        "measurement_date": start,
                        "measurement_type_concept_id": 32817,
                        "value_as_concept_id": r.choice([45884084, 45878583]),
                        "visit_occurrence_id": vid,
                        "visit_detail_id": detail_of(details),
                        "measurement_source_value": "94500-6",
                    }
                )
            if r.random() < 0.5:
                note_class, note_source = r.choice(NOTES)
                # A note with no visit or no provider, and one with no title, as exports have.
                notes.append(
                    {
                        "note_id": vid,
                        "person_id": p,
                        "note_date": start,
                        "note_type_concept_id": 44814645,
                        "note_class_concept_id": note_class,
                        "note_title": r.choice(["Progress note", "Discharge summary", None]),
                        "note_text": r.choice(NOTE_TEXTS),
                        "encoding_concept_id": 32678,
                        "language_concept_id": 4180186,
                        "provider_id": r.choice([1, 2, 3, 4, None]),
                        "visit_occurrence_id": vid if r.random() > 0.1 else None,
                        "note_source_value": note_source,
                    }
                )
                notes[-1]["visit_detail_id"] = detail_of(details) if notes[-1]["visit_occurrence_id"] else None
            if r.random() < 0.3:
                specimen, specimen_source, site, site_source = r.choice(SPECIMENS)
                # No quantity at all, or a unit that is no UCUM concept, as exports have.
                amount = r.choice([("5", 8587, "mL"), ("1", 0, "tube"), (None, None, None)])
                specimens.append(
                    {
                        "specimen_id": vid,
                        "person_id": p,
                        "specimen_concept_id": specimen,
                        "specimen_type_concept_id": 32817,
                        "specimen_date": start,
                        "quantity": amount[0],
                        "unit_concept_id": amount[1],
                        "anatomic_site_concept_id": site,
                        "disease_status_concept_id": 0,
                        "specimen_source_id": f"ACC-{vid:09d}",
                        "specimen_source_value": specimen_source,
                        "unit_source_value": amount[2],
                        "anatomic_site_source_value": site_source,
                    }
                )
            observations.append(
                {
                    "observation_id": vid,
                    "person_id": p,
                    "observation_concept_id": 4275495,
                    "observation_date": start,
                    "observation_type_concept_id": 32817,
                    "value_as_concept_id": 45765920,
                    "visit_occurrence_id": vid,
                    "visit_detail_id": detail_of(details),
                    "observation_source_value": "smoking",
                }
            )
    if patients >= 2:
        # Duplicate rows, as exports have them (the CDM's primary keys are not enforced): a condition and a
        # drug exposure copied exactly, and the id of the first measurement given to another one too.
        conditions.append(dict(conditions[0]))
        drugs.append(dict(drugs[0]))
        measurements.append({**measurements[-1], "measurement_id": measurements[0]["measurement_id"]})
    concepts = [dict(zip(CONCEPT_COLUMNS, row, strict=True)) for row in CONCEPTS]
    return {
        "concept": _text(concepts, CONCEPT_COLUMNS),
        "location": _text(locations, COLUMNS["location"]),
        "care_site": _text(care_sites, COLUMNS["care_site"]),
        "provider": _text(providers, COLUMNS["provider"]),
        "person": _text(persons, COLUMNS["person"]),
        "death": _text(deaths, COLUMNS["death"]),
        "visit_occurrence": _text(visits, COLUMNS["visit_occurrence"]),
        "visit_detail": _text(visit_details, COLUMNS["visit_detail"]),
        "device_exposure": _text(devices, COLUMNS["device_exposure"]),
        "payer_plan_period": _text(plan_periods, COLUMNS["payer_plan_period"]),
        "condition_occurrence": _text(conditions, COLUMNS["condition_occurrence"]),
        "drug_exposure": _text(drugs, COLUMNS["drug_exposure"]),
        "procedure_occurrence": _text(procedures, COLUMNS["procedure_occurrence"]),
        "measurement": _text(measurements, COLUMNS["measurement"]),
        "observation": _text(observations, COLUMNS["observation"]),
        "note": _text(notes, COLUMNS["note"]),
        "specimen": _text(specimens, COLUMNS["specimen"]),
    }


# The CDM 5.4 columns of each table (OHDSI's CDM documentation), in their official order.
COLUMNS = {
    "location": [
        "location_id",
        "address_1",
        "address_2",
        "city",
        "state",
        "zip",
        "county",
        "location_source_value",
        "country_concept_id",
        "country_source_value",
        "latitude",
        "longitude",
    ],
    "care_site": [
        "care_site_id",
        "care_site_name",
        "place_of_service_concept_id",
        "location_id",
        "care_site_source_value",
        "place_of_service_source_value",
    ],
    "provider": [
        "provider_id",
        "provider_name",
        "npi",
        "dea",
        "specialty_concept_id",
        "care_site_id",
        "year_of_birth",
        "gender_concept_id",
        "provider_source_value",
        "specialty_source_value",
        "specialty_source_concept_id",
        "gender_source_value",
        "gender_source_concept_id",
    ],
    "person": [
        "person_id",
        "gender_concept_id",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
        "birth_datetime",
        "race_concept_id",
        "ethnicity_concept_id",
        "location_id",
        "provider_id",
        "care_site_id",
        "person_source_value",
        "gender_source_value",
        "gender_source_concept_id",
        "race_source_value",
        "race_source_concept_id",
        "ethnicity_source_value",
        "ethnicity_source_concept_id",
    ],
    "death": [
        "person_id",
        "death_date",
        "death_datetime",
        "death_type_concept_id",
        "cause_concept_id",
        "cause_source_value",
        "cause_source_concept_id",
    ],
    "visit_occurrence": [
        "visit_occurrence_id",
        "person_id",
        "visit_concept_id",
        "visit_start_date",
        "visit_start_datetime",
        "visit_end_date",
        "visit_end_datetime",
        "visit_type_concept_id",
        "provider_id",
        "care_site_id",
        "visit_source_value",
        "visit_source_concept_id",
        "admitted_from_concept_id",
        "admitted_from_source_value",
        "discharged_to_concept_id",
        "discharged_to_source_value",
        "preceding_visit_occurrence_id",
    ],
    "visit_detail": [
        "visit_detail_id",
        "person_id",
        "visit_detail_concept_id",
        "visit_detail_start_date",
        "visit_detail_start_datetime",
        "visit_detail_end_date",
        "visit_detail_end_datetime",
        "visit_detail_type_concept_id",
        "provider_id",
        "care_site_id",
        "visit_detail_source_value",
        "visit_detail_source_concept_id",
        "admitted_from_concept_id",
        "admitted_from_source_value",
        "discharged_to_source_value",
        "discharged_to_concept_id",
        "preceding_visit_detail_id",
        "parent_visit_detail_id",
        "visit_occurrence_id",
    ],
    "condition_occurrence": [
        "condition_occurrence_id",
        "person_id",
        "condition_concept_id",
        "condition_start_date",
        "condition_start_datetime",
        "condition_end_date",
        "condition_end_datetime",
        "condition_type_concept_id",
        "condition_status_concept_id",
        "stop_reason",
        "provider_id",
        "visit_occurrence_id",
        "visit_detail_id",
        "condition_source_value",
        "condition_source_concept_id",
        "condition_status_source_value",
    ],
    "drug_exposure": [
        "drug_exposure_id",
        "person_id",
        "drug_concept_id",
        "drug_exposure_start_date",
        "drug_exposure_start_datetime",
        "drug_exposure_end_date",
        "drug_exposure_end_datetime",
        "verbatim_end_date",
        "drug_type_concept_id",
        "stop_reason",
        "refills",
        "quantity",
        "days_supply",
        "sig",
        "route_concept_id",
        "lot_number",
        "provider_id",
        "visit_occurrence_id",
        "visit_detail_id",
        "drug_source_value",
        "drug_source_concept_id",
        "route_source_value",
        "dose_unit_source_value",
    ],
    "procedure_occurrence": [
        "procedure_occurrence_id",
        "person_id",
        "procedure_concept_id",
        "procedure_date",
        "procedure_datetime",
        "procedure_end_date",
        "procedure_end_datetime",
        "procedure_type_concept_id",
        "modifier_concept_id",
        "quantity",
        "provider_id",
        "visit_occurrence_id",
        "visit_detail_id",
        "procedure_source_value",
        "procedure_source_concept_id",
        "modifier_source_value",
    ],
    "device_exposure": [
        "device_exposure_id",
        "person_id",
        "device_concept_id",
        "device_exposure_start_date",
        "device_exposure_start_datetime",
        "device_exposure_end_date",
        "device_exposure_end_datetime",
        "device_type_concept_id",
        "unique_device_id",
        "production_id",
        "quantity",
        "provider_id",
        "visit_occurrence_id",
        "visit_detail_id",
        "device_source_value",
        "device_source_concept_id",
        "unit_concept_id",
        "unit_source_value",
        "unit_source_concept_id",
    ],
    "payer_plan_period": [
        "payer_plan_period_id",
        "person_id",
        "payer_plan_period_start_date",
        "payer_plan_period_end_date",
        "payer_concept_id",
        "payer_source_value",
        "payer_source_concept_id",
        "plan_concept_id",
        "plan_source_value",
        "plan_source_concept_id",
        "sponsor_concept_id",
        "sponsor_source_value",
        "sponsor_source_concept_id",
        "family_source_value",
        "stop_reason_concept_id",
        "stop_reason_source_value",
        "stop_reason_source_concept_id",
    ],
    "measurement": [
        "measurement_id",
        "person_id",
        "measurement_concept_id",
        "measurement_date",
        "measurement_datetime",
        "measurement_time",
        "measurement_type_concept_id",
        "operator_concept_id",
        "value_as_number",
        "value_as_concept_id",
        "unit_concept_id",
        "range_low",
        "range_high",
        "provider_id",
        "visit_occurrence_id",
        "visit_detail_id",
        "measurement_source_value",
        "measurement_source_concept_id",
        "unit_source_value",
        "unit_source_concept_id",
        "value_source_value",
        "measurement_event_id",
        "meas_event_field_concept_id",
    ],
    "observation": [
        "observation_id",
        "person_id",
        "observation_concept_id",
        "observation_date",
        "observation_datetime",
        "observation_type_concept_id",
        "value_as_number",
        "value_as_string",
        "value_as_concept_id",
        "qualifier_concept_id",
        "unit_concept_id",
        "provider_id",
        "visit_occurrence_id",
        "visit_detail_id",
        "observation_source_value",
        "observation_source_concept_id",
        "unit_source_value",
        "qualifier_source_value",
        "value_source_value",
        "observation_event_id",
        "obs_event_field_concept_id",
    ],
    "note": [
        "note_id",
        "person_id",
        "note_date",
        "note_datetime",
        "note_type_concept_id",
        "note_class_concept_id",
        "note_title",
        "note_text",
        "encoding_concept_id",
        "language_concept_id",
        "provider_id",
        "visit_occurrence_id",
        "visit_detail_id",
        "note_source_value",
        "note_event_id",
        "note_event_field_concept_id",
    ],
    "specimen": [
        "specimen_id",
        "person_id",
        "specimen_concept_id",
        "specimen_type_concept_id",
        "specimen_date",
        "specimen_datetime",
        "quantity",
        "unit_concept_id",
        "anatomic_site_concept_id",
        "disease_status_concept_id",
        "specimen_source_id",
        "specimen_source_value",
        "unit_source_value",
        "anatomic_site_source_value",
        "disease_status_source_value",
    ],
}
