"""Terminology maps kept as versioned data files in a profile's folder, never guessed in code: one CSV per
map (every column text) and VERSIONS.csv with the version, target system and review status of each.
Also the URIs of the code systems profiles map to, so that every profile spells them the same way."""

from functools import cache
from pathlib import Path

import polars as pl

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED_CT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
NPI = "http://hl7.org/fhir/sid/us-npi"
CVX = "http://hl7.org/fhir/sid/cvx"
CPT = "http://www.ama-assn.org/go/cpt"


class TerminologyMaps:
    """The maps of one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def read_map(self, name: str) -> pl.DataFrame:
        """`<name>.csv`, every column as text."""
        return _read_csv(self.folder / f"{name}.csv")

    def versions(self) -> pl.DataFrame:
        """One row per map: its version, the code system and release it targets, and its review status."""
        return _read_csv(self.folder / "VERSIONS.csv")

    def map_version(self, name: str) -> str:
        found = self.versions().filter(pl.col("map") == name)["version"]
        if found.is_empty():
            raise ValueError(f"terminology map {name!r} has no row in {self.folder / 'VERSIONS.csv'}")
        return str(found[0])

    def catalogue(self) -> pl.DataFrame:
        """VERSIONS.csv with the number of codes in each map; an error when files and versions disagree."""
        catalogue = self.versions()
        files = {path.stem for path in self.folder.glob("*.csv")} - {"VERSIONS"}
        listed = set(catalogue["map"].to_list())
        if files != listed:
            raise ValueError(
                f"terminology maps and VERSIONS.csv disagree in {self.folder}: files without a version "
                f"{sorted(files - listed)}, versions without a file {sorted(listed - files)}"
            )
        return catalogue.with_columns(
            codes=pl.Series([self.read_map(name).height for name in catalogue["map"]], dtype=pl.Int64)
        )


@cache
def _read_csv(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema=False)
