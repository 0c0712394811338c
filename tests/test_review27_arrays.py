"""Review 27: how every public entry point treats the arrays it is given.

* a ``numpy.ma.MaskedArray`` with masked elements is refused, naming the argument, wherever an
  array enters (the functional API's float arrays and int vectors, the layers' and cells'
  inputs, states, lengths and gradients, ``step``, ``load_state_dict``, ``Parameter``, the
  optimizers' and ``clip_grad_norm``'s gradients, ``nn``'s inputs, ids and targets): NumPy and
  the kernels read the values under the mask as data, silently; one without masked elements is
  its data;
* a torch tensor on the meta device or sparse, given to the NumPy API, raises naming the
  argument (was torch's "Cannot copy out of meta tensor" / "can't convert Sparse layout tensor
  to numpy"), and one with the negative bit set (``z.conj().imag``) is read as its values (was
  torch's "Can't call numpy() on Tensor that has negative bit set") -- in the drop-in modules
  too, whose cells (and layers' ``hx``) also take sparse tensors as torch's do;
* ``load_state_dict`` / ``Parameter`` refuse timedelta64 arrays (NumPy counts them as integers);
* sizes beyond memory: ``Embedding`` refuses ids whose output cannot exist before scanning them
  (a broadcast view of 2**40 ids scanned for minutes), and the layers' conversion of a huge view
  names the argument in its MemoryError.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lstm_fast
from lstm_fast import nn, ops, optim
from lstm_fast.module import Parameter

f32 = np.float32
T, B, I, H = 3, 2, 4, 5
REAL = "expected a real numeric array"
MASKED = r"expected an array without masked values, got a numpy\.ma\.MaskedArray with \d+ masked"


def _masked(a, first_only=True):
    m = np.zeros(np.shape(a), bool)
    if first_only:
        m.flat[0] = True
    else:
        m[...] = True
    return np.ma.masked_array(a, mask=m)


@pytest.fixture
def data():
    rng = np.random.default_rng(27)
    x = rng.standard_normal((T, B, I)).astype(f32)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.3).astype(f32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.3).astype(f32)
    b = (rng.standard_normal((2, 4 * H)) * 0.1).astype(f32)
    return x, w_ih, w_hh, b[0], b[1]


# ---- masked arrays: the functional API (the core's argument checks) -------------------------


@pytest.mark.parametrize("which", range(5))
def test_ops_refuse_masked_float_arguments(data, which):
    args = list(data)
    name = ("x", "weight_ih", "weight_hh", "bias_ih", "bias_hh")[which]
    args[which] = _masked(args[which])
    with pytest.raises(ValueError, match=rf"^{name}: {MASKED}"):
        ops.lstm_forward(*args)
    with pytest.raises(ValueError, match=rf"^{name}: {MASKED}"):
        ops.lstm_forward(*args, training=True, check_finite=True)


def test_ops_refuse_masked_states_gradients_and_gemm(data):
    x, w_ih, w_hh, b_ih, b_hh = data
    h0 = np.zeros((B, H), f32)
    with pytest.raises(ValueError, match=rf"^h0: {MASKED}"):
        ops.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, _masked(h0), h0)
    y, _, _, cache = ops.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, training=True)
    with pytest.raises(ValueError, match=rf"^dy: {MASKED}"):
        ops.lstm_backward(cache, _masked(np.ones_like(y)))
    with pytest.raises(ValueError, match=rf"^dh_n: {MASKED}"):
        ops.lstm_backward(cache, None, _masked(np.ones((B, H), f32)))
    g_ih = np.zeros((3 * H, I), f32)
    with pytest.raises(ValueError, match=rf"^weight_ih: {MASKED}"):
        ops.gru_forward(x, _masked(g_ih), np.zeros((3 * H, H), f32))
    with pytest.raises(ValueError, match=rf"^weight_hr: {MASKED}"):
        ops.lstm_forward(
            x, w_ih, np.zeros((4 * H, 2), f32), weight_hr=_masked(np.zeros((2, H), f32))
        )
    a = np.ones((3, 4), f32)
    with pytest.raises(ValueError, match=rf"^a: {MASKED}"):
        ops.gemm(_masked(a), a.T.copy())
    with pytest.raises(ValueError, match=rf"^b: {MASKED}"):
        ops.gemm(a, _masked(a.T.copy()))


def test_ops_refuse_masked_int_vectors(data):
    x = data[0]
    with pytest.raises(ValueError, match=rf"^batch_sizes: {MASKED}"):
        ops.lstm_forward(*data, batch_sizes=_masked(np.array([2, 2, 1])))
    with pytest.raises(ValueError, match=rf"^sorted_indices: {MASKED}"):
        ops.lstm_forward(*data, batch_sizes=[2, 2, 1], sorted_indices=_masked(np.array([1, 0])))
    with pytest.raises(ValueError, match=rf"^batch_sizes: {MASKED}"):
        ops.rnn_forward(
            x, np.zeros((H, I), f32), np.zeros((H, H), f32), batch_sizes=_masked([2, 2, 1])
        )


def test_masked_arrays_without_masked_values_are_their_data(data):
    want = ops.lstm_forward(*data)
    got = ops.lstm_forward(*[np.ma.masked_array(a) for a in data])  # mask: nomask
    for w, g in zip(want[:3], got[:3]):
        np.testing.assert_array_equal(w, g)
    full = np.ma.masked_array(data[0], mask=np.zeros(data[0].shape, bool))  # a mask, all False
    np.testing.assert_array_equal(ops.lstm_forward(full, *data[1:])[0], want[0])
    layer = lstm_fast.LSTM(I, H, seed=0)
    np.testing.assert_array_equal(layer(full)[0], layer(data[0])[0])


# ---- masked arrays: layers, cells, step ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_layers_refuse_masked_inputs_states_lengths_and_gradients(data, mode):
    x = data[0]
    layer = getattr(lstm_fast, mode)(I, H, seed=0)
    h0 = np.zeros((1, B, H), f32)
    hx = (h0, h0) if mode == "LSTM" else h0
    with pytest.raises(ValueError, match=rf"^input: {MASKED}"):
        layer(_masked(x))
    assert layer._saved is None  # nothing kept for a backward
    bad_hx = (_masked(h0), h0) if mode == "LSTM" else _masked(h0)
    with pytest.raises(ValueError, match=rf"^h_0: {MASKED}"):
        layer(x, bad_hx)
    with pytest.raises(ValueError, match=rf"^lengths: {MASKED}"):
        layer(x, hx, lengths=_masked(np.array([3, 2])))
    checked = getattr(lstm_fast, mode)(I, H, seed=0, check_finite=True)
    with pytest.raises(ValueError, match=rf"^input: {MASKED}"):
        checked(_masked(x))
    y, _ = layer(x, hx)
    before = [p.grad.copy() for p in layer.parameters()]
    with pytest.raises(ValueError, match=rf"^dy: {MASKED}"):
        layer.backward(_masked(np.ones(y.shape, f32)))
    for p, g in zip(layer.parameters(), before):
        np.testing.assert_array_equal(p.grad, g)  # nothing accumulated


def test_a_masked_parameter_is_named_by_the_layer():
    layer = lstm_fast.LSTM(I, H, num_layers=2, seed=0)
    layer.weight_hh_l1.data = _masked(layer.weight_hh_l1.data)  # (assigned past the checks)
    with pytest.raises(ValueError, match=rf"^weight_hh_l1: {MASKED}"):
        layer(np.ones((T, B, I), f32))


def test_step_and_cells_refuse_masked_arrays(data):
    x = data[0]
    layer = lstm_fast.LSTM(I, H, seed=0).eval()
    layer.step(x[0])  # the stream exists: the fast path's checks too
    with pytest.raises(ValueError, match=rf"^x_t: {MASKED}"):
        layer.step(_masked(x[0]))
    h = np.zeros((1, B, H), f32)
    with pytest.raises(ValueError, match=rf"^state\[0\] \(h\): {MASKED}"):
        layer.step(x[0], (_masked(h), h))
    cell = lstm_fast.LSTMCell(I, H, seed=0)
    with pytest.raises(ValueError, match=rf"^input: {MASKED}"):
        cell(_masked(x[0]))
    s = np.zeros((B, H), f32)
    with pytest.raises(ValueError, match=rf"{MASKED}"):
        cell(x[0], (s, _masked(s)))
    cell(x[0])
    with pytest.raises(ValueError, match=rf"^dh: {MASKED}"):
        cell.backward(_masked(np.ones((B, H), f32)))


# ---- masked arrays: parameters, state dicts, optimizers, nn ----------------------------------


def test_load_state_dict_and_parameter_refuse_masked_and_timedelta():
    layer = lstm_fast.LSTM(I, H, seed=0)
    sd = layer.state_dict()
    for bad, exc, match in (
        (_masked(sd["weight_ih_l0"]), ValueError, MASKED),
        (np.zeros(sd["weight_ih_l0"].shape, "m8[s]"), TypeError, "expected a real numeric array"),
    ):
        with pytest.raises(exc, match=rf"^load_state_dict: weight_ih_l0: {match}"):
            layer.load_state_dict({**sd, "weight_ih_l0": bad})
        for k, v in layer.state_dict().items():
            np.testing.assert_array_equal(v, sd[k])  # nothing loaded
    for dtype in (np.float32, np.float64, None, np.int32):
        with pytest.raises(ValueError, match=rf"^data: {MASKED}"):
            Parameter(_masked(np.ones(3)), dtype=dtype)
    with pytest.raises(
        TypeError, match="^data: expected a real numeric array, got dtype timedelta64"
    ):
        Parameter(np.zeros(3, "m8[s]"))
    np.testing.assert_array_equal(Parameter(np.ma.masked_array([1.0, 2.0])).data, [1, 2])


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop"])
def test_optimizers_refuse_masked_gradients(name):
    p, q = Parameter(np.ones((2, 3), f32)), Parameter(np.ones(4, f32))
    opt = getattr(optim, name)([p, q], lr=0.1)
    p.grad = np.ones((2, 3), f32)
    q.grad = _masked(np.full(4, 1e9, f32))
    with pytest.raises(ValueError, match=rf"^step: parameter 1: grad: {MASKED}"):
        opt.step()
    assert opt.step_count == 0
    np.testing.assert_array_equal(p.data, 1)  # the parameter before it did not move either
    np.testing.assert_array_equal(q.data, 1)
    with pytest.raises(ValueError, match=rf"^clip_grad_norm: parameter 1: grad: {MASKED}"):
        optim.clip_grad_norm([p, q], 1.0)
    np.testing.assert_array_equal(p.grad, 1)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_optimizer_load_state_dict_refuses_masked_state_arrays(name):
    kw = {"momentum": 0.9} if name == "SGD" else {}
    p = Parameter(np.ones(3, f32))
    opt = getattr(optim, name)([p], lr=0.1, **kw)
    p.grad = np.ones(3, f32)
    opt.step()
    sd = opt.state_dict()
    key = next(iter(sd["arrays"]))
    fresh = getattr(optim, name)([Parameter(np.ones(3, f32))], lr=0.1, **kw)
    bad = {**sd, "arrays": {**sd["arrays"], key: _masked(sd["arrays"][key])}}
    with pytest.raises(ValueError, match=rf"^load_state_dict: {key}: {MASKED}"):
        fresh.load_state_dict(bad)
    assert fresh.step_count == 0 and not fresh.state[0]


def test_nn_refuses_masked_inputs_ids_and_targets():
    lin = nn.Linear(3, 2, seed=0)
    with pytest.raises(ValueError, match=rf"^x: {MASKED}"):
        lin(_masked(np.ones((4, 3), f32)))
    lin(np.ones((4, 3), f32))
    with pytest.raises(ValueError, match=rf"^dy: {MASKED}"):
        lin.backward(_masked(np.ones((4, 2), f32)))
    emb = nn.Embedding(5, 3, seed=0)
    with pytest.raises(ValueError, match=rf"^ids: {MASKED}"):
        emb(_masked(np.array([1, 2, 99])))  # 99 is masked: was read (and raised IndexError)
    with pytest.raises(ValueError, match=rf"^targets: {MASKED}"):
        nn.CrossEntropyLoss()(np.zeros((3, 5), f32), _masked(np.array([1, 2, 3])))
    for inplace in (False, True):  # (the in-place path took the masked array's buffer as is)
        with pytest.raises(ValueError, match=rf"^logits: {MASKED}"):
            nn.softmax_cross_entropy(
                _masked(np.zeros((3, 5), f32)), np.array([1, 2, 3]), inplace=inplace
            )
    layer = lstm_fast.LSTM(3, 4, seed=0)
    with pytest.raises(ValueError, match=rf"^ids: {MASKED}"):
        layer.forward_embedded(_masked(np.zeros((2, 2), np.int64)), emb)


# ---- torch tensors in the NumPy API -----------------------------------------------------------


def _neg_bit(t):
    """``t``'s values as a contiguous float tensor with the negative bit set (the lazy negation
    torch's conjugate views use: ``z.conj().imag`` of a complex z is a strided one)."""
    import torch

    out = torch._neg_view(-t)
    assert out.is_neg() and out.is_contiguous()
    return out


def test_numpy_api_names_meta_and_sparse_tensors_and_reads_negative_bit_ones(data):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(data[0])
    layer = lstm_fast.LSTM(I, H, seed=0)
    want = layer(data[0])[0]
    np.testing.assert_array_equal(layer(_neg_bit(x))[0], want)
    with pytest.raises(
        ValueError, match="^input: expected a tensor with data, got one on the meta"
    ):
        layer(torch.empty(T, B, I, device="meta"))
    with pytest.raises(
        ValueError, match="^input: expected a dense tensor, got layout torch.sparse"
    ):
        layer(x.to_sparse())
    with pytest.raises(ValueError, match="^h_0: expected a tensor with data"):
        layer(x, (torch.empty(1, B, H, device="meta"), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match="^lengths: expected a tensor with data"):
        layer(x, lengths=torch.empty(B, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="^batch_sizes: expected a dense tensor"):
        ops.lstm_forward(*data, batch_sizes=torch.tensor([2, 2, 1]).to_sparse())
    layer.eval()
    got = layer.step(_neg_bit(x[0]))[0].copy()  # (step's y lives in its buffers)
    np.testing.assert_array_equal(got, layer.step(data[0][0])[0])
    with pytest.raises(ValueError, match="^x_t: expected a tensor with data"):
        layer.step(torch.empty(B, I, device="meta"))
    cell = lstm_fast.LSTMCell(I, H, seed=0)
    np.testing.assert_array_equal(cell(_neg_bit(x[0]))[0], cell(data[0][0])[0])
    with pytest.raises(ValueError, match="^input: expected a dense tensor"):
        cell(x[0].to_sparse())
    with pytest.raises(ValueError, match="^data: expected"):
        Parameter(torch.empty(3, device="meta"))
    np.testing.assert_array_equal(Parameter(_neg_bit(torch.ones(3))).data, 1)


# ---- torch drop-in: negative-bit and sparse tensors, as torch's modules take them ---------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("stack", [(1, False), (2, True)])
def test_dropin_layers_take_negative_bit_inputs_and_states(kind, stack):
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    torch.manual_seed(0)
    L, bi = stack
    ours = getattr(lft, kind)(I, H, num_layers=L, bidirectional=bi)
    ref = getattr(torch.nn, kind)(I, H, num_layers=L, bidirectional=bi)
    ref.load_state_dict(ours.state_dict())
    base = torch.randn(T, B, I, requires_grad=True)
    h = torch.randn(L * (2 if bi else 1), B, H)
    for grad in (False, True):
        results = []
        for m in (ours, ref):
            base.grad = None
            with torch.set_grad_enabled(grad):
                x = _neg_bit(base)  # differentiable: its gradient reaches base
                hx = (_neg_bit(h), _neg_bit(h)) if kind == "LSTM" else _neg_bit(h)
                y, _ = m(x, hx)
            if grad:
                y.square().sum().backward()
            results.append((y.detach(), None if base.grad is None else base.grad.clone()))
        torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
        if grad:
            torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_dropin_cells_take_negative_bit_and_sparse_tensors(kind):
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    torch.manual_seed(0)
    ours = getattr(lft, kind)(I, H)
    ref = getattr(torch.nn, kind)(I, H)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(B, I)
    h = torch.randn(B, H)
    # (torch's LSTMCell takes a sparse state too; its GRUCell and RNNCell raise for one)
    sparse_h = h.to_sparse() if kind == "LSTMCell" else h
    for xin, hin in ((_neg_bit(x), _neg_bit(h)), (x.to_sparse(), sparse_h)):
        hx = (hin, h) if kind == "LSTMCell" else hin
        got, want = ours(xin, hx), ref(xin, hx)
        got, want = (got, want) if kind == "LSTMCell" else ((got,), (want,))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_dropin_lstm_takes_a_sparse_state_as_torch_does():
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    torch.manual_seed(0)
    ours, ref = lft.LSTM(I, H), torch.nn.LSTM(I, H)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    h = torch.randn(1, B, H)
    hx = (h.to_sparse(), h)
    torch.testing.assert_close(ours(x, hx)[0], ref(x, hx)[0], atol=1e-5, rtol=1e-5)


# ---- sizes beyond memory ------------------------------------------------------------------------


def test_embedding_refuses_ids_beyond_memory_before_scanning_them():
    """2**40 ids (a broadcast view) were scanned for their range for minutes before NumPy's
    MemoryError at the gather: now refused at once, naming ids (a child process, so that a
    regression fails the test instead of hanging the suite)."""
    code = textwrap.dedent(
        """
        import numpy as np
        from numpy.lib.stride_tricks import as_strided
        from lstm_fast import nn
        ids = as_strided(np.zeros(1, np.int64), shape=(2**40,), strides=(0,))
        try:
            nn.Embedding(10, 3)(ids)
        except MemoryError as e:
            print("MemoryError", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MemoryError ids: 1099511627776 ids of shape (1099511627776,)")
    assert "more than this machine's" in out.stdout


def test_huge_views_name_the_argument_in_their_memory_error():
    from numpy.lib.stride_tricks import as_strided

    huge = as_strided(np.zeros(1, f32), shape=(2**40, 2, I), strides=(0, 0, 0))
    layer = lstm_fast.LSTM(I, H, seed=0)
    with pytest.raises(MemoryError, match=r"^input: .*C-contiguous float32 copy"):
        layer(huge)
    with pytest.raises(MemoryError, match=r"^x_t: "):
        layer.eval().step(huge[:, 0])
    w_ih, w_hh = np.zeros((4 * H, I), f32), np.zeros((4 * H, H), f32)
    with pytest.raises(MemoryError, match=r"^x: "):  # check_finite's scan of it
        ops.lstm_forward(huge, w_ih, w_hh, check_finite=True)
    lens = as_strided(np.zeros(1, np.int64), shape=(2**40,), strides=(0,))
    with pytest.raises(MemoryError, match=r"^batch_sizes: "):
        ops.lstm_forward(
            np.zeros((2, 3, 3), f32),
            np.zeros((16, 3), f32),
            np.zeros((16, 4), f32),
            batch_sizes=lens,
        )


# ---- the NumPy reference ------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["lstm_forward", "gru_forward", "rnn_forward"])
@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda a: a.astype(np.complex64), TypeError, f"{REAL}, got dtype complex64"),
        (lambda a: a.astype(str), TypeError, f"{REAL}, got dtype <U"),
        (lambda a: a.astype(object), TypeError, f"{REAL}, got dtype object"),
        (lambda a: a > 0, TypeError, f"{REAL}, got dtype bool"),
        (lambda a: a.astype("m8[s]"), TypeError, f"{REAL}, got dtype timedelta"),
        (lambda a: _masked(a), ValueError, "expected an array without masked values"),
    ],
    ids=["complex", "str", "object", "bool", "timedelta", "masked"],
)
def test_reference_refuses_what_it_would_misread(fn, make, exc, match):
    """The reference cast complex values to real (a ComplexWarning only: the imaginary part
    dropped), parsed strings as numbers, took booleans, objects and durations as numbers and
    read masked values as data."""
    from lstm_fast import reference

    rng = np.random.default_rng(0)
    G = {"lstm_forward": 4, "gru_forward": 3, "rnn_forward": 1}[fn]
    x = rng.standard_normal((T, B, I)).astype(f32)
    w_ih = rng.standard_normal((G * H, I)).astype(f32)
    w_hh = rng.standard_normal((G * H, H)).astype(f32)
    run = getattr(reference, fn)
    with pytest.raises(exc, match=f"^x: {match}"):
        run(make(x), w_ih, w_hh)
    with pytest.raises(exc, match=f"^weight_hh: {match}"):
        run(x, w_ih, make(w_hh))
    with pytest.raises(exc, match=f"^h0: {match}"):
        run(x, w_ih, w_hh, None, None, make(np.ones((B, H), f32)))
    run(x.astype(np.int64), w_ih, w_hh)  # integers are numbers: computed in float64


# ---- torch's masked and nested tensors ---------------------------------------------------------


def _masked_tensor(torch, t):
    import warnings

    with warnings.catch_warnings():  # (torch.masked is a prototype: it warns so)
        warnings.simplefilter("ignore")
        mask = torch.ones(t.shape, dtype=torch.bool)
        mask.view(-1)[0] = False
        return torch.masked.masked_tensor(t, mask)


@pytest.mark.filterwarnings("ignore:The PyTorch API of MaskedTensors")
def test_masked_and_nested_tensors_are_refused_naming_the_argument():
    """torch.masked's MaskedTensor failed in ``.numpy()`` ("not supported for tensor
    subclasses") and a jagged nested tensor in ``to_dense``, naming nothing; now the NumPy API
    and the drop-in modules say which argument and what to do (torch's own modules fail on
    both, in their dispatch)."""
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    x = torch.randn(T, B, I)
    mt = _masked_tensor(torch, x)
    nt = torch.nested.nested_tensor([torch.randn(3, I), torch.randn(2, I)], layout=torch.jagged)
    layer = lstm_fast.LSTM(I, H, seed=0)
    with pytest.raises(ValueError, match=r"^input: expected a tensor without a mask, got a torch"):
        layer(mt)
    with pytest.raises(ValueError, match=r"^input: expected a dense tensor, got layout torch.jag"):
        layer(nt)
    with pytest.raises(ValueError, match=r"^h_0: expected a tensor without a mask"):
        layer(x.numpy(), (_masked_tensor(torch, torch.zeros(1, B, H)), np.zeros((1, B, H), f32)))
    with pytest.raises(ValueError, match=r"^load_state_dict: weight_ih_l0: expected a tensor wi"):
        sd = layer.state_dict()
        layer.load_state_dict({**sd, "weight_ih_l0": _masked_tensor(torch, torch.zeros(4 * H, I))})
    for m in (lft.LSTM(I, H), lft.GRU(I, H)):
        with pytest.raises(TypeError, match=r"^lstm_fast.torch.\w+: input: expected a tensor wi"):
            m(mt)
        with pytest.raises(RuntimeError, match=r"input: expected a strided \(dense\) tensor, got"):
            m(nt)
    with pytest.raises(TypeError, match=r"^lstm_fast.torch.LSTMCell: hx\[0\]: expected a tens"):
        lft.LSTMCell(I, H)(x[0], (_masked_tensor(torch, torch.zeros(B, H)), torch.zeros(B, H)))


# ---- the data pipeline's id arrays -------------------------------------------------------------


def test_ids_digest_and_batcher_refuse_what_they_would_misread():
    """``ids_digest`` truncated float ids (1.7 and 1 had one fingerprint), wrapped ids beyond
    int32 (each now has a digest of its own: test_review27_leftovers) and read masked values;
    ``BPTTBatcher`` read masked values as ids."""
    from lstm_fast.data import BPTTBatcher, ids_digest

    assert ids_digest(np.arange(5)) == ids_digest([0, 1, 2, 3, 4])
    assert ids_digest([]) == ids_digest(np.array([], np.int64))
    assert ids_digest(np.array([1.7, 2.0])) != ids_digest(np.array([1, 2]))
    assert ids_digest(np.array([2**32 + 1])) != ids_digest(np.array([1]))
    with pytest.raises(ValueError, match=rf"^ids: {MASKED}"):
        ids_digest(_masked(np.arange(5)))
    with pytest.raises(ValueError, match=rf"^ids: {MASKED}"):
        BPTTBatcher(_masked(np.arange(20)), batch_size=2, seq_len=3)


def test_numpy_layer_names_a_packed_sequence_of_sparse_data():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    ps = pack_padded_sequence(torch.randn(T, B, I), torch.tensor([3, 1]), enforce_sorted=False)
    layer = lstm_fast.LSTM(I, H, seed=0)
    sparse = PackedSequence(ps.data.to_sparse(), *ps[1:])
    with pytest.raises(ValueError, match=r"^input.data: expected a dense tensor, got layout"):
        layer(sparse)  # (torch's unpacking raised "full(...) is not implemented for sparse")
    y, _ = layer(ps)
    dy = PackedSequence(torch.ones_like(y.data).to_sparse(), *y[1:])
    with pytest.raises(ValueError, match=r"^dy.data: expected a dense tensor, got layout"):
        layer.backward(dy)
    layer.backward(PackedSequence(torch.ones_like(y.data), *y[1:]))


# ---- optimizer state arrays set by hand ---------------------------------------------------------

_OPTS = [
    ("SGD", {"momentum": 0.9}),
    ("Adam", {}),
    ("AdamW", {"weight_decay": 0.1}),
    ("Adagrad", {}),
    ("RMSprop", {"momentum": 0.5, "centered": True}),
]


def _stepped(name, kw):
    p0, p1 = Parameter(np.ones((2, 3), f32)), Parameter(np.ones((2, 3), f32))
    opt = getattr(optim, name)([p0, p1], lr=0.1, **kw)
    p0.grad, p1.grad = np.full((2, 3), 0.5, f32), np.full((2, 3), -0.25, f32)
    opt.step()
    return opt, p0, p1


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("name, kw", _OPTS, ids=[o[0] for o in _OPTS])
@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (_read_only, ValueError, "expected a writeable array, got a read-only one"),
        (
            lambda a: a.astype(np.int32),
            TypeError,
            "expected a floating-point array, got dtype int32",
        ),
        (lambda a: a.tolist(), TypeError, "expected a floating-point array, got list"),
        (lambda a: _masked(a), ValueError, MASKED),
    ],
    ids=["read-only", "int", "list", "masked"],
)
def test_optimizer_state_set_by_hand_is_checked_before_any_update(name, kw, bad, exc, match):
    """A state array replaced by hand raised in the middle of ``step`` ("output array is
    read-only", a ufunc casting error, "'list' object has no attribute 'shape'") after the
    parameters before it had moved; now refused first, naming the parameter and slot."""
    opt, p0, p1 = _stepped(name, kw)
    slot = next(iter(opt.state[1]))
    opt.state[1][slot] = bad(opt.state[1][slot])
    before = p0.data.copy(), p1.data.copy(), opt.step_count
    with pytest.raises(exc, match=rf"^step: parameter 1: state {slot}: {match}"):
        opt.step()
    np.testing.assert_array_equal(p0.data, before[0])
    np.testing.assert_array_equal(p1.data, before[1])
    assert opt.step_count == before[2]


@pytest.mark.parametrize("name, kw", _OPTS, ids=[o[0] for o in _OPTS])
def test_optimizers_refuse_a_masked_parameter_before_any_update(name, kw):
    opt, p0, p1 = _stepped(name, kw)
    p1.data = _masked(p1.data)  # (assigned past Parameter's checks)
    before = p0.data.copy(), opt.step_count
    with pytest.raises(ValueError, match=rf"^step: parameter 1: data: {MASKED}"):
        opt.step()
    np.testing.assert_array_equal(p0.data, before[0])
    assert opt.step_count == before[1]


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("layout", ["fortran", "strided", "float64"])
def test_adam_state_in_another_layout_takes_the_numpy_path(name, layout):
    """The fused kernel refused a state array in another layout or dtype mid-step; such a
    state now goes through the NumPy update (the same arithmetic)."""
    kw = dict(_OPTS)[name]
    want, q0, q1 = _stepped(name, kw)
    opt, p0, p1 = _stepped(name, kw)
    for slot in ("exp_avg", "exp_avg_sq"):
        a = opt.state[1][slot]
        if layout == "fortran":
            a = np.asfortranarray(a)
        elif layout == "strided":
            a = np.repeat(a, 2, axis=1)[:, ::2]
        else:
            a = a.astype(np.float64)
        opt.state[1][slot] = a
    for o in (want, opt):
        o.step()
    np.testing.assert_array_equal(p0.data, q0.data)
    np.testing.assert_allclose(p1.data, q1.data, rtol=1e-6, atol=1e-7)
