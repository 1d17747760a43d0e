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
    # Envoy 1.40 runs an IPv6 listener; the model (and the kernel program) is IPv4 only: refused.
    ("address: 127.0.0.1, port_value: 18101", 'address: "::1", port_value: 18101', "::1",
     "socket_address.address", "IPv4 connections only"),
    ("address: 127.0.0.1, port_value: 18101", "address: not.an.ip, port_value: 18101", "not.an.ip",
     "socket_address.address", "not an IP address"),
    # A number where Envoy's proto JSON parsing wants a string (Envoy refuses it too).
    ("{prefix: /public/}", "{prefix: 5}", "prefix: 5", "path.prefix", "expected a string, got an integer (5)"),
    ("{exact: GET}", "{exact: [GET, PUT]}", "[GET, PUT]", "string_match.exact", "expected a string, got a list"),
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


@pytest.mark.parametrize("name,content,message", [
    ("empty.yaml", b"", "no policy document in the file"),
    ("comments.yaml", b"# nothing here\n---\n", "no policy document in the file"),
    ("empty.l7fp", b"# nothing\n", "no statement in the file"),
    ("binary.yaml", b"static_resources:\n  \xff\xfe\n", "not UTF-8 text"),
])
def test_files_without_a_policy_are_refused(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_policy([str(path)])
    assert err.value.origin.file == str(path) and message in err.value.message
    if name == "binary.yaml":
        assert err.value.origin.line == 2


@pytest.mark.parametrize("old,new,message", [
    ('respond 418 "I', 'respond 9999 "I', "respond status 9999 must be in [200, 600)"),
    ("listener 127.0.0.1:18080", "listener 300.1.1.1:18080", "'300.1.1.1' is not an IPv4 address"),
    ("cluster books 127.0.0.1:18081", "cluster books 127.0.0.1:99999", "port 99999 is not in 1..65535"),
])
def test_dsl_values_envoy_would_refuse_are_refused(tmp_path, old, new, message):
    text = (Path(__file__).parents[1] / "examples" / "bookstore" / "bookstore.l7fp").read_text()
    assert old in text
    path = tmp_path / "p.l7fp"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_policy([str(path)])
    assert message in err.value.message
    assert err.value.origin.line == next(i for i, l in enumerate(path.read_text().splitlines(), 1) if new in l)
