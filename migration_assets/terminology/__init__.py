"""Terminology maps kept as versioned data files beside this module, never guessed in code."""

from functools import cache
from pathlib import Path

import polars as pl

TERMINOLOGY_DIR = Path(__file__).parent

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@cache
def read_map(name: str) -> pl.DataFrame:
    """`<name>.csv` from this folder, every column as text."""
    return pl.read_csv(TERMINOLOGY_DIR / f"{name}.csv", infer_schema=False)
