"""The kernel's bounds: what the in-kernel parser and decision code are sure about.

Used by compile.py (every bound becomes a test whose failure leads to a PUNT leaf, so "beyond the
bounds" is part of what the proof covers), by bpf/ (buffer sizes, loop limits) and by reports
(`l7fp verify` prints the bounds each proof holds under).

Two kinds of bound:
- field bounds, tested in the DAG: request-target and value lengths, the characters of the target,
  its path, the authority and of every header value the policy reads, the methods decided in kernel, and
  "at most one value" for every header the policy reads (Host included);
- parser bounds, enforced by the parser before the DAG runs (bpf/): the header-block window and the
  number of header lines. They are kept under the connection manager's own limits
  (max_request_headers_kb, max_headers_count), so a request within them never meets a codec 431.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..semantics.http1 import SIZE_MARGIN
from ..semantics.ir import HcmOptions


def _chars(text: str) -> frozenset[int]:
    return frozenset(ord(c) for c in text)


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Path bytes the kernel decides on: unreserved, sub-delims except ';', ':', '@', '/'. Left out, so
# they punt: '%' (escapes and normalisation), '\\', '#', ';', '?', and anything non-ASCII. With these
# characters, no "//" and no dot segments, Envoy's path normalisation leaves the path unchanged.
PATH_CHARS = _chars(_ALNUM + "-._~!$&'()*+,=:@/")
# Request-target bytes (so query bytes too): visible ASCII except '#' (Envoy answers 400 to a fragment).
TARGET_CHARS = frozenset(range(0x21, 0x7F)) - _chars("#")
AUTHORITY_CHARS = _chars(_ALNUM + "-._:[]")
# Values of headers the policy reads: printable ASCII and space (no HTAB, no bytes >= 0x80, so every
# value is valid UTF-8 for RE2).
VALUE_CHARS = frozenset(range(0x20, 0x7F))
KERNEL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@dataclass(frozen=True)
class KernelBounds:
    max_target: int = 256
    max_authority: int = 128
    max_header_value: int = 128
    methods: frozenset[str] = KERNEL_METHODS
    path_chars: frozenset[int] = PATH_CHARS
    target_chars: frozenset[int] = TARGET_CHARS
    authority_chars: frozenset[int] = AUTHORITY_CHARS
    value_chars: frozenset[int] = VALUE_CHARS
    # parser bounds (bpf/)
    window: int = 4096
    max_header_lines: int = 32

    @classmethod
    def for_connection_manager(cls, hcm: HcmOptions, **overrides) -> "KernelBounds":
        """Bounds kept strictly inside the connection manager's own header limits."""
        bounds = cls(**overrides)
        # Below the codec's limit by more than the margin the reference leaves unmodelled
        # (http1.SIZE_MARGIN), so a request within the window is always modelled.
        window = max(0, min(bounds.window, hcm.max_request_headers_kb * 1024 - SIZE_MARGIN - 1))
        lines = min(bounds.max_header_lines, hcm.max_headers_count - 1)
        return cls(**{**overrides, "window": window, "max_header_lines": lines})

    def describe(self) -> dict:
        """The bounds as printed next to a proof (character sets as ranges)."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, frozenset) and value and isinstance(next(iter(value)), int):
                value = _ranges_text(value)
            elif isinstance(value, frozenset):
                value = sorted(value)
            out[key] = value
        return out


def _ranges_text(chars: frozenset[int]) -> str:
    codes = sorted(chars)
    parts, start = [], codes[0]
    for prev, cur in zip(codes, codes[1:] + [None]):
        if cur != prev + 1 if cur is not None else True:
            parts.append(f"{start:#04x}" if start == prev else f"{start:#04x}-{prev:#04x}")
            start = cur
    return ",".join(parts)
