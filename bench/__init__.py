"""Benchmarks (not part of the application); run with `bash bench/run`."""
