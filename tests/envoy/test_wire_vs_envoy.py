"""semantics/wire.py against the real Envoy 1.40.0 binary, byte for byte.

Local replies: every reply the fast path may send (RBAC deny, direct_response with and without body,
no route, redirects, fault abort; GET and HEAD; connection kept or closed) must equal
`local_reply(...)` exactly, with the date taken from Envoy's own `date` header; whether Envoy keeps
the connection open is checked by sending a second request on it. Forwarding: the upstream and client
bytes Envoy produces with the default and with the neutral configuration (wire.NEUTRAL_CONFIG).
"""
from __future__ import annotations

import re
import socket
import threading
import time
from email.utils import parsedate_to_datetime

import pytest

from l7fp.proofs import envoy_oracle
from l7fp.proofs.envoy_oracle import EnvoyOracle, free_port
from l7fp.semantics import wire
from l7fp.semantics.interpreter import FAULT_ABORT_BODY, RBAC_DENIED_BODY
from l7fp.semantics.wire import (closes_connection,
                                 direct_response_location, forwarded_request, forwarded_response_head,
                                 http_date, local_reply)

pytestmark = pytest.mark.envoy

_TIMEOUT = 5.0
_FOLLOW_UP = b"GET /s200 HTTP/1.1\r\nHost: h\r\n\r\n"
_BACKEND_REPLY = b"HTTP/1.1 200 Fine\r\nX-A: 1\r\nContent-Length: 2\r\nX-B: 2\r\n\r\nok"


# ---- a backend that records the exact bytes it receives ------------------------------------------
class RawBackend(envoy_oracle.EchoBackend):
    """Records each request's bytes (head and content-length body) and answers _BACKEND_REPLY."""

    received: list[bytes] = []

    def _handle(self, conn: socket.socket):
        conn.settimeout(_TIMEOUT)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                size = int(length.group(1)) if length else 0
                while len(rest) < size:
                    rest += conn.recv(65536)
                RawBackend.received.append(head + b"\r\n\r\n" + rest[:size])
                buffer = rest[size:]
                conn.sendall(_BACKEND_REPLY)
        except OSError:
            return
        finally:
            conn.close()


# ---- configs ------------------------------------------------------------------------------------
def _bootstrap(routes, filters=(), hcm=None, router=None) -> dict:
    typed = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                      ".HttpConnectionManager",
             "stat_prefix": "ingress",
             "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
                 "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", **(router or {})}}],
             "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
             **(hcm or {})}
    return {"static_resources": {
        "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": typed}]}]}],
        "clusters": [{"name": "app", "connect_timeout": "1s"}]}}


RBAC_DENY = {"name": "envoy.filters.http.rbac", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    "rules": {"action": "DENY", "policies": {"deny": {
        "permissions": [{"url_path": {"path": {"prefix": "/deny"}}}], "principals": [{"any": True}]}}}}}
FAULT = {"name": "envoy.filters.http.fault", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "headers": [{"name": "x-fault", "present_match": True}],
    "abort": {"http_status": 503, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}}
STATUSES = range(200, 600)
LOCAL_ROUTES = (
    [{"match": {"path": f"/s{s}"}, "direct_response": {"status": s, "body": {"inline_string": "b"}}} for s in STATUSES]
    + [{"match": {"path": f"/n{s}"}, "direct_response": {"status": s}} for s in STATUSES]
    + [{"match": {"path": "/teapot"}, "direct_response": {"status": 418, "body": {"inline_string": "short and stout\n"}}},
       {"match": {"path": "/empty"}, "direct_response": {"status": 200, "body": {"inline_string": ""}}},
       {"match": {"prefix": "/r301"}, "redirect": {"path_redirect": "/landing"}},
       {"match": {"prefix": "/r302"}, "redirect": {"path_redirect": "/landing", "response_code": "FOUND"}},
       {"match": {"prefix": "/r303"}, "redirect": {"prefix_rewrite": "/other", "response_code": "SEE_OTHER"}},
       {"match": {"prefix": "/r307"}, "redirect": {"host_redirect": "o.example", "strip_query": True,
                                                   "response_code": "TEMPORARY_REDIRECT"}},
       {"match": {"prefix": "/r308"}, "redirect": {"https_redirect": True, "response_code": "PERMANENT_REDIRECT"}},
       {"match": {"prefix": "/deny"}, "route": {"cluster": "app"}},
       {"match": {"prefix": "/fwd"}, "route": {"cluster": "app"}}])


@pytest.fixture(scope="module")
def raw_backends():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envoy_oracle, "EchoBackend", RawBackend)
        yield RawBackend.received


@pytest.fixture(scope="module")
def local_envoy(raw_backends):
    with EnvoyOracle(_bootstrap(LOCAL_ROUTES, filters=[RBAC_DENY, FAULT])) as oracle:
        yield oracle


@pytest.fixture(scope="module")
def default_envoy(raw_backends):
    with EnvoyOracle(_bootstrap([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}])) as oracle:
        yield oracle


@pytest.fixture(scope="module")
def neutral_envoy(raw_backends):
    config = _bootstrap([{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                        hcm=wire.NEUTRAL_CONFIG["http_connection_manager"], router=wire.NEUTRAL_CONFIG["router"])
    with EnvoyOracle(config) as oracle:
        yield oracle


# ---- client -------------------------------------------------------------------------------------
def _read_response(sock: socket.socket, buffer: bytes, head_request: bool) -> tuple[bytes, bytes]:
    """One response's exact bytes (framed by content-length; none for HEAD/204/304), and the rest."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {buffer!r}"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = re.search(rb"(?m)^content-length: (\d+)\r?$", head)
    size = 0 if head_request or not length else int(length.group(1))
    while len(rest) < size:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return head + b"\r\n\r\n" + rest[:size], rest[size:]


def _date_of(response: bytes) -> str:
    return re.search(rb"\r\ndate: ([^\r]*)\r\n", response).group(1).decode()


def _exchange(address, raw: bytes) -> tuple[bytes, bool]:
    """Envoy's response to `raw` on a fresh connection, and whether Envoy kept the connection open
    (it answers a second request on it) or closed it (EOF)."""
    with socket.create_connection(address, timeout=_TIMEOUT) as sock:
        sock.sendall(raw)
        response, rest = _read_response(sock, b"", raw.startswith(b"HEAD "))
        assert not rest, f"unexpected bytes after the response: {rest!r}"
        try:
            sock.sendall(_FOLLOW_UP)
        except OSError:
            return response, False
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return response, False
        if not data:
            return response, False
        follow_up, _ = _read_response(sock, data, False)
        assert follow_up.startswith(b"HTTP/1.1 200 OK\r\n")
        return response, True


# ---- local replies ------------------------------------------------------------------------------
def _req(method: str, target: str, *extra: str, body: bytes = b"") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: h\r\n" + "".join(f"{e}\r\n" for e in extra)
            + "\r\n").encode() + body


# name: (request bytes, status, body, location, connection_close header, request body)
LOCAL_CASES = {
    "rbac-get": (_req("GET", "/deny"), 403, RBAC_DENIED_BODY, None, False, False),
    "rbac-head": (_req("HEAD", "/deny/x?y"), 403, RBAC_DENIED_BODY, None, False, False),
    "rbac-connection-close": (_req("GET", "/deny", "Connection: close"), 403, RBAC_DENIED_BODY, None, True, False),
    "rbac-connection-keepalive-Close": (_req("GET", "/deny", "connection: keep-alive, Close"), 403,
                                        RBAC_DENIED_BODY, None, True, False),
    "rbac-head-connection-close": (_req("HEAD", "/deny", "Connection: close"), 403, RBAC_DENIED_BODY, None, True, False),
    "rbac-post-body": (_req("POST", "/deny", "Content-Length: 5", body=b"hello"), 403, RBAC_DENIED_BODY, None,
                       False, True),
    "rbac-post-chunked-empty": (_req("POST", "/deny", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 403,
                                RBAC_DENIED_BODY, None, False, True),
    "rbac-post-content-length-0": (_req("POST", "/deny", "Content-Length: 0"), 403, RBAC_DENIED_BODY, None,
                                   False, False),
    "rbac-keepalive": (_req("GET", "/deny", "Connection: keep-alive"), 403, RBAC_DENIED_BODY, None, False, False),
    "direct-418-body": (_req("GET", "/teapot"), 418, "short and stout\n", None, False, False),
    "direct-418-body-head": (_req("HEAD", "/teapot"), 418, "short and stout\n", None, False, False),
    "direct-200-empty-inline": (_req("GET", "/empty"), 200, "", None, False, False),
    "direct-200-empty-inline-head": (_req("HEAD", "/empty"), 200, "", None, False, False),
    "direct-410-nobody": (_req("GET", "/n410"), 410, "", None, False, False),
    "direct-410-nobody-head": (_req("HEAD", "/n410"), 410, "", None, False, False),
    "direct-410-nobody-close": (_req("GET", "/n410", "Connection: close"), 410, "", None, True, False),
    "direct-204-nobody": (_req("GET", "/n204"), 204, "", None, False, False),
    "direct-204-nobody-head": (_req("HEAD", "/n204"), 204, "", None, False, False),
    "direct-204-body": (_req("GET", "/s204"), 204, "b", None, False, False),
    "direct-304-nobody": (_req("GET", "/n304?a=b"), 304, "", "http://h/n304?a=b", False, False),
    "direct-304-body-head": (_req("HEAD", "/s304"), 304, "b", "http://h/s304", False, False),
    "direct-201-body": (_req("GET", "/s201"), 201, "b", "http://h/s201", False, False),
    "direct-302-body-absolute-form": (b"GET http://x.y:81/s302?q HTTP/1.1\r\nHost: h\r\n\r\n", 302, "b",
                                      "http://x.y:81/s302?q", False, False),
    "direct-400-nobody": (_req("GET", "/n400"), 400, "", None, False, False),
    "direct-400-body-post": (_req("POST", "/s400", "Content-Length: 1", body=b"x"), 400, "b", None, False, True),
    "no-route": (_req("GET", "/nothing/here"), 404, "", None, False, False),
    "no-route-head": (_req("HEAD", "/nothing"), 404, "", None, False, False),
    "no-route-close": (_req("GET", "/nothing", "Connection: close"), 404, "", None, True, False),
    "redirect-301": (_req("GET", "/r301/z?k"), 301, "", "http://h/landing?k", False, False),
    "redirect-301-head": (_req("HEAD", "/r301"), 301, "", "http://h/landing", False, False),
    "redirect-302": (_req("GET", "/r302?a=1"), 302, "", "http://h/landing?a=1", False, False),
    "redirect-303-prefix": (_req("GET", "/r303/p"), 303, "", "http://h/other/p", False, False),
    "redirect-307-host": (_req("GET", "/r307?q"), 307, "", "http://o.example/r307", False, False),
    "redirect-308-https-head-close": (_req("HEAD", "/r308/x", "Connection: close"), 308, "", "https://h/r308/x",
                                      True, False),
    "fault-abort": (_req("GET", "/fwd", "x-fault: 1"), 503, FAULT_ABORT_BODY, None, False, False),
    "fault-abort-head": (_req("HEAD", "/fwd", "x-fault: 1"), 503, FAULT_ABORT_BODY, None, False, False),
    "fault-abort-post-body": (_req("POST", "/fwd", "x-fault: 1", "Content-Length: 2", body=b"hi"), 503,
                              FAULT_ABORT_BODY, None, False, True),
}


@pytest.mark.parametrize("name", sorted(LOCAL_CASES))
def test_local_reply_bytes(local_envoy, name):
    raw, status, body, location, connection_close, request_body = LOCAL_CASES[name]
    response, kept_open = _exchange(local_envoy.address, raw)
    close = closes_connection(status, connection_close=connection_close, request_body=request_body)
    expected = local_reply(status, body, head=raw.startswith(b"HEAD "), location=location,
                           date=_date_of(response), close=close)
    assert response == expected
    assert kept_open is not close


def test_every_status_code(local_envoy):
    """direct_response with a body and without, GET, for every status 200..599: reason phrase,
    location (201, 3xx), framing, connection: close (400)."""
    address = local_envoy.address
    sock = None
    try:
        for status in STATUSES:
            for kind, body in (("s", "b"), ("n", "")):
                if sock is None:
                    sock = socket.create_connection(address, timeout=_TIMEOUT)
                sock.sendall(f"GET /{kind}{status} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                response, rest = _read_response(sock, b"", False)
                assert not rest
                expected = local_reply(
                    status, body, head=False, date=_date_of(response),
                    location=direct_response_location(status, "http", "h", f"/{kind}{status}"),
                    close=closes_connection(status, connection_close=False, request_body=False))
                assert response == expected, status
                if b"connection: close" in response:
                    sock.close()
                    sock = None
    finally:
        if sock is not None:
            sock.close()


def test_http_date_matches_envoy(local_envoy):
    response, _ = _exchange(local_envoy.address, _req("GET", "/deny"))
    date = _date_of(response)
    parsed = parsedate_to_datetime(date).timestamp()
    assert http_date(parsed) == date
    assert abs(parsed - time.time()) < 5


# ---- forwarding ---------------------------------------------------------------------------------
_UUID4 = rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_lock = threading.Lock()


def _forward(oracle, raw: bytes) -> tuple[bytes, bytes, bool]:
    """(bytes the upstream received, bytes the client received, connection kept open)."""
    with _lock:
        RawBackend.received.clear()
        response, kept_open = _exchange(oracle.address, raw)
        assert len(RawBackend.received) >= 1
        return RawBackend.received[0], response, kept_open


def test_default_forward_decorations(default_envoy):
    upstream, response, kept_open = _forward(default_envoy, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert re.fullmatch(rb"GET /x HTTP/1\.1\r\nhost: h\r\nx-forwarded-proto: http\r\nx-request-id: " + _UUID4
                        + rb"\r\nx-envoy-expected-rq-timeout-ms: 15000\r\n\r\n", upstream), upstream
    date = _date_of(response).encode()
    assert re.fullmatch(rb"HTTP/1\.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\nx-b: 2\r\n"
                        rb"x-envoy-upstream-service-time: \d+\r\ndate: " + re.escape(date)
                        + rb"\r\nserver: envoy\r\n\r\nok", response), response
    assert kept_open


def test_default_keeps_client_request_id_and_proto(default_envoy):
    upstream, _, _ = _forward(default_envoy, b"GET /x HTTP/1.1\r\nX-Request-Id: abc\r\nHost: h\r\n"
                                             b"X-Forwarded-Proto: https\r\nX-Envoy-Expected-Rq-Timeout-Ms: 7\r\n\r\n")
    assert upstream == (b"GET /x HTTP/1.1\r\nhost: h\r\nx-request-id: abc\r\nx-forwarded-proto: https\r\n"
                        b"x-envoy-expected-rq-timeout-ms: 15000\r\n\r\n")


NEUTRAL_CASES = {
    "plain": ("GET", "/x", [("Host", "h")], b""),
    "order-and-case": ("GET", "/x?q=1", [("User-Agent", "UA"), ("Host", "h"), ("X-Mixed-Case", "A"),
                                         ("Accept", "*/*"), ("x-dup", "1"), ("X-Dup", "2")], b""),
    "hop-by-hop": ("GET", "/x", [("Host", "h"), ("Connection", "keep-alive, X-Foo"), ("X-Foo", "f"),
                                 ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                                 ("TE", "trailers"), ("X-Forwarded-Proto", "https"), ("X-Request-Id", "abc"),
                                 ("X-Envoy-Retry-On", "5xx"), ("X-Envoy-Expected-Rq-Timeout-Ms", "7"),
                                 ("X-Envoy-Foo", "1")], b""),
    "content-length-body": ("POST", "/x", [("Host", "h"), ("Content-Length", "5")], b"hello"),
}


@pytest.mark.parametrize("name", sorted(NEUTRAL_CASES))
def test_neutral_config_forward(neutral_envoy, name):
    method, target, headers, body = NEUTRAL_CASES[name]
    raw = (f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n").encode() + body
    upstream, response, kept_open = _forward(neutral_envoy, raw)
    assert upstream == forwarded_request(method, target, headers) + body
    # The upstream's reason phrase "Fine" is replaced, names lower-cased, no server, date appended.
    expected_head = forwarded_response_head(200, [("X-A", "1"), ("Content-Length", "2"), ("X-B", "2")],
                                            date=_date_of(response))
    assert response == expected_head + b"ok"
    assert kept_open


def test_neutral_config_connection_close(neutral_envoy):
    upstream, response, kept_open = _forward(neutral_envoy, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert upstream == b"GET /x HTTP/1.1\r\nhost: h\r\nx-forwarded-proto: http\r\n\r\n"
    assert response == forwarded_response_head(200, [("x-a", "1"), ("content-length", "2"), ("x-b", "2")],
                                               date=_date_of(response), close=True) + b"ok"
    assert not kept_open
