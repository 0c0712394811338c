"""Layers: finite-difference gradient checks, PyTorch parity for the loss, GloVe loading."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import nn, ops


def _fd(f, x, eps=1e-3):
    """Central finite differences of scalar f at float64 copy of x (perturbed in place)."""
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def test_linear_gradients():
    rng = np.random.default_rng(0)
    lin = nn.Linear(5, 3, seed=1)
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3))  # random upstream gradient

    def f():
        return float((lin(x).astype(np.float64) * w).sum())

    lin.zero_grad()
    lin(x)
    dx = lin.backward(w.astype(np.float32))
    np.testing.assert_allclose(dx, _fd(f, x), rtol=1e-2, atol=1e-3)
    gw, gb = lin.weight.grad.copy(), lin.bias.grad.copy()
    np.testing.assert_allclose(gw, _fd(f, lin.weight.data), rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(gb, _fd(f, lin.bias.data), rtol=1e-2, atol=1e-3)


def test_embedding_gradient_accumulates_repeats_and_padding():
    emb = nn.Embedding(6, 3, padding_idx=0, seed=0)
    assert not emb.weight.data[0].any()
    ids = np.array([[1, 2, 1], [0, 5, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 3)
    dy = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    emb.backward(dy)
    np.testing.assert_allclose(emb.weight.grad[1], dy[0, 0] + dy[0, 2] + dy[1, 2])
    assert not emb.weight.grad[0].any()
    with pytest.raises(IndexError, match="ids"):
        emb(np.array([6]))


@pytest.mark.parametrize("V,E,N", [(1, 1, 5), (7, 17, 40), (300, 64, 3200)])
def test_embedding_backward_matches_add_at(V, E, N):
    """The C++ scatter-add of Embedding.backward against np.add.at, repeats included, onto a
    gradient that already holds values (it accumulates)."""
    rng = np.random.default_rng(V)
    emb = nn.Embedding(V, E, seed=0)
    ids = rng.integers(0, V, (N // 5, 5))
    emb(ids)
    dy = rng.standard_normal((N // 5, 5, E)).astype(np.float32)
    emb.weight.grad[...] = 1.5
    ref = np.full((V, E), 1.5, np.float32)
    np.add.at(ref, ids.reshape(-1), dy.reshape(-1, E))
    emb.backward(dy)
    np.testing.assert_allclose(emb.weight.grad, ref, rtol=1e-6, atol=1e-5)


def test_index_add_rows_bad_input_changes_nothing():
    from lstm_fast import _core

    out = np.zeros((4, 3), np.float32)
    msg = r"ids: expected values in \[0, V=4\), got 4 at position 1"
    with pytest.raises(IndexError, match=msg):
        _core.index_add_rows(out, np.array([0, 4]), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="src: expected shape"):
        _core.index_add_rows(out, np.array([0, 1]), np.ones((2, 2), np.float32))
    assert not out.any()


def test_glove_loading(tmp_path):
    p = tmp_path / "vecs.txt"
    p.write_text("the 0.1 0.2 0.3\n영화 1 2 3\nunused 9 9 9\n", encoding="utf-8")
    stoi = {"<unk>": 0, "the": 1, "영화": 2, "absent": 3}
    emb = nn.Embedding(4, 3, seed=0)
    before = emb.weight.data.copy()
    assert emb.load_glove(str(p), stoi) == 2
    np.testing.assert_allclose(emb.weight.data[2], [1, 2, 3])
    np.testing.assert_array_equal(emb.weight.data[3], before[3])
    p.write_text("the 0.1 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected 3 values"):
        emb.load_glove(str(p), stoi)


def test_dropout_seeded_and_resumable():
    d = nn.Dropout(0.5, seed=3)
    x = np.ones((100,), np.float32)
    st = d.get_rng_state()
    a = d(x)
    assert set(np.unique(a)) <= {0.0, 2.0}
    np.testing.assert_array_equal(d.backward(x), a)
    d.set_rng_state(st)
    np.testing.assert_array_equal(d(x), a)
    d.eval()
    np.testing.assert_array_equal(d(x), x)


def test_softmax_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.integers(0, 5, 6)
    loss, g = nn.softmax_cross_entropy(z, t)
    z64 = z.astype(np.float64)

    def f():
        zz = z64 - z64.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(zz).sum(1)) - zz[np.arange(6), t]))

    assert loss == pytest.approx(f(), rel=1e-6)
    np.testing.assert_allclose(g, _fd(f, z64, 1e-4), rtol=1e-3, atol=1e-5)
    big = np.array([[1e4, -1e4, 0.0]], np.float32)
    loss, g = nn.softmax_cross_entropy(big, np.array([1]))
    assert loss == pytest.approx(2e4)
    assert np.isfinite(g).all()
    loss, g = nn.softmax_cross_entropy(z, np.where(t > 2, -1, t), ignore_index=-1)
    assert not g[t > 2].any()


def test_softmax_cross_entropy_inplace():
    """inplace=True reuses a C-contiguous float32 buffer (same results); other inputs are
    copied and left unchanged."""
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((9, 17)) * 3).astype(np.float32)
    t = rng.integers(0, 17, 9)
    want_loss, want_g = nn.softmax_cross_entropy(z.copy(), t)
    buf = z.copy()
    loss, g = nn.softmax_cross_entropy(buf, t, inplace=True)
    assert loss == want_loss
    np.testing.assert_array_equal(g, want_g)
    assert np.shares_memory(g, buf)
    for other in (z.astype(np.float64), np.asfortranarray(z)):
        before = other.copy()
        loss, g = nn.softmax_cross_entropy(other, t, inplace=True)
        np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(other, before)


def test_linear_matches_numpy_any_shape():
    """Linear runs on lstm_fast's GEMM: forward and backward against NumPy in float64, for
    shapes around the micro-tile sizes, with and without bias, 3-D input."""
    rng = np.random.default_rng(4)
    cases = [(1, 1, 1, True), (7, 17, 33, True), (13, 65, 100, False), (40, 3, 1, True)]
    for n, i, o, bias in cases:
        lin = nn.Linear(i, o, bias=bias, seed=1)
        x = rng.standard_normal((2, n, i)).astype(np.float32)
        y = lin(x)
        w = lin.weight.data.astype(np.float64)
        ref = x.astype(np.float64) @ w.T + (lin.bias.data if bias else 0.0)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        lin.zero_grad()
        dx = lin.backward(dy)
        dy2 = dy.reshape(-1, o).astype(np.float64)
        np.testing.assert_allclose(dx, (dy2 @ w).reshape(x.shape), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            lin.weight.grad, dy2.T @ x.reshape(-1, i).astype(np.float64), rtol=1e-5, atol=1e-5
        )
        if bias:
            np.testing.assert_allclose(lin.bias.grad, dy2.sum(0), rtol=1e-5, atol=1e-5)
    a = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    c = ops.gemm(a, b, bias=np.arange(3, dtype=np.float32))
    np.testing.assert_allclose(c, a @ b + np.arange(3), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="bias"):
        ops.gemm(a, b, bias=np.zeros(4, np.float32))


def test_softmax_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((3, 4, 7)) * 5).astype(np.float32)
    t = rng.integers(0, 7, 12)
    loss, g = nn.softmax_cross_entropy(z, t, reduction="sum")
    tz = torch.tensor(z.reshape(12, 7), requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(t), reduction="sum")
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-5)
    np.testing.assert_allclose(g.reshape(12, 7), tz.grad.numpy(), rtol=1e-5, atol=1e-6)
    crit = nn.CrossEntropyLoss()
    assert crit(z, t) == pytest.approx(loss / 12, rel=1e-6)
    assert crit.backward().shape == z.shape


def test_lstm_reexported():
    import lstm_fast

    assert nn.LSTM is lstm_fast.LSTM


@pytest.mark.parametrize("V", [1, 3, 7, 16, 17, 33, 1472])
def test_softmax_xent_kernel_every_isa(isa, V):
    """The fused C++ kernel on every ISA: per-row losses and the gradient against float64, with
    ignored rows, tails of every length and rows split over threads."""
    rng = np.random.default_rng(V)
    N = 37
    z = (rng.standard_normal((N, V)) * 6).astype(np.float32)
    t = rng.integers(0, V, N)
    t[::5] = -100  # ignored
    loss, g = nn.softmax_cross_entropy(z, t, ignore_index=-100)
    z64 = z.astype(np.float64)
    m = z64.max(1, keepdims=True)
    e = np.exp(z64 - m)
    s = e.sum(1)
    valid = t != -100
    tt = np.where(valid, t, 0)
    nll = np.log(s) - (z64 - m)[np.arange(N), tt]
    count = int(valid.sum())
    assert loss == pytest.approx(float(nll[valid].sum()) / count, rel=1e-6, abs=1e-7)
    ref = e / s[:, None]
    ref[np.arange(N), tt] -= 1.0
    ref[~valid] = 0.0
    ref /= count
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-7)
    assert not g[~valid].any()
