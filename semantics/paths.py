"""Envoy's request path handling in the HTTP connection manager, in Envoy's order.

`normalize(path, hcm)` applies path_with_escaped_slashes_action, then normalize_path (RFC 3986
normalisation as Envoy's vendored chromium canonicaliser does it), then merge_slashes, to the path
part only (the query is never touched). It returns the new path, or a local reply (400 or a 307
redirect for UNESCAPE_AND_REDIRECT). Used by the interpreter; each rule is a measured fact in
docs/semantics.md ("Path handling, in Envoy's order"). Characters the canonicaliser would escape or reject in ways
not measured raise `Unmodelled`.

Also the path helpers every matcher shares: `strip_query` (what url_path, `path` and `safe_regex`
routes see) and `query_params` (what query_parameters matchers see).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .http1 import Unmodelled
from .ir import HcmOptions

_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]")
# Bytes that pass the codec and that the canonicaliser keeps unchanged (sub-delims, ':', '@', '/', '%').
_KEPT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]")
_ESCAPED_SLASH = re.compile(r"%(2[Ff]|5[Cc])")


@dataclass(frozen=True)
class PathReply:
    """A local reply from path handling: 400 (rejected) or 307 with a Location (redirect)."""

    status: int
    location: str | None
    reason: str


def split_query(path: str) -> tuple[str, str | None]:
    head, sep, query = path.partition("?")
    return head, (query if sep else None)


def strip_query(path: str) -> str:
    """Path without query and fragment (Http::PathUtil::removeQueryAndFragment)."""
    return re.split(r"[?#]", path, maxsplit=1)[0]


def query_params(path: str) -> list[tuple[str, str | None]]:
    """Query parameters in order, undecoded; a key without '=' has value None."""
    _, query = split_query(path.split("#", 1)[0])
    if not query:
        return []
    params = []
    for part in query.split("&"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        params.append((key, value if sep else None))
    return params


def _canonicalize(path: str) -> str:
    out = []
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "%":
            code = path[i + 1:i + 3]
            if len(code) < 2 or not re.fullmatch(r"[0-9A-Fa-f]{2}", code):
                raise Unmodelled("a '%' not followed by two hex digits under normalize_path")
            value = int(code, 16)
            if value == 0:
                raise _Reject()
            decoded = chr(value)
            if _UNRESERVED.fullmatch(decoded):
                out.append(decoded)
            else:
                out.append("%" + code)  # kept as written, case included (measured: %2f, %20)
            i += 3
            continue
        if ch == "\\":
            out.append("/")  # measured: /a\b -> /a/b
        elif _KEPT.fullmatch(ch):
            out.append(ch)
        else:
            raise Unmodelled(f"character {ch!r} in the path under normalize_path")
        i += 1
    return _remove_dot_segments("".join(out))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path; '..' above the root stays at the root (measured)."""
    segments = path.split("/")[1:]
    stack: list[str] = []
    for index, seg in enumerate(segments):
        last = index == len(segments) - 1
        if seg == ".":
            if last:
                stack.append("")
        elif seg == "..":
            if stack:
                stack.pop()
            if last:
                stack.append("")
        else:
            stack.append(seg)
    return "/" + "/".join(stack)


class _Reject(Exception):
    pass


def _merge_slashes(path: str) -> str:
    """Envoy's PathUtil::mergeSlashes: the non-empty segments joined with one '/', keeping a leading
    and a trailing '/'; so a path of slashes only becomes '//' (measured, docs/bugs/0006)."""
    if "//" not in path:
        return path
    prefix = "/" if path.startswith("/") else ""
    suffix = "/" if path.endswith("/") else ""
    return prefix + "/".join(segment for segment in path.split("/") if segment) + suffix


def normalize(path: str, hcm: HcmOptions) -> str | PathReply:
    """The :path the filters and the router see, or the local reply Envoy sends instead."""
    if "#" in path:
        return PathReply(400, None, "path_normalization_failed")  # measured: fragments are rejected
    head, query = split_query(path)
    redirect = False
    action = hcm.escaped_slashes_action
    if action != "KEEP_UNCHANGED" and _ESCAPED_SLASH.search(head):
        if action == "REJECT_REQUEST":
            return PathReply(400, None, "path_normalization_failed")
        head = _ESCAPED_SLASH.sub(lambda m: "/" if m.group(1).lower() == "2f" else "\\", head)
        redirect = action == "UNESCAPE_AND_REDIRECT"
    if hcm.normalize_path:
        try:
            head = _canonicalize(head)
        except _Reject:
            return PathReply(400, None, "path_normalization_failed")
    if hcm.merge_slashes:
        head = _merge_slashes(head)
    result = head if query is None else f"{head}?{query}"
    if redirect:
        return PathReply(307, result, "path_normalization_failed")
    return result
