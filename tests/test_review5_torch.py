"""Review 5 of lstm_fast.torch: drop-in behaviour a torch.nn user relies on beyond parity --
the training cache is released by a backward that does not retain the graph (as torch frees
saved tensors), and the modules run under CPU autocast."""

from __future__ import annotations

import gc
import weakref

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")

OUT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)


def _pair(kind, seed=0, **kw):
    """torch's module and lstm_fast's with the same weights."""
    torch.manual_seed(seed)
    ref = getattr(nn, kind)(**kw)
    fast = getattr(lft, kind)(**kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _kernel_nodes(outputs):
    """The lstm_fast autograd nodes (one per layer/direction or step) behind ``outputs``."""
    seen, todo, found = set(), [o.grad_fn for o in outputs if o.grad_fn is not None], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in ("_DirectionBackward", "_BothDirectionsBackward"):
            found.append(node)
        todo += [n for n, _ in node.next_functions]
    return found


def _cache_refs(nodes):
    refs = []
    for node in nodes:
        caches = node.caches if hasattr(node, "caches") else [node.cache]
        refs += [weakref.ref(c) for c in caches]
    return refs


def _random_loss(outs, seed):
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)


def _run(kind, module, x, cell):
    if cell:
        out = module(x[0])
        return out if isinstance(out, tuple) else (out,)
    y, h = module(x)
    return (y, *(h if isinstance(h, tuple) else (h,)))


CACHE_CASES = [
    ("LSTM", dict(num_layers=2), False),
    ("LSTM", dict(bidirectional=True), False),
    ("LSTM", dict(proj_size=3, bidirectional=True, num_layers=2), False),
    ("GRU", dict(num_layers=2, bidirectional=True), False),
    ("RNN", dict(), False),
    ("LSTMCell", dict(), True),
    ("GRUCell", dict(), True),
    ("RNNCell", dict(), True),
]


@pytest.mark.parametrize("kind, kw, cell", CACHE_CASES)
def test_backward_releases_the_kernel_cache(kind, kw, cell):
    """Keeping an output (``losses.append(loss)``, ``total += loss``) must not keep the whole
    training cache (gates, cells) of every iteration alive: torch frees saved tensors once a
    backward that does not retain the graph has run, and so must the kernels' cache."""
    torch.manual_seed(1)
    module = getattr(lft, kind)(5, 6, **kw)
    x = torch.randn(4, 3, 5)
    outs = _run(kind, module, x, cell)
    nodes = _kernel_nodes(outs)
    assert nodes
    refs = _cache_refs(nodes)
    assert all(r() is not None for r in refs)
    loss = _random_loss(outs, 2)
    loss.backward()
    gc.collect()
    assert all(r() is None for r in refs), "the kernel cache outlived backward"
    # A second backward raises torch's own error, as with torch's modules.
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


@pytest.mark.parametrize("kind, kw, cell", CACHE_CASES)
def test_retain_graph_keeps_the_cache_until_the_last_backward(kind, kw, cell):
    ref, fast = _pair(kind, 3, input_size=5, hidden_size=6, **kw)
    torch.manual_seed(4)
    x = torch.randn(4, 3, 5)
    grads = []
    for m in (ref, fast):
        outs = _run(kind, m, x, cell)
        loss = _random_loss(outs, 5)
        loss.backward(retain_graph=True)
        loss.backward(retain_graph=True)
        refs = _cache_refs(_kernel_nodes(outs)) if m is fast else []
        loss.backward()  # the third, not retained, frees it
        gc.collect()
        assert all(r() is None for r in refs)
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, **GRAD_TOL)


def test_training_loop_keeping_losses_does_not_keep_caches():
    torch.manual_seed(6)
    model = lft.LSTM(5, 8, num_layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(7, 2, 5)
    losses, refs = [], []
    for _ in range(3):
        opt.zero_grad()
        y, _ = model(x)
        refs += _cache_refs(_kernel_nodes([y]))
        loss = y.pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss)  # kept with its graph, as people do
    gc.collect()
    assert len(refs) == 6 and all(r() is None for r in refs)


# -- autocast ------------------------------------------------------------------------------------
RNN_KINDS = [("LSTM", {}), ("LSTM", dict(proj_size=3)), ("GRU", {}), ("RNN", {})]


@pytest.mark.parametrize("kind, kw", RNN_KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rnn_under_cpu_autocast(kind, kw, dtype):
    """torch.nn.LSTM runs under ``torch.autocast("cpu")`` when an earlier layer (Linear) handed it
    a lower-precision input: the kernels run in float32 (like autocast's float32 ops), the input
    and states are cast explicitly, and gradients flow back to them."""
    torch.manual_seed(7)
    lin = nn.Linear(4, 5)
    fast = getattr(lft, kind)(5, 6, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(3, 2, 4)
    H_out = kw.get("proj_size") or 6
    h0 = torch.randn(4, 2, H_out, requires_grad=True)
    c0 = torch.randn(4, 2, 6, requires_grad=True)
    hx = (h0.to(dtype), c0.to(dtype)) if kind == "LSTM" else h0.to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        z = lin(x)
        assert z.dtype == dtype
        y, h = fast(z, hx)
    assert y.dtype == torch.float32
    # Same result as running on the float32 values of the lower-precision tensors.
    z32 = z.detach().float().requires_grad_()
    hx32 = tuple(t.detach().float() for t in (hx if kind == "LSTM" else (hx,)))
    y32, h32 = fast(z32, hx32 if kind == "LSTM" else hx32[0])
    torch.testing.assert_close(y, y32, **OUT_TOL)
    for a, b in zip(h if kind == "LSTM" else (h,), h32 if kind == "LSTM" else (h32,)):
        torch.testing.assert_close(a, b, **OUT_TOL)
    (y.sum() + (h[0] if kind == "LSTM" else h).sum()).backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert h0.grad is not None and h0.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_under_cpu_autocast(kind):
    torch.manual_seed(8)
    lin = nn.Linear(4, 5)
    cell = getattr(lft, kind)(5, 6)
    x = torch.randn(3, 4)
    h = torch.randn(3, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        hx = (h.bfloat16(), h.bfloat16()) if kind == "LSTMCell" else h.bfloat16()
        out = cell(z, hx)
    out = out if isinstance(out, tuple) else (out,)
    assert all(o.dtype == torch.float32 for o in out)
    hx32 = tuple(t.detach().float() for t in (hx if kind == "LSTMCell" else (hx,)))
    ref = cell(z.detach().float(), hx32 if kind == "LSTMCell" else hx32[0])
    for a, b in zip(out, ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(a, b, **OUT_TOL)
    out[0].sum().backward()
    assert lin.weight.grad.abs().sum() > 0 and h.grad.abs().sum() > 0


def test_lower_precision_input_without_autocast_still_raises():
    fast = lft.LSTM(5, 6)
    with pytest.raises(ValueError, match="float32"):
        fast(torch.randn(3, 2, 5, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="float32"):
        lft.GRUCell(5, 6)(torch.randn(2, 5, dtype=torch.bfloat16))


def test_packed_input_under_cpu_autocast():
    torch.manual_seed(9)
    fast = lft.GRU(5, 6, bidirectional=True)
    x = torch.randn(4, 3, 5, dtype=torch.bfloat16)
    packed = nn.utils.rnn.pack_padded_sequence(x, [4, 2, 3], enforce_sorted=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = fast(packed)
    packed32 = nn.utils.rnn.pack_padded_sequence(x.float(), [4, 2, 3], enforce_sorted=False)
    y32, h32 = fast(packed32)
    assert y.data.dtype == torch.float32
    torch.testing.assert_close(y.data, y32.data, **OUT_TOL)
    torch.testing.assert_close(h, h32, **OUT_TOL)


# -- in-place change of the output -----------------------------------------------------------------
INPLACE_CASES = [
    ("GRU", dict()),
    ("GRU", dict(num_layers=2, batch_first=True)),
    ("RNN", dict(nonlinearity="relu")),
    ("RNN", dict(batch_first=True)),
    ("LSTM", dict(proj_size=3)),
    ("LSTM", dict(proj_size=3, num_layers=2)),
]


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("kind, kw", INPLACE_CASES)
def test_output_changed_in_place_as_torch_allows(kind, kw, unbatched):
    """torch's GRU, RNN and projected LSTM let the output be changed in place before backward
    (``y.masked_fill_(pad, 0)``, ``y *= mask``, ``relu_``): a drop-in module must too, with
    torch's gradients."""
    ref, fast = _pair(kind, 10, input_size=5, hidden_size=6, **kw)
    torch.manual_seed(11)
    B, T = 3, 4
    shape = (T, 5) if unbatched else ((B, T, 5) if kw.get("batch_first") else (T, B, 5))
    x = torch.randn(shape)
    results = []
    for m in (ref, fast):
        xx = x.clone().requires_grad_()
        y, h = m(xx)
        mask = torch.Generator().manual_seed(12)
        y.mul_(torch.rand(y.shape, generator=mask) > 0.3)
        y.relu_()
        _random_loss((y,), 13).backward()
        results.append([y.detach(), xx.grad, *[p.grad for p in m.parameters()]])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **GRAD_TOL)


def test_output_of_the_kernel_stays_protected_where_torch_protects_it():
    """The plain LSTM keeps torch's (oneDNN) behaviour: its output is saved, a change in place
    raises; the initial state of every kind stays protected."""
    fast = lft.LSTM(5, 6)
    y, _ = fast(torch.randn(4, 2, 5, requires_grad=True))
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    gru = lft.GRU(5, 6)
    h0 = torch.randn(1, 2, 6)
    y, _ = gru(torch.randn(4, 2, 5, requires_grad=True), h0)
    h0.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_float64_input_under_autocast_still_raises():
    """autocast never casts float64, and neither do the modules: no silent conversion."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="float32"):
            lft.LSTM(5, 6)(torch.randn(3, 2, 5, dtype=torch.float64))
        with pytest.raises(TypeError, match="float32"):
            lft.RNNCell(5, 6)(torch.randn(2, 5), torch.randn(2, 6, dtype=torch.float64))
