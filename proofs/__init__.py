"""proofs/: what checks L7FP against Envoy. The Z3 refinement proof that gates every load
(refinement.py, with the DAG's meaning in dag_smt.py and the lazy abstraction in abstraction.py),
the semantic diff (diff.py), their reports (report.py), Hypothesis request strategies for the
differential checks (request_strategies.py) and real Envoy as an oracle (envoy_oracle.py).
"""
