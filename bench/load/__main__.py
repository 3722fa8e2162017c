"""``python -m bench.load [--quick] [--sections a,b]``: run the load sections, print one table."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from bench.load.table import Row, render

SECTIONS = ("ingest", "memory", "startup", "pool")
"""Section modules of :mod:`bench.load`, in the order they run."""


def make_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bench.load``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description="Load and footprint benchmark: ingest rate, peak memory, start-up, "
        "pool scale. Prints one table with each goal and whether it is met.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections and print their rows as one table; 1 if a goal is missed."""
    args = make_parser().parse_args(argv)
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        print(
            f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    rows: list[Row] = []
    for name in chosen:
        started = time.perf_counter()
        print(f"[bench.load] {name} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.load.{name}")
        rows.extend(module.run(args.quick))
        print(
            f"[bench.load] {name} done in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    print(render(rows))
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
