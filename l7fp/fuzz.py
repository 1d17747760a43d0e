"""Differential fuzz campaigns (`l7fp fuzz`): the same requests through several oracles, and every
disagreement between two that decide is a divergence.

Oracles, each answering raw request bytes on a connection:
- reference: the interpreter (semantics/interpreter.py); abstains where the model stops (Unmodelled);
- dag: the proven DAG (synth/) on the codec model's fields; abstains on PUNT, or when the codec
  answers before any policy runs (bytes outside the field model);
- kernel: the generated C loaded as SOCKET_FILTER and run by BPF_PROG_TEST_RUN (bpf/testrun.py), the
  kernel's own verdict rendered with the DAG leaf it names; abstains on PUNT (root and bpf() needed);
- envoy: the real envoy binary on the policy (proofs/envoy_oracle.py); answers every request sent
  from a loopback address (the client socket is bound to the source; other sources abstain). With
  it, every oracle runs the policy on a free listener port instead of the config's own;
- dataplane: `l7fp run`'s data plane (bpf/dataplane.py: the sk_skb program on a SOCKHASH, the agent,
  the slow-path Envoy) with echo backends, on real loopback sockets, loopback sources only like
  envoy; a connection closed without an answer is an answer (Envoy always answers) (root).

Two answers disagree when their observable outcomes differ (Outcome.observable). A stage that decides
a request the reference does not model is a divergence too (the correctness contract: it must punt).
Requests come from proofs/request_strategies.raw_requests: the policy's own constants, plus
byte-level damage (smuggling classes). Hypothesis drives the campaign (seeded, reproducible) and
shrinks the first divergence to a minimal request, which `run_campaign` returns and the CLI saves as
a .http file that `l7fp explain` replays.

Used by the CLI (`l7fp fuzz`) and tests/proofs/test_fuzz.py. It lives beside the CLI, not in
proofs/, because it drives every stage, the kernel's included (as demo.py does).
"""
from __future__ import annotations

import ipaddress
import json
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings

from .proofs.request_strategies import RawRequest, raw_requests
from .semantics import ir
from .semantics.fields import FieldRequest, from_request
from .semantics.interpreter import interpret_or_reason
from .semantics.request import Outcome, Request
from .synth.compile import DagCompiler
from .synth.dag import evaluate, leaf_outcome

ORACLES = ("reference", "dag", "kernel", "envoy", "dataplane")
# Oracles that answer on real sockets: loopback sources only, and a free listener port.
_ON_SOCKETS = {"envoy", "dataplane"}


@dataclass(frozen=True)
class Answer:
    """An oracle's answer: an outcome, or an abstention with its reason."""

    outcome: Outcome | None
    abstained: str = ""

    def to_json(self) -> dict:
        return self.outcome.to_json() if self.outcome else {"abstained": self.abstained}

    def text(self) -> str:
        if self.outcome is None:
            return f"abstains ({self.abstained})"
        o = self.outcome
        return (f"forward {o.cluster} {o.upstream_path}" if o.action == "forward"
                else f"{o.status} {o.body!r}" + (f" location {o.location}" if o.location else ""))


@dataclass
class Divergence:
    request: RawRequest
    answers: dict[str, Answer]
    why: str

    def to_json(self) -> dict:
        return {"raw": self.request.raw.decode("latin-1"), "source_ip": self.request.source_ip,
                "destination_ip": self.request.destination_ip, "damage": self.request.damage, "why": self.why,
                "answers": {name: answer.to_json() for name, answer in self.answers.items()}}


@dataclass
class Campaign:
    oracles: list[str]
    executed: int = 0
    decided: Counter = field(default_factory=Counter)  # per oracle: requests it answered
    abstained: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # per oracle, by reason
    divergences: list[Divergence] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"executed": self.executed, "oracles": self.oracles, "decided": self.decided,
                "abstained": self.abstained, "divergences": [d.to_json() for d in self.divergences],
                "saved": self.saved}

    def count(self, answers: dict[str, "Answer"]) -> None:
        self.executed += 1
        for name, answer in answers.items():
            if answer.outcome is None:
                self.abstained[name][answer.abstained] += 1
            else:
                self.decided[name] += 1


class _Found(Exception):
    """Raised inside the Hypothesis test so that it shrinks the divergence."""


class _Oracles:
    """The oracles of one campaign, started once (the kernel program loaded, Envoy running)."""

    def __init__(self, policy: ir.Policy, names: list[str], compiler=DagCompiler):
        if _ON_SOCKETS & set(names):
            from .proofs.envoy_oracle import free_port

            # Every oracle sees the same listener: a free port, so a campaign never collides with a
            # running Envoy or another campaign on the config's own port.
            policy = replace(policy, listener=(policy.listener[0], free_port(policy.listener[0])))
        self.policy, self.names = policy, names
        self.dag = compiler(policy).compile()
        self.listener_port = policy.listener[1]
        self.kernel = self.envoy = self.dataplane = None
        if "kernel" in names:
            from .bpf.codegen import generate
            from .bpf.testrun import KernelHarness

            self.kernel = KernelHarness(generate(self.dag, policy.hcm))
        if "envoy" in names:
            from .proofs.envoy_oracle import EnvoyOracle
            from .semantics.to_envoy import bootstrap

            # A short wait: a request Envoy waits on (truncated) abstains instead of stalling the campaign.
            self.envoy = EnvoyOracle(bootstrap(policy), io_timeout=1.5)
        if "dataplane" in names:
            self.dataplane = _DataPlaneOracle(policy, self.dag)

    def close(self) -> None:
        if self.dataplane is not None:
            self.dataplane.close()
        if self.kernel is not None:
            self.kernel.close()
        if self.envoy is not None:
            self.envoy.close()

    def answers(self, r: RawRequest) -> dict[str, Answer]:
        """Each oracle's answer to one request (the bytes parsed into fields once)."""
        request = Request(r.raw, source=(r.source_ip, 40000), destination=(r.destination_ip, self.listener_port))
        fields = from_request(request, r.destination_ip) if {"dag", "kernel"} & set(self.names) else None
        return {name: self._answer(name, r, request, fields) for name in self.names}

    def _answer(self, name: str, r: RawRequest, request: Request, fields: FieldRequest | None) -> Answer:
        if name == "reference":
            outcome, why = interpret_or_reason(self.policy, request)
            return Answer(outcome, f"unmodelled: {why}" if outcome is None else "")
        if name in _ON_SOCKETS:
            if not ipaddress.ip_address(r.source_ip).is_loopback:
                return Answer(None, f"source {r.source_ip}: only loopback sources can reach {name} here")
            try:
                return Answer((self.envoy if name == "envoy" else self.dataplane).outcome(r.raw, r.source_ip))
            except TimeoutError:
                return Answer(None, "no answer in time (Envoy waits for the rest of the request)")
            except ConnectionError:
                return Answer(Outcome("closed-without-answer"))
        if name == "dag":
            if fields is None:
                return Answer(None, "outside the field model (the codec answers)")
            leaf, outcome = evaluate(self.dag, fields)
            return Answer(outcome, f"PUNT: {leaf.reason}" if outcome is None else "")
        if len(r.raw) > self.kernel.capacity:
            return Answer(None, f"{len(r.raw)} bytes: more than BPF_PROG_TEST_RUN takes")
        verdict = self.kernel.verdict(r.raw, r.source_ip, r.destination_ip)
        if verdict.kind == "punt":
            return Answer(None, f"PUNT: {verdict.reason}")
        if fields is None:  # the kernel decided bytes the codec model does not parse into fields
            return Answer(Outcome("kernel-decided-unparsed", rule=verdict.reason), "")
        return Answer(leaf_outcome(verdict.leaf, fields))


class _DataPlaneOracle:
    """The data plane `l7fp run` serves (bpf/dataplane.py) on `policy`, with an echo backend per
    cluster so that a forward's outcome can be read off the answer."""

    def __init__(self, policy: ir.Policy, dag):
        from .bpf.codegen import generate
        from .bpf.dataplane import DataPlane
        from .proofs.envoy_oracle import EchoBackend, free_port

        self._stack = ExitStack()
        try:
            backends = {c.name: EchoBackend(c.name) for c in policy.clusters}
            for backend in backends.values():
                self._stack.callback(backend.close)
            self.address = ("127.0.0.1", free_port())
            plane = DataPlane(policy, generate(dag, policy.hcm), self.address, None,
                              {name: ("127.0.0.1", b.port) for name, b in backends.items()})
            self._stack.enter_context(plane.serving())
        except BaseException:
            self._stack.close()
            raise

    def outcome(self, raw: bytes, source_ip: str) -> Outcome:
        from .proofs.envoy_oracle import outcome_of, send_raw

        return outcome_of(send_raw(self.address, raw, source_ip, timeout=1.5))

    def close(self) -> None:
        self._stack.close()


def _disagreement(answers: dict[str, Answer]) -> str | None:
    deciding = {name: a.outcome for name, a in answers.items() if a.outcome is not None}
    reference = answers.get("reference")
    if reference is not None and reference.outcome is None:
        decided = [n for n in deciding if n in ("dag", "kernel")]
        if decided:
            return f"{', '.join(decided)} decided a request the reference does not model ({reference.abstained})"
    seen = list(deciding.items())
    for i, (a, first) in enumerate(seen):
        for b, second in seen[i + 1:]:
            if first.observable() != second.observable():
                return f"{a} and {b} disagree"
    return None


def run_campaign(policy: ir.Policy, oracles: list[str], max_examples: int = 200, seed: int = 0,
                 compiler=DagCompiler, progress: Callable[[int], None] | None = None) -> Campaign:
    """Run one campaign; stops at the first divergence, shrunk by Hypothesis to a minimal request."""
    unknown = [o for o in oracles if o not in ORACLES]
    if unknown or len(set(oracles)) < 2:
        raise ValueError(f"give at least two of {', '.join(ORACLES)} (got {', '.join(oracles) or 'none'})")
    campaign = Campaign(list(dict.fromkeys(oracles)))
    running = _Oracles(policy, campaign.oracles, compiler)
    last: list[Divergence | None] = [None]
    try:
        @hypothesis_seed(seed)
        @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                  phases=(Phase.generate, Phase.shrink), report_multiple_bugs=False,
                  suppress_health_check=list(HealthCheck))
        @given(raw_requests(policy))
        def probe(request: RawRequest):
            answers = running.answers(request)
            campaign.count(answers)  # shrinking runs count too: they were executed
            if progress:
                progress(campaign.executed)
            why = _disagreement(answers)
            if why:
                last[0] = Divergence(request, answers, why)
                raise _Found(why)

        try:
            probe()
        except _Found:
            campaign.divergences.append(last[0])  # Hypothesis replays the minimal example last
    finally:
        running.close()
    return campaign


def save_cases(campaign: Campaign, directory: str) -> list[str]:
    """Write each divergence as NNN.http (the raw bytes, for `l7fp explain`) and NNN.json (answers)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, divergence in enumerate(campaign.divergences, 1):
        raw_path = out / f"divergence-{index:03d}.http"
        raw_path.write_bytes(divergence.request.raw)
        (out / f"divergence-{index:03d}.json").write_text(json.dumps(divergence.to_json(), indent=2))
        written.append(str(raw_path))
    campaign.saved = written
    return written
