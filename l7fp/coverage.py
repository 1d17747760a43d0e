"""`l7fp coverage DIR`: how much of a folder of policy documents the kernel fast path covers, and why
the rest goes to Envoy.

For each document under DIR (*.yaml, *.yml, *.l7fp, recursively): parsed, or refused with file,
line and key; the offload classifier's components (synth/offload.py); what the kernel program
lowers to PUNT (bpf/codegen.lower); and, unless told not to, whether the proof holds
(proofs/refinement.verify). A document is on the fast path when the kernel's DAG decides at least
one request itself, and fully on it when no component punts and nothing is lowered (requests
beyond the kernel's bounds punt in every program and do not count). Reasons for punting are counted
across the folder, one count per document.

Used by the CLI (`l7fp coverage`) and tests/test_cli_coverage.py. Beside the CLI because it drives
every stage (as demo.py and fuzz.py do).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .bpf.codegen import lower
from .proofs.refinement import Budget, verify
from .semantics.errors import ConfigError
from .semantics.frontends import load_policy
from .synth import offload
from .synth.compile import compile_policy
from .synth.dag import Leaf

SUFFIXES = (".yaml", ".yml", ".l7fp")


@dataclass
class Document:
    file: str
    parsed: bool = False
    error: dict | None = None
    fast_path: bool = False
    fast_path_full: bool = False
    verdict: str | None = None  # proven | counterexample | unknown; None when not proven
    punts: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"file": self.file, "parsed": self.parsed, "error": self.error, "fast_path": self.fast_path,
                "fast_path_full": self.fast_path_full, "verdict": self.verdict, "punts": self.punts}


@dataclass
class Coverage:
    documents: list[Document]
    proved: bool

    def to_json(self) -> dict:
        docs = self.documents
        reasons = Counter(reason for d in docs for reason in d.punts)
        return {"documents": len(docs), "parsed": sum(d.parsed for d in docs),
                "fast_path": sum(d.fast_path for d in docs), "fast_path_full": sum(d.fast_path_full for d in docs),
                "proven": sum(d.verdict == "proven" for d in docs) if self.proved else None,
                "errors": [d.error for d in docs if d.error],
                "reasons": dict(reasons.most_common()),
                "per_document": [d.to_json() for d in docs]}


def documents_in(directory: str) -> list[Path]:
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def assess(path: Path, prove: bool, budget: Budget) -> Document:
    doc = Document(str(path))
    try:
        policy = load_policy([str(path)])
    except ConfigError as exc:
        doc.error = {"file": exc.origin.file, "line": exc.origin.line, "key": exc.origin.key, "message": exc.message}
        return doc
    doc.parsed = True
    components = offload.classify(policy)
    report = verify(policy, budget) if prove else None
    kernel, lowered = lower(report.dag if report else compile_policy(policy))  # the proof's DAG when there is one
    doc.punts = list(dict.fromkeys(
        [reason for c in components if c.status in (offload.PUNT, offload.PARTIAL) for reason in c.reasons]
        + [f"kernel: {x.reason}" for x in lowered]))
    decides = any(isinstance(item := kernel.node(n), Leaf) and item.action != "punt" for n in kernel.graph)
    doc.fast_path = decides
    doc.fast_path_full = decides and not lowered and all(
        c.status not in (offload.PUNT, offload.PARTIAL) for c in components)
    doc.verdict = report.verdict if report else None
    return doc


def run_coverage(directory: str, prove: bool = True, budget: Budget = Budget(timeout_s=60),
                 progress: Callable[[int, int], None] | None = None) -> Coverage:
    paths = documents_in(directory)
    out = []
    for index, path in enumerate(paths, 1):
        out.append(assess(path, prove, budget))
        if progress:
            progress(index, len(paths))
    return Coverage(out, prove)
