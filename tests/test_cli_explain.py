"""`l7fp explain` as a command: JSON shape per the CLI contract, exit codes 0 and 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from l7fp.semantics.frontends import load_policy
from l7fp.semantics.interpreter import interpret
from l7fp.semantics.request import Request

EXAMPLE = Path(__file__).parents[1] / "examples" / "bookstore"
L7FP = [sys.executable, "-m", "l7fp.cli"]


def run(*args):
    return subprocess.run([*L7FP, *args], capture_output=True, text=True, timeout=60)


def test_explain_json_matches_the_interpreter():
    requests = sorted(str(p) for p in (EXAMPLE / "requests").glob("*.http"))
    args = ["explain", str(EXAMPLE / "envoy.yaml"), "--json"]
    for r in requests:
        args += ["--request", r]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    policy = load_policy([str(EXAMPLE / "envoy.yaml")])
    assert len(entries) == len(requests)
    for entry, path in zip(entries, requests):
        for key in ("action", "cluster", "upstream_path", "status", "body", "location", "rule", "fast_path"):
            assert key in entry
        expected = interpret(policy, Request.from_file(path))
        assert entry["action"] == expected.action
        assert (entry["cluster"], entry["upstream_path"], entry["status"], entry["body"]) == (
            expected.cluster, expected.upstream_path, expected.status, expected.body)
    assert {e["action"] for e in entries} == {"forward", "local_reply"}


def test_explain_bad_config_exits_2_with_location(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources:\n  listeners: []\n  secretz: 1\n")
    result = run("explain", str(bad), "--request", str(next((EXAMPLE / "requests").glob("*.http"))))
    assert result.returncode == 2
    assert f"{bad}:3:" in result.stderr and "secretz" in result.stderr


def test_explain_unmodelled_request_exits_2(tmp_path):
    req = tmp_path / "incomplete.http"
    req.write_bytes(b"GET /books HTTP/1.1\r\nHost: a\r\n")  # header block never ends
    result = run("explain", str(EXAMPLE / "envoy.yaml"), "--request", str(req), "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)[0]["action"] == "unmodelled"


def test_bad_usage_is_refused_before_any_work(tmp_path):
    """Exit 2 with a message, never a traceback: output paths that cannot be written, budgets that
    are not above zero, addresses that are not IP:PORT."""
    config = str(EXAMPLE / "envoy.yaml")
    cases = [
        (("verify", config, "-o", str(tmp_path / "missing" / "x.json")), "does not exist"),
        (("compile", config, "-o", config), "exists and is not a directory"),
        (("verify", config, "--emit-smt", config), "exists and is not a directory"),
        (("diff", config, config, "--timeout", "0"), "must be above 0"),
        (("verify", config, "--timeout", "-1"), "must be above 0"),
        (("explain", config, "--request", config, "--source", "1.2.3.4:99999"), "port 0..65535"),
        (("explain", config, "--request", config, "--source", "nohost:80"), "is not an IP address"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)


def test_a_gate_report_names_the_bad_input(tmp_path):
    """verify/diff with --format sarif or junit and bad input: exit 2, and the report file exists
    and points at the file and line (a CI job uploads it whatever the exit code)."""
    import xml.etree.ElementTree as ET

    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLE / "envoy.yaml").read_text().replace("stat_prefix:", "stat_prefixx:", 1))
    line = next(i for i, l in enumerate(bad.read_text().splitlines(), 1) if "stat_prefixx" in l)
    sarif, junit = tmp_path / "v.sarif", tmp_path / "d.xml"
    assert run("verify", str(bad), "--format", "sarif", "-o", str(sarif)).returncode == 2
    result = json.loads(sarif.read_text())["runs"][0]["results"][0]
    assert result["ruleId"] == "l7fp/input" and "stat_prefixx" in result["message"]["text"]
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == str(bad) and location["region"]["startLine"] == line
    assert run("diff", str(EXAMPLE / "envoy.yaml"), str(bad), "--format", "junit", "-o", str(junit)).returncode == 2
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and f"{bad}:{line}" in failure.get("message")


def test_gates_refuse_what_envoy_refuses(tmp_path):
    """A field the frontends leave to Envoy (a cluster's), misspelt: `verify` (and every gate) runs
    envoy --mode validate (Envoy 1.40.0) and refuses the file at that line, instead of proving a
    policy that would not deploy."""
    text = (EXAMPLE / "envoy.yaml").read_text()
    for old, new, key in (("connect_timeout:", "conect_timeout:", "clusters[0].conect_timeout"),
                          ("type: STATIC", "type: STATICX", "")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text.replace(old, new, 1))
        line = next(i for i, l in enumerate(bad.read_text().splitlines(), 1) if new in l)
        result = run("verify", str(bad), "--timeout", "30")
        assert result.returncode == 2, result.stderr
        assert f"{bad}:{line}: " in result.stderr and key in result.stderr, result.stderr
        assert "refuses this config" in result.stderr
