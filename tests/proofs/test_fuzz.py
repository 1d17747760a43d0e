"""`l7fp fuzz`: differential campaigns between the reference, the DAG, the kernel program (test-run
harness), real Envoy 1.40.0 and the data plane of `l7fp run` on real sockets.

The real campaigns must find nothing on the foundation's configs (a divergence found this way is
docs/bugs/0004). Campaigns that must find something: a broken DAG compiler (tests/proofs/mutants.py)
run through the kernel oracle, so the kernel's own verdicts disagree with the reference; the
minimal request is saved and its bytes alone reproduce the disagreement; the same broken compiler
behind the real data plane lets denied requests through, and the data-plane oracle sees it. Needs root, bpf() and the
envoy binary; CI runs as root.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l7fp.bpf.codegen import generate
from l7fp.bpf.testrun import KernelHarness
from l7fp.fuzz import run_campaign, save_cases
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.interpreter import interpret_or_reason
from l7fp.semantics.request import Request

from . import mutants

CONFIGS = Path(__file__).parents[1] / "envoy" / "configs"
L7FP = [sys.executable, "-m", "l7fp.cli"]


@pytest.mark.kernel
@pytest.mark.envoy
@pytest.mark.parametrize("config", ["02_rbac_deny_normalized.yaml", "07_connection.yaml"])
def test_all_four_oracles_agree(config):
    campaign = run_campaign(load_policy([str(CONFIGS / config)]), ["reference", "dag", "kernel", "envoy"],
                            max_examples=150, seed=0)
    assert not campaign.divergences, json.dumps(campaign.to_json()["divergences"], indent=2)
    assert campaign.executed == 150
    # Each oracle must have answered something, or agreement means nothing.
    assert all(campaign.decided[name] > 0 for name in campaign.oracles), campaign.decided


# Mutants whose broken decisions the kernel makes itself (the others break rewrites, query
# parameters or redirects, which the kernel punts, so only the DAG oracle can see them).
IN_KERNEL = {"AndAsOr", "DenyAsAllow", "CaseAlwaysSensitive", "BodyOnHead", "RemoteIpIgnoresXff"}


@pytest.mark.kernel
@pytest.mark.parametrize("mutant,policy", [m for m in mutants.MUTANTS if m[0].__name__ in IN_KERNEL],
                         ids=sorted(IN_KERNEL, key=[m.__name__ for m, _ in mutants.MUTANTS].index))
def test_kernel_oracle_finds_a_broken_compiler(mutant, policy, tmp_path):
    campaign = run_campaign(policy, ["reference", "kernel"], max_examples=500, seed=0, compiler=mutant)
    assert len(campaign.divergences) == 1, campaign.to_json()
    [saved] = save_cases(campaign, str(tmp_path))
    raw = Path(saved).read_bytes()
    # From the saved bytes alone: the reference and a fresh load of the mutant's kernel program.
    divergence = campaign.divergences[0]
    request = Request(raw, source=(divergence.request.source_ip, 40000))
    reference, why = interpret_or_reason(policy, request)
    harness = KernelHarness(generate(mutant(policy).compile(), policy.hcm))
    try:
        verdict = harness.verdict(raw, divergence.request.source_ip, divergence.request.destination_ip)
    finally:
        harness.close()
    assert verdict.kind != "punt", verdict
    assert reference is None or divergence.answers["kernel"].outcome.observable() != reference.observable()


def test_fuzz_command_reports_json(tmp_path):
    result = subprocess.run([*L7FP, "fuzz", str(CONFIGS / "01_rbac_allow.yaml"), "--oracle", "reference",
                             "--oracle", "dag", "--max-examples", "40", "--seed", "7", "--format", "json",
                             "--save", str(tmp_path / "cases")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["executed"] == 40 and report["oracles"] == ["reference", "dag"]
    assert report["divergences"] == [] and report["saved"] == []
    assert report["decided"]["reference"] > 0
    assert not (tmp_path / "cases").exists()


def test_fuzz_command_refuses_a_single_oracle():
    result = subprocess.run([*L7FP, "fuzz", str(CONFIGS / "01_rbac_allow.yaml"), "--oracle", "dag"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "two or more" in result.stderr


@pytest.mark.kernel
@pytest.mark.envoy
def test_dataplane_oracle_agrees_with_envoy():
    """`l7fp run`'s data plane on real sockets (four clusters, forwards, 404s, punts to its Envoy)
    answers every generated request as real Envoy does."""
    campaign = run_campaign(load_policy([str(CONFIGS / "03_routing.yaml")]), ["reference", "envoy", "dataplane"],
                            max_examples=150, seed=0)
    assert not campaign.divergences, json.dumps(campaign.to_json()["divergences"], indent=2)
    assert all(campaign.decided[name] > 0 for name in campaign.oracles), campaign.decided


@pytest.mark.kernel
@pytest.mark.envoy
def test_dataplane_oracle_finds_a_broken_compiler():
    """The same kernel program built from a DAG compiler that swaps DENY for ALLOW: requests the
    policy denies reach the echo backend through the data plane, and the campaign says so."""
    mutant, policy = next(m for m in mutants.MUTANTS if m[0].__name__ == "DenyAsAllow")
    campaign = run_campaign(policy, ["reference", "dataplane"], max_examples=300, seed=0, compiler=mutant)
    assert len(campaign.divergences) == 1, campaign.to_json()
    answers = campaign.divergences[0].answers
    assert answers["dataplane"].outcome.observable() != answers["reference"].outcome.observable()
