"""The match-action DAG: what the kernel program decides, as a networkx DiGraph.

Built by compile.py, proven against the reference by proofs/refinement.py, turned into C by bpf/.
Nodes are either tests or leaves:

- test: `field`, `op`, `operand`; two out-edges with `branch` True / False.
- leaf: `action` "forward" (cluster, `path` and `authority` templates), "reply" (status, body,
  `location` template or None) or "punt" (a reason: the request and its connection go to Envoy).

Fields are the kernel parser's view of one request (semantics/fields.py): `method`, `target`
(request-target), `path` (up to '?'), `query` ('' when absent), `has_query`, `authority` (first Host
value), `header:<name>` (first value, '' when absent), `count:<name>` (number of values),
`has_param:<name>` / `param:<name>` (first query parameter of that name), `source_ip`,
`destination_ip`. `evaluate(dag, request)` is the concrete meaning used by tests and fuzzing; its
Z3 twin is proofs/dag_smt.py.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import networkx as nx

from ..semantics.errors import Origin
from ..semantics.fields import FieldRequest
from ..semantics.http1 import joined_host
from ..semantics.interpreter import authority_part
from ..semantics.paths import query_params
from ..semantics.regex import Regex, RegexInputError, as_text

# Templates for upstream paths, authorities and Locations: the parts semantics/symbolic.py defines
# (template_term), evaluated concretely by render_template.
Template = tuple

_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Test:
    field: str
    op: str
    operand: object

    def describe(self) -> str:
        operand = self.operand.source if isinstance(self.operand, Regex) else self.operand
        if isinstance(operand, frozenset):
            operand = sorted(operand)
        return f"{self.field} {self.op} {operand!r}"


@dataclass(frozen=True)
class Leaf:
    action: str  # forward | reply | punt
    cluster: str | None = None
    path: Template | None = None
    authority: Template | None = None
    status: int | None = None
    body: str = ""
    location: Template | None = None
    reason: str = ""  # punt reason, or which rule decided (for reports)
    origin: Origin | None = None  # the policy text that decided (SARIF points here)

    def describe(self) -> str:
        if self.action == "punt":
            return f"PUNT ({self.reason})"
        if self.action == "forward":
            return f"forward {self.cluster}"
        return f"reply {self.status}"


def branches(graph: nx.DiGraph, n) -> tuple[int, int]:
    """(true child, false child) of a test node."""
    out = {d["branch"]: v for _, v, d in graph.out_edges(n, data=True)}
    return out[True], out[False]


class Dag:
    """A rooted DiGraph of Test and Leaf nodes, plus the bounds it was compiled under."""

    def __init__(self, graph: nx.DiGraph, root: int, bounds, header_names: frozenset[str]):
        self.graph, self.root, self.bounds, self.header_names = graph, root, bounds, header_names

    def node(self, n):
        return self.graph.nodes[n]["item"]

    def children(self, n) -> tuple[int, int]:
        return branches(self.graph, n)

    def tests(self) -> int:
        return sum(1 for n in self.graph if isinstance(self.node(n), Test))

    def leaves(self) -> list[Leaf]:
        return [self.node(n) for n in self.graph if isinstance(self.node(n), Leaf)]

    def depth(self) -> int:
        return nx.dag_longest_path_length(self.graph)

    def stats(self) -> dict:
        leaves = self.leaves()
        return {"nodes": self.graph.number_of_nodes(), "tests": self.tests(), "leaves": len(leaves),
                "punt_leaves": sum(1 for leaf in leaves if leaf.action == "punt"), "depth": self.depth()}


# ---- concrete meaning --------------------------------------------------------------------------
def field_value(request: FieldRequest, field: str):
    kind, _, name = field.partition(":")
    if kind == "method":
        return request.method
    if kind == "target":
        return request.target
    if kind == "path":
        return request.path
    if kind == "query":
        return request.query or ""
    if kind == "has_query":
        return request.query is not None
    if kind == "authority":
        values = request.values("host")
        return values[0] if values else ""
    if kind == "header":
        values = request.values(name)
        return values[0] if values else ""
    if kind == "count":
        return len(request.values(name))
    if kind in ("param", "has_param"):
        values = [v for k, v in query_params(request.target) if k == name] if request.query is not None else []
        return bool(values) if kind == "has_param" else (values[0] or "" if values else "")
    if kind in ("source_ip", "destination_ip"):
        return request.source_ip if kind == "source_ip" else request.destination_ip
    raise KeyError(field)


def _ascii_lower(text: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in text)


def test_holds(test: Test, value) -> bool:
    op, operand = test.op, test.operand
    if op == "eq":
        return value == operand
    if op in ("prefix", "suffix", "contains"):
        return {"prefix": value.startswith, "suffix": value.endswith, "contains": value.__contains__}[op](operand)
    if op in ("eq_ci", "prefix_ci", "suffix_ci", "contains_ci"):
        v, o = _ascii_lower(value), _ascii_lower(operand)
        return {"eq_ci": v.__eq__, "prefix_ci": v.startswith, "suffix_ci": v.endswith,
                "contains_ci": v.__contains__}[op](o)
    if op == "regex":
        try:
            return operand.full_match(as_text(value.encode("latin-1")))
        except RegexInputError:
            return False  # the compiler guards regex subjects; an unguarded one simply does not match
    if op == "len_le":
        return len(value) <= operand
    if op == "chars_in":
        return all(ord(c) in operand for c in value)
    if op == "int_in_range":
        lo, hi = operand
        return bool(_INT.fullmatch(value)) and -2**63 <= int(value) < 2**63 and lo <= int(value) < hi
    if op == "one_of":
        return value in operand
    if op == "le":
        return value <= operand
    if op == "in_cidr":
        address, prefix = operand
        return ipaddress.ip_address(value) in ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    if op == "true":
        return bool(value)
    raise KeyError(op)


def render_template(template: Template, request: FieldRequest) -> str:
    out = []
    for part in template:
        if part[0] == "lit":
            out.append(part[1])
        elif part[0] == "target_from":
            out.append(request.target[part[1]:])
        elif part[0] == "authority":
            out.append(authority_part(joined_host(request.values("host")), part))
        elif part[0] == "query_suffix":
            out.append("" if request.query is None else "?" + request.query)
        elif part[0] == "head_of":
            out.append(render_template(part[1], request).partition("?")[0])
        else:
            raise KeyError(part[0])
    return "".join(out)


def reach(dag: Dag, request: FieldRequest) -> int:
    """The leaf node the request reaches."""
    n = dag.root
    while isinstance(item := dag.node(n), Test):
        yes, no = dag.children(n)
        n = yes if test_holds(item, field_value(request, item.field)) else no
    return n


def evaluate(dag: Dag, request: FieldRequest) -> tuple[Leaf, object]:
    """(the leaf reached, the Outcome it gives or None for PUNT)."""
    item = dag.node(reach(dag, request))
    return item, leaf_outcome(item, request)


def leaf_outcome(leaf: Leaf, request: FieldRequest):
    """The Outcome a leaf gives `request` (None for PUNT); also what a kernel verdict naming the leaf
    answers (l7fp/fuzz.py)."""
    from ..semantics.request import Outcome

    if leaf.action == "punt":
        return None
    if leaf.action == "forward":
        return Outcome.forward(leaf.cluster, render_template(leaf.path, request),
                               render_template(leaf.authority, request), leaf.reason)
    location = render_template(leaf.location, request) if leaf.location is not None else None
    return Outcome.reply(leaf.status, leaf.body, leaf.reason, "kernel", location=location)
