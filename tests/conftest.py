"""Shared fixtures: every available ISA path, thread counts, seeded generators."""

from __future__ import annotations

import os

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core

ISAS = lstm_fast.cpu_info()["available_isas"]

# Child Python processes (cold start, DDP workers, crash probes) import the same lstm_fast as the
# tests: its parent directory goes first on PYTHONPATH, and PYTHONSAFEPATH keeps a child's cwd or
# script directory (e.g. a source checkout without the compiled _core) off the front of sys.path.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(lstm_fast.__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [PACKAGE_PARENT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
os.environ["PYTHONSAFEPATH"] = "1"

# The kernels run on at most as many threads as the process has CPUs (cpu_info()["cpus"]). The
# suite lifts that bound, so that teams of 3, 4 or 8 threads (uneven splits, a step barrier with
# more threads than cores) are still tested on a 2-CPU machine; test_review18_runtime.py checks
# the bound in child processes.
if hasattr(_core, "_set_cpu_limit"):
    _core._set_cpu_limit(_core.max_threads())


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per kernel set this CPU has (scalar, generic, avx2, avx512)."""
    before = lstm_fast.cpu_info()["isa"]
    _core._set_isa(request.param)
    yield request.param
    _core._set_isa(before)


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    before = lstm_fast.get_num_threads()
    yield
    lstm_fast.set_num_threads(before)


@pytest.fixture
def schedule():
    """Restore the recurrence schedule override after a test that forces one."""
    before = lstm_fast.cpu_info()["schedule"]
    yield _core._set_schedule
    _core._set_schedule(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
