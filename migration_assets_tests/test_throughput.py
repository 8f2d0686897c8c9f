"""Throughput and scale of the loader against the local Medplum server: async bundles, bundles in
flight, quota pacing, skipping unchanged rows, and key-hash shards loaded concurrently.

(The platform-level proof that an unchanged rerun sends nothing is also in test_pipeline.py:
`test_every_element_migrates_with_every_check_green_and_a_rerun_creates_nothing`, through Dagster;
here it is counted in HTTP requests.)
"""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polars as pl
import pytest

from migration_assets.active import get_element
from migration_assets.devtools.local_medplum import LocalMedplum, running_local_medplum
from migration_assets.elements.base import SourceSystem, build_frame
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import MedplumClient, RetryPolicy
from migration_assets.medplum.asyncbundle import AsyncPolling
from migration_assets.pipeline.frame_parts import shard_of
from migration_assets.pipeline.loader import LoadResult, LoadSettings, load_frame, with_direct_references
from migration_assets.pipeline.resources import MigrationSettings
from migration_assets.profiles.seed_ehr.sample_data import build_sample_tables
from migration_assets.verify.books import accounting
from migration_assets.verify.census import resources_with_identifier

pytestmark = pytest.mark.integration  # every test here starts a server or a run against one

SYSTEM = SourceSystem("https://ehr.example-clinic.org/fhir")
ELEMENTS = ("patients", "problem_list")
KINDS = {
    "patients": ("Patient", SYSTEM.identifier_system("patient")),
    "problem_list": ("Condition", SYSTEM.identifier_system("patient-condition")),
}


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    tables = build_sample_tables(patients=40)
    built = {}
    for name in ELEMENTS:
        element = get_element(name)
        built[name] = build_frame(element, element.extract({t: tables[t] for t in element.source_tables}), SYSTEM)
    return built


def client_for(server: LocalMedplum) -> MedplumClient:
    return MedplumClient(
        server.base_url, server.client_id, server.client_secret, retry=RetryPolicy(base_delay=0.05, max_delay=0.5)
    )


def load_all(
    server: LocalMedplum,
    manifest_url: str,
    frames: dict[str, pl.DataFrame],
    settings: LoadSettings,
    run_id: str = "run",
) -> tuple[dict[str, LoadResult], MedplumClient]:
    results = {}
    with client_for(server) as client, Manifest(manifest_url) as manifest:
        for name in ELEMENTS:
            results[name] = load_frame(client, manifest, run_id, get_element(name), frames[name], settings)
    return results, client


def snapshot(server: LocalMedplum) -> dict[str, pl.DataFrame]:
    """Per element: identifier value and the resource as written, less server-assigned fields, with the
    Condition's subject replaced by the patient identifier it points at."""
    with client_for(server) as client:
        found = {name: list(resources_with_identifier(client, *KINDS[name])) for name in ELEMENTS}
    patient_of = {f"Patient/{resource['id']}": value for value, resource in found["patients"]}
    shots = {}
    for name, pairs in found.items():
        texts = []
        for _, resource in pairs:
            resource = {k: v for k, v in resource.items() if k not in ("id", "meta")}
            if "subject" in resource:
                resource["subject"] = patient_of.get(resource["subject"]["reference"], "?")
            texts.append(json.dumps(resource, sort_keys=True))
        shots[name] = pl.DataFrame({"identifier_value": [value for value, _ in pairs], "resource": texts}).sort(
            "identifier_value"
        )
    return shots


def eligible(frame: pl.DataFrame) -> int:
    return int(frame["quarantine_rule"].is_null().sum())


@pytest.fixture
def server() -> Iterator[LocalMedplum]:
    with running_local_medplum() as running:
        yield running


# -- async bundles -----------------------------------------------------------------------------------


def test_async_mode_loads_everything_without_touching_the_quota(frames, tmp_path):
    # A quota far too small for a synchronous load: async jobs are not charged, so nothing waits or 429s.
    with running_local_medplum(fhir_quota=1000, quota_window_seconds=60) as server:
        results, client = load_all(
            server, f"sqlite:///{tmp_path / 'm.db'}", frames, LoadSettings(batch_size=25, concurrency=2, mode="async")
        )
        for name in ELEMENTS:
            assert results[name].counts["created"] == eligible(frames[name]) > 0
            assert results[name].counts["failed"] == 0
        assert client.stats.rate_limited == 0 and client.stats.entries_resent == 0
        shots = snapshot(server)
    for name in ELEMENTS:
        assert shots[name].height == shots[name]["identifier_value"].n_unique() == eligible(frames[name])


class FakeAsyncMedplum:
    """A server whose first async job fails with 503 and whose second completes."""

    def __init__(self) -> None:
        self.jobs: dict[str, int] = {}
        self.posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
        if request.method == "POST":
            assert request.headers["prefer"] == "respond-async"
            self.posts += 1
            self.jobs[str(self.posts)] = len(json.loads(request.content)["entry"])
            return httpx.Response(202, headers={"content-location": f"http://fake/fhir/R4/job/{self.posts}/status"})
        if "/job/" in path:
            job_id = path.split("/")[-2]
            if job_id == "1":
                return httpx.Response(
                    200,
                    json={
                        "resourceType": "AsyncJob",
                        "status": "error",
                        "output": {
                            "resourceType": "Parameters",
                            "parameter": [{"name": "status", "valueInteger": 503}],
                        },
                    },
                )
            return httpx.Response(
                200,
                json={
                    "resourceType": "AsyncJob",
                    "status": "completed",
                    "output": {
                        "resourceType": "Parameters",
                        "parameter": [{"name": "results", "valueReference": {"reference": f"Binary/{job_id}"}}],
                    },
                },
            )
        if "/Binary/" in path:
            entries = [
                {"response": {"status": "201 Created", "location": f"Patient/{n}/_history/1"}}
                for n in range(self.jobs[path.split("/")[-1]])
            ]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": entries})
        return httpx.Response(404)


def test_a_failed_async_job_counts_as_transient_and_its_entries_are_resent():
    fake = FakeAsyncMedplum()
    client = MedplumClient(
        "http://fake/",
        "id",
        "secret",
        transport=httpx.MockTransport(fake),
        retry=RetryPolicy(base_delay=0.01, max_delay=0.02),
        async_polling=AsyncPolling(first_delay=0.001, max_delay=0.01),
    )
    with client:
        results = client.submit_batch(
            ['{"request":{"method":"PUT","url":"Patient?identifier=s|1"}}'] * 3, respond_async=True
        )
    assert [r.status for r in results] == [201, 201, 201]
    assert fake.posts == 2 and client.stats.entries_resent == 3


# -- bundles in flight and pacing --------------------------------------------------------------------


def test_409_entries_are_resent_alone():
    answers = iter([["409 Conflict", "201 Created"], ["200 OK"]])
    sent_sizes = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        sent_sizes.append(len(json.loads(request.content)["entry"]))
        entries = [{"response": {"status": status}} for status in next(answers)]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": entries})

    with MedplumClient(
        "http://fake/",
        "id",
        "secret",
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(base_delay=0.01, max_delay=0.02),
    ) as client:
        results = client.submit_batch(["{}", "{}"])
    assert [r.status for r in results] == [200, 201]
    assert sent_sizes == [2, 1]


def test_one_or_four_bundles_in_flight_give_the_same_resources(frames, tmp_path):
    shots = {}
    for concurrency in (1, 4):
        with running_local_medplum() as server:
            results, _ = load_all(
                server,
                f"sqlite:///{tmp_path / f'c{concurrency}.db'}",
                frames,
                LoadSettings(batch_size=7, concurrency=concurrency),
            )
            assert all(r.counts["failed"] == 0 for r in results.values())
            shots[concurrency] = snapshot(server)
    for name in ELEMENTS:
        assert shots[1][name].height == eligible(frames[name])
        assert shots[1][name]["identifier_value"].n_unique() == shots[1][name].height  # no duplicates
        assert shots[1][name].equals(shots[4][name])


def test_references_to_resources_already_written_go_direct_and_store_the_same_resources(frames, tmp_path, monkeypatch):
    sent: list[str] = []
    real_submit = MedplumClient.submit_batch

    def recording(self, entries, **options):
        sent.extend(entries)
        return real_submit(self, entries, **options)

    monkeypatch.setattr(MedplumClient, "submit_batch", recording)
    shots = {}
    for direct in (True, False):
        sent.clear()
        with running_local_medplum() as server:
            results, _ = load_all(
                server,
                f"sqlite:///{tmp_path / f'direct-{direct}.db'}",
                frames,
                LoadSettings(batch_size=50, direct_references=direct),
            )
            shots[direct] = snapshot(server)
        assert all(result.counts["failed"] == 0 for result in results.values())
        subjects = [
            json.loads(entry)["resource"]["subject"]["reference"]
            for entry in sent
            if '"resourceType":"Condition"' in entry
        ]
        assert len(subjects) == eligible(frames["problem_list"])
        if direct:
            assert all(subject.startswith("Patient/") and "?" not in subject for subject in subjects), subjects[:3]
        else:
            assert all(subject.startswith("Patient?identifier=") for subject in subjects), subjects[:3]
    for name in ELEMENTS:
        assert shots[True][name].equals(shots[False][name]), "the same resources, each pointing at its own patient"


def test_direct_references_replace_only_the_targets_with_a_known_id():
    patient, practitioner = SYSTEM.identifier_system("patient"), SYSTEM.identifier_system("practitioner")

    def ref(path, kind, system, value):
        return {"path": path, "resource_type": kind, "identifier_system": system, "identifier_value": value}

    rows = pl.DataFrame(
        {
            "resource": [
                (
                    f'{{"subject":{{"reference":"Patient?identifier={patient}|PÖ1"}},"participant":[{{"individual":'
                    f'{{"reference":"Practitioner?identifier={practitioner}|R1"}}}}],"note":"Patient?identifier={patient}|PÖ1"}}'
                ),
                f'{{"subject":{{"reference":"Patient?identifier={patient}|P2"}}}}',
            ],
            "references": [
                [
                    ref("subject", "Patient", patient, "PÖ1"),
                    ref("participant.0.individual", "Practitioner", practitioner, "R1"),
                ],
                [ref("subject", "Patient", patient, "P2")],
            ],
        }
    )
    ids = pl.DataFrame(
        {
            "resource_type": ["Patient", "Practitioner"],
            "identifier_system": [patient, practitioner],
            "identifier_value": ["PÖ1", "R1"],
            "resource_id": ["p-1", "r-1"],
        }
    )

    written = [json.loads(text) for text in with_direct_references(rows, ids)["resource"]]

    assert written[0]["subject"]["reference"] == "Patient/p-1"
    assert written[0]["participant"][0]["individual"]["reference"] == "Practitioner/r-1"
    assert written[0]["note"] == f"Patient?identifier={patient}|PÖ1", "only references are rewritten"
    assert written[1]["subject"]["reference"].startswith("Patient?identifier="), "no id known: stays conditional"


def test_pacing_with_several_bundles_in_flight_avoids_429s(frames, tmp_path):
    # 12,000 points a 4 s window: the load needs several windows; pacing waits for the resets. (With 2 s
    # windows a loaded CI machine lagged enough behind the header for a second 429 round.)
    manifest_url = f"sqlite:///{tmp_path / 'q.db'}"
    with running_local_medplum(fhir_quota=12000, quota_window_seconds=4) as server:
        results, client = load_all(server, manifest_url, frames, LoadSettings(batch_size=8, concurrency=3))
    for name in ELEMENTS:
        assert results[name].counts["created"] == eligible(frames[name])
        with Manifest(manifest_url) as manifest:
            books = accounting(frames[name], manifest.units(name))
        assert books.balanced and books.dispositions["successful"] == eligible(frames[name])
    assert client.stats.rate_limited <= 1, client.stats


# -- skip unchanged ----------------------------------------------------------------------------------


def test_an_unchanged_rerun_makes_no_request_at_all(frames, tmp_path, server):
    manifest_url = f"sqlite:///{tmp_path / 'u.db'}"
    load_all(server, manifest_url, frames, LoadSettings(batch_size=50))
    results, client = load_all(server, manifest_url, frames, LoadSettings(batch_size=50), run_id="rerun")
    assert client.stats.requests == 0
    for name in ELEMENTS:
        assert results[name].counts["sent"] == 0
        assert results[name].counts["not_sent_unchanged"] == eligible(frames[name])


# -- shards ------------------------------------------------------------------------------------------


def test_shards_split_every_bundle_group_into_exactly_one_shard(frames):
    groups = frames["problem_list"]["bundle_group"]
    shards = shard_of(groups, 3)
    assert shards.max() < 3 and shards.n_unique() == 3
    assert pl.DataFrame({"g": groups, "s": shards}).group_by("g").agg(pl.col("s").n_unique())["s"].max() == 1
    assert shard_of(groups, 3).equals(shards)  # stable


def load_shards_concurrently(
    server: LocalMedplum, manifest_url: str, name: str, frame: pl.DataFrame, count: int
) -> dict[int, LoadResult]:
    """Every shard of `name` at once, one thread (own client, own manifest connection) each."""

    def shard(index: int) -> LoadResult:
        with client_for(server) as client, Manifest(manifest_url) as manifest:
            settings = LoadSettings(batch_size=5, concurrency=2, shard_count=count, shard_index=index)
            return load_frame(client, manifest, f"shard-{index}", get_element(name), frame, settings)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = {index: pool.submit(shard, index) for index in range(count)}
    return {index: future.result() for index, future in futures.items()}


def test_concurrent_shard_loads_equal_one_clean_load(frames, tmp_path: Path):
    with running_local_medplum() as clean:
        load_all(clean, f"sqlite:///{tmp_path / 'clean.db'}", frames, LoadSettings(batch_size=10))
        expected = snapshot(clean)

    manifest_url = f"sqlite:///{tmp_path / 'shards.db'}"
    Manifest(manifest_url).close()  # tables created once, before the shards race
    count = 3
    with running_local_medplum() as server:
        for name in ELEMENTS:  # every shard of an element, then the next element (its prerequisite)
            results = load_shards_concurrently(server, manifest_url, name, frames[name], count)
            assert sum(r.counts["source_rows"] for r in results.values()) == frames[name].height
            assert sum(r.counts["created"] for r in results.values()) == eligible(frames[name])
            assert all(r.counts["source_rows"] < frames[name].height for r in results.values())
            with Manifest(manifest_url) as manifest:
                assert accounting(frames[name], manifest.units(name)).balanced
        loaded = snapshot(server)
    for name in ELEMENTS:
        assert loaded[name]["identifier_value"].n_unique() == loaded[name].height  # no duplicates
        assert loaded[name].equals(expected[name])


class _BooksWatched(Manifest):
    """A manifest that reads the element's dispositions each time a bundle's answers are recorded, as a
    check of the same run on another worker reads them meanwhile."""

    seen: list[dict[str, int]]

    def record_results(self, run_id: str, element: str, *args, **kwargs) -> None:
        self.seen.append(dict(self.units(element)["disposition"].value_counts().iter_rows()))
        super().record_results(run_id, element, *args, **kwargs)


def test_a_resubmission_of_what_is_loaded_never_shows_it_pending(frames, local_medplum, tmp_path: Path):
    # The idempotency check resubmits the element (resend_unchanged) while the run's other checks, on other
    # processes or Celery workers, read the books: they must find them as the load left them.
    manifest_url = f"sqlite:///{tmp_path / 'books.db'}"
    patients = frames["patients"]
    with client_for(local_medplum) as client, _BooksWatched(manifest_url) as manifest:
        manifest.seen = []
        load_frame(client, manifest, "run", get_element("patients"), patients, LoadSettings(batch_size=10))
        manifest.seen.clear()
        resubmitted = LoadSettings(batch_size=10, resend_unchanged=True)
        result = load_frame(client, manifest, "run-reload", get_element("patients"), patients, resubmitted)
        after = dict(manifest.units("patients")["disposition"].value_counts().iter_rows())
    assert result.counts["sent"] == eligible(patients) and manifest.seen
    assert all("pending" not in seen for seen in manifest.seen), manifest.seen
    assert manifest.seen[0] == after


def test_migration_settings_carry_mode_and_shard(monkeypatch):
    element = get_element("patients")
    monkeypatch.setenv("LOAD_MODE", "async")
    assert MigrationSettings().load_settings(element).mode == "async"
    monkeypatch.setenv("LOAD_MODE", "mixed")
    assert MigrationSettings().load_settings(element).mode == "mixed"
    monkeypatch.setenv("LOAD_MODE", "fast")
    with pytest.raises(ValueError, match="load mode must be one of sync, async, mixed"):
        MigrationSettings().load_settings(element)
    # The settings of the whole element (the checks'): a shard step narrows them to its own shard.
    settings = MigrationSettings(load_mode="sync", shard_count=4).load_settings(element)
    assert (settings.mode, settings.shard_count, settings.shard_index) == ("sync", 1, 0)


def test_load_steps_share_the_medplum_writes_pool():
    from migration_assets.pipeline.sharded import load_shard

    # Every shard step, on whatever process or worker, takes a slot of the pool.
    assert load_shard.pool == "medplum_writes"
