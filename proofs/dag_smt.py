"""The DAG as Z3 terms over the same symbolic request as the reference (semantics/symbolic.py).

Used by refinement.py. Each test node becomes a predicate on the request's fields, each leaf an
outcome term (PUNT is a flag), and the DAG an If-tree shared the way the DAG shares nodes. String
primitives (regex, case-insensitive literals, CIDRs, query parameters) are the symbolic module's,
which tests/semantics/test_symbolic_vs_interpreter.py checks against the interpreter;
tests/synth/test_dag.py checks this translation against `synth.dag.evaluate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import z3

from ..semantics import symbolic as sym
from ..semantics.symbolic import SymOutcome, SymRequest, sval
from ..synth.dag import Dag, Leaf, Test


@dataclass
class DagTerm:
    punt: object
    outcome: SymOutcome


class DagEncoder:
    def __init__(self, dag: Dag, req: SymRequest):
        self.dag, self.req = dag, req
        missing = set(dag.header_names) - set(req.headers)
        if missing:
            raise ValueError(f"symbolic request lacks headers {sorted(missing)}")

    def op_regex(self, test: Test, within: frozenset[int] | None) -> z3.ReRef:
        """The values (made of `within` bytes; any: None) a string test accepts, as a regex."""
        op, o = test.op, test.operand
        if op in ("eq", "prefix", "suffix", "contains"):
            return sym.shape_regex({"eq": "exact"}.get(op, op), o, within=within)
        if op in ("eq_ci", "prefix_ci", "suffix_ci", "contains_ci"):
            return sym.shape_regex({"eq": "exact"}.get(op[:-3], op[:-3]), o, True, within)
        if op == "regex":
            return sym.regex_to_z3(o.ast, within)
        if op == "chars_in":
            codes = o if within is None else o & within
            return z3.Star(sym.charset_regex(codes)) if codes else z3.Re(sval(""))
        raise KeyError(op)

    def predicate(self, test: Test):
        kind, _, name = test.field.partition(":")
        r = self.req
        if kind == "count":
            if test.operand >= sym.MAX_VALUES:
                raise ValueError(f"count test {test.describe()} needs more than {sym.MAX_VALUES} modelled values")
            count = r.headers[name].count
            return count <= test.operand if test.op == "le" else count == test.operand
        if kind in ("source_ip", "destination_ip"):
            from ..semantics.ir import Cidr
            ip = r.source_ip if kind == "source_ip" else r.destination_ip
            return sym._bool(sym._in_cidr(ip, Cidr(*test.operand)))
        if kind == "has_query":
            return r.has_query
        if kind == "has_param":
            return sym._bool(r.param_present(name))
        value = {"method": r.method, "target": r.target, "authority": r.headers["host"].items[0],
                 "header": r.headers[name].items[0] if kind == "header" else None}.get(kind)
        if test.op == "int_in_range":
            return sym._in_range(value, *test.operand)
        if test.op in ("len_le", "one_of") and value is None:
            raise KeyError(test.field)
        if test.op == "len_le":  # lengths as arithmetic: a long Loop in a regex slows Z3 down
            return z3.Length(value) <= test.operand
        if test.op == "one_of":  # equalities, as the reference states methods: no regex to relate them
            return z3.Or(*[value == sval(v) for v in sorted(test.operand)])
        if kind == "path":
            return r.on_path(self.op_regex(test, sym.PATH_CODES))
        regex = self.op_regex(test, None)
        if kind == "query":
            return r.on_query(regex)
        if kind == "param":  # the first value, '' when there is no such parameter
            absent = sym._not(sym._bool(r.param_present(name))) if sym.nullable(regex) else False
            return sym._bool(sym._or(r.param_value_in(name, regex), absent))
        if value is None:
            raise KeyError(test.field)
        return z3.InRe(value, regex)

    def leaf(self, leaf: Leaf) -> DagTerm:
        if leaf.action == "punt":
            return DagTerm(True, SymOutcome.unknown())
        if leaf.action == "forward":
            return DagTerm(False, SymOutcome.forward_to(self.req, leaf.cluster, leaf.path, leaf.authority))
        return DagTerm(False, SymOutcome.reply(leaf.status, leaf.body, self.req, leaf.location))

    def encode(self) -> DagTerm:
        g = self.dag.graph
        terms: dict[int, DagTerm] = {}
        for n in reversed(list(nx.topological_sort(g))):
            item = self.dag.node(n)
            if isinstance(item, Leaf):
                terms[n] = self.leaf(item)
                continue
            yes, no = self.dag.children(n)
            cond = self.predicate(item)
            terms[n] = DagTerm(sym._if(cond, terms[yes].punt, terms[no].punt),
                               sym.select(cond, terms[yes].outcome, terms[no].outcome))
        return terms[self.dag.root]


def dag_meaning(dag: Dag, req: SymRequest) -> DagTerm:
    return DagEncoder(dag, req).encode()
