"""Loading a KernelProgram with bcc: compile, verify (with a budget), fill the tables.

Used by the data plane agent (bpf/dataplane.py), the test-run harness (bpf/testrun.py), `l7fp compile`
and the verifier-budget tests. bcc 0.26 has no Python class for socket maps, no verifier-log capture
and no BPF_PROG_TEST_RUN, so this module reaches those through libbcc (which bundles libbpf) with
ctypes, in one place.

A verifier rejection becomes `KernelLoadError` naming the program and the verifier's last words,
never a multi-megabyte log dump; `verified_insns` reads the kernel's own count of instructions
processed (bpf_prog_info.verified_insns), which tests keep under the 1M limit.
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import ipaddress
import os
import pickle
import tempfile
from array import array
from dataclasses import dataclass

from .codegen import KernelProgram

VERIFIER_LIMIT = 1_000_000  # BPF_COMPLEXITY_LIMIT_INSNS
_PROG_INFO_SIZE = 232  # sizeof(struct bpf_prog_info) in the 6.x uapi
_OFF_XLATED_LEN, _OFF_VERIFIED_INSNS = 20, 216
ETH_HEADER = b"\x00" * 12 + b"\x88\xb5"  # BPF_PROG_TEST_RUN pulls 14 bytes before a socket filter runs; a
# local-experimental EtherType, so the kernel does not read the request as an IPv4 header


# Measured: BPF_PROG_TEST_RUN takes at most 3712 bytes of data (a page less the skb's overheads),
# 14 of them the Ethernet header.
MAX_TEST_RUN_PAYLOAD = 3712 - len(ETH_HEADER)


class KernelLoadError(Exception):
    """The kernel refused a program (verifier, or bcc's compiler). The message is short and says why."""


def _bcc():
    try:
        import bcc
        from bcc.libbcc import lib
    except ImportError as exc:  # pragma: no cover - setup.sh installs python3-bpfcc
        raise KernelLoadError("bcc does not import: run scripts/setup.sh (python3-bpfcc, .venv with "
                              "--system-site-packages)") from exc
    return bcc, lib


@dataclass(frozen=True)
class ProgramStats:
    name: str
    verified_insns: int
    xlated_insns: int


@contextlib.contextmanager
def _captured_stderr():
    """libbcc prints clang diagnostics and verifier logs to fd 2; we report them ourselves. Yields a
    list that holds the captured text once the block ends."""
    captured: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _in_a_child(work, what: str):
    """Run `work()` in a forked child and return what it returns (pickled back). LLVM ends the process
    on some errors (the 512-byte BPF stack, for one) instead of returning one, so anything that
    compiles C runs here first; a death becomes KernelLoadError with clang's diagnostics, and a
    KernelLoadError raised in the child is raised again here."""
    with tempfile.TemporaryFile() as sink, tempfile.TemporaryFile() as answer:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                pickle.dump(work(), answer)
                answer.flush()
            except KernelLoadError as exc:
                pickle.dump(exc, answer)
                answer.flush()
                os._exit(3)
            except BaseException:
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        answer.seek(0)
        if code == 0:
            return pickle.load(answer)
        if code == 3:
            raise pickle.load(answer)
        sink.seek(0)
        raise _compile_failure(what, sink.read().decode(errors="replace"))


def _compiles_in_a_child(source: str, what: str) -> None:
    _in_a_child(lambda: _compile(source, what) and None, what)


def _compile_failure(what: str, diagnostics: str) -> KernelLoadError:
    errors = [line.strip() for line in diagnostics.splitlines() if "error" in line.lower()][:4]
    return KernelLoadError(f"{what}: the generated C does not compile: " + (" | ".join(errors) or "clang failed")
                           + " (`l7fp compile --print-c` shows the C)")


_CFLAGS = ["-Wno-unused-label", "-Wno-unused-function"]


def compile_source(source: str, what: str):
    """A bcc.BPF module for C text (nothing is loaded into the kernel yet)."""
    _compiles_in_a_child(source, what)
    return _compile(source, what)


def _compile(source: str, what: str):
    bcc, _ = _bcc()
    try:
        with _captured_stderr() as diagnostics:
            return bcc.BPF(text=source.encode(), cflags=_CFLAGS)
    except Exception as exc:
        raise _compile_failure(what, "".join(diagnostics) or str(exc)) from exc


def load_function(module, name: str, prog_type: int):
    """Load one function of a module through the verifier; the verifier's log is kept short."""
    bcc, lib = _bcc()
    fname = name.encode()
    start = lib.bpf_function_start(module.module, fname)
    if not start:
        raise KernelLoadError(f"no function {name} in the generated C")
    fd = _load(lib, module, fname, start, prog_type, 0, None, 0)
    if fd < 0:
        # Load again with the verifier's log only to say why: the log of a large program is
        # megabytes; with the kernel's rotating log the buffer keeps its last lines.
        size = 1 << 22
        log = ct.create_string_buffer(size)
        errno = ct.get_errno()
        _load(lib, module, fname, start, prog_type, 1, log, size)
        lines = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
        processed = next((line for line in reversed(lines) if line.startswith("processed ")), "")
        reason = [line for line in lines if not line.startswith("processed ")][-2:]
        raise KernelLoadError(f"the kernel verifier rejected {name} ({os.strerror(errno) if errno else 'error'}): "
                              + " | ".join(reason) + (f" [{processed}]" if processed else ""))
    function = bcc.BPF.Function(module, fname, fd)
    module.funcs[fname] = function
    return function


def _load(lib, module, fname: bytes, start, prog_type: int, log_level: int, log, size: int) -> int:
    with _captured_stderr():
        return lib.bcc_func_load(module.module, prog_type, fname, start, lib.bpf_function_size(module.module, fname),
                                 lib.bpf_module_license(module.module), lib.bpf_module_kern_version(module.module),
                                 log_level, log, size, None, -1)


def program_stats(name: str, fd: int) -> ProgramStats:
    _, lib = _bcc()
    lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    info = ct.create_string_buffer(_PROG_INFO_SIZE)
    length = ct.c_uint32(_PROG_INFO_SIZE)
    if lib.bpf_obj_get_info_by_fd(fd, info, ct.byref(length)) < 0:
        raise OSError(ct.get_errno(), "bpf_obj_get_info_by_fd")

    def u32(offset: int) -> int:
        return int.from_bytes(info.raw[offset:offset + 4], "little")

    return ProgramStats(name, u32(_OFF_VERIFIED_INSNS), u32(_OFF_XLATED_LEN) // 8)


def fill_tables(module, program: KernelProgram) -> None:
    """Write the scanner tables, character sets, verdict words and regex DFAs into the tables map."""
    table = module["tables"]
    value = table.Leaf()
    for i, word in enumerate(program.transitions):
        value.trans[i] = word
    for i, cls in enumerate(program.classes):
        value.cls[i] = cls
    for i, chars in enumerate(program.sets):
        bits = bytearray(32)
        for ch in chars:
            bits[ch >> 3] |= 1 << (ch & 7)
        for j, byte in enumerate(bits):
            value.sets[i * 32 + j] = byte
    for v in program.verdicts:
        value.verdict[v.code] = program.verdict_word(v)
    rows = array("H", (next_row for row in program.regexes.rows for next_row in row))
    ct.memmove(ct.addressof(value) + type(value).dfa.offset, rows.tobytes(), len(rows) * rows.itemsize)
    for row, accepting in enumerate(program.regexes.accepting):
        value.accepting[row] = accepting
    table[ct.c_int(0)] = value


# The kernel program is programs joined by tail calls (each has its own verifier budget and 512-byte
# stack): scan the header block, frame the request, run the DAG; the data plane's entry also follows
# its upstreams' response framing (bpf/c/http1_response.h). `progs` slot k holds PROGRAMS[entry][k + 1].
PROGRAMS = {"sk_skb": ("l7fp_entry", "l7fp_frame_request", "l7fp_decide", "l7fp_frame_response"),
            "test_run": ("l7fp_entry", "l7fp_frame_request", "l7fp_decide")}
# The two entries KernelProgram.source() builds, and the program type each is loaded as.
BPF_PROG_TYPE_SOCKET_FILTER, BPF_PROG_TYPE_SK_SKB = 1, 14
ENTRIES = {"sk_skb": BPF_PROG_TYPE_SK_SKB, "test_run": BPF_PROG_TYPE_SOCKET_FILTER}


@dataclass
class Loaded:
    module: object  # the bcc.BPF module (its maps by name)
    entry: object  # the first program's bcc Function (attach it, or test-run it)
    stats: list[ProgramStats]


def _load_programs(module, entry: str) -> tuple[list, list[ProgramStats]]:
    """The programs of a compiled entry through the verifier, and what it counted for each."""
    functions = [load_function(module, name, ENTRIES[entry]) for name in PROGRAMS[entry]]
    return functions, [program_stats(n, f.fd) for n, f in zip(PROGRAMS[entry], functions)]


def load_program(program: KernelProgram, entry: str, what: str) -> Loaded:
    """Compile one entry of `program`, load its programs, chain them and fill the tables."""
    module = compile_source(program.source(entry), what)
    functions, stats = _load_programs(module, entry)
    for index, function in enumerate(functions[1:]):
        module["progs"][ct.c_int(index)] = ct.c_int(function.fd)
    fill_tables(module, program)
    return Loaded(module, functions[0], stats)


def check_load(program: KernelProgram, entry: str, what: str) -> list[ProgramStats]:
    """Compile one entry and pass its programs through the verifier in a forked child, then unload
    them: the instructions the verifier processed per program, or KernelLoadError saying why it
    refused. For gates (`l7fp compile --check-load`, the corpus budget test) that need the verdict,
    not a running program; one compile instead of load_program's two."""
    return _in_a_child(lambda: _load_programs(_compile(program.source(entry), what), entry)[1], what)


def connection_state(conns, source: str, destination: str):
    """A fresh `struct conn` for the `conns` map: the connection's IPv4 addresses, host byte order."""
    state = conns.Leaf()
    state.src_ip = int(ipaddress.IPv4Address(source))
    state.dst_ip = int(ipaddress.IPv4Address(destination))
    return state


class _TestRunOpts(ct.Structure):  # libbpf's struct bpf_test_run_opts (one class: ctypes checks identity)
    _fields_ = [("sz", ct.c_size_t), ("data_in", ct.c_void_p), ("data_out", ct.c_void_p),
                ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
                ("ctx_in", ct.c_void_p), ("ctx_out", ct.c_void_p),
                ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
                ("retval", ct.c_uint32), ("repeat", ct.c_int), ("duration", ct.c_uint32),
                ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32)]


class TestRunner:
    """Runs a loaded SOCKET_FILTER program on raw bytes with BPF_PROG_TEST_RUN; returns its u32."""

    def __init__(self, fd: int, capacity: int = MAX_TEST_RUN_PAYLOAD):
        _, lib = _bcc()

        self._run = lib.bpf_prog_test_run_opts
        self._run.argtypes = [ct.c_int, ct.POINTER(_TestRunOpts)]
        self._run.restype = ct.c_int
        self.fd, self.capacity = fd, capacity
        self.buffer = ct.create_string_buffer(capacity + len(ETH_HEADER))
        self.buffer[:len(ETH_HEADER)] = ETH_HEADER
        self.opts = _TestRunOpts(sz=ct.sizeof(_TestRunOpts), data_in=ct.cast(self.buffer, ct.c_void_p), repeat=1)

    def __call__(self, payload: bytes) -> int:
        if not payload or len(payload) > self.capacity:
            raise ValueError(f"test-run payload of {len(payload)} bytes (1..{self.capacity})")
        ct.memmove(ct.addressof(self.buffer) + len(ETH_HEADER), payload, len(payload))
        self.opts.data_size_in = len(ETH_HEADER) + len(payload)
        self.opts.data_size_out = 0  # the kernel writes the output size back; a stale one means ENOSPC
        error = self._run(self.fd, ct.byref(self.opts))
        if error < 0:
            raise OSError(-error, f"BPF_PROG_TEST_RUN failed: {os.strerror(-error)}")
        return self.opts.retval
