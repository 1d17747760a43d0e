"""Lazy propositional abstraction: proves "no request satisfies these facts" with little string solving.

Used by refinement.py before it hands a query to Z3 as a whole. On policies of a hundred rules and
more, Z3 spends most of a query in its string theory: with every DAG test and every reference matcher
in one formula, each decision on one of them makes the string solver revisit many regex memberships
of the request-target at once, so a query with a few hundred conflicts takes minutes. The proof needs
few facts about strings (a prefix excludes another, a path within the bounds is a normal one), so here
the search is split the way an SMT solver splits it, but with the string solver seeing only a few
literals at a time:

- every theory atom (a regex membership, a length bound, a comparison) becomes a Boolean variable; the
  Boolean structure (and/or/not/if) is kept as it is, and so are equalities between outcome fields
  (if-then-else trees over constants: their values are numbered and compared as such);
- a SAT search finds an assignment of the abstraction; the atom literals that assignment needs (an
  implicant: the tests on the paths taken, not every atom) are checked together by Z3 with their real
  meaning, over the request's domain;
- if they contradict each other, the unsat core becomes a clause (a lemma) every later assignment
  must respect, for this query and the next ones. Lemmas between two bounds of one term by constants
  (x == "GET" and x == "POST"; count <= 1 and count >= 2) are added as the atoms appear, from
  interval arithmetic, rather than found one round at a time.

Soundness: a request satisfying the facts gives the abstraction a model (each atom valued as on that
request) that satisfies every lemma, since a lemma is the negation of a conjunction Z3 proved
unsatisfiable under the domain, or an interval fact that holds for every integer. So "the abstraction
with its lemmas is unsat" means "no request", and that is the only answer taken from here. When the
implicant is consistent (a real witness), or a solver answers unknown, or the budget runs out, the
caller asks Z3 the whole query as before. tests/proofs/test_abstraction.py compares the answers with
Z3's on generated formulas.
"""
from __future__ import annotations

import time
from collections import deque

import z3

from ..semantics.symbolic import text_of

_AND, _OR, _NOT, _ITE, _IFF, _XOR, _TRUE, _FALSE, _ATOM, _EQV, _VITE, _VCONST = range(12)
_CONNECTIVES = {z3.Z3_OP_AND: _AND, z3.Z3_OP_OR: _OR, z3.Z3_OP_NOT: _NOT, z3.Z3_OP_ITE: _ITE,
                z3.Z3_OP_TRUE: _TRUE, z3.Z3_OP_FALSE: _FALSE}
# The implicant's literals are checked in growing prefixes (nearest the facts first): the conflicts
# are mostly between a fact and the first tests of the DAG, and a string solver given every test on
# the way to a leaf of a large DAG takes seconds even to find those.
_FIRST_SLICE = 32
# Wall time for a check short of the whole implicant: its unknown only means "look further", so a
# loaded machine may take more rounds or fall back to Z3, never answer differently.
_QUICK_CHECK_S = 0.5


class Inconclusive(Exception):
    """The loop neither refuted the facts nor may go on: a witness, a solver's unknown, the budget."""


class LazyRefuter:
    """One Boolean circuit for all the facts of a proof (nodes shared by Z3 AST), one SAT solver over
    it, one theory solver over the domain; lemmas learnt for one query serve the next.

    Z3 terms are walked with its C API (z3py's wrappers cost tens of microseconds a call, and a
    1000-rule policy has some 10^5 nodes)."""

    def __init__(self, domain: list, max_rounds: int = 2000):
        self.z3ctx = z3.main_ctx()
        self.c = self.z3ctx.ref()
        self.variables: dict[int, frozenset] = {}  # Z3 AST id of a fact or atom -> its variables
        self.max_rounds = max_rounds
        # The circuit: node i is (kind, children); children precede their parents.
        self.kind: list[int] = []
        self.args: list[tuple] = []
        # The SAT side, Tseitin style: a variable per node, clauses that define it from its children.
        self.var: list[z3.BoolRef] = []
        self.neg: list[z3.BoolRef] = []
        self.node_of: dict = {}  # Z3 AST id, or a derived key -> node
        # Z3 reuses the id of a term it has freed: every term whose id is a key here is a subterm of
        # one of these, kept alive as long as the circuit.
        self.keep: list[z3.ExprRef] = []
        self.atoms: list[z3.BoolRef] = []  # atom index -> its Z3 term
        self.atom_node: list[int] = []
        self.atom_of: dict[int, int] = {}  # Z3 AST id of a simplified atom -> atom index
        # The SAT side holds clauses and, for outcome fields, if-then-else terms over value numbers:
        # their equalities are left to congruence closure, which follows a chain of ifs far better
        # than clauses per value do.
        self.sat = z3.SolverFor("QF_LIA")
        self.codes: dict[tuple, int] = {}  # constant value -> its number
        self.bounds_of: dict[int, list] = {}  # AST id of x -> [(interval, node of the atom bounding x)]
        self.theory = z3.Solver()
        # Each check asserts the domain facts about the variables its literals mention (and those
        # linked to them): the string solver's work grows with every membership in scope.
        self.domain = [(self._variables(fact), fact) for fact in domain]

    # ---- building the circuit -------------------------------------------------------------------
    def _add(self, key, kind: int, args: tuple) -> int:
        n = len(self.kind)
        self.kind.append(kind)
        self.args.append(args)
        self.node_of[key] = n
        if kind in (_VITE, _VCONST):
            self.var.append(z3.IntVal(args[0]) if kind == _VCONST else
                            z3.If(self.var[args[0]], self.var[args[1]], self.var[args[2]]))
            self.neg.append(None)
            return n
        self.var.append(z3.Bool(f"atom!{args[0]}" if kind == _ATOM else f"node!{n}"))
        self.neg.append(z3.Not(self.var[n]))
        self._define(n, kind, args)
        return n

    def _gate(self, kind: int, args: tuple) -> int:
        key = ("gate", kind, args)
        if key in self.node_of:
            return self.node_of[key]
        return self._add(key, kind, args)

    def _const(self, value: bool) -> int:
        return self._gate(_TRUE if value else _FALSE, ())

    def _define(self, n: int, kind: int, args: tuple) -> None:
        """The clauses that make node n's variable the value of its gate."""
        pos, neg = self.var, self.neg
        if kind == _AND:
            clauses = [[neg[n], pos[a]] for a in args] + [[pos[n], *[neg[a] for a in args]]]
        elif kind == _OR:
            clauses = [[pos[n], neg[a]] for a in args] + [[neg[n], *[pos[a] for a in args]]]
        elif kind == _NOT:
            clauses = [[pos[n], pos[args[0]]], [neg[n], neg[args[0]]]]
        elif kind == _ITE:
            i, t, e = args
            clauses = [[neg[n], neg[i], pos[t]], [neg[n], pos[i], pos[e]],
                       [pos[n], neg[i], neg[t]], [pos[n], pos[i], neg[e]]]
        elif kind in (_IFF, _XOR):
            a, b = args
            same, other = (pos[n], neg[n]) if kind == _IFF else (neg[n], pos[n])
            clauses = [[other, neg[a], pos[b]], [other, pos[a], neg[b]], [same, pos[a], pos[b]],
                       [same, neg[a], neg[b]]]
        elif kind == _TRUE:
            clauses = [[pos[n]]]
        elif kind == _FALSE:
            clauses = [[neg[n]]]
        elif kind == _EQV:
            self.sat.add(pos[n] == (pos[args[0]] == pos[args[1]]))
            return
        else:
            return  # an atom: free
        c, solver = self.c, self.sat.solver
        for clause in clauses:
            # the clause is asserted before the next API call can release it
            z3.Z3_solver_assert(c, solver, z3.Z3_mk_or(c, len(clause), _array([lit.as_ast() for lit in clause])))

    def _atom(self, raw) -> int:
        simple = z3.simplify(z3.BoolRef(raw, self.z3ctx))
        if z3.is_true(simple) or z3.is_false(simple):
            return self._const(z3.is_true(simple))
        aid = simple.get_id()
        if aid != z3.Z3_get_ast_id(self.c, raw) and self._connective(simple.as_ast()) is not None:
            return self.node(simple)  # the rewriter exposed Boolean structure (x > 1 is not x <= 1)
        if aid not in self.atom_of:
            index = self.atom_of[aid] = len(self.atoms)
            self.atoms.append(simple)
            self.atom_node.append(self._add(("atom", aid), _ATOM, (index,)))
            self._relate_to_other_bounds(simple.as_ast(), self.atom_node[index])
        return self.atom_node[self.atom_of[aid]]

    def _relate_to_other_bounds(self, raw, node: int) -> None:
        """Clauses between atoms that bound one term by constants: `x == c` (any sort) against
        `x == d`, and `x <= k`, `x >= k`, `x == k` (integers) among themselves, as intervals: two
        disjoint ones exclude each other, one inside another implies it, two covering every integer
        cannot both fail. Each clause is what the theory solver would answer, one round each."""
        c = self.c
        op = z3.Z3_get_decl_kind(c, z3.Z3_get_app_decl(c, raw))
        if op not in (z3.Z3_OP_EQ, z3.Z3_OP_LE, z3.Z3_OP_GE) or z3.Z3_get_app_num_args(c, raw) != 2:
            return
        x, v = self._children(raw)
        if op == z3.Z3_OP_EQ and self._code(x) is not None:
            x, v = v, x
        if self._code(x) is not None or self._code(v) is None:
            return
        if self._sort_kind(x) == z3.Z3_INT_SORT:
            k = int(z3.Z3_get_numeral_string(c, v))
            interval = {z3.Z3_OP_EQ: (k, k), z3.Z3_OP_LE: (None, k), z3.Z3_OP_GE: (k, None)}[op]
        elif op == z3.Z3_OP_EQ:
            interval = ("value", self._code(v))
        else:
            return
        known = self.bounds_of.setdefault(z3.Z3_get_ast_id(c, x), [])
        for other_interval, other in known:
            for clause in _interval_clauses(interval, other_interval):
                self.sat.add(z3.Or(*[(self.var if positive else self.neg)[node if mine else other]
                                     for mine, positive in clause]))
        known.append((interval, node))

    def _connective(self, raw) -> int | None:
        """The circuit kind of a Boolean term, None for an atom."""
        c = self.c
        if z3.Z3_get_ast_kind(c, raw) != z3.Z3_APP_AST:
            return None
        op = z3.Z3_get_decl_kind(c, z3.Z3_get_app_decl(c, raw))
        if op in (z3.Z3_OP_EQ, z3.Z3_OP_DISTINCT) and z3.Z3_get_app_num_args(c, raw) == 2 and \
                self._sort_kind(z3.Z3_get_app_arg(c, raw, 0)) == z3.Z3_BOOL_SORT:
            return _IFF if op == z3.Z3_OP_EQ else _XOR
        return _CONNECTIVES.get(op)

    def _sort_kind(self, raw) -> int:
        return z3.Z3_get_sort_kind(self.c, z3.Z3_get_sort(self.c, raw))

    def _children(self, raw) -> list:
        c = self.c
        return [z3.Z3_get_app_arg(c, raw, i) for i in range(z3.Z3_get_app_num_args(c, raw))]

    def node(self, root: z3.BoolRef) -> int:
        """The circuit node of a Boolean term (built bottom-up without recursion: DAGs are deep)."""
        c = self.c
        self.keep.append(root)
        stack = [(root.as_ast(), False)]
        while stack:
            raw, expanded = stack.pop()
            key = z3.Z3_get_ast_id(c, raw)
            if key in self.node_of:
                continue
            kind = self._connective(raw)
            if kind is None:
                lifted = self._lift(raw)
                self.node_of[key] = self._atom(raw) if lifted is None else lifted
                continue
            children = self._children(raw)
            if not expanded:
                stack.append((raw, True))
                stack += [(a, False) for a in children if z3.Z3_get_ast_id(c, a) not in self.node_of]
                continue
            args = tuple(self.node_of[z3.Z3_get_ast_id(c, a)] for a in children)
            self.node_of[key] = self._gate(kind, args)
        return self.node_of[root.get_id()]

    def _is_ite(self, raw) -> bool:
        c = self.c
        return z3.Z3_get_ast_kind(c, raw) == z3.Z3_APP_AST and \
            z3.Z3_get_decl_kind(c, z3.Z3_get_app_decl(c, raw)) == z3.Z3_OP_ITE

    def _code(self, raw) -> int | None:
        """The number of a constant's value (equal values, equal numbers), None for other terms."""
        c = self.c
        if z3.Z3_is_numeral_ast(c, raw):
            key = (self._sort_kind(raw), z3.Z3_get_numeral_string(c, raw))
        elif self._sort_kind(raw) == z3.Z3_SEQ_SORT and z3.Z3_is_string(c, raw):
            key = ("string", text_of(z3.SeqRef(raw, self.z3ctx)))
        else:
            return None
        return self.codes.setdefault(key, len(self.codes))

    def _constant_leaves(self, raw) -> dict | None:
        """The distinct leaves of an if-then-else tree by value number, if all are constants."""
        leaves, stack, seen = {}, [raw], set()
        while stack:
            t = stack.pop()
            tid = z3.Z3_get_ast_id(self.c, t)
            if tid in seen:
                continue
            seen.add(tid)
            if self._is_ite(t):
                stack += self._children(t)[1:]
            elif (code := self._code(t)) is not None:
                leaves[code] = t
            else:
                return None
        return leaves

    def _lift(self, raw) -> int | None:
        """`a == b` (or distinct) between if-then-else trees over other sorts. When both trees end
        in constants only, it is an equality of value numbers (_EQV); when one does, with leaves V,
        it is "for some v in V, both are v" (an equivalence: such a tree is always one of its
        leaves). None when it is neither."""
        c = self.c
        if z3.Z3_get_ast_kind(c, raw) != z3.Z3_APP_AST or z3.Z3_get_app_num_args(c, raw) != 2:
            return None
        op = z3.Z3_get_decl_kind(c, z3.Z3_get_app_decl(c, raw))
        a, b = self._children(raw)
        if op not in (z3.Z3_OP_EQ, z3.Z3_OP_DISTINCT) or not (self._is_ite(a) or self._is_ite(b)):
            return None
        values, others = self._constant_leaves(a), self._constant_leaves(b)
        if values is not None and others is not None:
            same = self._gate(_EQV, (self._value_tree(a), self._value_tree(b)))
        elif values is not None or others is not None:
            if values is None:
                a, b, values = b, a, others
            same = self._gate(_OR, tuple(self._gate(_AND, (self._value_node(a, v), self._value_node(b, v)))
                                         for v in values.values()))
        else:
            return None
        return same if op == z3.Z3_OP_EQ else self._gate(_NOT, (same,))

    def _value_tree(self, term) -> int:
        """The value-number tree of an if-then-else tree with constant leaves."""
        return self._through_ite(term, "value", lambda t: self._gate(_VCONST, (self._code(t),)), _VITE)

    def _value_node(self, term, value) -> int:
        """The node of `term == value` (a constant), pushed through if-then-else to the leaves."""
        code = self._code(value)

        def leaf(t) -> int:
            other = self._code(t)
            return self._atom(z3.Z3_mk_eq(self.c, t, value)) if other is None else self._const(other == code)
        return self._through_ite(term, ("is", code), leaf, _ITE)

    def _through_ite(self, term, tag, leaf, kind: int) -> int:
        """The node of an if-then-else tree over another sort: `leaf(t)` at each leaf, a gate of
        `kind` (condition, then, else) at each if; kept under (tag, AST id)."""
        c = self.c
        stack = [(term, False)]
        while stack:
            t, expanded = stack.pop()
            key = (tag, z3.Z3_get_ast_id(c, t))
            if key in self.node_of:
                continue
            if not self._is_ite(t):
                self.node_of[key] = leaf(t)
                continue
            cond, yes, no = self._children(t)
            if not expanded:
                stack += [(t, True), (yes, False), (no, False)]
                continue
            args = (self.node(z3.BoolRef(cond, self.z3ctx)), self.node_of[(tag, z3.Z3_get_ast_id(c, yes))],
                    self.node_of[(tag, z3.Z3_get_ast_id(c, no))])
            self.node_of[key] = self._gate(kind, args)
        return self.node_of[(tag, z3.Z3_get_ast_id(c, term))]

    # ---- the loop -------------------------------------------------------------------------------
    def refute(self, facts: list, deadline: float, rlimit: int) -> int:
        """Proves the conjunction of `facts` unsatisfiable under the domain; returns the number of
        rounds. Raises Inconclusive otherwise."""
        roots = [self.node(fact if isinstance(fact, z3.BoolRef) else z3.BoolVal(bool(fact))) for fact in facts]
        switches = [self.var[r] for r in roots]
        for rounds in range(1, self.max_rounds + 1):
            answer = self._check(self.sat, switches, deadline, rlimit)
            if answer == z3.unsat:
                return rounds
            if answer != z3.sat:
                raise Inconclusive(f"SAT search: {self.sat.reason_unknown()}")
            core = self._conflict(self._implicant(roots, self.sat.model()), deadline, rlimit)
            self.sat.add(z3.Or(*[(self.neg if value else self.var)[self.atom_node[i]] for i, value in core]))
        raise Inconclusive(f"no answer after {self.max_rounds} rounds")

    def _conflict(self, literals: list[tuple[int, bool]], deadline: float, rlimit: int) -> list:
        """Literals of `literals` that contradict each other under the domain (an unsat core).

        Most conflicts are between a few literals, often about one request field; the string solver
        is slow on large sets of literals (seconds to minutes for a few hundred memberships of the
        request-target) even when the conflict is small. So the literals are tried in growing
        prefixes, those about one field alone (smallest group first) before all of them, and a check
        short of the whole set gets a short budget: its unknown only means "look further"."""
        groups: dict[frozenset, list] = {}
        for lit in literals:
            groups.setdefault(self._variables(self.atoms[lit[0]]), []).append(lit)
        candidates = [literals, *sorted((g for names, g in groups.items() if len(names) == 1 and len(g) > 1),
                                        key=len)]
        size = _FIRST_SLICE
        while True:
            for group in candidates:
                if size > _FIRST_SLICE and len(group) <= size // 4:
                    continue  # already checked whole
                chosen = group[:size]
                whole = group is literals and size >= len(literals)
                quick = deadline if whole else min(deadline, time.perf_counter() + _QUICK_CHECK_S)
                answer, core = self._theory_check(chosen, quick, rlimit)
                if answer == z3.unsat:
                    return core
                if whole:
                    if answer == z3.sat:
                        raise Inconclusive("the literals are consistent: a witness")
                    raise Inconclusive(f"theory: {self.theory.reason_unknown()}")
            size *= 4

    def _variables(self, term: z3.ExprRef) -> frozenset:
        """The request's variables a term mentions (regexes hold none, so they are not walked)."""
        key = term.get_id()
        if key in self.variables:
            return self.variables[key]
        c, names, stack, seen = self.c, set(), [term.as_ast()], set()
        while stack:
            t = stack.pop()
            tid = z3.Z3_get_ast_id(c, t)
            if tid in seen or z3.Z3_get_ast_kind(c, t) != z3.Z3_APP_AST or self._sort_kind(t) == z3.Z3_RE_SORT:
                continue
            seen.add(tid)
            decl = z3.Z3_get_app_decl(c, t)
            if z3.Z3_get_app_num_args(c, t) == 0 and z3.Z3_get_decl_kind(c, decl) == z3.Z3_OP_UNINTERPRETED:
                names.add(tid)
            stack += self._children(t)
        self.variables[key] = frozenset(names)
        return self.variables[key]

    def _domain_for(self, literals: list[tuple[int, bool]]) -> list:
        """The domain facts that bear on the literals: those sharing a variable with them, closed
        under sharing."""
        names = set().union(*[self._variables(self.atoms[index]) for index, _ in literals])
        chosen, grew = [False] * len(self.domain), True
        while grew:
            grew = False
            for i, (fact_names, _) in enumerate(self.domain):
                if not chosen[i] and fact_names & names:
                    chosen[i], grew = True, True
                    names |= fact_names
        return [fact for i, (_, fact) in enumerate(self.domain) if chosen[i]]

    def _check(self, solver: z3.Solver, assumptions: list, deadline: float, rlimit: int):
        left = deadline - time.perf_counter()
        if left <= 0:
            raise Inconclusive("out of time")
        solver.set("timeout", max(1, int(left * 1000)))
        solver.set("rlimit", rlimit)
        return solver.check(*assumptions)

    def _theory_check(self, literals: list[tuple[int, bool]], deadline: float, rlimit: int) -> tuple:
        """(answer, unsat core) for the literals under the domain, asserted in a scope of their own:
        literals of earlier checks left in the solver slow the string solver down. An unsat core
        under part of the domain is one under all of it."""
        self.theory.push()
        try:
            self.theory.add(*self._domain_for(literals))
            trackers = []
            for index, value in literals:
                t = z3.Bool(f"lit!{index}!{int(value)}")
                self.theory.add(z3.Implies(t, self.atoms[index] if value else z3.Not(self.atoms[index])))
                trackers.append(t)
            answer = self._check(self.theory, trackers, deadline, rlimit)
            if answer != z3.unsat:
                return answer, None
            core = {t.get_id() for t in self.theory.unsat_core()}
            return answer, [lit for lit, t in zip(literals, trackers) if t.get_id() in core]
        finally:
            self.theory.pop()

    def _implicant(self, roots: list[int], model: z3.ModelRef) -> list[tuple[int, bool]]:
        """Atom literals that make every root true whatever the other atoms are (through an
        if-then-else only the condition and the branch taken, through an or one true item), the
        ones nearest the roots first."""
        values = [False] * len(self.kind)
        for n, (kind, args) in enumerate(zip(self.kind, self.args)):
            if kind == _ATOM:
                values[n] = z3.is_true(model.eval(self.var[n], model_completion=True))
            elif kind == _AND:
                values[n] = all(values[a] for a in args)
            elif kind == _OR:
                values[n] = any(values[a] for a in args)
            elif kind == _NOT:
                values[n] = not values[args[0]]
            elif kind in (_ITE, _VITE):
                values[n] = values[args[1]] if values[args[0]] else values[args[2]]
            elif kind == _EQV:
                values[n] = values[args[0]] == values[args[1]]
            elif kind == _VCONST:
                values[n] = args[0]
            elif kind == _IFF:
                values[n] = values[args[0]] == values[args[1]]
            elif kind == _XOR:
                values[n] = values[args[0]] != values[args[1]]
            else:
                values[n] = kind == _TRUE
        if not all(values[r] for r in roots):
            raise Inconclusive("the circuit's values disagree with the SAT model")  # a bug here, never a proof
        seen, literals, queue = set(roots), [], deque(roots)
        while queue:
            n = queue.popleft()
            kind, args = self.kind[n], self.args[n]
            if kind == _ATOM:
                literals.append((args[0], values[n]))
                continue
            if kind in (_AND, _OR) and values[n] == (kind == _OR):
                # one item decides: prefer one already justified
                deciding = [a for a in args if values[a] == values[n]]
                args = (next((a for a in deciding if a in seen), deciding[0]),)
            elif kind in (_ITE, _VITE):
                args = (args[0], args[1] if values[args[0]] else args[2])
            elif kind == _VCONST:
                args = ()
            for a in args:
                if a not in seen:
                    seen.add(a)
                    queue.append(a)
        return literals


def _interval_clauses(a: tuple, b: tuple) -> list[list[tuple[bool, bool]]]:
    """Clauses relating "x in a" and "x in b" ((mine, positive) literals, mine for a): intervals
    (lo, hi) of integers with None for no bound, or ("value", number) for x equal to a constant."""
    if a[0] == "value" or b[0] == "value":
        return [[(True, False), (False, False)]] if a[0] == b[0] == "value" and a != b else []
    inf = float("inf")
    (alo, ahi), (blo, bhi) = [(-inf if lo is None else lo, inf if hi is None else hi) for lo, hi in (a, b)]
    clauses = []
    if max(alo, blo) > min(ahi, bhi):
        clauses.append([(True, False), (False, False)])  # disjoint
    if blo <= alo and ahi <= bhi:
        clauses.append([(True, False), (False, True)])  # a inside b
    if alo <= blo and bhi <= ahi:
        clauses.append([(False, False), (True, True)])  # b inside a
    if (alo == -inf and bhi == inf and blo <= ahi + 1) or (blo == -inf and ahi == inf and alo <= bhi + 1):
        clauses.append([(True, True), (False, True)])  # together every integer
    return clauses


def _array(asts: list):
    return (z3.Ast * len(asts))(*asts)
