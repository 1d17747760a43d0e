"""`l7fp verify` / `l7fp-verify` and `l7fp diff`: formats and exit codes (DESIGN.md CLI contract)."""
import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

from l7fp.cli import main
from l7fp.semantics.fields import from_request
from l7fp.semantics.request import Request

ROOT = Path(__file__).parents[2]
CORPUS = Path(__file__).parent / "diff_corpus"
BOOKSTORE = str(ROOT / "examples/bookstore/bookstore.l7fp")


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_verify_json_proven(capsys):
    code, out = run(capsys, "verify", BOOKSTORE, "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["verdict"] == "proven"
    assert {o["name"] for o in data["obligations"]} == {"bounds", "refinement", "never_more_permissive"}
    assert data["bounds"]["max_target"] > 0 and data["counterexamples"] == []
    assert data["solver_seconds"] >= 0


def test_verify_sarif_and_junit(capsys, tmp_path):
    code, out = run(capsys, "verify", BOOKSTORE, "--format", "sarif")
    sarif = json.loads(out)
    assert code == 0 and sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] == []
    target = tmp_path / "report.xml"
    code, _ = run(capsys, "verify", BOOKSTORE, "--format", "junit", "-o", str(target))
    suite = ET.parse(target).getroot().find("testsuite")
    assert code == 0 and suite.get("failures") == "0" and int(suite.get("tests")) == 3


def test_verify_bad_input_is_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.l7fp"
    bad.write_text("listener 127.0.0.1:1\nallow when\n")
    code = main(["verify", str(bad)])
    assert code == 2 and "bad.l7fp:2" in capsys.readouterr().err


def test_verify_timeout_is_exit_3(capsys):
    # A budget too small for any query: the solver gives up, and a gate must see that as a failure.
    code, out = run(capsys, "verify", BOOKSTORE, "--format", "json", "--timeout", "0.001")
    assert code == 3 and json.loads(out)["verdict"] == "unknown"


def test_l7fp_verify_script():
    result = subprocess.run([str(Path(sys.executable).parent / "l7fp-verify"), BOOKSTORE, "--format", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and json.loads(result.stdout)["verdict"] == "proven"


def test_diff_equivalent_and_different(capsys):
    same = CORPUS / "equivalent" / "or-rules-vs-regex"
    code, out = run(capsys, "diff", str(same / "old.l7fp"), str(same / "new.l7fp"), "--format", "json")
    assert code == 0 and json.loads(out)["equivalent"] is True
    changed = CORPUS / "different" / "key-rotated"
    code, out = run(capsys, "diff", str(changed / "old.l7fp"), str(changed / "new.l7fp"), "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["equivalent"] is False
    witness = data["witnesses"][0]
    assert from_request(Request(witness["raw"].encode("latin-1"))) is not None, "the witness is a valid request"
    assert witness["old"] != witness["new"]
    code, out = run(capsys, "diff", str(changed / "old.l7fp"), str(changed / "new.l7fp"), "--format", "sarif")
    assert code == 1 and json.loads(out)["runs"][0]["results"]
