"""Phased adoption: where each data element stands (initial load, dual write, backfill, read from Medplum,
front-end write, deprecated) and what each phase lets the platform do.

The phases of the elements are declared in a versioned file (the profile's `phases.yaml`, or the file
named by ADOPTION_PHASES_FILE), read and validated each time it is needed, so that a change of
phase takes effect on the next tick of a sensor or schedule without a restart. What a phase means is
decided here, in PHASE_BEHAVIOUR, and nowhere else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from migration_assets import config
from migration_assets.active import PROFILE, prerequisites

PHASES_FILE_ENV = "ADOPTION_PHASES_FILE"
# Every element of the profile has a phase, also those not chosen to run now.
LOAD_ORDER = PROFILE.load_order

Sync = Literal["write", "verify", "off"]
ReadsFrom = Literal["legacy", "medplum_when_ready", "medplum"]
Creates = Literal["conditional", "post"]


@dataclass(frozen=True)
class PhaseBehaviour:
    """What the platform does for an element in one phase."""

    phase: str
    order: int
    # write: changed legacy rows are loaded into Medplum; verify: Medplum is read back and compared
    # with the legacy store, nothing is written; off: the sync refuses to run.
    sync: Sync
    # Where a first sync (no watermark yet) starts: rows changed since the phase began, or every row.
    first_sync_from: Literal["phase_start", "beginning"]
    # Units the manifest has never seen loaded are sent whatever their updated_at (the backfill).
    backfills: bool
    # What the readiness file tells an application's feature flag to read from.
    reads_from: ReadsFrom
    # Who writes new data.
    writes: str
    # Reads already depend on Medplum: a readiness failure is an error, not a warning.
    readiness_is_blocking: bool
    # The frozen export of the legacy tables may (and must) be made.
    archive: bool
    summary: str
    # How a load creates a resource its census did not find in Medplum: "post", a plain create with no
    # search inside the write, is safe only while the platform is the element's one writer in Medplum;
    # while the old services write to both stores they may create the same record between the census and
    # the write, so a create must be a conditional PUT on the identifier (Medplum searches, then writes).
    creates: Creates = "conditional"


# The one place where a phase's behaviour is defined (the README section "Phased adoption" shows it).
PHASE_BEHAVIOUR: dict[str, PhaseBehaviour] = {
    behaviour.phase: behaviour
    for behaviour in (
        PhaseBehaviour(
            "initial_load",
            0,
            sync="write",
            first_sync_from="beginning",
            backfills=True,
            reads_from="legacy",
            writes="legacy services, to the legacy store only",
            readiness_is_blocking=False,
            archive=False,
            summary="Before the old services write to Medplum: the platform is the element's one writer there, "
            "so the bulk load creates with plain POSTs (its census tells what exists). Start the dual write only "
            "after moving the element to dual_write.",
            creates="post",
        ),
        PhaseBehaviour(
            "dual_write",
            1,
            sync="write",
            first_sync_from="phase_start",
            backfills=False,
            reads_from="legacy",
            writes="legacy services, to both stores",
            readiness_is_blocking=False,
            archive=False,
            summary="The old services write to both stores; the sync loads legacy rows changed since the phase "
            "began (what a dual write missed) and the dual-write check compares the stores. History waits.",
        ),
        PhaseBehaviour(
            "backfill",
            2,
            sync="write",
            first_sync_from="beginning",
            backfills=True,
            reads_from="legacy",
            writes="legacy services, to both stores",
            readiness_is_blocking=False,
            archive=False,
            summary="History is loaded: every unit never loaded is sent, then changed rows on every tick.",
        ),
        PhaseBehaviour(
            "read_from_medplum",
            3,
            sync="write",
            first_sync_from="beginning",
            backfills=True,
            reads_from="medplum_when_ready",
            writes="legacy services, to both stores",
            readiness_is_blocking=True,
            archive=False,
            summary="Clients read from Medplum while the readiness file says so (feature flag); writes still go "
            "through the old services and the sync keeps loading changes.",
        ),
        PhaseBehaviour(
            "front_end_write",
            4,
            sync="verify",
            first_sync_from="beginning",
            backfills=False,
            reads_from="medplum",
            writes="the front end, to Medplum",
            readiness_is_blocking=True,
            archive=False,
            summary="The front end writes to Medplum; nothing is written from the legacy side any more. The sync "
            "only reads Medplum back and compares it with the legacy store (kept for rollback).",
        ),
        PhaseBehaviour(
            "deprecated",
            5,
            sync="off",
            first_sync_from="beginning",
            backfills=False,
            reads_from="medplum",
            writes="the front end, to Medplum",
            readiness_is_blocking=True,
            archive=True,
            summary="The old store is retired: no sync at all (it refuses with a message); a final verification and "
            "a frozen, read-only Parquet export of the legacy tables are kept for the verification period.",
        ),
    )
}
PHASE_NAMES: tuple[str, ...] = tuple(PHASE_BEHAVIOUR)
DEFAULT_PHASE = "backfill"
DEFAULT_VERIFICATION_PERIOD_DAYS = 90


class PhaseConfigError(ValueError):
    """The phases file is missing, malformed, or names an unknown element or phase."""


@dataclass(frozen=True)
class DualWriteSample:
    """How many units of an element the dual-write check compares (None: every unit), drawn with `seed`."""

    size: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class ElementPhase:
    element: str
    phase: str
    since: dt.date | None
    declared: bool  # False: the element is not in the file and has the default phase
    note: str = ""
    dual_write_sample: DualWriteSample = field(default_factory=DualWriteSample)
    verification_period_days: int = DEFAULT_VERIFICATION_PERIOD_DAYS

    @property
    def behaviour(self) -> PhaseBehaviour:
        return PHASE_BEHAVIOUR[self.phase]

    def describe(self) -> str:
        since = f" since {self.since.isoformat()}" if self.since else ""
        return f"{self.element} is in phase {self.phase}{since}" + ("" if self.declared else " (default, not declared)")


@dataclass(frozen=True)
class PhasesConfig:
    version: str
    path: Path
    elements: dict[str, ElementPhase]
    warnings: tuple[str, ...] = ()

    def of(self, element: str) -> ElementPhase:
        try:
            return self.elements[element]
        except KeyError:
            raise PhaseConfigError(f"unknown data element {element!r}; known: {', '.join(LOAD_ORDER)}") from None


def phases_path() -> Path:
    return config.phases_file() or PROFILE.phases_file


def load_phases(path: Path | str | None = None) -> PhasesConfig:
    """Read and validate the phases file; raises PhaseConfigError naming what is wrong and where."""
    file = Path(path) if path is not None else phases_path()
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise PhaseConfigError(f"phases file not found: {file} (set {PHASES_FILE_ENV} or create it)") from None
    except yaml.YAMLError as exc:
        raise PhaseConfigError(f"{file}: not valid YAML: {exc}") from None
    except ValueError as exc:  # YAML's own date parsing (since: 2025-13-01)
        raise PhaseConfigError(f"{file}: a value is not a date (YYYY-MM-DD): {exc}") from None
    return parse_phases(raw, file)


def parse_phases(raw: Any, file: Path) -> PhasesConfig:
    if not isinstance(raw, Mapping):
        raise PhaseConfigError(f"{file}: expected a mapping with 'version' and 'elements'")
    unknown_keys = set(raw) - {"version", "updated", "default_phase", "verification_period_days", "elements"}
    if unknown_keys:
        raise PhaseConfigError(f"{file}: unknown keys {sorted(unknown_keys)}")
    version = raw.get("version")
    if version is None or str(version).strip() == "":
        raise PhaseConfigError(f"{file}: 'version' is required (bump it on every change of phase)")
    default_phase = _phase(raw.get("default_phase", DEFAULT_PHASE), file, "default_phase")
    period = _positive_int(
        raw.get("verification_period_days", DEFAULT_VERIFICATION_PERIOD_DAYS), file, "verification_period_days"
    )
    declared = raw.get("elements") or {}
    if not isinstance(declared, Mapping):
        raise PhaseConfigError(f"{file}: 'elements' must map element names to their phase")
    unknown = sorted(set(declared) - set(LOAD_ORDER))
    if unknown:
        raise PhaseConfigError(
            f"{file}: unknown data element(s) {', '.join(map(repr, unknown))}; known: {', '.join(LOAD_ORDER)}"
        )
    elements = {}
    for name in LOAD_ORDER:
        entry = declared.get(name)
        if entry is None:
            elements[name] = ElementPhase(name, default_phase, None, declared=False, verification_period_days=period)
            continue
        if isinstance(entry, str):
            entry = {"phase": entry}
        if not isinstance(entry, Mapping):
            raise PhaseConfigError(f"{file}: elements.{name} must be a phase name or a mapping with 'phase'")
        extra = set(entry) - {"phase", "since", "note", "dual_write_sample", "verification_period_days"}
        if extra:
            raise PhaseConfigError(f"{file}: elements.{name}: unknown keys {sorted(extra)}")
        elements[name] = ElementPhase(
            element=name,
            phase=_phase(entry.get("phase"), file, f"elements.{name}.phase"),
            since=_date(entry.get("since"), file, f"elements.{name}.since"),
            declared=True,
            note=str(entry.get("note") or ""),
            dual_write_sample=_sample(entry.get("dual_write_sample"), file, name),
            verification_period_days=_positive_int(
                entry.get("verification_period_days", period), file, f"elements.{name}.verification_period_days"
            ),
        )
    return PhasesConfig(str(version), file, elements, tuple(_warnings(elements)))


def _phase(value: Any, file: Path, where: str) -> str:
    if value not in PHASE_BEHAVIOUR:
        raise PhaseConfigError(f"{file}: {where}: unknown phase {value!r}; expected one of {', '.join(PHASE_NAMES)}")
    return str(value)


def _date(value: Any, file: Path, where: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise PhaseConfigError(f"{file}: {where}: {value!r} is not a date (YYYY-MM-DD)") from None


def _positive_int(value: Any, file: Path, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PhaseConfigError(f"{file}: {where}: expected a positive whole number, got {value!r}")
    return value


def _sample(value: Any, file: Path, name: str) -> DualWriteSample:
    if value is None:
        return DualWriteSample()
    if not isinstance(value, Mapping) or set(value) - {"size", "seed"}:
        raise PhaseConfigError(f"{file}: elements.{name}.dual_write_sample: expected {{size: N, seed: S}}")
    size = value.get("size")
    seed = value.get("seed", 0)
    if size is not None:
        size = _positive_int(size, file, f"elements.{name}.dual_write_sample.size")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PhaseConfigError(f"{file}: elements.{name}.dual_write_sample.seed: expected a whole number")
    return DualWriteSample(size, seed)


def _warnings(elements: Mapping[str, ElementPhase]) -> list[str]:
    """An element whose reads moved to Medplum before those of an element it references: its references
    would point at resources the clients do not read from Medplum yet."""
    found = []
    for name, current in elements.items():
        for needed in prerequisites(name):
            if current.behaviour.order >= 3 and elements[needed].behaviour.order < 3:
                found.append(
                    f"{name} is in {current.phase} before its prerequisite {needed} ({elements[needed].phase})"
                )
    return found
