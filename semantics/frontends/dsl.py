"""The L7FP policy DSL: a compact text form for writing policies by hand (docs/dsl.md).

Parsed with lark (dsl.lark) into the same IR as the Envoy and Istio frontends: `deny` statements
form one DENY RBAC filter, `allow` statements one ALLOW filter after it, `route` statements the
routes of a single virtual host in order. Errors name file, line and column.
"""
from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from .. import ir
from ..errors import ConfigError, Origin
from ..located_yaml import read_policy_text
from ..regex import parse_at

_PARSER = Lark(Path(__file__).with_name("dsl.lark").read_text(), parser="lalr", propagate_positions=True)
_STROPS = {"==": "exact", "prefix": "prefix", "suffix": "suffix", "contains": "contains", "regex": "regex"}


class _File:
    def __init__(self, path: str):
        self.path = path

    def origin(self, item, key: str) -> Origin:
        line = item.line if isinstance(item, Token) else item.meta.line
        return Origin(self.path, line, key)

    def string(self, token: Token) -> str:
        return ast.literal_eval(str(token))

    def string_match(self, op: Token, value: Token, key: str, ignore_case: bool = False) -> ir.StringMatch:
        kind, text = _STROPS[str(op)], self.string(value)
        origin = self.origin(value, key)
        if kind == "regex":
            return ir.StringMatch("regex", text, regex=parse_at(text, origin), origin=origin)
        return ir.StringMatch(kind, text, ignore_case, origin=origin)

    def cond(self, tree: Tree, sides: set) -> object:
        o = self.origin(tree, tree.data)
        kids = tree.children
        if tree.data == "or_cond":
            return ir.MatchOr(tuple(self.cond(k, sides) for k in kids), o)
        if tree.data == "and_cond":
            return ir.MatchAnd(tuple(self.cond(k, sides) for k in kids), o)
        if tree.data == "not_":
            return ir.MatchNot(self.cond(kids[0], sides), o)
        if tree.data == "method_is":
            return ir.MatchHeader(ir.HeaderMatch(":method", string=ir.StringMatch("exact", str(kids[0]))), o)
        if tree.data == "method_in":
            return ir.MatchOr(tuple(ir.MatchHeader(ir.HeaderMatch(
                ":method", string=ir.StringMatch("exact", str(k)))) for k in kids), o)
        if tree.data == "path":
            return ir.MatchUrlPath(self.string_match(kids[0], kids[1], "path"), o)
        if tree.data == "host":
            m = self.string_match(kids[0], kids[1], "host", ignore_case=kids[0] != "regex")
            return ir.MatchHeader(ir.HeaderMatch(":authority", string=m, origin=o), o)
        if tree.data == "header":
            m = self.string_match(kids[1], kids[2], f"header {kids[0]}")
            return ir.MatchHeader(ir.HeaderMatch(str(kids[0]), string=m, origin=o), o)
        if tree.data == "header_present":
            return ir.MatchHeader(ir.HeaderMatch(str(kids[0]), present=True, origin=o), o)
        if tree.data == "source_ip":
            sides.add("principal")
            address, prefix = str(kids[0]).split("/")
            return ir.MatchIp("direct_remote_ip", ir.Cidr(address, int(prefix)), o)
        if tree.data == "port":
            sides.add("permission")
            return ir.MatchDestinationPort(int(kids[0]), o)
        raise ConfigError(o, f"unknown condition {tree.data}")


def _parse(path: str, text: str) -> Tree:
    try:
        return _PARSER.parse(text)
    except UnexpectedInput as exc:
        raise ConfigError(Origin(path, exc.line, f"column {exc.column}"),
                          f"DSL syntax error near {exc.get_context(text).splitlines()[0].strip()!r}") from None


def policy_from_files(paths: list[str]) -> ir.Policy:
    listener = ("127.0.0.1", 10000)
    hcm: dict = {}
    clusters: dict[str, ir.Cluster] = {}
    groups: dict[str, list[ir.RbacPolicy]] = {"deny": [], "allow": []}
    routes: list[ir.Route] = []
    for path in paths:
        text = read_policy_text(path)
        f = _File(path)
        statements = _parse(path, text).children
        if not statements:
            raise ConfigError(Origin(path, 0, "(file)"), "no statement in the file (empty, or only comments)")
        for stmt in statements:
            kids = stmt.children
            if stmt.data == "listener":
                listener = _ipv4_address(f, kids[0], "listener")
            elif stmt.data == "options":
                hcm.update({str(k): True for k in kids})
            elif stmt.data == "cluster":
                address = _ipv4_address(f, kids[1], f"cluster {kids[0]}")
                clusters[str(kids[0])] = ir.Cluster(str(kids[0]), (address,), f.origin(stmt, "cluster"))
            elif stmt.data == "rbac":
                action, name = str(kids[0]), f.string(kids[1])
                sides: set = set()
                tree = f.cond(kids[2], sides) if isinstance(kids[2], Tree) else None
                o = f.origin(stmt, f"{action} {name}")
                if len(sides) == 2:
                    raise ConfigError(o, "a rule cannot mix 'source ip' (who) and 'port' (what): split it in two")
                any_ = (ir.MatchAny(o),)
                perms, princ = ((tree,), any_) if "principal" not in sides else (any_, (tree,))
                groups[action].append(ir.RbacPolicy(name, perms, princ, o))
            else:
                routes.append(_route(f, stmt, len(routes)))
    for r in routes:
        if isinstance(r.action, ir.ForwardAction) and r.action.cluster not in clusters:
            raise ConfigError(r.origin, f"route to undeclared cluster {r.action.cluster!r}: add 'cluster NAME IP:PORT'")
    first = Origin(paths[0], 1, "")
    filters = []
    for action, name in (("deny", "dsl-deny"), ("allow", "dsl-allow")):
        if groups[action]:
            policies = tuple(sorted(groups[action], key=lambda p: p.name))
            filters.append(ir.RbacFilter(name, ir.RbacRules(action.upper(), policies, first), None, first))
    vhost = ir.VirtualHost("dsl", ("*",), tuple(routes), first)
    return ir.Policy(listener, ir.HcmOptions(**hcm), tuple(filters), ir.RouteConfig("dsl", (vhost,), False, first),
                     tuple(clusters.values()), tuple(paths))


def _ipv4_address(f: _File, token: Token, key: str) -> tuple[str, int]:
    """IP:PORT as the grammar lets it through, checked: a dotted IPv4 address and a port."""
    host, port = str(token).rsplit(":", 1)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(f.origin(token, key), f"{host!r} is not an IPv4 address") from None
    if not 0 < int(port) < 65536:
        raise ConfigError(f.origin(token, key), f"port {port} is not in 1..65535")
    return host, int(port)


def _route(f: _File, stmt: Tree, index: int) -> ir.Route:
    kids = stmt.children
    kind = {"prefix": "prefix", "path": "path", "regex": "safe_regex"}[str(kids[0])]
    value = f.string(kids[1])
    o = f.origin(stmt, f"route[{index}]")
    regex = parse_at(value, o) if kind == "safe_regex" else None
    headers = ()
    action_tree = kids[-1]
    if len(kids) == 4:
        cond = f.cond(kids[2], set())
        items = cond.items if isinstance(cond, ir.MatchAnd) else (cond,)
        if not all(isinstance(i, ir.MatchHeader) for i in items):
            raise ConfigError(o, "a route condition may only test headers ('header NAME ...', 'method', 'host'), "
                                 "joined with 'and'")
        headers = tuple(i.header for i in items)
    match = ir.RouteMatch(kind, value, regex, True, headers, (), o)
    a = action_tree.children
    if action_tree.data == "forward":
        rewrite = f.string(a[1]) if len(a) > 1 else None
        if rewrite is not None and kind != "prefix":
            raise ConfigError(o, "'rewrite' needs a prefix route")
        action = ir.ForwardAction(str(a[0]), prefix_rewrite=rewrite, origin=o)
    elif action_tree.data == "respond":
        if not 200 <= int(a[0]) < 600:  # Envoy's direct_response.status bound
            raise ConfigError(o, f"respond status {a[0]} must be in [200, 600)")
        action = ir.DirectResponseAction(int(a[0]), f.string(a[1]) if len(a) > 1 else "", o)
    else:
        code = int(a[1]) if len(a) > 1 else 301
        if code not in (301, 302, 303, 307, 308):
            raise ConfigError(o, f"redirect code {code} is not a redirect")
        action = ir.RedirectAction(path=f.string(a[0]), status=code, origin=o)
    return ir.Route(f"route[{index}]", match, action, o)
