"""lstm_fast: fused LSTM/GRU/RNN kernels for the CPU (C++/OpenMP/SIMD) with a NumPy API.

The public names:

* :class:`LSTM`, :class:`GRU`, :class:`RNN` and the cells :class:`LSTMCell`, :class:`GRUCell`,
  :class:`RNNCell` — layers with PyTorch's constructors, parameter names and shapes, and a
  ``backward``; :class:`Module` and :class:`Parameter`, their base classes.
* :func:`set_num_threads`, :func:`get_num_threads`, :func:`cpu_info`, :func:`empty_cache`,
  :func:`cached_bytes`.

The submodules:

* :mod:`lstm_fast.ops` — the functional API (arrays in, arrays out): ``lstm_forward``,
  ``lstm_backward``, ``gru_forward``, ``gru_backward``, ``rnn_forward``, ``rnn_backward``,
  ``gemm``.
* :mod:`lstm_fast.nn` (``Linear``, ``Embedding``, ``Dropout``, ``CrossEntropyLoss``),
  :mod:`lstm_fast.optim`, :mod:`lstm_fast.data`, :mod:`lstm_fast.models` — training.
* :mod:`lstm_fast.interop` — weights from and to PyTorch, Keras and ONNX (loaded on first use).
* :mod:`lstm_fast.torch` — drop-in ``torch.nn`` modules (``import lstm_fast.torch``; needs the
  ``torch`` extra, never imported by ``import lstm_fast``).
* :mod:`lstm_fast.reference` — the NumPy reference the kernels are tested against.
"""

from __future__ import annotations

import operator

try:
    from . import _core
except ImportError as _error:
    import importlib.util as _util
    import sys as _sys

    def _run_as_command() -> bool:
        """Whether this import is the ``lstm-fast`` command starting: its console script
        (whose first statement imports ``lstm_fast.cli``), or ``python -m lstm_fast`` / ``-m
        lstm_fast.cli`` (sys.argv[0] is "-m" while runpy imports the package to find it)."""
        import os

        argv0 = _sys.argv[0] if _sys.argv else ""
        if argv0 == "-m":
            modules = (__name__, f"{__name__}.cli", f"{__name__}.__main__")
            orig = list(getattr(_sys, "orig_argv", ()))
            for i, a in enumerate(orig[:-1]):
                if a == "-m":
                    return orig[i + 1] in modules
                if a.startswith("-m"):  # -mlstm_fast
                    return a[2:] in modules
            return False
        scripts = ("lstm-fast", "lstm-fast.exe", "lstm-fast-script.py", "lstm-fast-script.pyw")
        return os.path.basename(argv0).lower() in scripts

    if _util.find_spec(f"{__name__}._core") is not None:
        _failure = _error  # built, but it does not load (LSTM_FAST_ISA, a missing library)
    else:  # a source checkout never built: Python's own message blames a circular import
        _failure = ImportError(
            f"lstm_fast's compiled core (lstm_fast._core) is not built in {__path__[0]} for this "
            f"Python ({_sys.version_info[0]}.{_sys.version_info[1]}): install "
            "the package (pip install .) or, in a source checkout, build it in place with "
            "tools/dev-build.sh",
            name=f"{__name__}._core",
        )
    if _run_as_command():
        # The command's own first import (before its main() runs): the one line and the exit
        # status of a usage error (2) for a bad LSTM_FAST_ISA / LSTM_FAST_SCHEDULE value (1
        # otherwise), not a traceback ending in it. A library user gets the ImportError.
        _msg = str(_failure)
        print(f"lstm-fast: {_msg}", file=_sys.stderr)
        raise SystemExit(
            2 if _msg.startswith(("LSTM_FAST_ISA:", "LSTM_FAST_SCHEDULE:")) else 1
        ) from None
    if _failure is _error:
        raise
    raise _failure from None
from .module import Module, Parameter
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "Module",
    "Parameter",
    "cached_bytes",
    "cpu_info",
    "empty_cache",
    "get_num_threads",
    "set_num_threads",
    "__version__",
]


# Submodules loaded on first use as attributes (``lstm_fast.interop.from_torch(...)``, as the
# README writes it) without costing ``import lstm_fast`` anything.
_LAZY_SUBMODULES = ("interop",)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


def set_num_threads(n: int) -> None:
    """Set the number of threads the kernels use, in [1, 4 x the hardware threads (at least
    64)]. Applies to calls made afterwards, from any Python thread.

    A call runs on at most ``cpu_info()["cpus"]`` threads, the CPUs this process may use (its
    affinity mask, at most a container's CPU quota rounded up; both read again here): more
    threads than CPUs would only take turns on them.
    Results are bitwise the same for any thread count.

    In a process forked after this one ran a call on several threads, the kernels stay on one
    thread whatever is asked here (``cpu_info()["forked_serial"]``; see :func:`get_num_threads`)."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n: expected an int >= 1, got {type(n).__name__}")
    n = operator.index(n)
    limit = _core.max_threads()
    if not 1 <= n <= limit:
        raise ValueError(f"set_num_threads: n: expected an int in [1, {limit}], got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads asked for (default: OpenMP's, i.e. OMP_NUM_THREADS or cores); the
    kernels use at most ``cpu_info()["cpus"]`` of them.

    1 in a process forked (``os.fork``, multiprocessing's "fork" start method, a DataLoader
    worker) after this one ran a call on several threads: GNU OpenMP's thread team does not
    survive fork, and using it there would hang. Results are the same bitwise; processes started
    with "spawn" or "forkserver" keep their threads."""
    return _core.get_num_threads()


def empty_cache() -> None:
    """Return the memory lstm_fast keeps for reuse to the system.

    Large scratch buffers and result arrays (256 KiB and more) are not freed when a call or the
    array is done with them: the last few (at most 8 blocks and 1 GiB) are kept and reused by
    later calls, which saves the page faults of fresh memory (a training loop allocates the same
    sizes every step). Call this after a large one-off job to give that memory back; arrays
    still in use are not affected.
    """
    _core.empty_cache()


def cached_bytes() -> int:
    """Bytes currently kept for reuse (see :func:`empty_cache`)."""
    return int(_core.cached_bytes())


def cpu_info() -> dict:
    """What the core runs on: ``isa`` (active kernels), ``available_isas``, ``num_threads``
    (asked for), ``cpus`` (the most threads a call runs on: the CPUs of this process, its
    affinity mask's count capped at its CPU quota rounded up), ``cpu_quota`` (the cgroup's quota in
    CPUs, quota / period, e.g. 1.5; None when there is none or off Linux), ``forked_serial``
    (a forked child held to one thread, see :func:`get_num_threads`), ``openmp``,
    ``schedule`` (recurrence schedule override), GEMM tile and LSTM block width.

    ``LSTM_FAST_ISA=scalar|generic|avx2|avx512`` (set before import) forces a kernel set;
    ``LSTM_FAST_SCHEDULE=auto|units|batch|serial`` forces the recurrence schedule.
    """
    return dict(_core.cpu_info())
