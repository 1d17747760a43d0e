"""Semantic diff of two policy versions: proven equivalent, or witnesses (raw requests) on which
Envoy would answer differently. What `l7fp diff OLD NEW` runs as a pre-merge gate.

Both versions get their reference meaning (semantics/symbolic.py) over one symbolic request; Z3 is
asked, part by part, for a request on which they differ. Each witness is rendered to raw bytes and
replayed through the concrete interpreter under both versions: only a confirmed difference is
reported as a witness (tests/proofs/test_diff.py replays them through real Envoy too).

"Equivalent" is claimed only when every part is unsat, including the parts that look for requests
one version's encoding does not cover (symbolic.py lists what it does not encode); a request the
encoding cannot decide on either side makes the answer "unknown", never "equivalent".
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import z3

from ..semantics import ir
from ..semantics import symbolic as sym
from ..semantics.fields import FieldRequest
from ..semantics.interpreter import interpret_or_reason
from ..semantics.request import Outcome
from .refinement import Budget

EQUIVALENT, DIFFERENT, UNKNOWN = "equivalent", "different", "unknown"
MAX_WITNESSES = 8
MAX_PER_PART = 3


@dataclass
class Witness:
    part: str
    request: FieldRequest
    raw: bytes
    source: tuple[str, int]
    old: Outcome | None
    new: Outcome | None
    old_error: str | None = None
    new_error: str | None = None

    @property
    def confirmed(self) -> bool:
        if self.old is None or self.new is None:
            return False
        return self.old.observable() != self.new.observable()

    def to_json(self) -> dict:
        def side(outcome, error):
            return outcome.to_json() if outcome else {"unmodelled": error}
        return {"part": self.part, "raw": self.raw.decode("latin-1"), "source": f"{self.source[0]}:{self.source[1]}",
                "old": side(self.old, self.old_error), "new": side(self.new, self.new_error)}


@dataclass
class DiffReport:
    old_sources: tuple[str, ...]
    new_sources: tuple[str, ...]
    verdict: str
    witnesses: list[Witness]
    unknown_parts: list[str]
    seconds: float
    parts: dict = field(default_factory=dict)
    scope: list = field(default_factory=list)  # request classes the equivalence claim leaves out

    @property
    def equivalent(self) -> bool:
        return self.verdict == EQUIVALENT

    def to_json(self) -> dict:
        return {"equivalent": self.equivalent, "verdict": self.verdict, "old": list(self.old_sources),
                "new": list(self.new_sources), "witnesses": [w.to_json() for w in self.witnesses],
                "unknown": self.unknown_parts, "parts": self.parts, "not_covered": self.scope,
                "seconds": round(self.seconds, 3)}


def _replay(old: ir.Policy, new: ir.Policy, request: FieldRequest, part: str) -> Witness:
    raw = request.request(old.listener[1])
    outcomes = [interpret_or_reason(policy, request.request(policy.listener[1])) for policy in (old, new)]
    return Witness(part, request, raw.raw, raw.source, outcomes[0][0], outcomes[1][0], outcomes[0][1], outcomes[1][1])


def _parts(a: sym.Meaning, b: sym.Meaning, same_connection_manager: bool) -> list[tuple]:
    """(name, assumptions, goal, exact goal or None): every way two meanings can differ, one Z3
    query each. With the same connection-manager options in both versions, what happens before the
    filters is the same function of the request, and a request whose path normalisation changes is
    decided as its normal form, which the decision parts cover: so only those are asked. Outputs are
    compared by template first (refinement.py explains why); a witness of
    that which replay does not confirm sends the part to the exact string comparison."""
    sa, sb = sym._bool(a.stop), sym._bool(b.stop)
    da, db = a.decision, b.decision
    known = [z3.Not(sa), z3.Not(sb), sym._bool(da.known), sym._bool(db.known)]
    fa, fb = sym._bool(da.forward), sym._bool(db.forward)
    forwarded, replied = [*known, fa, fb], [*known, z3.Not(fa), z3.Not(fb)]
    parts = []
    if not same_connection_manager:
        oa, ob = a.stop_outcome, b.stop_outcome
        differ = z3.Or(sym._bool(oa.known) != sym._bool(ob.known),
                       z3.And(sym._bool(oa.known), z3.Not(sym.same_observable(oa, ob))))
        parts.append(("connection_manager", [], z3.Or(sa != sb, z3.And(sa, differ)), None))
    return parts + [
        ("unmodelled", [z3.Not(sa), z3.Not(sb)], z3.Not(z3.And(sym._bool(da.known), sym._bool(db.known))), None),
        ("action", known, fa != fb, None),
        ("cluster", forwarded, da.cluster != db.cluster, None),
        ("upstream_path", forwarded, da.path_key != db.path_key, da.path != db.path),
        ("upstream_authority", forwarded, da.authority_key != db.authority_key, da.authority != db.authority),
        ("status", replied, da.status != db.status, None),
        ("body", replied, da.body != db.body, None),
        ("location", replied, da.location_key != db.location_key, da.location != db.location),
    ]


def diff(old: ir.Policy, new: ir.Policy, budget: Budget = Budget()) -> DiffReport:
    start = time.perf_counter()
    req = sym.SymRequest(sym.mentioned_headers(old) | sym.mentioned_headers(new))
    a, b = sym.meaning_parts(old, req), sym.meaning_parts(new, req)
    solver = z3.Solver()
    solver.add(*req.domain(old.listener))
    witnesses, unknown, parts = [], [], {}
    same_cm = old.hcm == new.hcm
    scope = ["CONNECT requests (not modelled)"]
    if same_cm:
        scope.append("requests the codec or connection manager answers: the same options in both versions")
    for name, assumptions, goal, exact in _parts(a, b, same_cm):
        parts[name] = _search(solver, assumptions, goal, exact, budget, lambda model: _replay(
            old, new, req.from_model(model), name), witnesses, unknown, name, req)
    verdict = DIFFERENT if witnesses else UNKNOWN if unknown else EQUIVALENT
    return DiffReport(old.sources, new.sources, verdict, witnesses, unknown, time.perf_counter() - start, parts,
                      scope)


def _search(solver, assumptions, goal, exact, budget, replay, witnesses, unknown, name, req) -> str:
    """Witnesses for one part: each found request is excluded and the part asked again.
    Returns 'unsat', 'witness' or 'unknown'."""
    solver.push()
    try:
        solver.add(*assumptions, goal)
        solver.set("timeout", int(budget.timeout_s * 1000))
        solver.set("rlimit", budget.rlimit)
        status = "unsat"
        found = 0
        while len(witnesses) < MAX_WITNESSES and found < MAX_PER_PART:
            answer = solver.check(*req.readable())  # a witness a person can read, when there is one
            if answer != z3.sat:
                answer = solver.check()
            if answer == z3.unsat:
                break
            if answer == z3.unknown:
                unknown.append(f"{name}: solver {solver.reason_unknown()}")
                return "unknown"
            witness = replay(solver.model())
            if not witness.confirmed:
                if exact is not None:
                    status = "exact"
                    break
                unknown.append(f"{name}: a request the encoding cannot decide on both sides "
                               f"({witness.old_error or witness.new_error or 'same answers when replayed'})")
                return "unknown"
            status, found = "witness", found + 1
            witnesses.append(witness)
            solver.add(req.target != sym.sval(witness.request.target))
    finally:
        solver.pop()
    if status == "exact":
        return _search(solver, assumptions, exact, None, budget, replay, witnesses, unknown, name, req)
    return status
