"""Review 22, weight interop: every layer shape through ONNX Runtime (chained nodes, initial
states) and through the module to_torch builds, bitwise round trips, odd torch modules and state
dicts, refused calls that leave the layer as it was."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import interop

torch = pytest.importorskip("torch")

# kind ("RNN-relu": nonlinearity relu), num_layers, bidirectional, bias, batch_first
LAYER_CASES = list(
    itertools.product(["LSTM", "GRU", "RNN", "RNN-relu"], [1, 2, 3], [False, True], [True, False])
)
CELL_CASES = list(
    itertools.product(["LSTMCell", "GRUCell", "RNNCell", "RNNCell-relu"], [True, False])
)
I, H, T, B = 3, 4, 5, 2


def _make(kind, seed=0, **kw):
    """An lstm_fast layer or cell; ``kind`` may end in ``-relu``."""
    if kind.endswith("-relu"):
        kind, kw["nonlinearity"] = kind[: -len("-relu")], "relu"
    return getattr(lstm_fast, kind)(I, H, seed=seed, **kw)


def _state(layer):
    return {k: v.copy() for k, v in layer.state_dict().items()}


def _assert_bitwise(layer, state):
    """Every parameter of ``layer`` has the bytes of ``state``'s (NaN payloads and -0.0 too)."""
    now = layer.state_dict()
    assert list(now) == list(state)
    for k, v in now.items():
        assert v.dtype == state[k].dtype and v.shape == state[k].shape, k
        assert v.tobytes() == state[k].tobytes(), k


def _randomize(layer, seed):
    """Parameters drawn afresh (and one bias entry -0.0), so nothing can pass by coincidence."""
    rng = np.random.default_rng(seed)
    for _, p in layer.named_parameters():
        p.data[...] = rng.uniform(-0.6, 0.6, p.data.shape).astype(np.float32)
    if layer.bias:
        next(p for n, p in layer.named_parameters() if n.startswith("bias")).data[0] = -0.0


# ---- ONNX Runtime and torch run the exported weights ---------------------------------------


def _onnx_session(layer, kind):
    """A graph of one ONNX node per layer (to_onnx's initializers, onnx_attributes' attributes),
    chained through Transpose/Reshape; inputs x (T, B, I) and each layer's initial states."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    cell = kind.endswith("Cell")
    op = kind[: -len("Cell")] if cell else kind
    L = 1 if cell else layer.num_layers
    D = 1 if cell else layer.num_directions
    Tn = 1 if cell else T
    states = ["h", "c"] if op == "LSTM" else ["h"]
    vi = helper.make_tensor_value_info
    inputs = [vi("x", TensorProto.FLOAT, [Tn, B, I])]
    nodes, inits, outputs, prev = [], [], [], "x"
    for k in range(L):
        init = interop.to_onnx(layer, k)
        inits += [numpy_helper.from_array(v, f"{n}{k}") for n, v in init.items()]
        inputs += [vi(f"{s}0_{k}", TensorProto.FLOAT, [D, B, H]) for s in states]
        ins = [prev, f"W{k}", f"R{k}", f"B{k}" if "B" in init else "", ""]
        ins += [f"{s}0_{k}" for s in states]
        outs = [f"y{k}"] + [f"{s}n_{k}" for s in states]
        nodes.append(helper.make_node(op, ins, outs, **interop.onnx_attributes(layer)))
        nodes.append(helper.make_node("Transpose", [f"y{k}"], [f"yt{k}"], perm=[0, 2, 1, 3]))
        inits.append(numpy_helper.from_array(np.array([Tn, B, D * H]), f"shape{k}"))
        nodes.append(helper.make_node("Reshape", [f"yt{k}", f"shape{k}"], [f"x{k + 1}"]))
        prev = f"x{k + 1}"
        outputs += [vi(f"{s}n_{k}", TensorProto.FLOAT, [D, B, H]) for s in states]
    outputs.insert(0, vi(prev, TensorProto.FLOAT, [Tn, B, D * H]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess, states


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
@pytest.mark.parametrize("batch_first", [False, True])
def test_layers_run_the_same_in_onnxruntime_and_torch_and_round_trip_bitwise(case, batch_first):
    kind, L, bi, bias = case
    layer = _make(kind, num_layers=L, bidirectional=bi, bias=bias, batch_first=batch_first)
    _randomize(layer, seed=L)
    layer.eval()
    D, op = layer.num_directions, kind.split("-")[0]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    hx = [rng.standard_normal((L * D, B, H)).astype(np.float32) for _ in range(1 + (op == "LSTM"))]
    xin = x.transpose(1, 0, 2).copy() if batch_first else x
    y, st = layer(xin, tuple(hx) if op == "LSTM" else hx[0])
    y = y.transpose(1, 0, 2) if batch_first else y
    st = list(st) if op == "LSTM" else [st]

    # ONNX Runtime: one node per layer, time-major whatever batch_first is
    sess, states = _onnx_session(layer, op)
    feed = {"x": x}
    for k in range(L):
        for s, h in zip(states, hx, strict=True):
            feed[f"{s}0_{k}"] = h[k * D : (k + 1) * D]
    got = sess.run(None, feed)
    np.testing.assert_allclose(got[0], y, rtol=1e-5, atol=1e-5)
    for j, ours in enumerate(st):
        theirs = np.concatenate([got[1 + k * len(states) + j] for k in range(L)])
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    # the torch module to_torch builds
    mod = interop.to_torch(layer)
    assert not mod.training and mod.batch_first == batch_first
    thx = tuple(map(torch.from_numpy, hx)) if op == "LSTM" else torch.from_numpy(hx[0])
    with torch.no_grad():
        ty, tst = mod(torch.from_numpy(xin), thx)
    ty = ty.numpy().transpose(1, 0, 2) if batch_first else ty.numpy()
    np.testing.assert_allclose(ty, y, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(st, tst if op == "LSTM" else [tst], strict=True):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)

    # bitwise back: from the torch module, its state dict, ONNX initializers
    want = _state(layer)
    _assert_bitwise(interop.from_torch(mod), want)
    opts = {"nonlinearity": layer.nonlinearity} if op == "RNN" else {}
    _assert_bitwise(interop.from_torch(mod.state_dict(), batch_first=batch_first, **opts), want)
    fresh = _make(kind, seed=9, num_layers=L, bidirectional=bi, bias=bias)
    for k in range(L):
        interop.from_onnx(
            fresh, **interop.to_onnx(layer, k), k=k, node=interop.onnx_attributes(layer)
        )
    _assert_bitwise(fresh, want)
    if op == "GRU" or not bias:  # Keras keeps both GRU biases; LSTM/RNN sum them (README)
        fresh = _make(kind, seed=9, num_layers=L, bidirectional=bi, bias=bias)
        for k, d in itertools.product(range(L), range(D)):
            interop.from_keras(fresh, interop.to_keras(layer, k, d), k, d)
        _assert_bitwise(fresh, want)


@pytest.mark.parametrize("case", CELL_CASES, ids=str)
def test_cells_run_the_same_in_onnxruntime_and_torch_and_round_trip_bitwise(case):
    kind, bias = case
    cell = _make(kind, bias=bias)
    _randomize(cell, seed=3)
    cell.eval()
    op = kind.split("-")[0]
    rng = np.random.default_rng(8)
    x = rng.standard_normal((B, I)).astype(np.float32)
    hx = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(1 + (op == "LSTMCell"))]
    out = cell(x, tuple(hx) if op == "LSTMCell" else hx[0])
    out = list(out) if op == "LSTMCell" else [out]

    sess, states = _onnx_session(cell, op)
    got = sess.run(None, {"x": x[None], **{f"{s}0_0": h[None] for s, h in zip(states, hx)}})
    np.testing.assert_allclose(got[0][0], out[0], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(out, got[1:], strict=True):
        np.testing.assert_allclose(ours, theirs[0], rtol=1e-5, atol=1e-5)

    mod = interop.to_torch(cell)
    assert type(mod) is getattr(torch.nn, op) and not mod.training
    thx = tuple(map(torch.from_numpy, hx)) if op == "LSTMCell" else torch.from_numpy(hx[0])
    with torch.no_grad():
        t_out = mod(torch.from_numpy(x), thx)
    for ours, theirs in zip(out, t_out if op == "LSTMCell" else [t_out], strict=True):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)

    want = _state(cell)
    _assert_bitwise(interop.from_torch(mod), want)
    opts = {"nonlinearity": cell.nonlinearity} if op == "RNNCell" else {}
    _assert_bitwise(interop.from_torch(mod.state_dict(), **opts), want)
    fresh = _make(kind, seed=9, bias=bias)
    interop.from_onnx(fresh, **interop.to_onnx(cell), node=interop.onnx_attributes(cell))
    _assert_bitwise(fresh, want)


# ---- findings ------------------------------------------------------------------------------


def _onnx_run_one_node(layer, attrs):
    """The output of one ONNX node with ``attrs`` on ``layer``'s initializers, for x (T, B, I)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    init = interop.to_onnx(layer)
    node = helper.make_node(type(layer).__name__, ["x", *init], ["y"], **attrs)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node],
        "g",
        [vi("x", TensorProto.FLOAT, [T, B, I])],
        [vi("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, n) for n, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    return x, sess.run(None, {"x": x})[0][:, 0]


def test_from_onnx_relu_layer_refuses_a_node_without_activations():
    """Before: a ReLU RNN took a node without ``activations``, whose ONNX default is Tanh (the
    node computes tanh, ONNX Runtime included), and the layer then ran ReLU on its weights."""
    onnx = pytest.importorskip("onnx")
    relu = _make("RNN-relu")
    x, y_onnx = _onnx_run_one_node(relu, {"hidden_size": H})  # the node: tanh
    assert np.abs(relu.eval()(x)[0] - y_onnx).max() > 1e-2  # what loading it would have meant
    before = _state(relu)
    for node in (
        {"hidden_size": H},
        onnx.helper.make_node("RNN", ["x", "W", "R", "B"], ["y"], hidden_size=H),
    ):
        with pytest.raises(ValueError, match=r"activations: expected \['Relu'\], got none"):
            interop.from_onnx(relu, **interop.to_onnx(_make("RNN-relu", seed=1)), node=node)
        _assert_bitwise(relu, before)
    # a tanh layer: the default is its activation
    tanh = _make("RNN")
    interop.from_onnx(tanh, **interop.to_onnx(_make("RNN", seed=1)), node={"hidden_size": H})
    _assert_bitwise(tanh, _state(_make("RNN", seed=1)))


@pytest.mark.parametrize("how", ["from_keras", "from_onnx"])
def test_from_keras_and_from_onnx_count_as_in_place_updates(how):
    """Before: load_state_dict marked the parameters updated (a saved forward's backward then
    refuses), from_keras/from_onnx did not: a Linear sharing weight_hh_l0 ran its backward
    with the new weights against the old forward."""
    from lstm_fast import nn as lnn

    layer = _make("LSTM")
    lin = lnn.Linear(H, 4 * H, seed=0)
    lin.weight = layer.weight_hh_l0  # one Parameter, two modules
    h = np.ones((2, H), np.float32)
    lin(h)
    other = _make("LSTM", seed=1)
    if how == "from_keras":
        interop.from_keras(layer, interop.to_keras(other))
    else:
        interop.from_onnx(layer, **interop.to_onnx(other))
    with pytest.raises(RuntimeError, match="weight was updated in place"):
        lin.backward(np.ones((2, 4 * H), np.float32))


def test_from_torch_options_that_the_state_dict_fixes():
    """Before: num_layers=/bidirectional=/bias=/hidden_size= raised Python's "got multiple values
    for keyword argument", and proj_size= a missing-keys error; a value that agrees is now
    accepted, one that contradicts the state dict raises naming both."""
    sd = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).state_dict()
    agree = dict(input_size=I, hidden_size=H, num_layers=2, bidirectional=True, bias=True)
    layer = interop.from_torch(sd, proj_size=np.int64(0), batch_first=True, **agree)
    assert (layer.num_layers, layer.bidirectional, layer.proj_size) == (2, True, 0)
    assert layer.batch_first
    for name, given, fixed in [
        ("num_layers", 3, 2),
        ("bidirectional", False, True),
        ("bias", False, True),
        ("hidden_size", 5, H),
        ("input_size", 2, I),
        ("proj_size", 2, 0),
        ("num_layers", True, 2),  # a bool is not the int 1 (nor 2)
        ("num_layers", 2.0, 2),  # nor a float (the constructor refuses one)
        ("bidirectional", 1, True),
    ]:
        with pytest.raises(
            ValueError, match=rf"{name}: expected {fixed!r} \(the state dict's\), got {given!r}"
        ):
            interop.from_torch(sd, **{name: given})
    cell_sd = torch.nn.GRUCell(I, H, bias=False).state_dict()
    assert not interop.from_torch(cell_sd, bias=False, hidden_size=H).bias
    with pytest.raises(ValueError, match=r"bias: expected False \(the state dict's\), got True"):
        interop.from_torch(cell_sd, bias=True)
    with pytest.raises(TypeError, match=r"\['batch_first'\]: not options of a cell"):
        interop.from_torch(cell_sd, batch_first=True)


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."]
)
def test_from_torch_state_dict_of_a_wrapped_module(prefix):
    """Before: the state dict of a DataParallel/DistributedDataParallel (``module.``) or
    torch.compile'd (``_orig_mod.``) LSTM raised "expected the keys of a torch LSTM"; these
    wrappers add a prefix to every key and nothing else, so it is taken off (as torch's
    consume_prefix_in_state_dict_if_present)."""
    mod = torch.nn.GRU(I, H, num_layers=2).eval()
    sd = {prefix + k: v for k, v in mod.state_dict().items()}
    _assert_bitwise(interop.from_torch(sd), _state(interop.from_torch(mod)))


def test_from_torch_wrapped_modules():
    """Before: from_torch(DataParallel(lstm)) and from_torch(torch.compile(lstm)) raised
    "expected a torch LSTM, GRU, RNN or cell, got DataParallel / OptimizedModule"."""
    mod = torch.nn.LSTM(I, H, proj_size=2, batch_first=True).eval()
    want = _state(interop.from_torch(mod))
    for wrapped in (torch.nn.DataParallel(mod), torch.compile(mod)):
        layer = interop.from_torch(wrapped)
        assert layer.batch_first and layer.proj_size == 2 and not layer.training
        _assert_bitwise(layer, want)


def test_from_torch_state_dict_keys_named_in_errors():
    """Before: a model's state dict (``encoder.rnn.weight_ih_l0``) or a misspelt key
    (``weight_hh_10``) raised the same generic message; the key at fault is now named."""
    sd = torch.nn.LSTM(I, H).state_dict()
    with pytest.raises(
        ValueError,
        match=r"state_dict: expected the keys of a torch .* got 'encoder\.rnn\.weight_ih_l0' "
        r".*the entries under 'encoder\.rnn\.'",
    ):
        interop.from_torch(
            {"encoder.rnn." + k: v for k, v in sd.items()} | {"head.w": sd["bias_ih_l0"]}
        )
    bad = {("weight_hh_10" if k == "weight_hh_l0" else k): v for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"state_dict: expected a key 'weight_hh_l0' beside"):
        interop.from_torch(bad)


@pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning")
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "prune"])
def test_from_torch_reads_weights_as_the_next_forward_computes_them(kind):
    """Before: with torch.nn.utils.weight_norm / spectral_norm (the hook versions) or prune, the
    module's ``weight_hh_l0`` attribute is recomputed by a forward pre-hook, so after an
    optimizer step it is stale until the next forward: from_torch copied the stale one and the
    layer's outputs differed from the module's (by 2e-3 to 8e-3)."""
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    mod = torch.nn.LSTM(I, H)
    if kind == "weight_norm":
        torch.nn.utils.weight_norm(mod, "weight_hh_l0")
    elif kind == "spectral_norm":
        torch.nn.utils.spectral_norm(mod, "weight_hh_l0")
    else:
        prune.l1_unstructured(mod, "weight_hh_l0", amount=0.5)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    opt = torch.optim.SGD(mod.parameters(), lr=0.5)
    mod(torch.from_numpy(x))[0].sum().backward()
    opt.step()
    mod.eval()
    layer = interop.from_torch(mod)
    with torch.no_grad():
        ref = mod(torch.from_numpy(x))[0].numpy()
        np.testing.assert_array_equal(layer.weight_hh_l0.data, mod.weight_hh_l0.numpy())
    np.testing.assert_allclose(layer(x)[0], ref, rtol=1e-5, atol=1e-5)


def test_from_torch_sparse_tensor_named():
    """Before: a sparse tensor raised torch's "can't convert Sparse layout tensor to numpy",
    naming no key (torch's own load_state_dict refuses it too)."""
    sd = torch.nn.GRU(I, H).state_dict()
    sd["weight_hh_l0"] = sd["weight_hh_l0"].to_sparse()
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected a dense tensor, got .*sparse"):
        interop.from_torch(sd)
    layer = _make("GRU")
    before = _state(layer)
    with pytest.raises(ValueError, match=r"W: expected a dense tensor, got .*sparse"):
        interop.from_onnx(
            layer,
            torch.from_numpy(interop.to_onnx(layer)["W"]).to_sparse(),
            interop.to_onnx(layer)["R"],
        )
    _assert_bitwise(layer, before)


def test_wrong_shapes_refused_before_any_conversion():
    """Before: an array of the wrong shape was converted to float32 (a copy) before its shape was
    checked, so a large wrong one (here a broadcast float64 view and an expanded bfloat16
    tensor, next to no memory) failed with MemoryError / torch's allocator error, naming no
    array; a state dict's unexpected key was converted before the keys were compared."""
    layer = _make("GRU")
    before = _state(layer)
    huge64 = np.broadcast_to(np.float64(0), (1, 10**8, 10**8))
    with pytest.raises(ValueError, match=r"W: expected shape \(D, G, I\) = \(1, 12, 3\)"):
        interop.from_onnx(layer, huge64, np.zeros((1, 12, H)))
    huge16 = torch.zeros(1, dtype=torch.bfloat16).expand(10**8, 10**8)
    with pytest.raises(ValueError, match=r"kernel: expected shape \(I, G\) = \(3, 12\)"):
        interop.from_keras(layer, [huge16, np.zeros((H, 12))])
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 3H\)"):
        w = interop.to_keras(layer)
        interop.from_keras(layer, [w[0], w[1], np.broadcast_to(np.float64(0), (10**8, 10**8))])
    _assert_bitwise(layer, before)
    sd = torch.nn.GRU(I, H).state_dict()
    with pytest.raises(RuntimeError, match=r"unexpected keys \['extra'\]"):
        interop.from_torch({**sd, "extra": huge16})
    with pytest.raises(ValueError, match=r"bias_hh_l0: expected shape \(12,\), got \(100000000, "):
        interop.from_torch({**sd, "bias_hh_l0": huge16})


def test_onnx_node_mapping_with_malformed_values():
    """Before: {"hidden_size": "x"} raised int()'s "invalid literal for int() with base 10", a
    string for ``activations`` was read letter by letter (got ['S', 'i', 'g', ...])."""
    gru = _make("GRU")
    init = interop.to_onnx(gru)
    with pytest.raises(ValueError, match=r"node: hidden_size: expected 4 \(the layer's\), got 'x'"):
        interop.from_onnx(gru, **init, node={"hidden_size": "x", "linear_before_reset": 1})
    with pytest.raises(ValueError, match=r"node: hidden_size: expected 4 \(the layer's\), got 4.5"):
        interop.from_onnx(gru, **init, node={"hidden_size": 4.5, "linear_before_reset": 1})
    with pytest.raises(
        ValueError, match=r"node: activations: expected a list of names such as \['Sigmoid', "
    ):
        interop.from_onnx(gru, **init, node={"linear_before_reset": 1, "activations": "Sigmoid"})


def test_projection_refusals_name_proj_size_and_its_value():
    """ONNX's LSTM and Keras's have no projection: to_onnx/from_onnx/onnx_attributes/to_keras/
    from_keras refuse proj_size > 0, now saying so as the house's other errors (name, expected,
    given), and a refused import leaves the layer as it was."""
    layer = lstm_fast.LSTM(I, H, proj_size=2, num_layers=2, seed=0)
    before = _state(layer)
    plain = interop.to_onnx(lstm_fast.LSTM(I, H))
    for f in (
        lambda: interop.to_onnx(layer),
        lambda: interop.onnx_attributes(layer),
        lambda: interop.to_keras(layer),
        lambda: interop.from_onnx(layer, **plain),
        lambda: interop.from_keras(layer, interop.to_keras(lstm_fast.LSTM(I, H))),
    ):
        with pytest.raises(
            ValueError, match=r"no (LSTM )?projection: proj_size: expected 0, got 2"
        ):
            f()
    _assert_bitwise(layer, before)


def test_from_onnx_takes_initializers_as_tensor_protos():
    """Before: the initializers of an ONNX model (``onnx.TensorProto``, what
    ``model.graph.initializer`` holds) raised "W: expected a real numeric array, got dtype
    object"; they are read with onnx.numpy_helper, their shape checked first."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    src, dst = _make("LSTM", bidirectional=True), _make("LSTM", seed=1, bidirectional=True)
    protos = {n: numpy_helper.from_array(v, n) for n, v in interop.to_onnx(src).items()}
    assert isinstance(protos["W"], onnx.TensorProto)
    interop.from_onnx(dst, **protos)
    _assert_bitwise(dst, _state(src))
    before = _state(dst)
    with pytest.raises(ValueError, match=r"R: expected shape \(D, G, H\) = \(2, 16, 4\), got"):
        interop.from_onnx(dst, protos["W"], protos["W"], protos["B"])
    _assert_bitwise(dst, before)


# ---- coverage: Keras semantics, refused calls, odd values and modules -------------------------


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _keras_layer(kind, x, kernel, rec, bias, act):
    """Keras LSTM (i, f, c, o; one bias), GRU(reset_after=True) (z, r, h; bias (2, G)) or
    SimpleRNN on x (T, B, I), zero initial state, float64."""
    Hk = rec.shape[0]
    h = c = np.zeros((x.shape[1], Hk))
    bias = np.zeros(kernel.shape[1] * (2 if kind == "GRU" else 1)) if bias is None else bias
    ys = []
    for x_t in x:
        if kind == "LSTM":
            z = x_t @ kernel + h @ rec + bias
            i, f, g, o = (z[:, q * Hk : (q + 1) * Hk] for q in range(4))
            c = _sig(f) * c + _sig(i) * np.tanh(g)
            h = _sig(o) * np.tanh(c)
        elif kind == "GRU":
            b = np.reshape(bias, (2, -1))
            mx, mh = x_t @ kernel + b[0], h @ rec + b[1]
            z = _sig(mx[:, :Hk] + mh[:, :Hk])
            r = _sig(mx[:, Hk : 2 * Hk] + mh[:, Hk : 2 * Hk])
            hh = np.tanh(mx[:, 2 * Hk :] + r * mh[:, 2 * Hk :])
            h = z * h + (1 - z) * hh
        else:
            h = act(x_t @ kernel + h @ rec + bias)
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "RNN-relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_keras_exports_run_as_a_keras_stack(kind, bias):
    """to_keras of every layer and direction, run with Keras's equations as a stack of
    Bidirectional(concat) layers (the backward layer reads the reversed sequence, its output
    reversed back), gives the layer's output: biases summed (LSTM/RNN) or kept (GRU)."""
    layer = _make(kind, num_layers=2, bidirectional=True, bias=bias)
    _randomize(layer, seed=5)
    op = kind.split("-")[0]
    act = (lambda v: np.maximum(v, 0)) if kind.endswith("relu") else np.tanh
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    inp = x.astype(np.float64)
    for k in range(2):
        outs = []
        for d in range(2):
            w = [a.astype(np.float64) for a in interop.to_keras(layer, k, d)]
            assert len(w) == (3 if bias else 2)
            seq = inp[::-1] if d else inp
            y = _keras_layer(op, seq, w[0], w[1], w[2] if bias else None, act)
            outs.append(y[::-1] if d else y)
        inp = np.concatenate(outs, axis=-1)
    np.testing.assert_allclose(layer.eval()(x)[0], inp, rtol=1e-5, atol=1e-5)


REFUSED = [
    ("keras k=True", lambda L, w, o: interop.from_keras(L, w, k=True)),
    ("keras k=1.0", lambda L, w, o: interop.from_keras(L, w, k=1.0)),
    ("keras k=np.float64", lambda L, w, o: interop.from_keras(L, w, k=np.float64(0))),
    ("keras direction=2", lambda L, w, o: interop.from_keras(L, w, direction=2)),
    ("keras direction=-1", lambda L, w, o: interop.from_keras(L, w, direction=-1)),
    ("keras kernel.T", lambda L, w, o: interop.from_keras(L, [w[0].T, w[1], w[2]])),
    ("keras recurrent.T", lambda L, w, o: interop.from_keras(L, [w[0], w[1].T, w[2]])),
    ("keras 3 gates", lambda L, w, o: interop.from_keras(L, [w[0][:, :12], w[1], w[2]])),
    ("keras bias last bad", lambda L, w, o: interop.from_keras(L, [w[0], w[1], w[2][:-1]])),
    ("keras complex", lambda L, w, o: interop.from_keras(L, [w[0], w[1] + 0j, w[2]])),
    ("keras bool", lambda L, w, o: interop.from_keras(L, [w[0], w[1], w[2] > 0])),
    (
        "keras 1e300",
        lambda L, w, o: interop.from_keras(L, [w[0], w[1], w[2].astype(np.float64) * 1e300]),
    ),
    ("keras strings", lambda L, w, o: interop.from_keras(L, [w[0], w[1].astype(str), w[2]])),
    ("keras one array", lambda L, w, o: interop.from_keras(L, w[:1])),
    ("keras dict", lambda L, w, o: interop.from_keras(L, dict(enumerate(w)))),
    ("onnx k=np.bool_", lambda L, w, o: interop.from_onnx(L, **o, k=np.bool_(False))),
    ("onnx k=2", lambda L, w, o: interop.from_onnx(L, **o, k=2)),
    ("onnx W (G, I)", lambda L, w, o: interop.from_onnx(L, o["W"][0], o["R"], o["B"])),
    ("onnx W.T", lambda L, w, o: interop.from_onnx(L, o["W"].transpose(0, 2, 1), o["R"])),
    ("onnx B (2G,)", lambda L, w, o: interop.from_onnx(L, o["W"], o["R"], o["B"][0])),
    (
        "onnx B 1e300",
        lambda L, w, o: interop.from_onnx(L, o["W"], o["R"], o["B"].astype(np.float64) * 1e300),
    ),
    ("onnx node clip", lambda L, w, o: interop.from_onnx(L, **o, node={"clip": 1.0})),
    ("onnx node str", lambda L, w, o: interop.from_onnx(L, **o, node="LSTM")),
]


@pytest.mark.parametrize("name,call", REFUSED, ids=[n for n, _ in REFUSED])
def test_refused_imports_leave_the_layer_and_its_saved_forward_as_they_were(name, call):
    """Every refused from_keras/from_onnx raises a ValueError/TypeError naming what it refuses,
    and changes nothing: every parameter bitwise, their versions, and the training forward's
    cache (its backward still runs and gives the gradients it gives without the call)."""
    layer = _make("LSTM", num_layers=2, bidirectional=True)
    twin = _make("LSTM", num_layers=2, bidirectional=True)
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    dy = np.random.default_rng(3).standard_normal((T, B, 2 * H)).astype(np.float32)
    layer(x), twin(x)
    before = _state(layer)
    versions = [getattr(p, "_version", 0) for p in layer.parameters()]
    other = _make("LSTM", seed=1, num_layers=2, bidirectional=True)
    with pytest.raises((ValueError, TypeError)):
        call(layer, interop.to_keras(other), interop.to_onnx(other))
    _assert_bitwise(layer, before)
    assert [getattr(p, "_version", 0) for p in layer.parameters()] == versions
    layer.backward(dy), twin.backward(dy)
    for (n, p), q in zip(layer.named_parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=n)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_nan_inf_and_negative_zero_weights_round_trip_bitwise(kind):
    """NaN (with a payload), +-inf and -0.0 are weights like any other: every export and
    import keeps their bits (torch, its state dict, ONNX, Keras where the biases are kept)."""
    layer = _make(kind, bias=True, **({} if kind.endswith("Cell") else {"bidirectional": True}))
    payload = np.array([0x7FC01234], np.uint32).view(np.float32)[0]
    for i, (_, p) in enumerate(layer.named_parameters()):
        flat = p.data.reshape(-1)
        flat[i % flat.size] = payload
        flat[(i + 1) % flat.size] = np.inf
        flat[(i + 2) % flat.size] = -np.inf
        flat[(i + 3) % flat.size] = -0.0
    want = _state(layer)
    op = kind.replace("Cell", "")
    opts = {"nonlinearity": "tanh"} if op == "RNN" else {}
    _assert_bitwise(interop.from_torch(interop.to_torch(layer)), want)
    _assert_bitwise(interop.from_torch(interop.to_torch(layer).state_dict(), **opts), want)
    fresh = _make(kind, seed=3, **({} if kind.endswith("Cell") else {"bidirectional": True}))
    interop.from_onnx(fresh, **interop.to_onnx(layer))
    _assert_bitwise(fresh, want)
    if op == "GRU":
        fresh = _make(kind, seed=3, **({} if kind.endswith("Cell") else {"bidirectional": True}))
        for d in range(1 if kind.endswith("Cell") else 2):
            interop.from_keras(fresh, interop.to_keras(layer, 0, d), 0, d)
        _assert_bitwise(fresh, want)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN-relu"])
def test_input_and_hidden_size_one(kind):
    """I = H = 1 (G = 4, 3, 1): the state dict's kind and sizes are read right, ONNX Runtime and
    torch run the exports, everything round-trips."""
    global I, H
    saved = I, H
    I, H = 1, 1
    try:
        layer = _make(kind, num_layers=2, bidirectional=True)
        _randomize(layer, seed=4)
        layer.eval()
        op = kind.split("-")[0]
        opts = {"nonlinearity": "relu"} if op == "RNN" else {}
        again = interop.from_torch(interop.to_torch(layer).state_dict(), **opts)
        assert type(again) is type(layer) and (again.input_size, again.hidden_size) == (1, 1)
        _assert_bitwise(again, _state(layer))
        x = np.random.default_rng(0).standard_normal((T, B, 1)).astype(np.float32)
        sess, states = _onnx_session(layer, op)
        zeros = {f"{s}0_{k}": np.zeros((2, B, 1), np.float32) for s in states for k in range(2)}
        np.testing.assert_allclose(
            sess.run(None, {"x": x, **zeros})[0], layer(x)[0], rtol=1e-5, atol=1e-5
        )
    finally:
        I, H = saved


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "GRUCell"])
def test_from_torch_odd_modules(kind, dtype):
    """A module on another dtype, with a non-contiguous parameter, in training mode with
    dropout: the weights come widened exactly (or rounded from float64), the settings and the
    mode carry over, the outputs (in eval mode) match the module's in float32."""
    torch.manual_seed(0)
    cell = kind.endswith("Cell")
    kw = {} if cell else {"num_layers": 2, "dropout": 0.25, "batch_first": True}
    mod = getattr(torch.nn, kind)(I, H, **kw).to(getattr(torch, dtype)).train()
    with torch.no_grad():
        w = mod.weight_hh_l0 if not cell else mod.weight_hh
        strided = torch.nn.Parameter(w.detach().t().contiguous().t())
    assert not strided.is_contiguous() and strided.requires_grad
    setattr(mod, "weight_hh" if cell else "weight_hh_l0", strided)
    layer = interop.from_torch(mod)
    assert layer.training
    if not cell:
        assert layer.dropout == 0.25 and layer.batch_first
    for name, p in mod.named_parameters():
        np.testing.assert_array_equal(
            getattr(layer, name).data, p.detach().float().numpy(), strict=True
        )
    f32 = mod.float().eval()
    layer.eval()
    x = np.random.default_rng(0).standard_normal((B, T, I) if not cell else (B, I))
    x = x.astype(np.float32)
    with torch.no_grad():
        ref = f32(torch.from_numpy(x))
    ref = ref[0] if not cell else ref
    got = layer(x)[0] if not cell else layer(x)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "L,bi,bias,batch_first",
    list(itertools.product([1, 2, 3], [False, True], [True, False], [False, True])),
)
def test_projection_layers_run_the_same_in_to_torchs_module(L, bi, bias, batch_first):
    """An LSTM with proj_size (which ONNX and Keras cannot hold, see above): the module to_torch
    builds gives the layer's outputs and states, and comes back bitwise (module, state dict)."""
    P = 2
    layer = lstm_fast.LSTM(
        I, H, num_layers=L, bidirectional=bi, bias=bias, batch_first=batch_first, proj_size=P
    )
    _randomize(layer, seed=L)
    layer.eval()
    D = 2 if bi else 1
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((L * D, B, P)).astype(np.float32)
    c0 = rng.standard_normal((L * D, B, H)).astype(np.float32)
    y, (hn, cn) = layer(x, (h0, c0))
    mod = interop.to_torch(layer)
    assert mod.proj_size == P and mod.batch_first == batch_first
    with torch.no_grad():
        ty, (thn, tcn) = mod(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    for ours, theirs in ((y, ty), (hn, thn), (cn, tcn)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)
    _assert_bitwise(interop.from_torch(mod), _state(layer))
    _assert_bitwise(interop.from_torch(mod.state_dict(), batch_first=batch_first), _state(layer))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["LSTM", "RNN", "GRUCell", "RNNCell"])
def test_from_torch_scripted_modules(kind):
    """Before: a torch.jit.script'ed module raised "expected a torch LSTM, GRU, RNN or cell, got
    RecursiveScriptModule", though it keeps the settings and weights; it is read by its
    ``original_name`` now."""
    kw = {"num_layers": 2, "proj_size": 2, "batch_first": True} if kind == "LSTM" else {}
    if kind.startswith("RNN"):
        kw["nonlinearity"] = "relu"
    mod = getattr(torch.nn, kind)(I, H, **kw).eval()
    layer = interop.from_torch(torch.jit.script(mod))
    assert type(layer).__name__ == kind and not layer.training
    _assert_bitwise(layer, _state(interop.from_torch(mod)))
    if kind == "LSTM":
        assert layer.batch_first and layer.proj_size == 2 and layer.num_layers == 2
    if kind.startswith("RNN"):
        assert layer.nonlinearity == "relu"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_from_torch_quantized_and_traced_modules_are_refused_clearly():
    """Before: a dynamically quantized LSTM (torch.ao.quantization.quantize_dynamic, whose class is
    also named LSTM) raised AttributeError "'LSTM' object has no attribute 'proj_size'", and its
    state dict the generic keys message; a module without the settings (a traced one) would
    raise AttributeError too. Each now names what it is and what is missing."""
    seq = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(torch.nn.LSTM(I, H)), {torch.nn.LSTM}, dtype=torch.qint8
    )
    with pytest.raises(ValueError, match=r"module: expected a float torch LSTM, got .*quantized"):
        interop.from_torch(seq[0])
    with pytest.raises(ValueError, match=r"got \['_all_weight_values.0.param'\].*quantized"):
        interop.from_torch(seq[0].state_dict())
    with pytest.raises(ValueError, match=r"module: expected a float torch LSTM, got .*quantiz"):
        interop.from_torch(torch.ao.nn.quantizable.LSTM(I, H))
    traced = torch.jit.trace(torch.nn.GRU(I, H), (torch.zeros(T, B, I),))  # no settings kept
    with pytest.raises(
        ValueError, match=r"module: expected the setting 'num_layers' of a torch GRU"
    ):
        interop.from_torch(traced)
    traced_sd = {k: v.detach() for k, v in traced.state_dict().items()}
    _assert_bitwise(interop.from_torch(traced_sd), {k: v.numpy() for k, v in traced_sd.items()})


@pytest.mark.parametrize("kind", ["LSTM", "GRUCell"])
def test_to_torch_ignores_torchs_default_dtype_and_device(kind):
    """Before: to_torch built its module with torch's defaults, so after
    torch.set_default_dtype(torch.float64) it was a float64 module (float32 input raised "input
    dtype does not match weight dtype"), and under torch.set_default_device("meta") a module
    without weights (load_state_dict into meta is a no-op, a warning). The module is float32 on
    the CPU, as the layer; .to() moves it."""
    layer = _make(kind)
    want = _state(layer)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        mod = interop.to_torch(layer)
    finally:
        torch.set_default_dtype(old)
    assert all(p.dtype == torch.float32 for p in mod.parameters())
    _assert_bitwise(interop.from_torch(mod), want)
    torch.set_default_device("meta")
    try:
        mod = interop.to_torch(layer)
    finally:
        torch.set_default_device(None)
    assert all(p.device.type == "cpu" for p in mod.parameters())
    _assert_bitwise(interop.from_torch(mod), want)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "RNN-relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_from_onnx_reads_a_model_torch_onnx_export_wrote(kind, bias):
    """What a user holding an ONNX file has: torch.onnx.export's model of a 2-layer bidirectional
    torch module. Each layer's node and its initializers (TensorProtos, looked up by the node's
    input names) load into a fresh layer bitwise equal to from_torch(module)."""
    import io

    onnx = pytest.importorskip("onnx")
    op = kind.split("-")[0]
    kw = {"nonlinearity": "relu"} if kind.endswith("relu") else {}
    torch.manual_seed(0)
    mod = getattr(torch.nn, op)(I, H, num_layers=2, bidirectional=True, bias=bias, **kw).eval()
    f = io.BytesIO()
    try:
        torch.onnx.export(mod, (torch.zeros(T, B, I),), f, dynamo=False, opset_version=14)
    except Exception as e:  # an exporter this torch no longer has
        pytest.skip(f"torch.onnx.export: {type(e).__name__}: {e}")
    model = onnx.load_from_string(f.getvalue())
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == op]
    assert len(nodes) == 2
    layer = _make(kind, seed=5, num_layers=2, bidirectional=True, bias=bias)
    for k, node in enumerate(nodes):
        W, R = inits[node.input[1]], inits[node.input[2]]
        Bias = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
        interop.from_onnx(layer, W, R, Bias, k, node=node)
    _assert_bitwise(layer, _state(interop.from_torch(mod)))


def test_from_keras_names_a_bidirectional_layers_weights_and_a_quantized_tensor():
    """A Keras Bidirectional layer's get_weights() holds both directions (6 arrays, 4 without
    bias): the error said "got 6 arrays" only, now how to load them; a quantized tensor said
    ".to_dense() it first" (a sparse tensor's fix), now .dequantize()."""
    layer = _make("GRU", bidirectional=True)
    both = interop.to_keras(layer, 0, 0) + interop.to_keras(layer, 0, 1)
    with pytest.raises(ValueError, match=r"got 6 arrays \(a Bidirectional layer's\? load "):
        interop.from_keras(layer, both)
    fresh = _make("GRU", seed=1, bidirectional=True)
    interop.from_keras(fresh, both[:3], direction=0)
    interop.from_keras(fresh, both[3:], direction=1)
    _assert_bitwise(fresh, _state(layer))
    w, before = interop.to_keras(layer), _state(layer)
    q = torch.quantize_per_tensor(torch.from_numpy(w[1]), 0.1, 0, torch.qint8)
    with pytest.raises(
        ValueError, match=r"recurrent_kernel: .*quantized tensor \(\.dequantize\(\)"
    ):
        interop.from_keras(layer, [w[0], q, w[2]])
    _assert_bitwise(layer, before)


def test_from_torch_state_dict_keys_checked_before_the_layer_is_built(monkeypatch):
    """Before: a stray key (``weight_ih_l999``, a corrupt or hand-edited file) made from_torch
    build and randomly initialize a 1000-layer LSTM first, then raise a missing-keys error
    listing some 4000 names. The keys are compared before anything is built, and the lists in
    the message are cut to their first few names and counted."""
    sd = torch.nn.LSTM(I, H, num_layers=2).state_dict()
    bad = {**sd, "weight_ih_l999": sd["weight_ih_l1"]}

    def boom(*a, **kw):
        raise AssertionError("a layer was built for a state dict whose keys do not match")

    monkeypatch.setitem(interop._LAYERS, "LSTM", boom)
    with pytest.raises(
        RuntimeError, match=r"missing keys \['weight_ih_l2', 'weight_hh_l2', .*\(3991 in all\)"
    ) as e:
        interop.from_torch(bad)
    assert len(str(e.value)) < 1000
    bad = {**sd, "weight_ih_l99999999": sd["weight_ih_l1"], "weight_hh_l01": sd["weight_hh_l1"]}
    with pytest.raises(
        RuntimeError, match=r"\(399999991 in all\), unexpected keys \['weight_hh_l01'\]"
    ):
        interop.from_torch(bad)  # (the names counted, not listed)
    # a missing key is named as missing, whichever it is (before: without weight_ih_l1 the
    # state dict was read as one layer's, and weight_hh_l1, bias_ih_l1, ... named unexpected)
    for drop in ["bias_hh_l1", "weight_ih_l1", "bias_ih_l0"]:
        partial = {k: v for k, v in sd.items() if k != drop}
        with pytest.raises(RuntimeError, match=rf"missing keys \['{drop}'\], unexpected keys \[\]"):
            interop.from_torch(partial)
    bi = torch.nn.GRU(I, H, bidirectional=True, bias=False).state_dict()
    partial = {k: v for k, v in bi.items() if k != "weight_ih_l0_reverse"}
    with pytest.raises(RuntimeError, match=r"missing keys \['weight_ih_l0_reverse'\], unexp"):
        interop.from_torch(partial)
    monkeypatch.undo()
    _assert_bitwise(interop.from_torch(sd), {k: v.numpy() for k, v in sd.items()})


def test_random_sizes_round_trip_and_run_in_torch():
    """Random kinds, sizes (I, H, P from 1), layers and flags (hypothesis, 40 examples): the state
    dict alone rebuilds the layer bitwise, to_torch's module runs it, ONNX initializers (no
    projection) round-trip bitwise."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        kind=st.sampled_from(["LSTM", "GRU", "RNN", "RNN-relu", "LSTMCell", "GRUCell", "RNNCell"]),
        i=st.integers(1, 7),
        h=st.integers(1, 7),
        p=st.integers(0, 6),
        L=st.integers(1, 3),
        bi=st.booleans(),
        bias=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def check(kind, i, h, p, L, bi, bias, seed):
        op = kind.split("-")[0]
        cell = op.endswith("Cell")
        kw = {"nonlinearity": "relu"} if kind.endswith("relu") else {}
        if not cell:
            kw.update(num_layers=L, bidirectional=bi)
        if op == "LSTM" and p < h:
            kw["proj_size"] = p
        layer = getattr(lstm_fast, op)(i, h, bias=bias, seed=seed, **kw).eval()
        want = _state(layer)
        opts = {"nonlinearity": layer.nonlinearity} if op.startswith("RNN") else {}
        _assert_bitwise(interop.from_torch(interop.to_torch(layer).state_dict(), **opts), want)
        x = np.random.default_rng(seed).standard_normal((2, i) if cell else (3, 2, i))
        x = x.astype(np.float32)
        with torch.no_grad():
            ref = interop.to_torch(layer)(torch.from_numpy(x))
        ref = ref[0] if not cell or op == "LSTMCell" else ref
        got = layer(x)[0] if not cell or op == "LSTMCell" else layer(x)
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
        if not getattr(layer, "proj_size", 0):
            fresh = getattr(lstm_fast, op)(i, h, bias=bias, seed=seed + 1, **kw)
            for k in range(1 if cell else L):
                interop.from_onnx(fresh, **interop.to_onnx(layer, k), k=k)
            _assert_bitwise(fresh, want)

    check()


def test_cell_and_layer_state_dicts_are_not_mixed_up():
    """A cell's state dict builds a cell (a layer's option for it raises naming it), a layer's a
    layer; loading one into the other raises naming every key, and changes nothing."""
    cell_sd = torch.nn.LSTMCell(I, H).state_dict()
    layer_sd = torch.nn.LSTM(I, H).state_dict()
    assert isinstance(interop.from_torch(cell_sd), lstm_fast.LSTMCell)
    assert isinstance(interop.from_torch(layer_sd), lstm_fast.LSTM)
    with pytest.raises(TypeError, match=r"\['num_layers'\]: not options of a cell \(LSTMCell\)"):
        interop.from_torch(cell_sd, num_layers=1)
    for target, sd in ((_make("LSTM"), cell_sd), (_make("LSTMCell"), layer_sd)):
        before = _state(target)
        with pytest.raises(RuntimeError, match=r"missing keys \['weight_ih.*unexpected keys"):
            target.load_state_dict(sd)
        _assert_bitwise(target, before)
    with pytest.raises(RuntimeError, match=r"unexpected keys \['weight_ih', 'weight_hh'"):
        interop.from_torch({**layer_sd, **cell_sd})


# ---- lstm_fast/module.py: load_state_dict names a tensor it cannot read, shape first ----------


@pytest.mark.filterwarnings("ignore:.*quantize")
@pytest.mark.parametrize("how", ["sparse", "quantized"])
def test_load_state_dict_names_a_sparse_or_quantized_tensor(how):
    layer = _make("GRU")
    sd = {k: torch.from_numpy(v) for k, v in layer.state_dict().items()}
    w = sd["weight_ih_l0"]
    sd["weight_ih_l0"] = (
        w.to_sparse() if how == "sparse" else torch.quantize_per_tensor(w, 0.1, 0, torch.qint8)
    )
    with pytest.raises(ValueError, match=r"load_state_dict: weight_ih_l0: expected a dense"):
        layer.load_state_dict(sd)


def test_load_state_dict_checks_the_shape_before_widening():
    layer = _make("GRU")
    sd = {k: torch.from_numpy(v) for k, v in layer.state_dict().items()}
    sd["weight_ih_l0"] = torch.zeros(1, dtype=torch.bfloat16).expand(10**8, 10**8)
    with pytest.raises(ValueError, match=r"weight_ih_l0: expected shape \(12, 3\)"):
        layer.load_state_dict(sd)
