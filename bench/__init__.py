"""Micro-benchmarks, run as ``python -m bench.<name>``."""
