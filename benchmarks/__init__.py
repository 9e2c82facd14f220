"""Benchmarks of streamscore: throughput against baselines, latency, Redis memory per lead."""
