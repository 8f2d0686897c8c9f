"""A small synchronous Medplum client for migrations: one keep-alive connection pool per run,
cached client-credentials token, bounded retries with jitter, batch bundles whose transient entry
failures (429 at any depth, 409, 5xx) are resent alone, and requests paced to the FHIR quota.

No Dagster import: an application can reuse it for dual writes.
"""

import json
import logging
import random
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cache, partial
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import urlencode

import httpx

from migration_assets.medplum.asyncbundle import AsyncPolling, submit_async
from migration_assets.medplum.auth import ClientCredentialsToken
from migration_assets.medplum.errors import MedplumError, MedplumResponseError
from migration_assets.medplum.ratelimit import POINTS_PER_WRITE, parse_rate_limit, seconds_until_reset
from migration_assets.medplum.responses import (
    EntryResponse,
    batch_response_entries,
    display_url,
    json_object,
    short_body,
)
from migration_assets.medplum.target import Target, project_of

log = logging.getLogger(__name__)
T = TypeVar("T")

# Entry statuses worth resending: quota (429), serialization conflicts between concurrent
# transactions (409, measured on a real server) and server-side failures.
TRANSIENT_ENTRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
# Waits for the quota's reset end this much after it: Medplum's reset time is rounded.
QUOTA_RESET_MARGIN_SECONDS = 0.05
# A search whose query is longer goes as `POST <type>/_search` with the query as a form body: a lookup of
# 1,000 identifiers (one search, 20 quota points, where GETs of 100 each take ten) makes a query of about
# 70 KB, over what a server takes in a request line (Node.js: 16 KB of headers), and so does Medplum's
# `next` link of such a search.
LONGEST_GET_QUERY = 4_000


class ClientObserver(Protocol):
    """Told what every MedplumClient of the process does, from the clients' own threads (the soak's
    running totals): each increment of a client's request statistics, and each batch answer."""

    def counted(self, increments: Mapping[str, int]) -> None: ...

    def answered(self, entries: Sequence[EntryResponse]) -> None: ...


_observers: list[ClientObserver] = []


@contextmanager
def observed_by(observer: ClientObserver) -> Iterator[None]:
    """`observer` hears of every client's statistics and batch answers while the block runs."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    # No request, resends of its entries included, goes on longer than this (entries refused by the
    # FHIR quota excepted: they have their own budget below).
    max_total_seconds: float = 900.0
    # At most this long, in all, waiting for the FHIR quota to resend the entries of one batch that it
    # refused; past it they stay refused (429) and the loader leaves their units pending ("quota").
    max_quota_wait_seconds: float = 600.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter, so concurrent loaders do not retry in step."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    entries_resent: int = 0
    rate_limited: int = 0
    # FHIR reads and searches answered (1 and 20 quota points on a hosted Medplum; a bundle's writes are
    # costed by whoever builds it, loader.quota_cost).
    reads: int = 0
    searches: int = 0
    # Time spent waiting on the FHIR quota: pacing, and waits before resending refused entries.
    quota_wait_seconds: float = 0.0


class MedplumClient:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout_seconds: float = 120.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        async_polling: AsyncPolling | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.fhir_base = self.base_url + "fhir/R4/"
        self.retry = retry or RetryPolicy()
        self.async_polling = async_polling or AsyncPolling()
        self.stats = RequestStats()
        self._stats_lock = threading.Lock()
        self._pace_lock = threading.Lock()
        self._http = httpx.Client(
            verify=_tls_context(),
            timeout=httpx.Timeout(timeout_seconds, connect=10.0),
            limits=httpx.Limits(max_keepalive_connections=16, max_connections=32),
            transport=transport,
            headers={"Accept": "application/fhir+json"},
        )
        self._token = ClientCredentialsToken(self._http, self.base_url + "oauth2/token", client_id, client_secret)
        self.last_rate_limit: str | None = None
        self._quota_seen = 0
        self._last_answer_at = time.monotonic()
        self._target: Target | None = None
        self._transaction_bundles: bool | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def target(self) -> Target:
        """The server and the project this client's credential acts in: from the token response, else
        from `GET /auth/me`; a server that names neither is told apart by its base URL alone."""
        if self._target is None:
            self._fetch_token()
            project = self._token.project_id
            if project is None:
                me = self._send("GET", self.base_url + "auth/me", parse=_json_or_none_if_missing)
                project = project_of(me)
            self._target = Target(self.base_url, project or "")
        return self._target

    def _fetch_token(self) -> None:
        """A token, retried as any request is (the token endpoint can be throttled or unreachable)."""
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                self._token.bearer()
                return
            except (httpx.TransportError, MedplumResponseError) as exc:
                if attempt == self.retry.max_attempts:
                    raise MedplumError(
                        f"no token from {display_url(self.base_url)}oauth2/token after {attempt} attempts: {exc}"
                    ) from exc
                time.sleep(self.retry.backoff(attempt))

    # -- for uploads that stream their body (medplum/binary.py) ---------------------------------

    @property
    def http(self) -> httpx.Client:
        return self._http

    def bearer(self) -> str:
        """The current access token (fetched or renewed when needed)."""
        self._fetch_token()
        return self._token.bearer()

    def invalidate_token(self, token: str) -> None:
        self._token.invalidate(token)

    # -- plain requests -------------------------------------------------------------------------

    def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self._send("GET", path, params=params, parse=json_object)

    def read(self, reference: str) -> dict[str, Any] | None:
        """`Patient/<id>` or None when it does not exist."""
        return self._send("GET", reference, parse=_json_or_none_if_missing)

    def create_binary(self, chunks: Callable[[], Iterator[bytes]], content_type: str) -> dict[str, Any]:
        """POST the bytes `chunks()` yields as a Binary of `content_type`, streamed (asked again from their
        start on a retry); the Binary Medplum created. Paced, retried and waited for on the FHIR quota like
        every write."""
        self.pace(cost=POINTS_PER_WRITE)
        return self._send("POST", "Binary", parse=json_object, content=chunks, headers={"Content-Type": content_type})

    def search(self, resource_type: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        """Every matching resource, following the bundle's `next` links. The next page is requested
        while the caller works through this one, so waiting for pages and reading them overlap (a
        census spends about as long on each)."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-page") as pages:
            page: dict[str, Any] | None = self._search_page(resource_type, urlencode(params))
            while page is not None:
                next_url = next((link["url"] for link in page.get("link", []) if link.get("relation") == "next"), None)
                upcoming = pages.submit(self._search_page, *next_url.split("?", 1)) if next_url else None
                for entry in page.get("entry", []):
                    if entry.get("search", {}).get("mode", "match") == "match" and "resource" in entry:
                        yield entry["resource"]
                page = upcoming.result() if upcoming else None

    def _search_page(self, path: str, query: str = "") -> dict[str, Any]:
        """One page of a search of `path` (a resource type or a `next` link's URL before its query)."""
        if len(query) <= LONGEST_GET_QUERY:
            return self.get_json(f"{path}?{query}" if query else path)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        return self._send("POST", f"{path}/_search", content=query.encode(), headers=form, parse=json_object)

    def count(self, resource_type: str, params: dict[str, str]) -> tuple[int, datetime | None]:
        """How many resources match (`_summary=count`), and a time by the server's clock no later than
        the moment it started counting: its `Date` header (whole seconds, rounded down) less a second
        and the request's own duration. None when the server sent no date."""
        started = time.monotonic()
        total, answered = self._send(
            "GET", resource_type, params={**params, "_summary": "count"}, parse=_total_and_date
        )
        if answered is None:
            return total, None
        return total, answered - timedelta(seconds=1 + time.monotonic() - started)

    def post_bundle(self, bundle: dict[str, Any]) -> list[EntryResponse]:
        """POST a batch or transaction; one parsed response per entry, in the order sent."""
        expected = len(bundle.get("entry", []))
        body = json.dumps(bundle).encode()
        return _answered(self._send("POST", "", content=body, parse=partial(_bundle_entries, expected=expected)))

    def transaction_bundles(self) -> bool | None:
        """Whether the project writes transactions atomically (its `transaction-bundles` feature), which
        a client credential cannot read from the Project (403). Asked by a transaction of one read of a
        resource that cannot exist: atomic, the whole transaction fails (404); processed like a batch,
        it answers a transaction-response whose one entry is 404. One read point; nothing written.
        None when the answer is neither."""
        if self._transaction_bundles is None:
            probe = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "GET", "url": f"Patient/{uuid.uuid4()}"}}],
            }
            self._transaction_bundles = self._send(
                "POST", "", content=json.dumps(probe).encode(), parse=_atomic_transactions
            )
        return self._transaction_bundles

    # -- batches --------------------------------------------------------------------------------

    def submit_batch(self, entries: Sequence[str], *, respond_async: bool = False) -> list[EntryResponse]:
        """Send `entries` (each a bundle entry as JSON text, so large loads never build Python dicts)
        as one batch bundle and resend exactly the entries that were refused.

        `respond_async`: send it as an async job (`Prefer: respond-async`, see asyncbundle.py), which
        hosted Medplum does not charge to the FHIR quota; the entries are handled the same way.

        An entry refused by the FHIR quota (429 itself, or in any inner entry of its transaction, whole
        inner transaction resent) is never a failure: it is resent after the quota's own wait, for as
        long as `retry.max_quota_wait_seconds` allows in all; past that it keeps its 429 and the caller
        leaves it pending. Other transient failures (409, 5xx) are resent `retry.max_attempts` times.
        """
        results: list[EntryResponse | None] = [None] * len(entries)
        entries = list(entries)
        pending = list(range(len(entries)))
        started = time.monotonic()
        quota_waited = 0.0
        attempt = 1
        while True:
            body = (
                '{"resourceType":"Bundle","type":"batch","entry":[' + ",".join(entries[i] for i in pending) + "]}"
            ).encode()
            if respond_async:
                responses = submit_async(self, body, len(pending), self.async_polling, self._send)
            else:
                responses = self._send("POST", "", content=body, parse=partial(_bundle_entries, expected=len(pending)))
            _answered(responses)
            refused: list[int] = []
            transient: list[int] = []
            for index, response in zip(pending, responses, strict=True):
                results[index] = response
                if response.refused_by_quota:
                    refused.append(index)
                    entries[index] = _written_entries_by_id(entries[index], response)
                elif response.status in TRANSIENT_ENTRY_STATUSES:
                    transient.append(index)
            quota_delay = self._quota_delay([r for r in responses if r.refused_by_quota], attempt) if refused else 0.0
            if refused and quota_waited + quota_delay > self.retry.max_quota_wait_seconds:
                log.warning(
                    "%d batch entries still refused by the FHIR quota after %.0fs of waiting: left pending",
                    len(refused),
                    quota_waited,
                )
                refused = []
            if transient and (
                attempt >= self.retry.max_attempts
                or time.monotonic() - started + self.retry.backoff(attempt) > self.retry.max_total_seconds
            ):
                transient = []
            if not refused and not transient:
                break
            delay = quota_delay if refused else self.retry.backoff(attempt)
            if transient:
                attempt += 1
            self._count(entries_resent=len(refused) + len(transient), rate_limited=int(bool(refused)))
            log.info("resending %d of %d batch entries in %.1fs", len(refused) + len(transient), len(entries), delay)
            time.sleep(delay)
            if refused:
                quota_waited += delay
                self._waited_on_quota(delay)
                # The header is from before the wait; the next answer brings the new window's.
                self.last_rate_limit = None
            pending = sorted(refused + transient)
        return [result for result in results if result is not None]

    def _quota_delay(self, refused: Sequence[EntryResponse], attempt: int) -> float:
        """How long to wait before resending entries the quota refused: what Medplum's throttled outcome
        says (`_msBeforeNext`), else the `RateLimit` header's reset, else a backoff; plus a small margin
        so the resend arrives after the reset and not just before it."""
        said = [wait for wait in (response.quota_wait_seconds() for response in refused) if wait is not None]
        wait = max(said) if said else seconds_until_reset(self.last_rate_limit, self.retry.backoff(attempt))
        return wait + QUOTA_RESET_MARGIN_SECONDS

    def quota_allows(self, cost: int) -> bool:
        """True when the last `RateLimit` header leaves `cost` points of the FHIR quota, or as many as
        were ever seen left (a request larger than the whole quota cannot wait its way in: the server
        refuses its tail with 429 and those entries are resent)."""
        limit = parse_rate_limit(self.last_rate_limit).get("fhirInteractions")
        if limit is None:
            return True
        self._quota_seen = max(self._quota_seen, limit.remaining)
        return limit.remaining >= min(cost, self._quota_seen)

    def pace(self, cost: int) -> None:
        """Before a request of about `cost` quota points: spend the FHIR quota evenly over its window
        instead of running into its wall (quota_wait says how long). A server that charges nothing (the
        header never goes down) is never paced."""
        with self._pace_lock:
            wait = self.quota_wait(cost)
            if wait <= 0:
                return
            if not self.quota_allows(cost):
                log.info("FHIR quota nearly spent; waiting %.1fs for its reset", wait)
                # The header is stale after the wait; the next answer brings the new remaining quota.
                self.last_rate_limit = None
            time.sleep(wait)
            self._waited_on_quota(wait)

    def quota_wait(self, cost: int) -> float:
        """How long a request of about `cost` quota points should wait now (0: not at all). Once the
        `RateLimit` header shows the quota being charged, each request waits until its share of the window
        has passed since the last answer (`cost` points of the `r` left take `cost * t / r` of the `t`
        seconds left); when fewer than `cost` are left, until the reset."""
        limit = parse_rate_limit(self.last_rate_limit).get("fhirInteractions")
        if limit is None:
            return 0.0
        if not self.quota_allows(cost):
            return limit.reset_seconds + QUOTA_RESET_MARGIN_SECONDS
        if limit.remaining < self._quota_seen:
            share = min(cost, self._quota_seen) * limit.reset_seconds / max(limit.remaining, 1)
            return max(0.0, min(share, limit.reset_seconds) - (time.monotonic() - self._last_answer_at))
        return 0.0

    def _waited_on_quota(self, seconds: float) -> None:
        with self._stats_lock:
            self.stats.quota_wait_seconds += seconds

    def remaining_quota(self) -> dict[str, int]:
        """What the last response's `RateLimit` header said is left, by limit name."""
        return {name: limit.remaining for name, limit in parse_rate_limit(self.last_rate_limit).items()}

    # -- the retry loop -------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        parse: Callable[[httpx.Response], T],
        content: bytes | Callable[[], Iterator[bytes]] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> T:
        """One request, retried (a lost connection, a 5xx, a 401 with a new token, an answer `parse`
        cannot read) and waited for on a 429, as the retry policy allows. A streamed body (`content` a
        function giving chunks) is sent again from its start on each attempt; JSON unless `headers` say
        another Content-Type."""
        url = path if path.startswith("http") else self.fhir_base + path
        started = time.monotonic()
        problem = ""
        quota_waited = 0.0
        attempt = 0
        while attempt < self.retry.max_attempts:
            attempt += 1
            self._count(requests=1)
            try:
                # The token request is retried like any other: a fetch happens on the first request,
                # after a 401 and after a server restart (which forgets every token).
                token = self._token.bearer()
                request_headers = {"Authorization": f"Bearer {token}"}
                if content is not None:
                    request_headers["Content-Type"] = "application/fhir+json"
                request_headers.update(headers or {})
                body = content() if callable(content) else content
                response = self._http.request(method, url, content=body, params=params, headers=request_headers)
            except httpx.TransportError as exc:
                problem, delay = f"{type(exc).__name__}: {exc}", self.retry.backoff(attempt)
            except MedplumResponseError as exc:  # from the token endpoint
                problem, delay = str(exc), self.retry.backoff(attempt)
            else:
                self.last_rate_limit = response.headers.get("ratelimit", self.last_rate_limit)
                self._last_answer_at = time.monotonic()
                if response.status_code == 401:
                    self._token.invalidate(token)
                    problem, delay = "401: token refused", 0.0
                elif response.status_code == 429:
                    # The quota refused the whole request: a wait, not a failed attempt, within the
                    # quota's own budget.
                    self._count(rate_limited=1)
                    delay = self._quota_delay([_throttled(response)], attempt)
                    if quota_waited + delay <= self.retry.max_quota_wait_seconds:
                        log.info("%s %s refused by the FHIR quota; again in %.1fs", method, display_url(url), delay)
                        time.sleep(delay)
                        quota_waited += delay
                        self._waited_on_quota(delay)
                        self.last_rate_limit = None
                        attempt -= 1
                        continue
                    problem = f"429: still refused by the FHIR quota after {quota_waited:.0f}s of waiting"
                    break
                elif response.status_code >= 500:
                    problem, delay = f"{response.status_code}: {short_body(response)}", self.retry.backoff(attempt)
                elif response.status_code >= 400 and response.status_code != 404:
                    raise MedplumError(
                        f"{method} {display_url(url)} answered {response.status_code}: {short_body(response)}"
                    )
                else:
                    if url.startswith(self.fhir_base):
                        self._count(**_read_or_search(method, url.removeprefix(self.fhir_base), params))
                    try:
                        return parse(response)
                    except MedplumResponseError as exc:
                        problem, delay = str(exc), self.retry.backoff(attempt)
            if attempt == self.retry.max_attempts or time.monotonic() - started + delay > self.retry.max_total_seconds:
                break
            self._count(retries=1)
            log.warning("%s %s failed (%s); retry %d in %.1fs", method, display_url(url), problem, attempt, delay)
            time.sleep(delay)
        raise MedplumError(f"{method} {display_url(url)} gave up after {attempt} attempts: {problem}")

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)
        for observer in _observers:
            observer.counted(increments)


def _read_or_search(method: str, path: str, params: dict[str, str] | None) -> dict[str, int]:
    """A FHIR request as Medplum's quota counts its reading: `GET Type/<id>` a read, `GET Type?...` (and a next
    page) and `POST Type/_search` a search; nothing for the other POSTs (their entries are counted)."""
    if method == "POST":
        return {"searches": 1} if path.endswith("/_search") else {}
    if method != "GET":
        return {}
    if params or "?" in path or "/" not in path:
        return {"searches": 1}
    return {"reads": 1}


@cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: building one (loading the CA certificates) took 20 ms, paid by
    every client, and every step of a run opens one."""
    return httpx.create_ssl_context()


def _total_and_date(response: httpx.Response) -> tuple[int, datetime | None]:
    total = json_object(response).get("total")
    if not isinstance(total, int):
        raise MedplumError(f"a _summary=count search answered without a total: {short_body(response)}")
    date = response.headers.get("date")
    return total, parsedate_to_datetime(date) if date else None


def _written_entries_by_id(entry: str, response: EntryResponse) -> str:
    """A transaction entry to send again after the quota refused part of it: the inner entries it did
    write (a project without transaction-bundles writes a transaction like a batch) become updates by
    the id Medplum gave them, so that resending the whole transaction (its urn:uuid links need it
    whole) never creates them twice, whatever their request was (a plain POST included)."""
    written = [
        (number, inner) for number, inner in enumerate(response.inner_responses()) if inner.ok and inner.resource_id
    ]
    if not written:
        return entry
    parsed = json.loads(entry)
    inner_entries = parsed["resource"]["entry"]
    for number, inner in written:
        resource = inner_entries[number]["resource"]
        resource["id"] = inner.resource_id
        inner_entries[number]["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{inner.resource_id}"}
    return json.dumps(parsed)


def _throttled(response: httpx.Response) -> EntryResponse:
    """A 429 answer as an entry response, so its OperationOutcome's `_msBeforeNext` can be read."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return EntryResponse(429, outcome=body if isinstance(body, dict) else None)


def _atomic_transactions(response: httpx.Response) -> bool | None:
    if response.status_code == 404:
        return True
    body = json_object(response)
    return False if body.get("type") == "transaction-response" else None


def _json_or_none_if_missing(response: httpx.Response) -> dict[str, Any] | None:
    return None if response.status_code in (404, 410) else json_object(response)


def _bundle_entries(response: httpx.Response, expected: int) -> list[EntryResponse]:
    return batch_response_entries(json_object(response), expected)


def _answered(entries: list[EntryResponse]) -> list[EntryResponse]:
    for observer in _observers:
        observer.answered(entries)
    return entries
