"""Medplum's `RateLimit` response header: `"requests";r=59990;t=60, "fhirInteractions";r=49000;t=60`."""

from dataclasses import dataclass

# Medplum's FHIR quota: a create or update costs 100 points, a search 20 (MEDPLUM_FACTS.md).
POINTS_PER_WRITE = 100
POINTS_PER_SEARCH = 20


@dataclass(frozen=True)
class RateLimit:
    name: str
    remaining: int
    reset_seconds: float


def parse_rate_limit(header: str | None) -> dict[str, RateLimit]:
    """Every named limit in the header; a malformed part is ignored rather than failing a load."""
    limits: dict[str, RateLimit] = {}
    for part in (header or "").split(","):
        fields = [field.strip() for field in part.split(";")]
        name = fields[0].strip('"')
        values = dict(field.split("=", 1) for field in fields[1:] if "=" in field)
        try:
            limits[name] = RateLimit(name, int(values["r"]), float(values["t"]))
        except (KeyError, ValueError):
            continue
    return limits


def seconds_until_reset(header: str | None, default: float) -> float:
    """How long to wait after a 429: the longest reset among exhausted limits; else the FHIR quota's
    (a batch entry is refused when fewer points are left than it costs, not only at zero); else
    `default`."""
    limits = parse_rate_limit(header)
    exhausted = [limit.reset_seconds for limit in limits.values() if limit.remaining <= 0]
    if exhausted:
        return max(exhausted)
    quota = limits.get("fhirInteractions")
    return quota.reset_seconds if quota else default
