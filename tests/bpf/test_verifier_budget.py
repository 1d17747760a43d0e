"""The verifier budget: every policy of ../shared/corpus that L7FP accepts compiles to programs the
kernel's verifier takes, each under its 1M-instruction limit, and a program over the limit is refused
with one short message that names it.

Each accepted document is compiled to the data plane's sk_skb entry and passed through the verifier
(loader.check_load, in a forked child); documents whose C differs only in comments share one load. The instructions processed are the kernel's own count
(bpf_prog_info.verified_insns); the per-document table is printed with -s. Needs root and bpf(); CI
runs as root.
"""
from __future__ import annotations

import re
from functools import cache

import pytest

from l7fp.bpf.codegen import KernelProgram, generate
from l7fp.bpf.loader import PROGRAMS, VERIFIER_LIMIT, KernelLoadError, check_load
from l7fp.semantics.errors import ConfigError
from l7fp.semantics.frontends import load_policy
from l7fp.synth.compile import compile_policy

from ..shared_data import CORPUS, require

pytestmark = pytest.mark.kernel

# Kinds whose documents the frontends read (cilium-l7 and other are refused as a whole kind).
KINDS = ("envoy-rbac", "envoy-route", "istio-authz", "istio-vs")
DOCS = sorted(p for kind in KINDS for p in require(CORPUS / kind).glob("*.yaml"))


@cache
def _accepted() -> dict[str, object]:
    programs = {}
    for path in DOCS:
        try:
            policy = load_policy([str(path)])
        except ConfigError:
            continue  # refusals are tested (file, line, key) in tests/istio/test_corpus.py
        programs[f"{path.parent.name}/{path.name}"] = (policy, path)
    return programs


@cache
def _distinct_programs() -> dict[str, tuple[KernelProgram, list[str]]]:
    """The corpus's kernel programs, one per distinct C text once comments are set aside (comments
    name the rules, and do not change a single instruction): about half the corpus shares one."""
    by_text: dict[str, tuple[KernelProgram, list[str]]] = {}
    for name, (policy, _) in _accepted().items():
        program = generate(compile_policy(policy), policy.hcm)
        text = re.sub(r"/\*.*?\*/", "", program.source("sk_skb"), flags=re.S)
        by_text.setdefault(text, (program, []))[1].append(name)
    return {names[0]: (program, names) for program, names in by_text.values()}


def test_most_of_the_corpus_reaches_the_verifier():
    # 82 of 116 documents were accepted when this was written; fewer means the budget test below
    # silently covers less.
    assert len(_accepted()) >= 80, f"only {len(_accepted())} of {len(DOCS)} corpus documents are accepted"
    assert sum(len(names) for _, names in _distinct_programs().values()) == len(_accepted())


@pytest.mark.parametrize("name", sorted(_distinct_programs()))
def test_corpus_policy_fits_the_verifier_budget(name):
    program, names = _distinct_programs()[name]
    stats = check_load(program, "sk_skb", name)
    assert [s.name for s in stats] == list(PROGRAMS["sk_skb"])
    for s in stats:
        assert 0 < s.verified_insns < VERIFIER_LIMIT, s
        assert s.xlated_insns > 0, s
    print(f"{', '.join(names)}: " + ", ".join(f"{s.name} {s.verified_insns}" for s in stats))


class _OverBudget:
    """A real program whose decision program spins in a bounded loop the verifier must walk
    iteration by iteration, far past 1M instructions."""

    def __init__(self, program):
        self.program = program

    def source(self, entry: str) -> str:
        spin = "{\n    volatile u32 spin = 0;\n    for (u32 i = 0; i < 4000000; i++)\n        spin += i;\n"
        text = self.program.source(entry)
        head = "int l7fp_decide(struct __sk_buff *skb)\n{\n"
        assert head in text
        return text.replace(head, "int l7fp_decide(struct __sk_buff *skb)\n" + spin, 1)


def test_a_program_over_budget_is_refused_in_one_short_message():
    policy, path = next(iter(_accepted().values()))
    program = generate(compile_policy(policy), policy.hcm)
    with pytest.raises(KernelLoadError) as refused:
        check_load(_OverBudget(program), "sk_skb", str(path))
    message = str(refused.value)
    assert "l7fp_decide" in message and "verifier" in message, message
    assert "processed" in message or "too large" in message, message
    assert len(message) < 600 and message.count("\n") == 0, message
