#!/usr/bin/env python3
"""verify_scaling: how long the proof gate takes as a policy grows.

Generates synthetic policies of N rules (DSL text, written to a temporary directory and loaded
through the ordinary frontend), runs `l7fp.proofs.refinement.verify` on each, and prints one row
per size: DAG shape, the time spent compiling, encoding and solving (per obligation), total wall
time and the verdict. Then checks the measured times against the design targets
("20 rules < 1 s", "1000 rules < 60 s"). A benchmark driver, not a test: it asserts nothing and
exits 0 whatever it measures (130 if interrupted, non-zero on a crash or a bad option).

USAGE: .venv/bin/python bench/verify_scaling.py [-h] [--sizes 10,20,100,1000] [--timeout SECS]
           [--rlimit N] [--max-seconds SECS] [--hcm-options normalize_path,merge_slashes]
           [--clusters K] [--format table|json] [--out FILE.json] [--plot FILE.png] [--keep DIR]
           [--no-parts] [--quiet]

EXAMPLES:
    .venv/bin/python bench/verify_scaling.py                       # 10, 20, 100, 1000 rules
    .venv/bin/python bench/verify_scaling.py --sizes 10,20,100     # skip the slow one
    .venv/bin/python bench/verify_scaling.py --sizes 20 --format json --out /tmp/v.json
    .venv/bin/python bench/verify_scaling.py --sizes 10,20,100 --plot /tmp/scaling.png
    .venv/bin/python bench/verify_scaling.py --sizes 1000 --max-seconds 600   # give up after 10 min
    .venv/bin/python bench/verify_scaling.py --sizes 50 --keep /tmp/gen   # keep the .l7fp files

THE POLICY of N rules: ceil(N/2) RBAC rules and floor(N/2) routes over distinct prefixes /svc{i}/:
    allow "svc{i}-read"  when method in [GET, HEAD] and path prefix "/svc{i}/" and header x-tenant == "t{i}"
    allow "svc{i}-write" when method == POST and path prefix "/svc{i}/" and header x-api-key == "k{i}"
    deny  "svc{i}-admin" when method == DELETE and path prefix "/svc{i}/admin" and header x-role == "guest"
(every fourth RBAC rule is a deny, the others alternate read/write), and
    route prefix "/svc{i}/" -> c{i % 8}
over 8 clusters (--clusters K), with the connection-manager options of the bookstore example
(normalize_path, merge_slashes; change with --hcm-options, "" for none). Header names come from a small fixed set,
as in real meshes: the symbolic request grows with the number of distinct header names, not values.

OUTPUT columns: rules; DAG nodes/tests/leaves/depth (report.dag.stats()); load (DSL parse to IR),
compile (IR -> DAG), encode (symbolic reference + DAG meaning), solver seconds per obligation
(bounds, refinement, never_more_permissive), verify (wall time of verify(), which also includes
replaying any counterexample), total (load + verify: what `l7fp verify` makes a user wait for, less
interpreter start-up) and the verdict. Unless --no-parts, the script also times each solver query
("part", e.g. refinement/cluster) and names the slowest part per size.

CAVEATS:
  - --timeout is Z3's wall-clock timeout for each solver query (one obligation *part*), not for the
    whole size: a size runs 12 queries (more if an over-approximating query must be re-asked
    exactly), so a bad case takes 12x the timeout or more. An unknown answer (timeout, resource
    limit) makes the verdict "unknown"; its time still counts.
  - --rlimit defaults to 0 (Z3: no resource limit) so that --timeout governs. The proof code's own
    default Budget has a deterministic rlimit (about a minute of solving); pass it with
    --rlimit 200000000 to measure what `l7fp verify` does with its defaults.
  - Per-part timing (default on) wraps the prover's `check` method in this process only (the proof
    code is not changed); it adds no solver work. --no-parts turns it off if the internals move.
  - One run per size, in one process, smallest first: Z3 and Python caches warm up, so the first
    size pays some start-up cost. Run sizes separately for a cold measurement. Times are from
    time.perf_counter on this machine; compare runs on the same machine only.
  - Z3 does not always stop at its timeout: on the 1000-rule policy one query set to 120 s ran for
    almost 600 s before answering unknown. --max-seconds (per size) is therefore a hard limit: each
    size runs in a forked child process, which clamps each query's timeout to the time left and
    stops between queries once it has passed, and which is killed 5 s after the limit otherwise.
    The row's verdict is then "incomplete", with the parts answered so far (the DAG shape is
    recompiled for the table); its times are lower bounds. Ctrl-C stops the run in the same way
    (Z3 takes the signal and cancels the running query; the script tells that from a timeout by
    its timing).
    --out is rewritten after every size, so a killed run keeps the sizes it finished.
  - The results record the git commit and the modified stage files (semantics, synth, proofs,
    l7fp): the proof code changes often, and so do its times. Compare runs of the same code.
  - A target passes only if the verdict is "proven" and the total time is under the target;
    a size that was not run is reported as "not measured".
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

try:  # run as a script from anywhere: the package is installed (editable) in .venv
    import l7fp  # noqa: F401
except ImportError:  # pragma: no cover - fall back to the repository checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import z3
from rich.console import Console
from rich.table import Table

from l7fp.proofs import refinement
from l7fp.proofs.refinement import OBLIGATIONS, Budget, verify
from l7fp.semantics.frontends import load_policy

DEFAULT_SIZES = (10, 20, 100, 1000)
TARGETS = ((20, 1.0), (1000, 60.0))  # (rules, seconds): DESIGN targets for the proof gate
CLUSTERS = 8  # default number of upstream clusters the routes cycle over


# ---- policy generation -------------------------------------------------------------------------
def policy_text(n: int, hcm_options: list[str], clusters: int = CLUSTERS) -> str:
    """DSL text of a policy with exactly n rules (ceil(n/2) RBAC rules, floor(n/2) routes)."""
    n_rbac, n_routes = (n + 1) // 2, n // 2
    lines = [f"# verify_scaling: synthetic policy, {n} rules ({n_rbac} RBAC, {n_routes} routes)",
             "listener 127.0.0.1:18080"]
    if hcm_options:
        lines.append("options " + " ".join(hcm_options))
    lines += [f"cluster c{j} 127.0.0.1:{19000 + j}" for j in range(clusters)]
    for i in range(n_rbac):
        if i % 4 == 3:
            lines.append(f'deny "svc{i}-admin" when method == DELETE and path prefix "/svc{i}/admin" '
                         f'and header x-role == "guest"')
        elif i % 2 == 0:
            lines.append(f'allow "svc{i}-read" when method in [GET, HEAD] and path prefix "/svc{i}/" '
                         f'and header x-tenant == "t{i}"')
        else:
            lines.append(f'allow "svc{i}-write" when method == POST and path prefix "/svc{i}/" '
                         f'and header x-api-key == "k{i}"')
    lines += [f'route prefix "/svc{i}/" -> c{i % clusters}' for i in range(n_routes)]
    return "\n".join(lines) + "\n"


# ---- per-part timing (instrumentation of this process only) ------------------------------------
class SizeBudgetExceeded(Exception):
    """--max-seconds ran out for one size: verify() is abandoned after the current solver query."""


@contextmanager
def timed_parts(record, enabled: bool, quiet: bool, console: Console, deadline: float | None, origin: float):
    """Pass every solver query verify() makes to `record`: obligation, part, answers, seconds. With a
    deadline (perf_counter time), clamp each query's timeout to the time left and stop verify() once
    it has passed (a soft limit: Z3 does not always stop on time, see --max-seconds)."""
    prover_cls = getattr(refinement, "_Prover", None)
    if not enabled or prover_cls is None or not hasattr(prover_cls, "check"):
        yield False
        return
    original = prover_cls.check

    def check(self, obligation, part, goal, on_model, exact=None):
        if deadline is not None:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise SizeBudgetExceeded(f"{obligation}/{part}")
            if left < self.budget.timeout_s:
                self.budget = replace(self.budget, timeout_s=max(left, 1.0))
        solver = self.solver
        real_check = solver.check
        answers, interrupted = [], []

        def spy(*args, **kwargs):
            began = time.perf_counter()
            answer = real_check(*args, **kwargs)
            answers.append(str(answer))
            # Z3 takes SIGINT during a query and reports it as a cancelled (unknown) answer, like a
            # timeout; one well before the timeout is a Ctrl-C: pass it on once the part is recorded.
            if answer == z3.unknown and solver.reason_unknown() == "canceled" and \
                    time.perf_counter() - began < 0.9 * self.budget.timeout_s:
                interrupted.append(True)
            return answer

        solver.check = spy  # z3.Solver is a plain Python object: shadow its method for this call
        settled = len(getattr(self, "answers", []))
        start = time.perf_counter()
        try:
            return original(self, obligation, part, goal, on_model, exact)
        finally:
            seconds = time.perf_counter() - start
            del solver.check
            # Parts the lazy abstraction proves never reach the Z3 solver: the prover lists them.
            by = [a for a in getattr(self, "answers", [])[settled:] if a["by"] != "z3"]
            answers = [a["answer"] for a in by] + answers
            if answers:  # skipped parts (obligation already refuted) ran no query
                record({"obligation": obligation, "part": part, "answers": answers,
                        "by": parts_by(by, answers),
                        "seconds": round(seconds, 3), "started": round(start - origin, 3)})
                if not quiet:
                    console.print(f"    [dim]{obligation}/{part}: {'/'.join(answers)} in {seconds:.2f} s"
                                  f" ({parts_by(by, answers)})[/]")
            if interrupted:
                raise KeyboardInterrupt(f"{obligation}/{part}")

    prover_cls.check = check
    try:
        yield True
    finally:
        prover_cls.check = original


def parts_by(lazy: list[dict], answers: list[str]) -> str:
    """Who answered a part: the lazy abstraction, Z3 on the whole query, or both in turn."""
    names = (["abstraction"] if lazy else []) + (["z3"] if len(answers) > len(lazy) else [])
    return " then ".join(names)


# ---- measurement -------------------------------------------------------------------------------
def _dag_stats(policy) -> dict:
    """The DAG's shape when verify() did not return one (it compiles in seconds at most)."""
    try:
        from l7fp.synth.compile import DagCompiler
        return DagCompiler(policy, None).compile().stats()
    except Exception:  # noqa: BLE001 - shape is a nicety here, not the measurement
        return {}


def _slowest(row: dict, parts: list[dict]) -> None:
    if parts:
        slowest = max(parts, key=lambda p: p["seconds"])
        row["slowest_part"] = f"{slowest['obligation']}/{slowest['part']}"


def _partial(row: dict, policy, parts: list[dict], verify_seconds: float, total_seconds: float, why: str,
             where: str) -> dict:
    """A row for a size whose verify() did not return: what the timed parts tell."""
    obligations: dict[str, dict] = {}
    for p in parts:
        o = obligations.setdefault(p["obligation"], {"status": refinement.PROVEN, "seconds": 0.0})
        o["seconds"] = round(o["seconds"] + p["seconds"], 3)
        if "unknown" in p["answers"] and o["status"] == refinement.PROVEN:
            o["status"], o["reason"] = refinement.UNKNOWN, f"{p['part']}: unknown"
        if "sat" in p["answers"]:
            o["status"], o["reason"] = "sat (not replayed)", p["part"]
    row.update({"dag": _dag_stats(policy), "compile_seconds": None, "encode_seconds": None,
                "compile_and_encode_seconds": parts[0]["started"] if parts else None,
                "solver_seconds": round(sum(p["seconds"] for p in parts), 3), "obligations": obligations,
                "verify_seconds": round(verify_seconds, 3), "total_seconds": round(total_seconds, 3),
                "verdict": "incomplete", "parts": parts, "counterexamples": [], why: where})
    _slowest(row, parts)
    return row


def measure(n: int, path: Path, budget: Budget, parts_on: bool, quiet: bool, console: Console,
            max_seconds: float = 0.0, send=None) -> dict:
    """Load and verify one generated policy. `send`: also pass each timed part to the parent."""
    start = time.perf_counter()
    policy = load_policy([str(path)])
    loaded = time.perf_counter()
    parts: list[dict] = []

    def record(part: dict) -> None:
        parts.append(part)
        if send is not None:
            send(("part", part))

    row = {"rules": n, "rbac_rules": (n + 1) // 2, "routes": n // 2, "file": str(path),
           "load_seconds": round(loaded - start, 3)}
    deadline = start + max_seconds if max_seconds > 0 else None
    try:
        with timed_parts(record, parts_on, quiet, console, deadline, loaded) as timing:
            report = verify(policy, budget, stem=f"scaling_{n}")
    except SizeBudgetExceeded as exc:
        done = time.perf_counter()
        return _partial(row, policy, parts, done - loaded, done - start, "stopped_before", str(exc))
    except KeyboardInterrupt as exc:
        done = time.perf_counter()
        return _partial(row, policy, parts, done - loaded, done - start, "interrupted",
                        str(exc) or "outside a solver query")
    done = time.perf_counter()
    obligations = {o.name: {"status": o.status, "seconds": round(o.seconds, 3),
                            **({"reason": o.reason} if o.reason else {})} for o in report.obligations}
    row.update({"dag": report.dag.stats(), "compile_seconds": round(report.compile_seconds, 3),
                "encode_seconds": round(report.encode_seconds, 3),
                "solver_seconds": round(report.solver_seconds, 3), "obligations": obligations,
                "verify_seconds": round(done - loaded, 3), "total_seconds": round(done - start, 3),
                "verdict": report.verdict,
                "counterexamples": [c.to_json() for c in report.counterexamples]})
    if timing:
        row["parts"] = parts
        _slowest(row, parts)
    return row


GRACE_S = 5.0  # after --max-seconds, how long the child may take to stop by itself before it is killed


def _child(conn, n, path, budget, quiet, max_seconds):
    try:
        row = measure(n, path, budget, True, quiet, Console(stderr=True, quiet=quiet, soft_wrap=True),
                      max_seconds, conn.send)
        conn.send(("row", row))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


def measure_capped(n: int, path: Path, budget: Budget, quiet: bool, max_seconds: float) -> dict:
    """measure() in a forked child, killed GRACE_S after max_seconds: Z3 can overrun its own
    timeout by minutes on big queries, so only a separate process gives a hard limit."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    child = ctx.Process(target=_child, args=(send, n, path, budget, quiet, max_seconds), daemon=True)
    child.start()
    send.close()
    parts: list[dict] = []
    row, why = None, "killed_during"

    def drain(until: float) -> None:
        nonlocal row
        while row is None:
            left = until - time.perf_counter()
            if left <= 0:
                return
            if not recv.poll(min(left, 1.0)):
                if not child.is_alive() and not recv.poll():
                    return
                continue
            try:
                kind, payload = recv.recv()
            except EOFError:
                return
            if kind == "part":
                parts.append(payload)
            else:
                row = payload

    try:
        drain(start + max_seconds + GRACE_S)
    except KeyboardInterrupt:  # the child got the Ctrl-C too: give it a moment to report
        why = "interrupted"
        drain(time.perf_counter() + 10.0)
    finally:
        if child.is_alive():
            child.kill()  # our own child, by its handle
        child.join()
        recv.close()
    if row is not None:
        return row
    done = time.perf_counter()
    running = (f"the query after {parts[-1]['obligation']}/{parts[-1]['part']}" if parts
               else "load, compile or encode")
    base = {"rules": n, "rbac_rules": (n + 1) // 2, "routes": n // 2, "file": str(path), "load_seconds": None}
    return _partial(base, load_policy([str(path)]), parts, done - start, done - start, why,
                    f"{running} (child stopped at {done - start:.0f} s)")


def targets(rows: list[dict]) -> list[dict]:
    by_size = {r["rules"]: r for r in rows}
    out = []
    for rules, limit in TARGETS:
        row = by_size.get(rules)
        if row is None:
            out.append({"target": f"{rules} rules < {limit:g} s", "measured_seconds": None,
                        "verdict": None, "result": "not measured"})
            continue
        ok = row["verdict"] == refinement.PROVEN and row["total_seconds"] < limit
        out.append({"target": f"{rules} rules < {limit:g} s", "measured_seconds": row["total_seconds"],
                    "verdict": row["verdict"], "result": "pass" if ok else "fail"})
    return out


# ---- output ------------------------------------------------------------------------------------
def print_table(console: Console, result: dict) -> None:
    code = result.get("code") or {}
    version = ""
    if code.get("commit"):
        modified = f" + {len(code['modified'])} modified files" if code.get("modified") else ""
        version = f", code {code['commit']}{modified}"
    table = Table(title=f"verify() vs policy size (timeout {result['budget']['timeout_s']:g} s per part, "
                        f"rlimit {result['budget']['rlimit'] or 'none'}{version})")
    short = {"bounds": "bounds s", "refinement": "refine s", "never_more_permissive": "nmp s"}
    for name in ("rules", "nodes", "tests", "leaves", "depth", "load s", "compile s", "encode s",
                 *[short.get(o, f"{o} s") for o in OBLIGATIONS], "verify s", "total s", "verdict"):
        table.add_column(name, justify="left" if name == "verdict" else "right", no_wrap=True)
    for r in result["runs"]:
        d = r["dag"]
        colour = {"proven": "green", "counterexample": "red"}.get(r["verdict"], "yellow")
        table.add_row(str(r["rules"]), *[str(d.get(k, "-")) for k in ("nodes", "tests", "leaves", "depth")],
                      *[_num(r[k], ".3f") for k in ("load_seconds", "compile_seconds", "encode_seconds")],
                      *[_obligation_cell(r["obligations"].get(o)) for o in OBLIGATIONS],
                      f"{r['verify_seconds']:.3f}", f"{r['total_seconds']:.3f}",
                      f"[{colour}]{r['verdict']}[/]")
    console.print(table)
    console.print("  solver seconds per obligation: bounds, refine = refinement, nmp = never_more_permissive; "
                  "total = load + verify")
    for r in result["runs"]:
        if r.get("parts"):
            top = sorted(r["parts"], key=lambda p: -p["seconds"])[:3]
            share = sum(p["seconds"] for p in top) / max(r["solver_seconds"], 1e-9)
            console.print(f"  {r['rules']:>5} rules, slowest parts: "
                          + ", ".join(f"{p['obligation']}/{p['part']} {p['seconds']:.2f} s" for p in top)
                          + f" ({share:.0%} of solver time)")
        if r.get("interrupted"):
            done = ", ".join(f"{p['obligation']}/{p['part']}" for p in r.get("parts", []))
            console.print(f"  {r['rules']:>5} rules: interrupted during {r['interrupted']}; "
                          f"parts answered: {done or 'none'}")
        if r.get("killed_during"):
            done = ", ".join(f"{p['obligation']}/{p['part']}" for p in r.get("parts", []))
            console.print(f"  {r['rules']:>5} rules: --max-seconds ran out during {r['killed_during']}; "
                          f"parts answered: {done or 'none'}")
        if r.get("stopped_before"):
            done = ", ".join(f"{p['obligation']}/{p['part']}" for p in r.get("parts", []))
            console.print(f"  {r['rules']:>5} rules: --max-seconds ran out before {r['stopped_before']}; "
                          f"parts answered: {done or 'none'}")
        for name, o in r["obligations"].items():
            if o.get("reason"):
                console.print(f"  {r['rules']:>5} rules, {name}: {o['status']} ({o['reason']})")
    for t in result["targets"]:
        colour = {"pass": "green", "fail": "red"}.get(t["result"], "yellow")
        measured = "-" if t["measured_seconds"] is None else f"{t['measured_seconds']:.3f} s ({t['verdict']})"
        console.print(f"target {t['target']:<20} measured {measured:<28} [{colour}]{t['result']}[/]")
    if result.get("incomplete"):
        console.print(f"[yellow]incomplete: {result['incomplete']}[/]")


def _num(value, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _obligation_cell(o: dict | None) -> str:
    if o is None:
        return "-"
    mark = "" if o["status"] == refinement.PROVEN else f" [red]{o['status'][0].upper()}[/]"
    return f"{o['seconds']:.3f}{mark}"


def plot(path: str, rows: list[dict], console: Console) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print(f"[yellow]--plot {path}: matplotlib is not installed in this environment "
                      f"({sys.executable}); no plot written. Install it (pip install matplotlib) "
                      f"or plot the --out JSON elsewhere.[/]")
        return
    complete = [r for r in rows if r["verdict"] in (refinement.PROVEN, refinement.COUNTEREXAMPLE)]
    partial = [r for r in rows if r not in complete]  # unknown or incomplete: the proof did not finish
    rules = [r["rules"] for r in complete]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.loglog(rules, [max(r["total_seconds"], 1e-3) for r in complete], "o-", label="total")
    left.loglog(rules, [max(r["solver_seconds"], 1e-3) for r in complete], "s--", label="solver")
    if partial:
        left.loglog([r["rules"] for r in partial], [r["total_seconds"] for r in partial], "^",
                    label="unknown/stopped (lower bound)")
    for n, limit in TARGETS:
        left.plot([n], [limit], "rx", markersize=10)
        left.annotate(f"target {n}: {limit:g} s", (n, limit), textcoords="offset points", xytext=(5, 5))
    left.set_xlabel("rules")
    left.set_ylabel("seconds")
    left.set_title("verify time")
    left.legend()
    shaped = [r for r in rows if r["dag"].get("nodes")]
    right.loglog([r["rules"] for r in shaped], [r["dag"]["nodes"] for r in shaped], "o-")
    right.set_xlabel("rules")
    right.set_ylabel("DAG nodes")
    right.set_title("DAG size")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    console.print(f"plot written to {path}")


def code_version() -> dict:
    """The commit measured, and which stage files differ from it: proof times move with the code."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "semantics", "synth",
                                "proofs", "l7fp"], capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head or None, "modified": [line[3:] for line in dirty if line.strip()]}


# ---- main --------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("--sizes wants positive integers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="verify_scaling.py", description="Proof time vs policy size (see the module docstring).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("EXAMPLES:"):__doc__.index("THE POLICY")].rstrip())
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                        help="comma-separated rule counts (default: 10,20,100,1000)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="Z3 wall-clock timeout per obligation part, seconds (default 120)")
    parser.add_argument("--rlimit", type=int, default=0,
                        help="Z3 resource limit per part; 0 = none (default), so --timeout governs")
    parser.add_argument("--hcm-options", default="normalize_path,merge_slashes",
                        help='connection-manager options of the generated policies ("" for none)')
    parser.add_argument("--max-seconds", type=float, default=0.0,
                        help="give up on a size after this many seconds (0 = never); runs each size in a child process")
    parser.add_argument("--clusters", type=int, default=CLUSTERS,
                        help=f"upstream clusters the routes cycle over (default {CLUSTERS})")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON results here (after every size)")
    parser.add_argument("--plot", metavar="FILE.png", help="plot time and DAG nodes vs rules (needs matplotlib)")
    parser.add_argument("--keep", metavar="DIR", help="write the generated .l7fp files here and keep them")
    parser.add_argument("--no-parts", action="store_true", help="do not time individual solver queries")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    out = Console(soft_wrap=True)
    if not out.is_terminal:
        out = Console(soft_wrap=True, width=160)
    progress = Console(stderr=True, quiet=args.quiet, soft_wrap=True)
    hcm_options = [o.strip() for o in args.hcm_options.split(",") if o.strip()]
    unknown_options = set(hcm_options) - {"normalize_path", "merge_slashes"}
    if unknown_options:
        parser.error(f"--hcm-options: unknown {', '.join(sorted(unknown_options))} "
                     f"(the DSL knows normalize_path, merge_slashes)")
    if args.clusters < 1:
        parser.error("--clusters wants a positive integer")
    budget = Budget(timeout_s=args.timeout, rlimit=args.rlimit)
    result = {"tool": "bench/verify_scaling.py", "sizes": args.sizes,
              "budget": {"timeout_s": budget.timeout_s, "rlimit": budget.rlimit,
                         "max_seconds_per_size": args.max_seconds or None},
              "hcm_options": hcm_options, "clusters": args.clusters, "python": platform.python_version(),
              "z3": z3.get_version_string(), "machine": platform.machine(), "code": code_version(),
              "runs": [], "targets": []}

    def save():
        result["targets"] = targets(result["runs"])
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="l7fp-scaling-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            for n in args.sizes:
                progress.print(f"[bold]{n} rules[/] ...")
                path = workdir / f"scaling_{n}.l7fp"
                path.write_text(policy_text(n, hcm_options, args.clusters))
                if args.max_seconds > 0:
                    row = measure_capped(n, path, budget, args.quiet, args.max_seconds)
                else:
                    row = measure(n, path, budget, not args.no_parts, args.quiet, progress)
                result["runs"].append(row)
                setup = (f"compile {_num(row['compile_seconds'])}, encode {_num(row['encode_seconds'])}"
                         if row["compile_seconds"] is not None else
                         f"compile+encode {_num(row.get('compile_and_encode_seconds'))}")
                progress.print(f"  {n} rules: {row['verdict']} in {row['total_seconds']:.2f} s ({setup}, "
                               f"solver {row['solver_seconds']:.2f}; DAG {row['dag'].get('nodes', '?')} nodes)")
                save()
                if row.get("interrupted"):
                    raise KeyboardInterrupt
                if row.get("killed_during"):
                    progress.print(f"  [yellow]{n} rules: killed after --max-seconds, during "
                                   f"{row['killed_during']}[/]")
        except KeyboardInterrupt:
            done = [r["rules"] for r in result["runs"] if r["verdict"] != "incomplete"]
            result["incomplete"] = f"interrupted; sizes finished: {done or 'none'}"
            progress.print(f"[yellow]{result['incomplete']}[/]")
        save()

    status = 130 if result.get("incomplete") else 0
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print_table(out, result)
    if args.plot:
        plot(args.plot, result["runs"], Console(stderr=True, soft_wrap=True) if args.format == "json" else out)
    return status


if __name__ == "__main__":
    sys.exit(main())
