"""Terminology maps kept as versioned data files beside this module, never guessed in code.

See README.md here: one CSV per map, and VERSIONS.csv with the version of each."""

from functools import cache
from pathlib import Path

import polars as pl

TERMINOLOGY_DIR = Path(__file__).parent

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED_CT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
NPI = "http://hl7.org/fhir/sid/us-npi"


@cache
def read_map(name: str) -> pl.DataFrame:
    """`<name>.csv` from this folder, every column as text."""
    return pl.read_csv(TERMINOLOGY_DIR / f"{name}.csv", infer_schema=False)


@cache
def versions() -> pl.DataFrame:
    """One row per map: its version, the code system and release it targets, and its review status."""
    return pl.read_csv(TERMINOLOGY_DIR / "VERSIONS.csv", infer_schema=False)


def map_version(name: str) -> str:
    found = versions().filter(pl.col("map") == name)["version"]
    if found.is_empty():
        raise ValueError(f"terminology map {name!r} has no row in VERSIONS.csv")
    return str(found[0])
