"""The processes that run no model never load torch: the cache service and the launcher.

Each check runs in a fresh interpreter, since this test process has torch loaded already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

MODEL_FREE_MODULES = (
    "shared.protocol.softlabels",
    "shared.protocol.codec",
    "shared.protocol.cache_sync",
    "shared.config",
    "shared.config_loading",
    "shared.cache_policy",
    "shared.state",
    "shared.state.redis",
    "shared.state.files",
    "services.cache.__main__",
    "scarlet.cli",
    "scarlet.up",
    "scarlet.provision",
    "scarlet.down",
)
PEAK_RSS_MIB = 150  # the goal (issue 12); importing torch alone peaks near 900 MiB


def _fresh_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_cache_service_and_launcher_modules_import_without_torch():
    # When every module of the cache service and the launcher is imported
    code = (
        "import importlib, sys\n"
        f"for name in {MODEL_FREE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n"
    )
    done = _fresh_python("-c", code)
    # Then neither torch nor torchvision was loaded
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "command",
    [("-m", "services.cache", "--help"), ("-m", "scarlet.cli", "up", "--help")],
    ids=["cache-service", "launcher"],
)
def test_a_model_free_process_peaks_below_150_mib(command):
    # Given a child that starts the process and exits (``--help``), measured on its own
    code = (
        "import resource, subprocess, sys\n"
        f"done = subprocess.run([sys.executable, *{list(command)!r}], capture_output=True)\n"
        "assert done.returncode == 0, done.stderr\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    # When
    done = _fresh_python("-c", code)
    # Then its peak resident set (kB on Linux) stays below the goal
    assert done.returncode == 0, done.stderr
    peak_mib = int(done.stdout.strip()) / 1024
    assert peak_mib < PEAK_RSS_MIB, f"{' '.join(command)} peaked at {peak_mib:.0f} MiB"


def test_the_measure_would_see_torch():
    # the same measure on a process that imports torch is far above the bound, so the
    # bound above tells the two apart
    code = (
        "import resource, subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'import torch'], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    done = _fresh_python("-c", code)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) / 1024 > PEAK_RSS_MIB
