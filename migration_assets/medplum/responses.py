"""Reading Medplum's answers: bundle entry responses and OperationOutcomes.

HTTP success is not migration success: a batch answers 200 while its entries fail, so every entry's
own `response` is read.
"""

import json
from dataclasses import dataclass
from typing import Any

import httpx

from migration_assets.medplum.errors import MedplumError, MedplumResponseError


@dataclass(frozen=True)
class EntryResponse:
    status: int
    location: str | None = None
    outcome: dict[str, Any] | None = None
    # For an entry that was itself a transaction: the transaction-response Bundle.
    resource: dict[str, Any] | None = None
    resource_id: str | None = None
    version_id: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def diagnostics(self) -> str:
        return outcome_text(self.outcome) if self.outcome else ""

    def inner_responses(self) -> list["EntryResponse"]:
        """The entry responses of a nested transaction, in the order its entries were sent."""
        if not self.resource or self.resource.get("resourceType") != "Bundle":
            return []
        return [parse_entry_response(entry) for entry in self.resource.get("entry", [])]

    @property
    def refused_by_quota(self) -> bool:
        """429 here or in any entry of its nested transaction: Medplum answers a transaction it refused
        for the quota with 200, and only the inner entries say 429 (MEDPLUM_FACTS.md)."""
        return self.status == 429 or any(inner.refused_by_quota for inner in self.inner_responses())

    def quota_wait_seconds(self) -> float | None:
        """How long the quota said to wait (`_msBeforeNext` of a throttled outcome, at any depth), or
        None when no outcome says it."""
        waits = [_ms_before_next(self.outcome)] + [inner.quota_wait_seconds() for inner in self.inner_responses()]
        known = [wait for wait in waits if wait is not None]
        return max(known) if known else None


def _ms_before_next(outcome: dict[str, Any] | None) -> float | None:
    """Medplum puts its rate limiter's state, as JSON, in a throttled issue's diagnostics."""
    for issue in (outcome or {}).get("issue", []):
        if issue.get("code") != "throttled" or not str(issue.get("diagnostics", "")).startswith("{"):
            continue
        try:
            state = json.loads(issue["diagnostics"])
        except ValueError:
            continue
        wait = state.get("_msBeforeNext", state.get("msBeforeNext")) if isinstance(state, dict) else None
        if isinstance(wait, int | float) and wait >= 0:
            return float(wait) / 1000
    return None


def parse_status(status: str | int) -> int:
    """`"201 Created"` and `"201"` and `201` all give 201."""
    return int(str(status).strip().split(" ", 1)[0])


def parse_entry_response(entry: dict[str, Any]) -> EntryResponse:
    response = entry.get("response") or {}
    outcome = response.get("outcome")
    found = entry.get("resource")
    resource: dict[str, Any] = found if isinstance(found, dict) else {}
    if outcome is None and resource.get("resourceType") == "OperationOutcome":
        outcome = resource
    location = _relative_location(response.get("location"))
    # Medplum gives a location only on create; the written resource (with its id and version) is in
    # the entry either way.
    parts = (location or "").split("/")
    is_written = resource.get("resourceType") not in (None, "OperationOutcome", "Bundle")
    return EntryResponse(
        status=parse_status(response.get("status", "0")),
        location=location,
        outcome=outcome,
        resource=resource if resource.get("resourceType") == "Bundle" else None,
        resource_id=resource.get("id") if is_written else (parts[1] if len(parts) >= 2 else None),
        version_id=(resource.get("meta") or {}).get("versionId")
        if is_written
        else (parts[3] if len(parts) >= 4 and parts[2] == "_history" else None),
    )


def outcome_text(outcome: dict[str, Any]) -> str:
    """One line from an OperationOutcome: each issue's details text or diagnostics."""
    texts = []
    for issue in outcome.get("issue", []):
        text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or issue.get("code", "")
        expression = ",".join(issue.get("expression", []))
        texts.append(f"{text} ({expression})" if expression else text)
    return "; ".join(texts)


def _relative_location(location: str | None) -> str | None:
    """`https://host/fhir/R4/Patient/1/_history/2` and `Patient/1/_history/2` both give the latter."""
    if not location:
        return None
    marker = "/fhir/R4/"
    return location.split(marker, 1)[1] if marker in location else location.lstrip("/")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object. 404 is final; a body that is not a JSON object is worth asking again
    (a proxy's error page, a cut connection)."""
    if response.status_code == 404:
        raise MedplumError(f"{display_url(str(response.url))} answered 404: {short_body(response)}")
    try:
        body = response.json()
    except ValueError as exc:
        raise MedplumResponseError(f"answer is not JSON ({len(response.content)} bytes)") from exc
    if not isinstance(body, dict):
        raise MedplumResponseError("answer is not a JSON object")
    return body


def batch_response_entries(body: dict[str, Any], expected: int) -> list[EntryResponse]:
    """One parsed response per entry sent. A short batch-response would leave entries without an
    outcome: it is an error worth resending the whole bundle for (every write is conditional)."""
    entries = body.get("entry", [])
    if body.get("resourceType") != "Bundle" or len(entries) != expected:
        raise MedplumResponseError(f"bundle response has {len(entries)} entries for {expected} sent")
    return [parse_entry_response(entry) for entry in entries]


def short_body(response: httpx.Response) -> str:
    """An error answer in one line: its OperationOutcome's text, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return outcome_text(body)
    return response.text[:200]


def display_url(url: str) -> str:
    """A URL for messages: the query (which may hold identifiers) is kept, never credentials."""
    return url.split("://", 1)[-1].split("@", 1)[-1]
