"""IR -> match-action DAG (dag.py): the synthesizer.

`compile_policy(policy)` builds the DAG bottom-up in continuation-passing style: each construct is
compiled with the node to go to when it holds and the node to go to when it does not, so the rest
of the decision (the next filter, the next route) is shared, never copied. Nodes are hash-consed
(the same test with the same children is one node) and a test whose two children are the same node
is dropped. A final pass removes tests already decided on every path into them (a method tested
equal to GET is not tested against POST again).

Each compilation rule is one method of `DagCompiler`; tests/proofs/mutants.py breaks each rule in a
subclass and checks that the proof rejects it. The DAG is only trusted once proofs/refinement.py
has proven it against the reference semantics (semantics/symbolic.py).
"""
from __future__ import annotations

from typing import Callable

import networkx as nx

from ..semantics import ir
from ..semantics.interpreter import FAULT_ABORT_BODY, RBAC_DENIED_BODY, domain_rank, redirect_authority, string_matches
from ..semantics.symbolic import mentioned_headers
from . import offload
from .bounds import KernelBounds
from .dag import Dag, Leaf, Test, branches, test_holds

Branch = Callable[[int, int], int]  # (node if it holds, node if not) -> node

_PUNT_COST = 100


class DagCompiler:
    def __init__(self, policy: ir.Policy, bounds: KernelBounds | None = None):
        self.policy = policy
        self.bounds = bounds or KernelBounds.for_connection_manager(policy.hcm)
        self.headers = frozenset(mentioned_headers(policy))
        self.graph = nx.DiGraph()
        self._nodes: dict = {}

    # ---- node construction ------------------------------------------------------------------
    def leaf(self, leaf: Leaf) -> int:
        key = ("leaf", leaf)
        if key not in self._nodes:
            n = self._nodes[key] = len(self._nodes)
            self.graph.add_node(n, item=leaf)
        return self._nodes[key]

    def test(self, test: Test, yes: int, no: int) -> int:
        if yes == no:
            return yes
        key = ("test", test, yes, no)
        if key not in self._nodes:
            n = self._nodes[key] = len(self._nodes)
            self.graph.add_node(n, item=test)
            self.graph.add_edge(n, yes, branch=True)
            self.graph.add_edge(n, no, branch=False)
        return self._nodes[key]

    def punt(self, reason: str) -> int:
        return self.leaf(Leaf("punt", reason=reason))

    def all_of(self, items: list[Branch], yes: int, no: int) -> int:
        node = yes
        for item in reversed(items):
            node = item(node, no)
        return node

    def any_of(self, items: list[Branch], yes: int, no: int) -> int:
        node = no
        for item in reversed(items):
            node = item(yes, node)
        return node

    # ---- the whole policy -------------------------------------------------------------------
    def compile(self) -> Dag:
        reason = offload.policy_punt(self.policy)
        decision = self.punt(reason) if reason else self.filter_chain()
        root = self.guard(decision)
        root = self.prune_decided(root)
        return Dag(self.graph.subgraph(nx.descendants(self.graph, root) | {root}).copy(), root, self.bounds,
                   self.headers)

    def guard(self, following: int) -> int:
        """The kernel's bounds as tests: anything outside them reaches a PUNT leaf."""
        b = self.bounds
        node = following
        for name in sorted(self.headers, reverse=True):
            field = f"header:{name}"
            node = self.test(Test(field, "chars_in", b.value_chars), node,
                             self.punt(f"header {name}: a byte outside printable ASCII"))
            node = self.test(Test(field, "len_le", b.max_header_value), node,
                             self.punt(f"header {name}: value longer than {b.max_header_value} bytes"))
            node = self.test(Test(f"count:{name}", "le", 1), node, self.punt(f"header {name} repeated"))
        node = self.test(Test("authority", "chars_in", b.authority_chars), node,
                         self.punt("Host: a byte outside [A-Za-z0-9-._:[]]"))
        node = self.test(Test("authority", "len_le", b.max_authority), node,
                         self.punt(f"Host longer than {b.max_authority} bytes"))
        node = self.test(Test("count:host", "eq", 1), node, self.punt("no Host header, or more than one"))
        node = self.test(Test("target", "chars_in", b.target_chars), node,
                         self.punt("request-target: '#' (a fragment)"))
        for pattern, op in (("//", "contains"), ("/./", "contains"), ("/../", "contains"), ("/.", "suffix"),
                            ("/..", "suffix")):
            node = self.test(Test("path", op, pattern), self.punt(f"path: {pattern!r} (normalisation)"), node)
        node = self.test(Test("path", "chars_in", b.path_chars), node,
                         self.punt("path: '%', '\\\\', ';', '#' or a byte outside the kernel's set"))
        node = self.test(Test("target", "len_le", b.max_target), node,
                         self.punt(f"request-target longer than {b.max_target} bytes"))
        return self.test(Test("method", "one_of", b.methods), node, self.punt("method not decided in kernel"))

    def filter_chain(self) -> int:
        node = self.routing()
        for f in reversed(self.policy.filters):
            node = self.rbac_filter(f, node) if isinstance(f, ir.RbacFilter) else self.fault_filter(f, node)
        return node

    # ---- RBAC ---------------------------------------------------------------------------------
    def rbac_filter(self, f: ir.RbacFilter, following: int) -> int:
        if f.rules is None:
            return following  # nothing enforced; shadow rules never decide
        policies = [lambda yes, no, p=p: self.rbac_policy(p, yes, no) for p in f.rules.policies]
        if f.rules.action == "LOG":
            # LOG never denies, but Envoy still evaluates its policies (up to the first match): a
            # matcher the kernel cannot decide there still means PUNT. Decided tests fold away.
            return self.any_of(policies, following, following)
        denied = self.local_reply(403, RBAC_DENIED_BODY, None, f"{f.name}: {f.rules.action}", f.origin)
        if f.rules.action == "ALLOW":
            return self.any_of(policies, following, denied)
        return self.any_of(policies, denied, following)

    def rbac_policy(self, p: ir.RbacPolicy, yes: int, no: int) -> int:
        permissions = [lambda y, n, m=m: self.matcher(m, y, n) for m in self.ordered(p.permissions)]
        principals = [lambda y, n, m=m: self.matcher(m, y, n) for m in self.ordered(p.principals)]
        return self.all_of([lambda y, n: self.any_of(permissions, y, n),
                            lambda y, n: self.any_of(principals, y, n)], yes, no)

    def ordered(self, items: tuple) -> list:
        """Cheap tests first. Reordering never changes an and/or's value, but it changes which
        item is evaluated first: with an item the kernel must punt, Envoy's order is kept, so the
        DAG punts exactly where the reference would stop on it."""
        costs = [self.cost(i) for i in items]
        if any(c >= _PUNT_COST for c in costs):
            return list(items)
        return [item for _, _, item in sorted(zip(costs, range(len(items)), items))]

    def cost(self, node) -> int:
        if isinstance(node, (ir.MatchAnd, ir.MatchOr)):
            return max((self.cost(i) for i in node.items), default=0)
        if isinstance(node, ir.MatchNot):
            return self.cost(node.item)
        if offload.matcher_punt(node, self.policy.hcm):
            return _PUNT_COST
        if isinstance(node, ir.MatchHeader) and node.header.string is not None \
                and node.header.string.kind in ("regex", "contains"):
            return 10
        if isinstance(node, (ir.MatchHeader, ir.MatchUrlPath)):
            return 5
        return 1

    def matcher(self, node, yes: int, no: int) -> int:
        if isinstance(node, ir.MatchAny):
            return yes
        if isinstance(node, ir.MatchAnd):
            return self.all_of([lambda y, n, m=m: self.matcher(m, y, n) for m in self.ordered(node.items)],
                               yes, no)
        if isinstance(node, ir.MatchOr):
            return self.any_of([lambda y, n, m=m: self.matcher(m, y, n) for m in self.ordered(node.items)],
                               yes, no)
        if isinstance(node, ir.MatchNot):
            return self.matcher(node.item, no, yes)
        reason = offload.matcher_punt(node, self.policy.hcm)
        if reason:
            return self.punt(reason)
        return self.atom(node, yes, no)

    def atom(self, node, yes: int, no: int) -> int:
        if isinstance(node, ir.MatchHeader):
            return self.header_match(node.header, yes, no)
        if isinstance(node, ir.MatchUrlPath):
            return self.string_test("path", node.path, yes, no)
        if isinstance(node, ir.MatchDestinationPort):
            return yes if self.policy.listener[1] == node.port else no
        if isinstance(node, ir.MatchDestinationPortRange):
            return yes if node.start <= self.policy.listener[1] < node.end else no
        if isinstance(node, ir.MatchIp):
            return self.ip_match(node, yes, no)
        if isinstance(node, ir.MatchMetadata):
            return yes if node.invert else no
        if isinstance(node, (ir.MatchAuthenticated, ir.MatchFilterState)):
            return no
        if isinstance(node, ir.MatchRequestedServerName):
            return yes if string_matches(node.name, "") else no
        raise AssertionError(type(node))

    def ip_match(self, node: ir.MatchIp, yes: int, no: int) -> int:
        if ":" in node.cidr.address:
            return no  # the kernel's connections are IPv4 (the field model's addresses)
        field = "destination_ip" if node.kind == "destination_ip" else "source_ip"
        test = self.test(Test(field, "in_cidr", (node.cidr.address, node.cidr.prefix_len)), yes, no)
        if node.kind == "remote_ip" and not self.policy.hcm.use_remote_address:
            # Envoy takes the address from x-forwarded-for when there is one.
            return self.test(Test("count:x-forwarded-for", "eq", 0), test,
                             self.punt("remote_ip with x-forwarded-for present"))
        return test

    def header_match(self, h: ir.HeaderMatch, yes: int, no: int) -> int:
        reason = offload.header_punt(h)
        if reason:
            return self.punt(reason)
        if h.invert:
            yes, no = no, yes
        pseudo = {":path": "target", ":method": "method", ":authority": "authority"}.get(h.name)
        if h.present is not None:
            if pseudo:
                return yes if h.present else no
            return self.test(Test(f"count:{h.name}", "eq", 0), no if h.present else yes,
                             yes if h.present else no)
        field = pseudo or f"header:{h.name}"
        if h.range is not None:
            value_test = self.test(Test(field, "int_in_range", h.range), yes, no)
            empty_hit = False
        else:
            value_test = self.string_test(field, h.string, yes, no)
            empty_hit = string_matches(h.string, "")
        if pseudo:
            return value_test
        # A missing header never matches, inverted or not, unless it counts as empty.
        if h.treat_missing_as_empty:
            missing = yes if empty_hit else no
        else:
            missing = yes if h.invert else no
        return self.test(Test(f"count:{h.name}", "eq", 0), missing, value_test)

    def string_test(self, field: str, m: ir.StringMatch, yes: int, no: int) -> int:
        if m.kind == "regex":
            return self.test(Test(field, "regex", m.regex), yes, no)
        op = {"exact": "eq", "prefix": "prefix", "suffix": "suffix", "contains": "contains"}[m.kind]
        return self.test(Test(field, op + ("_ci" if m.ignore_case else ""), m.value), yes, no)

    # ---- fault --------------------------------------------------------------------------------
    def fault_filter(self, f: ir.FaultAbortFilter, following: int) -> int:
        if not f.always:
            aborted = following
        elif f.http_status is not None:
            aborted = self.local_reply(f.http_status, FAULT_ABORT_BODY, None, f"{f.name}: abort", f.origin)
        elif self.policy.hcm.use_remote_address:
            aborted = self.punt("fault abort status from a request header with use_remote_address")
        else:
            header = self.test(Test("count:x-envoy-fault-abort-request", "eq", 0), following,
                               self.punt("fault abort status taken from a request header"))
            aborted = self.test(Test("count:x-envoy-fault-abort-request-percentage", "eq", 0), header,
                                self.punt("fault abort percentage from a request header"))
        headers = [lambda y, n, h=h: self.header_match(h, y, n) for h in f.headers]
        return self.all_of(headers, aborted, following)

    # ---- routing ------------------------------------------------------------------------------
    def routing(self) -> int:
        config = self.policy.routes
        reason = offload.routing_punt(config)
        if reason:
            return self.punt(reason)
        node = self.local_reply(404, "", None, "no virtual host")
        for domain, vhost in reversed(self.virtual_host_order()):
            node = self.domain_test(domain, self.routes(vhost), node)
        return node

    def virtual_host_order(self) -> list[tuple[str, ir.VirtualHost]]:
        """Domains in Envoy's preference order: exact, longest suffix wildcard, longest prefix
        wildcard, '*'; the first listed wins a tie."""
        entries = []
        for index, vhost in enumerate(self.policy.routes.virtual_hosts):
            for domain in vhost.domains:
                entries.append((domain_rank(domain), index, domain, vhost))
        entries.sort(key=lambda e: (e[0], e[1]))
        return [(domain, vhost) for _, _, domain, vhost in entries]

    def domain_test(self, domain: str, yes: int, no: int) -> int:
        domain = domain.lower()
        if domain == "*":
            return yes
        if domain.startswith("*"):
            longer = self.test(Test("authority", "len_le", len(domain) - 1), no, yes)
            return self.test(Test("authority", "suffix_ci", domain[1:]), longer, no)
        if domain.endswith("*"):
            longer = self.test(Test("authority", "len_le", len(domain) - 1), no, yes)
            return self.test(Test("authority", "prefix_ci", domain[:-1]), longer, no)
        return self.test(Test("authority", "eq_ci", domain), yes, no)

    def routes(self, vhost: ir.VirtualHost) -> int:
        node = self.local_reply(404, "", None, f"virtual_host[{vhost.name}]: no route", vhost.origin)
        for index, route in reversed(list(enumerate(vhost.routes))):
            rule = f"virtual_host[{vhost.name}].route[{route.name or index}]"
            reason = offload.route_match_punt(route)
            if reason:
                node = self.punt(reason)  # the reference evaluates this route for every request here
                continue
            node = self.route_match(route, self.route_action(route, rule), node)
        return node

    def route_match(self, route: ir.Route, yes: int, no: int) -> int:
        items = [lambda y, n: self.path_match(route.match, y, n)]
        items += [lambda y, n, h=h: self.header_match(h, y, n) for h in route.match.headers]
        items += [lambda y, n, q=q: self.query_match(q, y, n) for q in route.match.query_parameters]
        return self.all_of(items, yes, no)

    def path_match(self, m: ir.RouteMatch, yes: int, no: int) -> int:
        ci = "" if m.case_sensitive else "_ci"
        if m.kind == "prefix":  # a route prefix sees the whole request-target, query included
            return self.test(Test("target", "prefix" + ci, m.value), yes, no)
        if m.kind == "safe_regex":
            return self.test(Test("path", "regex", m.regex), yes, no)
        if m.kind == "path":
            return self.test(Test("path", "eq" + ci, m.value), yes, no)
        if m.kind == "path_separated_prefix":
            return self.test(Test("path", "eq" + ci, m.value), yes,
                             self.test(Test("path", "prefix" + ci, m.value + "/"), yes, no))
        raise AssertionError(m.kind)

    def query_match(self, q: ir.QueryParamMatch, yes: int, no: int) -> int:
        has = Test(f"has_param:{q.name}", "true", None)
        if q.present is not None:
            return self.test(has, yes if q.present else no, no if q.present else yes)
        return self.test(has, self.string_test(f"param:{q.name}", q.string, yes, no), no)

    # ---- actions ------------------------------------------------------------------------------
    def route_action(self, route: ir.Route, rule: str) -> int:
        reason = offload.action_punt(route)
        if reason:
            return self.punt(reason)
        action = route.action
        if isinstance(action, ir.ForwardAction):
            authority = (("lit", action.host_rewrite),) if action.host_rewrite else (("authority",),)
            return self.leaf(Leaf("forward", cluster=action.cluster,
                                  path=self.rewritten_path(route, action.prefix_rewrite),
                                  authority=authority, reason=rule, origin=route.origin))
        if isinstance(action, ir.DirectResponseAction):
            return self.local_reply(action.status, action.body, None, rule, route.origin)
        return self.local_reply(action.status, "", self.redirect_location(action, route), rule, route.origin)

    def rewritten_path(self, route: ir.Route, prefix_rewrite: str | None) -> tuple:
        if prefix_rewrite is not None:
            return (("lit", prefix_rewrite), ("target_from", len(route.match.value)))
        return (("target_from", 0),)

    def redirect_location(self, action: ir.RedirectAction, route: ir.Route) -> tuple:
        scheme = action.scheme or "http"
        authority = redirect_authority(action)
        if action.path is not None:
            path = (("lit", action.path),) if "?" in action.path else (("lit", action.path), ("query_suffix",))
        else:
            path = self.rewritten_path(route, action.prefix_rewrite)
        if action.strip_query:
            path = (("head_of", path),)
        return (("lit", f"{scheme}://"), authority, *path)

    def local_reply(self, status: int, body: str, location: tuple | None, rule: str, origin=None) -> int:
        """A reply to HEAD carries no body."""
        full = self.leaf(Leaf("reply", status=status, body=body, location=location, reason=rule, origin=origin))
        if not body:
            return full
        empty = self.leaf(Leaf("reply", status=status, body="", location=location, reason=rule, origin=origin))
        return self.test(Test("method", "eq", "HEAD"), empty, full)

    # ---- the pass over the finished DAG ---------------------------------------------------------
    def prune_decided(self, root: int) -> int:
        """Skip tests whose answer follows from tests on every path into them."""
        graph = self.graph.subgraph(nx.descendants(self.graph, root) | {root})
        facts: dict[int, dict] = {root: {}}
        replacement: dict[int, int] = {}
        for n in nx.topological_sort(graph):
            known = facts.get(n, {})
            item = graph.nodes[n]["item"]
            if isinstance(item, Leaf):
                continue
            yes, no = branches(graph, n)
            decided = self.implied(item, known)
            for child, value in ((yes, True), (no, False)):
                if decided is not None and decided != value:
                    continue
                child_facts = {**known, item: value}
                facts[child] = child_facts if child not in facts else \
                    {k: v for k, v in facts[child].items() if child_facts.get(k) == v}
            if decided is not None:
                replacement[n] = yes if decided else no
        return self.rebuild(root, replacement)

    def implied(self, test: Test, known: dict) -> bool | None:
        """The value of `test` given tests known to hold or fail, or None."""
        if test in known:
            return known[test]
        for fact, value in known.items():
            if value and fact.field == test.field and fact.op == "eq" and isinstance(fact.operand, str) \
                    and test.op in ("eq", "prefix", "suffix", "contains", "eq_ci", "prefix_ci", "suffix_ci",
                                    "contains_ci", "len_le", "one_of"):
                return test_holds(test, fact.operand)
        return None

    def rebuild(self, root: int, replacement: dict[int, int]) -> int:
        def resolve(n: int) -> int:
            while n in replacement:
                n = replacement[n]
            return n

        memo: dict[int, int] = {}
        for n in reversed(list(nx.topological_sort(self.graph.subgraph(nx.descendants(self.graph, root) | {root})))):
            item = self.graph.nodes[n]["item"]
            if isinstance(item, Leaf):
                memo[n] = n
            else:
                yes, no = branches(self.graph, n)
                memo[n] = self.test(item, memo[resolve(yes)], memo[resolve(no)])
        return memo[resolve(root)]


def compile_policy(policy: ir.Policy, bounds: KernelBounds | None = None, compiler=DagCompiler) -> Dag:
    return compiler(policy, bounds).compile()
