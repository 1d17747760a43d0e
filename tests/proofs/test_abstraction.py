"""The lazy abstraction (proofs/abstraction.py) may only ever say "unsat" where Z3 on the whole
formula says unsat too: checked on hand-written cases and on generated formulas over the atoms the
proofs use (regex memberships, lengths, counts, equalities of if-then-else trees), built as
temporary terms so that Z3 frees and reuses their ids between queries, as it does in a proof."""
from __future__ import annotations

import time

import pytest
import z3
from hypothesis import given, settings, strategies as st

from l7fp.proofs.abstraction import Inconclusive, LazyRefuter, _interval_clauses
from l7fp.semantics.symbolic import sval

X, Y = z3.String("t.x"), z3.String("t.y")
N = z3.Int("t.n")
DOMAIN = [N >= 0, N <= 5]


def prefix(text: str, var=X):
    return z3.InRe(var, z3.Concat(z3.Re(sval(text)), z3.Star(z3.Range(chr(0), chr(255)))))


def refuted(facts: list, refuter: LazyRefuter | None = None) -> bool:
    try:
        (refuter or LazyRefuter(DOMAIN)).refute(facts, time.perf_counter() + 30, 0)
        return True
    except Inconclusive:
        return False


def z3_unsat(facts: list) -> bool:
    solver = z3.Solver()
    solver.add(*DOMAIN, *facts)
    answer = solver.check()
    assert answer != z3.unknown
    return answer == z3.unsat


def test_theory_conflicts_are_learnt():
    assert refuted([prefix("/a"), prefix("/b")])
    assert refuted([z3.Or(prefix("/a"), X == sval("/x")), z3.Not(prefix("/"))])
    assert not refuted([z3.Or(prefix("/a"), X == sval("x")), z3.Not(prefix("/"))])
    assert refuted([N > 5])  # the domain holds


def test_satisfiable_facts_are_never_refuted():
    assert not refuted([prefix("/a"), z3.Length(X) <= 5])
    assert not refuted([z3.Or(prefix("/a"), prefix("/b")), z3.Not(prefix("/a"))])


def test_equal_outcome_fields_through_if_then_else():
    c, d = prefix("/c"), prefix("/d")
    a = z3.If(c, sval("one"), z3.If(d, sval("two"), sval("three")))
    b = z3.If(d, sval("two"), z3.If(c, sval("one"), sval("three")))
    assert refuted([a != b])  # the same function written in another order
    assert not refuted([a != z3.If(c, sval("one"), sval("three"))])  # differs where d holds
    assert refuted([a == sval("four")])
    assert not refuted([a == z3.If(d, sval("two"), X)])  # X may be anything


@pytest.mark.parametrize("k", range(-2, 3))
def test_interval_clauses_hold_for_every_integer(k):
    intervals = [(k, k), (None, k), (k, None), (0, 0), (None, 1), (-1, None), (None, -3), (3, None)]
    for a in intervals:
        for b in intervals:
            for clause in _interval_clauses(a, b):
                for x in range(-6, 7):
                    holds = {True: _inside(x, a), False: _inside(x, b)}
                    assert any(holds[mine] == positive for mine, positive in clause), (a, b, clause, x)


def _inside(x: int, interval: tuple) -> bool:
    lo, hi = interval
    return (lo is None or lo <= x) and (hi is None or x <= hi)


# ---- generated formulas ----------------------------------------------------------------------------
ATOMS = [lambda: prefix("/a"), lambda: prefix("/ab"), lambda: prefix("/b"), lambda: z3.Length(X) <= 2,
         lambda: X == sval("/a"), lambda: X == sval("/b"), lambda: N == 1, lambda: N >= 2, lambda: N <= 1,
         lambda: prefix("/a", Y), lambda: Y == X]


def formulas(depth: int):
    atom = st.sampled_from(ATOMS).map(lambda make: make())
    if depth == 0:
        return atom
    sub = formulas(depth - 1)
    field = st.tuples(sub, st.sampled_from(["p", "q", "r"]), st.sampled_from(["p", "q", "r"])).map(
        lambda t: z3.If(t[0], sval(t[1]), sval(t[2])))
    return st.one_of(atom, sub.map(z3.Not), st.lists(sub, min_size=2, max_size=3).map(z3.And),
                     st.lists(sub, min_size=2, max_size=3).map(z3.Or), st.tuples(sub, sub, sub).map(lambda t: z3.If(*t)),
                     st.tuples(field, field).map(lambda t: t[0] == t[1]))


SHARED = LazyRefuter(DOMAIN)  # one refuter across examples: its lemmas and circuit outlive the terms


@settings(max_examples=150, deadline=None)
@given(st.lists(formulas(2), min_size=1, max_size=3))
def test_an_unsat_answer_is_z3s_answer(facts):
    if refuted(facts, SHARED):
        assert z3_unsat(facts), facts
