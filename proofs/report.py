"""Reports for `l7fp verify` and `l7fp diff`: text (rich), json, sarif (2.1.0) and junit.

Used by l7fp/cli.py only; the JSON shapes are the CLI contract in DESIGN.md (verify: `verdict`,
per-obligation results, `bounds`, solver time, `counterexamples` with `raw`; diff: `equivalent`,
`witnesses` with `raw`, `old`, `new`). SARIF results point at the policy file and line that decided
the counterexample, so code-review tools annotate the policy itself.
"""
from __future__ import annotations

import json
from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from .. import ENVOY_VERSION, __version__
from .diff import DiffReport
from .refinement import OBLIGATIONS, ProofReport

FORMATS = ("text", "json", "sarif", "junit")
_SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _outcome_text(outcome: dict | None) -> str:
    if not outcome:
        return "-"
    if "unmodelled" in outcome:
        return f"not modelled ({outcome['unmodelled']})"
    if "punt" in outcome:
        return f"PUNT ({outcome['punt']})"
    if outcome.get("action") == "forward":
        return f"forward to {outcome['cluster']} {outcome['upstream_path']} (authority {outcome['upstream_authority']})"
    location = f" Location: {outcome['location']}" if outcome.get("location") else ""
    return f"{outcome['status']} {outcome['body']!r}{location}"


# ---- verify -------------------------------------------------------------------------------------
def verify_text(reports: list[ProofReport], console: Console) -> None:
    for report in reports:
        data = report.to_json()
        console.print(f"[bold]{', '.join(report.sources) or '(policy)'}[/bold]: verdict "
                      f"[{'green' if report.verdict == 'proven' else 'red'}]{report.verdict}[/]")
        dag = data["dag"]
        console.print(f"  DAG: {dag['nodes']} nodes, {dag['tests']} tests, {dag['leaves']} leaves "
                      f"({dag['punt_leaves']} PUNT), depth {dag['depth']}; compile {data['compile_seconds']} s, "
                      f"encode {data['encode_seconds']} s, solver {data['solver_seconds']} s")
        table = Table(show_header=True, header_style="bold")
        for column in ("obligation", "result", "seconds", "detail"):
            table.add_column(column)
        for o in data["obligations"]:
            colour = {"proven": "green", "counterexample": "red"}.get(o["status"], "yellow")
            table.add_row(o["name"], f"[{colour}]{o['status']}[/]", str(o["seconds"]),
                          o.get("reason", "") or OBLIGATIONS.get(o["name"], ""))
        console.print(table)
        for c in data["counterexamples"]:
            console.print(f"  [red]counterexample[/red] ({c['obligation']}, confirmed by replay: {c['confirmed']}):")
            console.print(f"    request: {c['raw']!r} from {c['source']}", markup=False)
            console.print(f"    Envoy (reference): {_outcome_text(c['reference'])}", markup=False)
            console.print(f"    kernel DAG:        {_outcome_text(c['dag'])} at {c['dag_leaf']}", markup=False)
            if c["origin"]:
                console.print(f"    decided by: {c['origin']['file']}:{c['origin']['line']} ({c['origin']['key']})",
                              markup=False)
        partial = [c for c in data["components"] if c["status"] in ("partial", "punt")]
        if partial:
            console.print("  punted to Envoy:")
            for c in partial:
                console.print(f"    {c['kind']} {c['name']} ({c['file']}:{c['line']}): {'; '.join(c['reasons'])}",
                              markup=False)
        bounds = data["bounds"]
        console.print(f"  bounds: target <= {bounds['max_target']} B, Host <= {bounds['max_authority']} B, "
                      f"header values <= {bounds['max_header_value']} B, methods {', '.join(bounds['methods'])}; "
                      f"beyond them every request is punted (obligation 'bounds')", markup=False)


def verify_json(reports: list[ProofReport]) -> str:
    data = [r.to_json() for r in reports]
    if len(data) == 1:
        return json.dumps(data[0], indent=2)
    verdicts = {d["verdict"] for d in data}
    verdict = "counterexample" if "counterexample" in verdicts else "unknown" if "unknown" in verdicts else "proven"
    return json.dumps({"verdict": verdict, "policies": data}, indent=2)


def _sarif(results: list[dict], rules: dict[str, str]) -> str:
    return json.dumps({
        "$schema": _SARIF_SCHEMA, "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "l7fp", "version": __version__,
                                      "informationUri": "https://github.com/l7fp/l7fp",
                                      "rules": [{"id": rid, "shortDescription": {"text": text}}
                                                for rid, text in rules.items()]}},
                  "results": results}]}, indent=2)


def _location(file: str, line: int) -> dict:
    return {"physicalLocation": {"artifactLocation": {"uri": file}, "region": {"startLine": max(line, 1)}}}


def verify_sarif(reports: list[ProofReport]) -> str:
    rules = {f"l7fp/{name}": text for name, text in OBLIGATIONS.items()}
    results = []
    for report in reports:
        for o in report.obligations:
            if o.status == "proven":
                continue
            c = o.counterexample
            origin = c.leaf.origin if c and c.leaf.origin else None
            file, line = (origin.file, origin.line) if origin else ((report.sources or ("policy",))[0], 1)
            if c:
                text = (f"{o.name}: the kernel DAG would answer {c.raw.decode('latin-1')!r} with "
                        f"{_outcome_text(c.to_json()['dag'])}; Envoy {ENVOY_VERSION}: "
                        f"{_outcome_text(c.to_json()['reference'])}")
            else:
                text = f"{o.name}: solver could not decide ({o.reason}); treated as a failure"
            results.append({"ruleId": f"l7fp/{o.name}", "level": "error", "message": {"text": text},
                            "locations": [_location(file, line)]})
    return _sarif(results, rules)


def input_error_sarif(error) -> str:
    """Bad policy input (a ConfigError) as a SARIF result at its file and line: a CI job that
    uploads the report whatever the exit code annotates the line, not an empty check."""
    origin = error.origin
    result = {"ruleId": "l7fp/input", "level": "error", "message": {"text": f"{origin.key}: {error.message}"},
              "locations": [_location(origin.file, origin.line)]}
    return _sarif([result], {"l7fp/input": "the policy input is refused (bad, or not modelled): nothing is proven"})


def input_error_junit(error, command: str) -> str:
    origin = error.origin
    return _junit(f"l7fp {command}", [(f"l7fp.{command}.{origin.file}", "input", 0.0,
                                      f"{origin}: {error.message}", str(error))])


def _junit(suite_name: str, cases: list[tuple[str, str, float, str | None, str]]) -> str:
    """cases: (classname, name, seconds, failure message or None, details)."""
    failures = sum(1 for c in cases if c[3] is not None)
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name=suite_name, tests=str(len(cases)), failures=str(failures),
                          errors="0", time=f"{sum(c[2] for c in cases):.3f}")
    for classname, name, seconds, failure, details in cases:
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")
        if failure is not None:
            node = ET.SubElement(case, "failure", message=failure)
            node.text = details
    return ET.tostring(suites, encoding="unicode")


def verify_junit(reports: list[ProofReport]) -> str:
    cases = []
    for report in reports:
        classname = "l7fp.verify." + ",".join(report.sources)
        for o in report.obligations:
            failure = None if o.status == "proven" else f"{o.status}: {o.reason}"
            details = json.dumps(o.counterexample.to_json(), indent=2) if o.counterexample else o.reason
            cases.append((classname, o.name, o.seconds, failure, details))
    return _junit("l7fp verify", cases)


# ---- diff ---------------------------------------------------------------------------------------
def diff_text(report: DiffReport, console: Console) -> None:
    colour = {"equivalent": "green", "different": "red"}.get(report.verdict, "yellow")
    console.print(f"[bold]l7fp diff[/bold] {', '.join(report.old_sources)} -> {', '.join(report.new_sources)}: "
                  f"[{colour}]{report.verdict}[/] ({report.seconds:.2f} s)")
    for w in report.witnesses:
        data = w.to_json()
        console.print(f"  witness ({w.part}): {data['raw']!r} from {data['source']}", markup=False)
        console.print(f"    old: {_outcome_text(data['old'])}", markup=False)
        console.print(f"    new: {_outcome_text(data['new'])}", markup=False)
    for reason in report.unknown_parts:
        console.print(f"  [yellow]undecided[/yellow]: {reason}")
    for item in report.scope:
        console.print(f"  not part of the claim: {item}", markup=False)


def diff_sarif(report: DiffReport) -> str:
    file = (report.new_sources or ("policy",))[0]
    results = [{"ruleId": "l7fp/semantic-change", "level": "warning",
                "message": {"text": f"behaviour changes for {w.raw.decode('latin-1')!r}: old "
                                    f"{_outcome_text(w.to_json()['old'])}, new {_outcome_text(w.to_json()['new'])}"},
                "locations": [_location(file, 1)]} for w in report.witnesses]
    results += [{"ruleId": "l7fp/undecided", "level": "error", "message": {"text": reason},
                 "locations": [_location(file, 1)]} for reason in report.unknown_parts]
    return _sarif(results, {"l7fp/semantic-change": "the new policy answers some request differently",
                            "l7fp/undecided": "the solver could not decide whether the versions differ"})


def diff_junit(report: DiffReport) -> str:
    failure = None if report.equivalent else report.verdict
    details = json.dumps(report.to_json(), indent=2)
    return _junit("l7fp diff", [("l7fp.diff", "equivalent", report.seconds, failure, details)])
