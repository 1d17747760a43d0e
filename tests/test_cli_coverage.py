"""`l7fp coverage DIR`: counts per the CLI contract, refusals with file, line and key, and the
reasons for punting taken from what each policy holds."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .shared_data import CORPUS, require

CONFIGS = Path(__file__).parent / "envoy" / "configs"
L7FP = [sys.executable, "-m", "l7fp.cli"]


def run(*args):
    return subprocess.run([*L7FP, *args], capture_output=True, text=True, timeout=600)


def test_coverage_json_over_a_mixed_folder(tmp_path):
    for name in ("01_rbac_allow.yaml", "03_routing.yaml", "04_actions.yaml"):
        shutil.copy(CONFIGS / name, tmp_path / name)
    cilium = sorted(require(CORPUS / "cilium-l7").glob("*.yaml"))[0]
    shutil.copy(cilium, tmp_path / "nested-cilium.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.yaml").write_text("static_resources:\n  listeners: [\n")
    (tmp_path / "notes.txt").write_text("not a policy")

    result = run("coverage", str(tmp_path), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["documents"], report["parsed"], report["proven"]) == (5, 3, 3), report
    assert {Path(e["file"]).name for e in report["errors"]} == {"nested-cilium.yaml", "broken.yaml"}
    assert all(e["line"] > 0 and e["key"] and e["message"] for e in report["errors"]), report["errors"]

    docs = {Path(d["file"]).name: d for d in report["per_document"]}
    # 01 has nothing the kernel cannot do (its regex runs as a DFA); 03 matches query parameters
    # and 04 rewrites, which the kernel leaves to Envoy.
    assert "query_parameters" in (CONFIGS / "03_routing.yaml").read_text()
    assert docs["01_rbac_allow.yaml"]["fast_path_full"] and not docs["01_rbac_allow.yaml"]["punts"]
    assert docs["03_routing.yaml"]["fast_path"] and not docs["03_routing.yaml"]["fast_path_full"]
    assert "kernel: query parameter matcher" in docs["03_routing.yaml"]["punts"]
    assert any("rewrite" in reason for reason in docs["04_actions.yaml"]["punts"])
    assert report["fast_path"] == sum(d["fast_path"] for d in docs.values() if d["parsed"])
    assert sum(report["reasons"].values()) == sum(len(d["punts"]) for d in docs.values())


def test_coverage_text_and_usage(tmp_path):
    shutil.copy(CONFIGS / "02_rbac_deny_normalized.yaml", tmp_path / "p.yaml")
    result = run("coverage", str(tmp_path), "--no-prove")
    assert result.returncode == 0, result.stderr
    assert "l7fp coverage of" in result.stdout and "fast path" in result.stdout
    missing = run("coverage", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a directory" in missing.stderr
