"""The match-action DAG (synth/) against the reference interpreter and against its own Z3 translation.

(a) For every test policy and generated requests (proofs/request_strategies.py), the DAG either
    PUNTs or gives interpret()'s observable outcome (the correctness contract of DESIGN.md, checked
    concretely), and it decides some requests in kernel where the policy is offloadable.
(b) proofs/dag_smt.py's terms, pinned to a concrete request, agree with `synth.dag.evaluate`: the
    proof is about the DAG that `evaluate` (and later the C code) runs.
(c) Structure: hash-consing, and punts / replies the kernel must produce.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
import z3
from hypothesis import given

from l7fp.proofs.dag_smt import DagTerm, dag_meaning
from l7fp.proofs.request_strategies import field_requests
from l7fp.semantics import ir
from l7fp.semantics.fields import FieldRequest
from l7fp.semantics.http1 import Unmodelled
from l7fp.semantics.interpreter import RBAC_DENIED_BODY, interpret
from l7fp.semantics.request import Outcome
from l7fp.semantics.symbolic import SymRequest, concrete_outcome
from l7fp.synth import dag as synth_dag  # not `import Test`: pytest would try to collect it
from l7fp.synth.compile import compile_policy
from l7fp.synth.dag import Leaf, evaluate

from ..semantics.test_symbolic_vs_interpreter import CONFIGS, hypothesis_settings, policy

# Policies whose common requests (a plain GET with a Host) the kernel decides; the generated
# requests must reach such a decision at least once.
MUST_DECIDE = {"01_rbac_allow.yaml", "envoy.yaml", "bookstore.l7fp"}


@cache
def dag(name: str):
    return compile_policy(policy(name))


@cache
def dag_term(name: str) -> tuple[SymRequest, DagTerm]:
    req = SymRequest(dag(name).header_names, tag="dag")
    return req, dag_meaning(dag(name), req)


def _outcome_of(req: SymRequest, term: DagTerm, r: FieldRequest) -> Outcome | None:
    """The DAG's terms with `r` substituted: None for PUNT, else the Outcome they spell."""
    pairs = req.substitution(r)

    def value(t):
        return z3.simplify(z3.substitute(z3.BoolVal(t) if isinstance(t, bool) else t, *pairs))

    punt = value(term.punt)
    assert z3.is_true(punt) or z3.is_false(punt), f"punt flag not constant: {punt}"
    if z3.is_true(punt):
        return None
    decided = concrete_outcome(term.outcome, pairs)
    assert decided is not None, "a DAG leaf that is not PUNT always has an outcome"
    return decided


def request(method: str, target: str, *headers: tuple[str, str], host: str = "bookstore") -> FieldRequest:
    path, sep, query = target.partition("?")
    return FieldRequest(method, path, query if sep else None, (("host", host), *headers))


# ---- (a) the DAG refines the interpreter on generated requests -------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_dag_punts_or_agrees_with_interpreter(name):
    pol, compiled = policy(name), dag(name)
    seen = Counter()

    @hypothesis_settings(name)
    @given(field_requests(pol))
    def check(r):
        leaf, got = evaluate(compiled, r)
        seen["punt" if got is None else "decided"] += 1
        if got is None:
            return
        try:
            expected = interpret(pol, r.request(pol.listener[1]))
        except Unmodelled as exc:
            raise AssertionError(f"{r}: the DAG decides {leaf.describe()}, the interpreter: Unmodelled ({exc})")
        assert got.observable() == expected.observable(), f"{r}: DAG leaf {leaf.describe()}\n  raw: {r.render()!r}"

    check()
    if name in MUST_DECIDE:
        assert seen["decided"] > 0, seen


# ---- (b) the Z3 translation of the DAG is the DAG ---------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_dag_terms_agree_with_evaluate(name):
    pol, compiled = policy(name), dag(name)
    req, term = dag_term(name)

    @hypothesis_settings(name)
    @given(field_requests(pol))
    def check(r):
        _, concrete = evaluate(compiled, r)
        smt = _outcome_of(req, term, r)
        assert (smt is None) == (concrete is None), f"{r}: evaluate gives {concrete}, the terms {smt}"
        if concrete is not None:
            assert smt.observable() == concrete.observable(), r

    check()


# ---- (c) structure -----------------------------------------------------------------------------------
def test_hash_consing():
    for name in ("01_rbac_allow.yaml", "03_routing.yaml", "envoy.yaml"):
        first, second = compile_policy(policy(name)), compile_policy(policy(name))
        assert first.stats() == second.stats()
        keys = []
        for n in first.graph:
            item = first.node(n)
            if isinstance(item, synth_dag.Test):
                yes, no = first.children(n)
                assert yes != no, f"{name}: test {item.describe()} with one child"
                keys.append((item, yes, no))
            else:
                keys.append(item)
        assert len(keys) == len(set(keys)), f"{name}: a node is built twice"


def test_bookstore_yaml_and_dsl_compile_alike():
    assert dag("envoy.yaml").stats() == dag("bookstore.l7fp").stats()


@pytest.mark.parametrize("name,r", [
    ("envoy.yaml", request("POST", "/books/7", ("x-api-key", "writer-key"), ("x-api-key", "writer-key"))),
    ("01_rbac_allow.yaml", request("GET", "/api/v1/x", ("x-token", "secret"), ("x-token", "other"))),
    ("03_routing.yaml", FieldRequest("GET", "/", None, (("host", "a"), ("host", "b")))),  # Host: always read
])
def test_repeated_header_the_policy_reads_punts(name, r):
    leaf, outcome = evaluate(dag(name), r)
    assert outcome is None and leaf.action == "punt", leaf


@pytest.mark.parametrize("target", ["/books/%41", "/books/%2e%2e/admin", "/books/../admin", "/books//1",
                                    "/books/./1", "/books/.."])
def test_escapes_and_dot_segments_punt(target):
    leaf, outcome = evaluate(dag("envoy.yaml"), request("GET", target))
    assert outcome is None, f"{target}: {leaf.describe()}"


@pytest.mark.parametrize("name", ["envoy.yaml", "bookstore.l7fp"])
def test_head_to_a_denied_path_is_403_without_body(name):
    head = request("HEAD", "/admin/users")
    leaf, outcome = evaluate(dag(name), head)
    assert isinstance(leaf, Leaf) and outcome is not None
    assert outcome.observable() == ("local_reply", 403, "", None)
    assert interpret(policy(name), head.request(policy(name).listener[1])).observable() == outcome.observable()
    _, get = evaluate(dag(name), request("GET", "/admin/users"))
    assert get.observable() == ("local_reply", 403, RBAC_DENIED_BODY, None)


def test_bookstore_decides_the_common_requests_in_kernel():
    d = dag("envoy.yaml")
    cases = {request("GET", "/books/1"): ("forward", "books", "/books/1", "bookstore"),
             request("POST", "/books/1", ("x-api-key", "writer-key")): ("forward", "books", "/books/1", "bookstore"),
             request("POST", "/books/1"): ("local_reply", 403, RBAC_DENIED_BODY, None),
             request("GET", "/teapot"): ("local_reply", 418, "I'm a teapot\n", None)}
    for r, expected in cases.items():
        _, outcome = evaluate(d, r)
        assert outcome is not None and outcome.observable() == expected, r


# ---- requests the reference does not model must be punted (proofs/refinement.py's obligation) ----------
_XFF = ir.MatchHeader(ir.HeaderMatch("x-forwarded-for", present=True))  # interpret: Unmodelled when evaluated


def _rbac_only(action: str, permissions: tuple) -> ir.Policy:
    rules = ir.RbacRules(action, (ir.RbacPolicy("p", permissions, (ir.MatchAny(),)),))
    return replace(policy("01_rbac_allow.yaml"), filters=(ir.RbacFilter("rbac", rules),))


def _unmodelled_cases():
    fault = policy("05_fault_log_shadow.yaml")
    return {
        # DagCompiler.ordered() moves matchers that punt after cheap ones; the interpreter evaluates
        # them in policy order and raises on the first.
        "or-reorders-unmodelled-matcher": _rbac_only("ALLOW", (_XFF, ir.MatchAny())),
        # DagCompiler.rbac_filter skips LOG filters; interpret() still evaluates their policies.
        "log-filter-with-unmodelled-matcher": _rbac_only("LOG", (_XFF,)),
        # fault_filter ignores use_remote_address; interpreter._fault_abort raises for header_abort.
        "header-abort-under-use-remote-address": replace(fault, hcm=replace(fault.hcm, use_remote_address=True)),
    }


@pytest.mark.parametrize("case", ["or-reorders-unmodelled-matcher", "log-filter-with-unmodelled-matcher",
                                  "header-abort-under-use-remote-address"])
def test_dag_punts_requests_the_reference_does_not_model(case):
    pol = _unmodelled_cases()[case]
    r = request("GET", "/")
    with pytest.raises(Unmodelled):
        interpret(pol, r.request(pol.listener[1]))
    leaf, outcome = evaluate(compile_policy(pol), r)
    assert outcome is None, f"{case}: the DAG decides {leaf.describe()}"


@pytest.mark.parametrize("fields, punts", [
    ("timeout: 0.3s", "timeout"),
    ("retry_policy: {retry_on: 5xx, num_retries: 2}", "retry_policy"),
    ("request_mirror_policies: [{cluster: app}]", "request_mirror_policies"),
    ("idleTimeout: 5s", "idle_timeout"),
    ("timeout: 0s", "timeout"),  # no timeout: the data plane would apply Envoy's default 15 s
    ("hash_policy: [{header: {header_name: x-user}}]", None),  # one endpoint: no effect on the answer
])
def test_a_route_setting_what_only_envoy_applies_is_a_punt_leaf(tmp_path, fields, punts):
    """docs/bugs/0012: the data plane applies no route timeout but Envoy's implicit one, and no
    retry or mirror, so a route that sets one forwards nothing in kernel; fields without effect on
    the answer keep it in the kernel."""
    from l7fp.semantics.frontends import load_policy

    text = (Path(__file__).parents[1] / "envoy" / "configs" / "02_rbac_deny_normalized.yaml").read_text()
    old = "                route:\n                  cluster: app\n"
    assert old in text
    config = tmp_path / "route.yaml"
    config.write_text(text.replace(old, old + f"                  {fields}\n", 1))
    leaf, outcome = evaluate(compile_policy(load_policy([str(config)])), request("GET", "/api/x", host="a.test"))
    if punts is None:
        assert leaf.action == "forward" and outcome is not None
    else:
        assert leaf.action == "punt" and punts in leaf.reason, leaf.describe()
