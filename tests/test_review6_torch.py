"""Review 6 of lstm_fast.torch, as a user would use it inside existing PyTorch training code:
torch.func transforms and forward-mode AD (torch's computation, as torch's modules allow them),
batched gradients (a clear error), zero-length sequences (refused as torch refuses them), an
input that is no tensor (named), saved-tensor hooks and non-reentrant checkpointing (no kernel
cache kept between forward and backward), and guards for what already matched torch: frozen
parameters and inputs without grad, several forwards per backward, non-contiguous / expanded
inputs and states, gradient checkpointing, module hooks, copies and serialisation, dropout
draws, hx dtype errors, zero_grad, pruning."""

from __future__ import annotations

import copy
import gc
import io
import weakref

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")
import torch.autograd.forward_ad as fwAD  # noqa: E402
import torch.nn.utils.prune as prune  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

import lstm_fast.ops  # noqa: E402

OUT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)
KERNELS = ("lstm_forward", "gru_forward", "rnn_forward")

# (class name, constructor keywords): layers with several layers and both directions (the
# _BothDirections node), and every cell.
LAYERS = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=2)),
    ("GRU", dict(num_layers=2)),
    ("RNN", dict(nonlinearity="relu", bidirectional=True)),
]
CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", dict(nonlinearity="tanh"))]
ALL = LAYERS + CELLS


def _id(case):
    kind, kw = case
    return kind + "".join(f"-{k}={v}" for k, v in kw.items())


def _pair(kind, seed=0, I=3, H=4, **kw):
    """torch's module and lstm_fast's with the same weights."""
    torch.manual_seed(seed)
    ref = getattr(nn, kind)(I, H, **kw)
    fast = getattr(lft, kind)(I, H, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _input(kind, seed=1, T=5, B=2, I=3):
    g = torch.Generator().manual_seed(seed)
    shape = (B, I) if kind.endswith("Cell") else (T, B, I)
    return torch.randn(shape, generator=g)


def _flat(out):
    """A forward's tensors in order: (y, h_n[, c_n]) of a layer, (h[, c]) of a cell."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _weighted(outs, seed=2):
    """A scalar loss with random (never all-ones) upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)


def _close(a, b, tol, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls to lstm_fast's forward kernels."""
    calls = []
    for name in KERNELS:
        real = getattr(lstm_fast.ops, name)

        def spy(*args, _real=real, **kw):
            calls.append(_real.__name__)
            return _real(*args, **kw)

        monkeypatch.setattr(lstm_fast.ops, name, spy)
    return calls


# -- torch.func and forward-mode AD (failed before: the autograd.Function has no setup_context) ---
@pytest.mark.parametrize("case", ALL, ids=_id)
def test_torch_func_grad_vjp_and_jacrev_match_torch(case, kernel_calls):
    """torch.func.grad / vjp / jacrev through torch's nn.LSTM, GRU, RNN and cells work; through
    ours they raised torch's "In order to use an autograd.Function with functorch transforms
    ... it must override the setup_context staticmethod". Under a torch.func transform the
    modules now compute with torch's own implementation (as under torch.jit.trace), and eager
    calls, torch.func.functional_call included, still run lstm_fast's kernels."""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x = _input(kind)

    def loss(params, m, t):
        return _weighted(_flat(torch.func.functional_call(m, params, (t,))))

    grads = [torch.func.grad(loss)(dict(m.named_parameters()), m, x) for m in (ref, fast)]
    for name in grads[0]:
        _close(grads[0][name], grads[1][name], GRAD_TOL, f"func.grad {name}")
    # w.r.t. the input: vjp with a random cotangent, and the full Jacobian of the first output
    for what, f in (
        ("vjp", lambda m: torch.func.vjp(lambda t: _flat(m(t))[0], x)),
        ("jacrev", lambda m: torch.func.jacrev(lambda t: _flat(m(t))[0])(x)),
    ):
        a, b = f(ref), f(fast)
        if what == "vjp":
            v = torch.randn(a[0].shape, generator=torch.Generator().manual_seed(3))
            _close(a[0], b[0], OUT_TOL, "vjp output")
            a, b = a[1](v)[0], b[1](v)[0]
        _close(a, b, GRAD_TOL, what)
    assert kernel_calls == []  # torch's computation under the transforms
    y = torch.func.functional_call(fast, dict(fast.named_parameters()), (x,))
    assert kernel_calls and type(fast) is getattr(lft, kind)  # eager: lstm_fast's kernels
    for a, b in zip(_flat(ref(x)), _flat(y)):
        _close(a, b, OUT_TOL, "functional_call output")


def test_per_sample_gradients_with_vmap_match_torch():
    """The torch.func recipe for per-sample gradients (vmap over grad of functional_call) works
    with torch's nn.LSTM; it raised with ours."""
    ref, fast = _pair("LSTM")
    x = _input("LSTM", B=3)

    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(shape, generator=g) for shape in ((5, 1, 4), (1, 1, 4), (1, 1, 4))]

    def per_sample(m):
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(p, xi):  # xi (T, I): one sample, run as a batch of one
            outs = _flat(torch.func.functional_call(m, p, (xi.unsqueeze(1),)))
            return sum((o * w).sum() for o, w in zip(outs, weights))

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1))(params, x)

    a, b = per_sample(ref), per_sample(fast)
    for name in a:
        assert b[name].shape[0] == 3
        _close(a[name], b[name], GRAD_TOL, f"per-sample {name}")


FWD_AD = [("GRU", dict(num_layers=2)), ("RNN", dict(bidirectional=True)), *CELLS]


@pytest.mark.parametrize("case", FWD_AD, ids=_id)
def test_forward_mode_ad_matches_torch(case):
    """Forward-mode AD (torch.autograd.forward_ad dual tensors, torch.func.jvp / jacfwd) works
    through torch's GRU, RNN and cells; ours raised "You must implement the jvp function for
    custom autograd.Function". A tangent on the input, the initial state or a parameter now
    runs torch's computation. (torch's own nn.LSTM has no forward AD on the CPU: its oneDNN
    layer raises NotImplementedError, and so does ours then, with torch's message.)"""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x = _input(kind)
    tx = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        h_shape = _flat(ref(x))[-1].shape
    h0 = torch.randn(h_shape, generator=torch.Generator().manual_seed(5))
    th = torch.randn(h_shape, generator=torch.Generator().manual_seed(6))
    hx = (h0, h0 * 0.5) if kind == "LSTMCell" else h0
    w = "weight_hh" if kind.endswith("Cell") else "weight_hh_l0"
    tw = torch.randn(getattr(ref, w).shape, generator=torch.Generator().manual_seed(7))
    tangents = []
    for m in (ref, fast):
        found = []
        with fwAD.dual_level():
            # a tangent on the input
            found.append([fwAD.unpack_dual(o).tangent for o in _flat(m(fwAD.make_dual(x, tx)))])
            # on the initial state only
            dual_h = fwAD.make_dual(h0, th)
            state = (dual_h, h0 * 0.5) if kind == "LSTMCell" else dual_h
            found.append([fwAD.unpack_dual(o).tangent for o in _flat(m(x, state))])
            # on a parameter only (functional_call with a dual weight)
            params = {k: v.detach() for k, v in m.named_parameters()}
            params[w] = fwAD.make_dual(params[w], tw)
            out = torch.func.functional_call(m, params, (x, hx))
            found.append([fwAD.unpack_dual(o).tangent for o in _flat(out)])
        first = lambda t, m=m: _flat(m(t))[0]  # noqa: E731
        found.append(list(torch.func.jvp(first, (x,), (tx,))))
        found.append([torch.func.jacfwd(first)(x)])
        tangents.append(found)
    for i, (a, b) in enumerate(zip(*tangents)):
        for j, (ta, tb) in enumerate(zip(a, b)):
            assert tb is not None, f"case {i}, output {j}: no tangent"
            _close(ta, tb, GRAD_TOL, f"case {i}, output {j}")


def test_forward_ad_without_tangents_still_runs_the_kernels(kernel_calls):
    """Inside a dual level, plain tensors (no tangent anywhere) run lstm_fast's kernels."""
    _, fast = _pair("GRU")
    with fwAD.dual_level():
        fast(_input("GRU"))
    assert kernel_calls == ["gru_forward"]


# -- batched gradients (failed before with "Batching rule not implemented for aten::detach") -----
@pytest.mark.parametrize("case", [LAYERS[0], CELLS[0]], ids=_id)
def test_batched_gradients_raise_a_clear_error(case):
    """``torch.autograd.grad(..., is_grads_batched=True)`` and ``jacobian(vectorize=True)``
    vmap the backward, which lstm_fast's kernels cannot run: a clear error naming the option
    and the way out, instead of torch's "Batching rule not implemented for aten::detach". The
    plain ``jacobian`` (one backward per output element) matches torch's."""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x = _input(kind)
    xx = x.clone().requires_grad_()
    y = _flat(fast(xx))[0]
    v = torch.randn((3, *y.shape), generator=torch.Generator().manual_seed(8))
    with pytest.raises(RuntimeError, match=r"is_grads_batched=True.*vectorize=False.*restore_rnns"):
        torch.autograd.grad(y, xx, v, is_grads_batched=True)
    with pytest.raises(RuntimeError, match=r"lstm_fast.torch: batched gradients"):
        torch.autograd.functional.jacobian(lambda t: _flat(fast(t))[0], x, vectorize=True)
    a, b = (
        torch.autograd.functional.jacobian(lambda t, m=m: _flat(m(t))[0], x) for m in (ref, fast)
    )
    _close(a, b, GRAD_TOL, "jacobian")


# -- zero-length sequences (returned h_0 before; torch raises) ------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize(
    "shape, kw",
    [((0, 2, 3), {}), ((2, 0, 3), dict(batch_first=True)), ((0, 3), dict(bidirectional=True))],
    ids=["seq-major", "batch_first", "unbatched"],
)
def test_zero_length_sequence_raises_as_torch(kind, shape, kw):
    """torch's modules refuse T = 0 ("Expected sequence length to be larger than 0 in RNN");
    ours returned an empty output and h_n = h_0, so code that works here failed after
    restore_rnns. The error now names the input, its shape and the time dimension."""
    ref, fast = _pair(kind, **kw)
    x = torch.randn(shape)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        ref(x)
    dim = 1 if kw.get("batch_first") and len(shape) == 3 else 0
    want = (
        rf"{kind}: input: Expected sequence length to be larger than 0 in RNN.*"
        rf"got shape {tuple(shape)}.*T = 0 in dim {dim}".replace("(", r"\(").replace(")", r"\)")
    )
    with pytest.raises(RuntimeError, match=want):
        fast(x)
    with torch.no_grad(), pytest.raises(RuntimeError, match="larger than 0"):
        fast(x)
    # an empty batch is fine, as in torch
    empty = torch.randn((2, 0, 3) if len(shape) == 3 and not kw.get("batch_first") else (0, 2, 3))
    if len(shape) == 3:
        for a, b in zip(_flat(ref(empty)), _flat(fast(empty))):
            assert a.shape == b.shape


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_an_input_that_is_no_tensor_is_named(kind):
    """A NumPy array or a list as input raised AttributeError "'numpy.ndarray' object has no
    attribute 'dim'" (torch's modules too); the cells and ``hx`` already said TypeError naming
    the argument, and so does the layers' input now."""
    _, fast = _pair(kind)
    x = _input(kind)
    with pytest.raises(TypeError, match=rf"{kind}: input: expected a torch.Tensor or a Packed"):
        fast(x.numpy())
    with pytest.raises(TypeError, match=r"input: expected .*, got list"):
        fast(x.tolist())


# -- saved-tensor hooks, non-reentrant checkpointing (the whole cache was kept) --------------------
@pytest.fixture
def caches(monkeypatch):
    """Weak references to the training caches the forward kernels return (a training cache holds
    the gates and cell states of every step: the layer's activation memory)."""
    refs = []
    for name in KERNELS:
        real = getattr(lstm_fast.ops, name)

        def spy(*args, _real=real, **kw):
            res = _real(*args, **kw)
            if res[-1] is not None:
                refs.append(weakref.ref(res[-1]))
            return res

        monkeypatch.setattr(lstm_fast.ops, name, spy)
    return refs


def _alive(refs):
    gc.collect()
    return sum(r() is not None for r in refs)


@pytest.mark.parametrize("case", [LAYERS[0], LAYERS[2], CELLS[0]], ids=_id)
def test_checkpointing_keeps_no_kernel_cache_until_backward(case, caches):
    """torch.utils.checkpoint(use_reentrant=False) frees a region's activations after its
    forward and recomputes them in backward. The kernels' cache is no saved tensor the
    checkpoint could drop: every layer kept its whole cache (gates, cell states) alive until
    backward, so checkpointing saved no memory on the recurrent layers. Under saved-tensor
    hooks the modules now keep only their inputs (through the hooks, as torch's modules) and
    recompute the cache in backward; the gradients are torch's."""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x = _input(kind)
    found = []
    for m in (ref, fast):
        xx = x.clone().requires_grad_()
        outs = checkpoint(lambda t, m=m: tuple(_flat(m(t))), xx, use_reentrant=False)
        if m is fast:
            assert _alive(caches) == 0, "a training cache outlived the checkpointed forward"
        _weighted(outs).backward()
        found.append([xx.grad] + [p.grad for p in m.parameters()])
    assert caches and _alive(caches) == 0  # built in backward, used, dropped
    for i, (a, b) in enumerate(zip(*found)):
        _close(a, b, GRAD_TOL, f"grad {i}")


def test_saved_tensor_hooks_receive_the_inputs_and_gradients_match(caches):
    """Under user saved-tensor hooks (offloading, compression) the layer's inputs, states and
    weights go through the hooks (its cache, invisible to them, is not kept), gradients are
    torch's, and a retained graph runs backward twice."""
    ref, fast = _pair("LSTM", num_layers=2)
    x = _input("LSTM")
    h0 = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(14))
    found = []
    for m in (ref, fast):
        packed = []
        xx, hh = x.clone().requires_grad_(), h0.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, packed=packed: (packed.append(t.data_ptr()), t.clone())[1],
            lambda t: t,
        ):
            outs = _flat(m(xx, (hh, hh * 0.5)))
        if m is fast:
            assert _alive(caches) == 0
            assert xx.data_ptr() in packed and m.weight_hh_l1.data_ptr() in packed
        loss = _weighted(outs)
        loss.backward(retain_graph=True)
        loss.backward()
        found.append([xx.grad, hh.grad] + [p.grad for p in m.parameters()])
    for i, (a, b) in enumerate(zip(*found)):
        _close(a, b, GRAD_TOL, f"grad {i}")


# -- guards: behaviour that already matched torch, pinned -----------------------------------------
def _run_grads(m, kind, x, hx, x_grad, h_grad, trainable):
    """Forward + backward with the given requires_grad pattern; returns every .grad (or None)."""
    for name, p in m.named_parameters():
        p.requires_grad_(trainable is None or name in trainable)
        p.grad = None
    xx = x.clone().requires_grad_(x_grad)
    states = tuple(h.clone().requires_grad_(h_grad) for h in hx)
    state = states if kind.startswith("LSTM") else states[0]
    outs = _flat(m(xx, state))
    loss = _weighted(outs)
    if loss.requires_grad:
        loss.backward()
    return (
        [o.requires_grad for o in outs],
        [xx.grad, *(h.grad for h in states)] + [p.grad for p in m.parameters()],
    )


GRAD_PATTERNS = [
    (True, False, ()),  # frozen model (requires_grad_(False)), the input requires grad
    (False, True, ()),  # only the initial state requires grad
    (False, False, None),  # raw features: parameters only
    (False, False, ("weight_hh_l1", "bias_ih_l0", "weight_hh", "bias_ih")),  # a few parameters
    (False, False, ()),  # nothing requires grad: no graph at all
]


@pytest.mark.parametrize("case", [LAYERS[0], LAYERS[2], CELLS[0], CELLS[1]], ids=_id)
@pytest.mark.parametrize("pattern", GRAD_PATTERNS, ids=["x", "hx", "params", "some", "none"])
def test_frozen_parameters_and_inputs_without_grad_match_torch(case, pattern):
    """Guard: any requires_grad pattern of input, initial state and parameters gives torch's
    gradients, leaves None exactly where torch leaves None, and outputs require grad exactly
    when torch's do."""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x = _input(kind)
    with torch.no_grad():
        outs = _flat(ref(x))
    hx = [torch.randn(o.shape, generator=torch.Generator().manual_seed(9)) for o in outs[-2:]]
    hx = hx if kind.startswith("LSTM") else hx[-1:]
    if kind.endswith("Cell"):
        hx = [torch.randn(outs[0].shape) for _ in range(len(hx))]
    (req_a, grads_a), (req_b, grads_b) = (_run_grads(m, kind, x, hx, *pattern) for m in (ref, fast))
    assert req_a == req_b
    for i, (a, b) in enumerate(zip(grads_a, grads_b)):
        assert (a is None) == (b is None), (
            f"grad {i}: torch None={a is None}, ours None={b is None}"
        )
        if a is not None:
            _close(a, b, GRAD_TOL, f"grad {i}")


@pytest.mark.parametrize("case", [LAYERS[0], LAYERS[3], CELLS[0]], ids=_id)
def test_several_forwards_then_one_backward_match_torch(case):
    """Guard: two forwards (a siamese pair) and a stateful chain (the second call starts from
    the first call's final state, not detached) summed into one loss, one backward; then the
    same loss again with retain_graph=True, backward twice (gradients accumulate)."""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x1, x2 = _input(kind, seed=1), _input(kind, seed=2)
    grads = []
    for m in (ref, fast):
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        first = m(a)
        state = first if kind.endswith("Cell") else first[1]
        loss = _weighted(_flat(first)) + _weighted(_flat(m(b)), 3) + _weighted(_flat(m(b, state)))
        loss.backward(retain_graph=True)
        loss.backward()
        grads.append([a.grad, b.grad] + [p.grad for p in m.parameters()])
    for i, (a, b) in enumerate(zip(*grads)):
        _close(a, b, GRAD_TOL, f"grad {i}")


def test_non_contiguous_expanded_and_transposed_inputs_and_states_match_torch():
    """Guard: a transposed batch_first input, a strided slice, an expanded (stride 0) input and
    initial states broadcast from one (1, 1, H) leaf give torch's outputs and gradients (the
    expanded leaves get the gradient summed over the broadcast, as in torch)."""
    ref, fast = _pair("LSTM", num_layers=2, batch_first=True)
    g = torch.Generator().manual_seed(10)
    base = torch.randn(5, 3, 3, generator=g)
    inputs = {
        "transposed": lambda leaf: leaf.transpose(0, 1),  # (3, 5, 3) batch_first, not contiguous
        "strided": lambda leaf: leaf[:, ::2].transpose(0, 1),
        "expanded": lambda leaf: leaf[:1, :1].expand(2, 4, 3),
    }
    h_leaf = torch.randn(2, 1, 4, generator=g)
    c_leaf = torch.randn(1, 1, 4, generator=g)
    for name, view in inputs.items():
        found = []
        for m in (ref, fast):
            leaf, h, c = (t.clone().requires_grad_() for t in (base, h_leaf, c_leaf))
            x = view(leaf)
            B = x.shape[0]
            y, (hn, cn) = m(x, (h.expand(2, B, 4), c.expand(2, B, 4)))
            _weighted([y, hn, cn]).backward()
            found.append([y, hn, cn, leaf.grad, h.grad, c.grad, m.weight_ih_l0.grad.clone()])
            m.zero_grad()
        for i, (a, b) in enumerate(zip(*found)):
            _close(a, b, GRAD_TOL if i > 2 else OUT_TOL, f"{name}: tensor {i}")


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("case", [LAYERS[0], CELLS[1]], ids=_id)
def test_gradient_checkpointing_matches_torch(case, reentrant):
    """Guard: torch.utils.checkpoint around the module (recomputed in backward; the reentrant
    variant runs the forward under no_grad first, i.e. the inference kernels)."""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x = _input(kind)
    found = []
    for m in (ref, fast):
        xx = x.clone().requires_grad_()
        outs = checkpoint(lambda t, m=m: tuple(_flat(m(t))), xx, use_reentrant=reentrant)
        _weighted(outs).backward()
        found.append([xx.grad] + [p.grad for p in m.parameters()])
    for i, (a, b) in enumerate(zip(*found)):
        _close(a, b, GRAD_TOL, f"grad {i}")


@pytest.mark.parametrize("case", [LAYERS[0], CELLS[0]], ids=_id)
def test_module_hooks_see_what_torchs_see(case):
    """Guard: forward pre-hooks, forward hooks (replacing the output), full backward pre-hooks
    and full backward hooks are called with the same structure and shapes as torch's."""
    kind, kw = case
    ref, fast = _pair(kind, **kw)
    x = _input(kind)

    def shapes(obj):
        if isinstance(obj, torch.Tensor):
            return tuple(obj.shape)
        if isinstance(obj, (tuple, list)):
            return [shapes(o) for o in obj]
        return obj

    logs, grads = [], []
    for m in (ref, fast):
        log = []
        m.register_forward_pre_hook(lambda mod, args, log=log: log.append(("pre", shapes(args))))
        m.register_forward_hook(
            lambda mod, args, out, log=log: (log.append(("fwd", shapes(out))), out)[1]
        )
        m.register_full_backward_pre_hook(
            lambda mod, go, log=log: log.append(("bwd-pre", shapes(go)))
        )
        m.register_full_backward_hook(
            lambda mod, gi, go, log=log: log.append(("bwd", shapes(gi), shapes(go)))
        )
        xx = x.clone().requires_grad_()
        _weighted(_flat(m(xx))).backward()
        logs.append(log)
        grads.append(xx.grad)
    assert logs[0] == logs[1]
    _close(grads[0], grads[1], GRAD_TOL, "input grad")


def test_copies_and_serialisation_keep_the_fast_module():
    """Guard: copy.deepcopy, torch.save / torch.load of the whole module (weights_only=False,
    as torch's own modules need) and of its state dict (weights_only=True) round-trip: the
    class stays lstm_fast's, the outputs are torch's, the state dict loads into torch's, and
    .grad is dropped exactly when torch drops it."""
    ref, fast = _pair("GRU", num_layers=2, bidirectional=True)
    x = _input("GRU")
    fast(x.clone().requires_grad_())[0].sum().backward()  # a module that has trained
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    fresh = nn.GRU(3, 4, num_layers=2, bidirectional=True)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for m in (copy.deepcopy(fast), loaded, lft.replace_rnns(fresh)):
        assert type(m) is lft.GRU
        for a, b in zip(_flat(ref(x)), _flat(m(x))):
            _close(a, b, OUT_TOL, "output")
    # as torch's: a pickled or deep-copied Parameter keeps no .grad
    ref(x.clone().requires_grad_())[0].sum().backward()
    buf = io.BytesIO()
    torch.save(ref, buf)
    buf.seek(0)
    ref_loaded = torch.load(buf, weights_only=False)
    for a, b in ((ref_loaded, loaded), (copy.deepcopy(ref), copy.deepcopy(fast))):
        assert (a.weight_hh_l1.grad is None) == (b.weight_hh_l1.grad is None)


@pytest.mark.parametrize("case", [("LSTM", {}), ("GRU", dict(bidirectional=True))], ids=_id)
def test_dropout_draws_match_torchs(case):
    """Guard: in training mode, inter-layer dropout draws the same masks from torch's RNG as
    torch's own module: the same seed gives torch's outputs and gradients."""
    kind, kw = case
    ref, fast = _pair(kind, num_layers=3, dropout=0.5, **kw)
    x = _input(kind)
    found = []
    for m in (ref, fast):
        torch.manual_seed(11)
        xx = x.clone().requires_grad_()
        y = m(xx)[0]
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(12)))
        found.append([y, xx.grad])
    _close(found[0][0], found[1][0], OUT_TOL, "output")
    _close(found[0][1], found[1][1], GRAD_TOL, "input grad")


def test_initial_state_dtype_errors_name_the_state():
    """Guard: a float64 h_0 or c_0 for a float32 layer raises naming it with both dtypes (torch
    raises "get_mkldnn_dtype: unsupported data type" or a matmul dtype error)."""
    x = torch.randn(5, 2, 3)
    h = torch.zeros(1, 2, 4)
    with pytest.raises(TypeError, match=r"LSTM: hx\[1\]: expected dtype torch.float32.*float64"):
        lft.LSTM(3, 4)(x, (h, h.double()))
    with pytest.raises(TypeError, match=r"GRU: hx\[0\]: expected dtype torch.float32.*float64"):
        lft.GRU(3, 4)(x, h.double())


def test_zero_grad_and_accumulation_match_torch():
    """Guard: gradients accumulate over two backward passes; zero_grad(set_to_none=False) keeps
    zeroed tensors that the next backward accumulates into, zero_grad() leaves None."""
    ref, fast = _pair("LSTM", bidirectional=True)
    x1, x2 = _input("LSTM", seed=1), _input("LSTM", seed=2)
    for m in (ref, fast):
        _weighted(_flat(m(x1))).backward()
        _weighted(_flat(m(x2))).backward()
    for p, q in zip(ref.parameters(), fast.parameters()):
        _close(p.grad, q.grad, GRAD_TOL, "accumulated")
    for m in (ref, fast):
        m.zero_grad(set_to_none=False)
        assert all(torch.all(p.grad == 0) for p in m.parameters())
        _weighted(_flat(m(x2))).backward()
    for p, q in zip(ref.parameters(), fast.parameters()):
        _close(p.grad, q.grad, GRAD_TOL, "after zero_grad(set_to_none=False)")
    fast.zero_grad()
    assert all(p.grad is None for p in fast.parameters())


def test_pruning_and_legacy_weight_norm_match_torch():
    """Guard: torch.nn.utils.prune and the legacy torch.nn.utils.weight_norm (forward pre-hooks
    that set the weight attribute to a computed tensor) are honoured, and gradients reach the
    hooks' own parameters (weight_hh_l0_orig, weight_ih_l0_g / _v)."""
    ref, fast = _pair("LSTM")
    x = _input("LSTM")
    for m in (ref, fast):
        torch.manual_seed(13)
        prune.random_unstructured(m, "weight_hh_l0", amount=0.5)
        with pytest.warns(FutureWarning):
            torch.nn.utils.weight_norm(m, "weight_ih_l0")
        _weighted(_flat(m(x))).backward()
    for a, b in zip(_flat(ref(x)), _flat(fast(x))):
        _close(a, b, OUT_TOL, "output")
    for name in ("weight_hh_l0_orig", "weight_ih_l0_g", "weight_ih_l0_v"):
        _close(getattr(ref, name).grad, getattr(fast, name).grad, GRAD_TOL, name)
