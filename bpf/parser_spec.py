"""The kernel parser's contract, written independently of its C: which bytes it must accept.

The in-kernel parser (bpf/c/http1_parser.h, table-driven) decides a request only when the bytes are
one request in this canonical shape; anything else must come out as one of its PUNT verdicts. This
predicate restates the shape with Python regexes so the test-run harness tests can check the C
against it (tests/bpf/test_harness.py): on accepted bytes the kernel's verdict must equal the DAG's,
on refused bytes it must be a parser punt. It is also the list docs/dataplane.md explains.
"""
from __future__ import annotations

import re

from .codegen import HOP_BY_HOP

_TCHAR = rb"!#$%&'*+\-.^`|~0-9A-Za-z_"
_REQUEST_LINE = re.compile(rb"[" + _TCHAR + rb"]+ (/[\x21-\x7e]*) HTTP/1\.1\r\n")
_HEADER_LINE = re.compile(rb"([" + _TCHAR + rb"]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*\r\n")


def accepted(raw: bytes, window: int, max_lines: int, underscores_in_names: bool = True) -> bool:
    """Does the kernel parser accept `raw` as exactly one request it can decide?"""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or end + 4 > window:
        return False
    head, body = raw[:end + 2], raw[end + 4:]
    line = _REQUEST_LINE.match(head)
    if not line:
        return False
    at, names, lengths = line.end(), [], []
    while at < len(head):
        header = _HEADER_LINE.match(head, at)
        if not header:
            return False
        name = header.group(1).lower()
        if b"_" in name and not underscores_in_names:
            return False
        names.append(name)
        if name == b"content-length":
            lengths.append(header.group(2))
        at = header.end()
    if len(names) > max_lines or b"transfer-encoding" in names:
        return False
    if any(name.decode() in HOP_BY_HOP for name in names):
        return False
    if len(lengths) > 1 or (lengths and not re.fullmatch(rb"[0-9]{1,6}", lengths[0])):
        return False
    return len(body) == (int(lengths[0]) if lengths else 0)
