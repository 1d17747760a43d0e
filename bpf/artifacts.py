"""What `l7fp compile -o DIR` writes: the DAG (GraphML and a picture), the C bcc loads, the slow-path
Envoy config `l7fp run` supervises, and a report of what the kernel decides and what it punts.

Used by the CLI only. Nothing here loads anything into the kernel (`--check-load` results come in
from loader.check_load).
"""
from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import yaml

from ..semantics import ir
from ..synth.dag import Leaf
from .codegen import PARSER_VERDICTS, KernelProgram
from .dataplane import slow_path_config
from .loader import VERIFIER_LIMIT, ProgramStats


def _graph_for_export(program: KernelProgram) -> nx.DiGraph:
    dag = program.dag
    out = nx.DiGraph()
    for n in dag.graph:
        item = dag.node(n)
        out.add_node(n, kind="leaf" if isinstance(item, Leaf) else "test", label=item.describe()[:200])
    for u, v, data in dag.graph.edges(data=True):
        out.add_edge(u, v, branch=str(data["branch"]).lower())
    return out


def _picture(graph: nx.DiGraph, root: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = {n: d for n, d in nx.single_source_shortest_path_length(graph, root).items()}
    for n in graph:
        graph.nodes[n]["layer"] = layers.get(n, 0)
    position = nx.multipartite_layout(graph, subset_key="layer", align="horizontal")
    position = {n: (x, -y) for n, (x, y) in position.items()}
    size = max(8, min(40, len(graph) // 3))
    figure = plt.figure(figsize=(size, size))
    colors = ["#cde" if graph.nodes[n]["kind"] == "test" else "#fdb" for n in graph]
    nx.draw_networkx(graph, position, labels={n: graph.nodes[n]["label"][:40] for n in graph},
                     node_color=colors, font_size=6, node_size=300, arrows=True)
    plt.axis("off")
    figure.savefig(path, dpi=80)
    plt.close(figure)


def report(program: KernelProgram, verifier: list[ProgramStats] | None = None) -> dict:
    """What is decided in kernel and what is punted; with `verifier` (loader.check_load), the
    instructions the kernel's verifier processed per program."""
    leaves = [v for v in program.verdicts if v.node is not None]
    summary = {
        "decided_in_kernel": [{"verdict": v.kind, "rule": v.reason, "cluster": v.cluster} for v in leaves
                              if v.kind != "punt"],
        "punted": [{"reason": v.reason} for v in leaves if v.kind == "punt"],
        "lowered": [{"node": x.node, "what": x.what, "reason": x.reason} for x in program.lowered],
        "parser_punts": [{"name": name, "reason": reason} for name, reason in PARSER_VERDICTS],
        "bounds": program.dag.bounds.describe(),
        "dag": program.dag.stats(),
    }
    if verifier is not None:
        summary["verifier"] = {"limit": VERIFIER_LIMIT, "programs": [
            {"name": s.name, "verified_insns": s.verified_insns, "insns": s.xlated_insns} for s in verifier]}
    return summary


def write_artifacts(policy: ir.Policy, program: KernelProgram, directory: str,
                    verifier: list[ProgramStats] | None = None) -> list[str]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    graph = _graph_for_export(program)
    nx.write_graphml(graph, out / "dag.graphml")
    _picture(graph, program.dag.root, out / "dag.png")
    for entry in ("sk_skb", "test_run"):
        (out / f"{entry}.c").write_text(program.source(entry))
    (out / "envoy.yaml").write_text(yaml.safe_dump(slow_path_config(policy, 15001), sort_keys=False))
    (out / "report.json").write_text(json.dumps(report(program, verifier), indent=2))
    return ["dag.graphml", "dag.png", "sk_skb.c", "test_run.c", "envoy.yaml", "report.json"]
