"""The field model: a request as the policy sees it once Envoy's codec has parsed it.

A `FieldRequest` is method, request-target (path and optional query), the header values in order,
and the connection's IPv4 addresses. It is the common ground of three stages: the Z3 meaning
(symbolic.py) quantifies over exactly these fields, the match-action DAG (synth/) tests them, and the
kernel parser (bpf/) extracts them from the bytes. `render()` turns fields back into raw HTTP/1.1
bytes whose parse by the codec model (http1.py) gives the same fields, so every counterexample a
solver finds can be replayed byte for byte through the interpreter and through real Envoy.

The alphabets below are what Envoy's codec lets through (http1.py, measured): anything else in a
request is answered by the codec itself, before any policy runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .http1 import CodecReply, Unmodelled, parse_request
from .request import Request

# tchar (RFC 9110): what a method token may hold.
METHOD_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Request-target bytes the codec accepts: visible ASCII (0x21-0x7e); the path part never holds '?'.
TARGET_RANGE = (0x21, 0x7E)
# Header value bytes the codec accepts: HTAB, SP..~, and 0x80-0xff; leading/trailing SP/HTAB trimmed.
VALUE_RANGES = ((0x09, 0x09), (0x20, 0x7E), (0x80, 0xFF))
# Content-Length frames the body: a header the codec reads itself, so its values are kept parseable.
CONTENT_LENGTH_VALUE = re.compile(r"[0-9]{1,4}")


@dataclass(frozen=True)
class FieldRequest:
    method: str
    path: str  # request-target up to the first '?'
    query: str | None  # after the first '?', None when there is no '?'
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names, values as the codec trims them
    source_ip: str = "127.0.0.1"
    destination_ip: str = "127.0.0.1"

    @property
    def target(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def render(self) -> bytes:
        """HTTP/1.1 bytes with these fields (a body of Content-Length bytes when one is given)."""
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lengths = self.values("content-length")
        body = b"x" * int(lengths[0]) if lengths else b""
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def request(self, listener_port: int, source_port: int = 40000) -> Request:
        return Request(self.render(), source=(self.source_ip, source_port),
                       destination=(self.destination_ip, listener_port))


def from_request(request: Request, listener_ip: str = "127.0.0.1") -> FieldRequest | None:
    """The fields of the first request in `request.raw` as Envoy's codec parses them, or None when
    the request is outside the field model (codec reply, absolute-form or `*` target, IPv6, or a
    request the codec model does not pin down)."""
    try:
        parsed = parse_request(request.raw)
    except Unmodelled:
        return None
    if isinstance(parsed, CodecReply) or parsed.absolute_authority is not None or not parsed.target.startswith("/"):
        return None
    destination = request.destination[0] if request.destination else listener_ip
    if ":" in request.source[0] or ":" in destination:
        return None
    path, sep, query = parsed.target.partition("?")
    return FieldRequest(parsed.method, path, query if sep else None, parsed.headers,
                        request.source[0], destination)
