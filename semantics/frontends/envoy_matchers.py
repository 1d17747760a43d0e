"""Envoy v3 matcher messages (type.matcher.v3, config.route.v3.HeaderMatcher, config.rbac.v3) -> IR.

Shared by the Envoy bootstrap frontend (envoy.py) and, for Istio golden outputs, by tests that load
a bare RBAC filter. Every function takes a located `Node` and raises `ConfigError` on anything not
modelled.
"""
from __future__ import annotations

import ipaddress

from .. import ir
from ..located_yaml import Node
from ..regex import parse_at

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def regex_of(node: Node) -> ir.Regex:
    """type.matcher.v3.RegexMatcher: {google_re2: {}, regex: ...}."""
    node.fields({"regex", "google_re2"})
    if node.has("google_re2"):
        engine = node.req("google_re2")
        if engine.value not in ({}, None):
            engine.fields(set(), {"max_program_size"})
    return parse_at(node.req("regex").str(), node.req("regex").origin)


def string_match(node: Node) -> ir.StringMatch:
    """type.matcher.v3.StringMatcher."""
    node.fields({"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"})
    kind, value = node.one_of(["exact", "prefix", "suffix", "contains", "safe_regex"])
    ignore_case = node.get("ignore_case").bool() if node.has("ignore_case") else False
    if kind == "safe_regex":
        if ignore_case:
            raise node.req("ignore_case").error("ignore_case has no effect on safe_regex in Envoy; remove it")
        regex = regex_of(value)
        return ir.StringMatch("regex", regex.source, False, regex, node.origin)
    text = value.str()
    if kind != "exact" and not text:
        raise value.error(f"{kind} must not be empty (Envoy: min_len 1)")
    return ir.StringMatch(kind, text, ignore_case, None, node.origin)


_LEGACY_HEADER_FORMS = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                        "contains_match": "contains"}


def header_match(node: Node) -> ir.HeaderMatch:
    """config.route.v3.HeaderMatcher (all forms, including the deprecated *_match strings)."""
    node.fields({"name", "exact_match", "safe_regex_match", "range_match", "present_match",
                 "prefix_match", "suffix_match", "contains_match", "string_match", "invert_match",
                 "treat_missing_header_as_empty"})
    name = node.req("name").str().lower()
    if not name:
        raise node.req("name").error("header name must not be empty")
    invert = node.get("invert_match").bool() if node.has("invert_match") else False
    missing_empty = (node.get("treat_missing_header_as_empty").bool()
                     if node.has("treat_missing_header_as_empty") else False)
    forms = ["exact_match", "safe_regex_match", "range_match", "present_match", "prefix_match",
             "suffix_match", "contains_match", "string_match"]
    present_forms = [f for f in forms if node.has(f)]
    if len(present_forms) > 1:
        raise node.error(f"HeaderMatcher sets more than one match form: {present_forms}")
    common = dict(invert=invert, treat_missing_as_empty=missing_empty, origin=node.origin)
    if not present_forms:
        # Envoy: no match form means "header present" (HeaderMatcher docs, specifier unset).
        return ir.HeaderMatch(name, present=True, **common)
    form = present_forms[0]
    value = node.req(form)
    if form == "string_match":
        return ir.HeaderMatch(name, string=string_match(value), **common)
    if form == "safe_regex_match":
        regex = regex_of(value)
        return ir.HeaderMatch(name, string=ir.StringMatch("regex", regex.source, False, regex, value.origin),
                              **common)
    if form == "present_match":
        return ir.HeaderMatch(name, present=value.bool(), **common)
    if form == "range_match":
        value.fields({"start", "end"})
        start, end = value.req("start").int(), value.req("end").int()
        return ir.HeaderMatch(name, range=(start, end), **common)
    text = value.str()
    if form != "exact_match" and not text:
        raise value.error(f"{form} must not be empty (Envoy: min_len 1)")
    return ir.HeaderMatch(name, string=ir.StringMatch(_LEGACY_HEADER_FORMS[form], text, False, None,
                                                      value.origin), **common)


def query_param_match(node: Node) -> ir.QueryParamMatch:
    node.fields({"name", "string_match", "present_match"})
    name = node.req("name").str()
    kind, value = node.one_of(["string_match", "present_match"])
    if kind == "string_match":
        return ir.QueryParamMatch(name, string=string_match(value), origin=node.origin)
    return ir.QueryParamMatch(name, present=value.bool(), origin=node.origin)


def cidr(node: Node) -> ir.Cidr:
    node.fields({"address_prefix", "prefix_len"})
    address = node.req("address_prefix").str()
    prefix_len = node.get("prefix_len").int() if node.has("prefix_len") else None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise node.req("address_prefix").error(f"not an IP address: {address!r}") from None
    if prefix_len is None:
        prefix_len = 0  # CidrRange.prefix_len: "Defaults to 0 when unset"
    if not 0 <= prefix_len <= parsed.max_prefixlen:
        raise node.req("prefix_len").error(f"prefix_len {prefix_len} out of range for {address}")
    return ir.Cidr(address, prefix_len)


def _any(node: Node) -> ir.MatchAny:
    if node.value is not True:
        raise node.error("'any' must be true")
    return ir.MatchAny(node.origin)


def _metadata(node: Node) -> ir.MatchMetadata:
    node.fields({"filter", "path", "value", "invert"})
    keys = []
    for seg in node.req("path").list():
        seg.fields({"key"})
        keys.append(seg.req("key").str())
    value = node.req("value")
    value.fields({"string_match", "present_match", "list_match"})
    kind, inner = value.one_of(["string_match", "present_match", "list_match"])
    list_one_of = kind == "list_match"
    if list_one_of:
        inner.fields({"one_of"})
        inner = inner.req("one_of")
        inner.fields({"string_match"})
        kind, inner = "string_match", inner.req("string_match")
    matcher = string_match(inner) if kind == "string_match" else None
    if kind == "present_match" and inner.bool() is not True:
        raise inner.error("present_match: false is not modelled")
    invert = node.get("invert").bool() if node.has("invert") else False
    return ir.MatchMetadata(node.req("filter").str(), tuple(keys), matcher, invert, node.origin, list_one_of)


def permission(node: Node) -> object:
    """config.rbac.v3.Permission."""
    forms = ["and_rules", "or_rules", "any", "header", "url_path", "destination_ip", "destination_port",
             "destination_port_range", "metadata", "not_rule", "requested_server_name"]
    node.fields(set(forms))
    kind, value = node.one_of(forms)
    return _matcher(kind, value, permission, node)


def principal(node: Node) -> object:
    """config.rbac.v3.Principal."""
    forms = ["and_ids", "or_ids", "any", "authenticated", "source_ip", "direct_remote_ip", "remote_ip",
             "header", "url_path", "metadata", "filter_state", "not_id"]
    node.fields(set(forms))
    kind, value = node.one_of(forms)
    return _matcher(kind, value, principal, node)


def _matcher(kind: str, value: Node, recurse, node: Node) -> object:
    origin = node.origin
    if kind in ("and_rules", "or_rules", "and_ids", "or_ids"):
        field = "rules" if kind.endswith("rules") else "ids"
        value.fields({field})
        items = tuple(recurse(item) for item in value.req(field).list())
        if not items:
            raise value.error(f"{kind}.{field} must not be empty")
        return (ir.MatchAnd if kind.startswith("and") else ir.MatchOr)(items, origin)
    if kind in ("not_rule", "not_id"):
        return ir.MatchNot(recurse(value), origin)
    if kind == "any":
        return _any(value)
    if kind == "header":
        return ir.MatchHeader(header_match(value), origin)
    if kind == "url_path":
        value.fields({"path"})
        return ir.MatchUrlPath(string_match(value.req("path")), origin)
    if kind == "destination_port":
        port = value.int()
        if not 0 <= port <= 65535:
            raise value.error(f"port {port} out of range")
        return ir.MatchDestinationPort(port, origin)
    if kind == "destination_port_range":
        value.fields({"start", "end"})
        return ir.MatchDestinationPortRange(value.req("start").int(), value.req("end").int(), origin)
    if kind in ("destination_ip", "source_ip", "direct_remote_ip", "remote_ip"):
        return ir.MatchIp(kind, cidr(value), origin)
    if kind == "authenticated":
        value.fields({"principal_name"})
        name = string_match(value.req("principal_name")) if value.has("principal_name") else None
        return ir.MatchAuthenticated(name, origin)
    if kind == "metadata":
        return _metadata(value)
    if kind == "filter_state":
        value.fields({"key", "string_match"})
        return ir.MatchFilterState(value.req("key").str(), string_match(value.req("string_match")), origin)
    if kind == "requested_server_name":
        return ir.MatchRequestedServerName(string_match(value), origin)
    raise value.error(f"{kind} is not modelled")


_ACTIONS = {"ALLOW", "DENY", "LOG"}


def rbac_rules(node: Node) -> ir.RbacRules:
    """config.rbac.v3.RBAC."""
    node.fields({"action", "policies"}, inert={"audit_logging_options"})
    action = node.get("action").str() if node.has("action") else "ALLOW"
    if action not in _ACTIONS:
        raise node.req("action").error(f"RBAC action {action!r} is not modelled (ALLOW, DENY, LOG)")
    policies = []
    if node.has("policies"):
        for name, pnode in node.req("policies").items():
            pnode.fields({"permissions", "principals"})
            perms = tuple(permission(p) for p in pnode.req("permissions").list())
            princ = tuple(principal(p) for p in pnode.req("principals").list())
            if not perms or not princ:
                raise pnode.error("a policy needs at least one permission and one principal")
            policies.append(ir.RbacPolicy(name, perms, princ, pnode.origin))
    # Envoy keeps policies in a std::map: evaluation (and the reported policy) follows name order.
    policies.sort(key=lambda p: p.name)
    return ir.RbacRules(action, tuple(policies), node.origin)


def rbac_filter(name: str, config: Node) -> ir.RbacFilter:
    """typed_config of envoy.filters.http.rbac (extensions.filters.http.rbac.v3.RBAC)."""
    config.fields({"@type", "rules", "shadow_rules"},
                  inert={"shadow_rules_stat_prefix", "rules_stat_prefix", "track_per_rule_stats"})
    rules = rbac_rules(config.req("rules")) if config.has("rules") else None
    shadow = rbac_rules(config.req("shadow_rules")) if config.has("shadow_rules") else None
    return ir.RbacFilter(name, rules, shadow, config.origin)


def bare_http_filter(node: Node) -> ir.RbacFilter:
    """A document holding one HTTP filter ({name, typed_config}), as istiod's golden outputs do."""
    node.fields({"name", "typed_config"})
    config = node.req("typed_config")
    type_url = config.req("@type").str()
    if type_url != RBAC_TYPE:
        raise config.req("@type").error(f"only RBAC filter documents are accepted here, got {type_url}")
    return rbac_filter(node.req("name").str(), config)
