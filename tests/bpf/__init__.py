"""Tests of bpf/: the generated C through BPF_PROG_TEST_RUN, the verifier budget, and `l7fp run`'s data plane on real sockets (root)."""
