"""bpf/: C generation from the DAG for bcc, the in-kernel HTTP/1.1 parser, the sockmap data plane
agent and the BPF_PROG_TEST_RUN harness.

Not built yet (issue 4).
"""
