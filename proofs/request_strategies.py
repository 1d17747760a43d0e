"""Hypothesis strategies for requests in the field model (semantics/fields.py), aimed at one policy.

Differential checks (interpreter vs Z3 meaning, DAG vs interpreter, DAG vs its Z3 translation) only
find something when requests reach a policy's corners (its route prefixes, header values, domains,
CIDRs) and the edges where a stage must PUNT or the codec answers first ('%', '..', '//', '#', case
variants, repeated headers, odd methods, no Host or two). `field_requests(policy)` draws from the
constants in the IR (`constants(policy)`) mixed with random pieces, inside the field model's
alphabets: every draw renders to bytes the codec model parses back to the same fields.

`raw_requests(policy)` adds the byte-level damage request smuggling is made of (bare LF or CR,
obs-fold, whitespace before a colon, NUL, CL+TE, a repeated Content-Length, a pipelined second request,
HTTP/1.0, absolute form, truncation), which takes requests out of the field model: each stage must
then punt or agree with the codec.

Used by tests/semantics/test_symbolic_vs_interpreter.py, tests/synth/test_dag.py, tests/bpf (the
kernel harness) and `l7fp fuzz` (l7fp/fuzz.py, driven with a seed and --max-examples).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields as dc_fields, replace

from hypothesis import strategies as st

from ..semantics import ir
from ..semantics.fields import CONTENT_LENGTH_VALUE, METHOD_CHARS, TARGET_RANGE, VALUE_RANGES, FieldRequest
from ..semantics.regex import Alt, Cat, Chars, Group, Regex, Repeat

QUERY_ALPHABET = "".join(map(chr, range(TARGET_RANGE[0], TARGET_RANGE[1] + 1)))
PATH_ALPHABET = QUERY_ALPHABET.replace("?", "")  # the path part ends at the first '?'
VALUE_ALPHABET = "".join(chr(c) for lo, hi in VALUE_RANGES for c in range(lo, hi + 1))
METHODS = ("GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
ODD_METHODS = ("get", "FOO", "CONNECT", "TRACE", "M-SEARCH")
PATH_PIECES = ("/", "/x", "x", "1", "%", "%2f", "%2F", "%5c", "%41", "..", "/..", "/./", "/.", "//", "#", "#f",
               ";", "\\", "~", "*", "A", ":@")
VALUE_PIECES = (" ", "-admin", "1", "\t\xe9", "0", "")
HOST_PIECES = ("localhost", "example.com", "a.b.c", "[::1]", "")
EXTRA_HEADERS = ("user-agent", "accept", "x-other", "content-length")
NEVER = frozenset({"transfer-encoding"})  # its value changes the framing: outside the field model


@dataclass
class Constants:
    """What a policy tests, by the field it tests (str, or a Regex to draw a matching string from)."""

    paths: list = field(default_factory=lambda: ["/"])
    hosts: list = field(default_factory=list)  # domains, '*' replaced
    methods: list = field(default_factory=list)
    strings: list = field(default_factory=list)  # every string the policy compares with
    headers: dict = field(default_factory=dict)  # header name -> values
    params: dict = field(default_factory=dict)  # query parameter name -> values
    cidrs: list = field(default_factory=list)  # IPv4 networks


def constants(policy: ir.Policy) -> Constants:
    c = Constants()

    def add(bucket: list, item):
        if item not in bucket:
            bucket.append(item)

    def visit(node, bucket: list | None):
        if isinstance(node, ir.StringMatch):
            for target in (bucket, c.strings):
                if target is not None:
                    add(target, node.regex if node.kind == "regex" else node.value)
            return
        if isinstance(node, ir.HeaderMatch):
            bucket = {":path": c.paths, ":authority": c.hosts, ":method": c.methods}.get(node.name)
            bucket = c.headers.setdefault(node.name, []) if bucket is None else bucket
            for n in node.range or ():
                for v in (n - 1, n, n + 1):
                    add(bucket, str(v))
        elif isinstance(node, ir.QueryParamMatch):
            bucket = c.params.setdefault(node.name, [])
        elif isinstance(node, ir.RouteMatch):
            add(c.paths, node.regex if node.kind == "safe_regex" else node.value)
            bucket = None
        elif isinstance(node, ir.MatchUrlPath):
            bucket = c.paths
        elif isinstance(node, ir.VirtualHost):
            for domain in node.domains:
                for letter in ("a", "", "x.y"):
                    add(c.hosts, domain.replace("*", letter))
        elif isinstance(node, ir.Cidr) and ":" not in node.address:
            add(c.cidrs, ipaddress.ip_network(f"{node.address}/{node.prefix_len}", strict=False))
        elif isinstance(node, ir.MatchIp) and node.kind == "remote_ip":
            c.headers.setdefault("x-forwarded-for", [])
        elif isinstance(node, ir.FaultAbortFilter) and node.header_abort:
            c.headers.setdefault("x-envoy-fault-abort-request", []).extend(("503", "200", "99", "abc"))
            c.headers.setdefault("x-envoy-fault-abort-request-percentage", []).append("100")
        if hasattr(node, "__dataclass_fields__"):
            for f in dc_fields(node):
                visit(getattr(node, f.name), bucket)
        elif isinstance(node, tuple):
            for item in node:
                visit(item, bucket)

    visit(policy.filters, None)
    visit(policy.routes, None)
    return replace(c, headers={k: v for k, v in c.headers.items() if k not in NEVER})


# ---- drawing pieces -----------------------------------------------------------------------------
def _regex_sample(draw, node) -> str:
    """A string the RE2 AST (semantics/regex.py) matches, preferring printable ASCII."""
    if isinstance(node, Chars):
        inside = lambda c: any(lo <= c <= hi for lo, hi in node.ranges) != node.negated
        return chr(draw(st.sampled_from([c for c in range(0x20, 0x7F) if inside(c)] or [node.ranges[0][0]])))
    if isinstance(node, Cat):
        return "".join(_regex_sample(draw, i) for i in node.items)
    if isinstance(node, Alt):
        return _regex_sample(draw, draw(st.sampled_from(node.items)))
    if isinstance(node, Group):
        return _regex_sample(draw, node.item)
    if isinstance(node, Repeat):
        n = draw(st.integers(node.min, node.min + 3 if node.max is None else min(node.max, node.min + 3)))
        return "".join(_regex_sample(draw, node.item) for _ in range(n))
    return ""  # anchors


def _text(draw, item) -> str:  # a constant, or a string its Regex matches
    return _regex_sample(draw, item.ast) if isinstance(item, Regex) else item


def _in(text: str, alphabet: str) -> str:
    """`text` inside the alphabet: code points above 0xff as their UTF-8 bytes, others dropped."""
    if any(ord(ch) > 0xFF for ch in text):
        text = text.encode("utf-8").decode("latin-1")
    return "".join(ch for ch in text if ch in alphabet)


def _piece(draw, pool: list, alphabet: str, extras=()) -> str:
    """Mostly a policy constant (as is, or case-changed, or cut), else an edge piece or random text.
    Drawn by index, so examples shrink toward the policy's own constants."""
    kind = draw(st.integers(0, 9))
    if pool and kind < 6:
        item = draw(st.sampled_from(pool))
    elif extras and kind < 9:
        item = draw(st.sampled_from(extras))
    else:
        item = draw(st.text(alphabet, max_size=6))
    text = _text(draw, item)
    text = (text.upper, text.lower, text.swapcase, lambda: text)[min(draw(st.integers(0, 15)), 3)]()
    if text and draw(st.integers(0, 7)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = draw(st.sampled_from((text[:cut], text[cut:])))
    return _in(text, alphabet)


def _value(draw, pool: list, extras=VALUE_PIECES) -> str:
    count = draw(st.sampled_from((1, 1, 1, 2)))
    return "".join(_piece(draw, pool, VALUE_ALPHABET, extras) for _ in range(count)).strip(" \t")


def _ip(draw, c: Constants) -> str:
    """127.0.0.1, any IPv4 address, or one inside / just outside one of the policy's networks."""
    kind = draw(st.integers(0, 3)) if c.cidrs else draw(st.integers(0, 1))
    if kind < 2:
        return "127.0.0.1" if kind == 0 else draw(st.ip_addresses(v=4).map(str))
    net = draw(st.sampled_from(c.cidrs))
    inside = int(net.network_address) + draw(st.integers(0, net.num_addresses - 1))
    return str(ipaddress.ip_address(inside if kind == 2 or not net.prefixlen else
                                    inside ^ (1 << (32 - net.prefixlen))))


@st.composite
def _request(draw, c: Constants, listener_ip: str) -> FieldRequest:
    kind = draw(st.integers(0 if c.methods else 4, 9))  # the policy's, common, odd, random
    method = draw(st.sampled_from(c.methods) if kind < 4 else st.sampled_from(METHODS) if kind < 8 else
                  st.sampled_from(ODD_METHODS) if kind < 9 else st.text(METHOD_CHARS, min_size=1, max_size=5))
    method = _in(_text(draw, method), METHOD_CHARS) or "GET"
    path = _piece(draw, [p for p in c.paths if isinstance(p, Regex) or p.startswith("/")], PATH_ALPHABET)
    for _ in range(draw(st.integers(0, 2))):
        path += _piece(draw, c.paths + c.strings, PATH_ALPHABET, PATH_PIECES)
    path = path if path.startswith("/") else "/" + path
    query = None
    if draw(st.booleans()):
        params = [f"{_in(name, QUERY_ALPHABET)}={_piece(draw, values, QUERY_ALPHABET)}"
                  for name, values in sorted(c.params.items()) if draw(st.booleans())]
        params += [_piece(draw, c.strings, QUERY_ALPHABET, ("a=1", "", "&", "=", "#"))
                   for _ in range(draw(st.integers(0, 2)))]
        query = "&".join(draw(st.permutations(params)))
    hosts = [_value(draw, c.hosts, HOST_PIECES) + draw(st.sampled_from(("", "", "", ":80", ":8080")))
             for _ in range(draw(st.sampled_from((1,) * 7 + (0, 2))))]
    headers = [("host", h.strip(" \t")) for h in hosts]
    if draw(st.integers(0, 3)) == 0:
        headers.append((draw(st.sampled_from(EXTRA_HEADERS)), "0"))
    for name, pool in sorted(c.headers.items()):
        pool = pool + [_ip(draw, c)] if name == "x-forwarded-for" else pool
        count = draw(st.sampled_from((0, 1, 1, 1, 2)))  # 2: a repeated header the policy reads
        headers += [(name, _value(draw, pool or c.strings)) for _ in range(count)]
    lengths = [i for i, (name, _) in enumerate(headers) if name == "content-length"]
    for n, i in enumerate(lengths):  # Content-Length frames the body: one value of 1-4 digits
        value = headers[i][1]
        headers[i] = ("x-length", value) if n else \
            ("content-length", value if CONTENT_LENGTH_VALUE.fullmatch(value) else "0")
    dest = listener_ip if listener_ip not in ("0.0.0.0", "") and ":" not in listener_ip else _ip(draw, c)
    return FieldRequest(method, path, query, tuple(headers), _ip(draw, c), dest)


def field_requests(policy: ir.Policy) -> st.SearchStrategy[FieldRequest]:
    """Requests in the field model, biased toward `policy`'s own constants."""
    return _request(constants(policy), policy.listener[0])


# Byte-level damage, each one a request-smuggling class or a shape only Envoy's codec decides.
DAMAGE = (
    ("bare LF", lambda r: r.replace(b"\r\n", b"\n", 1)),
    ("obs-fold", lambda r: r.replace(b"\r\nhost:", b"\r\n host:", 1)),
    ("space before colon", lambda r: r.replace(b"host:", b"host :", 1)),
    ("NUL in a value", lambda r: r.replace(b"host: ", b"host: \x00", 1)),
    ("CL+TE", lambda r: r.replace(b"\r\n\r\n", b"\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n", 1)),
    ("two Content-Length", lambda r: r.replace(b"\r\n\r\n", b"\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n", 1)),
    ("pipelined", lambda r: r + b"GET /admin HTTP/1.1\r\nhost: x\r\n\r\n"),
    ("HTTP/1.0", lambda r: r.replace(b" HTTP/1.1", b" HTTP/1.0", 1)),
    ("absolute form", lambda r: r.replace(b" /", b" http://evil/", 1)),
    ("truncated", lambda r: r[:-1]),
    ("connection: close", lambda r: r.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)),
    ("two spaces", lambda r: r.replace(b" /", b"  /", 1)),
    ("bare CR", lambda r: r.replace(b"\r\n", b"\r", 1)),
)


@dataclass(frozen=True)
class RawRequest:
    """Request bytes with the connection's addresses, and the DAMAGE applied to them ("" for none)."""

    raw: bytes
    source_ip: str
    destination_ip: str
    damage: str = ""


@st.composite
def _raw_request(draw, policy: ir.Policy, damaged_share: float) -> RawRequest:
    fields = draw(field_requests(policy))
    if draw(st.floats(0, 1, exclude_max=True)) >= damaged_share:
        return RawRequest(fields.render(), fields.source_ip, fields.destination_ip)
    name, damage = draw(st.sampled_from(DAMAGE))
    return RawRequest(damage(fields.render()), fields.source_ip, fields.destination_ip, name)


def raw_requests(policy: ir.Policy, damaged_share: float = 0.25) -> st.SearchStrategy[RawRequest]:
    """Rendered field requests, about `damaged_share` of them with one DAMAGE applied."""
    return _raw_request(policy, damaged_share)
