"""synth/: Policy IR -> match-action DAG (networkx), offload classifier, kernel bounds.

Not built yet (issue 3). It will consume l7fp.semantics.ir and feed l7fp.proofs and l7fp.bpf.
"""
