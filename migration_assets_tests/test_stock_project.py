"""The platform against a project as Medplum creates it: the FHIR quota on and the `transaction-bundles`
feature off. The local server stands for it with its quota scaled down (a few thousand points a
one-second window instead of 50,000 a minute) so that it runs out many times in a short test, in the
middle of batches and of the transactions nested in them, exactly as MEDPLUM_FACTS.md describes."""

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence

import polars as pl
import pytest

from migration_assets.active import LOAD_ORDER
from migration_assets.definitions import make_definitions
from migration_assets.devtools.local_medplum import STOCK_PROJECT
from migration_assets.ledger.manifest import Manifest
from migration_assets.medplum import EntryResponse, MedplumClient
from migration_assets.medplum.client import observed_by
from migration_assets.pipeline.resources import MedplumResource, build_resources
from migration_assets.verify.census import census
from migration_assets_tests.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.integration

# STOCK_PROJECT with its minute scaled down to a second and its 50,000 points to 6,000 (about 40
# conditional PUTs a second), so every bundle of the sample is larger than what is left of the quota.
STOCK_QUOTA = {**STOCK_PROJECT, "fhir_quota": 6_000, "quota_window_seconds": 1}
ALL_CHECKS = {
    "schema",
    "prerequisites_loaded",
    "reference_integrity",
    "idempotent_reload",
    "reconciliation",
    "accounting_balanced",
}


class QuotaRefusals:
    """Counts, from every batch answer of the run, the entries refused by the quota: 429 as the entry's
    own status, and 429 only inside the transaction-response of an entry that says 200."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outer = 0
        self.nested = 0

    def counted(self, increments: Mapping[str, int]) -> None:
        pass

    def answered(self, entries: Sequence[EntryResponse]) -> None:
        with self.lock:
            for entry in entries:
                if entry.status == 429:
                    self.outer += 1
                elif entry.ok and any(inner.status == 429 for inner in entry.inner_responses()):
                    self.nested += 1


def test_a_stock_project_loads_a_whole_sample_green_while_the_quota_runs_out_and_a_rerun_sends_nothing(
    platform_factory,
):
    platform = platform_factory.new(patients=80, **STOCK_QUOTA)
    refusals = QuotaRefusals()

    with observed_by(refusals):
        first = platform.run_all()

    for summary in first:
        assert summary.ok, (summary.element, summary.error, summary.failure_messages)
        assert set(summary.checks_passed) == ALL_CHECKS
        assert summary.counts["failed"] == summary.counts["pending_quota"] == summary.counts["half_written"] == 0
        assert summary.counts["sent"] == summary.counts["source_rows"] - summary.counts["quarantined"]
    # The quota ran out again and again, also inside nested transactions, and the run waited for it.
    assert refusals.outer >= 5 and refusals.nested >= 2, (refusals.outer, refusals.nested)
    assert sum(summary.figures.get("quota_wait_seconds", 0.0) for summary in first) > 1
    by_element = {summary.element: summary for summary in first}
    assert "transaction-bundles feature is off" in by_element["visits"].transactions_off
    assert not by_element["patients"].transactions_off  # said once, by the element that has transactions

    # Nothing duplicated, nothing missing: Medplum holds each eligible source unit exactly once.
    with platform.manifest() as manifest, platform.client() as client:
        for element in LOAD_ORDER:
            units = manifest.units(element)
            assert set(units["disposition"]) <= {"successful", "quarantined"}, element
            expected = units.filter(pl.col("disposition") == "successful")
            for (resource_type, system), rows in expected.group_by("resource_type", "identifier_system"):
                held = census(client, str(resource_type), str(system))
                assert held["identifier_value"].n_unique() == held.height, (element, resource_type, "duplicated")
                assert sorted(held["identifier_value"]) == sorted(rows["identifier_value"]), (element, resource_type)

    second = platform.run_all()
    for summary in second:
        assert summary.ok, (summary.element, summary.error, summary.failure_messages)
        assert summary.counts["sent"] == 0, summary.element
        assert summary.counts["not_sent_unchanged"] == summary.counts["source_rows"] - summary.counts["quarantined"]


class RefuseOneNote:
    """Answers one visit's transaction, every time it is sent, as Medplum does when one entry fails
    on a project without transaction-bundles: the Encounter written, its last note 400. The note is in
    fact written too (only its answer is rewritten): a partial write the local server cannot be made
    to refuse on its own, since the sample's notes are valid."""

    def __init__(self) -> None:
        self.encounter: str | None = None
        self.rewritten = 0

    def __call__(self, bundle: dict) -> dict:
        for entry in bundle.get("entry", []):
            inner = (entry.get("resource") or {}).get("entry", [])
            if entry["resource"].get("type") != "transaction-response" or len(inner) < 2 if inner else True:
                continue
            identifier = json.dumps(inner[0].get("resource", {}).get("identifier"))
            self.encounter = self.encounter or identifier
            if identifier == self.encounter:
                inner[-1].pop("resource", None)
                inner[-1]["response"] = {
                    "status": "400",
                    "outcome": {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {"severity": "error", "code": "invalid", "details": {"text": "injected: note refused"}}
                        ],
                    },
                }
                self.rewritten += 1
        return bundle


def test_a_transaction_half_written_on_a_project_without_transaction_bundles_is_completed_by_the_next_run(
    platform_factory,
):
    platform = platform_factory.new(patients=10, transaction_bundles=False)
    with FaultProxy(platform.server.base_url) as proxy:
        resources = build_resources(
            medplum=MedplumResource(
                base_url=proxy.base_url,
                client_id=platform.server.client_id,
                client_secret=platform.server.client_secret,
            ),
            legacy_db_url=platform.source_url,
            manifest_db_url=platform.manifest_url,
            work_dir=platform.work,
        )
        proxied = dataclasses.replace(platform, defs=make_definitions(resources))
        assert proxied.run("patients").ok
        refuse = RefuseOneNote()
        proxy.plan(Fault("rewrite", count=999, method="POST", path="/fhir/R4/", rewrite=refuse))

        half = proxied.run("visits")

        assert refuse.rewritten >= 1
        assert half.counts["failed"] == 1 and half.counts["half_written"] >= 1, half.counts
        assert "transaction-bundles feature is off" in half.transactions_off
        with (
            MedplumClient(proxy.base_url, platform.server.client_id, platform.server.client_secret) as client,
            Manifest(platform.manifest_url, client.target.key) as manifest,
        ):
            units = manifest.units("visits")
            half_written = units.filter(pl.col("reason").str.starts_with("half written"))
            assert half_written.height == half.counts["half_written"]
            assert set(half_written["disposition"]) == {"pending"}  # not counted as loaded
            assert "idempotent_reload" not in half.checks_passed  # nothing resubmitted while units are pending

            proxy.clear()
            rerun = proxied.run("visits")

            assert rerun.ok, (rerun.error, rerun.failure_messages)
            # The whole transaction again: the half-written units and the refused note.
            assert rerun.counts["sent"] == half.counts["half_written"] + 1 and rerun.counts["failed"] == 0
            assert set(manifest.units("visits")["disposition"]) == {"successful"}
