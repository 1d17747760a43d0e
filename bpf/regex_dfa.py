"""The policy's regexes as byte DFAs for the kernel: one transition table the decision code walks.

Used by codegen.py (lower() asks `RegexTables.add` for each regex test; a regex whose DFA is too
large stays a PUNT) and loader.py (fill_tables writes `rows` and `accepting` into the tables map).

The automaton is built here from semantics/regex.py's AST (anchors stripped, case folding applied),
the very AST the reference interpreter and the proofs use: a Thompson NFA, then the subset
construction with a hard cap on states. (interegular builds the same automata from pattern text,
but has no cap: `.*a.{13}` ran for minutes; a cap keeps `l7fp compile` bounded and deterministic.)
The alphabet is ASCII: every field a regex reads is guarded to ASCII before the decision
(synth/bounds.py), and the C also punts on a byte >= 0x80 (RE2 would see UTF-8 code points there),
so a byte is a code point wherever the DFA decides. tests/bpf/test_regex_dfa.py checks the tables
against the reference's matcher.

Layout: all DFAs share one table of rows; row 0 is the dead state, every DFA's states follow as
rows of 128 next-row numbers, and `start` is a DFA's first row. Full match = the row reached after
the last byte is accepting.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..semantics.regex import Alt, Anchor, Cat, Chars, Group, Regex, Repeat

ALPHABET = 128
MAX_NFA_STATES = 20_000
MAX_ROWS_PER_REGEX = 512
MAX_ROWS = 4096  # 4096 rows x 128 x u16 = 1 MiB of map value, the most the tables map is given


class RegexTooLarge(Exception):
    """The DFA would need more rows than the kernel's table is given; the test stays a PUNT."""


def _byte_mask(chars: Chars) -> int:
    """The ASCII bytes a character class matches, as a 128-bit mask."""
    mask = 0
    for lo, hi in chars.ranges:
        lo, hi = max(lo, 0), min(hi, ALPHABET - 1)
        if lo <= hi:
            mask |= ((1 << (hi - lo + 1)) - 1) << lo
    return mask ^ ((1 << ALPHABET) - 1) if chars.negated else mask


class _Nfa:
    """Thompson's construction: `eps[s]` lists empty moves, `moves[s]` (mask, target) pairs."""

    def __init__(self):
        self.eps: list[list[int]] = []
        self.moves: list[list[tuple[int, int]]] = []

    def state(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise RegexTooLarge(f"its automaton has more than {MAX_NFA_STATES} NFA states")
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    def build(self, node, start: int) -> int:
        """Wire `node` from `start`; returns its end state."""
        if isinstance(node, Chars):
            end = self.state()
            self.moves[start].append((_byte_mask(node), end))
            return end
        if isinstance(node, Cat):
            for item in node.items:
                start = self.build(item, start)
            return start
        if isinstance(node, Alt):
            end = self.state()
            for item in node.items:
                branch = self.state()
                self.eps[start].append(branch)
                self.eps[self.build(item, branch)].append(end)
            return end
        if isinstance(node, Group):
            return self.build(node.item, start)
        if isinstance(node, Anchor):  # parse() strips them; full match makes them no-ops
            return start
        if isinstance(node, Repeat):
            for _ in range(node.min):
                start = self.build(node.item, start)
            end = self.state()
            self.eps[start].append(end)
            if node.max is None:  # x*: loop back through one more copy
                self.eps[self.build(node.item, start)].append(start)
                return end
            for _ in range(node.max - node.min):  # x?: each optional copy may end the repetition
                start = self.build(node.item, start)
                self.eps[start].append(end)
            return end
        raise TypeError(node)

    def closure(self, states) -> frozenset[int]:
        seen, stack = set(states), list(states)
        while stack:
            for nxt in self.eps[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return frozenset(seen)


def dfa_rows(regex: Regex) -> tuple[list[list[int]], list[bool]]:
    """(rows, accepting) of one regex's DFA over ASCII; row 0 is the start, and a move nowhere is -1
    (dead). RegexTooLarge past MAX_ROWS_PER_REGEX rows."""
    nfa = _Nfa()
    start = nfa.state()
    final = nfa.build(regex.ast, start)
    # Bytes no class tells apart move alike: walk one representative per class of bytes.
    classes = {}
    for byte in range(ALPHABET):
        key = tuple(mask >> byte & 1 for moves in nfa.moves for mask, _ in moves)
        classes.setdefault(key, []).append(byte)
    first = nfa.closure([start])
    numbering, order = {first: 0}, [first]
    rows = []
    for subset in order:  # grows while we walk it
        row = [-1] * ALPHABET
        for members in classes.values():
            bit = 1 << members[0]
            targets = [t for s in subset for mask, t in nfa.moves[s] if mask & bit]
            if not targets:
                continue
            nxt = nfa.closure(targets)
            if nxt not in numbering:
                if len(numbering) >= MAX_ROWS_PER_REGEX:
                    raise RegexTooLarge(f"its DFA has more than {MAX_ROWS_PER_REGEX} states (the kernel's "
                                        "per-regex limit)")
                numbering[nxt] = len(numbering)
                order.append(nxt)
            for byte in members:
                row[byte] = numbering[nxt]
        rows.append(row)
    return rows, [final in subset for subset in order]


@dataclass
class RegexTables:
    """Every regex the kernel runs, in one table (row 0: dead, non-accepting)."""

    rows: list[list[int]] = field(default_factory=lambda: [[0] * ALPHABET])
    accepting: list[bool] = field(default_factory=lambda: [False])
    start: dict[str, int] = field(default_factory=dict)  # pattern source -> its first row

    def add(self, regex: Regex) -> int:
        """The start row of `regex`, building its DFA on first use; RegexTooLarge if it does not fit."""
        if regex.source in self.start:
            return self.start[regex.source]
        rows, accepting = dfa_rows(regex)
        if len(self.rows) + len(rows) > MAX_ROWS:
            raise RegexTooLarge(f"the policy's regex DFAs need more than {MAX_ROWS} states in all")
        base = len(self.rows)
        self.rows += [[base + n if n >= 0 else 0 for n in row] for row in rows]
        self.accepting += accepting
        self.start[regex.source] = base
        return base

    def matches(self, regex: Regex, value: bytes) -> bool | None:
        """Walk the table as the C does (None where the C punts: a byte >= 0x80). For tests."""
        row = self.start[regex.source]
        for byte in value:
            if byte >= ALPHABET:
                return None
            row = self.rows[row][byte]
        return self.accepting[row]
