"""The data elements, discovered from the modules of this package, in dependency order.

Adding a data element means adding a module here that defines `ELEMENT` (and its sample rows and
terminology files); the partitions, the load order and the prerequisite checks follow from it.
"""

import importlib
import pkgutil
from graphlib import TopologicalSorter

from migration_assets.elements.base import DataElement

_SHARED_MODULES = {"base", "fhir_json"}


def _discover() -> dict[str, DataElement]:
    found: dict[str, DataElement] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name in _SHARED_MODULES:
            continue
        element = getattr(importlib.import_module(f"{__name__}.{module_info.name}"), "ELEMENT", None)
        if isinstance(element, DataElement):
            found[element.name] = element
    return found


def _in_dependency_order(elements: dict[str, DataElement]) -> tuple[DataElement, ...]:
    for element in elements.values():
        unknown = set(element.requires) - set(elements)
        if unknown:
            raise ValueError(f"data element {element.name} requires unknown elements {sorted(unknown)}")
    # Ties are broken by name so the order is the same on every machine.
    sorter = TopologicalSorter({name: elements[name].requires for name in sorted(elements)})
    return tuple(elements[name] for name in sorter.static_order())


ELEMENTS: tuple[DataElement, ...] = _in_dependency_order(_discover())
ELEMENTS_BY_NAME: dict[str, DataElement] = {element.name: element for element in ELEMENTS}
LOAD_ORDER: tuple[str, ...] = tuple(element.name for element in ELEMENTS)


def get_element(name: str) -> DataElement:
    try:
        return ELEMENTS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown data element {name!r}; known: {', '.join(LOAD_ORDER)}") from None


def prerequisites(name: str) -> tuple[str, ...]:
    """Every element `name` needs loaded first, direct or not, in load order."""
    needed: set[str] = set()
    pending = list(get_element(name).requires)
    while pending:
        current = pending.pop()
        if current not in needed:
            needed.add(current)
            pending.extend(get_element(current).requires)
    return tuple(element for element in LOAD_ORDER if element in needed)
