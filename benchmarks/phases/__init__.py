"""The benchmark's phases, one module each; benchmarks.bench runs them in order."""
