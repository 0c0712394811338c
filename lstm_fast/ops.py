"""Functional API: arrays in, arrays out, computed by the C++ core.

All arrays are float32 NumPy arrays, C-contiguous, sequence-major. Nothing is converted
silently: a float64 or non-contiguous argument raises an error that names it (convert with
``np.ascontiguousarray(a, dtype=np.float32)`` where a copy is intended), and so does a
``numpy.ma.MaskedArray`` with masked elements (the kernels would read the values under the
mask: fill them explicitly, ``a.filled(0.0)``).

Shapes use the legend of the core: ``T`` steps, ``B`` batch, ``I`` input size, ``H`` hidden size.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _core
from .module import _check_unmasked, _from_torch

__all__ = ["LSTMGrads", "lstm_forward", "lstm_backward", "gemm", "LSTMCache", "LSTMProjCache"]

LSTMCache = _core.LSTMCache
LSTMProjCache = _core.LSTMProjCache
_CACHES = (_core.LSTMCache, _core.LSTMProjCache, _core.GRUCache, _core.RNNCache)


class _LSTMGradsTuple(NamedTuple):
    dx: np.ndarray  # (T, B, I)
    dh0: np.ndarray  # (B, H), (B, P) with a projection
    dc0: np.ndarray  # (B, H)
    dweight_ih: np.ndarray  # (4H, I)
    dweight_hh: np.ndarray  # (4H, H), (4H, P) with a projection
    dbias_ih: Optional[np.ndarray]  # (4H,) or None without bias
    dbias_hh: Optional[np.ndarray]  # (4H,) or None without bias


class LSTMGrads(_LSTMGradsTuple):
    """Gradients of an LSTM layer, as returned by :func:`lstm_backward`.

    A 7-tuple ``(dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)``, plus the attribute
    ``dweight_hr``: the (P, H) gradient of the projection, or None without projection. It is an
    attribute, not an eighth element, so code that unpacks the seven gradients positionally
    (``dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = grads``) works with and without projection.
    """

    dweight_hr: Optional[np.ndarray] = None  # class default; set per instance when projected

    def __new__(
        cls, dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih=None, dbias_hh=None, dweight_hr=None
    ):
        self = super().__new__(cls, dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)
        if dweight_hr is not None:
            self.dweight_hr = dweight_hr
        return self

    def __repr__(self) -> str:
        base = super().__repr__()
        return base if self.dweight_hr is None else base[:-1] + ", dweight_hr=...)"

    def _replace(self, **kw):
        hr = kw.pop("dweight_hr", self.dweight_hr)
        return type(self)(*_LSTMGradsTuple._replace(self, **kw), dweight_hr=hr)


def _int_array(name, value, expected="integers"):
    """``value`` (NumPy, a torch tensor, nested lists) as a NumPy integer array, not copied
    yet: TypeError naming ``name`` for any other dtype (bool, float, timedelta64, ...),
    ValueError for a masked array with masked elements or a tensor without data (meta,
    sparse), whose values NumPy would read silently or torch refuse naming nothing."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = _from_torch(value, name)
    _check_unmasked(name, value)
    try:
        v = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nesting and the like
        raise ValueError(f"{name}: expected a sequence of integers ({e})") from None
    if v.size == 0 and v.dtype.kind == "f":  # [] is float64 to NumPy
        v = v.astype(np.int64)
    if v.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected {expected}, got dtype {v.dtype}")
    return v


def _int_vector(name, value):
    """None, or a fresh int64 C-contiguous copy (the core validates shape and values)."""
    if value is None:
        return None
    v = _int_array(name, value)
    if v.dtype.kind == "u" and v.size and v.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected values in int64 range, got {v.max()}")
    try:
        return np.array(v, dtype=np.int64, order="C")  # explicit, small copy
    except MemoryError as e:  # (a huge broadcast view: name the argument, not NumPy's array)
        raise MemoryError(f"{name}: {e}") from None


def _batch_sizes(batch_sizes):
    return _int_vector("batch_sizes", batch_sizes)


def _bool(name, value) -> bool:
    """A bool switch (bool or numpy.bool_): anything else is a TypeError naming it, never a
    truthiness test (``trans_a="no"`` would transpose)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _training(training):
    return _bool("training", training)


def _need_dx(need_dx) -> bool:
    if not isinstance(need_dx, (bool, np.bool_)):
        raise TypeError(f"need_dx: expected a bool, got {type(need_dx).__name__}")
    return bool(need_dx)


def _check(check_finite) -> bool:
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite: expected a bool, got {type(check_finite).__name__}")
    return bool(check_finite)


def _nonfinite_at(a: np.ndarray, real=None):
    """The first NaN or +-Inf of the floating array ``a`` in C order, as ``(index, is_nan)``,
    or None. ``real``: optional boolean array of ``a``'s leading dimensions, True where the
    kernels read ``a`` (the steps within each sequence's length); elements elsewhere (padding)
    are not looked at. Float32 C-contiguous arrays are scanned by the core, others by NumPy; a
    hit in the padding costs one gather of the real rows (vectorised, no loop over T * B)."""
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned:
        hit = _core._find_nonfinite(a)
        if hit is None:
            return None
        at, is_nan = hit
    else:
        flat = a.ravel(order="C")
        bad = np.flatnonzero(~np.isfinite(flat))
        if not bad.size:
            return None
        at, is_nan = int(bad[0]), bool(np.isnan(flat[bad[0]]))
    where = tuple(int(i) for i in np.unravel_index(at, a.shape))
    if real is None or real[where[: real.ndim]]:
        return where, is_nan  # the first non-finite element of all is a real one
    rows = np.flatnonzero(real)  # real positions of the leading dimensions, in C order
    sub = a.reshape((-1,) + a.shape[real.ndim :])[rows]  # (N, ...) the real rows, a copy
    hit = _nonfinite_at(sub)
    if hit is None:
        return None  # NaN/Inf in the padding only: never read
    (r, *rest), is_nan = hit
    lead = tuple(int(i) for i in np.unravel_index(int(rows[r]), real.shape))
    return lead + tuple(rest), is_nan


def _finite(**arrays) -> None:
    """Raise ValueError naming the first argument that holds NaN or +-Inf. Float32
    C-contiguous arrays are scanned by the core; other floating arrays (the layers' views) by
    NumPy; anything else is left to the core's own argument checks."""
    for name, a in arrays.items():
        _finite_real(name, a)


def _finite_real(name, a, real=None) -> None:
    """:func:`_finite` of one argument, looking only where ``real`` is True (see
    :func:`_nonfinite_at`; ``real`` must match ``a``'s leading dimensions)."""
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fc":
        return
    try:
        hit = _nonfinite_at(a, real)
    except MemoryError as e:  # the scan's copy of a huge view: name the argument
        raise MemoryError(f"{name}: {e}") from None
    if hit is not None:
        where, is_nan = hit
        raise ValueError(
            f"{name}: expected finite values, got {'NaN' if is_nan else 'Inf'} at index {where}"
        )


def _real_steps(x, batch_sizes, sorted_indices=None):
    """check_finite with ``batch_sizes``: the (T, B) mask of the steps of ``x`` (in x's own
    batch order, through ``sorted_indices``) the kernels read, or None (scan all of x) when x
    or the lengths are not what the core takes: the core then reports the bad argument."""
    if not isinstance(x, np.ndarray) or x.ndim != 3 or batch_sizes is None:
        return None
    T, B = x.shape[:2]
    bs = batch_sizes
    if bs.shape != (T,) or (T and (bs.min() < 0 or bs.max() > B or (np.diff(bs) > 0).any())):
        return None
    real = np.arange(B)[None, :] < bs[:, None]  # row r of the sorted batch runs step t
    if sorted_indices is None:
        return real
    order = sorted_indices
    if order.shape != (B,) or not np.array_equal(np.sort(order), np.arange(B)):
        return None
    out = np.empty_like(real)
    out[:, order] = real  # sorted row r is x's row order[r]
    return out


def _finite_dy(cache, dy) -> None:
    """check_finite of a backward's ``dy``: with the forward's ``batch_sizes`` only at the steps
    the kernels read (a padded step's gradient is never read, as the forward never reads x's
    padding); anything that is no cache is left to the core to report."""
    bs = getattr(cache, "batch_sizes", None) if isinstance(cache, _CACHES) else None
    order = getattr(cache, "sorted_indices", None) if bs is not None else None
    _finite_real("dy", dy, _real_steps(dy, bs, order))


def _values_after_arguments(scan, run) -> None:
    """check_finite's order: every argument's type, shape and range before any value. ``scan``
    raises ``ValueError`` naming an input that holds NaN or +-Inf; when it does, ``run`` (the
    core's call, which checks every argument before any work) runs first, so that a bad
    argument -- sorted_indices that are no permutation, a weight of another shape -- is the
    error reported, as without check_finite (the NaN scan read a padding that no longer was
    one, or an array the core refuses). Only a call about to raise pays for ``run``."""
    try:
        scan()
    except ValueError as e:
        bad = e
    else:
        return
    run()
    raise bad


def _cell_values_after_arguments(run, x, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, h0):
    """check_finite of a GRU or RNN forward (:func:`_values_after_arguments`; ``run(training)``
    is the core's call): x only at the steps of each sequence (padding is never read)."""

    def scan():
        _finite_real("x", x, _real_steps(x, batch_sizes))
        _finite(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
        _finite(h0=h0)

    _values_after_arguments(scan, lambda: run(False))


def lstm_forward(
    x,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    h0=None,
    c0=None,
    *,
    training: bool = False,
    batch_sizes=None,
    check_finite: bool = False,
    weight_hr=None,
    sorted_indices=None,
):
    r"""LSTM over a whole sequence, one layer, one direction (PyTorch's maths and gate order).

    .. math::
        i = \sigma(x W_{ii}^T + b_{ii} + h W_{hi}^T + b_{hi}), \quad
        f = \sigma(\dots), \quad g = \tanh(\dots), \quad o = \sigma(\dots) \\
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')
        \quad (\text{with projection: } h' = (o \odot \tanh(c')) W_{hr}^T)

    Args:
        x: (T, B, I) input sequence.
        weight_ih: (4H, I), rows in gate order i, f, g, o. weight_hh: (4H, H), or (4H, P) with
            a projection.
        bias_ih, bias_hh: (4H,) or None (no bias).
        h0, c0: (B, H) initial state, or None for zeros (with a projection h0 is (B, P)).
        training: keep what backward needs and return it as ``cache``.
        batch_sizes: optional (T,) integers, non-increasing, in [0, B]: variable lengths in
            PyTorch's PackedSequence layout (rows sorted by length, longest first; step t runs
            rows ``[0, batch_sizes[t])``). Outputs of the other rows are zero, ``h_n``/``c_n``
            hold each row's state after its last real step, padding values of x are never read
            and no arithmetic is spent on them.
        check_finite: raise ``ValueError`` naming the argument if any float32 input holds NaN
            or +-Inf (default False: they propagate into the outputs as NaN/Inf); with
            ``batch_sizes`` only the steps of x that are read count, not its padding. A bad
            argument (a shape, dtype, ``batch_sizes`` or ``sorted_indices`` the call refuses)
            is reported first, as without it.
        weight_hr: optional (P, H) projection of the hidden state, 0 < P < H (PyTorch's
            ``proj_size``, parameter ``weight_hr_l{k}``): h_t = m_t W_hr^T has P features.
        sorted_indices: optional, with ``batch_sizes`` (not with ``weight_hr``): a (B,)
            permutation of ``range(B)`` when the batch is in the caller's order rather than
            sorted by length: row r of the sorted batch (the one ``batch_sizes`` describes) is
            ``x[:, sorted_indices[r]]`` (PyTorch's ``PackedSequence.sorted_indices``). x and y
            are then in the caller's order (and :func:`lstm_backward`'s dy and dx), with no
            pass of their own to sort them: x's rows are sorted by the copy of the active
            rows, y's written in place step by step. The states h0, c0, h_n, c_n (and their
            gradients) stay in the sorted order.

    Returns:
        ``(y, h_n, c_n, cache)``: y (T, B, H), h_n and c_n (B, H); cache is None unless training.
        With ``weight_hr``: y (T, B, P), h_n (B, P), c_n (B, H) and the cache is an
        :class:`LSTMProjCache`.
        The cache references x, the weights and y (no copies): do not modify them in place
        before calling :func:`lstm_backward`.

    Example::

        >>> import numpy as np, lstm_fast.ops as ops
        >>> T, B, I, H = 5, 3, 10, 20
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((T, B, I), dtype=np.float32)
        >>> w_ih = rng.standard_normal((4 * H, I), dtype=np.float32) * 0.1
        >>> w_hh = rng.standard_normal((4 * H, H), dtype=np.float32) * 0.1
        >>> y, h_n, c_n, _ = ops.lstm_forward(x, w_ih, w_hh)
        >>> y.shape, h_n.shape
        ((5, 3, 20), (3, 20))
    """
    if (
        batch_sizes is None
        and sorted_indices is None
        and weight_hr is None
        and check_finite is False
        and (training is False or training is True)
    ):  # the common call: no option to convert or check here (the core checks the arrays)
        return _core.lstm_forward(
            x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, training, None, None
        )
    training = _training(training)
    batch_sizes = _batch_sizes(batch_sizes)
    sorted_indices = _int_vector("sorted_indices", sorted_indices)
    if sorted_indices is not None and weight_hr is not None:
        raise ValueError("sorted_indices: not supported with weight_hr (sort x's rows first)")

    def run(training):
        if weight_hr is not None:
            return _core.lstm_proj_forward(
                x,
                weight_ih,
                weight_hh,
                bias_ih,
                bias_hh,
                h0,
                c0,
                weight_hr,
                training,
                batch_sizes,
            )
        return _core.lstm_forward(
            x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, training, batch_sizes, sorted_indices
        )

    if _check(check_finite):

        def scan():  # x only at the steps of each sequence (padding is never read)
            _finite_real("x", x, _real_steps(x, batch_sizes, sorted_indices))
            _finite(weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih, bias_hh=bias_hh)
            _finite(h0=h0, c0=c0, weight_hr=weight_hr)

        _values_after_arguments(scan, lambda: run(False))
    return run(training)


def lstm_backward(
    cache, dy=None, dh_n=None, dc_n=None, *, need_dx=True, check_finite=False
) -> LSTMGrads:
    """Backward (BPTT) through a training :func:`lstm_forward`.

    Args:
        cache: the cache returned by ``lstm_forward(..., training=True)``; may be used again.
        dy: (T, B, H) gradient of the loss w.r.t. y, or None for zero ((T, B, P) with a
            projection).
        dh_n, dc_n: (B, H) gradients w.r.t. h_n and c_n, or None for zero (dh_n is (B, P) with
            a projection).

    Returns:
        :class:`LSTMGrads` ``(dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)``, freshly
        allocated (bias gradients are None when the forward had no bias), and its attribute
        ``dweight_hr``: (P, H) with a projection, else None. The two bias gradients are equal
        (both biases enter the gates the same way).

        ``need_dx=False`` (an input that needs no gradient): ``dx`` is None and its GEMM
        (a third of the backward's large products) is skipped; the other results are bitwise
        the same.

        ``check_finite=True`` raises ``ValueError`` naming the upstream gradient that holds
        NaN or +-Inf (after a forward with ``batch_sizes``, ``dy`` only at the steps the
        kernels read: its padding is never read; the cache's ``batch_sizes`` and
        ``sorted_indices`` say which).
    """
    need_dx = _need_dx(need_dx)

    def run():
        if isinstance(cache, LSTMProjCache):
            return LSTMGrads(*_core.lstm_proj_backward(cache, dy, dh_n, dc_n, need_dx=need_dx))
        return LSTMGrads(*_core.lstm_backward(cache, dy, dh_n, dc_n, need_dx=need_dx))

    if _check(check_finite):

        def scan():
            _finite_dy(cache, dy)
            _finite(dh_n=dh_n, dc_n=dc_n)

        _values_after_arguments(scan, run)
    return run()


def gemm(
    a,
    b,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    bias=None,
    out=None,
    accumulate: bool = False,
    a_row_sums=None,
) -> np.ndarray:
    """C = op(a) @ op(b) (+ bias) with lstm_fast's packed GEMM (float32, C-contiguous inputs).

    ``op(a)`` is ``a.T`` when ``trans_a`` (a is then (K, M)), else a (M, K); the same for b.
    ``bias``: optional (N,) vector added to every row (in the same pass as the product).
    ``out``: optional (M, N) float32 C-contiguous array to write into (returned); with
    ``accumulate=True`` the product is added to it (``out += op(a) @ op(b)``, no bias).
    ``a_row_sums``: optional (M,) float32 array, ``+=`` the row sums of ``op(a)`` -- computed
    while ``a`` is packed, e.g. a bias gradient from the GEMM of the weight gradient.
    Deterministic: bitwise identical results for any thread count. Runs on lstm_fast's own
    threads (:func:`lstm_fast.set_num_threads`), not NumPy's BLAS pool.
    """
    return _core.gemm(
        a,
        b,
        _bool("trans_a", trans_a),
        _bool("trans_b", trans_b),
        bias,
        out=out,
        accumulate=_bool("accumulate", accumulate),
        a_row_sums=a_row_sums,
    )


# ---- GRU and vanilla RNN ----------------------------------------------------------------------

GRUCache = _core.GRUCache
RNNCache = _core.RNNCache
__all__ += ["GRUGrads", "RNNGrads", "gru_forward", "gru_backward", "rnn_forward", "rnn_backward"]


class GRUGrads(NamedTuple):
    """Gradients of a GRU layer, as returned by :func:`gru_backward`."""

    dx: np.ndarray  # (T, B, I)
    dh0: np.ndarray  # (B, H)
    dweight_ih: np.ndarray  # (3H, I)
    dweight_hh: np.ndarray  # (3H, H)
    dbias_ih: Optional[np.ndarray]  # (3H,) or None without bias
    dbias_hh: Optional[np.ndarray]  # (3H,) or None without bias


class RNNGrads(NamedTuple):
    """Gradients of a vanilla RNN layer, as returned by :func:`rnn_backward`."""

    dx: np.ndarray  # (T, B, I)
    dh0: np.ndarray  # (B, H)
    dweight_ih: np.ndarray  # (H, I)
    dweight_hh: np.ndarray  # (H, H)
    dbias_ih: Optional[np.ndarray]  # (H,) or None without bias
    dbias_hh: Optional[np.ndarray]  # (H,) or None without bias


def gru_forward(
    x,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    h0=None,
    *,
    training=False,
    batch_sizes=None,
    check_finite=False,
):
    r"""GRU over a whole sequence, one layer, one direction (PyTorch's maths, gates r, z, n).

    .. math::
        r = \sigma(x W_{ir}^T + b_{ir} + h W_{hr}^T + b_{hr}), \quad
        z = \sigma(x W_{iz}^T + b_{iz} + h W_{hz}^T + b_{hz}) \\
        n = \tanh(x W_{in}^T + b_{in} + r \odot (h W_{hn}^T + b_{hn})), \qquad
        h' = (1 - z) \odot n + z \odot h

    Args:
        x: (T, B, I). weight_ih: (3H, I), rows r, z, n. weight_hh: (3H, H).
        bias_ih, bias_hh: (3H,) or None. h0: (B, H) or None for zeros.
        training: keep what backward needs and return it as ``cache``.
        batch_sizes, check_finite: as in :func:`lstm_forward`.

    Returns:
        ``(y, h_n, cache)``: y (T, B, H), h_n (B, H); cache is None unless training.

    Example::

        >>> import numpy as np, lstm_fast.ops as ops
        >>> rng = np.random.default_rng(0)
        >>> x = rng.standard_normal((5, 3, 10), dtype=np.float32)
        >>> w_ih = rng.standard_normal((60, 10), dtype=np.float32) * 0.1
        >>> w_hh = rng.standard_normal((60, 20), dtype=np.float32) * 0.1
        >>> y, h_n, _ = ops.gru_forward(x, w_ih, w_hh)
        >>> y.shape
        (5, 3, 20)
    """
    check = _check(check_finite)
    training = _training(training)
    batch_sizes = _batch_sizes(batch_sizes)

    def run(training):
        return _core.gru_forward(
            x, weight_ih, weight_hh, bias_ih, bias_hh, h0, training, batch_sizes
        )

    if check:
        _cell_values_after_arguments(
            run, x, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, h0
        )
    return run(training)


def gru_backward(cache, dy=None, dh_n=None, *, need_dx=True, check_finite=False) -> GRUGrads:
    """Backward (BPTT) through a training :func:`gru_forward`: :class:`GRUGrads`, freshly
    allocated. Unlike the LSTM's, the two bias gradients differ (b_hn is scaled by r).
    ``need_dx=False``: ``dx`` is None and its GEMM is skipped (as in :func:`lstm_backward`)."""
    need_dx = _need_dx(need_dx)

    def run():
        return GRUGrads(*_core.gru_backward(cache, dy, dh_n, need_dx=need_dx))

    if _check(check_finite):
        _values_after_arguments(lambda: _finite_dy(cache, dy) or _finite(dh_n=dh_n), run)
    return run()


def rnn_forward(
    x,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    h0=None,
    *,
    nonlinearity="tanh",
    training=False,
    batch_sizes=None,
    check_finite=False,
):
    r"""Elman RNN over a whole sequence.

    .. math:: h' = act(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})

    Args:
        x: (T, B, I). weight_ih: (H, I). weight_hh: (H, H). bias_ih, bias_hh: (H,) or None.
        h0: (B, H) or None. nonlinearity: ``"tanh"`` or ``"relu"``.
        training, batch_sizes, check_finite: as in :func:`lstm_forward`.

    Returns:
        ``(y, h_n, cache)``: y (T, B, H), h_n (B, H); cache is None unless training.
    """
    if not isinstance(nonlinearity, str):
        raise TypeError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    check = _check(check_finite)
    training = _training(training)
    batch_sizes = _batch_sizes(batch_sizes)

    def run(training):
        return _core.rnn_forward(
            x, weight_ih, weight_hh, bias_ih, bias_hh, h0, nonlinearity, training, batch_sizes
        )

    if check:
        _cell_values_after_arguments(
            run, x, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, h0
        )
    return run(training)


def rnn_backward(cache, dy=None, dh_n=None, *, need_dx=True, check_finite=False) -> RNNGrads:
    """Backward (BPTT) through a training :func:`rnn_forward`: :class:`RNNGrads` (the two bias
    gradients are equal). ``need_dx=False``: ``dx`` is None and its GEMM is skipped."""
    need_dx = _need_dx(need_dx)

    def run():
        return RNNGrads(*_core.rnn_backward(cache, dy, dh_n, need_dx=need_dx))

    if _check(check_finite):
        _values_after_arguments(lambda: _finite_dy(cache, dy) or _finite(dh_n=dh_n), run)
    return run()
