"""Review 10: the layers and the functional API against PyTorch on unusual but legal calls.

Each test failed before the fix it comes with. References are torch.nn (float64, loaded from
the same weights) and lstm_fast.reference in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import reference as ref

torch = pytest.importorskip("torch")
nn_utils = torch.nn.utils.rnn

KINDS = ["LSTM", "GRU", "RNN"]


def _pair(kind, *args, **kwargs):
    """(torch float64 layer, lstm_fast layer) with the same weights."""
    ours = getattr(lstm_fast, kind)(*args, seed=0, **kwargs)
    theirs = getattr(torch.nn, kind)(*args, **kwargs).double()
    theirs.load_state_dict(
        {k: torch.from_numpy(v.astype(np.float64)) for k, v in ours.state_dict().items()}
    )
    return theirs, ours


def _states(kind, h):
    return h if kind == "LSTM" else (h,)


# ---- backward(None, dh_n): a loss on the final state alone ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "config",
    [
        dict(),  # one layer, one direction (the plain path)
        dict(num_layers=2, bidirectional=True, batch_first=True),
        dict(num_layers=2, lengths=True),
    ],
    ids=["plain", "stack-bi-batch-first", "stack-lengths"],
)
def test_layer_backward_takes_dy_none_as_a_zero_output_gradient(kind, config, rng):
    # A classifier on h_n has no gradient on y: backward(None, dh_n) is the gradient of
    # sum(h_n * dh_n), as the ops and the cells already take None. It raised
    # "dy: expected a real floating-point array, got dtype object".
    config = dict(config)
    use_lengths = config.pop("lengths", False)
    theirs, ours = _pair(kind, 3, 5, **config)
    bf = config.get("batch_first", False)
    T, B = 6, 4
    x = rng.standard_normal((B, T, 3) if bf else (T, B, 3))
    lengths = [6, 2, 5, 1] if use_lengths else None
    y, h = ours(x.astype(np.float32), lengths=lengths)
    dh = [rng.standard_normal(a.shape) for a in _states(kind, h)]
    dx, dstate = ours.backward(None, *[d.astype(np.float32) for d in dh])

    xt = torch.from_numpy(x).requires_grad_()
    inp = (
        xt if lengths is None else nn_utils.pack_padded_sequence(xt, lengths, enforce_sorted=False)
    )
    _, ht = theirs(inp)
    sum((a * torch.from_numpy(d)).sum() for a, d in zip(_states(kind, ht), dh)).backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(getattr(ours, name).grad, p.grad.numpy(), rtol=1e-4, atol=1e-5)

    # bitwise what an explicit zero dy gives
    ours.zero_grad()
    y, h = ours(x.astype(np.float32), lengths=lengths)
    dx0, dstate0 = ours.backward(np.zeros(y.shape, np.float32), *[d.astype(np.float32) for d in dh])
    np.testing.assert_array_equal(dx, dx0)
    for a, b in zip(_states(kind, dstate), _states(kind, dstate0)):
        np.testing.assert_array_equal(a, b)


def test_layer_backward_dy_none_for_unbatched_and_packed_input(rng):
    lstm = lstm_fast.LSTM(3, 4, num_layers=2, seed=1)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y, (h, c) = lstm(x)
    dh = rng.standard_normal(h.shape).astype(np.float32)
    dx, (dh0, dc0) = lstm.backward(None, dh)
    y, (h, c) = lstm(x)
    ex, (eh0, ec0) = lstm.backward(np.zeros_like(y), dh)
    np.testing.assert_array_equal(dx, ex)
    np.testing.assert_array_equal(dh0, eh0)

    packed = nn_utils.pack_padded_sequence(
        torch.from_numpy(rng.standard_normal((5, 3, 3)).astype(np.float32)),
        [5, 2, 4],
        enforce_sorted=False,
    )
    y, (h, c) = lstm(packed)
    dx, _ = lstm.backward(None, None, np.ones(c.shape, np.float32))
    assert dx.shape == (5, 3, 3) and np.isfinite(dx).all() and dx[2:, 1].max() == 0


# ---- GRU's positional proj_size ---------------------------------------------------------------


def test_gru_takes_a_positional_proj_size_of_zero_as_torch():
    # torch.nn.GRU passes its positional arguments to RNNBase, whose eighth is proj_size: 0 is
    # accepted. Ours refused any eighth argument. (A projection is refused, keyword or not;
    # torch 2.13 builds a GRU with proj_size=2 positionally that then fails in forward.)
    args = (3, 4, 2, True, False, 0.0, True, 0)
    gru = lstm_fast.GRU(*args)
    assert repr(gru) == repr(torch.nn.GRU(*args))
    assert [n for n, _ in gru.named_parameters()] == [
        n for n, _ in torch.nn.GRU(*args).named_parameters()
    ]
    for bad in (dict(args=args[:7] + (2,)), dict(args=(3, 4), kwargs=dict(proj_size=2))):
        with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
            lstm_fast.GRU(*bad["args"], **bad.get("kwargs", {}))


# ---- check_finite of an unbatched step names the caller's index -------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_step_check_finite_reports_the_callers_index(kind):
    # step(x_t) with x_t (I,) and a (num_layers, H) state: the error gave the index in the
    # internal (1, I) / (num_layers, 1, H) arrays, "(0, 2)" for element 2 of a vector.
    layer = getattr(lstm_fast, kind)(4, 3, num_layers=2, check_finite=True, seed=0).eval()
    x = np.ones(4, np.float32)
    x[2] = np.nan
    with pytest.raises(ValueError, match=r"x_t: expected finite values, got NaN at index \(2,\)$"):
        layer.step(x)
    h = np.zeros((2, 3), np.float32)
    h[1, 2] = np.inf
    state = (h, np.zeros((2, 3), np.float32)) if kind == "LSTM" else h
    name = r"state\[0\]" if kind == "LSTM" else "state"
    with pytest.raises(
        ValueError, match=name + r": expected finite values, got Inf at index \(1, 2\)$"
    ):
        layer.step(np.ones(4, np.float32), state)
    # the batched call still reports batched indices
    with pytest.raises(
        ValueError, match=r"x_t: expected finite values, got NaN at index \(0, 2\)$"
    ):
        layer.step(x[None])


# ---- relu RNN: the gradient at a NaN output as torch's ----------------------------------------


def test_relu_rnn_gradient_passes_through_nan_outputs_as_torch(isa, rng):
    # torch's relu backward keeps the gradient wherever the output is not <= 0, so at a NaN
    # output too (threshold_backward); the kernels zeroed it (y > 0 is false for NaN), so a NaN
    # in the input changed the finite gradients of every step before it (dx of the steps after
    # the NaN is finite in torch: zero here).
    theirs, ours = _pair("RNN", 3, 6, nonlinearity="relu", num_layers=2)
    x = rng.standard_normal((5, 2, 3))
    x[2, 0, 1] = np.nan
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = theirs(xt)
    dy = rng.standard_normal(yt.shape)
    (yt * torch.from_numpy(dy)).sum().backward()
    y, _ = ours(x.astype(np.float32))
    dx, _ = ours.backward(dy.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt.detach().numpy()))
    want = xt.grad.numpy()
    assert np.isfinite(want[3:]).all()  # the steps after the NaN: finite in torch
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(want))
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-5)


def test_reference_relu_gradient_at_nan_outputs_and_nan_upstream_as_torch(rng):
    # The reference multiplied by the mask (y > 0): a NaN output lost its gradient, and a NaN
    # upstream gradient at a zero output gave NaN (0 * NaN); torch selects (0 where y <= 0).
    T, B, I, H = 4, 2, 3, 5
    w = ref.init_rnn_weights(I, H, seed=3, dtype=np.float64)
    x = rng.standard_normal((T, B, I))
    x[1, 1, 0] = np.nan
    y, _, cache = ref.rnn_forward(x, **w, nonlinearity="relu")
    dy = rng.standard_normal(y.shape)
    dy[3][y[3] == 0] = np.nan  # upstream NaN where the output is zero: no effect in torch
    g = ref.rnn_backward(cache, dy)

    xt = torch.from_numpy(x).requires_grad_()
    wt = {k: torch.from_numpy(v).requires_grad_() for k, v in w.items()}
    h = torch.zeros(B, H, dtype=torch.float64)
    outs = []
    for t in range(T):
        h = torch.relu(
            xt[t] @ wt["weight_ih"].T + wt["bias_ih"] + h @ wt["weight_hh"].T + wt["bias_hh"]
        )
        outs.append(h)
    torch.autograd.backward(torch.stack(outs), grad_tensors=torch.from_numpy(dy))
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.dweight_hh, wt["weight_hh"].grad.numpy(), rtol=1e-12, atol=1e-12)


# ---- forward_embedded: ids are laid out as forward's input ------------------------------------


def test_forward_embedded_ids_follow_batch_first(rng):
    # The ids feed forward(embedding(ids), hx): (B, T) for a batch_first layer. The docstring
    # said "(T, B) ... (time-major)" and a wrong rank was reported as "expected shape (T, B)".
    from lstm_fast.nn import Embedding

    emb = Embedding(7, 3, seed=2)
    layer = lstm_fast.GRU(3, 4, batch_first=True, seed=1)
    ids = rng.integers(0, 7, (2, 5))  # (B, T)
    y, h = layer.forward_embedded(ids, emb)
    assert y.shape == (2, 5, 4) and h.shape == (1, 2, 4)
    with pytest.raises(ValueError, match=r"ids: expected shape \(B, T\) \(or \(T,\) unbatched\)"):
        layer.forward_embedded(ids[None], emb)
    with pytest.raises(ValueError, match=r"ids: expected shape \(T, B\)"):
        lstm_fast.GRU(3, 4, seed=1).forward_embedded(ids[None], emb)


# ---- backward reads the layout its forward used -----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_backward_uses_the_forwards_layout_when_batch_first_changes(kind, num_layers, rng):
    # batch_first is a plain attribute: set between a forward and its backward, backward read
    # dy in the new layout. With T == B the shapes agree and the gradients were silently
    # those of the transposed dy; with T != B it raised a shape error naming the wrong layout.
    for T, B in [(4, 4), (5, 3)]:
        layer = getattr(lstm_fast, kind)(3, 4, num_layers=num_layers, seed=0)
        x = rng.standard_normal((T, B, 3)).astype(np.float32)
        y, _ = layer(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        want_dx, _ = layer.backward(dy)
        want = [p.grad.copy() for p in layer.parameters()]
        layer.zero_grad()
        layer(x)
        layer.batch_first = True  # after the forward: its backward still takes (T, B, H)
        dx, _ = layer.backward(dy)
        np.testing.assert_array_equal(dx, want_dx)
        for p, g in zip(layer.parameters(), want):
            np.testing.assert_array_equal(p.grad, g)


# ---- a PackedSequence output keeps the input's packing ----------------------------------------


def _packed_with_order(x, lengths, order):
    """A PackedSequence of x (T, B, F) whose rows are sorted by ``order`` (a valid descending
    sort of the lengths, ties in any order), built as pack_padded_sequence builds one."""
    order = torch.as_tensor(order)
    lens = torch.as_tensor(lengths)[order]
    T = int(lens[0])
    batch_sizes = (lens[None, :] > torch.arange(T)[:, None]).sum(1)
    mask = torch.arange(len(order))[None, :] < batch_sizes[:, None]
    data = x[:T][:, order][mask]
    return nn_utils.PackedSequence(data, batch_sizes, order, torch.argsort(order))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_output_keeps_the_inputs_sorted_indices(kind, bidirectional):
    # torch's layers return a PackedSequence with the input's batch_sizes, sorted_indices and
    # unsorted_indices, so output.data lines up row for row with input.data (a residual
    # connection, per-token targets packed alike). Ours re-packed y with its own sort: an
    # enforce_sorted=True input (sorted_indices None) came back with sorted_indices set and,
    # where lengths tie, its rows in another order; an input sorted another valid way (ties in
    # another order) too.
    g = torch.Generator().manual_seed(3)
    theirs, ours = _pair(kind, 3, 4, bidirectional=bidirectional)
    lengths = [4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 1]
    x = torch.randn(4, len(lengths), 3, generator=g, dtype=torch.float64)
    stable = np.argsort(-np.array(lengths), kind="stable")
    order = np.concatenate(
        [stable[lengths_at][::-1] for lengths_at in _tie_groups(lengths, stable)]
    )
    inputs = [
        nn_utils.pack_padded_sequence(x, lengths, enforce_sorted=True),
        nn_utils.pack_padded_sequence(x.flip(1), lengths[::-1], enforce_sorted=False),
        _packed_with_order(x, lengths, order),
    ]
    for packed in inputs:
        want, _ = theirs(packed)
        got, _ = ours(packed)
        assert torch.equal(got.batch_sizes, want.batch_sizes)
        for a, b in (
            (got.sorted_indices, want.sorted_indices),
            (got.unsorted_indices, want.unsorted_indices),
        ):
            assert (a is None) == (b is None)
            assert a is None or torch.equal(a, b)
        np.testing.assert_allclose(
            got.data.numpy(), want.data.detach().numpy(), rtol=1e-5, atol=1e-6
        )
        # backward with a PackedSequence gradient of the output's packing
        dy = nn_utils.PackedSequence(
            torch.ones_like(got.data), got.batch_sizes, got.sorted_indices, got.unsorted_indices
        )
        dx, _ = ours.backward(dy)
        assert dx.shape == (4, len(lengths), 3) and np.isfinite(dx).all()


def _tie_groups(lengths, order):
    """Index ranges into ``order`` of equal lengths (each a slice)."""
    lens = np.array(lengths)[order]
    starts = np.flatnonzero(np.r_[True, lens[1:] != lens[:-1]])
    ends = np.r_[starts[1:], len(lens)]
    return [slice(s, e) for s, e in zip(starts, ends)]


# ---- the dropout warning points at the caller's line ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_single_layer_dropout_warning_points_at_the_callers_line(kind):
    # As torch's: the UserWarning for dropout > 0 with num_layers = 1 names the line that
    # built the layer. A fixed stacklevel=3 fitted RNN (whose __init__ calls the base's) but
    # pointed one frame above the caller for LSTM and GRU (no __init__ of their own).
    import inspect

    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1") as w:
        line = inspect.currentframe().f_lineno + 1
        getattr(lstm_fast, kind)(3, 4, dropout=0.5)
    assert w[0].filename == __file__
    assert w[0].lineno == line


# ---- misaligned float32 arrays are converted at the layer boundary ----------------------------


def _misaligned(a):
    """A C-contiguous float32 copy of ``a`` whose data starts one byte past an aligned address
    (np.frombuffer at an odd offset: binary records, network buffers)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.ndarray(a.shape, np.float32, buf.data, offset=1)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_layers_take_misaligned_float32_arrays(kind, num_layers, rng):
    # The layers convert any real floating array; a misaligned float32 one went to the core
    # as is and was refused there ("x: expected float32-aligned data", naming the core's x, not
    # input). torch.from_numpy takes such arrays. Forward (train and eval), hx, backward's dy
    # and dh_n, the cells and step() now copy them.
    theirs, ours = _pair(kind, 3, 5, num_layers=num_layers)
    x = rng.standard_normal((4, 2, 3))
    h = rng.standard_normal((num_layers, 2, 5))
    hx_t = (torch.from_numpy(h), torch.from_numpy(h)) if kind == "LSTM" else torch.from_numpy(h)
    hx_o = (_misaligned(h), _misaligned(h)) if kind == "LSTM" else _misaligned(h)
    want_y, want_h = theirs(torch.from_numpy(x), hx_t)
    for mode in ("eval", "train"):
        getattr(ours, mode)()
        y, hn = ours(_misaligned(x), hx_o)
        np.testing.assert_allclose(y, want_y.detach().numpy(), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape)
    dh = rng.standard_normal(_states(kind, hn)[0].shape)
    dx, _ = ours.backward(_misaligned(dy), _misaligned(dh))
    y, hn = ours(
        x.astype(np.float32),
        tuple(np.float32(a) for a in hx_o) if kind == "LSTM" else np.float32(hx_o),
    )
    ex, _ = ours.backward(dy.astype(np.float32), dh.astype(np.float32))
    np.testing.assert_array_equal(dx, ex)

    ours.eval()
    y_t, state = ours.step(_misaligned(x[0]))
    np.testing.assert_allclose(y_t, ours(x[:1].astype(np.float32))[0][0], rtol=1e-5, atol=1e-6)
    cell = getattr(lstm_fast, kind + "Cell")(3, 5, seed=0)
    for mode in ("eval", "train"):
        getattr(cell, mode)()
        hc = (_misaligned(h[0]), _misaligned(h[0])) if kind == "LSTM" else _misaligned(h[0])
        got = cell(_misaligned(x[0]), hc)
        ref_hc = (h[0].astype(np.float32),) * 2 if kind == "LSTM" else h[0].astype(np.float32)
        want = cell(x[0].astype(np.float32), ref_hc)
        for a, b in zip(_states(kind, got), _states(kind, want)):
            np.testing.assert_array_equal(a, b)


def test_a_misaligned_parameter_is_named(rng):
    # A parameter's data assigned a misaligned array: the core's refusal named "weight_ih",
    # not the layer's parameter.
    layer = lstm_fast.GRU(3, 4, num_layers=2, seed=0)
    layer.weight_hh_l1.data = _misaligned(layer.weight_hh_l1.data)
    with pytest.raises(ValueError, match=r"^weight_hh_l1: expected float32-aligned data"):
        layer(np.zeros((2, 1, 3), np.float32))
    # a misaligned gradient array, likewise: named by the parameter, before any accumulation
    layer = lstm_fast.GRU(3, 4, num_layers=2, seed=0)
    y, _ = layer(np.zeros((2, 1, 3), np.float32))
    layer.weight_ih_l1.grad = _misaligned(np.zeros_like(layer.weight_ih_l1.data))
    before = layer.weight_hh_l1.grad.copy()
    with pytest.raises(ValueError, match=r"^weight_ih_l1\.grad: .*got a misaligned buffer"):
        layer.backward(np.ones(y.shape, np.float32))
    np.testing.assert_array_equal(layer.weight_hh_l1.grad, before)
