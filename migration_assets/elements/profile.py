"""Profiles: everything that knows one legacy schema, and how the platform finds the one to run.

A profile is a Python package whose `PROFILE` attribute is a `Profile`: its data elements, its phases
file, its terminology maps and its sample-data generator. The platform imports no profile by name;
`load_profile` resolves the one the user picked (MIGRATION_PROFILE), in this order:

1. a path to a folder that is a package (`/srv/clinic/my_profile`): imported from that folder;
2. a profile offered by an installed distribution through the entry point group `migration_assets.profiles`
   (`pip install clinic-profile` is enough);
3. a profile shipped with the platform (`seed_ehr`), found under `migration_assets.profiles`;
4. any importable module name (`clinic_profile.profile`).
"""

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Protocol

import polars as pl

from migration_assets.elements.base import DataElement, check_element_contract

ENTRY_POINT_GROUP = "migration_assets.profiles"
SHIPPED_PROFILES_PACKAGE = "migration_assets.profiles"
DEFAULT_PROFILE = "seed_ehr"


class SampleTables(Protocol):
    """A profile's sample generator: its legacy tables in memory, the same for the same size and seed,
    parents before children (the order they are written in). `updated_at` adds each table's change
    column, as an application that tracks changes keeps it (the sync reads it)."""

    def __call__(self, patients: int, seed: int, updated_at: bool = False) -> dict[str, pl.DataFrame]: ...


@dataclass(frozen=True, kw_only=True)
class Profile:
    """One legacy schema. `elements` may be given in any order; `load_order` is derived from `requires`."""

    name: str
    description: str
    elements: tuple[DataElement, ...]
    phases_file: Path
    sample_tables: SampleTables | None = None
    # A folder of sample rows, one `<table>.csv` each (every column text), added to sample_tables' tables:
    # a profile without a generator, or an element scaffolded into one, still has sample data.
    sample_folder: Path | None = None
    # The folder of the profile's terminology maps (one CSV per map and VERSIONS.csv), if it has any.
    terminology_dir: Path | None = None
    identifier_base_uri: str = "https://ehr.example-clinic.org/fhir"
    # Writes the files the sample tables name (documents) beside the sample database at a URL and
    # returns the tables pointing at them; None: the sample has no files.
    sample_files: Callable[[dict[str, pl.DataFrame], str], dict[str, pl.DataFrame]] | None = None
    # What `make bench` loads: a root element and one that references it, for the throughput stages
    # (empty: the first element of the load order and the first that requires it); and the elements of
    # the memory stage, prerequisites first (empty: the same two).
    bench_elements: tuple[str, ...] = ()
    bench_memory_elements: tuple[str, ...] = ()
    # False: the schema declares its primary keys without enforcing them (OMOP's DDL leaves them optional),
    # so its sample database is written without them and may repeat a key, as real exports do; the platform
    # quarantines every row of a repeated key (`duplicate_key`).
    primary_keys_enforced: bool = True
    by_name: Mapping[str, DataElement] = field(init=False, repr=False)
    load_order: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        by_name: dict[str, DataElement] = {}
        for element in self.elements:
            if not isinstance(element, DataElement):
                raise ProfileError(f"profile {self.name}: {element!r} is not a DataElement")
            if element.name in by_name:
                raise ProfileError(f"profile {self.name}: two data elements are named {element.name!r}")
            check_element_contract(element)
            by_name[element.name] = element
        for element in self.elements:
            unknown = sorted(set(element.requires) - set(by_name))
            if unknown:
                raise ProfileError(f"data element {element.name}: field `requires` names unknown elements {unknown}")
        _check_shared_tables(self.elements)
        # Ties are broken by name so the order is the same on every machine.
        sorter = TopologicalSorter({name: by_name[name].requires for name in sorted(by_name)})
        try:
            order = tuple(sorter.static_order())
        except CycleError as cycle:
            raise ProfileError(f"profile {self.name}: the elements' `requires` form a cycle {cycle.args[1]}") from None
        object.__setattr__(self, "by_name", by_name)
        object.__setattr__(self, "load_order", order)
        object.__setattr__(self, "elements", tuple(by_name[name] for name in order))
        for name in (*self.bench_elements, *self.bench_memory_elements):
            if name not in by_name:
                raise ProfileError(f"profile {self.name}: bench_elements names an unknown element {name!r}")

    def bench_pair(self) -> tuple[str, str]:
        """The benchmark's two elements: a root, and an element whose units reference it."""
        if len(self.bench_elements) == 2:
            return self.bench_elements[0], self.bench_elements[1]
        root = self.load_order[0]
        child = next((e.name for e in self.elements if root in e.requires), None)
        if child is None:
            raise ProfileError(f"profile {self.name}: no element requires {root}; say bench_elements")
        return root, child

    def element(self, name: str) -> DataElement:
        try:
            return self.by_name[name]
        except KeyError:
            raise ValueError(
                f"unknown data element {name!r} in profile {self.name}; known: {', '.join(self.load_order)}"
            ) from None

    def prerequisites(self, name: str) -> tuple[str, ...]:
        """Every element `name` needs loaded first, direct or not, in load order."""
        needed: set[str] = set()
        pending = list(self.element(name).requires)
        while pending:
            current = pending.pop()
            if current not in needed:
                needed.add(current)
                pending.extend(self.element(current).requires)
        return tuple(element for element in self.load_order if element in needed)

    def sample(self, patients: int, seed: int = 7, updated_at: bool = False) -> dict[str, pl.DataFrame]:
        """The profile's sample legacy tables, parents first: the generator's, then the sample folder's."""
        tables = (
            dict(self.sample_tables(patients=patients, seed=seed, updated_at=updated_at)) if self.sample_tables else {}
        )
        if self.sample_folder is not None and self.sample_folder.is_dir():
            for file in sorted(self.sample_folder.glob("*.csv")):
                tables[file.stem] = pl.read_csv(file, infer_schema=False)
        if not tables:
            raise ProfileError(
                f"profile {self.name} has no sample data (sample_tables or sample_folder): "
                "set LEGACY_DB_URL to your legacy database"
            )
        return tables

    def primary_keys(self) -> dict[str, str]:
        """Every source table the profile reads, with its primary key column."""
        return {table: key for element in self.elements for table, key in element.source_tables.items()}

    def sample_primary_keys(self) -> dict[str, str]:
        """The primary keys a sample database is written with: none when the schema does not enforce them."""
        return self.primary_keys() if self.primary_keys_enforced else {}

    def chosen(self, names: Iterable[str] | None) -> tuple[str, ...]:
        """The elements to run, in load order: all of them when `names` is None."""
        if names is None:
            return self.load_order
        wanted = [name.strip() for name in names if name.strip()]
        for name in wanted:
            self.element(name)
        return tuple(name for name in self.load_order if name in wanted)


class ProfileError(ValueError):
    """A profile that cannot be used, with what is wrong and where."""


def discover_elements(package: str) -> tuple[DataElement, ...]:
    """The `ELEMENT` of every module in `package` (a profile's elements folder), by module name."""
    module = importlib.import_module(package)
    found = []
    for path in sorted(Path(p) for p in module.__path__):
        for file in sorted(path.glob("*.py")):
            if file.stem.startswith("_"):
                continue
            element = getattr(importlib.import_module(f"{package}.{file.stem}"), "ELEMENT", None)
            if isinstance(element, DataElement):
                found.append(element)
    return tuple(found)


def load_profile(spec: str | None = None) -> Profile:
    """The profile named by `spec` (see the module's docstring), `seed_ehr` when None or empty."""
    module = profile_module(spec)
    profile = getattr(module, "PROFILE", None)
    if not isinstance(profile, Profile):
        raise ProfileError(f"profile {spec!r}: module {module.__name__} has no PROFILE = Profile(...)")
    return profile


def profile_module(spec: str | None) -> ModuleType:
    """The package of the profile `spec` names (see load_profile)."""
    spec = (spec or DEFAULT_PROFILE).strip()
    folder = Path(spec).expanduser()
    if "/" in spec or spec.startswith("."):
        if not (folder / "__init__.py").is_file():
            raise ProfileError(f"profile folder {folder} is not a Python package (no __init__.py)")
        return _import_folder(folder.resolve())
    offered = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
    if spec in offered:
        loaded = offered[spec].load()
        return loaded if isinstance(loaded, ModuleType) else sys.modules[loaded.__module__]
    if importlib.util.find_spec(f"{SHIPPED_PROFILES_PACKAGE}.{spec}") is not None:
        return importlib.import_module(f"{SHIPPED_PROFILES_PACKAGE}.{spec}")
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as missing:
        if missing.name != spec.split(".")[0] and missing.name != spec:
            raise
        shipped = sorted(
            p.stem for p in Path(__file__).parent.parent.joinpath("profiles").iterdir() if (p / "__init__.py").is_file()
        )
        raise ProfileError(
            f"no profile {spec!r}: not a folder, an installed profile ({', '.join(sorted(offered)) or 'none'}), "
            f"a shipped one ({', '.join(shipped)}) or an importable module"
        ) from None


def _import_folder(folder: Path) -> ModuleType:
    """The package in `folder`, importable by its folder name (its modules import each other so)."""
    if folder.name in sys.modules:
        known = sys.modules[folder.name]
        if Path(known.__file__ or "").parent == folder:
            return known
        raise ProfileError(f"profile folder {folder}: a module named {folder.name!r} is already imported")
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(folder.name)


def _check_shared_tables(elements: Iterable[DataElement]) -> None:
    """A table read by several elements has one primary key."""
    seen: dict[str, tuple[str, str]] = {}
    for element in elements:
        for table, key in element.source_tables.items():
            if table in seen and seen[table][1] != key:
                other = seen[table][0]
                raise ProfileError(
                    f"data element {element.name}: field `source_tables` gives {table} the key {key!r}, "
                    f"but {other} gives it {seen[table][1]!r}"
                )
            seen.setdefault(table, (element.name, key))
