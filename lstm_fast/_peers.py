"""The implementations the benchmarks compare, behind one interface.

``make(name, problem, mode, threads)`` prepares one implementation for one benchmark cell (weights
converted and loaded, sessions built, outputs checked against lstm_fast once) and returns a
zero-argument callable that does exactly one measured call:

* ``lstm_fast``          :func:`lstm_fast.ops.lstm_forward` (+ :func:`lstm_fast.ops.lstm_backward`)
* ``numpy``              :mod:`lstm_fast.reference`, the NumPy reference
* ``torch.nn.LSTM``      PyTorch's CPU LSTM (inference under ``torch.inference_mode()``)
* ``torch.nn.LSTMCell``  PyTorch's cell, one step (only shapes with T = 1)
* ``onnxruntime``        ONNX Runtime's ``LSTM`` operator in a one-node model (forward only)

Modes: ``forward`` (inference) and ``training`` (forward keeping what backward needs, then
backward with a fixed random upstream gradient ``dy``).

Peers are imported lazily. A missing package raises :class:`Unavailable` with the reason
``"not installed"``, an installed one whose import fails (in any way) ``"not available:
<error>"``; a peer that does not apply to a cell (ORT training, LSTMCell with T > 1) raises it
with ``"n/a: ..."``; a peer whose output disagrees with lstm_fast (in training also its
gradients dx, dh0, dc0: the same work as lstm_fast's backward) raises :class:`Mismatch` and is
not timed.

Threads: :func:`thread_limits` sets lstm_fast's OpenMP threads, NumPy's BLAS threads (through
threadpoolctl if installed, else OpenBLAS's own setter found with ctypes) and, when torch is
already imported, ``torch.set_num_threads``; ONNX Runtime gets ``intra_op_num_threads``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = [
    "IMPLS",
    "PEERS",
    "MODES",
    "Mismatch",
    "Problem",
    "Unavailable",
    "blas_control",
    "import_peer",
    "importorskip",
    "make",
    "make_problem",
    "peer_versions",
    "thread_limits",
]

MODES = ("forward", "training")
PEERS = ("torch.nn.LSTM", "torch.nn.LSTMCell", "onnxruntime")
IMPLS = ("lstm_fast", "numpy", *PEERS)

# The packages each implementation needs (for "not installed" and version reports).
REQUIRES = {
    "lstm_fast": (),
    "numpy": (),
    "torch.nn.LSTM": ("torch",),
    "torch.nn.LSTMCell": ("torch",),
    "onnxruntime": ("onnx", "onnxruntime"),
}

# Tolerance of the one-time output check of a peer against lstm_fast (float32 everywhere).
CHECK_RTOL = 1e-4
CHECK_ATOL = 1e-4


class Unavailable(Exception):
    """The implementation cannot run this cell: ``"not installed"`` or ``"n/a: <why>"``."""


class Mismatch(Exception):
    """The implementation ran but its output disagrees with lstm_fast's (not timed)."""


@dataclass
class Problem:
    """One LSTM problem: inputs, weights (PyTorch layout, gate order i, f, g, o) and ``dy``.

    Shapes: x (T, B, I), w_ih (4H, I), w_hh (4H, H), b_ih/b_hh (4H,), h0/c0 (B, H), dy (T, B, H).
    """

    T: int
    B: int
    I: int
    H: int
    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    dy: np.ndarray
    _expected: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.T, self.B, self.I, self.H)

    def flops(self, mode: str) -> float:
        """FLOPs of one call by DESIGN.md's model (forward 2·T·B·(I+H)·4H, training 3×)."""
        from .reference import lstm_flops

        return float(lstm_flops(self.T, self.B, self.I, self.H, training=(mode == "training")))

    def expected(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """lstm_fast's forward ``(y, h_n, c_n)``, computed once: what peers are checked against."""
        if "fwd" not in self._expected:
            from . import ops

            y, h_n, c_n, _ = ops.lstm_forward(
                self.x, self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.h0, self.c0
            )
            self._expected["fwd"] = (y, h_n, c_n)
        return self._expected["fwd"]

    def expected_grads(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """lstm_fast's training ``(dx, dh0, dc0)`` for ``dy``, computed once: what the peers'
        training steps are checked against."""
        if "bwd" not in self._expected:
            from . import ops

            *_, cache = ops.lstm_forward(
                self.x, self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.h0, self.c0, training=True
            )
            g = ops.lstm_backward(cache, self.dy)
            self._expected["bwd"] = (g.dx, g.dh0, g.dc0)
        return self._expected["bwd"]


def make_problem(T: int, B: int, I: int, H: int, seed: int = 0) -> Problem:
    """Random float32 problem; weights U(-1/√H, 1/√H) as PyTorch initialises them."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(np.float32)

    def n(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    return Problem(
        T, B, I, H,
        x=n(T, B, I), w_ih=u(4 * H, I), w_hh=u(4 * H, H), b_ih=u(4 * H), b_hh=u(4 * H),
        h0=n(B, H) * np.float32(0.5), c0=n(B, H) * np.float32(0.5), dy=n(T, B, H),
    )  # fmt: skip


# --------------------------------------------------------------------------- versions / imports


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked import, a module without a spec
        return False


def import_peer(module: str):
    """Import a peer's package, or raise :class:`Unavailable` with the reason.

    ``"not installed"`` when it cannot be found; ``"not available: <error>"`` when it is installed
    but its import fails in any way (a shared library missing, an ABI mismatch: OSError,
    ImportError, RuntimeError, ...), so a broken install is reported, not raised.
    """
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of a peer's import makes it absent
        if not _installed(module):
            raise Unavailable("not installed") from e
        raise Unavailable(f"not available: {type(e).__name__}: {e}") from e


def importorskip(module: str):
    """``pytest.importorskip`` for the benchmarks' peers: the module, or the test (or, called at
    module level, the whole file) skipped with the reason, whatever the import raised."""
    import pytest

    try:
        return import_peer(module)
    except Unavailable as e:
        pytest.skip(f"could not import {module!r}: {e}", allow_module_level=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def peer_versions() -> dict[str, str | None]:
    """Installed versions of everything the benchmark may use (None: not installed).

    Found without importing the packages (torch takes seconds to import).
    """
    out = {}
    for dist in ("numpy", "torch", "onnx", "onnxruntime", "threadpoolctl", "matplotlib"):
        if dist in sys.modules and sys.modules[dist] is None:  # import blocked
            out[dist] = None
            continue
        try:
            spec = importlib.util.find_spec(dist)
        except (ImportError, ValueError):
            spec = None
        out[dist] = (_version(dist) or "unknown") if spec is not None else None
    return out


# --------------------------------------------------------------------------------------- threads


class _BlasControl:
    """Set the thread count of NumPy's BLAS: threadpoolctl, else OpenBLAS's setter via ctypes."""

    def __init__(self):
        self.method = "none"
        self._tpc = None
        self._set = self._get = None
        try:
            import threadpoolctl

            self._tpc = threadpoolctl
            self.method = "threadpoolctl"
            return
        except ImportError:
            pass
        try:
            self._find_openblas()
        except Exception:  # noqa: BLE001 - best effort; reported as method "none"
            self._set = self._get = None

    def _find_openblas(self) -> None:
        import numpy  # noqa: F401  (make sure its BLAS is loaded)

        try:
            with open("/proc/self/maps") as f:
                paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln}
        except OSError:
            return
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", "_64_", ""):
                    setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    if setter is not None and getter is not None:
                        setter.argtypes, setter.restype = [ctypes.c_int], None
                        getter.argtypes, getter.restype = [], ctypes.c_int
                        self._set, self._get = setter, getter
                        self.method = f"ctypes:{prefix}_set_num_threads{suffix}"
                        return

    def describe(self) -> dict:
        """NumPy's BLAS as threadpoolctl reports it (library, version, the kernel set it chose
        for this CPU, e.g. OpenBLAS's "Haswell"); empty without threadpoolctl."""
        if self._tpc is None:
            return {}
        import numpy  # noqa: F401  (make sure its BLAS is loaded)

        for info in self._tpc.threadpool_info():
            if info.get("user_api") == "blas":
                return {
                    k: info.get(k)
                    for k in ("internal_api", "version", "architecture")
                    if info.get(k) is not None
                }
        return {}

    @contextlib.contextmanager
    def limit(self, n: int):
        if self._tpc is not None:
            with self._tpc.threadpool_limits(limits=n, user_api="blas"):
                yield
        elif self._set is not None:
            before = self._get()
            self._set(n)
            try:
                yield
            finally:
                self._set(before)
        else:
            yield


_BLAS: _BlasControl | None = None


def blas_control() -> _BlasControl:
    """The process-wide BLAS thread control (``.method`` says how, ``"none"`` if it cannot)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = _BlasControl()
    return _BLAS


# glibc's malloc returns large freed blocks to the OS (munmap, or trimming the heap's top) until
# its dynamic thresholds have grown past them, and every later call then faults those pages in
# again: a fresh process pays that on each call, one that once freed a larger block does not.
# PyTorch's 2-layer bidirectional LSTM at S6 (training, 2 threads) measured 7,000-8,000 page
# faults and 26-33 ms per call in a fresh process, 0 faults and 19 ms with the thresholds
# raised, so a benchmark's ratios depended on what had run before. Raising both thresholds once
# gives every implementation the steady state a long-running process reaches.
_ALLOCATOR: str | None = None
_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its dynamic mmap threshold (64-bit)
_TRIM_THRESHOLD = 64 << 20


def steady_allocator() -> str:
    """Raise glibc's mmap and trim thresholds (``mallopt``) for the rest of the process, so that
    buffers up to 32 MiB freed by one call are reused by the next instead of being returned to
    the OS and faulted in again. Returns a description for a report header (what was done, or
    why nothing was: not glibc, or mallopt refused)."""
    global _ALLOCATOR
    if _ALLOCATOR is not None:
        return _ALLOCATOR
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _ALLOCATOR = "unchanged (not glibc)"
        return _ALLOCATOR
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, _MMAP_THRESHOLD) == 1
        ok = libc.mallopt(m_trim_threshold, _TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError) as e:
        _ALLOCATOR = f"unchanged ({e})"
        return _ALLOCATOR
    _ALLOCATOR = (
        f"glibc mmap/trim thresholds {_MMAP_THRESHOLD >> 20}/{_TRIM_THRESHOLD >> 20} MiB "
        "(freed buffers reused, no page faults per call)"
        if ok
        else "unchanged (mallopt refused)"
    )
    return _ALLOCATOR


@contextlib.contextmanager
def thread_limits(n: int):
    """Run the enclosed code with ``n`` threads for lstm_fast, NumPy's BLAS and torch."""
    import lstm_fast

    before = lstm_fast.get_num_threads()
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    lstm_fast.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with blas_control().limit(n):
            yield
    finally:
        lstm_fast.set_num_threads(before)
        if torch is not None and torch_before is not None:
            torch.set_num_threads(torch_before)


# ------------------------------------------------------------------------------- implementations


def _check(name: str, got: np.ndarray, want: np.ndarray) -> None:
    if not np.allclose(got, want, rtol=CHECK_RTOL, atol=CHECK_ATOL):
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        raise Mismatch(f"mismatch: {name} output differs from lstm_fast by up to {err:.3g}")


def _check_grads(name: str, p: Problem, x, h0, c0) -> None:
    """After one training step of a torch peer: its dx, dh0, dc0 against lstm_fast's (a step
    that computed none, an input that did not require its gradient, does less work)."""
    for what, t, want in zip(("dx", "dh0", "dc0"), (x, h0, c0), p.expected_grads()):
        if t.grad is None:
            raise Mismatch(f"mismatch: {name} training computes no {what} (lstm_fast's does)")
        got = t.grad.numpy()
        # (to the gradient's scale: it sums over up to 4H products, as float32 in both)
        err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
        if not err <= CHECK_ATOL * max(1.0, float(np.max(np.abs(want), initial=0.0))):
            raise Mismatch(f"mismatch: {name} {what} differs from lstm_fast's by up to {err:.3g}")


def _lstm_fast(p: Problem, mode: str, threads: int) -> Callable[[], object]:
    from . import ops

    args = (p.x, p.w_ih, p.w_hh, p.b_ih, p.b_hh, p.h0, p.c0)
    if mode == "forward":
        return lambda: ops.lstm_forward(*args)

    def step():
        y, h_n, c_n, cache = ops.lstm_forward(*args, training=True)
        return ops.lstm_backward(cache, p.dy)

    return step


def _numpy(p: Problem, mode: str, threads: int) -> Callable[[], object]:
    try:
        from . import reference
    except ImportError as e:  # only while the package is being developed
        raise Unavailable(f"not available: {e}") from e

    # The reference always keeps its cache (it has no separate inference path).
    args = (p.x, p.w_ih, p.w_hh, p.b_ih, p.b_hh, p.h0, p.c0)
    if mode == "forward":
        return lambda: reference.lstm_forward(*args)

    def step():
        y, h_n, c_n, cache = reference.lstm_forward(*args)
        return reference.lstm_backward(cache, p.dy)

    return step


def _torch_tensors(torch, p: Problem, training: bool):
    x, h0, c0 = (torch.from_numpy(a.copy()) for a in (p.x, p.h0, p.c0))
    if training:
        for t in (x, h0, c0):
            t.requires_grad_(True)
    return x, h0, c0, torch.from_numpy(p.dy)


def _torch_lstm(p: Problem, mode: str, threads: int) -> Callable[[], object]:
    torch = import_peer("torch")
    torch.set_num_threads(threads)
    m = torch.nn.LSTM(p.I, p.H)
    with torch.no_grad():
        for name, a in (("weight_ih_l0", p.w_ih), ("weight_hh_l0", p.w_hh)):
            getattr(m, name).copy_(torch.from_numpy(a))
        for name, a in (("bias_ih_l0", p.b_ih), ("bias_hh_l0", p.b_hh)):
            getattr(m, name).copy_(torch.from_numpy(a))
    x, h0, c0, dy = _torch_tensors(torch, p, mode == "training")
    hx = (h0[None], c0[None])  # (num_layers=1, B, H)

    with torch.inference_mode():
        y, _ = m(x.detach(), (hx[0].detach(), hx[1].detach()))
    _check("torch.nn.LSTM", y.numpy(), p.expected()[0])

    if mode == "forward":
        m.eval()

        def fwd():
            with torch.inference_mode():
                return m(x, hx)

        return fwd

    m.train()
    params = list(m.parameters())

    def step():
        for t in (x, h0, c0, *params):
            t.grad = None
        y, _ = m(x, (h0[None], c0[None]))
        y.backward(dy)

    step()
    _check_grads("torch.nn.LSTM", p, x, h0, c0)
    return step


def _torch_cell(p: Problem, mode: str, threads: int) -> Callable[[], object]:
    torch = import_peer("torch")
    if p.T != 1:
        raise Unavailable("n/a: one step only (T = 1)")
    torch.set_num_threads(threads)
    cell = torch.nn.LSTMCell(p.I, p.H)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(p.w_ih))
        cell.weight_hh.copy_(torch.from_numpy(p.w_hh))
        cell.bias_ih.copy_(torch.from_numpy(p.b_ih))
        cell.bias_hh.copy_(torch.from_numpy(p.b_hh))
    x, h0, c0, dy = _torch_tensors(torch, p, mode == "training")
    x1, dy1 = x[0], dy[0]

    with torch.inference_mode():
        h, _ = cell(x1.detach(), (h0.detach(), c0.detach()))
    _check("torch.nn.LSTMCell", h.numpy(), p.expected()[1])

    if mode == "forward":

        def fwd():
            with torch.inference_mode():
                return cell(x1, (h0, c0))

        return fwd

    params = list(cell.parameters())

    def step():
        for t in (x, h0, c0, *params):
            t.grad = None
        h, _ = cell(x[0], (h0, c0))
        h.backward(dy1)

    step()
    _check_grads("torch.nn.LSTMCell", p, x, h0, c0)
    return step


# PyTorch's gate blocks are i, f, g, o; ONNX's LSTM wants i, o, f, c.
ONNX_GATE_ORDER = (0, 3, 1, 2)


def _to_onnx_gates(a: np.ndarray, H: int) -> np.ndarray:
    """Reorder the four gate blocks (first axis, 4H) from PyTorch's i,f,g,o to ONNX's i,o,f,c."""
    return np.concatenate([a[k * H : (k + 1) * H] for k in ONNX_GATE_ORDER], axis=0)


def onnx_lstm_model(p: Problem):
    """A one-node ONNX model: ``LSTM(X, W, R, B, '', initial_h, initial_c) -> Y, Y_h, Y_c``.

    Weights are initializers (constant, as in a deployed model); X, initial_h, initial_c inputs.
    """
    onnx = import_peer("onnx")
    from onnx import TensorProto, helper, numpy_helper

    H = p.H
    W = _to_onnx_gates(p.w_ih, H)[None]  # (1, 4H, I)
    R = _to_onnx_gates(p.w_hh, H)[None]  # (1, 4H, H)
    Bias = np.concatenate([_to_onnx_gates(p.b_ih, H), _to_onnx_gates(p.b_hh, H)])[None]  # (1, 8H)
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name)
        for name, a in (("W", W), ("R", R), ("B", Bias))
    ]
    node = helper.make_node(
        "LSTM",
        ["X", "W", "R", "B", "", "initial_h", "initial_c"],
        ["Y", "Y_h", "Y_c"],
        hidden_size=H,
        direction="forward",
    )
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "lstm_fast_bench",
        [
            helper.make_tensor_value_info("X", f32, [p.T, p.B, p.I]),
            helper.make_tensor_value_info("initial_h", f32, [1, p.B, H]),
            helper.make_tensor_value_info("initial_c", f32, [1, p.B, H]),
        ],
        [
            helper.make_tensor_value_info("Y", f32, [p.T, 1, p.B, H]),
            helper.make_tensor_value_info("Y_h", f32, [1, p.B, H]),
            helper.make_tensor_value_info("Y_c", f32, [1, p.B, H]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # old enough for any onnxruntime that has opset 14
    onnx.checker.check_model(model)
    return model


def _onnxruntime(p: Problem, mode: str, threads: int) -> Callable[[], object]:
    ort = import_peer("onnxruntime")
    if mode != "forward":
        raise Unavailable("n/a: forward only")
    model = onnx_lstm_model(p)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"X": p.x, "initial_h": p.h0[None], "initial_c": p.c0[None]}
    y = sess.run(["Y"], feeds)[0]  # (T, 1, B, H)
    _check("onnxruntime", y[:, 0], p.expected()[0])
    return lambda: sess.run(None, feeds)


_MAKERS = {
    "lstm_fast": _lstm_fast,
    "numpy": _numpy,
    "torch.nn.LSTM": _torch_lstm,
    "torch.nn.LSTMCell": _torch_cell,
    "onnxruntime": _onnxruntime,
}


def make(name: str, problem: Problem, mode: str, threads: int) -> Callable[[], object]:
    """Prepare implementation ``name`` for ``(problem, mode, threads)``; return one-call closure.

    Call it inside :func:`thread_limits` ``(threads)``. Raises :class:`Unavailable` or
    :class:`Mismatch` (see the module docstring).
    """
    if name not in _MAKERS:
        raise ValueError(f"unknown implementation {name!r}; expected one of {', '.join(IMPLS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return _MAKERS[name](problem, mode, threads)
