"""The profile in use and its data elements (MIGRATION_PROFILE, `seed_ehr` by default), in load order.

`ELEMENTS` and `LOAD_ORDER` are the elements chosen to run (ELEMENTS, all by default); `get_element` and
`prerequisites` know every element of the profile, so that a chosen element can name a prerequisite
that was loaded before and is not run again.
"""

from migration_assets import config
from migration_assets.elements.base import DataElement
from migration_assets.elements.profile import Profile, ProfileError, load_profile
from migration_assets.source import write_tables

PROFILE: Profile = load_profile(config.profile_spec())
LOAD_ORDER: tuple[str, ...] = PROFILE.chosen(config.element_selection())
ELEMENTS: tuple[DataElement, ...] = tuple(PROFILE.element(name) for name in LOAD_ORDER)
ELEMENTS_BY_NAME: dict[str, DataElement] = dict(PROFILE.by_name)

__all__ = [
    "ELEMENTS",
    "ELEMENTS_BY_NAME",
    "LOAD_ORDER",
    "PROFILE",
    "ProfileError",
    "get_element",
    "prerequisites",
    "write_sample",
]


def get_element(name: str) -> DataElement:
    return PROFILE.element(name)


def prerequisites(name: str) -> tuple[str, ...]:
    """Every element `name` needs loaded first, direct or not, in load order."""
    return PROFILE.prerequisites(name)


def write_sample(url: str, patients: int, seed: int = 7, updated_at: bool = False) -> dict[str, int]:
    """(Re)create the profile's sample legacy database at `url`; returns table -> rows."""
    tables = PROFILE.sample(patients, seed, updated_at)
    if PROFILE.sample_files is not None:
        tables = PROFILE.sample_files(tables, url)
    return write_tables(url, tables, PROFILE.sample_primary_keys())
