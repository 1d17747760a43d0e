"""Offload classifier: which parts of a policy the kernel decides, which are constants on a
plaintext HTTP/1.1 listener, and which go to Envoy, each with its reason.

compile.py asks `matcher_punt`, `action_punt` and `policy_punt` while building the DAG: a construct
with a punt reason becomes a PUNT leaf exactly where the reference would evaluate it, so requests
that never reach it are still decided in kernel. `classify` summarises the same answers per filter,
RBAC policy and route for `l7fp verify` (refinement.py) and `l7fp coverage`.

What the IR can hold and the kernel does not decide: headers Envoy's connection manager rewrites
before the filters (x-forwarded-*, x-request-id, x-envoy-*, Host), remote_ip behind trusted XFF hops,
non-ASCII operands, regex classes the Z3 encoding cannot state, regex rewrites, redirects to a
non-default port, fault aborts whose status comes from a request header, the host-port options
(strip_port, ignore_port_in_host_matching), and routes that set what only Envoy applies to a
forwarded request (a timeout, retries, mirroring: docs/bugs/0012). Frontends already refuse what
the IR cannot hold (CEL, ext_authz, JWT providers, runtime fractions): see docs/istio.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..semantics import ir
from ..semantics.errors import Origin
from ..semantics.interpreter import DEFAULT_PORTS, rewritten_by_connection_manager
from ..semantics.located_yaml import snake
from ..semantics.symbolic import NotEncodable, regex_to_z3

KERNEL, CONSTANT, PARTIAL, PUNT = "kernel", "constant", "partial", "punt"


@dataclass(frozen=True)
class Component:
    kind: str  # filter | rbac_policy | route | connection_manager
    name: str
    origin: Origin
    status: str  # kernel | constant | partial | punt
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "file": self.origin.file, "line": self.origin.line,
                "key": self.origin.key, "status": self.status, "reasons": list(self.reasons)}


def _string_punt(m: ir.StringMatch | None) -> str | None:
    if m is None:
        return None
    if m.kind == "regex":
        try:
            regex_to_z3(m.regex.ast)
        except NotEncodable as exc:
            return f"regex {m.regex.source!r}: {exc}"
        return None
    if not m.value.isascii():
        return f"non-ASCII operand {m.value!r}"
    return None


def header_punt(h: ir.HeaderMatch) -> str | None:
    if rewritten_by_connection_manager(h.name):
        return f"header {h.name!r} is rewritten by Envoy's connection manager before the filters run"
    return _string_punt(h.string)


def matcher_punt(node, hcm: ir.HcmOptions) -> str | None:
    """Why an atomic RBAC matcher cannot be decided in kernel, or None."""
    if isinstance(node, ir.MatchHeader):
        return header_punt(node.header)
    if isinstance(node, ir.MatchUrlPath):
        return _string_punt(node.path)
    if isinstance(node, ir.MatchIp) and node.kind == "remote_ip" and hcm.use_remote_address \
            and hcm.xff_num_trusted_hops:
        return "remote_ip behind trusted x-forwarded-for hops"
    if isinstance(node, ir.MatchRequestedServerName):
        return _string_punt(node.name)
    return None


def matcher_constant(node) -> str | None:
    """Matchers whose value is fixed on a plaintext listener with this filter chain."""
    if isinstance(node, ir.MatchAuthenticated):
        return "authenticated principal: plaintext connection, no peer certificate (never matches)"
    if isinstance(node, ir.MatchMetadata):
        return "dynamic metadata: no filter in this chain writes it (absent)"
    if isinstance(node, ir.MatchFilterState):
        return "filter state: nothing in this chain sets it (absent)"
    if isinstance(node, ir.MatchRequestedServerName):
        return "requested server name: plaintext connection, no SNI"
    if isinstance(node, (ir.MatchDestinationPort, ir.MatchDestinationPortRange)):
        return "destination port: fixed by the listener"
    return None


# Route action fields that change a forwarded request's answer through time or extra upstream
# traffic, which the kernel does not reproduce (docs/bugs/0012): a route that sets one goes to Envoy.
# The data plane's agent applies only Envoy's implicit 15 s route timeout, so any `timeout` written,
# 0s (none) included, is Envoy's. Not among them: fields without effect on the answer here
# (hash_policy, priority: one endpoint; cluster_not_found_response_code).
ENVOY_ONLY_ROUTE_FIELDS = ("timeout", "idle_timeout", "max_stream_duration", "retry_policy",
                           "request_mirror_policies", "max_grpc_timeout", "grpc_timeout_offset",
                           "auto_host_rewrite")


def envoy_only_fields(action: ir.ForwardAction) -> list[str]:
    """The fields of ENVOY_ONLY_ROUTE_FIELDS the route action sets."""
    written = {snake(key) for key in json.loads(action.operational or "{}")}
    return [key for key in ENVOY_ONLY_ROUTE_FIELDS if key in written]


def action_punt(route: ir.Route) -> str | None:
    action = route.action
    envoy_only = envoy_only_fields(action) if isinstance(action, ir.ForwardAction) else []
    if envoy_only:
        return f"route {', '.join(envoy_only)}: applied by Envoy only"
    rewrites = []
    if isinstance(action, (ir.ForwardAction, ir.RedirectAction)):
        rewrites = [action.prefix_rewrite]
        if action.regex_rewrite is not None:
            return "regex_rewrite (no regex replacement in kernel)"
        if action.prefix_rewrite is not None and route.match.kind not in ("prefix", "path_separated_prefix"):
            return f"prefix_rewrite on a {route.match.kind} route (not modelled)"
    if isinstance(action, ir.ForwardAction):
        rewrites.append(action.host_rewrite)
    if isinstance(action, ir.RedirectAction):
        if (action.scheme or "http") not in DEFAULT_PORTS:
            return f"redirect to scheme {action.scheme!r} (not measured)"
        if action.port is not None and DEFAULT_PORTS.get(action.scheme or "http") != action.port:
            return "port_redirect to a non-default port"
        rewrites += [action.host, action.path]
    for text in rewrites:
        if text is not None and not text.isascii():
            return f"non-ASCII rewrite {text!r}"
    return None


def route_match_punt(route: ir.Route) -> str | None:
    m = route.match
    if m.kind != "safe_regex" and not m.value.isascii():
        return f"non-ASCII route {m.kind} {m.value!r}"
    if m.kind == "safe_regex":
        try:
            regex_to_z3(m.regex.ast)
        except NotEncodable as exc:
            return f"route regex {m.regex.source!r}: {exc}"
    for h in m.headers:
        reason = header_punt(h)
        if reason:
            return reason
    for q in m.query_parameters:
        reason = _string_punt(q.string)
        if reason:
            return reason
    return None


def policy_punt(policy: ir.Policy) -> str | None:
    """Connection-manager options that make every request go to Envoy."""
    if policy.hcm.strip_port != "none":
        return "strip_matching_host_port / strip_any_host_port"
    return None


def routing_punt(config: ir.RouteConfig) -> str | None:
    if config.ignore_port_in_host_matching:
        return "ignore_port_in_host_matching"
    for vhost in config.virtual_hosts:
        for domain in vhost.domains:
            if not domain.isascii():
                return f"non-ASCII domain {domain!r}"
    return None


def _matcher_reasons(node, hcm, punts: list, constants: list):
    if isinstance(node, (ir.MatchAnd, ir.MatchOr)):
        for item in node.items:
            _matcher_reasons(item, hcm, punts, constants)
    elif isinstance(node, ir.MatchNot):
        _matcher_reasons(node.item, hcm, punts, constants)
    else:
        reason = matcher_punt(node, hcm)
        if reason:
            punts.append(reason)
        constant = matcher_constant(node)
        if constant:
            constants.append(constant)


def _status(punts: list, constants: list, whole: bool = False) -> str:
    if punts:
        return PUNT if whole else PARTIAL
    return CONSTANT if constants else KERNEL


def classify(policy: ir.Policy) -> list[Component]:
    """One Component per connection manager, filter, RBAC policy and route."""
    out = []
    reason = policy_punt(policy)
    out.append(Component("connection_manager", "http_connection_manager", ir.NO_ORIGIN,
                         PUNT if reason else KERNEL, (reason,) if reason else ()))
    for f in policy.filters:
        if isinstance(f, ir.RbacFilter):
            if f.rules is None or f.rules.action == "LOG":
                out.append(Component("filter", f.name, f.origin, KERNEL,
                                     ("no enforced rules" if f.rules is None else "LOG never denies",)))
                continue
            for p in f.rules.policies:
                punts, constants = [], []
                for node in (*p.permissions, *p.principals):
                    _matcher_reasons(node, policy.hcm, punts, constants)
                reasons = tuple(dict.fromkeys(punts + constants))
                out.append(Component("rbac_policy", f"{f.name}/{p.name}", p.origin, _status(punts, constants),
                                     reasons))
        else:
            punts = [r for r in (header_punt(h) for h in f.headers) if r]
            if f.http_status is None and f.always:
                punts.append("fault abort status taken from the x-envoy-fault-abort-request header")
            out.append(Component("filter", f.name, f.origin, _status(punts, []), tuple(punts)))
    whole = routing_punt(policy.routes)
    for vhost in policy.routes.virtual_hosts:
        for index, route in enumerate(vhost.routes):
            reasons = [r for r in (whole, route_match_punt(route), action_punt(route)) if r]
            out.append(Component("route", f"{vhost.name}/{route.name or index}", route.origin,
                                 PUNT if reasons else KERNEL, tuple(reasons)))
    return out
