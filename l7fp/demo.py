"""`make demo`: the main job on a bundled example, end to end.

Loads the example's Envoy config, synthesizes the kernel's match-action DAG and proves it decides as
Envoy (or punts); only then loads it into the kernel (sk_skb on a SOCKHASH, bpf/dataplane.py) with a
supervised Envoy as slow path, sends each bundled request through it on real sockets, sends the same
bytes to a real Envoy 1.40.0 running the config, and prints side by side what the reference
interpreter predicts, whether the kernel decided the request or punted it (from the kernel's own
counters), and both answers. Exit status 1 if the proof fails or any answer differs from Envoy's.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from l7fp import ENVOY_VERSION
from l7fp.bpf.codegen import generate
from l7fp.bpf.dataplane import DataPlane
from l7fp.proofs.envoy_oracle import EnvoyOracle, free_port, outcome_of, send_raw
from l7fp.proofs.refinement import verify
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
    with console.status("synthesizing the kernel DAG and proving it against Envoy's semantics…"):
        proof = verify(policy)
    stats = proof.dag.stats()
    colour = "green" if proof.verdict == "proven" else "red"
    console.print(f"kernel DAG: {stats['nodes']} nodes ({stats['punt_leaves']} PUNT leaves); proof "
                  f"[{colour}]{proof.verdict}[/{colour}] in {proof.solver_seconds:.1f} s "
                  f"({', '.join(f'{o.name} {o.status}' for o in proof.obligations)})")
    if proof.verdict != "proven":
        console.print("[red]not proven: nothing is loaded into the kernel[/red]")
        return 1
    table = Table(title=f"l7fp run (kernel fast path + Envoy slow path) vs real Envoy {ENVOY_VERSION}")
    for column in ("request", "l7fp explain", "kernel", "l7fp answered", "envoy answered", "same?"):
        table.add_column(column)
    disagreements = 0
    with EnvoyOracle(str(config)) as envoy:
        endpoints = {name: ("127.0.0.1", backend.port) for name, backend in envoy.backends.items()}
        address = ("127.0.0.1", free_port())
        with console.status("loading the kernel program (bcc compiles it, the verifier checks it)…"):
            # the very DAG the proof was about
            plane = DataPlane(policy, generate(proof.dag, policy.hcm), address, None, endpoints)
        with plane.serving():
            for path in sorted((example / "requests").glob("*.http")):
                request = Request.from_file(str(path))
                before = plane.counters()
                got = outcome_of(send_raw(address, request.raw))
                after = plane.counters()
                predicted, observed = interpret(policy, request), envoy.outcome(request.raw)
                same = got.observable() == observed.observable()
                disagreements += not same
                new_punts = {k: v - before["punts"].get(k, 0) for k, v in after["punts"].items()
                             if v != before["punts"].get(k, 0)}
                kernel = ("[green]decided in kernel[/green]" if after["fast_path"] > before["fast_path"] else
                          "punt: " + ", ".join(new_punts) if new_punts else "punt")
                table.add_row(path.name, _describe(predicted), kernel, _describe(got), _describe(observed),
                              "[green]yes[/green]" if same else "[red]NO[/red]")
            counters = plane.counters()
    console.print(table)
    console.print(f"kernel counters: {counters['fast_path']} decided in kernel "
                  f"({counters['forwarded_in_kernel']} forwarded, {counters['local_replies_in_kernel']} local replies), "
                  f"{counters['punted']} punted to Envoy; verifier: "
                  + ", ".join(f"{p['name']} {p['verified_insns']} insns" for p in counters["programs"]))
    console.print("[green]every answer equals Envoy's[/green]" if not disagreements
                  else f"[red]{disagreements} disagreement(s)[/red]")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
