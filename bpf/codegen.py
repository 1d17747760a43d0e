"""Match-action DAG -> C for bcc: the kernel program's decision code, its tables and verdicts.

Used by bpf/loader.py (the sk_skb data plane and the test-run harness load what this writes),
`l7fp compile` (writes the C) and the tests. The C has three parts:

- the generated constants and the decision code (`l7fp_slot_of`, one small function per string
  test, `l7fp_dag`: one label per DAG node, `goto` along its true/false edges, `return` a verdict
  code at a leaf);
- the hand-written parser, bpf/c/http1_parser.h (and, for the data plane only, the response
  framing of bpf/c/http1_response.h, which keeps answers in order);
- one entry file per attach point: bpf/c/sk_skb.c (the data plane), bpf/c/test_run.c (the harness).

Before emitting, `lower` turns every DAG node the C cannot do into a PUNT leaf (query parameters,
integer ranges, rewrites of the forwarded request, request-dependent Location headers, a regex whose
DFA is too large for the kernel's table), with the reason; regex tests run as DFAs from one table
(bpf/regex_dfa.py); PUNT is always allowed by the correctness contract, so lowering keeps the proof's
result, and the harness checks the C against the lowered DAG verdict for verdict.

Verdict codes are indexes into `KernelProgram.verdicts`: the parser's own punts first (their order
is the V_* numbering of http1_parser.h), then one per DAG leaf.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from ..synth.dag import Dag, Leaf, Test, branches
from .regex_dfa import RegexTables, RegexTooLarge

C_DIR = Path(__file__).with_name("c")

# The parser's verdicts, in V_* order (http1_parser.h). Each is a PUNT with this reason.
PARSER_VERDICTS = (
    ("incomplete", "request not complete in one segment"),
    ("beyond_window", "header block longer than the kernel's window"),
    ("malformed", "request bytes outside the parser's canonical shape"),
    ("version", "not HTTP/1.1"),
    ("too_many_lines", "more header lines than the kernel's bound"),
    ("framing", "Transfer-Encoding, or a Content-Length that is repeated or not plain digits"),
    ("hop_by_hop", "Connection, Upgrade, Expect, TE or another hop-by-hop header"),
    ("pipelined", "more bytes after the request in the same segment"),
    ("not_origin_form", "request-target not in origin form"),
    ("beyond_loop", "a field longer than the kernel's loop bound, or a non-ASCII byte under a regex"),
    ("no_state", "connection not known to the kernel program"),
    ("no_upstream", "no upstream connection for the chosen cluster"),
    ("reply_pending", "a request arrived before the previous local reply was written"),
    ("reply_with_body", "local reply to a request with a body (Envoy closes the connection)"),
    ("answer_order", "another cluster's response to an earlier request is still in flight"),
    ("upstream_closed", "an upstream closed its connection or announced it would: Envoy takes the "
                        "connection's next requests"),
)
# Headers the parser refuses outright: they change framing or the connection, which the fast path
# does not reproduce. Transfer-Encoding and Content-Length have slots of their own (framing).
HOP_BY_HOP = ("connection", "upgrade", "expect", "te", "keep-alive", "proxy-connection", "http2-settings",
              "trailer")
FRAMING_SLOTS = ("host", "content-length", "transfer-encoding")

KIND_FORWARD, KIND_REPLY, KIND_PUNT = 1, 2, 3


class Cls(enum.IntEnum):
    """Byte classes of the scanner (http1_parser.h reads C_END)."""

    CTL = 0
    TCHAR = 1
    SP = 2
    HT = 3
    CR = 4
    LF = 5
    COLON = 6
    QMARK = 7
    VISIBLE = 8
    HIGH = 9
    UNDERSCORE = 10


class S(enum.IntEnum):
    """Scanner states; the numbers are the S_* defines of http1_parser.h."""

    METHOD = 0
    PATH = 1
    QUERY = 2
    VERSION = 3
    RLCR = 4
    LINE = 5
    NAME = 6
    OWS = 7
    VALUE = 8
    VWS = 9
    HCR = 10
    ECR = 11
    DONE = 12
    ERR = 13
    INCOMPLETE = 14


# Position slots of an event (P_* and P_LINE_BASE + K_* of http1_parser.h).
SP1, QPOS, SP2, RLEND, HEADEND = 1, 2, 3, 4, 5
NAME, COLON, VSTART, VEND = 8, 9, 10, 11

_TCHARS = frozenset(b"!#$%&'*+-.^`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def byte_classes() -> list[int]:
    classes = []
    for b in range(256):
        if b in _TCHARS:
            c = Cls.TCHAR
        elif b == ord("_"):
            c = Cls.UNDERSCORE
        elif b in (0x20, 0x09, 0x0D, 0x0A, ord(":"), ord("?")):
            c = {0x20: Cls.SP, 0x09: Cls.HT, 0x0D: Cls.CR, 0x0A: Cls.LF, ord(":"): Cls.COLON, ord("?"): Cls.QMARK}[b]
        elif 0x21 <= b <= 0x7E:
            c = Cls.VISIBLE
        elif b >= 0x80:
            c = Cls.HIGH
        else:
            c = Cls.CTL
        classes.append(int(c))
    return classes


def scanner_tables(underscores_in_names: bool) -> tuple[list[int], list[int]]:
    """(byte class per byte, transition word per (state << 4 | class)).

    A transition word is next state (bits 0-3), event 1 slot (4-7) and +1 (8), event 2 slot (9-12)
    and +1 (13), next header line (14), stop (15). Unlisted transitions go to ERR: the parser punts.
    `underscores_in_names` is false when the connection manager rejects or drops such headers
    (headers_with_underscores_action), so a '_' in a name punts.
    """
    name_chars = {Cls.TCHAR} | ({Cls.UNDERSCORE} if underscores_in_names else set())
    target = {Cls.TCHAR, Cls.UNDERSCORE, Cls.COLON, Cls.VISIBLE}
    value = {Cls.TCHAR, Cls.UNDERSCORE, Cls.COLON, Cls.QMARK, Cls.VISIBLE, Cls.HIGH}
    ws = {Cls.SP, Cls.HT}
    rules: dict[tuple[S, Cls], tuple] = {}

    def on(state, classes, nxt, *events, line=False):
        for c in classes:
            rules[(state, c)] = (nxt, events, line)

    on(S.METHOD, {Cls.TCHAR, Cls.UNDERSCORE}, S.METHOD)
    on(S.METHOD, {Cls.SP}, S.PATH, (SP1, 0))
    on(S.PATH, target, S.PATH)
    on(S.PATH, {Cls.QMARK}, S.QUERY, (QPOS, 0))
    on(S.PATH, {Cls.SP}, S.VERSION, (SP2, 0))
    on(S.QUERY, target | {Cls.QMARK}, S.QUERY)
    on(S.QUERY, {Cls.SP}, S.VERSION, (SP2, 0))
    on(S.VERSION, {Cls.TCHAR, Cls.VISIBLE}, S.VERSION)
    on(S.VERSION, {Cls.CR}, S.RLCR, (RLEND, 0))
    on(S.RLCR, {Cls.LF}, S.LINE)
    on(S.LINE, name_chars, S.NAME, (NAME, 0))
    on(S.LINE, {Cls.CR}, S.ECR)
    on(S.NAME, name_chars, S.NAME)
    on(S.NAME, {Cls.COLON}, S.OWS, (COLON, 0))
    on(S.OWS, ws, S.OWS)
    on(S.OWS, value, S.VALUE, (VSTART, 0))
    on(S.OWS, {Cls.CR}, S.HCR, (VSTART, 0), (VEND, 0))
    on(S.VALUE, value, S.VALUE)
    on(S.VALUE, ws, S.VWS, (VEND, 0))
    on(S.VALUE, {Cls.CR}, S.HCR, (VEND, 0))
    on(S.VWS, ws, S.VWS)
    on(S.VWS, value, S.VALUE)
    on(S.VWS, {Cls.CR}, S.HCR)
    on(S.HCR, {Cls.LF}, S.LINE, line=True)
    on(S.ECR, {Cls.LF}, S.DONE, (HEADEND, 1))

    trans = []
    for index in range(256):
        state, cls = index >> 4, index & 0xF
        nxt, events, line = rules.get((state, cls), (S.ERR, (), False))
        word = int(nxt)
        for shift, (slot, plus) in zip((4, 9), events):
            word |= slot << shift | plus << (shift + 4)
        word |= int(line) << 14
        word |= int(nxt in (S.DONE, S.ERR, S.INCOMPLETE)) << 15
        trans.append(word)
    return byte_classes(), trans


# ---- lowering: what the C cannot do becomes PUNT ------------------------------------------------
_STRING_OPS = {"eq", "prefix", "suffix", "contains", "eq_ci", "prefix_ci", "suffix_ci", "contains_ci"}
_IDENTITY_PATH = (("target_from", 0),)
_IDENTITY_AUTHORITY = (("authority",),)


def _unsupported(item, regexes: RegexTables) -> str | None:
    if isinstance(item, Leaf):
        if item.action == "forward" and (item.path != _IDENTITY_PATH or item.authority != _IDENTITY_AUTHORITY):
            return "the forwarded request is rewritten (the kernel forwards bytes unchanged)"
        if item.action == "reply" and item.location is not None and any(p[0] != "lit" for p in item.location):
            return "Location built from the request"
        return None
    kind = item.field.partition(":")[0]
    if kind in ("param", "has_param"):
        return "query parameter matcher"
    if item.op == "regex":
        try:
            regexes.add(item.operand)
        except RegexTooLarge as exc:
            return f"regex {item.operand.source!r}: {exc}"
    if item.op == "int_in_range":
        return "integer range matcher"
    return None


@dataclass(frozen=True)
class Lowered:
    node: int
    what: str  # the test or leaf described
    reason: str


def lower(dag: Dag, regexes: RegexTables | None = None) -> tuple[Dag, list[Lowered]]:
    """The DAG the kernel runs: every node the C cannot do replaced by a PUNT leaf. The DFAs of the
    regex tests it keeps go into `regexes`."""
    graph = dag.graph.copy()
    lowered = []
    regexes = RegexTables() if regexes is None else regexes
    for n in sorted(graph):  # node order decides which regexes fit the table: keep it stable
        item = graph.nodes[n]["item"]
        reason = _unsupported(item, regexes)
        if reason is None:
            continue
        lowered.append(Lowered(n, item.describe(), reason))
        graph.remove_edges_from(list(graph.out_edges(n)))
        graph.nodes[n]["item"] = Leaf("punt", reason=f"kernel: {reason}", origin=getattr(item, "origin", None))
    keep = nx.descendants(graph, dag.root) | {dag.root}
    return Dag(graph.subgraph(keep).copy(), dag.root, dag.bounds, dag.header_names), lowered


# ---- verdicts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    code: int
    kind: str  # forward | reply | punt
    reason: str
    node: int | None = None  # the DAG leaf, None for the parser's own punts
    cluster: str | None = None
    leaf: Leaf | None = None


@dataclass
class KernelProgram:
    """Everything bpf/loader.py needs to load one policy's kernel program."""

    dag: Dag  # the lowered DAG the C implements
    lowered: list[Lowered]
    verdicts: list[Verdict]
    slots: list[str]  # header slot names (index = slot); "" for padding
    clusters: list[str]  # cluster slot index -> cluster name (slot 0 is the client itself)
    sets: list[frozenset[int]]
    classes: list[int]
    transitions: list[int]
    underscores_in_names: bool  # the scanner's table accepts '_' in header names
    regexes: RegexTables = field(default_factory=RegexTables)
    constants: dict[str, int] = field(default_factory=dict)
    decision_c: str = ""

    def source(self, entry: str) -> str:
        """The whole C text of one entry ("sk_skb" or "test_run")."""
        defines = "".join(f"#define {k} {v}\n" for k, v in self.constants.items())
        # The data plane also follows the responses' framing (answer order); the harness has none.
        headers = ["http1_parser.h", *(["http1_response.h"] if entry == "sk_skb" else [])]
        parts = [f"/* Generated by l7fp (bpf/codegen.py) for entry {entry}. */\n", defines,
                 *((C_DIR / h).read_text() for h in headers), self.decision_c, (C_DIR / f"{entry}.c").read_text()]
        return "\n".join(parts)

    def verdict_word(self, v: Verdict) -> int:
        kind = {"forward": KIND_FORWARD, "reply": KIND_REPLY, "punt": KIND_PUNT}[v.kind]
        return kind << 16 | (self.clusters.index(v.cluster) if v.kind == "forward" else 0)


def _pow2(n: int, at_least: int = 1) -> int:
    p = at_least
    while p < n:
        p *= 2
    return p


def _comment(text: str) -> str:
    """A C comment of policy text, which may itself hold '*/'."""
    return "/* " + text.replace("*/", "* /") + " */"


def _c_byte(ch: str) -> int | None:
    code = ord(ch)
    return code if code <= 0xFF else None


class _Emitter:
    """Writes the C of one lowered DAG."""

    def __init__(self, dag: Dag, slots: list[str], regexes: RegexTables):
        self.dag, self.slots, self.regexes = dag, slots, regexes
        self.functions: dict[tuple, str] = {}  # (op, operand) -> function name
        self.sets: list[frozenset[int]] = []
        self.body: list[str] = []

    def slot(self, name: str) -> int:
        return self.slots.index(name)

    def field_index(self, field_name: str) -> str:
        kind, _, name = field_name.partition(":")
        fixed = {"method": "F_METHOD", "target": "F_TARGET", "path": "F_PATH", "query": "F_QUERY"}
        if kind in fixed:
            return fixed[kind]
        if kind in ("authority", "header"):
            return f"F_HEADERS + {self.slot('host' if kind == 'authority' else name)}"
        raise KeyError(field_name)

    def span(self, field_name: str) -> str:
        index = self.field_index(field_name)
        return f"c->fo[{index}], c->fl[{index}]"

    def set_id(self, chars: frozenset[int]) -> int:
        if chars not in self.sets:
            self.sets.append(chars)
        return self.sets.index(chars)

    def string_function(self, op: str, operand: str) -> str:
        key = (op, operand)
        if key in self.functions:
            return self.functions[key]
        name = f"l7fp_t{len(self.functions)}"
        self.functions[key] = name
        base, ci = op.removesuffix("_ci"), op.endswith("_ci")
        codes = [_c_byte(ch) for ch in operand]
        size = len(codes)
        lines = [_comment(f"{op} {operand!r}"),
                 f"static __always_inline u64 {name}(const struct conn *c, u64 off, u64 len)", "{"]
        if any(code is None for code in codes):
            lines += ["    return 0; /* the operand has a character no byte can be */", "}"]
            return self._add(name, lines)

        def compare(at: str, indent: str = "    ") -> list[str]:
            out = [f"{indent}u64 d = 0;"]
            for k, code in enumerate(codes):
                letter = ci and (0x41 <= code <= 0x5A or 0x61 <= code <= 0x7A)
                byte = f"BYTE(c, {at} + {k})"
                out.append(f"{indent}d |= ({byte} | 0x20) ^ {code | 0x20};" if letter else f"{indent}d |= {byte} ^ {code};")
            return out

        # Bytes past the field are read too (the buffer is masked, so they are in bounds); the
        # length terms make them irrelevant.
        if base == "eq":
            lines += [*compare("off"), f"    return L7FP_ZERO(d | (len ^ {size}));"]
        elif base in ("prefix", "suffix"):
            at = "off" if base == "prefix" else f"off + len - {size}"
            lines += [*compare(at), f"    return L7FP_ZERO(d) & (L7FP_LT(len, {size}) ^ 1);"]
        else:  # contains: every start position within the loop bound
            lines += ["    u64 found = 0;", "    for (u64 j = 0; j < MAX_FIELD; j++) {", *compare("off + j", "        "),
                      f"        found |= L7FP_ZERO(d) & L7FP_LT(j + {size - 1}, len);", "    }",
                      "    return found | (L7FP_LT(MAX_FIELD, len) << 1);"]
        lines.append("}")
        return self._add(name, lines)

    def _add(self, name: str, lines: list[str]) -> str:
        self.body.append("\n".join(lines) + "\n")
        return name

    def test_expression(self, test: Test) -> str:
        kind, _, name = test.field.partition(":")
        op, operand = test.op, test.operand
        if kind == "count":
            count = f"(u64)c->count[{self.slot(name)}]"
            return f"L7FP_LT({count}, {operand + 1})" if op == "le" else f"L7FP_ZERO({count} ^ {operand})"
        if kind == "has_query":
            return "L7FP_ZERO(c->pos[P_QPOS]) ^ 1"
        if kind in ("source_ip", "destination_ip"):
            address, prefix = operand
            mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if prefix else 0
            network = int.from_bytes(bytes(int(x) for x in address.split(".")), "big") & mask
            var = "c->src_ip" if kind == "source_ip" else "c->dst_ip"
            return f"L7FP_ZERO(((u64){var} & {mask:#x}) ^ {network:#x})"
        span = self.span(test.field)
        if op == "len_le":
            return f"L7FP_LT(c->fl[{self.field_index(test.field)}], {operand + 1})"
        if op == "chars_in":
            return f"l7fp_chars_in(c, t, {self.set_id(operand)}, {span})"
        if op == "regex":
            return f"l7fp_regex(c, t, {self.regexes.start[operand.source]}, {span})"
        if op == "one_of":
            return " | ".join(f"{self.string_function('eq', v)}(c, {span})" for v in sorted(operand)) or "0"
        if op in _STRING_OPS:
            return f"{self.string_function(op, operand)}(c, {span})"
        raise KeyError(f"no C for {test.describe()}")  # lower() removes everything else

    def decision(self, codes: dict[int, int]) -> str:
        dag = self.dag
        order = [dag.root] + [n for n in nx.topological_sort(dag.graph) if n != dag.root]
        lines = ["static __always_inline u32 l7fp_dag(const struct conn *c, const struct tables *t)", "{",
                 "    u64 r;"]
        for n in order:
            item = dag.node(n)
            if isinstance(item, Leaf):
                lines.append(f"n{n}: {_comment(item.describe())}")
                lines.append(f"    return {codes[n]};")
                continue
            yes, no = branches(dag.graph, n)
            expression = self.test_expression(item)
            lines.append(f"n{n}: {_comment(item.describe()[:100])}")
            lines.append(f"    r = {expression};")
            if item.op in ("chars_in", "contains", "contains_ci", "regex"):
                lines.append("    if (r >> 1)")
                lines.append("        return V_BEYOND_LOOP;")
            lines.append(f"    if (r)\n        goto n{yes};\n    goto n{no};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def slot_of(self) -> str:
        lines = ["static __always_inline int l7fp_slot_of(const struct conn *c, u64 off, u64 len)", "{", "    u64 d;"]
        named = [(name, str(index)) for index, name in enumerate(self.slots) if name]
        named += [(name, "SLOT_HOP_BY_HOP") for name in HOP_BY_HOP if name not in self.slots]
        for name, result in named:
            lines.append(f"    d = len ^ {len(name)}; /* {name} */")
            for k, ch in enumerate(name.encode()):
                letter = 0x61 <= ch <= 0x7A
                byte = f"BYTE(c, off + {k})"
                lines.append(f"    d |= ({byte} | 0x20) ^ {ch};" if letter else f"    d |= {byte} ^ {ch};")
            # hide() keeps clang from loading every name's bytes at once (its spills overflowed
            # the 512-byte stack with long names).
            lines.append(f"    if (l7fp_hide(d) == 0)\n        return {result};")
        lines += ["    return -1;", "}"]
        return "\n".join(lines) + "\n"


def generate(dag: Dag, hcm) -> KernelProgram:
    """The kernel program for a proven DAG (`hcm`: the connection manager options the scanner
    depends on)."""
    regexes = RegexTables()
    kernel, lowered = lower(dag, regexes)
    headers = sorted(set(dag.header_names) - set(FRAMING_SLOTS))
    named = list(FRAMING_SLOTS) + headers
    slots = named + [""] * (_pow2(len(named), 4) - len(named))

    verdicts = [Verdict(i, "punt", reason) for i, (_, reason) in enumerate(PARSER_VERDICTS)]
    clusters = [""]  # slot 0: the client socket itself (replies go back on it)
    codes = {}
    for n in sorted(kernel.graph):
        item = kernel.node(n)
        if not isinstance(item, Leaf):
            continue
        code = len(verdicts)
        codes[n] = code
        if item.action == "forward":
            if item.cluster not in clusters:
                clusters.append(item.cluster)
            verdicts.append(Verdict(code, "forward", item.reason, n, cluster=item.cluster, leaf=item))
        else:
            verdicts.append(Verdict(code, item.action, item.reason, n, leaf=item))

    emitter = _Emitter(kernel, slots, regexes)
    dag_c = emitter.decision(codes)
    slot_c = emitter.slot_of()
    bounds = dag.bounds
    underscores = hcm.headers_with_underscores_action == "ALLOW"
    classes, transitions = scanner_tables(underscores)
    window = bounds.window
    constants = {
        "WINDOW": window, "BUF_SIZE": _pow2(window + 2, 64), "MAX_LINES": bounds.max_header_lines,
        "MAX_FIELD": max(bounds.max_target, bounds.max_authority, bounds.max_header_value),
        "N_SLOTS": len(slots), "N_SETS": _pow2(max(1, len(emitter.sets))), "N_VERDICTS": _pow2(len(verdicts)),
        "N_DFA_ROWS": _pow2(len(regexes.rows)),
        "SLOT_HOST": slots.index("host"), "SLOT_CONTENT_LENGTH": slots.index("content-length"),
        "SLOT_TRANSFER_ENCODING": slots.index("transfer-encoding"), "SLOT_HOP_BY_HOP": -2,
        "KIND_FORWARD": KIND_FORWARD, "KIND_REPLY": KIND_REPLY, "KIND_PUNT": KIND_PUNT,
    }
    program = KernelProgram(kernel, lowered, verdicts, slots, clusters, emitter.sets, classes,
                            transitions, underscores, regexes, constants)
    program.decision_c = "\n".join([slot_c, *emitter.body, dag_c])
    return program
