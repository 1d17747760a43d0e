"""Proof that a match-action DAG decides like Envoy, or punts: the gate before anything is loaded.

`verify(policy)` compiles the policy (synth/), builds the reference meaning (semantics/symbolic.py)
and the DAG's meaning (dag_smt.py) over one symbolic request, and discharges three obligations with
Z3, each as "is there a request such that ...?" (unsat = proven):

- refinement: the DAG does not punt and its outcome differs from the reference's (or the reference
  has none: a request the interpreter does not model must be punted);
- never_more_permissive: the DAG forwards where the reference does not (the security property;
  implied by refinement, stated on its own so a gate can name it);
- bounds: the request is beyond the kernel's bounds (synth/bounds.py, stated here independently of
  the guard the compiler builds) and the DAG does not punt it.

A sat answer becomes a concrete request: rendered to raw bytes, parsed back by the codec model, run
through the interpreter and the DAG, and reported as confirmed only if they really disagree. An
unknown answer (timeout, resource limit) is a failure. Budgets: wall time (what a user waits for)
and Z3's rlimit (deterministic: the same proof gets the same answer on a loaded CI machine).
Used by `l7fp verify`, `l7fp run` (nothing loads unless it proves), `l7fp coverage`, the demo,
`l7fp diff` (its `Budget`) and the tests; `emit_smt` writes each obligation as SMT-LIB2
for a second solver (tests/proofs/test_cvc5.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import z3

from ..semantics import ir
from ..semantics import symbolic as sym
from ..semantics.fields import FieldRequest, from_request
from ..semantics.interpreter import interpret_or_reason
from ..semantics.request import Outcome
from ..synth import offload
from ..synth.bounds import KernelBounds
from ..synth.compile import DagCompiler
from ..synth.dag import Dag, Leaf, evaluate
from .abstraction import Inconclusive, LazyRefuter
from .dag_smt import dag_meaning

PROVEN, COUNTEREXAMPLE, UNKNOWN = "proven", "counterexample", "unknown"
OBLIGATIONS = {
    "bounds": "every request beyond the kernel's bounds reaches a PUNT leaf",
    "refinement": "for every request: the DAG punts, or decides exactly as Envoy (reference semantics)",
    "never_more_permissive": "no request is forwarded by the DAG that Envoy would not forward",
}


@dataclass(frozen=True)
class Budget:
    timeout_s: float = 60.0
    rlimit: int = 200_000_000  # Z3 resource units per obligation; about a minute of solving here


@dataclass
class Counterexample:
    obligation: str
    request: FieldRequest
    raw: bytes
    source: tuple[str, int]
    reference: Outcome | None
    reference_error: str | None
    dag: Outcome | None
    leaf: Leaf
    confirmed: bool

    def to_json(self) -> dict:
        return {"obligation": self.obligation, "raw": self.raw.decode("latin-1"),
                "source": f"{self.source[0]}:{self.source[1]}",
                "reference": self.reference.to_json() if self.reference else {"unmodelled": self.reference_error},
                "dag": self.dag.to_json() if self.dag else {"punt": self.leaf.reason},
                "dag_leaf": self.leaf.describe(),
                "origin": _origin_json(self.leaf.origin), "confirmed": self.confirmed}


def _origin_json(origin) -> dict | None:
    if origin is None:
        return None
    return {"file": origin.file, "line": origin.line, "key": origin.key}


@dataclass
class ObligationResult:
    name: str
    status: str
    seconds: float
    counterexample: Counterexample | None = None
    reason: str = ""

    def to_json(self) -> dict:
        out = {"name": self.name, "description": OBLIGATIONS.get(self.name, ""), "status": self.status,
               "seconds": round(self.seconds, 3)}
        if self.reason:
            out["reason"] = self.reason
        if self.counterexample:
            out["counterexample"] = self.counterexample.to_json()
        return out


@dataclass
class ProofReport:
    sources: tuple[str, ...]
    obligations: list[ObligationResult]
    dag: Dag
    components: list[offload.Component]
    compile_seconds: float
    encode_seconds: float
    smt_files: list[dict] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        statuses = {o.status for o in self.obligations}
        return COUNTEREXAMPLE if COUNTEREXAMPLE in statuses else UNKNOWN if UNKNOWN in statuses else PROVEN

    @property
    def solver_seconds(self) -> float:
        return sum(o.seconds for o in self.obligations)

    @property
    def counterexamples(self) -> list[Counterexample]:
        return [o.counterexample for o in self.obligations if o.counterexample]

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "sources": list(self.sources),
                "obligations": [o.to_json() for o in self.obligations],
                "components": [c.to_json() for c in self.components],
                "bounds": self.dag.bounds.describe(), "dag": self.dag.stats(),
                "solver_seconds": round(self.solver_seconds, 3),
                "compile_seconds": round(self.compile_seconds, 3),
                "encode_seconds": round(self.encode_seconds, 3),
                "counterexamples": [c.to_json() for c in self.counterexamples],
                "smt_files": self.smt_files}


def parser_within_bounds(req: sym.SymRequest, bounds: KernelBounds):
    """The request fits the kernel parser's window and header-line limit (rendered as fields.py does)."""
    return z3.And(req.header_block_size() <= bounds.window, req.header_lines() <= bounds.max_header_lines)


def beyond_bounds(req: sym.SymRequest, bounds: KernelBounds):
    """A request outside the bounds, stated from KernelBounds alone (not from the compiler's guard)."""
    def only(term, chars):
        return z3.Not(z3.InRe(term, z3.Star(sym.charset_regex(chars))))

    host = req.headers["host"]
    outside = [z3.And(*[req.method != sym.sval(m) for m in sorted(bounds.methods)]),
               z3.Length(req.target) > bounds.max_target, only(req.target, bounds.target_chars),
               z3.Not(req.on_path(z3.Star(sym.charset_regex(bounds.path_chars & sym.PATH_CODES)))),
               req.on_path(sym.shape_regex("contains", "//", within=sym.PATH_CODES)), sym.has_dot_segment(req),
               host.count != 1, z3.Length(host.items[0]) > bounds.max_authority,
               only(host.items[0], bounds.authority_chars)]
    for name, values in req.headers.items():
        if name == "host":
            continue
        outside += [values.count > 1, z3.Length(values.items[0]) > bounds.max_header_value,
                    only(values.items[0], bounds.value_chars)]
    return z3.Or(*outside)


def replay(policy: ir.Policy, dag: Dag, fields: FieldRequest, obligation: str) -> Counterexample:
    """Run a solver's request through the interpreter and the DAG, from its raw bytes."""
    request = fields.request(policy.listener[1])
    parsed = from_request(request, policy.listener[0])
    leaf, dag_outcome = evaluate(dag, parsed) if parsed is not None else (Leaf("punt", reason="not parseable"), None)
    reference, error = interpret_or_reason(policy, request)
    if obligation == "bounds":
        confirmed = dag_outcome is not None
    elif obligation == "never_more_permissive":
        confirmed = dag_outcome is not None and dag_outcome.action == "forward" and \
            (reference is None or reference.action != "forward")
    else:
        confirmed = dag_outcome is not None and \
            (reference is None or reference.observable() != dag_outcome.observable())
    return Counterexample(obligation, fields, request.raw, request.source, reference, error, dag_outcome, leaf,
                          confirmed)


class _Prover:
    """The obligations of a policy, part by part, each first by lazy abstraction (abstraction.py:
    seconds instead of minutes on large policies, and only its "unsat" is taken), then, when that
    does not settle it, by one incremental Z3 solver for all parts: the domain is asserted once and
    each part is checked under push/pop, so lemmas learnt for one part serve the next (about three
    times faster here than one solver per part)."""

    def __init__(self, domain: list, budget: Budget, smt_dir: Path | None, stem: str, req: sym.SymRequest):
        self.req = req
        self.solver = z3.Solver()
        self.solver.add(*domain)
        self.lazy = LazyRefuter(domain)
        self.budget, self.smt_dir, self.stem = budget, smt_dir, stem
        self.smt_files: list[dict] = []  # {"file": path, "z3": "sat" | "unsat" | "unknown"}
        self.results: dict[str, ObligationResult] = {}
        self.context: list[list] = []  # the facts of each assume() level not yet released
        # how each part was answered: {"obligation", "part", "answer", "by": "abstraction" | "z3"}
        self.answers: list[dict] = []

    def assume(self, *facts):
        self.solver.push()
        self.solver.add(*facts)
        self.context.append(list(facts))

    def release(self, all_of_them: bool = False):
        for _ in range(len(self.context) if all_of_them else 1):
            self.solver.pop()
            self.context.pop()

    def check(self, obligation: str, part: str, goal, on_model, exact=None):
        """Is there a request in the current context with `goal`? Records the answer.

        `exact`: the precise goal when `goal` over-approximates it (output templates compared
        instead of strings): a witness of `goal` that replay does not confirm sends the part to
        `exact`."""
        result = self.results.setdefault(obligation, ObligationResult(obligation, PROVEN, 0.0))
        if result.status == COUNTEREXAMPLE:
            return  # one confirmed witness per obligation is enough
        self.solver.push()
        self.solver.add(goal)
        path = None
        if self.smt_dir is not None:
            path = self.smt_dir / f"{self.stem}.{obligation}.{part}.smt2"
            path.write_text("(set-logic ALL)\n" + self.solver.to_smt2())
        start = time.perf_counter()
        try:
            # Half the budget at most, so that Z3 on the whole query still gets the other half.
            self.lazy.refute([fact for level in self.context for fact in level] + [goal],
                             start + self.budget.timeout_s / 2, self.budget.rlimit)
            answer, by = z3.unsat, "abstraction"
        except Inconclusive:
            left = self.budget.timeout_s - (time.perf_counter() - start)
            self.solver.set("timeout", max(1, int(left * 1000)))
            self.solver.set("rlimit", self.budget.rlimit)
            answer, by = self.solver.check(), "z3"
            if answer == z3.sat and self.solver.check(*self.req.readable()) != z3.sat:
                answer = self.solver.check()  # no readable witness: take any
        result.seconds += time.perf_counter() - start
        self.answers.append({"obligation": obligation, "part": part, "answer": str(answer), "by": by})
        if path is not None:
            self.smt_files.append({"file": str(path), "z3": str(answer)})
        tries = 0
        while answer == z3.sat and exact is not None and tries < 3:
            # Different templates may still agree on this request: look for one where they do not
            # (templates mostly differ in what they keep of the query) before paying for the exact
            # string comparison.
            witness = on_model(self.solver.model())
            if witness.confirmed:
                break
            tries += 1
            self.solver.add(self.req.target != sym.sval(witness.request.target))
            answer = self.solver.check(self.req.has_query) if tries == 1 else z3.unknown
            if answer != z3.sat:
                answer = self.solver.check()
        if answer != z3.sat and exact is not None and tries:
            self.solver.pop()
            return self.check(obligation, part, exact, on_model)
        if answer == z3.sat:
            witness = on_model(self.solver.model())
            if not witness.confirmed and exact is not None:
                self.solver.pop()
                return self.check(obligation, part, exact, on_model)
            result.status, result.reason = COUNTEREXAMPLE, f"{part}"
            result.counterexample = witness
        elif answer == z3.unknown:
            result.status = UNKNOWN
            result.reason = "; ".join(filter(None, [result.reason, f"{part}: {self.solver.reason_unknown()}"]))
        self.solver.pop()


def _prove(prover: _Prover, kernel, reference: sym.Meaning, req: sym.SymRequest, bounds: KernelBounds,
           witness) -> None:
    """The three obligations, split into parts Z3 answers quickly (one disjunction of them all
    timed out even for one route):
    - bounds first: once proven, "the DAG decides" implies "within the bounds", so every later part
      may assume `within` (if bounds is not proven, the later parts go without it);
    - then by the reference's two parts: requests the connection manager answers (`stop`) and
      requests the filters and router decide;
    - then by observable field, one query per way two outcomes could differ.
    """
    dag, ref, stop_outcome = kernel.outcome, reference.decision, reference.stop_outcome
    decides = z3.Not(sym._bool(kernel.punt))
    beyond = beyond_bounds(req, bounds)
    stop = sym._bool(reference.stop)
    dag_fwd, ref_fwd = sym._bool(dag.forward), sym._bool(ref.forward)
    forwards = lambda o: z3.And(sym._bool(o.known), sym._bool(o.forward))  # noqa: E731

    # The parser's bounds (bpf/: header block window, header lines) are enforced before the DAG
    # runs; the proof assumes them, and the bpf test-run harness checks the parser against them.
    prover.assume(parser_within_bounds(req, bounds))
    prover.check("bounds", "beyond", z3.And(decides, beyond), witness("bounds"))
    # Sound only once bounds is proven; otherwise the other obligations look at every request.
    within = [z3.Not(beyond)] if prover.results["bounds"].status == PROVEN else []
    prover.assume(decides, *within)
    # Usually no request the DAG decides is answered by the connection manager: ask that first.
    prover.check("refinement", "connection_manager", stop, witness("refinement"),
                 exact=z3.And(stop, z3.Not(sym.same_observable(dag, stop_outcome))))
    prover.check("never_more_permissive", "connection_manager", z3.And(stop, dag_fwd, z3.Not(forwards(stop_outcome))),
                 witness("never_more_permissive"))
    prover.assume(z3.Not(stop))
    prover.check("never_more_permissive", "filters", z3.And(dag_fwd, z3.Not(forwards(ref))),
                 witness("never_more_permissive"))
    prover.check("refinement", "reference_unmodelled", z3.Not(sym._bool(ref.known)), witness("refinement"))
    prover.assume(sym._bool(ref.known))
    prover.check("refinement", "action", dag_fwd != ref_fwd, witness("refinement"))
    prover.assume(dag_fwd, ref_fwd)
    prover.check("refinement", "cluster", dag.cluster != ref.cluster, witness("refinement"))
    for part, field in (("upstream_path", "path"), ("upstream_authority", "authority")):
        prover.check("refinement", part, getattr(dag, field + "_key") != getattr(ref, field + "_key"),
                     witness("refinement"), exact=getattr(dag, field) != getattr(ref, field))
    prover.release()
    prover.assume(z3.Not(dag_fwd), z3.Not(ref_fwd))
    prover.check("refinement", "status", dag.status != ref.status, witness("refinement"))
    prover.check("refinement", "body", dag.body != ref.body, witness("refinement"))
    prover.check("refinement", "location", dag.location_key != ref.location_key, witness("refinement"),
                 exact=dag.location != ref.location)
    prover.release(all_of_them=True)


def verify(policy: ir.Policy, budget: Budget = Budget(), compiler=DagCompiler,
           bounds: KernelBounds | None = None, smt_dir: str | None = None, stem: str = "policy") -> ProofReport:
    start = time.perf_counter()
    dag = compiler(policy, bounds).compile()
    compiled = time.perf_counter()
    req = sym.SymRequest(sym.mentioned_headers(policy) | set(dag.header_names))
    reference = sym.meaning_parts(policy, req)
    kernel = dag_meaning(dag, req)
    domain = req.domain(policy.listener)
    encoded = time.perf_counter()
    smt_path = Path(smt_dir) if smt_dir else None
    if smt_path:
        smt_path.mkdir(parents=True, exist_ok=True)
    prover = _Prover(domain, budget, smt_path, stem, req)
    _prove(prover, kernel, reference, req, dag.bounds,
           lambda name: lambda model: replay(policy, dag, req.from_model(model), name))
    results, smt_files = [prover.results[name] for name in OBLIGATIONS], prover.smt_files
    return ProofReport(policy.sources, results, dag, offload.classify(policy), compiled - start, encoded - compiled,
                       smt_files)
