"""`l7fp compile` as a command: what it writes, --print-c, --check-load (the kernel's verifier, root)
and its exit codes. The slow-path config it writes is checked by real Envoy's --mode validate."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from l7fp.bpf.codegen import lower
from l7fp.bpf.loader import PROGRAMS, VERIFIER_LIMIT
from l7fp.proofs.envoy_oracle import envoy_binary
from l7fp.semantics.frontends import load_policy
from l7fp.synth.compile import compile_policy

EXAMPLE = Path(__file__).parents[2] / "examples" / "bookstore" / "envoy.yaml"
L7FP = [sys.executable, "-m", "l7fp.cli"]


def run(*args):
    return subprocess.run([*L7FP, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.kernel
@pytest.mark.envoy
def test_compile_writes_every_artifact_and_checks_the_verifier(tmp_path):
    result = run("compile", str(EXAMPLE), "-o", str(tmp_path), "--check-load", "--print-c")
    assert result.returncode == 0, result.stderr
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"dag.graphml", "dag.png", "sk_skb.c", "test_run.c", "envoy.yaml", "report.json"}
    assert result.stdout.strip() == (tmp_path / "sk_skb.c").read_text().strip()  # --print-c: the same C
    assert "int l7fp_decide(struct __sk_buff *skb)" in result.stdout

    graph = nx.read_graphml(tmp_path / "dag.graphml")  # the DAG the kernel runs: after lowering
    kernel_dag, _ = lower(compile_policy(load_policy([str(EXAMPLE)])))
    assert graph.number_of_nodes() == kernel_dag.graph.number_of_nodes()
    assert graph.number_of_edges() == kernel_dag.graph.number_of_edges()
    assert (tmp_path / "dag.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["decided_in_kernel"] and report["punted"]
    programs = report["verifier"]["programs"]
    assert [p["name"] for p in programs] == list(PROGRAMS["sk_skb"])
    assert all(0 < p["verified_insns"] < VERIFIER_LIMIT for p in programs), programs
    assert "kernel verifier" in result.stderr and "l7fp_decide" in result.stderr

    validate = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(tmp_path / "envoy.yaml"),
                               "--disable-hot-restart"], capture_output=True, text=True, timeout=60)
    assert validate.returncode == 0, validate.stdout[-800:]


def test_compile_needs_somewhere_to_write():
    result = run("compile", str(EXAMPLE))
    assert result.returncode == 2 and "--output DIR, --print-c" in result.stderr


def test_compile_of_bad_input_names_the_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("route: {cluster:", "route: {clusterx:", 1))
    assert bad.read_text() != EXAMPLE.read_text()
    out = tmp_path / "out"
    result = run("compile", str(bad), "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert f"{bad}:" in result.stderr and "clusterx" in result.stderr
    assert not out.exists()
