"""The seed EHR's terminology maps: the CSV files beside this module (README.md here says how they are kept)."""

from pathlib import Path

from migration_assets.elements.terminology import (
    ICD10CM,
    LOINC,
    NPI,
    RXNORM,
    SNOMED_CT,
    UCUM,
    V3_ACT_CODE,
    TerminologyMaps,
)

__all__ = [
    "ICD10CM",
    "LOINC",
    "MAPS",
    "NPI",
    "RXNORM",
    "SNOMED_CT",
    "TERMINOLOGY_DIR",
    "UCUM",
    "V3_ACT_CODE",
    "read_map",
]

TERMINOLOGY_DIR = Path(__file__).parent
MAPS = TerminologyMaps(TERMINOLOGY_DIR)
read_map = MAPS.read_map
