"""``python -m bench.load``: the load and footprint benchmark of issue 12, as one table.

Each section is a module of this package with ``run(quick: bool) -> list[Row]``; the
entry point runs the chosen sections in order and prints every row in one table.
"""
