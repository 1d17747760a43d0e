"""RE2 subset: parse Envoy `safe_regex` patterns with lark into a small AST, and match concretely.

Used by the frontends (every regex in a policy is parsed here, so unsupported syntax is rejected at
load time with the pattern and column), by the reference interpreter (full-match and rewrite), by the
Z3 encoding (semantics/symbolic.py: the AST maps one-to-one onto Z3's regex constructors) and by
the kernel's DFA tables (bpf/regex_dfa.py).

Matching follows RE2 as Envoy uses it: `FullMatch` for matchers, `GlobalReplace` for rewrites, UTF-8
text (a `.` is one code point). Values that are not valid UTF-8 are not modelled (`RegexInputError`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedInput

from .errors import ConfigError, Origin

_GRAMMAR = (Path(__file__).with_name("re2.lark")).read_text()
_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="contextual", maybe_placeholders=False)


class RegexSyntaxError(ValueError):
    """A pattern outside the supported RE2 subset; the message names the column."""


class RegexInputError(ValueError):
    """A value the regex would be matched against that the model does not cover (invalid UTF-8)."""


# ---- AST ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chars:
    """One character from a set of inclusive code-point ranges (negated: any other character)."""

    ranges: tuple[tuple[int, int], ...]
    negated: bool = False


@dataclass(frozen=True)
class Cat:
    items: tuple


@dataclass(frozen=True)
class Alt:
    items: tuple


@dataclass(frozen=True)
class Repeat:
    item: object
    min: int
    max: int | None  # None: unbounded


@dataclass(frozen=True)
class Group:
    """A capturing group (kept so rewrites can refer to it by number)."""

    item: object


@dataclass(frozen=True)
class Anchor:
    kind: str  # "begin" | "end"


ANY_BUT_NEWLINE = Chars(((0x0A, 0x0A),), negated=True)
_DIGIT = ((0x30, 0x39),)
_WORD = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE = ((0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20))  # RE2 \s: [\t\n\f\r ]
_CLASS_ESCAPES = {"d": (_DIGIT, False), "D": (_DIGIT, True), "w": (_WORD, False),
                  "W": (_WORD, True), "s": (_SPACE, False), "S": (_SPACE, True)}
_CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "r": 0x0D, "f": 0x0C, "v": 0x0B, "a": 0x07}
_PUNCT = set(r"""\.^$|?*+()[]{}-/:#&~%!,;<>=@'"`_ """)


def _escape_chars(text: str) -> Chars:
    body = text[1:]
    if body.startswith("x"):
        code = int(body[1:], 16)
        return Chars(((code, code),))
    if body in _CLASS_ESCAPES:
        ranges, negated = _CLASS_ESCAPES[body]
        return Chars(ranges, negated)
    if body in _CONTROL_ESCAPES:
        code = _CONTROL_ESCAPES[body]
        return Chars(((code, code),))
    if body in _PUNCT:
        return Chars(((ord(body), ord(body)),))
    raise RegexSyntaxError(f"escape '\\{body}' is not supported (supported: \\d \\w \\s, their negations, "
                           f"\\t \\n \\r \\f \\v \\xHH and escaped punctuation)")


def _lit(ch: str) -> Chars:
    return Chars(((ord(ch), ord(ch)),))


@v_args(inline=True)
class _ToAst(Transformer):
    def start(self, *parts):
        flags = parts[0] if len(parts) == 2 else None
        return (flags is not None, parts[-1])

    def alt(self, *items):
        return Alt(tuple(items))

    def concat(self, *items):
        return items[0] if len(items) == 1 else Cat(tuple(items))

    def group(self, item):
        return Group(item)

    def named_group(self, _name, item):
        return Group(item)

    def any_char(self, _tok):
        return ANY_BUT_NEWLINE

    def begin(self, _tok):
        return Anchor("begin")

    def end(self, _tok):
        return Anchor("end")

    def escape(self, tok):
        return _escape_chars(str(tok))

    def literal(self, tok):
        return _lit(str(tok))

    def charclass(self, body):
        text = str(body)
        negated = text.startswith("^")
        if negated:
            text = text[1:]
        items: list[Chars] = []
        i = 0
        while i < len(text):
            if text[i] == "\\":
                end = i + 4 if text[i + 1] == "x" else i + 2
                item = _escape_chars(text[i:end])
            else:
                end = i + 1
                item = _lit(text[i])
            # a '-' between two single characters makes a range; elsewhere it is a literal '-'
            if (end + 1 < len(text) and text[end] == "-" and text[end + 1] != "\\"
                    and len(item.ranges) == 1 and item.ranges[0][0] == item.ranges[0][1] and not item.negated):
                lo, hi = item.ranges[0][0], ord(text[end + 1])
                if lo > hi:
                    raise RegexSyntaxError(f"bad range {chr(lo)}-{chr(hi)}")
                item = Chars(((lo, hi),))
                end += 2
            items.append(item)
            i = end
        ranges: list[tuple[int, int]] = []
        for item in items:
            if item.negated:
                raise RegexSyntaxError("negated escapes (\\D \\W \\S) inside [...] are not supported")
            ranges.extend(item.ranges)
        return Chars(tuple(sorted(set(ranges))), negated)

    def quant(self, kind, _lazy=None):
        if isinstance(kind, Token):
            return {"STAR": (0, None), "PLUS": (1, None), "QMARK": (0, 1)}[kind.type]
        return kind

    def exact_bounds(self, n):
        return (int(n), int(n))

    def min_bounds(self, n):
        return (int(n), None)

    def range_bounds(self, lo, hi):
        if int(lo) > int(hi):
            raise RegexSyntaxError(f"bad repetition {{{lo},{hi}}}")
        return (int(lo), int(hi))

    def repeat(self, item, bounds):
        if isinstance(item, Anchor):
            raise RegexSyntaxError("a repeated anchor is not supported")
        lo, hi = bounds
        if (hi if hi is not None else lo) > 1000:
            raise RegexSyntaxError("repetition counts above 1000 are not supported (RE2 limit)")
        return Repeat(item, lo, hi)


def _fold_case(node):
    """(?i): every letter matches both cases (ASCII, as policies in practice use)."""
    if isinstance(node, Chars):
        extra = []
        for lo, hi in node.ranges:
            for a, b, delta in ((0x41, 0x5A, 32), (0x61, 0x7A, -32)):
                s, e = max(lo, a), min(hi, b)
                if s <= e:
                    extra.append((s + delta, e + delta))
        return Chars(tuple(sorted(set(node.ranges) | set(extra))), node.negated)
    if isinstance(node, (Cat, Alt)):
        return type(node)(tuple(_fold_case(i) for i in node.items))
    if isinstance(node, Repeat):
        return Repeat(_fold_case(node.item), node.min, node.max)
    if isinstance(node, Group):
        return Group(_fold_case(node.item))
    return node


def _check_anchors(node, at_start: bool, at_end: bool):
    """Anchors are accepted only where they are no-ops under full match (pattern start and end)."""
    if isinstance(node, Anchor):
        if (node.kind == "begin" and not at_start) or (node.kind == "end" and not at_end):
            raise RegexSyntaxError(f"'{'^' if node.kind == 'begin' else '$'}' is only supported at the "
                                   f"start or end of the pattern")
    elif isinstance(node, Alt):
        for item in node.items:
            _check_anchors(item, at_start, at_end)
    elif isinstance(node, Group):
        _check_anchors(node.item, at_start, at_end)
    elif isinstance(node, Cat):
        for i, item in enumerate(node.items):
            _check_anchors(item, at_start and all(isinstance(x, Anchor) for x in node.items[:i]),
                           at_end and all(isinstance(x, Anchor) for x in node.items[i + 1:]))
    elif isinstance(node, Repeat):
        _check_anchors(node.item, False, False)


def _strip_anchors(node):
    if isinstance(node, Anchor):
        return Cat(())
    if isinstance(node, (Cat, Alt)):
        return type(node)(tuple(_strip_anchors(i) for i in node.items))
    if isinstance(node, Group):
        return Group(_strip_anchors(node.item))
    if isinstance(node, Repeat):
        return Repeat(_strip_anchors(node.item), node.min, node.max)
    return node


# ---- to Python's re, for concrete matching --------------------------------------------------
def _py_char(code: int) -> str:
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code


def _to_python(node) -> str:
    if isinstance(node, Chars):
        body = "".join(_py_char(lo) if lo == hi else f"{_py_char(lo)}-{_py_char(hi)}" for lo, hi in node.ranges)
        if node.negated:
            return f"[^{body}]" if body else "[\\s\\S]"
        return f"[{body}]" if body else "(?!)"
    if isinstance(node, Cat):
        return "".join(_to_python(i) for i in node.items)
    if isinstance(node, Alt):
        return "(?:" + "|".join(_to_python(i) for i in node.items) + ")"
    if isinstance(node, Group):
        return "(" + _to_python(node.item) + ")"
    if isinstance(node, Repeat):
        hi = "" if node.max is None else str(node.max)
        return f"(?:{_to_python(node.item)}){{{node.min},{hi}}}"
    if isinstance(node, Anchor):
        return ""
    raise TypeError(node)


@dataclass(frozen=True)
class Regex:
    """A parsed pattern: its source text and the AST (anchors removed, (?i) folded in)."""

    source: str
    ast: object
    groups: int

    @property
    def _compiled(self) -> re.Pattern:
        return _compile(self)

    def python_pattern(self) -> str:
        """The AST as a Python `re` pattern (DOTALL): what concrete matching and bpf/regex_dfa.py use."""
        return _to_python(self.ast)

    def full_match(self, text: str) -> bool:
        return self._compiled.fullmatch(text) is not None

    def global_replace(self, text: str, substitution: str) -> str:
        """RE2::GlobalReplace: every non-overlapping match replaced; \\N refers to group N."""
        def expand(match: re.Match) -> str:
            return re.sub(r"\\(\d)", lambda m: match.group(int(m.group(1))) or "", substitution)
        return self._compiled.sub(expand, text)


@lru_cache(maxsize=4096)
def _compile(regex: Regex) -> re.Pattern:
    return re.compile(regex.python_pattern(), re.DOTALL)


def _count_groups(node) -> int:
    if isinstance(node, Group):
        return 1 + _count_groups(node.item)
    if isinstance(node, (Cat, Alt)):
        return sum(_count_groups(i) for i in node.items)
    if isinstance(node, Repeat):
        return _count_groups(node.item)
    return 0


@lru_cache(maxsize=4096)
def parse(source: str) -> Regex:
    """Parse a pattern of the supported RE2 subset or raise RegexSyntaxError naming the column."""
    try:
        tree = _PARSER.parse(source)
        ignore_case, ast = _ToAst().transform(tree)
    except UnexpectedInput as exc:
        raise RegexSyntaxError(f"regex {source!r}: unsupported or invalid syntax at column "
                               f"{exc.column}") from None
    except LarkError as exc:
        inner = exc.__context__ if isinstance(exc.__context__, RegexSyntaxError) else exc
        raise RegexSyntaxError(f"regex {source!r}: {inner}") from None
    try:
        _check_anchors(ast, True, True)
    except RegexSyntaxError as exc:
        raise RegexSyntaxError(f"regex {source!r}: {exc}") from None
    ast = _strip_anchors(ast)
    if ignore_case:
        ast = _fold_case(ast)
    return Regex(source, ast, _count_groups(ast))


def as_text(value: bytes) -> str:
    """The text RE2 sees for a header or path value: UTF-8, else not modelled."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RegexInputError("value is not valid UTF-8; RE2 matching of it is not modelled") from None


def parse_at(source: str, origin: Origin) -> Regex:
    """`parse` for a pattern taken from a policy file: syntax errors become a ConfigError at `origin`."""
    try:
        return parse(source)
    except RegexSyntaxError as exc:
        raise ConfigError(origin, str(exc)) from None
