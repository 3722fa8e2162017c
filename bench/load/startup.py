"""Start-up section: ``scarlet up`` against ``scarlet simulate`` on the example federation.

Both commands run as a user would run them, on ``deploy/examples/federation.toml`` (four
pinned clients, five rounds, against the local RabbitMQ and Redis), and the wall time is
from the command's start to its exit: imports, data, rounds, and for ``scarlet up`` the
provisioning of one broker user per role, the start of its processes and their stop.
Runs alternate simulate, up, simulate, up, ... so that a load change on the machine
falls on both; the goal row is the ratio of the medians. A reported row runs
``scarlet up --no-provision``, to show what the per-role users cost (``rabbitmqctl``
starts an Erlang VM per call).

Each run gets its own run id; ``scarlet down`` removes what a run left on the broker and
in Redis.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.load.table import Row

__all__ = ["run"]

GOAL = 1.3
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "federation.toml"
PAIRS, QUICK_PAIRS = 3, 1
_SECTION = "startup"
_TIMEOUT_S = 300


def run(quick: bool) -> list[Row]:
    """Interleaved runs; rows: both medians, their ratio (goal), up without provisioning."""
    pairs = QUICK_PAIRS if quick else PAIRS
    simulate, up, bare = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        for i in range(pairs):
            simulate.append(_timed(_simulate(folder, i)))
            up.append(_timed(_up(folder, i, provision=True)))
            if not quick:
                bare.append(_timed(_up(folder, i, provision=False)))
    setting = f"{EXAMPLE.name}, {pairs} interleaved run(s)"
    sim_s, up_s = statistics.median(simulate), statistics.median(up)
    ratio = up_s / sim_s
    rows = [
        Row(_SECTION, "scarlet simulate wall time", setting, _seconds(simulate)),
        Row(_SECTION, "scarlet up wall time", setting, _seconds(up)),
        Row(
            _SECTION,
            "scarlet up / simulate",
            setting,
            f"{ratio:.2f}x",
            f"<= {GOAL}x",
            ratio <= GOAL,
        ),
    ]
    if bare:
        rows.append(Row(_SECTION, "scarlet up --no-provision wall time", setting, _seconds(bare)))
    return rows


def _seconds(values: list[float]) -> str:
    spread = f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
    return f"{statistics.median(values):.1f} s{spread}"


def _simulate(folder: Path, i: int) -> list[str]:
    return [
        sys.executable, "-m", "scarlet.cli", "simulate", "--config", str(EXAMPLE),
        "--run-id", _run_id("sim", i), "--out", str(folder / f"sim-{i}.json"),
    ]  # fmt: skip


def _up(folder: Path, i: int, *, provision: bool) -> list[str]:
    kind = "up" if provision else "bare"
    run_id = _run_id(kind, i)
    command = [
        sys.executable, "-m", "scarlet.cli", "up", "--config", str(EXAMPLE),
        "--run-id", run_id, "--out", str(folder / f"{kind}-{i}.json"),
        "--run-dir", str(folder / run_id), "--no-progress",
    ]  # fmt: skip
    return command if provision else [*command, "--no-provision"]


def _run_id(kind: str, i: int) -> str:
    return f"bench-start-{kind}-{i}-{uuid.uuid4().hex[:6]}"


def _timed(command: list[str]) -> float:
    """Wall seconds of ``command``, which must succeed; its broker and Redis state removed."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    elapsed = time.perf_counter() - start
    run_id = command[command.index("--run-id") + 1]
    if "up" in command:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "scarlet.cli",
                "down",
                "--config",
                str(EXAMPLE),
                "--run-id",
                run_id,
            ],
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(command[2:5])} exited with {done.returncode}:\n{tail}")
    return elapsed
