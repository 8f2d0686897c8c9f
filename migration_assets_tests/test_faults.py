"""Faults over real HTTP: the loader and whole Dagster runs talk to the local Medplum server through a
fault-injecting proxy of our own (fault_proxy.py). For every fault the load either recovers within
bounded retries or fails with a clear message; then (after a rerun where it failed) every source unit
is successful or explained, no identifier is duplicated in Medplum and the books balance.

Library-level cases (loader.migrate through the proxy, a few tenths of a second each) cover every
fault kind; Dagster-level cases cover a mixed storm, retries running out, the server killed and
restarted mid-partition, and the Dagster run process killed mid-partition.
"""

import dataclasses
import time
from pathlib import Path

import polars as pl
import pytest

from migration_assets.elements import get_element
from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.loader import LoadSettings, migrate
from migration_assets.local_medplum import running_local_medplum
from migration_assets.manifest import Manifest
from migration_assets.medplum import MedplumClient, MedplumError, RetryPolicy
from migration_assets.sample_data import build_sample_tables
from migration_assets.verification import accounting, census
from migration_assets_tests.fault_proxy import Fault, FaultProxy

PATIENTS = get_element("patients")
BATCH = "/fhir/R4/"  # batch bundles are POSTed to the FHIR base itself
FHIR = "/fhir/R4"
# Small and fast, so a test shows the bound: at most 5 attempts per request, delays 0.05..0.4 s.
FAST = RetryPolicy(max_attempts=5, base_delay=0.05, max_delay=0.4, max_total_seconds=10.0)
PATIENT_ROWS = 30


def rate_limit(remaining: int, reset: float) -> dict[str, str]:
    return {"RateLimit": f'"requests";r=59000;t=60, "fhirInteractions";r={remaining};t={reset}'}


def entries_answered(status: str, first_only: bool = False):
    """A rewrite of a batch-response: every entry (or the first) answered `status` with an outcome,
    as Medplum does for entries it refuses (429 quota, 503) while the bundle answers 200."""

    def rewrite(bundle: dict) -> dict:
        for number, entry in enumerate(bundle.get("entry", [])):
            if not first_only or number == 0:
                entry.pop("resource", None)
                entry["response"] = {"status": status, "outcome": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "throttled", "details": {"text": f"injected {status}"}}]}}
        return bundle

    return rewrite


# -- library level: loader.migrate through the proxy ---------------------------------------------


@pytest.fixture(scope="module")
def proxy(local_medplum):
    with FaultProxy(local_medplum.base_url) as running:
        yield running


@pytest.fixture
def fresh_proxy(proxy):
    proxy.clear()
    proxy.accept()
    proxy.log.clear()
    yield proxy
    proxy.clear()
    proxy.accept()


@dataclasses.dataclass
class Load:
    """One patients load of `PATIENT_ROWS` rows under its own identifier base URI (so censuses of
    different tests on the shared server never see each other's resources)."""

    frame: pl.DataFrame
    system: str
    manifest_url: str
    source_url: str = "sqlite:///generated-in-memory"

    @classmethod
    def new(cls, tmp_path: Path, name: str) -> "Load":
        base = f"https://faults.example.org/{name}/fhir"
        source = PATIENTS.extract({"patients": build_sample_tables(PATIENT_ROWS)["patients"]})
        frame = build_frame(PATIENTS, source, SourceSystem(base))
        return cls(frame, SourceSystem(base).identifier_system("patient"), f"sqlite:///{tmp_path / 'manifest.db'}")

    def run(self, base_url: str, server, run_id: str, retry: RetryPolicy = FAST, timeout: float = 10.0,
            batch_size: int = 10, on_progress=None):
        with MedplumClient(base_url, server.client_id, server.client_secret, retry=retry,
                           timeout_seconds=timeout) as client, Manifest(self.manifest_url) as manifest:
            result, _ = migrate(client, manifest, run_id, PATIENTS, self.frame, self.source_url,
                                LoadSettings(batch_size=batch_size), on_progress)
            return result, client.stats

    def units(self) -> pl.DataFrame:
        with Manifest(self.manifest_url) as manifest:
            return manifest.units("patients")

    def assert_settled(self, server) -> None:
        """Every unit successful, each identifier exactly once in Medplum, the books balanced."""
        units = self.units()
        assert units["disposition"].to_list() == ["successful"] * PATIENT_ROWS, units["reason"].drop_nulls().to_list()
        with MedplumClient(server.base_url, server.client_id, server.client_secret) as client:
            found = census(client, "Patient", self.system)
        assert found.height == PATIENT_ROWS
        assert found["identifier_value"].n_unique() == PATIENT_ROWS
        books = accounting(self.frame, units)
        assert books.balanced, books


# (id, faults to plan, extra run arguments, minimum seconds the retries must have waited)
RECOVERABLE = [
    ("reset_mid_request", [Fault("reset", count=2, method="POST", path=BATCH)], {}, 0),
    ("reset_after_processing", [Fault("reset", count=2, forward=True, method="POST", path=BATCH)], {}, 0),
    ("status_500", [Fault("status", status=500, count=2, method="POST", path=BATCH)], {}, 0),
    ("status_503_after_processing", [Fault("status", status=503, forward=True, count=2, path=FHIR)], {}, 0),
    # The header's reset (0.3 s) is waited, not the much shorter backoff: three waits >= 0.9 s.
    ("storm_429_with_ratelimit", [Fault("status", status=429, count=3, headers=rate_limit(0, 0.3), path=FHIR)], {},
     0.9),
    ("storm_429_without_ratelimit", [Fault("status", status=429, count=3, path=FHIR)], {}, 0),
    # Entry-level 429s: the entries are resent after the reset the RateLimit header gives (0.3 s).
    ("entries_429_inside_batch", [Fault("rewrite", count=2, method="POST", path=BATCH, headers=rate_limit(0, 0.3),
                                        rewrite=entries_answered("429 Too Many Requests"))], {}, 0.6),
    ("entry_503_inside_batch", [Fault("rewrite", count=2, method="POST", path=BATCH,
                                      rewrite=entries_answered("503", first_only=True))], {}, 0),
    ("slower_than_timeout", [Fault("slow", delay=2.0, method="POST", path=BATCH)], {"timeout": 1.0}, 1.0),
    ("truncated_body", [Fault("truncate", count=2, method="POST", path=BATCH)], {}, 0),
    ("cut_json_body", [Fault("cut_json", count=2, path=FHIR)], {}, 0),
    ("non_json_body", [Fault("non_json", count=2, path=FHIR)], {}, 0),
    ("short_batch_response", [Fault("short_bundle", count=2, method="POST", path=BATCH)], {}, 0),
    ("token_refused_once", [Fault("status", status=401, method="POST", path=BATCH)], {}, 0),
    ("token_endpoint_reset", [Fault("reset", path="/oauth2/token")], {}, 0),
]


@pytest.mark.parametrize(("faults", "kwargs", "min_wait"), [case[1:] for case in RECOVERABLE],
                         ids=[case[0] for case in RECOVERABLE])
def test_the_loader_recovers_from_each_fault_within_bounded_retries(
    fresh_proxy, local_medplum, tmp_path, request, faults, kwargs, min_wait
):
    load = Load.new(tmp_path, request.node.callspec.id)
    fresh_proxy.plan(*faults)
    strikes = fresh_proxy.pending_faults()

    started = time.monotonic()
    result, stats = load.run(fresh_proxy.base_url, local_medplum, "faulty", **kwargs)
    elapsed = time.monotonic() - started

    assert fresh_proxy.pending_faults() == 0, "every planned fault struck"
    assert result.counts["failed"] == 0 and result.counts["sent"] == PATIENT_ROWS
    # Bounded: one retry (request or entry resend) per strike at most, and no more time than the
    # waits asked for plus the work.
    assert stats.retries + stats.entries_resent // 10 <= strikes, stats
    assert stats.retries + stats.entries_resent > 0, "the fault was seen and retried"
    assert min_wait <= elapsed < min_wait + 8.0
    load.assert_settled(local_medplum)


def test_connections_refused_for_a_while_are_retried_until_the_server_is_back(fresh_proxy, local_medplum, tmp_path):
    load = Load.new(tmp_path, "refused")
    retry = RetryPolicy(max_attempts=6, base_delay=0.2, max_delay=1.0, max_total_seconds=10.0)
    # While the third bundle is on its way the proxy stops listening for 0.8 s and cuts its
    # keep-alive connections: the next requests are refused until it listens again.
    fresh_proxy.plan(Fault("call", method="POST", path=BATCH, skip=2, action=lambda: fresh_proxy.refuse_for(0.8)))

    started = time.monotonic()
    result, stats = load.run(fresh_proxy.base_url, local_medplum, "refused", retry=retry)

    assert result.counts["failed"] == 0
    assert 1 <= stats.retries <= retry.max_attempts - 1
    assert time.monotonic() - started < 8.0
    load.assert_settled(local_medplum)


def test_connections_refused_from_the_first_request_are_retried(fresh_proxy, local_medplum, tmp_path):
    # The very first request fetches the token: before the fix in client._send a refused token
    # request escaped as a raw httpx.ConnectError without any retry.
    load = Load.new(tmp_path, "refused-at-start")
    retry = RetryPolicy(max_attempts=6, base_delay=0.2, max_delay=1.0, max_total_seconds=10.0)
    fresh_proxy.refuse_for(0.5)

    result, stats = load.run(fresh_proxy.base_url, local_medplum, "refused-at-start", retry=retry)

    assert result.counts["failed"] == 0 and stats.retries >= 1
    load.assert_settled(local_medplum)


# (id, faults, run arguments, expected message, the most attempts the failing request may take)
EXHAUSTING = [
    ("status_503_forever", [Fault("status", status=503, count=99, method="POST", path=BATCH, skip=1)], {},
     r"POST 127\.0\.0\.1:\d+/fhir/R4/ gave up after 5 attempts: 503: injected 503", 5),
    ("reset_forever", [Fault("reset", count=99, method="POST", path=BATCH, skip=1)], {},
     r"gave up after 5 attempts: (ReadError|RemoteProtocolError|WriteError)", 5),
    ("short_batch_forever", [Fault("short_bundle", count=99, method="POST", path=BATCH, skip=1)], {},
     r"gave up after 5 attempts: bundle response has 9 entries for 10 sent", 5),
    ("timeout_forever", [Fault("slow", delay=1.2, count=99, method="POST", path=BATCH, skip=1)], {"timeout": 0.5},
     r"gave up after 5 attempts: ReadTimeout", 5),
    ("token_refused_forever", [Fault("status", status=401, count=99, path=FHIR, skip=1)], {},
     r"gave up after 5 attempts: 401: token refused", 5),
    # A reset time far beyond the request's time budget: the client gives up at once instead of
    # sleeping an hour.
    ("quota_reset_beyond_budget", [Fault("status", status=429, count=99, headers=rate_limit(0, 3600), method="POST",
                                         path=BATCH, skip=1)], {}, r"gave up after 1 attempts: 429: rate limited", 1),
]


@pytest.mark.parametrize(("faults", "kwargs", "message", "max_tries"), [case[1:] for case in EXHAUSTING],
                         ids=[case[0] for case in EXHAUSTING])
def test_a_fault_that_outlasts_the_retries_fails_clearly_and_a_rerun_settles_everything(
    fresh_proxy, local_medplum, tmp_path, request, faults, kwargs, message, max_tries
):
    load = Load.new(tmp_path, request.node.callspec.id)
    fresh_proxy.plan(*faults)

    started = time.monotonic()
    with pytest.raises(MedplumError, match=message):
        load.run(fresh_proxy.base_url, local_medplum, "doomed", **kwargs)
    elapsed = time.monotonic() - started

    # The first bundle went through; the second was tried at most `max_tries` times, then the run
    # stopped: its units are pending (to be resent), the others successful, nothing else happened.
    # (Counted by kind: a `slow` answer of an earlier test may still be logged late.)
    faulted = [entry for entry in fresh_proxy.requests() if entry.fault in {fault.kind for fault in faults}]
    assert 1 <= len(faulted) <= max_tries
    assert elapsed < FAST.max_total_seconds + 2 * kwargs.get("timeout", 0) * max_tries
    with Manifest(load.manifest_url) as manifest:
        assert manifest.last_run("patients")["status"] == "failed"
    counts = load.units()["disposition"].value_counts()
    assert dict(counts.iter_rows()) == {"successful": 10, "pending": 20}
    assert not accounting(load.frame, load.units()).balanced

    fresh_proxy.clear()
    result, _ = load.run(fresh_proxy.base_url, local_medplum, "rerun")

    assert result.counts["not_sent_unchanged"] == 10 and result.counts["failed"] == 0
    load.assert_settled(local_medplum)


def test_entries_refused_on_every_attempt_end_rejected_with_their_reason_and_a_rerun_loads_them(
    fresh_proxy, local_medplum, tmp_path
):
    # Entry-level 429s on every try: submit_batch stops after max_attempts and the units are
    # recorded `rejected` with the server's reason, so the run finishes and the books balance.
    load = Load.new(tmp_path, "entries-refused")
    fresh_proxy.plan(Fault("rewrite", count=FAST.max_attempts, method="POST", path=BATCH, skip=1,
                           headers=rate_limit(0, 0.1), rewrite=entries_answered("429 Too Many Requests")))

    result, stats = load.run(fresh_proxy.base_url, local_medplum, "throttled")

    assert result.counts["failed"] == 10 and stats.entries_resent == 10 * (FAST.max_attempts - 1)
    units = load.units()
    rejected = units.filter(pl.col("disposition") == "rejected")
    assert rejected.height == 10
    assert set(rejected["rule"]) == {"server_rejected"} and set(rejected["reason"]) == {"429: injected 429 Too Many Requests"}
    assert accounting(load.frame, units).balanced

    result, _ = load.run(fresh_proxy.base_url, local_medplum, "rerun")
    assert result.counts["sent"] == 10 and result.counts["failed"] == 0
    load.assert_settled(local_medplum)


def test_a_token_that_expires_mid_run_is_refetched_after_the_servers_401(tmp_path):
    # The server's tokens live 1 s; the proxy tells the client they live an hour, so the client
    # keeps using an expired token until the server itself answers 401.
    with running_local_medplum(token_ttl=1) as server, FaultProxy(server.base_url) as proxy:
        proxy.plan(Fault("rewrite", count=99, path="/oauth2/token", rewrite=lambda body: {**body, "expires_in": 3600}))
        load = Load.new(tmp_path, "token-expiry")

        result, stats = load.run(proxy.base_url, server, "expiring", batch_size=5,
                                 on_progress=lambda done, total: time.sleep(0.3))

        refused = [entry for entry in proxy.requests(path=FHIR, fault=None) if entry.status == 401]
        tokens = proxy.requests(path="/oauth2/token")
        assert result.counts["failed"] == 0
        assert refused and len(tokens) == len(refused) + 1
        assert stats.retries == len(refused)
        load.assert_settled(server)

