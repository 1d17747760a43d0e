"""`make demo`: the main job on a bundled example, end to end with what exists today.

Loads the example's Envoy config, explains each bundled request with the reference interpreter,
replays the same bytes through a real Envoy 1.40.0 running that config, and prints both side by side
with a verdict. The kernel fast path (verify + compile + load + serve) joins this command as the
synth/ and bpf/ stages land (issues 3 and 4); until then the demo says so instead of pretending.
Exit status 1 if the interpreter and Envoy disagree on any request.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from l7fp import ENVOY_VERSION
from l7fp.proofs.envoy_oracle import EnvoyOracle
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.interpreter import interpret
from l7fp.semantics.request import Outcome, Request


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
    console.print(f"[bold]L7FP demo[/bold] on {config}: {len(policy.filters)} HTTP filters, "
                  f"{sum(len(v.routes) for v in policy.routes.virtual_hosts)} routes")
    console.print("[yellow]kernel fast path: not built yet (synth/ and bpf/ land with issues 3 and 4); "
                  "every request below is answered by Envoy.[/yellow]")
    table = Table(title=f"reference interpreter vs real Envoy {ENVOY_VERSION}")
    for column in ("request", "l7fp explain", "envoy answered", "same?"):
        table.add_column(column)
    disagreements = 0
    with EnvoyOracle(str(config)) as envoy:
        for path in sorted((example / "requests").glob("*.http")):
            request = Request.from_file(str(path))
            predicted, observed = interpret(policy, request), envoy.outcome(request.raw)
            same = predicted.observable() == observed.observable()
            disagreements += not same
            table.add_row(path.name, _describe(predicted), _describe(observed),
                          "[green]yes[/green]" if same else "[red]NO[/red]")
    console.print(table)
    console.print("[green]all requests agree[/green]" if not disagreements
                  else f"[red]{disagreements} disagreement(s)[/red]")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
