"""Policy IR: what of an Envoy/Istio/DSL policy changes how a request is handled.

Every frontend produces a `Policy`; the reference interpreter (interpreter.py), the Z3 encoding and
the synthesizer (synth/) consume it. All nodes are frozen dataclasses and carry an `Origin` (file,
line, key) so proofs and errors can point back at the policy text. One class per IR node, each with
its meaning in interpreter.py (the Gauntlet model: semantics per node, drivers elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .errors import Origin
from .regex import Regex

NO_ORIGIN = Origin("(builtin)", 0, "")


# ---- string and header matching (envoy.type.matcher.v3, config.route.v3.HeaderMatcher) -----------
@dataclass(frozen=True)
class StringMatch:
    """type.matcher.v3.StringMatcher. kind: exact | prefix | suffix | contains | regex."""

    kind: str
    value: str
    ignore_case: bool = False
    regex: Regex | None = None
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class HeaderMatch:
    """config.route.v3.HeaderMatcher. Exactly one of `string`, `present`, `range` is set.

    `name` is lower case; pseudo-headers (`:path`, `:method`, `:authority`) are allowed.
    """

    name: str
    string: StringMatch | None = None
    present: bool | None = None
    range: tuple[int, int] | None = None  # [start, end)
    invert: bool = False
    treat_missing_as_empty: bool = False
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class QueryParamMatch:
    """config.route.v3.QueryParameterMatcher: string match or presence on the first value."""

    name: str
    string: StringMatch | None = None
    present: bool | None = None
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class Cidr:
    address: str  # IPv4 or IPv6 network address as written
    prefix_len: int


# ---- RBAC permission / principal trees (config.rbac.v3) ------------------------------------------
@dataclass(frozen=True)
class MatchAny:
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchAnd:
    items: tuple
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchOr:
    items: tuple
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchNot:
    item: object
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchHeader:
    header: HeaderMatch
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchUrlPath:
    """rbac url_path: PathMatcher on the path without query (and fragment)."""

    path: StringMatch
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchDestinationPort:
    port: int
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchDestinationPortRange:
    start: int
    end: int  # exclusive
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchIp:
    """kind: destination_ip | source_ip | direct_remote_ip | remote_ip."""

    kind: str
    cidr: Cidr
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchAuthenticated:
    """authenticated principal: needs a TLS peer certificate; L7FP listeners are plaintext."""

    principal: StringMatch | None
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchMetadata:
    """Dynamic metadata (e.g. Istio's istio_authn request principal). No modelled filter writes it."""

    filter: str
    path: tuple[str, ...]
    value: StringMatch | None  # None: present_match
    invert: bool = False
    origin: Origin = NO_ORIGIN
    list_one_of: bool = False  # value is list_match {one_of: value}: a list holding a matching element


@dataclass(frozen=True)
class MatchFilterState:
    """Filter state (e.g. Istio ambient's peer principal). No modelled filter writes it."""

    key: str
    value: StringMatch
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class MatchRequestedServerName:
    """SNI: plaintext connections have none."""

    name: StringMatch
    origin: Origin = NO_ORIGIN


Matcher = Union[MatchAny, MatchAnd, MatchOr, MatchNot, MatchHeader, MatchUrlPath, MatchDestinationPort,
                MatchDestinationPortRange, MatchIp, MatchAuthenticated, MatchMetadata, MatchFilterState,
                MatchRequestedServerName]


@dataclass(frozen=True)
class RbacPolicy:
    """A named policy: matches when any permission and any principal match."""

    name: str
    permissions: tuple
    principals: tuple
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class RbacRules:
    """config.rbac.v3.RBAC: action ALLOW | DENY | LOG and its policies (Envoy orders them by name)."""

    action: str
    policies: tuple[RbacPolicy, ...]
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class RbacFilter:
    """envoy.filters.http.rbac. `rules` None: nothing enforced. Shadow rules never decide."""

    name: str
    rules: RbacRules | None
    shadow_rules: RbacRules | None = None
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class FaultAbortFilter:
    """envoy.filters.http.fault with an abort that always fires (100%) or never (0%) when `headers` match.

    `header_abort`: the status comes from the x-envoy-fault-abort-request header.
    """

    name: str
    http_status: int | None
    header_abort: bool
    always: bool
    headers: tuple[HeaderMatch, ...] = ()
    has_delay: bool = False
    origin: Origin = NO_ORIGIN


HttpFilter = Union[RbacFilter, FaultAbortFilter]


# ---- routing (config.route.v3) ------------------------------------------------------------------
@dataclass(frozen=True)
class RouteMatch:
    """kind: prefix | path | safe_regex | path_separated_prefix."""

    kind: str
    value: str
    regex: Regex | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()
    query_parameters: tuple[QueryParamMatch, ...] = ()
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class RegexRewrite:
    pattern: Regex
    substitution: str


@dataclass(frozen=True)
class ForwardAction:
    cluster: str
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite: str | None = None
    origin: Origin = NO_ORIGIN
    # The route action's fields that do not decide which response a request gets, only when and
    # after how many tries (timeout, retry_policy, ...), as JSON text: not modelled, but written
    # back for the Envoy that runs the policy (semantics/to_envoy.py: the slow path).
    operational: str = ""


@dataclass(frozen=True)
class DirectResponseAction:
    status: int
    body: str = ""
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class RedirectAction:
    scheme: str | None = None  # https_redirect / scheme_redirect
    host: str | None = None
    port: int | None = None
    path: str | None = None
    prefix_rewrite: str | None = None
    regex_rewrite: RegexRewrite | None = None
    strip_query: bool = False
    status: int = 301
    origin: Origin = NO_ORIGIN


RouteAction = Union[ForwardAction, DirectResponseAction, RedirectAction]


@dataclass(frozen=True)
class Route:
    name: str
    match: RouteMatch
    action: RouteAction
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    origin: Origin = NO_ORIGIN


def duplicate_domain(vhosts) -> tuple[VirtualHost, str, str] | None:
    """(virtual host, domain, name of the earlier virtual host) for the first domain listed twice
    (compared case-insensitively, as Envoy does), or None. Envoy refuses such route configs."""
    seen: dict[str, str] = {}
    for vhost in vhosts:
        for domain in vhost.domains:
            if domain.lower() in seen:
                return vhost, domain, seen[domain.lower()]
            seen[domain.lower()] = vhost.name
    return None


@dataclass(frozen=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    ignore_port_in_host_matching: bool = False
    origin: Origin = NO_ORIGIN


# ---- connection manager and the whole policy -----------------------------------------------------
@dataclass(frozen=True)
class HcmOptions:
    """HttpConnectionManager options that change what a request means (semantics.md lists them)."""

    normalize_path: bool = False
    merge_slashes: bool = False
    escaped_slashes_action: str = "KEEP_UNCHANGED"
    max_request_headers_kb: int = 60
    max_headers_count: int = 100
    strip_port: str = "none"  # none | matching | any
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    headers_with_underscores_action: str = "ALLOW"


@dataclass(frozen=True)
class Cluster:
    name: str
    endpoints: tuple[tuple[str, int], ...] = ()
    origin: Origin = NO_ORIGIN
    connect_timeout: str = "5s"  # as written (a Duration; Envoy's default): the slow-path Envoy keeps it


@dataclass(frozen=True)
class Policy:
    """One listener's HTTP handling: codec/HCM options, the HTTP filters in order, the routes."""

    listener: tuple[str, int]
    hcm: HcmOptions
    filters: tuple[HttpFilter, ...]
    routes: RouteConfig
    clusters: tuple[Cluster, ...] = ()
    sources: tuple[str, ...] = field(default=())
    # The `server` header of Envoy's own replies: HCM server_name, None with server_header_transformation
    # PASS_THROUGH. It changes no decision, only the bytes of a local reply (the data plane writes them).
    server_header: str | None = "envoy"
