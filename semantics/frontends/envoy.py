"""Envoy v3 bootstrap (the exact YAML/JSON file real Envoy runs) -> Policy IR.

Reads static_resources: the one listener whose filter chain holds an http_connection_manager, its
HTTP filters (RBAC, fault, router) and inline route_config, and the clusters. Fields that change
request handling and are not modelled are errors (file:line: key); fields listed as inert below
(stats, timeouts, access logs, tracing) do not change which response a request gets.
"""
from __future__ import annotations

import ipaddress
import json

from .. import ir
from ..errors import ConfigError
from ..located_yaml import Node, snake
from . import envoy_matchers as m

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

_ESCAPED_SLASH_ACTIONS = {"IMPLEMENTATION_SPECIFIC_DEFAULT": "KEEP_UNCHANGED", "KEEP_UNCHANGED": "KEEP_UNCHANGED",
                          "REJECT_REQUEST": "REJECT_REQUEST", "UNESCAPE_AND_REDIRECT": "UNESCAPE_AND_REDIRECT",
                          "UNESCAPE_AND_FORWARD": "UNESCAPE_AND_FORWARD"}
_REDIRECT_CODES = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307,
                   "PERMANENT_REDIRECT": 308}
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}

# Fields with no effect on which response a request gets (observability, timeouts, pools).
_INERT_HCM = {"stat_prefix", "access_log", "generate_request_id", "tracing", "stream_idle_timeout",
              "request_timeout", "request_headers_timeout", "drain_timeout", "delayed_close_timeout",
              "add_user_agent", "preserve_external_request_id",
              "always_set_request_id_in_response", "access_log_options", "forward_client_cert_details",
              "set_current_client_cert_details", "via", "internal_address_config", "stream_error_on_invalid_http_message"}
_INERT_ROUTER = {"dynamic_stats", "start_child_span", "upstream_log", "upstream_log_options",
                 "suppress_envoy_headers", "strict_check_headers", "respect_expected_rq_timeout",
                 "suppress_grpc_request_failure_code_stats"}
_INERT_ROUTE_ACTION = {"timeout", "idle_timeout", "retry_policy", "hash_policy", "max_stream_duration",
                       "priority", "request_mirror_policies", "cluster_not_found_response_code",
                       "max_grpc_timeout", "grpc_timeout_offset", "auto_host_rewrite"}


def policy_from_bootstrap(root: Node, listener_name: str | None = None) -> ir.Policy:
    root.fields({"static_resources"}, inert={"admin", "node", "stats_config", "stats_sinks", "stats_flush_interval",
                                             "overload_manager", "cluster_manager", "watchdogs"})
    static = root.req("static_resources")
    static.fields({"listeners", "clusters"}, inert={"secrets"})
    clusters = tuple(_cluster(c) for c in static.get("clusters").list()) if static.has("clusters") else ()
    listeners = static.req("listeners").list()
    if listener_name is not None:
        listeners = [lst for lst in listeners if lst.is_map() and lst.has("name")
                     and lst.req("name").str() == listener_name]
        if not listeners:
            raise static.req("listeners").error(f"no listener named {listener_name!r}")
    if len(listeners) != 1:
        raise static.req("listeners").error(
            f"{len(listeners)} listeners: L7FP models one HTTP listener per policy; pick one with --listener NAME")
    policy = _listener(listeners[0], clusters)
    known = {c.name for c in clusters}
    for vhost in policy.routes.virtual_hosts:
        for route in vhost.routes:
            if isinstance(route.action, ir.ForwardAction) and route.action.cluster not in known:
                raise ConfigError(route.action.origin, f"route refers to unknown cluster {route.action.cluster!r}")
    return policy


def _cluster(node: Node) -> ir.Cluster:
    # Cluster settings (timeouts, load balancing, health checks) do not decide responses; only the name
    # and the endpoint addresses are used (the data plane connects to them).
    name = node.req("name").str()
    endpoints = []
    if node.has("load_assignment"):
        assignment = node.req("load_assignment")
        for group in assignment.get("endpoints").list() if assignment.has("endpoints") else []:
            for lb in group.get("lb_endpoints").list() if group.has("lb_endpoints") else []:
                sock = lb.req("endpoint").req("address").req("socket_address")
                endpoints.append((sock.req("address").str(), sock.req("port_value").int()))
    timeout = node.get("connect_timeout").str() if node.has("connect_timeout") else "5s"  # Envoy's default
    return ir.Cluster(name, tuple(endpoints), node.origin, connect_timeout=timeout)


def _listener(node: Node, clusters) -> ir.Policy:
    node.fields({"address", "filter_chains", "name"},
                inert={"per_connection_buffer_limit_bytes", "stat_prefix", "traffic_direction", "access_log",
                       "metadata"})
    sock = node.req("address").req("socket_address")
    sock.fields({"address", "port_value"}, inert={"protocol"})
    address = (sock.req("address").str(), sock.req("port_value").int())
    try:
        ipaddress.IPv4Address(address[0])
    except ValueError:
        model = "L7FP models IPv4 connections only" if ":" in address[0] else "not an IP address"
        raise sock.req("address").error(f"listener address {address[0]!r}: {model}") from None
    if not 0 <= address[1] < 65536:
        raise sock.req("port_value").error(f"port {address[1]} is not in 0..65535")
    chains = node.req("filter_chains").list()
    if len(chains) != 1:
        raise node.req("filter_chains").error("exactly one filter chain is modelled")
    chain = chains[0]
    chain.fields({"filters"}, inert={"name"})
    filters = chain.req("filters").list()
    if len(filters) != 1:
        raise chain.req("filters").error("the filter chain must hold only an http_connection_manager")
    net = filters[0]
    net.fields({"name", "typed_config"})
    config = net.req("typed_config")
    if config.req("@type").str() != HCM_TYPE:
        raise config.req("@type").error(f"network filter {config.req('@type').str()} is not modelled")
    return _hcm(config, address, clusters)


def _hcm(node: Node, address, clusters) -> ir.Policy:
    node.fields({"@type", "codec_type", "route_config", "http_filters", "normalize_path", "merge_slashes",
                 "path_with_escaped_slashes_action", "max_request_headers_kb", "common_http_protocol_options",
                 "http_protocol_options", "use_remote_address", "xff_num_trusted_hops", "strip_matching_host_port",
                 "strip_any_host_port", "server_name", "server_header_transformation"}, inert=_INERT_HCM)
    if node.has("codec_type") and node.req("codec_type").str() not in ("AUTO", "HTTP1"):
        raise node.req("codec_type").error("only HTTP/1.1 (codec_type AUTO or HTTP1) is modelled")
    hcm = dict(
        normalize_path=node.get("normalize_path").wrapped_bool() if node.has("normalize_path") else False,
        merge_slashes=node.get("merge_slashes").bool() if node.has("merge_slashes") else False,
        use_remote_address=node.get("use_remote_address").wrapped_bool() if node.has("use_remote_address") else False,
        xff_num_trusted_hops=node.get("xff_num_trusted_hops").int() if node.has("xff_num_trusted_hops") else 0,
    )
    if node.has("path_with_escaped_slashes_action"):
        action = node.req("path_with_escaped_slashes_action")
        if action.str() not in _ESCAPED_SLASH_ACTIONS:
            raise action.error(f"unknown path_with_escaped_slashes_action {action.str()!r}")
        hcm["escaped_slashes_action"] = _ESCAPED_SLASH_ACTIONS[action.str()]
    if node.has("max_request_headers_kb"):
        hcm["max_request_headers_kb"] = node.req("max_request_headers_kb").int()
    if node.has("strip_matching_host_port") and node.req("strip_matching_host_port").bool():
        hcm["strip_port"] = "matching"
    if node.has("strip_any_host_port") and node.req("strip_any_host_port").bool():
        hcm["strip_port"] = "any"
    if node.has("common_http_protocol_options"):
        common = node.req("common_http_protocol_options")
        common.fields({"max_headers_count", "headers_with_underscores_action"},
                      inert={"idle_timeout", "max_connection_duration", "max_stream_duration"})
        if common.has("max_headers_count"):
            hcm["max_headers_count"] = common.req("max_headers_count").int()
        if common.has("headers_with_underscores_action"):
            value = common.req("headers_with_underscores_action").str()
            if value != "ALLOW":
                raise common.req("headers_with_underscores_action").error(
                    f"headers_with_underscores_action {value} is not modelled (only ALLOW, the default)")
    if node.has("http_protocol_options"):
        # Only the defaults are modelled; setting a field to its default is accepted.
        proto = node.req("http_protocol_options")
        proto.fields({"accept_http_10", "allow_absolute_url"})
        if proto.has("accept_http_10") and proto.req("accept_http_10").bool():
            raise proto.req("accept_http_10").error("accept_http_10: true is not modelled")
        if proto.has("allow_absolute_url") and not proto.req("allow_absolute_url").wrapped_bool():
            raise proto.req("allow_absolute_url").error("allow_absolute_url: false is not modelled")
    if not node.has("route_config"):
        raise node.error("an inline route_config is required (rds and scoped routes are not modelled)")
    routes = _route_config(node.req("route_config"))
    filters = _http_filters(node.req("http_filters"))
    return ir.Policy(address, ir.HcmOptions(**hcm), filters, routes, clusters, (node.file,),
                     server_header=_server_header(node))


def _server_header(hcm: Node) -> str | None:
    """The `server` header of Envoy's local replies (measured: tests/bpf/test_dataplane.py)."""
    if hcm.has("server_header_transformation"):
        node = hcm.req("server_header_transformation")
        if node.str() not in ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH"):
            raise node.error(f"unknown server_header_transformation {node.str()!r}")
        if node.str() == "PASS_THROUGH":
            return None
    return hcm.req("server_name").str() if hcm.has("server_name") else "envoy"


def _http_filters(node: Node) -> tuple:
    items = node.list()
    if not items:
        raise node.error("http_filters must end with the router filter")
    result = []
    for i, item in enumerate(items):
        item.fields({"name", "typed_config"})
        name = item.req("name").str()
        config = item.req("typed_config")
        type_url = config.req("@type").str()
        last = i == len(items) - 1
        if type_url == ROUTER_TYPE:
            if not last:
                raise item.error("the router filter must be the last HTTP filter")
            config.fields({"@type"}, inert=_INERT_ROUTER)
        elif last:
            raise item.error("the last HTTP filter must be envoy.filters.http.router")
        elif type_url == m.RBAC_TYPE:
            result.append(m.rbac_filter(name, config))
        elif type_url == FAULT_TYPE:
            result.append(_fault(name, config))
        else:
            raise config.req("@type").error(f"HTTP filter {type_url.rsplit('/', 1)[-1]} is not modelled "
                                            f"(modelled: RBAC, HTTPFault abort, Router)")
    return tuple(result)


def _percent_always(node: Node | None, default_numerator: int) -> bool:
    """True for 100%, False for 0%; anything in between is random and not modelled."""
    if node is None:
        numerator, denominator = default_numerator, 100
    else:
        node.fields({"numerator", "denominator"})
        numerator = node.get("numerator").int() if node.has("numerator") else 0
        denom = node.get("denominator").str() if node.has("denominator") else "HUNDRED"
        if denom not in _DENOMINATORS:
            raise node.req("denominator").error(f"unknown denominator {denom}")
        denominator = _DENOMINATORS[denom]
    if numerator >= denominator:
        return True
    if numerator == 0:
        return False
    raise (node or Node(None, "", 0, "percentage")).error(
        f"a fault at {numerator}/{denominator} is random per request; only 0% and 100% are modelled")


def _fault(name: str, node: Node) -> ir.FaultAbortFilter:
    node.fields({"@type", "abort", "delay", "headers"},
                inert={"disable_downstream_cluster_stats", "filter_metadata", "abort_percent_runtime",
                       "abort_http_status_runtime", "delay_percent_runtime", "delay_duration_runtime",
                       "abort_grpc_status_runtime", "max_active_faults_runtime"})
    headers = tuple(m.header_match(h) for h in node.req("headers").list()) if node.has("headers") else ()
    has_delay = False
    if node.has("delay"):
        delay = node.req("delay")
        delay.fields({"fixed_delay", "header_delay", "percentage"})
        has_delay = True  # a delay changes timing, not the response (semantics.md)
    status, header_abort, always = None, False, False
    if node.has("abort"):
        abort = node.req("abort")
        abort.fields({"http_status", "header_abort", "percentage"})
        kind, value = abort.one_of(["http_status", "header_abort"])
        if kind == "http_status":
            status = value.int()
            if not 200 <= status < 600:
                raise value.error("http_status must be in [200, 600)")
        else:
            header_abort = True
        always = _percent_always(abort.get("percentage"), 0)
    return ir.FaultAbortFilter(name, status, header_abort, always, headers, has_delay, node.origin)


def _route_config(node: Node) -> ir.RouteConfig:
    node.fields({"name", "virtual_hosts", "ignore_port_in_host_matching"},
                inert={"validate_clusters", "max_direct_response_body_size_bytes"})
    vhosts = tuple(_virtual_host(v) for v in node.req("virtual_hosts").list())
    duplicate = ir.duplicate_domain(vhosts)
    if duplicate:
        vhost, domain, earlier = duplicate
        raise ConfigError(vhost.origin, f"domain {domain!r} also in virtual host {earlier!r} "
                                        f"(Envoy rejects duplicate domains)")
    ignore_port = (node.get("ignore_port_in_host_matching").bool()
                   if node.has("ignore_port_in_host_matching") else False)
    name = node.get("name").str() if node.has("name") else ""
    return ir.RouteConfig(name, vhosts, ignore_port, node.origin)


def _virtual_host(node: Node) -> ir.VirtualHost:
    node.fields({"name", "domains", "routes"},
                inert={"retry_policy", "include_request_attempt_count", "include_attempt_count_in_response",
                       "hedge_policy", "per_request_buffer_limit_bytes"})
    domains = tuple(d.str() for d in node.req("domains").list())
    for d, dnode in zip(domains, node.req("domains").list()):
        if "*" in d and d != "*" and not (d.startswith("*") or d.endswith("*")):
            raise dnode.error(f"wildcard only at the start or end of a domain: {d!r}")
    routes = tuple(_route(r) for r in node.req("routes").list()) if node.has("routes") else ()
    return ir.VirtualHost(node.req("name").str(), domains, routes, node.origin)


def _route(node: Node) -> ir.Route:
    node.fields({"name", "match", "route", "redirect", "direct_response"}, inert={"decorator", "metadata"})
    match = _route_match(node.req("match"))
    kind, value = node.one_of(["route", "redirect", "direct_response"])
    if kind == "route":
        action = _forward(value)
    elif kind == "redirect":
        action = _redirect(value)
    else:
        value.fields({"status", "body"})
        status = value.req("status").int()
        if not 200 <= status < 600:
            raise value.req("status").error("direct_response status must be in [200, 600)")
        body = ""
        if value.has("body"):
            b = value.req("body")
            b.fields({"inline_string"})
            body = b.req("inline_string").str()
        action = ir.DirectResponseAction(status, body, value.origin)
    name = node.get("name").str() if node.has("name") else ""
    return ir.Route(name, match, action, node.origin)


def _route_match(node: Node) -> ir.RouteMatch:
    node.fields({"prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive", "headers",
                 "query_parameters"})
    kind, value = node.one_of(["prefix", "path", "safe_regex", "path_separated_prefix"])
    regex = None
    if kind == "safe_regex":
        regex = m.regex_of(value)
        text = regex.source
    else:
        text = value.str()
        if kind == "path_separated_prefix" and (not text.startswith("/") or text.endswith("/") or "?" in text
                                                or "#" in text):
            raise value.error("path_separated_prefix must start with '/', not end with '/', no '?' or '#'")
    case_sensitive = node.get("case_sensitive").wrapped_bool() if node.has("case_sensitive") else True
    headers = tuple(m.header_match(h) for h in node.req("headers").list()) if node.has("headers") else ()
    params = (tuple(m.query_param_match(q) for q in node.req("query_parameters").list())
              if node.has("query_parameters") else ())
    return ir.RouteMatch(kind, text, regex, case_sensitive, headers, params, node.origin)


def _regex_rewrite(node: Node) -> ir.RegexRewrite:
    node.fields({"pattern", "substitution"})
    return ir.RegexRewrite(m.regex_of(node.req("pattern")), node.req("substitution").str())


def _forward(node: Node) -> ir.ForwardAction:
    node.fields({"cluster", "weighted_clusters", "prefix_rewrite", "regex_rewrite", "host_rewrite_literal"},
                inert=_INERT_ROUTE_ACTION)
    if node.has("weighted_clusters"):
        weighted = node.req("weighted_clusters")
        weighted.fields({"clusters"}, inert={"total_weight"})
        live = [c for c in weighted.req("clusters").list()
                if not c.has("weight") or c.req("weight").int() > 0]
        if len(live) != 1:
            raise weighted.error("weighted_clusters with more than one non-zero weight pick a cluster at random; "
                                 "not modelled")
        live[0].fields({"name", "weight"})
        cluster = live[0].req("name").str()
        if node.has("cluster"):
            raise node.error("cluster and weighted_clusters are exclusive")
    else:
        cluster = node.req("cluster").str()
    if node.has("prefix_rewrite") and node.has("regex_rewrite"):
        raise node.error("prefix_rewrite and regex_rewrite are exclusive")
    operational = {key: node.value[key] for key in node.value if snake(str(key)) in _INERT_ROUTE_ACTION}
    return ir.ForwardAction(
        cluster,
        prefix_rewrite=node.get("prefix_rewrite").str() if node.has("prefix_rewrite") else None,
        regex_rewrite=_regex_rewrite(node.req("regex_rewrite")) if node.has("regex_rewrite") else None,
        host_rewrite=node.get("host_rewrite_literal").str() if node.has("host_rewrite_literal") else None,
        origin=node.origin, operational=json.dumps(operational, sort_keys=True) if operational else "")


def _redirect(node: Node) -> ir.RedirectAction:
    node.fields({"https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect",
                 "prefix_rewrite", "regex_rewrite", "response_code", "strip_query"})
    scheme = None
    if node.has("https_redirect") and node.req("https_redirect").bool():
        scheme = "https"
    if node.has("scheme_redirect"):
        scheme = node.req("scheme_redirect").str().lower()
    paths = [k for k in ("path_redirect", "prefix_rewrite", "regex_rewrite") if node.has(k)]
    if len(paths) > 1:
        raise node.error(f"{paths} are exclusive")
    code = 301
    if node.has("response_code"):
        name = node.req("response_code").str()
        if name not in _REDIRECT_CODES:
            raise node.req("response_code").error(f"unknown response_code {name}")
        code = _REDIRECT_CODES[name]
    return ir.RedirectAction(
        scheme=scheme,
        host=node.get("host_redirect").str() if node.has("host_redirect") else None,
        port=node.get("port_redirect").int() if node.has("port_redirect") else None,
        path=node.get("path_redirect").str() if node.has("path_redirect") else None,
        prefix_rewrite=node.get("prefix_rewrite").str() if node.has("prefix_rewrite") else None,
        regex_rewrite=_regex_rewrite(node.req("regex_rewrite")) if node.has("regex_rewrite") else None,
        strip_query=node.get("strip_query").bool() if node.has("strip_query") else False,
        status=code, origin=node.origin)
