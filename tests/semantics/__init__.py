"""Tests of semantics/: the Z3 meaning (symbolic.py) against the concrete interpreter."""
