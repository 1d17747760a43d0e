"""Istio AuthorizationPolicy and VirtualService (multi-document YAML, as kubectl takes it) -> IR,
translated the way istiod translates them for a sidecar (pilot/pkg/security/authz and
pilot/pkg/networking/core/route; docs/istio.md lists each rule with its source).

AuthorizationPolicies become RBAC HTTP filters in istiod's order (AUDIT as LOG, then DENY, then
ALLOW), policies named `ns[NS]-policy[NAME]-rule[i]`; `*` wildcards become prefix/suffix/presence
matchers; notX values become not-rules; hosts ignore case; paths use url_path. VirtualServices become
virtual hosts and routes. Anything istiod would do that L7FP does not model (CUSTOM actions, path
templates, weighted destinations, fault injection, header manipulation) is an error naming the file,
line and key.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .. import ir
from ..errors import ConfigError, Origin
from ..located_yaml import Document, Node
from ..regex import parse_at

DEFAULT_LISTENER = ("127.0.0.1", 15006)
WORKLOAD_CLUSTER = "inbound|workload"
ROOT_NAMESPACE = "istio-system"


@dataclass(frozen=True)
class Workload:
    """The proxy the policies are translated for. `labels` None: every policy in the input applies."""

    namespace: str = "default"
    labels: dict | None = None
    trust_domain: str = "cluster.local"
    trust_domain_aliases: tuple[str, ...] = ()
    listener: tuple[str, int] = DEFAULT_LISTENER


# ---- matcher helpers ----------------------------------------------------------------------------
def _wild(value: str, origin: Origin, ignore_case: bool = False) -> ir.StringMatch | None:
    """istiod's StringMatcher for header-like values: `*` -> presence (None), `*x` suffix, `x*` prefix."""
    if value == "*":
        return None
    if value.startswith("*"):
        return ir.StringMatch("suffix", value[1:], ignore_case, origin=origin)
    if value.endswith("*"):
        return ir.StringMatch("prefix", value[:-1], ignore_case, origin=origin)
    return ir.StringMatch("exact", value, ignore_case, origin=origin)


def _header(name: str, value: str, origin: Origin, ignore_case: bool = False) -> ir.MatchHeader:
    m = _wild(value, origin, ignore_case)
    header = (ir.HeaderMatch(name, present=True, origin=origin) if m is None
              else ir.HeaderMatch(name, string=m, origin=origin))
    return ir.MatchHeader(header, origin)


def _regex(pattern: str, origin: Origin) -> ir.StringMatch:
    return ir.StringMatch("regex", pattern, regex=parse_at(pattern, origin), origin=origin)


def _path(value: str, node: Node) -> ir.MatchUrlPath:
    if "{" in value:
        raise node.error(f"path template {value!r} ({{*}}, {{**}}) is not modelled")
    origin = node.origin
    if value == "*":
        m = _regex(".+", origin)
    elif value.endswith("*"):
        m = ir.StringMatch("prefix", value[:-1], origin=origin)
    elif value.startswith("*"):
        m = ir.StringMatch("suffix", value[1:], origin=origin)
    else:
        m = ir.StringMatch("exact", value, origin=origin)
    return ir.MatchUrlPath(m, origin)


def _cidr(value: str, node: Node) -> ir.Cidr:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise node.error(f"not an IP address or CIDR: {value!r}") from None
    address = value.split("/")[0]
    return ir.Cidr(address, net.prefixlen)


def _port(value, node: Node) -> int:
    text = str(value)
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise node.error(f"not a port: {value!r}")
    return int(text)


def _spiffe(value: str, origin: Origin) -> ir.MatchAuthenticated:
    if value == "*":
        m = _regex(".+", origin)
    elif value.startswith("*"):
        m = _regex("spiffe://.*" + re.escape(value[1:]), origin)
    elif value.endswith("*"):
        m = ir.StringMatch("prefix", "spiffe://" + value[:-1], origin=origin)
    else:
        m = ir.StringMatch("exact", "spiffe://" + value, origin=origin)
    return ir.MatchAuthenticated(m, origin)


def _expand_trust_domains(principal: str, workload: Workload) -> list[str]:
    """istiod's trust-domain alias expansion for source principals (trustdomain/bundle.go)."""
    bundle = [workload.trust_domain, *workload.trust_domain_aliases]
    parts = principal.split("/")
    if len(parts) != 5 or parts[0] == "*" or len(bundle) == 1 and bundle[0] == "cluster.local":
        return [principal]
    td, rest = parts[0], "/".join(parts[1:])
    if td in bundle or td == "cluster.local":
        return [f"{t}/{rest}" for t in bundle]
    if td.startswith("*") and any(t.endswith(td[1:]) for t in bundle):
        return [f"{workload.trust_domain}/{rest}", principal]
    return [principal]


def quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta, which istiod uses to build header regexes."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def _inline_header(name: str, value: str, origin: Origin) -> ir.MatchHeader:
    """request.experimental.inline.headers[...]: one element of a comma-separated header value."""
    if value == "*":
        return ir.MatchHeader(ir.HeaderMatch(name, present=True, origin=origin), origin)
    if value.startswith("*"):
        r = ".*" + quote_meta(value[1:])
    elif value.endswith("*"):
        r = quote_meta(value[:-1]) + ".*"
    else:
        r = quote_meta(value)
    pattern = f"^{r}$|^{r},.*|.*,{r},.*|.*,{r}$"
    return ir.MatchHeader(ir.HeaderMatch(name, string=_regex(pattern, origin), origin=origin), origin)


def _jwt(path: tuple[str, ...], value: str, origin: Origin) -> ir.MatchMetadata:
    return ir.MatchMetadata("envoy.filters.http.jwt_authn", path, _wild(value, origin) or _regex(".+", origin),
                            False, origin)


def _request_principal(value: str, origin: Origin):
    if value == "*":
        return _jwt(("payload", "iss"), "*", origin)
    iss, _, sub = value.rpartition("/")
    return ir.MatchAnd((_jwt(("payload", "iss"), iss, origin), _jwt(("payload", "sub"), sub, origin)), origin)


# ---- sources, operations, conditions -------------------------------------------------------------
_PRINCIPAL_FIELDS = ["principals", "request_principals", "service_accounts", "namespaces", "remote_ip_blocks",
                     "ip_blocks"]
_OPERATION_FIELDS = ["hosts", "methods", "paths", "ports"]


def _values(node: Node | None) -> list[tuple[str, Node]]:
    if node is None:
        return []
    return [(item.str(), item) for item in node.list()]


def _field_matcher(field_name: str, value: str, node: Node, policy_ns: str, workload: Workload) -> list:
    origin = node.origin
    if field_name == "principals":
        return [_spiffe(p, origin) for p in _expand_trust_domains(value, workload)]
    if field_name == "request_principals":
        return [_request_principal(value, origin)]
    if field_name == "namespaces":
        return [ir.MatchAuthenticated(_regex(".*/ns/" + value.replace("*", ".*") + "/.*", origin), origin)]
    if field_name == "service_accounts":
        ns, _, sa = value.rpartition("/")
        return [ir.MatchAuthenticated(_regex(f"spiffe://.+/ns/{re.escape(ns or policy_ns)}/(.+/|)sa/"
                                             f"{re.escape(sa)}(/.+)?", origin), origin)]
    if field_name == "ip_blocks":
        return [ir.MatchIp("direct_remote_ip", _cidr(value, node), origin)]
    if field_name == "remote_ip_blocks":
        return [ir.MatchIp("remote_ip", _cidr(value, node), origin)]
    if field_name == "hosts":
        return [_header(":authority", value, origin, ignore_case=True)]
    if field_name == "methods":
        return [_header(":method", value, origin)]
    if field_name == "paths":
        return [_path(value, node)]
    if field_name == "ports":
        return [ir.MatchDestinationPort(_port(value, node), origin)]
    raise AssertionError(field_name)


def _or(items: list, origin: Origin):
    return ir.MatchOr(tuple(items), origin)


def _fields(node: Node, names: list[str], policy_ns: str, workload: Workload) -> list:
    """AND of: per field, OR of its values; per notField, NOT(OR of its values). istiod's order."""
    clauses = []
    for name in names:
        for negated in (False, True):
            key = f"not_{name}" if negated else name
            values = _values(node.get(key))
            if not values:
                continue
            items = [m for v, n in values for m in _field_matcher(name, v, n, policy_ns, workload)]
            clause = _or(items, node.req(key).origin)
            clauses.append(ir.MatchNot(clause, clause.origin) if negated else clause)
    return clauses


_PERMISSION_KEYS = {"destination.ip", "destination.port", "connection.sni"}
_HEADER_KEY = re.compile(r"request\.headers\[(.+)\]")
_INLINE_HEADER_KEY = re.compile(r"request\.experimental\.inline\.headers\[(.+)\]")
_EXPERIMENTAL_KEY = re.compile(r"experimental\.(envoy\.filters\.[\w.]+)\[(.+)\]")


def _condition(node: Node, policy_ns: str, workload: Workload) -> tuple[str, object]:
    """A `when` entry -> ("permission" | "principal", matcher)."""
    node.fields({"key", "values", "not_values"})
    key = node.req("key").str()
    values, not_values = _values(node.get("values")), _values(node.get("not_values"))
    if not values and not not_values:
        raise node.error(f"condition {key!r} needs values or notValues")
    header = _HEADER_KEY.fullmatch(key)
    inline = _INLINE_HEADER_KEY.fullmatch(key)
    experimental = _EXPERIMENTAL_KEY.fullmatch(key)

    def one(value: str, vnode: Node) -> list:
        origin = vnode.origin
        if header:
            return [_header(header.group(1).lower(), value, origin)]
        if inline:
            return [_inline_header(inline.group(1).lower(), value, origin)]
        if experimental:
            # istiod: a metadata matcher on filter A.B, key c; "[x]" values match a list element.
            listed = re.fullmatch(r"\[(.*)\]", value)
            inner = _wild(listed.group(1) if listed else value, origin) or _regex(".+", origin)
            return [ir.MatchMetadata(experimental.group(1), (experimental.group(2),), inner, False, origin,
                                     list_one_of=bool(listed))]
        if key == "source.ip":
            return [ir.MatchIp("direct_remote_ip", _cidr(value, vnode), origin)]
        if key == "remote.ip":
            return [ir.MatchIp("remote_ip", _cidr(value, vnode), origin)]
        if key == "destination.ip":
            return [ir.MatchIp("destination_ip", _cidr(value, vnode), origin)]
        if key == "destination.port":
            return [ir.MatchDestinationPort(_port(value, vnode), origin)]
        if key == "connection.sni":
            return [ir.MatchRequestedServerName(_wild(value, origin) or _regex(".+", origin), origin)]
        if key == "source.namespace":
            return _field_matcher("namespaces", value, vnode, policy_ns, workload)
        if key == "source.principal":
            return _field_matcher("principals", value, vnode, policy_ns, workload)
        if key == "request.auth.principal":
            return [_request_principal(value, origin)]
        if key == "request.auth.audiences":
            return [_jwt(("payload", "aud"), value, origin)]
        if key == "request.auth.presenter":
            return [_jwt(("payload", "azp"), value, origin)]
        claims = re.fullmatch(r"request\.auth\.claims((?:\[[^\]]+\])+)", key)
        if claims:
            return [_jwt(("payload", *re.findall(r"\[([^\]]+)\]", claims.group(1))), value, origin)]
        raise node.req("key").error(f"condition key {key!r} is not modelled")

    clauses = []
    if values:
        clauses.append(_or([m for v, n in values for m in one(v, n)], node.origin))
    if not_values:
        clauses.append(ir.MatchNot(_or([m for v, n in not_values for m in one(v, n)], node.origin), node.origin))
    side = "permission" if key in _PERMISSION_KEYS else "principal"
    return side, clauses


def _rule(rule: Node, policy_ns: str, workload: Workload) -> tuple[tuple, tuple]:
    rule.fields({"from", "to", "when"})
    perm_conditions, princ_conditions = [], []
    for cond in rule.get("when").list() if rule.has("when") else []:
        side, clauses = _condition(cond, policy_ns, workload)
        (perm_conditions if side == "permission" else princ_conditions).extend(clauses)
    return (_side(rule, "to", "operation", _OPERATION_FIELDS, perm_conditions, policy_ns, workload),
            _side(rule, "from", "source", _PRINCIPAL_FIELDS, princ_conditions, policy_ns, workload))


def _side(rule: Node, key: str, inner: str, names: list[str], conditions: list, policy_ns: str,
          workload: Workload) -> tuple:
    """The permissions (`to`/operation) or principals (`from`/source) of a rule: one AND per entry,
    each with the rule's conditions of that side; a rule without entries gets one for its conditions."""
    items = []
    for entry in rule.get(key).list() if rule.has(key) else []:
        entry.fields({inner})
        body = entry.req(inner)
        body.fields(set(names) | {f"not_{f}" for f in names})
        items.append(ir.MatchAnd(tuple(_fields(body, names, policy_ns, workload) + conditions)
                                 or (ir.MatchAny(body.origin),), body.origin))
    if not items:
        items = [ir.MatchAnd(tuple(conditions) or (ir.MatchAny(rule.origin),), rule.origin)]
    return tuple(items)


# ---- AuthorizationPolicy -------------------------------------------------------------------------
@dataclass
class _Group:
    rules: list = field(default_factory=list)
    shadow: list = field(default_factory=list)


def _applies(doc: Node, spec: Node, workload: Workload) -> bool:
    if workload.labels is None:
        return True
    namespace = doc.req("metadata").get("namespace").str() if doc.req("metadata").has("namespace") else "default"
    if namespace not in (workload.namespace, ROOT_NAMESPACE):
        return False
    if spec.has("target_ref") or spec.has("target_refs"):
        return False  # sidecars ignore targetRef policies (istiod)
    if not spec.has("selector"):
        return True
    selector = spec.req("selector")
    selector.fields({"match_labels"})
    wanted = {k: n.str() for k, n in selector.req("match_labels").items()} if selector.has("match_labels") else {}
    return all(workload.labels.get(k) == v for k, v in wanted.items())


def _authorization_policy(doc: Node, workload: Workload, groups: dict[str, _Group]) -> None:
    doc.fields({"api_version", "kind", "metadata", "spec"})
    meta = doc.req("metadata")
    meta.fields({"name"}, inert={"namespace", "labels", "annotations", "uid", "resource_version", "generation",
                                 "creation_timestamp"})
    name = meta.req("name").str()
    namespace = meta.get("namespace").str() if meta.has("namespace") else "default"
    spec = doc.get("spec") or Node({}, doc.file, doc.line, "spec")
    spec.fields({"action", "rules", "selector"}, inert={"target_ref", "target_refs"})
    if not _applies(doc, spec, workload):
        return
    action = spec.get("action").str() if spec.has("action") else "ALLOW"
    if action == "CUSTOM":
        raise spec.req("action").error("action CUSTOM (ext_authz) is not modelled")
    if action not in ("ALLOW", "DENY", "AUDIT"):
        raise spec.req("action").error(f"unknown action {action!r}")
    dry_run = False
    if meta.has("annotations"):
        for key, value in meta.req("annotations").items():
            if key == "istio.io/dry-run":
                dry_run = str(value.value).lower() in ("true", "1", "t")
    rules = spec.get("rules").list() if spec.has("rules") else []
    policies = []
    live_rules = [r for r in rules if r.value is not None]
    if not live_rules:
        # istiod: no rules -> one policy that never matches (allow nothing / deny nothing)
        origin = (spec.get("rules") or spec).origin
        policies.append(ir.RbacPolicy(f"ns[{namespace}]-policy[{name}]-rule[0]",
                                      (ir.MatchNot(ir.MatchAny(origin), origin),),
                                      (ir.MatchNot(ir.MatchAny(origin), origin),), origin))
    for index, rule in enumerate(rules):
        if rule.value is None:
            continue
        permissions, principals = _rule(rule, namespace, workload)
        policies.append(ir.RbacPolicy(f"ns[{namespace}]-policy[{name}]-rule[{index}]", permissions, principals,
                                      rule.origin))
    group = groups.setdefault(action, _Group())
    (group.shadow if dry_run else group.rules).extend(policies)


def _by_name(policies: list[ir.RbacPolicy]) -> tuple[ir.RbacPolicy, ...]:
    return tuple(sorted(policies, key=lambda p: p.name))  # Envoy evaluates policies in name order


_ACTION_ORDER = [("AUDIT", "LOG"), ("DENY", "DENY"), ("ALLOW", "ALLOW")]


def _rbac_filters(groups: dict[str, _Group], origin: Origin) -> list[ir.RbacFilter]:
    filters = []
    for istio_action, envoy_action in _ACTION_ORDER:
        group = groups.get(istio_action)
        if group is None:
            continue
        rules = ir.RbacRules(envoy_action, _by_name(group.rules), origin) if group.rules else None
        shadow = ir.RbacRules(envoy_action, _by_name(group.shadow), origin) if group.shadow else None
        filters.append(ir.RbacFilter("envoy.filters.http.rbac", rules, shadow, origin))
    return filters


# ---- VirtualService ------------------------------------------------------------------------------
_REDIRECT_CODES = {301, 302, 303, 307, 308}


def _vs_string(node: Node) -> ir.StringMatch:
    node.fields({"exact", "prefix", "regex"})
    kind, value = node.one_of(["exact", "prefix", "regex"])
    if kind == "regex":
        return _regex(value.str(), value.origin)
    return ir.StringMatch(kind, value.str(), origin=value.origin)


def _vs_header(name: str, node: Node, without: bool) -> ir.HeaderMatch:
    if node.value in ({}, None):
        return ir.HeaderMatch(name.lower(), present=not without, origin=node.origin)
    m = _vs_string(node)
    if m.kind == "regex" and m.value == "*":
        return ir.HeaderMatch(name.lower(), present=not without, origin=node.origin)
    return ir.HeaderMatch(name.lower(), string=m, invert=without, treat_missing_as_empty=without, origin=node.origin)


def _vs_match(node: Node | None, origin: Origin) -> ir.RouteMatch:
    if node is None:
        return ir.RouteMatch("prefix", "/", origin=origin)
    node.fields({"uri", "headers", "without_headers", "query_params", "ignore_uri_case", "method", "authority",
                 "name"})
    kind, value, regex = "prefix", "/", None
    if node.has("uri"):
        m = _vs_string(node.req("uri"))
        kind, value, regex = {"exact": "path", "prefix": "prefix", "regex": "safe_regex"}[m.kind], m.value, m.regex
    headers = []
    for key, hnode in (node.req("headers").items() if node.has("headers") else []):
        headers.append(_vs_header(key, hnode, without=False))
    for key, hnode in (node.req("without_headers").items() if node.has("without_headers") else []):
        headers.append(_vs_header(key, hnode, without=True))
    headers.sort(key=lambda h: h.name)
    for pseudo, key in ((":method", "method"), (":authority", "authority")):
        if node.has(key):
            headers.append(ir.HeaderMatch(pseudo, string=_vs_string(node.req(key)), origin=node.req(key).origin))
    params = []
    for key, qnode in (node.req("query_params").items() if node.has("query_params") else []):
        params.append(ir.QueryParamMatch(key, string=_vs_string(qnode), origin=qnode.origin))
    case_sensitive = not (node.get("ignore_uri_case").bool() if node.has("ignore_uri_case") else False)
    return ir.RouteMatch(kind, value, regex, case_sensitive, tuple(headers), tuple(params), node.origin)


def _cluster_name(dest: Node) -> str:
    dest.fields({"host", "subset", "port"})
    host = dest.req("host").str()
    subset = dest.get("subset").str() if dest.has("subset") else ""
    port = ""
    if dest.has("port"):
        dest.req("port").fields({"number"})
        port = str(dest.req("port").req("number").int())
    return f"outbound|{port}|{subset}|{host}"


def _vs_action(http: Node, match: ir.RouteMatch):
    if http.has("redirect"):
        r = http.req("redirect")
        r.fields({"uri", "authority", "port", "scheme", "redirect_code"})
        code = r.get("redirect_code").int() if r.has("redirect_code") else 301
        if code not in _REDIRECT_CODES:
            raise r.req("redirect_code").error(f"redirectCode {code}: istiod emits a route without action")
        return ir.RedirectAction(scheme=r.get("scheme").str() if r.has("scheme") else None,
                                 host=r.get("authority").str() if r.has("authority") else None,
                                 port=r.get("port").int() if r.has("port") else None,
                                 path=r.get("uri").str() if r.has("uri") else None,
                                 status=code, origin=r.origin)
    if http.has("direct_response"):
        d = http.req("direct_response")
        d.fields({"status", "body"})
        body = ""
        if d.has("body"):
            d.req("body").fields({"string"})
            body = d.req("body").req("string").str()
        return ir.DirectResponseAction(d.req("status").int(), body, d.origin)
    routes = http.req("route").list()
    live = [r for r in routes if not r.has("weight") or r.req("weight").int() > 0]
    if len(live) != 1:
        raise http.req("route").error("several weighted destinations pick one at random: not modelled")
    live[0].fields({"destination", "weight"})
    cluster = _cluster_name(live[0].req("destination"))
    prefix_rewrite = host_rewrite = None
    if http.has("rewrite"):
        rw = http.req("rewrite")
        rw.fields({"uri", "authority"})
        if rw.has("uri"):
            if match.kind not in ("prefix",):
                raise rw.req("uri").error("rewrite.uri on a non-prefix match is not modelled")
            prefix_rewrite = rw.req("uri").str()
        host_rewrite = rw.get("authority").str() if rw.has("authority") else None
    return ir.ForwardAction(cluster, prefix_rewrite=prefix_rewrite, host_rewrite=host_rewrite, origin=http.origin)


def _virtual_service(doc: Node) -> tuple[list[str], list[ir.Route], Origin]:
    doc.fields({"api_version", "kind", "metadata", "spec"})
    doc.req("metadata").fields({"name"}, inert={"namespace", "labels", "annotations"})
    spec = doc.req("spec")
    spec.fields({"hosts", "http", "gateways"}, inert={"export_to"})
    if spec.has("gateways"):
        gateways = [g.str() for g in spec.req("gateways").list()]
        if gateways and "mesh" not in gateways:
            raise spec.req("gateways").error("gateway-bound VirtualServices (no 'mesh') do not apply to sidecars; "
                                             "gateway translation is not modelled")
    hosts = [h.str() for h in spec.req("hosts").list()]
    routes = []
    for http in spec.req("http").list():
        if http.has("fault"):
            raise http.req("fault").error("fault injection in a VirtualService is not modelled")
        http.fields({"name", "match", "route", "redirect", "direct_response", "rewrite"},
                    inert={"timeout", "retries", "mirror", "mirror_percentage", "mirror_percent", "mirrors"})
        name = http.get("name").str() if http.has("name") else ""
        matches = http.get("match").list() if http.has("match") else [None]
        for m in matches:
            match = _vs_match(m, http.origin)
            routes.append(ir.Route(name, match, _vs_action(http, match), http.origin))
            if m is None:
                break
    return hosts, routes, spec.origin


# ---- whole policies ---------------------------------------------------------------------------------
def _default_routes(origin: Origin) -> ir.RouteConfig:
    route = ir.Route("default", ir.RouteMatch("prefix", "/", origin=origin), ir.ForwardAction(WORKLOAD_CLUSTER,
                                                                                              origin=origin), origin)
    return ir.RouteConfig("inbound", (ir.VirtualHost("inbound|http", ("*",), (route,), origin),), False, origin)


def policy_with_default_routes(filters: list, sources: tuple[str, ...],
                               listener: tuple[str, int] = DEFAULT_LISTENER) -> ir.Policy:
    """RBAC filters in front of an inbound route that forwards everything to the workload."""
    origin = Origin(sources[0] if sources else "(builtin)", 0, "")
    return ir.Policy(listener, ir.HcmOptions(), tuple(filters), _default_routes(origin),
                     (ir.Cluster(WORKLOAD_CLUSTER, (), origin),), sources)


def policy_from_documents(docs: list[Document], workload: Workload | None = None) -> ir.Policy:
    workload = workload or Workload()
    groups: dict[str, _Group] = {}
    vhosts = []
    for doc in docs:
        root = doc.root
        kind = root.req("kind").str()
        api = root.req("api_version").str()
        if kind == "AuthorizationPolicy" and api.startswith("security.istio.io/"):
            _authorization_policy(root, workload, groups)
        elif kind == "VirtualService" and api.startswith("networking.istio.io/"):
            hosts, routes, origin = _virtual_service(root)
            name = root.req("metadata").req("name").str()
            vhosts.append(ir.VirtualHost(name, tuple(hosts), tuple(routes), origin))
        else:
            raise root.req("kind").error(f"{api} {kind} is not modelled (AuthorizationPolicy, VirtualService)")
    sources = tuple(sorted({d.file for d in docs}))
    origin = Origin(sources[0], 0, "")
    filters = _rbac_filters(groups, origin)
    if not vhosts:
        return policy_with_default_routes(filters, sources, workload.listener)
    clusters = sorted({r.action.cluster for v in vhosts for r in v.routes if isinstance(r.action, ir.ForwardAction)})
    duplicate = ir.duplicate_domain(vhosts)
    if duplicate:
        vhost, domain, earlier = duplicate
        raise ConfigError(vhost.origin, f"host {domain!r} is also in VirtualService {earlier!r}; "
                                        f"merging VirtualServices is not modelled")
    routes = ir.RouteConfig("outbound", tuple(vhosts), False, origin)
    return ir.Policy(workload.listener, ir.HcmOptions(), tuple(filters), routes,
                     tuple(ir.Cluster(c, (), origin) for c in clusters), sources)
