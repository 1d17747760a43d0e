"""synth/: Policy IR -> match-action DAG (networkx): the synthesizer (compile.py), the DAG
(dag.py), the kernel's bounds (bounds.py) and the offload classifier (offload.py).

Consumes l7fp.semantics.ir; feeds l7fp.proofs (the DAG is proven before use) and l7fp.bpf.
"""
