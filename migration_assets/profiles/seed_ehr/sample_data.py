"""Sample legacy EHR generator.

Produces the tables of Medplum's "Building Migration Pipelines" guide (patients, conditions,
patient_conditions, encounters, encounter_notes) and the rest of a clinic's chart (practitioners,
patient_medications, patient_allergies, observations) at any size, deterministically for a seed, and
writes them to SQLite, PostgreSQL, or a folder of CSV / Parquet files.

Like real legacy data, a small share of values is odd: invalid NPIs, local codes with no approved
terminology mapping, partial dates, units that are not UCUM codes, the occasional unknown status,
non-numeric lab value or time without a UTC offset. The share stays far below the 5 % quarantine
threshold so the default sample loads with every check green.

Randomness is a counter-based splitmix64 written as polars expressions: every random value is a
pure function of (seed, stream, row key), so generation is vectorised, needs no numpy, and the same
seed + size gives byte-identical tables regardless of thread scheduling.

CLI: ``python -m migration_assets.profiles.seed_ehr.sample_data --url sqlite:///.demo/legacy.db --patients 1000``
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import polars as pl

from migration_assets.elements.files import default_files_dir
from migration_assets.source import parse_source_url, redact_url, write_tables

__all__ = [
    "ALLERGEN_CATALOGUE",
    "BLOB_COLUMN",
    "CONDITION_CATALOGUE",
    "ENCOUNTER_TYPES",
    "LAB_TESTS",
    "MEDICATION_CATALOGUE",
    "TABLES",
    "TABLE_PRIMARY_KEYS",
    "UPDATED_AT",
    "UPDATED_AT_FORMAT",
    "VITAL_SIGNS",
    "build_sample_tables",
    "generate_sample_ehr",
    "sample_with_files",
    "with_updated_at",
    "write_sample_files",
]

# Parents first: the order in which tables are written and (in reverse) dropped.
TABLES: tuple[str, ...] = (
    "patients",
    "conditions",
    "patient_conditions",
    "practitioners",
    "organizations",
    "locations",
    "practitioner_roles",
    "encounters",
    "encounter_notes",
    "patient_medications",
    "patient_allergies",
    "observations",
    "procedures",
    "immunizations",
    "lab_reports",
    "lab_report_results",
    "appointments",
    "documents",
)

TABLE_PRIMARY_KEYS: dict[str, str] = {
    "patients": "patient_id",
    "conditions": "condition_id",
    "patient_conditions": "patient_condition_id",
    "practitioners": "practitioner_id",
    "organizations": "organization_id",
    "locations": "location_id",
    "practitioner_roles": "practitioner_role_id",
    "encounters": "encounter_id",
    "encounter_notes": "note_id",
    "patient_medications": "patient_medication_id",
    "patient_allergies": "patient_allergy_id",
    "observations": "observation_id",
    "procedures": "procedure_id",
    "immunizations": "immunization_id",
    "lab_reports": "report_id",
    "lab_report_results": "report_result_id",
    "appointments": "appointment_id",
    "documents": "document_id",
}

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("patient_id", "first_name", "last_name", "birth_date", "gender"),
    "conditions": ("condition_id", "condition_name", "icd10_code"),
    "patient_conditions": ("patient_condition_id", "patient_id", "condition_id", "onset_date"),
    "practitioners": ("practitioner_id", "first_name", "last_name", "npi", "specialty"),
    "organizations": ("organization_id", "name", "kind", "npi", "tax_id", "phone"),
    "locations": ("location_id", "organization_id", "name", "address_line", "city", "state", "postal_code", "phone"),
    "practitioner_roles": (
        "practitioner_role_id",
        "practitioner_id",
        "organization_id",
        "location_id",
        "specialty",
        "active",
    ),
    "encounters": ("encounter_id", "patient_id", "date", "type", "practitioner_id"),
    "encounter_notes": ("note_id", "encounter_id", "note_text"),
    "patient_medications": (
        "patient_medication_id",
        "patient_id",
        "drug_code",
        "drug_name",
        "dosage_text",
        "status",
        "start_date",
        "end_date",
    ),
    "patient_allergies": (
        "patient_allergy_id",
        "patient_id",
        "allergen_code",
        "allergen_name",
        "reaction",
        "severity",
        "clinical_status",
        "verification_status",
        "recorded_date",
    ),
    "observations": (
        "observation_id",
        "patient_id",
        "encounter_id",
        "category",
        "test_code",
        "test_name",
        "value",
        "unit",
        "reference_low",
        "reference_high",
        "observed_at",
    ),
    "procedures": (
        "procedure_id",
        "patient_id",
        "encounter_id",
        "code_system",
        "code",
        "description",
        "performed_date",
    ),
    "immunizations": (
        "immunization_id",
        "patient_id",
        "cvx_code",
        "vaccine_name",
        "administered_date",
        "lot_number",
        "site",
        "status",
        "not_given_reason",
    ),
    "lab_reports": ("report_id", "patient_id", "panel_code", "panel_name", "collected_date", "lab_id"),
    "lab_report_results": ("report_result_id", "report_id", "observation_id"),
    "appointments": (
        "appointment_id",
        "patient_id",
        "practitioner_id",
        "location_id",
        "start_at",
        "end_at",
        "status",
        "encounter_id",
    ),
    "documents": (
        "document_id",
        "patient_id",
        "encounter_id",
        "doc_type",
        "title",
        "file_path",
        "content_type",
        "created_date",
    ),
}

# Columns that may be empty (NULL) in the legacy tables; every other column is always filled.
NULLABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "practitioners": ("npi",),
    "organizations": ("npi", "tax_id", "phone"),
    "locations": ("phone",),
    "practitioner_roles": ("location_id", "specialty"),
    "encounters": ("practitioner_id",),
    "patient_medications": ("end_date",),
    "patient_allergies": ("reaction", "severity", "verification_status", "recorded_date"),
    "observations": ("encounter_id", "unit", "reference_low", "reference_high"),
    "procedures": ("encounter_id",),
    "immunizations": ("lot_number", "site", "not_given_reason"),
    "lab_reports": ("lab_id",),
    "appointments": ("practitioner_id", "location_id", "start_at", "end_at", "encounter_id"),
    "documents": ("encounter_id",),
}

# (local code, name, ICD-10-CM code, relative prevalence weight). HT001 / DM002 are the guide's.
CONDITION_CATALOGUE: tuple[tuple[str, str, str, float], ...] = (
    ("HT001", "Hypertension", "I10", 20.0),
    ("DM002", "Diabetes", "E11", 10.0),
    ("AS003", "Asthma", "J45.909", 5.0),
    ("HL004", "Hyperlipidemia", "E78.5", 12.0),
    ("CO005", "Chronic obstructive pulmonary disease", "J44.9", 3.0),
    ("DP006", "Major depressive disorder", "F32.9", 5.0),
    ("AX007", "Generalized anxiety disorder", "F41.1", 5.0),
    ("OA008", "Osteoarthritis of knee", "M17.9", 4.0),
    ("HF009", "Heart failure", "I50.9", 2.0),
    ("AF010", "Atrial fibrillation", "I48.91", 2.0),
    ("CK011", "Chronic kidney disease", "N18.9", 2.0),
    ("HY012", "Hypothyroidism", "E03.9", 4.0),
    ("OB013", "Obesity", "E66.9", 6.0),
    ("GR014", "Gastro-esophageal reflux disease", "K21.9", 4.0),
    ("MG015", "Migraine", "G43.909", 3.0),
    ("LB016", "Low back pain", "M54.50", 4.0),
    ("AR017", "Allergic rhinitis", "J30.9", 3.0),
    ("OP018", "Osteoporosis", "M81.0", 2.0),
    ("CA019", "Coronary artery disease", "I25.10", 2.0),
    ("PR020", "Prediabetes", "R73.03", 3.0),
)

# (type, weight). Downstream mapping must know this closed set.
ENCOUNTER_TYPES: tuple[tuple[str, float], ...] = (
    ("checkup", 0.45),
    ("followup", 0.25),
    ("emergency", 0.15),
    ("telehealth", 0.15),
)

_SPECIALTIES = (
    "Family Medicine",
    "Internal Medicine",
    "Pediatrics",
    "Cardiology",
    "Endocrinology",
    "Pulmonology",
    "Psychiatry",
    "Orthopedic Surgery",
    "Emergency Medicine",
    "Geriatrics",
)

# (local drug code, name on the legacy medication list, sig, weight). Which codes have an RxNorm
# mapping is decided by terminology/rxnorm.csv, not here: several deliberately have none.
MEDICATION_CATALOGUE: tuple[tuple[str, str, str, float], ...] = (
    ("LIS10", "Lisinopril 10 mg tablet", "Take 1 tablet by mouth once daily", 14.0),
    ("MET500", "Metformin 500 mg tablet", "Take 1 tablet by mouth twice daily with meals", 12.0),
    ("AML5", "Amlodipine 5 mg tablet", "Take 1 tablet by mouth once daily", 10.0),
    ("ATV20", "Atorvastatin 20 mg tablet", "Take 1 tablet by mouth at bedtime", 10.0),
    ("ASA81", "Aspirin 81 mg tablet", "Take 1 tablet by mouth once daily", 9.0),
    ("HCT25", "Hydrochlorothiazide 25 mg tablet", "Take 1 tablet by mouth every morning", 6.0),
    ("ATV80", "Atorvastatin 80 mg tablet", "Take 1 tablet by mouth at bedtime", 4.0),
    ("LEV50", "Levothyroxine 50 mcg tablet", "Take 1 tablet by mouth every morning on an empty stomach", 6.0),
    ("OME20", "Omeprazole 20 mg capsule", "Take 1 capsule by mouth daily before breakfast", 6.0),
    ("SER50", "Sertraline 50 mg tablet", "Take 1 tablet by mouth once daily", 4.0),
    ("ALB90", "Albuterol 90 mcg/actuation inhaler", "Inhale 2 puffs every 4 to 6 hours as needed", 4.0),
    ("FUR20", "Furosemide 20 mg tablet", "Take 1 tablet by mouth once daily", 3.0),
    ("APAP500", "Acetaminophen 500 mg tablet", "Take 1 to 2 tablets by mouth every 6 hours as needed for pain", 6.0),
    ("IBU200", "Ibuprofen 200 mg tablet", "Take 2 tablets by mouth every 8 hours as needed with food", 5.0),
    ("MISC-CREAM", "Compounded hydrocortisone cream (pharmacy mix)", "Apply thinly twice daily", 1.0),
)
# Legacy medication statuses and their weights; the last is an odd value with no FHIR mapping.
_MEDICATION_STATUSES = (
    ("Active", 0.60),
    ("Discontinued", 0.24),
    ("Completed", 0.12),
    ("On Hold", 0.035),
    ("Pending review", 0.005),
)

# (local allergen code, name, weight). terminology/allergy_snomed.csv maps some of them.
ALLERGEN_CATALOGUE: tuple[tuple[str, str, float], ...] = (
    ("ALG-PCN", "Penicillin", 20.0),
    ("ALG-SULFA", "Sulfonamide antibiotics", 8.0),
    ("ALG-AMOX", "Amoxicillin", 6.0),
    ("ALG-ASA", "Aspirin", 5.0),
    ("ALG-IBU", "Ibuprofen", 4.0),
    ("ALG-COD", "Codeine", 5.0),
    ("ALG-LATEX", "Latex", 5.0),
    ("ALG-PEANUT", "Peanuts", 8.0),
    ("ALG-EGG", "Eggs", 4.0),
    ("ALG-BEE", "Bee stings", 4.0),
    ("ALG-SHELL", "Shellfish", 8.0),
    ("ALG-CONTRAST", "Iodinated contrast dye", 4.0),
    ("ALG-ADHESIVE", "Adhesive tape", 3.0),
)
# Severity as the legacy system spells it (mixed case), with the reactions that go with it.
_SEVERITIES = (("mild", 0.42), ("moderate", 0.36), ("Moderate", 0.05), ("severe", 0.165), ("high", 0.005))
_REACTIONS = {
    "mild": ("Rash", "Itching", "Nausea"),
    "moderate": ("Hives", "Swelling of lips", "Vomiting"),
    "severe": ("Anaphylaxis", "Shortness of breath", "Angioedema"),
}

# Vital signs: (local code, name, [(unit, weight, low, high)], decimals, weight). Units are what the
# legacy system wrote: mostly UCUM codes, sometimes not (mmHg, bpm, F, lbs): kept as given.
VITAL_SIGNS: tuple[tuple[str, str, tuple[tuple[str, float, float, float], ...], int, float], ...] = (
    ("BP-SYS", "Systolic blood pressure", (("mm[Hg]", 0.85, 95, 165), ("mmHg", 0.15, 95, 165)), 0, 3.0),
    ("BP-DIA", "Diastolic blood pressure", (("mm[Hg]", 0.85, 55, 100), ("mmHg", 0.15, 55, 100)), 0, 3.0),
    ("HR", "Heart rate", (("/min", 0.85, 50, 110), ("bpm", 0.15, 50, 110)), 0, 2.0),
    (
        "TEMP",
        "Body temperature",
        (("Cel", 0.80, 36.0, 38.5), ("[degF]", 0.15, 96.8, 101.3), ("F", 0.05, 96.8, 101.3)),
        1,
        1.0,
    ),
    ("WT", "Body weight", (("kg", 0.80, 45, 130), ("[lb_av]", 0.10, 100, 285), ("lbs", 0.10, 100, 285)), 1, 1.5),
    ("HT", "Body height", (("cm", 0.90, 150, 195), ("[in_i]", 0.10, 59, 77)), 0, 0.5),
    ("SPO2", "Oxygen saturation", (("%", 1.0, 90, 100),), 0, 1.0),
    ("RR", "Respiratory rate", (("/min", 1.0, 12, 22),), 0, 0.5),
)
# Labs: (local code, name, [(unit, weight, low, high, reference low, reference high)], decimals, weight).
LAB_TESTS: tuple[
    tuple[str, str, tuple[tuple[str, float, float, float, str | None, str | None], ...], int, float], ...
] = (
    ("HBA1C", "Hemoglobin A1c", (("%", 1.0, 4.8, 10.5, "4.0", "5.6"),), 1, 2.0),
    ("GLU", "Glucose", (("mg/dL", 0.95, 70, 220, "70", "99"), ("mmol/L", 0.05, 3.9, 12.2, "3.9", "5.5")), 0, 2.0),
    ("CHOL", "Cholesterol, total", (("mg/dL", 1.0, 140, 280, None, "200"),), 0, 1.5),
    ("HDL", "HDL cholesterol", (("mg/dL", 1.0, 30, 90, "40", None),), 0, 1.5),
    ("LDL", "LDL cholesterol, calculated", (("mg/dL", 1.0, 60, 190, None, "100"),), 0, 1.5),
    ("TRIG", "Triglycerides", (("mg/dL", 1.0, 50, 400, None, "150"),), 0, 1.5),
    ("CREAT", "Creatinine", (("mg/dL", 1.0, 0.6, 1.8, "0.60", "1.30"),), 2, 1.5),
    ("HGB", "Hemoglobin", (("g/dL", 1.0, 10.5, 17.5, "12.0", "17.5"),), 1, 1.0),
    ("WBC", "White blood cell count", (("10*3/uL", 1.0, 3.5, 12.0, "4.0", "11.0"),), 1, 1.0),
    (
        "TSH",
        "Thyrotropin",
        (("m[IU]/L", 0.7, 0.3, 6.0, "0.40", "4.00"), ("uIU/mL", 0.3, 0.3, 6.0, "0.40", "4.00")),
        2,
        1.0,
    ),
    ("K", "Potassium", (("mmol/L", 1.0, 3.3, 5.4, "3.5", "5.1"),), 1, 1.0),
    ("NA", "Sodium", (("mmol/L", 1.0, 133, 146, "135", "145"),), 0, 1.0),
    ("VITD", "Vitamin D, 25-hydroxy", (("ng/mL", 1.0, 12, 60, "30", "100"),), 0, 0.7),
    ("PSA", "Prostate specific antigen", (("ng/mL", 1.0, 0.1, 6.0, None, "4.0"),), 1, 0.5),
    ("CRP", "C-reactive protein", (("mg/L", 1.0, 0.5, 30.0, None, "5.0"),), 1, 0.5),
)
# What a lab system writes instead of a number now and then (quarantined: not a result).
_NON_NUMERIC_RESULTS = ("hemolyzed", "QNS", "see comment")

_MALE_FIRST = (
    "John",
    "Michael",
    "David",
    "James",
    "Robert",
    "William",
    "Daniel",
    "Thomas",
    "Christopher",
    "Matthew",
    "Anthony",
    "Mark",
    "Joseph",
    "Carlos",
    "José",
    "Luis",
    "Mohammed",
    "Ahmed",
    "Wei",
    "Hiroshi",
    "Raj",
    "Arjun",
    "Liam",
    "Noah",
    "Ethan",
    "Lucas",
    "Mateo",
    "François",
    "Björn",
    "Seán",
)
_FEMALE_FIRST = (
    "Jane",
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Emily",
    "Olivia",
    "Emma",
    "Sophia",
    "Isabella",
    "María",
    "Zoë",
    "Chloé",
    "Renée",
    "Fatima",
    "Aisha",
    "Mei",
    "Yuki",
    "Priya",
    "Ananya",
    "Ingrid",
    "Siobhán",
    "Lucía",
    "Amélie",
    "Noor",
)
_NEUTRAL_FIRST = ("Alex", "Sam", "Jordan", "Taylor", "Robin", "Casey", "Morgan", "Jamie", "Riley", "Avery")
_LAST = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernández",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Pérez",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Nguyễn",
    "Trần",
    "Kim",
    "Park",
    "Chen",
    "Wang",
    "Patel",
    "Singh",
    "Khan",
    "O'Brien",
    "O'Connor",
    "Müller",
    "Schröder",
    "Dubois",
    "Ødegård",
    "Kowalski",
    "Novák",
    "Silva",
    "Gonçalves",
    "Ivanova",
)

_NOTE_OPENERS: dict[str, tuple[str, ...]] = {
    "checkup": (
        "Routine check-up.",
        "Annual wellness visit.",
        "Scheduled preventive visit.",
    ),
    "followup": (
        "Follow-up visit.",
        "Follow-up on recent lab results.",
        "Return visit to review treatment response.",
    ),
    "emergency": (
        "Emergency visit due to chest pain.",
        "Emergency visit due to severe headache.",
        "Emergency visit after a fall at home.",
    ),
    "telehealth": (
        "Telehealth consultation.",
        "Video visit at patient's request.",
        "Telephone follow-up.",
    ),
}
_NOTE_FINDINGS = (
    "Patient's hypertension is well-controlled.",
    "Blood pressure elevated at 150/95.",
    "HbA1c 7.2%, slightly above target.",
    "No acute distress; vitals within normal limits.",
    "Patient reports improved sleep and energy.",
    "Mild shortness of breath on exertion.",
    "Patient reports intermittent lower back pain.",
    "Weight stable since last visit.",
    "Patient's diabetes is poorly controlled.",
    "Lungs clear to auscultation; heart regular rate and rhythm.",
)
_NOTE_PLANS = (
    "Diabetes management plan reviewed.",
    "Continue current medications.",
    "Further tests ordered.",
    "Medication dose adjusted; recheck in 4 weeks.",
    "Referred to cardiology.",
    "Lifestyle counselling provided (diet, exercise).",
    "Return if symptoms worsen.",
    "Labs ordered: CBC, BMP, lipid panel.",
)

# Fixed "today" so output never depends on the wall clock.
_BIRTH_MIN = dt.date(1930, 1, 1)
_BIRTH_MAX = dt.date(2020, 12, 31)
_DATA_END = dt.date(2025, 6, 30)
_ENCOUNTERS_START = dt.date(2015, 1, 1)
_EPOCH = dt.date(1970, 1, 1)

# Poisson(2) CDF: counts of conditions / encounters per generated patient (mean ~2, capped at 8).
_POISSON2_CDF = (0.1353, 0.4060, 0.6767, 0.8571, 0.9473, 0.9834, 0.9955, 0.9989)
_MEDICATIONS_START = dt.date(2010, 1, 1)
# The clinic's time zone: vital signs carry a local time with its UTC offset.
_CLINIC_TIME_ZONE = "America/New_York"
_NPI_PREFIX = "80840"

_M64 = (1 << 64) - 1


def _splitmix64_int(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _u64(v: int) -> pl.Expr:
    return pl.lit(v, dtype=pl.UInt64)


def _uniform(key: pl.Expr, seed: int, stream: int) -> pl.Expr:
    """Uniform float in [0, 1) from splitmix64(key + offset(seed, stream)); UInt64 arithmetic wraps."""
    offset = _splitmix64_int(_splitmix64_int(seed & _M64) ^ (stream * 0xD1B54A32D192ED03 & _M64))
    x = key.cast(pl.UInt64) + _u64(offset)
    x = x + _u64(0x9E3779B97F4A7C15)
    x = (x ^ (x // _u64(1 << 30))) * _u64(0xBF58476D1CE4E5B9)
    x = (x ^ (x // _u64(1 << 27))) * _u64(0x94D049BB133111EB)
    x = x ^ (x // _u64(1 << 31))
    # Top 53 bits -> exact double in [0, 1).
    return (x // _u64(1 << 11)).cast(pl.Float64) / float(1 << 53)


def _pick(options: tuple[str, ...], u: pl.Expr) -> pl.Expr:
    idx = (u * len(options)).floor().cast(pl.UInt32)
    return pl.lit(pl.Series(options, dtype=pl.String)).gather(idx)


def _weighted_index(weights: tuple[float, ...], u: pl.Expr) -> pl.Expr:
    """Index i with probability weights[i] / sum(weights), for u uniform in [0, 1)."""
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights[:-1]:
        acc += w / total
        cum.append(acc)
    # Thresholds <= u = chosen index (one binary search per row).
    return pl.lit(pl.Series(cum, dtype=pl.Float64)).search_sorted(u, side="right").cast(pl.UInt32)


def _pick_weighted(options: tuple[str, ...], weights: tuple[float, ...], u: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(options, dtype=pl.String)).gather(_weighted_index(weights, u))


def _poisson2(u: pl.Expr) -> pl.Expr:
    return pl.lit(pl.Series(_POISSON2_CDF, dtype=pl.Float64)).search_sorted(u, side="right").cast(pl.UInt32)


def _poisson(mean: float, u: pl.Expr, cap: int = 8) -> pl.Expr:
    """A Poisson(mean) count (capped) for u uniform in [0, 1)."""
    cdf, term, total = [], math.exp(-mean), 0.0
    for k in range(cap):
        total += term
        cdf.append(total)
        term *= mean / (k + 1)
    return pl.lit(pl.Series(cdf, dtype=pl.Float64)).search_sorted(u, side="right").cast(pl.UInt32)


def _decimal_text(low: pl.Expr, high: pl.Expr, decimals: pl.Expr, u: pl.Expr) -> pl.Expr:
    """A value between low and high written with exactly `decimals` decimals ("7.20", not 7.2)."""
    scale = pl.lit(pl.Series([1, 10, 100, 1000], dtype=pl.Int64)).gather(decimals)
    scaled = (low * scale).round(0).cast(pl.Int64) + (u * (high - low) * scale).floor().cast(pl.Int64)
    whole = (scaled // scale).cast(pl.String)
    fraction = (scaled % scale).cast(pl.String).str.zfill(decimals.cast(pl.Int64))
    return pl.when(decimals == 0).then(whole).otherwise(whole + "." + fraction)


def _npi_check_digit(nine_digits: pl.Expr) -> pl.Expr:
    """The Luhn check digit of an NPI: computed over the prefix 80840 and the first nine digits."""
    body = pl.lit(_NPI_PREFIX) + nine_digits
    total = pl.lit(0, dtype=pl.Int64)
    for position in range(14):
        digit = body.str.slice(position, 1).cast(pl.Int64)
        # The check digit will sit right of position 13, so positions 13, 11, ... are doubled.
        if (13 - position) % 2 == 0:
            digit = digit * 2
            digit = pl.when(digit > 9).then(digit - 9).otherwise(digit)
        total = total + digit
    return ((10 - total % 10) % 10).cast(pl.String)


def _days(d: dt.date) -> int:
    return (d - _EPOCH).days


def _iso(days: pl.Expr) -> pl.Expr:
    return days.cast(pl.Int32).cast(pl.Date).cast(pl.String)


def _key(prefix: str, number: pl.Expr, width: int) -> pl.Expr:
    return pl.lit(prefix) + number.cast(pl.String).str.zfill(width)


def _width(max_number: int) -> int:
    # At least 6 digits so ids look alike across sizes; wider when the size needs it.
    return max(6, len(str(max_number)))


def _guide_tables() -> dict[str, pl.DataFrame]:
    s = pl.String
    return {
        "patients": pl.DataFrame(
            {
                "patient_id": ["P001", "P002"],
                "first_name": ["John", "Jane"],
                "last_name": ["Doe", "Smith"],
                "birth_date": ["1980-07-15", "1992-11-30"],
                "gender": ["M", "F"],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["patients"], s),
        ),
        "patient_conditions": pl.DataFrame(
            {
                "patient_condition_id": ["PC001", "PC002", "PC003"],
                "patient_id": ["P001", "P001", "P002"],
                "condition_id": ["HT001", "DM002", "HT001"],
                "onset_date": ["2022-03-15", "2023-01-10", "2023-02-22"],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["patient_conditions"], s),
        ),
        "encounters": pl.DataFrame(
            {
                "encounter_id": ["E001", "E002"],
                "patient_id": ["P001", "P002"],
                "date": ["2023-06-15", "2023-06-16"],
                "type": ["checkup", "emergency"],
                # The guide has no practitioners: the check-up gets the clinic's first one, the
                # emergency visit records none (a nullable column, as in most legacy systems).
                "practitioner_id": ["DR001", None],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["encounters"], s),
        ),
        "practitioners": pl.DataFrame(
            [("DR001", "Maria", "Alvarez", "1234567893", "Family Medicine")],
            schema=dict.fromkeys(TABLE_COLUMNS["practitioners"], s),
            orient="row",
        ),
        "patient_medications": pl.DataFrame(
            [
                (
                    "PM001",
                    "P001",
                    "LIS10",
                    "Lisinopril 10 mg tablet",
                    "Take 1 tablet by mouth once daily",
                    "Active",
                    "2022-03-20",
                    None,
                ),
                (
                    "PM002",
                    "P001",
                    "MET500",
                    "Metformin 500 mg tablet",
                    "Take 1 tablet by mouth twice daily with meals",
                    "Active",
                    "2023-01",
                    None,
                ),
                (
                    "PM003",
                    "P002",
                    "IBU200",
                    "Ibuprofen 200 mg tablet",
                    "Take 2 tablets by mouth every 8 hours as needed with food",
                    "Completed",
                    "2023-06-16",
                    "2023-06-23",
                ),
            ],
            schema=dict.fromkeys(TABLE_COLUMNS["patient_medications"], s),
            orient="row",
        ),
        "patient_allergies": pl.DataFrame(
            [("AL001", "P002", "ALG-PCN", "Penicillin", "Hives", "moderate", "Active", "Confirmed", "2015-04-02")],
            schema=dict.fromkeys(TABLE_COLUMNS["patient_allergies"], s),
            orient="row",
        ),
        "observations": pl.DataFrame(
            [
                (
                    "OB001",
                    "P001",
                    "E001",
                    "vital",
                    "BP-SYS",
                    "Systolic blood pressure",
                    "128",
                    "mm[Hg]",
                    None,
                    None,
                    "2023-06-15T09:30:00-04:00",
                ),
                (
                    "OB002",
                    "P001",
                    "E001",
                    "vital",
                    "BP-DIA",
                    "Diastolic blood pressure",
                    "82",
                    "mm[Hg]",
                    None,
                    None,
                    "2023-06-15T09:30:00-04:00",
                ),
                ("OB003", "P001", None, "lab", "HBA1C", "Hemoglobin A1c", "7.2", "%", "4.0", "5.6", "2023-06-10"),
                (
                    "OB004",
                    "P002",
                    "E002",
                    "vital",
                    "HR",
                    "Heart rate",
                    "96",
                    "/min",
                    None,
                    None,
                    "2023-06-16T22:15:00-04:00",
                ),
            ],
            schema=dict.fromkeys(TABLE_COLUMNS["observations"], s),
            orient="row",
        ),
        "encounter_notes": pl.DataFrame(
            {
                "note_id": ["N001", "N002"],
                "encounter_id": ["E001", "E002"],
                "note_text": [
                    ("Routine check-up. Patient's hypertension is well-controlled. Diabetes management plan reviewed."),
                    (
                        "Emergency visit due to severe headache. Patient's hypertension may need adjustment. "
                        "Further tests ordered."
                    ),
                ],
            },
            schema=dict.fromkeys(TABLE_COLUMNS["encounter_notes"], s),
        ),
    }


def build_sample_tables(patients: int = 1000, seed: int = 7, updated_at: bool = False) -> dict[str, pl.DataFrame]:
    """Build the legacy tables in memory (all columns pl.String).

    ``patients`` is the total patient count including the guide's P001 and P002, so ``patients=2``
    yields exactly the guide's dataset. Same (patients, seed) -> identical frames.

    ``updated_at``: every table gets a last column UPDATED_AT (ISO timestamp text, UTC, fixed width,
    see UPDATED_AT_FORMAT), as an application that tracks changes keeps it; the sync's watermark reads it.
    """
    tables = _build_sample_tables(patients, seed)
    return with_updated_at(tables, seed) if updated_at else tables


# The change-tracking column of the legacy tables (opt-in: TABLE_COLUMNS stays the guide's schema).
UPDATED_AT = "updated_at"
# Fixed width and UTC so that timestamps compare correctly as text, in SQL and in polars (Python strftime).
UPDATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def with_updated_at(tables: dict[str, pl.DataFrame], seed: int = 7) -> dict[str, pl.DataFrame]:
    """Each table with an UPDATED_AT column: a time in the year before the data end, per row and seed."""
    start = dt.datetime.combine(_DATA_END, dt.time(), tzinfo=dt.UTC) - dt.timedelta(days=365)
    out = {}
    for stream, (name, frame) in enumerate(tables.items(), start=90):
        seconds = (_uniform(pl.int_range(pl.len(), dtype=pl.UInt64), seed, stream) * 365 * 86400).floor().cast(pl.Int64)
        # chrono's spelling of UPDATED_AT_FORMAT (microseconds: %.6f, not %f, which gives nanoseconds)
        stamps = (pl.lit(start) + pl.duration(seconds=seconds)).dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        out[name] = frame.with_columns(stamps.alias(UPDATED_AT))
    return out


def _build_sample_tables(patients: int, seed: int) -> dict[str, pl.DataFrame]:
    if patients < 2:
        raise ValueError(f"patients must be >= 2 (the guide's P001 and P002 are always included), got {patients}")
    guide = _guide_tables()
    conditions = pl.DataFrame(
        {
            "condition_id": [c[0] for c in CONDITION_CATALOGUE],
            "condition_name": [c[1] for c in CONDITION_CATALOGUE],
            "icd10_code": [c[2] for c in CONDITION_CATALOGUE],
        },
        schema=dict.fromkeys(TABLE_COLUMNS["conditions"], pl.String),
    )

    # --- patients: numbers 3..patients, every attribute a function of (seed, stream, number).
    birth_lo, birth_span = _days(_BIRTH_MIN), _days(_BIRTH_MAX) - _days(_BIRTH_MIN) + 1
    n = pl.col("n")
    genders = ("M", "F", "O", "U")
    gen = pl.DataFrame({"n": pl.int_range(3, patients + 1, dtype=pl.UInt64, eager=True)}).with_columns(
        g=_weighted_index((0.485, 0.485, 0.015, 0.015), _uniform(n, seed, 1)),
        u_first=_uniform(n, seed, 2),
        birth_days=(pl.lit(birth_lo) + (_uniform(n, seed, 4) * birth_span).floor().cast(pl.Int64)),
        last_name=_pick(_LAST, _uniform(n, seed, 3)),
        n_conditions=_poisson2(_uniform(n, seed, 5)),
        n_encounters=_poisson2(_uniform(n, seed, 6)),
    )
    # One flat first-name list; each gender draws from its own slice (O/U from neutral names).
    first_names = _MALE_FIRST + _FEMALE_FIRST + _NEUTRAL_FIRST
    offsets = (0, len(_MALE_FIRST), len(_MALE_FIRST) + len(_FEMALE_FIRST), len(_MALE_FIRST) + len(_FEMALE_FIRST))
    sizes = (len(_MALE_FIRST), len(_FEMALE_FIRST), len(_NEUTRAL_FIRST), len(_NEUTRAL_FIRST))
    g = pl.col("g")
    first_idx = pl.lit(pl.Series(offsets, dtype=pl.UInt32)).gather(g) + (
        pl.col("u_first") * pl.lit(pl.Series(sizes, dtype=pl.Float64)).gather(g)
    ).floor().cast(pl.UInt32)
    gen = gen.with_columns(
        gender=pl.lit(pl.Series(genders, dtype=pl.String)).gather(g),
        first_name=pl.lit(pl.Series(first_names, dtype=pl.String)).gather(first_idx),
    )
    pwidth = _width(patients)
    gen = gen.with_columns(patient_id=_key("P", n, pwidth))
    patients_df = pl.concat(
        [
            guide["patients"],
            gen.select("patient_id", "first_name", "last_name", birth_date=_iso(pl.col("birth_days")), gender="gender"),
        ]
    )

    # --- patient_conditions: explode per-patient counts; row key = patient number * 16 + ordinal.
    end = _days(_DATA_END)
    rowkey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    pc = (
        gen.select("n", "patient_id", "birth_days", k=pl.int_ranges(0, "n_conditions", dtype=pl.UInt32))
        .explode("k")
        .drop_nulls("k")
        .with_columns(u_cond=_uniform(rowkey, seed, 7), u_onset=_uniform(rowkey, seed, 8))
        .with_columns(
            condition_id=_pick_weighted(
                tuple(c[0] for c in CONDITION_CATALOGUE), tuple(c[3] for c in CONDITION_CATALOGUE), pl.col("u_cond")
            ),
            # Strictly after birth, no later than the fixed data end date.
            onset_days=pl.col("birth_days")
            + 1
            + (pl.col("u_onset") * (end - pl.col("birth_days"))).floor().cast(pl.Int64),
        )
        # A patient has each condition at most once.
        .unique(subset=["n", "condition_id"], keep="first", maintain_order=True)
    )
    pc_width = _width(pc.height + 3)
    pc = pc.select(
        patient_condition_id=_key("PC", pl.int_range(4, pl.len() + 4, dtype=pl.UInt64), pc_width),
        patient_id="patient_id",
        condition_id="condition_id",
        onset_date=_iso(pl.col("onset_days")),
    )

    # --- encounters: recent (since 2015 or birth), chronological within each patient.
    enc_start = _days(_ENCOUNTERS_START)
    types = tuple(t[0] for t in ENCOUNTER_TYPES)
    enc = (
        gen.select("n", "patient_id", "birth_days", k=pl.int_ranges(0, "n_encounters", dtype=pl.UInt32))
        .explode("k")
        .drop_nulls("k")
        .with_columns(
            lo=pl.max_horizontal(pl.col("birth_days") + 1, pl.lit(enc_start)),
            u_date=_uniform(rowkey, seed, 9),
            t=_weighted_index(tuple(t[1] for t in ENCOUNTER_TYPES), _uniform(rowkey, seed, 10)),
            has_note=_uniform(rowkey, seed, 11) < 0.85,
            u_open=_uniform(rowkey, seed, 12),
            u_find=_uniform(rowkey, seed, 13),
            u_plan=_uniform(rowkey, seed, 14),
        )
        .with_columns(
            days=pl.col("lo") + (pl.col("u_date") * (end - pl.col("lo") + 1)).floor().cast(pl.Int64),
            type=pl.lit(pl.Series(types, dtype=pl.String)).gather(pl.col("t")),
        )
        .sort("n", "days", "k")
    )
    enc_width = _width(enc.height + 2)
    practitioner_count = _practitioner_count(patients)
    practitioner = pl.lit(1, dtype=pl.UInt64) + (_uniform(rowkey, seed, 15) * practitioner_count).floor().cast(
        pl.UInt64
    )
    enc = enc.with_columns(
        encounter_id=_key("E", pl.int_range(3, pl.len() + 3, dtype=pl.UInt64), enc_width),
        # Most visits name their practitioner; some legacy rows do not.
        practitioner_id=pl.when(_uniform(rowkey, seed, 16) >= 0.08).then(
            _practitioner_id(practitioner, practitioner_count)
        ),
    )
    encounters_df = pl.concat(
        [
            guide["encounters"],
            enc.select(
                "encounter_id", "patient_id", date=_iso(pl.col("days")), type="type", practitioner_id="practitioner_id"
            ),
        ]
    )

    # --- encounter_notes: one for most encounters; text = opener(type) + finding + plan.
    # Openers: one flat list, the same number of variants per encounter type, in ENCOUNTER_TYPES order.
    openers = tuple(o for t in types for o in _NOTE_OPENERS[t])
    per_type = len(_NOTE_OPENERS[types[0]])
    assert all(len(_NOTE_OPENERS[t]) == per_type for t in types)
    opener_idx = pl.col("t") * per_type + (pl.col("u_open") * per_type).floor().cast(pl.UInt32)
    notes = enc.filter("has_note").select(
        "encounter_id",
        note_text=pl.concat_str(
            [
                pl.lit(pl.Series(openers, dtype=pl.String)).gather(opener_idx),
                _pick(_NOTE_FINDINGS, pl.col("u_find")),
                _pick(_NOTE_PLANS, pl.col("u_plan")),
            ],
            separator=" ",
        ),
    )
    note_width = _width(notes.height + 2)
    notes = notes.select(
        note_id=_key("N", pl.int_range(3, pl.len() + 3, dtype=pl.UInt64), note_width),
        encounter_id="encounter_id",
        note_text="note_text",
    )

    practitioners = _practitioners(patients, seed, guide["practitioners"])
    organizations, locations = _organizations_and_locations()
    practitioner_roles = _practitioner_roles(practitioners, seed)
    medications = _medications(gen, seed, guide["patient_medications"])
    allergies = _allergies(gen, seed, guide["patient_allergies"])
    observations = _observations(gen, enc, seed, guide["observations"])

    history = _procedures_and_immunizations(gen, enc, seed)
    reports, report_results = _lab_reports(observations)
    appointments = _appointments(enc, encounters_df, seed)
    documents = _documents(encounters_df, seed)

    return {
        "patients": patients_df,
        "conditions": conditions,
        "patient_conditions": pl.concat([guide["patient_conditions"], pc]),
        "practitioners": practitioners,
        "organizations": organizations,
        "locations": locations,
        "practitioner_roles": practitioner_roles,
        "encounters": encounters_df,
        "encounter_notes": pl.concat([guide["encounter_notes"], notes]),
        "patient_medications": medications,
        "patient_allergies": allergies,
        "observations": observations,
        "procedures": history["procedures"],
        "immunizations": history["immunizations"],
        "lab_reports": reports,
        "lab_report_results": report_results,
        "appointments": appointments,
        "documents": documents,
    }


def _practitioner_count(patients: int) -> int:
    return max(3, patients // 50)


def _practitioner_id(number: pl.Expr, count: int) -> pl.Expr:
    """DR001 is the guide's practitioner; the generated ones follow as DR000002, DR000003, ..."""
    return pl.when(number == 1).then(pl.lit("DR001")).otherwise(_key("DR", number, _width(count)))


def _practitioners(patients: int, seed: int, guide: pl.DataFrame) -> pl.DataFrame:
    count = _practitioner_count(patients)
    n = pl.col("n")
    nine = (pl.lit(1) + (_uniform(n, seed, 33) * 2).floor().cast(pl.Int64)).cast(pl.String) + (
        (_uniform(n, seed, 34) * 1e8).floor().cast(pl.Int64).cast(pl.String).str.zfill(8)
    )
    check = _npi_check_digit(pl.col("nine"))
    u_npi = _uniform(n, seed, 35)
    npi = (
        pl.when(u_npi < 0.03)
        .then(pl.lit(None, pl.String))  # no NPI recorded
        .when(u_npi < 0.06)
        .then(pl.col("nine") + ((check.cast(pl.Int64) + 1) % 10).cast(pl.String))  # typo
        .when(u_npi < 0.08)
        .then(pl.col("nine"))  # a digit short
        .otherwise(pl.col("nine") + check)
    )
    generated = (
        pl.DataFrame({"n": pl.int_range(2, count + 1, dtype=pl.UInt64, eager=True)})
        .with_columns(nine=nine)
        .select(
            practitioner_id=_practitioner_id(n, count),
            first_name=_pick(_MALE_FIRST + _FEMALE_FIRST, _uniform(n, seed, 30)),
            last_name=_pick(_LAST, _uniform(n, seed, 31)),
            npi=npi,
            specialty=_pick(_SPECIALTIES, _uniform(n, seed, 32)),
        )
    )
    return pl.concat([guide, generated])


# The clinic, its sites, the outside labs it orders from and the practices that refer to it:
# (organization_id, name, kind, nine NPI digits or None, tax id or None, phone). The check digit of
# each NPI is computed, so every NPI here is valid; a lab known only by its tax id has no NPI.
_ORGANIZATIONS: tuple[tuple[str, str, str, str | None, str | None, str | None], ...] = (
    ("ORG001", "Riverside Family Health", "clinic", "165432178", "12-3456789", "555-0100"),
    ("ORG002", "Northgate Clinical Laboratory", "lab", "178901234", None, "555-0140"),
    ("ORG003", "Bayview Pathology Services", "lab", None, "98-7654321", None),
    ("ORG004", "Lakeside Cardiology Associates", "referring_practice", "112233445", None, "555-0171"),
    ("ORG005", "Hillcrest Pediatrics", "referring_practice", "154433221", "45-6789012", "555-0172"),
)
# (location_id, organization_id, name, address line, city, state, postal code, phone)
_LOCATIONS: tuple[tuple[str, str, str, str, str, str, str, str | None], ...] = (
    (
        "LOC001",
        "ORG001",
        "Riverside Family Health - Main Street",
        "120 Main Street",
        "Springfield",
        "MA",
        "01103",
        "555-0101",
    ),
    (
        "LOC002",
        "ORG001",
        "Riverside Family Health - Northside",
        "48 North Avenue",
        "Springfield",
        "MA",
        "01107",
        "555-0102",
    ),
    ("LOC003", "ORG002", "Northgate Patient Service Center", "9 Lab Way", "Chicopee", "MA", "01013", None),
)


def _organizations_and_locations() -> tuple[pl.DataFrame, pl.DataFrame]:
    organizations = pl.DataFrame(
        [(key, name, kind, nine, tax, phone) for key, name, kind, nine, tax, phone in _ORGANIZATIONS],
        schema=dict.fromkeys(TABLE_COLUMNS["organizations"], pl.String),
        orient="row",
    ).with_columns(npi=pl.col("npi") + _npi_check_digit(pl.col("npi")))
    locations = pl.DataFrame(
        list(_LOCATIONS), schema=dict.fromkeys(TABLE_COLUMNS["locations"], pl.String), orient="row"
    )
    return organizations, locations


def _practitioner_roles(practitioners: pl.DataFrame, seed: int) -> pl.DataFrame:
    """One role per practitioner at the clinic, at one of its two sites, in the practitioner's
    specialty; a few are no longer active."""
    n = pl.int_range(1, pl.len() + 1, dtype=pl.UInt64)
    return practitioners.select(
        practitioner_role_id=pl.lit("PR-") + pl.col("practitioner_id"),
        practitioner_id="practitioner_id",
        organization_id=pl.lit("ORG001"),
        location_id=pl.when(_uniform(n, seed, 36) < 0.6).then(pl.lit("LOC001")).otherwise(pl.lit("LOC002")),
        specialty="specialty",
        active=pl.when(_uniform(n, seed, 37) < 0.9).then(pl.lit("Y")).otherwise(pl.lit("N")),
    )


def _partial_date(days: pl.Expr, u: pl.Expr, month_share: float, year_share: float) -> pl.Expr:
    """An ISO date, cut to YYYY-MM or YYYY for a share of rows (legacy systems allowed partial dates)."""
    text = _iso(days)
    return (
        pl.when(u < year_share)
        .then(text.str.slice(0, 4))
        .when(u < year_share + month_share)
        .then(text.str.slice(0, 7))
        .otherwise(text)
    )


def _medications(gen: pl.DataFrame, seed: int, guide: pl.DataFrame) -> pl.DataFrame:
    end = _days(_DATA_END)
    rowkey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    drug = _weighted_index(tuple(m[3] for m in MEDICATION_CATALOGUE), _uniform(rowkey, seed, 21))
    status = _pick_weighted(
        tuple(s for s, _ in _MEDICATION_STATUSES), tuple(w for _, w in _MEDICATION_STATUSES), _uniform(rowkey, seed, 22)
    )
    meds = (
        gen.select(
            "n",
            "patient_id",
            "birth_days",
            k=pl.int_ranges(0, _poisson(1.5, _uniform(pl.col("n"), seed, 20)), dtype=pl.UInt32),
        )
        .explode("k")
        .drop_nulls("k")
        .with_columns(
            drug=drug,
            status=status,
            lo=pl.max_horizontal(pl.col("birth_days") + 1, pl.lit(_days(_MEDICATIONS_START))),
            u_prec=_uniform(rowkey, seed, 25),
            u_odd=_uniform(rowkey, seed, 26),
        )
        .with_columns(
            start_days=pl.col("lo") + (_uniform(rowkey, seed, 23) * (end - pl.col("lo") + 1)).floor().cast(pl.Int64)
        )
        .with_columns(
            end_days=pl.when(pl.col("status").is_in(["Discontinued", "Completed"])).then(
                pl.min_horizontal(
                    pl.col("start_days") + 7 + (_uniform(rowkey, seed, 24) * 1100).floor().cast(pl.Int64), pl.lit(end)
                )
            )
        )
        .sort("n", "start_days", "k")
    )
    start = _partial_date(pl.col("start_days"), pl.col("u_prec"), 0.05, 0.02)
    # A few impossible dates, as typed into a free-text date field.
    start = (
        pl.when(pl.col("u_odd") < 0.003).then(_iso(pl.col("start_days")).str.slice(0, 4) + "-02-30").otherwise(start)
    )
    width = _width(meds.height + 3)
    generated = meds.select(
        patient_medication_id=_key("PM", pl.int_range(4, pl.len() + 4, dtype=pl.UInt64), width),
        patient_id="patient_id",
        drug_code=pl.lit(pl.Series([m[0] for m in MEDICATION_CATALOGUE], dtype=pl.String)).gather(pl.col("drug")),
        drug_name=pl.lit(pl.Series([m[1] for m in MEDICATION_CATALOGUE], dtype=pl.String)).gather(pl.col("drug")),
        dosage_text=pl.lit(pl.Series([m[2] for m in MEDICATION_CATALOGUE], dtype=pl.String)).gather(pl.col("drug")),
        status="status",
        start_date=start,
        end_date=_iso(pl.col("end_days")),
    )
    return pl.concat([guide, generated])


def _allergies(gen: pl.DataFrame, seed: int, guide: pl.DataFrame) -> pl.DataFrame:
    end = _days(_DATA_END)
    rowkey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    allergen = _weighted_index(tuple(a[2] for a in ALLERGEN_CATALOGUE), _uniform(rowkey, seed, 41))
    severity = _weighted_index(tuple(w for _, w in _SEVERITIES), _uniform(rowkey, seed, 42))
    # Reactions in one flat list, three per severity group (mild, moderate, severe).
    reactions = tuple(r for group in ("mild", "moderate", "severe") for r in _REACTIONS[group])
    group = pl.lit(pl.Series([0, 1, 1, 2, 2], dtype=pl.UInt32)).gather(pl.col("severity"))
    no_reaction = _uniform(rowkey, seed, 44) < 0.08
    allergies = (
        gen.select(
            "n",
            "patient_id",
            "birth_days",
            k=pl.int_ranges(0, _poisson(0.5, _uniform(pl.col("n"), seed, 40)), dtype=pl.UInt32),
        )
        .explode("k")
        .drop_nulls("k")
        .with_columns(
            allergen=allergen,
            severity=severity,
            lo=pl.max_horizontal(pl.col("birth_days") + 1, pl.lit(_days(_MEDICATIONS_START))),
        )
        .with_columns(
            recorded_days=pl.col("lo") + (_uniform(rowkey, seed, 45) * (end - pl.col("lo") + 1)).floor().cast(pl.Int64)
        )
        # A patient has each allergen once on the list.
        .unique(subset=["n", "allergen"], keep="first", maintain_order=True)
        .sort("n", "recorded_days", "k")
    )
    u_recorded = _uniform(rowkey, seed, 46)
    verification = _pick_weighted(("Confirmed", "Unconfirmed", ""), (0.68, 0.28, 0.04), _uniform(rowkey, seed, 47))
    width = _width(allergies.height + 1)
    generated = allergies.select(
        patient_allergy_id=_key("AL", pl.int_range(2, pl.len() + 2, dtype=pl.UInt64), width),
        patient_id="patient_id",
        allergen_code=pl.lit(pl.Series([a[0] for a in ALLERGEN_CATALOGUE], dtype=pl.String)).gather(pl.col("allergen")),
        allergen_name=pl.lit(pl.Series([a[1] for a in ALLERGEN_CATALOGUE], dtype=pl.String)).gather(pl.col("allergen")),
        reaction=pl.when(~no_reaction).then(
            pl.lit(pl.Series(reactions, dtype=pl.String)).gather(
                group * 3 + (_uniform(rowkey, seed, 43) * 3).floor().cast(pl.UInt32)
            )
        ),
        severity=pl.when(~no_reaction).then(
            pl.lit(pl.Series([s for s, _ in _SEVERITIES], dtype=pl.String)).gather(pl.col("severity"))
        ),
        clinical_status=_pick_weighted(
            ("Active", "Inactive", "Resolved"), (0.9, 0.06, 0.04), _uniform(rowkey, seed, 48)
        ),
        verification_status=pl.when(verification != "").then(verification),
        recorded_date=pl.when(u_recorded >= 0.03).then(
            _partial_date(pl.col("recorded_days"), u_recorded - 0.03, 0.04, 0.0)
        ),
    )
    return pl.concat([guide, generated])


def _variants(tests: tuple[Any, ...], with_reference: bool) -> pl.DataFrame:
    """One row per (test, unit) with the probability of drawing it."""
    rows = []
    total = sum(test[4] for test in tests)
    for code, name, units, decimals, weight in tests:
        unit_total = sum(unit[1] for unit in units)
        for unit in units:
            low_ref, high_ref = (unit[4], unit[5]) if with_reference else (None, None)
            rows.append(
                (
                    code,
                    name,
                    unit[0],
                    float(unit[2]),
                    float(unit[3]),
                    low_ref,
                    high_ref,
                    decimals,
                    weight / total * unit[1] / unit_total,
                )
            )
    return pl.DataFrame(
        rows,
        schema={
            "code": pl.String,
            "name": pl.String,
            "unit": pl.String,
            "low": pl.Float64,
            "high": pl.Float64,
            "reference_low": pl.String,
            "reference_high": pl.String,
            "decimals": pl.UInt32,
            "weight": pl.Float64,
        },
        orient="row",
    )


def _draw_test(variants: pl.DataFrame, u: pl.Expr) -> list[pl.Expr]:
    index = _weighted_index(tuple(variants["weight"].to_list()), u)
    return [pl.lit(variants[name]).gather(index).alias(name) for name in variants.columns if name != "weight"]


def _observations(gen: pl.DataFrame, enc: pl.DataFrame, seed: int, guide: pl.DataFrame) -> pl.DataFrame:
    end = _days(_DATA_END)
    # Vital signs: taken at encounters (0 to 4 per visit), at a local time with its UTC offset.
    vkey = (pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)) * 8 + pl.col("j").cast(pl.UInt64)
    vitals = (
        enc.select(
            "n",
            "k",
            "patient_id",
            "encounter_id",
            "days",
            j=pl.int_ranges(
                0,
                _weighted_index(
                    (0.2, 0.15, 0.25, 0.2, 0.2), _uniform(pl.col("n") * 16 + pl.col("k").cast(pl.UInt64), seed, 50)
                ),
                dtype=pl.UInt32,
            ),
        )
        .explode("j")
        .drop_nulls("j")
        .with_columns(_draw_test(_variants(VITAL_SIGNS, with_reference=False), _uniform(vkey, seed, 51)))
        .unique(subset=["encounter_id", "code"], keep="first", maintain_order=True)
        .with_columns(
            value=_decimal_text(pl.col("low"), pl.col("high"), pl.col("decimals"), _uniform(vkey, seed, 52)),
            local_time=pl.col("days").cast(pl.Int32).cast(pl.Date).cast(pl.Datetime("us"))
            + pl.duration(
                minutes=480
                + (_uniform(pl.col("n") * 16 + pl.col("k").cast(pl.UInt64), seed, 53) * 600).floor().cast(pl.Int64)
            ),
            u_odd=_uniform(vkey, seed, 54),
        )
        .with_columns(
            observed_at=pl.when(pl.col("u_odd") < 0.004)
            # Now and then a time without its UTC offset (quarantined: FHIR requires one).
            .then(pl.col("local_time").dt.strftime("%Y-%m-%d %H:%M"))
            .otherwise(
                pl.col("local_time").dt.replace_time_zone(_CLINIC_TIME_ZONE).dt.strftime("%Y-%m-%dT%H:%M:%S%:z")
            ),
            category=pl.lit("vital"),
        )
    )
    # Labs: drawn outside visits (no encounter), reported with the collection date only.
    lkey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    u_value = _uniform(lkey, seed, 62)
    labs = (
        gen.select(
            "n",
            "patient_id",
            "birth_days",
            k=pl.int_ranges(0, _poisson(1.5, _uniform(pl.col("n"), seed, 60)), dtype=pl.UInt32),
        )
        .explode("k")
        .drop_nulls("k")
        .with_columns(_draw_test(_variants(LAB_TESTS, with_reference=True), _uniform(lkey, seed, 61)))
        .with_columns(
            lo=pl.max_horizontal(pl.col("birth_days") + 1, pl.lit(_days(_ENCOUNTERS_START))),
            u_odd=_uniform(lkey, seed, 63),
        )
        .with_columns(days=pl.col("lo") + (_uniform(lkey, seed, 64) * (end - pl.col("lo") + 1)).floor().cast(pl.Int64))
        .with_columns(
            value=pl.when(pl.col("u_odd") < 0.008)
            .then(_pick(_NON_NUMERIC_RESULTS, _uniform(lkey, seed, 65)))
            # Below the assay's detection limit, reported with a comparator.
            .when((pl.col("code") == "CRP") & (u_value < 0.3))
            .then(pl.lit("<0.5"))
            .otherwise(_decimal_text(pl.col("low"), pl.col("high"), pl.col("decimals"), u_value)),
            observed_at=_partial_date(pl.col("days"), _uniform(lkey, seed, 66), 0.02, 0.0),
            encounter_id=pl.lit(None, pl.String),
            category=pl.lit("lab"),
        )
    )
    columns = [
        "n",
        "days",
        "patient_id",
        "encounter_id",
        "category",
        "code",
        "name",
        "value",
        "unit",
        "reference_low",
        "reference_high",
        "observed_at",
    ]
    both = pl.concat([vitals.select(columns), labs.select(columns)]).sort(
        "n", "days", "category", "code", maintain_order=True
    )
    width = _width(both.height + 4)
    generated = both.select(
        observation_id=_key("OB", pl.int_range(5, pl.len() + 5, dtype=pl.UInt64), width),
        patient_id="patient_id",
        encounter_id="encounter_id",
        category="category",
        test_code="code",
        test_name="name",
        value="value",
        unit="unit",
        reference_low="reference_low",
        reference_high="reference_high",
        observed_at="observed_at",
    )
    return pl.concat([guide, generated])


# (code system as the legacy app names it, code, description, weight): office procedures in CPT, the
# history a clinic records from elsewhere in SNOMED CT.
PROCEDURE_CATALOGUE: tuple[tuple[str, str, str, float], ...] = (
    ("CPT", "93000", "Electrocardiogram, routine, with interpretation and report", 5.0),
    ("CPT", "36415", "Collection of venous blood by venipuncture", 8.0),
    ("CPT", "94010", "Spirometry", 2.0),
    ("CPT", "20610", "Arthrocentesis, aspiration and/or injection, major joint", 1.0),
    ("CPT", "11200", "Removal of skin tags, up to and including 15 lesions", 1.0),
    ("SNOMED", "80146002", "Appendectomy", 1.0),
    ("SNOMED", "73761001", "Colonoscopy", 2.0),
    ("SNOMED", "38102005", "Cholecystectomy", 1.0),
)
# (CVX code, name, weight). Which codes the map knows is decided by terminology/cvx.csv.
VACCINE_CATALOGUE: tuple[tuple[str, str, float], ...] = (
    ("140", "Influenza, seasonal, injectable, preservative free", 10.0),
    ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose", 6.0),
    ("115", "Tdap", 3.0),
    ("33", "Pneumococcal polysaccharide PPV23", 2.0),
    ("187", "Zoster vaccine recombinant", 2.0),
)
_VACCINE_SITES = ("LA", "RA", "LD", "RD")
# (legacy status, not-given reason, weight): most doses were given; some were refused or not needed.
_IMMUNIZATION_OUTCOMES = (("given", None, 0.95), ("not given", "refused", 0.03), ("not given", "immune", 0.02))
# Lab panels: the panel of each test (tests of one draw and one panel are one report).
_PANEL_OF_TEST = {
    "CHOL": ("LIPID", "Lipid panel"),
    "HDL": ("LIPID", "Lipid panel"),
    "LDL": ("LIPID", "Lipid panel"),
    "TRIG": ("LIPID", "Lipid panel"),
    "GLU": ("BMP", "Basic metabolic panel"),
    "K": ("BMP", "Basic metabolic panel"),
    "NA": ("BMP", "Basic metabolic panel"),
    "CREAT": ("BMP", "Basic metabolic panel"),
    "HGB": ("CBC", "Complete blood count"),
    "WBC": ("CBC", "Complete blood count"),
    "HBA1C": ("A1C", "Hemoglobin A1c"),
    "TSH": ("THYROID", "Thyroid function"),
}
# (legacy appointment status, weight) for the visits that did not become an encounter.
_MISSED_APPOINTMENTS = (("Cancelled", 0.6), ("No Show", 0.4))


def _procedures_and_immunizations(gen: pl.DataFrame, enc: pl.DataFrame, seed: int) -> dict[str, pl.DataFrame]:
    ekey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    procedure = _weighted_index(tuple(p[3] for p in PROCEDURE_CATALOGUE), _uniform(ekey, seed, 71))
    procedures = (
        enc.filter(_uniform(ekey, seed, 70) < 0.2)
        .with_columns(p=procedure)
        .select(
            "patient_id",
            "encounter_id",
            code_system=pl.lit(pl.Series([p[0] for p in PROCEDURE_CATALOGUE])).gather(pl.col("p")),
            code=pl.lit(pl.Series([p[1] for p in PROCEDURE_CATALOGUE])).gather(pl.col("p")),
            description=pl.lit(pl.Series([p[2] for p in PROCEDURE_CATALOGUE])).gather(pl.col("p")),
            performed_date=_iso(pl.col("days")),
        )
    )
    procedures = procedures.with_columns(
        procedure_id=_key("PX", pl.int_range(1, pl.len() + 1, dtype=pl.UInt64), _width(procedures.height + 1)),
    ).select(TABLE_COLUMNS["procedures"])
    ikey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    vaccine = _weighted_index(tuple(v[2] for v in VACCINE_CATALOGUE), _uniform(ikey, seed, 81))
    outcome = _weighted_index(tuple(o[2] for o in _IMMUNIZATION_OUTCOMES), _uniform(ikey, seed, 82))
    end, start = _days(_DATA_END), _days(_ENCOUNTERS_START)
    shots = (
        gen.select(
            "n",
            "patient_id",
            "birth_days",
            k=pl.int_ranges(0, _poisson(1.0, _uniform(pl.col("n"), seed, 80)), dtype=pl.UInt32),
        )
        .explode("k")
        .drop_nulls("k")
        .with_columns(v=vaccine, o=outcome, lo=pl.max_horizontal(pl.col("birth_days") + 1, pl.lit(start)))
        .with_columns(days=pl.col("lo") + (_uniform(ikey, seed, 83) * (end - pl.col("lo") + 1)).floor().cast(pl.Int64))
        .with_columns(given=pl.lit(pl.Series([o[0] for o in _IMMUNIZATION_OUTCOMES])).gather(pl.col("o")))
    )
    immunizations = shots.select(
        immunization_id=_key("IM", pl.int_range(1, pl.len() + 1, dtype=pl.UInt64), _width(shots.height + 1)),
        patient_id="patient_id",
        cvx_code=pl.lit(pl.Series([v[0] for v in VACCINE_CATALOGUE])).gather(pl.col("v")),
        vaccine_name=pl.lit(pl.Series([v[1] for v in VACCINE_CATALOGUE])).gather(pl.col("v")),
        administered_date=_iso(pl.col("days")),
        lot_number=pl.when(pl.col("given") == "given").then(
            pl.lit("LT") + (_uniform(ikey, seed, 84) * 1e6).floor().cast(pl.Int64).cast(pl.String).str.zfill(6)
        ),
        site=pl.when(pl.col("given") == "given").then(_pick(_VACCINE_SITES, _uniform(ikey, seed, 85))),
        status="given",
        not_given_reason=pl.lit(pl.Series([o[1] for o in _IMMUNIZATION_OUTCOMES], dtype=pl.String)).gather(pl.col("o")),
    )
    return {"procedures": procedures, "immunizations": immunizations}


def _lab_reports(observations: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A report per patient, draw date and panel, grouping the lab results of that panel; tests of no
    panel (vitamin D, PSA, CRP) are reported alone, under their own code."""
    panels = pl.DataFrame(
        [(code, panel, name) for code, (panel, name) in _PANEL_OF_TEST.items()],
        schema={"test_code": pl.String, "panel_code": pl.String, "panel_name": pl.String},
        orient="row",
    )
    labs = (
        observations.filter(pl.col("category") == "lab")
        .join(panels, on="test_code", how="left", maintain_order="left")
        .with_columns(
            panel_code=pl.coalesce("panel_code", "test_code"),
            panel_name=pl.coalesce("panel_name", "test_name"),
        )
    )
    reports = labs.unique(["patient_id", "observed_at", "panel_code"], keep="first", maintain_order=True)
    reports = reports.select(
        report_id=_key("LR", pl.int_range(1, pl.len() + 1, dtype=pl.UInt64), _width(reports.height + 1)),
        patient_id="patient_id",
        panel_code="panel_code",
        panel_name="panel_name",
        collected_date="observed_at",
        lab_id=pl.lit("ORG002"),
    )
    results = labs.join(
        reports.select("report_id", "patient_id", "panel_code", observed_at="collected_date"),
        on=["patient_id", "observed_at", "panel_code"],
        how="left",
        maintain_order="left",
    )
    results = results.select(
        report_result_id=_key("LRR", pl.int_range(1, pl.len() + 1, dtype=pl.UInt64), _width(results.height + 1)),
        report_id="report_id",
        observation_id="observation_id",
    )
    return reports, results


def _appointments(enc: pl.DataFrame, encounters: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Every encounter was an appointment the patient arrived at; some appointments were cancelled or
    missed (no encounter), and a few are booked after the data end. Twenty minutes, clinic time."""
    visits = encounters.with_row_index("r").with_columns(
        minutes=480 + (_uniform(pl.col("r").cast(pl.UInt64), seed, 90) * 26).floor().cast(pl.Int64) * 20,
        days=pl.col("date").str.to_date().cast(pl.Int64),
        status=pl.lit("Arrived"),
        site=pl.when(_uniform(pl.col("r").cast(pl.UInt64), seed, 91) < 0.6)
        .then(pl.lit("LOC001"))
        .otherwise(pl.lit("LOC002")),
    )
    ekey = pl.col("n") * 16 + pl.col("k").cast(pl.UInt64)
    missed = enc.filter(_uniform(ekey, seed, 92) < 0.12).select(
        "patient_id",
        "practitioner_id",
        date=pl.lit(None, pl.String),
        type=pl.lit(None, pl.String),
        encounter_id=pl.lit(None, pl.String),
        # A week before the visit that happened instead.
        days=pl.col("days") - 7,
        minutes=480 + (_uniform(ekey, seed, 93) * 26).floor().cast(pl.Int64) * 20,
        status=_pick_weighted(
            tuple(m[0] for m in _MISSED_APPOINTMENTS),
            tuple(m[1] for m in _MISSED_APPOINTMENTS),
            _uniform(ekey, seed, 94),
        ),
        site=pl.lit("LOC001"),
    )
    booked = enc.filter(_uniform(ekey, seed, 95) < 0.05).select(
        "patient_id",
        "practitioner_id",
        date=pl.lit(None, pl.String),
        type=pl.lit(None, pl.String),
        encounter_id=pl.lit(None, pl.String),
        days=pl.lit(_days(_DATA_END)) + 1 + (_uniform(ekey, seed, 96) * 60).floor().cast(pl.Int64),
        minutes=480 + (_uniform(ekey, seed, 97) * 26).floor().cast(pl.Int64) * 20,
        status=pl.lit("Scheduled"),
        site=pl.lit("LOC002"),
    )
    columns = ["patient_id", "practitioner_id", "encounter_id", "days", "minutes", "status", "site"]
    every = pl.concat([visits.select(columns), missed.select(columns), booked.select(columns)])
    start = pl.col("days").cast(pl.Int32).cast(pl.Date).cast(pl.Datetime("us")) + pl.duration(minutes=pl.col("minutes"))
    local = "%Y-%m-%dT%H:%M:%S%:z"
    return every.select(
        appointment_id=_key("AP", pl.int_range(1, pl.len() + 1, dtype=pl.UInt64), _width(every.height + 1)),
        patient_id="patient_id",
        practitioner_id="practitioner_id",
        location_id="site",
        start_at=start.dt.replace_time_zone(_CLINIC_TIME_ZONE).dt.strftime(local),
        end_at=(start + pl.duration(minutes=20)).dt.replace_time_zone(_CLINIC_TIME_ZONE).dt.strftime(local),
        status="status",
        encounter_id="encounter_id",
    )


# (document type, title, file extension, content type, weight): what a clinic scans and keeps.
_DOCUMENT_KINDS = (
    ("referral", "Referral letter", "txt", "text/plain", 0.35),
    ("consent", "Signed consent form", "pdf", "application/pdf", 0.25),
    ("lab_report", "Outside laboratory report", "pdf", "application/pdf", 0.25),
    ("scan", "Scanned insurance card", "png", "image/png", 0.15),
)


def _documents(encounters: pl.DataFrame, seed: int) -> pl.DataFrame:
    """One document for about a fifth of the encounters, its file named `docs/<id>.<ext>` (relative to
    the legacy system's document folder). Three rows are odd on purpose, as in every document store:
    one names an empty file, one a file that is not on disk, and two rows share one file (from 60
    documents up, about 150 patients)."""
    r = pl.int_range(pl.len(), dtype=pl.UInt64)
    kinds = encounters.filter(_uniform(r, seed, 100) < 0.2).with_columns(
        kind=_weighted_index(
            tuple(k[4] for k in _DOCUMENT_KINDS), _uniform(pl.int_range(pl.len(), dtype=pl.UInt64), seed, 101)
        )
    )
    pick = pl.col("kind")
    rows = kinds.with_columns(
        document_id=_key("DOC", pl.int_range(1, pl.len() + 1, dtype=pl.UInt64), _width(kinds.height + 1)),
        doc_type=pl.lit(pl.Series([k[0] for k in _DOCUMENT_KINDS])).gather(pick),
        title=pl.lit(pl.Series([k[1] for k in _DOCUMENT_KINDS])).gather(pick),
        extension=pl.lit(pl.Series([k[2] for k in _DOCUMENT_KINDS])).gather(pick),
        content_type=pl.lit(pl.Series([k[3] for k in _DOCUMENT_KINDS])).gather(pick),
        created_date=pl.col("date"),
    ).with_columns(file_path=pl.format("docs/{}.{}", pl.col("document_id"), pl.col("extension")))
    # Only in a sample large enough that they stay far below the quarantine threshold.
    if rows.height >= ODD_DOCUMENTS_FROM:
        # The odd ones: DOC..1 names an empty file (written so by write_sample_files), DOC..2 a file
        # nobody saved, DOC..4 the same file as DOC..3 (a letter filed twice).
        _, missing, first, second = rows["document_id"][:4].to_list()
        rows = rows.with_columns(
            file_path=pl.when(pl.col("document_id") == missing)
            .then(pl.format("docs/{}-lost.pdf", pl.col("document_id")))
            .when(pl.col("document_id") == second)
            .then(pl.lit(rows.filter(pl.col("document_id") == first)["file_path"].item()))
            .otherwise(pl.col("file_path")),
            # Filed twice for the same patient and visit.
            patient_id=pl.when(pl.col("document_id") == second)
            .then(pl.lit(rows.filter(pl.col("document_id") == first)["patient_id"].item()))
            .otherwise(pl.col("patient_id")),
            encounter_id=pl.when(pl.col("document_id") == second)
            .then(pl.lit(rows.filter(pl.col("document_id") == first)["encounter_id"].item()))
            .otherwise(pl.col("encounter_id")),
            content_type=pl.when(pl.col("document_id") == missing)
            .then(pl.lit("application/pdf"))
            .when(pl.col("document_id") == second)
            .then(pl.lit(rows.filter(pl.col("document_id") == first)["content_type"].item()))
            .otherwise(pl.col("content_type")),
        )
    return rows.select(TABLE_COLUMNS["documents"])


# The sample's empty file and its lost one (named in the documents table, never written), from this
# many documents up.
ODD_DOCUMENTS_FROM = 60
EMPTY_DOCUMENT_NUMBER = 1
LOST_SUFFIX = "-lost.pdf"
# The odd rows (the empty file, the lost one, the shared one) are the first this many.
ODD_DOCUMENT_ROWS = 4


# The documents' BLOB column: the bytes of a document the legacy system keeps in its database (the
# outside lab reports its lab interface files), written only to a SQL database; file_path is then empty.
BLOB_COLUMN = "file_content"
BLOB_DOC_TYPES = ("lab_report",)


def write_sample_files(
    tables: dict[str, pl.DataFrame], folder: Path, in_database: bool = False
) -> dict[str, pl.DataFrame]:
    """Write the files the documents table names into `folder` (small PDFs, PNG scans, plain-text
    letters; the first document's file empty; the lost one not at all) and return the tables. The paths
    stay relative to the document folder, as a legacy application stores them, so that a copy of the
    database works on another machine (the element finds the folder: LEGACY_FILES_DIR, else beside the
    database). With `in_database`, the outside lab reports (but the odd rows) are kept as BLOBs in
    BLOB_COLUMN instead of files."""
    documents = tables["documents"]
    odd = documents.height >= ODD_DOCUMENTS_FROM
    in_blob = pl.Series(
        [
            in_database and row["doc_type"] in BLOB_DOC_TYPES and not (odd and number <= ODD_DOCUMENT_ROWS)
            for number, row in enumerate(documents.iter_rows(named=True), start=1)
        ],
        dtype=pl.Boolean,
    )
    contents: list[bytes | None] = []
    for number, (row, blob) in enumerate(zip(documents.iter_rows(named=True), in_blob, strict=True), start=1):
        data = _document_bytes(row["content_type"], f"{row['title']} {row['document_id']} ({row['created_date']})")
        contents.append(data if blob else None)
        path = folder / row["file_path"]
        if blob or row["file_path"].endswith(LOST_SUFFIX) or path.exists():
            continue  # kept in the database, the lost file, or a file an earlier row shares
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if number == EMPTY_DOCUMENT_NUMBER and odd else data)
    if not in_database:
        return tables
    kept = documents.with_columns(
        file_path=pl.when(in_blob).then(None).otherwise(pl.col("file_path")),
        **{BLOB_COLUMN: pl.Series(contents, dtype=pl.Binary)},
    )
    return {**tables, "documents": kept}


def _document_bytes(content_type: str, text: str) -> bytes:
    if content_type == "application/pdf":
        return _pdf(text)
    if content_type == "image/png":
        return _png(text)
    return f"{text}\n\nDear colleague,\nplease see the patient named above.\n".encode()


def _pdf(text: str) -> bytes:
    """A one-page PDF showing `text`, with a correct cross-reference table."""
    safe = text.replace("\\", "").replace("(", "[").replace(")", "]")
    stream = f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _png(text: str) -> bytes:
    """A small grey-scale PNG whose pixels follow the text (a stand-in for a scan)."""
    width, height = 64, 40
    seed_bytes = hashlib.sha256(text.encode()).digest()
    raw = b"".join(
        b"\x00" + bytes((seed_bytes[(x + y) % 32] ^ (x * y)) & 0xFF for x in range(width)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def sample_with_files(tables: dict[str, pl.DataFrame], url: str) -> dict[str, pl.DataFrame]:
    """The sample tables with their document files written in the document folder of the database at
    `url` (elements/files.default_files_dir); in a SQL database the lab reports are BLOBs."""
    if "documents" not in tables:
        return tables
    kind, _ = parse_source_url(url)
    return write_sample_files(tables, default_files_dir(url), in_database=kind in ("sqlite", "postgresql"))


# ---------------------------------------------------------------------------------------------------
# Writing


def generate_sample_ehr(url: str, patients: int = 1000, seed: int = 7, updated_at: bool = False) -> dict[str, int]:
    """(Re)create the legacy EHR tables at ``url`` (with UPDATED_AT columns if asked); returns table -> row count."""
    tables = sample_with_files(build_sample_tables(patients, seed, updated_at=updated_at), url)
    return write_tables(url, {name: tables[name] for name in TABLES}, TABLE_PRIMARY_KEYS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a sample legacy EHR (Medplum migration guide tables).")
    parser.add_argument(
        "--url", required=True, help="sqlite:///x.db | postgresql://user@host:port/db | csv:///dir | parquet:///dir"
    )
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--updated-at", action="store_true", help=f"add an {UPDATED_AT} column to every table (for the sync)"
    )
    args = parser.parse_args(argv)
    counts = generate_sample_ehr(args.url, patients=args.patients, seed=args.seed, updated_at=args.updated_at)
    print(f"wrote {redact_url(args.url)}")
    for table, count in counts.items():
        print(f"{table}\t{count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
