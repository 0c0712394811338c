"""Review 27: object lifecycle -- copies and pickles used side by side with the original,
weights and settings changed after use, reuse after an exception, repeated use (memory,
reference cycles). The tests marked "failed before its fix" did; the others guard what held."""

import copy
import gc
import pickle
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest

from lstm_fast import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, rnn
from lstm_fast.data import Vocab, _cython
from lstm_fast.models import CharLM, SequenceClassifier
from lstm_fast.models.naive_bayes import NaiveBayes
from lstm_fast.module import Parameter
from lstm_fast.nn import Dropout, Embedding, Linear
from lstm_fast.optim import SGD, Adagrad, Adam, AdamW, CosineLR, RMSprop, StepLR

OPTIMIZERS = [
    (SGD, {"momentum": 0.9}),
    (Adam, {}),
    (AdamW, {}),
    (Adagrad, {}),
    (RMSprop, {"momentum": 0.5, "centered": True}),
]
COPIES = {
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "pickle2": lambda o: pickle.loads(pickle.dumps(o, protocol=2)),
    "pickle5": lambda o: pickle.loads(pickle.dumps(o, protocol=5)),
}
LAYERS = {
    "lstm": lambda: LSTM(5, 4, num_layers=2, dropout=0.3, seed=1),
    "gru": lambda: GRU(5, 4, num_layers=2, dropout=0.3, seed=1),
    "rnn": lambda: RNN(5, 4, num_layers=2, nonlinearity="relu", seed=1),
    "lstm-proj": lambda: LSTM(5, 4, num_layers=2, proj_size=2, seed=1),
    "lstm-bi": lambda: LSTM(5, 4, bidirectional=True, seed=1),
    "lstm-cell": lambda: LSTMCell(5, 4, seed=1),
    "gru-cell": lambda: GRUCell(5, 4, seed=1),
    "rnn-cell": lambda: RNNCell(5, 4, seed=1),
}


def _x(seed=0, T=4, B=3, I=5):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


def _run(m, x):
    """A training forward and backward of a layer or cell; returns (output, gradients)."""
    inp = x[0] if "Cell" in type(m).__name__ else x
    out = m(inp)
    y = out[0] if isinstance(out, tuple) else out
    m.backward(np.ones_like(y))
    return y.copy(), [p.grad.copy() for p in m.parameters()]


# -- copies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_copies_of_a_used_layer_compute_alongside_it(kind, how):
    # Guard: a layer that ran a training forward, a backward and (unidirectional stacks) a
    # step, copied, then both used: the copy computes what the original does, a deep copy or
    # pickle shares no array with it (parameters, gradients, step buffers), and a training
    # forward of one leaves the other's saved forward alone.
    x = _x()
    m = LAYERS[kind]()
    stack = "Cell" not in type(m).__name__ and not m.bidirectional
    _run(m, x)
    if stack:
        m.eval()
        m.step(x[0])
        m.train()
    m.zero_grad()
    c = COPIES[how](m)
    assert type(c) is type(m)
    if how != "copy":
        for p, q in zip(m.parameters(), c.parameters()):
            assert not np.shares_memory(p.data, q.data) and not np.shares_memory(p.grad, q.grad)
    inp = x[0] if "Cell" in type(m).__name__ else x

    def forward(mod):
        out = mod(inp)
        return (out[0] if isinstance(out, tuple) else out).copy()

    def backward(mod, y):
        mod.zero_grad()  # (a shallow copy's are the original's: recorded before)
        mod.backward(np.ones_like(y))
        return [p.grad.copy() for p in mod.parameters()]

    draws = getattr(m, "_rng", None)
    start = draws.bit_generator.state if draws is not None else None
    y1 = forward(m)
    if draws is not None:  # dropout: the same generator state, so the same masks
        c._rng.bit_generator.state = start
    y2 = forward(c)  # both forwards first: each backward differentiates its own
    g1, g2 = backward(m, y1), backward(c, y2)
    np.testing.assert_array_equal(y1, y2)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
    if stack:
        m.eval(), c.eval()
        a, _ = m.step(x[1])
        b, _ = c.step(x[1])
        assert not np.shares_memory(a, b)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_shallow_copy_keeps_a_registry_of_its_own(kind):
    # Failed before its fix: copy.copy shared the _parameters dict, so a Parameter assigned to
    # the copy also went into the original's forward and state_dict, while the original's
    # attribute still gave its old Parameter.
    x = _x()
    m = LAYERS[kind]()
    name = next(iter(m._parameters))
    before = m.state_dict()
    old = getattr(m, name)
    c = copy.copy(m)
    setattr(c, name, Parameter(np.zeros(old.shape)))
    assert getattr(m, name) is old and m._parameters[name] is old
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert np.all(c.state_dict()[name] == 0)
    # the parameters not replaced are still shared (the documented copy-per-input use)
    other = list(m._parameters)[1]
    assert getattr(c, other) is getattr(m, other)
    y = m(x[0] if "Cell" in type(m).__name__ else x)
    fresh = LAYERS[kind]()
    want = fresh(x[0] if "Cell" in type(m).__name__ else x)
    np.testing.assert_array_equal(
        y[0] if isinstance(y, tuple) else y, (want[0] if isinstance(want, tuple) else want)
    )


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle5"])
def test_model_copied_after_a_training_forward_has_no_saved_forward(how):
    # Failed before its fix: copies and pickles left out the recurrent layers' cache but kept
    # the head's (Linear) saved input, so a copied model's backward accumulated into the
    # decoder's (head's) gradients, then raised "call the layer in training mode" from the
    # LSTM, though the model was in training mode.
    rng = np.random.default_rng(0)
    lm = CharLM(12, 4, 6, 2, dropout=0.2, seed=0)
    _, g, _ = lm.forward_loss(rng.integers(0, 12, (5, 2)), rng.integers(0, 12, (5, 2)))
    clf = SequenceClassifier(12, 3, 4, 5, pad_id=1, seed=0)
    logits = clf(rng.integers(2, 12, (5, 3)), [5, 2, 1])
    for model, grad in ((lm, g), (clf, np.ones_like(logits))):
        dup = COPIES[how](model)
        dup.zero_grad()  # (a shallow copy shares the gradients: zeroed for both)
        with pytest.raises(RuntimeError, match=f"{type(model).__name__}.backward: no saved"):
            dup.backward(grad)
        assert not any(np.any(p.grad) for p in dup.parameters())
    # the layers too: a copy keeps no saved forward of the original's
    x = _x()[0]
    for layer, inp in (
        (Linear(5, 2, seed=0), x),
        (Embedding(6, 2, seed=0), np.array([1, 2])),
        (Dropout(0.5, seed=0), x),
    ):
        y = layer(inp)
        dup = COPIES[how](layer)
        with pytest.raises(RuntimeError, match="no saved forward"):
            dup.backward(np.ones_like(y))
        layer.backward(np.ones_like(y))  # the original's is still there


@pytest.mark.parametrize("how", ["deepcopy", "pickle2", "pickle5"])
@pytest.mark.parametrize("opt_cls, kw", OPTIMIZERS, ids=[c.__name__ for c, _ in OPTIMIZERS])
def test_training_goes_on_identically_from_a_copy(opt_cls, kw, how):
    # Guard: model, optimizer and schedule copied together mid-training (keeping the best
    # model, a checkpoint by pickle), then both trained on: bitwise the same weights, optimizer
    # state dicts and rates, and nothing shared (dropout generator included).
    x = _x(T=5)

    def train(m, opt, sched, n):
        for _ in range(n):
            y, _ = m(x)
            m.backward(np.ones_like(y))
            opt.step(zero_grad=True)
            sched.step()
        return [p.data.copy() for p in m.parameters()]

    m = LSTM(5, 4, num_layers=2, dropout=0.4, seed=3)
    opt = opt_cls(m.parameters(), lr=0.01, **kw)
    sched = CosineLR(opt, total_steps=8, warmup=2)
    train(m, opt, sched, 3)
    m2, opt2, sched2 = COPIES[how]((m, opt, sched))
    assert opt2.params[0] is next(m2.parameters()) and sched2.optimizer is opt2
    a, b = train(m, opt, sched, 3), train(m2, opt2, sched2, 3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["step"] == s2["step"] == 6 and s1["arrays"].keys() == s2["arrays"].keys()
    for k in s1["arrays"]:
        np.testing.assert_array_equal(s1["arrays"][k], s2["arrays"][k])
    for st1, st2 in zip(opt.state, opt2.state):
        assert st1.keys() == st2.keys()
        assert not any(np.shares_memory(st1[k], st2[k]) for k in st1)
    assert sched.get_last_lr() == sched2.get_last_lr()
    # a step schedule built on the copy leaves the original's rates alone
    StepLR(opt2, step_size=1, gamma=0.5)
    assert opt.lr == sched.get_last_lr()[0] != opt2.lr


# -- weights and settings changed after use -------------------------------------------------------


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_changed_num_layers_is_named_and_steps_follow_it(mode):
    # Failed before its fix: num_layers raised after construction gave "weight_hh: expected a
    # numpy.ndarray of dtype float32, got NoneType" (forward) or a bare KeyError
    # 'weight_ih_l2' (step); lowered, step() kept the old stream and still ran every layer,
    # while forward ran the new number.
    cls = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}[mode]
    x = _x(T=1)
    m = cls(5, 4, num_layers=2, seed=0).eval()
    m.step(x[0])
    m.num_layers = 3
    for call in (lambda: m(x), lambda: m.step(x[0])):
        with pytest.raises(AttributeError, match=r"weight_ih_l2: missing, but .*num_layers=3"):
            call()
    m.num_layers = 1
    y, state = m.step(x[0])
    h = state[0] if mode == "LSTM" else state
    assert h.shape == (1, 3, 4)
    np.testing.assert_allclose(y, m(x)[0][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [LSTMCell, GRUCell, RNNCell, LSTM, GRU, RNN])
@pytest.mark.parametrize("change", ["bias-off", "biases-added"])
def test_the_biases_present_are_used_on_every_path(make, change):
    # Failed before its fix: the eval-mode short paths (a cell's one-step call, a layer's
    # step()) read the biases by the ``bias`` setting, the other paths by the parameters
    # present: with ``bias`` assigned False after construction, or biases assigned to a
    # bias=False layer, a cell's eval output differed from its training output and a layer's
    # step from its forward, silently.
    cell = make in (LSTMCell, GRUCell, RNNCell)
    m = make(5, 4, bias=change == "bias-off", seed=0)
    if change == "bias-off":
        m.bias = False
    else:
        rng = np.random.default_rng(1)
        for k in range(1 if cell else m.num_layers):
            sfx = "" if cell else f"_l{k}"
            G = getattr(m, "weight_ih" + sfx).shape[0]
            for n in ("bias_ih", "bias_hh"):
                setattr(m, n + sfx, Parameter(rng.standard_normal(G)))
    x = _x(T=1)
    if cell:
        a, b = m(x[0]), m.eval()(x[0])
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    else:
        m.eval()
        a, b = m(x)[0][0], m.step(x[0])[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nonlinearity_assigned_after_construction_is_computed():
    # Failed before its fix: the kernel was chosen at construction, so an RNN or RNNCell given
    # nonlinearity="relu" afterwards went on computing tanh while its repr said relu (torch's
    # RNNCell reads the setting at each call); step() kept the old kernel too.
    x = _x(T=2)
    cell = RNNCell(5, 4, seed=0)
    cell.nonlinearity = "relu"
    assert "nonlinearity='relu'" in repr(cell)
    np.testing.assert_array_equal(cell(x[0]), RNNCell(5, 4, nonlinearity="relu", seed=0)(x[0]))
    m = RNN(5, 4, num_layers=2, seed=0).eval()
    m.step(x[0])
    m.nonlinearity = "relu"
    ref = RNN(5, 4, num_layers=2, nonlinearity="relu", seed=0).eval()
    np.testing.assert_array_equal(m(x)[0], ref(x)[0])
    np.testing.assert_array_equal(m.step(x[0])[0], ref.step(x[0])[0])
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        m.nonlinearity = "gelu"
    assert m.nonlinearity == "relu"


def test_embedding_backward_refuses_a_replaced_weight():
    # Failed before its fix: the gradient of a lookup went to a Parameter assigned after the
    # forward (which never read it); Linear's and the recurrent layers' backward raise.
    e = Embedding(5, 3, seed=0)
    e(np.array([1, 2]))
    assert [n for n, _ in e.named_parameters()] == ["weight"]
    e.weight = Parameter(np.zeros((5, 3)))
    with pytest.raises(RuntimeError, match="weight was replaced by another Parameter"):
        e.backward(np.ones((2, 3)))
    e(np.array([1, 2]))
    e.backward(np.ones((2, 3)))
    assert e.weight.grad[1].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("make, V", [(LSTM, 6), (LSTM, 100), (GRU, 6)], ids=["fused", "few", "gru"])
def test_forward_embedded_refuses_a_replaced_embedding_weight_before_accumulating(make, V):
    # Failed before its fix: after forward_embedded, an embedding weight Parameter assigned
    # anew got the gradient of the lookup on the fused path (the old one, read by the forward,
    # got none), silently; on the fallback path (fewer tokens than the vocabulary, a GRU) the
    # embedding's backward refused it only after the layer had accumulated its gradients.
    emb, m = Embedding(V, 4, seed=0), make(4, 5, seed=0)
    y, _ = m.forward_embedded(np.random.default_rng(0).integers(0, 6, (4, 3)), emb)
    emb.weight = Parameter(np.zeros((V, 4)))
    m.zero_grad()
    with pytest.raises(RuntimeError, match="embedding.weight was replaced by another Parameter"):
        m.backward(np.ones_like(y))
    assert not any(np.any(p.grad) for p in m.parameters())
    assert not np.any(emb.weight.grad)


def test_linear_and_embedding_name_a_weight_replaced_by_another_shape():
    # Failed before its fix: Linear's GEMM refused a weight assigned since with another shape
    # naming its own argument ("b: expected shape (N=4, K=5), got (4, 6)"), and Embedding's
    # lookup raised NumPy's "index 4 is out of bounds for axis 0 with size 3".
    lin = Linear(5, 4, seed=0)
    lin.weight = Parameter(np.ones((4, 6)))
    with pytest.raises(
        ValueError,
        match=r"^weight: expected shape \(O=4, I=5\) \(out_features, in_features\), got \(4, 6\)",
    ):
        lin(np.ones((2, 5)))
    lin.weight = Parameter(np.ones((4, 5)))
    lin.bias.data = np.ones(3, np.float32)
    with pytest.raises(
        ValueError, match=r"^bias: expected shape \(O=4,\) \(out_features,\), got \(3,\)"
    ):
        lin(np.ones((2, 5)))
    emb = Embedding(5, 3, seed=0)
    emb.weight = Parameter(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"^weight: expected shape \(V=5, E=3\), got \(3, 3\)"):
        emb(np.array([4]))


@pytest.mark.skipif(not _cython(None), reason="lstm_fast._text is not built")
def test_vocab_lookup_table_follows_an_extended_vocabulary():
    # Failed before its fix: the Cython encoder's code point table was made at the first
    # encode and never again, so tokens added since encoded as unknown on that path only.
    v = Vocab.build("abcab")
    assert v.encode("abcd").tolist() == [1, 2, 3, 0]
    v.itos.append("d")
    v.stoi["d"] = 4
    assert v.encode("abcd").tolist() == v.encode("abcd", use_cython=False).tolist() == [1, 2, 3, 4]
    v.itos = list(v.itos) + ["e"]
    v.stoi = {**v.stoi, "e": 5}
    assert v.encode("de", use_cython=True).tolist() == [4, 5]
    for clone in (copy.copy(v), copy.deepcopy(v), pickle.loads(pickle.dumps(v, 5))):
        assert clone.encode("abcdez").tolist() == [1, 2, 3, 4, 5, 0]


# -- reuse after an exception ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["read-only", "integer", "list"])
@pytest.mark.parametrize("opt_cls, kw", OPTIMIZERS, ids=[c.__name__ for c, _ in OPTIMIZERS])
def test_optimizer_refuses_unusable_state_before_any_update(opt_cls, kw, bad):
    # Failed before its fix: a state array the update cannot write raised in the middle of
    # the step, after the parameters before it were updated and step_count was bumped.
    a, b = Parameter(np.ones((3, 2))), Parameter(np.ones((3, 2)))
    opt = opt_cls([a, b], lr=0.1, **kw)
    a.grad[...] = b.grad[...] = 0.5
    opt.step()
    slot = next(iter(opt.state[1]))
    good = opt.state[1][slot]
    if bad == "read-only":
        good.flags.writeable = False
        broken = good
    else:
        broken = good.astype(np.int32) if bad == "integer" else good.tolist()
    opt.state[1][slot] = broken
    before = (a.data.copy(), b.data.copy())
    with pytest.raises((TypeError, ValueError), match=f"step: parameter 1: state {slot}"):
        opt.step()
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(b.data, before[1])
    assert opt.step_count == 1
    # repaired, the step is the one an untouched optimizer takes
    good = np.array(good, copy=True)
    opt.state[1][slot] = good
    twin_a, twin_b = Parameter(np.ones((3, 2))), Parameter(np.ones((3, 2)))
    twin = opt_cls([twin_a, twin_b], lr=0.1, **kw)
    twin_a.grad[...] = twin_b.grad[...] = 0.5
    twin.step()
    opt.step()
    twin.step()
    np.testing.assert_array_equal(a.data, twin_a.data)
    np.testing.assert_array_equal(b.data, twin_b.data)


@pytest.mark.parametrize("opt_cls", [Adam, AdamW])
@pytest.mark.parametrize("change", ["dtype", "layout"])
def test_adam_takes_state_its_kernel_cannot(opt_cls, change):
    # Failed before its fix: a parameter made float32 after its float64 state was made (or a
    # Fortran-ordered state array) reached the fused kernel, which raised in the middle of the
    # step: the parameters before it updated, step_count bumped. Such state now takes the
    # NumPy update, as every other optimizer's does.
    dtype = np.float64 if change == "dtype" else np.float32
    ps = [Parameter(np.ones((3, 2)), dtype=dtype) for _ in range(2)]
    opt = opt_cls(ps, lr=0.1)
    for p in ps:
        p.grad[...] = 0.5
    opt.step()
    if change == "dtype":
        for p in ps:
            p.data, p.grad = p.data.astype(np.float32), p.grad.astype(np.float32)
    else:
        opt.state[1]["exp_avg"] = np.asfortranarray(opt.state[1]["exp_avg"])
    # the same step from float32 C-contiguous state
    twin = [Parameter(p.data) for p in ps]
    ref = opt_cls(twin, lr=0.1)
    ref.load_state_dict(opt.state_dict())
    for p in ps + twin:
        p.grad[...] = -0.25
    opt.step()
    ref.step()
    assert opt.step_count == 2
    for p, q in zip(ps, twin):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5)


def test_failed_naive_bayes_fit_keeps_the_fitted_model():
    # Failed before its fix: fit emptied the feature index before checking the texts, so a
    # fit that raised left the old counts with no features: every prediction came from the
    # class priors alone, silently.
    nb = NaiveBayes().fit(["good film", "great acting", "bad plot", "awful film"], [1, 1, 0, 0])
    want = nb.decision_function(["good", "bad film"])
    for texts, labels in ((["nice", 3], [0, 1]), (["zz", None], [1, 0])):
        with pytest.raises(TypeError):
            nb.fit(texts, labels)
        np.testing.assert_array_equal(nb.decision_function(["good", "bad film"]), want)


def test_interrupt_between_layers_puts_the_dropout_generator_back(monkeypatch):
    # Failed before its fix: a KeyboardInterrupt between two layers of a stack (Ctrl-C) left
    # the dropout generator advanced past the earlier layers' masks, so every later forward
    # drew other masks than a fresh layer's (a bad parameter put it back already).
    x = _x(T=3)
    m = LSTM(5, 4, num_layers=3, dropout=0.5, seed=7)
    fresh = LSTM(5, 4, num_layers=3, dropout=0.5, seed=7)
    real = rnn._Direction.forward
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # layer 1, after layer 0 drew its mask
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rnn._Direction, "forward", staticmethod(interrupted))
    with pytest.raises(KeyboardInterrupt):
        m(x)
    monkeypatch.setattr(rnn._Direction, "forward", staticmethod(real))
    with pytest.raises(RuntimeError, match="no saved forward"):
        m.backward(np.ones((3, 3, 4), np.float32))
    y, g = _run(m, x)
    y_fresh, g_fresh = _run(fresh, x)
    np.testing.assert_array_equal(y, y_fresh)
    for a, b in zip(g, g_fresh):
        np.testing.assert_array_equal(a, b)


# -- repeated use: memory and reference cycles ----------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "lstm-proj"])
def test_a_layer_that_streamed_is_freed_without_the_garbage_collector(kind):
    # Failed before its fix: step()'s buffers held the layer (layer -> streams -> stream ->
    # layer), so a layer that had streamed, its weights and buffers outlived their last
    # reference until a full garbage collection.
    m = LAYERS[kind]().eval()
    m.step(_x()[0])
    ref = weakref.ref(m)
    gc.disable()
    try:
        del m
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", list(LAYERS))
def test_every_kind_is_collected_after_use(kind):
    # Guard: after forward, backward, step and a copy, nothing keeps a layer alive.
    m = LAYERS[kind]()
    _run(m, _x())
    c = copy.copy(m)
    _run(c, _x())
    refs = [weakref.ref(m), weakref.ref(c)]
    del m, c
    gc.collect()
    assert all(r() is None for r in refs)


def test_repeated_training_and_streaming_keep_memory_flat():
    # Guard: 1000 small training iterations (forward, backward, an Adam step, a schedule) and
    # 1000 streaming steps keep no Python allocation per iteration. (Counted in blocks: the
    # interpreter makes one block of about 1 MB once, at some point of a long loop, whatever
    # the loop does; a leak of one block per iteration is 1000.)
    x = _x(T=3, B=2)
    m = LSTM(5, 4, num_layers=2, dropout=0.2, seed=0)
    opt = Adam(m.parameters(), lr=1e-3)
    sched = CosineLR(opt, total_steps=50, warmup=5)
    state = [None]

    def iteration():
        m.train()
        y, _ = m(x)
        m.backward(np.ones_like(y))
        opt.step(zero_grad=True)
        sched.step()
        m.eval()
        _, state[0] = m.step(x[0], state[0])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracemalloc.start()
        try:
            for _ in range(100):  # (under tracing: its own first allocations are not growth)
                iteration()
            gc.collect()
            before = tracemalloc.take_snapshot()
            for _ in range(1000):
                iteration()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    grown = sum(st.count_diff for st in after.compare_to(before, "filename"))
    assert grown < 200, f"{grown} more blocks after 1000 iterations"


# -- the torch drop-in ----------------------------------------------------------------------------


def test_torch_modules_usable_after_interrupting_hooks_and_copies():
    # Guard: a forward hook, a module backward hook and a tensor hook raising
    # KeyboardInterrupt, then plain calls: outputs and gradients bitwise those of a fresh
    # module; deepcopy and torch.save/torch.load copies compute the same.
    torch = pytest.importorskip("torch")
    import io

    import lstm_fast.torch as lft

    def make():
        torch.manual_seed(1)
        return lft.LSTM(3, 4, num_layers=2, bidirectional=True)

    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    m, fresh = make(), make()

    def boom(*_):
        raise KeyboardInterrupt

    h = m.register_forward_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        m(x)
    h.remove()
    h = m.register_full_backward_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        m(x.clone().requires_grad_())[0].sum().backward()
    h.remove()
    y, _ = m(x)
    y.register_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        (y * 2).sum().backward()
    m.zero_grad()
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    copies = [copy.deepcopy(m), torch.load(buf, weights_only=False)]
    for mod in [m, fresh, *copies]:
        xr = x.clone().requires_grad_()
        y, _ = mod(xr)
        y.sum().backward()
        mod._got = (y.detach(), xr.grad, [p.grad.clone() for p in mod.parameters()])
    for mod in [m, *copies]:
        torch.testing.assert_close(mod._got[0], fresh._got[0], rtol=0, atol=0)
        torch.testing.assert_close(mod._got[1], fresh._got[1], rtol=0, atol=0)
        for a, b in zip(mod._got[2], fresh._got[2]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
