"""Faults over real HTTP: the loader and whole Dagster runs talk to the local Medplum server through a
fault-injecting proxy of our own (fault_proxy.py). For every fault the load either recovers within
bounded retries or fails with a clear message; then (after a rerun where it failed) every source unit
is successful or explained, no identifier is duplicated in Medplum and the books balance.

Loader-level cases (loader.migrate of the patients partition through the proxy, about a second each)
cover every fault kind, and the server killed and restarted on its port mid-partition; Dagster-level
cases cover a run whose retries run out followed by a rerun through a storm of faults, and the Dagster
run process SIGKILLed mid-partition.
"""

import dataclasses
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterRunStatus

from migration_assets.active import PROFILE, get_element
from migration_assets.definitions import make_definitions
from migration_assets.devtools.local_medplum import (
    free_port,
    running_local_medplum,
    start_local_medplum,
    stop_local_medplum,
)
from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient, MedplumError, RetryPolicy
from migration_assets.pipeline.frame_parts import FrameParts
from migration_assets.pipeline.loader import LoadSettings, migrate
from migration_assets.pipeline.resources import MedplumResource, build_resources
from migration_assets.verify.books import accounting
from migration_assets.verify.census import RunCensus, census
from migration_assets_tests.fault_proxy import Fault, FaultProxy
from migration_assets_tests.fixtures_platform import Platform

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

PATIENTS = get_element("patients")
BATCH = "/fhir/R4/"  # batch bundles are POSTed to the FHIR base itself
FHIR = "/fhir/R4"
# Small and fast, so a test shows the bound: at most 5 attempts per request, delays 0.05..0.4 s.
FAST = RetryPolicy(max_attempts=5, base_delay=0.05, max_delay=0.4, max_total_seconds=10.0)
PATIENT_ROWS = 20
# Seconds of real work (frames, ledger, HTTP) a bound allows beyond the waits the retry policy may
# take: generous, since the tests share two cores with other test runs.
WORK = 15.0


def backoff_ceiling(policy: RetryPolicy) -> float:
    """The longest a request can spend waiting between its attempts under `policy`."""
    return sum(min(policy.max_delay, policy.base_delay * 2 ** (n - 1)) for n in range(1, policy.max_attempts))


def rate_limit(remaining: int, reset: float) -> dict[str, str]:
    return {"RateLimit": f'"requests";r=59000;t=60, "fhirInteractions";r={remaining};t={reset}'}


def entries_answered(status: str, first_only: bool = False):
    """A rewrite of a batch-response: every entry (or the first) answered `status` with an outcome,
    as Medplum does for entries it refuses (429 quota, 503) while the bundle answers 200."""

    def rewrite(bundle: dict) -> dict:
        for number, entry in enumerate(bundle.get("entry", [])):
            if not first_only or number == 0:
                entry.pop("resource", None)
                entry["response"] = {
                    "status": status,
                    "outcome": {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {"severity": "error", "code": "throttled", "details": {"text": f"injected {status}"}}
                        ],
                    },
                }
        return bundle

    return rewrite


def test_backoff_is_jittered_and_capped():
    policy = RetryPolicy(max_attempts=8, base_delay=0.5, max_delay=4.0)
    for attempt in range(1, 8):
        ceiling = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 150  # concurrent loaders do not retry in step
    assert backoff_ceiling(policy) == 0.5 + 1 + 2 + 4 + 4 + 4 + 4


# -- library level: loader.migrate through the proxy ---------------------------------------------


@functools.cache
def sample_patients() -> pl.DataFrame:
    return PROFILE.sample(PATIENT_ROWS)["patients"]


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
        source = PATIENTS.extract({"patients": sample_patients()})
        frame = build_frame(PATIENTS, source, SourceSystem(base))
        return cls(frame, SourceSystem(base).identifier_system("patient"), f"sqlite:///{tmp_path / 'manifest.db'}")

    def run(
        self,
        base_url: str,
        server,
        run_id: str,
        retry: RetryPolicy = FAST,
        timeout: float = 10.0,
        batch_size: int = 10,
        on_progress=None,
    ):
        with (
            MedplumClient(
                base_url, server.client_id, server.client_secret, retry=retry, timeout_seconds=timeout
            ) as client,
            Manifest(self.manifest_url) as manifest,
        ):
            result = migrate(
                client,
                manifest,
                run_id,
                PATIENTS,
                self.frame,
                self.source_url,
                LoadSettings(batch_size=batch_size),
                on_progress,
            )
            return result, client.stats

    def post_one_per_bundle(self, client: MedplumClient, manifest: Manifest, run_id: str, census_dir: Path):
        """One patient per bundle, created by POST: the load's census of the target found none."""
        before = RunCensus(census_dir, run_id)
        return migrate(
            client,
            manifest,
            run_id,
            PATIENTS,
            self.frame,
            self.source_url,
            LoadSettings(batch_size=1, creates="post"),
            census_of_target=lambda keys: before.get(client, keys),
        )

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
    (
        "storm_429_with_ratelimit",
        [Fault("status", status=429, count=3, headers=rate_limit(0, 0.3), path=FHIR)],
        {},
        0.9,
    ),
    ("storm_429_without_ratelimit", [Fault("status", status=429, count=3, path=FHIR)], {}, 0),
    # Entry-level 429s: the entries are resent after the reset the RateLimit header gives (0.3 s).
    (
        "entries_429_inside_batch",
        [
            Fault(
                "rewrite",
                count=2,
                method="POST",
                path=BATCH,
                headers=rate_limit(0, 0.3),
                rewrite=entries_answered("429 Too Many Requests"),
            )
        ],
        {},
        0.6,
    ),
    (
        "entry_503_inside_batch",
        [Fault("rewrite", count=2, method="POST", path=BATCH, rewrite=entries_answered("503", first_only=True))],
        {},
        0,
    ),
    ("slower_than_timeout", [Fault("slow", delay=2.0, method="POST", path=BATCH)], {"timeout": 1.0}, 1.0),
    ("truncated_body", [Fault("truncate", count=2, method="POST", path=BATCH)], {}, 0),
    ("cut_json_body", [Fault("cut_json", count=2, path=FHIR)], {}, 0),
    ("non_json_body", [Fault("non_json", count=2, path=FHIR)], {}, 0),
    ("short_batch_response", [Fault("short_bundle", count=2, method="POST", path=BATCH)], {}, 0),
    ("token_refused_once", [Fault("status", status=401, method="POST", path=BATCH)], {}, 0),
    ("token_endpoint_reset", [Fault("reset", path="/oauth2/token")], {}, 0),
]


@pytest.mark.parametrize(
    ("faults", "kwargs", "min_wait"), [case[1:] for case in RECOVERABLE], ids=[case[0] for case in RECOVERABLE]
)
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
    # A whole request refused by the quota is waited for (rate_limited), not counted as a retry.
    assert stats.retries + stats.entries_resent + stats.rate_limited > 0, "the fault was seen and retried"
    assert min_wait <= elapsed < min_wait + strikes * (FAST.max_delay + kwargs.get("timeout", 0)) + WORK
    load.assert_settled(local_medplum)


def test_pushback_halves_the_bundles_in_flight_and_the_load_settles(fresh_proxy, local_medplum, tmp_path):
    # One patient per bundle, created by POST (the load's census found none): the load keeps more bundles
    # in flight while the server answers cleanly; then the server pushes back (a 503 before anything is
    # written, as a 409 serialization failure or a 429 would) and the bundles in flight are halved.
    load = Load.new(tmp_path, "pushback")
    fresh_proxy.plan(Fault("status", status=503, skip=12, method="POST", path=BATCH))
    with (
        MedplumClient(fresh_proxy.base_url, local_medplum.client_id, local_medplum.client_secret, retry=FAST) as client,
        Manifest(load.manifest_url) as manifest,
    ):
        result = load.post_one_per_bundle(client, manifest, "pushed-back", tmp_path / "census")
        retried = client.stats.retries
    assert fresh_proxy.pending_faults() == 0
    assert result.most_in_flight >= 2, "no pushback for a while: more bundles in flight"
    assert result.counts["in_flight_decreased"] >= 1 and retried >= 1
    assert result.counts["sent"] == PATIENT_ROWS and result.counts["failed"] == 0
    load.assert_settled(local_medplum)


def test_a_load_starts_with_the_bundles_in_flight_the_last_load_to_the_target_settled_at(local_medplum, tmp_path):
    # Probing from one again would cost each element (and each part of a large one) its first bundles.
    load = Load.new(tmp_path, "settled")
    with (
        MedplumClient(local_medplum.base_url, local_medplum.client_id, local_medplum.client_secret) as client,
        Manifest(load.manifest_url) as manifest,
    ):
        manifest.start_run("earlier", "practitioners", "1", load.source_url, {})
        manifest.finish_run("earlier", "practitioners", "finished", {}, settled_in_flight=3)
        result = load.post_one_per_bundle(client, manifest, "settled", tmp_path / "census")
        settled = manifest.settled_in_flight()
    assert result.most_in_flight >= 3, "started at three bundles in flight, not one"
    assert result.settled_in_flight is not None and settled == result.settled_in_flight, "the next load starts there"
    load.assert_settled(local_medplum)


def test_a_bundle_holding_a_conditional_write_goes_alone(fresh_proxy, local_medplum, tmp_path):
    # Without a census every entry is a conditional PUT: Medplum searches inside the write, and
    # overlapping bundles of those collide (409), so they go one at a time whatever the limit says.
    load = Load.new(tmp_path, "alone")
    result, _ = load.run(fresh_proxy.base_url, local_medplum, "alone", batch_size=1)
    assert result.most_in_flight == 1 and result.counts["sent"] == PATIENT_ROWS
    load.assert_settled(local_medplum)


def test_connections_refused_for_a_while_are_retried_until_the_server_is_back(fresh_proxy, local_medplum, tmp_path):
    load = Load.new(tmp_path, "refused")
    retry = RetryPolicy(max_attempts=6, base_delay=0.2, max_delay=1.0, max_total_seconds=10.0)
    # While the second of four bundles is on its way the proxy stops listening for 0.8 s and cuts
    # its keep-alive connections: the next requests are refused until it listens again.
    fresh_proxy.plan(Fault("call", method="POST", path=BATCH, skip=1, action=lambda: fresh_proxy.refuse_for(0.8)))

    started = time.monotonic()
    result, stats = load.run(fresh_proxy.base_url, local_medplum, "refused", retry=retry, batch_size=5)

    assert result.counts["failed"] == 0
    assert 1 <= stats.retries <= retry.max_attempts - 1
    assert time.monotonic() - started < backoff_ceiling(retry) + WORK
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
    (
        "status_503_forever",
        [Fault("status", status=503, count=99, method="POST", path=BATCH, skip=1)],
        {},
        r"POST 127\.0\.0\.1:\d+/fhir/R4/ gave up after 5 attempts: 503: injected 503",
        5,
    ),
    (
        "reset_forever",
        [Fault("reset", count=99, method="POST", path=BATCH, skip=1)],
        {},
        r"gave up after 5 attempts: (ReadError|RemoteProtocolError|WriteError)",
        5,
    ),
    (
        "short_batch_forever",
        [Fault("short_bundle", count=99, method="POST", path=BATCH, skip=1)],
        {},
        r"gave up after 5 attempts: bundle response has 9 entries for 10 sent",
        5,
    ),
    (
        "timeout_forever",
        [Fault("slow", delay=1.2, count=99, method="POST", path=BATCH, skip=1)],
        {"timeout": 0.5},
        r"gave up after 5 attempts: ReadTimeout",
        5,
    ),
    (
        "token_refused_forever",
        [Fault("status", status=401, count=99, path=FHIR, skip=1)],
        {},
        r"gave up after 5 attempts: 401: token refused",
        5,
    ),
    # A reset time far beyond the request's time budget: the client gives up at once instead of
    # sleeping an hour.
    (
        "quota_reset_beyond_budget",
        [Fault("status", status=429, count=99, headers=rate_limit(0, 3600), method="POST", path=BATCH, skip=1)],
        {},
        r"gave up after 1 attempts: 429: still refused by the FHIR quota",
        1,
    ),
]


@pytest.mark.parametrize(
    ("faults", "kwargs", "message", "max_tries"),
    [case[1:] for case in EXHAUSTING],
    ids=[case[0] for case in EXHAUSTING],
)
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
    assert elapsed < backoff_ceiling(FAST) + max_tries * kwargs.get("timeout", 0) + WORK
    with Manifest(load.manifest_url) as manifest:
        assert manifest.last_run("patients")["status"] == "failed"
    counts = load.units()["disposition"].value_counts()
    assert dict(counts.iter_rows()) == {"successful": 10, "pending": 10}
    assert not accounting(load.frame, load.units()).balanced

    fresh_proxy.clear()
    result, _ = load.run(fresh_proxy.base_url, local_medplum, "rerun")

    assert result.counts["not_sent_unchanged"] == 10 and result.counts["failed"] == 0
    load.assert_settled(local_medplum)


def test_entries_refused_by_the_quota_until_its_wait_runs_out_stay_pending_and_a_rerun_loads_them(
    fresh_proxy, local_medplum, tmp_path
):
    # Entry-level 429s for longer than the client may wait on the quota (0.5 s here): the entries are
    # resent after each wait, never counted as failed, and once the wait runs out their units stay
    # `pending` with the reason "quota"; the run finishes and the next one loads them.
    load = Load.new(tmp_path, "entries-refused")
    fresh_proxy.plan(
        Fault(
            "rewrite",
            count=99,
            method="POST",
            path=BATCH,
            skip=1,
            headers=rate_limit(0, 0.1),
            rewrite=entries_answered("429 Too Many Requests"),
        )
    )
    patient_quota = RetryPolicy(
        max_attempts=5, base_delay=0.05, max_delay=0.4, max_total_seconds=10.0, max_quota_wait_seconds=0.5
    )

    result, stats = load.run(fresh_proxy.base_url, local_medplum, "throttled", retry=patient_quota)

    assert result.counts["failed"] == 0 and result.counts["pending_quota"] == 10
    assert stats.entries_resent >= 10 and 0.3 <= stats.quota_wait_seconds <= 0.5
    units = load.units()
    pending = units.filter(pl.col("disposition") == "pending")
    assert pending.height == 10 and units.filter(pl.col("disposition") == "rejected").is_empty()
    assert all(reason.startswith("quota: ") for reason in pending["reason"])

    fresh_proxy.clear()
    result, _ = load.run(fresh_proxy.base_url, local_medplum, "rerun")
    assert result.counts["sent"] == 10 and result.counts["failed"] == 0 and result.counts["pending_quota"] == 0
    load.assert_settled(local_medplum)


def test_a_token_that_expires_mid_run_is_refetched_after_the_servers_401(tmp_path):
    # The server's tokens live 1 s; the proxy tells the client they live an hour, so the client
    # keeps using an expired token until the server itself answers 401.
    with running_local_medplum(token_ttl=1) as server, FaultProxy(server.base_url) as proxy:
        # Every batch answer is held 0.3 s, so the load outlives the token.
        proxy.plan(
            Fault("rewrite", count=99, path="/oauth2/token", rewrite=lambda body: {**body, "expires_in": 3600}),
            Fault("slow", count=99, delay=0.3, method="POST", path=BATCH),
        )
        load = Load.new(tmp_path, "token-expiry")

        result, stats = load.run(proxy.base_url, server, "expiring", batch_size=5)

        refused = [entry for entry in proxy.requests(path=FHIR) if entry.status == 401]
        tokens = proxy.requests(path="/oauth2/token")
        assert result.counts["failed"] == 0
        assert refused and len(tokens) == len(refused) + 1
        assert stats.retries == len(refused)
        load.assert_settled(server)


def test_the_server_killed_and_restarted_mid_partition_costs_nothing(tmp_path):
    # A loader-level partition load (a whole Dagster run here cost 20 s on the shared machine).
    store = tmp_path / "medplum-store.ndjson"
    port = free_port()
    server, process = start_local_medplum(port, data_file=store, log_path=tmp_path / "medplum.log")
    current = {"process": process}
    restarted = threading.Event()

    def restart_in_background() -> None:
        # SIGTERM: the server saves its store and exits; it comes back on the same port with the
        # same data file (and without its tokens, as a restarted Medplum).
        stop_local_medplum(current["process"])

        def start_again() -> None:
            time.sleep(0.5)
            current["process"] = start_local_medplum(port, data_file=store, log_path=tmp_path / "medplum.log")[1]
            restarted.set()

        threading.Thread(target=start_again, daemon=True).start()

    retry = RetryPolicy(max_attempts=8, base_delay=0.2, max_delay=2.0, max_total_seconds=30.0)
    try:
        with FaultProxy(server.base_url) as proxy:
            load = Load.new(tmp_path, "restart")
            # The third of four bundles finds the server gone (the proxy answers 502, as a gateway
            # in front of Medplum would) until it is back.
            proxy.plan(Fault("call", method="POST", path=BATCH, skip=2, action=restart_in_background))

            started = time.monotonic()
            result, stats = load.run(proxy.base_url, server, "restart", retry=retry, batch_size=5)

            assert restarted.is_set()
            assert result.counts["created"] == PATIENT_ROWS and result.counts["failed"] == 0
            answered = [entry.status for entry in proxy.requests(path=FHIR)]
            assert 502 in answered and 401 in answered  # down, then back without its tokens
            assert stats.retries <= retry.max_attempts
            assert time.monotonic() - started < backoff_ceiling(retry) + WORK
            # The first two bundles survived the restart in the store; nothing doubled.
            load.assert_settled(server)
    finally:
        stop_local_medplum(current["process"])


# -- whole Dagster runs ------------------------------------------------------------------------------

ALL_CHECKS = {
    "schema",
    "prerequisites_loaded",
    "reference_integrity",
    "idempotent_reload",
    "reconciliation",
    "accounting_balanced",
}
PATIENT_SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"


def platform_resources(
    medplum_url: str,
    client_id: str,
    client_secret: str,
    source_url: str,
    manifest_url: str,
    work: Path,
    max_attempts: int = 4,
    timeout: float = 10.0,
    batch_size: int = 10,
) -> dict:
    """The platform's resources as fixtures_platform wires them, with the Medplum URL (the proxy),
    the retry count, the timeout and the bundle size of the test."""
    return build_resources(
        medplum=MedplumResource(
            base_url=medplum_url,
            client_id=client_id,
            client_secret=client_secret,
            timeout_seconds=timeout,
            max_attempts=max_attempts,
        ),
        legacy_db_url=source_url,
        manifest_db_url=manifest_url,
        work_dir=work,
        batch_size=batch_size,
    )


def rewired(platform: Platform, medplum_url: str, **options) -> Platform:
    server = platform.server
    resources = platform_resources(
        medplum_url,
        server.client_id,
        server.client_secret,
        platform.source_url,
        platform.manifest_url,
        platform.work,
        **options,
    )
    return dataclasses.replace(platform, defs=make_definitions(resources))


def assert_partition_settled(platform: Platform, patients: int, through: str) -> None:
    """Every patient unit successful, each identifier once in Medplum, the books (of the target at
    `through`) balanced."""
    with platform.manifest(through) as manifest:
        units = manifest.units("patients")
    assert units["disposition"].to_list() == ["successful"] * patients, units["reason"].drop_nulls().to_list()
    with platform.client() as client:
        found = census(client, "Patient", PATIENT_SYSTEM)
    assert found.height == patients and found["identifier_value"].n_unique() == patients
    frame = FrameParts(platform.work / "frames" / "fhir_frames" / "patients").read()
    assert frame.height == patients and accounting(frame, units).balanced


def test_a_run_that_outlasts_its_retries_fails_clearly_and_a_rerun_through_every_fault_recovers(platform_factory):
    platform = platform_factory.new(patients=30)
    with FaultProxy(platform.server.base_url) as proxy:
        faulty = rewired(platform, proxy.base_url, max_attempts=3, timeout=2.0, batch_size=5)
        # Two bundles go through, then Medplum answers 503 to every batch.
        proxy.plan(Fault("status", status=503, count=99, method="POST", path=BATCH, skip=2))

        started = time.monotonic()
        failed = faulty.run("patients")

        assert not failed.run_ok
        assert re.fullmatch(
            r"migration_assets.medplum.errors.MedplumError: "
            r"POST 127\.0\.0\.1:\d+/fhir/R4/ gave up after 3 attempts: 503: injected 503\n?",
            failed.error,
        )
        assert len(proxy.requests(method="POST", path=BATCH, fault="status")) == 3
        # Three tries of one request: two backoffs of at most 0.5 and 1 s (plus the run's own work).
        assert time.monotonic() - started < 30
        with platform.manifest(through=proxy.base_url) as manifest:
            dispositions = dict(manifest.units("patients")["disposition"].value_counts().iter_rows())
        assert dispositions == {"successful": 10, "pending": 20}

        # The rerun goes through one of each fault, on batches, searches and the token: each batch
        # fault strikes the batch after the one its predecessor struck (skip=1), so no request meets
        # more faults than its three attempts can absorb. The token fault strikes the run's first token
        # request; the run searches Medplum once (its census, shared by the checks), and the two search
        # faults strike that search's first two attempts. The load's own batches (ten of two patients)
        # leave every batch fault one to strike.
        proxy.clear()
        faulty = rewired(platform, proxy.base_url, max_attempts=3, timeout=2.0, batch_size=2)
        proxy.plan(
            *(
                dataclasses.replace(fault, skip=1)
                for fault in (
                    Fault("reset", method="POST", path=BATCH),
                    Fault("status", status=503, forward=True, method="POST", path=BATCH),
                    Fault("short_bundle", method="POST", path=BATCH),
                    Fault(
                        "rewrite",
                        method="POST",
                        path=BATCH,
                        headers=rate_limit(0, 0.2),
                        rewrite=entries_answered("429 Too Many Requests"),
                    ),
                    Fault("status", status=401, method="POST", path=BATCH),
                )
            ),
            Fault("reset", path="/oauth2/token"),
            Fault("status", status=502, method="GET", path=FHIR),
            Fault("cut_json", method="GET", path=FHIR),
        )
        strikes = proxy.pending_faults()
        started = time.monotonic()
        rerun = faulty.run("patients")

        assert rerun.ok, (rerun.error, rerun.failure_messages)
        assert set(rerun.checks_passed) == ALL_CHECKS
        assert proxy.pending_faults() == 0, "every planned fault struck"
        assert rerun.counts["not_sent_unchanged"] == 10 and rerun.counts["failed"] == 0
        assert rerun.counts["created"] + rerun.counts["updated"] == 20
        # Bounded: every fault costs one retry, each at most 1 s of backoff (or 0.2 s of quota reset).
        assert time.monotonic() - started < 30 + strikes
    assert_partition_settled(platform, 30, through=proxy.base_url)


# Runs the real Dagster job for the patients partition in its own process, as `dagster` would.
DAGSTER_RUN = """
import sys
from pathlib import Path
from dagster import DagsterInstance
from migration_assets.definitions import make_definitions
from migration_assets.commands.demo import migrate_element
from migration_assets_tests.test_faults import platform_resources

medplum_url, client_id, secret, source_url, manifest_url, work = sys.argv[1:7]
instance = DagsterInstance.local_temp(tempdir=str(Path(work) / "dagster_home"))
defs = make_definitions(platform_resources(medplum_url, client_id, secret, source_url, manifest_url, Path(work)))
print(migrate_element("patients", instance, defs), flush=True)
"""


def test_a_dagster_run_process_killed_mid_partition_is_resumed_by_the_next_run(platform_factory):
    platform = platform_factory.new(patients=40)
    server = platform.server
    with FaultProxy(server.base_url) as proxy:
        run_process: dict[str, subprocess.Popen] = {}
        # The third of four bundles reaches Medplum, but its run process is SIGKILLed before the
        # answer: those units stay pending in the ledger while their resources exist.
        proxy.plan(
            Fault(
                "call", method="POST", path=BATCH, skip=2, action=lambda: os.kill(run_process["p"].pid, signal.SIGKILL)
            )
        )
        run_process["p"] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                DAGSTER_RUN,
                proxy.base_url,
                server.client_id,
                server.client_secret,
                platform.source_url,
                platform.manifest_url,
                str(platform.work),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(platform.work / "killed-run.log").open("wb"),
        )
        assert run_process["p"].wait(timeout=180) == -signal.SIGKILL, (platform.work / "killed-run.log").read_text()

        (killed,) = platform.instance.get_runs()
        assert killed.status not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)  # died without a word
        with platform.manifest(through=proxy.base_url) as manifest:
            dispositions = dict(manifest.units("patients")["disposition"].value_counts().iter_rows())
        # Outcomes are stored a few bundles per commit: at least the third bundle's units are pending.
        successful, pending = dispositions.get("successful", 0), dispositions.get("pending", 0)
        assert successful + pending == 40 and pending >= 10

        # The same target as the killed run (the server through the proxy, whose one fault is spent).
        rerun = rewired(platform, proxy.base_url).run("patients")

        assert rerun.ok, (rerun.error, rerun.failure_messages)
        assert set(rerun.checks_passed) == ALL_CHECKS
        assert rerun.counts["not_sent_unchanged"] == successful and rerun.counts["sent"] == pending
        # Three bundles reached Medplum before the kill, whatever the ledger had stored of them: resent,
        # they update rather than duplicate; only the fourth is created now.
        assert rerun.counts["created"] == 10 and rerun.counts["failed"] == 0
        assert_partition_settled(platform, 40, through=proxy.base_url)
