"""The DSL frontend: the bundled bookstore policy written in the DSL runs in real Envoy (through the
IR -> Envoy emitter) and answers every bundled request as the interpreter predicts and as the
hand-written Envoy config does; syntax errors name file, line and column."""
from __future__ import annotations

from pathlib import Path

import pytest

from l7fp.proofs.envoy_oracle import EnvoyOracle
from l7fp.semantics.errors import ConfigError
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.interpreter import interpret
from l7fp.semantics.request import Request
from l7fp.semantics.to_envoy import bootstrap

EXAMPLE = Path(__file__).parents[2] / "examples" / "bookstore"
REQUESTS = sorted((EXAMPLE / "requests").glob("*.http"))


@pytest.mark.envoy
def test_dsl_policy_runs_in_envoy_as_interpreted():
    dsl = load_policy([str(EXAMPLE / "bookstore.l7fp")])
    envoy_yaml = load_policy([str(EXAMPLE / "envoy.yaml")])
    extra = [b"GET /admin/x HTTP/1.1\r\nHost: b\r\n\r\n", b"DELETE /books/1 HTTP/1.1\r\nHost: b\r\n\r\n",
             b"POST /books/12 HTTP/1.1\r\nHost: b\r\nx-api-key: writer-key\r\nContent-Length: 0\r\n\r\n"]
    raws = [p.read_bytes() for p in REQUESTS] + extra
    with EnvoyOracle(bootstrap(dsl, listener=("127.0.0.1", 18181))) as envoy:
        for raw in raws:
            observed = envoy.outcome(raw).observable()
            assert interpret(dsl, Request(raw)).observable() == observed, raw
            assert interpret(envoy_yaml, Request(raw)).observable() == observed, raw


@pytest.mark.parametrize("text,line,fragment", [
    ('allow "x" when path prefix "/a"\nallow "y" when path startswith "/b"\n', 2, "syntax error"),
    ('route prefix "/" -> nowhere\n', 1, "undeclared cluster"),
    ('deny "r" when path regex "a(?=b)"\n', 1, "regex"),
    ('allow "m" when source ip in 10.0.0.0/8 and port == 80\n', 1, "cannot mix"),
])
def test_dsl_errors_name_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.l7fp"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy([str(path)])
    assert err.value.origin.file == str(path)
    assert err.value.origin.line == line
    assert fragment in str(err.value)
