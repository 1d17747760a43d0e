"""bpf/: the kernel fast path. C generation from the proven DAG for bcc (codegen.py, regex_dfa.py,
parser_spec.py; the fixed C is in c/), loading and the verifier's budget (loader.py), what
`l7fp compile` writes (artifacts.py), the BPF_PROG_TEST_RUN harness (testrun.py) and `l7fp run`'s
sockmap data plane with its agent and slow-path Envoy (dataplane.py). See docs/dataplane.md.
"""
