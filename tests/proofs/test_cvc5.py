"""A proof must not rest on one solver's word: every obligation written with --emit-smt is given
to cvc5 (PyPI `cvc5`), which must agree with Z3 on every query it decides within its budget. The
sample is two small policies of the mutation tests, each proven and refuted (by a mutant); the test
also asserts cvc5 decided at least half of the queries, and the refuting one, so the check means
something."""
import cvc5
import pytest

from l7fp.proofs.refinement import Budget, verify

from . import policies
from .mutants import AndAsOr, RewriteOffByOne

# cvc5's deterministic resource budget per query (its time limit made the check depend on the
# machine's load): about 5 s on this machine.
CVC5_RLIMIT_PER_QUERY = 200_000


def cvc5_answer(path: str) -> str:
    solver = cvc5.Solver(cvc5.TermManager())
    solver.setOption("rlimit-per", str(CVC5_RLIMIT_PER_QUERY))
    solver.setOption("strings-exp", "true")
    parser = cvc5.InputParser(solver)
    parser.setFileInput(cvc5.InputLanguage.SMT_LIB_2_6, path)
    symbols, out = parser.getSymbolManager(), []
    while True:
        command = parser.nextCommand()
        if command.isNull():
            break
        out.append(command.invoke(solver, symbols))
    answer = "".join(out).strip()
    return answer if answer in ("sat", "unsat") else "unknown"


@pytest.mark.parametrize("compiler,policy", [(None, policies.AND_POLICY), (AndAsOr, policies.AND_POLICY),
                                             (None, policies.REWRITE_POLICY), (RewriteOffByOne, policies.REWRITE_POLICY)],
                         ids=["and-proven", "and-mutant", "rewrite-proven", "rewrite-mutant"])
def test_cvc5_agrees_with_z3(tmp_path, compiler, policy):
    kwargs = {"compiler": compiler} if compiler else {}
    report = verify(policy, Budget(timeout_s=60), smt_dir=str(tmp_path), **kwargs)
    assert report.smt_files, "every obligation part is written as SMT-LIB2"
    decided = []
    for entry in report.smt_files:
        answer = cvc5_answer(entry["file"])
        if answer == "unknown":
            continue
        decided.append(answer)
        assert answer == entry["z3"], f"{entry['file']}: cvc5 {answer}, z3 {entry['z3']}"
    assert len(decided) >= len(report.smt_files) // 2, f"cvc5 decided only {len(decided)} of {len(report.smt_files)}"
    if compiler:  # the refuted proof: cvc5 finds the counterexample too
        assert "sat" in decided
