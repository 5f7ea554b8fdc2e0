"""Benchmarks, run by hand (`make bench`); the figures go in the README."""
