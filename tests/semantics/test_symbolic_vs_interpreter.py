"""The Z3 meaning (semantics/symbolic.py) against the concrete interpreter, on generated requests.

For every test policy (Envoy configs, the bookstore example in YAML and DSL, Istio's golden
AuthorizationPolicies), requests drawn by proofs/request_strategies.py are evaluated both ways:
where the Z3 term is known, interpret() must not raise and must give the same observable outcome;
where interpret() raises Unmodelled, the term must be unknown. This is the check DESIGN.md's proof
hygiene asks for: the reference's Z3 meaning equals the interpreter on concrete requests.

`CONFIGS`, `policy()` and `symbolic()` are shared with tests/synth/test_dag.py.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from l7fp.proofs.request_strategies import field_requests
from l7fp.semantics.fields import FieldRequest, from_request
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.http1 import KNOWN_METHODS, Unmodelled, joined_host, valid_authority
from l7fp.semantics.interpreter import interpret
from l7fp.semantics.ir import Policy
from l7fp.semantics.symbolic import SymbolicPolicy

from ..shared_data import ISTIO_GOLDEN, require

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(ROOT.glob("tests/envoy/configs/*.yaml")) + sorted(ROOT.glob("tests/dsl/*.l7fp")) + [
    ROOT / "examples/bookstore/envoy.yaml", ROOT / "examples/bookstore/bookstore.l7fp"]
ISTIO_REJECTED = {"action-external-HTTP-all-fields", "allow-full-rule"}  # tests/istio/test_golden.py
ISTIO_CASES = sorted(p.name for p in require(ISTIO_GOLDEN).iterdir()
                     if p.is_dir() and p.name not in ISTIO_REJECTED)
CONFIGS = [p.name for p in FILES] + [f"istio/{c}" for c in ISTIO_CASES]
# Istio's golden policies are many and alike: fewer examples each keeps each test file under ~45 s.
EXAMPLES = {name: 40 if name.startswith("istio/") else 100 for name in CONFIGS}


@cache
def policy(name: str) -> Policy:
    if name.startswith("istio/"):
        from l7fp.semantics.frontends.istio import policy_from_documents
        from l7fp.semantics.located_yaml import load_documents

        from ..istio.test_golden import _workload

        case = name.removeprefix("istio/")
        return policy_from_documents(load_documents(str(ISTIO_GOLDEN / case / "in.yaml")), _workload(case, 15006))
    return load_policy([str(next(p for p in FILES if p.name == name))])


@cache
def symbolic(name: str) -> SymbolicPolicy:
    return SymbolicPolicy(policy(name))


def hypothesis_settings(name: str):
    return settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("name", CONFIGS)
def test_symbolic_meaning_equals_interpreter(name):
    pol, sym = policy(name), symbolic(name)
    seen = Counter()

    @hypothesis_settings(name)
    @given(field_requests(pol))
    def check(r):
        expected = sym.evaluate(r)
        seen["known" if expected is not None else "unknown"] += 1
        try:
            got = interpret(pol, r.request(pol.listener[1]))
        except Unmodelled as exc:
            assert expected is None, f"{r}: interpret raises Unmodelled ({exc}), the Z3 meaning gives {expected}"
            return
        if expected is not None:
            assert got.observable() == expected.observable(), f"{r}\n  raw: {r.render()!r}"

    check()
    # Every config here has a Host-routed, strip_port-free connection manager: a plain request with
    # a policy constant in it is known to the encoding, so no config may be all unknown.
    assert seen["known"] > 0, seen


@pytest.mark.parametrize("name", ["01_rbac_allow.yaml", "03_routing.yaml", "envoy.yaml"])
def test_generated_requests_render_and_parse_back(name):
    """The strategy stays inside the field model: the codec model parses each rendering back to the
    same fields (methods and Host values the codec answers itself have no fields to compare)."""
    pol = policy(name)

    @hypothesis_settings(name)
    @given(field_requests(pol))
    def check(r):
        if r.method in KNOWN_METHODS and r.method != "CONNECT" and valid_authority(joined_host(r.values("host"))):
            assert from_request(r.request(pol.listener[1]), pol.listener[0]) == r

    check()


@pytest.mark.parametrize("limit,headers", [
    ({"max_headers_count": 2}, (("host", "a"), ("x-a", "1"), ("x-b", "2"))),  # interpret: 431
    ({"max_request_headers_kb": 1}, (("host", "a"),)),  # interpret: Unmodelled (within 2 KiB of the limit)
], ids=["max_headers_count", "max_request_headers_kb"])
def test_symbolic_meaning_under_header_limits(limit, headers):
    base = policy("01_rbac_allow.yaml")
    pol = replace(base, hcm=replace(base.hcm, **limit))
    r = FieldRequest("GET", "/public/x", None, headers)
    expected = SymbolicPolicy(pol).evaluate(r)
    try:
        got = interpret(pol, r.request(pol.listener[1]))
    except Unmodelled:
        assert expected is None, f"interpret raises Unmodelled, the Z3 meaning gives {expected}"
        return
    assert expected is None or expected.observable() == got.observable()
