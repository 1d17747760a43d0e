"""Every DAG compilation rule has a mutant (mutants.py) the proof must reject with a counterexample
that the concrete interpreter and the concrete DAG confirm; the unbroken compiler proves the same
policy."""
import pytest

from l7fp.proofs.refinement import Budget, verify
from l7fp.semantics.fields import from_request
from l7fp.semantics.interpreter import interpret_or_reason
from l7fp.semantics.request import Request
from l7fp.synth.dag import evaluate

from .mutants import MUTANTS

BUDGET = Budget(timeout_s=300)


@pytest.mark.parametrize("mutant,policy", MUTANTS, ids=[m.__name__ for m, _ in MUTANTS])
def test_mutant_is_rejected_with_a_confirmed_counterexample(mutant, policy):
    report = verify(policy, BUDGET, compiler=mutant)
    assert report.verdict == "counterexample", report.to_json()
    # A bounds counterexample only shows the DAG decides beyond its bounds; ask for a request on
    # which the two answers differ.
    witnesses = [c for c in report.counterexamples if c.obligation != "bounds"]
    assert witnesses, report.to_json()
    witness = witnesses[0]
    assert witness.confirmed
    # Confirm it here again, from the raw bytes alone.
    request = witness.raw, witness.source
    replayed = Request(witness.raw, source=witness.source, destination=(policy.listener[0], policy.listener[1]))
    _, kernel = evaluate(mutant(policy).compile(), from_request(replayed))
    assert kernel is not None, "the mutant DAG decides the counterexample in kernel"
    envoy, _ = interpret_or_reason(policy, replayed)
    assert (envoy.observable() if envoy else None) != kernel.observable(), request


@pytest.mark.parametrize("mutant,policy", MUTANTS, ids=[m.__name__ for m, _ in MUTANTS])
def test_the_correct_compiler_proves_the_same_policy(mutant, policy):
    report = verify(policy, BUDGET)
    assert report.verdict == "proven", report.to_json()
