"""Conditional-PUT throughput of the local Medplum server at 0 and 50,000 stored resources.

Run from the repository root:  .venv/bin/python medplum_local/bench_local.py
Each measurement sends one batch Bundle of conditional PUTs (`PUT Patient?identifier=SYS|VALUE`),
first with new identifiers (creates), then the same batch again (identical rerun: no new versions).
Numbers are medians over three batches.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from migration_assets.devtools.local_medplum import LocalMedplum, running_local_medplum

SYSTEM = "urn:bench:mrn"
PRELOAD = 50_000
REPEATS = 3


def patient(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        "name": [{"family": "Bench", "given": [value]}],
        "gender": "unknown",
        "birthDate": "1970-01-01",
    }


def client(server: LocalMedplum) -> httpx.Client:
    token = httpx.post(
        server.token_url,
        data={"grant_type": "client_credentials"},
        auth=(server.client_id, server.client_secret),
        trust_env=False,
    ).json()["access_token"]
    return httpx.Client(
        base_url=server.fhir_base_url,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=600,
        trust_env=False,
    )


def send_batch(fhir: httpx.Client, entries: list[dict[str, Any]], expect: str) -> float:
    body = {"resourceType": "Bundle", "type": "batch", "entry": entries}
    started = time.perf_counter()
    response = fhir.post("", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    statuses = {e["response"]["status"][:3] for e in response.json()["entry"]}
    if statuses != {expect}:
        raise RuntimeError(f"unexpected entry statuses {statuses}, expected {expect}")
    return elapsed


def conditional_puts(values: list[str]) -> list[dict[str, Any]]:
    return [
        {"resource": patient(v), "request": {"method": "PUT", "url": f"Patient?identifier={SYSTEM}|{v}"}}
        for v in values
    ]


def measure(fhir: httpx.Client, size: int, stored: int) -> int:
    """Prints the medians; returns how many resources the measurement added to the store."""
    first, rerun = [], []
    for _ in range(REPEATS):
        values = [f"b-{uuid.uuid4().hex[:12]}" for _ in range(size)]
        first.append(send_batch(fhir, conditional_puts(values), "201"))
        rerun.append(send_batch(fhir, conditional_puts(values), "200"))
    for label, times in (("create", first), ("identical rerun", rerun)):
        seconds = statistics.median(times)
        print(
            f"{stored:>7,} stored | batch of {size:>5,} conditional PUTs ({label:>15}) | "
            f"{seconds:7.3f} s | {size / seconds:8,.0f} resources/s"
        )
    return size * REPEATS


def preload(fhir: httpx.Client, count: int) -> float:
    started = time.perf_counter()
    for start in range(0, count, 1000):
        entries = [
            {"resource": patient(f"pre-{i}"), "request": {"method": "POST", "url": "Patient"}}
            for i in range(start, min(start + 1000, count))
        ]
        send_batch(fhir, entries, "201")
    return time.perf_counter() - started


def main() -> None:
    with running_local_medplum() as server, client(server) as fhir:
        stored = 0
        stored += measure(fhir, 100, stored)
        stored += measure(fhir, 1000, stored)
        seconds = preload(fhir, PRELOAD)
        stored += PRELOAD
        print(f"preloaded {PRELOAD:,} Patients (plain POST, batches of 1,000) in {seconds:.1f} s")
        stored += measure(fhir, 100, stored)
        measure(fhir, 1000, stored)


if __name__ == "__main__":
    main()
