"""Small policies built directly as IR, one per DAG compilation rule, for the mutation tests
(mutants.py) and the proof tests. Each is small so that its proof takes a fraction of a second."""
from __future__ import annotations

from l7fp.semantics import ir
from l7fp.semantics.regex import parse

LISTENER = ("127.0.0.1", 18080)


def sm(kind: str, value: str, ignore_case: bool = False) -> ir.StringMatch:
    return ir.StringMatch(kind, value, ignore_case, parse(value) if kind == "regex" else None)


def header(name: str, string: ir.StringMatch | None = None, present: bool | None = None,
           invert: bool = False) -> ir.MatchHeader:
    return ir.MatchHeader(ir.HeaderMatch(name, string=string, present=present, invert=invert))


def method(*names: str) -> ir.MatchOr:
    return ir.MatchOr(tuple(header(":method", sm("exact", n)) for n in names))


def url_path(kind: str, value: str) -> ir.MatchUrlPath:
    return ir.MatchUrlPath(sm(kind, value))


def rbac(action: str, **policies) -> ir.RbacFilter:
    """One RBAC filter; each keyword is a policy name -> permission matcher (any principal)."""
    items = tuple(ir.RbacPolicy(name, (perm,), (ir.MatchAny(),)) for name, perm in sorted(policies.items()))
    return ir.RbacFilter(f"rbac-{action.lower()}", ir.RbacRules(action, items))


def route(kind: str = "prefix", value: str = "/", cluster: str = "app", case_sensitive: bool = True,
          headers=(), query=(), action=None, **forward) -> ir.Route:
    match = ir.RouteMatch(kind, value, parse(value) if kind == "safe_regex" else None, case_sensitive,
                          tuple(headers), tuple(query))
    return ir.Route(f"{kind}:{value}", match, action or ir.ForwardAction(cluster, **forward))


def policy(*routes: ir.Route, filters=(), domains=("*",), vhosts=None, hcm=ir.HcmOptions()) -> ir.Policy:
    vhosts = vhosts or (ir.VirtualHost("all", tuple(domains), tuple(routes)),)
    clusters = sorted({r.action.cluster for v in vhosts for r in v.routes if isinstance(r.action, ir.ForwardAction)})
    return ir.Policy(LISTENER, hcm, tuple(filters), ir.RouteConfig("local", tuple(vhosts)),
                     tuple(ir.Cluster(c, (("127.0.0.1", 18900),)) for c in clusters), ("(test policy)",))


# One policy per compilation rule the mutants break.
AND_POLICY = policy(route(), filters=[rbac("ALLOW", reads=ir.MatchAnd((method("GET"), url_path("prefix", "/a"))))])
NOT_POLICY = policy(route(), filters=[rbac("DENY", unsigned=ir.MatchNot(header("x-sig", present=True)))])
DENY_POLICY = policy(route(), filters=[rbac("DENY", admin=url_path("prefix", "/admin"))])
VHOST_POLICY = policy(vhosts=(ir.VirtualHost("any", ("*",), (route(cluster="other"),)),
                              ir.VirtualHost("api", ("api.example.com",), (route(cluster="api"),))))
WILDCARD_POLICY = policy(vhosts=(ir.VirtualHost("wild", ("*.example.com",), (route(cluster="wild"),)),
                                 ir.VirtualHost("any", ("*",), (route(cluster="other"),))))
FIRST_ROUTE_POLICY = policy(route(value="/a/b", cluster="deep"), route(value="/a", cluster="shallow"))
CASE_POLICY = policy(route(value="/API", cluster="api", case_sensitive=False), route(value="/", cluster="other"))
REPEATED_HEADER_POLICY = policy(route(), filters=[rbac("ALLOW", admins=header("x-role", sm("exact", "admin")))])
NORMALIZE_POLICY = policy(route(value="/a", cluster="a"), route(value="/", cluster="other"),
                          hcm=ir.HcmOptions(normalize_path=True))
HEAD_POLICY = policy(route(), filters=[rbac("DENY", everything=ir.MatchAny())])
REWRITE_POLICY = policy(route(value="/api/", prefix_rewrite="/"), route(value="/", cluster="other"))
INVERT_POLICY = policy(route(), filters=[rbac("DENY", debug=header("x-debug", sm("exact", "0"), invert=True))])
# path_separated_prefix compiles to two tests on the path: equal to "/a", else prefix "/a/".
PRUNE_POLICY = policy(route(kind="path_separated_prefix", value="/a", cluster="a"), route(value="/", cluster="other"))
REMOTE_IP_POLICY = policy(route(), filters=[rbac("ALLOW", office=ir.MatchIp("remote_ip", ir.Cidr("10.0.0.0", 8)))])
QUERY_POLICY = policy(route(value="/", cluster="debug", query=[ir.QueryParamMatch("debug", present=True)]),
                      route(value="/", cluster="other"))
FAULT_POLICY = policy(route(), filters=[ir.FaultAbortFilter("fault", 503, False, True,
                                                            (ir.HeaderMatch("x-fault", present=True),))])
STRIP_QUERY_POLICY = policy(route(value="/old", action=ir.RedirectAction(path="/new", strip_query=True)),
                            route(value="/", cluster="other"))
