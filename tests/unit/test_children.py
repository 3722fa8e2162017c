"""Children started by ``scarlet up``: forked from a preloaded server, yet like ``python -m``.

Each case runs under both starters, so the fork server is held to what a subprocess
does: exit status (negative for a signal), log output, own session, the environment and
working directory given at start, stdin from /dev/null.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scarlet.children import PreloadedStarter, Starter, SubprocessStarter

PROBE = "tests.children_probe"


@pytest.fixture(params=["forked", "subprocess"])
def starter(request: pytest.FixtureRequest) -> Starter:
    if request.param == "forked":
        return PreloadedStarter(modules=(PROBE,), warm=())
    return SubprocessStarter()


def _run(starter: Starter, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    log = tmp_path / f"child-{len(list(tmp_path.glob('child-*.log')))}.log"
    child = starter.start([PROBE, *args], log, env if env is not None else dict(os.environ))
    code = child.wait(30)
    return code, log.read_text()


def test_output_and_exit_status_reach_the_launcher(starter: Starter, tmp_path: Path) -> None:
    code, text = _run(starter, tmp_path, "exit", "3")
    assert code == 3
    assert "exiting" in text


def test_the_child_has_its_own_session_and_no_stdin(starter: Starter, tmp_path: Path) -> None:
    assert _run(starter, tmp_path, "session")[1].strip() == "own session: True"
    assert _run(starter, tmp_path, "stdin")[1].strip() == "stdin: ''"


def test_the_child_gets_the_environment_and_directory_given_at_start(
    starter: Starter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fork server started before the variable and directory changed
    starter.warm_up()
    # (PYTHONPATH: a fresh interpreter finds the probe from any directory)
    env = {**os.environ, "SCARLET_PROBE": "given", "PYTHONPATH": str(Path.cwd())}
    monkeypatch.chdir(tmp_path)
    # When / Then
    assert _run(starter, tmp_path, "env", "SCARLET_PROBE", env=env)[1].strip() == (
        "SCARLET_PROBE=given"
    )
    env.pop("SCARLET_PROBE")
    assert "SCARLET_PROBE=<unset>" in _run(starter, tmp_path, "env", "SCARLET_PROBE", env=env)[1]
    assert _run(starter, tmp_path, "cwd", env=env)[1].strip() == f"cwd: {tmp_path}"


def test_a_signalled_child_reports_the_negative_signal(starter: Starter, tmp_path: Path) -> None:
    # Given a child that waits
    log = tmp_path / "child.log"
    child = starter.start([PROBE, "sleep"], log, dict(os.environ))
    deadline = time.monotonic() + 30
    while "sleeping" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    # When / Then
    assert child.poll() is None and child.returncode is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.1)
    child.send_signal(signal.SIGTERM)
    assert child.wait(30) == -signal.SIGTERM
    child.send_signal(signal.SIGTERM)  # already gone: nothing happens


def test_forked_children_do_not_rerun_the_launcher_s_main_script(tmp_path: Path) -> None:
    # Given a launcher script without a __main__ guard (it would start children forever)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path.cwd())!r})\n"
        "from scarlet.children import PreloadedStarter\n"
        "from pathlib import Path\n"
        "print('main ran', flush=True)\n"
        f"child = PreloadedStarter(modules=({PROBE!r},), warm=()).start(\n"
        f"    [{PROBE!r}, 'exit', '0'], Path({str(tmp_path / 'c.log')!r}), dict(os.environ))\n"
        "sys.exit(child.wait(30))\n"
    )
    # When
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    # Then the script ran once and its child once
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("main ran") == 1


def test_a_warm_fork_server_s_children_run_torch_with_their_own_threads_and_seeds(
    tmp_path: Path,
) -> None:
    # Given the default fork server (services imported, torch warmed up on one thread)
    starter = PreloadedStarter(modules=(PROBE,))
    # When two children ask for two threads and train (a pool lost by the fork would hang)
    runs = [_run(starter, tmp_path, "torch", "2") for _ in range(2)]
    # Then each has its threads and, like a fresh interpreter, its own global seed
    assert [code for code, _ in runs] == [0, 0], runs
    assert all("threads=2 " in text for _, text in runs)
    seeds = {text.split("seed=")[1].strip() for _, text in runs}
    assert len(seeds) == 2


def test_a_child_shows_its_own_command_line(starter: Starter, tmp_path: Path) -> None:
    text = _run(starter, tmp_path, "cmdline", "--flag")[1]
    assert f"cmdline: -m {PROBE} cmdline --flag" in text


def test_a_module_that_is_not_preloaded_starts_as_a_subprocess(tmp_path: Path) -> None:
    code, text = _run(PreloadedStarter(modules=(), warm=()), tmp_path, "cmdline")
    assert code == 0
    assert f"parent: {os.getpid()}" in text  # our own child, not the fork server's
