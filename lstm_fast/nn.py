"""Layers with parameters and gradients: ``Linear``, ``Embedding``, ``Dropout``, the fused softmax
cross-entropy, and the recurrent layers (``LSTM``, re-exported from :mod:`lstm_fast.rnn`).

Every layer follows one protocol: ``y = layer(x)`` (training mode keeps what backward needs),
``dx = layer.backward(dy)`` returns the input gradient and accumulates (``+=``) into each
parameter's ``.grad``; the caller zeroes (``module.zero_grad()``; a ``.grad`` set to None starts
again from zeros, and every gradient is checked before any is changed). The saved forward is kept
until the next one, so ``backward`` may be called more than once for it, each call adding again
(PyTorch's ``retain_graph=True``; the recurrent layers' rule too). Arrays are float32.
Shapes use the legend: ``T`` steps, ``B`` batch, ``N`` rows, ``V`` vocabulary (classes),
``E`` embedding size, ``I``/``O`` input/output features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from . import _core
from .module import FRESH_GRAD_LOCK as _FRESH_GRAD_LOCK
from .module import (
    Module,
    Parameter,
    _as_dtype,
    _check_unmasked,
    _from_torch,
    check_versions,
    check_writeable,
    make_rng,
    saved_versions,
)
from .ops import _int_array
from .rnn import LSTM, _check_bool, _check_int, _check_parameter_memory, _physical_memory

__all__ = [
    "LSTM",
    "Linear",
    "Embedding",
    "Dropout",
    "CrossEntropyLoss",
    "softmax_cross_entropy",
    "log_softmax",
    "load_glove",
]


_F32 = np.dtype(np.float32)


def _f32c(a: np.ndarray) -> np.ndarray:
    """a as a C-contiguous, aligned float32 array (no copy when it already is one). A
    misaligned float32 buffer (np.frombuffer at an odd offset) is copied: the core refuses one,
    with an error naming its own argument (``a``, ``src``), not the caller's."""
    out = np.ascontiguousarray(a, dtype=np.float32)
    return out if out.flags.aligned else out.copy()


def _real(name: str, value: Any) -> np.ndarray:
    """``value`` as a NumPy array of a real dtype (float, int or bool), not converted yet: a
    complex array would lose its imaginary part in the float32 cast (only a ComplexWarning), a
    str one be parsed as numbers. Refused with a TypeError naming the argument, as the recurrent
    layers' inputs are; a torch tensor comes as float32 (one that requires grad too)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = _from_torch(value, name)
    _check_unmasked(name, value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nesting and the like
        raise TypeError(f"{name}: expected a real floating-point array ({e})") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a real floating-point array, got dtype {arr.dtype}")
    return arr


def _ready_grads(*named: tuple) -> None:
    """Before a backward accumulates anything: each ``(name, legend, parameter)``'s ``.grad``
    is a writeable floating-point array of the parameter's shape (``legend``: its shape in the
    legend's letters, for the message). A gradient set to None (PyTorch's
    ``zero_grad(set_to_none=True)`` habit) starts again from zeros, as the recurrent layers'
    do; anything else raises naming the parameter, before any gradient is changed."""
    fresh = []
    for name, legend, p in named:
        if p is None:
            continue
        g = p.grad
        if type(g) is np.ndarray and g.dtype is _F32 and g.shape == p.data.shape:
            if g.flags.writeable:  # the usual case, checked cheaply
                continue
        if g is None:
            fresh.append(p)
            continue
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            got = f"dtype {g.dtype}" if isinstance(g, np.ndarray) else type(g).__name__
            raise TypeError(
                f"{name}.grad: expected a real floating-point array (or None), got {got}"
            )
        if g.shape != p.data.shape:
            raise ValueError(
                f"{name}.grad: expected shape {legend} = {p.data.shape} (the parameter's), "
                f"got {g.shape}"
            )
        if not g.flags.writeable:
            raise ValueError(f"{name}.grad: expected a writeable array, got a read-only one")
    # only once every gradient passed: a failed call changes nothing. Under the lock, and only
    # if still None: two threads starting backward on one layer must add into the same new
    # array (each making its own lost the other's whole contribution).
    with _FRESH_GRAD_LOCK:
        for p in fresh:
            if p.grad is None:
                p.grad = np.zeros_like(p.data)


def _f32c_or_none(p: Optional[Parameter]) -> Optional[np.ndarray]:
    return None if p is None else _f32c(p.data)


def _rng_state(rng: np.random.Generator) -> dict:
    """A JSON-serialisable snapshot of a NumPy generator (for exact resume)."""
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state: Mapping) -> None:
    rng.bit_generator.state = dict(state)


class Linear(Module):
    r"""Affine map :math:`y = x W^T + b`, PyTorch's ``nn.Linear`` on NumPy arrays.

    .. math::
        y = x W^T + b, \qquad \partial x = \partial y\, W, \qquad
        \partial W \mathrel{+}= \partial y^T x, \qquad
        \partial b \mathrel{+}= \textstyle\sum_n \partial y_n

    The constructor, the parameter names and shapes are ``torch.nn.Linear``'s (its state dict
    loads as is); the product runs on lstm_fast's own GEMM. Unlike torch there is no autograd:
    :meth:`backward` is called explicitly with the output's gradient.

    Args:
        in_features: I, the size of each input row.
        out_features: O, the size of each output row.
        bias: learn an additive bias ``b`` (default True; False leaves ``bias`` None).
        seed: (keyword only) seed of the initialisation, default None (fresh entropy): weight
            and bias are drawn from U(-1/sqrt(I), 1/sqrt(I)), as PyTorch's.

    Inputs: x (..., I), any real dtype (converted to float32). Output: y (..., O), float32.
    ``backward(dy)`` takes dy as (..., O) or (N, O) (N: the product of the leading axes) and
    returns dx in the input's shape. In training mode the forward keeps a reference to x when
    it is already float32 and C-contiguous (no copy), as the recurrent layers do: do not modify
    it in place before ``backward``, whose ``dW = dy^T x`` reads it.

    Attributes:
        weight: :class:`~lstm_fast.module.Parameter` (O, I).  bias: Parameter (O,), or None.

    Raises ``ValueError`` when x's last axis is not I (``x: expected shape (..., I=3), got
    (4, 5)``) or the weight (bias) is no longer (O, I) ((O,)), naming it with both shapes, and
    ``TypeError`` for a complex, str or object x; the constructor raises
    ``ValueError`` naming the sizes when the weight and its gradient cannot fit in this
    machine's memory.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.nn import Linear
        >>> lin = Linear(3, 2, seed=0)
        >>> y = lin(np.ones((4, 3), np.float32))
        >>> dx = lin.backward(np.ones_like(y))
        >>> y.shape, dx.shape, lin.weight.grad.shape
        ((4, 2), (4, 3), (2, 3))
        >>> print(lin.weight.grad)  # dy^T x, summed over the 4 rows
        [[4. 4. 4.]
         [4. 4. 4.]]
        >>> lin
        Linear(3, 2, bias=True)
    """

    # what a training forward keeps for backward (copies and pickles leave it out)
    _saved_forward = {"_x": None, "_w": None, "_versions": ()}

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, seed=None):
        super().__init__()
        in_features = _check_int("in_features", in_features, 0)
        out_features = _check_int("out_features", out_features, 0)
        _check_bool("bias", bias)
        rng = make_rng(seed)
        _check_parameter_memory(
            "Linear",
            out_features * (in_features + (1 if bias else 0)),
            f"in_features={in_features}, out_features={out_features}",
        )
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0  # (PyTorch's, for I = 0)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)))
        self.bias = Parameter(rng.uniform(-bound, bound, (out_features,))) if bias else None
        self._x: Optional[np.ndarray] = None
        self._xshape: tuple = ()
        self._w: Optional[np.ndarray] = None
        self._versions: tuple = ()

    def extra_repr(self) -> str:
        """``"I, O, bias=True"``: the constructor arguments shown in the ``repr``."""
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

    def forward(self, x: Any) -> np.ndarray:
        """``y = x W^T + b`` for ``x`` (..., I); returns y (..., O), float32.

        In training mode the input (as (N, I)), the weight used and the parameters' versions are
        kept for :meth:`backward`; a call that raises keeps nothing. Raises ``TypeError`` for a
        non-real ``x`` and ``ValueError`` when its last axis is not I.
        """
        self._x = None  # a failed call leaves nothing for backward
        x = np.asarray(_real("x", x), dtype=np.float32)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., I={self.in_features}), got {x.shape}")
        # a weight of another shape (set through weight.data, or a Parameter put in its place)
        # gave the GEMM's error naming its own "b", or NumPy's reshape error (a (3, 3) weight
        # for O = 2 made y (N, 3))
        O, I = self.out_features, self.in_features
        for name, p, want, legend in (
            ("weight", self.weight, (O, I), f"(O={O}, I={I}) (out_features, in_features)"),
            ("bias", self.bias, (O,), f"(O={O},) (out_features,)"),
        ):
            if p is not None and np.shape(p.data) != want:
                raise ValueError(f"{name}: expected shape {legend}, got {np.shape(p.data)}")
        # lstm_fast's GEMM (its own thread team, bias in the same pass), not NumPy's BLAS: a BLAS
        # thread pool spinning between calls halved the recurrent kernels' speed next to it.
        x2 = _f32c(x.reshape(math.prod(x.shape[:-1]), self.in_features))
        w = _f32c(self.weight.data)
        y = _core.gemm(x2, w, False, True, _f32c_or_none(self.bias))
        self._x = x2 if self.training else None
        self._xshape = x.shape
        # the weight the product used (dx = dy . W in backward) and the parameters' versions
        self._w = w if self.training else None
        self._versions = saved_versions(self) if self.training else ()
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: Any) -> np.ndarray:
        """The gradients of the last training-mode :meth:`forward`, for its output gradient
        ``dy`` ((..., O), the output's shape, or (N, O)).

        Returns ``dx = dy W`` in the input's shape (float32), and accumulates (``+=``)
        ``dy^T x`` into ``weight.grad`` and the column sums of ``dy`` into ``bias.grad`` (a
        ``.grad`` set to None starts from zeros). May be called more than once for the same
        forward: each call adds again, as the recurrent layers' backward (two losses on one
        output; PyTorch's ``retain_graph=True``). Raises ``RuntimeError`` when there is no saved
        forward (none yet, the last one failed or ran in eval mode) or the weight was updated in
        place since (an optimizer step: run the forward again), ``ValueError`` for a ``dy`` of
        another shape, ``ValueError`` / ``TypeError`` for an unusable ``.grad`` (all checked
        before any gradient is changed).
        """
        if self._x is None:
            raise RuntimeError("Linear.backward: no saved forward (call it in training mode)")
        check_versions("Linear.backward", self._versions)
        for name, p, _ in self._versions:
            if self._parameters.get(name) is not p:  # (PyTorch's backward would feed the old one)
                raise RuntimeError(
                    f"Linear.backward: {name} was replaced by another Parameter after the "
                    "forward this backward differentiates; run the forward again"
                )
        dy = np.asarray(_real("dy", dy), dtype=np.float32)
        out_shape = (*self._xshape[:-1], self.out_features)
        N = self._x.shape[0]
        if dy.shape != out_shape and dy.shape != (N, self.out_features):
            raise ValueError(
                f"dy: expected shape {out_shape} (the output's) or (N={N}, O="
                f"{self.out_features}), got {dy.shape}"
            )
        _ready_grads(("weight", "(O, I)", self.weight), ("bias", "(O,)", self.bias))
        dy2 = _f32c(dy.reshape(N, self.out_features))
        gw = self.weight.grad
        gb = None if self.bias is None else self.bias.grad
        if _fast_grad(gw) and (gb is None or _fast_grad(gb)):
            # dW += dy^T . x in place; the bias gradient (dy's column sums) comes from the same
            # GEMM's packing of dy^T, not from a pass of its own over dy
            _core.gemm(dy2, self._x, True, False, None, out=gw, accumulate=True, a_row_sums=gb)
        else:
            gw += _core.gemm(dy2, self._x, True, False, None)
            if gb is not None:
                gb += dy2.sum(axis=0)
        dx = _core.gemm(dy2, self._w, False, False, None)
        return dx.reshape(self._xshape)


def _fast_grad(g: np.ndarray) -> bool:
    """A gradient the C++ kernels can accumulate into in place (others, a misaligned buffer
    too, are added into by NumPy)."""
    return (
        isinstance(g, np.ndarray)
        and g.dtype == np.float32
        and g.flags.c_contiguous
        and g.flags.writeable
        and g.flags.aligned
    )


class Embedding(Module):
    """Lookup table of ``V`` vectors of size ``E``: PyTorch's ``nn.Embedding`` on NumPy arrays.

    ``y[...] = weight[ids[...]]``; :meth:`backward` adds each row of the output gradient into
    the ``weight.grad`` row it was read from (repeated ids add up). The constructor's first
    three arguments, the initialisation N(0, 1) and the ``padding_idx`` rule are
    ``torch.nn.Embedding``'s (``max_norm``, ``scale_grad_by_freq`` and ``sparse`` are not
    offered).

    Args:
        num_embeddings: V, the number of rows (ids 0 .. V-1).
        embedding_dim: E, the size of each vector.
        padding_idx: a row that starts as zeros and never gets a gradient (default None: none);
            negative values count from the end (-1: row V-1), as PyTorch's.
        seed: (keyword only) seed of the N(0, 1) initialisation, default None (fresh entropy).

    Inputs: ids, an integer array of any shape (...), values in [0, V). Output: (..., E)
    float32, a new array.

    Attributes:
        weight: :class:`~lstm_fast.module.Parameter` (V, E).  padding_idx: the row, or None.

    Raises ``TypeError`` for non-integer ids, ``IndexError`` for ids outside [0, V),
    ``ValueError`` for a ``padding_idx`` outside [-V, V) or sizes whose weight and gradient
    cannot fit in this machine's memory.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.nn import Embedding
        >>> emb = Embedding(10, 4, padding_idx=0, seed=0)
        >>> y = emb(np.array([[1, 2], [3, 1]]))
        >>> y.shape
        (2, 2, 4)
        >>> emb.backward(np.ones_like(y))
        >>> emb.weight.grad[:4, 0].tolist()  # id 1 was read twice
        [0.0, 2.0, 1.0, 1.0]
    """

    _saved_forward = {"_ids": None, "_weight_p": None}  # (copies and pickles leave it out)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        *,
        seed=None,
    ):
        super().__init__()
        num_embeddings = _check_int("num_embeddings", num_embeddings, 0)
        embedding_dim = _check_int("embedding_dim", embedding_dim, 0)
        if padding_idx is not None:
            V = num_embeddings
            if (
                isinstance(padding_idx, (bool, np.bool_))
                or not isinstance(padding_idx, (int, np.integer))
                or not -V <= padding_idx < V
            ):
                raise ValueError(
                    f"padding_idx: expected None or an int in [-{V}, {V}), got {padding_idx!r}"
                )
            padding_idx = int(padding_idx) % V  # -1: the last row, as PyTorch stores it
        rng = make_rng(seed)
        _check_parameter_memory(
            "Embedding",
            num_embeddings * embedding_dim,
            f"num_embeddings={num_embeddings}, embedding_dim={embedding_dim}",
        )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        w = rng.standard_normal((num_embeddings, embedding_dim))
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)
        self._ids: Optional[np.ndarray] = None
        self._weight_p: Optional[Parameter] = None

    def extra_repr(self) -> str:
        """``"V, E"``: the constructor arguments shown in the ``repr``."""
        return f"{self.num_embeddings}, {self.embedding_dim}"

    @classmethod
    def from_pretrained(cls, weight: Any, padding_idx: Optional[int] = None) -> Embedding:
        """An embedding holding a copy of ``weight`` (V, E) (NumPy, torch tensor or nested
        lists), as ``torch.nn.Embedding.from_pretrained``, but trainable (there is no
        ``freeze``: leave its parameter out of the optimizer to keep it fixed).

        ``padding_idx`` marks a row that gets no gradient (its pretrained values are kept).
        Raises ``ValueError`` for a weight that is not 2-D or does not fit float32, and
        ``TypeError`` for a complex or non-numeric one.

        Example::

            >>> from lstm_fast.nn import Embedding
            >>> emb = Embedding.from_pretrained([[0.0, 1.0], [2.0, 3.0]])
            >>> emb
            Embedding(2, 2)
            >>> emb([1, 1]).tolist()
            [[2.0, 3.0], [2.0, 3.0]]
        """
        # checked as load_state_dict checks weights: a complex, str or 1e300 value is refused
        weight = _as_dtype("weight", weight)
        if weight.ndim != 2:
            raise ValueError(f"weight: expected shape (V, E), got {weight.shape}")
        emb = cls(weight.shape[0], weight.shape[1], padding_idx=padding_idx, seed=0)
        emb.weight.data[...] = weight
        return emb

    def _ready_grads(self) -> None:
        """weight.grad checked (None: zeros) before a backward writes it; LSTM.backward calls
        this first when the gradient of forward_embedded's fallback goes to this embedding."""
        _ready_grads(("weight", "(V, E)", self.weight))

    def load_glove(self, path: str, stoi: Mapping[str, int]) -> int:
        """Overwrite the rows of the words of ``stoi`` (word -> id) found in the GloVe-format
        text file ``path`` (see :func:`load_glove`); returns how many rows were written.

        The file's vectors must have E values. Every id is checked first (``ValueError`` for an
        id outside [0, V), and nothing is loaded); the other rows keep their values.
        """
        vecs = load_glove(path, stoi, self.embedding_dim)
        V = self.num_embeddings
        for w, i in stoi.items():  # every id checked before any row is written
            if i in vecs and (
                isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < V
            ):
                raise ValueError(
                    f"stoi: {w!r}: expected an id in [0, V={V}), got {i!r} (nothing was loaded)"
                )
        check_writeable("load_glove", {"weight": self.weight})
        for i, v in vecs.items():
            self.weight.data[i] = v
        return len(vecs)

    def forward(self, ids: Any) -> np.ndarray:
        """``weight[ids]``: (..., E) float32 for integer ``ids`` (...) in [0, V).

        In training mode a copy of the ids is kept for :meth:`backward`. Raises ``TypeError``
        for non-integer ids and ``IndexError`` for ids outside [0, V).
        """
        self._ids = None  # a failed call leaves nothing for backward
        ids = _int_array("ids", ids, "an integer array")
        need = 4 * ids.size * self.embedding_dim  # bytes of the float32 output
        mem = _physical_memory()
        if mem is not None and need > mem:
            # refused before the range check's pass over the ids (on a huge broadcast view of
            # ids, minutes of scanning before NumPy's MemoryError at the gather)
            raise MemoryError(
                f"ids: {ids.size} ids of shape {ids.shape} need an output of "
                f"{need / 2**30:.1f} GiB (E={self.embedding_dim} float32 per id), more than "
                f"this machine's {mem / 2**30:.1f} GiB of memory"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise IndexError(
                f"ids: expected values in [0, V={self.num_embeddings}), "
                f"got [{ids.min()}, {ids.max()}]"
            )
        V, E = self.num_embeddings, self.embedding_dim
        if np.shape(self.weight.data) != (V, E):  # (a weight assigned since, of another shape)
            raise ValueError(
                f"weight: expected shape (V={V}, E={E}), got {np.shape(self.weight.data)}"
            )
        # a copy: a batch buffer refilled in place before backward (a loader prefetching into
        # it) must not send the gradient to the next batch's rows
        self._ids = ids.copy() if self.training else None
        # the Parameter looked up, whose gradient backward writes (as Linear's); not as an
        # attribute assignment, which would register it as a parameter of its own
        self.__dict__["_weight_p"] = self.weight if self.training else None
        return self.weight.data[ids]

    def backward(self, dy: Any) -> None:
        """Accumulate the output gradient ``dy`` ((..., E), the output's shape, or (N, E)) into
        ``weight.grad``: row ``ids[n]`` gets ``dy[n]`` (``+=``; a None ``.grad`` starts from
        zeros), except the ``padding_idx`` row, which keeps what it holds. Returns None (ids
        have no gradient). May be called more than once for the same forward: each call adds
        again, as the recurrent layers' backward (PyTorch's ``retain_graph=True``).

        Raises ``RuntimeError`` without a saved training-mode forward and ``ValueError`` for a
        ``dy`` of another shape.
        """
        if self._ids is None:
            raise RuntimeError("Embedding.backward: no saved forward (call it in training mode)")
        used = getattr(self, "_weight_p", None)  # (None: pickled before it was kept)
        if used is not None and used is not self.weight:
            # the forward read the old one: its gradient went to a Parameter it never used
            raise RuntimeError(
                "Embedding.backward: weight was replaced by another Parameter after the "
                "forward this backward differentiates; run the forward again"
            )
        flat = self._ids.reshape(-1)
        dy = np.asarray(_real("dy", dy), dtype=np.float32)
        out_shape = (*self._ids.shape, self.embedding_dim)
        if dy.shape != out_shape and dy.shape != (flat.size, self.embedding_dim):
            raise ValueError(
                f"dy: expected shape {out_shape} (the output's) or (N={flat.size}, "
                f"E={self.embedding_dim}), got {dy.shape}"
            )
        self._ready_grads()
        dy2 = dy.reshape(flat.size, self.embedding_dim)
        g = self.weight.grad
        # the padding row gets nothing from this lookup, and keeps what it holds: zeroing it
        # afterwards wiped the gradient a weight-tied decoder (or an earlier use) had put there
        pad = self.padding_idx
        kept = g[pad].copy() if pad is not None else None
        if _fast_grad(g):
            _core.index_add_rows(g, flat.astype(np.int64, copy=False), _f32c(dy2))
        else:
            np.add.at(g, flat, dy2)
        if pad is not None:
            g[pad] = kept
        return None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_glove(path: str, stoi: Mapping[str, int], dim: Optional[int] = None) -> dict:
    r"""Read the vectors of known words from a GloVe-format text file.

    Args:
        path: a UTF-8 text file of ``word v1 v2 ... vE`` lines, separated by single spaces (a
            word2vec-style first line ``count dim`` is skipped, lines of one field ignored).
        stoi: word -> id; only these words are kept.
        dim: the number of values E every line must have (default None: the first line's).

    Returns:
        ``{id: vector (E,) float32}`` for the words of ``stoi`` found in the file.

    Raises ``ValueError`` naming the file and line for a line with another width or a value that
    is not a number.

    Example::

        >>> import os, tempfile
        >>> from lstm_fast.nn import load_glove
        >>> path = os.path.join(tempfile.mkdtemp(), "glove.txt")
        >>> with open(path, "w", encoding="utf-8") as f:
        ...     _ = f.write("the 0.5 1.0\ncat -1.0 2.0\ndog 3.0 4.0\n")
        >>> vecs = load_glove(path, {"cat": 7, "the": 2, "fish": 3})
        >>> sorted((i, v.tolist()) for i, v in vecs.items())
        [(2, [0.5, 1.0]), (7, [-1.0, 2.0])]
    """
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            if lineno == 1 and len(parts) == 2 and parts[0].isdigit():
                continue  # word2vec-style header "count dim"
            width = len(parts) - 1
            if dim is None:
                dim = width
            if width != dim:
                raise ValueError(f"{path}:{lineno}: expected {dim} values, got {width}")
            idx = stoi.get(parts[0])
            if idx is not None:
                try:
                    out[idx] = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    bad = next(v for v in parts[1:] if not _is_float(v))
                    raise ValueError(
                        f"{path}:{lineno}: expected {dim} numbers, got {bad!r}"
                    ) from None
    return out


class Dropout(Module):
    r"""Zero each element with probability ``p`` in training mode and scale the rest by 1/(1-p).

    .. math::
        y = x \odot m / (1 - p), \qquad m_i \sim \mathrm{Bernoulli}(1 - p)

    PyTorch's ``nn.Dropout`` (without ``inplace``): in eval mode, or with ``p = 0``, the input
    comes back unchanged (as float32: the same array when it already is one). ``p = 1`` zeroes
    everything. The masks come from the layer's own generator, whose state
    :meth:`get_rng_state` returns, so a resumed run draws the same masks.

    Args:
        p: the probability of zeroing an element, in [0, 1] (default 0.5).
        seed: (keyword only) seed of the layer's generator, default None (fresh entropy).

    Inputs: x of any shape, any real dtype. Output: the same shape, float32. ``backward(dy)``
    returns ``dy`` times the same mask and scale.

    Raises ``ValueError`` for a ``p`` outside [0, 1].

    Example::

        >>> import numpy as np
        >>> from lstm_fast.nn import Dropout
        >>> drop = Dropout(0.5, seed=0)
        >>> y = drop(np.ones((2, 4), np.float32))
        >>> sorted(set(y.ravel().tolist()))  # dropped, or kept and scaled by 1 / (1 - p)
        [0.0, 2.0]
        >>> bool((drop.backward(np.ones_like(y)) == y).all())
        True
        >>> x = np.ones(3, np.float32)
        >>> drop.eval()(x) is x
        True
    """

    _saved_forward = {"_mask": None, "_ran": False}  # (copies and pickles leave it out)

    def __init__(self, p: float = 0.5, *, seed=None):
        super().__init__()
        real = not isinstance(p, bool) and isinstance(p, (int, float, np.integer, np.floating))
        if not real or not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a float in [0, 1], got {p!r}")
        self.p = float(p)
        self._rng = make_rng(seed)
        self._mask: Optional[np.ndarray] = None
        self._ran = False  # a forward completed (its mask, or None: it dropped nothing)

    def extra_repr(self) -> str:
        """``"p=0.5"``: the constructor argument shown in the ``repr``."""
        return f"p={self.p}"

    def get_rng_state(self) -> dict:
        """The state of the layer's mask generator, a JSON-able dict (NumPy's
        ``bit_generator.state``), for :meth:`set_rng_state` on resume."""
        return _rng_state(self._rng)

    def set_rng_state(self, state: Mapping) -> None:
        """Restore the mask generator to ``state``, a dict :meth:`get_rng_state` returned: the
        masks drawn afterwards are those drawn after that call."""
        _set_rng_state(self._rng, state)

    def forward(self, x: Any) -> np.ndarray:
        """``x`` with each element zeroed with probability ``p`` and the rest scaled by
        1/(1-p) (training mode); ``x`` itself, as float32, in eval mode or with ``p = 0``.
        Raises ``TypeError`` for a non-real ``x``."""
        self._mask = None  # a failed call leaves nothing for backward
        self._ran = False
        x = np.asarray(_real("x", x), dtype=np.float32)
        if not self.training or self.p == 0.0:
            self._ran = True
            return x
        if self.p == 1.0:
            self._mask = np.zeros_like(x)
        else:
            keep = self._rng.random(x.shape, dtype=np.float32) >= self.p
            self._mask = keep.astype(np.float32) * np.float32(1.0 / (1.0 - self.p))
        self._ran = True
        return x * self._mask

    def backward(self, dy: Any) -> np.ndarray:
        """``dy`` times the last forward's mask and scale (``dy`` itself when that forward
        dropped nothing: eval mode or ``p = 0``). Raises ``ValueError`` when ``dy`` does not
        have the output's shape, ``RuntimeError`` when no forward completed (none yet, or the
        last one raised)."""
        # (without a forward dy came back unchanged, as if nothing had been dropped: a training
        # forward that raised left the gradient of the one before it unmasked)
        if not getattr(self, "_ran", True):  # (a Dropout pickled before the flag: as before)
            raise RuntimeError(
                "Dropout.backward: no saved forward (the last one raised, or none ran)"
            )
        dy = np.asarray(_real("dy", dy), dtype=np.float32)
        if self._mask is None:
            return dy
        if dy.shape != self._mask.shape:  # broadcasting would scale a wrong-shaped dy silently
            raise ValueError(
                f"dy: expected shape {self._mask.shape} (the output's), got {dy.shape}"
            )
        return dy * self._mask


def log_softmax(logits: Any, axis: int = -1) -> np.ndarray:
    r"""Numerically stable log-softmax along ``axis``, PyTorch's ``F.log_softmax(x, dim)``.

    .. math::
        \mathrm{log\_softmax}(z)_v = z_v - \max z - \log \textstyle\sum_u e^{z_u - \max z}

    Args:
        logits: a real array of any shape (converted to float32).
        axis: the axis the probabilities sum over (default -1, the last).

    Returns a float32 array of the logits' shape. Raises ``TypeError`` for complex or non-numeric
    logits.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.nn import log_softmax
        >>> z = log_softmax(np.array([[0.0, 0.0], [1000.0, 0.0]]))
        >>> print(np.round(z[0], 4))  # log(1/2)
        [-0.6931 -0.6931]
        >>> print(z[1])  # no overflow: exp(1000) is never computed
        [    0. -1000.]
    """
    z = np.asarray(_real("logits", logits), dtype=np.float32)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _xent_targets(targets: Any, lead: tuple, V: int, ignore_index, reduction: str):
    """Checked targets as int64 with -1 for ignored rows, and the gradient's scale. ``lead``:
    the logits' shape without V; the targets have that shape or (N,)."""
    if hasattr(targets, "detach") and hasattr(targets, "numpy"):  # a torch tensor
        targets = _from_torch(targets, "targets")
    _check_unmasked("targets", targets)
    t = np.asarray(targets)
    N = math.prod(lead)
    if t.shape != lead and t.shape != (N,):  # a transposed (B, T) for (T, B) is not taken
        raise ValueError(
            f"targets: expected shape {lead} (the logits' without V) or (N={N},), got {t.shape}"
        )
    t = t.reshape(-1)
    if ignore_index is not None and (
        isinstance(ignore_index, (bool, np.bool_))
        or not isinstance(ignore_index, (int, np.integer))
    ):
        raise TypeError(f"ignore_index: expected None or an int, got {ignore_index!r}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets: expected integer class ids, got dtype {t.dtype}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    valid = None if ignore_index is None else t != ignore_index
    tt = t if valid is None else np.where(valid, t, 0)
    if tt.size and (tt.min() < 0 or tt.max() >= V):
        raise IndexError(f"targets: expected values in [0, V={V}), got [{tt.min()}, {tt.max()}]")
    count = N if valid is None else int(valid.sum())
    scale = 1.0 / max(count, 1) if reduction == "mean" else 1.0
    t64 = np.ascontiguousarray(tt if valid is None else np.where(valid, tt, -1), dtype=np.int64)
    return t64, scale


def softmax_cross_entropy(
    logits: Any,
    targets: Any,
    *,
    ignore_index: Optional[int] = -100,
    reduction: str = "mean",
    need_grad: bool = True,
    inplace: bool = False,
):
    r"""Fused softmax + cross-entropy: the loss and its gradient in one pass over the logits.

    The loss is PyTorch's ``F.cross_entropy(logits, targets, ignore_index=..., reduction=...)``
    with class-id targets; the gradient is what its backward would give for an upstream 1.

    .. math::
        \ell_n = -\log \frac{e^{z_{n,y_n}}}{\sum_v e^{z_{n,v}}}, \qquad
        \partial \ell_n / \partial z_{n,v} = \mathrm{softmax}(z_n)_v - [v = y_n]

    computed with the row maximum subtracted (no overflow for any finite logits).

    Args:
        logits: (N, V) (or (..., V), flattened).  targets: (N,) integer class ids.
        ignore_index: rows whose target equals it contribute nothing (and get zero gradient);
            default -100 as PyTorch's, None: every row counts.
        reduction: ``"mean"`` (over counted rows) or ``"sum"``.
        need_grad: also return the gradient (False saves the (N, V) buffer's second use).
        inplace: work in the logits' own buffer when they are a writeable, aligned
            C-contiguous float32 array (they are overwritten, and the gradient shares their
            memory); else a copy is made.

    Returns:
        ``(loss, dlogits)``: the loss as a Python float (computed in float64), and the gradient
        with the logits' shape (float32), or None when ``need_grad`` is False. With
        ``reduction="mean"`` and every row ignored, the loss is 0.0 where PyTorch's is NaN
        (0/0), so that an all-padding batch does not poison a running mean; the gradient is
        all zeros, as PyTorch's.

    Raises ``ValueError`` for logits with no class axis or targets of another shape (a (B, T)
    transpose of (T, B) logits too), a bad ``reduction``; ``TypeError`` for non-integer targets,
    a non-int ``ignore_index`` or a ``need_grad`` / ``inplace`` that is not a bool;
    ``IndexError`` for a target outside [0, V).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.nn import softmax_cross_entropy
        >>> logits = np.zeros((3, 4), np.float32)
        >>> loss, g = softmax_cross_entropy(logits, np.array([0, 2, -100]))
        >>> round(loss, 4)  # log 4, the mean over the 2 counted rows
        1.3863
        >>> print(g)
        [[-0.375  0.125  0.125  0.125]
         [ 0.125  0.125 -0.375  0.125]
         [ 0.     0.     0.     0.   ]]
    """
    # bool switches, not truthiness: inplace="False" overwrote the caller's logits
    _check_bool("need_grad", need_grad)
    _check_bool("inplace", inplace)
    _check_unmasked("logits", logits)  # (the in-place path reads a masked array's values too)
    reuse = (
        inplace
        and isinstance(logits, np.ndarray)
        and logits.dtype == np.float32
        and logits.flags.c_contiguous
        and logits.flags.writeable
        and logits.flags.aligned
    )
    # (one copy: the check converts nothing)
    z = logits if reuse else np.array(_real("logits", logits), dtype=np.float32, order="C")
    shape = z.shape
    if z.ndim == 0 or shape[-1] == 0:
        raise ValueError(f"logits: expected shape (..., V) with V >= 1, got {shape}")
    V = shape[-1]
    t64, scale = _xent_targets(targets, shape[:-1], V, ignore_index, reduction)
    z = z.reshape(-1, V)
    # One fused pass per row in C++ (SIMD exp, rows split over lstm_fast's threads): z becomes
    # scale * (softmax - onehot) in place, ignored rows zero; per-row losses in float64.
    nll = _core.softmax_xent(z, t64, scale)
    loss = float(nll.sum()) * scale
    if not need_grad:
        return loss, None
    return loss, z.reshape(shape)


class CrossEntropyLoss(Module):
    """``loss = criterion(logits, targets)``; ``dlogits = criterion.backward()``.

    A thin module over :func:`softmax_cross_entropy`, with the arguments of PyTorch's
    ``nn.CrossEntropyLoss`` it supports: class-id targets, ``ignore_index`` and ``reduction``
    ``"mean"`` or ``"sum"`` (no class ``weight``, ``label_smoothing``, probability targets or
    ``reduction="none"``). The forward returns a Python float, and computes the gradient at the
    same time; :meth:`backward` hands it out.

    Args:
        ignore_index: targets equal to it are left out of the loss and get a zero gradient
            (default -100, as PyTorch's; None: every row counts).
        reduction: ``"mean"`` over the counted rows (default; 0.0 when every row is ignored,
            where PyTorch's is NaN, with the same all-zero gradient) or ``"sum"``.

    Inputs: logits (N, V) or (..., V), targets (N,) or the logits' shape without V, integer
    class ids in [0, V). Output: the loss, a float.

    Raises ``TypeError`` for a non-int ``ignore_index`` and ``ValueError`` for another
    ``reduction``, at construction; the forward raises as :func:`softmax_cross_entropy`.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.nn import CrossEntropyLoss
        >>> criterion = CrossEntropyLoss()
        >>> loss = criterion(np.zeros((2, 4), np.float32), np.array([1, 3]))
        >>> round(loss, 4)  # log 4: uniform logits
        1.3863
        >>> print(criterion.backward())
        [[ 0.125 -0.375  0.125  0.125]
         [ 0.125  0.125  0.125 -0.375]]
    """

    _saved_forward = {"_grad": None}  # (copies and pickles leave it out)

    def __init__(self, ignore_index: Optional[int] = -100, reduction: str = "mean"):
        super().__init__()
        # checked here, as PyTorch's, not at the first forward of a training run
        if ignore_index is not None and (
            isinstance(ignore_index, (bool, np.bool_))
            or not isinstance(ignore_index, (int, np.integer))
        ):
            raise TypeError(f"ignore_index: expected None or an int, got {ignore_index!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        self.ignore_index, self.reduction = ignore_index, reduction
        self._grad: Optional[np.ndarray] = None

    def forward(self, logits: Any, targets: Any) -> float:
        """The loss of ``logits`` (..., V) against class ids ``targets`` (as
        :func:`softmax_cross_entropy`), a float; the gradient is kept for :meth:`backward`
        (in any mode). A call that raises keeps nothing."""
        self._grad = None  # a failed call leaves nothing for backward
        loss, g = softmax_cross_entropy(
            logits, targets, ignore_index=self.ignore_index, reduction=self.reduction
        )
        self._grad = g
        return loss

    def backward(self, scale: float = 1.0) -> np.ndarray:
        """The gradient of the last forward's loss with respect to its logits, times ``scale``
        (default 1.0: the array kept by the forward itself; otherwise a scaled copy). Raises
        ``RuntimeError`` before any forward and ``TypeError`` for a ``scale`` that is not a real
        number."""
        if self._grad is None:
            raise RuntimeError("CrossEntropyLoss.backward: call forward first")
        # a real number (or 0-d array): a str was parsed as a number, a complex one truncated
        try:
            s = _real("scale", scale)
        except TypeError:
            s = None
        if s is None or s.ndim or s.dtype.kind == "b":
            got = f"shape {s.shape}" if s is not None and s.ndim else type(scale).__name__
            raise TypeError(f"scale: expected a real number, got {got}")
        return self._grad if scale == 1.0 else self._grad * np.float32(scale)
