"""Tests of proofs/: the refinement proof and its mutants, cvc5 agreement, semantic diff, reports and fuzz campaigns."""
