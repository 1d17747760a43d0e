"""Model of Envoy 1.40's HTTP/1.1 server codec (BalsaParser) on raw request bytes.

Used by the reference interpreter: `parse_request` turns the bytes of one request into what the HTTP
connection manager sees (method, request-target, headers in order) or into the codec's own local
reply (400/426/431/501 with the status text as body). Every rule here was measured on the binary
(tests/envoy/ and docs/semantics.md, section "Codec"). Inputs whose handling is not pinned down by a
measurement raise `Unmodelled` instead of being guessed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Methods BalsaParser accepts in Envoy 1.40 (an unknown token such as FOO gets 400). Measured: GET,
# POST, PATCH, OPTIONS, CONNECT, FOO (400), lowercase (400); the rest is http-parser's method table,
# which Envoy keeps for compatibility (source/common/http/http1/balsa_parser.cc).
# M-SEARCH is in that table but gets 400 (measured by `l7fp fuzz`: docs/bugs/0005).
KNOWN_METHODS = frozenset("""DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND
PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE NOTIFY SUBSCRIBE
UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE""".split())
# The bytes Envoy's codec accepts in an authority: Host (repeated values joined with ','), or the URL
# authority of an absolute-form target. Measured on every byte 0x21-0x7e, tab and bytes >= 0x80
# (docs/bugs/0005): '"', '#', '/', '<', '>', '?', '\\', '^', '`', '{', '|', '}', a space or tab inside, and
# bytes >= 0x80 get the codec's 400.
AUTHORITY_BYTES = frozenset(range(0x21, 0x7F)) - frozenset(b'"#/<>?\\^`{|}')


def valid_authority(text: str) -> bool:
    """Whether the codec accepts `text` as an authority (AUTHORITY_BYTES)."""
    return all(ord(c) in AUTHORITY_BYTES for c in text)


def joined_host(values) -> str:
    """The :authority Envoy makes of the Host values: joined with ',', empty values skipped
    (measured, docs/bugs/0005: `Host: A` + `Host: ` gives `A`, `A`, ``, `B` gives `A,B`)."""
    return ",".join(v for v in values if v)
_KNOWN_METHOD_BYTES = frozenset(m.encode() for m in KNOWN_METHODS)

_STATUS_TEXT = {400: "Bad Request", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
                501: "Not Implemented"}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_BAD_VALUE_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET_BYTES = re.compile(rb"[\x00-\x20\x7f-\xff]")
_ABSOLUTE = re.compile(rb"(?i)(https?)://([^/?#]*)(.*)")
# CONNECT's authority-form: host:port (what it must be to get past the codec).
_CONNECT_AUTHORITY = re.compile(rb"[^/?#*:]+:[0-9]+")
# Near the header-size limit the exact accounting (request line, CRLFs) is not pinned down by a
# measurement; requests within this margin are reported as not modelled.
SIZE_MARGIN = 2048


class Unmodelled(Exception):
    """A request whose handling by Envoy the model does not pin down; never guessed."""


@dataclass(frozen=True)
class CodecReply:
    """A local reply sent by the codec itself (the connection is closed afterwards)."""

    status: int
    reason: str

    @property
    def body(self) -> str:
        return _STATUS_TEXT[self.status]


@dataclass(frozen=True)
class ParsedRequest:
    method: str
    target: str  # request-target as sent (latin-1 text, one char per byte)
    headers: tuple[tuple[str, str], ...]  # lower-case names, values with OWS trimmed, in order
    body: bytes
    absolute_authority: str | None = None  # set for absolute-form targets

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


def _split_lines(head: bytes) -> list[bytes]:
    # Balsa accepts bare LF as a line end (measured); a CR not followed by LF inside a value is dropped.
    return [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]


def parse_request(raw: bytes, max_headers_kb: int = 60, max_headers_count: int = 100) -> ParsedRequest | CodecReply:
    """The first request in `raw`, as Envoy's codec hands it to the connection manager."""
    end = _head_end(raw)
    if end is None:
        if len(raw) > max_headers_kb * 1024 + SIZE_MARGIN:
            return CodecReply(431, "http1.headers_too_large")
        raise Unmodelled("the header block is not terminated (incomplete request)")
    head, rest = raw[:end[0]], raw[end[1]:]
    size = len(raw[:end[1]])
    limit = max_headers_kb * 1024
    if size > limit + SIZE_MARGIN:
        return CodecReply(431, "http1.headers_too_large")
    if size > limit - SIZE_MARGIN:
        raise Unmodelled(f"header block of {size} bytes is within {SIZE_MARGIN} bytes of the {limit}-byte limit")
    lines = _split_lines(head)
    request_line, header_lines = lines[0], lines[1:]

    parts = request_line.split(b" ")
    parts = [p for p in parts if p != b""]  # several spaces between tokens are accepted (measured)
    if len(parts) == 2:
        return CodecReply(426, "low_version")  # HTTP/0.9 style request line (measured: 426)
    if len(parts) != 3:
        return CodecReply(400, "http1.codec_error")
    method, target, version = parts
    if method not in _KNOWN_METHOD_BYTES:
        return CodecReply(400, "http1.codec_error")
    vmatch = _VERSION.fullmatch(version)
    if not vmatch:
        return CodecReply(400, "http1.codec_error")
    # Not HTTP/1.1: a 426, but only once everything the codec checks before it has passed (measured,
    # docs/bugs/0005: target, header syntax, 431, CONNECT and framing errors come first; the Host
    # check after).
    low_version = (vmatch.group(1), vmatch.group(2)) != (b"1", b"1")
    if _BAD_TARGET_BYTES.search(target):
        return CodecReply(400, "http1.invalid_characters")
    absolute_authority = None
    if method == b"CONNECT":
        pass  # decided once the headers are parsed (below)
    elif target.startswith(b"/"):
        pass
    elif target == b"*":
        if method != b"OPTIONS":
            return CodecReply(400, "http1.invalid_url")
    else:
        absolute = _ABSOLUTE.fullmatch(target)
        if not absolute:
            return CodecReply(400, "http1.codec_error")
        absolute_authority = absolute.group(2).decode("latin-1")
        if not valid_authority(absolute_authority):
            return CodecReply(400, "http1.invalid_url")  # at the request line, before the 426
        target = absolute.group(3) or b"/"
        if not target.startswith((b"/", b"?")):
            raise Unmodelled("absolute-form target with an unusual path part")
        if target.startswith(b"?"):
            raise Unmodelled("absolute-form target with a query but no path")

    headers: list[tuple[str, str]] = []
    for line in header_lines:
        if line[:1] in (b" ", b"\t"):
            if not headers:
                return CodecReply(400, "http1.codec_error")
            # obs-fold: the continuation is appended with its leading whitespace (measured: "1 2")
            name, value = headers[-1]
            headers[-1] = (name, (value + line.decode("latin-1")).rstrip(" \t"))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            return CodecReply(400, "http1.codec_error")
        value = value.replace(b"\r", b"")  # a bare CR inside a value is dropped (measured)
        if _BAD_VALUE_BYTES.search(value):
            return CodecReply(400, "http1.invalid_characters")
        headers.append((name.decode("latin-1").lower(), value.decode("latin-1").strip(" \t")))
    if len(headers) > max_headers_count:
        return CodecReply(431, "http1.too_many_headers")
    lengths = [v for n, v in headers if n == "content-length"]
    if lengths and (len(lengths) != 1 or not re.fullmatch(r"[0-9]+", lengths[0])):
        # checked as the headers are read: before CONNECT's and the framing's own answers (measured)
        return CodecReply(400, "http1.codec_error")
    if method == b"CONNECT":
        # Measured (envoy 1.40.0, docs/bugs/0004): any Transfer-Encoding on a CONNECT is a 501;
        # otherwise a target that is not host:port (origin-form, '*', absolute-form, a host without
        # a port) is the codec's 400, before the Host checks; host:port goes on to the filters,
        # which is not modelled.
        if any(n == "transfer-encoding" for n, _ in headers):
            return CodecReply(501, "http1.invalid_transfer_encoding")
        if _CONNECT_AUTHORITY.fullmatch(target) is None:
            return CodecReply(400, "http1.codec_error")
        raise Unmodelled("CONNECT requests are not modelled")

    transfer = [v for n, v in headers if n == "transfer-encoding"]
    if transfer:
        if lengths:
            return CodecReply(400, "http1.content_length_and_chunked_not_allowed")
        if low_version and (len(transfer) != 1 or transfer[0].lower() != "chunked"):
            # measured: gzip, "gzip, chunked" and a repeated chunked (a single chunked gets the 426)
            return CodecReply(501, "http1.invalid_transfer_encoding")
        if len(transfer) != 1:
            raise Unmodelled("repeated Transfer-Encoding headers")
        if transfer[0].lower() != "chunked":
            if "chunked" in transfer[0].lower():
                return CodecReply(501, "http1.invalid_transfer_encoding")
            raise Unmodelled(f"Transfer-Encoding {transfer[0]!r}")
    if low_version:
        return CodecReply(426, "low_version")
    # Host, checked once the headers are complete: after the framing headers (a 501 wins) and the
    # 426, before any body arrives (measured). With an absolute-form target the URL's authority
    # (checked above) is used and Host is not looked at.
    if absolute_authority is None and not valid_authority(joined_host(v for n, v in headers if n == "host")):
        return CodecReply(400, "http1.invalid_authority")
    if transfer:
        body = _chunked_body(rest)
    elif lengths:
        length = int(lengths[0])
        if len(rest) < length:
            raise Unmodelled("the body is shorter than Content-Length (incomplete request)")
        body = rest[:length]
    else:
        body = b""
    return ParsedRequest(method.decode(), target.decode("latin-1"), tuple(headers), body, absolute_authority)


def _head_end(raw: bytes) -> tuple[int, int] | None:
    """Offsets of the end of the header block and the start of the body (CRLFCRLF or bare LFs)."""
    match = re.search(rb"\r?\n\r?\n", raw)
    if not match:
        return None
    return match.start(), match.end()


def _chunked_body(rest: bytes) -> bytes:
    body = b""
    while True:
        line_end = rest.find(b"\r\n")
        if line_end < 0:
            raise Unmodelled("incomplete chunked body")
        size_text = rest[:line_end].split(b";")[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]+", size_text):
            raise Unmodelled("chunk size that is not hexadecimal")
        size = int(size_text, 16)
        rest = rest[line_end + 2:]
        if size == 0:
            return body
        if len(rest) < size + 2:
            raise Unmodelled("incomplete chunked body")
        body += rest[:size]
        rest = rest[size + 2:]
