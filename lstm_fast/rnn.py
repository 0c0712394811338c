"""Recurrent layers with PyTorch's constructors, parameter names and shapes, on lstm_fast's kernels.

:class:`LSTM`, :class:`GRU`, :class:`RNN` (``nn.LSTM``/``nn.GRU``/``nn.RNN``) and the single-step
:class:`LSTMCell`, :class:`GRUCell`, :class:`RNNCell`. Parameters are NumPy arrays held in
:class:`~lstm_fast.module.Parameter` objects named exactly as PyTorch's (``weight_ih_l0``,
``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0``, ``..._reverse``), so
``layer.load_state_dict(torch_layer.state_dict())`` works as is.

Variable lengths are first class: ``layer(x, hx, lengths=...)`` (any order) or a
``torch.nn.utils.rnn.PackedSequence``. Rows are sorted by length inside, each step computes only
the still-active rows, the reverse direction starts at each sequence's own last step, outputs past
a sequence's length are zero and ``h_n``/``c_n`` are the states at each sequence's last real step.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import warnings
from typing import Any, Callable, Optional

import numpy as np

from . import ops
from ._interrupt import deferred_interrupt
from .module import FRESH_GRAD_LOCK as _FRESH_GRAD_LOCK
from .module import (
    Module,
    Parameter,
    _check_dense_tensor,
    _check_unmasked,
    _from_torch,
    check_versions,
    make_rng,
    saved_versions,
)
from .ops import _finite, _finite_real

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform
        return None


def _check_parameter_memory(what: str, floats: int, sizes: str) -> None:
    """Before a constructor allocates: parameters (and their gradients, float32) that cannot fit
    in this machine's memory raise ValueError naming the sizes, instead of NumPy's allocation
    error (or, for a huge num_layers, allocating layer after layer for minutes)."""
    need = 8 * floats  # float32 data + float32 gradient
    mem = _physical_memory()
    if mem is not None and need > mem:
        raise ValueError(
            f"{what}({sizes}): the parameters and their gradients need {need / 2**30:.1f} GiB, "
            f"more than this machine's {mem / 2**30:.1f} GiB of memory"
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the function calling this one that names
    the first frame outside lstm_fast (the user's line, however many of the package's
    ``__init__`` frames lie between: LSTM has none of its own, RNN one)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def _keep_saved(mod: Any, saved: Any) -> None:
    """A training forward's ``_saved`` for the next backward, counting the forwards whose saved
    state nothing differentiated (see :func:`_warn_unused_forwards`)."""
    d = mod.__dict__
    d["_saved"] = saved
    d["_unused_forwards"] = d.get("_unused_forwards", 0) + 1


def _warn_unused_forwards(mod: Any, how: str) -> None:
    """At a backward: warn if the module ran several training forwards since its last backward.
    It keeps the last one only, so a module applied to several inputs (a shared encoder, a loop
    of cell steps) and then differentiated once per input got the last input's gradients each
    time, silently. ``how``: what to do instead."""
    d = mod.__dict__
    unused = d.get("_unused_forwards", 0)
    d["_unused_forwards"] = 0
    if unused > 1:
        name = type(mod).__name__
        warnings.warn(
            f"{name}.backward: the {'cell' if name.endswith('Cell') else 'layer'} ran {unused} "
            "training-mode forwards since its last backward but keeps the last one only, which "
            f"this backward differentiates. {how}",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def _guard_finite(layer, **arrays) -> None:
    """check_finite=True: NaN/Inf in an input, a state (hx may be a tuple) or, for a layer, a
    parameter raises ValueError naming it, before any work."""
    named = {}
    for name, a in arrays.items():
        if isinstance(a, (tuple, list)) and not _is_packed(a):
            named.update(
                {
                    f"{name}[{i}]": _finite_view(v, f"{name}[{i}]")
                    for i, v in enumerate(a)
                    if v is not None
                }
            )
        elif a is not None:
            named[name] = _finite_view(a, name)
    if layer is not None:
        named.update({n: p.data for n, p in layer.named_parameters()})
    _finite(**named)


def _finite_view(a: Any, name: str = "input") -> Any:
    """What check_finite scans of an argument: a torch tensor's values (one that requires grad
    or is bfloat16 as well, as the conversion at the boundary takes them), a PackedSequence's
    data; anything else as NumPy sees it (the boundary's conversion reports what is wrong)."""
    if _is_packed(a):
        a = a.data
    if hasattr(a, "detach") and hasattr(a, "numpy"):
        a = _from_torch(a, name)
    _check_unmasked(name, a)
    try:
        a = np.asarray(a)
    except (ValueError, TypeError):  # ragged nesting: the conversion raises its TypeError
        return None
    if a.dtype.kind == "f" and a.dtype.itemsize > 4:
        # as the boundary converts it: a float64 beyond float32's range is +-Inf there
        with np.errstate(over="ignore"):
            a = a.astype(np.float32)
    return a


def _ready_grads(module: Module) -> None:
    """Before a backward accumulates anything: every parameter's ``.grad`` is a writeable
    float32 C-contiguous array of the parameter's shape. A gradient set to None (PyTorch's
    ``zero_grad(set_to_none=True)`` habit) starts again from zeros; anything else raises naming
    the parameter, so no layer of the stack has accumulated when another one fails."""
    fresh = []
    for name, p in module._parameters.items():
        g = p.grad
        if type(g) is np.ndarray and g.dtype is _F32 and g.shape == p.data.shape:
            flags = g.flags
            if flags.c_contiguous and flags.writeable and flags.aligned:  # the usual case
                continue
        if g is None:
            fresh.append(p)
            continue
        if not isinstance(g, np.ndarray) or g.dtype != np.float32:
            got = f"dtype {g.dtype}" if isinstance(g, np.ndarray) else type(g).__name__
            raise TypeError(f"{name}.grad: expected a float32 array (or None), got {got}")
        if g.shape != p.data.shape:
            raise ValueError(
                f"{name}.grad: expected shape {p.data.shape} (the parameter's), got {g.shape}"
            )
        if not g.flags.c_contiguous or not g.flags.writeable or not g.flags.aligned:
            what = (
                "read-only"
                if not g.flags.writeable
                else f"strides {g.strides}"
                if not g.flags.c_contiguous
                else "a misaligned buffer"
            )
            raise ValueError(
                f"{name}.grad: expected a writeable, float32-aligned C-contiguous array, got {what}"
            )
    # only once every gradient passed: a failed call changes nothing. Under the lock, and only
    # if still None: two threads starting backward on one layer must add into the same new
    # array (each making its own lost the other's whole contribution).
    with _FRESH_GRAD_LOCK:
        for p in fresh:
            if p.grad is None:
                p.grad = np.zeros_like(p.data)


# (first byte, end) of an array's memory: np.lib.array_utils from NumPy 2, np before
_byte_bounds = getattr(getattr(np.lib, "array_utils", np), "byte_bounds", None) or np.byte_bounds


def _memory_owner(a: Any) -> Any:
    """The object at the end of ``a``'s chain of bases (views' ``base``, memoryviews' ``obj``)."""
    while True:
        if isinstance(a, np.ndarray) and a.base is not None:
            a = a.base
        elif isinstance(a, memoryview):
            a = a.obj
        else:
            return a


def _grads_apart(module: Module, reads: list) -> None:
    """Before a stacked backward accumulates anything (after :func:`_ready_grads`): no
    parameter's ``.grad`` shares memory with a parameter or with an array of ``reads``
    (``(name, array or None)``: the forward's input and states, dy, dh_n, dc_n). The core
    refuses such a gradient too, but only once it reaches that layer: the layers above had
    accumulated by then (and a reverse direction, which reads a copy of the input, wrote into
    the input while the forward direction read it). One sweep over the byte ranges, sorted.

    The usual case is settled without it (the sweep took 130 us per backward of a 2-layer
    bidirectional layer, 2 % of S6's training step): every gradient an array of its own memory
    (a base of None: zero_grad's and _ready_grads' np.zeros_like), and no parameter or array of
    ``reads`` derived from one of them (its chain of bases, through memoryviews, ends elsewhere),
    so nothing can overlap a gradient."""
    grads = [p.grad for p in module._parameters.values() if p is not None]
    gids = {id(g) for g in grads}
    if len(gids) == len(grads) and all(g.base is None for g in grads):
        others = [p.data for p in module._parameters.values() if p is not None]
        others += [a for _, a in reads if isinstance(a, np.ndarray)]
        if all(id(_memory_owner(a)) not in gids for a in others):
            return
    spans = []  # (first byte, end, is a gradient, name)
    for name, p in module._parameters.items():
        if p is not None:
            spans.append((*_byte_bounds(p.grad), True, f"{name}.grad"))
            spans.append((*_byte_bounds(p.data), False, f"parameter {name}"))
    for name, a in reads:
        if isinstance(a, np.ndarray):
            spans.append((*_byte_bounds(a), False, name))
    reach = {True: (0, ""), False: (0, "")}  # the furthest end of each kind so far
    for lo, hi, grad, name in sorted(spans, key=lambda s: s[0]):
        if lo == hi:  # empty: overlaps nothing
            continue
        end, other = reach[not grad]
        if end > lo:  # started before (or at) lo, ends after it
            g, a = (name, other) if grad else (other, name)
            raise ValueError(f"{g}: expected memory separate from {a}, got an overlapping array")
        if hi > reach[grad][0]:
            reach[grad] = (hi, name)


def _as_float32(name: str, value: Any) -> np.ndarray:
    """Explicit conversion at the layer boundary: real floating input -> C-contiguous, aligned
    float32 (a misaligned float32 buffer, e.g. np.frombuffer at an odd offset, is copied: the
    core refuses one)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = _from_torch(value, name)
    _check_unmasked(name, value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nesting, (h, None) and the like
        raise TypeError(f"{name}: expected a real floating-point array ({e})") from None
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        # None, a dict, ...: NumPy wraps the object itself in a 0-d object array
        got = type(value).__name__ if arr.dtype == object and not arr.ndim else f"dtype {arr.dtype}"
        raise TypeError(f"{name}: expected a real floating-point array, got {got}")
    try:  # unlike ascontiguousarray, 0-d stays 0-d
        out = np.asarray(arr, dtype=np.float32, order="C")
        return out if out.flags.aligned else out.copy()
    except MemoryError as e:  # a copy beyond memory (a huge broadcast view): name the argument
        raise MemoryError(
            f"{name}: {e} (a C-contiguous float32 copy of the {arr.dtype} array given, shape "
            f"{arr.shape}, strides {arr.strides})"
        ) from None


def _read_only(y: np.ndarray) -> np.ndarray:
    """A training forward's output as a read-only view: the cache backward reads refers to
    y's memory (h_{t-1} of every step), so an in-place edit of the returned array (``y *= mask``,
    ``np.maximum(y, 0, out=y)``) would silently change the gradients. NumPy now raises at the
    edit instead, as torch raises for a saved tensor modified in place; ``y.copy()`` is a
    writeable one. Applied in every layout, so code does not break when batch_first changes."""
    v = y.view()
    v.setflags(write=False)
    return v


def _c(a):
    return None if a is None else np.ascontiguousarray(a)


def _reverse_index(lengths: np.ndarray, T: int) -> np.ndarray:
    """(T, B) time index that reverses each column within its length (identity past it)."""
    t = np.arange(T)[:, None]
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


def _take_rows(a: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``np.take(a, index, axis=1)`` for (T, B, F) arrays: float32 C-contiguous ones in one
    pass on the core's threads into pooled memory (no page faults of a fresh array)."""
    if a.dtype == np.float32 and a.ndim == 3 and a.flags.c_contiguous:
        return ops._core.take_rows(a, index)
    return np.take(a, index, axis=1)


def _lengths_of(lengths: Any, T: int, B: int) -> np.ndarray:
    arr = ops._int_vector("lengths", lengths)  # int64 copy (torch tensors, [] for B = 0)
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape (B={B},), got {arr.shape}")
    if B and (arr.min() < 0 or arr.max() > T):
        at = int(np.flatnonzero((arr < 0) | (arr > T))[0])  # the first bad one, not all B
        raise ValueError(f"lengths: expected values in [0, T={T}], got {arr[at]} at position {at}")
    return arr


_F32 = np.dtype(np.float32)


# Parameter names of layer 0's forward direction, in _Direction.forward's order.
@functools.lru_cache(maxsize=4096)
def _param_names(k: int, d: int) -> tuple:
    """The five parameter names of layer k, direction d (weight_hr's whether it exists or not)."""
    sfx = f"_l{k}" + ("_reverse" if d else "")
    return tuple(n + sfx for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"))


_LAYER0_NAMES = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0")


def _real_steps(lens: np.ndarray, T: int, batch_first: bool) -> np.ndarray:
    """check_finite with lengths: the (T, B) mask ((B, T) ``batch_first``) of the steps the
    kernels read, True for step t of sequence b while t < lens[b]; its padding is never read."""
    real = np.arange(T)[:, None] < lens[None, :]
    return real.T if batch_first else real


def _saved_meta(T: int, B: int, batch_first: bool, **given: Any) -> dict:
    """What a layer's backward needs besides the caches: the input's layout (``batch_first``
    as the forward saw it: the attribute may be changed before backward; defaults: batched,
    no lengths, not packed) and any ``given`` entries (``embedding`` for forward_embedded)."""
    meta = dict(T=T, B=B, unbatched=False, order=None, inv=None, rev=None, packed=None, fused=False)
    meta["batch_first"] = bool(batch_first)
    meta.update(given)
    return meta


def _plain_state(a: Any, B: int, F: int) -> bool:
    """A state the plain forward takes as is: a float32 C-contiguous (1, B, F) ndarray."""
    return (
        type(a) is np.ndarray
        and a.dtype is _F32
        and a.shape == (1, B, F)
        and a.flags.c_contiguous
        and a.flags.aligned
    )


def _is_packed(x: Any) -> bool:
    return all(hasattr(x, a) for a in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"))


def _check_packed(
    where: str,
    batch_sizes: Any,
    sorted_indices: Any,
    unsorted_indices: Any,
    rows: int,
    error: type = ValueError,
    name: str = "input",
) -> None:
    """A PackedSequence's fields as ``pack_padded_sequence`` / ``pack_sequence`` make them,
    checked before anything reads them (``where``: a prefix for the messages, ``name``: the
    argument's name, ``error``: the exception raised): ``batch_sizes`` a non-empty 1-D int64
    CPU tensor of positive, non-increasing counts summing to at most the ``rows`` of ``data``;
    ``sorted_indices`` and ``unsorted_indices`` both None, or 1-D int64 tensors of
    ``batch_sizes[0]`` elements, a permutation and its inverse. torch's
    ``pad_packed_sequence`` trusts them: a negative count aborts the process there
    (``free(): invalid pointer``), an index past the batch fails unnamed, and a sorted_indices
    that is no permutation silently reads one sequence twice."""
    import torch

    if not isinstance(batch_sizes, torch.Tensor) or batch_sizes.dim() != 1:
        got = (
            f"{batch_sizes.dim()}-D tensor"
            if isinstance(batch_sizes, torch.Tensor)
            else type(batch_sizes).__name__
        )
        raise error(
            f"{where}{name}.batch_sizes: expected a 1-D int64 CPU tensor "
            f"(a PackedSequence from pack_padded_sequence / pack_sequence), got a {got}"
        )
    if batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise error(
            f"{where}{name}.batch_sizes: expected a 1-D int64 CPU tensor, "
            f"got {batch_sizes.dtype} on {batch_sizes.device}"
        )
    if batch_sizes.numel() == 0:
        raise error(f"{where}{name}.batch_sizes: expected at least one step, got none")
    bs = batch_sizes.numpy(force=True)  # (NumPy: the same checks in torch ops took 10 µs)
    bad = ""
    if bs.min() < 1:
        bad = "counts >= 1"
    elif bs.size > 1 and (bs[1:] > bs[:-1]).any():
        bad = "non-increasing counts (sequences sorted by length, longest first)"
    elif bs.sum() > rows:
        bad = f"counts summing to at most {name}.data's {rows} rows"
    if bad:
        shown = bs.tolist() if bs.size <= 16 else "[...]"
        raise error(f"{where}{name}.batch_sizes: expected {bad}, got {shown} (sum {int(bs.sum())})")
    if sorted_indices is None and unsorted_indices is None:
        return
    B = int(bs[0])
    perms = {}
    for field, ix in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
        if ix is None:
            raise error(
                f"{where}{name}.{field}: expected a 1-D int64 tensor of {B} batch indices when "
                f"the other of sorted_indices / unsorted_indices is given, got None"
            )
        if not isinstance(ix, torch.Tensor) or ix.dim() != 1 or ix.dtype != torch.int64:
            got = (
                f"a {ix.dim()}-D {ix.dtype} tensor"
                if isinstance(ix, torch.Tensor)
                else type(ix).__name__
            )
            raise error(f"{where}{name}.{field}: expected a 1-D int64 tensor, got {got}")
        a = ix.numpy(force=True)
        if a.size != B or a.min() < 0 or a.max() >= B or np.bincount(a, minlength=B).max() > 1:
            shown = a.tolist() if a.size <= 16 else "[...]"
            raise error(
                f"{where}{name}.{field}: expected a permutation of the {B} batch indices "
                f"0..{B - 1} (batch_sizes[0] = {B}), got {shown}"
            )
        perms[field] = a
    if (perms["unsorted_indices"][perms["sorted_indices"]] != np.arange(B)).any():
        raise error(
            f"{where}{name}.unsorted_indices: expected the inverse permutation of "
            f"{name}.sorted_indices"
        )


def _packed_lengths(ps: Any) -> list:
    """Each sequence's length in a PackedSequence, in the caller's (unsorted) batch order."""
    import torch

    bs = ps.batch_sizes
    lens = (bs[:, None] > torch.arange(int(bs[0]) if len(bs) else 0)[None, :]).sum(0)
    if ps.unsorted_indices is not None:
        lens = lens[ps.unsorted_indices]
    return lens.tolist()


def _check_same_packing(name: str, given: Any, packed: Any) -> None:
    """A PackedSequence gradient must hold the forward's sequences (the same lengths in the
    caller's batch order; its own sorting is undone by unpacking), else its rows would be read
    as other sequences' steps."""
    want, got = _packed_lengths(packed), _packed_lengths(given)
    if got != want:
        raise ValueError(
            f"{name}: expected a PackedSequence of the output's sequence lengths {want}, "
            f"got lengths {got}"
        )


# Cell kinds: gates per unit, has a cell state, core forward / backward.
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _needed(pairs: list) -> tuple:
    """The (names, shapes, name set) of the parameters a module's configuration computes with."""
    return tuple(n for n, _ in pairs), tuple(sh for _, sh in pairs), frozenset(n for n, _ in pairs)


def _check_complete(mod: Module) -> None:
    """Before any work: every parameter ``mod``'s configuration computes with is registered
    (``del layer.bias_ih_l0`` left the layer running as if that bias were zeros; a deleted
    weight failed in the core with a message naming no layer)."""
    needed = getattr(mod, "_needed", None)
    if needed is None or mod._parameters.keys() >= needed[2]:
        return
    params = mod._parameters
    for name, shape in zip(needed[0], needed[1]):
        if params.get(name) is None:
            hint = " (or build the module with bias=False)" if name.startswith("bias") else ""
            raise AttributeError(
                f"{name}: missing (deleted from the module), but {type(mod).__name__}"
                f"({mod.extra_repr()}) computes with it: assign a float32 Parameter of shape "
                f"{shape}{hint}"
            )


class _Direction:
    """One layer, one direction over sorted rows: the core call and what backward needs."""

    @staticmethod
    def forward(mode, x, w, h0, c0, bs, training, proj, order=None):
        """``order``: the rows of x (and y, dy, dx) in the caller's order, row r of the sorted
        batch is x[:, order[r]]; h0/c0 sorted (LSTM without projection only: its core sorts x's
        rows as it packs them and writes y's in place)."""
        w_ih, w_hh, b_ih, b_hh, w_hr = w
        if mode == "LSTM":  # proj_size: the fused core with the projection h_t = m_t W_hr^T
            kw = dict(weight_hr=w_hr) if proj else dict(sorted_indices=order)
            y, hn, cn, cache = ops.lstm_forward(
                x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=training, batch_sizes=bs, **kw
            )
            return y, hn, cn, cache
        if mode == "GRU":
            y, hn, cache = ops.gru_forward(
                x, w_ih, w_hh, b_ih, b_hh, h0, training=training, batch_sizes=bs
            )
        else:
            nl = "tanh" if mode == "RNN_TANH" else "relu"
            y, hn, cache = ops.rnn_forward(
                x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity=nl, training=training, batch_sizes=bs
            )
        return y, hn, None, cache

    @staticmethod
    def backward(mode, cache, dy, dhn, dcn, grads, need_dx=True):
        """Accumulates into grads = (dW_ih, dW_hh, db_ih, db_hh, dW_hr); returns dx, dh0, dc0
        (dx None when not ``need_dx``: the core skips its GEMM). Gradients that share memory
        (tied parameters, e.g. weight_hh is weight_ih) get the sum of their uses, as in
        PyTorch: the core refuses overlapping outputs before any work, so the call is made
        again with a zeroed temporary for each repeat, added afterwards."""
        try:
            return _Direction._backward(mode, cache, dy, dhn, dcn, grads, need_dx)
        except ValueError as e:
            if "expected memory separate from" not in str(e):
                raise
            separate, repeats = _separate_grads(grads)
            if not repeats:
                raise
        out = _Direction._backward(mode, cache, dy, dhn, dcn, separate, need_dx)
        for g, tmp in repeats:
            g += tmp
        return out

    @staticmethod
    def _backward(mode, cache, dy, dhn, dcn, grads, need_dx):
        g_ih, g_hh, g_bih, g_bhh, g_hr = grads
        if isinstance(cache, ops.LSTMProjCache):
            dx, dh0, dc0, *_ = ops._core.lstm_proj_backward(
                cache, dy, dhn, dcn, g_ih, g_hh, g_bih, g_bhh, g_hr, need_dx=need_dx
            )
            return dx, dh0, dc0
        if mode == "LSTM":
            dx, dh0, dc0, *_ = ops._core.lstm_backward(
                cache, dy, dhn, dcn, g_ih, g_hh, g_bih, g_bhh, need_dx=need_dx
            )
            return dx, dh0, dc0
        fn = ops._core.gru_backward if mode == "GRU" else ops._core.rnn_backward
        dx, dh0, *_ = fn(cache, dy, dhn, g_ih, g_hh, g_bih, g_bhh, need_dx=need_dx)
        return dx, dh0, None


def _separate_grads(grads: tuple) -> tuple:
    """``grads`` with each array that overlaps an earlier one replaced by a zeroed temporary,
    and the (gradient, temporary) pairs to add once the core has accumulated."""
    out, repeats = [], []
    for g in grads:
        if isinstance(g, np.ndarray) and any(
            isinstance(o, np.ndarray) and np.may_share_memory(g, o) for o in grads[: len(out)]
        ):
            tmp = np.zeros(g.shape, np.float32)
            out.append(tmp)
            repeats.append((g, tmp))
        else:
            out.append(g)
    return tuple(out), repeats


def _grads_overlap(a: tuple, b: tuple) -> bool:
    """Whether a gradient of one direction shares memory with one of the other (a Parameter
    shared by both): their backward calls must then not run at once."""
    a = [q.grad for q in a if q is not None and isinstance(q.grad, np.ndarray)]
    b = [q.grad for q in b if q is not None and isinstance(q.grad, np.ndarray)]
    return any(np.may_share_memory(g, h) for g in a for h in b)


# ---- both directions at once ---------------------------------------------------------------

# None: decide by size; True / False: always / never run the two directions of a bidirectional
# layer concurrently (for benchmarks and tests).
BIDIRECTIONAL_CONCURRENT: Optional[bool] = None
_pool: list = []
_pool_lock = threading.Lock()


def _reset_pool_in_child() -> None:
    # A forked child has none of the parent's threads: its helper (and a lock another thread may
    # have held during fork) must be made anew. The core runs such a child on one thread anyway
    # (lstm_fast.cpu_info()["forked_serial"]), so the helper is only needed again after exec.
    global _pool_lock
    _pool.clear()
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_in_child)


def _directions(run: Callable[[int], Any], D: int, shared: bool = False) -> list:
    """``[run(0), run(1)]`` (or ``[run(0)]``). With two directions and at least two threads, the
    two run at once, each with half the thread team (the kernels release the GIL): two
    independent recurrences overlap instead of each paying a barrier per step on the whole
    team. On a team of two, the team's own two threads run them (``_core._run_pair``: the worker
    that spins after every parallel region takes the reverse direction, instead of spinning
    beside a third thread); on a larger team, the reverse direction runs on a helper thread of
    its own, each direction with a team of its own. ``shared``: the two write the same memory
    (the gradient of a parameter both directions use) and run one after the other."""
    P = ops._core._team_threads()
    concurrent = BIDIRECTIONAL_CONCURRENT if BIDIRECTIONAL_CONCURRENT is not None else P >= 2
    if D == 1 or shared or not concurrent or P < 2:
        return [run(d) for d in range(D)]
    n1 = P // 2
    n0 = P - n1

    def on(d: int, n: int) -> Callable[[], Any]:
        def direction():
            before = ops._core._get_local_threads()
            ops._core._set_local_threads(n)
            try:
                return run(d)
            finally:
                ops._core._set_local_threads(before)

        return direction

    if P == 2:
        # Ctrl-C is raised once both directions are done (_run_pair returns after both).
        with deferred_interrupt():
            return list(ops._core._run_pair(on(0, 1), on(1, 1)))
    with _pool_lock:
        if not _pool:
            from concurrent.futures import ThreadPoolExecutor

            _pool.append(ThreadPoolExecutor(1, thread_name_prefix="lstm_fast-reverse"))
    # Ctrl-C is raised once both directions are done: an interrupt between the submission and
    # the join (or during the join) had left the helper writing the caller's arrays.
    with deferred_interrupt():
        fut = _pool[0].submit(on(1, n1))
        try:
            r0 = on(0, n0)()
        finally:
            r1 = _join(fut)  # always joined (its exception, if any, propagates)
    return [r0, r1]


def _join(fut: Any) -> Any:
    """``fut.result()``, waited for through a KeyboardInterrupt (one a program's own SIGINT
    handler raises), which is raised once the helper is done: until then it writes into the
    caller's arrays (the reverse direction's gradients), and code that handles the interrupt (a
    checkpoint saved, the next step of a notebook's loop) would use them at the same time."""
    from concurrent.futures import wait

    interrupted = False
    while not fut.done():
        try:
            wait([fut])
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    return fut.result()


# The settings a layer's step() buffers are sized by (assigning one drops them).
_STREAM_SIZES = frozenset(
    ("input_size", "hidden_size", "num_layers", "proj_size", "bias", "bidirectional")
    + ("nonlinearity",)
)


def _nonlinearity_mode(value: Any) -> str:
    """RNN's and RNNCell's kernel for ``nonlinearity`` (assigned after construction too: the
    kernel chosen at construction ran on, while the repr showed the new one)."""
    if value not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{value}'. Select from 'tanh' or 'relu'.")
    return "RNN_TANH" if value == "tanh" else "RNN_RELU"


class _RNNBase(Module):
    _mode = "LSTM"

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
        check_finite: bool = False,
    ):
        super().__init__()
        _check_bool("check_finite", check_finite)
        _check_bool("bias", bias)  # as torch.nn.LSTM: bias="False" must not mean True
        _check_bool("batch_first", batch_first)
        _check_bool("bidirectional", bidirectional)  # "False" would build two directions
        input_size = _check_int("input_size", input_size, 1)
        hidden_size = _check_int("hidden_size", hidden_size, 1)
        num_layers = _check_int("num_layers", num_layers, 1)
        proj_size = _check_int("proj_size", proj_size, 0)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)):
            raise TypeError(f"dropout: expected a float in [0, 1], got {type(dropout).__name__}")
        if not 0.0 <= float(dropout) <= 1.0 or math.isnan(dropout):
            raise ValueError(f"dropout: expected a float in [0, 1], got {dropout}")
        if proj_size and self._mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size: expected 0 <= proj_size < hidden_size={hidden_size}, got {proj_size}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                UserWarning,
                stacklevel=_caller_stacklevel(),
            )
        for name, v in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("bias", bool(bias)),
            ("batch_first", bool(batch_first)),
            ("dropout", float(dropout)),
            ("bidirectional", bool(bidirectional)),
            ("proj_size", proj_size),
            ("_rng", make_rng(seed)),
            ("check_finite", bool(check_finite)),
            ("_saved", None),
            ("_stream", None),
        ):
            object.__setattr__(self, name, v)
        H, P = hidden_size, proj_size or hidden_size
        D = 2 if bidirectional else 1
        G = _GATES[self._mode] * H
        per_direction = [  # parameters of one direction of layer 0, of a later layer
            G * (n_in + P + (2 if bias else 0)) + (P * H if proj_size else 0)
            for n_in in (input_size, D * P)
        ]
        _check_parameter_memory(
            type(self).__name__,
            D * (per_direction[0] + (num_layers - 1) * per_direction[1]),
            f"input_size={input_size}, hidden_size={hidden_size}, num_layers={num_layers}"
            + (f", proj_size={proj_size}" if proj_size else "")
            + (", bidirectional=True" if bidirectional else ""),
        )
        bound = 1.0 / math.sqrt(H)
        needed = []  # (name, shape) of every parameter this configuration computes with
        for k in range(num_layers):
            layer_in = input_size if k == 0 else D * P
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                shapes = [("weight_ih", (G, layer_in)), ("weight_hh", (G, P))]
                if bias:
                    shapes += [("bias_ih", (G,)), ("bias_hh", (G,))]
                if proj_size:
                    shapes += [("weight_hr", (P, H))]
                needed += [(name + sfx, shape) for name, shape in shapes]
                for name, shape in shapes:
                    w = self._rng.uniform(-bound, bound, size=shape).astype(np.float32)
                    setattr(self, name + sfx, Parameter(w))
        object.__setattr__(self, "_needed", _needed(needed))

    @property
    def num_directions(self) -> int:
        """D: 2 if bidirectional else 1."""
        return 2 if self.bidirectional else 1

    @property
    def _has_cell(self) -> bool:
        return self._mode == "LSTM"

    @property
    def _out_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def _flat_weights_names(self) -> list:
        """Parameter names in PyTorch's order: per layer, per direction, ``weight_ih``,
        ``weight_hh``, then ``bias_ih``, ``bias_hh`` (with ``bias``), then ``weight_hr`` (with
        ``proj_size``)."""
        names = []
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                wi, wh, bi, bh, wr = _param_names(k, d)
                names += (
                    [wi, wh] + ([bi, bh] if self.bias else []) + ([wr] if self.proj_size else [])
                )
        return names

    @property
    def all_weights(self) -> list:
        """The parameters per layer and direction, each a list in PyTorch's order (``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_hr`` as the layer has them), as
        ``torch.nn.LSTM.all_weights`` (:class:`~lstm_fast.module.Parameter` objects here)."""
        per = len(self._flat_weights_names) // (self.num_layers * self.num_directions)
        flat = [self._parameters[n] for n in self._flat_weights_names]
        return [flat[i : i + per] for i in range(0, len(flat), per)]

    def flatten_parameters(self) -> None:
        """Nothing to do (PyTorch's compacts the weights for cuDNN; the kernels here pack what
        they need per call): kept so that code written for ``torch.nn.LSTM`` runs unchanged."""

    def extra_repr(self) -> str:
        """The constructor arguments that differ from the defaults, as PyTorch's ``repr``."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
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
        get = self._parameters.get
        return tuple(get(n) for n in _param_names(k, d))

    def _bad_parameter(self) -> Optional[Exception]:
        """After the core refused a call: the error naming the first parameter it cannot take
        (``weight_ih_l1_reverse: expected ...``: which layer and direction, which the core's
        ``weight_ih`` does not say), or None when every parameter is fine."""
        L, D, H, P = self.num_layers, self.num_directions, self.hidden_size, self._out_size
        g = f"{_GATES[self._mode]}H" if self._mode in ("LSTM", "GRU") else "H"
        G = _GATES[self._mode] * H
        p_letter = "P" if self.proj_size else "H"
        for k in range(L):
            n_in = self.input_size if k == 0 else D * P
            i_letter = "I" if k == 0 else ("D*" if D == 2 else "") + p_letter
            want = (
                ((G, n_in), f"{g}, {i_letter}"),
                ((G, P), f"{g}, {p_letter}"),
                ((G,), f"{g},"),
                ((G,), f"{g},"),
                ((P, H), "P, H"),
            )
            for d in range(D):
                for name, q, (shape, legend) in zip(_param_names(k, d), self._params(k, d), want):
                    if q is None:
                        # one the sizes read now need (num_layers raised after construction):
                        # the core named its own argument, "weight_hh: ... got NoneType"
                        kind = name.split("_l")[0]
                        if (
                            kind in ("weight_ih", "weight_hh")
                            or (kind == "weight_hr" and self.proj_size)
                            or (kind.startswith("bias") and self.bias)
                        ):
                            return AttributeError(
                                f"{name}: missing, but {type(self).__name__}"
                                f"({self.extra_repr()}) computes with it: assign a float32 "
                                f"Parameter of shape {shape}"
                            )
                        continue
                    a = q.data
                    if not isinstance(a, np.ndarray):
                        return TypeError(
                            f"{name}: expected a float32 NumPy array as the parameter's data, "
                            f"got {type(a).__name__}"
                        )
                    if a.dtype != np.float32:
                        return TypeError(
                            f"{name}: expected dtype float32, got {a.dtype} (assign a float32 "
                            "array, e.g. p.data = p.data.astype(np.float32))"
                        )
                    if a.shape != shape:
                        return ValueError(
                            f"{name}: expected shape {shape} ({legend}), got {a.shape}"
                        )
                    if not a.flags.c_contiguous:
                        return ValueError(
                            f"{name}: expected a C-contiguous array, got strides {a.strides} "
                            "(assign np.ascontiguousarray(...))"
                        )
                    if not a.flags.aligned:
                        return ValueError(
                            f"{name}: expected float32-aligned data, got a misaligned buffer "
                            "(assign a copy: p.data = p.data.copy())"
                        )
                    try:
                        _check_unmasked(name, a)  # (the core refuses it naming weight_ih)
                    except ValueError as e:
                        return e
        return None

    def _raise_named(self) -> None:
        """In an ``except`` clause around a core call: raise the named parameter error if a
        parameter is the cause (else the caller re-raises the core's own)."""
        bad = self._bad_parameter()
        if bad is not None:
            raise bad from None

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _STREAM_SIZES:
            # step()'s buffers (one state slot per layer, sized by these) are made anew: a
            # stream kept from before ran the old number of layers while forward ran the new
            object.__setattr__(self, "_stream", None)

    def _on_load(self) -> None:
        # New weights: the streaming buffers are made anew, and the cache of a training forward
        # (which refers to the weights' memory and holds gates of the old ones) is dropped, so a
        # backward now raises instead of mixing the two (torch raises for weights copied in
        # place between forward and backward, too).
        object.__setattr__(self, "_stream", None)
        object.__setattr__(self, "_saved", None)
        self.__dict__["_unused_forwards"] = 0
        super()._on_load()

    # copies and pickles take the parameters and settings, not the kernels' cache of the last
    # training forward (native memory): a copy's backward needs a forward of its own
    _saved_forward = {"_saved": None, "_unused_forwards": 0}

    def __getstate__(self) -> dict:
        """As :meth:`Module.__getstate__ <lstm_fast.module.Module.__getstate__>` (no saved
        forward); streaming buffers are made anew on the copy's first ``step``."""
        state = super().__getstate__()
        state.pop("_streams", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_streams", threading.local())

    # The buffers of :meth:`step`, one set per Python thread: two threads streaming through the
    # same layer at once must not share state slots. Setting None drops every thread's.
    @property
    def _stream(self) -> Optional[_Stream]:
        return getattr(self._streams, "stream", None)

    @_stream.setter
    def _stream(self, st: Optional[_Stream]) -> None:
        if st is None:
            object.__setattr__(self, "_streams", threading.local())
        else:
            self._streams.stream = st

    # -- input handling -------------------------------------------------------------------------
    def _states_in(self, hx, B, unbatched):
        """hx -> list of (L*D, B, P) h and (L*D, B, H) c (or None)."""
        L, D, H, P = self.num_layers, self.num_directions, self.hidden_size, self._out_size
        if hx is None:
            return None, None
        if self._has_cell:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx: expected a tuple (h_0, c_0)")
            items = [("h_0", hx[0], P), ("c_0", hx[1], H)]
        else:
            if isinstance(hx, (tuple, list)):
                raise TypeError("hx: expected one array h_0, got a tuple")
            items = [("h_0", hx, H)]
        out = []
        for nm, a, F in items:
            a = _as_float32(nm, a)
            want = (L * D, F) if unbatched else (L * D, B, F)
            if a.shape != want:
                letters = "(D*num_layers, " + ("" if unbatched else "B, ")
                letters += ("P" if F == P and self.proj_size and nm == "h_0" else "H") + ")"
                raise ValueError(f"hx: {nm}: expected shape {letters} = {want}, got {a.shape}")
            out.append(a[:, None, :] if unbatched else a)
        return out[0], (out[1] if self._has_cell else None)

    def _layers(self, x, h0, c0, B, bs, flip, first=None, order=None):
        """Run the layer stack on time-major x: returns (y, h_n, c_n, saved). ``first``, when
        given, replaces the call of layer 0 (one direction): ``first(w, h0, c0)`` -> (y, hn,
        cn, cache) with that layer's weights and initial state; x is then not read. ``order``:
        the rows of x and of every layer's output stay in the caller's order, the cores sort
        them (_Direction.forward)."""
        L, D, H, P = self.num_layers, self.num_directions, self.hidden_size, self._out_size
        training = self.training
        h_n = np.empty((L * D, B, P), np.float32)
        c_n = np.empty((L * D, B, H), np.float32) if self._has_cell else None
        # A failed call changes nothing: the dropout generator is put back (a later layer's bad
        # parameter is found after the earlier layers drew their masks; a KeyboardInterrupt
        # between two layers too: the next forward draws the masks a fresh layer would).
        draws = training and self.dropout > 0 and L > 1
        rng_state = self._rng.bit_generator.state if draws else None
        try:
            return self._run_layers(x, h0, c0, B, bs, flip, first, order, h_n, c_n)
        except BaseException as e:
            if draws:
                self._rng.bit_generator.state = rng_state
            if isinstance(e, (TypeError, ValueError)):
                self._raise_named()
            raise

    def _run_layers(self, x, h0, c0, B, bs, flip, first, order, h_n, c_n):
        L, D = self.num_layers, self.num_directions
        training = self.training
        saved = []
        layer_in = x
        P = self._out_size
        for k in range(L):
            # Two directions: each writes its half of the layer's output from its own thread
            # (the reverse one in forward time order), not a serial concatenation after both.
            out = np.empty((x.shape[0], B, D * P), np.float32) if D == 2 else None

            def run(d, k=k, layer_in=layer_in, out=out):
                p = self._params(k, d)
                w = tuple(None if q is None else q.data for q in p)
                idx = k * D + d
                h0_i = None if h0 is None else _c(h0[idx])
                c0_i = None if c0 is None else _c(c0[idx])
                if k == 0 and first is not None:
                    res = first(w, h0_i, c0_i)
                else:
                    inp = layer_in if d == 0 else np.ascontiguousarray(flip(layer_in))
                    res = _Direction.forward(
                        self._mode,
                        inp,
                        w,
                        h0_i,
                        c0_i,
                        bs,
                        training,
                        bool(self.proj_size),
                        order,
                    )
                if out is not None:
                    out[:, :, d * P : (d + 1) * P] = res[0] if d == 0 else flip(res[0])
                return res

            for d, (y, hn, cn, cache) in enumerate(_directions(run, D)):
                idx = k * D + d
                h_n[idx] = hn
                if c_n is not None:
                    c_n[idx] = cn
                if D == 1:
                    out = y
                saved.append(cache)
            mask = None
            if training and self.dropout > 0 and k < L - 1:
                pdrop = self.dropout
                keep = self._rng.random(out.shape) >= pdrop
                mask = keep.astype(np.float32) / np.float32(1.0 - pdrop) if pdrop < 1 else None
                out = out * mask if mask is not None else np.zeros_like(out)
            saved.append(("dropout", mask, self.dropout if k < L - 1 else 0.0))
            layer_in = np.ascontiguousarray(out, dtype=np.float32)
        return layer_in, h_n, c_n, saved

    # -- forward --------------------------------------------------------------------------------
    def _forward_plain(self, x: np.ndarray, hx: Any):
        """forward() of one layer, one direction, on a float32 (T, B, I) array (or (B, T, I)
        with batch_first) without lengths: the same core call, outputs and saved state as the
        general path, without its per-call Python (about 15 us of a 20 us call at T = B = 1).
        Returns None where anything is unusual (hx of another type or shape, ...): the general
        path then handles the call and raises its errors."""
        if x.shape[2] != self.input_size:
            return None
        B = x.shape[0] if self.batch_first else x.shape[1]
        H = self.hidden_size
        P = self.proj_size or H
        lstm = self._mode == "LSTM"
        h0 = c0 = None
        if hx is not None:
            if lstm:
                if type(hx) not in (tuple, list) or len(hx) != 2:
                    return None
                h0, c0 = hx
                if not (_plain_state(h0, B, P) and _plain_state(c0, B, H)):
                    return None
                h0, c0 = h0[0], c0[0]
            else:
                if not _plain_state(hx, B, H):
                    return None
                h0 = hx[0]
        if self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        get = self._parameters.get
        w = tuple([None if q is None else q.data for q in [get(n) for n in _LAYER0_NAMES]])
        training = self.training
        try:
            y, hn, cn, cache = _Direction.forward(
                self._mode, x, w, h0, c0, None, training, bool(self.proj_size)
            )
        except (TypeError, ValueError):
            self._raise_named()
            raise
        if training:
            # (inputs: what the core read, for the names in an overlap error of the backward)
            meta = _saved_meta(
                x.shape[0],
                B,
                self.batch_first,
                versions=saved_versions(self),
                inputs=(("the input", x), ("h_0", h0), ("c_0", c0)),
            )
            _keep_saved(self, ([cache, ("dropout", None, 0.0)], meta))
        if self.batch_first:
            y = np.ascontiguousarray(y.transpose(1, 0, 2))
        if training:
            y = _read_only(y)
        return y, ((hn[None], cn[None]) if lstm else hn[None])

    def forward(self, input: Any, hx: Any = None, lengths: Any = None):
        """Run the layer over ``input`` (also by calling it): the class docstring's Inputs and
        Outputs (LSTM ``output, (h_n, c_n)``; GRU and RNN ``output, h_n``)."""
        # A failed call must not leave the previous forward's cache for backward to use.
        object.__setattr__(self, "_saved", None)
        if not self.training:  # (backward after it raises: no saved forward)
            self.__dict__["_unused_forwards"] = 0
        _check_complete(self)
        if (
            lengths is None
            and type(input) is np.ndarray
            and input.dtype is _F32
            and input.ndim == 3
            and self.num_layers == 1
            and not self.bidirectional
            and not self.check_finite
            and input.flags.c_contiguous
            and input.flags.aligned
        ):
            out = self._forward_plain(input, hx)
            if out is not None:
                return out
        packed = None
        if _is_packed(input):
            import torch
            from torch.nn.utils.rnn import pad_packed_sequence

            if lengths is not None:
                raise ValueError("lengths: not allowed with a PackedSequence input")
            _check_dense_tensor("input.data", input.data)  # (torch's unpacking fails unnamed)
            _check_packed(
                "",
                input.batch_sizes,
                input.sorted_indices,
                input.unsorted_indices,
                input.data.shape[0],
            )
            packed = input
            padded, lens = pad_packed_sequence(input, batch_first=False)
            x = _as_float32("input", padded)
            lengths = lens.numpy()
            if hx is not None and input.sorted_indices is not None:
                pass  # hx is in the caller's (unsorted) batch order, as in PyTorch
            _ = torch  # imported for PackedSequence construction below
        else:
            x = _as_float32("input", input)
        given = x  # as the caller laid it out, for check_finite's messages
        D = self.num_directions
        if x.ndim == 2 and packed is None:
            unbatched = True
            if lengths is not None:
                raise ValueError("lengths: not allowed with unbatched (T, I) input")
            if x.shape[1] != self.input_size:
                raise ValueError(
                    f"input: expected shape (T, I={self.input_size}) for unbatched input, "
                    f"got {x.shape}"
                )
            x = x[:, None, :]
        elif x.ndim == 3:
            unbatched = False
            if x.shape[2] != self.input_size:
                want = "(B, T, I=" if self.batch_first and packed is None else "(T, B, I="
                raise ValueError(f"input: expected shape {want}{self.input_size}), got {x.shape}")
            if self.batch_first and packed is None:
                x = x.transpose(1, 0, 2)
        else:
            raise ValueError(
                "input: expected 3 dimensions (T, B, I) (or 2 for unbatched input), "
                f"got {x.ndim} with shape {x.shape}"
            )
        T, B = x.shape[0], x.shape[1]
        h0, c0 = self._states_in(hx, B, unbatched)
        order = inv = bs = rev = None
        fused = False
        lens = given_lens = None
        if lengths is not None:
            lens = given_lens = _lengths_of(lengths, T, B)
        if self.check_finite:  # (after every argument's checks: arguments before values)
            # A PackedSequence's data holds real steps only: its index is the caller's. With
            # lengths, x is checked at the real steps only (its padding is never read).
            if packed is not None:
                _guard_finite(self, input=packed, hx=hx)
            else:
                _guard_finite(self, input=given if lengths is None else None, hx=hx)
                if lengths is not None:
                    _finite_real("input", given, _real_steps(lens, T, self.batch_first))
        if lengths is not None:
            order = np.argsort(-lens, kind="stable")
            inv = np.argsort(order)
            lens = lens[order]
            # A unidirectional LSTM keeps x, y (dy, dx) in the caller's order, its core sorts
            # the rows as it packs them; the others take sorted copies (x[:, order] is not
            # contiguous) and un-sort the results.
            fused = D == 1 and self._mode == "LSTM" and not self.proj_size
            if not fused:
                x = _take_rows(x, order)
            if h0 is not None:
                h0 = _take_rows(h0, order)
                c0 = None if c0 is None else _take_rows(c0, order)
            bs = np.ascontiguousarray((lens[None, :] > np.arange(T)[:, None]).sum(1), np.int64)
            if D == 2:
                rev = (_reverse_index(lens, T), np.arange(B)[None, :])
        x = np.ascontiguousarray(x)

        def flip(a):
            return a[::-1] if rev is None else a[rev]

        training = self.training
        layer_in, h_n, c_n, saved = self._layers(
            x, h0, c0, B, bs, flip, order=order if fused else None
        )
        y = layer_in
        if training:
            meta = _saved_meta(
                T,
                B,
                self.batch_first,
                unbatched=unbatched,
                order=order,
                inv=inv,
                rev=rev,
                packed=packed,
                fused=fused,
                lengths=given_lens,  # (B,) in the caller's order, or None
                # the first layer's input and states as its cores read them (the caches hold
                # them already), for backward's _grads_apart
                inputs=(("the input", x), ("h_0", h0), ("c_0", c0)),
            )
            meta["versions"] = saved_versions(self)
            _keep_saved(self, (saved, meta))
        else:
            object.__setattr__(self, "_saved", None)
        if inv is not None:
            if not fused:
                y = _take_rows(y, inv)
            h_n = _take_rows(h_n, inv)
            c_n = None if c_n is None else _take_rows(c_n, inv)
        hidden = (h_n, c_n) if self._has_cell else h_n
        if packed is not None:
            return self._repack(y, packed), hidden
        if unbatched:
            y = y[:, 0, :]
            hidden = (h_n[:, 0, :], c_n[:, 0, :]) if self._has_cell else h_n[:, 0, :]
        else:
            y = np.ascontiguousarray(y.transpose(1, 0, 2) if self.batch_first else y)
        return (_read_only(y) if training else y), hidden

    def forward_embedded(self, ids: Any, embedding: Any, hx: Any = None):
        """``self(embedding(ids), hx)`` with the embedding lookup folded into the first layer.

        ``ids``: (T, B) integer token ids, laid out as ``forward``'s input ((B, T) with
        ``batch_first``, (T,) unbatched); ``embedding``: the
        :class:`~lstm_fast.nn.Embedding` (or any module with a ``weight`` Parameter (V, I) and a
        ``backward``) whose rows feed this layer. The first layer's input projection is made
        once per token of the vocabulary (``weight . W_ih^T + b``, V rows) and gathered by id,
        instead of a GEMM over all T * B tokens; in :meth:`backward` the gradient goes straight
        to ``embedding.weight.grad`` (summed per token first, so its two products have V rows,
        not T * B) and the returned input gradient is None. Outputs are bitwise
        ``forward``'s, the gradients the same up to float rounding. Layers this does not cover
        (GRU/RNN, bidirectional, ``proj_size``, ``batch_first``, a ``padding_idx``, unbatched
        ``(T,)`` ids), and calls with fewer tokens than the vocabulary has rows (T * B < V,
        where the table would cost more than the tokens' own projection: generating one token
        at a time), run
        ``forward(embedding(ids), hx)`` and send the input gradient to ``embedding.backward`` --
        the same contract either way. An embedding in eval mode (``embedding.eval()``, which
        keeps no forward for a backward of its own) is frozen: on either path it gets no
        gradient, and the layer's own gradients are computed as usual.
        """
        object.__setattr__(self, "_saved", None)  # (as in forward)
        if not self.training:
            self.__dict__["_unused_forwards"] = 0
        _check_complete(self)
        ids = ops._int_array("ids", ids, "an integer array")
        if ids.ndim not in (1, 2):
            want = "(B, T)" if self.batch_first else "(T, B)"
            raise ValueError(f"ids: expected shape {want} (or (T,) unbatched), got {ids.shape}")
        weight = getattr(getattr(embedding, "weight", None), "data", None)
        if not isinstance(weight, np.ndarray) or weight.ndim != 2:
            raise TypeError("embedding: expected an Embedding module (a weight Parameter (V, I))")
        if weight.shape[1] != self.input_size:
            raise ValueError(
                f"embedding: expected weight of shape (V, I={self.input_size}), got {weight.shape}"
            )
        eligible = (
            self._mode == "LSTM"
            and not self.proj_size
            and self.num_directions == 1
            and not self.batch_first
            and not self.check_finite
            and getattr(embedding, "padding_idx", None) is None
            and weight.dtype == np.float32
            and weight.flags.c_contiguous
            and weight.flags.aligned
            and ids.ndim == 2
            and ids.size > 0
        )
        # the table has V rows, the plain projection T * B: a call with fewer tokens than the
        # vocabulary (one token at a time while generating) gathers E[ids] instead
        fused = eligible and weight.shape[0] <= ids.size
        if eligible:
            # the first bad id in C order, quoted as the caller gave it, on either path (as
            # int64, uint64 ids above its range would wrap to negative numbers)
            flat = ids.ravel()
            wrong = (
                flat >= weight.shape[0]
                if ids.dtype.kind == "u"
                else (flat < 0) | (flat >= weight.shape[0])
            )
            if wrong.any():
                bad = flat[int(np.argmax(wrong))]
                raise IndexError(f"ids: expected values in [0, V={weight.shape[0]}), got {bad}")
        frozen = not getattr(embedding, "training", True)
        if not fused:
            out = self.forward(embedding(ids), hx)
            if self._saved is not None:
                self._saved[1]["embedding"] = (embedding, False, frozen)
            return out
        T, B = ids.shape
        training = self.training
        h0, c0 = self._states_in(hx, B, False)
        ids64 = np.ascontiguousarray(ids, dtype=np.int64)

        def first(w, h0_0, c0_0):
            w_ih, w_hh, b_ih, b_hh, _ = w
            return ops._core.lstm_forward_embedded(
                ids64, weight, w_ih, w_hh, b_ih, b_hh, h0_0, c0_0, training
            )

        y, h_n, c_n, saved = self._layers(None, h0, c0, B, None, None, first=first)
        if training:
            # the fused backward reads the embedding's weight too (dW_ih of the first layer)
            emb_p = embedding.weight
            versions = saved_versions(self) + (
                ("embedding.weight", emb_p, getattr(emb_p, "_version", 0)),
            )
            meta = _saved_meta(
                T,
                B,
                False,
                embedding=(embedding, True, frozen),
                versions=versions,
                inputs=(("embedding.weight", weight), ("h_0", h0), ("c_0", c0)),
            )
            _keep_saved(self, (saved, meta))
        else:
            object.__setattr__(self, "_saved", None)
        return (_read_only(y) if training else y), (h_n, c_n)

    @staticmethod
    def _repack(y, packed):
        """y (T, B, F) in the caller's batch order as a PackedSequence with the input's own
        batch_sizes, sorted_indices and unsorted_indices (as torch's layers return it), so
        that output.data lines up row for row with input.data. (Packing y again with a sort
        of its own reordered rows of equal length, and gave an enforce_sorted input's output
        sorted_indices.)"""
        import torch
        from torch.nn.utils.rnn import PackedSequence

        bs = packed.batch_sizes
        order = packed.sorted_indices
        rows = y if order is None else y[:, order.numpy()]  # sorted by length, longest first
        active = np.arange(y.shape[1])[None, :] < bs.numpy()[:, None]  # (T, B): step t's rows
        data = torch.from_numpy(np.ascontiguousarray(rows[: len(bs)][active]))
        return PackedSequence(data, bs, order, packed.unsorted_indices)

    # -- backward -------------------------------------------------------------------------------
    def _backward_plain(self, cache, meta, dy, dh_n, dc_n, need_dx):
        """backward() after a plain forward (see _forward_plain) with float32 C-contiguous
        arrays of the expected shapes: the general path's core call and results without its
        per-call Python; None where anything is unusual (the general path then runs)."""
        T, B, batch_first = meta["T"], meta["B"], meta["batch_first"]
        H = self.hidden_size
        P = self.proj_size or H
        want = (B, T, P) if batch_first else (T, B, P)
        if not (
            type(dy) is np.ndarray
            and dy.dtype is _F32
            and dy.shape == want
            and dy.flags.c_contiguous
            and dy.flags.aligned
            and (dh_n is None or _plain_state(dh_n, B, P))
            and (dc_n is None or _plain_state(dc_n, B, H))
        ):
            return None
        get = self._parameters.get
        params = [get(n) for n in _LAYER0_NAMES]
        if any(q is not None and q.grad is None for q in params):
            _ready_grads(self)  # (one core call: it checks the other gradients before any work)
        if batch_first:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        grads = tuple([None if q is None else q.grad for q in params])
        try:
            dx, dh0, dc0 = _Direction.backward(
                self._mode,
                cache,
                dy,
                None if dh_n is None else dh_n[0],
                None if dc_n is None else dc_n[0],
                grads,
                need_dx,
            )
        except (TypeError, ValueError) as e:
            # the core refused a .grad (before any work): name the parameter (a wrong shape or
            # dtype, or memory shared with an input or a parameter, as the general path does)
            _ready_grads(self)
            if "expected memory separate from" in str(e):
                reads = [("dy", dy), ("dh_n", dh_n), ("dc_n", dc_n)]
                _grads_apart(self, reads + list(meta.get("inputs", ())))
            raise
        if dx is not None and batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        if self._has_cell:
            return dx, (dh0[None], dc0[None])
        return dx, dh0[None]

    def backward(self, dy: Any, dh_n: Any = None, dc_n: Any = None, *, need_dx: bool = True):
        """Gradients of the layer's last training-mode forward, in the input's layout.

        ``dy`` has the output's shape (after a PackedSequence input: a PackedSequence of the
        output's lengths, or the padded (T, B, D * P) array; dx is then padded (T, B, I), in
        the caller's batch order), or None for zero (a loss on the final state alone);
        ``dh_n`` (and for the LSTM ``dc_n``) the shape of ``h_n`` (``c_n``), or None for zero.
        Returns ``(dx, (dh_0, dc_0))`` for the LSTM and ``(dx, dh_0)`` for GRU/RNN.
        Accumulates (+=) into every parameter's ``.grad``; may be called more than once for the
        same forward. ``need_dx=False``: the input needs no gradient (raw features, as a torch
        input without ``requires_grad``): dx is returned as None and the first layer skips its
        input-gradient GEMM; everything else is bitwise the same.

        The layer keeps one saved forward, its last: a layer applied to several inputs before
        their backward (a shared encoder of two sentences) takes one ``copy.copy(layer)`` per
        input (the copies share the Parameters and their ``.grad``, each keeps its own forward).
        Backward after several training forwards warns (``UserWarning``): it differentiates the
        last one only, whatever input the gradient belongs to.
        """
        if self._saved is None:
            raise RuntimeError(
                "backward: no saved forward; call the layer in training mode (.train()) first"
            )
        _warn_unused_forwards(
            self,
            "A layer applied to several inputs (a shared encoder) needs each backward right "
            "after its forward, or one copy.copy(layer) per input (the copies share the "
            "parameters, each keeps its own forward)",
        )
        need_dx = ops._need_dx(need_dx)
        if not self._has_cell and dc_n is not None:
            raise TypeError(f"{type(self).__name__}.backward: no cell state, dc_n must be None")
        saved, meta = self._saved
        if self.check_finite:
            lens = meta.get("lengths")
            if lens is not None and dy is not None and not _is_packed(dy):
                # the padded dy of a forward with lengths: only its real steps are read
                view = _finite_view(dy, "dy")
                real = _real_steps(lens, meta["T"], meta["batch_first"] and meta["packed"] is None)
                if isinstance(view, np.ndarray) and view.shape[:2] == real.shape:
                    _finite_real("dy", view, real)
                    _guard_finite(None, dh_n=dh_n, dc_n=dc_n)
                else:
                    _guard_finite(None, dy=dy, dh_n=dh_n, dc_n=dc_n)
            else:
                _guard_finite(None, dy=dy, dh_n=dh_n, dc_n=dc_n)
        check_versions(f"{type(self).__name__}.backward", meta.get("versions", ()))
        if "embedding" in meta:  # forward_embedded: the embedding read is the one written
            emb_mod, fused_path, _ = meta["embedding"]
            used = (
                [p for n, p, _ in meta["versions"] if n == "embedding.weight"]
                if fused_path
                else [emb_mod.__dict__.get("_weight_p")]  # (its own forward's; None: unknown)
            )
            if used and used[0] is not None and getattr(emb_mod, "weight", None) is not used[0]:
                # the forward read the old one: its gradient went to a Parameter it never used
                raise RuntimeError(
                    f"{type(self).__name__}.backward: embedding.weight was replaced by another "
                    "Parameter after the forward this backward differentiates; run the forward "
                    "again"
                )
        if (
            len(saved) == 2
            and meta["order"] is None
            and meta["packed"] is None
            and not meta["unbatched"]
            and "embedding" not in meta
            and self.num_layers == 1
            and not self.bidirectional
        ):
            out = self._backward_plain(saved[0], meta, dy, dh_n, dc_n, need_dx)
            if out is not None:
                return out
        # Ctrl-C is raised once every layer's gradients are in (an interrupt between two layers
        # had left some accumulated and others not: a loop that zeroes them after its step
        # would have added the next backward to half of this one).
        with deferred_interrupt():
            return self._backward_layers(saved, meta, dy, dh_n, dc_n, need_dx)

    def _backward_layers(self, saved, meta, dy, dh_n, dc_n, need_dx):
        """The general path of :meth:`backward` (several layers or directions, lengths, ...)."""
        T, B, unbatched, order = meta["T"], meta["B"], meta["unbatched"], meta["order"]
        rev, packed = meta["rev"], meta["packed"]
        batch_first = meta["batch_first"]  # (the forward's layout)
        L, D, H, P = self.num_layers, self.num_directions, self.hidden_size, self._out_size
        if unbatched:
            want = (T, D * P)
        elif batch_first and packed is None:
            want = (B, T, D * P)
        else:
            want = (T, B, D * P)
        if dy is None:  # a loss on the final state alone: no gradient on the output
            dy = np.zeros(want, np.float32)
        if _is_packed(dy):
            if packed is None:
                raise TypeError(
                    "dy: got a PackedSequence, but the forward's input was not one: expected an "
                    "array of the output's shape"
                )
            _check_packed(
                "",
                dy.batch_sizes,
                dy.sorted_indices,
                dy.unsorted_indices,
                dy.data.shape[0],
                name="dy",
            )
            _check_same_packing("dy", dy, packed)
            _check_dense_tensor("dy.data", dy.data)
            from torch.nn.utils.rnn import pad_packed_sequence

            dy = pad_packed_sequence(dy, total_length=T)[0]
        dy = _as_float32("dy", dy)
        if dy.shape != want:
            raise ValueError(f"dy: expected shape {want} (the output's), got {dy.shape}")
        if unbatched:
            dy = dy[:, None, :]
        elif batch_first and packed is None:
            dy = dy.transpose(1, 0, 2)
        dstates = []
        reads = [("dy", dy)]  # for _grads_apart: what the cores read (converted, unsorted)
        for nm, a, F in (("dh_n", dh_n, P), ("dc_n", dc_n, H)):
            if a is None:
                dstates.append(None)
                continue
            a = _as_float32(nm, a)
            reads.append((nm, a))
            st_want = (L * D, F) if unbatched else (L * D, B, F)
            if a.shape != st_want:
                raise ValueError(f"{nm}: expected shape {st_want}, got {a.shape}")
            a = a[:, None, :] if unbatched else a
            dstates.append(a if order is None else _take_rows(a, order))
        dhn_all, dcn_all = dstates
        if order is not None and not meta["fused"]:
            dy = _take_rows(dy, order)

        def flip(a):
            return a[::-1] if rev is None else a[rev]

        embedded = "embedding" in meta
        emb, fused, frozen = meta.get("embedding", (None, False, False))
        fused_embedding = emb if fused else None
        if embedded:
            need_dx = False  # token ids have no gradient: it goes to the embedding or nowhere
            if frozen:  # an eval-mode embedding: no gradient on either path
                emb = None
        _ready_grads(self)
        _grads_apart(self, reads + list(meta.get("inputs", ())))
        if fused_embedding is not None and not frozen and isinstance(fused_embedding, Module):
            _ready_grads(fused_embedding)
        if emb is not None and not fused:  # the fallback's embedding, before any accumulation
            ready = getattr(emb, "_ready_grads", None)
            if callable(ready):
                ready()
        dh0 = np.zeros((L * D, B, P), np.float32)
        dc0 = np.zeros((L * D, B, H), np.float32) if self._has_cell else None
        grad = np.asarray(dy, np.float32)
        # Between two bidirectional layers: the gradient of the lower layer's output taken
        # directly as each direction's contiguous part (the reverse one in its own time order)
        # from the upper layer's two dx, instead of their sum in full and then a copy of each
        # part: one pass over the memory instead of three.
        split = None
        pos = len(saved)
        for k in reversed(range(L)):
            pos -= 1
            _, mask, pdrop = saved[pos]
            if pdrop > 0 and split is not None:
                if mask is None:
                    split = tuple(np.zeros_like(g) for g in split)
                else:
                    split[0][...] *= mask[:, :, :P]
                    split[1][...] *= flip(mask)[:, :, P:]
            elif pdrop > 0:
                grad = grad * mask if mask is not None else np.zeros_like(grad)
            caches = saved[pos - D : pos]  # direction d's cache is caches[d]
            pos -= D

            want_dx = need_dx or k > 0 or emb is not None  # the embedding fallback takes dx

            def run(d, k=k, grad=grad, split=split, caches=caches, want_dx=want_dx):
                idx = k * D + d
                p = self._params(k, d)
                grads = tuple(None if q is None else q.grad for q in p)
                if split is not None:
                    g = split[d]
                else:
                    g = grad[:, :, d * P : (d + 1) * P]
                    g = np.ascontiguousarray(g if d == 0 else flip(g), dtype=np.float32)
                if k == 0 and fused_embedding is not None:  # the gradient goes to the table
                    # Tied arrays (weight_hh is weight_ih, ...) each get a zeroed temporary the
                    # core accumulates into, added afterwards (the core refuses overlaps).
                    sep, repeats = _separate_grads(
                        (*grads[:4], None if frozen else fused_embedding.weight.grad)
                    )
                    _, dh0_i, dc0_i, *_ = ops._core.lstm_backward(
                        caches[d],
                        g,
                        None if dhn_all is None else _c(dhn_all[idx]),
                        None if dcn_all is None else _c(dcn_all[idx]),
                        *sep[:4],
                        # frozen: the core's own gradient array, dropped
                        dembedding=sep[4],
                    )
                    for whole, part in repeats:
                        whole += part
                    return None, dh0_i, dc0_i
                return _Direction.backward(
                    self._mode,
                    caches[d],
                    g,
                    None if dhn_all is None else _c(dhn_all[idx]),
                    None if dcn_all is None else _c(dcn_all[idx]),
                    grads,
                    want_dx,
                )

            shared = D == 2 and _grads_overlap(self._params(k, 0), self._params(k, 1))
            dins = []
            for d, (dx, dh0_i, dc0_i) in enumerate(_directions(run, D, shared)):
                idx = k * D + d
                dh0[idx] = dh0_i
                if dc0 is not None:
                    dc0[idx] = dc0_i
                dins.append(dx if d == 0 or dx is None else flip(dx))
            if k == 0 and fused_embedding is not None:
                return None, (dh0, dc0)
            split = None
            if k > 0 and D == 2 and rev is None and dins[0] is not None:
                # (rev None: the flip is a reversed view, so flip(flip(dx1)) is dx1 in the
                # reverse direction's own time order)
                a, b = dins  # both in forward time order, width D * P
                split = (
                    np.add(a[:, :, :P], b[:, :, :P]),
                    np.add(flip(a)[:, :, P:], flip(b)[:, :, P:]),
                )
                continue
            grad = dins[0] if D == 1 or dins[0] is None else dins[0] + dins[1]
        dx = grad
        if order is not None:
            inv = meta["inv"]
            if not meta["fused"] and dx is not None:  # else the cores wrote it in caller's order
                dx = _take_rows(dx, inv)
            dh0 = _take_rows(dh0, inv)
            dc0 = None if dc0 is None else _take_rows(dc0, inv)
        if unbatched:
            dx = None if dx is None else dx[:, 0, :]
            dh0 = dh0[:, 0, :]
            dc0 = None if dc0 is None else dc0[:, 0, :]
        elif batch_first and packed is None and dx is not None:
            dx = dx.transpose(1, 0, 2)
        dx = None if dx is None else np.ascontiguousarray(dx)
        if emb is not None:  # forward_embedded's fallback: the embedding takes dx
            emb.backward(dx)
            dx = None
        return (dx, (dh0, dc0)) if self._has_cell else (dx, dh0)

    # -- streaming ------------------------------------------------------------------------------
    def step(self, x_t: Any, state: Any = None, out: Optional[np.ndarray] = None):
        """One time step of a unidirectional stack, for streaming inference.

        ``x_t`` (B, I) float32 (or (I,)); ``state`` as returned by the previous call (or None for
        zeros). Returns ``(y_t, state)`` with y_t (B, H) — written into ``out`` when given. The
        weights are read in place and every buffer (states, workspaces) is allocated on the first
        call for a batch size and reused afterwards (one set per Python thread, so threads may
        stream through one layer at once): the returned y_t (unless ``out`` is given) and state
        live in internal buffers and are only valid until the thread's next call (copy them to
        keep them). An unbatched x_t also takes an unbatched forward's (num_layers, H) state;
        ``check_finite`` layers check x_t and state. With ``proj_size`` P, y_t and h are (B, P)
        and c is (B, H), as the forward's; each layer's step then runs the sequence core over
        one step (which allocates its outputs per call).
        """
        st = self._stream
        # The streaming loop's call (a batched float32 x_t of the stream's batch size, the state
        # this stream returned last or None, out None or a float32 array of y's shape) skips the
        # general checks below: the same outcome, a few microseconds less per call.
        if (
            st is not None
            and type(x_t) is np.ndarray
            and x_t.shape == st.xshape
            and x_t.dtype is _F32
            and x_t.flags.c_contiguous
            and x_t.flags.aligned
            and (state is None or state is st.states[st.cur])
            and (
                out is None
                or (
                    type(out) is np.ndarray
                    and out.shape == st.yshape
                    and out.dtype is _F32
                    and out.flags.writeable
                )
            )
            and not self.check_finite
        ):
            try:
                y = st.run(x_t, state)
            except (TypeError, ValueError, KeyError):  # (KeyError: a layer's weights missing)
                self._raise_named()
                raise
            if out is not None:
                out[...] = y
                y = out
            return y, st.states[st.cur]
        if self.bidirectional:
            raise ValueError("step: a bidirectional layer needs the whole sequence")
        _check_complete(self)
        x_t = (
            x_t
            if isinstance(x_t, np.ndarray)
            and x_t.dtype == np.float32
            and x_t.flags.c_contiguous
            and x_t.flags.aligned
            else _as_float32("x_t", x_t)  # (a strided float32 view is copied too)
        )
        unbatched = x_t.ndim == 1
        given = x_t, state  # as the caller shaped them, for check_finite's messages
        if unbatched:
            x_t = x_t[None]
        if x_t.ndim != 2 or x_t.shape[1] != self.input_size:
            raise ValueError(f"x_t: expected shape (B, I={self.input_size}), got {x_t.shape}")
        B = x_t.shape[0]
        if out is not None:
            P = self._out_size
            want = (P,) if unbatched else (B, P)
            if (
                not isinstance(out, np.ndarray)
                or out.shape != want
                or out.dtype != np.float32  # an int32 out would truncate y silently
                or not out.flags.writeable
            ):
                got = (
                    f"shape {out.shape} dtype {out.dtype}"
                    + ("" if out.flags.writeable else " (read-only)")
                    if isinstance(out, np.ndarray)
                    else type(out).__name__
                )
                raise ValueError(
                    f"out: expected a writeable array of shape {want} dtype float32, got {got}"
                )
        if st is None or st.B != B:
            st = _Stream(self, B)
            object.__setattr__(self, "_stream", st)
        if state is not None:
            state = st.check(state, unbatched)
        if self.check_finite:  # (after the shape checks; indices in the caller's shapes)
            _guard_finite(self, x_t=given[0], state=given[1])
        try:
            y = st.run(x_t, state)
        except (TypeError, ValueError, KeyError):  # (KeyError: a layer's weights missing)
            self._raise_named()
            raise
        if out is not None:
            out[...] = y[0] if unbatched else y
            y = out
        elif unbatched:
            y = y[0]
        # an unbatched x_t's state is (num_layers, H), as an unbatched forward's h_n
        return y, (st.states1[st.cur] if unbatched else st.states[st.cur])


class _Stream:
    """Preallocated buffers of :meth:`_RNNBase.step`: two state slots per layer (ping-pong),
    workspaces and per-layer views, all created once per batch size. Parameters are looked up
    by precomputed names on every call (in place updates and load_state_dict are seen)."""

    def __init__(self, layer: _RNNBase, B: int):
        # The layer's parameter registry and sizes, not the layer itself: the layer holds its
        # streams, and a stream holding the layer made a reference cycle, so a layer that had
        # streamed (and its buffers) outlived its last reference until a garbage collection.
        self.params, self.B = layer._parameters, B
        self.L, self.H = L, H = layer.num_layers, layer.hidden_size
        # P: features of h and y (proj_size, else H); the cell state c has H
        self.P = P = layer._out_size
        self.proj = bool(layer.proj_size)
        self.h = np.zeros((2, L, B, P), np.float32)
        self.c = np.zeros((2, L, B, H), np.float32) if layer._has_cell else None
        self.cur = 0
        self.mode = layer._mode
        self.ws = []
        for k in range(L):
            I = layer.input_size if k == 0 else H
            # (a projected LSTM steps through the sequence core, which sizes its own)
            n = 0 if self.proj else ops._core.step_workspace_size(self.mode, B, I, H)
            self.ws.append(np.empty(n, np.float32))
        # views [slot][layer] of h and c, and the parameter names of each layer
        self.hs = [self.h[0], self.h[1]]
        self.cs = [None, None] if self.c is None else [self.c[0], self.c[1]]
        self.hv = [[self.h[s, k] for k in range(L)] for s in (0, 1)]
        self.cv = [[None if self.c is None else self.c[s, k] for k in range(L)] for s in (0, 1)]
        # The same state objects every time (per slot): passing them back is recognised
        # without a copy, or a check.
        self.states = [
            (self.hs[s], self.cs[s]) if self.c is not None else self.hs[s] for s in (0, 1)
        ]
        # the same, (num_layers, H) views for an unbatched x_t (batch 1)
        self.states1 = (
            [(st[0][:, 0], st[1][:, 0]) if self.c is not None else st[:, 0] for st in self.states]
            if B == 1
            else None
        )
        self.xshape, self.yshape = (B, layer.input_size), (B, P)
        # Per slot, per layer: parameter names, workspace and
        # the state views read and written.
        names = [
            tuple(
                # (the biases whatever ``bias`` says: the parameters present are used, as by
                # forward; a bias assigned to a bias=False layer was left out of step only)
                n + f"_l{k}"
                for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            for k in range(L)
        ]
        self.plan = [
            [
                (
                    *names[k],
                    self.ws[k],
                    self.hv[s][k],
                    self.cv[s][k],
                    self.hv[1 - s][k],
                    self.cv[1 - s][k],
                )
                for k in range(L)
            ]
            for s in (0, 1)
        ]
        self.step_into = ops._core.step_into
        self.zeros = None  # [h, c] zeros read for a state of None (made on first use)

    def state(self):
        return self.states[self.cur]

    def check(self, state, unbatched: bool = False):
        """A state given to step: (h, c) for the LSTM, h otherwise, each (L, B, H) (h (L, B, P)
        with proj_size; what step returned, or h_n / c_n of a forward; (L, H) for an unbatched
        x_t, as an unbatched forward's). Raises before anything is written; returns the state
        as (L, B, .) arrays."""
        L = self.L
        if self.c is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError("state: expected a tuple (h, c) as returned by step")
            items = (("state[0] (h)", state[0]), ("state[1] (c)", state[1]))
        else:
            if isinstance(state, (tuple, list)):
                raise TypeError("state: expected one array h as returned by step, got a tuple")
            items = (("state (h)", state),)
        cur = self.cur
        out = []
        h1 = c1 = None  # the (num_layers, H) views an unbatched step returned (batch 1 only)
        if self.states1 is not None:
            h1, c1 = self.states1[cur] if self.c is not None else (self.states1[cur], None)
        for name, a in items:
            H = self.P if name.startswith("state[0]") or self.c is None else self.H
            letter = "P" if self.proj and H == self.P else "H"
            if a is self.hs[cur] or a is self.cs[cur]:
                out.append(a)
                continue
            if a is not None and (a is h1 or a is c1):  # the unbatched views step returned
                out.append(self.hs[cur] if a is h1 else self.cs[cur])
                continue
            a = _as_float32(name, a)  # a str or object array fails here, not half-copied
            if unbatched and a.shape == (L, H):
                a = a[:, None]
            if a.shape != (L, self.B, H):
                unb = f" or (num_layers, {letter}) = {(L, H)}" if unbatched else ""
                raise ValueError(
                    f"{name}: expected shape (num_layers, B, {letter}) = {(L, self.B, H)}{unb}, "
                    f"got {a.shape}"
                )
            out.append(a)
        return tuple(out) if self.c is not None else out[0]

    def run(self, x_t, state):
        """One step: each layer reads its state from ``state`` (None: zeros) and writes the new
        one into the other slot, whose state (two calls old) is no longer valid. Nothing the
        caller may hold -- the state and y_t the last call returned, in slot ``cur`` -- is
        written before every layer has run: a step that raises (a parameter of another shape
        or dtype, found by the core at layer k) leaves them and the stream as they were."""
        cur, nxt = self.cur, 1 - self.cur
        if state is None:
            if self.zeros is None:  # (read only: the cores never write a state they read)
                self.zeros = [
                    np.zeros((self.L, self.B, self.P), np.float32),
                    None if self.c is None else np.zeros_like(self.c[0]),
                ]
            h_src, c_src = self.zeros
        elif state is self.states[cur]:
            h_src, c_src = self.hs[cur], self.cs[cur]
        else:
            h_src, c_src = state if self.c is not None else (state, None)
            h_src, c_src = self._readable(h_src, nxt), self._readable(c_src, nxt)
        if np.may_share_memory(x_t, self.h[nxt]) or (
            self.c is not None and np.may_share_memory(x_t, self.c[nxt])
        ):
            # x_t is a y_t this stream returned two calls ago (in the slot written below)
            x_t = x_t.copy()
        params, mode, step_into = self.params, self.mode, self.step_into
        get = params.get
        if not self.B:  # nothing to compute (the core would take the empty buffers as aliases)
            self.cur = nxt
            return self.hv[nxt][-1]
        inp = x_t
        if self.proj:  # the sequence core over one step (it projects h; allocates per call)
            for k, (n_ih, n_hh, n_bih, n_bhh, _, _, _, h_out, c_out) in enumerate(self.plan[cur]):
                b_ih, b_hh = get(n_bih), get(n_bhh)
                _, hn, cn, _ = ops.lstm_forward(
                    inp[None],
                    params[n_ih].data,
                    params[n_hh].data,
                    None if b_ih is None else b_ih.data,
                    None if b_hh is None else b_hh.data,
                    h_src[k],
                    c_src[k],
                    weight_hr=params[f"weight_hr_l{k}"].data,
                )
                h_out[...] = hn
                c_out[...] = cn
                inp = h_out
            self.cur = nxt
            return inp
        # the streaming loop's state is the slot's own: its per-layer views are made once
        own = h_src is self.hs[cur] and c_src is self.cs[cur]
        for k, (n_ih, n_hh, n_bih, n_bhh, ws, h_in, c_in, h_out, c_out) in enumerate(
            self.plan[cur]
        ):
            if not own:
                h_in, c_in = h_src[k], None if c_src is None else c_src[k]
            b_ih, b_hh = get(n_bih), get(n_bhh)
            step_into(
                mode,
                inp,
                h_in,
                c_in,
                params[n_ih].data,
                params[n_hh].data,
                None if b_ih is None else b_ih.data,
                None if b_hh is None else b_hh.data,
                h_out,
                c_out,
                ws,
            )
            inp = h_out
        self.cur = nxt
        return inp

    def _readable(self, a, nxt):
        """A given state array (checked: float32 (L, B, .)) as the layers read it: C-contiguous,
        and a copy when it shares memory with slot ``nxt``, which the step writes as it goes
        (a state returned two calls ago, or one of this stream's own views mixed up)."""
        if a is None:
            return None
        if (
            not a.flags.c_contiguous
            or not a.flags.aligned
            or np.may_share_memory(a, self.h[nxt])
            or (self.c is not None and np.may_share_memory(a, self.c[nxt]))
        ):
            return np.array(a, dtype=np.float32, order="C")
        return a


_LAYER_DOC = r"""
    Args:
        input_size: I, features of the input.
        hidden_size: H, features of the hidden state.
        num_layers: stacked layers (default 1); layer k > 0 takes layer k-1's output.
        bias: use ``bias_ih`` and ``bias_hh`` (default True).
        batch_first: input and output are (B, T, F) instead of (T, B, F) (default False).
        dropout: dropout probability on the outputs of every layer but the last, in training
            mode (default 0), drawn from the layer's seeded generator.
        bidirectional: run a reverse-direction layer too and concatenate (default False).
        seed: seed of the initialisation and dropout generator (default: fresh entropy).
        check_finite: raise ``ValueError`` naming the input, state, parameter or upstream
            gradient that holds NaN or +-Inf, before any work (default False: NaN/Inf
            propagate into the outputs).

    Inputs: ``input, hx, lengths``
        input: (T, B, I), (B, T, I) with ``batch_first``, or (T, I) unbatched; or a
        ``torch.nn.utils.rnn.PackedSequence`` (the output is then one too). Any real floating
        array (or torch tensor); converted to float32 explicitly. A masked array with masked
        elements (NumPy's or torch's) is refused: its masked values would be read as data.
        hx: optional initial state(s), each (D * num_layers, B, H) ((D * num_layers, H)
        unbatched), D = 2 if bidirectional else 1; zeros when omitted.
        lengths: optional (B,) integers in [0, T], any order: sequence b has lengths[b] real steps.

    In training mode ``forward`` keeps what :meth:`backward` needs; ``backward`` accumulates
    (+=) into every parameter's ``.grad``. That cache refers to the output's memory, which is
    therefore returned as a read-only array in training mode (``y.copy()`` to edit it), and to
    the input and hx arrays given (no copies): do not modify those in place before ``backward``.
    The same holds for the weights: the cache reads them in place, so ``backward`` after an
    optimizer ``step()`` (which counts each parameter's in-place updates, as PyTorch's version
    counter) raises ``RuntimeError`` naming the parameter; ``load_state_dict`` drops the cache,
    so ``backward`` then raises too. Writes through ``p.data`` (``p.data -= ...``) are not
    counted, as in PyTorch: between a forward and its backward they give gradients of neither
    the old nor the new weights. A Parameter shared by several places (tied weights) gets the
    sum of the gradients of its uses, as in PyTorch.
    Weights are initialised from U(-1/sqrt(H), 1/sqrt(H)) with PyTorch's names
    (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``_reverse``
    suffix for the reverse direction).
"""


class LSTM(_RNNBase):
    # a docstring built by concatenation must be assigned: a bare expression is not one
    __doc__ = (
        r"""Multi-layer LSTM over a sequence (PyTorch's ``nn.LSTM`` API), computed by fused kernels.

    .. math::
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \qquad
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \qquad
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \qquad h_t = o_t \odot \tanh(c_t)
        \quad (\text{with } proj\_size = P > 0: h_t = W_{hr} (o_t \odot \tanh(c_t)))
    """
        + _LAYER_DOC
        + r"""        proj_size: P > 0 adds ``weight_hr_l{k}`` (P, H); h_t has P features (fused
            kernels too: per step the gate tile, then the projection m_t W_hr^T).

    Outputs: ``output, (h_n, c_n)``: output (T, B, D * P) (P = H without projection),
    h_n (D * num_layers, B, P), c_n (D * num_layers, B, H). ``backward(dy, dh_n, dc_n)`` returns
    ``(dx, (dh_0, dc_0))``. ``step(x_t, state)`` runs one step for streaming inference.

    Example::

        >>> import numpy as np, lstm_fast
        >>> lstm = lstm_fast.LSTM(10, 20, seed=0)
        >>> x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
        >>> y, (h, c) = lstm(x)
        >>> y.shape, h.shape
        ((5, 3, 20), (1, 3, 20))
        >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    """
    )

    _mode = "LSTM"


class GRU(_RNNBase):
    __doc__ = (
        r"""Multi-layer GRU (PyTorch's ``nn.GRU`` API, gates r, z, n), computed by fused kernels.

    .. math::
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \qquad
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \qquad
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
    """
        + _LAYER_DOC
        + r"""
    Outputs: ``output, h_n``; ``backward(dy, dh_n)`` returns ``(dx, dh_0)``.

    Example::

        >>> import numpy as np, lstm_fast
        >>> gru = lstm_fast.GRU(10, 20, num_layers=2, seed=0)
        >>> y, h = gru(np.zeros((5, 3, 10), np.float32))
        >>> y.shape, h.shape
        ((5, 3, 20), (2, 3, 20))
    """
    )

    _mode = "GRU"


class RNN(_RNNBase):
    __doc__ = (
        r"""Multi-layer Elman RNN (PyTorch's ``nn.RNN`` API): :math:`h_t = act(W_{ih} x_t + b_{ih} +
    W_{hh} h_{t-1} + b_{hh})`, act = tanh or relu (``nonlinearity``, default ``'tanh'``).
    """
        + _LAYER_DOC
        + r"""        nonlinearity: ``'tanh'`` (default) or ``'relu'``.

    Outputs: ``output, h_n``; ``backward(dy, dh_n)`` returns ``(dx, dh_0)``.

    Example::

        >>> import numpy as np, lstm_fast
        >>> rnn = lstm_fast.RNN(10, 20, nonlinearity="relu", seed=0)
        >>> y, h = rnn(np.zeros((5, 3, 10), np.float32))
        >>> y.shape
        (5, 3, 20)
    """
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        seed: Optional[int] = None,
        check_finite: bool = False,
    ):
        object.__setattr__(self, "_mode", _nonlinearity_mode(nonlinearity))
        object.__setattr__(self, "nonlinearity", nonlinearity)
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            seed=seed,
            check_finite=check_finite,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "nonlinearity":  # the kernel follows it (checked first)
            object.__setattr__(self, "_mode", _nonlinearity_mode(value))
        super().__setattr__(name, value)


# ---- single-step cells --------------------------------------------------------------------------


class _CellBase(Module):
    _mode = "LSTM"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, *, seed=None, check_finite=False
    ):
        super().__init__()
        _check_bool("check_finite", check_finite)
        _check_bool("bias", bias)  # as the layers': bias="False" must not mean True
        object.__setattr__(self, "check_finite", bool(check_finite))
        input_size = _check_int("input_size", input_size, 1)
        hidden_size = _check_int("hidden_size", hidden_size, 1)
        object.__setattr__(self, "input_size", input_size)
        object.__setattr__(self, "hidden_size", hidden_size)
        object.__setattr__(self, "bias", bool(bias))
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "_unused_forwards", 0)  # training forwards since a backward
        rng = make_rng(seed)
        G, H = _GATES[self._mode] * hidden_size, hidden_size
        _check_parameter_memory(
            type(self).__name__,
            G * (input_size + H + (2 if bias else 0)),
            f"input_size={input_size}, hidden_size={hidden_size}",
        )
        bound = 1.0 / math.sqrt(H)
        shapes = [("weight_ih", (G, input_size)), ("weight_hh", (G, H))]
        if bias:
            shapes += [("bias_ih", (G,)), ("bias_hh", (G,))]
        for name, shape in shapes:
            setattr(self, name, Parameter(rng.uniform(-bound, bound, shape).astype(np.float32)))
        object.__setattr__(self, "_needed", _needed(shapes))

    def extra_repr(self) -> str:
        """The constructor arguments that differ from the defaults, as PyTorch's ``repr``."""
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    # as the layers': copies and pickles leave out the cache of the last training forward
    # (``copy.copy(cell)`` shares the parameters and keeps a saved forward of its own)
    _saved_forward = {"_saved": None, "_unused_forwards": 0}

    def _on_load(self) -> None:
        object.__setattr__(self, "_saved", None)  # as the layers': no backward across new weights
        object.__setattr__(self, "_unused_forwards", 0)
        super()._on_load()

    def _w(self):
        get = self._parameters.get
        return tuple(
            None if get(n) is None else get(n).data
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ) + (None,)

    def _step_eval(self, x: np.ndarray, hx: Any):
        """An inference call's short path: the core's one-step forward straight from the
        weights (the general path's call and results, without its per-call Python). None
        unless x is a C-contiguous float32 (B >= 1, I) batch and hx None or the arrays
        PyTorch's API takes (C-contiguous float32 of shape (B, H)); the general path handles
        the rest, with its errors."""
        B, H = x.shape[0], self.hidden_size
        if B == 0:
            return None
        mode = self._mode
        lstm = mode == "LSTM"
        h = c = None
        if hx is not None:
            if lstm:
                if type(hx) is not tuple or len(hx) != 2:
                    return None
                h, c = hx
            else:
                h = hx
            for a in (h, c) if lstm else (h,):
                if not (
                    type(a) is np.ndarray
                    and a.dtype is _F32
                    and a.shape == (B, H)
                    and a.flags.c_contiguous
                    and a.flags.aligned
                ):
                    return None
        p = self._parameters
        w_ih, w_hh = p["weight_ih"].data, p["weight_hh"].data
        # the biases present, whatever ``bias`` says (as the general path and torch's cell)
        b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
        b_ih = None if b_ih is None else b_ih.data
        b_hh = None if b_hh is None else b_hh.data
        x = x[None]
        core = ops._core
        if lstm:
            _, hn, cn, _ = core.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h, c, False, None, None)
            return hn, cn
        if mode == "GRU":
            return core.gru_forward(x, w_ih, w_hh, b_ih, b_hh, h, False, None)[1]
        nl = "tanh" if mode == "RNN_TANH" else "relu"
        return core.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h, nl, False, None)[1]

    def _states_in(self, hx: Any, B: int, unbatched: bool):
        """hx -> ``(h_0, c_0)``, C-contiguous float32 (B, H) (c_0 None but for LSTMCell; both
        None for hx None: zeros). Real dtypes are converted, as the layers' states; anything
        else is a TypeError or ValueError naming hx, with what was expected and given."""
        if hx is None:
            return None, None
        H = self.hidden_size
        want = (H,) if unbatched else (B, H)
        letters = f"(H={H},)" if unbatched else f"(B={B}, H={H})"
        seq = isinstance(hx, (tuple, list))
        got = f"a {type(hx).__name__} of {len(hx)}" if seq else type(hx).__name__
        if self._mode == "LSTM":
            if not seq or len(hx) != 2:
                raise TypeError(
                    f"hx: expected a tuple (h_0, c_0), each of shape {letters}, got {got}"
                )
            items = (("h_0", hx[0]), ("c_0", hx[1]))
        else:
            # torch's GRUCell / RNNCell take one tensor: a tuple (or a list of arrays) is an
            # LSTM-style state, not an array-like to stack
            if isinstance(hx, tuple) or (seq and any(getattr(a, "ndim", 0) for a in hx)):
                raise TypeError(
                    f"hx: h_0: expected a real floating-point array of shape {letters}, got "
                    f"{got} ({type(self).__name__} has one state, h_0)"
                )
            items = (("h_0", hx),)
        out = []
        for nm, a in items:
            a = _as_float32(f"hx: {nm}", a)
            if a.shape != want:
                hint = ""
                if a.ndim == 1 and not unbatched:
                    hint = f": an unbatched state for a batched input (B={B})"
                elif a.ndim == 2 and unbatched:
                    hint = ": a batched state for an unbatched input (I,)"
                raise ValueError(f"hx: {nm}: expected shape {want}, got {a.shape}{hint}")
            out.append(_c(a.reshape(B, H)))
        return out[0], (out[1] if len(out) == 2 else None)

    def forward(self, input: Any, hx: Any = None):
        """One step (also by calling the cell): LSTMCell ``(h', c')``, GRUCell and RNNCell
        ``h'``; see the class docstring."""
        object.__setattr__(self, "_saved", None)  # (as in the layers' forward)
        if not self.training:  # (backward after it raises: no saved forward)
            object.__setattr__(self, "_unused_forwards", 0)
        _check_complete(self)
        if (
            not self.training
            and not self.check_finite
            and type(input) is np.ndarray
            and input.ndim == 2
            and input.dtype is _F32
            and input.shape[1] == self.input_size
            and input.flags.c_contiguous
            and input.flags.aligned
        ):
            out = self._step_eval(input, hx)
            if out is not None:
                return out
        x = _as_float32("input", input)
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"input: expected shape (B, I={self.input_size}) or (I,), got {np.shape(input)}"
            )
        B = x.shape[0]
        h0, c0 = self._states_in(hx, B, unbatched)
        if self.check_finite:
            states = None if h0 is None else h0 if c0 is None else (h0, c0)
            _guard_finite(self, input=x, hx=states)
        y, hn, cn, cache = _Direction.forward(
            self._mode,
            np.ascontiguousarray(x[None]),
            self._w(),
            h0,
            c0,
            None,
            self.training,
            False,
        )
        if self.training:
            # (inputs: what the core read, for the names in an overlap error of the backward)
            inputs = (("the input", x), ("hx", h0), ("the cell state", c0))
            _keep_saved(self, (cache, unbatched, B, saved_versions(self), inputs))
        if unbatched:
            hn = hn[0]
            cn = None if cn is None else cn[0]
        return (hn, cn) if self._mode == "LSTM" else hn

    def backward(self, dh: Any, dc: Any = None, *, need_dx: bool = True):
        """Gradients of the cell's last training-mode forward: ``(dx, (dh_0, dc_0))`` for the
        LSTM cell, ``(dx, dh_0)`` otherwise; accumulates (+=) into the parameters' ``.grad``.
        ``need_dx=False``: dx is None and its product is skipped.

        A cell keeps one saved forward, its last: to backpropagate through a loop of steps,
        step a ``copy.copy(cell)`` per step (the copies share the Parameters and their
        ``.grad``, each keeps its own forward) and call their ``backward`` in reverse order, or
        run :class:`LSTM` (:class:`GRU`, :class:`RNN`) over the whole sequence. Backward after
        several training forwards of the same cell warns (``UserWarning``): it differentiates
        the last one only, whatever step the gradient belongs to."""
        if self._saved is None:
            raise RuntimeError("backward: no saved forward; call the cell in training mode first")
        _warn_unused_forwards(
            self,
            "To backpropagate through a loop of steps, step a copy.copy(cell) per step (the "
            "copies share the parameters, each keeps its own forward) or run the sequence "
            f"layer ({type(self).__name__[:-4]}) over the whole sequence",
        )
        need_dx = ops._need_dx(need_dx)
        if self._mode != "LSTM" and dc is not None:
            raise TypeError(f"{type(self).__name__}.backward: no cell state, dc must be None")
        cache, unbatched, B, versions, inputs = self._saved
        check_versions(f"{type(self).__name__}.backward", versions)
        H = self.hidden_size

        def state(nm, a):
            if a is None:
                return None
            a = _as_float32(nm, a)
            want = (H,) if unbatched else (B, H)
            if a.shape != want:
                letters = f"(H={H},)" if unbatched else f"(B={B}, H={H})"
                raise ValueError(f"{nm}: expected shape {letters} (the output's), got {a.shape}")
            return _c(a.reshape(B, H))

        dh, dc = state("dh", dh), state("dc", dc)
        if self.check_finite:
            _guard_finite(None, dh=dh, dc=dc)
        get = self._parameters.get
        params = [get(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if any(q is not None and q.grad is None for q in params):
            _ready_grads(self)  # (one core call: it checks the other gradients before any work)
        grads = tuple(None if q is None else q.grad for q in params) + (None,)
        try:
            dx, dh0, dc0 = _Direction.backward(self._mode, cache, None, dh, dc, grads, need_dx)
        except (TypeError, ValueError) as e:
            # the core refused a .grad (before any work): name the parameter (a wrong shape or
            # dtype, or memory shared with an input or a parameter)
            _ready_grads(self)
            if "expected memory separate from" in str(e):
                _grads_apart(self, [("dh", dh), ("dc", dc), *inputs])
            raise
        dx = None if dx is None else dx[0]
        if unbatched:
            dx = None if dx is None else dx[0]
            dh0 = dh0[0]
            dc0 = None if dc0 is None else dc0[0]
        return (dx, (dh0, dc0)) if self._mode == "LSTM" else (dx, dh0)


class LSTMCell(_CellBase):
    r"""One LSTM step (PyTorch's ``nn.LSTMCell`` API): ``h', c' = cell(x, (h, c))``.

    Args: input_size, hidden_size, bias (default True), seed, check_finite (as for the layers).
    Inputs: input (B, I) or (I,); hx optional ``(h_0, c_0)`` each (B, H) or (H,) as the input
    is batched or not (zeros if omitted), any real dtype (converted to float32).
    Outputs: ``(h_1, c_1)``. Attributes: weight_ih (4H, I), weight_hh (4H, H), bias_ih, bias_hh.

    Example::

        >>> import numpy as np, lstm_fast
        >>> cell = lstm_fast.LSTMCell(10, 20, seed=0)
        >>> h, c = cell(np.zeros((3, 10), np.float32))
        >>> h.shape
        (3, 20)
    """

    _mode = "LSTM"


class GRUCell(_CellBase):
    """One GRU step (PyTorch's ``nn.GRUCell`` API): ``h' = cell(x, h)``.

    Weights (3H, I) and (3H, H), gates r, z, n. Inputs: input (B, I) or (I,); hx optional,
    one array h_0 (B, H) or (H,) as the input is batched or not (zeros if omitted), any real
    dtype (converted to float32)."""

    _mode = "GRU"


class RNNCell(_CellBase):
    """One Elman RNN step (PyTorch's ``nn.RNNCell`` API): ``h' = cell(x, h)``, ``nonlinearity``
    ``'tanh'`` (default) or ``'relu'``. Inputs and hx as :class:`GRUCell`'s."""

    def __init__(
        self,
        input_size,
        hidden_size,
        bias=True,
        nonlinearity="tanh",
        *,
        seed=None,
        check_finite=False,
    ):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        object.__setattr__(self, "_mode", _nonlinearity_mode(nonlinearity))
        object.__setattr__(self, "nonlinearity", nonlinearity)
        super().__init__(input_size, hidden_size, bias, seed=seed, check_finite=check_finite)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "nonlinearity":  # the kernel follows it (checked first)
            object.__setattr__(self, "_mode", _nonlinearity_mode(value))
        super().__setattr__(name, value)
