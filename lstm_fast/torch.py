r"""Drop-in PyTorch modules computed by lstm_fast's kernels (``pip install lstm_fast[torch]``).

:class:`LSTM`, :class:`GRU` and :class:`RNN` are :class:`torch.nn.LSTM` / ``GRU`` / ``RNN``, and
:class:`LSTMCell`, :class:`GRUCell` and :class:`RNNCell` are :class:`torch.nn.LSTMCell` /
``GRUCell`` / ``RNNCell`` (subclasses: same constructor and initialisation, ``nn.Parameter``
names, ``state_dict``, ``repr`` and forward signature) whose forward and backward run on
lstm_fast's fused C++ kernels through a :class:`torch.autograd.Function`. :func:`replace_rnns`
turns every ``nn.LSTM``/``GRU``/``RNN`` and ``nn.LSTMCell``/``GRUCell``/``RNNCell`` of an
existing model into ours in place, :func:`restore_rnns` turns them back::

    >>> import torch, lstm_fast.torch as lft
    >>> model = torch.nn.Sequential()  # any model with nn.LSTM submodules
    >>> model = lft.replace_rnns(model)  # train / serve as before, optimizers keep working
    >>> model = lft.restore_rnns(model)  # a plain PyTorch model again

How tensors reach the kernels
    float32, C-contiguous CPU tensors are handed to the kernels without a copy
    (``tensor.numpy()`` / ``torch.from_numpy``); other layouts are made contiguous first (one copy).
    The kernels are float32-only and CPU-only:

    * the input's dtype must equal the parameters' dtype, as in ``torch.nn.LSTM`` (torch's own
      ``ValueError``, which names both dtypes: ``RNN input dtype (torch.float64) does not match
      weight dtype (torch.float32) ...``; the cells, and a state of another dtype, raise
      ``TypeError`` naming the argument: ``input``, ``hx[0]``, ...); a float64 input is
      never converted silently — call ``x.float()``. Under ``torch.autocast("cpu")`` (where
      torch's modules accept a lower-precision input) a bfloat16/float16 input and states are
      cast to float32 explicitly and the kernels run in float32, as autocast's float32 ops do:
      the outputs are float32;
    * a module whose parameters are of another dtype (``model.double()``, ``.half()``) or on
      another device (``.to("cuda")``) computes with torch's own implementation (it is torch's
      subclass), exactly as the module it replaced: a model keeps working whatever is done to
      it after :func:`replace_rnns`, and is fast again once it is float32 on the CPU. With
      float32 CPU parameters, an input or state on another device raises ``RuntimeError``.

Autograd
    One ``autograd.Function`` per layer and direction (per step for a cell, a sequence of
    T = 1 for the kernels; backpropagation through an unrolled loop of cell steps is autograd's,
    one lstm_fast backward per step): its forward runs the training kernel
    (which keeps the gates for backward) when a gradient is needed and the inference kernel
    (no cache, no workspace) under ``torch.no_grad()`` / ``torch.inference_mode()`` or when no
    input or parameter requires grad. Its backward calls lstm_fast's backward and returns fresh
    gradients, so autograd accumulates them into ``.grad`` as usual (hooks, DDP bucketing and
    gradient accumulation work unchanged). The inputs, initial states, parameters and outputs
    that the needed gradients read from the kernel cache are saved with ``save_for_backward``:
    modifying one in place before ``backward`` raises torch's usual version-counter error
    instead of giving wrong gradients. The others are not saved, as torch's own ops save only
    what their backward reads: a bias never (its gradient is a sum of the gates'), weight_ih
    only when the input needs a gradient, and a cell's (one step's) weight_hh only when the
    state does, so a cell raises exactly where torch's raises.
    Gradients and outputs are tensors over NumPy memory (``torch.from_numpy``), which torch
    does not let grow: ``p.grad.resize_()`` to a larger size raises ``Trying to resize storage
    that is not resizable`` (shrinking, and in-place ops of the same size, work; torch's
    optimizers, clipping and DDP never resize a gradient). The same holds for every tensor the
    kernels read (input, states, parameters): torch marks a storage non-resizable once
    ``Tensor.numpy()`` has viewed it. ``p.grad = p.grad.clone()`` gives a tensor of torch's own
    memory; copying every gradient so would cost each backward a pass over them.
    Outputs follow torch's modules: a unidirectional GRU, RNN or projected LSTM hands out a copy
    of its last layer's output when a gradient is needed (one (T, B, H) copy), so it can be
    changed in place before ``backward`` as torch's own allow; a plain LSTM's output is saved
    and raises, as torch's (oneDNN) LSTM does. A batch_first GRU or RNN output is, as torch's, a
    tensor of its own with the transposed strides, not a view (``detach_()`` works on it; the
    LSTM's is a view, as torch's). As torch frees saved tensors, a backward that
    does not retain the graph releases the kernels' cache (gates, cell states): an output kept
    afterwards holds no training memory. Under saved-tensor hooks
    (``torch.utils.checkpoint(use_reentrant=False)``, ``saved_tensors_hooks``, ``save_on_cpu``),
    which cannot see the kernels' cache, a training forward keeps no cache: its inputs go
    through the hooks and backward recomputes the cache from them (one more forward per layer),
    so checkpointing frees the recurrent layers' activations as it does torch's.
    The kernels' backward is first order only: a second-order gradient through it (after
    ``create_graph=True``) raises ``RuntimeError`` instead of silently missing its terms.
    Layers are composed as in ``torch.nn.LSTM``: the reverse direction runs on a time-reversed
    copy, dropout between layers is ``torch.nn.functional.dropout`` (torch's RNG, training mode
    only).

PackedSequence
    The kernels take PyTorch's ``batch_sizes`` directly, so packed input costs no arithmetic on
    padding: the packed data is unpacked to a padded (T, B, I) tensor in sorted order (one copy),
    each layer's output is packed again at the end (one copy), and the reverse direction reverses
    each sequence within its own length (a gather, one copy each way). Outputs past a sequence's
    length are never computed; ``h_n``/``c_n`` are each sequence's state after its last real step.

torch.compile
    ``torch.compile`` graph-breaks on the module (Dynamo treats every ``nn.RNNBase`` so unless
    ``torch._dynamo.config.allow_rnn`` is set, and the forward of every module here, cells
    included, is wrapped in ``torch.compiler.disable`` while compiling either way): the rest of
    the model is compiled, the recurrent layer runs eagerly on lstm_fast's kernels. Nothing
    fails; the graph is split (once per cell call in an unrolled loop; Dynamo logs the graph
    breaks and warns once that a disabled function was skipped).

torch.jit.script, torch.jit.trace, torch.export, torch.fx
    The kernels cannot be recorded into a graph, so these get torch's own computation with the
    same parameters: under ``torch.jit.trace``, ``torch.export`` and ``make_fx`` the forward is
    torch's (the traced or exported program runs torch's kernels; the module itself stays
    lstm_fast's), and ``torch.jit.script`` compiles a copy of torch's class sharing the
    ``nn.Parameter``\ s. torch's scripting also puts that copy into the model it came from, with
    a warning: :func:`replace_rnns` accelerates the eager model again.
    ``torch.fx.symbolic_trace`` records each module as one ``call_module`` node, as it records
    torch's: the ``GraphModule`` runs lstm_fast's kernels (a module with forward hooks or
    pre-hooks, e.g. from ``prune``, or a subclass overriding ``forward`` raises a ``TraceError``:
    FX, tracing into it, would apply them twice). Under ``FakeTensorMode`` (shape and
    memory estimation) the forward is torch's, as for parameters on the meta device.

torch.func and forward-mode AD
    The kernels see neither functorch's wrapped tensors nor tangents, so under a ``torch.func``
    transform (``grad``, ``vjp``, ``jvp``, ``vmap``, ``jacrev``, ``jacfwd``, ``hessian``:
    per-sample gradients, Jacobians) and when the input, a state or a parameter carries a
    ``torch.autograd.forward_ad`` tangent, the forward is torch's own computation with the same
    parameters: these work, and fail, exactly as with torch's modules.
    ``torch.func.functional_call`` alone (and plain tensors inside a dual level) runs the
    kernels. The autograd engine's batched gradients (``torch.autograd.grad(...,
    is_grads_batched=True)``, ``jacobian(..., vectorize=True)``) would vmap lstm_fast's
    backward and raise a clear error: use ``vectorize=False`` or ``torch.func.jacrev``.

``LSTM(proj_size=P)`` runs the projected LSTM of the core (``weight_hr_l{k}``), forward and
backward, with every other option.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

try:
    import torch
except ModuleNotFoundError as e:  # torch itself missing, not something torch imports
    if e.name != "torch":
        raise
    raise ModuleNotFoundError(
        "lstm_fast.torch needs PyTorch, which is not installed: "
        "pip install 'lstm_fast[torch]' (or torch itself)",
        name="torch",
    ) from e
import torch.autograd.forward_ad as fwAD
import torch.fx
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import ops
from . import rnn as _rnn

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "replace_rnns",
    "restore_rnns",
]


# -- kernels ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kernel:
    """One recurrent cell's kernels, in the form the generic autograd Function calls them.

    ``forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training, batch_sizes)`` ->
    ``(y, h_n, c_n or None, cache)``; ``backward(cache, dy, dh_n, dc_n, need_dx)`` ->
    ``(dx, dh0, dc0 or None, dweight_ih, dweight_hh, dbias_ih, dbias_hh)`` (dx None without
    ``need_dx``: an input that does not require grad costs no input-gradient GEMM).
    """

    name: str
    has_cell: bool
    gates: int
    forward: Callable[..., tuple]
    backward: Callable[..., tuple]


def _lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training, batch_sizes, w_hr=None):
    return ops.lstm_forward(
        x,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        h0,
        c0,
        training=training,
        batch_sizes=batch_sizes,
        weight_hr=w_hr,
    )


def _lstm_backward(cache, dy, dh_n, dc_n, need_dx=True):
    g = ops.lstm_backward(cache, dy, dh_n, dc_n, need_dx=need_dx)
    return (*g, g.dweight_hr)


def _gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training, batch_sizes):
    y, h_n, cache = ops.gru_forward(
        x, w_ih, w_hh, b_ih, b_hh, h0, training=training, batch_sizes=batch_sizes
    )
    return y, h_n, None, cache


def _no_cell_backward(backward):
    def run(cache, dy, dh_n, dc_n, need_dx=True):
        dx, dh0, *dweights = backward(cache, dy, dh_n, need_dx=need_dx)
        return (dx, dh0, None, *dweights)

    return run


def _rnn_forward(nonlinearity):
    def run(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training, batch_sizes):
        y, h_n, cache = ops.rnn_forward(
            x,
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            h0,
            nonlinearity=nonlinearity,
            training=training,
            batch_sizes=batch_sizes,
        )
        return y, h_n, None, cache

    return run


# Keyed by torch's ``RNNBase.mode``.
_KERNELS = {
    "LSTM": _Kernel("LSTM", True, 4, _lstm_forward, _lstm_backward),
    "GRU": _Kernel("GRU", False, 3, _gru_forward, _no_cell_backward(ops.gru_backward)),
    "RNN_TANH": _Kernel(
        "RNN_TANH", False, 1, _rnn_forward("tanh"), _no_cell_backward(ops.rnn_backward)
    ),
    "RNN_RELU": _Kernel(
        "RNN_RELU", False, 1, _rnn_forward("relu"), _no_cell_backward(ops.rnn_backward)
    ),
}


# -- tensors <-> arrays ----------------------------------------------------------------------------
def _array(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """A float32 CPU tensor as a C-contiguous array: a view when it is contiguous, else a copy."""
    if t is None:
        return None
    # force=True: detached, and a tensor with the negative or conjugate bit set (``x.conj().imag``
    # of a complex x, a float tensor torch's modules take) as its values, resolved in a copy
    # (1.0 µs for a contiguous tensor against 2.4 with detach().contiguous().numpy())
    if t.is_contiguous():
        return t.numpy(force=True)
    # torch's copy, not NumPy's of a view: numpy() marks the storage it views non-resizable, and
    # that would be t's own (a batch_first input, an expanded state, the base of a transposed
    # view), which the caller may still resize_() (the kernels never read it: they read the copy)
    return t.detach().contiguous().numpy(force=True)


def _tensor(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if a is None else torch.from_numpy(a)


class _NoSecondOrder(torch.autograd.Function):
    """Passes first-order gradients through unchanged, linked to the tensors they depend on
    (inputs, weights, upstream gradients): a second-order gradient through lstm_fast's backward
    (which builds no graph) reaches this node and raises, instead of silently missing terms."""

    @staticmethod
    def forward(ctx, n, *tensors):
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "lstm_fast.torch: double backward (a gradient of a gradient, create_graph=True) "
            "through lstm_fast's kernels is not supported; use torch's own module "
            "(lstm_fast.torch.restore_rnns(model)) for higher-order gradients"
        )


def _first_order(grads: tuple, links: tuple) -> tuple:
    """``grads`` as is, or -- under ``create_graph=True`` (grad mode on inside backward) with a
    link that requires grad -- routed through :class:`_NoSecondOrder`."""
    if not torch.is_grad_enabled():
        return grads
    links = tuple(t for t in links if isinstance(t, torch.Tensor) and t.requires_grad)
    at = [i for i, g in enumerate(grads) if g is not None]
    if not links or not at:
        return grads
    passed = _NoSecondOrder.apply(len(at), *(grads[i] for i in at), *links)
    out = list(grads)
    for i, g in zip(at, passed):
        out[i] = g
    return tuple(out)


# Whether the running backward keeps the graph (retain_graph): a private hook of torch's (its
# AOT autograd uses it); without it (another torch version) the cache is kept, as before.
_keep_graph = getattr(
    getattr(torch._C, "_autograd", None), "_get_current_graph_task_keep_graph", None
)


def _release_cache(ctx, attr: str) -> None:
    """Drop the kernels' cache (gates, cell states, references to x, y and the weights) once a
    backward that does not retain the graph has used it, as torch frees saved tensors then: an
    output kept after ``backward()`` (``losses.append(loss)``) keeps the graph's nodes, not every
    iteration's cache. ``retain_graph=True`` keeps it for the next backward."""
    if _keep_graph is not None and not _keep_graph():
        setattr(ctx, attr, None)


def _kernel_forward(kernel, training, batch_sizes, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
    """``kernel.forward`` on tensors (w_hr None without projection): (y, h_n, c_n, cache)."""
    return _forward_on(
        kernel, training, batch_sizes, _array(x), h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
    )


_top_hooks = getattr(getattr(torch._C, "_autograd", None), "_top_saved_tensors_default_hooks", None)


def _saved_tensor_hooks() -> bool:
    """Whether saved-tensor hooks are active (``torch.utils.checkpoint(use_reentrant=False)``,
    ``torch.autograd.graph.saved_tensors_hooks`` / ``save_on_cpu``): they manage what the graph
    keeps, and the kernels' cache (gates, cell states), which they cannot see, would escape
    them. A training forward then keeps no cache: it saves its inputs through the hooks, and
    backward recomputes the cache from them (one more forward per layer), so a checkpointed
    region holds no recurrent activations between forward and backward, as with torch's
    modules."""
    return _top_hooks is not None and _top_hooks(False) is not None


def _read_by_backward(need: tuple, T: int, inputs: tuple) -> tuple:
    """``inputs`` (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr of one direction), each kept where
    the kernels' backward reads it for a gradient that is needed (``need``: the inputs'
    ``needs_input_grad``), None where it does not -- the tensors saved for torch's
    version-counter check, as torch's own ops save only what their backward reads (its cells
    raise for a weight changed in place only when its product's other side needs a gradient):

    * x is read for dweight_ih only; weight_ih for dx only;
    * weight_hh for dh0, and at every step of a longer sequence (the recurrence's gradient);
    * the biases never (their gradients are sums of the gates');
    * the states and weight_hr for every gradient (c0 and weight_hr in each gate's; h0 in
      dweight_hh's and the GRU's update gate's).
    """
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    n_x, n_h0, _, n_ih = need[:4]
    return (
        x if n_ih else None,
        h0,
        c0,
        w_ih if n_x else None,
        w_hh if n_h0 or T > 1 else None,
        None,
        None,
        w_hr,
    )


class _Direction(torch.autograd.Function):
    """One layer, one direction, over a whole (T, B, I) sequence; backward by lstm_fast."""

    @staticmethod
    def forward(ctx, kernel, training, batch_sizes, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=None):
        ctx.set_materialize_grads(False)
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        ctx.recompute = training and _saved_tensor_hooks()
        y, h_n, c_n, cache = _kernel_forward(
            kernel, training and not ctx.recompute, batch_sizes, *inputs
        )
        y_t = torch.from_numpy(y)
        ctx.kernel = kernel
        ctx.batch_sizes = batch_sizes
        ctx.cache = cache
        ctx.links = ()
        if cache is not None:
            # Only for torch's version-counter check: the cache refers to these tensors' memory.
            # Those the gradients needed read, not every input: a weight changed in place
            # whose value no needed gradient depends on (a bias, an LSTMCell's weight_ih when
            # the input needs no gradient) raised where torch's modules do not.
            kept = _read_by_backward(ctx.needs_input_grad[3:11], x.shape[0], inputs)
            ctx.save_for_backward(*kept, y_t)
            # (the rest that require grad, for _first_order's links only; dropped with the cache)
            ctx.links = tuple(
                t for t, k in zip(inputs, kept) if k is None and t is not None and t.requires_grad
            )
        elif ctx.recompute:
            ctx.save_for_backward(*inputs)  # through the hooks; the cache is rebuilt from them
        outs = (y_t, torch.from_numpy(h_n))
        return outs + ((torch.from_numpy(c_n),) if kernel.has_cell else ())

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n=None):
        # Raises if a saved tensor was modified in place, or on a second backward through a
        # graph that was not retained (torch's own error).
        saved = ctx.saved_tensors
        _refuse_batched_grads((dy, dh_n, dc_n))
        cache = ctx.cache
        if ctx.recompute:
            cache = _kernel_forward(ctx.kernel, True, ctx.batch_sizes, *saved[:8])[3]
        if cache is None:
            raise RuntimeError(
                "lstm_fast.torch: the forward ran without a gradient cache (no input or "
                "parameter required grad); it cannot be differentiated"
            )
        grads = ctx.kernel.backward(
            cache, _array(dy), _array(dh_n), _array(dc_n), ctx.needs_input_grad[3]
        )
        del cache
        links = (*saved, *ctx.links, dy, dh_n, dc_n)
        _release_cache(ctx, "cache")
        _release_cache(ctx, "links")
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = grads[:7]  # fresh arrays, never aliased
        dw_hr = grads[7] if len(grads) > 7 else None
        wanted = zip((dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr), ctx.needs_input_grad[3:])
        out = tuple(_tensor(g) if n and g is not None else None for g, n in wanted)
        return (None, None, None, *_first_order(out, links))


def _direction_args(inputs: tuple, d: int) -> tuple:
    """Direction ``d``'s h0, c0 and five weights (w_ih, w_hh, b_ih, b_hh, w_hr) from
    :class:`_BothDirections`' tensor inputs (x, h00, c00, h01, c01, then five weights per
    direction)."""
    return (inputs[1 + 2 * d], inputs[2 + 2 * d], *inputs[5 + 5 * d : 10 + 5 * d])


def _forward_on(kernel, training, batch_sizes, x: np.ndarray, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
    """:func:`_kernel_forward` with x already an array."""
    proj = {} if w_hr is None else {"w_hr": _array(w_hr)}
    return kernel.forward(
        x,
        _array(w_ih),
        _array(w_hh),
        _array(b_ih),
        _array(b_hh),
        _array(h0),
        _array(c0),
        training,
        batch_sizes,
        **proj,
    )


def _direction_no_graph(
    kernel, training, batch_sizes, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=None
):
    """:class:`_Direction`'s outputs for a call that records no graph (nothing requires grad,
    or grad mode is off): the kernel's forward without a gradient cache, straight from the
    module, where ``Function.apply`` cost 11 µs per call (a third of a one-step forward)."""
    y, h_n, c_n, _ = _kernel_forward(
        kernel, False, batch_sizes, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
    )
    outs = (torch.from_numpy(y), torch.from_numpy(h_n))
    return outs + ((torch.from_numpy(c_n),) if kernel.has_cell else ())


def _flip(a: Optional[np.ndarray], rev: Optional[tuple]) -> Optional[np.ndarray]:
    """A (T, B, F) array with each sequence reversed in time: ``a[::-1]``, or with lengths
    ``a[rev]`` (``rev``: each row's time index reversed within its length, the identity on its
    padding, and the row index) as a new C-contiguous array. NumPy, on purpose: a torch op of this
    size runs on torch's thread pool, whose threads then spin, waiting for more work, on the
    cores the two directions' kernels are about to run on (2-layer bidirectional S6 forward
    15.6 ms with torch.flip and torch.cat against 9.1 ms with torch on one thread)."""
    if a is None:
        return None
    return np.ascontiguousarray(_reversed(a, rev))


def _reversed(a: np.ndarray, rev: Optional[tuple]) -> np.ndarray:
    """``a`` with each sequence reversed in time (see :func:`_flip`): a view without lengths."""
    return a[::-1] if rev is None else a[rev]


def _both_forward(kernel, cached, batch_sizes, rev, inputs):
    """Both directions' kernel forwards at once (:func:`lstm_fast.rnn._directions`; inputs as
    :class:`_BothDirections` takes them): the kernels' results, and the output tensors y (both
    directions' outputs side by side, the reverse one back in time order), then per direction
    h_n (and c_n)."""
    x = _array(inputs[0])
    # Each direction reverses its input and writes its half of y from its own thread (the
    # reverse one back in time order), not serially before and after both.
    F = inputs[6].shape[1]  # the recurrent input's size: H, or P with a projection
    y = np.empty((x.shape[0], x.shape[1], 2 * F), np.float32)

    def run(d):
        xd = x if d == 0 else _flip(x, rev)
        r = _forward_on(kernel, cached, batch_sizes, xd, *_direction_args(inputs, d))
        y[:, :, d * F : (d + 1) * F] = r[0] if d == 0 else _reversed(r[0], rev)
        return r

    res = _rnn._directions(run, 2)
    outs = [torch.from_numpy(y)]
    for r in res:
        outs.append(torch.from_numpy(r[1]))
        if kernel.has_cell:
            outs.append(torch.from_numpy(r[2]))
    return res, tuple(outs)


def _both_no_graph(kernel, training, batch_sizes, rev, x, h00, c00, h01, c01, *w):
    """:class:`_BothDirections`' outputs for a call that records no graph (see
    :func:`_direction_no_graph`)."""
    return _both_forward(kernel, False, batch_sizes, rev, (x, h00, c00, h01, c01, *w))[1]


class _BothDirections(torch.autograd.Function):
    """The two directions of one bidirectional layer as one node: forward and backward each run
    the directions at once (:func:`lstm_fast.rnn._directions`: the reverse one on a helper
    thread, each with half the thread team), where separate nodes would run one after the
    other. Inputs: the layer's input x, each direction's h0/c0, and their five weights each
    (w_ih, w_hh, b_ih, b_hh, w_hr; biases and w_hr may be None); ``rev`` reverses sequences in
    time (see :func:`_flip`). Outputs: y (T, B, 2 * H_out), then h_n (and c_n) per direction.
    The reversal of the input, the concatenation of the outputs and, in backward, the split of
    dy and the sum of the two directions' dx are NumPy copies inside the node (see _flip)."""

    @staticmethod
    def forward(ctx, kernel, training, batch_sizes, rev, x, h00, c00, h01, c01, *w):
        ctx.set_materialize_grads(False)
        inputs = (x, h00, c00, h01, c01, *w)
        ctx.recompute = training and _saved_tensor_hooks()  # see _Direction
        cached = training and not ctx.recompute
        res, outs = _both_forward(kernel, cached, batch_sizes, rev, inputs)
        ctx.kernel = kernel
        ctx.batch_sizes = batch_sizes
        ctx.rev = rev
        ctx.out_size = res[0][0].shape[2]
        ctx.caches = [r[3] for r in res]
        ctx.links = ()
        if ctx.recompute:
            # with saved-tensor hooks the inputs go through them and backward rebuilds the caches
            ctx.save_for_backward(*inputs)
        elif cached:
            # The forward direction's cache refers to x's memory (torch's version-counter check;
            # the reverse one's x and both y are the node's own arrays), and each direction's to
            # its states and weights: those its needed gradients read (see _read_by_backward).
            need, T = ctx.needs_input_grad[4:], x.shape[0]
            kept = [None] * len(inputs)
            for d in (0, 1):
                # direction d's x, h0, c0 and five weights, at their places in inputs
                at = (0, 1 + 2 * d, 2 + 2 * d, *range(5 + 5 * d, 10 + 5 * d))
                one = _read_by_backward(tuple(need[i] for i in at), T, tuple(inputs[i] for i in at))
                for i, t in zip(at, one):
                    if t is not None:
                        kept[i] = t
            ctx.save_for_backward(*kept)
            ctx.links = tuple(
                t for t, k in zip(inputs, kept) if k is None and t is not None and t.requires_grad
            )
        return outs

    @staticmethod
    def backward(ctx, dy, *dstates):
        saved = ctx.saved_tensors  # raises as in _Direction.backward
        _refuse_batched_grads((dy, *dstates))
        if ctx.caches[0] is None and not ctx.recompute:
            raise RuntimeError(
                "lstm_fast.torch: the forward ran without a gradient cache (no input or "
                "parameter required grad); it cannot be differentiated"
            )
        n = 2 if ctx.kernel.has_cell else 1
        rev, F = ctx.rev, ctx.out_size
        dy_a = _array(dy)
        dys = (None, None) if dy_a is None else (dy_a[:, :, :F], dy_a[:, :, F:])
        need = ctx.needs_input_grad
        # inputs after the 4 non-tensors: x, h00, c00, h01, c01, w0 (5), w1 (5)
        need_dx = need[4]

        def run(d):
            cache = ctx.caches[d]
            if ctx.recompute:
                x = _array(saved[0])
                x = x if d == 0 else _flip(x, rev)
                cache = _forward_on(
                    ctx.kernel, True, ctx.batch_sizes, x, *_direction_args(saved, d)
                )
                cache = cache[3]
            g = dstates[d * n : (d + 1) * n]
            g_y = dys[d]
            if g_y is not None:
                g_y = np.ascontiguousarray(g_y) if d == 0 else _flip(g_y, rev)
            return ctx.kernel.backward(
                cache,
                g_y,
                _array(g[0]),
                _array(g[1]) if n == 2 else None,
                need_dx,  # no input-gradient GEMM when x does not require grad
            )

        res = _rnn._directions(run, 2)
        links = (*saved, *ctx.links, dy, *dstates)
        _release_cache(ctx, "caches")
        _release_cache(ctx, "links")
        dx = None
        if need_dx and res[0][0] is not None:
            dx = res[0][0]
            dx += _reversed(res[1][0], rev)
        out = [_tensor(dx) if need_dx else None]
        for d in (0, 1):
            out += [
                _tensor(res[d][1]) if need[5 + 2 * d] else None,
                _tensor(res[d][2]) if need[6 + 2 * d] and res[d][2] is not None else None,
            ]
        for d in (0, 1):
            for j in range(5):  # w_ih, w_hh, b_ih, b_hh, w_hr
                g = res[d][3 + j] if 3 + j < len(res[d]) else None
                out.append(_tensor(g) if need[9 + 5 * d + j] and g is not None else None)
        return (None, None, None, None, *_first_order(tuple(out), links))


# -- checks ----------------------------------------------------------------------------------------
def _check_tensor(module: str, name: str, t: torch.Tensor) -> None:
    if type(t).__name__ == "MaskedTensor":  # (torch's own modules fail in its dispatch)
        raise TypeError(
            f"lstm_fast.torch.{module}: {name}: expected a tensor without a mask, got a "
            "torch.masked.MaskedTensor (fill the masked values explicitly, e.g. "
            "t.to_tensor(0.0))"
        )
    if t.layout != torch.strided:
        hint = (
            " (pad it: torch.nested.to_padded_tensor(t, 0.0), or pack the sequences as a "
            "PackedSequence)"
            if t.is_nested
            else ""
        )
        raise RuntimeError(
            f"lstm_fast.torch.{module}: {name}: expected a strided (dense) tensor, got layout "
            f"{t.layout}{hint}"
        )
    if t.device.type != "cpu":
        raise RuntimeError(
            f"lstm_fast.torch.{module}: {name} is on {t.device}; lstm_fast runs on the CPU only "
            "(move the model and data to the CPU, or use lstm_fast.torch.restore_rnns(model) "
            "to get torch's own module back)"
        )
    if t.dtype != torch.float32:
        raise TypeError(
            f"lstm_fast.torch.{module}: {name}: expected dtype torch.float32 (lstm_fast's kernels "
            f"are float32 only), got {t.dtype}; call .float() on the model and the input, or use "
            "lstm_fast.torch.restore_rnns(model)"
        )


def _check_weight(module: str, name: str, t, shape: tuple, legend: str) -> None:
    """A parameter the kernels will read: a tensor (torch's ``TypeError`` for a missing one,
    e.g. after ``module.bias_ih_l0 = None``), on the CPU, float32, of the shape the module's
    sizes give (a replaced ``nn.Parameter`` of another shape raises naming the parameter and
    the module's shape, not the kernels' view of it)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"lstm_fast.torch.{module}: {name}: expected a tensor of shape {legend} = {shape}, "
            f"got {type(t).__name__}"
        )
    _check_tensor(module, name, t)
    if tuple(t.shape) != shape:
        raise RuntimeError(
            f"lstm_fast.torch.{module}: {name}: expected shape {legend} = {shape} (the "
            f"module's sizes), got {_shape(t)}"
        )


def _autocast_float(t):
    """``t`` as float32 when CPU autocast is on and ``t`` is a bfloat16 / float16 tensor (an
    activation from an autocast Linear), else ``t`` itself.

    Under ``torch.autocast("cpu")`` the kernels run in float32, as autocast's float32 ops do: the
    cast is explicit and differentiable (gradients flow back in the input's dtype) and the
    outputs are float32. float64 is left alone (autocast never casts it) and raises as without
    autocast."""
    if (
        isinstance(t, torch.Tensor)
        and t.dtype in (torch.bfloat16, torch.float16)
        and t.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
    ):
        return t.float()
    return t


def _for_kernels(t):
    """An input or state tensor as the kernels read it: a sparse (or other non-strided) tensor
    as its dense values (``to_dense``, differentiable: torch's cells and a torch layer's
    ``hx`` take sparse tensors; here ``.contiguous()`` raised "unsupported memory format
    option Contiguous"), then :func:`_autocast_float`."""
    if (
        isinstance(t, torch.Tensor)
        and t.layout != torch.strided
        and t.device.type == "cpu"
        and not t.is_nested  # (a nested tensor's to_dense raises; _check_tensor names it)
    ):
        t = t.to_dense()
    return _autocast_float(t)


def _follow_torch_threads() -> None:
    """Apply torch's thread count to this thread before the kernels run. torch keeps its count
    (``torch.set_num_threads``) itself and hands it to OpenMP in each thread lazily, at the
    thread's first parallel torch op; the kernels use OpenMP's count of the calling thread (the
    runtime torch's is, README), so in a new thread (an inference server's worker) whose first
    op is ours they would run on OpenMP's default instead. ``torch.get_num_threads()`` does
    torch's lazy initialisation."""
    torch.get_num_threads()


def _step_mask(batch_sizes: torch.Tensor, B: int) -> torch.Tensor:
    """(T, B) bool: row b is active at step t (b < batch_sizes[t]); its True entries in
    row-major order are the rows of the packed data. (Made in NumPy: three small torch ops
    took 5 µs.)"""
    return torch.from_numpy(np.arange(B)[None, :] < batch_sizes.numpy()[:, None])


def _equal_lengths(batch_sizes: torch.Tensor) -> bool:
    """Whether every sequence of a PackedSequence has the same length (its counts, checked
    non-increasing, end as they start): its data's rows are then the (T, B, .) padded tensor's
    rows, in order, with no padding at all."""
    bs = batch_sizes.numpy()
    return bool(bs[-1] == bs[0])


def _padded(data: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
    """A PackedSequence's data (N, I) as a zero-padded (T, B, I) tensor, differentiable in one
    scatter (its backward one gather). Rows of data past the counts' sum are not read (as
    torch's pad_packed_sequence). Sequences all of one length need no padding: their rows,
    reshaped (a view when no graph can be recorded; else a copy, as the scatter made one, so
    that changing data in place after the forward stays allowed)."""
    bs = batch_sizes.numpy()
    T, B = bs.shape[0], int(bs[0])
    n = int(bs.sum())
    rows = data if n == data.shape[0] else data[:n]
    if bs[-1] == B:
        x = rows.reshape((T, B) + tuple(data.shape[1:]))
        return x.clone() if torch.is_grad_enabled() and x._base is not None else x
    x = data.new_zeros((T, B) + tuple(data.shape[1:]))
    # (in place on the new tensor: index_put would copy it first)
    return x.index_put_((_step_mask(batch_sizes, B),), rows)


def _check_packed_input(module: str, input: PackedSequence, rows: int) -> None:
    """A PackedSequence's batch_sizes and sorted / unsorted indices as ``pack_padded_sequence``
    makes them (:func:`lstm_fast.rnn._check_packed`), checked before anything reads them:
    torch's ``pad_packed_sequence`` (which unpacks the input) trusts them, and a zero or
    negative count corrupts the heap there (``malloc(): invalid next size``, a crash) where
    torch's module raises."""
    _rnn._check_packed(
        f"lstm_fast.torch.{module}: ",
        input.batch_sizes,
        input.sorted_indices,
        input.unsorted_indices,
        rows,
        RuntimeError,
    )


# torch.compiler.disable(f) of each module's _fast_forward, made on first use (it imports
# Dynamo, ~1 s).
_DISABLED: dict[Callable, Callable] = {}


def _eager(fast_forward: Callable) -> Callable:
    """``fast_forward`` itself, or kept out of Dynamo's reach when torch.compile may be running
    (Dynamo cannot trace the kernels' frames and would otherwise try, frame by frame, and fall
    back each time)."""
    if "torch._dynamo" not in sys.modules:
        return fast_forward
    disabled = _DISABLED.get(fast_forward)
    if disabled is None:
        disabled = _DISABLED[fast_forward] = torch.compiler.disable(fast_forward)
    return disabled


_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", None)


def _dispatch_modes() -> bool:
    """Whether a ``TorchDispatchMode`` (``make_fx``'s proxy mode, ``FakeTensorMode``) may be
    active around an eager call: a C counter (0.05 µs), so that the common case pays nothing
    for :func:`_graph_capture`'s and :func:`_fake_mode`'s look-ups. False while Dynamo traces
    the forward (``torch.compile``: its fake tensors never reach the kernels, which run
    eagerly, and each look-up, traced, would be a graph break)."""
    if torch.compiler.is_compiling():
        return False
    return _dispatch_stack_len is None or _dispatch_stack_len() > 0


_is_exporting = getattr(torch.compiler, "is_exporting", None)


def _graph_capture() -> bool:
    """Whether torch is recording a graph of the forward: ``torch.jit.trace``, ``torch.export``
    or ``make_fx`` (``torch.fx.experimental.proxy_tensor``, whose graph would otherwise hold the
    kernels' outputs as constants, the same for every input). The kernels (NumPy arrays behind
    a C++ call) cannot be recorded, so the modules then compute with torch's own
    implementation, which can: the exported or traced program runs torch's kernels, with the
    same parameters."""
    if torch.jit.is_tracing():
        return True
    if _is_exporting is not None and _is_exporting():
        return True
    if not _dispatch_modes():
        return False
    proxy_tensor = sys.modules.get("torch.fx.experimental.proxy_tensor")
    proxy_mode = getattr(proxy_tensor, "get_proxy_mode", None)
    return proxy_mode is not None and proxy_mode() is not None


# FX's flag for a running symbolic_trace (another torch version: the Proxy is looked for always)
_fx_tracing = getattr(getattr(torch.fx, "_symbolic_trace", None), "is_fx_symbolic_tracing", None)


def _fx_call_module(module: nn.Module, input, hx):
    """Under ``torch.fx.symbolic_trace`` (the input or a state is an ``fx.Proxy``): the
    ``call_module`` node FX records for torch's own modules, which it keeps as leaves by their
    ``torch.nn`` namespace and ours would trace into (the kernels cannot take a Proxy); None
    otherwise. The ``GraphModule`` calls the module itself, so it runs on lstm_fast's kernels.
    Skipped outside FX's symbolic tracing, and while Dynamo traces the forward
    (``torch.compile``: it sees no Proxy, and the look-up, traced, would be a graph break)."""
    if torch.compiler.is_compiling() or (_fx_tracing is not None and not _fx_tracing()):
        return None
    states = hx if isinstance(hx, (tuple, list)) else (hx,)
    proxy = next((t for t in (input, hx, *states) if isinstance(t, torch.fx.Proxy)), None)
    if proxy is None:
        return None
    tracer = proxy.tracer
    path = tracer.path_of_module(module)
    own = type(module).forward in (_FastRNNMixin.forward, _FastCellMixin.forward)
    if not path or not own:
        # FX is tracing this forward from outside the module: the traced root, or a subclass
        # overriding forward (its code before super().forward() is in the graph already, and
        # a call_module node would run it twice). torch's forward cannot be traced either.
        name = _torch_class(module).__name__
        raise torch.fx.proxy.TraceError(
            f"lstm_fast.torch.{name}: torch.fx.symbolic_trace cannot trace the forward of "
            f"{type(module).__name__} (lstm_fast's kernels take no Proxy; torch.nn.{name}'s "
            "forward is not traceable either): trace a model that holds the module itself, "
            "where it is one call_module node"
        )
    module_hooks = sys.modules["torch.nn.modules.module"]
    hooks = (
        module._forward_pre_hooks,
        module._forward_hooks,
        getattr(module_hooks, "_global_forward_pre_hooks", None),
        getattr(module_hooks, "_global_forward_hooks", None),
    )
    if any(hooks):
        # FX ran the pre-hooks on the traced values already (torch's modules, leaves, run none
        # while traced), and the GraphModule's call of the module runs them again.
        raise torch.fx.proxy.TraceError(
            f"lstm_fast.torch.{_torch_class(module).__name__}: torch.fx.symbolic_trace cannot "
            f"record {path} ({type(module).__name__}) while it has forward hooks or pre-hooks "
            "(module or global ones; torch.nn.utils.prune and weight_norm register some): "
            "they would be applied twice. Trace before registering them, or trace torch's "
            "module (lstm_fast.torch.restore_rnns(model))"
        )
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", path, args, {})


_functorch = getattr(torch._C, "_functorch", None)


def _func_transform() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vjp``, ``jvp``, ``vmap``, ``jacrev``,
    ``jacfwd``, ``hessian``) is running. Its wrapped tensors cannot reach the kernels (no
    storage for NumPy), so the modules then compute with torch's own implementation, which
    the transforms see through: they work exactly as with torch's modules."""
    level = getattr(_functorch, "maybe_current_level", None)
    return level is not None and level() is not None


def _has_tangent(module: nn.Module, input, hx, weights) -> bool:
    """Whether forward-mode AD (``torch.autograd.forward_ad``) is on and the input, a state or
    one of the parameters named ``weights`` carries a tangent: the kernels have no forward
    derivative, so torch's implementation (which has) computes then; inside a dual level, plain
    tensors still run the kernels."""
    if getattr(fwAD, "_current_level", 0) < 0:  # no dual level (the common case): nothing to do
        return False
    data = input.data if isinstance(input, PackedSequence) else input
    states = hx if isinstance(hx, (tuple, list)) else (hx,)
    tensors = (data, *states, *(getattr(module, n, None) for n in weights))
    return any(
        isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None for t in tensors
    )


def _parametrizations(module: nn.Module):
    """The names of ``module``'s tensors that torch's ``parametrize`` computes (a container with
    ``in``; empty without parametrizations)."""
    p = module.__dict__["_modules"].get("parametrizations")
    return () if p is None else p


def _foreign_params(module: nn.Module, weights) -> bool:
    """Whether a parameter named in ``weights`` is not a float32 CPU tensor (``model.double()``,
    ``.half()``, ``.to("cuda")``): the kernels are float32 and CPU only, so torch's own
    implementation computes such a module, as it would without :func:`replace_rnns`.
    A parametrized weight is judged by its original, not computed: each computation runs the
    parametrization (a power iteration of ``spectral_norm`` in training mode, updating its
    buffers), and the forward then computes it as often as torch's module does."""
    parametrized = _parametrizations(module)
    own = module._parameters  # (a dict look-up: getattr goes through Module.__getattr__)
    for n in weights:
        if n in own:
            t = own[n]
        elif n in parametrized:
            p = parametrized[n]
            t = p.original if hasattr(p, "original") else getattr(p, "original0", None)
        else:
            t = getattr(module, n, None)
        if isinstance(t, torch.Tensor) and (t.dtype is not torch.float32 or not t.is_cpu):
            return True
    return False


_FAKE_KEY = getattr(getattr(torch._C, "_TorchDispatchModeKey", None), "FAKE", None)


def _fake_mode() -> bool:
    """Whether a ``FakeTensorMode`` is active (shape and memory estimation on a model built
    under it): its tensors have no data for the kernels, so torch's own implementation computes
    the output shapes, as for parameters on the meta device."""
    if not _dispatch_modes():
        return False
    return _FAKE_KEY is not None and torch._C._get_dispatch_mode(_FAKE_KEY) is not None


def _torch_computes(module: nn.Module, input, hx, weights) -> bool:
    """Whether this call is computed by torch's own implementation rather than the kernels: a
    graph being recorded (:func:`_graph_capture`), a ``torch.func`` transform
    (:func:`_func_transform`), a tangent on the input, a state or a parameter
    (:func:`_has_tangent`), parameters the kernels cannot take (:func:`_foreign_params`), or
    fake tensors (:func:`_fake_mode`)."""
    return (
        _foreign_params(module, weights)
        or _graph_capture()
        or _fake_mode()
        or _func_transform()
        or _has_tangent(module, input, hx, weights)
    )


# functorch's tests for a vmap-batched tensor (the engine's is_grads_batched uses the legacy one)
_BATCHED = tuple(
    f
    for f in (getattr(_functorch, n, None) for n in ("is_batchedtensor", "is_legacy_batchedtensor"))
    if f is not None
)


def _refuse_batched_grads(grads: tuple) -> None:
    """Raises a clear error for gradients batched by vmap (``torch.autograd.grad(...,
    is_grads_batched=True)``, ``torch.autograd.functional.jacobian(..., vectorize=True)``): the
    kernels' backward takes one upstream gradient at a time."""
    if any(g is not None and f(g) for g in grads for f in _BATCHED):
        raise RuntimeError(
            "lstm_fast.torch: batched gradients (torch.autograd.grad(..., is_grads_batched=True), "
            "torch.autograd.functional.jacobian / hessian(..., vectorize=True)) cannot run "
            "through lstm_fast's kernels, whose backward takes one upstream gradient at a time; "
            "use vectorize=False or one grad_outputs at a time, torch.func.jacrev / vmap (they "
            "compute with torch's implementation), or torch's module "
            "(lstm_fast.torch.restore_rnns(model))"
        )


def _torch_class(module: nn.Module) -> type:
    """The torch class an lstm_fast module stands for (``nn.LSTM`` for :class:`LSTM`)."""
    for cls in type(module).__mro__:
        # (a parametrized module's class lives in torch.nn.utils.parametrize but is ours)
        if cls.__module__.startswith("torch.nn") and not issubclass(cls, _GraphFallback):
            return cls
    raise TypeError(f"{type(module).__name__}: no torch.nn base class")  # pragma: no cover


class _GraphFallback:
    """What lets models holding lstm_fast modules be scripted, traced and exported: under
    ``torch.jit.script`` a module is replaced by a shallow copy of torch's class (the same
    ``nn.Parameter`` objects, so the scripted module sees later updates), and under
    ``torch.jit.trace`` / ``torch.export`` the forward is torch's own (:func:`_graph_capture`;
    also under ``torch.func`` transforms and forward-mode AD: :func:`_torch_computes`).
    Eager calls and ``torch.compile`` (a graph break around the kernels) run lstm_fast. (torch's
    scripting puts the copy into the parent module too, replacing the lstm_fast module there:
    a warning says so.)"""

    def __prepare_scriptable__(self):
        cls = _torch_class(self)
        warnings.warn(
            f"lstm_fast.torch: torch.jit.script compiles torch.nn.{cls.__name__} in place of "
            f"lstm_fast's {type(self).__name__} (same parameters); torch's scripting also puts "
            "it into the model it came from: lstm_fast.torch.replace_rnns(model) accelerates "
            "the eager model again",
            UserWarning,
            stacklevel=3,
        )
        m = cls.__new__(cls)
        m.__dict__ = dict(self.__dict__)
        for key in ("_parameters", "_buffers", "_modules"):
            if key in m.__dict__:
                m.__dict__[key] = type(self.__dict__[key])(self.__dict__[key])
        return m


# -- modules ---------------------------------------------------------------------------------------
class _FastRNNMixin(_GraphFallback):
    """The recurrent stack over lstm_fast's kernels, shared by the LSTM/GRU/RNN subclasses.

    Subclasses put this mixin before the torch class, so that the constructor, parameters and
    ``check_forward_args`` are torch's own; the kernel is chosen by torch's ``self.mode``.
    """

    def _refresh_flat_weights(self) -> None:
        """torch's ``_update_flat_weights`` (``_flat_weights`` made again when a parameter was
        replaced since it was last made, as by ``torch.func.functional_call``), with the
        module's own parameters read from its ``_parameters`` rather than through
        ``Module.__getattr__`` twice each (5 µs of a one-step forward)."""
        refs = self.__dict__.get("_flat_weight_refs")
        names = self.__dict__.get("_flat_weights_names")
        if refs is None or names is None or len(refs) != len(names) or _parametrizations(self):
            self._update_flat_weights()
            return
        own = self._parameters
        for ref, name in zip(refs, names):
            w = own[name] if name in own else getattr(self, name, None)
            if w is not None and ref is not None and ref() is not w:
                self._init_flat_weights()
                return

    def _check_supported(self) -> list:
        """Every parameter the kernels read: present, float32 on the CPU, and of the shape the
        module's sizes give (as torch's constructor made it). Runs on every call: the expected
        shapes are worked out once per set of sizes, and a parameter that passes costs three
        comparisons (the full check, with its message, runs only for one that does not).
        Returns the parameters as read (the kernels take these: each read once per call; a
        parametrized one is taken from ``_flat_weights``, which ``_update_flat_weights`` has just
        computed, so that a forward computes it as often as torch's does)."""
        key = (
            self.mode,
            self.input_size,
            self.hidden_size,
            getattr(self, "proj_size", 0),
            self.bidirectional,
            tuple(self._flat_weights_names),
        )
        cached = self.__dict__.get("_lf_expected")
        if cached is None or cached[0] != key:
            cached = (key, self._expected_shapes())
            self.__dict__["_lf_expected"] = cached
        module = type(self).__name__
        f32 = torch.float32
        parametrized = _parametrizations(self)
        params = []
        own = self._parameters  # (a dict look-up: getattr goes through Module.__getattr__)
        for i, (name, shape, legend) in enumerate(cached[1]):
            if name in own:
                t = own[name]
            else:
                t = self._flat_weights[i] if name in parametrized else getattr(self, name)
            params.append(t)
            if isinstance(t, torch.Tensor) and t.dtype == f32 and t.shape == shape and t.is_cpu:
                continue
            _check_weight(module, name, t, shape, legend)
        return params

    def _expected_shapes(self) -> list:
        """(name, shape, legend) of every parameter the kernels read, from the module's sizes."""
        gates = {"LSTM": 4, "GRU": 3}.get(self.mode, 1)
        H, P = self.hidden_size, getattr(self, "proj_size", 0)
        H_out, D = P or H, 2 if self.bidirectional else 1
        g = f"{gates}*hidden_size" if gates > 1 else "hidden_size"
        h_out = "proj_size" if P else "hidden_size"
        out = []
        for name in self._flat_weights_names:
            kind, k = name.split("_l")[0], int(name.split("_l")[1].split("_")[0])
            if kind == "weight_ih":
                i = "input_size" if k == 0 else f"{D}*{h_out}" if D > 1 else h_out
                shape = (gates * H, self.input_size if k == 0 else D * H_out)
                legend = f"({g}, {i})"
            elif kind == "weight_hh":
                shape, legend = (gates * H, H_out), f"({g}, {h_out})"
            elif kind == "weight_hr":
                shape, legend = (P, H), "(proj_size, hidden_size)"
            else:  # bias_ih, bias_hh
                shape, legend = (gates * H,), f"({g},)"
            out.append((name, shape, legend))
        return out

    def _run(self, x, hx, batch_sizes, params):
        """x (T, B, I) sequence-major (padded, sorted by length when ``batch_sizes`` is given);
        hx None or a tuple of (L*D, B, H_out) [, (L*D, B, H)]. Returns (y (T, B, D*H_out), the
        final states); H_out = proj_size when projected, else hidden_size."""
        kernel = _KERNELS[self.mode]
        L, D = self.num_layers, 2 if self.bidirectional else 1
        grad = torch.is_grad_enabled()
        proj = getattr(self, "proj_size", 0) > 0
        per_dir = (4 if self.bias else 2) + (1 if proj else 0)
        need_grad = grad and (
            x.requires_grad
            or any(p.requires_grad for p in params)
            or (hx is not None and any(h.requires_grad for h in hx))
        )
        bs_np = None
        rev = None  # with lengths, the index that reverses each sequence (see _flip)
        if batch_sizes is not None:
            bs_np = batch_sizes.numpy()
            if D == 2:
                B = x.shape[1]
                lengths = (bs_np[:, None] > np.arange(B)[None, :]).sum(0)
                rev = (_rnn._reverse_index(lengths, x.shape[0]), np.arange(B)[None, :])
        states: list[list[torch.Tensor]] = [[] for _ in range(2 if kernel.has_cell else 1)]
        layer_in = x
        for k in range(L):
            if D == 2:  # both directions as one node, run at once; y side by side
                ws, h0s, c0s = [], [None, None], [None, None]
                for d in (0, 1):
                    idx = k * D + d
                    w = params[idx * per_dir : (idx + 1) * per_dir]
                    ws += [w[0], w[1], *((w[2], w[3]) if self.bias else (None, None))]
                    ws.append(w[-1] if proj else None)
                    if hx is not None:
                        h0s[d] = hx[0][idx]
                        c0s[d] = hx[1][idx] if kernel.has_cell else None
                res = (_BothDirections.apply if need_grad else _both_no_graph)(
                    kernel, need_grad, bs_np, rev, layer_in, h0s[0], c0s[0], h0s[1], c0s[1], *ws
                )
                layer_in = res[0]
                n = 2 if kernel.has_cell else 1
                for d in (0, 1):
                    for s, t in zip(states, res[1 + d * n : 1 + (d + 1) * n]):
                        s.append(t)
            else:
                w = params[k * per_dir : (k + 1) * per_dir]
                b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
                h0 = c0 = None
                if hx is not None:
                    h0 = hx[0][k]
                    c0 = hx[1][k] if kernel.has_cell else None
                res = (_Direction.apply if need_grad else _direction_no_graph)(
                    kernel,
                    need_grad,
                    bs_np,
                    layer_in,
                    h0,
                    c0,
                    w[0],
                    w[1],
                    b_ih,
                    b_hh,
                    w[-1] if proj else None,
                )
                layer_in = res[0]
                for s, r in zip(states, res[1:]):
                    s.append(r)
            if self.dropout > 0 and self.training and k < L - 1:
                layer_in = self._dropout(layer_in, batch_sizes)
        return layer_in, tuple(torch.stack(s, 0) for s in states)

    def _dropout(self, y: torch.Tensor, batch_sizes: Optional[torch.Tensor]) -> torch.Tensor:
        """Dropout between layers on a (T, B, D*H) layer output, drawing torch's mask: on the
        whole tensor, or with ``batch_sizes`` on the real steps only, in their packed
        (step-major) order, as torch's module draws it on the packed data (the padding, which
        the next layer never reads, stays zero)."""
        if batch_sizes is None:
            return nn.functional.dropout(y, self.dropout, True)
        real = _step_mask(batch_sizes, y.shape[1])
        rows = nn.functional.dropout(y[real], self.dropout, True)
        return y.new_zeros(y.shape).index_put((real,), rows)

    def _torch_hidden(self, hidden: tuple):
        """Our tuple of states in torch's form: (h, c) for LSTM, h alone for GRU/RNN."""
        return hidden if _KERNELS[self.mode].has_cell else hidden[0]

    def _fast_forward(self, input, hx=None):
        name = type(self).__name__
        _follow_torch_threads()
        self._refresh_flat_weights()
        params = self._check_supported()
        batch_sizes = sorted_indices = unsorted_indices = None
        is_batched = True
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self.check_input(data, batch_sizes)  # torch's dtype / size checks and messages
            _check_packed_input(name, input, data.shape[0])
            data = _for_kernels(data)
            _check_tensor(name, "input", data)
            checked = data
            # Padded (T, B, I) in sorted order (longest first), as the kernels' batch_sizes wants:
            # the packed rows are the step-major rows of the mask. (torch's pad_packed_sequence
            # copies step by step into slices of its output, and its backward then copied the
            # whole gradient once per step: RNN T = 20, B = 128, H = 16 training took 4x torch's
            # time on the PackedSequence.)
            x = _padded(data, batch_sizes)
        else:
            if not isinstance(input, torch.Tensor):  # torch: "... has no attribute 'dim'"
                raise TypeError(
                    f"{name}: input: expected a torch.Tensor or a PackedSequence, got "
                    f"{type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead"
                )
            is_batched = input.dim() == 3
            given = _shape(input)
            if not is_batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
            self.check_input(input, None)
            input = _for_kernels(input)
            _check_tensor(name, "input", input)
            checked = input
            x = input.transpose(0, 1) if self.batch_first else input
        if hx is not None:
            has_cell = _KERNELS[self.mode].has_cell
            if has_cell:
                if not isinstance(hx, (tuple, list)):
                    raise TypeError(
                        f"{name}: hx: expected a tuple (h_0, c_0) of two tensors, got "
                        f"{type(hx).__name__}"
                    )
                if len(hx) != 2:  # torch.nn.LSTM: "lstm expects two hidden states"
                    raise RuntimeError(
                        f"{name}: hx: expected two hidden states (h_0, c_0), got {len(hx)}"
                    )
            elif not isinstance(hx, torch.Tensor):
                raise TypeError(f"{name}: hx: expected a tensor h_0, got {type(hx).__name__}")
            hx = tuple(hx) if has_cell else (hx,)
            for i, h in enumerate(hx):
                if not isinstance(h, torch.Tensor):
                    raise TypeError(f"{name}: hx[{i}]: expected a tensor, got {type(h).__name__}")
            n_dim = 3 if is_batched else 2
            if any(h.dim() != n_dim for h in hx):
                # torch's wording: "(3-D, 2-D) tensors" for (h_0, c_0), "2-D tensor" for h_0
                dims = ", ".join(f"{h.dim()}-D" for h in hx)
                got = f"({dims}) tensors" if len(hx) > 1 else f"{dims} tensor"
                what = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {what} input, {'hx and cx' if len(hx) > 1 else 'hx'} should also be "
                    f"{n_dim}-D but got {got}"
                )
            if not is_batched:
                hx = tuple(h.unsqueeze(1) for h in hx)
            self.check_forward_args(checked, self._torch_hidden(hx), batch_sizes)
            hx = tuple(_for_kernels(h) for h in hx)
            for i, h in enumerate(hx):
                _check_tensor(name, f"hx[{i}]", h)
            if sorted_indices is not None:
                hx = tuple(h.index_select(1, sorted_indices) for h in hx)
        if batch_sizes is None and x.shape[0] == 0:  # torch's RNNs refuse it (in their kernels)
            dim = 1 if is_batched and self.batch_first else 0
            raise RuntimeError(
                f"{name}: input: Expected sequence length to be larger than 0 in RNN, got shape "
                f"{given}: T = 0 in dim {dim}"
            )
        y, hidden = self._run(x, hx, batch_sizes, params)
        # torch's GRU and RNN hand out a batch_first output that is no view (the LSTM's is one):
        # ``detach_()``, or an in-place op with grad enabled on an output made under no_grad,
        # works on it. Ours gets the same strides, as a tensor of its own (below).
        own_bf = batch_sizes is None and self.batch_first and is_batched and self.mode != "LSTM"
        if (
            batch_sizes is None
            and not self.bidirectional
            and y.requires_grad
            and (self.mode != "LSTM" or self.proj_size > 0)
            and not own_bf
        ):
            # y is the last layer's kernel output, saved for backward (the cache refers to it),
            # so changing it in place would raise. torch's GRU, RNN and projected LSTM save no
            # output and allow it (``y.masked_fill_(pad, 0)``, ``relu_``): hand out a copy.
            # (torch's plain LSTM runs on oneDNN, which saves its output and raises as ours.)
            y = y.clone()
        if batch_sizes is not None:
            # Step-major rows of the sorted batch: exactly the packed layout.
            if _equal_lengths(batch_sizes):  # no padding: y's rows in order (a copy in a
                # graph, as the gather made one, since y is saved for backward)
                data = y.reshape(-1, y.shape[2])
                data = data.clone() if data.requires_grad else data
            else:
                data = y[_step_mask(batch_sizes, y.shape[1])]
            output = PackedSequence(
                data,
                batch_sizes,
                sorted_indices,
                unsorted_indices,
            )
            if unsorted_indices is not None:
                hidden = tuple(h.index_select(1, unsorted_indices) for h in hidden)
            return output, self._torch_hidden(hidden)
        if self.batch_first:
            y = y.transpose(0, 1)
        if own_bf:
            # (B, T, D*H) with torch's strides: a copy when a graph is recorded (the copy the
            # unidirectional output gets anyway, see above), else the same memory re-wrapped.
            if y.requires_grad:
                y = y.clone(memory_format=torch.preserve_format)
            else:
                y = torch.from_numpy(y.numpy())
        if not is_batched:
            y = y.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden)
        return y, self._torch_hidden(hidden)

    def forward(self, input, hx=None):
        """torch's forward (same inputs, outputs and errors; a PackedSequence too) on lstm_fast's
        kernels, or torch's own computation where the kernels cannot run (see the module
        docstring: tracing, export, ``torch.func``, forward-mode AD)."""
        traced = _fx_call_module(self, input, hx)
        if traced is not None:
            return traced
        if _torch_computes(self, input, hx, self._flat_weights_names):
            return _torch_class(self).forward(self, input, hx)
        return _eager(_FastRNNMixin._fast_forward)(self, input, hx)


class LSTM(_FastRNNMixin, nn.LSTM):
    r"""``torch.nn.LSTM`` computed by lstm_fast's kernels: same constructor, parameters and forward.

    .. math::
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \qquad
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \qquad
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \qquad h_t = o_t \odot \tanh(c_t)

    Args:
        input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, proj_size=0, device=None, dtype=None: as ``torch.nn.LSTM``
        (float32 CPU parameters run on the kernels, others on torch's implementation).

    Inputs: ``input, (h_0, c_0)``
        input: (T, B, I), (B, T, I) with ``batch_first``, (T, I) unbatched, or a
        ``PackedSequence``; float32 CPU tensor (the parameters' dtype). T >= 1: T = 0 raises,
        as in torch (B = 0 runs).
        h_0, c_0: (D * num_layers, B, H) ((D * num_layers, H) unbatched), zeros when omitted;
        D = 2 if bidirectional else 1.

    Outputs: ``output, (h_n, c_n)``
        output: (T, B, D * H) (batch_first: (B, T, D * H); unbatched: (T, D * H); a
        ``PackedSequence`` for packed input). h_n, c_n: (D * num_layers, B, H).

    Attributes:
        weight_ih_l{k} (4H, I or D * H), weight_hh_l{k} (4H, H), bias_ih_l{k}, bias_hh_l{k} (4H,),
        ``_reverse`` suffix for the reverse direction: ``nn.Parameter``\ s named as torch's, so
        ``state_dict`` keys and values are those of ``torch.nn.LSTM``.

    Example::

        >>> import torch, lstm_fast.torch as lft
        >>> lstm = lft.LSTM(10, 20, num_layers=2, bidirectional=True)
        >>> y, (h, c) = lstm(torch.randn(5, 3, 10))
        >>> y.shape, h.shape
        (torch.Size([5, 3, 40]), torch.Size([4, 3, 20]))
        >>> y.sum().backward()
    """


class GRU(_FastRNNMixin, nn.GRU):
    r"""``torch.nn.GRU`` computed by lstm_fast's kernels: same constructor, parameters and forward.

    .. math::
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \qquad
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \qquad
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Arguments, inputs (``input, h_0``), outputs (``output, h_n``) and attributes
    (``weight_ih_l{k}`` (3H, I or D * H), ...) exactly as ``torch.nn.GRU``; dtypes and devices
    as :class:`LSTM`.

    Example::

        >>> import torch, lstm_fast.torch as lft
        >>> y, h = lft.GRU(10, 20, batch_first=True)(torch.randn(3, 5, 10))
        >>> y.shape, h.shape
        (torch.Size([3, 5, 20]), torch.Size([1, 3, 20]))
    """


class RNN(_FastRNNMixin, nn.RNN):
    r"""``torch.nn.RNN`` (Elman, ``nonlinearity="tanh"`` or ``"relu"``) computed by lstm_fast's
    kernels: :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`.

    Arguments, inputs (``input, h_0``), outputs (``output, h_n``) and attributes exactly as
    ``torch.nn.RNN``; dtypes and devices as :class:`LSTM`.

    Example::

        >>> import torch, lstm_fast.torch as lft
        >>> y, h = lft.RNN(10, 20, nonlinearity="relu")(torch.randn(5, 3, 10))
        >>> y.shape
        torch.Size([5, 3, 20])
    """


# -- cells -----------------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _plain(t, cls: type, shape: tuple) -> bool:
    """Whether ``t`` is exactly a ``cls`` (``torch.Tensor`` or ``nn.Parameter``, no subclass),
    float32, strided, on the CPU and of ``shape``: a tensor the cells' common call takes as it
    is."""
    return (
        type(t) is cls
        and t.dtype is torch.float32
        and t.layout is torch.strided
        and t.is_cpu
        and t.shape == shape
    )


class _FastCellMixin(_GraphFallback):
    """One step of a cell over lstm_fast's kernels (a sequence of T = 1), shared by the
    LSTMCell/GRUCell/RNNCell subclasses.

    Subclasses put this mixin before the torch class, so that the constructor, initialisation,
    parameters and ``repr`` are torch's own; the kernel is chosen by :meth:`_mode`.
    """

    def _mode(self) -> str:
        return type(self)._MODE

    def _check_args(self, name: str, input, hx, has_cell: bool, params: tuple):
        """torch's rank checks (same types and messages), then device, dtype and shapes (of
        ``params``: weight_ih, weight_hh, bias_ih, bias_hh as read once for this call).
        Returns the input and the states as a tuple of tensors (empty when ``hx`` is None),
        cast to float32 under CPU autocast."""
        if not isinstance(input, torch.Tensor):
            got = type(input).__name__
            raise TypeError(f"lstm_fast.torch.{name}: input: expected a torch.Tensor, got {got}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is None:
            states, labels = (), ()
        elif has_cell:
            if not isinstance(hx, (tuple, list)):
                raise TypeError(
                    f"lstm_fast.torch.{name}: hx: expected a tuple (h_0, c_0) of tensors, got a "
                    f"{type(hx).__name__}"
                )
            if len(hx) != 2:  # torch.nn.LSTMCell: "lstm_cell expects two hidden states"
                raise RuntimeError(
                    f"lstm_fast.torch.{name}: hx: expected two hidden states (h_0, c_0), got "
                    f"{len(hx)}"
                )
            states, labels = tuple(hx), ("hx[0]", "hx[1]")
        else:
            states, labels = (hx,), ("hx",)
        for label, h in zip(labels, states):
            if not isinstance(h, torch.Tensor):
                got = type(h).__name__
                raise TypeError(
                    f"lstm_fast.torch.{name}: {label}: expected a torch.Tensor, got {got}"
                )
            if h.dim() not in (1, 2):
                what = label if has_cell else "hidden"  # torch's own wording
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {h.dim()}D instead")
        gates = {"LSTM": 4, "GRU": 3}.get(self._mode(), 1)
        g = f"{gates}*hidden_size" if gates > 1 else "hidden_size"
        G = gates * self.hidden_size
        for t, (p, shape, legend) in zip(
            params,
            (
                ("weight_ih", (G, self.input_size), f"({g}, input_size)"),
                ("weight_hh", (G, self.hidden_size), f"({g}, hidden_size)"),
                ("bias_ih", (G,), f"({g},)"),
                ("bias_hh", (G,), f"({g},)"),
            ),
        ):
            if t is not None or p.startswith("weight"):  # a bias may be None, as in torch
                _check_weight(name, p, t, shape, legend)
        input = _for_kernels(input)
        states = tuple(_for_kernels(h) for h in states)
        _check_tensor(name, "input", input)
        for label, h in zip(labels, states):
            _check_tensor(name, label, h)
        I, H = self.input_size, self.hidden_size
        batched = input.dim() == 2
        if input.shape[-1] != I:
            want = f"(B, I={I})" if batched else f"(I={I},)"
            raise RuntimeError(
                f"lstm_fast.torch.{name}: input: expected shape {want}, got {_shape(input)}"
            )
        B = input.shape[0] if batched else None
        for label, h in zip(labels, states):
            if _shape(h) != ((B, H) if batched else (H,)):
                want = f"(B={B}, H={H})" if batched else f"(H={H},) for unbatched input"
                raise RuntimeError(
                    f"lstm_fast.torch.{name}: {label}: expected shape {want}, got {_shape(h)}"
                )
        return input, states

    def _fast_forward(self, input, hx=None):
        name = type(self).__name__
        _follow_torch_threads()
        kernel = _KERNELS[self._mode()]
        # Each read once, as torch's cell does (a parametrized weight is computed at each read).
        params = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        input, states = self._check_args(name, input, hx, kernel.has_cell, params)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            states = tuple(h.unsqueeze(0) for h in states)
        h0, c0 = (tuple(states) + (None, None))[:2]
        need_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (input, *states, *params)
        )
        # A step is a sequence of T = 1: x (1, B, I) -> y (1, B, H) (unused), h_1, c_1 (B, H).
        res = (_Direction.apply if need_grad else _direction_no_graph)(
            kernel, need_grad, None, input.unsqueeze(0), h0, c0, *params
        )
        out = res[1:]
        if not batched:
            out = tuple(o.squeeze(0) for o in out)
        return out if kernel.has_cell else out[0]

    def _common_call(self, input, hx):
        """The common eager call -- plain float32 CPU tensors, the module's own parameters,
        nothing tracing, transforming or capturing -- recognised in a few attribute reads and
        run with no more checks (a one-step forward at B = 1 took 36 µs against torch's 17,
        mostly in the general path's checks and look-ups); None for any other call, which the
        general path (:meth:`forward`) then takes with its checks and messages. Gives the same
        results as that path."""
        if (
            torch.compiler.is_compiling()  # (first: Dynamo tracing this reads no further)
            or type(input) is not torch.Tensor
            or input.dtype is not torch.float32
            or input.layout is not torch.strided
            or not input.is_cpu
            or torch.jit.is_tracing()
            or _dispatch_stack_len is None
            or _dispatch_stack_len() > 0
            or getattr(fwAD, "_current_level", 0) >= 0
            or _func_transform()
            or (_is_exporting is not None and _is_exporting())
            or "parametrizations" in self._modules
        ):
            return None
        try:
            kernel = _KERNELS[self._mode()]
        except RuntimeError:  # (an RNNCell's unknown nonlinearity: the general path raises)
            return None
        dim = input.dim()
        if dim == 2:
            B, I = input.shape
        elif dim == 1:
            B, I = 1, input.shape[0]
        else:
            return None
        H = self.hidden_size
        if I != self.input_size or B == 0:
            return None
        if hx is None:
            states = ()
        elif kernel.has_cell:
            if type(hx) is not tuple or len(hx) != 2:
                return None
            states = hx
        else:
            states = (hx,)
        shape = (B, H) if dim == 2 else (H,)
        for h in states:
            if not _plain(h, torch.Tensor, shape):
                return None
        params = self._parameters
        if "bias_ih" not in params or "bias_hh" not in params:
            # a deleted bias (``del cell.bias_ih``): torch's cell and the general path raise
            # AttributeError, or read what was put in its place (a buffer, a plain tensor)
            return None
        w_ih, w_hh = params.get("weight_ih"), params.get("weight_hh")
        b_ih, b_hh = params["bias_ih"], params["bias_hh"]
        G = kernel.gates * H
        for t, want in ((w_ih, (G, I)), (w_hh, (G, H)), (b_ih, (G,)), (b_hh, (G,))):
            if t is None:
                if len(want) == 2:
                    return None
                continue
            if not _plain(t, nn.Parameter, want):
                return None
        _follow_torch_threads()
        weights = (w_ih, w_hh, b_ih, b_hh)
        if dim == 1:
            input = input.unsqueeze(0)
            states = tuple(h.unsqueeze(0) for h in states)
        h0, c0 = (states + (None, None))[:2]
        need_grad = torch.is_grad_enabled() and (
            input.requires_grad
            or any(t.requires_grad for t in states)
            or any(t is not None and t.requires_grad for t in weights)
        )
        # (as the general path: a step is a sequence of T = 1, y unused)
        out = (_Direction.apply if need_grad else _direction_no_graph)(
            kernel, need_grad, None, input.unsqueeze(0), h0, c0, *weights
        )[1:]
        if dim == 1:
            out = tuple(o.squeeze(0) for o in out)
        return out if kernel.has_cell else out[0]

    def forward(self, input, hx=None):
        """torch's cell forward (same inputs, outputs and errors) on lstm_fast's kernels, or
        torch's own computation where the kernels cannot run (see the module docstring)."""
        out = self._common_call(input, hx)
        if out is not None:
            return out
        traced = _fx_call_module(self, input, hx)
        if traced is not None:
            return traced
        if _torch_computes(self, input, hx, ("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            return _torch_class(self).forward(self, input, hx)
        return _eager(_FastCellMixin._fast_forward)(self, input, hx)


class LSTMCell(_FastCellMixin, nn.LSTMCell):
    r"""``torch.nn.LSTMCell`` computed by lstm_fast's kernels: one step, same constructor,
    initialisation, parameters and forward.

    .. math::
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \qquad
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \qquad
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' = f \odot c + i \odot g \qquad h' = o \odot \tanh(c')

    Args:
        input_size, hidden_size, bias=True, device=None, dtype=None: as ``torch.nn.LSTMCell``
        (float32 CPU parameters run on the kernels, others on torch's implementation).

    Inputs: ``input, (h_0, c_0)``
        input: (B, I) or (I,) unbatched; float32 CPU tensor (any layout; non-contiguous input
        is copied once). h_0, c_0: (B, H) ((H,) unbatched), zeros when ``hx`` is omitted.

    Outputs: ``(h_1, c_1)``, each (B, H) ((H,) unbatched).

    Attributes:
        weight_ih (4H, I), weight_hh (4H, H), bias_ih, bias_hh (4H,), rows in gate order
        i, f, g, o: ``nn.Parameter``\ s named as torch's, initialised
        :math:`\mathcal{U}(-1/\sqrt{H}, 1/\sqrt{H})` by torch's ``reset_parameters``.

    A step runs the kernels as a sequence of T = 1; backward through an unrolled loop of steps
    is autograd's, calling lstm_fast's backward once per step (gradients reach ``input``,
    ``h_0``, ``c_0`` and the parameters). For a whole sequence known in advance, :class:`LSTM`
    runs the loop in the kernels (the input projection hoisted over all steps) and is faster.

    Example::

        >>> import torch, lstm_fast.torch as lft
        >>> cell = lft.LSTMCell(10, 20)
        >>> x = torch.randn(6, 3, 10)
        >>> h, c = torch.zeros(3, 20, requires_grad=True), torch.zeros(3, 20)
        >>> outs = []
        >>> for x_t in x:
        ...     h, c = cell(x_t, (h, c))
        ...     outs.append(h)
        >>> torch.stack(outs).shape
        torch.Size([6, 3, 20])
        >>> torch.stack(outs).sum().backward()
    """

    _MODE = "LSTM"


class GRUCell(_FastCellMixin, nn.GRUCell):
    r"""``torch.nn.GRUCell`` computed by lstm_fast's kernels: one step, same constructor,
    initialisation, parameters and forward.

    .. math::
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \qquad
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \qquad
        h' = (1 - z) \odot n + z \odot h

    Arguments, inputs (``input, h_0``: (B, I) or (I,), (B, H) or (H,)), output ``h_1`` and
    attributes (``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih``, ``bias_hh`` (3H,),
    rows r, z, n) exactly as ``torch.nn.GRUCell``; dtypes and devices as
    :class:`LSTMCell`.

    Example::

        >>> import torch, lstm_fast.torch as lft
        >>> h = lft.GRUCell(10, 20)(torch.randn(3, 10))
        >>> h.shape
        torch.Size([3, 20])
    """

    _MODE = "GRU"


class RNNCell(_FastCellMixin, nn.RNNCell):
    r"""``torch.nn.RNNCell`` (Elman, ``nonlinearity="tanh"`` or ``"relu"``) computed by
    lstm_fast's kernels: :math:`h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})`.

    Arguments, inputs (``input, h_0``), output ``h_1`` and attributes (``weight_ih`` (H, I),
    ``weight_hh`` (H, H), ``bias_ih``, ``bias_hh`` (H,)) exactly as ``torch.nn.RNNCell``
    (another ``nonlinearity`` raises ``RuntimeError`` at the first forward, as torch's);
    dtypes and devices as :class:`LSTMCell`.

    Example::

        >>> import torch, lstm_fast.torch as lft
        >>> h = lft.RNNCell(10, 20, nonlinearity="relu")(torch.randn(10))
        >>> h.shape
        torch.Size([20])
    """

    def _mode(self) -> str:
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if self.nonlinearity not in modes:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return modes[self.nonlinearity]


# -- swapping --------------------------------------------------------------------------------------
_SWAPS: dict[type, type] = {
    nn.LSTM: LSTM,
    nn.GRU: GRU,
    nn.RNN: RNN,
    nn.LSTMCell: LSTMCell,
    nn.GRUCell: GRUCell,
    nn.RNNCell: RNNCell,
}
_UNSWAPS: dict[type, type] = {v: k for k, v in _SWAPS.items()}


def _supported(m: nn.Module) -> bool:
    return True


def _parametrized(cls: type, table: dict[type, type]) -> Optional[type]:
    """For the class torch's parametrize gives a module (``ParametrizedLSTM``: a subclass of the
    module's class holding a property per parametrized tensor, e.g. after
    ``parametrizations.weight_norm``), the same subclass of the class ``table`` swaps its base
    to; None for any other class. Reading a weight then computes it, and autograd carries its
    gradient back to the parametrization's own parameters."""
    if cls.__module__ != "torch.nn.utils.parametrize" or len(cls.__bases__) != 1:
        return None
    new_base = table.get(cls.__bases__[0])
    if new_base is None:
        return None
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, (new_base,), body)


def _swap(model: nn.Module, table: dict[type, type], check: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        what = "replace_rnns" if check else "restore_rnns"
        raise TypeError(f"{what}: model: expected a torch.nn.Module, got {type(model).__name__}")
    for m in model.modules():
        # exact types only (a user subclass keeps its own forward), and parametrized modules
        new = table.get(type(m)) or _parametrized(type(m), table)
        if new is not None and (not check or _supported(m)):
            m.__class__ = new
    return model


def replace_rnns(model: nn.Module) -> nn.Module:
    """Make every ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` / ``LSTMCell`` / ``GRUCell`` /
    ``RNNCell`` in ``model`` (recursively, ``model`` included) lstm_fast's :class:`LSTM` /
    :class:`GRU` / :class:`RNN` / :class:`LSTMCell` / :class:`GRUCell` / :class:`RNNCell` in
    place; returns ``model``.

    The swap changes the modules' class only: the module objects, their ``nn.Parameter``\\ s
    (so optimizers built before keep working), buffers, hooks and ``state_dict`` stay as they are.
    Only modules whose type is exactly one of torch's (``nn.LSTM``, ...) are swapped (a user
    subclass keeps its own forward), and those torch's ``parametrize`` rewrote
    (``parametrizations.weight_norm``, ...: the weights are computed by the parametrization
    at each forward, their gradients flow back to it). The kernels
    need float32 CPU parameters: the first forward raises a clear error otherwise.
    ``torch.ao.quantization.quantize_dynamic``, which matches exact types, leaves the swapped
    modules in float32: quantize :func:`restore_rnns`'s model instead.
    """
    return _swap(model, _SWAPS, check=True)


def restore_rnns(model: nn.Module) -> nn.Module:
    """The reverse of :func:`replace_rnns`: every lstm_fast module becomes torch's own again
    (in place, parameters untouched); returns ``model``."""
    return _swap(model, _UNSWAPS, check=False)
