"""The RE2 subset parser: accepted patterns match as RE2's FullMatch does (checked against Python's
re on patterns where the two agree), and syntax outside the subset is refused with a column."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from l7fp.semantics.regex import RegexSyntaxError, parse

PATTERNS = [".+", "/api/v[0-9]+/.*", "(?i)foo\\.com", "^/a/(b|c)?$", "[a-z0-9._-]+", "x{2,3}y*", "[^/]+",
            "/books(/[0-9]+)?", "\\d\\w\\s", "(?:ab|a)b", "[-a]z", "a\\-b"]


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abcxyzABC/._-09 \t", max_size=12))
def test_full_match_agrees_with_python_re(pattern, text):
    python = re.fullmatch(pattern.replace("(?i)", ""), text, re.IGNORECASE if "(?i)" in pattern else 0)
    assert parse(pattern).full_match(text) == (python is not None)


@pytest.mark.parametrize("pattern", ["a(?=b)", "\\1", "a^b", "\\p{L}", "(?s)a", "[]", "a{2000}", "(a"])
def test_outside_the_subset_is_refused(pattern):
    with pytest.raises(RegexSyntaxError):
        parse(pattern)


def test_global_replace_uses_groups():
    assert parse("^/a/([0-9]+)").global_replace("/a/12/x", "/b/\\1") == "/b/12/x"
    assert parse("a").global_replace("/aaa", "b") == "/bbb"
