"""Fixtures shared by the tests, the demo and the benchmarks: tiny tokenizers and checkpoints."""
