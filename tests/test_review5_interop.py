"""Review 5, weight interop: torch state dicts and odd modules, every layer shape through torch and
ONNX Runtime, ONNX node attributes the layer cannot represent, bitwise Keras round trips."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import interop

torch = pytest.importorskip("torch")

# kind, num_layers, bidirectional, bias, proj_size
TORCH_CASES = [
    (kind, L, bi, bias, P)
    for kind, L, bi, bias, P in itertools.product(
        ["LSTM", "GRU", "RNN"], [1, 2, 3], [False, True], [False, True], [0, 2]
    )
    if not (P and kind != "LSTM")
]


def _torch_module(kind, L, bi, bias, P, **kw):
    if P:
        kw["proj_size"] = P
    return getattr(torch.nn, kind)(5, 4, num_layers=L, bidirectional=bi, bias=bias, **kw).eval()


def _assert_same_state(mod, back):
    a, b = mod.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
@pytest.mark.parametrize("source", ["module", "state_dict"])
def test_torch_round_trip_every_shape(case, source):
    """torch -> lstm_fast -> torch is bitwise for every layer shape, from a module and (as the
    README says) from a bare state dict; outputs with initial states match torch's."""
    kind, L, bi, bias, P = case
    mod = _torch_module(kind, L, bi, bias, P, nonlinearity="relu") if kind == "RNN" else None
    mod = mod if mod is not None else _torch_module(kind, L, bi, bias, P)
    if source == "module":
        ours = interop.from_torch(mod)
    else:
        opts = {"nonlinearity": "relu"} if kind == "RNN" else {}
        ours = interop.from_torch(mod.state_dict(), **opts).eval()
    _assert_same_state(mod, interop.to_torch(ours))
    rng = np.random.default_rng(L)
    D, B = 2 if bi else 1, 3
    x = rng.standard_normal((6, B, 5)).astype(np.float32)
    h0 = rng.standard_normal((L * D, B, P or 4)).astype(np.float32)
    c0 = rng.standard_normal((L * D, B, 4)).astype(np.float32)
    hx = (h0, c0) if kind == "LSTM" else h0
    thx = tuple(map(torch.from_numpy, hx)) if kind == "LSTM" else torch.from_numpy(hx)
    with torch.no_grad():
        ref = mod(torch.from_numpy(x), thx)[0].numpy()
    np.testing.assert_allclose(ours(x, hx)[0], ref, rtol=1e-5, atol=1e-5)


def test_from_torch_state_dict_infers_the_layer():
    sd = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3).state_dict()
    ours = interop.from_torch(sd, batch_first=True)
    assert isinstance(ours, lstm_fast.LSTM)
    assert (ours.input_size, ours.hidden_size, ours.proj_size) == (5, 6, 3)
    assert ours.num_layers == 2 and ours.bidirectional and ours.bias and ours.batch_first
    cell = interop.from_torch(torch.nn.GRUCell(5, 6, bias=False).state_dict())
    assert isinstance(cell, lstm_fast.GRUCell) and not cell.bias
    rnn_sd = torch.nn.RNN(5, 6).state_dict()
    with pytest.raises(TypeError, match="nonlinearity: expected 'tanh' or 'relu'"):
        interop.from_torch(rnn_sd)  # tanh or relu: the weights cannot tell, never a guess
    relu = interop.from_torch(rnn_sd, nonlinearity="relu")
    assert isinstance(relu, lstm_fast.RNN) and relu.nonlinearity == "relu"
    # keep_vars=True: parameters that require grad; a float64 and a non-contiguous tensor
    sd = dict(torch.nn.GRU(5, 6).state_dict(keep_vars=True))
    assert sd["weight_hh_l0"].requires_grad
    sd["bias_ih_l0"] = sd["bias_ih_l0"].detach().double()
    w = sd["weight_ih_l0"].detach().clone()
    sd["weight_ih_l0"] = w.t().contiguous().t()
    assert not sd["weight_ih_l0"].is_contiguous()
    ours = interop.from_torch(sd)
    np.testing.assert_array_equal(ours.weight_ih_l0.data, w.numpy())
    np.testing.assert_array_equal(
        ours.bias_ih_l0.data, sd["bias_ih_l0"].float().numpy(), strict=True
    )


def test_from_torch_state_dict_bad_keys_and_shapes():
    sd = torch.nn.LSTM(5, 6, num_layers=2).state_dict()
    with pytest.raises(RuntimeError, match="missing keys.*bias_hh_l1"):
        interop.from_torch({k: v for k, v in sd.items() if k != "bias_hh_l1"})
    with pytest.raises(RuntimeError, match="unexpected keys.*extra"):
        interop.from_torch({**sd, "extra": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"weight_hh_l1: expected shape \(24, 6\), got \(24, 5\)"):
        interop.from_torch({**sd, "weight_hh_l1": torch.zeros(24, 5)})
    with pytest.raises(ValueError, match="weight_ih_l0"):  # no LSTM/GRU/RNN has G = 5H
        interop.from_torch({k: v[:-1] if k == "weight_ih_l0" else v for k, v in sd.items()})
    with pytest.raises(ValueError, match="state_dict: expected the keys of a torch"):
        interop.from_torch({"rnn.weight_ih_l0": sd["weight_ih_l0"]})
    with pytest.raises(ValueError, match="state_dict: expected the keys of a torch"):
        interop.from_torch({})
    with pytest.raises(TypeError, match="nonlinearity"):  # options are for a state dict only
        interop.from_torch(torch.nn.RNN(5, 6), nonlinearity="relu")


def test_from_torch_float64_value_beyond_float32_raises():
    """Before: 1e300 in a float64 module or tensor was loaded as inf, silently."""
    mod = torch.nn.LSTM(5, 4).double()
    with torch.no_grad():
        mod.weight_ih_l0[1, 2] = 1e300
    with pytest.raises(ValueError, match="weight_ih_l0: expected values within float32"):
        interop.from_torch(mod)
    with pytest.raises(ValueError, match="weight_ih_l0: expected values within float32"):
        interop.from_torch(mod.state_dict())
    gru = lstm_fast.GRU(3, 2)
    kernel = torch.zeros(3, 6, dtype=torch.float64)
    kernel[0, 0] = -1e300
    with pytest.raises(ValueError, match="kernel: expected values within float32"):
        interop.from_keras(gru, [kernel, torch.zeros(2, 6)])
    W = torch.zeros(1, 6, 3, dtype=torch.float64)
    W[0, 1, 2] = 1e300
    with pytest.raises(ValueError, match="W: expected values within float32"):
        interop.from_onnx(gru, W, torch.zeros(1, 6, 2))
    # half precision still comes in exactly
    half = torch.nn.GRU(3, 2).half()
    np.testing.assert_array_equal(
        interop.from_torch(half).weight_hh_l0.data, half.weight_hh_l0.detach().float().numpy()
    )


def test_from_torch_subclass_with_extra_state_and_parametrized_weights():
    """Before: a subclass with a buffer of its own, or a weight under a parametrization
    (weight_norm), raised missing/unexpected keys; the effective weights are what count."""

    class Counted(torch.nn.LSTM):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.register_buffer("steps", torch.zeros(()))

    mod = Counted(5, 4, num_layers=2).eval()
    ours = interop.from_torch(mod)
    x = np.random.default_rng(0).standard_normal((3, 2, 5)).astype(np.float32)
    with torch.no_grad():
        ref = mod(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(ours(x)[0], ref, rtol=1e-5, atol=1e-5)

    gru = torch.nn.GRU(5, 4).eval()
    torch.nn.utils.parametrizations.weight_norm(gru, "weight_hh_l0")
    ours = interop.from_torch(gru)
    np.testing.assert_array_equal(ours.weight_hh_l0.data, gru.weight_hh_l0.detach().numpy())
    with torch.no_grad():
        ref = gru(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(ours(x)[0], ref, rtol=1e-5, atol=1e-5)


def test_from_torch_meta_module_raises_clearly():
    with pytest.raises(ValueError, match="weight_ih_l0: .*meta"):
        interop.from_torch(torch.nn.LSTM(5, 4, device="meta"))


# ---- Keras -------------------------------------------------------------------------------------


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _keras_lstm(x, kernel, rec, bias):  # Keras LSTM, gate order i, f, c, o; x (T, B, I)
    H = rec.shape[0]
    h = c = np.zeros((x.shape[1], H))
    ys = []
    for x_t in x:
        z = x_t @ kernel + h @ rec + bias
        i, f, g, o = (z[:, q * H : (q + 1) * H] for q in range(4))
        c = _sig(f) * c + _sig(i) * np.tanh(g)
        h = _sig(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys)


def _keras_gru(x, kernel, rec, bias):  # Keras GRU reset_after=True, gate order z, r, h
    H = rec.shape[0]
    h = np.zeros((x.shape[1], H))
    ys = []
    for x_t in x:
        mx, mh = x_t @ kernel + bias[0], h @ rec + bias[1]
        z = _sig(mx[:, :H] + mh[:, :H])
        r = _sig(mx[:, H : 2 * H] + mh[:, H : 2 * H])
        hh = np.tanh(mx[:, 2 * H :] + r * mh[:, 2 * H :])
        h = z * h + (1 - z) * hh
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_keras_weights_run_as_keras(kind):
    """Arrays in Keras's documented layout (built by hand) give Keras's outputs."""
    rng = np.random.default_rng(3)
    I, H, G = 3, 4, (4 if kind == "LSTM" else 3) * 4
    kernel = rng.standard_normal((I, G)).astype(np.float32)
    rec = rng.standard_normal((H, G)).astype(np.float32)
    bias = rng.standard_normal((G,) if kind == "LSTM" else (2, G)).astype(np.float32)
    layer = getattr(lstm_fast, kind)(I, H)
    interop.from_keras(layer, [kernel, rec, bias])
    x = rng.standard_normal((5, 2, I)).astype(np.float32)
    ref = (_keras_lstm if kind == "LSTM" else _keras_gru)(x, kernel, rec, bias)
    np.testing.assert_allclose(layer(x)[0], ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(interop.to_keras(layer), [kernel, rec, bias], strict=True):
        np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_keras_round_trip_is_bitwise_with_negative_zero_bias(kind):
    """Before: a Keras bias entry -0.0 came back as +0.0 (b_ih + b_hh with b_hh = +0.0)."""
    layer = getattr(lstm_fast, kind)(3, 2)
    G = layer.weight_ih_l0.data.shape[0]
    w = interop.to_keras(layer)
    bias = np.random.default_rng(0).standard_normal(G).astype(np.float32)
    bias[::2] = -0.0
    interop.from_keras(layer, [w[0], w[1], bias])
    back = interop.to_keras(layer)[2]
    assert back.tobytes() == bias.tobytes()


def test_keras_wrong_shapes_name_the_array():
    gru = lstm_fast.GRU(3, 2)
    k, r, b = interop.to_keras(gru)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 3H\).*got \(6,\)"):
        interop.from_keras(gru, [k, r, b[0]])  # reset_after=False
    with pytest.raises(
        ValueError, match=r"kernel: expected shape \(I, G\) = \(3, 6\), got \(6, 3\)"
    ):
        interop.from_keras(gru, [k.T, r, b])


# ---- ONNX --------------------------------------------------------------------------------------


def _node(kind, H, D=1, inputs=None, **attrs):
    onnx = pytest.importorskip("onnx")
    attrs.setdefault("hidden_size", H)
    attrs.setdefault("direction", "bidirectional" if D == 2 else "forward")
    if kind == "GRU":
        attrs.setdefault("linear_before_reset", 1)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    return onnx.helper.make_node(kind, inputs or ["x", "W", "R", "B"], ["y"], **attrs)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_from_onnx_accepts_a_matching_node(kind):
    a = getattr(lstm_fast, kind)(3, 4, bidirectional=True, seed=1)
    b = getattr(lstm_fast, kind)(3, 4, bidirectional=True, seed=2)
    interop.from_onnx(b, **interop.to_onnx(a), node=_node(kind, 4, 2))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    attrs = {"hidden_size": 4, "direction": "bidirectional", "activations": None}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    interop.from_onnx(b, **interop.to_onnx(a), node={k: v for k, v in attrs.items() if v})
    relu = lstm_fast.RNN(3, 4, nonlinearity="relu")
    interop.from_onnx(relu, **interop.to_onnx(relu), node=_node("RNN", 4, activations=["Relu"]))


BAD_NODES = [
    ("LSTM", dict(activations=["Sigmoid", "Tanh", "Relu"]), "activations"),
    ("LSTM", dict(clip=3.0), "clip"),
    ("LSTM", dict(input_forget=1), "input_forget"),
    ("LSTM", dict(layout=1), "layout"),
    ("LSTM", dict(hidden_size=5), r"hidden_size: expected 4.*got 5"),
    ("LSTM", dict(direction="reverse"), r"direction: expected 'forward'.*got 'reverse'"),
    ("LSTM", dict(direction="bidirectional"), "direction"),
    ("LSTM", dict(inputs=["x", "W", "R", "B", "", "", "", "P"]), "P"),
    ("GRU", dict(linear_before_reset=0), r"linear_before_reset: expected 1.*got 0"),
    ("GRU", dict(linear_before_reset=None), r"linear_before_reset: expected 1.*got 0"),
    ("GRU", dict(activations=["HardSigmoid", "Tanh"]), "activations"),
    ("RNN", dict(activations=["Relu"]), "activations"),  # the layer is tanh
    ("RNN", dict(clip=1.0), "clip"),
]


@pytest.mark.parametrize("kind,attrs,match", BAD_NODES, ids=[m for _, _, m in BAD_NODES])
def test_from_onnx_refuses_attributes_the_layer_cannot_represent(kind, attrs, match):
    """Before: from_onnx took W, R, B only, so a model with clip, linear_before_reset=0, ...
    loaded and ran silently wrong; a node (or its attributes) is now checked first."""
    layer = getattr(lstm_fast, kind)(3, 4, seed=0)
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    other = getattr(lstm_fast, kind)(3, 4, seed=1)
    with pytest.raises(ValueError, match=match):
        interop.from_onnx(layer, **interop.to_onnx(other), node=_node(kind, 4, **attrs))
    for k, v in layer.state_dict().items():  # nothing loaded
        np.testing.assert_array_equal(v, before[k])


def test_from_onnx_node_of_another_operator():
    gru = lstm_fast.GRU(3, 4)
    with pytest.raises(ValueError, match="op_type: expected 'GRU', got 'LSTM'"):
        interop.from_onnx(gru, **interop.to_onnx(gru), node=_node("LSTM", 4))
    with pytest.raises(ValueError, match="unknown ONNX GRU attribute 'clipp'"):
        interop.from_onnx(gru, **interop.to_onnx(gru), node={"hidden_size": 4, "clipp": 1.0})


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_onnx_runtime_stack_with_states_and_lengths(kind):
    """A 2-layer bidirectional stack as chained ONNX nodes, initial states and sequence_lens,
    matches the layer within 1e-5 (the attributes from the exporting layer)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    T, B, I, H, L, D = 5, 3, 4, 6, 2, 2
    kw = {"nonlinearity": "relu"} if kind == "RNN" else {}
    layer = getattr(lstm_fast, kind)(I, H, num_layers=L, bidirectional=True, seed=4, **kw).eval()
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    vi = helper.make_tensor_value_info
    inputs = [vi("x", TensorProto.FLOAT, [T, B, I]), vi("sl", TensorProto.INT32, [B])]
    inputs += [vi(s, TensorProto.FLOAT, [L * D, B, H]) for s in states]
    nodes, inits, prev = [], [], "x"
    for k in range(L):
        init = interop.to_onnx(layer, k)
        inits += [numpy_helper.from_array(v, f"{n}{k}") for n, v in init.items()]
        for s in states:
            for part, val in (("s", k * D), ("e", k * D + D), ("a", 0)):
                inits.append(numpy_helper.from_array(np.array([val]), f"{s}{part}{k}"))
            nodes.append(
                helper.make_node("Slice", [s, f"{s}s{k}", f"{s}e{k}", f"{s}a{k}"], [f"{s}_{k}"])
            )
        attrs = interop.onnx_attributes(layer)
        ins = [prev, f"W{k}", f"R{k}", f"B{k}", "sl"] + [f"{s}_{k}" for s in states]
        outs = [f"y{k}", f"hn{k}"] + ([f"cn{k}"] if kind == "LSTM" else [])
        nodes.append(helper.make_node(kind, ins, outs, **attrs))
        nodes.append(helper.make_node("Transpose", [f"y{k}"], [f"yt{k}"], perm=[0, 2, 1, 3]))
        inits.append(numpy_helper.from_array(np.array([T, B, D * H]), f"shape{k}"))
        nodes.append(helper.make_node("Reshape", [f"yt{k}", f"shape{k}"], [f"x{k + 1}"]))
        prev = f"x{k + 1}"
    outputs = [vi(prev, TensorProto.FLOAT, [T, B, D * H])]
    for s in states:
        n = s.replace("0", "n")
        nodes.append(helper.make_node("Concat", [f"{n}{k}" for k in range(L)], [n], axis=0))
        outputs.append(vi(n, TensorProto.FLOAT, [L * D, B, H]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([5, 2, 4], np.int32)
    hx = [rng.standard_normal((L * D, B, H)).astype(np.float32) for _ in states]
    got = sess.run(None, {"x": x, "sl": lengths, **dict(zip(states, hx, strict=True))})
    y, st = layer(x, tuple(hx) if kind == "LSTM" else hx[0], lengths=list(lengths))
    np.testing.assert_allclose(y, got[0], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(st if kind == "LSTM" else [st], got[1:], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # and the node imports back into a fresh layer, bitwise
    fresh = getattr(lstm_fast, kind)(I, H, num_layers=L, bidirectional=True, seed=9, **kw)
    for k in range(L):
        node = next(n for n in model.graph.node if n.op_type == kind and n.input[1] == f"W{k}")
        interop.from_onnx(fresh, **interop.to_onnx(layer, k), k=k, node=node)
    for name, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, fresh.state_dict()[name])


def test_onnx_layout_follows_batch_first_and_attributes_are_time_major():
    layer = lstm_fast.LSTM(3, 4, batch_first=True)
    init = interop.to_onnx(layer)
    attrs = interop.onnx_attributes(layer)
    assert attrs == {"hidden_size": 4, "direction": "forward"}  # ONNX Runtime runs layout 0 only
    interop.from_onnx(layer, **init, node={**attrs, "layout": 1})  # batch-major: batch_first
    interop.from_onnx(layer, **init, node=attrs)  # time-major: always fine, the input transposed
    with pytest.raises(ValueError, match=r"layout: expected 0 \(the layer's batch_first=False\)"):
        interop.from_onnx(lstm_fast.LSTM(3, 4), **init, node={**attrs, "layout": 1})
    with pytest.raises(ValueError, match="onnx_attributes: .*projection"):
        interop.onnx_attributes(lstm_fast.LSTM(3, 4, proj_size=2))


def test_load_state_dict_refuses_float64_torch_values_beyond_float32():
    # a float64 torch tensor reaches the checked cast as float64 (not pre-cast to float32, where
    # 1e300 would have become inf before the range check)
    layer = lstm_fast.LSTM(3, 4, seed=0)
    sd = {k: torch.from_numpy(v.astype(np.float64)) for k, v in layer.state_dict().items()}
    sd["weight_hh_l0"][1, 2] = 1e300
    before = layer.weight_hh_l0.data.copy()
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected values within float32's range"):
        layer.load_state_dict(sd)
    np.testing.assert_array_equal(layer.weight_hh_l0.data, before)
    sd["weight_hh_l0"][1, 2] = 0.25  # float64 values that fit load (rounded to float32)
    layer.load_state_dict(sd)
    assert layer.weight_hh_l0.data[1, 2] == np.float32(0.25)
