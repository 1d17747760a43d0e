"""The kernel's regex DFAs (bpf/regex_dfa.py) against the reference's matcher (semantics/regex.py).

For every regex of the test configurations and the shared corpus, plus hand-picked hard shapes,
strings that match (hypothesis' from_regex on the same pattern), near misses (one byte changed,
dropped or added) and arbitrary ASCII go through the table walk the C does; the answer must be the
reference's full match. A corrupted table must be caught by the same check, and a regex whose DFA
would not fit stays a PUNT with the reason. The C's walk of the same tables is checked against the
DAG by tests/bpf/test_harness.py.
"""
from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l7fp.bpf.codegen import lower
from l7fp.bpf.regex_dfa import MAX_ROWS_PER_REGEX, RegexTables, RegexTooLarge
from l7fp.semantics.errors import ConfigError
from l7fp.semantics.frontends import load_policy
from l7fp.semantics.regex import parse
from l7fp.synth.compile import compile_policy
from l7fp.synth.dag import Test as DagTest  # not "Test...": pytest would collect it

from ..semantics.test_symbolic_vs_interpreter import FILES
from ..shared_data import CORPUS, require

ASCII = st.characters(max_codepoint=127)
HARD = ["(?i)/Books/[a-z]+", "(a|b)*c(a|b){0,3}", "(a*)*b", "", "a{0}", "x?y??z*", "[^/]+\\.(json|xml)",
        "\\d{3}-\\w+\\s?", "(|a)b", ".*", "[\\x00-\\x7f]*", "[^a-z]é?", "/api/(v1|v2|v10)/.*/items/[0-9]{1,4}"]


@cache
def policy_regexes() -> list[str]:
    """The regex of every test in the DAGs of the test configs and the accepted corpus documents."""
    paths = list(FILES) + sorted(require(CORPUS).glob("*/*.yaml"))
    found = set()
    for path in paths:
        try:
            dag = compile_policy(load_policy([str(path)]))
        except ConfigError:
            continue
        for n in dag.graph:
            item = dag.node(n)
            if isinstance(item, DagTest) and item.op == "regex":
                found.add(item.operand.source)
    return sorted(found)


def test_the_policies_have_regexes_to_check():
    assert len(policy_regexes()) >= 5, policy_regexes()


def _values(pattern: str):
    regex = parse(pattern)
    matching = st.from_regex(regex.python_pattern(), fullmatch=True, alphabet=ASCII)

    @st.composite
    def near_miss(draw):
        text = draw(matching)
        at = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["change", "drop", "add"]))
        char = draw(ASCII)
        if how == "change" and at < len(text):
            return text[:at] + char + text[at + 1:]
        if how == "drop":
            return text[:at] + text[at + 1:]
        return text[:at] + char + text[at:]

    return st.one_of(matching, near_miss(), st.text(ASCII, max_size=40))


def _check(tables: RegexTables, pattern: str) -> None:
    regex = parse(pattern)

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(_values(pattern))
    def agree(text):
        assert tables.matches(regex, text.encode()) == regex.full_match(text), (pattern, text)

    agree()


@pytest.mark.parametrize("pattern", HARD + policy_regexes())
def test_dfa_matches_like_the_reference(pattern):
    tables = RegexTables()
    tables.add(parse("[a-z]+/"))  # another DFA first: the pattern's rows start past row 1
    tables.add(parse(pattern))
    _check(tables, pattern)


def test_a_corrupted_table_is_caught():
    pattern = "/api/(v1|v2|v10)/.*/items/[0-9]{1,4}"
    tables = RegexTables()
    start = tables.add(parse(pattern))
    after_slash = tables.rows[start][ord("/")]
    tables.rows[after_slash][ord("a")] = 0  # "/a..." now dies
    with pytest.raises(AssertionError):
        _check(tables, pattern)


def test_non_ascii_is_left_to_the_caller():
    tables = RegexTables()
    regex = parse(".*")
    tables.add(regex)
    assert tables.matches(regex, "/caf\u00e9".encode()) is None
    assert tables.matches(regex, b"/cafe") is True


def test_a_regex_too_large_for_the_kernel_stays_a_punt(tmp_path):
    too_large = ".*a.{12}"  # the subset construction needs 2^13 states
    with pytest.raises(RegexTooLarge, match=str(MAX_ROWS_PER_REGEX)):
        RegexTables().add(parse(too_large))
    config = next(p for p in FILES if p.name == "01_rbac_allow.yaml").read_text()
    assert '"/api/v[0-9]+/.*"' in config
    path = tmp_path / "large.yaml"
    path.write_text(config.replace('"/api/v[0-9]+/.*"', f'"{too_large}"', 1))
    kernel, lowered = lower(compile_policy(load_policy([str(path)])))
    assert [x.what for x in lowered] == [f"path regex {too_large!r}"], lowered
    assert "DFA" in lowered[0].reason
    assert not any(isinstance(kernel.node(n), DagTest) and kernel.node(n).op == "regex" for n in kernel.graph)
