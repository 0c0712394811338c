"""Edge cases found in the twenty-fifth review, the NumPy training API: parameters of odd shapes
and dtypes, optimizer state dicts, gradient clipping and train()/eval()."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstm_fast import optim
from lstm_fast.module import Module, Parameter

torch = pytest.importorskip("torch")


# -- Parameter ------------------------------------------------------------------------------------
def test_a_zero_dim_parameter_stays_zero_dim_and_trains_as_torchs():
    """np.ascontiguousarray made a 0-d value 1-d: Parameter(2.5) had shape (1,), so a torch
    state dict with a 0-d parameter (a learned temperature) did not load into the module."""
    p = Parameter(np.float32(2.5))
    assert p.shape == () and p.grad.shape == () and p.data.flags.c_contiguous

    class Temperature(Module):
        def __init__(self):
            super().__init__()
            self.t = Parameter(1.0)

    m = Temperature()
    m.load_state_dict({"t": torch.tensor(0.5)})
    assert m.t.data.shape == () and float(m.t.data) == 0.5
    tp = torch.nn.Parameter(torch.tensor(0.5))
    opt, topt = optim.Adam([m.t], lr=0.1), torch.optim.Adam([tp], lr=0.1)
    for k in range(5):
        m.t.grad[...] = 0.3 * k - 0.5
        tp.grad = torch.tensor(0.3 * k - 0.5)
        opt.step()
        topt.step()
    np.testing.assert_allclose(m.t.data, tp.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "data, error, match",
    [
        (None, TypeError, r"^data: expected a real numeric array, got dtype object"),
        (np.ones(2) + 1j, TypeError, r"^data: expected a real numeric array, got dtype complex"),
        ("0.5", TypeError, r"^data: expected a real numeric array, got dtype <U3"),
        (1e300, ValueError, r"^data: expected values within float32's range"),
    ],
)
def test_parameter_data_is_checked_naming_it(data, error, match):
    """Parameter(None) was a NaN parameter, a complex value lost its imaginary part with only
    a ComplexWarning, 1e300 became inf, and "0.5" was parsed: each is refused as
    load_state_dict refuses it."""
    with pytest.raises(error, match=match):
        Parameter(data)


def test_parameter_of_a_torch_tensor_that_requires_grad():
    """Parameter(torch.nn.Parameter(...)) raised torch's "Can't call numpy() on Tensor that
    requires grad"; it takes a copy of the values, as load_state_dict does."""
    t = torch.nn.Parameter(torch.arange(3.0))
    p = Parameter(t)
    np.testing.assert_array_equal(p.data, [0.0, 1.0, 2.0])
    assert p.data.dtype == np.float32
    assert Parameter(1e300, dtype=np.float64).data == 1e300  # (float64 holds it)


# -- Optimizer.step: checked before anything changes ----------------------------------------------
def _snapshot(opt):
    return (
        opt.step_count,
        [p.data.copy() for p in opt.params],
        [getattr(p, "_version", 0) for p in opt.params],
        [{k: v.copy() for k, v in st.items()} for st in opt.state],
    )


def _same_snapshot(a, b):
    assert a[0] == b[0] and a[2] == b[2]
    for x, y in zip(a[1], b[1]):
        np.testing.assert_array_equal(x, y)
    for sa, sb in zip(a[3], b[3]):
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])


@pytest.mark.parametrize(
    "cls, kw",
    [
        (optim.Adam, {}),
        (optim.Adam, {"amsgrad": True}),
        (optim.SGD, {"momentum": 0.9}),
        (optim.RMSprop, {"centered": True}),
        (optim.Adagrad, {}),
    ],
)
def test_step_refuses_state_of_a_replaced_parameter_before_updating(cls, kw):
    """A parameter whose data was replaced by an array of another shape (a resized layer)
    raised NumPy's broadcast error (or the kernel's) in the middle of the step: the parameters
    before it were updated and step_count bumped."""
    a, b = Parameter(np.ones(3)), Parameter(np.ones(4))
    opt = cls([a, b], lr=0.1, **kw)
    a.grad[...] = 1.0
    b.grad[...] = 1.0
    opt.step()
    b.data = np.ones(5, np.float32)
    b.grad = np.ones(5, np.float32)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"^step: parameter 1: state \w+: expected shape \(5,\)"):
        opt.step()
    _same_snapshot(before, _snapshot(opt))


def test_integer_parameters_are_refused_naming_them():
    """An integer parameter was taken at construction; step() then raised NumPy's casting
    error after bumping step_count and the versions of the parameters before it."""
    ints = Parameter(np.ones(3), dtype=np.int32)
    with pytest.raises(TypeError, match=r"^param group 0: params: parameter at position 1: "):
        optim.SGD([Parameter(np.ones(2)), ints], lr=0.1)
    a, b = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = optim.SGD([a, b], lr=0.1)
    a.grad[...] = 1.0
    b.data = np.ones(3, np.int64)  # replaced after construction
    b.grad = np.ones(3, np.float32)
    before = _snapshot(opt)
    with pytest.raises(TypeError, match=r"^step: parameter 1: data: expected a floating-point"):
        opt.step()
    _same_snapshot(before, _snapshot(opt))
    b.data = [1.0, 2.0, 3.0]  # not an array at all: AttributeError on .shape before
    with pytest.raises(TypeError, match=r"^step: parameter 1: data: expected a NumPy array"):
        opt.step()
    with pytest.raises(TypeError, match=r"^clip_grad_norm: parameter 1: data: expected a NumPy"):
        optim.clip_grad_norm([a, b], 1.0)


# -- hyper-parameters -----------------------------------------------------------------------------
def test_numpy_scalar_hyper_parameters_keep_the_state_dict_json_able():
    """The state dict promises JSON-able scalars, but a NumPy scalar given as a hyper-parameter
    (lr=np.float32(...), betas from a float32 array, amsgrad=np.bool_) was kept as given, so
    json.dumps of the state dict raised "Object of type float32 is not JSON serializable"."""
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    opt = optim.Adam(
        [{"params": [a]}, {"params": [b], "weight_decay": np.int64(0)}],
        lr=np.float32(0.01),
        betas=np.array([0.9, 0.99], np.float32),
        amsgrad=np.bool_(True),
    )
    opt.add_param_group({"params": Parameter(np.ones(1)), "eps": np.float64(1e-6)})
    opt.param_groups[1]["lr"] = np.float32(0.5)  # set in place, after the checks
    for p in opt.params:
        p.grad[...] = 0.5
    opt.step()
    sd = opt.state_dict()
    meta = json.loads(json.dumps({k: v for k, v in sd.items() if k != "arrays"}))
    resumed = optim.Adam(
        [{"params": [Parameter(np.ones(3))]}, {"params": [Parameter(np.ones(2))]}],
        lr=0.01,
        amsgrad=True,
    )
    resumed.add_param_group({"params": Parameter(np.ones(1))})
    resumed.load_state_dict({**meta, "arrays": sd["arrays"]})
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in meta["param_groups"]]
    one = optim.SGD([Parameter(np.ones(1))], lr=np.float32(0.25), momentum=np.float64(0.5))
    one.lr = np.float32(0.125)
    json.dumps({k: v for k, v in one.state_dict().items() if k != "arrays"})


def test_a_huge_int_hyper_parameter_is_a_value_error_naming_it():
    """lr=10**400 passed the range check, then float() raised a bare OverflowError."""
    with pytest.raises(ValueError, match=r"^lr: expected a float >= 0, got an int of 401 digits"):
        optim.SGD([Parameter(np.ones(1))], lr=10**400)
    opt = optim.SGD([Parameter(np.ones(1))], lr=0.1)
    with pytest.raises(
        ValueError, match=r"^weight_decay: expected a float >= 0, got an int of 401"
    ):
        opt.weight_decay = 10**400
    assert opt.weight_decay == 0.0


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_step_zero_grad_with_a_parameter_listed_twice_is_step_then_zero_grad(name):
    """step(zero_grad=True) zeroed a gradient in its parameter's own update: a parameter
    listed twice (with the warning) took its second update with a zero gradient, so the result
    differed from step() followed by zero_grad() -- what zero_grad=True stands for."""
    results = []
    for fused in (False, True):
        p = Parameter(np.ones(3))
        with pytest.warns(UserWarning, match="more than once"):
            opt = optim.make_optimizer(name, [p, p], lr=0.1)
        for _ in range(3):
            p.grad[...] = [1.0, -2.0, 0.5]
            opt.step(zero_grad=fused)
            if not fused:
                opt.zero_grad()
            np.testing.assert_array_equal(p.grad, 0.0)
        results.append(p.data)
    np.testing.assert_array_equal(results[0], results[1])


# -- state dicts ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kw",
    [
        ("adam", {"amsgrad": True}),
        ("adamw", {}),
        ("sgd", {"momentum": 0.9}),
        ("rmsprop", {"centered": True, "momentum": 0.5}),
        ("adagrad", {}),
    ],
)
def test_float64_parameters_resume_bitwise_through_an_npz_file(tmp_path, name, kw):
    """load_state_dict cast every state array to float32: a float64 parameter's Adam moments
    were rounded, so the resumed run drifted from the uninterrupted one (by ~1e-9 after one
    step), and state_spec announced float32 arrays where state_dict wrote float64 ones."""
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(x.shape) for x in init] for _ in range(6)]

    def make():
        ps = [Parameter(x, dtype=np.float64) for x in init]
        return ps, optim.make_optimizer(name, ps, lr=0.01, **kw)

    ps, opt = make()
    for k, gs in enumerate(grads):
        for p, g in zip(ps, gs):
            p.grad = g.copy()
        opt.step()
        if k == 2:
            sd = opt.state_dict()
            np.savez(tmp_path / "opt.npz", **sd["arrays"])
            saved = [p.data.copy() for p in ps]
            meta = json.dumps({k: v for k, v in sd.items() if k != "arrays"})
    spec = opt.state_spec()
    assert spec and all(dt == np.float64 for _, dt in spec.values())
    assert {k: v.dtype for k, v in opt.state_dict()["arrays"].items()} == {
        k: dt for k, (_, dt) in spec.items()
    }
    qs, resumed = make()
    for q, x in zip(qs, saved):
        q.data[...] = x
    with np.load(tmp_path / "opt.npz") as arrays:
        resumed.load_state_dict({**json.loads(meta), "arrays": arrays})
    assert all(a.dtype == np.float64 for st in resumed.state for a in st.values())
    for gs in grads[3:]:
        for q, g in zip(qs, gs):
            q.grad = g.copy()
        resumed.step()
    for p, q in zip(ps, qs):
        np.testing.assert_array_equal(p.data, q.data)


# -- clip_grad_norm -------------------------------------------------------------------------------
def _grad_params(*grads):
    out = []
    for g in grads:
        p = Parameter(np.zeros(np.shape(g)))
        p.grad = np.array(g, np.float32)
        out.append(p)
    return out


def _pnorm(grads, q):
    """The q-norm in float64 through logarithms (no overflow for any q)."""
    a = np.abs(np.concatenate([np.ravel(g) for g in grads]).astype(np.float64))
    a = a[a > 0]
    top = a.max()
    return float(top * np.exp(np.log(np.sum(np.exp(q * np.log(a / top)))) / q))


@pytest.mark.parametrize("q", [1.0, 3.0, 0.5, 50.0, 1e10])
def test_clip_grad_norm_of_large_orders_does_not_overflow(q):
    """Each |g| ** q was summed as is: with q = 50 and gradients of 1e7 (an exploding step, what
    clipping is for) the sum overflowed float64, the norm came out inf and every gradient was
    multiplied by 0; q = 1e10 did so for gradients of 4."""
    grads = [[3e7, -4e7, 5e5], [[2e7], [-1e6]]] if q >= 50 else [[3.0, -4.0, 0.5], [[2.0], [-1.0]]]
    params = _grad_params(*grads)
    want = _pnorm(grads, q)
    total = optim.clip_grad_norm(params, max_norm=1.0, norm_type=q, error_if_nonfinite=True)
    assert total == pytest.approx(want, rel=1e-9)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad, np.array(g, np.float32) / (want + 1e-6), rtol=1e-6)
    if q <= 3.0:  # and PyTorch's where its float32 sums do not overflow
        tp = [torch.nn.Parameter(torch.zeros(np.shape(g))) for g in grads]
        for t, g in zip(tp, grads):
            t.grad = torch.tensor(g, dtype=torch.float32)
        assert total == pytest.approx(float(torch.nn.utils.clip_grad_norm_(tp, 1.0, q)), rel=1e-6)


def test_clip_grad_norm_of_a_tiny_order_is_inf_not_overflow_error():
    """q = 1e-300: sum ** (1 / q) raised a bare OverflowError (no gradient changed, no clue);
    the norm is inf, as PyTorch's, and the gradients are multiplied by 0 as for any inf norm
    (or error_if_nonfinite raises its RuntimeError)."""
    params = _grad_params([3.0, 4.0], [0.5])
    with pytest.raises(RuntimeError, match=r"^clip_grad_norm: the total norm of order 1e-300"):
        optim.clip_grad_norm(params, 1.0, 1e-300, error_if_nonfinite=True)
    np.testing.assert_array_equal(params[0].grad, [3.0, 4.0])
    assert optim.clip_grad_norm(params, 1.0, 1e-300) == float("inf")
    np.testing.assert_array_equal(params[0].grad, [0.0, 0.0])
    # one nonzero value: its own magnitude, whatever q
    one = _grad_params([0.0, -2.5])
    assert optim.clip_grad_norm(one, 10.0, 1e-300) == 2.5


def test_clip_grad_norm_error_if_nonfinite_must_be_a_bool():
    """error_if_nonfinite="False" was truthy: a NaN norm raised where the caller asked not to."""
    params = _grad_params([np.nan, 1.0])
    with pytest.raises(TypeError, match=r"^error_if_nonfinite: expected a bool, got str"):
        optim.clip_grad_norm(params, 1.0, error_if_nonfinite="False")
    assert np.isnan(params[0].grad[0]) and params[0].grad[1] == 1.0


# -- Module ---------------------------------------------------------------------------------------
def test_train_and_eval_call_each_childs_own_train():
    """Module.train set every descendant's flag directly, so a child that overrides train()
    (PyTorch's way to keep a frozen part in eval mode) was bypassed by its parent's train() and
    eval(): the frozen dropout came back on."""
    from lstm_fast.nn import Dropout, Linear

    class FrozenDropout(Module):
        def __init__(self):
            super().__init__()
            self.lin = Linear(2, 2, seed=0)
            self.drop = Dropout(0.5, seed=0)
            self.calls = []

        def train(self, mode=True):
            self.calls.append(mode)
            super().train(mode)
            self.drop.training = False  # always off
            return self

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.body = FrozenDropout()
            self.head = Linear(2, 1, seed=0)

    net = Net()
    assert net.eval() is net
    assert not net.training and not net.body.lin.training and not net.head.training
    net.train()
    assert net.body.calls == [False, True]
    assert net.training and net.body.lin.training and net.head.training
    assert not net.body.drop.training
    x = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(net.body.drop(x), x)


# -- schedules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [lambda o: optim.StepLR(o, 2, 0.5), lambda o: optim.CosineLR(o, 9)],
    ids=["StepLR", "CosineLR"],
)
def test_a_schedule_built_before_the_optimizer_loads_a_checkpoint_goes_on_from_its_rates(make):
    """PyTorch's resume order -- build the optimizer and its schedule, then load the
    checkpoint -- kept the schedule's base rates from the new optimizer's lr, ignoring the
    checkpoint's initial_lr: the resumed run went on at other rates than the uninterrupted one."""

    def build(lrs):
        groups = [{"params": [Parameter(np.ones(2))], "lr": lr} for lr in lrs]
        opt = optim.SGD(groups, lr=lrs[0])
        return opt, make(opt)

    opt, sched = build([1.0, 0.1])
    rates = []
    for k in range(8):
        if k == 3:
            sd = opt.state_dict()
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    opt2, sched2 = build([7.0, 3.0])  # (other rates given at the resumed run's construction)
    opt2.load_state_dict(sd)
    sched2.step()
    got = []
    for _ in range(3, 8):
        got.append([g["lr"] for g in opt2.param_groups])
        opt2.step()
        sched2.step()
    np.testing.assert_allclose(got, rates[3:], rtol=1e-12)
    assert sched2.base_lrs == [1.0, 0.1]


def test_a_shared_submodule_is_listed_once_as_torchs():
    """named_modules() yielded a module held in two places once per place (PyTorch's, once),
    so modules() listed a shared encoder twice."""
    from lstm_fast.nn import Linear

    class Twin(Module):
        def __init__(self):
            super().__init__()
            self.enc = Linear(2, 2, seed=0)
            self.other = self.enc
            self.head = Linear(2, 1, seed=0)

    class TorchTwin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(2, 2)
            self.other = self.enc
            self.head = torch.nn.Linear(2, 1)

    ours, theirs = Twin(), TorchTwin()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_modules(remove_duplicate=False)] == [
        n for n, _ in theirs.named_modules(remove_duplicate=False)
    ]
    assert len(list(ours.modules())) == 3


# -- nn -------------------------------------------------------------------------------------------
def test_dropout_backward_without_a_forward_raises():
    """Dropout.backward without a completed forward (none yet, or the last one raised) gave dy
    back unchanged, as if nothing had been dropped, where Linear's and Embedding's raise."""
    from lstm_fast.nn import Dropout

    drop = Dropout(0.5, seed=0)
    with pytest.raises(RuntimeError, match=r"^Dropout.backward: no saved forward"):
        drop.backward(np.ones(4, np.float32))
    y = drop(np.ones(4, np.float32))
    np.testing.assert_array_equal(drop.backward(np.ones(4, np.float32)), y)
    with pytest.raises(TypeError, match=r"^x: "):
        drop(np.ones(4, np.complex64))
    with pytest.raises(RuntimeError, match=r"^Dropout.backward: no saved forward"):
        drop.backward(np.ones(4, np.float32))
    x = np.arange(4, dtype=np.float32)  # eval mode: the identity, and its gradient too
    assert drop.eval()(x) is x
    np.testing.assert_array_equal(drop.backward(x), x)


# -- truncated BPTT -------------------------------------------------------------------------------
def test_bptt_batcher_use_cython_must_be_a_bool():
    """use_cython="no" was truthy: the Cython loop ran (or, unbuilt, RuntimeError blamed the
    build) where the caller asked for the Python one."""
    from lstm_fast.data import BPTTBatcher

    with pytest.raises(TypeError, match=r"^use_cython: expected None, True or False, got 'no'"):
        BPTTBatcher(np.arange(20), 2, 3, use_cython="no")
    a = BPTTBatcher(np.arange(20), 2, 3, use_cython=np.False_)
    b = BPTTBatcher(np.arange(20), 2, 3)
    for k in range(len(a)):
        for u, v in zip(a.window(k), b.window(k)):
            np.testing.assert_array_equal(u, v)
