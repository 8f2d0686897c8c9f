"""A fault-injecting HTTP proxy for the tests: it listens on 127.0.0.1, forwards to an upstream
server (the local Medplum server) and follows a programmable fault plan.

    with FaultProxy(server.base_url) as proxy:
        proxy.plan(Fault("status", status=503, count=2, method="POST", path="/fhir/R4/"))
        client = MedplumClient(proxy.base_url, ...)

A request is matched against the planned faults in order; the first fault that matches it and has
`count` left is applied (after letting `skip` matching requests through untouched). Unmatched
requests are forwarded as they are. A fault with `body_contains` matches only requests whose body holds
those bytes (one patient's identifier: the batches of the one shard that holds it). Every request is
logged (`proxy.log`) with the fault it got.

Fault kinds (`forward` says whether the upstream server gets the request before the fault strikes):
- `reset`: the TCP connection is reset (RST). forward=False: mid-request, after the headers and half
  the body were read. forward=True: after the server processed the request, before any answer.
- `status`: answer `status` with `headers` and `body` (an OperationOutcome by default).
- `slow`: forward, wait `delay` seconds, then answer (the client has usually given up by then).
- `truncate`: forward, send the headers with the full Content-Length and half the body, close.
- `cut_json`: forward, answer 200 with the first half of the body (a Content-Length that matches).
- `non_json`: answer 200 with an HTML page.
- `short_bundle`: forward, drop the last `drop` entries of the answered Bundle.
- `rewrite`: forward, answer `rewrite(json_body)` instead of the body (and `headers` over the upstream's).
- `call`: run `action()` (kill something, restart something), then forward.

`refuse()` / `accept()` close and reopen the listening socket on the same port (connections
refused meanwhile; open keep-alive connections are cut); `refuse_for(seconds)` reopens by itself.
When the upstream cannot be reached the proxy answers 502, as a gateway in front of Medplum does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import httpx

KINDS = frozenset({"reset", "status", "slow", "truncate", "cut_json", "non_json", "short_bundle", "rewrite", "call"})
# Faults that need the upstream's answer to build theirs.
_NEEDS_UPSTREAM = frozenset({"slow", "truncate", "cut_json", "short_bundle", "rewrite", "call"})
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)


def outcome(text: str, code: str = "exception") -> bytes:
    return json.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "details": {"text": text}}]}
    ).encode()


@dataclass
class Fault:
    kind: str
    count: int = 1
    method: str | None = None  # None: any method
    path: str = "/fhir/R4"  # prefix of the request path (query excluded)
    skip: int = 0  # matching requests let through before this fault starts striking
    forward: bool = False  # for reset and status: the upstream gets (and processes) the request first
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0
    drop: int = 1
    rewrite: Callable[[Any], Any] | None = None
    action: Callable[[], None] | None = None
    body_contains: bytes | None = None  # None: any body

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {sorted(KINDS)}")

    def matches(self, method: str, path: str, body: bytes | None) -> bool:
        return (
            (self.method is None or self.method == method)
            and path.startswith(self.path)
            and (self.body_contains is None or (body is not None and self.body_contains in body))
        )


@dataclass(frozen=True)
class Logged:
    at: float  # time.monotonic()
    method: str
    path: str
    fault: str | None
    status: int | None  # what the client was answered (None: no answer)


class FaultProxy:
    def __init__(self, upstream: str, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._connections: set[socket.socket] = set()
        self.log: list[Logged] = []
        self._http = httpx.Client(base_url=self.upstream, trust_env=False, timeout=120.0)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.accept()

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.refuse()
        self._http.close()

    def accept(self) -> None:
        """(Re)open the listening socket, on the same port as before."""
        with self._lock:
            if self._server is not None:
                return
            server = _Server(("127.0.0.1", self.port), _Handler)
            server.proxy = self
            self.port = server.server_address[1]
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fault-proxy-{self.port}",
                daemon=True,
            )
            self._thread.start()

    def refuse(self) -> None:
        """Close the listening socket (new connections are refused) and cut every open connection."""
        with self._lock:
            server, self._server = self._server, None
            connections = list(self._connections)
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def refuse_for(self, seconds: float) -> threading.Timer:
        self.refuse()
        timer = threading.Timer(seconds, self.accept)
        timer.daemon = True
        timer.start()
        return timer

    # -- the plan ------------------------------------------------------------------------------

    def plan(self, *faults: Fault) -> FaultProxy:
        with self._lock:
            self._faults.extend(faults)
        return self

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """Fault strikes planned but not yet used."""
        with self._lock:
            return sum(fault.count for fault in self._faults)

    def requests(self, method: str | None = None, path: str = "/", fault: str | None | bool = True) -> list[Logged]:
        """Logged requests by method and path prefix; `fault`: True any, a kind, or None for clean ones."""
        with self._lock:
            return [
                entry
                for entry in self.log
                if (method is None or entry.method == method)
                and entry.path.startswith(path)
                and (fault is True or entry.fault == fault)
            ]

    def inspects_bodies(self) -> bool:
        """Whether a planned fault looks into request bodies (read whole before a fault is chosen)."""
        with self._lock:
            return any(fault.body_contains is not None for fault in self._faults)

    def _next_fault(self, method: str, path: str, body: bytes | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and fault.matches(method, path, body):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.count -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, fault: Fault | None, status: int | None) -> None:
        with self._lock:
            self.log.append(Logged(time.monotonic(), method, path, fault.kind if fault else None, status))

    def _track(self, connection: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(connection)

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> httpx.Response:
        kept = [(name, value) for name, value in headers if name.lower() not in _HOP_BY_HOP]
        try:
            return self._http.request(method, target, headers=kept, content=body)
        except httpx.TransportError as exc:
            return httpx.Response(
                502,
                content=outcome(f"upstream unreachable: {type(exc).__name__}"),
                headers={"Content-Type": "application/fhir+json"},
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Broken pipes and resets are what this proxy is for; stay quiet about them.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, False)

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        proxy = self.server.proxy
        method, path = self.command, self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        # Read before choosing a fault only when a fault looks into bodies: a reset mid-request needs
        # the body unread.
        body: bytes | None = (self.rfile.read(length) if length else b"") if proxy.inspects_bodies() else None
        fault = proxy._next_fault(method, path, body)
        if fault is not None and fault.kind == "reset" and not fault.forward:
            if body is None:
                self.rfile.read(length // 2)
            proxy._record(method, path, fault, None)
            return self._reset()
        if body is None:
            body = self.rfile.read(length) if length else b""
        if fault is not None and fault.kind == "call" and fault.action is not None:
            fault.action()
        upstream: httpx.Response | None = None
        if fault is None or fault.forward or fault.kind in _NEEDS_UPSTREAM:
            upstream = proxy._forward(method, self.path, list(self.headers.items()), body)
        if fault is None or fault.kind == "call":
            assert upstream is not None
            proxy._record(method, path, fault, upstream.status_code)
            return self._answer(upstream.status_code, _kept_headers(upstream), upstream.content)
        assert fault is not None
        if fault.kind == "reset":
            proxy._record(method, path, fault, None)
            return self._reset()
        if fault.kind == "status":
            answer = fault.body if fault.body is not None else outcome(f"injected {fault.status}")
            proxy._record(method, path, fault, fault.status)
            return self._answer(fault.status, {"Content-Type": "application/fhir+json", **fault.headers}, answer)
        if fault.kind == "non_json":
            proxy._record(method, path, fault, 200)
            return self._answer(200, {"Content-Type": "text/html"}, b"<html><body>Bad gateway</body></html>")
        assert upstream is not None
        content = upstream.content
        if fault.kind == "slow":
            time.sleep(fault.delay)
            proxy._record(method, path, fault, upstream.status_code)
            return self._answer(upstream.status_code, _kept_headers(upstream), content)
        if fault.kind == "truncate":
            proxy._record(method, path, fault, upstream.status_code)
            return self._answer(
                upstream.status_code, _kept_headers(upstream), content, send=content[: len(content) // 2], close=True
            )
        if fault.kind == "cut_json":
            proxy._record(method, path, fault, 200)
            return self._answer(200, _kept_headers(upstream), content[: len(content) // 2])
        document = json.loads(content)
        if fault.kind == "short_bundle":
            document["entry"] = document.get("entry", [])[: -fault.drop or None]
        elif fault.kind == "rewrite" and fault.rewrite is not None:
            document = fault.rewrite(document)
        proxy._record(method, path, fault, upstream.status_code)
        return self._answer(
            upstream.status_code, {**_kept_headers(upstream), **fault.headers}, json.dumps(document).encode()
        )

    def _answer(
        self, status: int, headers: dict[str, str], body: bytes, send: bytes | None = None, close: bool = False
    ) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body if send is None else send)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        if close:
            # A clean close (FIN) after a partial body: the client sees the body end early.
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed peer or middlebox does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _kept_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower() not in _HOP_BY_HOP}
