"""``python -m tests.children_probe WHAT [ARG]``: report something about this process, or wait."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Act on ``argv``: ``env NAME``, ``session``, ``cwd``, ``exit N``, ``sleep``, ``stdin``."""
    what, *rest = list(sys.argv[1:] if argv is None else argv)
    if what == "env":
        print(f"{rest[0]}={os.environ.get(rest[0], '<unset>')}")
    elif what == "session":
        print(f"own session: {os.getsid(0) == os.getpid()}")
    elif what == "cmdline":
        with open("/proc/self/cmdline", "rb") as f:
            words = [w.decode() for w in f.read().split(b"\0") if w]
        print(f"cmdline: {' '.join(words[1:])}")
        print(f"parent: {os.getppid()}")
    elif what == "cwd":
        print(f"cwd: {os.getcwd()}")
    elif what == "stdin":
        print(f"stdin: {sys.stdin.read()!r}")
    elif what == "exit":
        print("exiting", file=sys.stderr)
        return int(rest[0])
    elif what == "torch":
        import torch

        torch.set_num_threads(int(rest[0]))
        model = torch.nn.Linear(64, 4)
        for _ in range(3):
            model(torch.ones(256, 64)).sum().backward()
        print(f"threads={torch.get_num_threads()} seed={torch.initial_seed()}")
    elif what == "sleep":
        print("sleeping", flush=True)
        time.sleep(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
