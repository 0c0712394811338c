"""Weight interop: PyTorch, Keras layouts, ONNX initializers (round trips and other runtimes)."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import interop

LAYERS = [
    lambda: lstm_fast.LSTM(5, 7, num_layers=2, bidirectional=True, seed=1),
    lambda: lstm_fast.GRU(5, 7, bidirectional=True, seed=2),
    lambda: lstm_fast.RNN(5, 7, nonlinearity="relu", seed=3),
]


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.mark.parametrize("make", LAYERS)
def test_keras_round_trip(make):
    a, b = make(), make()
    for p in b.parameters():
        p.data[...] = 0
    for d in range(a.num_directions):
        for k in range(a.num_layers):
            w = interop.to_keras(a, k, d)
            interop.from_keras(b, w, k, d)
    if isinstance(a, lstm_fast.GRU):
        _same(a, b)
    else:  # one Keras bias: the sum lands in bias_ih
        for k, v in a.state_dict().items():
            if "bias" not in k:
                np.testing.assert_array_equal(v, b.state_dict()[k])
        x = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
        np.testing.assert_allclose(a(x)[0], b(x)[0], rtol=1e-6, atol=1e-6)


def test_keras_lstm_layout():
    lstm = lstm_fast.LSTM(3, 2, seed=0)
    kernel, rec, bias = interop.to_keras(lstm)
    assert kernel.shape == (3, 8) and rec.shape == (2, 8) and bias.shape == (8,)
    np.testing.assert_array_equal(kernel[:, 2:4], lstm.weight_ih_l0.data[2:4].T)  # gate f
    gru = lstm_fast.GRU(3, 2, seed=0)
    kernel, rec, bias = interop.to_keras(gru)
    assert bias.shape == (2, 6)
    np.testing.assert_array_equal(kernel[:, :2], gru.weight_ih_l0.data[2:4].T)  # z first


@pytest.mark.parametrize("make", LAYERS)
def test_onnx_round_trip(make):
    a, b = make(), make()
    for p in b.parameters():
        p.data[...] = 0
    for k in range(a.num_layers):
        interop.from_onnx(b, **interop.to_onnx(a, k), k=k)
    _same(a, b)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_onnxruntime_runs_exported_weights(kind):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    T, B, I, H = 6, 3, 5, 7
    layer = {
        "LSTM": lambda: lstm_fast.LSTM(I, H, bidirectional=True, seed=0),
        "GRU": lambda: lstm_fast.GRU(I, H, bidirectional=True, seed=0),
        "RNN": lambda: lstm_fast.RNN(I, H, bidirectional=True, seed=0),
    }[kind]().eval()
    init = interop.to_onnx(layer)
    attrs = dict(hidden_size=H, direction="bidirectional")
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    node = helper.make_node(kind, ["x", "W", "R", "B"], ["y", "h"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, 2, B, H])],
        [numpy_helper.from_array(v, n) for n, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    y_onnx = sess.run(["y"], {"x": x})[0]  # (T, D, B, H)
    y, _ = layer(x)
    np.testing.assert_allclose(y, y_onnx.transpose(0, 2, 1, 3).reshape(T, B, 2 * H), atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3),
        lambda t: t.nn.GRU(5, 7, batch_first=True, bias=False),
        lambda t: t.nn.RNN(5, 7, nonlinearity="relu", num_layers=3),
        lambda t: t.nn.LSTMCell(5, 7),
        lambda t: t.nn.GRUCell(5, 7),
        lambda t: t.nn.RNNCell(5, 7, nonlinearity="relu"),
    ],
)
def test_torch_round_trip(make):
    torch = pytest.importorskip("torch")
    mod = make(torch).eval()
    ours = interop.from_torch(mod)
    back = interop.to_torch(ours)
    for k, v in mod.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), back.state_dict()[k].numpy())
    if isinstance(mod, torch.nn.RNNBase):
        x = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
        with torch.no_grad():
            ref = mod(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(ours(x)[0], ref, rtol=1e-5, atol=1e-5)
