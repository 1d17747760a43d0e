"""`l7fp diff` on a corpus of policy pairs (tests/proofs/diff_corpus): "equivalent though different"
pairs must be proven equivalent; real changes must yield witnesses, and each witness, replayed as raw
bytes through real Envoy running the old and the new policy, must get different answers."""
from pathlib import Path

import pytest

from l7fp.proofs.diff import diff
from l7fp.proofs.envoy_oracle import ENVOY_VERSION, EnvoyOracle, free_port
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.to_envoy import bootstrap


CORPUS = Path(__file__).parent / "diff_corpus"
EXAMPLE = Path(__file__).parents[2] / "examples" / "bookstore"


def pairs(kind: str):
    return sorted(p.name for p in (CORPUS / kind).iterdir())


def load(kind: str, name: str, which: str):
    return load_policy([str(CORPUS / kind / name / f"{which}.l7fp")])


def test_corpus_size():
    assert len(pairs("equivalent")) >= 5 and len(pairs("different")) >= 5


@pytest.mark.parametrize("name", pairs("equivalent"))
def test_equivalent_pairs_are_proven_equivalent(name):
    report = diff(load("equivalent", name, "old"), load("equivalent", name, "new"))
    assert report.verdict == "equivalent", report.to_json()


def test_envoy_yaml_and_dsl_versions_of_the_bookstore_are_equivalent():
    """Across frontends: the hand-written Envoy bootstrap and the DSL file mean the same."""
    report = diff(load_policy([str(EXAMPLE / "envoy.yaml")]), load_policy([str(EXAMPLE / "bookstore.l7fp")]))
    assert report.verdict == "equivalent", report.to_json()


@pytest.mark.envoy
@pytest.mark.parametrize("name", pairs("different"), ids=[f"envoy-{ENVOY_VERSION}/{n}" for n in pairs("different")])
def test_witnesses_differ_in_real_envoy(name):
    old, new = load("different", name, "old"), load("different", name, "new")
    report = diff(old, new)
    assert report.verdict == "different", report.to_json()
    assert report.witnesses
    with EnvoyOracle(bootstrap(old, listener=("127.0.0.1", free_port()))) as envoy_old, \
            EnvoyOracle(bootstrap(new, listener=("127.0.0.1", free_port()))) as envoy_new:
        for witness in report.witnesses:
            source = witness.source[0]
            assert source.startswith("127."), "witnesses are asked for from a loopback address"
            before, after = envoy_old.outcome(witness.raw, source), envoy_new.outcome(witness.raw, source)
            assert before.observable() == witness.old.observable(), witness.raw
            assert after.observable() == witness.new.observable(), witness.raw
            assert before.observable() != after.observable(), witness.raw
