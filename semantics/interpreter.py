"""Reference interpreter: what Envoy 1.40 does with one request under a Policy.

`interpret(policy, request) -> Outcome` follows Envoy's order: codec (http1.py), connection manager
checks and path handling (paths.py), the HTTP filters in order (RBAC, fault abort), then the router
(virtual host by Host, first matching route, its action). Every rule is written down with its
evidence in docs/semantics.md and checked against the real binary by tests/envoy/. Inputs the model
does not pin down raise `Unmodelled` (never a guess). Used by `l7fp explain`, the Z3 encoding's
cross-checks, the synthesizer's proofs and the fuzz oracles.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

from . import ir
from .http1 import CodecReply, ParsedRequest, Unmodelled, joined_host, parse_request
from .paths import PathReply, normalize, query_params, split_query, strip_query
from .regex import RegexInputError, as_text
from .request import Outcome, Request

RBAC_DENIED_BODY = "RBAC: access denied"
FAULT_ABORT_BODY = "fault filter abort"
# Headers the connection manager adds, rewrites or strips before the filters run; a matcher on them
# would depend on state outside the request (request ids, XFF appending) and is not modelled.
_MUTATED_HEADERS = {"x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                    "x-forwarded-port", "x-envoy-internal", "x-envoy-original-path", ":scheme", ":protocol",
                    "connection", "keep-alive", "proxy-connection", "upgrade", "te", "transfer-encoding", "host",
                    "x-envoy-expected-rq-timeout-ms"}


def rewritten_by_connection_manager(name: str) -> bool:
    return name in _MUTATED_HEADERS or name.startswith("x-envoy-")


class RequestView:
    """The request as the filters and the router see it after the connection manager."""

    def __init__(self, parsed: ParsedRequest, path: str, authority: str, request: Request,
                 policy: ir.Policy):
        self.method = parsed.method
        self.path = path
        self.authority = authority
        self.parsed = parsed
        self.source = request.source
        self.destination = request.destination or policy.listener
        self.hcm = policy.hcm

    def header_values(self, name: str) -> list[str]:
        if name == ":path":
            return [self.path]
        if name == ":method":
            return [self.method]
        if name == ":authority":
            return [self.authority]
        if rewritten_by_connection_manager(name):
            raise Unmodelled(f"a matcher on header {name!r}, which Envoy's connection manager rewrites")
        return self.parsed.values(name)

    def remote_ip(self) -> str:
        """The downstream address Envoy trusts (use_remote_address / x-forwarded-for)."""
        if self.hcm.use_remote_address:
            if self.hcm.xff_num_trusted_hops:
                raise Unmodelled("use_remote_address with xff_num_trusted_hops")
            return self.source[0]
        xff = self.parsed.values("x-forwarded-for")
        if not xff:
            return self.source[0]
        raise Unmodelled("remote_ip derived from x-forwarded-for")


# ---- matchers -----------------------------------------------------------------------------------
def string_matches(m: ir.StringMatch, value: str) -> bool:
    if m.kind == "regex":
        try:
            text = as_text(value.encode("latin-1"))
        except (RegexInputError, UnicodeEncodeError) as exc:
            raise Unmodelled(str(exc)) from None
        return m.regex.full_match(text)
    subject, operand = (value.lower(), m.value.lower()) if m.ignore_case else (value, m.value)
    if m.kind == "exact":
        return subject == operand
    if m.kind == "prefix":
        return subject.startswith(operand)
    if m.kind == "suffix":
        return subject.endswith(operand)
    if m.kind == "contains":
        return operand in subject
    raise AssertionError(m.kind)


_INT64 = re.compile(r"[+-]?[0-9]+")


def header_matches(m: ir.HeaderMatch, values: list[str]) -> bool:
    """Envoy 1.40: a repeated header matches when any one of its values matches (measured)."""
    if m.present is not None:
        return (m.present == bool(values)) != m.invert
    if not values:
        if not m.treat_missing_as_empty:
            return False  # a missing header never matches, inverted or not (measured)
        values = [""]
    if m.range is not None:
        def in_range(v: str) -> bool:
            if not _INT64.fullmatch(v) or not -2**63 <= int(v) < 2**63:
                return False
            return m.range[0] <= int(v) < m.range[1]
        hit = any(in_range(v) for v in values)
    else:
        hit = any(string_matches(m.string, v) for v in values)
    return hit != m.invert


def _in_cidr(ip: str, cidr: ir.Cidr) -> bool:
    network = ipaddress.ip_network(f"{cidr.address}/{cidr.prefix_len}", strict=False)
    address = ipaddress.ip_address(ip)
    return address.version == network.version and address in network


def matcher_holds(node, view: RequestView) -> bool:
    """One RBAC permission or principal node (config.rbac.v3)."""
    if isinstance(node, ir.MatchAny):
        return True
    if isinstance(node, ir.MatchAnd):
        return all(matcher_holds(i, view) for i in node.items)
    if isinstance(node, ir.MatchOr):
        return any(matcher_holds(i, view) for i in node.items)
    if isinstance(node, ir.MatchNot):
        return not matcher_holds(node.item, view)
    if isinstance(node, ir.MatchHeader):
        return header_matches(node.header, view.header_values(node.header.name))
    if isinstance(node, ir.MatchUrlPath):
        return string_matches(node.path, strip_query(view.path))
    if isinstance(node, ir.MatchDestinationPort):
        return view.destination[1] == node.port
    if isinstance(node, ir.MatchDestinationPortRange):
        return node.start <= view.destination[1] < node.end
    if isinstance(node, ir.MatchIp):
        ip = {"destination_ip": view.destination[0], "source_ip": view.source[0],
              "direct_remote_ip": view.source[0]}.get(node.kind)
        if ip is None:
            ip = view.remote_ip()
        return _in_cidr(ip, node.cidr)
    if isinstance(node, ir.MatchAuthenticated):
        return False  # plaintext connection: no peer certificate (Envoy: no ssl -> no match)
    if isinstance(node, ir.MatchMetadata):
        # No modelled filter writes dynamic metadata, so the value is absent: a string or presence
        # matcher on an absent value does not match; `invert` flips that.
        return node.invert
    if isinstance(node, ir.MatchFilterState):
        return False  # absent filter state never matches
    if isinstance(node, ir.MatchRequestedServerName):
        return string_matches(node.name, "")  # plaintext: SNI is the empty string
    raise AssertionError(type(node))


def policy_matches(policy: ir.RbacPolicy, view: RequestView) -> bool:
    return (any(matcher_holds(p, view) for p in policy.permissions)
            and any(matcher_holds(p, view) for p in policy.principals))


def rbac_decision(rules: ir.RbacRules, view: RequestView) -> tuple[bool, str]:
    """(allowed, name of the deciding policy or 'none')."""
    matched = next((p.name for p in rules.policies if policy_matches(p, view)), None)
    if rules.action == "ALLOW":
        return matched is not None, matched or "none"
    if rules.action == "DENY":
        return matched is None, matched or "none"
    return True, matched or "none"  # LOG never denies


# ---- routing ------------------------------------------------------------------------------------
def domain_rank(domain: str) -> tuple[int, int]:
    """Envoy's preference among matching virtual host domains (lower first): exact, then the longest
    suffix wildcard, the longest prefix wildcard, '*'."""
    domain = domain.lower()
    if domain == "*":
        return (3, 0)
    if domain.startswith("*"):
        return (1, 1 - len(domain))
    if domain.endswith("*"):
        return (2, 1 - len(domain))
    return (0, 0)


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    """The domain's rank if it matches `host`. A wildcard never matches the empty string (measured:
    '.example.com' is not '*.example.com')."""
    domain = domain.lower()
    if domain == "*":
        matches = True
    elif domain.startswith("*"):
        matches = len(host) > len(domain) - 1 and host.endswith(domain[1:])
    elif domain.endswith("*"):
        matches = len(host) > len(domain) - 1 and host.startswith(domain[:-1])
    else:
        matches = host == domain
    return domain_rank(domain) if matches else None


def select_virtual_host(config: ir.RouteConfig, authority: str) -> ir.VirtualHost | None:
    host = authority.lower()
    if config.ignore_port_in_host_matching:
        raise Unmodelled("ignore_port_in_host_matching")
    best = None
    for vhost in config.virtual_hosts:
        for domain in vhost.domains:
            rank = _domain_rank(domain, host)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, vhost)
    return best[1] if best else None


def _path_matches(m: ir.RouteMatch, path: str) -> bool:
    if m.kind == "prefix":
        return path.lower().startswith(m.value.lower()) if not m.case_sensitive else path.startswith(m.value)
    bare = strip_query(path)
    if m.kind == "safe_regex":
        try:
            return m.regex.full_match(as_text(bare.encode("latin-1")))
        except RegexInputError as exc:
            raise Unmodelled(str(exc)) from None
    subject, operand = (bare.lower(), m.value.lower()) if not m.case_sensitive else (bare, m.value)
    if m.kind == "path":
        return subject == operand
    if m.kind == "path_separated_prefix":
        return subject == operand or subject.startswith(operand + "/")
    raise AssertionError(m.kind)


def _query_matches(m: ir.QueryParamMatch, path: str) -> bool:
    """First value of the key, undecoded; a key without '=' has the empty value (measured)."""
    values = [v for k, v in query_params(path) if k == m.name]
    if m.present is not None:
        return bool(values) == m.present
    if not values:
        return False
    return string_matches(m.string, values[0] or "")


def route_matches(route: ir.Route, view: RequestView) -> bool:
    m = route.match
    return (_path_matches(m, view.path)
            and all(header_matches(h, view.header_values(h.name)) for h in m.headers)
            and all(_query_matches(q, view.path) for q in m.query_parameters))


def _rewritten_path(route: ir.Route, prefix_rewrite: str | None, regex_rewrite: ir.RegexRewrite | None,
                    path: str) -> str:
    if prefix_rewrite is not None:
        m = route.match
        if m.kind in ("prefix", "path_separated_prefix"):
            return prefix_rewrite + path[len(m.value):]
        raise Unmodelled(f"prefix_rewrite on a {m.kind} route")
    if regex_rewrite is not None:
        head, query = split_query(path)
        try:
            text = as_text(head.encode("latin-1"))
        except RegexInputError as exc:
            raise Unmodelled(str(exc)) from None
        head = regex_rewrite.pattern.global_replace(text, regex_rewrite.substitution)
        return head if query is None else f"{head}?{query}"
    return path


DEFAULT_PORTS = {"http": 80, "https": 443}


def redirect_authority(action: ir.RedirectAction) -> tuple:
    """The Location's authority as a template part (synth/dag.py renders it, symbolic.py states it):
    the host_redirect, or the request's authority; redirected to https (the listener is plain
    http), a trailing ':80' is dropped (measured: `A:80` gives https://A, `A:443` and `A:8080` are
    kept, a redirect that stays http keeps `A:80`; docs/bugs/0007). Schemes other than http and
    https are not measured: Unmodelled."""
    scheme = action.scheme or "http"
    if scheme not in DEFAULT_PORTS:
        raise Unmodelled(f"redirect to scheme {scheme!r}")
    if action.host is not None:
        return ("lit", action.host)
    return ("authority", ":80") if scheme == "https" and action.port is None else ("authority",)


def authority_part(authority: str, part: tuple) -> str:
    """An ("authority", ...) template part for a request whose joined Host is `authority`."""
    drop = part[1] if len(part) > 1 else ""
    return authority[:-len(drop)] if drop and authority.endswith(drop) else authority


def _redirect_location(action: ir.RedirectAction, route: ir.Route, view: RequestView) -> str:
    scheme = action.scheme or "http"
    part = redirect_authority(action)
    authority = part[1] if part[0] == "lit" else authority_part(view.authority, part)
    if action.port is not None:
        if DEFAULT_PORTS.get(scheme) == action.port:
            pass  # measured: a port_redirect equal to the scheme's default leaves the authority as it is
        else:
            host = authority.rsplit(":", 1)[0] if re.search(r":\d+$", authority) else authority
            authority = f"{host}:{action.port}"
    if action.path is not None:
        head, query = split_query(view.path)
        new_head, new_query = split_query(action.path)
        query = new_query if new_query is not None else query
        path = new_head if query is None else f"{new_head}?{query}"
    else:
        path = _rewritten_path(route, action.prefix_rewrite, action.regex_rewrite, view.path)
    if action.strip_query:
        path = split_query(path)[0]
    return f"{scheme}://{authority}{path}"


def route_request(config: ir.RouteConfig, view: RequestView) -> Outcome:
    vhost = select_virtual_host(config, view.authority)
    if vhost is None:
        return Outcome.reply(404, "", "no virtual host", "route_not_found")
    for index, route in enumerate(vhost.routes):
        if not route_matches(route, view):
            continue
        rule = f"virtual_host[{vhost.name}].route[{route.name or index}]"
        action = route.action
        if isinstance(action, ir.ForwardAction):
            path = _rewritten_path(route, action.prefix_rewrite, action.regex_rewrite, view.path)
            return Outcome.forward(action.cluster, path, action.host_rewrite or view.authority, rule)
        if isinstance(action, ir.DirectResponseAction):
            return Outcome.reply(action.status, action.body, rule, "direct_response")
        location = _redirect_location(action, route, view)
        return Outcome.reply(action.status, "", rule, "direct_response", location=location)
    return Outcome.reply(404, "", f"virtual_host[{vhost.name}]: no route", "route_not_found")


# ---- the whole request --------------------------------------------------------------------------
def _fault_abort(f: ir.FaultAbortFilter, view: RequestView) -> int | None:
    if not all(header_matches(h, view.header_values(h.name)) for h in f.headers):
        return None
    if not f.always:
        return None
    if f.http_status is not None:
        return f.http_status
    if view.hcm.use_remote_address:
        raise Unmodelled("header_abort with use_remote_address (x-envoy-* sanitising)")
    if view.parsed.values("x-envoy-fault-abort-request-percentage"):
        raise Unmodelled("x-envoy-fault-abort-request-percentage")
    values = view.parsed.values("x-envoy-fault-abort-request")
    if len(values) != 1:
        if values:
            raise Unmodelled("repeated x-envoy-fault-abort-request")
        return None
    if re.fullmatch(r"[0-9]{1,3}", values[0]) and 200 <= int(values[0]) < 600:
        return int(values[0])
    return None


def interpret_or_reason(policy: ir.Policy, request: Request) -> tuple[Outcome | None, str | None]:
    """(outcome, None), or (None, why the model stops) for a request it does not model."""
    try:
        return interpret(policy, request), None
    except Unmodelled as exc:
        return None, str(exc)


def interpret(policy: ir.Policy, request: Request) -> Outcome:
    """What Envoy does with `request` under `policy` (raises Unmodelled where the model stops)."""
    outcome = _interpret(policy, request)
    if outcome.action == "local_reply" and outcome.body and request.raw.startswith(b"HEAD "):
        # A response to HEAD carries no body (measured: direct responses, RBAC and fault replies).
        # The codec's own error replies (measured: invalid Host, control byte in a value, bad
        # Content-Length) write the body bytes anyway and close; a client reading a response to
        # HEAD reads no body, so what it observes is the same.
        outcome = replace(outcome, body="")
    return outcome


def _interpret(policy: ir.Policy, request: Request) -> Outcome:
    parsed = parse_request(request.raw, policy.hcm.max_request_headers_kb, policy.hcm.max_headers_count)
    if isinstance(parsed, CodecReply):
        return Outcome.reply(parsed.status, parsed.body, "codec", parsed.reason)
    if parsed.target == "*":
        return Outcome.reply(404, "", "connection manager: OPTIONS *", "absolute_path_rejected")
    if parsed.absolute_authority is not None:
        authority = parsed.absolute_authority
    else:
        hosts = parsed.values("host")
        if not hosts:
            return Outcome.reply(400, "", "connection manager: missing Host", "missing_host_header")
        authority = joined_host(hosts)
    if policy.hcm.strip_port != "none":
        raise Unmodelled("strip_matching_host_port / strip_any_host_port")
    path = normalize(parsed.target, policy.hcm)
    if isinstance(path, PathReply):
        return Outcome.reply(path.status, "", "connection manager: path normalization", path.reason,
                             location=path.location)
    view = RequestView(parsed, path, authority, request, policy)
    for f in policy.filters:
        if isinstance(f, ir.RbacFilter):
            if f.rules is None:
                continue
            allowed, name = rbac_decision(f.rules, view)
            if not allowed:
                return Outcome.reply(403, RBAC_DENIED_BODY, f"{f.name}: {f.rules.action} policy {name}",
                                     "rbac_access_denied")
        elif isinstance(f, ir.FaultAbortFilter):
            status = _fault_abort(f, view)
            if status is not None:
                return Outcome.reply(status, FAULT_ABORT_BODY, f"{f.name}: abort", "fault_filter_abort")
    return route_request(policy.routes, view)
