"""Deliberately broken DAG compilers: each subclass breaks one compilation rule of
synth.compile.DagCompiler. test_mutants.py checks that the proof rejects every one of them with a
counterexample the concrete interpreter confirms (Gauntlet's model: a proof is only worth having if
it can fail)."""
from __future__ import annotations

from l7fp.semantics import ir
from l7fp.synth import bounds as kernel_bounds
from l7fp.synth.compile import DagCompiler
from l7fp.synth.dag import Leaf, Test

from . import policies as p


class AndAsOr(DagCompiler):
    """and: any item suffices."""
    def all_of(self, items, yes, no):
        return self.any_of(items, yes, no)


class NotIgnored(DagCompiler):
    """not: the inner matcher's value is used as it is."""
    def matcher(self, node, yes, no):
        if isinstance(node, ir.MatchNot):
            return super().matcher(node.item, yes, no)
        return super().matcher(node, yes, no)


class DenyAsAllow(DagCompiler):
    """RBAC DENY compiled as ALLOW."""
    def rbac_filter(self, f, following):
        if f.rules is not None and f.rules.action == "DENY":
            f = ir.RbacFilter(f.name, ir.RbacRules("ALLOW", f.rules.policies, f.rules.origin), origin=f.origin)
        return super().rbac_filter(f, following)


class WildcardFirst(DagCompiler):
    """virtual hosts tried in reverse preference order ('*' before exact domains)."""
    def virtual_host_order(self):
        return list(reversed(super().virtual_host_order()))


class WildcardWithoutLength(DagCompiler):
    """'*.example.com' also matches '.example.com' (the wildcard must cover at least one byte)."""
    def domain_test(self, domain, yes, no):
        if domain.startswith("*") and domain != "*":
            return self.test(Test("authority", "suffix_ci", domain[1:].lower()), yes, no)
        return super().domain_test(domain, yes, no)


class LastRouteWins(DagCompiler):
    """routes tried from the last one."""
    def routes(self, vhost):
        return super().routes(ir.VirtualHost(vhost.name, vhost.domains, tuple(reversed(vhost.routes)), vhost.origin))


class CaseAlwaysSensitive(DagCompiler):
    """case_sensitive: false ignored."""
    def path_match(self, m, yes, no):
        return super().path_match(ir.RouteMatch(m.kind, m.value, m.regex, True, m.headers, m.query_parameters),
                                  yes, no)


class RepeatedHeadersAllowed(DagCompiler):
    """no punt on a repeated header the policy reads: the kernel would judge the first value only."""
    def test(self, test, yes, no):
        if test.field.startswith("count:") and test.op == "le":
            return yes
        return super().test(test, yes, no)


class PercentInPaths(DagCompiler):
    """'%' decided in kernel although normalize_path decodes it."""
    def __init__(self, policy, bounds=None):
        base = kernel_bounds.KernelBounds.for_connection_manager(policy.hcm)
        super().__init__(policy, kernel_bounds.KernelBounds(
            path_chars=base.path_chars | {ord("%")}, window=base.window, max_header_lines=base.max_header_lines))


class BodyOnHead(DagCompiler):
    """local replies to HEAD keep their body."""
    def local_reply(self, status, body, location, rule, origin=None):
        return self.leaf(Leaf("reply", status=status, body=body, location=location, reason=rule, origin=origin))


class RewriteOffByOne(DagCompiler):
    """prefix_rewrite keeps one byte too few of the rest of the path."""
    def rewritten_path(self, route, prefix_rewrite):
        if prefix_rewrite is not None:
            return (("lit", prefix_rewrite), ("target_from", len(route.match.value) + 1))
        return super().rewritten_path(route, prefix_rewrite)


class MissingHeaderMatchesInverted(DagCompiler):
    """an inverted matcher matches a missing header (Envoy: a missing header never matches)."""
    def header_match(self, h, yes, no):
        if h.invert and h.present is None and not h.name.startswith(":"):
            value = self.string_test(f"header:{h.name}", h.string, no, yes)
            return self.test(Test(f"count:{h.name}", "eq", 0), yes, value)
        return super().header_match(h, yes, no)


class WrongImplication(DagCompiler):
    """pruning: a failed equality is taken to fail every other test on the same field."""
    def implied(self, test, known):
        for fact, value in known.items():
            if not value and fact.field == test.field and fact.op == "eq":
                return False
        return super().implied(test, known)


class RemoteIpIgnoresXff(DagCompiler):
    """remote_ip taken from the peer even when x-forwarded-for is present."""
    def ip_match(self, node, yes, no):
        return super().ip_match(ir.MatchIp("source_ip", node.cidr), yes, no)


class QueryPresenceInverted(DagCompiler):
    def query_match(self, q, yes, no):
        return super().query_match(q, no, yes) if q.present is not None else super().query_match(q, yes, no)


class FaultIgnoresHeaders(DagCompiler):
    def fault_filter(self, f, following):
        return super().fault_filter(ir.FaultAbortFilter(f.name, f.http_status, f.header_abort, f.always, (),
                                                        f.has_delay, f.origin), following)


class StripQueryIgnored(DagCompiler):
    def redirect_location(self, action, route):
        return super().redirect_location(ir.RedirectAction(action.scheme, action.host, action.port, action.path,
                                                           action.prefix_rewrite, action.regex_rewrite, False,
                                                           action.status, action.origin), route)


# (mutant, the policy that exposes it)
MUTANTS = [
    (AndAsOr, p.AND_POLICY), (NotIgnored, p.NOT_POLICY), (DenyAsAllow, p.DENY_POLICY),
    (WildcardFirst, p.VHOST_POLICY), (WildcardWithoutLength, p.WILDCARD_POLICY),
    (LastRouteWins, p.FIRST_ROUTE_POLICY), (CaseAlwaysSensitive, p.CASE_POLICY),
    (RepeatedHeadersAllowed, p.REPEATED_HEADER_POLICY), (PercentInPaths, p.NORMALIZE_POLICY),
    (BodyOnHead, p.HEAD_POLICY), (RewriteOffByOne, p.REWRITE_POLICY),
    (MissingHeaderMatchesInverted, p.INVERT_POLICY), (WrongImplication, p.PRUNE_POLICY),
    (RemoteIpIgnoresXff, p.REMOTE_IP_POLICY), (QueryPresenceInverted, p.QUERY_POLICY),
    (FaultIgnoresHeaders, p.FAULT_POLICY), (StripQueryIgnored, p.STRIP_QUERY_POLICY),
]
