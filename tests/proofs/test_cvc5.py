"""A proof must not rest on one solver's word: every obligation written with --emit-smt is given
to cvc5 (PyPI `cvc5`), which must agree with Z3 on every query it decides within its budget. cvc5
is slower on these string queries, so the sample is the small policies of the mutation tests, one
proven and one refuted; the test also asserts cvc5 decided enough of them for the check to mean
something."""
import cvc5
import pytest

from l7fp.proofs.refinement import Budget, verify

from . import policies
from .mutants import AndAsOr, RewriteOffByOne

CVC5_MS_PER_QUERY = 3000


def cvc5_answer(path: str) -> str:
    solver = cvc5.Solver(cvc5.TermManager())
    solver.setOption("tlimit-per", str(CVC5_MS_PER_QUERY))
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
    decided = 0
    for entry in report.smt_files:
        answer = cvc5_answer(entry["file"])
        if answer == "unknown":
            continue
        decided += 1
        assert answer == entry["z3"], f"{entry['file']}: cvc5 {answer}, z3 {entry['z3']}"
    assert decided >= len(report.smt_files) // 2, f"cvc5 decided only {decided} of {len(report.smt_files)}"
    if compiler:
        assert any(e["z3"] == "sat" for e in report.smt_files)
