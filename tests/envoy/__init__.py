"""Differential tests against the real envoy binary (1.40.0): the interpreter and the wire bytes against what Envoy does."""
