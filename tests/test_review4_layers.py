"""Edge cases found in the fourth review (a bad-input audit of the layers, cells, weight loading
and the torch modules) and the cells' inference short path."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import interop
from lstm_fast import nn as lnn

CELLS = [lstm_fast.LSTMCell, lstm_fast.GRUCell, lstm_fast.RNNCell]


def _state(cls, rng, B, H, contiguous=True):
    h = rng.standard_normal((B, H)).astype(np.float32)
    if not contiguous:
        h = np.asfortranarray(h)
    return (h, (h * 0.5).astype(np.float32)) if cls is lstm_fast.LSTMCell else h


def _tup(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("cls", CELLS)
@pytest.mark.parametrize("B,I,H", [(1, 7, 17), (3, 33, 65), (2, 1, 1), (5, 16, 32)])
def test_cell_inference_short_path_is_the_training_call_bitwise(cls, B, I, H):
    """An eval-mode cell call goes straight to the core (no per-call Python of the general
    path): its outputs are bitwise those of the training-mode call and of the general path
    (taken for a float64 input or a non-contiguous state), with and without hx."""
    rng = np.random.default_rng(3)
    cell = cls(I, H, seed=1)
    x = rng.standard_normal((B, I)).astype(np.float32)
    for hx in (None, _state(cls, rng, B, H)):
        cell.train()
        want = _tup(cell(x, hx))
        cell.eval()
        got = _tup(cell(x, hx))
        general = _tup(cell(x.astype(np.float64), hx))
        for a, b, c in zip(want, got, general):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
            assert b.shape == (B, H) and b.dtype == np.float32
    # a Fortran-ordered state takes the general path: the same numbers
    hx = _state(cls, rng, B, H)
    hxf = tuple(np.asfortranarray(a) for a in _tup(hx))
    hxf = hxf if cls is lstm_fast.LSTMCell else hxf[0]
    for a, b in zip(_tup(cell(x, hx)), _tup(cell(x, hxf))):
        np.testing.assert_array_equal(a, b)
    # outputs are new arrays: the next call does not overwrite them
    first = _tup(cell(x, hx))[0]
    keep = first.copy()
    cell(x + 1, hx)
    np.testing.assert_array_equal(first, keep)


@pytest.mark.parametrize("cls", CELLS)
def test_cell_inference_short_path_checks_like_the_general_path(cls):
    cell = cls(4, 5, seed=0).eval()
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"input: expected shape \(B, I=4\)"):
        cell(np.ones((2, 3), np.float32))
    bad = (np.zeros((3, 5), np.float32),) * 2 if cls is lstm_fast.LSTMCell else np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"hx: h_0: expected shape \(2, 5\)"):
        cell(x, bad)
    if cls is lstm_fast.LSTMCell:
        with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\)"):
            cell(x, np.zeros((2, 5), np.float32))
    assert _tup(cell(np.ones((0, 4), np.float32)))[0].shape == (0, 5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_embedded_eval_embedding_is_frozen(bidirectional):
    """An eval-mode embedding: the fused path (unidirectional) wrote its gradient anyway, the
    fallback (bidirectional) raised from Embedding.backward after the LSTM's gradients were
    accumulated. Now it is frozen on both paths; the LSTM's gradients are those of a plain
    forward on the looked-up rows."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, (5, 3))
    dy_shape = (5, 3, 10 if bidirectional else 5)
    dy = rng.standard_normal(dy_shape).astype(np.float32)
    emb = lnn.Embedding(7, 4, seed=0).eval()
    m = lstm_fast.LSTM(4, 5, bidirectional=bidirectional, seed=0)
    y, _ = m.forward_embedded(ids, emb)
    dx, _ = m.backward(dy)
    assert dx is None and not emb.weight.grad.any()
    ref = lstm_fast.LSTM(4, 5, bidirectional=bidirectional, seed=0)
    y_ref, _ = ref(emb.weight.data[ids])
    ref.backward(dy, need_dx=False)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6, err_msg=n)
    # in training mode the embedding gets its gradient, as before
    emb.train()
    y, _ = m.forward_embedded(ids, emb)
    m.backward(dy)
    assert emb.weight.grad.any()


def test_loading_into_a_read_only_parameter_changes_nothing():
    """load_state_dict / from_keras / from_onnx wrote parameters one by one: a read-only one
    later in order raised NumPy's "assignment destination is read-only" (naming none) after
    the earlier ones were overwritten."""
    m = lstm_fast.LSTM(4, 5, num_layers=2, seed=0)
    sd = m.state_dict()
    before = {k: v.copy() for k, v in sd.items()}
    m.bias_hh_l1.data.setflags(write=False)
    with pytest.raises(ValueError, match=r"load_state_dict: bias_hh_l1: expected a writeable"):
        m.load_state_dict({k: v + 1 for k, v in sd.items()})
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    m = lstm_fast.LSTM(4, 5, seed=0)
    w0 = m.weight_ih_l0.data.copy()
    m.bias_hh_l0.data.setflags(write=False)
    with pytest.raises(ValueError, match=r"from_keras: bias_hh_l0"):
        interop.from_keras(m, [np.ones((4, 20)), np.ones((5, 20))])
    with pytest.raises(ValueError, match=r"from_onnx: bias_hh_l0"):
        interop.from_onnx(m, np.ones((1, 20, 4)), np.ones((1, 20, 5)))
    np.testing.assert_array_equal(m.weight_ih_l0.data, w0)


@pytest.mark.parametrize("cls", CELLS)
def test_cell_backward_checks_like_the_layers(cls):
    """check_finite cells did not check the upstream gradient (a NaN dh went through);
    GRUCell/RNNCell.backward took and ignored a dc; a bad .grad was reported under the core's
    argument name (dbias_hh, 4H) rather than the parameter's."""
    x = np.ones((2, 4), np.float32)
    c = cls(4, 5, check_finite=True, seed=0)
    c(x)
    dh = np.ones((2, 5), np.float32)
    dh[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"dh: expected finite values"):
        c.backward(dh)
    if cls is not lstm_fast.LSTMCell:
        c = cls(4, 5, seed=0)
        c(x)
        with pytest.raises(TypeError, match=r"no cell state, dc must be None"):
            c.backward(np.ones((2, 5), np.float32), np.ones((2, 5), np.float32))
    c = cls(4, 5, seed=0)
    c(x)
    c.bias_hh.grad = np.zeros(3, np.float32)
    w = c.weight_ih.grad.copy()
    with pytest.raises(ValueError, match=r"bias_hh\.grad: expected shape \(\d+,\)"):
        c.backward(np.ones((2, 5), np.float32))
    np.testing.assert_array_equal(c.weight_ih.grad, w)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_layer_backward_names_a_bad_grad_on_every_path(num_layers):
    """The one-layer path reported "dbias_hh: expected shape (4H=20,)" where the general path
    says "bias_hh_l0.grad: expected shape (20,)"."""
    m = lstm_fast.LSTM(4, 5, num_layers=num_layers, seed=0)
    y, _ = m(np.ones((3, 2, 4), np.float32))
    last = num_layers - 1
    getattr(m, f"bias_hh_l{last}").grad = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=rf"bias_hh_l{last}\.grad: expected shape \(20,\)"):
        m.backward(np.ones_like(y))
    assert not m.weight_ih_l0.grad.any()


@pytest.mark.parametrize("seed", [-1, "a", 1.5, True])
@pytest.mark.parametrize(
    "make", [lambda s: lstm_fast.GRU(3, 4, seed=s), lambda s: lstm_fast.LSTMCell(3, 4, seed=s)]
)
def test_seed_is_checked(make, seed):
    """NumPy's own error (naming no argument) came from default_rng."""
    with pytest.raises((TypeError, ValueError), match=r"seed: expected None or an int >= 0"):
        make(seed)


def test_seed_takes_numpy_generators():
    a = lstm_fast.LSTM(3, 4, seed=np.random.SeedSequence(5))
    b = lstm_fast.LSTM(3, 4, seed=np.random.SeedSequence(5))
    np.testing.assert_array_equal(a.weight_hh_l0.data, b.weight_hh_l0.data)
    lstm_fast.RNNCell(3, 4, seed=np.random.default_rng(1))
    lstm_fast.GRU(3, 4, seed=np.int64(3))


def test_constructor_refuses_parameters_beyond_memory():
    """LSTM(4, 2**40) failed inside NumPy's generator (an allocation error naming nothing);
    num_layers=10**9 allocated layer after layer without end."""
    with pytest.raises(ValueError, match=r"hidden_size=1099511627776.*GiB"):
        lstm_fast.LSTM(4, 2**40)
    with pytest.raises(ValueError, match=r"num_layers=1000000000.*more than this machine"):
        lstm_fast.GRU(4, 4, num_layers=10**9)
    with pytest.raises(ValueError, match=r"LSTMCell\(input_size=4, hidden_size=4398046511104"):
        lstm_fast.LSTMCell(4, 2**42)


def test_torch_modules_refuse_a_malformed_hx():
    """lstm_fast.torch's LSTM took a 3-tuple hx (the third ignored) and GRU/RNN a tuple (the
    second ignored); an LSTM hx of one tensor raised IndexError."""
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    x = torch.randn(3, 2, 4)
    h = torch.zeros(1, 2, 5)
    with pytest.raises(RuntimeError, match=r"LSTM: hx: expected two hidden states"):
        lft.LSTM(4, 5)(x, (h, h, h))
    with pytest.raises(TypeError, match=r"LSTM: hx: expected a tuple \(h_0, c_0\)"):
        lft.LSTM(4, 5)(x, h)
    with pytest.raises(TypeError, match=r"GRU: hx: expected a tensor h_0, got tuple"):
        lft.GRU(4, 5)(x, (h, h))
    with pytest.raises(TypeError, match=r"LSTM: hx\[1\]: expected a tensor"):
        lft.LSTM(4, 5)(x, (h, None))
    y, (hn, cn) = lft.LSTM(4, 5)(x, [h, h])  # a list of two, as torch takes
    assert hn.shape == (1, 2, 5)
    with pytest.raises(TypeError, match=r"replace_rnns: model: expected a torch.nn.Module"):
        lft.replace_rnns(None)
    with pytest.raises(TypeError, match=r"restore_rnns: model"):
        lft.restore_rnns([])


def test_forward_embedded_fallback_checks_the_embedding_grad_first():
    """The fallback path (bidirectional) sent dx to Embedding.backward after the layer's own
    gradients were accumulated: a wrong-shaped embedding gradient failed with the layer's
    gradients already changed."""
    ids = np.zeros((4, 2), np.int64)
    emb = lnn.Embedding(7, 3, seed=0)
    m = lstm_fast.LSTM(3, 5, bidirectional=True, seed=0)
    y, _ = m.forward_embedded(ids, emb)
    emb.weight.grad = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"weight\.grad: expected shape \(V, E\)"):
        m.backward(np.ones_like(y))
    assert not any(p.grad.any() for p in m.parameters())
    emb.weight.grad = None  # starts again from zeros, as the layers' gradients do
    m.backward(np.ones_like(y))
    assert emb.weight.grad.shape == (7, 3) and emb.weight.grad.any()


def test_load_glove_checks_ids_and_values_first(tmp_path):
    """An id >= V raised IndexError after other rows were written, a negative id overwrote a
    row counted from the end, a non-numeric value raised a ValueError naming no file or line."""
    f = tmp_path / "g.txt"
    f.write_text("the 0.1 0.2\nfoo 0.3 0.4\n")
    e = lnn.Embedding(3, 2, seed=0)
    before = e.weight.data.copy()
    for bad in (7, -1, 1.0):
        with pytest.raises(ValueError, match=r"stoi: 'foo': expected an id in \[0, V=3\)"):
            e.load_glove(str(f), {"the": 1, "foo": bad})
        np.testing.assert_array_equal(e.weight.data, before)
    assert e.load_glove(str(f), {"the": 1, "foo": 2}) == 2
    np.testing.assert_array_equal(e.weight.data[2], np.float32([0.3, 0.4]))
    f.write_text("the 0.1 0.2\nfoo 0.3 abc\n")
    with pytest.raises(ValueError, match=r"g\.txt:2: expected 2 numbers, got 'abc'"):
        lnn.load_glove(str(f), {"foo": 1})


def test_small_layers_check_their_seed():
    with pytest.raises(ValueError, match=r"seed: expected None or an int >= 0, got -1"):
        lnn.Embedding(3, 2, seed=-1)
    with pytest.raises(TypeError, match=r"seed: expected None or an int >= 0, got str"):
        lnn.Linear(3, 2, seed="a")
    with pytest.raises(TypeError, match=r"seed"):
        lnn.Dropout(0.5, seed=1.5)


@pytest.mark.parametrize(
    "make",
    [lambda: lstm_fast.LSTM(3, 4, num_layers=2, seed=0), lambda: lstm_fast.GRU(3, 4, seed=0)],
)
def test_unbatched_step_returns_an_unbatched_state(make):
    """step() with an unbatched x_t returned its state as (num_layers, 1, H) where an unbatched
    forward returns h_n as (num_layers, H); the state it returns is taken back as is."""
    m = make().eval()
    lstm = isinstance(m, lstm_fast.LSTM)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    y_seq, hn = m(x)
    s = None
    for t in range(5):
        y_t, s = m.step(x[t], s)
        for a in s if lstm else (s,):
            assert a.shape == (m.num_layers, 4)
    np.testing.assert_allclose(y_t, y_seq[-1], rtol=1e-5, atol=1e-6)
    for a, b in zip(s if lstm else (s,), hn if lstm else (hn,)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a forward's unbatched state continues the stream too, and a batched call after it
    y2, s2 = m.step(x[0], hn)
    assert (s2[0] if lstm else s2).shape == (m.num_layers, 4)
    y3, s3 = m.step(x[:1], None)
    assert (s3[0] if lstm else s3).shape == (m.num_layers, 1, 4)
