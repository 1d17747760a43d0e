"""`l7fp bench` as a command: it runs direct, Envoy and `l7fp run` under wrk and reports figures,
kernel counters and ratios in the contract's JSON shape. Nothing here asserts a speed (benchmarks,
not tests, check the targets); it asserts that every measured request was answered and that the
l7fp hops decided them in kernel without waking their agents per request. Needs root, wrk and envoy; CI runs as root."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

L7FP = [sys.executable, "-m", "l7fp.cli"]


@pytest.mark.kernel
@pytest.mark.envoy
def test_bench_json_shape_and_kernel_counters(tmp_path):
    result = subprocess.run([*L7FP, "bench", "--duration", "1", "--topology", "single,mesh", "--format", "json",
                             "-o", str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    assert report["errors"] == {} and report["envoy_concurrency"] == 1
    for topology, key in (("single", "ratios"), ("mesh", "ratios_mesh")):
        figures = report["results"][topology]
        assert set(figures) == {"direct", "envoy", "l7fp"}
        for mode, r in figures.items():
            assert r["requests"] > 0 and r["non_2xx"] == 0 and 0 < r["p50_us"] <= r["p99_us"], (topology, mode, r)
        # Every request through l7fp was decided in kernel on each hop (a warm-up second included).
        hops = 1 if topology == "single" else 2
        assert figures["l7fp"]["stats"]["fast_path"] >= hops * figures["l7fp"]["requests"], figures["l7fp"]
        assert figures["l7fp"]["stats"]["punted"] == 0
        # The agent wakes for accepts and hang-ups, not per request (docs/dataplane.md).
        assert figures["l7fp"]["stats"]["agent_wakeups"] < figures["l7fp"]["requests"] / 20, figures["l7fp"]
        ratios = report[key]
        assert set(ratios) == {"rps_l7fp_over_envoy", "p50_latency_envoy_over_l7fp", "p50_latency_l7fp_over_direct",
                               "topology"}
        assert all(isinstance(v, float) and v > 0 for k, v in ratios.items() if k != "topology"), ratios


def test_bench_usage_errors():
    result = subprocess.run([*L7FP, "bench", "--topology", "ring"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--topology" in result.stderr
    result = subprocess.run([*L7FP, "bench", "--envoy-concurrency", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--envoy-concurrency" in result.stderr
