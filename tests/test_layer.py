"""lstm_fast.LSTM: PyTorch's API, parity with torch.nn.LSTM, gradients, state dicts."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast

torch = pytest.importorskip("torch")


def torch_run(tl, x, hx, dy, dh, dc, batch_first=False):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    hxt = None
    if hx is not None:
        hxt = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in hx)
    y, (h, c) = tl(xt, hxt)
    loss = (
        (y * torch.tensor(dy)).sum() + (h * torch.tensor(dh)).sum() + (c * torch.tensor(dc)).sum()
    )
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in tl.named_parameters()}
    dhx = None if hx is None else tuple(a.grad.numpy() for a in hxt)
    return y.detach().numpy(), h.detach().numpy(), c.detach().numpy(), xt.grad.numpy(), dhx, grads


@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,bias,with_hx,unbatched",
    [
        (1, False, False, True, False, False),
        (1, False, True, True, True, False),
        (2, False, False, False, True, False),
        (1, True, False, True, True, False),
        (3, True, True, True, False, False),
        (2, True, False, True, True, True),
    ],
)
def test_parity_with_torch(num_layers, bidirectional, batch_first, bias, with_hx, unbatched):
    T, B, I, H = 7, 4, 9, 13
    torch.manual_seed(0)
    tl = torch.nn.LSTM(
        I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional
    ).double()
    ours = lstm_fast.LSTM(
        I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional
    )
    ours.load_state_dict(tl.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in tl.named_parameters()]
    rng = np.random.default_rng(1)
    D = 2 if bidirectional else 1
    xshape = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    x = rng.standard_normal(xshape).astype(np.float32).astype(np.float64)
    sshape = (num_layers * D, H) if unbatched else (num_layers * D, B, H)
    hx = None
    if with_hx:
        hx = tuple(rng.standard_normal(sshape).astype(np.float32).astype(np.float64) for _ in "hc")
    yshape = xshape[:-1] + (D * H,)
    dy, dh, dc = (
        rng.standard_normal(yshape),
        rng.standard_normal(sshape),
        rng.standard_normal(sshape),
    )
    ty, th, tc, tdx, tdhx, tgrads = torch_run(tl, x, hx, dy, dh, dc)
    y, (h, c) = ours(x, hx)
    assert y.dtype == np.float32 and y.shape == ty.shape and h.shape == th.shape
    np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, th, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, tc, rtol=1e-5, atol=1e-5)
    dx, (dh0, dc0) = ours.backward(dy, dh, dc)
    np.testing.assert_allclose(dx, tdx, rtol=1e-4, atol=1e-4)
    if with_hx:
        np.testing.assert_allclose(dh0, tdhx[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dc0, tdhx[1], rtol=1e-4, atol=1e-4)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tgrads[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_s6_parity_float32_torch():
    # Acceptance shape S6 (T=100, B=16, I=65, H=100), float32 torch vs float32 lstm_fast.
    T, B, I, H = 100, 16, 65, 100
    torch.manual_seed(0)
    tl = torch.nn.LSTM(I, H)
    ours = lstm_fast.LSTM(I, H)
    ours.load_state_dict(tl.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    ty, _ = tl(xt)
    (ty * torch.tensor(dy)).sum().backward()
    y, _ = ours(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    dx, _ = ours.backward(dy)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    for name, p in ours.named_parameters():
        tp = dict(tl.named_parameters())[name]
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_grads_accumulate_and_zero_grad():
    lstm = lstm_fast.LSTM(3, 5, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y, _ = lstm(x)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    lstm.backward(dy)
    g1 = {n: p.grad.copy() for n, p in lstm.named_parameters()}
    lstm.backward(dy)
    for n, p in lstm.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * g1[n], rtol=1e-6)
    lstm.zero_grad()
    assert all(not p.grad.any() for p in lstm.parameters())


def test_init_distribution_and_seed():
    a = lstm_fast.LSTM(10, 50, seed=3)
    b = lstm_fast.LSTM(10, 50, seed=3)
    w = a.weight_hh_l0.data
    assert w.dtype == np.float32 and w.shape == (200, 50)
    assert np.abs(w).max() <= 1 / np.sqrt(50) and np.abs(w).max() > 0.9 / np.sqrt(50)
    np.testing.assert_array_equal(w, b.weight_hh_l0.data)


def test_eval_mode_keeps_no_cache():
    lstm = lstm_fast.LSTM(3, 4).eval()
    y, _ = lstm(np.zeros((2, 1, 3)))
    with pytest.raises(RuntimeError, match="training mode"):
        lstm.backward(np.zeros_like(y))


def test_unsupported_options_raise():
    with pytest.raises(ValueError, match="proj_size"):
        lstm_fast.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="hidden_size"):
        lstm_fast.LSTM(3, 0)
    with pytest.raises(TypeError, match="input_size"):
        lstm_fast.LSTM(3.5, 4)
    with pytest.raises(ValueError, match="dropout"):
        lstm_fast.LSTM(3, 4, 2, dropout=1.5)


def test_bad_layer_input_messages():
    lstm = lstm_fast.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"input: expected shape \(T, B, I=3\), got \(2, 1, 5\)"):
        lstm(np.zeros((2, 1, 5)))
    with pytest.raises(TypeError, match="input: expected a real floating-point array"):
        lstm(np.zeros((2, 1, 3), complex))
    with pytest.raises(ValueError, match=r"hx: h_0: expected shape"):
        lstm(np.zeros((2, 1, 3)), (np.zeros((1, 2, 4)), np.zeros((1, 1, 4))))
    y, _ = lstm(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 1, 4\)"):
        lstm.backward(np.zeros((2, 1, 5)))


def test_load_state_dict_is_all_or_nothing():
    lstm = lstm_fast.LSTM(3, 4, seed=0)
    before = lstm.state_dict()
    bad = dict(before)
    bad["weight_hh_l0"] = np.zeros((16, 5))
    with pytest.raises(ValueError, match="weight_hh_l0: expected shape"):
        lstm.load_state_dict(bad)
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_dropout_between_layers_is_seeded_and_inactive_in_eval():
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    a = lstm_fast.LSTM(3, 4, 2, dropout=0.5, seed=1)
    b = lstm_fast.LSTM(3, 4, 2, dropout=0.5, seed=1)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    a.eval()
    y1, _ = a(x)
    y2, _ = a(x)
    np.testing.assert_array_equal(y1, y2)
