"""Edge cases found in review: inputs, shapes and calls the other test files do not cover."""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops

# ---- lstm_fast.torch --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "bidirectional"])
def test_torch_double_backward_is_a_clear_error(kind):
    """The kernels' backward is not itself differentiable: a second-order gradient must raise,
    not silently drop the recurrent layer's terms (loss = rnn(x) + x**3 gave a wrong result)."""
    torch = pytest.importorskip("torch")
    lft = pytest.importorskip("lstm_fast.torch")
    torch.manual_seed(0)
    if kind == "LSTMCell":
        m, x = lft.LSTMCell(3, 4), torch.randn(2, 3, requires_grad=True)
    elif kind == "bidirectional":
        m, x = lft.LSTM(3, 4, bidirectional=True), torch.randn(5, 2, 3, requires_grad=True)
    else:
        m, x = getattr(lft, kind)(3, 4), torch.randn(5, 2, 3, requires_grad=True)

    def first_order():
        out = m(x)
        y = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(y.pow(2).sum() + x.pow(3).sum(), x, create_graph=True)[0]

    g = first_order()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.pow(2).sum(), x)
    with pytest.raises(RuntimeError, match="double backward"):
        first_order().pow(2).sum().backward()
    # create_graph=True alone (no second order) still gives the right first-order gradient
    out = m(x)
    y = out[0] if isinstance(out, tuple) else out
    (plain,) = torch.autograd.grad(y.pow(2).sum() + x.pow(3).sum(), x)
    torch.testing.assert_close(g.detach(), plain)


# ---- the functional API -----------------------------------------------------------------------


def test_unpickled_float32_arrays_are_accepted():
    """An array that went through pickle (multiprocessing, a pickled model) has a float32
    dtype object that is equal to, but not the same object as, np.dtype(np.float32): the core
    rejected it with 'x: expected dtype float32, got float32'."""
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 2, 3, 5
    args = [
        rng.standard_normal((T, B, I), dtype=np.float32),
        rng.standard_normal((4 * H, I), dtype=np.float32),
        rng.standard_normal((4 * H, H), dtype=np.float32),
        rng.standard_normal(4 * H, dtype=np.float32),
        rng.standard_normal(4 * H, dtype=np.float32),
    ]
    copies = [pickle.loads(pickle.dumps(a)) for a in args]
    assert copies[0].dtype == np.float32 and copies[0].dtype is not np.dtype(np.float32)
    want = ops.lstm_forward(*args, training=True)
    got = ops.lstm_forward(*copies, training=True)
    for a, b in zip(want[:3], got[:3]):
        np.testing.assert_array_equal(a, b)
    dy = pickle.loads(pickle.dumps(rng.standard_normal((T, B, H), dtype=np.float32)))
    np.testing.assert_array_equal(
        ops.lstm_backward(got[3], dy).dx, ops.lstm_backward(want[3], dy).dx
    )
    np.testing.assert_array_equal(
        ops.gemm(copies[1], copies[2], trans_a=True), ops.gemm(args[1], args[2], trans_a=True)
    )
    bs = pickle.loads(pickle.dumps(np.array([2, 2, 1, 1], np.int64)))
    np.testing.assert_array_equal(
        ops.lstm_forward(*copies, batch_sizes=bs)[0], ops.lstm_forward(*args, batch_sizes=bs)[0]
    )
    # non-native byte order is still refused, naming the argument
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        ops.lstm_forward(args[0].astype(">f4"), *args[1:])
    # check_finite finds NaN in an unpickled array too
    bad = copies[0].copy()
    bad[1, 0, 2] = np.nan
    with pytest.raises(
        ValueError, match=r"x: expected finite values, got NaN at index \(1, 0, 2\)"
    ):
        ops.lstm_forward(bad, *copies[1:], check_finite=True)


# ---- layers and cells -------------------------------------------------------------------------


def _layer_cases():
    import lstm_fast

    return [
        (lambda: lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0), (5, 2, 3)),
        (lambda: lstm_fast.LSTM(3, 4, proj_size=2, seed=0), (5, 2, 3)),
        (lambda: lstm_fast.GRU(3, 4, seed=0), (5, 2, 3)),
        (lambda: lstm_fast.RNN(3, 4, seed=0), (5, 2, 3)),
        (lambda: lstm_fast.LSTMCell(3, 4, seed=0), (2, 3)),
        (lambda: lstm_fast.GRUCell(3, 4, seed=0), (2, 3)),
    ]


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_after_training_forward(case, how):
    """copy.deepcopy / pickle of a layer that ran a training forward (e.g. keeping the best
    model during training) raised 'cannot pickle LSTMCache'."""
    make, shape = _layer_cases()[case]
    layer = make()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = layer(x)
    dup = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    for (n, p), (m, q) in zip(layer.named_parameters(), dup.named_parameters()):
        assert n == m and np.array_equal(p.data, q.data) and p.data is not q.data
    # the original can still run its backward; the copy computes the same forward
    first = out[0] if isinstance(out, tuple) else out
    layer.backward(np.ones_like(first))
    again = dup(x)
    np.testing.assert_array_equal(again[0] if isinstance(again, tuple) else again, first)


# ---- interop ------------------------------------------------------------------------------------


def _snapshot(layer):
    return {k: v.copy() for k, v in layer.state_dict().items()}


def _unchanged(layer, snap):
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, snap[k], err_msg=k)


def test_from_keras_checks_everything_before_changing_the_layer():
    """A wrong recurrent kernel left weight_ih_l0 already overwritten; a wrong kernel raised
    NumPy's 'array split does not result in an equal division'."""
    from lstm_fast import interop

    layer = lstm_fast.LSTM(3, 4, seed=0)
    kernel, recurrent, bias = interop.to_keras(lstm_fast.LSTM(3, 4, seed=1))
    snap = _snapshot(layer)
    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \(H, G\) = \(4, 1"):
        interop.from_keras(layer, [kernel, recurrent[:, :8], bias])
    _unchanged(layer, snap)
    with pytest.raises(
        ValueError, match=r"kernel: expected shape \(I, G\) = \(3, 16\), got \(3, 1"
    ):
        interop.from_keras(layer, [kernel[:, :15], recurrent, bias])
    with pytest.raises(ValueError, match=r"bias: expected shape \(G,\) = \(16,\), got \(8,\)"):
        interop.from_keras(layer, [kernel, recurrent, bias[:8]])
    with pytest.raises(ValueError, match="weights: expected"):
        interop.from_keras(layer, [kernel])
    with pytest.raises(ValueError, match=r"k: expected an int in \[0, 1\)"):
        interop.from_keras(layer, [kernel, recurrent, bias], k=1)
    _unchanged(layer, snap)
    with pytest.raises(ValueError, match=r"direction: expected an int in \[0, 1\)"):
        interop.to_keras(layer, direction=1)


def test_from_onnx_checks_everything_before_changing_the_layer():
    """A bad R for the reverse direction raised IndexError after the forward direction (and
    weight_ih_l0_reverse) had been overwritten."""
    from lstm_fast import interop

    layer = lstm_fast.LSTM(3, 4, bidirectional=True, seed=0)
    init = interop.to_onnx(lstm_fast.LSTM(3, 4, bidirectional=True, seed=1))
    snap = _snapshot(layer)
    with pytest.raises(ValueError, match=r"R: expected shape \(D, G, H\) = \(2, 16, 4\)"):
        interop.from_onnx(layer, init["W"], init["R"][:1], init["B"])
    with pytest.raises(ValueError, match=r"B: expected shape \(D, 2G\) = \(2, 32\)"):
        interop.from_onnx(layer, init["W"], init["R"], init["B"][:, :20])
    with pytest.raises(ValueError, match=r"B: expected shape \(D, 2G\)"):
        interop.from_onnx(layer, init["W"], init["R"], init["B"][0])
    with pytest.raises(ValueError, match=r"k: expected an int in \[0, 1\)"):
        interop.to_onnx(layer, k=3)
    _unchanged(layer, snap)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_keras_onnx_without_bias_mean_zero_bias(kind):
    """Keras use_bias=False weights (two arrays) and ONNX without B (whose default is zero)
    left the layer's random initial biases in place; a bias given to a bias=False layer was
    silently dropped."""
    from lstm_fast import interop

    src = getattr(lstm_fast, kind)(3, 4, bias=False, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    want = src(x)[0]
    for load in (
        lambda dst: interop.from_keras(dst, interop.to_keras(src)),
        lambda dst: interop.from_onnx(dst, **interop.to_onnx(src)),
    ):
        dst = getattr(lstm_fast, kind)(3, 4, seed=0)  # with (random) biases
        load(dst)
        np.testing.assert_allclose(dst(x)[0], want, rtol=1e-6, atol=1e-6)
    with_bias = getattr(lstm_fast, kind)(3, 4, seed=2)
    with pytest.raises(ValueError, match="bias: given, but the layer was made with bias=False"):
        interop.from_keras(src, interop.to_keras(with_bias))
    with pytest.raises(ValueError, match="B: given, but the layer was made with bias=False"):
        interop.from_onnx(src, **interop.to_onnx(with_bias))


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_keras_onnx_cells(kind):
    """The cells are accepted by interop's type check, but to_keras raised AttributeError
    ('NoneType' object has no attribute 'shape') and to_onnx 'no attribute num_directions'."""
    from lstm_fast import interop

    a, b, c = (getattr(lstm_fast, kind)(3, 4, seed=s) for s in range(3))
    interop.from_keras(b, interop.to_keras(a))
    interop.from_onnx(c, **interop.to_onnx(a))
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    want = a(x)
    for m in (b, c):
        got = m(x)
        pairs = zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want)))
        for u, v in pairs:
            np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


# ---- optimizers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "rmsprop"])
@pytest.mark.parametrize("bad_grad", ["shape", "scalar"])
def test_optimizer_step_checks_gradients_before_updating(name, bad_grad):
    """A gradient of the wrong shape on a later parameter raised a broadcasting error after the
    earlier parameters (and step_count) were already updated; a scalar grad was broadcast."""
    from lstm_fast import optim
    from lstm_fast.module import Parameter

    params = [Parameter(np.ones((2, 3))), Parameter(np.ones(5))]
    for p in params:
        p.grad[...] = 0.5
    opt = optim.make_optimizer(name, params, lr=0.1)
    opt.step()
    data, state = [p.data.copy() for p in params], opt.state_dict()
    params[1].grad = np.ones(4, np.float32) if bad_grad == "shape" else np.float32(1.0)
    with pytest.raises(ValueError, match=r"step: parameter 1: grad: expected an array of shape"):
        opt.step()
    for p, d in zip(params, data):
        np.testing.assert_array_equal(p.data, d)
    after = opt.state_dict()
    assert after["step"] == state["step"] == 1
    for k, v in state["arrays"].items():
        np.testing.assert_array_equal(after["arrays"][k], v)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("adam", dict(betas=(1.0, 0.999))),
        ("adam", dict(betas=(0.9,))),
        ("adamw", dict(betas=(0.9, -0.1))),
        ("adam", dict(eps=-1.0)),
        ("adam", dict(weight_decay=-1.0)),
        ("sgd", dict(momentum=-1.0)),
        ("sgd", dict(lr=float("nan"))),
        ("rmsprop", dict(alpha=-0.5)),
        ("rmsprop", dict(momentum=float("nan"))),
        ("adagrad", dict(lr_decay=-1.0)),
        ("adagrad", dict(initial_accumulator_value=-1.0)),
    ],
)
def test_optimizer_hyper_parameters_are_checked(name, kw):
    """PyTorch refuses these at construction; here betas=(1.0, 0.999) made the first step
    raise ZeroDivisionError after step_count was incremented, betas=(0.9,) an unpacking error,
    and negative eps / momentum / weight_decay / alpha / lr_decay ran silently."""
    from lstm_fast import optim
    from lstm_fast.module import Parameter

    key = next(iter(kw))
    with pytest.raises(ValueError, match=rf"^{key}: expected"):
        optim.make_optimizer(name, [Parameter(np.ones(3))], **{"lr": 0.1, **kw})
    # and in a loaded state
    opt = optim.make_optimizer(name, [Parameter(np.ones(3))], lr=0.1)
    sd = opt.state_dict()
    sd["hyper"] = {**sd["hyper"], **kw}
    with pytest.raises(ValueError, match=rf"load_state_dict: hyper: {key}: expected"):
        opt.load_state_dict(sd)
    assert opt.lr == 0.1 and opt.step_count == 0


# ---- cells --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_backward_checks_state_gradient_shapes(kind):
    """Cell.backward reshaped dh/dc to (-1, H): an (8,) gradient for a (2, 4) output was
    accepted as if it were (2, 4), and a (2, 5) one raised NumPy's 'cannot reshape array'."""
    cell = getattr(lstm_fast, kind)(3, 4, seed=0)
    cell(np.zeros((2, 3), np.float32))
    for bad in (np.zeros(8), np.zeros((2, 5)), np.zeros((1, 8)), np.zeros((4, 2))):
        with pytest.raises(ValueError, match=r"dh: expected shape \(B=2, H=4\) \(the output's\)"):
            cell.backward(bad)
    if kind == "LSTMCell":
        with pytest.raises(ValueError, match=r"dc: expected shape \(B=2, H=4\)"):
            cell.backward(np.zeros((2, 4)), np.zeros(8))
    cell(np.zeros(3, np.float32))  # unbatched: (H,)
    with pytest.raises(ValueError, match=r"dh: expected shape \(H=4,\)"):
        cell.backward(np.zeros((1, 4)))
    dx = cell.backward(np.ones(4))[0]
    assert dx.shape == (3,)


# ---- layer constructors -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("arg, value", [("bias", "False"), ("bias", None), ("batch_first", "yes")])
def test_layer_bool_options_must_be_bools(kind, arg, value):
    """LSTM(3, 4, bias="False") built a layer with biases and batch_first="yes" a batch-first
    one; torch.nn.LSTM raises TypeError for both."""
    with pytest.raises(TypeError, match=rf"{arg}: expected a bool, got"):
        getattr(lstm_fast, kind)(3, 4, **{arg: value})


# ---- streaming step ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_step_checks_state_and_out_before_running(kind):
    """step() broadcast a wrong-shaped state into its buffers ((H,) for (L, B, H)), unpacked a
    single (2, B, H) array as the LSTM's (h, c) pair, and checked ``out`` only after the step
    had advanced the internal state."""
    layer = getattr(lstm_fast, kind)(3, 4, num_layers=2, seed=0).eval()
    lstm = kind == "LSTM"
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    _, state = layer.step(x)
    kept = tuple(np.copy(a) for a in (state if lstm else (state,)))
    y_want, _ = layer.step(x, state)
    _, state = layer.step(x)  # the same first step again

    def bad(s):
        return (s, s) if lstm else s

    for s in (np.zeros(4, np.float32), np.zeros((2, 3, 4), np.float32), np.ones((1, 1, 1))):
        with pytest.raises(ValueError, match=r"state.*: expected shape \(num_layers, B, H\)"):
            layer.step(x, bad(s))
    if lstm:
        with pytest.raises(TypeError, match=r"state: expected a tuple \(h, c\)"):
            layer.step(x, np.zeros((2, 2, 4), np.float32))
    else:
        with pytest.raises(TypeError, match="state: expected one array h"):
            layer.step(x, (np.zeros((2, 2, 4), np.float32),))
    with pytest.raises(ValueError, match=r"out: expected a writeable array of shape \(2, 4\)"):
        layer.step(x, state, out=np.zeros(5, np.float32))
    # nothing moved: the state still is the first step's and the next step is as before
    for a, b in zip(state if lstm else (state,), kept):
        np.testing.assert_array_equal(a, b)
    y, _ = layer.step(x, state)
    np.testing.assert_array_equal(y, y_want)
    # a copy of the state (not the internal buffers) is accepted
    _, state = layer.step(x)
    copied = tuple(np.copy(a) for a in state) if lstm else np.copy(state)
    np.testing.assert_array_equal(layer.step(x, copied)[0], y_want)


# ---- models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ensemble", [False, True])
def test_predict_keeps_an_eval_model_in_eval_mode(ensemble):
    """predict_log_proba ended with model.train(): a model put in eval mode for serving came
    back in training mode (dropout on, so later calls were random)."""
    from lstm_fast.models.classifier import (
        ClassifierEnsemble,
        SequenceClassifier,
        predict_log_proba,
    )

    members = [
        SequenceClassifier(9, 2, 4, 5, dropout=0.5, pad_id=1, seed=s)
        for s in range(2 if ensemble else 1)
    ]
    model = ClassifierEnsemble(members) if ensemble else members[0]
    model.eval()
    ids, lengths = np.array([[2, 5], [3, 1], [4, 1]]), np.array([3, 1])
    before = model(ids, lengths)
    predict_log_proba(model, [np.array([2, 3, 4]), np.array([5])])
    assert not any(sub.training for m in members for sub in m.modules())
    np.testing.assert_array_equal(model(ids, lengths), before)


@pytest.mark.parametrize(
    "lengths, error",
    [
        ([0, 2], r"lengths: expected values in \[1, T=4\]"),
        ([-1, 2], r"lengths: expected values in \[1, T=4\]"),
        ([5, 2], r"lengths: expected values in \[1, T=4\]"),
        ([4], r"lengths: expected shape \(B=2,\)"),
        ([4, 2, 1], r"lengths: expected shape \(B=2,\)"),
        ([2.5, 1.0], "lengths: expected integers"),
    ],
)
def test_classifier_checks_lengths(lengths, error):
    """SequenceClassifier took lengths unchecked: 0 gave NaN logits (mean pool) or the last
    padded step (last pool), -1 and 2.5 were used as given / truncated, [4] was broadcast to
    every row, and T + 1 raised NumPy's IndexError."""
    from lstm_fast.models.classifier import SequenceClassifier

    model = SequenceClassifier(10, 3, embed_size=4, hidden_size=5, seed=0)
    with pytest.raises((ValueError, TypeError), match=error):
        model(np.ones((4, 2), np.int64), lengths)


# ---- torch tensors at the NumPy API -------------------------------------------------------------


def test_bfloat16_torch_tensors_load_and_run():
    """A bfloat16 state dict (torch.nn.LSTM(...).bfloat16()) or input tensor raised torch's
    'Got unsupported ScalarType BFloat16' (NumPy has no bfloat16); torch.nn.LSTM loads such a
    state dict by converting, and so does lstm_fast now."""
    torch = pytest.importorskip("torch")
    from lstm_fast import interop

    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4).bfloat16()
    sd = ref.state_dict()
    layer = lstm_fast.LSTM(3, 4, seed=0)
    layer.load_state_dict(sd)
    for name, value in sd.items():
        np.testing.assert_array_equal(getattr(layer, name).data, value.float().numpy())
    init = {k: torch.from_numpy(v).bfloat16() for k, v in interop.to_onnx(layer).items()}
    interop.from_onnx(layer, **init)
    x = torch.randn(5, 2, 3).bfloat16()
    y, _ = layer(x)
    np.testing.assert_array_equal(y, layer(x.float().numpy())[0])


def test_scalar_input_and_state_are_refused():
    """A 0-d input or state was made 1-d on conversion: LSTMCell(1, H) took a scalar input as
    an unbatched (1,) one, GRUCell(I, 1) a scalar h_0, and a layer's error said it got shape (1,)
    for a scalar. torch refuses 0-d input for the cells and layers."""
    with pytest.raises(ValueError, match=r"input: expected shape \(B, I=1\) or \(I,\), got \(\)"):
        lstm_fast.LSTMCell(1, 4, seed=0)(np.float32(1.0))
    with pytest.raises(ValueError, match=r"hx: h_0: expected shape \(1,\), got \(\)"):
        lstm_fast.GRUCell(3, 1, seed=0)(np.ones(3, np.float32), np.float32(0.5))
    with pytest.raises(ValueError, match=r"got 0 with shape \(\)"):
        lstm_fast.LSTM(1, 4, seed=0)(np.float32(1.0))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_empty_lengths_list_for_an_empty_batch(bidirectional):
    """lengths=[] for a batch of 0 raised 'lengths: expected integers, got dtype float64'
    ([] is float64 to NumPy), while np.array([], np.int64) worked (ops accepts [] too)."""
    layer = lstm_fast.GRU(3, 4, bidirectional=bidirectional, seed=0)
    y, h = layer(np.zeros((5, 0, 3), np.float32), lengths=[])
    assert y.shape == (5, 0, 4 * (2 if bidirectional else 1)) and h.shape[1] == 0


def test_step_from_two_threads_on_one_layer():
    """step() kept one set of state buffers per layer: two Python threads streaming through the
    same eval-mode layer (each carrying a copy of its own state) overwrote each other's slots
    and got wrong outputs."""
    import threading

    layer = lstm_fast.LSTM(16, 32, num_layers=2, seed=0).eval()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((100, 2, 16)).astype(np.float32) for _ in range(2)]
    want = [layer(x)[0] for x in xs]
    got = [None, None]
    start = threading.Barrier(2)

    def stream(i):
        start.wait()
        state, ys = None, []
        for x_t in xs[i]:
            y, state = layer.step(x_t, state)
            ys.append(y.copy())
            state = tuple(a.copy() for a in state)
        got[i] = np.stack(ys)

    for _ in range(3):
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# ---- data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, error",
    [
        (np.arange(10) + 0.7, "ids: expected a 1-D integer array"),
        (np.full(10, 2**31 + 5), r"ids: expected token ids in \[0, 2\*\*31\)"),
        (np.full(10, -1), r"ids: expected token ids in \[0, 2\*\*31\)"),
        (np.arange(10).reshape(2, 5), "ids: expected a 1-D integer array"),
    ],
)
def test_bptt_batcher_checks_ids(ids, error):
    """BPTTBatcher cast ids to int32 unchecked: float ids were truncated (0.7 -> 0) and ids of
    2**31 and more wrapped to negative numbers; a 2-D array was reported as too few tokens."""
    from lstm_fast.data import BPTTBatcher

    with pytest.raises((TypeError, ValueError), match=error):
        BPTTBatcher(ids, 2, 2)


# ---- nn -----------------------------------------------------------------------------------------


def test_linear_and_embedding_backward_check_dy_shape():
    """Linear.backward reshaped dy to (-1, O) and checked only the row count: a (2, 4) dy for a
    (4, 2) output was taken as transposed data. Embedding.backward reshaped it to (N, E): a
    (3, 4) dy for a (2, 2, 3) output passed, a (3, 3) one raised NumPy's reshape error."""
    from lstm_fast.nn import Embedding, Linear

    lin = Linear(3, 2, seed=0)
    lin(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(4, 2\) \(the output's\)"):
        lin.backward(np.ones((2, 4), np.float32))
    lin(np.ones((2, 2, 3), np.float32))
    assert lin.backward(np.ones((4, 2), np.float32)).shape == (2, 2, 3)  # (N, O) still taken
    emb = Embedding(10, 3, seed=0)
    emb(np.array([[1, 2], [3, 4]]))
    for bad in ((3, 4), (3, 3), (2, 6)):
        with pytest.raises(ValueError, match=r"dy: expected shape \(2, 2, 3\) \(the output's\)"):
            emb.backward(np.ones(bad, np.float32))
    emb.backward(np.ones((4, 3), np.float32))
    emb.backward(np.ones((2, 2, 3), np.float32))


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(prime_ids=[-1], length=5), r"prime_ids: expected ids in \[0, V=5\)"),
        (dict(prime_ids=[1.7], length=3), "prime_ids: expected integer token ids"),
        (dict(prime_ids=[1], length=5, temperature=float("nan")), "temperature: expected"),
        (dict(prime_ids=[1], length=5, top_k=-3), "top_k: expected an int >= 0"),
        (dict(prime_ids=[1], length=-2), "length: expected an int >= 0"),
    ],
)
def test_sampler_checks_its_arguments(kw, error):
    """Sampler.generate took a prime id of -1 as the last vocabulary entry (NumPy's negative
    index), truncated 1.7 to 1, sampled only the last id at temperature NaN, and returned []
    for a negative length."""
    from lstm_fast.models.charlm import CharLM, Sampler

    sampler = Sampler(CharLM(5, 4, 8, 1, seed=0), seed=0)
    with pytest.raises((TypeError, ValueError), match=error):
        sampler.generate(**kw)
    assert not sampler.h.any() and not sampler.c.any()  # nothing was fed
    with pytest.raises(IndexError, match=r"token: expected an id in \[0, V=5\), got -1"):
        sampler.step(-1)


# ---- command line -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, error",
    [
        (["--length", "-5"], "--length: expected an int >= 0"),
        (["--top-k", "-1"], "--top-k: expected an int >= 0"),
        (["--temperature", "nan"], "--temperature: expected a number"),
        (["--threads", "0"], r"--threads: .*expected an int in \[1, "),
        (["--threads", "100000"], r"--threads: .*expected an int in \[1, "),
    ],
)
def test_sample_command_usage_errors(tmp_path, capsys, extra, error):
    """`lstm-fast sample` with --threads 100000 ended in a traceback and --threads 0 was
    silently ignored; a negative --length or --top-k and --temperature nan now fail in the
    sampler: each is a usage error (exit status 2, the option named) before any work."""
    from lstm_fast import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["sample", str(tmp_path / "no-such-run"), *extra])
    assert e.value.code == 2
    assert re.search(error, capsys.readouterr().err)


# ---- modules ------------------------------------------------------------------------------------


def test_tied_parameters_are_counted_once():
    """A parameter shared by two modules (tied embedding and decoder weights) was yielded twice
    by parameters(): an optimizer updated it twice per step (SGD moved it by 2 lr g), and
    num_parameters() counted it twice. PyTorch yields it once; state_dict keeps both names."""
    from lstm_fast import optim
    from lstm_fast.module import Module
    from lstm_fast.nn import Embedding, Linear

    class Tied(Module):
        def __init__(self):
            super().__init__()
            self.emb = Embedding(5, 3, seed=0)
            self.dec = Linear(3, 5, bias=False, seed=1)
            self.dec.weight = self.emb.weight

    m = Tied()
    assert [n for n, _ in m.named_parameters()] == ["emb.weight"]
    assert [n for n, _ in m.named_parameters(remove_duplicate=False)] == [
        "emb.weight",
        "dec.weight",
    ]
    assert m.num_parameters() == 15
    assert list(m.state_dict()) == ["emb.weight", "dec.weight"]
    m.load_state_dict(m.state_dict())
    from lstm_fast.models.checkpoint import restore_module

    restore_module("ck.npz", m, {f"param/{k}": v for k, v in m.state_dict().items()})
    p = m.emb.weight
    p.data[...] = 1.0
    p.grad[...] = 1.0
    optim.SGD(m.parameters(), lr=0.1).step()
    np.testing.assert_allclose(p.data, 0.9, rtol=1e-6)


def test_gemm_refuses_bias_or_row_sums_overlapping_what_it_writes_or_reads():
    """ops.gemm(a, b, out=o, bias=o[0]) gave wrong rows silently (the bias row is overwritten
    while later rows still read it: errors ~20 at 256 x 256); out's overlap with a and b was
    checked, the bias's was not, nor a_row_sums' with a."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 64), dtype=np.float32)
    b = rng.standard_normal((64, 256), dtype=np.float32)
    out = rng.standard_normal((256, 256), dtype=np.float32)
    before = out.copy()
    with pytest.raises(ValueError, match="bias: expected memory separate from out"):
        ops.gemm(a, b, out=out, bias=out[3])
    np.testing.assert_array_equal(out, before)
    sq = rng.standard_normal((64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="a_row_sums: expected memory separate from a"):
        ops.gemm(sq, sq.T.copy(), out=np.zeros((64, 64), np.float32), a_row_sums=sq[0])


@pytest.mark.parametrize(
    "texts, labels, error",
    [
        (["a", "b"], [0.5, 1.0], "labels: expected integer class ids"),
        (["a"], [0, 1], r"labels: expected shape \(N=1,\)"),
        ([], [], r"labels: expected shape \(N=0,\) with N >= 1"),
        (["a", "b"], [-1, 1], "labels: expected class ids >= 0"),
    ],
)
def test_naive_bayes_fit_checks_labels(texts, labels, error):
    """NaiveBayes.fit truncated float labels (0.5 -> class 0) silently, and more labels than
    texts, no texts or a negative label raised NumPy errors (shape mismatch, zero-size
    reduction, 'must have no negative elements')."""
    from lstm_fast.models.naive_bayes import NaiveBayes

    with pytest.raises((TypeError, ValueError), match=error):
        NaiveBayes().fit(texts, labels)


@pytest.mark.parametrize("kind", ["lstm", "gru", "cell"])
def test_failed_forward_leaves_no_cache_for_backward(kind):
    """A forward that raised (bad hx) used to leave the previous call's cache in place, and
    backward then ran silently on the earlier input."""
    rng = np.random.default_rng(0)
    T, B, I, H = 3, 2, 4, 5
    if kind == "cell":
        m = lstm_fast.LSTMCell(I, H, seed=0).train()
        m(rng.standard_normal((B, I)).astype(np.float32))
        with pytest.raises(ValueError):
            m(rng.standard_normal((B, I)).astype(np.float32), (np.zeros((B, H + 1)),) * 2)
        with pytest.raises(RuntimeError, match="no saved forward"):
            m.backward(np.ones((B, H), np.float32))
        return
    m = (lstm_fast.LSTM if kind == "lstm" else lstm_fast.GRU)(I, H, seed=0).train()
    m(rng.standard_normal((T, B, I)).astype(np.float32))
    bad_hx = np.zeros((1, B, H + 1), np.float32)
    with pytest.raises(ValueError):
        m(
            rng.standard_normal((T, B, I)).astype(np.float32),
            (bad_hx, bad_hx) if kind == "lstm" else bad_hx,
        )
    with pytest.raises(RuntimeError):
        m.backward(np.ones((T, B, H), np.float32))


def test_linear_failed_forward_leaves_nothing_for_backward():
    from lstm_fast.nn import Linear

    lin = Linear(3, 2, seed=0).train()
    lin(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError):
        lin(np.ones((4, 5), np.float32))
    with pytest.raises(RuntimeError, match="no saved forward"):
        lin.backward(np.ones((4, 2), np.float32))


@pytest.mark.parametrize("mode", ["False", 0, None])
def test_train_mode_must_be_bool(mode):
    """train("False") left the module in training mode (a non-empty string is truthy)."""
    m = lstm_fast.LSTM(2, 3, seed=0).eval()
    with pytest.raises(TypeError, match="train: mode: expected a bool"):
        m.train(mode)
    assert m.training is False
    assert m.train(np.bool_(True)).training is True


@pytest.mark.parametrize("fn", ["lstm", "gru", "rnn"])
def test_need_dx_must_be_bool(fn):
    rng = np.random.default_rng(0)
    T, B, I, H = 2, 1, 3, 4
    g = {"lstm": 4, "gru": 3, "rnn": 1}[fn]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = rng.standard_normal((g * H, I)).astype(np.float32)
    w_hh = rng.standard_normal((g * H, H)).astype(np.float32)
    out = getattr(ops, f"{fn}_forward")(x, w_ih, w_hh, training=True)
    cache = out[-1]
    with pytest.raises(TypeError, match="need_dx: expected a bool, got str"):
        getattr(ops, f"{fn}_backward")(cache, np.ones((T, B, H), np.float32), need_dx="no")


def test_vocab_decode_refuses_out_of_range_ids():
    """decode([-1]) returned the last token (Python's negative indexing)."""
    from lstm_fast.data import Vocab

    v = Vocab.build(["abc"], level="char")
    assert v.decode(v.encode("cab")) == "cab"
    for bad in (-1, len(v)):
        with pytest.raises(IndexError, match=r"ids: expected values in \[0, V="):
            v.decode([bad])


def test_load_state_dict_refuses_float32_overflow():
    """1e300 became inf in float32 without an error (the docstring promises a finite
    conversion); NaN/inf given as such still load, as in PyTorch."""
    m = lstm_fast.LSTM(2, 3, seed=0)
    sd = m.state_dict()
    before = {k: v.copy() for k, v in sd.items()}
    bad = {k: v.astype(np.float64) for k, v in sd.items()}
    bad["weight_hh_l0"][0, 0] = 1e300
    with pytest.raises(ValueError, match="weight_hh_l0: expected values within float32's range"):
        m.load_state_dict(bad)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    ok = {k: v.copy() for k, v in sd.items()}
    ok["bias_ih_l0"][0] = np.inf
    m.load_state_dict(ok)
    assert np.isinf(m.state_dict()["bias_ih_l0"][0])


def test_optimizer_warns_on_duplicate_parameters():
    from lstm_fast import optim

    m = lstm_fast.LSTM(2, 3, seed=0)
    p = next(iter(m.parameters()))
    with pytest.warns(UserWarning, match="more than once"):
        optim.SGD([p, p], lr=0.1)


def test_ndarray_subclasses_and_memmaps_are_accepted(tmp_path):
    """The bindings' quick argument test (dtype, rank, shape and layout read from the array
    object) takes ndarray subclasses as the full checks do; results are the same bits."""
    rng = np.random.default_rng(3)
    T, B, I, H = 3, 2, 5, 7
    args = [
        rng.standard_normal(s).astype(np.float32)
        for s in ((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,))
    ]

    class Sub(np.ndarray):
        pass

    mm = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=(T, B, I))
    mm[...] = args[0]
    want = ops.lstm_forward(*args)[0]
    np.testing.assert_array_equal(ops.lstm_forward(mm, *args[1:])[0], want)
    sub = [a.view(Sub) for a in args]
    np.testing.assert_array_equal(ops.lstm_forward(*sub)[0], want)
