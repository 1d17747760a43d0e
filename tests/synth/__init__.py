"""Tests of synth/: the DAG decides like the interpreter or punts; its Z3 terms match its evaluation."""
