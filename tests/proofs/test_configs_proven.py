"""Every config of the foundation's Envoy test set (tests/envoy/configs) and the bundled example is
proven: the kernel DAG punts or decides as Envoy, never more permissively, and punts everything
beyond its bounds. Proof time per config is recorded (junit property `proof_seconds`, and printed
with -s); `l7fp verify` reports it too."""
from pathlib import Path

import pytest

from l7fp.proofs.refinement import Budget, verify
from l7fp.semantics.frontends import load_policy

ROOT = Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "tests" / "envoy" / "configs").glob("*.yaml")) + [ROOT / "examples/bookstore/envoy.yaml"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_is_proven(config, record_property):
    report = verify(load_policy([str(config)]), Budget(timeout_s=300))
    seconds = report.compile_seconds + report.encode_seconds + report.solver_seconds
    record_property("proof_seconds", round(seconds, 3))
    print(f"{config.name}: {report.verdict} in {seconds:.2f} s, DAG {report.dag.stats()}")
    assert report.verdict == "proven", report.to_json()
    decided = [leaf for leaf in report.dag.leaves() if leaf.action != "punt"]
    assert decided, "the kernel decides some requests itself: a DAG that punts everything proves nothing"
