"""`make demo`: the main job on a bundled example, end to end with what exists today.

Loads the example's Envoy config, synthesizes the kernel's match-action DAG and proves it decides as
Envoy (or punts), then explains each bundled request with the reference interpreter, says whether
the kernel DAG decides it or punts it, replays the same bytes through a real Envoy 1.40.0 running
that config, and prints all of it side by side. Loading the DAG into the kernel and serving traffic
(bpf/, issue 4) joins this command when it lands; until then the demo says so instead of pretending.
Exit status 1 if the proof fails or the interpreter and Envoy disagree on any request.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from l7fp import ENVOY_VERSION
from l7fp.proofs.envoy_oracle import EnvoyOracle
from l7fp.proofs.refinement import verify
from l7fp.semantics.fields import from_request
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.interpreter import interpret
from l7fp.semantics.request import Outcome, Request
from l7fp.synth.compile import compile_policy
from l7fp.synth.dag import evaluate


def _describe(outcome: Outcome) -> str:
    if outcome.action == "forward":
        return f"forward → {outcome.cluster} {outcome.upstream_path}"
    extra = f" Location: {outcome.location}" if outcome.location else ""
    return f"{outcome.status} {outcome.body!r}{extra}"


def main(argv: list[str]) -> int:
    example = Path(argv[0] if argv else "examples/bookstore")
    console = Console()
    config = example / "envoy.yaml"
    policy = load_policy([str(config)])
    dag = compile_policy(policy)
    console.print(f"[bold]L7FP demo[/bold] on {config}: {len(policy.filters)} HTTP filters, "
                  f"{sum(len(v.routes) for v in policy.routes.virtual_hosts)} routes")
    with console.status("synthesizing the kernel DAG and proving it against Envoy's semantics…"):
        proof = verify(policy)
    stats = proof.dag.stats()
    colour = "green" if proof.verdict == "proven" else "red"
    console.print(f"kernel DAG: {stats['nodes']} nodes ({stats['punt_leaves']} PUNT leaves); proof "
                  f"[{colour}]{proof.verdict}[/{colour}] in {proof.solver_seconds:.1f} s "
                  f"({', '.join(f'{o.name} {o.status}' for o in proof.obligations)})")
    console.print("[yellow]loading the DAG into the kernel (bpf/) lands with issue 4: every request below "
                  "is answered by Envoy; the 'kernel' column says what the proven DAG would do.[/yellow]")
    table = Table(title=f"reference interpreter vs real Envoy {ENVOY_VERSION}")
    for column in ("request", "l7fp explain", "kernel", "envoy answered", "same?"):
        table.add_column(column)
    disagreements = 0
    with EnvoyOracle(str(config)) as envoy:
        for path in sorted((example / "requests").glob("*.http")):
            request = Request.from_file(str(path))
            predicted, observed = interpret(policy, request), envoy.outcome(request.raw)
            same = predicted.observable() == observed.observable()
            disagreements += not same
            fields = from_request(request)
            leaf, _ = evaluate(dag, fields) if fields is not None else (None, None)
            kernel = "decides" if leaf is not None and leaf.action != "punt" else \
                f"punt: {leaf.reason}" if leaf is not None else "punt: outside the parser's model"
            table.add_row(path.name, _describe(predicted), kernel, _describe(observed),
                          "[green]yes[/green]" if same else "[red]NO[/red]")
    console.print(table)
    console.print("[green]all requests agree[/green]" if not disagreements
                  else f"[red]{disagreements} disagreement(s)[/red]")
    return 1 if disagreements or proof.verdict != "proven" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
