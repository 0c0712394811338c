"""Edge cases found in the second review: weight import, optimizers and schedules, the small
layers and losses, the models' backward, the text pipeline and the streaming step."""

from __future__ import annotations

import numpy as np
import pytest

# state_dict snapshots: the helpers of the first review's tests (tests/ is on sys.path)
from test_review_edge import _snapshot, _unchanged

import lstm_fast
from lstm_fast import interop, optim
from lstm_fast import nn as lnn
from lstm_fast.module import Parameter

# ---- interop ------------------------------------------------------------------------------------


def test_keras_onnx_import_refuses_a_projection_layer():
    """to_keras / to_onnx refuse proj_size > 0, but from_keras / from_onnx loaded W_ih and W_hh
    (with R of shape (D, G, P)) and silently kept the layer's random weight_hr_l0."""
    layer = lstm_fast.LSTM(3, 4, proj_size=2, seed=0)
    snap = _snapshot(layer)
    G = 16
    with pytest.raises(ValueError, match=r"from_keras: Keras has no LSTM projection"):
        interop.from_keras(layer, [np.zeros((3, G)), np.zeros((2, G)), np.zeros(G)])
    with pytest.raises(ValueError, match=r"from_onnx: the ONNX LSTM operator has no projection"):
        interop.from_onnx(layer, np.zeros((1, G, 3)), np.zeros((1, G, 2)))
    _unchanged(layer, snap)


@pytest.mark.parametrize(
    "which, bad, error",
    [
        ("kernel", lambda a: a.astype(np.float64) * 1e300, "kernel: expected values within"),
        ("kernel", lambda a: a.astype(np.complex64) + 1j, "kernel: expected a real numeric"),
        ("recurrent_kernel", lambda a: a.astype(str), "recurrent_kernel: expected a real"),
        ("bias", lambda a: None, "bias: expected a real numeric array, got dtype object"),
    ],
)
def test_keras_import_checks_values_as_load_state_dict(which, bad, error):
    """Keras / ONNX weights were cast with np.ascontiguousarray(dtype=float32): 1e300 became
    inf, a complex kernel lost its imaginary part, strings were parsed as numbers and None was
    reported as 'got shape (1,)'. load_state_dict refuses all of these."""
    layer = lstm_fast.LSTM(3, 4, seed=0)
    weights = interop.to_keras(lstm_fast.LSTM(3, 4, seed=1))
    i = ["kernel", "recurrent_kernel", "bias"].index(which)
    weights[i] = bad(weights[i])
    snap = _snapshot(layer)
    with pytest.raises((TypeError, ValueError), match=error):
        interop.from_keras(layer, weights)
    _unchanged(layer, snap)
    init = interop.to_onnx(lstm_fast.LSTM(3, 4, seed=1))
    init["W"] = init["W"].astype(np.float64) * 1e300
    with pytest.raises(ValueError, match="W: expected values within float32's range"):
        interop.from_onnx(layer, **init)
    _unchanged(layer, snap)


# ---- module state dicts -------------------------------------------------------------------------


def test_load_state_dict_checks_its_arguments():
    """A list of (name, array) pairs raised "unhashable type: 'numpy.ndarray'", None "argument
    of type 'NoneType' is not iterable", and strict="no" was taken as strict=True."""
    layer = lstm_fast.LSTM(3, 4, seed=0)
    sd = layer.state_dict()
    with pytest.raises(TypeError, match="state_dict: expected a mapping of names to arrays, got"):
        layer.load_state_dict(list(sd.items()))
    with pytest.raises(TypeError, match="state_dict: expected a mapping .*, got NoneType"):
        layer.load_state_dict(None)
    with pytest.raises(TypeError, match="strict: expected a bool, got str"):
        layer.load_state_dict({}, strict="no")
    layer.load_state_dict(sd)


# ---- optimizers ---------------------------------------------------------------------------------


def test_clip_grad_norm_checks_max_norm_and_grads():
    """A negative max_norm flipped every gradient (coef < 0), NaN left them unclipped, and a
    parameter whose grad is None raised AttributeError ('NoneType' has no attribute 'dtype')."""
    p, q = Parameter(np.ones(3)), Parameter(np.ones(2))
    p.grad[...] = q.grad[...] = 3.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=r"max_norm: expected a float >= 0, got"):
            optim.clip_grad_norm([p, q], bad)
    with pytest.raises(TypeError, match="max_norm: expected a float >= 0, got str"):
        optim.clip_grad_norm([p, q], "1")
    q.grad = None
    with pytest.raises(ValueError, match=r"clip_grad_norm: parameter 1: grad: expected an array"):
        optim.clip_grad_norm([p, q], 1.0)
    np.testing.assert_array_equal(p.grad, 3.0)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda o: optim.StepLR(o, 0), r"step_size: expected an int >= 1, got 0"),
        (lambda o: optim.StepLR(o, -2), r"step_size: expected an int >= 1, got -2"),
        (lambda o: optim.StepLR(o, 2.7), "step_size: expected an int >= 1, got float"),
        (lambda o: optim.StepLR(o, 2, gamma=float("nan")), "gamma: expected a float >= 0"),
        (lambda o: optim.CosineLR(o, 10, warmup=-3), "warmup: expected an int >= 0, got -3"),
        (lambda o: optim.CosineLR(o, -1), "total_steps: expected an int >= 0, got -1"),
        (lambda o: optim.CosineLR(o, 10, min_factor=-1.0), "min_factor: expected a float >= 0"),
        (lambda o: optim.CosineLR(o, 10, base_lr=float("nan")), "base_lr: expected a float"),
        (lambda o: optim.StepLR(o.params, 2), "optimizer: expected an Optimizer, got list"),
    ],
)
def test_schedules_check_their_arguments(make, error):
    """StepLR(opt, 0) raised ZeroDivisionError, step_size=-2 or 2.7 and warmup=-3 were used as
    given (2.7 truncated), and a NaN gamma / base_lr or a negative min_factor set a NaN or
    negative learning rate (a negative one ascends the loss)."""
    opt = optim.SGD([Parameter(np.ones(3))], lr=0.1)
    with pytest.raises((TypeError, ValueError), match=error):
        make(opt)
    assert opt.lr == 0.1


def test_optimizer_switches_and_nesterov_are_checked_on_load_too():
    """nesterov="no" and centered="no" (truthy strings) switched the options on; Nesterov's
    momentum > 0 / dampening = 0 rule was checked by SGD's constructor only, so a state dict
    with nesterov=True and momentum=0 loaded; a NaN dampening made every update NaN; a single
    Parameter raised "'Parameter' object is not iterable"."""
    p = Parameter(np.ones(3))
    with pytest.raises(TypeError, match="nesterov: expected a bool, got str"):
        optim.SGD([p], lr=0.1, momentum=0.9, nesterov="no")
    with pytest.raises(TypeError, match="centered: expected a bool, got str"):
        optim.RMSprop([p], lr=0.1, centered="no")
    with pytest.raises(ValueError, match="dampening: expected a float >= 0, got nan"):
        optim.SGD([p], lr=0.1, momentum=0.9, dampening=float("nan"))
    with pytest.raises(TypeError, match="params: expected an iterable of Parameter objects"):
        optim.SGD(p, lr=0.1)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    sd["hyper"] = {**sd["hyper"], "nesterov": True, "momentum": 0.0}
    with pytest.raises(ValueError, match="load_state_dict: hyper: nesterov: requires momentum"):
        opt.load_state_dict(sd)
    assert opt.nesterov is False and opt.momentum == 0.9


def test_optimizer_load_state_dict_refuses_float32_overflow():
    opt = optim.Adam([Parameter(np.ones(3))], lr=0.1)
    sd = opt.state_dict()
    sd["step"] = 1
    sd["arrays"] = {"0.exp_avg": np.full(3, 1e300), "0.exp_avg_sq": np.ones(3)}
    with pytest.raises(ValueError, match="0.exp_avg: expected values within float32's range"):
        opt.load_state_dict(sd)
    assert opt.step_count == 0 and not opt.state[0]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "rmsprop"])
def test_optimizer_step_refuses_read_only_arrays_before_updating(name):
    """A read-only parameter raised in the middle of step(), after the earlier parameters and
    step_count were updated; so did zero_grad=True with a read-only gradient."""
    params = [Parameter(np.ones(3)), Parameter(np.ones(2))]
    for p in params:
        p.grad[...] = 0.5
    opt = optim.make_optimizer(name, params, lr=0.1)
    params[1].data.flags.writeable = False
    with pytest.raises(ValueError, match="step: parameter 1: data: expected a writeable array"):
        opt.step()
    params[1].data.flags.writeable = True
    params[1].grad.flags.writeable = False
    with pytest.raises(ValueError, match=r"parameter 1: grad \(zero_grad=True\): expected a"):
        opt.step(zero_grad=True)
    assert opt.step_count == 0
    np.testing.assert_array_equal(params[0].data, 1.0)
    np.testing.assert_array_equal(params[0].grad, 0.5)
    opt.step()  # a read-only gradient is fine when it is only read
    assert opt.step_count == 1


def test_zero_grad_restores_a_gradient_set_to_none():
    """p.grad = None (PyTorch's habit) made zero_grad() raise "'NoneType' object does not
    support item assignment" (module and optimizer alike)."""
    layer = lstm_fast.LSTM(3, 4, seed=0)
    p = next(iter(layer.parameters()))
    p.grad = None
    layer.zero_grad()
    assert p.grad.shape == p.data.shape and p.grad.dtype == np.float32 and not p.grad.any()
    p.grad = None
    opt = optim.SGD(layer.parameters(), lr=0.1)
    opt.zero_grad()
    opt.step()


def test_parameter_converts_like_an_array():
    """np.asarray(layer.weight_ih_l0) gave a 0-d object array (what torch users write for a
    tensor is .numpy(), for a NumPy-native layer the array protocol): now the data itself."""
    layer = lstm_fast.LSTM(3, 4, seed=0)
    p = layer.weight_ih_l0
    a = np.asarray(p)
    assert a is p.data and (p.dtype, p.ndim, p.size, len(p)) == (np.float32, 2, 48, 16)
    c = np.array(p)  # a copy, as np.array of an array
    assert c is not p.data and np.shares_memory(c, p.data) is False
    np.testing.assert_array_equal(c, p.data)
    d = np.asarray(p, dtype=np.float64)
    assert d.dtype == np.float64 and not np.shares_memory(d, p.data)
    np.testing.assert_array_equal(d, p.data)
    with pytest.raises(ValueError, match=r"copy=False"):
        np.asarray(p, dtype=np.float64, copy=False)
    assert np.asarray(p, copy=False) is p.data
    np.testing.assert_allclose(np.add(p, 1), p.data + 1)  # ufuncs take it too


# ---- nn -----------------------------------------------------------------------------------------


def test_cross_entropy_targets_must_match_the_logits_shape():
    """Targets were flattened and only their count checked: (B, T) targets for (T, B, V)
    logits (CharLM.forward_loss too) were paired with the wrong rows, (N, 1) was taken as
    (N,); V = 0 and 0-d logits raised NumPy / IndexError messages; ignore_index=1.5 ignored
    nothing."""
    from lstm_fast.models.charlm import CharLM
    from lstm_fast.nn import softmax_cross_entropy

    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"targets: expected shape \(2, 3\) .* or \(N=6,\), got"):
        softmax_cross_entropy(z, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"targets: expected shape \(4,\)"):
        softmax_cross_entropy(z.reshape(6, 5)[:4], np.zeros((4, 1), np.int64))
    with pytest.raises(ValueError, match=r"logits: expected shape \(..., V\) with V >= 1"):
        softmax_cross_entropy(np.zeros((2, 0)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"logits: expected shape \(..., V\) with V >= 1"):
        softmax_cross_entropy(np.float32(1), np.zeros(1, np.int64))
    with pytest.raises(TypeError, match="ignore_index: expected None or an int, got 1.5"):
        softmax_cross_entropy(z, np.zeros((2, 3), np.int64), ignore_index=1.5)
    # (T, B) and flat targets give the same result
    t = rng.integers(0, 5, (2, 3))
    a, ga = softmax_cross_entropy(z, t)
    b, gb = softmax_cross_entropy(z, t.reshape(-1))
    assert a == b and np.array_equal(ga, gb) and ga.shape == z.shape
    m = CharLM(7, 4, 5, 1, seed=0)
    with pytest.raises(ValueError, match=r"targets: expected shape \(3, 2\)"):
        m.forward_loss(np.zeros((3, 2), np.int64), np.zeros((2, 3), np.int64))


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: lnn.Linear(-1, 2), r"in_features: expected an int >= 0, got -1"),
        (lambda: lnn.Linear(2.5, 2), "in_features: expected an int >= 0, got float"),
        (lambda: lnn.Linear(3, 2, bias="False"), "bias: expected a bool, got str"),
        (lambda: lnn.Embedding(-1, 3), "num_embeddings: expected an int >= 0"),
        (
            lambda: lnn.Embedding(5, 3, padding_idx=5),
            r"padding_idx: expected None or an int in \[-5, 5\), got 5",
        ),
        (lambda: lnn.Embedding(5, 3, padding_idx=1.5), "padding_idx: expected None"),
        (lambda: lnn.Dropout(None), r"p: expected a float in \[0, 1\], got None"),
        (lambda: lnn.Dropout("0.5"), r"p: expected a float in \[0, 1\], got '0.5'"),
        (lambda: lnn.Linear(3, 2)(np.float32(1)), r"x: expected shape \(..., I=3\)"),
    ],
)
def test_small_layers_check_their_arguments(make, error):
    """Linear(-1, 2) raised 'math domain error', Linear(0, 2) ZeroDivisionError (PyTorch allows
    it), bias="False" made a bias, padding_idx out of range or 1.5 raised NumPy's IndexError,
    Dropout(None) float()'s TypeError, a 0-d Linear input 'tuple index out of range'."""
    with pytest.raises((TypeError, ValueError), match=error):
        make()


def test_linear_zero_inputs_and_embedding_negative_padding_idx_as_pytorch():
    torch = pytest.importorskip("torch")
    lin = lnn.Linear(0, 2, seed=0)
    np.testing.assert_array_equal(lin(np.zeros((3, 0), np.float32)), np.zeros((3, 2)))
    emb = lnn.Embedding(5, 3, padding_idx=-1, seed=0)
    assert emb.padding_idx == torch.nn.Embedding(5, 3, padding_idx=-1).padding_idx == 4
    emb(np.array([4, 1]))
    emb.backward(np.ones((2, 3), np.float32))
    assert not emb.weight.grad[4].any() and emb.weight.grad[1].all()


def test_dropout_backward_checks_dy_shape():
    """dy was multiplied by the mask with broadcasting: a (3,) dy for a (2, 3) output was
    accepted, a (3, 2) one raised NumPy's broadcast error."""
    d = lnn.Dropout(0.5, seed=0)
    y = d(np.ones((2, 3), np.float32))
    for bad in ((3,), (3, 2), (1, 2, 3)):
        with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\) \(the output's\)"):
            d.backward(np.ones(bad, np.float32))
    np.testing.assert_array_equal(d.backward(np.ones((2, 3), np.float32)), y)


# ---- models -------------------------------------------------------------------------------------


def test_model_backward_after_a_failed_forward_changes_nothing():
    """CharLM.backward after a forward that raised accumulated the decoder's gradients of the
    previous call, then raised in the LSTM; SequenceClassifier.backward silently computed every
    gradient from the previous call's caches."""
    from lstm_fast.models.charlm import CharLM
    from lstm_fast.models.classifier import SequenceClassifier

    lm = CharLM(7, 4, 5, 2, seed=0).train()
    x = np.array([[1, 2], [3, 4], [5, 6]])
    _, g, _ = lm.forward_loss(x, x)
    with pytest.raises(IndexError):
        lm(np.array([[1, 99]]))
    clf = SequenceClassifier(9, 2, 4, 5, pad_id=1, seed=0).train()
    ids, lengths = np.array([[2, 5], [3, 1], [4, 1]]), np.array([3, 1])
    out = clf(ids, lengths)
    with pytest.raises(ValueError):
        clf(ids, np.array([3, 0]))
    for model, dy in ((lm, g), (clf, np.ones_like(out))):
        model.zero_grad()
        with pytest.raises(RuntimeError, match=r"\.backward: no saved forward"):
            model.backward(dy)
        assert not any(p.grad.any() for p in model.parameters())
    # an eval-mode forward keeps nothing either; a training one works as before
    clf.eval()
    clf(ids, lengths)
    with pytest.raises(RuntimeError, match="no saved forward"):
        clf.backward(np.ones_like(out))
    clf.train()
    clf.backward(np.ones_like(clf(ids, lengths)))
    assert clf.head.weight.grad.any()


# ---- data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cy", [True, False])
def test_vocab_encode_takes_only_str(cy):
    """encode(None) returned [] through Cython (a `str` argument accepts None) and raised
    "'NoneType' object is not iterable" in Python; bytes were encoded as unknown ids (Python)."""
    from lstm_fast.data import Vocab

    if cy:
        pytest.importorskip("lstm_fast._text")
    v = Vocab.build("hello", level="char")
    for bad in (None, b"hello", ["h", "e"]):
        with pytest.raises(TypeError, match="text: expected a str, got"):
            v.encode(bad, use_cython=cy)
    w = Vocab.build("hello world", level="word")
    with pytest.raises(TypeError, match="text: expected a str, got NoneType"):
        w.encode(None, use_cython=cy)


def test_vocab_decode_takes_only_integer_ids():
    """decode([1.7]) truncated to id 1 and decode("12") parsed the characters as ids."""
    from lstm_fast.data import Vocab

    v = Vocab.build("abc", level="char")
    for bad in ([1.7], "12", [None]):
        with pytest.raises(TypeError, match="ids: expected integer token ids"):
            v.decode(bad)
    assert v.decode(np.array([1, 2], np.int32)) == v.decode([1, 2])


@pytest.mark.parametrize("cy", [True, False])
def test_featurize_takes_a_sequence_of_str(cy):
    """featurize("ab") featurized each character as a document; a non-str document raised
    "Expected str, got int" (Cython) or "'int' object has no attribute 'split'" (Python)."""
    from lstm_fast.data import featurize

    if cy:
        pytest.importorskip("lstm_fast._text")
    with pytest.raises(TypeError, match="docs: expected a sequence of str, got a str"):
        featurize("ab", {}, grow=True, use_cython=cy)
    with pytest.raises(TypeError, match="docs: expected a sequence of str, got int at 1"):
        featurize(["ab", 1], {}, grow=True, use_cython=cy)
    indptr, ids = featurize(iter(["ab", ""]), {}, grow=True, use_cython=cy)
    assert indptr.tolist() == [0, 4, 4] and len(ids) == 4


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(batch_size=2.7, seq_len=2), "batch_size: expected an int >= 1, got float"),
        (dict(batch_size="2", seq_len=2), "batch_size: expected an int >= 1, got str"),
        (dict(batch_size=2, seq_len=0), "seq_len: expected an int >= 1, got 0"),
    ],
)
def test_bptt_batcher_sizes_must_be_ints(kw, error):
    """batch_size=2.7 was truncated to 2 and "2" parsed."""
    from lstm_fast.data import BPTTBatcher

    with pytest.raises((TypeError, ValueError), match=error):
        BPTTBatcher(np.arange(20), **kw)


# ---- streaming step and cells -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_step_with_an_empty_batch(kind):
    """A (0, I) x_t raised the core's 'h_out: must not alias h' (empty buffers share an
    address); the layers' forward takes B = 0."""
    layer = getattr(lstm_fast, kind)(3, 4, num_layers=2, seed=0).eval()
    y, state = layer.step(np.zeros((0, 3), np.float32))
    assert y.shape == (0, 4)
    y, _ = layer.step(np.zeros((0, 3), np.float32), state, out=np.zeros((0, 4), np.float32))
    assert y.shape == (0, 4)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_step_checks_finite_when_asked(kind):
    """check_finite=True layers checked forward's inputs but not step()'s."""
    layer = getattr(lstm_fast, kind)(3, 4, seed=0, check_finite=True).eval()
    x = np.ones((2, 3), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"x_t: expected finite values, got NaN at index \(1, 2\)"):
        layer.step(x)
    _, state = layer.step(np.ones((2, 3), np.float32))
    bad = tuple(np.copy(a) for a in state) if kind == "LSTM" else (np.copy(state),)
    bad[0][0, 1, 3] = np.inf
    with pytest.raises(ValueError, match=r"state(\[0\])?: expected finite values, got Inf"):
        layer.step(np.ones((2, 3), np.float32), bad if kind == "LSTM" else bad[0])


def test_step_out_must_be_float32():
    """An int32 (or float64) ``out`` passed the shape check and y was cast into it: int32
    truncated every output to 0."""
    layer = lstm_fast.LSTM(3, 4, seed=0).eval()
    x = np.ones((2, 3), np.float32)
    for out in (np.zeros((2, 4), np.int32), np.zeros((2, 4))):
        with pytest.raises(
            ValueError, match=r"out: expected a writeable array of shape \(2, 4\) dtype float32"
        ):
            layer.step(x, out=out)
        assert not out.any()
    out = np.zeros((4, 2), np.float32).T  # strided float32 is fine
    y, _ = layer.step(x, out=out)
    assert y is out and out.any()


def test_step_checks_the_state_dtype_before_writing():
    """A state whose c was a string array raised NumPy's 'could not convert' after h had been
    copied into the buffer that holds the state step returned last."""
    layer = lstm_fast.LSTM(3, 4, seed=0).eval()
    x = np.ones((2, 3), np.float32)
    _, state = layer.step(x)
    kept = tuple(np.copy(a) for a in state)
    with pytest.raises(TypeError, match=r"state\[1\] \(c\): expected a real floating-point"):
        layer.step(x, (np.zeros((1, 2, 4), np.float32), np.full((1, 2, 4), "x")))
    for a, b in zip(state, kept):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_step_takes_an_unbatched_forwards_state(kind):
    """An unbatched forward returns (num_layers, H) states; step() with an unbatched x_t
    refused them ('expected (num_layers, B, H) = (2, 1, 4), got (2, 4)')."""
    layer = getattr(lstm_fast, kind)(3, 4, num_layers=2, seed=0).eval()
    xs = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    want = layer(xs)[0]
    _, state = layer(xs[:4])  # unbatched: (L, H) states
    y4, state = layer.step(xs[4], state)
    np.testing.assert_allclose(y4, want[4], rtol=1e-5, atol=1e-6)
    y5, _ = layer.step(xs[5], state)  # and step's own (L, 1, H) state
    np.testing.assert_allclose(y5, want[5], rtol=1e-5, atol=1e-6)


def test_step_takes_a_strided_float32_input():
    """A float32 column slice went to the core as is and was refused as non-contiguous after
    the state had been copied into the step buffers; other dtypes were converted."""
    layer = lstm_fast.GRU(3, 4, seed=0).eval()
    wide = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    got = layer.step(wide[:, ::2])[0].copy()
    np.testing.assert_array_equal(got, layer.step(np.ascontiguousarray(wide[:, ::2]))[0])


def test_cell_hx_holding_none_is_a_clear_error():
    """GRUCell(x, (h, None)) raised NumPy's 'inhomogeneous shape' ValueError naming nothing."""
    cell = lstm_fast.GRUCell(3, 4, seed=0)
    h = np.zeros((2, 4), np.float32)
    with pytest.raises(TypeError, match="h_0: expected a real floating-point array"):
        cell(np.zeros((2, 3), np.float32), (h, None))


# ---- the streaming step's core call -------------------------------------------------------


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_step_into_refuses_overlapping_outputs(mode):
    """The outputs of one step (h_out, c_out, workspace) are written while the inputs are read:
    any shared byte with an input or with each other is refused by name (a partial overlap
    too, not only the same start); arrays of zero size overlap nothing."""
    from lstm_fast import _core

    g = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}[mode]
    B, I, H = 3, 5, 7
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, h, c = f(B, I), f(B, H), f(B, H)
    w_ih, w_hh, b_ih, b_hh = f(g * H, I), f(g * H, H), f(g * H), f(g * H)
    ws = np.empty(_core.step_workspace_size(mode, B, I, H), np.float32)
    lstm = mode == "LSTM"
    h_out, c_out = np.empty((B, H), np.float32), np.empty((B, H), np.float32)

    def call(**kw):
        a = dict(
            x=x,
            h=h,
            c=c if lstm else None,
            weight_ih=w_ih,
            weight_hh=w_hh,
            bias_ih=b_ih,
            bias_hh=b_hh,
            h_out=h_out,
            c_out=c_out if lstm else None,
            workspace=ws,
        )
        a.update(kw)
        _core.step_into(mode, *a.values())

    call()
    want = h_out.copy()
    big = np.zeros((2 * B + 1) * H, np.float32)
    shifted = big[1 : 1 + B * H].reshape(B, H)  # starts one float into h's block
    h2 = big[: B * H].reshape(B, H)
    h2[...] = h
    with pytest.raises(ValueError, match="h_out: must not overlap h"):
        call(h=h2, h_out=shifted)
    both = np.zeros(w_hh.size + ws.size, np.float32)  # weight_hh, then the workspace
    w_in = both[: w_hh.size].reshape(w_hh.shape)
    w_in[...] = w_hh
    with pytest.raises(ValueError, match="workspace: must not overlap weight_hh"):
        call(weight_hh=w_in, workspace=both[w_hh.size - 1 :])
    if lstm:
        with pytest.raises(ValueError, match="c_out: must not overlap h_out"):
            call(c_out=h_out)
        with pytest.raises(ValueError, match="c_out: must not overlap c"):
            call(c_out=c)
    # nothing was written by the refused calls; a proper call still works
    call()
    np.testing.assert_array_equal(h_out, want)
    # zero rows: nothing to compute, nothing overlaps
    e = np.empty((0, H), np.float32)
    _core.step_into(
        mode,
        np.empty((0, I), np.float32),
        e,
        e if lstm else None,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        np.empty((0, H), np.float32),
        np.empty((0, H), np.float32) if lstm else None,
        ws,
    )
