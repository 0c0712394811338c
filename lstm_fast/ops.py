"""Functional API: arrays in, arrays out, computed by the C++ core.

All arrays are float32 NumPy arrays, C-contiguous, sequence-major. Nothing is converted
silently: a float64 or non-contiguous argument raises an error that names it (convert with
``np.ascontiguousarray(a, dtype=np.float32)`` where a copy is intended).

Shapes use the legend of the core: ``T`` steps, ``B`` batch, ``I`` input size, ``H`` hidden size.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _core

__all__ = ["LSTMGrads", "lstm_forward", "lstm_backward", "gemm", "LSTMCache"]

LSTMCache = _core.LSTMCache


class LSTMGrads(NamedTuple):
    """Gradients of an LSTM layer, as returned by :func:`lstm_backward`."""

    dx: np.ndarray  # (T, B, I)
    dh0: np.ndarray  # (B, H)
    dc0: np.ndarray  # (B, H)
    dweight_ih: np.ndarray  # (4H, I)
    dweight_hh: np.ndarray  # (4H, H)
    dbias_ih: Optional[np.ndarray]  # (4H,) or None without bias
    dbias_hh: Optional[np.ndarray]  # (4H,) or None without bias


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
):
    r"""LSTM over a whole sequence, one layer, one direction (PyTorch's maths and gate order).

    .. math::
        i = \sigma(x W_{ii}^T + b_{ii} + h W_{hi}^T + b_{hi}), \quad
        f = \sigma(\dots), \quad g = \tanh(\dots), \quad o = \sigma(\dots) \\
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    Args:
        x: (T, B, I) input sequence.
        weight_ih: (4H, I), rows in gate order i, f, g, o. weight_hh: (4H, H).
        bias_ih, bias_hh: (4H,) or None (no bias).
        h0, c0: (B, H) initial state, or None for zeros.
        training: keep what backward needs and return it as ``cache``.
        batch_sizes: optional (T,) integers, non-increasing, in [0, B]: variable lengths in
            PyTorch's PackedSequence layout (rows sorted by length, longest first; step t runs
            rows ``[0, batch_sizes[t])``). Outputs of the other rows are zero, ``h_n``/``c_n``
            hold each row's state after its last real step, padding values of x are never read
            and no arithmetic is spent on them.

    Returns:
        ``(y, h_n, c_n, cache)``: y (T, B, H), h_n and c_n (B, H); cache is None unless training.
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
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if batch_sizes is not None:
        bs = np.asarray(batch_sizes)
        if bs.dtype.kind not in "iu":
            raise TypeError(f"batch_sizes: expected integers, got dtype {bs.dtype}")
        batch_sizes = np.ascontiguousarray(bs, dtype=np.int64)  # explicit, small copy
    return _core.lstm_forward(
        x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, bool(training), batch_sizes
    )


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None) -> LSTMGrads:
    """Backward (BPTT) through a training :func:`lstm_forward`.

    Args:
        cache: the cache returned by ``lstm_forward(..., training=True)``; may be used again.
        dy: (T, B, H) gradient of the loss w.r.t. y, or None for zero.
        dh_n, dc_n: (B, H) gradients w.r.t. h_n and c_n, or None for zero.

    Returns:
        :class:`LSTMGrads` ``(dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)``, freshly
        allocated (bias gradients are None when the forward had no bias). The two bias gradients
        are equal (both biases enter the gates the same way).
    """
    return LSTMGrads(*_core.lstm_backward(cache, dy, dh_n, dc_n))


def gemm(a, b, *, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """C = op(a) @ op(b) with lstm_fast's packed GEMM (float32, C-contiguous inputs).

    ``op(a)`` is ``a.T`` when ``trans_a`` (a is then (K, M)), else a (M, K); the same for b.
    Deterministic: bitwise identical results for any thread count.
    """
    return _core.gemm(a, b, bool(trans_a), bool(trans_b))
