"""The OMOP profile's terminology maps: the CSV files beside this module (README.md here says how they are
kept), each read once into the dict its element looks codes up in."""

from pathlib import Path

from migration_assets.elements.terminology import TerminologyMaps

TERMINOLOGY_DIR = Path(__file__).parent
MAPS = TerminologyMaps(TERMINOLOGY_DIR)
read_map = MAPS.read_map


def lookup(name: str, key: str, value: str) -> dict[str, str]:
    """Map `name` as a dict: its column `key` to its column `value`."""
    rows = read_map(name)
    return dict(zip(rows[key].to_list(), rows[value].to_list(), strict=True))
