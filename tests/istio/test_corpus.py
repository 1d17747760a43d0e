"""The Istio frontend on every AuthorizationPolicy and VirtualService in ../shared/corpus.

Each document is either translated, and then the Envoy bootstrap L7FP emits for it passes real
Envoy 1.40.0's `--mode validate`, or refused with a ConfigError that names the file, a line and a
key. Nothing crashes, nothing is dropped silently.
"""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from l7fp.proofs.envoy_oracle import ENVOY_VERSION, envoy_binary
from l7fp.semantics.errors import ConfigError
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.to_envoy import bootstrap

from ..shared_data import CORPUS, require

DOCS = sorted(p for kind in ("istio-authz", "istio-vs") for p in require(CORPUS / kind).glob("*.yaml"))


@pytest.mark.envoy
@pytest.mark.parametrize("path", DOCS, ids=[f"envoy-{ENVOY_VERSION}/{p.parent.name}/{p.name}" for p in DOCS])
def test_accepted_documents_validate_in_envoy(path, tmp_path):
    try:
        policy = load_policy([str(path)])
    except ConfigError as exc:
        assert exc.origin.file == str(path) and exc.origin.line > 0 and exc.origin.key
        assert re.match(rf"{re.escape(str(path))}:\d+: \S+: ", str(exc)), str(exc)
        return
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(bootstrap(policy)))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"envoy rejects L7FP's translation of {path}: {result.stdout[-800:]}"


def test_most_of_the_corpus_is_accepted():
    accepted = 0
    for path in DOCS:
        try:
            load_policy([str(path)])
            accepted += 1
        except ConfigError:
            pass
    # 80 of 108 were accepted when this test was written; a drop means a frontend regression.
    assert accepted >= 80, f"only {accepted} of {len(DOCS)} Istio documents are accepted"
