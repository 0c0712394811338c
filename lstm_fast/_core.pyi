"""Type stub of lstm_fast._core, the private C++ core (pybind11; csrc/bindings*.cpp).

Use lstm_fast.ops and the layers instead: their argument conversion and checks come first.
Shapes use the legend of csrc/shapes.h: T steps, B batch, I input, H hidden, P projection,
G gate width (4H LSTM, 3H GRU, H RNN). Every float array is float32, C-contiguous; nothing is
converted, a wrong dtype, rank, shape or layout raises an error naming the argument.
Backward calls allocate dx, dh0, dc0 and add (+=) into given weight gradients (allocated and
zeroed when None). tests/test_stubs.py checks this file against the compiled module.
"""

from typing import Any, Callable, Literal, Optional

import numpy as np
from numpy.typing import NDArray
from typing_extensions import TypeAlias

# Stub-only aliases (annotated TypeAlias: not names of the module).
_F32: TypeAlias = NDArray[np.float32]
_I64: TypeAlias = NDArray[np.int64]
_Ints: TypeAlias = NDArray[np.integer[Any]]  # any integer dtype (converted to int64)
_Mode: TypeAlias = Literal["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
_Schedule: TypeAlias = Literal["auto", "units", "batch", "serial"]

# ---- caches: what a training forward keeps for backward (not constructible from Python) -------

class LSTMCache:
    """Kept by lstm_forward / lstm_forward_embedded(..., training=True) for lstm_backward."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, B, I, H)."""
    @property
    def gates(self) -> _F32:
        """(T, B, 4H) post-activation gates i, f, g, o (packed rows with batch_sizes)."""
    @property
    def cells(self) -> _F32:
        """(T, B, H) cell states."""
    @property
    def batch_sizes(self) -> Optional[_I64]:
        """The forward's batch_sizes (int64 (T,), a copy), or None."""
    @property
    def sorted_indices(self) -> Optional[_I64]:
        """The forward's sorted_indices (int64 (B,), a copy), or None."""
    @property
    def nbytes(self) -> int:
        """Bytes of the saved gates and cells."""

class LSTMProjCache:
    """Kept by lstm_proj_forward(..., training=True) for lstm_proj_backward."""

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(T, B, I, H, P)."""
    @property
    def gates(self) -> _F32:
        """(T, B, 4H) post-activation gates i, f, g, o."""
    @property
    def cells(self) -> _F32:
        """(T, B, H) cell states."""
    @property
    def m(self) -> _F32:
        """(T, B, H) o * tanh(c), before the projection."""
    @property
    def batch_sizes(self) -> Optional[_I64]:
        """The forward's batch_sizes (int64 (T,), a copy), or None."""
    @property
    def nbytes(self) -> int:
        """Bytes of the saved gates, cells and m."""

class GRUCache:
    """Kept by gru_forward(..., training=True) for gru_backward."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, B, I, H)."""
    @property
    def batch_sizes(self) -> Optional[_I64]:
        """The forward's batch_sizes (int64 (T,), a copy), or None."""
    @property
    def nbytes(self) -> int:
        """Bytes of the saved activations."""

class RNNCache:
    """Kept by rnn_forward(..., training=True) for rnn_backward."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, B, I, H)."""
    @property
    def batch_sizes(self) -> Optional[_I64]:
        """The forward's batch_sizes (int64 (T,), a copy), or None."""
    @property
    def nbytes(self) -> int:
        """0: the RNN saves nothing of its own (its backward reads y)."""

# ---- LSTM ---------------------------------------------------------------------------------------

def lstm_forward(
    x: _F32,
    weight_ih: _F32,
    weight_hh: _F32,
    bias_ih: Optional[_F32],
    bias_hh: Optional[_F32],
    h0: Optional[_F32],
    c0: Optional[_F32],
    training: bool,
    batch_sizes: Optional[_I64] = None,
    sorted_indices: Optional[_I64] = None,
) -> tuple[_F32, _F32, _F32, Optional[LSTMCache]]:
    """(y (T, B, H), h_n (B, H), c_n (B, H), cache or None unless training).

    x (T, B, I), weight_ih (4H, I), weight_hh (4H, H), biases (4H,), h0/c0 (B, H);
    batch_sizes (T,) and sorted_indices (B,) int64 as in ops.lstm_forward."""

def lstm_backward(
    cache: LSTMCache,
    dy: Optional[_F32],
    dh_n: Optional[_F32],
    dc_n: Optional[_F32],
    dweight_ih: Optional[_F32] = None,
    dweight_hh: Optional[_F32] = None,
    dbias_ih: Optional[_F32] = None,
    dbias_hh: Optional[_F32] = None,
    dembedding: Optional[_F32] = None,
    *,
    need_dx: bool = True,
) -> tuple[Optional[_F32], _F32, _F32, _F32, _F32, Optional[_F32], Optional[_F32]]:
    """(dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh).

    dx is None when not need_dx; for an embedded cache it is dembedding (V, I) instead. The
    bias gradients are None when the forward had no bias."""

def lstm_forward_embedded(
    ids: _Ints,
    embedding: _F32,
    weight_ih: _F32,
    weight_hh: _F32,
    bias_ih: Optional[_F32],
    bias_hh: Optional[_F32],
    h0: Optional[_F32],
    c0: Optional[_F32],
    training: bool,
) -> tuple[_F32, _F32, _F32, Optional[LSTMCache]]:
    """lstm_forward(embedding[ids], ...) without forming x: ids (T, B) in [0, V), embedding
    (V, I). The cache's backward adds the input gradient into dembedding."""

def lstm_proj_forward(
    x: _F32,
    weight_ih: _F32,
    weight_hh: _F32,
    bias_ih: Optional[_F32],
    bias_hh: Optional[_F32],
    h0: Optional[_F32],
    c0: Optional[_F32],
    weight_hr: _F32,
    training: bool,
    batch_sizes: Optional[_I64] = None,
) -> tuple[_F32, _F32, _F32, Optional[LSTMProjCache]]:
    """LSTM with projection: (y (T, B, P), h_n (B, P), c_n (B, H), cache or None).

    weight_hh (4H, P), weight_hr (P, H) with 0 < P < H, h0 (B, P), c0 (B, H)."""

def lstm_proj_backward(
    cache: LSTMProjCache,
    dy: Optional[_F32],
    dh_n: Optional[_F32],
    dc_n: Optional[_F32],
    dweight_ih: Optional[_F32] = None,
    dweight_hh: Optional[_F32] = None,
    dbias_ih: Optional[_F32] = None,
    dbias_hh: Optional[_F32] = None,
    dweight_hr: Optional[_F32] = None,
    *,
    need_dx: bool = True,
) -> tuple[Optional[_F32], _F32, _F32, _F32, _F32, Optional[_F32], Optional[_F32], _F32]:
    """(dx, dh0 (B, P), dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh, dweight_hr (P, H))."""

def _proj_forward_workspace_floats(T: int, B: int, I: int, H: int, P: int, training: bool) -> int:
    """Floats of scratch memory lstm_proj_forward takes for these sizes (size tests)."""

def _proj_choose_schedule(T: int, B: int, I: int, H: int, P: int, threads: int) -> str:
    """The recurrence schedule lstm_proj_forward picks for these sizes."""

# ---- GRU and vanilla RNN ------------------------------------------------------------------------

def gru_forward(
    x: _F32,
    weight_ih: _F32,
    weight_hh: _F32,
    bias_ih: Optional[_F32],
    bias_hh: Optional[_F32],
    h0: Optional[_F32],
    training: bool,
    batch_sizes: Optional[_I64] = None,
) -> tuple[_F32, _F32, Optional[GRUCache]]:
    """(y (T, B, H), h_n (B, H), cache or None): weights (3H, I), (3H, H), gates r, z, n."""

def gru_backward(
    cache: GRUCache,
    dy: Optional[_F32],
    dh_n: Optional[_F32],
    dweight_ih: Optional[_F32] = None,
    dweight_hh: Optional[_F32] = None,
    dbias_ih: Optional[_F32] = None,
    dbias_hh: Optional[_F32] = None,
    *,
    need_dx: bool = True,
) -> tuple[Optional[_F32], _F32, _F32, _F32, Optional[_F32], Optional[_F32]]:
    """(dx or None, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)."""

def rnn_forward(
    x: _F32,
    weight_ih: _F32,
    weight_hh: _F32,
    bias_ih: Optional[_F32],
    bias_hh: Optional[_F32],
    h0: Optional[_F32],
    nonlinearity: Literal["tanh", "relu"],
    training: bool,
    batch_sizes: Optional[_I64] = None,
) -> tuple[_F32, _F32, Optional[RNNCache]]:
    """(y (T, B, H), h_n (B, H), cache or None): weights (H, I), (H, H)."""

def rnn_backward(
    cache: RNNCache,
    dy: Optional[_F32],
    dh_n: Optional[_F32],
    dweight_ih: Optional[_F32] = None,
    dweight_hh: Optional[_F32] = None,
    dbias_ih: Optional[_F32] = None,
    dbias_hh: Optional[_F32] = None,
    *,
    need_dx: bool = True,
) -> tuple[Optional[_F32], _F32, _F32, _F32, Optional[_F32], Optional[_F32]]:
    """(dx or None, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)."""

# ---- streaming: one step into caller-owned buffers ----------------------------------------------

def step_workspace_size(mode: _Mode, B: int, I: int, H: int) -> int:
    """Floats of workspace step_into needs for a batch of B."""

def step_into(
    mode: _Mode,
    x: _F32,
    h: _F32,
    c: Optional[_F32],
    weight_ih: _F32,
    weight_hh: _F32,
    bias_ih: Optional[_F32],
    bias_hh: Optional[_F32],
    h_out: _F32,
    c_out: Optional[_F32],
    workspace: _F32,
) -> None:
    """One step written into h_out (and c_out for the LSTM): x (B, I), h and c (B, H).

    c and c_out are read only for "LSTM"; outputs must not overlap any input."""

# ---- building blocks ----------------------------------------------------------------------------

def gemm(
    a: _F32,
    b: _F32,
    trans_a: bool = False,
    trans_b: bool = False,
    bias: Optional[_F32] = None,
    out: Optional[_F32] = None,
    accumulate: bool = False,
    a_row_sums: Optional[_F32] = None,
) -> _F32:
    """op(a) @ op(b) (+ bias), (M, N); into out (+= with accumulate); a_row_sums += rows of
    op(a)."""

def softmax_xent(z: _F32, targets: _Ints, scale: float) -> NDArray[np.float64]:
    """Per-row NLL (N,) float64 of z (N, V) and targets (N,) (-1: ignored); z becomes
    scale * (softmax - onehot) in place."""

def adam_step(
    param: _F32,
    grad: _F32,
    exp_avg: _F32,
    exp_avg_sq: _F32,
    beta1: float,
    beta2: float,
    step_size: float,
    bias_correction2_sqrt: float,
    eps: float,
    l2: float = 0.0,
    decay: float = 1.0,
    zero_grad: bool = False,
) -> None:
    """One Adam/AdamW step in place on param, exp_avg, exp_avg_sq (grad zeroed if zero_grad)."""

def sumsq(x: _F32) -> float:
    """sum(x**2) in float64, the same for any thread count."""

def take_rows(a: _F32, index: _Ints) -> _F32:
    """a[:, index, :] of a (T, B, F): (T, N, F)."""

def index_add_rows(out: _F32, ids: _Ints, src: _F32) -> None:
    """out[ids[n]] += src[n] in order: out (V, E), ids (N,), src (N, E)."""

def sigmoid(x: _F32) -> _F32:
    """The kernels' sigmoid of a (N,) array."""

def tanh(x: _F32) -> _F32:
    """The kernels' tanh of a (N,) array."""

def _find_nonfinite(a: object) -> Optional[tuple[int, bool]]:
    """(flat index, is_nan) of the first NaN or +-Inf; None if all finite or not float32
    C-contiguous."""

# ---- threads, memory, ISA -----------------------------------------------------------------------

def set_num_threads(n: int) -> None:
    """Threads of later calls, in [1, max_threads()]."""

def get_num_threads() -> int:
    """Threads asked for (1 in a forked child, see lstm_fast.get_num_threads)."""

def _team_threads() -> int:
    """Threads a call runs on now: get_num_threads(), at most cpu_info()["cpus"]."""

def _wake_state() -> dict[str, Any]:
    """The team's wake record: slow_gap_ns (the idle gap after which its workers were seen to
    wake slowly, None if never), last_region_end_ns, now_ns, regions (run so far), slow (whether
    small calls now run on one thread)."""

def _set_slow_wake_gap(ns: int) -> None:
    """Tests: set that gap (0: none known)."""

def _note_team_region(start_ns: int, late_ns: int) -> None:
    """Tests: record a region that started at start_ns whose first worker came late_ns after."""

def _set_cpu_limit(n: int) -> None:
    """Tests: allow teams of up to n threads whatever the CPUs (0: the CPUs again)."""

def max_threads() -> int:
    """The largest thread count accepted: 4 x the hardware threads, at least 64."""

def _set_local_threads(n: int) -> None:
    """A per-Python-thread override of the thread count (0: none)."""

def _get_local_threads() -> int:
    """This Python thread's override (0: none)."""

def _run_pair(f0: Callable[[], Any], f1: Callable[[], Any]) -> tuple[Any, Any]:
    """(f0(), f1()) at once on two threads of the OpenMP team (the caller's runs f0), each in a
    region of one thread; an exception of either is raised once both are done (f0's first)."""

def empty_cache() -> None:
    """Return the kept scratch blocks to the system."""

def cached_bytes() -> int:
    """Bytes of scratch blocks kept for reuse."""

def cpu_info() -> dict[str, Any]:
    """isa, available_isas, num_threads, cpus, cpu_quota, forked_serial, openmp, schedule,
    gemm_tile, lstm_units_per_block."""

def _parse_cpu_quota(text: str) -> Optional[float]:
    """The CPU quota (quota / period) a cgroup file's text sets: v2 cpu.max ("QUOTA PERIOD",
    "max PERIOD"), or v1 cpu.cfs_quota_us and cpu.cfs_period_us joined by a space (quota -1:
    none); None for no limit or malformed text."""

def _set_isa(name: str) -> None:
    """Switch the active kernels ("scalar", "generic", "avx2", "avx512"; tests)."""

def _set_schedule(name: _Schedule) -> None:
    """Force the recurrence schedule (LSTM_FAST_SCHEDULE at run time)."""

def _set_unpacked_backward(on: bool) -> None:
    """Allow (True, the default) or forbid the backward's unpacked path for few rows in all
    (T * B <= 16, an LSTM's batch of one up to 4 steps, with a projection up to 4 rows: weights
    read in place, nothing packed); tests and A/B timing."""

def _unpacked_backward() -> bool:
    """Whether the backward's unpacked path is allowed (_set_unpacked_backward)."""

def _choose_schedule(T: int, B: int, I: int, H: int, threads: int) -> str:
    """The recurrence schedule lstm_forward picks for these sizes."""
