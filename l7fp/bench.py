"""`l7fp bench`: same-run data-plane comparison of direct, Envoy and L7FP on loopback, measured with wrk.

MEASURES, in one run, requests/s and p50/p99 latency (wrk -t1 -c<N> --latency, keep-alive), for two
topologies:
    single  wrk -> proxy -> backend             (one proxy hop: an ingress or a sidecar)
    mesh    wrk -> proxy -> proxy -> backend    (two hops: client sidecar, then server sidecar)
with each proxy being Envoy 1.40 (RBAC ALLOW + router, --concurrency 1 unless `envoy_concurrency`
says otherwise: one worker, as a sidecar is usually given) or `l7fp run` on the same
config, and `direct` (wrk -> backend) as the floor. Then the ratios of DESIGN's `l7fp bench`
contract per topology: rps_l7fp_over_envoy, p50_latency_envoy_over_l7fp, p50_latency_l7fp_over_direct.
The policy allows GET on path prefix /api; the default request path /api/bench is allowed, so every
request is forwarded. For l7fp the admin /stats?format=json of every hop (fast_path, punted,
local_replies_in_kernel, agent_wakeups) is read after the load, to show the requests were decided in
kernel without waking the agent.

BACKEND: answers 200 with a 3-byte body and Content-Length. Default: a raw asyncio protocol in a
child process (bodiless requests only, which is all that is sent here). `backend="envoy"` uses an
Envoy direct_response instead, which is slower here and can become the bottleneck. If l7fp comes
close to `direct`, the backend, not L7FP, is the limit.

CAVEATS: 2 noisy cores shared by wrk, proxies and backend: absolute figures move by tens of percent
between runs, so compare only ratios from the same run. Each measurement gets an uncounted 1 s
warm-up. Needs root (l7fp run), wrk and the envoy binary. Used by the CLI (`l7fp bench`); the
verify-time benchmark is bench/verify_scaling.py.
"""
from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .proofs.envoy_oracle import free_port

BIN = Path(sys.executable).parent
MODES = ("direct", "envoy", "l7fp")
TOPOLOGIES = {"single": "single proxy hop, loopback", "mesh": "two-hop mesh (client -> proxy -> proxy -> backend), loopback"}
HOPS = {"single": 1, "mesh": 2}
STAT_KEYS = ("fast_path", "punted", "local_replies_in_kernel", "agent_wakeups")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
# Envoy v3 bootstrap, in the style of examples/bookstore/envoy.yaml. $filters: extra HTTP filters.
BOOTSTRAP = Template("""\
static_resources:
  listeners:
  - name: $name
    address: {socket_address: {address: 127.0.0.1, port_value: $port}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $name
          http_filters:$filters
          - {name: envoy.filters.http.router, typed_config: {"@type": $ROUTER}}
          route_config:
            name: $name
            virtual_hosts: [{name: $name, domains: ["*"], routes: [{match: {prefix: /}, $action}]}]
$clusters""")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
# The bench policy: RBAC ALLOW GET on path prefix /api (anything else gets 403).
RBAC = """
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  api-reads:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {name: ":method", string_match: {exact: GET}}
                        - url_path: {path: {prefix: /api}}
                    principals: [{any: true}]"""
CLUSTER = Template("""\
  clusters:
  - name: backend
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $port}}}}]
""")


class BenchError(Exception):
    pass


def policy_config(port, backend_port):
    """Listener on 127.0.0.1:port -> RBAC ALLOW -> router -> STATIC cluster `backend`."""
    return BOOTSTRAP.substitute(name="ingress", port=port, filters=RBAC, action="route: {cluster: backend}",
                                ROUTER=ROUTER, clusters=CLUSTER.substitute(port=backend_port))


def backend_config(port):
    return BOOTSTRAP.substitute(name="backend", port=port, filters="", clusters="", ROUTER=ROUTER,
                                action='direct_response: {status: 200, body: {inline_string: "ok\\n"}}')


def serve_backend(port):
    """The default backend: one canned 200 per request head (bodiless requests only)."""
    import asyncio

    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buf = transport, b""

        def data_received(self, data):
            self.buf += data
            if n := self.buf.count(b"\r\n\r\n"):
                self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
                self.transport.write(RESPONSE * n)

    async def serve():
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()
    asyncio.run(serve())


# ---- processes -------------------------------------------------------------------------------------
def tool(name):
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        raise BenchError(f"`{name}` not found (looked in {BIN} and on PATH)")
    return str(found)


def spawn(cmd, errfile, procs, sig=signal.SIGTERM, stdout=subprocess.DEVNULL):
    """Start cmd with stderr to errfile; register it in procs, to be stopped later with sig."""
    with open(errfile, "w") as err:
        procs.append((subprocess.Popen(cmd, stdout=stdout, stderr=err, text=True), sig))
    return procs[-1][0]


def stop_all(procs, timeout=10.0):
    for proc, sig in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_port(proc, port, what, errfile, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before listening on port {port}; "
                             f"its stderr:\n{Path(errfile).read_text()[-2000:]}")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def start_envoy(work, name, config, port, procs, concurrency=1):
    (path := work / f"{name}.yaml").write_text(config)
    cmd = [tool("envoy"), "-c", str(path), "--concurrency", str(concurrency), "-l", "error", "--disable-hot-restart"]
    wait_port(spawn(cmd, work / f"{name}.log", procs), port, f"Envoy ({name}, {path})", work / f"{name}.log")


def start_backend(kind, work, port, procs):
    if kind == "envoy":
        return start_envoy(work, "backend", backend_config(port), port, procs)
    proc = spawn([sys.executable, "-m", "l7fp.bench", str(port)], work / "backend.log", procs)
    wait_port(proc, port, "python backend", work / "backend.log")


def start_l7fp(work, name, config, port, admin, procs, timeout=60.0):
    """`l7fp run` in the foreground; ready once it prints a line starting `l7fp run: ready`."""
    (path := work / f"{name}.yaml").write_text(config)
    cmd = [tool("l7fp"), "run", str(path), "--listen", f"127.0.0.1:{port}", "--admin", admin]
    proc, err = spawn(cmd, work / f"{name}.log", procs, signal.SIGINT, subprocess.PIPE), work / f"{name}.log"
    lines = queue.Queue()  # a reader thread keeps draining stdout so l7fp never blocks writing it
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put(None)], daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            proc.wait(5)
            raise BenchError(f"`{' '.join(cmd)}` exited with code {proc.returncode} before printing "
                             f"'l7fp run: ready'; its stderr:\n{err.read_text()[-2000:]}")
        if line.startswith("l7fp run: ready"):
            return wait_port(proc, port, "l7fp run", err)
    raise BenchError(f"`{' '.join(cmd)}` printed no 'l7fp run: ready' line within {timeout:.0f} s")


# ---- load ------------------------------------------------------------------------------------------
def parse_wrk(out):
    def field(pattern, convert=float, default=None):
        m = re.search(pattern, out, re.M)
        return convert(m.group(1)) if m else default
    figures = {"rps": field(r"^Requests/sec:\s+([\d.]+)"), "requests": field(r"^\s*(\d+) requests in", int),
               "non_2xx": field(r"Non-2xx or 3xx responses:\s+(\d+)", int, 0),
               "socket_errors": field(r"Socket errors: (.*)$", str.strip)}
    for pct in (50, 99):  # the --latency "Latency Distribution" block, in microseconds
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        figures[f"p{pct}_us"] = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else None
    if None in (figures["rps"], figures["requests"], figures["p50_us"], figures["p99_us"]):
        raise BenchError(f"cannot parse wrk's output:\n{out}")
    return figures


def run_wrk(url, duration, connections, warmup=1):
    base = [tool("wrk"), "-t1", f"-c{connections}", "--latency"]
    subprocess.run(base + [f"-d{warmup}s", url], capture_output=True, timeout=warmup + 30)
    done = subprocess.run(base + [f"-d{duration}s", url], capture_output=True, text=True,
                          timeout=duration + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed on {url} (exit {done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


@dataclass
class BenchOptions:
    duration: int = 10
    connections: int = 8
    path: str = "/api/bench"
    backend: str = "python"
    topologies: tuple[str, ...] = ("single", "mesh")
    modes: tuple[str, ...] = MODES
    envoy_concurrency: int = 1  # worker threads of each Envoy proxy (the backend Envoy keeps one)


def _stats(admin: str) -> dict:
    with urllib.request.urlopen(f"http://{admin}/stats?format=json", timeout=5) as resp:
        return json.load(resp)


def measure(mode: str, hops: int, options: BenchOptions, work: Path, backend_port: int) -> dict:
    """Start `hops` proxies of `mode` in a chain (none for direct), load the first with wrk, stop
    them; return the figures (for l7fp, each hop's admin counters summed)."""
    procs, port, admins = [], backend_port, []
    try:
        if mode != "direct":
            for hop in range(hops, 0, -1):  # the hop nearest the backend first
                upstream, port = port, free_port()
                config = policy_config(port, upstream)
                if mode == "envoy":
                    start_envoy(work, f"envoy-hop{hop}", config, port, procs, options.envoy_concurrency)
                else:
                    admins.append(admin := f"127.0.0.1:{free_port()}")
                    start_l7fp(work, f"l7fp-hop{hop}", config, port, admin, procs)
        figures = run_wrk(f"http://127.0.0.1:{port}{options.path}", options.duration, options.connections)
        if admins:  # keep the load figures even if an admin endpoint fails
            try:
                per_hop = [_stats(admin) for admin in admins]
                figures["stats"] = {k: sum(s.get(k, 0) for s in per_hop) for k in STAT_KEYS}
            except (OSError, ValueError) as e:
                figures["stats_error"] = f"GET /stats?format=json failed: {e}"
        return figures
    finally:
        stop_all(procs)


def ratios(results: dict, topology: str) -> dict:
    def ratio(a, b):
        a, b = results.get(a[0], {}).get(a[1]), results.get(b[0], {}).get(b[1])
        return round(a / b, 3) if a is not None and b else None
    return {"rps_l7fp_over_envoy": ratio(("l7fp", "rps"), ("envoy", "rps")),
            "p50_latency_envoy_over_l7fp": ratio(("envoy", "p50_us"), ("l7fp", "p50_us")),
            "p50_latency_l7fp_over_direct": ratio(("l7fp", "p50_us"), ("direct", "p50_us")),
            "topology": TOPOLOGIES[topology]}


def run_bench(options: BenchOptions, progress=lambda text: None) -> dict:
    """Every requested topology and mode in one run; the JSON `l7fp bench --format json` prints.
    Raises BenchError if wrk, envoy or the backend is missing; a mode that fails is reported in
    `errors` and the others still run."""
    tool("wrk"), tool("envoy")
    results: dict[str, dict] = {t: {} for t in options.topologies}
    errors: dict[str, str] = {}
    backend: list = []
    with tempfile.TemporaryDirectory(prefix="l7fp-bench-") as tmp:
        try:
            start_backend(options.backend, Path(tmp), backend_port := free_port(), backend)
            direct = None
            for topology in options.topologies:
                for mode in options.modes:
                    if mode == "direct" and direct is not None:  # no proxy: the same floor for both
                        results[topology]["direct"] = direct
                        continue
                    progress(f"measuring {mode}, {TOPOLOGIES[topology]} ({options.duration} s)")
                    try:
                        results[topology][mode] = measure(mode, HOPS[topology], options, Path(tmp), backend_port)
                        direct = results[topology][mode] if mode == "direct" else direct
                    except (BenchError, OSError, subprocess.SubprocessError) as e:
                        errors[f"{topology}/{mode}"] = str(e)
        finally:
            stop_all(backend)
    out = {"duration_s": options.duration, "connections": options.connections, "path": options.path,
           "backend": options.backend,
           "envoy_concurrency": options.envoy_concurrency, "results": results, "errors": errors}
    for topology in options.topologies:
        out[ratios_key(options.topologies, topology)] = ratios(results[topology], topology)
    return out


def ratios_key(topologies: tuple[str, ...], topology: str) -> str:
    """Where a topology's ratios are in the report: the contract's `ratios` for the first one
    measured, `ratios_<topology>` for the others."""
    return "ratios" if topology == topologies[0] else f"ratios_{topology}"


if __name__ == "__main__":  # the python backend's child process: python -m l7fp.bench PORT
    serve_backend(int(sys.argv[1]))
