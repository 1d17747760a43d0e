"""Command line: `l7fp` (explain, ...) and `l7fp-verify`.

Exit codes everywhere (DESIGN.md): 0 ok, 1 counterexample/divergence/gate failure, 2 bad input or
usage (message names file, line and key), 3 solver unknown or timeout. Commands are thin drivers over
the stages; none of them holds semantics of its own.
"""
from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from . import ENVOY_VERSION

EXIT_OK, EXIT_DIFFERENT, EXIT_BAD_INPUT, EXIT_UNKNOWN = 0, 1, 2, 3


class UsageError(Exception):
    pass


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
    return parser


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"expected IP:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def cmd_explain(args, out: Console) -> int:
    from l7fp.semantics.frontends import load_policy
    from l7fp.semantics.http1 import Unmodelled
    from l7fp.semantics.interpreter import interpret
    from l7fp.semantics.request import Request

    policy = load_policy(args.configs, listener=args.listener)
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
            # The kernel fast path is built by synth/ and bpf/ (issues 3 and 4); until then every
            # request is handled by Envoy, and this says so rather than claiming a fast path.
            entry["fast_path"] = "no fast path yet: synthesis (synth/) is not built"
        except Unmodelled as exc:
            unmodelled = True
            entry = {"action": "unmodelled", "error": str(exc), "fast_path": f"punt: {exc}"}
        entry["request"] = path
        results.append(entry)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        table = Table(title=f"l7fp explain (Envoy {ENVOY_VERSION} semantics)")
        for column in ("request", "action", "cluster / status", "upstream path / body", "rule"):
            table.add_column(column)
        for e in results:
            if e["action"] == "forward":
                table.add_row(e["request"], "forward", e["cluster"], e["upstream_path"], e["rule"])
            elif e["action"] == "local_reply":
                detail = e["body"] if not e.get("location") else f"Location: {e['location']}"
                table.add_row(e["request"], "local reply", str(e["status"]), repr(detail), e["rule"])
            else:
                table.add_row(e["request"], "[red]not modelled[/red]", "", e["error"], "")
        out.print(table)
    return EXIT_BAD_INPUT if unmodelled else EXIT_OK


COMMANDS = {"explain": cmd_explain}


def main(argv: list[str] | None = None) -> int:
    from l7fp.semantics.errors import ConfigError

    err = Console(stderr=True)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args, Console())
    except (ConfigError, UsageError) as exc:
        # markup off: policy names such as ns[foo]-policy[x] must print as written
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_BAD_INPUT


def verify_main(argv: list[str] | None = None) -> int:
    """`l7fp-verify`: the proof gate. Synthesis and proofs (synth/, proofs/) are not built yet, so it
    refuses with a usage error rather than reporting anything as proven."""
    if "verify" not in COMMANDS:
        Console(stderr=True).print("error: l7fp verify is not available in this build: synthesis and proofs "
                                   "(synth/, proofs/) are not built yet", markup=False)
        return EXIT_BAD_INPUT
    return main(["verify", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
