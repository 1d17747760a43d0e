"""L7FP: a kernel fast path for service-mesh L7 policy, proven to decide as Envoy does.

The package `l7fp` holds the command line (cli.py); the pipeline stages live in their own folders and
are imported as l7fp.semantics, l7fp.synth, l7fp.bpf and l7fp.proofs (docs/architecture.md).
"""
ENVOY_VERSION = "1.40.0"
__version__ = "0.1.0"
