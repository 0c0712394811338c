"""Recurrent layers with PyTorch's constructor, parameter names and shapes, on lstm_fast's kernels.

Parameters are NumPy arrays held in :class:`~lstm_fast.module.Parameter` objects named exactly as
PyTorch's (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``), so
``lstm.load_state_dict(torch_lstm.state_dict())`` works as is.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np

from . import ops
from .module import Module, Parameter

__all__ = ["LSTM"]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _as_float32(name: str, value: Any) -> np.ndarray:
    """Explicit conversion at the layer boundary: real floating input -> C-contiguous float32."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name}: expected a real floating-point array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class LSTM(Module):
    r"""Multi-layer LSTM over a sequence (PyTorch's ``nn.LSTM`` API), computed by fused kernels.

    For each element of the input sequence, each layer computes

    .. math::
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \qquad
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \qquad
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \qquad h_t = o_t \odot \tanh(c_t)

    Args:
        input_size: I, features of the input.
        hidden_size: H, features of the hidden state.
        num_layers: stacked layers (default 1); layer k > 0 takes layer k-1's output.
        bias: use ``bias_ih`` and ``bias_hh`` (default True).
        batch_first: input and output are (B, T, F) instead of (T, B, F) (default False).
        dropout: dropout probability on the outputs of every layer but the last, in training
            mode (default 0), drawn from the layer's seeded generator.
        bidirectional: run a reverse-direction LSTM too and concatenate (default False).
        proj_size: not supported yet (raises NotImplementedError when > 0).
        seed: seed of the initialisation and dropout generator (default: fresh entropy).

    Inputs: ``input, hx``
        input: (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched. Any real
        floating array (or torch tensor); converted to float32 explicitly.
        hx: optional ``(h_0, c_0)``, each (D * num_layers, B, H) (or (D * num_layers, H)
        unbatched), D = 2 if bidirectional else 1. Zeros when omitted.

    Outputs: ``output, (h_n, c_n)``
        output: (T, B, D * H) (batch_first: (B, T, D * H); unbatched: (T, D * H)).
        h_n, c_n: (D * num_layers, B, H) final states.

    Attributes:
        weight_ih_l{k}: (4H, I) for k = 0, else (4H, D * H); rows in gate order i, f, g, o.
        weight_hh_l{k}: (4H, H).  bias_ih_l{k}, bias_hh_l{k}: (4H,).
        All initialised from U(-1/sqrt(H), 1/sqrt(H)); ``_reverse`` suffix for the reverse
        direction.

    In training mode, ``forward`` keeps what :meth:`backward` needs; ``backward(dy, dh_n, dc_n)``
    returns ``(dx, (dh_0, dc_0))`` and accumulates (+=) into every parameter's ``.grad``.

    Example::

        >>> import numpy as np, lstm_fast
        >>> lstm = lstm_fast.LSTM(10, 20, seed=0)
        >>> x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
        >>> y, (h, c) = lstm(x)
        >>> y.shape, h.shape
        ((5, 3, 20), (1, 3, 20))
        >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        seed: Optional[int] = None,
    ):
        super().__init__()
        input_size = _check_int("input_size", input_size, 1)
        hidden_size = _check_int("hidden_size", hidden_size, 1)
        num_layers = _check_int("num_layers", num_layers, 1)
        proj_size = _check_int("proj_size", proj_size, 0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)):
            raise TypeError(f"dropout: expected a float in [0, 1], got {type(dropout).__name__}")
        if not 0.0 <= float(dropout) <= 1.0 or math.isnan(dropout):
            raise ValueError(f"dropout: expected a float in [0, 1], got {dropout}")
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size: expected 0 <= proj_size < hidden_size={hidden_size}, got {proj_size}"
            )
        if proj_size > 0:
            raise NotImplementedError("LSTM: proj_size > 0 is not supported yet")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                UserWarning,
                stacklevel=2,
            )
        object.__setattr__(self, "input_size", input_size)
        object.__setattr__(self, "hidden_size", hidden_size)
        object.__setattr__(self, "num_layers", num_layers)
        object.__setattr__(self, "bias", bool(bias))
        object.__setattr__(self, "batch_first", bool(batch_first))
        object.__setattr__(self, "dropout", float(dropout))
        object.__setattr__(self, "bidirectional", bool(bidirectional))
        object.__setattr__(self, "proj_size", proj_size)
        object.__setattr__(self, "_rng", np.random.default_rng(seed))
        object.__setattr__(self, "_saved", None)
        H = hidden_size
        D = 2 if bidirectional else 1
        bound = 1.0 / math.sqrt(H)
        for k in range(num_layers):
            layer_in = input_size if k == 0 else D * H
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                shapes = [("weight_ih", (4 * H, layer_in)), ("weight_hh", (4 * H, H))]
                if bias:
                    shapes += [("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))]
                for name, shape in shapes:
                    w = self._rng.uniform(-bound, bound, size=shape).astype(np.float32)
                    setattr(self, name + sfx, Parameter(w))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    def _params(self, k: int, d: int):
        sfx = f"_l{k}" + ("_reverse" if d else "")
        get = self._parameters.get
        return (
            get("weight_ih" + sfx),
            get("weight_hh" + sfx),
            get("bias_ih" + sfx),
            get("bias_hh" + sfx),
        )

    # -- forward --------------------------------------------------------------------------------
    def forward(self, input: Any, hx: Any = None):
        x = _as_float32("input", input)
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        if x.ndim == 2:
            unbatched = True
            if x.shape[1] != self.input_size:
                raise ValueError(
                    f"input: expected shape (T, I={self.input_size}) for unbatched input, "
                    f"got {x.shape}"
                )
            x = x[:, None, :]
        elif x.ndim == 3:
            unbatched = False
            if x.shape[2] != self.input_size:
                want = "(B, T, I=" if self.batch_first else "(T, B, I="
                raise ValueError(f"input: expected shape {want}{self.input_size}), got {x.shape}")
            if self.batch_first:
                x = np.ascontiguousarray(x.transpose(1, 0, 2))
        else:
            raise ValueError(
                "input: expected 3 dimensions (T, B, I) (or 2 for unbatched input), "
                f"got {x.ndim} with shape {x.shape}"
            )
        T, B = x.shape[0], x.shape[1]
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx: expected a tuple (h_0, c_0)")
            want = (L * D, H) if unbatched else (L * D, B, H)
            h0 = _as_float32("hx[0]", hx[0])
            c0 = _as_float32("hx[1]", hx[1])
            for nm, a in (("h_0", h0), ("c_0", c0)):
                if a.shape != want:
                    letters = "(D*num_layers, H)" if unbatched else "(D*num_layers, B, H)"
                    raise ValueError(f"hx: {nm}: expected shape {letters} = {want}, got {a.shape}")
            if unbatched:
                h0, c0 = h0[:, None, :], c0[:, None, :]
        training = self.training
        h_n = np.empty((L * D, B, H), np.float32)
        c_n = np.empty((L * D, B, H), np.float32)
        saved = []
        layer_in = x
        for k in range(L):
            outs = []
            for d in range(D):
                w_ih, w_hh, b_ih, b_hh = self._params(k, d)
                idx = k * D + d
                inp = layer_in if d == 0 else np.ascontiguousarray(layer_in[::-1])
                y, hn, cn, cache = ops.lstm_forward(
                    inp,
                    w_ih.data,
                    w_hh.data,
                    b_ih.data if b_ih is not None else None,
                    b_hh.data if b_hh is not None else None,
                    None if h0 is None else np.ascontiguousarray(h0[idx]),
                    None if c0 is None else np.ascontiguousarray(c0[idx]),
                    training=training,
                )
                h_n[idx], c_n[idx] = hn, cn
                outs.append(y if d == 0 else y[::-1])
                saved.append(cache)
            out = outs[0] if D == 1 else np.ascontiguousarray(np.concatenate(outs, axis=2))
            mask = None
            if training and self.dropout > 0 and k < L - 1:
                p = self.dropout
                keep = self._rng.random(out.shape) >= p
                mask = keep.astype(np.float32) / np.float32(1.0 - p) if p < 1 else None
                out = out * mask if mask is not None else np.zeros_like(out)
            saved.append(("dropout", mask, self.dropout if k < L - 1 else 0.0))
            layer_in = out
        y = layer_in
        if training:
            object.__setattr__(self, "_saved", (saved, T, B, unbatched))
        else:
            object.__setattr__(self, "_saved", None)
        if unbatched:
            return y[:, 0, :], (h_n[:, 0, :], c_n[:, 0, :])
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        return y, (h_n, c_n)

    # -- backward -------------------------------------------------------------------------------
    def backward(self, dy: Any, dh_n: Any = None, dc_n: Any = None):
        """Gradients of a training-mode forward: ``(dx, (dh_0, dc_0))`` in the input's layout.

        ``dy`` has the output's shape; ``dh_n``/``dc_n`` the shape of ``h_n``/``c_n`` (or None for
        zero). Accumulates (+=) into every parameter's ``.grad``; may be called more than once for
        the same forward.
        """
        if self._saved is None:
            raise RuntimeError(
                "backward: no saved forward; call the layer in training mode (lstm.train()) first"
            )
        saved, T, B, unbatched = self._saved
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        dy = _as_float32("dy", dy)
        if unbatched:
            want = (T, D * H)
        elif self.batch_first:
            want = (B, T, D * H)
        else:
            want = (T, B, D * H)
        if dy.shape != want:
            raise ValueError(f"dy: expected shape {want} (the output's), got {dy.shape}")
        if unbatched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        st_want = (L * D, H) if unbatched else (L * D, B, H)
        dstates = []
        for nm, a in (("dh_n", dh_n), ("dc_n", dc_n)):
            if a is None:
                dstates.append(None)
                continue
            a = _as_float32(nm, a)
            if a.shape != st_want:
                raise ValueError(f"{nm}: expected shape {st_want}, got {a.shape}")
            dstates.append(a[:, None, :] if unbatched else a)
        dhn_all, dcn_all = dstates
        dh0 = np.zeros((L * D, B, H), np.float32)
        dc0 = np.zeros((L * D, B, H), np.float32)
        grad = dy
        pos = len(saved)
        for k in reversed(range(L)):
            pos -= 1
            _, mask, p = saved[pos]
            if p > 0:
                grad = grad * mask if mask is not None else np.zeros_like(grad)
            dins = []
            for d in reversed(range(D)):
                pos -= 1
                cache = saved[pos]
                idx = k * D + d
                w_ih, w_hh, b_ih, b_hh = self._params(k, d)
                g = grad[:, :, d * H : (d + 1) * H]
                g = np.ascontiguousarray(g if d == 0 else g[::-1])
                dx, dh0_i, dc0_i, *_ = ops._core.lstm_backward(
                    cache,
                    g,
                    None if dhn_all is None else np.ascontiguousarray(dhn_all[idx]),
                    None if dcn_all is None else np.ascontiguousarray(dcn_all[idx]),
                    w_ih.grad,
                    w_hh.grad,
                    None if b_ih is None else b_ih.grad,
                    None if b_hh is None else b_hh.grad,
                )
                dh0[idx], dc0[idx] = dh0_i, dc0_i
                dins.append(dx if d == 0 else dx[::-1])
            grad = dins[0] if D == 1 else dins[0] + dins[1]
        dx = grad
        if unbatched:
            return dx[:, 0, :], (dh0[:, 0, :], dc0[:, 0, :])
        if self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return np.ascontiguousarray(dx), (dh0, dc0)
