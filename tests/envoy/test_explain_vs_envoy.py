"""`l7fp explain`'s interpreter against the real Envoy 1.40.0 binary, request by request.

For every config in configs/ and every request in cases.py, the test starts real Envoy on the exact
bootstrap file, sends the exact bytes, and asserts that `interpret()` predicts what Envoy did: the
local reply (status, body, Location) or the forwarded cluster, upstream request-target and authority.
Nothing expected is written down; Envoy answers. Requests the model declares unmodelled fail the
test: every request here is one the model must cover.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from l7fp.proofs.envoy_oracle import ENVOY_VERSION, EnvoyOracle
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.interpreter import interpret
from l7fp.semantics.request import Request

from .cases import SPECIFIC, cases_for

CONFIG_DIR = Path(__file__).parent / "configs"
PARAMS = [pytest.param(config, name, raw, source, id=f"envoy-{ENVOY_VERSION}/{config}/{name}")
          for config in sorted(SPECIFIC) for name, raw, source in cases_for(config)]

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def envoys():
    running: dict[str, EnvoyOracle] = {}

    def get(config: str) -> EnvoyOracle:
        if config not in running:
            running[config] = EnvoyOracle(CONFIG_DIR / config)
        return running[config]

    yield get
    for oracle in running.values():
        oracle.close()


def test_case_count_meets_the_bar():
    assert len(SPECIFIC) >= 6
    assert len(PARAMS) >= 200


@pytest.mark.parametrize("config,name,raw,source", PARAMS)
def test_interpreter_predicts_envoy(envoys, config, name, raw, source):
    policy = load_policy([str(CONFIG_DIR / config)])
    oracle = envoys(config)
    src = source or "127.0.0.1"
    predicted = interpret(policy, Request(raw, source=(src, 40000)))
    observed = oracle.outcome(raw, source_ip=source)
    assert predicted.observable() == observed.observable(), (
        f"{name}: interpreter {predicted} but Envoy {ENVOY_VERSION} {observed}")
