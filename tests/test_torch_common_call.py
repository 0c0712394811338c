"""lstm_fast.torch's cells: the common eager call (plain float32 CPU tensors, the module's own
parameters) runs without the general path's checks (``_FastCellMixin._common_call``), and must
give what that path gives -- bit for bit, forward and gradients -- for every cell, batched and
unbatched input, with and without states and biases, in and out of grad mode; every other call
(lists as hx, wrong shapes, other dtypes, parametrized weights) still takes the general path
with its checks and messages. Also the layers' parameter look-ups that skip
``Module.__getattr__`` (``_refresh_flat_weights``, ``_check_supported``, ``_foreign_params``)
and ``_array``'s ``numpy(force=True)``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")

CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"})]


def _cell(name, kw, I, H, bias=True, seed=0):
    torch.manual_seed(seed)
    ref = getattr(nn, name)(I, H, bias=bias, **kw)
    fast = getattr(lft, name)(I, H, bias=bias, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _states(name, B, H, batched, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (B, H) if batched else (H,)
    if name == "LSTMCell":
        return (torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    return torch.randn(shape, generator=g)


def _general(m, x, hx):
    """The general path (checks, look-ups) of m's forward, whatever the call."""
    return lft._FastCellMixin._fast_forward(m, x, hx)


def _tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.fixture
def no_general(monkeypatch):
    """Makes the general path raise: a call that passes ran on the common path."""

    def refuse(*a, **k):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(lft._FastCellMixin, "_fast_forward", refuse)


SIZES = [
    (B, I, H, batched, with_hx, bias)
    for (B, I, H), batched, with_hx, bias in itertools.product(
        [(1, 1, 1), (3, 7, 17), (16, 17, 33)], *([(True, False)] * 3)
    )
    if batched or B == 1  # (unbatched: one sequence)
]


@pytest.mark.parametrize("name,kw", CELLS)
@pytest.mark.parametrize("B,I,H,batched,with_hx,bias", SIZES)
def test_common_call_matches_general_path_no_grad(name, kw, B, I, H, batched, with_hx, bias):
    ref, fast = _cell(name, kw, I, H, bias)
    x = torch.randn((B, I) if batched else (I,))
    hx = _states(name, B, H, batched, 1) if with_hx else None
    with torch.no_grad():
        got = _tuple(fast(x, hx))
        general = _tuple(_general(fast, x, hx))
        want = _tuple(ref(x, hx))
    assert len(got) == len(want)
    for g, a, w in zip(got, general, want):
        assert g.shape == w.shape and g.dtype == torch.float32
        assert torch.equal(g, a)  # the same kernels on the same arrays: bit for bit
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        assert not g.requires_grad


@pytest.mark.parametrize("name,kw", CELLS)
@pytest.mark.parametrize("batched,bias", [(True, True), (True, False), (False, True)])
def test_common_call_gradients_match_general_path(name, kw, batched, bias):
    """Grad mode: the common path's graph gives the general path's gradients exactly (and
    torch's within 1e-4), for the input, the states and every parameter, with a random upstream
    gradient on each output."""
    B, I, H = (5, 7, 17) if batched else (1, 7, 17)
    ref, fast = _cell(name, kw, I, H, bias)
    _, fast2 = _cell(name, kw, I, H, bias)
    x0 = torch.randn((B, I) if batched else (I,))
    hx0 = _tuple(_states(name, B, H, batched, 2))
    g = torch.Generator().manual_seed(3)
    ups = None
    results = []
    for module, call in ((fast, lambda m, x, hx: m(x, hx)), (fast2, _general), (ref, None)):
        x = x0.clone().requires_grad_(True)
        hx = tuple(h.clone().requires_grad_(True) for h in hx0)
        arg = hx if name == "LSTMCell" else hx[0]
        out = _tuple(module(x, arg) if call is None else call(module, x, arg))
        if ups is None:
            ups = [torch.randn(o.shape, generator=g) for o in out]
        torch.autograd.backward(out, ups)
        grads = [x.grad, *(h.grad for h in hx)] + [p.grad for p in module.parameters()]
        results.append((out, grads))
    (o1, g1), (o2, g2), (o3, g3) = results
    for a, b, c in zip(o1, o2, o3):
        assert torch.equal(a.detach(), b.detach())
        torch.testing.assert_close(a.detach(), c.detach(), rtol=1e-5, atol=1e-5)
    assert len(g1) == len(g2) == len(g3)
    for a, b, c in zip(g1, g2, g3):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,kw", CELLS)
def test_common_calls_skip_the_general_path(name, kw, no_general):
    """The calls a step loop makes take the common path: batched and unbatched, with and
    without states, grad mode on and off, frozen weights, a non-contiguous input."""
    _, fast = _cell(name, kw, 6, 9)
    x = torch.randn(4, 6)
    hx = _states(name, 4, 9, True, 0)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            fast(x)
            fast(x, hx)
            fast(x[0])
            fast(torch.randn(6, 4).t())  # non-contiguous: read as a copy
            out = _tuple(fast(x.requires_grad_(grad), hx))
            assert out[0].requires_grad == grad
            x = x.detach()
    fast.requires_grad_(False)
    out = _tuple(fast(x, hx))
    assert not out[0].requires_grad


@pytest.mark.parametrize("name,kw", CELLS)
def test_other_calls_take_the_general_path(name, kw, monkeypatch):
    """Each call the common path does not recognise reaches the general path (which then
    computes it, or raises its message): no call is refused or answered differently for being
    uncommon."""
    _, fast = _cell(name, kw, 6, 9)
    seen = []
    general = lft._FastCellMixin._fast_forward

    def spy(self, input, hx=None):
        seen.append(1)
        return general(self, input, hx)

    monkeypatch.setattr(lft._FastCellMixin, "_fast_forward", spy)
    x = torch.randn(4, 6)
    h = torch.randn(4, 9)

    def general_ran(call):
        seen.clear()
        call()
        return bool(seen)

    if name == "LSTMCell":
        assert general_ran(lambda: fast(x, [h, h]))  # a list, not a tuple
    assert general_ran(lambda: fast(nn.Parameter(x.clone())))  # a tensor subclass
    assert general_ran(lambda: fast(x[:0]))  # an empty batch
    with pytest.raises(RuntimeError, match="input: expected shape"):
        fast(torch.randn(4, 5))  # the general path's message
    with pytest.raises(RuntimeError, match=r"hx\[0\]|hx: expected shape"):
        fast(x, (torch.randn(3, 9),) * 2 if name == "LSTMCell" else torch.randn(3, 9))
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D"):
        fast(torch.randn(2, 4, 6))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        fast(x.numpy())
    # float64 input: the general path's dtype error, named
    with pytest.raises(TypeError, match="input: expected dtype torch.float32"):
        fast(x.double())
    # a weight of the wrong shape (replaced Parameter): named by the general path
    bad = type(fast)(6, 9, **kw)
    bad.weight_hh = nn.Parameter(torch.randn(bad.weight_hh.shape[0], 8))
    with pytest.raises(RuntimeError, match="weight_hh: expected shape"):
        bad(x)
    # a missing weight
    gone = type(fast)(6, 9, **kw)
    gone.weight_ih = None
    with pytest.raises(TypeError, match="weight_ih"):
        gone(x)


def test_parametrized_cell_takes_the_general_path():
    """A parametrized weight is computed at each read by the general path (once per call, as
    torch's cell does): the common path leaves such modules alone."""
    ref, fast = _cell("GRUCell", {}, 5, 8)
    calls = []

    class Scale(nn.Module):
        def forward(self, w):
            calls.append(1)
            return 2 * w

    for m in (ref, fast):
        torch.nn.utils.parametrize.register_parametrization(m, "weight_hh", Scale())
    x, h = torch.randn(3, 5), torch.randn(3, 8)
    with torch.no_grad():
        want = ref(x, h)
        n = len(calls)
        got = fast(x, h)
    assert len(calls) - n == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_inference_mode_and_neg_views():
    """Inference tensors and a tensor with the negative bit set (read as its values) run on
    the common path with the general path's results."""
    ref, fast = _cell("LSTMCell", {}, 4, 6)
    x = torch.randn(2, 4)
    hx = (torch.randn(2, 6), torch.randn(2, 6))
    with torch.inference_mode():
        got = fast(x, hx)
        want = ref(x, hx)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    neg = torch._neg_view(-x)
    assert neg.is_neg()
    with torch.no_grad():
        a, b = fast(neg, hx), fast(x, hx)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_array_reads_views_and_copies():
    t = torch.randn(3, 4, requires_grad=True)
    a = lft._array(t)
    assert a.flags.c_contiguous and np.shares_memory(a, t.detach().numpy())
    s = torch.randn(4, 3).t()
    b = lft._array(s)
    assert b.flags.c_contiguous and np.array_equal(b, s.numpy())
    n = torch._neg_view(-t.detach())
    assert np.array_equal(lft._array(n), t.detach().numpy())
    assert lft._array(None) is None


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_layer_sees_a_replaced_parameter(cls):
    """A parameter replaced between calls (a new nn.Parameter, as torch.func.functional_call
    and load_state_dict(assign=True) do) is what the next forward reads, and torch's
    ``_flat_weights`` follows it, as torch's own ``_update_flat_weights`` does."""
    torch.manual_seed(0)
    ref = getattr(nn, cls)(5, 7, num_layers=2)
    fast = getattr(lft, cls)(5, 7, num_layers=2)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        fast(x)
        for m in (ref, fast):
            w = m.weight_hh_l1
            m.weight_hh_l1 = nn.Parameter(w.detach() * 0.5)
        got, want = fast(x)[0], ref(x)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    i = fast._flat_weights_names.index("weight_hh_l1")
    assert fast._flat_weights[i] is fast.weight_hh_l1
    # a bias set to None is refused by name, not read from the stale _flat_weights
    fast.bias_ih_l0 = None
    with pytest.raises(TypeError, match="bias_ih_l0"):
        fast(x)


def test_layer_functional_call_reads_the_given_weights():
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6)
    fast = lft.LSTM(4, 6)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 4)
    other = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
    with torch.no_grad():
        got = torch.func.functional_call(fast, other, (x,))[0]
        want = torch.func.functional_call(ref, other, (x,))[0]
        again = fast(x)[0]
        base = ref(x)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequences_of_one_length(cls, bidirectional):
    """A PackedSequence whose sequences all have one length (a single step, or a fixed-length
    batch) has no padding: its rows are read and written in place of the scatter and gather.
    Same outputs and gradients as torch; in a graph, changing the input's or the output's
    packed data in place after the forward still leaves backward working (the rows are copies
    there, as the scatter and gather made)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=bidirectional)
    ref = getattr(nn, cls)(5, 7, **kw)
    fast = getattr(lft, cls)(5, 7, **kw)
    fast.load_state_dict(ref.state_dict())
    for T, B in ((1, 3), (4, 3), (6, 1)):
        x0 = torch.randn(T, B, 5)
        lengths = torch.full((B,), T)
        with torch.no_grad():
            got = fast(pack_padded_sequence(x0, lengths))
            want = ref(pack_padded_sequence(x0, lengths))
        torch.testing.assert_close(got[0].data, want[0].data, rtol=1e-5, atol=1e-5)
        assert torch.equal(got[0].batch_sizes, want[0].batch_sizes)
        results = []
        for m in (fast, ref):
            m.zero_grad()
            x = x0.clone().requires_grad_(True)
            packed = pack_padded_sequence(x, lengths)
            out, _ = m(packed)
            up = torch.randn(out.data.shape, generator=torch.Generator().manual_seed(T))
            (out.data * up).sum().backward()
            results.append([x.grad] + [p.grad for p in m.parameters()])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        # (torch's own module saves the input's rows and raises for the first one)
        packed = pack_padded_sequence(x0.clone().requires_grad_(True), lengths)
        out, _ = fast(packed)
        with torch.no_grad():
            packed.data.mul_(2.0)  # in place on the input's rows after the forward
        out.data.add_(1.0)  # in place on the output's rows: not the saved y
        out.data.sum().backward()
