"""Bad policy input: every error names file, line and key, and nothing unmodelled is accepted."""
from __future__ import annotations

from pathlib import Path

import pytest

from l7fp.semantics.errors import ConfigError
from l7fp.semantics.frontends import load_policy

GOOD = (Path(__file__).parent / "envoy" / "configs" / "01_rbac_allow.yaml").read_text()


@pytest.mark.parametrize("old,new,line_of,key_fragment,message", [
    ("              rules:\n                action: ALLOW", "              rules:\n                action: MAYBE",
     "action: MAYBE", "rules.action", "not modelled"),
    ("          stat_prefix: ingress", "          stat_prefix: ingress\n          upgrade_configs: []",
     "upgrade_configs", "upgrade_configs", "not modelled"),
    ('regex: "/api/v[0-9]+/.*"', 'regex: "/api/(?=v)"', "(?=v)", "safe_regex.regex", "unsupported"),
    ("route: {cluster: app}", "route: {cluster: missing}", "cluster: missing", "route", "unknown cluster"),
    ("rbac.v3.RBAC", "rbac.v3.RBACX", "RBACX", "@type", "not modelled"),
    ("- url_path: {path: {prefix: /public/}}", "- url_path: {path: {prefix: /public/}, bogus: 1}",
     "bogus: 1", "url_path.bogus", "not modelled"),
    ("          stat_prefix: ingress", "          stat_prefix: ingress\n          server_header_transformation: DROP",
     "DROP", "server_header_transformation", "unknown server_header_transformation"),
])
def test_envoy_errors_point_at_the_line(tmp_path, old, new, line_of, key_fragment, message):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    expected_line = next(i for i, l in enumerate(text.splitlines(), 1) if line_of in l)
    with pytest.raises(ConfigError) as err:
        load_policy([str(path)])
    assert err.value.origin.file == str(path)
    assert abs(err.value.origin.line - expected_line) <= 1, (err.value.origin, expected_line)
    assert key_fragment in err.value.origin.key
    assert message in err.value.message


def test_yaml_syntax_error_has_a_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("static_resources:\n  listeners: [\n")
    with pytest.raises(ConfigError) as err:
        load_policy([str(path)])
    assert err.value.origin.line >= 2


def test_random_fault_percentage_is_refused(tmp_path):
    cfg = (Path(__file__).parent / "envoy" / "configs" / "05_fault_log_shadow.yaml").read_text()
    path = tmp_path / "f.yaml"
    path.write_text(cfg.replace("numerator: 100\n", "numerator: 50\n", 1))
    assert path.read_text() != cfg
    with pytest.raises(ConfigError, match="random per request"):
        load_policy([str(path)])
