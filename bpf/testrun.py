"""The test-run harness: the kernel's own verdict on raw request bytes, without sockets.

The generated C is compiled with the test_run.c entry as a SOCKET_FILTER program and executed by
BPF_PROG_TEST_RUN (about 100k runs per second from Python). Tests and `l7fp fuzz --oracle kernel`
compare its verdicts with the DAG's (`expected`), so what is checked is the kernel's bytecode after the
verifier, not a Python model of it. Also used by the data plane agent for the rare bytes that reach a
socket before it is in the socket map (bpf/dataplane.py).
"""
from __future__ import annotations

import ctypes as ct
import ipaddress

from ..semantics.fields import FieldRequest
from ..synth.dag import Leaf, Test, branches, field_value, test_holds
from .codegen import KernelProgram, Verdict
from .loader import ProgramStats, TestRunner, compile_source, fill_tables, load_function, program_stats

BPF_PROG_TYPE_SOCKET_FILTER = 1
# The kernel program is three programs joined by tail calls (each has its own verifier budget and
# 512-byte stack): scan the header block, frame the request, run the DAG.
PROGRAMS = ("l7fp_entry", "l7fp_frame_request", "l7fp_decide")


class KernelHarness:
    """One policy's kernel program, loaded for test runs."""

    def __init__(self, program: KernelProgram):
        self.program = program
        self.module = compile_source(program.source("test_run"), "test-run harness")
        functions = [load_function(self.module, name, BPF_PROG_TYPE_SOCKET_FILTER) for name in PROGRAMS]
        for index, function in enumerate(functions[1:]):
            self.module["progs"][ct.c_int(index)] = ct.c_int(function.fd)
        fill_tables(self.module, program)
        self.stats = [program_stats(name, f.fd) for name, f in zip(PROGRAMS, functions)]
        entry = functions[0]
        self._conns = self.module["conns"]
        self._addresses = None
        self._set_addresses("127.0.0.1", "127.0.0.1")
        self._run = TestRunner(entry.fd)
        self._by_node = {v.node: v for v in program.verdicts if v.node is not None}

    def _set_addresses(self, source: str, destination: str) -> None:
        if self._addresses == (source, destination):
            return
        conn = self._conns.Leaf()
        conn.src_ip = int(ipaddress.IPv4Address(source))
        conn.dst_ip = int(ipaddress.IPv4Address(destination))
        self._conns[ct.c_uint64(0)] = conn
        self._addresses = (source, destination)

    def verdict(self, raw: bytes, source_ip: str = "127.0.0.1", destination_ip: str = "127.0.0.1") -> Verdict:
        self._set_addresses(source_ip, destination_ip)
        code = self._run(raw)
        if code >= len(self.program.verdicts):
            raise RuntimeError(f"kernel program returned {code:#x}, not a verdict code")
        return self.program.verdicts[code]

    def expected(self, request: FieldRequest) -> Verdict:
        """The verdict the lowered DAG gives the request (what the kernel must answer when the
        parser accepts the bytes)."""
        dag = self.program.dag
        n = dag.root
        while not isinstance(dag.node(n), Leaf):
            item: Test = dag.node(n)
            yes, no = branches(dag.graph, n)
            n = yes if test_holds(item, field_value(request, item.field)) else no
        return self._by_node[n]

    def close(self) -> None:
        self.module.cleanup()

    def budget(self) -> list[ProgramStats]:
        return self.stats
