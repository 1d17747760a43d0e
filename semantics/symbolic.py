"""The reference semantics as Z3 terms: what Envoy does with a *symbolic* request under a Policy.

Used by proofs/ (the DAG refinement proof and `l7fp diff`); checked against the concrete interpreter
by tests/semantics/test_symbolic_vs_interpreter.py (the Z3 term evaluated on a concrete request
equals `interpret()`).

It follows interpreter.py function by function (codec, connection manager, filters in order, router)
so that the two can be read side by side, and it is built from the IR only, never from the DAG: the
proof compares two independent constructions.

Representation, and why:
- Strings are Z3 sequences over 8-bit characters (`encoding=ascii`: one character per request byte).
  Sequences give prefix/suffix/contains and RE2 regexes (through Z3's regex theory) directly; bounded
  byte vectors would need every regex unrolled over every length. Bounds live in the DAG instead.
- A header the policy reads is `count` (0, 1 or 2) plus its first two values. Envoy matches any value
  of a repeated header; the DAG punts on a second value, so two values are enough to tell a DAG that
  ignores repetition from one that punts (docs/proofs.md has the argument).
- Addresses are IPv4 32-bit vectors; the listener's port is a constant.
- Every matcher yields a `Tri`: its value and whether the interpreter would raise `Unmodelled` while
  evaluating it, with Python's short-circuit order kept. An outcome with `known` false is such a
  request, or one this encoding does not cover (listed in docs/proofs.md: path normalisation that
  changes the path, regex rewrites, non-default redirect ports, regex classes with some but not all
  non-ASCII characters, non-ASCII operands). Nothing unknown is ever claimed equal to anything.
"""
from __future__ import annotations

from dataclasses import dataclass, fields as dc_fields, replace
from typing import Iterable

import ctypes

import z3

from . import ir
from .fields import METHOD_CHARS, TARGET_RANGE, VALUE_RANGES, FieldRequest
from .http1 import AUTHORITY_BYTES, KNOWN_METHODS, SIZE_MARGIN, Unmodelled
from .interpreter import (DEFAULT_PORTS, FAULT_ABORT_BODY, RBAC_DENIED_BODY, domain_rank, redirect_authority,
                          rewritten_by_connection_manager)
from .regex import Alt, Cat, Chars, Group, Repeat

z3.set_param("encoding", "ascii")  # one Z3 character per byte (0..255)

MAX_VALUES = 2
_UNICODE_MAX = 0x10FFFF


class NotEncodable(Exception):
    """A policy construct this Z3 encoding does not cover; its outcomes are `unknown`."""


# ---- small Z3 helpers -------------------------------------------------------------------------
def sval(text: str) -> z3.SeqRef:
    """A string constant, one character per code point. z3.StringVal would read `\\u{41}` in
    request data as an escape."""
    codes = (ctypes.c_uint * len(text))(*(ord(c) for c in text))
    ctx = z3.main_ctx()
    return z3.SeqRef(z3.Z3_mk_u32string(ctx.ref(), len(text), codes), ctx)


def text_of(term) -> str:
    """The text of a string constant term (as_string() escapes, and is ambiguous)."""
    term = z3.simplify(term)
    ctx = term.ctx
    length = z3.Z3_get_string_length(ctx.ref(), term.as_ast())
    buffer = (ctypes.c_uint * length)()
    z3.Z3_get_string_contents(ctx.ref(), term.as_ast(), length, buffer)
    return "".join(map(chr, buffer))


def _bool(value) -> z3.BoolRef:
    return value if isinstance(value, z3.BoolRef) else z3.BoolVal(bool(value))


def _or(*items):
    items = [i for i in items if i is not False]
    if any(i is True for i in items):
        return True
    return False if not items else items[0] if len(items) == 1 else z3.Or(*[_bool(i) for i in items])


def _and(*items):
    items = [i for i in items if i is not True]
    if any(i is False for i in items):
        return False
    return True if not items else items[0] if len(items) == 1 else z3.And(*[_bool(i) for i in items])


def _not(item):
    return (not item) if isinstance(item, bool) else z3.Not(item)


def _if(cond, then, other):
    if cond is True:
        return then
    if cond is False:
        return other
    return z3.If(cond, _bool(then) if isinstance(then, bool) else then,
                 _bool(other) if isinstance(other, bool) else other)


def char_range(lo: int, hi: int) -> z3.ReRef:
    return z3.Range(chr(lo), chr(hi))


def ranges_regex(ranges: Iterable[tuple[int, int]]) -> z3.ReRef:
    """One character from the ranges, merged first: Z3's regex solver slows down badly on unions
    of many single characters."""
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    parts = [char_range(lo, hi) for lo, hi in merged]
    return parts[0] if len(parts) == 1 else z3.Union(*parts)


def charset_regex(codes: Iterable[int]) -> z3.ReRef:
    return ranges_regex((c, c) for c in codes)


def literal_regex(text: str, ignore_case: bool = False) -> z3.ReRef:
    """`text` as a regex; with ignore_case, ASCII letters match both cases (Envoy's absl::
    EqualsIgnoreCase family is ASCII-only)."""
    if not text:
        return z3.Re(sval(""))
    if not ignore_case:
        return z3.Re(sval(text))
    parts = []
    for ch in text:
        if ignore_case and ch.isascii() and ch.isalpha():
            parts.append(z3.Union(z3.Re(sval(ch.lower())), z3.Re(sval(ch.upper()))))
        else:
            parts.append(z3.Re(sval(ch)))
    return parts[0] if len(parts) == 1 else z3.Concat(*parts)


ANY_BYTE = char_range(0x00, 0xFF)
_CONT = char_range(0x80, 0xBF)
# One non-ASCII code point in UTF-8, surrogates and overlongs excluded (what Python's decoder accepts).
UTF8_MULTIBYTE = z3.Union(
    z3.Concat(char_range(0xC2, 0xDF), _CONT),
    z3.Concat(z3.Re(chr(0xE0)), char_range(0xA0, 0xBF), _CONT),
    z3.Concat(char_range(0xE1, 0xEC), _CONT, _CONT),
    z3.Concat(z3.Re(chr(0xED)), char_range(0x80, 0x9F), _CONT),
    z3.Concat(char_range(0xEE, 0xEF), _CONT, _CONT),
    z3.Concat(z3.Re(chr(0xF0)), char_range(0x90, 0xBF), _CONT, _CONT),
    z3.Concat(char_range(0xF1, 0xF3), _CONT, _CONT, _CONT),
    z3.Concat(z3.Re(chr(0xF4)), char_range(0x80, 0x8F), _CONT, _CONT))
VALID_UTF8 = z3.Star(z3.Union(char_range(0x00, 0x7F), UTF8_MULTIBYTE))


ANYTHING = z3.Star(ANY_BYTE)
NOTHING = z3.Empty(z3.ReSort(z3.StringSort()))
# The bytes of a request-target's path part: visible ASCII except '?'. Regexes about the path are
# built over this alphabet (`within=PATH_CODES`) so that "the path is in R" is the plain regex
# R ++ (empty | '?' ...) over the target: intersections there made Z3 time out.
PATH_CODES = frozenset(range(0x21, 0x7F)) - {0x3F}
QUERY_TAIL = z3.Union(z3.Re(sval("")), z3.Concat(z3.Re(sval("?")), ANYTHING))


def _any_of(within: frozenset[int] | None) -> z3.ReRef:
    return ANYTHING if within is None else z3.Star(charset_regex(within))


def shape_regex(kind: str, operand: str, ignore_case: bool = False,
                within: frozenset[int] | None = None) -> z3.ReRef:
    """The strings made of `within` bytes (any byte: None) that an exact / prefix / suffix /
    contains match on `operand` accepts."""
    if within is not None and not all(ord(c) in within or (ignore_case and c.isascii() and c.isalpha()
                                                           and ord(c.swapcase()) in within) for c in operand):
        return NOTHING
    lit, anything = literal_regex(operand, ignore_case), _any_of(within)
    return {"exact": lambda: lit, "prefix": lambda: z3.Concat(lit, anything),
            "suffix": lambda: z3.Concat(anything, lit),
            "contains": lambda: z3.Concat(anything, lit, anything)}[kind]()


def nullable(regex: z3.ReRef) -> bool:
    return z3.is_true(z3.simplify(z3.InRe(sval(""), regex)))


def _code_point_set(node: Chars) -> list[tuple[int, int]]:
    """The inclusive ranges of code points a Chars node matches, merged and sorted."""
    merged: list[list[int]] = []
    for lo, hi in sorted(node.ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if not node.negated:
        return [tuple(r) for r in merged]
    out, start = [], 0
    for lo, hi in merged:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _UNICODE_MAX:
        out.append((start, _UNICODE_MAX))
    return out


def _chars_regex(node: Chars, within: frozenset[int] | None) -> z3.ReRef:
    """One code point of the class, over UTF-8 bytes. Classes holding all non-ASCII code points or
    none are exact; others are not encoded (policies in the corpus never need them). With `within`
    (ASCII codes), only those bytes."""
    points = _code_point_set(node)
    if within is not None:
        codes = [c for lo, hi in points for c in range(lo, min(hi, 0x7F) + 1) if c in within]
        return charset_regex(codes) if codes else NOTHING
    ascii_part = [(lo, min(hi, 0x7F)) for lo, hi in points if lo <= 0x7F]
    non_ascii = sum(min(hi, _UNICODE_MAX) - max(lo, 0x80) + 1 for lo, hi in points if hi >= 0x80)
    if non_ascii and non_ascii != _UNICODE_MAX - 0x80 + 1:
        raise NotEncodable("a regex class with some but not all non-ASCII characters")
    parts = [ranges_regex(ascii_part)] if ascii_part else []
    if non_ascii:
        parts.append(UTF8_MULTIBYTE)
    if not parts:
        return NOTHING
    return parts[0] if len(parts) == 1 else z3.Union(*parts)


def regex_to_z3(node, within: frozenset[int] | None = None) -> z3.ReRef:
    """The lark-parsed RE2 AST (regex.py) as a Z3 regex over UTF-8 bytes (full match); with
    `within` (ASCII codes), the strings of those bytes it matches."""
    if isinstance(node, Chars):
        return _chars_regex(node, within)
    if isinstance(node, Cat):
        if not node.items:
            return z3.Re(sval(""))
        items = [regex_to_z3(i, within) for i in node.items]
        return items[0] if len(items) == 1 else z3.Concat(*items)
    if isinstance(node, Alt):
        items = [regex_to_z3(i, within) for i in node.items]
        return items[0] if len(items) == 1 else z3.Union(*items)
    if isinstance(node, Group):
        return regex_to_z3(node.item, within)
    if isinstance(node, Repeat):
        inner = regex_to_z3(node.item, within)
        if node.max is None:
            return z3.Concat(z3.Loop(inner, node.min, node.min), z3.Star(inner)) if node.min else z3.Star(inner)
        return z3.Loop(inner, node.min, node.max)
    raise TypeError(node)


# ---- the symbolic request ---------------------------------------------------------------------
@dataclass
class SymValues:
    """A header as the policy sees it: how many times it occurs (0..MAX_VALUES) and its values."""

    count: z3.ArithRef
    items: list

    def present(self, i: int):
        return self.count > i


class SymRequest:
    """The free variables of one request in the field model (fields.py).

    The request-target is one string; the path (up to the first '?') and the query are described by
    regular expressions over it rather than as separate strings. Z3's regex solver decides
    conjunctions of memberships of one string quickly; the same facts stated over a concatenation
    (path ++ "?" ++ query) with prefix/contains/length made even one-route proofs time out.
    """

    def __init__(self, header_names: Iterable[str], tag: str = "r"):
        self.tag = tag
        self.method = z3.String(f"{tag}.method")
        self.target = z3.String(f"{tag}.target")
        self.source_ip = z3.BitVec(f"{tag}.source_ip", 32)
        self.destination_ip = z3.BitVec(f"{tag}.destination_ip", 32)
        names = sorted(set(header_names) | {"host"})
        self.headers = {n: SymValues(z3.Int(f"{tag}.count[{n}]"),
                                     [z3.String(f"{tag}.header[{n}][{i}]") for i in range(MAX_VALUES)])
                        for n in names}
        # Headers the policy does not read matter only through the codec's limits: their number
        # of lines and their bytes (name, ': ', value, CRLF).
        self.other_lines = z3.Int(f"{tag}.other_lines")
        self.other_bytes = z3.Int(f"{tag}.other_bytes")

    # -- the path and the query, as facts about the target
    def on_path(self, regex: z3.ReRef):
        """The path part (up to the first '?') is in `regex`, a regex over PATH_CODES bytes."""
        return z3.InRe(self.target, z3.Concat(regex, QUERY_TAIL))

    @property
    def has_query(self):
        return z3.InRe(self.target, z3.Concat(_any_of(PATH_CODES), z3.Re(sval("?")), ANYTHING))

    def on_query(self, regex: z3.ReRef):
        """The query ('' when there is none) is in `regex`."""
        with_query = z3.Concat(_any_of(PATH_CODES), z3.Re(sval("?")), regex)
        return z3.InRe(self.target, z3.Union(with_query, _any_of(PATH_CODES)) if nullable(regex) else with_query)

    def param_present(self, name: str):
        """Some query parameter has key `name` (paths.query_params)."""
        if "&" in name or "=" in name:
            return False
        return self.on_query(z3.Concat(_PARTS, _key_part(name), _REST))

    def param_value_in(self, name: str, regex: z3.ReRef):
        """The first parameter with key `name` exists and its value ('' without '=') is in `regex`."""
        if "&" in name or "=" in name:
            return False
        key = literal_regex(name)
        other = z3.Star(z3.Concat(z3.Intersect(_PART, z3.Complement(_key_part(name))), z3.Re(sval("&"))))
        first = z3.Concat(key, z3.Re(sval("=")), z3.Intersect(regex, _PART))
        if nullable(regex):
            first = z3.Union(first, key)
        return self.on_query(z3.Concat(other, first, _REST))

    @property
    def query_suffix(self):
        """'?' and the query, or '' (what a redirect keeps of the request)."""
        at = z3.IndexOf(self.target, sval("?"), 0)
        return z3.If(at >= 0, z3.SubString(self.target, at, z3.Length(self.target) - at), sval(""))

    def target_from(self, n: int):
        return self.target if n == 0 else z3.SubString(self.target, n, z3.Length(self.target) - n)

    def domain(self, listener: tuple[str, int]) -> list:
        """What any request the codec accepts looks like in this model (fields.py alphabets)."""
        value_char = ranges_regex(VALUE_RANGES)
        edge_char = ranges_regex(((0x21, 0x7E), (0x80, 0xFF)))
        value = z3.Union(z3.Re(sval("")), edge_char,
                         z3.Concat(edge_char, z3.Star(value_char), edge_char))
        query = z3.Union(z3.Re(sval("")), z3.Concat(z3.Re(sval("?")), z3.Star(char_range(*TARGET_RANGE))))
        out = [z3.InRe(self.method, z3.Plus(charset_regex(ord(c) for c in METHOD_CHARS))),
               z3.InRe(self.target, z3.Concat(z3.Re(sval("/")), _any_of(PATH_CODES), query))]
        for name, values in self.headers.items():
            out.append(z3.And(values.count >= 0, values.count <= MAX_VALUES))
            item_re = value
            if name == "content-length":
                out.append(values.count <= 1)
                item_re = z3.Loop(char_range(0x30, 0x39), 1, 4)
            for i, item in enumerate(values.items):
                out.append(z3.InRe(item, item_re))
                out.append(z3.Implies(values.count <= i, item == sval("")))
        if listener[0] not in ("0.0.0.0", ""):
            out.append(self.destination_ip == ip_value(listener[0]))
        # from_model renders other headers as "x-NNNN: <padding>": at least 10 bytes each
        out += [self.other_lines >= 0, self.other_lines <= 9999, self.other_bytes >= 10 * self.other_lines,
                z3.Implies(self.other_lines == 0, self.other_bytes == 0)]
        return out

    def header_block_size(self):
        """Bytes of the header block as fields.py renders it (request line to the empty line)."""
        return z3.Length(self.method) + z3.Length(self.target) + 14 + self.other_bytes + z3.Sum(
            *[z3.If(values.count > i, len(name) + 4 + z3.Length(item), 0)
              for name, values in self.headers.items() for i, item in enumerate(values.items)])

    def header_lines(self):
        return z3.Sum(self.other_lines, *[values.count for values in self.headers.values()])

    def readable(self) -> list:
        """Soft wishes for a solver's witness, so that a person can read it: one plain Host, a
        loopback client, an upper-case method, printable values, no padding headers. Callers ask
        with these first and without them when that is unsat."""
        host = self.headers["host"]
        word = z3.Plus(charset_regex(ord(c) for c in "abcdefghijklmnopqrstuvwxyz0123456789.-"))
        printable = z3.Star(charset_regex(range(0x20, 0x7F)))
        return [host.count == 1, z3.InRe(host.items[0], word), self.source_ip == ip_value("127.0.0.1"),
                z3.InRe(self.method, z3.Plus(charset_regex(range(0x41, 0x5B)))), self.other_lines == 0,
                *[z3.InRe(item, printable) for values in self.headers.values() for item in values.items]]

    def substitution(self, request: FieldRequest) -> list[tuple]:
        """(variable, value) pairs that pin this symbolic request to a concrete one."""
        pairs = [(self.method, sval(request.method)), (self.target, sval(request.target)),
                 (self.source_ip, ip_value(request.source_ip)),
                 (self.destination_ip, ip_value(request.destination_ip))]
        for name, values in self.headers.items():
            given = request.values(name)
            if len(given) > MAX_VALUES:
                raise ValueError(f"header {name!r} occurs {len(given)} times; the model holds {MAX_VALUES}")
            pairs.append((values.count, z3.IntVal(len(given))))
            for i, item in enumerate(values.items):
                pairs.append((item, sval(given[i] if i < len(given) else "")))
        others = [(n, v) for n, v in request.headers if n not in self.headers]
        pairs += [(self.other_lines, z3.IntVal(len(others))),
                  (self.other_bytes, z3.IntVal(sum(len(n) + 4 + len(v) for n, v in others)))]
        return pairs

    def from_model(self, model: z3.ModelRef) -> FieldRequest:
        """The concrete request a solver's model describes (headers in name order, values in order)."""
        headers = []
        for name, values in self.headers.items():
            count = model.eval(values.count, model_completion=True).as_long()
            headers += [(name, model_string(model, values.items[i])) for i in range(count)]
        lines = model.eval(self.other_lines, model_completion=True).as_long()
        padding = model.eval(self.other_bytes, model_completion=True).as_long() - 10 * lines
        headers += [(f"x-{i:04d}", "a" * padding if i == 0 else "") for i in range(lines)]
        path, sep, query = (model_string(model, self.target) or "/").partition("?")
        return FieldRequest(model_string(model, self.method) or "GET", path, query if sep else None,
                            tuple(headers),
                            ip_text(model.eval(self.source_ip, model_completion=True).as_long()),
                            ip_text(model.eval(self.destination_ip, model_completion=True).as_long()))


# Query parameters: parts separated by '&'; a part's key runs to its first '='.
_PART = z3.Star(z3.Union(char_range(0x00, 0x25), char_range(0x27, 0xFF)))  # no '&'
_PARTS = z3.Star(z3.Concat(_PART, z3.Re(sval("&"))))
_REST = z3.Union(z3.Re(sval("")), z3.Concat(z3.Re(sval("&")), ANYTHING))


def _key_part(name: str) -> z3.ReRef:
    key = literal_regex(name)
    return z3.Union(key, z3.Concat(key, z3.Re(sval("=")), _PART))


def head_of(path):
    """split_query(path)[0]: what strip_query keeps."""
    at = z3.IndexOf(path, sval("?"), 0)
    return z3.If(at >= 0, z3.SubString(path, 0, at), path)


def model_string(model: z3.ModelRef, expr) -> str:
    return text_of(model.eval(expr, model_completion=True))


def ip_value(text: str) -> z3.BitVecNumRef:
    a, b, c, d = (int(x) for x in text.split("."))
    return z3.BitVecVal((a << 24) | (b << 16) | (c << 8) | d, 32)


def ip_text(value: int) -> str:
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


# ---- output templates -------------------------------------------------------------------------
# The strings an outcome carries (upstream request-target, authority, Location) are functions of the
# request, described by a tuple of parts:
#   ("lit", text) | ("target_from", n): the request-target from byte n | ("authority",): the Host
#   values joined with ',' | ("query_suffix",): '?' and the query, or '' | ("head_of", parts): the
#   parts up to their first '?'.
# The reference (from the IR) and the DAG (from the compiler) each describe their outputs this way,
# independently; `template_term` is the one meaning of a description. Equal descriptions are the
# same function, so a proof may first compare descriptions (as integers, cheap for Z3) and compare
# the strings only when the descriptions differ.
_TEMPLATE_IDS: dict[tuple, int] = {}


def template_key(parts: tuple) -> z3.IntNumRef:
    return z3.IntVal(_TEMPLATE_IDS.setdefault(parts, len(_TEMPLATE_IDS) + 1))


def joined_authority(req: "SymRequest"):
    """http1.joined_host: the Host values joined with ',', empty ones skipped."""
    host = req.headers["host"]
    first, second = host.items[0], host.items[1]
    both = z3.If(first == sval(""), second, z3.If(second == sval(""), first, z3.Concat(first, sval(","), second)))
    return z3.If(host.count >= 2, both, first)


def _authority_part(authority, part: tuple):
    """interpreter.authority_part as a term."""
    if len(part) == 1:
        return authority
    drop = sval(part[1])
    return z3.If(z3.SuffixOf(drop, authority), z3.SubString(authority, 0, z3.Length(authority) - len(part[1])),
                 authority)


def template_term(req: "SymRequest", parts: tuple):
    terms = []
    for part in parts:
        if part[0] == "lit":
            terms.append(sval(_ascii_operand(part[1])))
        elif part[0] == "target_from":
            terms.append(req.target_from(part[1]))
        elif part[0] == "authority":
            terms.append(_authority_part(joined_authority(req), part))
        elif part[0] == "query_suffix":
            terms.append(req.query_suffix)
        elif part[0] == "head_of":
            terms.append(head_of(template_term(req, part[1])))
        else:
            raise KeyError(part[0])
    return terms[0] if len(terms) == 1 else z3.Concat(*terms) if terms else sval("")


# ---- outcomes ---------------------------------------------------------------------------------
@dataclass
class SymOutcome:
    """An Outcome as terms. `known` false: the interpreter raises Unmodelled or the encoding stops.
    `*_key`: the output template behind path, authority and location (0: none)."""

    known: object
    forward: object
    cluster: object
    path: object
    authority: object
    status: object
    body: object
    location: object
    path_key: object = None
    authority_key: object = None
    location_key: object = None

    @classmethod
    def unknown(cls) -> "SymOutcome":
        empty, none = sval(""), z3.IntVal(0)
        return cls(False, False, empty, empty, empty, none, empty, empty, none, none, none)

    @classmethod
    def forward_to(cls, req: "SymRequest", cluster: str, path: tuple, authority: tuple) -> "SymOutcome":
        empty, none = sval(""), z3.IntVal(0)
        return cls(True, True, sval(cluster), template_term(req, path), template_term(req, authority), none,
                   empty, empty, template_key(path), template_key(authority), none)

    @classmethod
    def reply(cls, status, body, req: "SymRequest | None" = None, location: tuple | None = None) -> "SymOutcome":
        empty, none = sval(""), z3.IntVal(0)
        status = z3.IntVal(status) if isinstance(status, int) else status
        body = sval(body) if isinstance(body, str) else body
        if location is None:
            return cls(True, False, empty, empty, empty, status, body, empty, none, none, none)
        return cls(True, False, empty, empty, empty, status, body, template_term(req, location), none, none,
                   template_key(location))


def select(cond, then: SymOutcome, other: SymOutcome) -> SymOutcome:
    if cond is True:
        return then
    if cond is False:
        return other
    return SymOutcome(*(_if(cond, getattr(then, f.name), getattr(other, f.name)) for f in dc_fields(SymOutcome)))


def same_observable(a: SymOutcome, b: SymOutcome):
    """Both known and observably equal (Outcome.observable: cluster, request-target and authority
    forwarded, or status, body and Location replied)."""
    return z3.And(_bool(a.known), _bool(b.known), _bool(a.forward) == _bool(b.forward),
                  z3.If(_bool(a.forward),
                        z3.And(a.cluster == b.cluster, a.path == b.path, a.authority == b.authority),
                        z3.And(a.status == b.status, a.body == b.body, a.location == b.location)))


@dataclass(frozen=True)
class Tri:
    """A matcher's value, and whether evaluating it raises Unmodelled (value then irrelevant)."""

    value: object
    raises: object = False


def tri_any(items: Iterable[Tri]) -> Tri:
    """Python's any() over the items in order: stops at the first true one."""
    value, raises, reached = False, False, True
    for item in items:
        raises = _or(raises, _and(reached, item.raises))
        value = _or(value, item.value)
        reached = _and(reached, _not(item.value))
    return Tri(value, raises)


def tri_all(items: Iterable[Tri]) -> Tri:
    value, raises = True, False
    for item in items:
        raises = _or(raises, _and(value, item.raises))
        value = _and(value, item.value)
    return Tri(value, raises)


# ---- matchers (interpreter.py: string_matches, header_matches, matcher_holds) -----------------
def _ascii_operand(text: str) -> str:
    if not text.isascii():
        raise NotEncodable("a non-ASCII string operand")
    return text


def match_regex(m: ir.StringMatch, within: frozenset[int] | None = None) -> z3.ReRef:
    """The strings a StringMatcher accepts (regexes over UTF-8 bytes, or over `within` bytes)."""
    if m.kind == "regex":
        return regex_to_z3(m.regex.ast, within)
    return shape_regex(m.kind, _ascii_operand(m.value), m.ignore_case, within)


def string_matches(m: ir.StringMatch, value) -> Tri:
    hit = z3.InRe(value, match_regex(m))
    return Tri(hit, z3.Not(z3.InRe(value, VALID_UTF8)) if m.kind == "regex" else False)


_INT64 = z3.Concat(z3.Option(z3.Union(z3.Re(sval("+")), z3.Re(sval("-")))), z3.Plus(char_range(0x30, 0x39)))


def _in_range(value, start: int, end: int):
    digits = z3.If(z3.Or(z3.PrefixOf(sval("+"), value), z3.PrefixOf(sval("-"), value)),
                   z3.SubString(value, 1, z3.Length(value) - 1), value)
    number = z3.If(z3.PrefixOf(sval("-"), value), -z3.StrToInt(digits), z3.StrToInt(digits))
    return z3.And(z3.InRe(value, _INT64), number >= -2**63, number < 2**63, number >= start, number < end)


def header_matches(m: ir.HeaderMatch, values: SymValues) -> Tri:
    if m.present is not None:
        return Tri((values.count > 0) == m.present if not m.invert else (values.count > 0) != m.present)

    def one(v) -> Tri:
        if m.range is not None:
            return Tri(_in_range(v, *m.range))
        return string_matches(m.string, v)

    hit = tri_any(Tri(_and(values.present(i), t.value), _and(values.present(i), t.raises))
                  for i, t in ((i, one(v)) for i, v in enumerate(values.items)))
    present_value = _not(hit.value) if m.invert else hit.value
    if m.treat_missing_as_empty:
        empty = one(sval(""))
        missing = Tri(_bool(empty.value) != m.invert, empty.raises)
    else:
        missing = Tri(False)
    absent = values.count == 0
    return Tri(_if(absent, missing.value, present_value), _if(absent, missing.raises, hit.raises))


class SymView:
    """The request as filters and router see it (interpreter.RequestView)."""

    def __init__(self, req: SymRequest, policy: ir.Policy):
        self.req, self.policy, self.hcm = req, policy, policy.hcm
        self.method = req.method
        self.path = req.target  # the whole :path, query included
        self.authority = joined_authority(req)

    def header_values(self, name: str) -> SymValues | None:
        """None: the interpreter raises (a header the connection manager rewrites)."""
        one = z3.IntVal(1)
        if name == ":path":
            return SymValues(one, [self.path, sval("")])
        if name == ":method":
            return SymValues(one, [self.method, sval("")])
        if name == ":authority":
            return SymValues(one, [self.authority, sval("")])
        if rewritten_by_connection_manager(name):
            return None
        return self.req.headers[name]

    def remote_ip(self) -> Tri:
        """Tri over the address itself: value is the source address, raises as the interpreter does."""
        if self.hcm.use_remote_address:
            return Tri(self.req.source_ip, bool(self.hcm.xff_num_trusted_hops))
        return Tri(self.req.source_ip, self.req.headers["x-forwarded-for"].count > 0)


def _in_cidr(ip, cidr: ir.Cidr):
    if ":" in cidr.address:
        return False  # the field model's addresses are IPv4; an IPv6 network never holds them
    mask = (0xFFFFFFFF << (32 - cidr.prefix_len)) & 0xFFFFFFFF if cidr.prefix_len else 0
    return (ip & mask) == (ip_value(cidr.address).as_long() & mask)


def matcher_holds(node, view: SymView) -> Tri:
    if isinstance(node, ir.MatchAny):
        return Tri(True)
    if isinstance(node, ir.MatchAnd):
        return tri_all(matcher_holds(i, view) for i in node.items)
    if isinstance(node, ir.MatchOr):
        return tri_any(matcher_holds(i, view) for i in node.items)
    if isinstance(node, ir.MatchNot):
        inner = matcher_holds(node.item, view)
        return Tri(_not(inner.value), inner.raises)
    if isinstance(node, ir.MatchHeader):
        values = view.header_values(node.header.name)
        return Tri(False, True) if values is None else header_matches(node.header, values)
    if isinstance(node, ir.MatchUrlPath):
        # '#' was rejected earlier, so strip_query is the path part; it is visible ASCII (valid UTF-8)
        return Tri(view.req.on_path(match_regex(node.path, PATH_CODES)))
    if isinstance(node, ir.MatchDestinationPort):
        return Tri(view.policy.listener[1] == node.port)
    if isinstance(node, ir.MatchDestinationPortRange):
        return Tri(node.start <= view.policy.listener[1] < node.end)
    if isinstance(node, ir.MatchIp):
        if node.kind == "remote_ip":
            ip = view.remote_ip()
            return Tri(_in_cidr(ip.value, node.cidr), ip.raises)
        ip = view.req.destination_ip if node.kind == "destination_ip" else view.req.source_ip
        return Tri(_in_cidr(ip, node.cidr))
    if isinstance(node, ir.MatchAuthenticated):
        return Tri(False)
    if isinstance(node, ir.MatchMetadata):
        return Tri(node.invert)
    if isinstance(node, ir.MatchFilterState):
        return Tri(False)
    if isinstance(node, ir.MatchRequestedServerName):
        return Tri(z3.simplify(_bool(string_matches(node.name, sval("")).value)))
    raise AssertionError(type(node))


def policy_matches(policy: ir.RbacPolicy, view: SymView) -> Tri:
    return tri_all([tri_any(matcher_holds(p, view) for p in policy.permissions),
                    tri_any(matcher_holds(p, view) for p in policy.principals)])


# ---- routing ----------------------------------------------------------------------------------
def _domain_matches(domain: str, authority):
    domain = _ascii_operand(domain.lower())
    if domain == "*":
        return True
    if domain.startswith("*"):
        return z3.InRe(authority, z3.Concat(z3.Plus(ANY_BYTE), literal_regex(domain[1:], True)))
    if domain.endswith("*"):
        return z3.InRe(authority, z3.Concat(literal_regex(domain[:-1], True), z3.Plus(ANY_BYTE)))
    return z3.InRe(authority, literal_regex(domain, True))


def selected_virtual_hosts(config: ir.RouteConfig, authority) -> list:
    """For each virtual host, whether Envoy picks it: one of its domains matches and no domain of
    another virtual host matches with a better rank (ties go to the earlier virtual host)."""
    ranked = [(v, domain, domain_rank(domain), _domain_matches(domain, authority))
              for v, vhost in enumerate(config.virtual_hosts) for domain in vhost.domains]
    chosen = []
    for v, _vhost in enumerate(config.virtual_hosts):
        options = []
        for w, _d, rank, hit in ranked:
            if w != v:
                continue
            better = [h for u, _e, r, h in ranked if u != v and (r < rank or (r == rank and u < v))]
            options.append(_and(hit, *[_not(h) for h in better]))
        chosen.append(_or(*options))
    return chosen


def _path_matches(m: ir.RouteMatch, view: SymView):
    req = view.req
    if m.kind == "prefix":  # a route prefix sees the whole :path, query included
        return z3.InRe(req.target, shape_regex("prefix", _ascii_operand(m.value), not m.case_sensitive))
    if m.kind == "safe_regex":
        return req.on_path(regex_to_z3(m.regex.ast, PATH_CODES))  # paths are visible ASCII: valid UTF-8
    value = _ascii_operand(m.value)
    exact = shape_regex("exact", value, not m.case_sensitive, PATH_CODES)
    if m.kind == "path":
        return req.on_path(exact)
    if m.kind == "path_separated_prefix":
        return req.on_path(z3.Union(exact, shape_regex("prefix", value + "/", not m.case_sensitive, PATH_CODES)))
    raise AssertionError(m.kind)


def _query_matches(m: ir.QueryParamMatch, view: SymView) -> Tri:
    """First value of the key, undecoded; a key without '=' has the empty value."""
    if m.present is not None:
        present = view.req.param_present(m.name)
        return Tri(present if m.present else _not(present))
    return Tri(view.req.param_value_in(m.name, match_regex(m.string)))


def route_matches(route: ir.Route, view: SymView) -> Tri:
    m = route.match
    items = [Tri(_path_matches(m, view))]
    for h in m.headers:
        values = view.header_values(h.name)
        items.append(Tri(False, True) if values is None else header_matches(h, values))
    items += [_query_matches(q, view) for q in m.query_parameters]
    return tri_all(items)


def _rewritten_path(route: ir.Route, prefix_rewrite, regex_rewrite) -> tuple | None:
    """The upstream path's template (interpreter._rewritten_path); None where it raises."""
    if prefix_rewrite is not None:
        if route.match.kind not in ("prefix", "path_separated_prefix"):
            return None
        return (("lit", _ascii_operand(prefix_rewrite)), ("target_from", len(route.match.value)))
    if regex_rewrite is not None:
        raise NotEncodable("regex_rewrite")
    return (("target_from", 0),)


def _redirect_location(action: ir.RedirectAction, route: ir.Route) -> tuple | None:
    """The Location's template (interpreter._redirect_location); None where it raises."""
    scheme = action.scheme or "http"
    try:
        authority = redirect_authority(action)
    except Unmodelled as exc:
        raise NotEncodable(str(exc)) from None
    if authority[0] == "lit":
        authority = ("lit", _ascii_operand(authority[1]))
    if action.port is not None and DEFAULT_PORTS.get(scheme) != action.port:
        raise NotEncodable("port_redirect to a non-default port")
    if action.path is not None:
        if "?" in action.path:
            path = (("lit", _ascii_operand(action.path)),)
        else:  # the request's query is kept
            path = (("lit", _ascii_operand(action.path)), ("query_suffix",))
    else:
        path = _rewritten_path(route, action.prefix_rewrite, action.regex_rewrite)
        if path is None:
            return None
    if action.strip_query:
        path = (("head_of", path),)
    return (("lit", f"{scheme}://"), authority, *path)


def _action_outcome(route: ir.Route, view: SymView) -> SymOutcome:
    action = route.action
    try:
        if isinstance(action, ir.ForwardAction):
            path = _rewritten_path(route, action.prefix_rewrite, action.regex_rewrite)
            if path is None:
                return SymOutcome.unknown()
            authority = (("lit", action.host_rewrite),) if action.host_rewrite else (("authority",),)
            return SymOutcome.forward_to(view.req, action.cluster, path, authority)
        if isinstance(action, ir.DirectResponseAction):
            return SymOutcome.reply(action.status, action.body)
        location = _redirect_location(action, route)
        return SymOutcome.unknown() if location is None else SymOutcome.reply(action.status, "", view.req, location)
    except NotEncodable:
        return SymOutcome.unknown()


def route_request(config: ir.RouteConfig, view: SymView) -> SymOutcome:
    if config.ignore_port_in_host_matching:
        return SymOutcome.unknown()
    try:
        chosen = selected_virtual_hosts(config, view.authority)
    except NotEncodable:
        return SymOutcome.unknown()
    result = SymOutcome.reply(404, "")  # no virtual host
    for vhost, picked in reversed(list(zip(config.virtual_hosts, chosen))):
        routes = SymOutcome.reply(404, "")  # no route
        for route in reversed(vhost.routes):
            try:
                hit = route_matches(route, view)
                taken = _action_outcome(route, view)
            except NotEncodable:
                hit, taken = Tri(True, True), SymOutcome.unknown()
            routes = select(hit.raises, SymOutcome.unknown(), select(hit.value, taken, routes))
        result = select(picked, routes, result)
    return result


# ---- filters and the whole request ------------------------------------------------------------
def _rbac(f: ir.RbacFilter, view: SymView, following: SymOutcome) -> SymOutcome:
    if f.rules is None:
        return following
    try:
        matched = tri_any(policy_matches(p, view) for p in f.rules.policies)
    except NotEncodable:
        return SymOutcome.unknown()
    allowed = {"ALLOW": matched.value, "DENY": _not(matched.value), "LOG": True}[f.rules.action]
    denied = SymOutcome.reply(403, RBAC_DENIED_BODY)
    return select(matched.raises, SymOutcome.unknown(), select(allowed, following, denied))


def _fault(f: ir.FaultAbortFilter, view: SymView, following: SymOutcome) -> SymOutcome:
    try:
        items = []
        for h in f.headers:
            values = view.header_values(h.name)
            items.append(Tri(False, True) if values is None else header_matches(h, values))
        applies = tri_all(items)
    except NotEncodable:
        return SymOutcome.unknown()
    if not f.always:
        return select(applies.raises, SymOutcome.unknown(), following)
    if f.http_status is not None:
        aborted = SymOutcome.reply(f.http_status, FAULT_ABORT_BODY)
        return select(applies.raises, SymOutcome.unknown(), select(applies.value, aborted, following))
    if view.hcm.use_remote_address:
        return select(applies.raises, SymOutcome.unknown(),
                      select(applies.value, SymOutcome.unknown(), following))
    percentage = view.req.headers["x-envoy-fault-abort-request-percentage"]
    header = view.req.headers["x-envoy-fault-abort-request"]
    value = header.items[0]
    valid = z3.And(z3.InRe(value, z3.Loop(char_range(0x30, 0x39), 1, 3)),
                   z3.StrToInt(value) >= 200, z3.StrToInt(value) < 600)
    aborted = select(z3.And(header.count == 1, valid),
                     SymOutcome.reply(z3.StrToInt(value), FAULT_ABORT_BODY), following)
    header_rule = select(z3.Or(percentage.count > 0, header.count >= 2), SymOutcome.unknown(), aborted)
    return select(applies.raises, SymOutcome.unknown(), select(applies.value, header_rule, following))


def _normalized_path(req: SymRequest, hcm: ir.HcmOptions) -> tuple:
    """(outcome for requests path handling answers or cannot model, whether it does so).

    Envoy leaves a path unchanged when there is nothing to normalise; those paths are modelled
    exactly. Paths that normalisation would change are `unknown` here (the DAG punts them).
    """
    escaped = req.on_path(z3.Union(shape_regex("contains", "%2f", True, PATH_CODES),
                                   shape_regex("contains", "%5c", True, PATH_CODES)))
    stops = []  # (condition, outcome) in Envoy's order
    if hcm.escaped_slashes_action == "REJECT_REQUEST":
        stops.append((escaped, SymOutcome.reply(400, "")))
    elif hcm.escaped_slashes_action != "KEEP_UNCHANGED":
        stops.append((escaped, SymOutcome.unknown()))
    if hcm.normalize_path:
        stops.append((z3.Not(is_normal_path(req)), SymOutcome.unknown()))
    if hcm.merge_slashes:
        stops.append((req.on_path(shape_regex("contains", "//", within=PATH_CODES)), SymOutcome.unknown()))
    return stops


# Characters normalize_path keeps as they are (paths.py _KEPT, without '%'). A path with '%' is
# `unknown` here even where the canonicaliser would keep the escape: exact, the set of kept escapes
# made every proof under normalize_path time out, and the kernel punts '%' anyway.
_NORMAL_PATH = z3.Star(charset_regex(ord(c) for c in sorted(set(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/"))))


# Dot segments, one regex a shape: "the path has a dot segment" is the disjunction of four
# memberships (concatenation distributes over union), the same atoms as the DAG's own tests, so
# the proofs relate them without asking the string solver.
DOT_SEGMENTS = tuple(shape_regex(kind, text, within=PATH_CODES) for kind, text in
                     (("contains", "/./"), ("contains", "/../"), ("suffix", "/."), ("suffix", "/..")))


def has_dot_segment(req: "SymRequest"):
    return z3.Or(*[req.on_path(shape) for shape in DOT_SEGMENTS])


def is_normal_path(req: SymRequest):
    """normalize_path leaves the path as it is: only characters it keeps, no escapes, no dot
    segments and no backslash (paths.py: _canonicalize)."""
    return z3.And(req.on_path(_NORMAL_PATH), z3.Not(has_dot_segment(req)))


def mentioned_headers(policy: ir.Policy) -> set[str]:
    """Header names whose values can change the policy's decision (besides Host)."""
    names: set[str] = set()

    def visit(node):
        if isinstance(node, ir.HeaderMatch):
            if not node.name.startswith(":"):
                names.add(node.name)
        elif isinstance(node, ir.MatchIp):
            if node.kind == "remote_ip":
                names.add("x-forwarded-for")
        elif isinstance(node, ir.FaultAbortFilter) and node.header_abort:
            names.update({"x-envoy-fault-abort-request", "x-envoy-fault-abort-request-percentage"})
        if hasattr(node, "__dataclass_fields__"):
            for f in dc_fields(node):
                visit(getattr(node, f.name))
        elif isinstance(node, tuple):
            for item in node:
                visit(item)

    visit(policy.filters)
    visit(policy.routes)
    return names


@dataclass
class Meaning:
    """interpret() as terms, in two parts: `stop` holds when the codec or the connection manager
    answers before any filter runs (or the model stops there), with `stop_outcome`; otherwise the
    filters and the router give `decision`. Proofs use the parts separately: inside the kernel's
    bounds `stop` is false, and the decision part is what the DAG must match."""

    stop: object
    stop_outcome: SymOutcome
    decision: SymOutcome

    @property
    def whole(self) -> SymOutcome:
        return select(self.stop, self.stop_outcome, self.decision)


def _head_has_no_body(req: SymRequest, result: SymOutcome) -> SymOutcome:
    body = z3.If(req.method == sval("HEAD"), sval(""), result.body)
    return replace(result, body=body)


def meaning_parts(policy: ir.Policy, req: SymRequest) -> Meaning:
    """`req` must hold every header in mentioned_headers(policy)."""
    missing = mentioned_headers(policy) - set(req.headers)
    if missing:
        raise ValueError(f"symbolic request lacks headers {sorted(missing)}")
    view = SymView(req, policy)
    decision = route_request(policy.routes, view)
    for f in reversed(policy.filters):
        decision = (_rbac if isinstance(f, ir.RbacFilter) else _fault)(f, view, decision)
    # The codec and connection manager checks, in Envoy's order (interpreter._interpret).
    known_method = z3.Or(*[req.method == sval(m) for m in sorted(KNOWN_METHODS)])
    # The codec's header limits (http1.parse_request): the size of the header block as the field
    # model renders it, and the number of header lines.
    size = req.header_block_size()
    limit = policy.hcm.max_request_headers_kb * 1024
    too_large = SymOutcome.reply(431, "Request Header Fields Too Large")
    lines = req.header_lines()
    stops = [(size > limit + SIZE_MARGIN, too_large), (size > limit - SIZE_MARGIN, SymOutcome.unknown()),
             (z3.Not(known_method), SymOutcome.reply(400, "Bad Request")),  # codec: unknown method
             (lines > policy.hcm.max_headers_count, too_large),
             (req.method == sval("CONNECT"), SymOutcome.reply(400, "Bad Request")),  # origin-form: codec 400
             (z3.Not(z3.InRe(joined_authority(req), z3.Star(charset_regex(AUTHORITY_BYTES)))),
              SymOutcome.reply(400, "Bad Request")),
             (req.headers["host"].count == 0, SymOutcome.reply(400, ""))]
    if policy.hcm.strip_port != "none":
        stops.append((True, SymOutcome.unknown()))
    stops.append((z3.InRe(req.target, shape_regex("contains", "#")), SymOutcome.reply(400, "")))
    stops += _normalized_path(req, policy.hcm)
    stop_outcome = SymOutcome.unknown()
    for cond, outcome in reversed(stops):
        stop_outcome = select(cond, outcome, stop_outcome)
    return Meaning(_or(*[c for c, _ in stops]), _head_has_no_body(req, stop_outcome),
                   _head_has_no_body(req, decision))


def meaning(policy: ir.Policy, req: SymRequest) -> SymOutcome:
    """interpret(policy, req) as a term."""
    return meaning_parts(policy, req).whole


class SymbolicPolicy:
    """A policy's meaning built once over one symbolic request, and evaluated on concrete ones."""

    def __init__(self, policy: ir.Policy, extra_headers: Iterable[str] = (), tag: str = "r"):
        self.policy = policy
        self.request = SymRequest(mentioned_headers(policy) | set(extra_headers), tag)
        self.outcome = meaning(policy, self.request)

    def evaluate(self, request: FieldRequest):
        """The Outcome the term gives for a concrete request, or None where it is unknown."""
        return concrete_outcome(self.outcome, self.request.substitution(request))


def concrete_outcome(outcome: SymOutcome, pairs: list[tuple]):
    """`outcome` with the request's variables replaced by `pairs` (SymRequest.substitution): the
    Outcome it spells, or None when it is unknown."""
    from .request import Outcome

    def value(term):
        return z3.simplify(z3.substitute(_bool(term) if isinstance(term, bool) else term, *pairs))

    if not z3.is_true(value(outcome.known)):
        return None
    if z3.is_true(value(outcome.forward)):
        return Outcome("forward", cluster=text_of(value(outcome.cluster)), upstream_path=text_of(value(outcome.path)),
                       upstream_authority=text_of(value(outcome.authority)))
    return Outcome("local_reply", status=value(outcome.status).as_long(), body=text_of(value(outcome.body)),
                   location=text_of(value(outcome.location)) or None)
