"""proofs/: oracles and checks that compare L7FP with Envoy.

Today: envoy_oracle.py (real Envoy as an oracle, used by the differential tests and the demo).
Issue 3 adds the Z3 equivalence proofs, semantic diff and reports.
"""
