"""Policy IR -> an Envoy v3 bootstrap (a dict ready for YAML) that real Envoy runs.

The inverse of frontends/envoy.py, used wherever L7FP runs a policy in Envoy from its IR: the Istio
frontend's output checked with `envoy --mode validate`, the Istio golden tests, the Envoy that
`l7fp fuzz --oracle envoy` runs, and the slow-path Envoy that `l7fp run` supervises
(bpf/dataplane.py). Cluster endpoints are taken from the IR, or from `endpoints` when the caller
points clusters somewhere else (tests, the data plane).
"""
from __future__ import annotations

import json

from . import ir

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                   308: "PERMANENT_REDIRECT"}


def string_match(m: ir.StringMatch) -> dict:
    if m.kind == "regex":
        return {"safe_regex": {"regex": m.value}}
    out = {m.kind: m.value}
    if m.ignore_case:
        out["ignore_case"] = True
    return out


def header_match(h: ir.HeaderMatch) -> dict:
    out: dict = {"name": h.name}
    if h.present is not None:
        out["present_match"] = h.present
    elif h.range is not None:
        out["range_match"] = {"start": h.range[0], "end": h.range[1]}
    else:
        out["string_match"] = string_match(h.string)
    if h.invert:
        out["invert_match"] = True
    if h.treat_missing_as_empty:
        out["treat_missing_header_as_empty"] = True
    return out


def _cidr(c: ir.Cidr) -> dict:
    return {"address_prefix": c.address, "prefix_len": c.prefix_len}


def matcher(node, principal: bool) -> dict:
    """One permission (principal=False) or principal node."""
    if isinstance(node, ir.MatchAny):
        return {"any": True}
    if isinstance(node, (ir.MatchAnd, ir.MatchOr)):
        kind = ("and" if isinstance(node, ir.MatchAnd) else "or") + ("_ids" if principal else "_rules")
        return {kind: {("ids" if principal else "rules"): [matcher(i, principal) for i in node.items]}}
    if isinstance(node, ir.MatchNot):
        return {("not_id" if principal else "not_rule"): matcher(node.item, principal)}
    if isinstance(node, ir.MatchHeader):
        return {"header": header_match(node.header)}
    if isinstance(node, ir.MatchUrlPath):
        return {"url_path": {"path": string_match(node.path)}}
    if isinstance(node, ir.MatchDestinationPort):
        return {"destination_port": node.port}
    if isinstance(node, ir.MatchDestinationPortRange):
        return {"destination_port_range": {"start": node.start, "end": node.end}}
    if isinstance(node, ir.MatchIp):
        return {node.kind: _cidr(node.cidr)}
    if isinstance(node, ir.MatchAuthenticated):
        return {"authenticated": {"principal_name": string_match(node.principal)} if node.principal else {}}
    if isinstance(node, ir.MatchMetadata):
        value = {"string_match": string_match(node.value)} if node.value else {"present_match": True}
        if node.list_one_of:
            value = {"list_match": {"one_of": value}}
        out = {"filter": node.filter, "path": [{"key": k} for k in node.path], "value": value}
        if node.invert:
            out["invert"] = True
        return {"metadata": out}
    if isinstance(node, ir.MatchFilterState):
        return {"filter_state": {"key": node.key, "string_match": string_match(node.value)}}
    if isinstance(node, ir.MatchRequestedServerName):
        return {"requested_server_name": string_match(node.name)}
    raise TypeError(type(node))


def rbac_rules(rules: ir.RbacRules) -> dict:
    return {"action": rules.action, "policies": {
        p.name: {"permissions": [matcher(m, False) for m in p.permissions],
                 "principals": [matcher(m, True) for m in p.principals]} for p in rules.policies}}


def http_filter(f) -> dict:
    if isinstance(f, ir.RbacFilter):
        config: dict = {"@type": RBAC}
        if f.rules is not None:
            config["rules"] = rbac_rules(f.rules)
        if f.shadow_rules is not None:
            config["shadow_rules"] = rbac_rules(f.shadow_rules)
        return {"name": f.name, "typed_config": config}
    if isinstance(f, ir.FaultAbortFilter):
        abort: dict = {"percentage": {"numerator": 100 if f.always else 0, "denominator": "HUNDRED"}}
        if f.header_abort:
            abort["header_abort"] = {}
        else:
            abort["http_status"] = f.http_status
        config = {"@type": FAULT, "abort": abort}
        if f.headers:
            config["headers"] = [header_match(h) for h in f.headers]
        return {"name": f.name, "typed_config": config}
    raise TypeError(type(f))


def _regex_rewrite(r: ir.RegexRewrite) -> dict:
    return {"pattern": {"regex": r.pattern.source}, "substitution": r.substitution}


def route(r: ir.Route) -> dict:
    m = r.match
    match: dict = {m.kind: m.value} if m.kind != "safe_regex" else {"safe_regex": {"regex": m.value}}
    if not m.case_sensitive:
        match["case_sensitive"] = False
    if m.headers:
        match["headers"] = [header_match(h) for h in m.headers]
    if m.query_parameters:
        match["query_parameters"] = [
            {"name": q.name, **({"present_match": q.present} if q.present is not None
                                else {"string_match": string_match(q.string)})} for q in m.query_parameters]
    out: dict = {"match": match}
    if r.name:
        out["name"] = r.name
    a = r.action
    if isinstance(a, ir.ForwardAction):
        action: dict = {"cluster": a.cluster}
        if a.prefix_rewrite is not None:
            action["prefix_rewrite"] = a.prefix_rewrite
        if a.regex_rewrite is not None:
            action["regex_rewrite"] = _regex_rewrite(a.regex_rewrite)
        if a.host_rewrite is not None:
            action["host_rewrite_literal"] = a.host_rewrite
        if a.operational:  # timeouts, retries: as the policy wrote them
            action.update(json.loads(a.operational))
        out["route"] = action
    elif isinstance(a, ir.DirectResponseAction):
        out["direct_response"] = {"status": a.status, **({"body": {"inline_string": a.body}} if a.body else {})}
    else:
        redirect: dict = {"response_code": _REDIRECT_CODES[a.status]}
        if a.scheme:
            redirect["scheme_redirect"] = a.scheme
        if a.host:
            redirect["host_redirect"] = a.host
        if a.port is not None:
            redirect["port_redirect"] = a.port
        if a.path is not None:
            redirect["path_redirect"] = a.path
        if a.prefix_rewrite is not None:
            redirect["prefix_rewrite"] = a.prefix_rewrite
        if a.regex_rewrite is not None:
            redirect["regex_rewrite"] = _regex_rewrite(a.regex_rewrite)
        if a.strip_query:
            redirect["strip_query"] = True
        out["redirect"] = redirect
    return out


def bootstrap(policy: ir.Policy, listener: tuple[str, int] | None = None,
              endpoints: dict[str, tuple[str, int]] | None = None) -> dict:
    """The Envoy bootstrap running `policy` on `listener` (default: the policy's own)."""
    host, port = listener or policy.listener
    hcm_opts = policy.hcm
    hcm: dict = {"@type": HCM, "stat_prefix": "l7fp", "codec_type": "HTTP1",
                 "normalize_path": hcm_opts.normalize_path, "merge_slashes": hcm_opts.merge_slashes,
                 "path_with_escaped_slashes_action": hcm_opts.escaped_slashes_action,
                 "max_request_headers_kb": hcm_opts.max_request_headers_kb,
                 "common_http_protocol_options": {"max_headers_count": hcm_opts.max_headers_count},
                 "use_remote_address": hcm_opts.use_remote_address}
    if hcm_opts.xff_num_trusted_hops:
        hcm["xff_num_trusted_hops"] = hcm_opts.xff_num_trusted_hops
    if hcm_opts.strip_port == "matching":
        hcm["strip_matching_host_port"] = True
    elif hcm_opts.strip_port == "any":
        hcm["strip_any_host_port"] = True
    if policy.server_header is None:
        hcm["server_header_transformation"] = "PASS_THROUGH"
    elif policy.server_header != "envoy":
        hcm["server_name"] = policy.server_header
    hcm["http_filters"] = [http_filter(f) for f in policy.filters] + [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    rc = policy.routes
    hcm["route_config"] = {"name": rc.name or "local", "virtual_hosts": [
        {"name": v.name, "domains": list(v.domains), "routes": [route(r) for r in v.routes]}
        for v in rc.virtual_hosts]}
    if rc.ignore_port_in_host_matching:
        hcm["route_config"]["ignore_port_in_host_matching"] = True
    clusters = []
    for c in policy.clusters:
        address = (endpoints or {}).get(c.name) or (c.endpoints[0] if c.endpoints else ("127.0.0.1", 9))
        clusters.append({"name": c.name, "connect_timeout": c.connect_timeout, "type": "STATIC", "load_assignment": {
            "cluster_name": c.name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": address[0], "port_value": address[1]}}}}]}]}})
    return {"static_resources": {
        "listeners": [{"name": "l7fp", "address": {"socket_address": {"address": host, "port_value": port}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": clusters}}
