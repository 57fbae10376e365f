"""Benchmarks that back the claims in the README; each writes under results/bench/."""
