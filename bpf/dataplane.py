"""The data plane agent behind `l7fp run`: kernel fast path on a SOCKHASH, Envoy as the slow path.

Used by the CLI (`l7fp run`), the demo (`make demo`), the kernel tests (tests/bpf/) and the bench.
What it does, per downstream connection (docs/dataplane.md has the picture and the limits):

1. accept; connect one upstream per cluster the kernel may forward to (non-blocking; if one
   fails or takes longer than `connect_timeout`, the connection is Envoy's, which answers as it
   would); write the connection's state (addresses) into `conns`; put the upstreams and then the
   client into the SOCKHASH (keys {cookie, slot}), and read the client once: bytes that arrived
   before it was in the map go through the program then;
2. the kernel decides each request (bpf/c/sk_skb.c): forwards are redirected socket to socket in
   the kernel, responses come back the same way; the agent neither sees their bytes nor wakes for
   them (it watches fast-path sockets for hang-ups only);
3. local replies: the kernel passes the request to this agent and says so (with the connection's
   state) in the `for_agent` ring; the agent reads that client, writes Envoy's exact reply
   (semantics/wire.py) and acknowledges it in `acks`;
4. punts: the same record; every byte of the connection from then on comes to the agent, which
   relays it to the supervised Envoy (PROXY protocol v1 carries the client's addresses, so Envoy's
   RBAC sees them);
5. answer order: what the agent writes (a reply, Envoy's answers) waits until the responses to
   requests the kernel forwarded before have ended and left the client socket's queue (the
   program follows their framing: bpf/c/http1_response.h; docs/bugs/0008).

Admin endpoint (`/stats?format=json`): `fast_path` (requests decided in kernel), `local_replies_in_kernel`
(of those, local replies), `forwarded_in_kernel`, `punted` and `punts` by reason, `connections`,
`agent_wakeups` (times the agent woke with work: accepts, replies, punts, hang-ups; not per fast-path
request), `answers_held` (answers that waited for a forwarded response ahead of them) and
`answers_untracked` (answers written on connections whose response framing the program stopped
following, without that wait).
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

from ..proofs.envoy_oracle import checked_envoy_binary, free_port
from ..semantics import ir, wire
from ..semantics.to_envoy import bootstrap
from .codegen import PARSER_VERDICTS, KernelProgram
from .loader import connection_state, load_program

BPF_SK_SKB_VERDICT = 38
SO_COOKIE = 57
MODE_PUNTED = 1
_TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info (linux/tcp.h)
_R_HEAD = 0  # http1_response.h: `rstate` when the next response byte starts a head
# Envoy's route timeout when the route sets none. Routes that set one punt (synth/offload.py), so
# this is the only one the kernel path applies (`_check_route_timeouts`).
ROUTE_TIMEOUT_S = 15
# Punts the agent decides for a whole connection (counted per connection, like the kernel's).
UNJUDGED = "bytes the kernel program did not judge (read by the agent before it saw them)"
UPSTREAM_UNREACHABLE = "an upstream connection failed or timed out (Envoy answers as it would)"
_PROXY_PROTOCOL = {"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}}


class DataPlaneError(Exception):
    """The data plane cannot start (bad cluster address, port in use, Envoy failing): says why."""


def _cookie(sock: socket.socket) -> int:
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


class _SockKey(ct.Structure):
    _fields_ = [("cookie", ct.c_uint64), ("slot", ct.c_uint32), ("pad", ct.c_uint32)]


def slow_path_config(policy: ir.Policy, port: int, endpoints: dict[str, tuple[str, int]] | None = None) -> dict:
    """The Envoy bootstrap of the slow path: the policy (from the IR) on 127.0.0.1:port, taking the
    client's addresses from a PROXY protocol header."""
    config = bootstrap(policy, listener=("127.0.0.1", port), endpoints=endpoints)
    config["static_resources"]["listeners"][0]["listener_filters"] = [_PROXY_PROTOCOL]
    return config


class SlowPath:
    """The supervised Envoy running `slow_path_config` on an internal port."""

    def __init__(self, policy: ir.Policy, endpoints: dict[str, tuple[str, int]]):
        self.port = free_port()
        config = slow_path_config(policy, self.port, endpoints)
        self.admin_port = free_port()
        config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}}
        self.dir = tempfile.mkdtemp(prefix="l7fp-run-")
        self.config_path = os.path.join(self.dir, "envoy.yaml")
        with open(self.config_path, "w") as handle:
            yaml.safe_dump(config, handle)
        self.log_path = os.path.join(self.dir, "envoy.log")
        self.proc = subprocess.Popen([checked_envoy_binary(), "-c", self.config_path, "--concurrency", "1",
                                      "--disable-hot-restart", "-l", "warning", "--log-path", self.log_path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DataPlaneError(f"the slow-path Envoy exited ({self.proc.returncode}); log: {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise DataPlaneError(f"the slow-path Envoy did not listen within 20 s; log: {self.log_path}")

    def connect(self, client: tuple[str, int], local: tuple[str, int]) -> socket.socket:
        # The PROXY header gives Envoy the client's address as remote_ip, but direct_remote_ip stays
        # the connection's own peer (docs/bugs/0003): so the connection to Envoy is made from the
        # client's IP where the kernel lets us (any loopback address; others with IP_TRANSPARENT).
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
            sock.bind((client[0], 0))
        except OSError:
            pass
        sock.settimeout(5)
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(f"PROXY TCP4 {client[0]} {local[0]} {client[1]} {local[1]}\r\n".encode())
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class _Connection:
    client: socket.socket
    cookie: int
    peer: tuple[str, int]
    local: tuple[str, int]
    upstreams: list[socket.socket] = field(default_factory=list)
    envoy: socket.socket | None = None  # set once the connection is punted
    # What the program told the agent (records, bpf/c/sk_skb.c), and what the agent answered.
    punted: bool = False
    replies: int = 0  # local replies the program decided
    reply: int = 0  # verdict of the last one
    taken: int = 0  # replies whose request the agent has read (written, or held: `held`)
    deadline: float = 0.0  # for the upstream connects
    connecting: int = 0  # upstream connects in flight
    # Answer order (docs/bugs/0008). From the newest record: forwarded requests whose responses had
    # not ended (-1: the program stopped following them), response bytes redirected to the client.
    in_flight: int = 0
    to_client: int = 0
    written: int = 0  # bytes the agent wrote to the client
    flushed: int = 0  # redirected bytes known to have entered the client socket's queue
    answered_by_agent: int = 0  # forwards the agent answered for their upstream (its close; a timeout)
    held: list = field(default_factory=list)  # answers waiting for the responses ahead: (bytes, then)

    @property
    def owed(self) -> bool:
        """The program passed bytes to the agent that it has not handled: the punt, or a reply."""
        return self.punted or self.replies != self.taken

    def learn(self, punted: bool, replies: int, reply: int, in_flight: int = 0, to_client: int = 0) -> None:
        """Take a record (or the state in `conns`); one older than what is known is ignored (a
        record still in the ring after `conns` itself was read)."""
        newer = 0 < (replies - self.replies) % 2**32 < 2**31  # the program's u32 counter
        if newer or (punted and not self.punted) or to_client > self.to_client:
            self.in_flight, self.to_client = in_flight, max(to_client, self.to_client)
        self.punted = self.punted or punted
        if newer:
            self.replies, self.reply = replies, reply

    def sockets(self) -> list[socket.socket]:
        return [self.client, *self.upstreams, *([self.envoy] if self.envoy else [])]


class _AgentRecord(ct.Structure):  # struct agent_record, bpf/c/sk_skb.c
    _fields_ = [("cookie", ct.c_uint64), ("mode", ct.c_uint32), ("replies", ct.c_uint32),
                ("reply", ct.c_uint32), ("in_flight", ct.c_uint32), ("to_client", ct.c_uint64)]


def _in_flight(value: int) -> int:
    return -1 if value == 0xFFFFFFFF else value


def _in_flight_of(state) -> int:
    """Forwarded requests whose responses have not ended, from a `struct conn` (-1: untracked): what
    l7fp_tell_agent puts in a record."""
    return -1 if state.untracked else (state.sent - state.done) % 2**32


def _unanswered(conn: _Connection, state) -> int:
    """Forwarded requests still waiting for an answer: in flight at the program, less those the
    agent answered itself when their upstream closed (-1: untracked)."""
    in_flight = _in_flight_of(state)
    return in_flight if in_flight < 0 else in_flight - conn.answered_by_agent


def _oldest_unanswered(conn: _Connection, state) -> int:
    """The index (mod 64) of the connection's oldest forward still waiting for an answer, into the
    program's per-forward records (`heads`, `fwd_ns`)."""
    return (state.done + conn.answered_by_agent) % 64


def _progress(state) -> tuple[int, int, int, int, int]:
    """What the program changes as it forwards a request or meets response bytes, from a `struct
    conn`."""
    return state.sent, state.to_client, state.done, state.rstate, state.untracked


def _queued_to(sock: socket.socket) -> int:
    """Bytes that have entered the socket's send queue since it opened: acknowledged by the peer
    (TCP_INFO) plus still queued (SIOCOUTQ)."""
    acked = struct.unpack_from("Q", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 128), _TCPI_BYTES_ACKED)[0]
    return acked + struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


class _Readiness:
    """The agent's epoll. Sockets in the SOCKHASH are edge-triggered and, while their connection is
    on the fast path, watched for hang-ups only: on this kernel (6.18) the socket's data_ready fires
    for every segment the sk_skb program took (a wake-up per request, for nothing; level-triggered,
    poll kept reporting them readable: 160k wake-ups a second). The program says which connections
    left bytes for the agent (`for_agent`), and only those are watched for bytes (`watch_bytes`)."""

    HANGUPS = select.EPOLLRDHUP | select.EPOLLET
    BYTES = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET

    def __init__(self):
        self._epoll = select.epoll()
        self._registered: dict[int, object] = {}
        self._watching: dict[int, bool] = {}  # fd -> watched for bytes (sockets in the SOCKHASH)

    def register(self, sock, data, events: int = select.EPOLLIN) -> None:
        """Watch `sock` (a socket, or a bare fd such as a ring buffer's) for `events`."""
        fd = sock if isinstance(sock, int) else sock.fileno()
        self._epoll.register(fd, events)
        self._registered[fd] = (sock, data)
        self._watching[fd] = bool(events & select.EPOLLIN)

    def watch_bytes(self, sock: socket.socket, on: bool) -> None:
        """Wake for bytes on `sock` too (on), or for hang-ups only. Turning it on reports bytes that
        are already queued: epoll re-checks readiness on modify."""
        fd = sock.fileno()
        if fd in self._registered and self._watching[fd] != on:
            self._epoll.modify(fd, self.BYTES if on else self.HANGUPS)
            self._watching[fd] = on

    def unregister(self, sock: socket.socket) -> None:
        if self._registered.pop(sock.fileno(), None) is not None:
            self._watching.pop(sock.fileno(), None)
            self._epoll.unregister(sock.fileno())

    def ready(self, timeout: float) -> list:
        """(socket, data) of each registered socket with something to read."""
        return [self._registered[fd] for fd, _ in self._epoll.poll(timeout) if fd in self._registered]

    def close(self) -> None:
        self._epoll.close()


def _received(sock: socket.socket):
    """The chunks readable now; a last b"" when the peer has closed or the socket failed."""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        yield data
        if not data:
            return


class DataPlane:
    """Load the kernel program, listen, and serve until `stop()`."""

    def __init__(self, policy: ir.Policy, program: KernelProgram, listen: tuple[str, int],
                 admin: tuple[str, int] | None, endpoints: dict[str, tuple[str, int]],
                 connect_timeout: float = 5.0):
        self.policy, self.program = policy, program
        self.connect_timeout = connect_timeout  # for each connection's upstreams, then Envoy's turn
        missing = [c for c in program.clusters[1:] if c not in endpoints]
        if missing:
            raise DataPlaneError(f"no address for cluster(s) {', '.join(missing)}: give --cluster NAME=HOST:PORT")
        self.endpoints = endpoints
        loaded = load_program(program, "sk_skb", "data plane")
        self.module, self.stats = loaded.module, loaded.stats
        self._conns, self._acks, self._peers = self.module["conns"], self.module["acks"], self.module["peers"]
        self._counts, self._lost = self.module["counts"], self.module["lost"]
        self._lost_seen, self._lost_checked = 0, time.monotonic()
        self._records: list[tuple] = []  # from `for_agent`, appended by bcc's ring callback
        self._told: dict[int, _Connection] = {}  # cookie -> connection a record named, to read
        self._replies: dict[int, tuple[int, bytes, bool]] = {}  # verdict -> (second, bytes, closes)
        self.agent_punts: dict[str, int] = {}  # local replies decided in kernel, handed to Envoy
        self.connection_punts: dict[str, int] = {}  # UNJUDGED, UPSTREAM_UNREACHABLE
        self._connecting: dict[int, _Connection] = {}  # cookie -> connection whose upstreams connect
        self.connections = 0
        self.agent_wakeups = 0  # epoll returns with work: what the fast path costs user space
        self.answers_held = self.answers_untracked = 0
        self.upstream_resets = 0  # Envoy's 503 for a forward whose upstream closed before answering
        self.route_timeouts = 0  # forwards unanswered after Envoy's route timeout (504, or the close)
        self.next_timeout_check = 0  # monotonic ns: when `_check_route_timeouts` looks again
        self.route_timeout_s = ROUTE_TIMEOUT_S  # Envoy's; tests shorten it to compare with a route's own
        self._holding: dict[int, _Connection] = {}  # cookie -> connection with answers held
        self._by_fd: dict[int, _Connection] = {}
        self._by_cookie: dict[int, _Connection] = {}
        self._stopping = threading.Event()
        # From here on every step has something for close() to undo.
        self._entry = self.slow = self.listener = self.admin = self.readiness = None
        try:
            self._start(loaded.entry, listen, admin)
        except BaseException:
            self.close()
            raise

    def _start(self, entry, listen: tuple[str, int], admin: tuple[str, int] | None) -> None:
        from bcc.libbcc import lib

        self._lib = lib
        self._sockets_fd = lib.bpf_table_fd(self.module.module, b"sockets")
        self._conns_fd, self._acks_fd = self._conns.map_fd, self._acks.map_fd
        if lib.bpf_prog_attach(entry.fd, self._sockets_fd, BPF_SK_SKB_VERDICT, 0) < 0:
            raise DataPlaneError(f"cannot attach the sk_skb verdict program: {os.strerror(ct.get_errno())}")
        self._entry = entry
        self.slow = SlowPath(self.policy, self.endpoints)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(listen)
        except OSError as exc:
            raise DataPlaneError(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror}") from exc
        self.listener.listen(512)
        self.listener.setblocking(False)
        self.readiness = _Readiness()
        self.readiness.register(self.listener, ("accept", None))
        ring = self.module["for_agent"]
        ring.open_ring_buffer(self._on_record)
        self.readiness.register(ring.map_fd, ("signals", None))
        self.admin = _AdminServer(admin, self) if admin else None

    # ---- map plumbing -------------------------------------------------------------------------
    def _insert(self, sock: socket.socket, cookie: int, slot: int) -> None:
        key, fd = _SockKey(cookie, slot, 0), ct.c_int(sock.fileno())
        if self._lib.bpf_update_elem(self._sockets_fd, ct.byref(key), ct.byref(fd), 0) < 0:
            raise OSError(ct.get_errno(), "socket map insert")

    # ---- connections --------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, peer = self.listener.accept()
            except BlockingIOError:
                return
            self.connections += 1
            try:
                self._adopt(client, peer)
            except OSError:
                client.close()

    def _adopt(self, client: socket.socket, peer) -> None:
        """Start the connection's upstream connects (non-blocking: one slow upstream must not stall
        every other connection); the fast path starts once they are all up (`_start_fast_path`).
        Meanwhile the client's bytes wait in its queue, and go through the program then."""
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setblocking(False)
        # The policy (and the proven DAG) is about the config's listener; with --listen elsewhere,
        # Envoy is still told the request came to that port, so destination_port means the same.
        local = (client.getsockname()[0], self.policy.listener[1])
        conn = _Connection(client, _cookie(client), peer, local)
        self._by_fd[client.fileno()] = conn
        self._by_cookie[conn.cookie] = conn
        conn.deadline = time.monotonic() + self.connect_timeout
        self._connecting[conn.cookie] = conn
        try:
            for cluster in self.program.clusters[1:]:
                upstream = socket.socket()
                upstream.setblocking(False)
                conn.upstreams.append(upstream)
                status = upstream.connect_ex(self.endpoints[cluster])
                if status == errno.EINPROGRESS:
                    self.readiness.register(upstream, ("connecting", conn), select.EPOLLOUT)
                    conn.connecting += 1
                elif status != 0:
                    raise OSError(status, os.strerror(status))
        except OSError:
            self._upstream_unreachable(conn)
            return
        if not conn.connecting:
            self._start_fast_path(conn)

    def _on_upstream_connect(self, conn: _Connection, upstream: socket.socket) -> None:
        if upstream.fileno() < 0:  # an earlier event of the same wake-up gave the connection up
            return
        self.readiness.unregister(upstream)
        if upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._upstream_unreachable(conn)
            return
        conn.connecting -= 1
        if not conn.connecting:
            self._start_fast_path(conn)

    def _start_fast_path(self, conn: _Connection) -> None:
        """All upstreams are up: the sockets go into the maps (upstreams first, so every response
        byte meets the program) and the connection onto the fast path."""
        del self._connecting[conn.cookie]
        try:
            for slot, upstream in enumerate(conn.upstreams, start=1):
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                back = self._peers.Leaf()  # struct peer: the client's key, and this upstream's slot
                back.client.cookie, back.client.slot, back.slot = conn.cookie, 0, slot
                self._peers[ct.c_uint64(_cookie(upstream))] = back
                self._insert(upstream, conn.cookie, slot)
                # Upstream bytes always go back to the client in the kernel: only a hang-up is news.
                self.readiness.register(upstream, ("upstream", conn), _Readiness.HANGUPS)
        except OSError:  # an upstream reset as it came up
            self._upstream_unreachable(conn)
            return
        self._conns[ct.c_uint64(conn.cookie)] = connection_state(self._conns, conn.peer[0], conn.local[0])
        try:
            self._insert(conn.client, conn.cookie, 0)
        except OSError:  # the client already left
            self._close(conn)
            return
        self.readiness.register(conn.client, ("client", conn), _Readiness.HANGUPS)
        # Bytes queued before the insert: the program judges them when the socket is first read.
        self._on_client(conn)

    def _upstream_unreachable(self, conn: _Connection) -> None:
        """An upstream refused or timed out: the connection is Envoy's, which answers as it would
        (its own connect fails: 503 for what it forwards; its local replies stand)."""
        self._connecting.pop(conn.cookie, None)
        self._drop_upstreams(conn)
        self._count(self.connection_punts, UPSTREAM_UNREACHABLE)
        conn.punted = True
        self.readiness.register(conn.client, ("client", conn), _Readiness.BYTES)
        self._on_client(conn)

    def _drop_upstreams(self, conn: _Connection) -> None:
        for upstream in conn.upstreams:
            self.readiness.unregister(upstream)
            try:
                cookie = _cookie(upstream)
            except OSError:
                cookie = None
            # Closed first (out of the SOCKHASH): a response step the program is taking on it
            # still finds its peer, and redirects what it counted.
            upstream.close()
            if cookie is not None:
                with contextlib.suppress(KeyError, OSError):
                    del self._peers[ct.c_uint64(cookie)]
        conn.upstreams = []

    def _check_connect_deadlines(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._connecting.values() if c.deadline < now]:
            self._upstream_unreachable(conn)

    def _on_client(self, conn: _Connection) -> None:
        for data in _received(conn.client):
            if not data:
                self._finish(conn)
                return
            self._handle(conn, data)
        if conn.client.fileno() in self._by_fd:
            # Watch for bytes once Envoy has the connection, or while the program owes the agent
            # some (a reply whose request has not come yet, or the punt); turning the watch on
            # re-checks readiness, so bytes that land between the read above and here are seen.
            # Nothing owed: the next come with a record.
            self.readiness.watch_bytes(conn.client, conn.envoy is not None or conn.owed)

    # ---- what the program tells the agent (bpf/c/sk_skb.c, `for_agent`) ------------------------
    def _on_record(self, _ctx, data, _size) -> int:
        record = ct.cast(data, ct.POINTER(_AgentRecord)).contents
        self._records.append((record.cookie, record.mode, record.replies, record.reply,
                              _in_flight(record.in_flight), record.to_client))
        return 0

    def _apply_records(self) -> None:
        """Take the ring's records into the connections' state, and queue those connections to be
        read (`_read_told`)."""
        self.module.ring_buffer_consume()
        records, self._records = self._records, []
        for cookie, mode, replies, reply, in_flight, to_client in records:
            conn = self._by_cookie.get(cookie)
            if conn is not None:
                conn.learn(mode == MODE_PUNTED, replies, reply, in_flight, to_client)
                self._told[cookie] = conn

    def _read_told(self) -> None:
        """Read the connections the records named: usually their bytes are there already; if not,
        `_on_client` watches for them (the record comes first)."""
        while self._told:
            self._on_client(self._told.popitem()[1])

    def _state(self, conn: _Connection):
        """The connection's `struct conn` as the program has it now (a copy), or None."""
        key, state = ct.c_uint64(conn.cookie), self._conns.Leaf()
        if self._lib.bpf_lookup_elem(self._conns_fd, ct.byref(key), ct.byref(state)) == 0:
            return state
        return None

    def _refresh(self, conn: _Connection) -> None:
        """The connection's state from `conns` itself: for a record the ring dropped."""
        state = self._state(conn)
        if state is not None:
            conn.learn(state.mode == MODE_PUNTED, state.replies, state.reply, _in_flight_of(state), state.to_client)

    def _check_lost_records(self) -> None:
        """A full ring drops records (counted in `lost`): then refresh and read every connection,
        so nothing the program passed to the agent waits for a record that never comes."""
        now = time.monotonic()
        if now - self._lost_checked < 0.2:
            return
        self._lost_checked = now
        lost = int(self._lost[ct.c_int(0)].value)
        if lost != self._lost_seen:
            self._lost_seen = lost
            for conn in list(self._by_fd.values()):
                self._refresh(conn)
                self._told[conn.cookie] = conn

    # ---- requests the program passed to the agent ---------------------------------------------
    def _handle(self, conn: _Connection, data: bytes) -> None:
        if conn.envoy is not None:
            conn.envoy.sendall(data)
            return
        if not conn.owed:
            # The record that explains these bytes is in the ring (it precedes them), unless the
            # ring dropped it: then `conns` says.
            self._apply_records()
            if not conn.owed:
                self._refresh(conn)
        if conn.owed and not conn.punted:
            # For a reply the program passed exactly one request, without a body (others punt);
            # bytes read with it belong to the requests after it, passed under their own verdicts.
            head, blank, rest = data.partition(b"\r\n\r\n")
            request, rest = (head + blank, rest) if blank else (data, b"")
            answer = self._reply_bytes(self.program.verdicts[conn.reply], request)
            if answer is not None:
                reply, close = answer
                # Taken now, written now or later: the bytes that follow are another request's (a
                # held reply is not acknowledged yet, so the program punts the next one).
                conn.taken = conn.replies
                # Envoy writes `connection: close` and closes: nothing follows.
                self._answer(conn, reply, "close" if close else "acknowledge")
                if rest and conn.client.fileno() in self._by_fd:
                    self._handle(conn, rest)
                return
        if not conn.owed:  # bytes the program never judged (it did not pass them): Envoy judges them
            self._count(self.connection_punts, UNJUDGED)
        self._punt(conn, data)

    # ---- answer order (docs/bugs/0008) ----------------------------------------------------------
    def _answer(self, conn: _Connection, data: bytes, then: str | None = None) -> None:
        """Write an answer of the agent's (a reply; Envoy's bytes) once every forwarded response
        ahead of it has ended and left for the client; until then it waits, in order, in `held`.
        `then`: "acknowledge" (a reply) or "close"."""
        if conn.held or not self._responses_ahead_done(conn):
            if not conn.held:
                self.answers_held += 1
            conn.held.append((data, then))
            self._holding[conn.cookie] = conn
            return
        self._write(conn, data, then)

    def _responses_ahead_done(self, conn: _Connection) -> bool:
        if conn.in_flight == 0 and conn.to_client <= conn.flushed:  # what the record said suffices
            return True
        state = self._state(conn)
        if state is None:
            return True
        in_flight = _unanswered(conn, state)
        if in_flight < 0:
            self.answers_untracked += 1
            return True
        if in_flight:
            return False
        # Ended at the program; redirected bytes may still wait in the client's psock queue.
        if state.to_client > conn.flushed and _queued_to(conn.client) != state.to_client + conn.written:
            return False
        conn.in_flight, conn.flushed = 0, state.to_client
        return True

    def _keep_client_after_upstream_close(self, conn: _Connection, upstream: socket.socket, relayed: bool) -> bool:
        """An upstream closed its connection (an idle timeout; after `connection: close`). The
        client's connection stays open, as with Envoy (docs/bugs/0011), when every response
        forwarded has ended, or when only the last forward is unanswered, it went to this upstream
        and no byte of its response came: Envoy answers that one 503 (`wire.UPSTREAM_RESET_BODY`),
        and so does the agent (`_answer_for_the_upstream`). The upstream sockets go, and the next
        request the program would forward punts ("upstream closed": a response announced the
        close, or the program finds no open upstream socket), so Envoy, which opens upstream
        connections of its own, answers it and the rest; local replies stay in the kernel. The
        program decides that itself, so no request goes to the closed upstream however late this
        runs. Else (a response cut short, framing not followed, a HEAD unanswered, several forwards
        unanswered, one in flight to another cluster's upstream): False.
        `relayed`: the agent read response bytes from the upstream itself (the program missed them):
        then no 503, they may be that answer."""
        state = self._state(conn)
        if state is None:
            return False
        unanswered = _unanswered(conn, state)
        if unanswered == 0:
            self._drop_upstreams(conn)
            after = self._state(conn)  # a forward (to another cluster) meanwhile went to a closed socket
            return after is not None and after.sent == state.sent
        slot = conn.upstreams.index(upstream) + 1 if upstream in conn.upstreams else -1
        if unanswered != 1 or relayed or slot != state.fwd_slot:
            return False
        done = self._answer_for_the_upstream(conn, state, wire.UPSTREAM_RESET_STATUS, wire.UPSTREAM_RESET_BODY)
        self.upstream_resets += done == "answered"
        return done is not None

    def _check_route_timeouts(self) -> None:
        """Envoy's implicit route timeout (ROUTE_TIMEOUT_S; a route that sets its own timing is
        Envoy's: synth/offload.py) on what the kernel forwarded: when the oldest unanswered forward
        of a connection has waited that long, Envoy answers 504 if no byte of the response came,
        and so does the agent; otherwise Envoy resets the stream, and the agent closes the client's
        connection (docs/bugs/0012). Every connection is looked at once a second, or once per
        timeout if shorter (a forward made since is due no earlier), and the agent wakes again at
        the earliest deadline it saw."""
        now = time.monotonic_ns()
        if now < self.next_timeout_check:
            return
        timeout = int(self.route_timeout_s * 10**9)
        earliest = now + min(10**9, timeout)
        for conn in list(self._by_cookie.values()):
            if not conn.upstreams:
                continue
            state = self._state(conn)
            if state is None or _unanswered(conn, state) <= 0:
                continue
            stamp = state.fwd_ns[_oldest_unanswered(conn, state)]  # written before `sent` counts it
            if not stamp:
                continue
            if stamp + timeout > now:
                earliest = min(earliest, stamp + timeout)
                continue
            done = self._answer_for_the_upstream(conn, state, wire.ROUTE_TIMEOUT_STATUS, wire.ROUTE_TIMEOUT_BODY)
            if done is None:
                self._close(conn)
            self.route_timeouts += done != "ended"
        self.next_timeout_check = earliest

    def _answer_for_the_upstream(self, conn: _Connection, state, status: int, body: str) -> str | None:
        """Envoy's local reply (`status`, `body`) to the connection's oldest unanswered forward, which
        its upstream will not answer (it closed; the route's timeout passed), when that is the only
        one unanswered, no byte of its response came and it is not a HEAD. The upstream sockets go
        first, so that no response byte can follow and nothing more is forwarded to them; the reply
        goes before every answer held (they all answer later requests), and the next forwards punt
        (no open upstream socket). "answered"; "ended": the response came whole just before the
        sockets went; None: Envoy resets the stream there instead, or a request was forwarded
        meanwhile (the caller closes the client's connection)."""
        head = (state.heads >> _oldest_unanswered(conn, state)) & 1
        if _unanswered(conn, state) != 1 or state.rstate != _R_HEAD or head:
            return None
        self._drop_upstreams(conn)
        after = self._state(conn)
        if after is None or _progress(after) != _progress(state):
            # The program took a response segment meanwhile (or forwarded a request).
            ended = after is not None and after.sent == state.sent and _unanswered(conn, after) == 0
            return "ended" if ended else None
        conn.answered_by_agent += 1
        reply = wire.local_reply(status, body, head=False, date=wire.http_date(int(time.time())),
                                 server=self.policy.server_header)
        if conn.held:
            conn.held.insert(0, (reply, None))
        else:
            self._answer(conn, reply)
        return "answered"

    def _finish(self, conn: _Connection) -> None:
        """A hang-up (the client's, an upstream's). Held answers whose responses ahead have ended
        (an upstream closes after its last response) are still written, once those responses'
        bytes are queued, and the close waits behind them; otherwise close now."""
        if conn.held and conn.client.fileno() in self._by_fd:
            state = self._state(conn)
            if state is not None and _unanswered(conn, state) <= 0:
                conn.held.append((b"", "close"))
                self._release_held(only=conn)
                return
        self._close(conn)

    def _release_held(self, only: _Connection | None = None) -> None:
        for cookie, conn in list(self._holding.items()) if only is None else [(only.cookie, only)]:
            if conn.client.fileno() not in self._by_fd:
                self._holding.pop(cookie, None)
                continue
            try:
                if not self._responses_ahead_done(conn):
                    continue
            except OSError:  # the client left
                self._close(conn)
                continue
            self._holding.pop(cookie, None)
            held, conn.held = conn.held, []
            for data, then in held:
                if not self._write(conn, data, then):
                    break

    def _write(self, conn: _Connection, data: bytes, then: str | None) -> bool:
        """Write to the client, then acknowledge or close; False if the connection is gone."""
        try:
            if then == "acknowledge":
                # The reply enters the socket before the acknowledgement (answers stay in order: a
                # response the kernel forwards later queues behind it), and leaves only after it:
                # held by MSG_MORE, pushed by re-setting TCP_NODELAY, so the client cannot send its
                # next request before the kernel knows the reply was written (that request would
                # punt as "reply pending").
                conn.client.sendall(data, socket.MSG_MORE)
                conn.written += len(data)
                self._acknowledge(conn)
                conn.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return True
            if data:
                conn.client.sendall(data)
                conn.written += len(data)
        except OSError:
            self._close(conn)
            return False
        if then == "close":
            self._close(conn)
            return False
        return True

    def _acknowledge(self, conn: _Connection) -> None:
        """Tell the program the reply is written (`acks`: the agent is its only writer). While a
        reply is held, no other can follow it (the next request punts as "reply pending"), so the
        count to acknowledge is the one it was taken at."""
        key, word = ct.c_uint64(conn.cookie), ct.c_uint32(conn.taken)
        if self._lib.bpf_update_elem(self._acks_fd, ct.byref(key), ct.byref(word), 0) < 0:
            raise OSError(ct.get_errno(), "reply acknowledgement")

    def _reply_bytes(self, verdict, request: bytes) -> tuple[bytes, bool] | None:
        """Envoy's reply for a reply verdict and whether Envoy then closes the connection, or None
        when the agent hands the request to Envoy. The kernel passed exactly one request, without
        a body or a Connection header (those punt), so only the status decides the closing."""
        leaf = verdict.leaf
        if request.startswith(b"HEAD "):
            # The DAG's leaf for a HEAD request has the body Envoy leaves out already removed, and
            # Envoy's framing headers depend on that body (tests/bpf/test_dataplane.py).
            self._agent_punt("HEAD: Envoy's reply keeps the framing of the body it leaves out")
            return None
        if leaf.location is None and (leaf.status == 201 or 300 <= leaf.status <= 399):
            self._agent_punt("direct response 201/3xx: Envoy adds the request URL as Location")
            return None
        second = int(time.time())  # Envoy's date header has whole seconds: one build per second
        cached = self._replies.get(verdict.code)
        if cached is None or cached[0] != second:
            close = wire.closes_connection(leaf.status, connection_close=False, request_body=False)
            location = "".join(part[1] for part in leaf.location) if leaf.location else None
            cached = self._replies[verdict.code] = (second, wire.local_reply(
                leaf.status, leaf.body, head=False, date=wire.http_date(second), location=location, close=close,
                server=self.policy.server_header), close)
        return cached[1], cached[2]

    def _agent_punt(self, reason: str) -> None:
        self._count(self.agent_punts, reason)

    @staticmethod
    def _count(punts: dict[str, int], reason: str) -> None:
        punts[reason] = punts.get(reason, 0) + 1

    def _punt(self, conn: _Connection, data: bytes) -> None:
        try:
            conn.envoy = self.slow.connect(conn.peer, conn.local)
        except OSError:
            self._close(conn)
            return
        self.readiness.register(conn.envoy, ("envoy", conn))
        conn.envoy.sendall(data)

    def _on_peer(self, conn: _Connection, sock: socket.socket) -> None:
        relayed = False
        for data in _received(sock):
            if not data:
                if sock is conn.envoy:  # Envoy's last answers may be held: the close waits behind them
                    self.readiness.unregister(sock)  # (level-triggered: it would report the EOF forever)
                    self._answer(conn, b"", "close")
                elif not self._keep_client_after_upstream_close(conn, sock, relayed):
                    self._finish(conn)
                return
            if sock is conn.envoy:
                self._answer(conn, data)
            elif not self._write(conn, data, None):
                return
            relayed = True

    def _close(self, conn: _Connection) -> None:
        if self._by_fd.pop(conn.client.fileno(), None) is None:
            return
        self._holding.pop(conn.cookie, None)
        self._by_cookie.pop(conn.cookie, None)
        self._connecting.pop(conn.cookie, None)
        self._drop_upstreams(conn)
        for table in (self._conns, self._acks):
            try:
                del table[ct.c_uint64(conn.cookie)]
            except KeyError:
                pass
        for sock in conn.sockets():
            self.readiness.unregister(sock)
            sock.close()

    # ---- loop ---------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            # Held answers are checked every millisecond: their release is not an event to wait on.
            until_timeouts = max(0.0, (self.next_timeout_check - time.monotonic_ns()) / 1e9)
            ready = self.readiness.ready(timeout=0.001 if self._holding else min(0.2, until_timeouts))
            self.agent_wakeups += bool(ready)
            for sock, (kind, conn) in ready:
                if kind == "accept":
                    self._accept()
                elif kind == "signals":
                    self._apply_records()
                elif kind == "client":
                    self._on_client(conn)
                elif kind == "connecting":
                    self._on_upstream_connect(conn, sock)
                else:
                    self._on_peer(conn, sock)
            self._check_lost_records()
            self._check_connect_deadlines()
            self._check_route_timeouts()
            self._read_told()
            if self._holding:
                self._release_held()

    def stop(self) -> None:
        self._stopping.set()

    @contextlib.contextmanager
    def serving(self):
        """Serve on a background thread for the length of a `with` block, then shut down (tests, demo)."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop()
            thread.join(5)
            self.close()

    def close(self) -> None:
        """Detach the program, close every socket, stop Envoy and the admin server."""
        for conn in list(self._by_fd.values()):
            self._close(conn)
        if self.admin:
            self.admin.close()
        if self.listener:
            self.listener.close()
        if self.readiness:
            self.readiness.close()
        if self._entry:
            self._lib.bpf_prog_detach2(self._entry.fd, self._sockets_fd, BPF_SK_SKB_VERDICT)
            self._entry = None
        if self.slow:
            self.slow.close()
        self.module.cleanup()

    # ---- counters -----------------------------------------------------------------------------
    def counters(self) -> dict:
        forwarded = replies = 0
        punts: dict[str, int] = {**self.agent_punts, **self.connection_punts}
        for v in self.program.verdicts:
            n = int(self._counts.sum(ct.c_int(v.code)).value)
            if not n:
                continue
            if v.kind == "forward":
                forwarded += n
            elif v.kind == "reply":
                replies += n
            else:
                reason = PARSER_VERDICTS[v.code][1] if v.code < len(PARSER_VERDICTS) else v.reason
                punts[reason] = punts.get(reason, 0) + n
        agent = sum(self.agent_punts.values())
        return {"fast_path": forwarded + replies - agent, "forwarded_in_kernel": forwarded,
                "local_replies_in_kernel": replies - agent, "punted": sum(punts.values()), "punts": punts,
                "connections": self.connections, "agent_wakeups": self.agent_wakeups,
                "answers_held": self.answers_held, "answers_untracked": self.answers_untracked,
                "upstream_resets": self.upstream_resets, "route_timeouts": self.route_timeouts,
                "programs": [{"name": s.name, "verified_insns": s.verified_insns} for s in self.stats]}


class _AdminServer:
    def __init__(self, address: tuple[str, int], plane: DataPlane):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if not self.path.startswith("/stats"):
                    self.send_error(404, "try /stats?format=json")
                    return
                stats = plane.counters()
                as_json = "format=json" in self.path
                body = (json.dumps(stats, indent=2) if as_json else
                        "".join(f"{k}: {v}\n" for k, v in stats.items() if not isinstance(v, (dict, list)))).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json" if as_json else "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        try:
            self.server = ThreadingHTTPServer(address, Handler)
        except OSError as exc:
            raise DataPlaneError(f"cannot serve the admin endpoint on {address[0]}:{address[1]}: {exc.strerror}") from exc
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def endpoints_of(policy: ir.Policy, overrides: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    out = {c.name: c.endpoints[0] for c in policy.clusters if c.endpoints}
    out.update(overrides)
    return out


def run_until_signal(plane: DataPlane) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: plane.stop())
    try:
        plane.serve_forever()
    finally:
        plane.close()
