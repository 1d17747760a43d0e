"""`l7fp run` as a command: proves, loads, prints its ready line, serves a real request through the
kernel to a real backend, reports it on the admin endpoint, and on SIGINT detaches and exits 0.
Needs root, bpf() and the envoy binary (the slow path); CI runs as root."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest

from l7fp.bench import policy_config
from l7fp.proofs.envoy_oracle import EchoBackend, free_port, send_raw

L7FP = [sys.executable, "-m", "l7fp.cli"]


@pytest.mark.kernel
@pytest.mark.envoy
def test_run_serves_reports_and_stops_cleanly(tmp_path):
    backend = EchoBackend("backend")
    port, admin = free_port(), free_port()
    config = tmp_path / "policy.yaml"
    config.write_text(policy_config(port, backend.port))
    proc = subprocess.Popen([*L7FP, "run", str(config), "--admin", f"127.0.0.1:{admin}", "--connect-timeout", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("l7fp run: ready on 127.0.0.1:"), (ready, proc.stderr.read() if proc.poll() else "")
        allowed = send_raw(("127.0.0.1", port), b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
        denied = send_raw(("127.0.0.1", port), b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (allowed.status, denied.status) == (200, 403)
        assert b'"path": "/api/x"' in allowed.body
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?format=json", timeout=5) as resp:
            stats = json.load(resp)
        assert (stats["forwarded_in_kernel"], stats["local_replies_in_kernel"], stats["punted"]) == (1, 1, 0), stats
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        backend.close()


def test_run_usage_errors():
    result = subprocess.run([*L7FP, "run", "examples/bookstore/envoy.yaml", "--connect-timeout", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--connect-timeout" in result.stderr
