"""Async batch bundles, Medplum's load mode for hosted servers: async work does not count against the
FHIR quota, and the synchronous limits (about 8 MB and one minute a bundle) do not apply.

`POST /fhir/R4` with `Prefer: respond-async` answers 202 and a `Content-Location` header pointing at
`…/fhir/R4/job/<id>/status`. That URL serves an `AsyncJob` whose status goes `accepted` → `completed`
(or `error`, `cancelled`); once completed its `output` Parameters hold `results` → `Binary/<id>`, and
that Binary is the batch-response. The entries are then handled like a synchronous batch's.

A failed job is not retried by the server: its entries all get the job's status (a 5xx or 429 is
transient, so the caller resends them; every write is a conditional PUT, so a resend is safe). A job
that does not finish within the polling timeout raises: it may still complete, and resubmitting while
it runs could race its conditional creates into duplicates.

No Dagster import.
"""

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from migration_assets.medplum.errors import MedplumError, MedplumResponseError
from migration_assets.medplum.responses import EntryResponse, batch_response_entries, json_object

if TYPE_CHECKING:
    from migration_assets.medplum.client import MedplumClient

log = logging.getLogger(__name__)

FINISHED = frozenset({"completed", "error", "cancelled"})


@dataclass(frozen=True)
class AsyncPolling:
    """How the job status is polled: exponential backoff from `first_delay` to `max_delay`, for at
    most `timeout_seconds` per job. A poll is a read (1 quota point); a finished job waits at most
    `max_delay` for the poll that sees it, which a load in mixed mode would otherwise wait at its end."""

    first_delay: float = 0.05
    max_delay: float = 0.5
    factor: float = 1.6
    timeout_seconds: float = 900.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay
        while True:
            yield delay
            delay = min(self.max_delay, delay * self.factor)


def submit_async(
    client: "MedplumClient",
    body: bytes,
    expected: int,
    polling: AsyncPolling,
    send: Callable[..., Any],
    sleep: Callable[[float], None] = time.sleep,
) -> list[EntryResponse]:
    """POST `body` (a batch Bundle) as an async job, wait for it and return one response per entry.

    `send` is the client's retrying request function (`MedplumClient._send`)."""
    accepted: str | list[EntryResponse] = send(
        "POST",
        "",
        content=body,
        headers={"Prefer": "respond-async"},
        parse=lambda response: _accepted(response, expected),
    )
    if isinstance(accepted, list):
        return accepted  # the server answered synchronously: a plain batch-response
    job_url = accepted
    job = _wait(job_url, polling, send, sleep)
    status = job.get("status")
    if status == "completed":
        binary = _output_parameter(job, "results")
        reference = (binary or {}).get("valueReference", {}).get("reference")
        if not reference:
            raise MedplumError(f"async job {_job_id(job_url)} completed without a results reference")
        results: list[EntryResponse] = send(
            "GET",
            reference,
            headers={"Accept": "application/json, */*"},
            parse=lambda response: _results(response, expected),
        )
        return results
    # error or cancelled: every entry carries the job's outcome and status.
    outcome_parameter = _output_parameter(job, "outcome") or {}
    status_parameter = _output_parameter(job, "status") or {}
    code = int(status_parameter.get("valueInteger") or (500 if status == "error" else 503))
    outcome = outcome_parameter.get("resource") or {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": f"async job {status}"}],
    }
    log.warning(
        "async job %s ended %s (%d); its %d entries count as %d", _job_id(job_url), status, code, expected, code
    )
    return [EntryResponse(status=code, outcome=outcome) for _ in range(expected)]


def _accepted(response: httpx.Response, expected: int) -> str | list[EntryResponse]:
    if response.status_code == 202:
        location: str | None = response.headers.get("content-location")
        if not location:
            raise MedplumResponseError("202 Accepted without a Content-Location job URL")
        return location
    return batch_response_entries(json_object(response), expected)


def _wait(
    job_url: str, polling: AsyncPolling, send: Callable[..., Any], sleep: Callable[[float], None]
) -> dict[str, Any]:
    started = time.monotonic()
    for delay in polling.delays():
        sleep(delay)
        job: dict[str, Any] = send("GET", job_url, parse=json_object)
        if job.get("status") in FINISHED:
            return job
        if time.monotonic() - started > polling.timeout_seconds:
            break
    raise MedplumError(
        f"async job {_job_id(job_url)} not finished after {polling.timeout_seconds:.0f} s "
        f"(status {job.get('status')}); "
        "its entries stay pending in the manifest and the next run sends them again"
    )


def _results(response: httpx.Response, expected: int) -> list[EntryResponse]:
    body = json_object(response)
    if body.get("resourceType") == "Binary":
        # Asked for FHIR JSON, a server may answer the Binary resource itself: its data is the bundle.
        if not body.get("data"):
            raise MedplumResponseError("results Binary has no inline data")
        body = json.loads(base64.b64decode(body["data"]))
    return batch_response_entries(body, expected)


def _output_parameter(job: dict[str, Any], name: str) -> dict[str, Any] | None:
    parameters: list[dict[str, Any]] = (job.get("output") or {}).get("parameter", [])
    for parameter in parameters:
        if parameter.get("name") == name:
            return parameter
    return None


def _job_id(job_url: str) -> str:
    parts = job_url.rstrip("/").split("/")
    return parts[-2] if parts[-1] == "status" and len(parts) >= 2 else parts[-1]
