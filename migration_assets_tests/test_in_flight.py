"""How many bundles the load keeps in flight (loader.InFlight): more while more answers faster, fewer when
it does not or the server pushes back. The client here only lends its counts; the clock is the test's."""

from dataclasses import dataclass, field

import pytest

from migration_assets.medplum.client import RequestStats
from migration_assets.pipeline import loader
from migration_assets.pipeline.loader import FIRST_IN_FLIGHT, PROBE_BUNDLES, InFlight


@dataclass
class Counts:
    stats: RequestStats = field(default_factory=RequestStats)


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(loader.time, "monotonic", lambda: now[0])
    return now


def answer(limit: InFlight, clock: list[float], bundles: int, entries_per_second: float) -> None:
    for _ in range(bundles):
        clock[0] += 100 / entries_per_second
        limit.answered(100)


def test_more_in_flight_while_it_pays_and_back_when_it_does_not(clock):
    counts = Counts()
    assert InFlight(counts, ceiling=4, adaptive=True).limit == FIRST_IN_FLIGHT, "a target never loaded"
    limit = InFlight(counts, ceiling=4, adaptive=True, start=1)
    answer(limit, clock, PROBE_BUNDLES, 100)
    assert limit.limit == 2, "judged at one: try two"
    answer(limit, clock, PROBE_BUNDLES, 180)
    assert limit.limit == 3, "two answered faster: try three"
    answer(limit, clock, PROBE_BUNDLES, 182)
    assert limit.limit == 2 and limit.probe == 2 * PROBE_BUNDLES, "three did not pay: back to two, judged longer"
    assert limit.highest == 3 and limit.decreases == 1


def test_pushback_halves_at_once(clock):
    counts = Counts()
    limit = InFlight(counts, ceiling=8, adaptive=True, start=1)
    for rate in (100, 200, 300):
        answer(limit, clock, limit.probe, rate)
    assert limit.limit == 4
    counts.stats.entries_resent += 3  # a 409 on three entries, resent by the client
    answer(limit, clock, 1, 300)
    assert limit.limit == 2 and limit.decreases == 1


def test_without_adaptive_it_is_the_ceiling(clock):
    limit = InFlight(Counts(), ceiling=3, adaptive=False)
    answer(limit, clock, 20, 100)
    assert limit.limit == 3


def test_it_starts_where_an_earlier_load_settled_and_judges_only_bundles_that_share_the_server(clock):
    limit = InFlight(Counts(), ceiling=4, adaptive=True, start=6)
    assert limit.limit == 4, "never above the ceiling"
    assert limit.settled is None, "nothing judged yet: nothing for the next load to start from"
    for _ in range(3 * PROBE_BUNDLES):
        clock[0] += 1
        limit.answered(100, judged=False)
    assert limit.limit == 4 and limit.settled is None, "bundles that went alone judge nothing"
    answer(limit, clock, PROBE_BUNDLES, 100)
    assert limit.settled == 4
    assert InFlight(Counts(), ceiling=4, adaptive=False, start=2).limit == 4, "without adaptive: the ceiling"
