"""Optimizers against PyTorch's update rules, clipping, schedules and exact state round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import optim
from lstm_fast.module import Parameter

torch = pytest.importorskip("torch")

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
]


def _grads(rng, shapes, steps):
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("name,kw", CASES)
def test_matches_torch(name, kw):
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (7,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = _grads(rng, shapes, 6)
    ours = [Parameter(a) for a in init]
    opt = getattr(optim, name)(ours, **kw)
    theirs = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    topt = getattr(torch.optim, name)(theirs, **kw)
    for gs in grads:
        for p, t, g in zip(ours, theirs, gs):
            p.grad[...] = g
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", CASES[1::2])
def test_state_dict_resume_is_exact(name, kw):
    rng = np.random.default_rng(1)
    shapes = [(4, 4), (3,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = _grads(rng, shapes, 6)

    def run(split):
        ps = [Parameter(a) for a in init]
        opt = getattr(optim, name)(ps, **kw)
        for k, gs in enumerate(grads):
            if k == split:  # "restart": a fresh optimizer loaded from the saved state
                sd = opt.state_dict()
                ps = [Parameter(p.data) for p in ps]
                opt = getattr(optim, name)(ps, lr=123.0)
                opt.load_state_dict(sd)
            for p, g in zip(ps, gs):
                p.grad[...] = g
            opt.step()
        return [p.data for p in ps]

    for a, b in zip(run(None), run(3)):
        np.testing.assert_array_equal(a, b)


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(2)
    gs = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,)]]
    ps = [Parameter(np.zeros_like(g)) for g in gs]
    for p, g in zip(ps, gs):
        p.grad[...] = g
    ts = [torch.nn.Parameter(torch.zeros(g.shape)) for g in gs]
    for t, g in zip(ts, gs):
        t.grad = torch.tensor(g)
    n = optim.clip_grad_norm(ps, 1.5)
    tn = torch.nn.utils.clip_grad_norm_(ts, 1.5)
    assert n == pytest.approx(float(tn), rel=1e-5)
    for p, t in zip(ps, ts):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert optim.clip_grad_norm(ps, 10.0) == pytest.approx(1.5, rel=1e-4)  # no-op below max


def test_schedules():
    p = Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=1.0)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        opt.step()
        lrs.append(sched.step())
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]
    opt = optim.SGD([p], lr=1.0)
    cos = optim.CosineLR(opt, total_steps=10, warmup=2, min_factor=0.1)
    assert opt.lr == pytest.approx(0.5)
    opt.step_count = 10
    assert cos.step() == pytest.approx(0.1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([Parameter(np.zeros(1))], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="optimizer"):
        optim.make_optimizer("lion", [Parameter(np.zeros(1))], lr=0.1)


@pytest.mark.parametrize("n", [1, 7, 17, 33, 70001])
@pytest.mark.parametrize("kind", ["adam", "adam_l2", "adamw"])
def test_adam_kernel_every_isa(isa, n, kind, threads):
    """The fused C++ Adam step on every ISA, sizes with SIMD tails and a size split over threads,
    against the update rule in float64; bitwise the same on 1 and 2 threads."""
    import lstm_fast

    rng = np.random.default_rng(n)
    p0, g = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    m0 = (rng.standard_normal(n) * 0.1).astype(np.float32)
    v0 = (rng.random(n) * 0.01).astype(np.float32)
    b1, b2, lr, eps, wd, t = 0.9, 0.99, 0.01, 1e-8, 0.1, 3
    l2 = wd if kind == "adam_l2" else 0.0
    decay = 1.0 - lr * wd if kind == "adamw" else 1.0
    step, bc2s = lr / (1 - b1**t), np.sqrt(1 - b2**t)

    def run(nthreads):
        lstm_fast.set_num_threads(nthreads)
        p, m, v = p0.copy(), m0.copy(), v0.copy()
        from lstm_fast import _core

        _core.adam_step(p, g, m, v, b1, b2, step, bc2s, eps, l2=l2, decay=decay)
        return p, m, v

    p, m, v = run(2)
    for a, b in zip((p, m, v), run(1)):
        np.testing.assert_array_equal(a, b)
    g64 = g.astype(np.float64) + l2 * p0
    m64 = b1 * m0 + (1 - b1) * g64
    v64 = b2 * v0 + (1 - b2) * g64 * g64
    p64 = p0 * decay - step * m64 / (np.sqrt(v64) / bc2s + eps)
    np.testing.assert_allclose(m, m64, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v, v64, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p, p64, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [1, 7, 17, 1000, 70001])
def test_sumsq_kernel_every_isa(isa, n):
    from lstm_fast import _core

    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    assert _core.sumsq(x) == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-6)
    assert _core.sumsq(x.reshape(1, n)) == _core.sumsq(x)


def test_adam_fallback_paths_agree():
    """A float64 or non-contiguous parameter takes the NumPy path: same result as the kernel."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((6, 5)).astype(np.float32)
    grads = [rng.standard_normal((6, 5)).astype(np.float32) for _ in range(4)]
    fast = Parameter(a)
    slow = Parameter(a, dtype=np.float64)
    for name, kw in [("Adam", dict(lr=0.01, weight_decay=0.1)), ("AdamW", dict(lr=0.01))]:
        o1 = getattr(optim, name)([fast], **kw)
        o2 = getattr(optim, name)([slow], **kw)
        for g in grads:
            fast.grad[...] = g
            slow.grad[...] = g
            o1.step()
            o2.step()
        np.testing.assert_allclose(fast.data, slow.data, rtol=1e-5, atol=1e-6)


def test_adam_kernel_bad_input():
    from lstm_fast import _core

    p = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="exp_avg: expected 5 elements"):
        _core.adam_step(p, p.copy(), np.zeros(4, np.float32), p.copy(), 0.9, 0.99, 1e-3, 1, 1e-8)
    with pytest.raises(TypeError, match="grad: expected dtype float32"):
        _core.adam_step(p, np.zeros(5), p.copy(), p.copy(), 0.9, 0.99, 1e-3, 1, 1e-8)
    ro = np.zeros(5, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param: expected a writeable array"):
        _core.adam_step(ro, p, p.copy(), p.copy(), 0.9, 0.99, 1e-3, 1, 1e-8)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        _core.sumsq(np.zeros((4, 4), np.float32)[:, ::2])


@pytest.mark.parametrize("name,kw", CASES)
def test_step_zero_grad_same_update_and_zeroes(name, kw):
    """step(zero_grad=True) updates exactly as step() and leaves every gradient at zero (in the
    fused kernel's pass for Adam/AdamW, by a fill for the others and for float64 parameters)."""
    rng = np.random.default_rng(7)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (5,)]]
    grads = _grads(rng, [(4, 3), (5,)], 3)
    a = [Parameter(x) for x in init] + [Parameter(init[1], dtype=np.float64)]
    b = [Parameter(x) for x in init] + [Parameter(init[1], dtype=np.float64)]
    oa, ob = getattr(optim, name)(a, **kw), getattr(optim, name)(b, **kw)
    for gs in grads:
        for pa, pb, g in zip(a, b, gs + [gs[1]]):
            pa.grad[...] += g  # a's gradients were zeroed by the previous step
            pb.grad[...] = g
        oa.step(zero_grad=True)
        ob.step()
        for pa, pb in zip(a, b):
            assert not pa.grad.any()
            np.testing.assert_array_equal(pa.data, pb.data)
