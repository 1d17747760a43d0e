"""Tests of the DSL frontend (semantics/frontends/dsl.py): parsing, errors, and its meaning against real Envoy."""
