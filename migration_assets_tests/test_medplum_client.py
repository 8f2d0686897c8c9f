"""The Medplum client against the local server over real HTTP, and against a fake transport only for
the faults the server cannot be made to produce (a short batch-response, a non-JSON body)."""

import json
import time
import uuid

import httpx
import pytest

from migration_assets.devtools.local_medplum import running_local_medplum
from migration_assets.medplum import MedplumClient, MedplumError, RetryPolicy, conditional_url
from migration_assets.medplum.client import observed_by
from migration_assets.medplum.search import LONGEST_LOOKUP_QUERY, identifier_token, lookup_chunks
from migration_assets.verify.census import LOOKUP_CHUNK, find_by_identifiers

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

SYSTEM = "https://ehr.example-clinic.org/fhir/identifier/patient"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


def put_patient(value: str, family: str = "Doe") -> str:
    return json.dumps(
        {
            "request": {"method": "PUT", "url": conditional_url("Patient", SYSTEM, value)},
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": SYSTEM, "value": value}],
                "name": [{"family": family}],
            },
        }
    )


def client_for(server, **kwargs) -> MedplumClient:
    return MedplumClient(server.base_url, server.client_id, server.client_secret, **kwargs)


@pytest.mark.parametrize("value", ["A,B", "Q|101", "cost$5", "back\\slash", "a&b=c", "50%+1#x", "spaced out", "é😀"])
def test_identifiers_with_search_specials_round_trip_to_exactly_one_resource(local_medplum, value):
    escaped = value
    for special in ("\\", ",", "|", "$"):  # FHIR search escapes these with a backslash (the backslash first)
        escaped = escaped.replace(special, "\\" + special)
    with client_for(local_medplum) as client:
        first, second = client.submit_batch([put_patient(value)]), client.submit_batch([put_patient(value, "Roe")])
        found = list(client.search("Patient", {"identifier": f"{SYSTEM}|{escaped}"}))
    assert first[0].status == 201
    assert second[0].status == 200 and second[0].resource_id == first[0].resource_id
    assert [p["name"][0]["family"] for p in found] == ["Roe"]


def test_an_identical_resubmission_keeps_the_version(local_medplum):
    with client_for(local_medplum) as client:
        created = client.submit_batch([put_patient("SAME-1")])[0]
        again = client.submit_batch([put_patient("SAME-1")])[0]
    assert (created.status, again.status) == (201, 200)
    assert again.version_id == created.version_id


def test_an_observer_hears_every_batch_answer_and_statistic_of_every_client(local_medplum):
    heard: dict[str, list] = {"answered": [], "counted": []}

    class Recorder:
        def answered(self, entries):
            heard["answered"].append([entry.status for entry in entries])

        def counted(self, increments):
            heard["counted"].append(dict(increments))

    with observed_by(Recorder()), client_for(local_medplum) as one, client_for(local_medplum) as other:
        one.submit_batch([put_patient("OBS-1"), put_patient("OBS-2")])
        other.submit_batch([put_patient("OBS-1")], respond_async=True)
    assert heard["answered"] == [[201, 201], [200]], "synchronous and async answers alike"
    assert {"requests": 1} in heard["counted"]
    with client_for(local_medplum) as after:
        after.submit_batch([put_patient("OBS-3")])
    assert len(heard["answered"]) == 2, "heard only while the block runs"


def test_reads_and_searches_are_counted_as_the_fhir_quota_counts_them(local_medplum):
    with client_for(local_medplum) as client:
        [created] = client.submit_batch([put_patient("COUNTED-1")])
        assert client.read(f"Patient/{created.resource_id}") is not None
        assert client.read(f"Patient/{uuid.uuid4()}") is None, "a read of nothing is a read too"
        list(client.search("Patient", {"identifier": f"{SYSTEM}|COUNTED-1"}))
        client.count("Patient", {})
    assert (client.stats.reads, client.stats.searches) == (2, 2)


def test_a_search_too_long_for_a_url_goes_as_a_post_and_counts_as_one_search(local_medplum):
    # 1,000 identifiers make a query of about 100 KB: over what a server takes in a request line, and over
    # what one search takes (lookup_chunks splits them by length).
    values = [f"LONG,{number}" for number in range(1000)]
    with client_for(local_medplum) as client:
        for start in range(0, len(values), 250):
            client.submit_batch([put_patient(value) for value in values[start : start + 250]])
        searches_before = client.stats.searches
        found = dict(find_by_identifiers(client, "Patient", SYSTEM, values))
        chunks = list(lookup_chunks([identifier_token(SYSTEM, value) for value in values], LOOKUP_CHUNK))
        assert client.stats.searches - searches_before == len(chunks) == 2
        # A page smaller than the matches: Medplum's `next` link repeats the long query, and goes as a POST too.
        paged = list(client.search("Patient", {"identifier": ",".join(chunks[0]), "_count": "100"}))
    assert sorted(found) == sorted(values)
    assert len({patient["id"] for patient in paged}) == len(chunks[0])


def test_lookup_chunks_keep_each_query_within_the_longest_a_server_takes():
    values = ["x" * 50] * 1500 + ["y" * 5000] * 30
    chunks = list(lookup_chunks(values, 1000))
    assert [len(chunk) for chunk in chunks][0] == 1000, "at most `most` values"
    assert sum(len(chunk) for chunk in chunks) == len(values)
    assert all(len(",".join(chunk)) <= LONGEST_LOOKUP_QUERY for chunk in chunks)
    assert list(lookup_chunks(["z" * 100_000], 10)) == [["z" * 100_000]], "a value longer than a query goes alone"


def test_the_token_is_fetched_once_and_renewed_after_expiry():
    with running_local_medplum(token_ttl=2) as server, client_for(server) as client:
        client.submit_batch([put_patient("TOK-1")])
        first_token = client._token.bearer()
        client.submit_batch([put_patient("TOK-2")])
        assert client._token.bearer() == first_token
        time.sleep(2.5)
        results = client.submit_batch([put_patient("TOK-3")])
    assert results[0].status == 201


def test_entries_refused_by_the_quota_are_resent_alone_after_the_reset():
    # A 2,000-point window of 2 s: 20 creates (140 points each inside a batch) overrun it, the server
    # marks the tail of the batch 429, and only those entries go again once the window resets.
    with running_local_medplum(fhir_quota=2000, quota_window_seconds=2) as server, client_for(server) as client:
        results = client.submit_batch([put_patient(f"Q-{n}") for n in range(20)])
        found = list(client.search("Patient", {"identifier": f"{SYSTEM}|", "_count": "100"}))
    assert [r.status for r in results] == [201] * 20
    assert client.stats.entries_resent > 0
    assert len(found) == 20


def test_pacing_waits_for_the_reset_instead_of_running_into_429():
    with running_local_medplum(fhir_quota=1500, quota_window_seconds=2) as server, client_for(server) as client:
        client.submit_batch([put_patient(f"P-{n}") for n in range(5)])
        client.pace(cost=1000)
        results = client.submit_batch([put_patient(f"P-{n}") for n in range(5, 10)])
    assert [r.status for r in results] == [201] * 5
    assert client.stats.entries_resent == 0 and client.stats.rate_limited == 0


def put_transaction(value: str, create: bool = False) -> str:
    """A batch entry holding a transaction: a Patient and an Observation linked by urn:uuid, written by
    conditional PUT, or with `create` by plain POST (no search: only the client can keep it from
    creating twice)."""
    full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, value)}"
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "identifier": [{"system": SYSTEM, "value": f"obs-{value}"}],
        "subject": {"reference": full_url},
    }
    inner = [
        json.loads(put_patient(value)) | {"fullUrl": full_url},
        {
            "request": {"method": "PUT", "url": conditional_url("Observation", SYSTEM, f"obs-{value}")},
            "resource": observation,
        },
    ]
    if create:
        for entry in inner:
            entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    return json.dumps(
        {
            "request": {"method": "POST", "url": "/"},
            "resource": {"resourceType": "Bundle", "type": "transaction", "entry": inner},
        }
    )


@pytest.mark.parametrize("create", [False, True], ids=["conditional_put", "plain_post"])
def test_transactions_refused_inside_a_batch_entry_that_says_200_are_resent_whole_after_the_quota_resets(create):
    # transaction-bundles off, as a stock project: 8 transactions of 2 creates (280 points each, 200 by
    # POST) overrun a 1,500-point window; the refused ones answer 200 with every inner entry 429 (code
    # throttled, `_msBeforeNext` in the diagnostics), or inner 201 then 429 when the quota ran out
    # between them. Resent whole, what they wrote goes again as an update by id: never a second copy.
    refusals = Refusals()
    with (
        running_local_medplum(fhir_quota=1500, quota_window_seconds=2, transaction_bundles=False) as server,
        client_for(server) as client,
        observed_by(refusals),
    ):
        results = client.submit_batch([put_transaction(f"T-{n}", create) for n in range(8)])
        patients = list(client.search("Patient", {"identifier": f"{SYSTEM}|", "_count": "100"}))
        observations = list(client.search("Observation", {"identifier": f"{SYSTEM}|", "_count": "100"}))
    assert refusals.nested > 0 and client.stats.entries_resent > 0 and client.stats.quota_wait_seconds > 0
    assert [r.status for r in results] == [200] * 8
    assert all(inner.ok for r in results for inner in r.inner_responses())
    assert len(patients) == len(observations) == 8
    ids = {patient["id"] for patient in patients}
    assert {observation["subject"]["reference"].removeprefix("Patient/") for observation in observations} == ids


class Refusals:
    """Counts batch entries that answer 200 while an inner entry of their transaction says 429."""

    def __init__(self) -> None:
        self.nested = 0

    def counted(self, increments) -> None:
        pass

    def answered(self, entries) -> None:
        self.nested += sum(1 for e in entries if e.ok and any(i.status == 429 for i in e.inner_responses()))


def test_pacing_spends_the_quota_evenly_over_its_window_without_a_429():
    # 1,400 points a 2 s window; 8 batches of two creates (280 points each, 2,240 in all) paced by the
    # RateLimit header: each waits for its share of the window, and none runs into the quota.
    with running_local_medplum(fhir_quota=1400, quota_window_seconds=2) as server, client_for(server) as client:
        for batch in range(8):
            client.pace(cost=280)
            results = client.submit_batch([put_patient(f"E-{batch}-{n}") for n in range(2)])
            assert [r.status for r in results] == [201, 201]
    assert client.stats.rate_limited == 0 and client.stats.entries_resent == 0
    assert client.stats.quota_wait_seconds > 0.5


def test_the_transaction_bundles_feature_is_told_by_a_probe_that_writes_nothing():
    for feature in (True, False):
        with running_local_medplum(transaction_bundles=feature) as server, client_for(server) as client:
            assert client.transaction_bundles() is feature
            assert client.get_json("Patient", {"_summary": "count"})["total"] == 0


def test_a_short_batch_response_is_resent_then_reported():
    # Fault the local server cannot produce: answers with fewer entries than were sent.
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
        calls.append(request)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": []})

    client = MedplumClient("http://fake/", "id", "secret", retry=FAST_RETRY, transport=httpx.MockTransport(handler))
    with client, pytest.raises(MedplumError, match="0 entries for 1 sent"):
        client.submit_batch([put_patient("SHORT")])
    assert len(calls) == FAST_RETRY.max_attempts


def test_a_non_json_answer_is_retried_and_then_succeeds():
    answers = iter([httpx.Response(200, content=b"<html>proxy error"), None])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
        answer = next(answers)
        return answer or httpx.Response(
            200, json={"resourceType": "Bundle", "entry": [{"response": {"status": "201 Created"}}]}
        )

    client = MedplumClient("http://fake/", "id", "secret", retry=FAST_RETRY, transport=httpx.MockTransport(handler))
    with client:
        assert client.submit_batch([put_patient("HTML")])[0].status == 201
    assert client.stats.retries == 1


def test_wrong_credentials_fail_clearly_without_the_secret(local_medplum):
    client = MedplumClient(local_medplum.base_url, local_medplum.client_id, "not-the-secret", retry=FAST_RETRY)
    with client, pytest.raises(MedplumError) as error:
        client.submit_batch([put_patient("NOPE")])
    assert "MEDPLUM_CLIENT_SECRET" in str(error.value)
    assert "not-the-secret" not in str(error.value)


def test_a_throttled_or_broken_token_endpoint_is_retried():
    # Faults of the token endpoint the local server does not produce: 429, then a body without a token.
    answers = iter([httpx.Response(429), httpx.Response(200, json={"error": "x"})])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return next(answers, None) or httpx.Response(
                200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"}
            )
        return httpx.Response(200, json={"resourceType": "Patient", "id": "x"})

    client = MedplumClient("http://fake/", "id", "secret", retry=FAST_RETRY, transport=httpx.MockTransport(handler))
    with client:
        assert client.read("Patient/x") == {"resourceType": "Patient", "id": "x"}
    assert client.stats.retries == 2
