"""Experiment harness: the method grid, its report, and the sensitivity sweeps.

    python -m bench.experiments grid [--quick] [--out results/experiments] ...
    python -m bench.experiments report [--out results/experiments]
    python -m bench.experiments sensitivity [--quick] ...

See docs/EXPERIMENTS.md for the commands, sizes, methods and byte accounting.
"""
