r"""The NumPy reference: LSTM, GRU and vanilla RNN layers written for clarity, not speed.

It is the oracle the C++ kernels are tested against and the baseline the benchmarks measure,
so it follows PyTorch's maths, gate order and weight layout exactly, and its functions have the
same signatures as those of :mod:`lstm_fast.ops`. It imports only NumPy, works in the dtype of
its input ``x`` (float32 or float64; the other arguments are cast to it) and loops over time
steps only, never over elements.

Shape legend (as in ``csrc/``): ``T`` steps, ``B`` batch, ``I`` input size, ``H`` hidden size,
``P`` projection size (``P = H`` without projection), ``G`` gate width (4H LSTM, 3H GRU, H RNN).
Arrays are sequence-major: ``x`` is (T, B, I), ``y`` is (T, B, H) (LSTM: (T, B, P)).
Weights are PyTorch's: ``weight_ih`` (G, I), ``weight_hh`` (G, H) (LSTM: (4H, P)),
``bias_ih`` and ``bias_hh`` (G,) or None (PyTorch's ``bias=False``).

LSTM (gate order i, f, g, o; the rows of the weights are stacked in that order)::

    i = σ(x W_ii^T + b_ii + h W_hi^T + b_hi)      f = σ(x W_if^T + b_if + h W_hf^T + b_hf)
    g = tanh(x W_ig^T + b_ig + h W_hg^T + b_hg)   o = σ(x W_io^T + b_io + h W_ho^T + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')                   (with projection: h' = (o * tanh(c')) W_hr^T, (B, P))

GRU (gate order r, z, n; note b_hn sits inside the reset product)::

    r = σ(x W_ir^T + b_ir + h W_hr^T + b_hr)      z = σ(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
    h' = (1 - z) * n + z * h

RNN::

    h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),   act = tanh or relu

Variable lengths (``lengths``, int (B,), each in [0, T], any order): row b takes part in steps
``t < lengths[b]`` only. At the other steps its state is carried unchanged and its output ``y`` is
zero, so ``h_n`` (and ``c_n``) is the state after the sequence's last real step — what PyTorch
returns for a ``pack_padded_sequence(..., enforce_sorted=False)`` input.

Reverse (``reverse=True``): each sequence is processed from its own last real step
``lengths[b] - 1`` down to 0, and its outputs are written at their original time positions — the
reverse direction of a bidirectional PyTorch layer. (Looping ``t = T-1 .. 0`` with the same rule
"row b is updated only while ``t < lengths[b]``" does exactly that: a row keeps its initial state
until its last real step comes round.)

Backward is full back-propagation through time. Given upstream gradients ``dy`` (of ``y``),
``dh_n`` and ``dc_n`` (each may be None for zero), it returns the gradients of
``L = sum(dy * y) + sum(dh_n * h_n) + sum(dc_n * c_n)`` with respect to ``x``, the initial state and
every weight, freshly allocated. As in the kernels, the recurrent loop produces only the gate
gradients ``dZ_t`` and the state gradients; the weight, bias and input gradients are then large
products over all T·B rows at once. The caches keep post-activation gates, so derivatives come
from outputs: σ' = s (1 - s), tanh' = 1 - t².
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "GRUCache",
    "GRUGrads",
    "LSTMCache",
    "LSTMGrads",
    "RNNCache",
    "RNNGrads",
    "gru_backward",
    "gru_flops",
    "gru_forward",
    "gru_step",
    "init_gru_weights",
    "init_lstm_weights",
    "init_rnn_weights",
    "lstm_backward",
    "lstm_flops",
    "lstm_forward",
    "lstm_step",
    "rnn_backward",
    "rnn_flops",
    "rnn_forward",
    "rnn_step",
    "sigmoid",
]


# ---- results and caches -----------------------------------------------------------------------


class LSTMGrads(NamedTuple):
    """Gradients of an LSTM layer, as returned by :func:`lstm_backward`."""

    dx: np.ndarray  # (T, B, I)
    dh0: np.ndarray  # (B, P)
    dc0: np.ndarray  # (B, H)
    dweight_ih: np.ndarray  # (4H, I)
    dweight_hh: np.ndarray  # (4H, P)
    dbias_ih: np.ndarray | None  # (4H,) or None without bias_ih
    dbias_hh: np.ndarray | None  # (4H,) or None without bias_hh
    dweight_hr: np.ndarray | None = None  # (P, H) or None without projection


class GRUGrads(NamedTuple):
    """Gradients of a GRU layer, as returned by :func:`gru_backward`."""

    dx: np.ndarray  # (T, B, I)
    dh0: np.ndarray  # (B, H)
    dweight_ih: np.ndarray  # (3H, I)
    dweight_hh: np.ndarray  # (3H, H)
    dbias_ih: np.ndarray | None  # (3H,) or None
    dbias_hh: np.ndarray | None  # (3H,) or None


class RNNGrads(NamedTuple):
    """Gradients of a vanilla RNN layer, as returned by :func:`rnn_backward`."""

    dx: np.ndarray  # (T, B, I)
    dh0: np.ndarray  # (B, H)
    dweight_ih: np.ndarray  # (H, I)
    dweight_hh: np.ndarray  # (H, H)
    dbias_ih: np.ndarray | None  # (H,) or None
    dbias_hh: np.ndarray | None  # (H,) or None


class LSTMCache(NamedTuple):
    """What :func:`lstm_backward` needs from :func:`lstm_forward` (index t = time position)."""

    x: np.ndarray  # (T, B, I)
    weight_ih: np.ndarray  # (4H, I)
    weight_hh: np.ndarray  # (4H, P)
    weight_hr: np.ndarray | None  # (P, H) or None
    has_bias_ih: bool
    has_bias_hh: bool
    valid: np.ndarray | None  # (T, B) bool: t < lengths[b]; None when all steps are real
    reverse: bool
    h_prev: np.ndarray  # (T, B, P) state h entering the step at t
    c_prev: np.ndarray  # (T, B, H) state c entering the step at t
    gates: np.ndarray  # (T, B, 4H) post-activation i, f, g, o
    tanh_c: np.ndarray  # (T, B, H) tanh(c_t)
    m: np.ndarray | None  # (T, B, H) o * tanh(c_t) before the projection, or None


class GRUCache(NamedTuple):
    """What :func:`gru_backward` needs from :func:`gru_forward` (index t = time position)."""

    x: np.ndarray  # (T, B, I)
    weight_ih: np.ndarray  # (3H, I)
    weight_hh: np.ndarray  # (3H, H)
    has_bias_ih: bool
    has_bias_hh: bool
    valid: np.ndarray | None  # (T, B) bool or None
    reverse: bool
    h_prev: np.ndarray  # (T, B, H)
    gates: np.ndarray  # (T, B, 3H) post-activation r, z, n
    hw_n: np.ndarray  # (T, B, H) h W_hn^T + b_hn, the term the reset gate multiplies


class RNNCache(NamedTuple):
    """What :func:`rnn_backward` needs from :func:`rnn_forward` (index t = time position)."""

    x: np.ndarray  # (T, B, I)
    weight_ih: np.ndarray  # (H, I)
    weight_hh: np.ndarray  # (H, H)
    has_bias_ih: bool
    has_bias_hh: bool
    valid: np.ndarray | None  # (T, B) bool or None
    reverse: bool
    nonlinearity: str
    h_prev: np.ndarray  # (T, B, H)
    h_new: np.ndarray  # (T, B, H) post-activation output of the step at t


# ---- helpers ----------------------------------------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function σ(z) = 1 / (1 + exp(-z)), without overflow for large |z|."""
    e = np.exp(-np.abs(z))  # in (0, 1]: never overflows
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _real(a, name: str) -> np.ndarray:
    """``a`` as a NumPy array of a real numeric dtype (float or integer), not cast yet: complex
    values lost their imaginary part in the cast (a ComplexWarning only), strings were parsed
    as numbers, booleans, objects and timedelta64 taken as numbers, and a masked array's
    masked values used as data; each raises naming the argument."""
    if isinstance(a, np.ma.MaskedArray) and np.ma.count_masked(a):
        raise ValueError(
            f"{name}: expected an array without masked values, got a numpy.ma.MaskedArray with "
            f"{np.ma.count_masked(a)} masked (fill them explicitly, e.g. a.filled(0.0))"
        )
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged nesting and the like
        raise TypeError(f"{name}: expected a real numeric array ({e})") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def _input(x, name: str = "x", ndim: int = 3) -> np.ndarray:
    """x as an array of a floating dtype (integers become float64); checks its rank."""
    x = _real(x, name)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    return x


def _cast(a, dtype, name: str, shape: tuple) -> np.ndarray | None:
    """a cast to dtype and checked against shape; None stays None."""
    if a is None:
        return None
    a = np.asarray(_real(a, name), dtype=dtype)
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")
    return a


def _state(a, dtype, name: str, shape: tuple) -> np.ndarray:
    """Initial state: zeros when None."""
    a = _cast(a, dtype, name, shape)
    return np.zeros(shape, dtype) if a is None else a


def _gate_rows(weight_ih, gates: int, I: int) -> int:
    """H from weight_ih (gates * H, I)."""
    w = np.asarray(weight_ih)
    if w.ndim != 2 or w.shape[0] % gates or w.shape[1] != I:
        raise ValueError(f"weight_ih: expected shape ({gates}H, I={I}) for some H, got {w.shape}")
    return w.shape[0] // gates


def _valid_mask(lengths, T: int, B: int) -> np.ndarray | None:
    """(T, B) bool, True where t < lengths[b] (a real step); None when lengths is None."""
    if lengths is None:
        return None
    if isinstance(lengths, np.ma.MaskedArray) and np.ma.count_masked(lengths):
        raise ValueError("lengths: expected an array without masked values")
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths: expected an integer array, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths: expected shape (B={B},), got {lengths.shape}")
    if B and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths: expected values in [0, T={T}], got {lengths.tolist()}")
    return np.arange(T)[:, None] < lengths[None, :]


def _time_steps(T: int, reverse: bool) -> range:
    """Time positions in processing order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _upstream(d, dtype, name: str, shape: tuple) -> np.ndarray:
    """An upstream gradient as a fresh array of dtype; zeros when None."""
    if d is None:
        return np.zeros(shape, dtype)
    return _cast(d, dtype, name, shape).copy()


def _x_used(x: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """x with the padding (t >= lengths[b]) zeroed, so that NaN or inf there changes nothing."""
    return x if valid is None else np.where(valid[:, :, None], x, 0).astype(x.dtype, copy=False)


def _rows(a: np.ndarray) -> np.ndarray:
    """(T, B, F) -> (T*B, F): all steps as the rows of one large matrix product."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2])


# ---- LSTM -------------------------------------------------------------------------------------


def _lstm_args(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr):
    """Checks and casts the arguments of an LSTM call; returns them with (T, B, I, H, P)."""
    x = _input(x)
    dtype = x.dtype
    T, B, I = x.shape
    H = _gate_rows(weight_ih, 4, I)
    weight_ih = _cast(weight_ih, dtype, "weight_ih", (4 * H, I))
    P = H
    if weight_hr is not None:
        w = np.asarray(weight_hr)
        if w.ndim != 2 or w.shape[1] != H:
            raise ValueError(f"weight_hr: expected shape (P, H={H}), got {w.shape}")
        P = w.shape[0]
        weight_hr = _cast(w, dtype, "weight_hr", (P, H))
    weight_hh = _cast(weight_hh, dtype, "weight_hh", (4 * H, P))
    bias_ih = _cast(bias_ih, dtype, "bias_ih", (4 * H,))
    bias_hh = _cast(bias_hh, dtype, "bias_hh", (4 * H,))
    h0 = _state(h0, dtype, "h0", (B, P))
    c0 = _state(c0, dtype, "c0", (B, H))
    return x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr, (T, B, I, H, P)


def _matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """a @ w for a of shape (..., K): as one 2-D product over all leading rows (NumPy runs a
    stacked 3-D product several times slower)."""
    rows = a.reshape(int(np.prod(a.shape[:-1])), a.shape[-1])
    return (rows @ w).reshape(*a.shape[:-1], w.shape[1])


def _input_projection(x, weight_ih, *biases):
    """x W_ih^T + biases for all time steps at once: (..., I) -> (..., G)."""
    xw = _matmul(x, weight_ih.T)
    for b in biases:
        if b is not None:
            xw = xw + b
    return xw


def _lstm_cell(xw_t, h, c, weight_hh, weight_hr):
    """One LSTM step, given xw_t = x_t W_ih^T + b_ih + b_hh (B, 4H) and the state h (B, P), c.

    Returns h', c', the post-activation gates (B, 4H), tanh(c') and m = o * tanh(c').
    """
    H = c.shape[1]
    z = xw_t + h @ weight_hh.T  # (B, 4H) gate pre-activations
    i = sigmoid(z[:, 0 * H : 1 * H])  # input gate
    f = sigmoid(z[:, 1 * H : 2 * H])  # forget gate
    g = np.tanh(z[:, 2 * H : 3 * H])  # cell candidate
    o = sigmoid(z[:, 3 * H : 4 * H])  # output gate
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    m = o * tanh_c
    h_new = m if weight_hr is None else m @ weight_hr.T  # projection: (B, H) -> (B, P)
    return h_new, c_new, np.concatenate([i, f, g, o], axis=1), tanh_c, m


def lstm_forward(
    x,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    h0=None,
    c0=None,
    *,
    weight_hr=None,
    lengths=None,
    reverse=False,
):
    """LSTM over a whole sequence, one layer, one direction (PyTorch's maths and gate order).

    Args:
        x: (T, B, I) input sequence; its dtype is the dtype of the computation.
        weight_ih: (4H, I), rows in gate order i, f, g, o. weight_hh: (4H, P).
        bias_ih, bias_hh: (4H,) or None (no bias).
        h0: (B, P), c0: (B, H) initial state, or None for zeros.
        weight_hr: (P, H) projection of the hidden state (PyTorch's ``proj_size``), or None.
        lengths: (B,) integers in [0, T], or None (all sequences have T steps).
        reverse: process each sequence from its last real step down to step 0.

    Returns:
        ``(y, h_n, c_n, cache)``: y (T, B, P) (zero past each sequence's length), h_n (B, P) and
        c_n (B, H) the state after each sequence's last processed step, and the cache for
        :func:`lstm_backward`.

    Example::

        >>> import numpy as np
        >>> from lstm_fast import reference as ref
        >>> w = ref.init_lstm_weights(10, 20, seed=0)
        >>> x = np.ones((5, 3, 10), np.float32)
        >>> y, h_n, c_n, cache = ref.lstm_forward(x, **w)
        >>> y.shape, h_n.shape, y.dtype
        ((5, 3, 20), (3, 20), dtype('float32'))
    """
    x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr, (T, B, I, H, P) = _lstm_args(
        x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr
    )
    dtype = x.dtype
    valid = _valid_mask(lengths, T, B)
    x = _x_used(x, valid)  # the padding never enters the computation

    # The input projection does not depend on the state: one product for all T steps.
    xw = _input_projection(x, weight_ih, bias_ih, bias_hh)  # (T, B, 4H)

    y = np.zeros((T, B, P), dtype)
    h_prev = np.empty((T, B, P), dtype)
    c_prev = np.empty((T, B, H), dtype)
    gates = np.empty((T, B, 4 * H), dtype)
    tanh_c = np.empty((T, B, H), dtype)
    m = np.empty((T, B, H), dtype) if weight_hr is not None else None

    h, c = h0, c0
    for t in _time_steps(T, reverse):
        h_prev[t], c_prev[t] = h, c
        h_new, c_new, gates[t], tanh_c[t], m_t = _lstm_cell(xw[t], h, c, weight_hh, weight_hr)
        if m is not None:
            m[t] = m_t
        if valid is None:
            h, c, y[t] = h_new, c_new, h_new
        else:
            # Rows past their length keep their state and output zero.
            real = valid[t][:, None]
            h = np.where(real, h_new, h)
            c = np.where(real, c_new, c)
            y[t] = np.where(real, h_new, 0)

    cache = LSTMCache(
        x=x,
        weight_ih=weight_ih,
        weight_hh=weight_hh,
        weight_hr=weight_hr,
        has_bias_ih=bias_ih is not None,
        has_bias_hh=bias_hh is not None,
        valid=valid,
        reverse=bool(reverse),
        h_prev=h_prev,
        c_prev=c_prev,
        gates=gates,
        tanh_c=tanh_c,
        m=m,
    )
    return y, np.array(h, dtype), np.array(c, dtype), cache


def lstm_backward(cache: LSTMCache, dy=None, dh_n=None, dc_n=None) -> LSTMGrads:
    """Backward (BPTT) through :func:`lstm_forward`.

    Args:
        cache: the cache returned by :func:`lstm_forward`; may be used again.
        dy: (T, B, P) gradient of the loss w.r.t. y, or None for zero.
        dh_n: (B, P) and dc_n: (B, H) gradients w.r.t. h_n and c_n, or None for zero.

    Returns:
        :class:`LSTMGrads` ``(dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh,
        dweight_hr)``; a bias gradient is None when that bias was None (otherwise the two are
        equal: both biases enter the gates the same way), ``dweight_hr`` is None without
        projection.
    """
    x, weight_ih, weight_hh, weight_hr = cache.x, cache.weight_ih, cache.weight_hh, cache.weight_hr
    valid = cache.valid
    dtype = x.dtype
    T, B, I = x.shape
    H = cache.c_prev.shape[2]
    P = weight_hh.shape[1]

    dy = _upstream(dy, dtype, "dy", (T, B, P))
    dh = _upstream(dh_n, dtype, "dh_n", (B, P))  # gradient w.r.t. the carried state h
    dc = _upstream(dc_n, dtype, "dc_n", (B, H))  # gradient w.r.t. the carried state c
    dz = np.zeros((T, B, 4 * H), dtype)  # gradients w.r.t. the gate pre-activations
    dweight_hr = np.zeros((P, H), dtype) if weight_hr is not None else None

    # Walk the steps in the opposite order of the forward pass.
    for t in reversed(_time_steps(T, cache.reverse)):
        i, f, g, o = np.split(cache.gates[t], 4, axis=1)
        tanh_c = cache.tanh_c[t]

        # Gradient w.r.t. this step's outputs: from y[t] and from the steps that followed.
        dh_t = dh + dy[t]
        dc_t = dc
        if valid is not None:
            # A row past its length did not take this step: its state gradient passes straight
            # through to the previous state, and nothing flows into this step's gates.
            real = valid[t][:, None]
            dh_skip, dc_skip = np.where(real, 0, dh), np.where(real, 0, dc)
            dh_t, dc_t = np.where(real, dh_t, 0), np.where(real, dc_t, 0)

        if weight_hr is not None:  # h = m W_hr^T
            dweight_hr += dh_t.T @ cache.m[t]
            dm = dh_t @ weight_hr
        else:
            dm = dh_t

        # m = o * tanh(c'),  c' = f * c + i * g
        dc_t = dc_t + dm * o * (1 - tanh_c * tanh_c)
        dz[t] = np.concatenate(
            [
                dc_t * g * i * (1 - i),  # d i-pre-activation
                dc_t * cache.c_prev[t] * f * (1 - f),  # d f-pre-activation
                dc_t * i * (1 - g * g),  # d g-pre-activation
                dm * tanh_c * o * (1 - o),  # d o-pre-activation
            ],
            axis=1,
        )
        dh = dz[t] @ weight_hh  # through h W_hh^T
        dc = dc_t * f  # through f * c
        if valid is not None:
            dh, dc = dh + dh_skip, dc + dc_skip

    # Everything else is a large product over all T*B rows (padded rows have dz = 0).
    dz_rows = _rows(dz)
    dx = _matmul(dz, weight_ih)
    dweight_ih = dz_rows.T @ _rows(x)
    dweight_hh = dz_rows.T @ _rows(cache.h_prev)
    dbias = dz_rows.sum(axis=0)
    return LSTMGrads(
        dx,
        dh,
        dc,
        dweight_ih,
        dweight_hh,
        dbias.copy() if cache.has_bias_ih else None,
        dbias.copy() if cache.has_bias_hh else None,
        dweight_hr,
    )


def lstm_step(x_t, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, weight_hr=None):
    """One LSTM cell step: x_t (B, I), h (B, P), c (B, H) -> (h' (B, P), c' (B, H))."""
    x_t = _input(x_t, "x_t", ndim=2)
    x, weight_ih, weight_hh, bias_ih, bias_hh, h, c, weight_hr, _ = _lstm_args(
        x_t[None], weight_ih, weight_hh, bias_ih, bias_hh, h, c, weight_hr
    )
    xw = _input_projection(x[0], weight_ih, bias_ih, bias_hh)
    h_new, c_new, *_ = _lstm_cell(xw, h, c, weight_hh, weight_hr)
    return h_new, c_new


# ---- GRU --------------------------------------------------------------------------------------


def _gru_args(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, gates=3):
    """Checks and casts the arguments of a GRU (gates=3) or RNN (gates=1) call."""
    x = _input(x)
    dtype = x.dtype
    T, B, I = x.shape
    H = _gate_rows(weight_ih, gates, I)
    G = gates * H
    weight_ih = _cast(weight_ih, dtype, "weight_ih", (G, I))
    weight_hh = _cast(weight_hh, dtype, "weight_hh", (G, H))
    bias_ih = _cast(bias_ih, dtype, "bias_ih", (G,))
    bias_hh = _cast(bias_hh, dtype, "bias_hh", (G,))
    h0 = _state(h0, dtype, "h0", (B, H))
    return x, weight_ih, weight_hh, bias_ih, bias_hh, h0, (T, B, I, H)


def _gru_cell(xw_t, h, weight_hh, bias_hh):
    """One GRU step, given xw_t = x_t W_ih^T + b_ih (B, 3H) and h (B, H).

    Returns h', the post-activation gates r, z, n (B, 3H) and hw_n = h W_hn^T + b_hn.
    """
    H = h.shape[1]
    hw = _input_projection(h, weight_hh, bias_hh)  # (B, 3H): h W_hh^T + b_hh
    r = sigmoid(xw_t[:, 0 * H : 1 * H] + hw[:, 0 * H : 1 * H])  # reset gate
    z = sigmoid(xw_t[:, 1 * H : 2 * H] + hw[:, 1 * H : 2 * H])  # update gate
    hw_n = hw[:, 2 * H : 3 * H]
    n = np.tanh(xw_t[:, 2 * H : 3 * H] + r * hw_n)  # candidate (b_hn inside the reset product)
    h_new = (1 - z) * n + z * h
    return h_new, np.concatenate([r, z, n], axis=1), hw_n


def gru_forward(
    x, weight_ih, weight_hh, bias_ih=None, bias_hh=None, h0=None, *, lengths=None, reverse=False
):
    """GRU over a whole sequence, one layer, one direction (PyTorch's maths, gates r, z, n).

    Args:
        x: (T, B, I). weight_ih: (3H, I). weight_hh: (3H, H). bias_ih, bias_hh: (3H,) or None.
        h0: (B, H) or None for zeros. lengths, reverse: as in :func:`lstm_forward`.

    Returns:
        ``(y, h_n, cache)``: y (T, B, H), h_n (B, H), the cache for :func:`gru_backward`.
    """
    x, weight_ih, weight_hh, bias_ih, bias_hh, h0, (T, B, I, H) = _gru_args(
        x, weight_ih, weight_hh, bias_ih, bias_hh, h0
    )
    dtype = x.dtype
    valid = _valid_mask(lengths, T, B)
    x = _x_used(x, valid)  # the padding never enters the computation
    xw = _input_projection(x, weight_ih, bias_ih)  # (T, B, 3H), b_hh stays in the step

    y = np.zeros((T, B, H), dtype)
    h_prev = np.empty((T, B, H), dtype)
    gates = np.empty((T, B, 3 * H), dtype)
    hw_n = np.empty((T, B, H), dtype)

    h = h0
    for t in _time_steps(T, reverse):
        h_prev[t] = h
        h_new, gates[t], hw_n[t] = _gru_cell(xw[t], h, weight_hh, bias_hh)
        if valid is None:
            h, y[t] = h_new, h_new
        else:
            real = valid[t][:, None]
            h = np.where(real, h_new, h)
            y[t] = np.where(real, h_new, 0)

    cache = GRUCache(
        x=x,
        weight_ih=weight_ih,
        weight_hh=weight_hh,
        has_bias_ih=bias_ih is not None,
        has_bias_hh=bias_hh is not None,
        valid=valid,
        reverse=bool(reverse),
        h_prev=h_prev,
        gates=gates,
        hw_n=hw_n,
    )
    return y, np.array(h, dtype), cache


def gru_backward(cache: GRUCache, dy=None, dh_n=None) -> GRUGrads:
    """Backward (BPTT) through :func:`gru_forward`.

    Args:
        cache: from :func:`gru_forward`. dy: (T, B, H) or None. dh_n: (B, H) or None.

    Returns:
        :class:`GRUGrads` ``(dx, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)``. Unlike the
        LSTM, the two bias gradients differ (b_hn is scaled by the reset gate).
    """
    x, weight_ih, weight_hh, valid = cache.x, cache.weight_ih, cache.weight_hh, cache.valid
    dtype = x.dtype
    T, B, I = x.shape
    H = weight_hh.shape[1]

    dy = _upstream(dy, dtype, "dy", (T, B, H))
    dh = _upstream(dh_n, dtype, "dh_n", (B, H))
    dxw = np.zeros((T, B, 3 * H), dtype)  # gradients w.r.t. x W_ih^T + b_ih
    dhw = np.zeros((T, B, 3 * H), dtype)  # gradients w.r.t. h W_hh^T + b_hh

    for t in reversed(_time_steps(T, cache.reverse)):
        r, z, n = np.split(cache.gates[t], 3, axis=1)
        h_prev = cache.h_prev[t]

        dh_t = dh + dy[t]
        if valid is not None:
            real = valid[t][:, None]
            dh_skip = np.where(real, 0, dh)
            dh_t = np.where(real, dh_t, 0)

        # h' = (1 - z) * n + z * h
        dn_pre = dh_t * (1 - z) * (1 - n * n)  # through n = tanh(n-pre-activation)
        dz_pre = dh_t * (h_prev - n) * z * (1 - z)
        dr_pre = dn_pre * cache.hw_n[t] * r * (1 - r)  # n-pre = xw_n + r * hw_n
        dxw[t] = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        dhw[t] = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)

        dh = dhw[t] @ weight_hh + dh_t * z
        if valid is not None:
            dh = dh + dh_skip

    dxw_rows, dhw_rows = _rows(dxw), _rows(dhw)
    return GRUGrads(
        _matmul(dxw, weight_ih),
        dh,
        dxw_rows.T @ _rows(x),
        dhw_rows.T @ _rows(cache.h_prev),
        dxw_rows.sum(axis=0) if cache.has_bias_ih else None,
        dhw_rows.sum(axis=0) if cache.has_bias_hh else None,
    )


def gru_step(x_t, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One GRU cell step: x_t (B, I), h (B, H) -> h' (B, H)."""
    x_t = _input(x_t, "x_t", ndim=2)
    x, weight_ih, weight_hh, bias_ih, bias_hh, h, _ = _gru_args(
        x_t[None], weight_ih, weight_hh, bias_ih, bias_hh, h
    )
    h_new, _, _ = _gru_cell(_input_projection(x[0], weight_ih, bias_ih), h, weight_hh, bias_hh)
    return h_new


# ---- vanilla RNN ------------------------------------------------------------------------------


_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}


def _activation(nonlinearity: str):
    if nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    return _ACTIVATIONS[nonlinearity]


def rnn_forward(
    x,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    h0=None,
    *,
    nonlinearity="tanh",
    lengths=None,
    reverse=False,
):
    """Elman RNN over a whole sequence: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh).

    Args:
        x: (T, B, I). weight_ih: (H, I). weight_hh: (H, H). bias_ih, bias_hh: (H,) or None.
        h0: (B, H) or None for zeros. nonlinearity: ``"tanh"`` or ``"relu"``.
        lengths, reverse: as in :func:`lstm_forward`.

    Returns:
        ``(y, h_n, cache)``: y (T, B, H), h_n (B, H), the cache for :func:`rnn_backward`.
    """
    act = _activation(nonlinearity)
    x, weight_ih, weight_hh, bias_ih, bias_hh, h0, (T, B, I, H) = _gru_args(
        x, weight_ih, weight_hh, bias_ih, bias_hh, h0, gates=1
    )
    dtype = x.dtype
    valid = _valid_mask(lengths, T, B)
    x = _x_used(x, valid)  # the padding never enters the computation
    xw = _input_projection(x, weight_ih, bias_ih, bias_hh)  # (T, B, H)

    y = np.zeros((T, B, H), dtype)
    h_prev = np.empty((T, B, H), dtype)
    h_out = np.empty((T, B, H), dtype)

    h = h0
    for t in _time_steps(T, reverse):
        h_prev[t] = h
        h_out[t] = h_new = act(xw[t] + h @ weight_hh.T)
        if valid is None:
            h, y[t] = h_new, h_new
        else:
            real = valid[t][:, None]
            h = np.where(real, h_new, h)
            y[t] = np.where(real, h_new, 0)

    cache = RNNCache(
        x=x,
        weight_ih=weight_ih,
        weight_hh=weight_hh,
        has_bias_ih=bias_ih is not None,
        has_bias_hh=bias_hh is not None,
        valid=valid,
        reverse=bool(reverse),
        nonlinearity=nonlinearity,
        h_prev=h_prev,
        h_new=h_out,
    )
    return y, np.array(h, dtype), cache


def rnn_backward(cache: RNNCache, dy=None, dh_n=None) -> RNNGrads:
    """Backward (BPTT) through :func:`rnn_forward`.

    Returns:
        :class:`RNNGrads` ``(dx, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)`` (the two bias
        gradients are equal).
    """
    x, weight_ih, weight_hh, valid = cache.x, cache.weight_ih, cache.weight_hh, cache.valid
    dtype = x.dtype
    T, B, I = x.shape
    H = weight_hh.shape[1]

    dy = _upstream(dy, dtype, "dy", (T, B, H))
    dh = _upstream(dh_n, dtype, "dh_n", (B, H))
    da = np.zeros((T, B, H), dtype)  # gradients w.r.t. the pre-activations

    for t in reversed(_time_steps(T, cache.reverse)):
        dh_t = dh + dy[t]
        if valid is not None:
            real = valid[t][:, None]
            dh_skip = np.where(real, 0, dh)
            dh_t = np.where(real, dh_t, 0)

        h_new = cache.h_new[t]
        if cache.nonlinearity == "tanh":
            da[t] = dh_t * (1 - h_new * h_new)
        else:  # relu: 0 where the output is <= 0, else the gradient passes (also at a NaN
            # output, and a NaN gradient stops at a zero output: a select, as PyTorch's)
            da[t] = np.where(h_new <= 0, 0, dh_t)

        dh = da[t] @ weight_hh
        if valid is not None:
            dh = dh + dh_skip

    da_rows = _rows(da)
    dbias = da_rows.sum(axis=0)
    return RNNGrads(
        _matmul(da, weight_ih),
        dh,
        da_rows.T @ _rows(x),
        da_rows.T @ _rows(cache.h_prev),
        dbias.copy() if cache.has_bias_ih else None,
        dbias.copy() if cache.has_bias_hh else None,
    )


def rnn_step(x_t, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, nonlinearity="tanh"):
    """One RNN cell step: x_t (B, I), h (B, H) -> h' (B, H)."""
    act = _activation(nonlinearity)
    x_t = _input(x_t, "x_t", ndim=2)
    x, weight_ih, weight_hh, bias_ih, bias_hh, h, _ = _gru_args(
        x_t[None], weight_ih, weight_hh, bias_ih, bias_hh, h, gates=1
    )
    return act(_input_projection(x[0], weight_ih, bias_ih, bias_hh) + h @ weight_hh.T)


# ---- FLOP model and initialisation ------------------------------------------------------------


def _flops(T: int, B: int, I: int, G: int, H: int, training: bool) -> int:
    # Forward: the two matrix products, x W_ih^T and h W_hh^T, 2 FLOPs per multiply-add.
    # Backward costs twice the forward (dx and dW for each product), so training is 3x forward.
    forward = 2 * T * B * (I + H) * G
    return 3 * forward if training else forward


def lstm_flops(T: int, B: int, I: int, H: int, training: bool = False) -> int:
    """FLOPs of an LSTM layer (DESIGN.md's model): forward 2·T·B·(I+H)·4H; training 3x that."""
    return _flops(T, B, I, 4 * H, H, training)


def gru_flops(T: int, B: int, I: int, H: int, training: bool = False) -> int:
    """FLOPs of a GRU layer: forward 2·T·B·(I+H)·3H; training (forward + backward) 3x that."""
    return _flops(T, B, I, 3 * H, H, training)


def rnn_flops(T: int, B: int, I: int, H: int, training: bool = False) -> int:
    """FLOPs of an RNN layer: forward 2·T·B·(I+H)·H; training (forward + backward) 3x that."""
    return _flops(T, B, I, H, H, training)


def _init_weights(gates, I, H, *, seed, dtype, bias, proj_size=0):
    """PyTorch's initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H))."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H) if H > 0 else 0.0
    P = proj_size if proj_size else H

    def draw(*shape):
        return rng.uniform(-k, k, shape).astype(dtype)

    weights = {"weight_ih": draw(gates * H, I), "weight_hh": draw(gates * H, P)}
    weights["bias_ih"] = draw(gates * H) if bias else None
    weights["bias_hh"] = draw(gates * H) if bias else None
    if proj_size:  # LSTM projection
        weights["weight_hr"] = draw(P, H)
    return weights


def init_lstm_weights(I, H, *, seed=None, dtype=np.float32, bias=True, proj_size=0):
    """LSTM weights as a dict ``weight_ih, weight_hh, bias_ih, bias_hh`` (biases None without
    bias), drawn from U(-1/sqrt(H), 1/sqrt(H)) with ``np.random.default_rng(seed)``.

    With ``proj_size = P > 0``, weight_hh is (4H, P) and the dict also holds ``weight_hr`` (P, H);
    pass the dict as keywords: ``lstm_forward(x, **w)``.
    """
    return _init_weights(4, I, H, seed=seed, dtype=dtype, bias=bias, proj_size=proj_size)


def init_gru_weights(I, H, *, seed=None, dtype=np.float32, bias=True):
    """GRU weights (3H rows, gates r, z, n) as :func:`init_lstm_weights`."""
    return _init_weights(3, I, H, seed=seed, dtype=dtype, bias=bias)


def init_rnn_weights(I, H, *, seed=None, dtype=np.float32, bias=True):
    """RNN weights (H rows) as :func:`init_lstm_weights`."""
    return _init_weights(1, I, H, seed=seed, dtype=dtype, bias=bias)
