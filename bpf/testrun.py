"""The test-run harness: the kernel's own verdict on raw request bytes, without sockets.

The generated C is compiled with the test_run.c entry as a SOCKET_FILTER program and executed by
BPF_PROG_TEST_RUN (about 100k runs per second from Python). Tests (tests/bpf/test_harness.py)
compare its verdicts with the DAG's (`expected`), so what is checked is the kernel's bytecode after the
verifier, not a Python model of it. Payloads are limited to MAX_TEST_RUN_PAYLOAD bytes (loader.py).
"""
from __future__ import annotations

import ctypes as ct

from ..semantics.fields import FieldRequest
from ..synth.dag import reach
from .codegen import KernelProgram, Verdict
from .loader import TestRunner, connection_state, load_program


class KernelHarness:
    """One policy's kernel program, loaded for test runs."""

    def __init__(self, program: KernelProgram):
        self.program = program
        loaded = load_program(program, "test_run", "test-run harness")
        self.module, self.stats = loaded.module, loaded.stats
        self._conns = self.module["conns"]
        self._addresses = None
        self._set_addresses("127.0.0.1", "127.0.0.1")
        self._run = TestRunner(loaded.entry.fd)
        self.capacity = self._run.capacity  # the longest payload a test run takes
        self._by_node = {v.node: v for v in program.verdicts if v.node is not None}

    def _set_addresses(self, source: str, destination: str) -> None:
        if self._addresses == (source, destination):
            return
        self._conns[ct.c_uint64(0)] = connection_state(self._conns, source, destination)
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
        return self._by_node[reach(self.program.dag, request)]

    def close(self) -> None:
        self.module.cleanup()
