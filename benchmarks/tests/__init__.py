"""Tests of the benchmark's own logic (run with `pytest benchmarks/tests`)."""
