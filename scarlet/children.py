"""How ``scarlet up`` starts its service processes: forked from one that imported them once.

Importing torch and the services costs each process about 2.4 CPU-seconds; a local
federation starts five or more such processes on a machine that may have two cores, so
``scarlet up`` spent most of its start-up importing the same modules again and again.
:class:`PreloadedStarter` runs one *fork server* (:mod:`multiprocessing`'s
``forkserver``) that imports the model-running services once and warms torch up, and
forks the aggregator and the workers from it: a child starts with everything imported
(its pages shared copy-on-write) and only parses its configuration and loads its data.
The cache service, which imports no torch, starts as a plain subprocess. The launcher
itself never imports torch: the fork server is a separate process, started before the
broker users are provisioned so that its imports overlap that work.

A forked child behaves like ``python -m <module> <args>`` started by
:class:`subprocess.Popen`: its own session (Ctrl-C reaches only the launcher), stdin
from ``/dev/null``, stdout and stderr appended to its log, the launcher's environment
and working directory as they were when it was started, and its exit status (negative
for a signal) as the return code, and ``python -m <module> <args>`` as its command line
in ``ps`` (:func:`retitle`). :class:`SubprocessStarter` is the plain
``subprocess`` way, for platforms without ``fork``.

Forking is safe here because the fork server has run torch on one thread only (the
warm-up of :mod:`scarlet.preload`): no thread pool exists to be lost in the
children, and each sets its own thread count (``scarlet up`` gives every child one
unless ``threads`` says otherwise).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

__all__ = [
    "SERVICE_MODULES",
    "WARM_MODULES",
    "ChildProcess",
    "PreloadedStarter",
    "Starter",
    "SubprocessStarter",
    "default_starter",
]

SERVICE_MODULES = ("services.aggregator", "services.worker")
"""The packages forked from the fork server, which imports their ``__main__`` modules.

The processes that run models. The cache service is not among them: it imports no
torch, and a child forked from a server holding torch would count torch's pages in its
resident set; it starts as a plain subprocess (0.5 s).
"""

WARM_MODULES = ("scarlet.preload",)
"""Imported last by the fork server: work whose result the children inherit."""


class ChildProcess(Protocol):
    """The part of :class:`subprocess.Popen` the launcher uses."""

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    @property
    def returncode(self) -> int | None:
        """The exit status once known (negative: killed by that signal), else None."""
        ...

    def poll(self) -> int | None:
        """The exit status if the process has ended, without waiting."""
        ...

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; raises :class:`subprocess.TimeoutExpired` after ``timeout``."""
        ...

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        ...

    def kill(self) -> None:
        """SIGKILL the process."""
        ...


class Starter(Protocol):
    """Starts ``python -m <module> <args>``-like children."""

    def warm_up(self) -> None:
        """Prepare for fast starts (may return before the preparation is done)."""

    def start(
        self, module_args: Sequence[str], log_path: Path, env: Mapping[str, str]
    ) -> ChildProcess:
        """Start ``module_args[0]`` with the arguments ``module_args[1:]``."""
        ...


class SubprocessStarter:
    """Every child a fresh interpreter (``python -m``): each imports everything itself."""

    def warm_up(self) -> None:
        """Nothing to prepare."""

    def start(
        self, module_args: Sequence[str], log_path: Path, env: Mapping[str, str]
    ) -> ChildProcess:
        """``python -m module args...`` in its own session, output appended to the log."""
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", *module_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,
            )


class PreloadedStarter:
    """Children forked from a fork server that imported ``modules`` once.

    Args:
        modules: packages whose ``__main__`` the server imports (their import must have
            no side effect beyond defining things, which ``if __name__ == "__main__"``
            guards ensure).
        warm: modules imported after them for their side effect, by default
            :mod:`scarlet.preload` (torch's first-call cost, paid once).

    A module not in ``modules`` starts as a plain subprocess (:class:`SubprocessStarter`).
    """

    def __init__(
        self, modules: Sequence[str] = SERVICE_MODULES, warm: Sequence[str] = WARM_MODULES
    ) -> None:
        self.modules = tuple(modules)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([*(f"{m}.__main__" for m in modules), *warm])
        self._plain = SubprocessStarter()

    def warm_up(self) -> None:
        """Start the fork server now: its imports run while the launcher does other work."""
        with _main_hidden():
            multiprocessing.forkserver.ensure_running()

    def start(
        self, module_args: Sequence[str], log_path: Path, env: Mapping[str, str]
    ) -> ChildProcess:
        """Fork a child that runs ``module_args[0]``'s ``main(module_args[1:])``."""
        module, *argv = module_args
        if module not in self.modules:
            return self._plain.start(module_args, log_path, env)
        process = self._context.Process(
            target=_run_module,
            args=(module, argv, str(log_path), dict(env), os.getcwd()),
            name=module,
            # a launcher that exits with children still running stops them (SIGTERM)
            # instead of waiting for them at exit
            daemon=True,
        )
        with _main_hidden():
            process.start()
        return ForkedChild(process)


class ForkedChild:
    """A :class:`ChildProcess` over a :mod:`multiprocessing` process."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        """The process id."""
        pid = self._process.pid
        assert pid is not None  # set by start()
        return pid

    @property
    def returncode(self) -> int | None:
        """The exit status once known (negative: killed by that signal), else None."""
        return self._process.exitcode

    def poll(self) -> int | None:
        """The exit status if the process has ended, without waiting."""
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; raises :class:`subprocess.TimeoutExpired` after ``timeout``."""
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (nothing once it has ended)."""
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process."""
        self._process.kill()


def default_starter() -> Starter:
    """The fork server where the platform has ``fork``, else plain subprocesses."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        return PreloadedStarter()
    return SubprocessStarter()


def retitle(words: Sequence[str]) -> None:
    """Show ``words`` as this process's command line (``ps``, ``/proc/<pid>/cmdline``).

    A forked child would otherwise show the fork server's command line, the same for
    every service. Linux keeps the command line in the argument area the process started
    with (``arg_start`` .. ``arg_end`` in ``/proc/self/stat``); the new words are written
    there, NUL-separated, cut to fit, the rest zeroed. Elsewhere, or when the area cannot
    be found, nothing changes.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of stat(5)
    except (OSError, IndexError, ValueError):
        return
    if not 0 < start < end or end - start > 1 << 20:
        return
    size = end - start
    text = b"\0".join(word.encode() for word in words)[: size - 1]
    ctypes.memmove(start, text + b"\0" * (size - len(text)), size)


def _reseed() -> None:
    """Fresh global seeds, as a new interpreter would have (forks share the server's).

    Nothing of the federation draws from them (every draw has its own seeded generator);
    this keeps anything else that might from drawing the same in every child.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Keep multiprocessing from running the launcher's main script again in each child.

    Before it runs a child, :mod:`multiprocessing` re-imports the parent's ``__main__``
    from its file (as ``__mp_main__``) so that functions defined there can be unpickled;
    the child's target lives in this module, so that is never needed, and it would run a
    script without an ``if __name__ == "__main__"`` guard (another launcher) or import
    pytest in every child of a test. A bare module stands in while a child is prepared.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _run_module(module: str, argv: list[str], log_path: str, env: dict[str, str], cwd: str) -> None:
    """The child's body: what ``python -m module argv...`` with Popen's settings would do."""
    os.setsid()  # its own session: a Ctrl-C meant for the launcher does not reach it
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True, write_through=True)
    _reseed()
    retitle([sys.executable, "-m", module, *argv])
    sys.argv = [f"{module}.__main__", *argv]
    main = importlib.import_module(f"{module}.__main__").main
    sys.exit(main(argv))
