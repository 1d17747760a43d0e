"""The kernel's own verdict (BPF_PROG_TEST_RUN on the generated C) against the DAG's.

For each configuration, generated requests (proofs/request_strategies.py) are rendered to bytes and
run through the loaded SOCKET_FILTER build of the kernel program. When the parser's contract
(bpf/parser_spec.py) accepts the bytes, the kernel's verdict must be the lowered DAG's verdict for
the same fields, verdict code for verdict code; otherwise it must be one of the parser's punts. A
second campaign damages the bytes the way request smuggling does (bare LF, obs-fold, whitespace
before the colon, NUL, CL+TE, a repeated Content-Length, a second request, HTTP/1.0, absolute form)
and checks the same. Needs root and bpf(); CI runs as root.
"""
from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings

from l7fp.bpf.codegen import PARSER_VERDICTS, generate, lower
from l7fp.bpf.parser_spec import accepted
from l7fp.bpf.testrun import KernelHarness
from l7fp.proofs.request_strategies import field_requests, raw_requests
from l7fp.semantics.fields import from_request
from l7fp.semantics.request import Request
from l7fp.synth.compile import compile_policy
from l7fp.synth.dag import evaluate

from ..semantics.test_symbolic_vs_interpreter import FILES, policy

NAMES = [p.name for p in FILES]
# Every request punts in kernel today: 04 rewrites on every route, 06 leaves escaped slashes to
# Envoy. The verdicts are still compared.
ALL_PUNTED = {"04_actions.yaml", "06_escaped_slashes.yaml"}
SETTINGS = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@cache
def harness(name: str) -> KernelHarness:
    pol = policy(name)
    return KernelHarness(generate(compile_policy(pol), pol.hcm))


def _accepts(h: KernelHarness, raw: bytes) -> bool:
    bounds = h.program.dag.bounds
    return accepted(raw, bounds.window, bounds.max_header_lines, h.program.underscores_in_names)


def _check(h: KernelHarness, raw: bytes, fields, seen) -> None:
    got = h.verdict(raw, fields.source_ip, fields.destination_ip) if fields else h.verdict(raw)
    if fields is not None and _accepts(h, raw):
        want = h.expected(fields)
        assert got == want, f"{raw!r}: kernel {got.kind} ({got.reason}), DAG {want.kind} ({want.reason})"
        seen[got.kind] = seen.get(got.kind, 0) + 1
    elif fields is not None:
        assert got.code < len(PARSER_VERDICTS), f"{raw!r}: outside the parser's contract, kernel said {got}"
        seen["parser punt"] = seen.get("parser punt", 0) + 1
    else:  # outside the field model (the codec answers, or the model does not pin it down): punt
        assert got.kind == "punt", f"{raw!r}: outside the field model, kernel said {got}"
        seen["parser punt"] = seen.get("parser punt", 0) + 1


@pytest.mark.parametrize("name", NAMES)
def test_kernel_verdict_equals_dag_verdict(name):
    h, seen = harness(name), {}

    @SETTINGS
    @given(field_requests(policy(name)))
    def check(fields):
        _check(h, fields.render(), fields, seen)

    check()
    # The campaign must have exercised the kernel's decisions, not only its punts.
    decided = seen.get("forward", 0) + seen.get("reply", 0)
    if name not in ALL_PUNTED:
        assert decided >= 50, f"only {decided} of {sum(seen.values())} requests decided in kernel: {seen}"


@pytest.mark.parametrize("name", NAMES)
def test_damaged_requests_punt_or_agree(name):
    h, seen = harness(name), {}
    pol = policy(name)

    @SETTINGS
    @given(raw_requests(pol, damaged_share=1.0))
    def check(r):
        again = from_request(Request(r.raw, source=(r.source_ip, 40000)), r.destination_ip)
        _check(h, r.raw, again, seen)

    check()
    assert seen.get("parser punt", 0) >= 200, seen


@pytest.mark.parametrize("name", NAMES)
def test_lowering_only_adds_punts(name):
    """The kernel DAG is the proven DAG with some decisions turned into PUNT, never changed."""
    pol = policy(name)
    dag = compile_policy(pol)
    kernel, _ = lower(dag)

    @SETTINGS
    @given(field_requests(pol))
    def check(fields):
        leaf, outcome = evaluate(kernel, fields)
        if leaf.action != "punt":
            assert outcome == evaluate(dag, fields)[1]

    check()


def test_verifier_budget_is_recorded_and_far_from_the_limit():
    h = harness("01_rbac_allow.yaml")
    for stats in h.stats:
        assert 0 < stats.verified_insns < 1_000_000, stats


def test_policy_text_cannot_end_a_c_comment():
    """An operand holding '*/' (a legal path prefix) once closed the comment the C writes before its
    test and broke compilation; it must load and decide like the DAG."""
    from ..proofs.policies import policy as build, rbac, route, url_path

    pol = build(route("prefix", "/"), filters=(rbac("ALLOW", star=url_path("prefix", "/a*/b")),))
    h = KernelHarness(generate(compile_policy(pol), pol.hcm))
    raw = b"GET /a*/b/c HTTP/1.1\r\nhost: x\r\n\r\n"
    fields = from_request(Request(raw))
    assert h.verdict(raw) == h.expected(fields)
    assert h.verdict(raw).kind == "forward"


def test_a_mutated_scanner_is_caught():
    """The harness check can fail: a scanner table that ends a header line at a bare LF (a
    request-smuggling class Envoy reads differently) lets the kernel decide bytes outside the
    parser's contract, and `_check` must reject that; the real table punts them."""
    from l7fp.bpf.codegen import VEND, Cls, S

    pol = policy("envoy.yaml")
    program = generate(compile_policy(pol), pol.hcm)
    # VALUE --LF--> LINE, as HCR --LF--> does, also ending the value there (event 2: VEND)
    program.transitions[S.VALUE << 4 | Cls.LF] = program.transitions[S.HCR << 4 | Cls.LF] | VEND << 9
    mutant = KernelHarness(program)
    raw = b"GET /books/1 HTTP/1.1\r\nhost: bookstore\n\r\n"
    fields = from_request(Request(raw))
    assert fields is not None and not _accepts(mutant, raw)
    with pytest.raises(AssertionError, match="outside the parser's contract"):
        _check(mutant, raw, fields, {})
    _check(harness("envoy.yaml"), raw, fields, {})
