"""Parameter groups in lstm_fast.optim, as torch.optim's: the update of each group with its own
hyper-parameters against PyTorch's (several steps, random gradients), add_param_group during
training, schedules per group, state dicts with groups and in the format written before groups
existed, the attribute API, and every error (named group and key, nothing changed)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from lstm_fast import optim
from lstm_fast.module import Parameter

torch = pytest.importorskip("torch")

# (optimizer, constructor defaults, per-group overrides, a group added during training)
CASES = [
    (
        "SGD",
        dict(lr=0.1, momentum=0.9),
        [{}, {"lr": 0.01, "nesterov": True, "weight_decay": 0.1}, {"momentum": 0.0}],
        {"lr": 0.05, "dampening": 0.5},
    ),
    (
        "SGD",
        dict(lr=0.05),
        [{"momentum": 0.5, "dampening": 0.3}, {"maximize": True, "weight_decay": 0.01}],
        {"momentum": 0.9, "nesterov": True},
    ),
    (
        "Adam",
        dict(lr=0.01),
        [{}, {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}, {"lr": 0.001}],
        {"lr": 0.05, "amsgrad": True},
    ),
    (
        "Adam",
        dict(lr=0.02, betas=(0.5, 0.9)),
        [{"amsgrad": True}, {"maximize": True}],
        {"weight_decay": 0.2},
    ),
    (
        "AdamW",
        dict(lr=0.01),
        [{}, {"weight_decay": 0.0}, {"lr": 0.1, "weight_decay": 0.5, "amsgrad": True}],
        {"lr": 0.05, "betas": (0.7, 0.95)},
    ),
    (
        "Adagrad",
        dict(lr=0.1),
        [{}, {"lr_decay": 0.01, "weight_decay": 0.01}, {"lr": 0.5, "eps": 1e-6}],
        {"lr": 0.3, "lr_decay": 0.1},
    ),
    (
        "RMSprop",
        dict(lr=0.01),
        [{}, {"momentum": 0.9, "centered": True}, {"alpha": 0.9, "weight_decay": 0.01}],
        {"lr": 0.001, "centered": True, "momentum": 0.5},
    ),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]
# each group's parameter shapes (odd sizes; two parameters in the first group)
SHAPES = [[(5, 3), (7,)], [(4,)], [(2, 2)]]
ADDED_SHAPES = [(3,), (2, 5)]


def _torch_params(ours):
    return [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in ours]


def _all_torch(topt):
    return [p for g in topt.param_groups for p in g["params"]]


def _set_grads(rng, ours, theirs):
    for p, t in zip(ours, theirs):
        g = rng.standard_normal(p.data.shape).astype(np.float32)
        p.grad[...] = g
        t.grad = torch.tensor(g, dtype=t.dtype)


def _pair(name, defaults, groups, seed=0, dtype=np.float32):
    """Our optimizer and torch's over the same initial weights, one group per override."""
    rng = np.random.default_rng(seed)
    ours = [
        [Parameter(rng.standard_normal(s).astype(np.float32), dtype=dtype) for s in shapes]
        for shapes in SHAPES[: len(groups)]
    ]
    theirs = [_torch_params(ps) for ps in ours]
    opt = getattr(optim, name)([{"params": ps, **g} for ps, g in zip(ours, groups)], **defaults)
    topt = getattr(torch.optim, name)(
        [{"params": ps, **g} for ps, g in zip(theirs, groups)], **defaults
    )
    return opt, topt


def _assert_close(opt, topt, rtol=1e-5, atol=1e-6):
    ours, theirs = opt.params, _all_torch(topt)
    assert len(ours) == len(theirs)
    for i, (p, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(
            p.data, t.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"parameter {i}"
        )


# ---- the update of every group, against PyTorch ------------------------------------------------


@pytest.mark.parametrize("name, defaults, groups, added", CASES, ids=IDS)
def test_groups_match_torch(name, defaults, groups, added):
    opt, topt = _pair(name, defaults, groups)
    rng = np.random.default_rng(1)
    for _ in range(6):
        _set_grads(rng, opt.params, _all_torch(topt))
        opt.step()
        topt.step()
    _assert_close(opt, topt)
    assert opt.step_count == 6


@pytest.mark.parametrize("name, defaults, groups, added", CASES, ids=IDS)
def test_groups_match_torch_on_the_numpy_path(name, defaults, groups, added):
    """float64 parameters take the NumPy update (not Adam's fused kernel): same rule."""
    opt, topt = _pair(name, defaults, groups, dtype=np.float64)
    rng = np.random.default_rng(2)
    for _ in range(5):
        _set_grads(rng, opt.params, _all_torch(topt))
        opt.step()
        topt.step()
    _assert_close(opt, topt)


@pytest.mark.parametrize("name, defaults, groups, added", CASES, ids=IDS)
def test_each_group_updates_as_its_own_optimizer(name, defaults, groups, added):
    """A group's parameters end bitwise where an optimizer of their own with the group's
    hyper-parameters takes them (Adagrad's initial_accumulator_value included, which PyTorch
    takes from the constructor whatever the group says)."""
    groups = [dict(g) for g in groups]
    if name == "Adagrad":
        groups[1]["initial_accumulator_value"] = 0.5
    rng = np.random.default_rng(3)
    inits = [[rng.standard_normal(s).astype(np.float32) for s in sh] for sh in SHAPES]
    grads = [
        [[rng.standard_normal(s).astype(np.float32) for s in sh] for sh in SHAPES] for _ in range(3)
    ]
    together = [[Parameter(a) for a in ii] for ii in inits[: len(groups)]]
    alone = [[Parameter(a) for a in ii] for ii in inits[: len(groups)]]
    cls = getattr(optim, name)
    opt = cls([{"params": ps, **g} for ps, g in zip(together, groups)], **defaults)
    opts = [cls(ps, **{**defaults, **g}) for ps, g in zip(alone, groups)]
    for step_grads in grads:
        for ps, qs, gs in zip(together, alone, step_grads):
            for p, q, g in zip(ps, qs, gs):
                p.grad[...] = g
                q.grad[...] = g
        opt.step()
        for o in opts:
            o.step()
    for ps, qs in zip(together, alone):
        for p, q in zip(ps, qs):
            np.testing.assert_array_equal(p.data, q.data)
    # and the groups' hyper-parameters did matter: a one-group run ends elsewhere
    same = [Parameter(a) for ii in inits[: len(groups)] for a in ii]
    plain = cls(same, **defaults)
    for step_grads in grads:
        for p, g in zip(same, [g for gs in step_grads[: len(groups)] for g in gs]):
            p.grad[...] = g
        plain.step()
    assert any(not np.array_equal(p.data, q.data) for p, q in zip(opt.params, same))


@pytest.mark.parametrize("name, defaults, groups, added", CASES, ids=IDS)
def test_add_param_group_during_training_matches_torch(name, defaults, groups, added):
    """A group added after 3 steps: its own hyper-parameters and its own step count (Adam's
    bias correction and Adagrad's lr_decay start at its first step, as PyTorch's per-parameter
    step)."""
    opt, topt = _pair(name, defaults, groups[:2])
    rng = np.random.default_rng(4)
    new = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in ADDED_SHAPES]
    tnew = _torch_params(new)
    for k in range(7):
        if k == 3:
            opt.add_param_group({"params": new, **added})
            topt.add_param_group({"params": tnew, **added})
        _set_grads(rng, opt.params, _all_torch(topt))
        opt.step()
        topt.step()
    _assert_close(opt, topt)
    assert opt.step_count == 7 and len(opt.state) == len(opt.params) == 5
    assert opt._group_steps() == [7, 7, 4]


def test_add_param_group_takes_the_defaults_and_a_single_parameter():
    p, q = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.1, betas=[0.8, 0.9], weight_decay=0.01)
    assert opt.defaults == {
        "lr": 0.1,
        "betas": (0.8, 0.9),
        "eps": 1e-8,
        "weight_decay": 0.01,
        "amsgrad": False,
        "maximize": False,
    }
    opt.lr = 0.5  # every group's, not the defaults (as torch's param_groups edits)
    opt.add_param_group({"params": q, "eps": 1e-3, "betas": np.array([0.5, 0.6])})
    g = opt.param_groups[1]
    assert g["params"] == [q] and g["lr"] == 0.1 and g["eps"] == 1e-3
    assert g["betas"] == (0.5, 0.6) and g["weight_decay"] == 0.01
    assert list(g) == ["params", *optim.Adam._hyper]
    assert opt.params == [p, q] and opt.state == [{}, {}]


def test_zero_grad_and_clip_grad_norm_see_every_group():
    ps = [Parameter(np.ones(2)), Parameter(np.ones(3)), Parameter(np.ones(1))]
    opt = optim.SGD([{"params": ps[:2]}, {"params": ps[2], "lr": 0.5}], lr=0.1)
    for p in ps:
        p.grad[...] = 2.0
    assert optim.clip_grad_norm(opt.params, 1.0) == pytest.approx(math.sqrt(24))
    opt.zero_grad()
    assert all(not p.grad.any() for p in ps)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in ps)


def test_changing_a_group_in_place_is_used_by_the_next_step():
    """torch's idiom ``for g in opt.param_groups: g["lr"] = ...``."""
    ps = [Parameter(np.ones(3)) for _ in range(2)]
    ts = _torch_params(ps)
    opt = optim.SGD([{"params": ps[0]}, {"params": ps[1]}], lr=0.1, momentum=0.9)
    topt = torch.optim.SGD([{"params": ts[0]}, {"params": ts[1]}], lr=0.1, momentum=0.9)
    rng = np.random.default_rng(5)
    for k in range(4):
        if k == 2:
            for o in (opt, topt):
                o.param_groups[1]["lr"] = 0.7
                o.param_groups[0]["momentum"] = 0.1
        _set_grads(rng, ps, ts)
        opt.step()
        topt.step()
    _assert_close(opt, topt)


# ---- the attribute API -------------------------------------------------------------------------


def test_attributes_with_one_group_are_that_groups():
    p = Parameter(np.ones(2))
    opt = optim.RMSprop([p], lr=0.1, momentum=0.5)
    assert opt.lr == 0.1 and opt.momentum == 0.5 and opt.centered is False
    assert opt.initial_lr is None and opt.params == [p] and opt.step_count == 0
    opt.lr = 0.25
    opt.centered = True
    assert opt.param_groups[0]["lr"] == 0.25 and opt.param_groups[0]["centered"] is True
    assert opt.defaults["lr"] == 0.1  # the constructor's, for groups added later
    opt.initial_lr = 0.3
    assert opt.param_groups[0]["initial_lr"] == 0.3
    opt.initial_lr = None
    assert "initial_lr" not in opt.param_groups[0]
    with pytest.raises(AttributeError, match="'RMSprop' object has no attribute 'betas'"):
        _ = opt.betas


def test_attributes_with_several_groups():
    ps = [Parameter(np.ones(2)) for _ in range(3)]
    opt = optim.SGD(
        [{"params": ps[0]}, {"params": ps[1], "lr": 0.5}, {"params": ps[2]}],
        lr=0.1,
        momentum=0.9,
    )
    assert opt.momentum == 0.9  # the same in every group
    with pytest.raises(
        ValueError,
        match=r"^lr: the 3 parameter groups hold different values \(0.1, 0.5, 0.1\); read or "
        r"set each group's in optimizer.param_groups\[i\]\['lr'\]",
    ):
        _ = opt.lr
    opt.lr = 0.2  # sets every group's
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2, 0.2] and opt.lr == 0.2
    opt.param_groups[2]["momentum"] = 0.0
    with pytest.raises(ValueError, match=r"^momentum: the 3 parameter groups"):
        _ = opt.momentum


@pytest.mark.parametrize(
    "name, value, error, match",
    [
        ("lr", -1.0, ValueError, r"^lr: expected a float >= 0, got -1.0"),
        ("nesterov", "yes", TypeError, r"^nesterov: expected a bool, got str"),
        ("momentum", 0.0, ValueError, r"^param group 1: nesterov: requires momentum > 0"),
        ("initial_lr", float("nan"), ValueError, r"^initial_lr: expected a float >= 0, got nan"),
    ],
)
def test_setting_a_bad_attribute_changes_no_group(name, value, error, match):
    ps = [Parameter(np.ones(2)) for _ in range(2)]
    opt = optim.SGD([{"params": ps[0]}, {"params": ps[1], "nesterov": True}], lr=0.1, momentum=0.9)
    before = copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    )
    with pytest.raises(error, match=match):
        setattr(opt, name, value)
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == before


# ---- schedules ---------------------------------------------------------------------------------


def _scheduled_pair(make, tmake, steps):
    rng = np.random.default_rng(6)
    ps = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(3, 2), (4,), (5,)]]
    ts = _torch_params(ps)

    def groups(xs):
        return [{"params": xs[:2]}, {"params": xs[2], "lr": 0.01, "weight_decay": 0.1}]

    opt = optim.Adam(groups(ps), lr=0.1)
    topt = torch.optim.Adam(groups(ts), lr=0.1)
    sched, tsched = make(opt), tmake(topt)
    for _ in range(steps):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [g["lr"] for g in topt.param_groups], rel=1e-9
        )
        _set_grads(rng, ps, ts)
        opt.step()
        topt.step()
        rates = sched.step()
        tsched.step()
        assert rates == sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
    _assert_close(opt, topt)
    return opt


def test_step_lr_scales_each_groups_rate_as_torch():
    opt = _scheduled_pair(
        lambda o: optim.StepLR(o, step_size=2, gamma=0.5),
        lambda t: torch.optim.lr_scheduler.StepLR(t, step_size=2, gamma=0.5),
        7,
    )
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 / 8, 0.01 / 8])


def test_cosine_lr_scales_each_groups_rate_as_torch():
    """CosineLR without warm-up or floor is CosineAnnealingLR(T_max=total_steps, eta_min=0)
    up to total_steps."""
    opt = _scheduled_pair(
        lambda o: optim.CosineLR(o, total_steps=6),
        lambda t: torch.optim.lr_scheduler.CosineAnnealingLR(t, T_max=6, eta_min=0.0),
        6,
    )
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_schedule_base_lr_and_groups_added_later():
    ps = [Parameter(np.ones(1)) for _ in range(3)]
    opt = optim.SGD([{"params": ps[0]}, {"params": ps[1], "lr": 0.4}], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    assert sched.base_lrs == [1.0, 0.4]
    with pytest.raises(ValueError, match=r"^base_lr: the parameter groups have different"):
        _ = sched.base_lr
    opt.step()
    assert sched.step() == [0.5, 0.2]
    # a group added later is scaled from the rate it came with, and records it
    opt.add_param_group({"params": ps[2], "lr": 0.8})
    opt.step()
    assert sched.step() == [0.25, 0.1, 0.2]
    assert opt.param_groups[2]["initial_lr"] == 0.8 and sched.base_lrs == [1.0, 0.4, 0.8]
    # an explicit base rate: one for every group, or one per group
    opt2 = optim.SGD([{"params": ps[0]}, {"params": ps[1], "lr": 0.4}], lr=1.0)
    assert optim.StepLR(opt2, 1, base_lr=[2.0, 3.0]).base_lrs == [2.0, 3.0]
    assert [g["lr"] for g in opt2.param_groups] == [2.0, 3.0]
    assert optim.StepLR(opt2, 1, base_lr=5.0).base_lr == 5.0
    with pytest.raises(ValueError, match=r"^base_lr: expected a float or 2 floats .* got 3"):
        optim.StepLR(opt2, 1, base_lr=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"^base_lr\[1\]: expected a float >= 0, got -1"):
        optim.StepLR(opt2, 1, base_lr=[1.0, -1.0])


def test_schedule_resumed_from_a_state_dict_with_groups_goes_on_from_the_same_rates():
    def run(resume_at=None):
        ps = [Parameter(np.ones(2)), Parameter(np.ones(3))]

        def make(ps):
            return optim.Adam([{"params": ps[0]}, {"params": ps[1], "lr": 0.1}], lr=1.0)

        opt = make(ps)
        sched = optim.CosineLR(opt, total_steps=8, warmup=2, min_factor=0.1)
        out = []
        for k in range(8):
            if k == resume_at:
                sd = json.loads(json.dumps(_jsonable(opt.state_dict())))
                ps = [Parameter(p.data) for p in ps]
                opt = make(ps)
                opt.load_state_dict(_arrays_back(sd))
                sched = optim.CosineLR(opt, total_steps=8, warmup=2, min_factor=0.1)
            out.append([g["lr"] for g in opt.param_groups])
            for p in ps:
                p.grad[...] = 1.0
            opt.step()
            sched.step()
        return out, [p.data for p in ps]

    (lrs, ws), (lrs2, ws2) = run(), run(resume_at=5)
    assert lrs == lrs2 and lrs[0] == [0.5, 0.05]
    for a, b in zip(ws, ws2):
        np.testing.assert_array_equal(a, b)


# ---- state dicts -------------------------------------------------------------------------------


def _jsonable(sd):
    return {**sd, "arrays": {k: v.tolist() for k, v in sd["arrays"].items()}}


def _arrays_back(sd):
    return {**sd, "arrays": {k: np.asarray(v, np.float32) for k, v in sd["arrays"].items()}}


def _snapshot(opt):
    """Everything a failed call must leave as it was."""
    return (
        [
            {k: (list(map(id, v)) if k == "params" else v) for k, v in g.items()}
            for g in opt.param_groups
        ],
        opt.step_count,
        list(opt._group_starts),
        [{k: v.copy() for k, v in st.items()} for st in opt.state],
    )


def _assert_unchanged(opt, snap):
    groups, step, starts, state = _snapshot(opt)
    assert groups == snap[0] and step == snap[1] and starts == snap[2]
    assert [sorted(s) for s in state] == [sorted(s) for s in snap[3]]
    for a, b in zip(state, snap[3]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name, defaults, groups, added", CASES, ids=IDS)
def test_state_dict_with_groups_resumes_exactly(name, defaults, groups, added):
    """Saved after a group was added (so the groups' step counts differ), through JSON, loaded
    into a fresh optimizer of the same groups built with other hyper-parameters: the run goes
    on bitwise as if never interrupted."""
    rng = np.random.default_rng(7)
    inits = [[rng.standard_normal(s).astype(np.float32) for s in sh] for sh in SHAPES]
    added_init = [rng.standard_normal(s).astype(np.float32) for s in ADDED_SHAPES]
    grads = [rng.standard_normal((5, 16)).astype(np.float32) for _ in range(7)]

    def build(hyper_groups, hyper_defaults):
        ps = [[Parameter(a) for a in ii] for ii in inits[: len(hyper_groups)]]
        opt = getattr(optim, name)(
            [{"params": p, **g} for p, g in zip(ps, hyper_groups)], **hyper_defaults
        )
        return opt

    def feed(opt, k):
        flat = np.concatenate([grads[k].ravel()] * 4)
        off = 0
        for p in opt.params:
            p.grad[...] = flat[off : off + p.data.size].reshape(p.data.shape)
            off += p.data.size

    def run(split):
        opt = build(groups, defaults)
        for k in range(7):
            if k == 2:
                opt.add_param_group({"params": [Parameter(a) for a in added_init], **added})
            if k == split:
                sd = opt.state_dict()
                assert set(sd) == {"type", "param_groups", "step", "group_steps", "arrays"}
                assert sd["group_steps"] == [k] * len(groups) + [k - 2]
                sd = _arrays_back(json.loads(json.dumps(_jsonable(sd))))
                weights = [p.data.copy() for p in opt.params]
                opt = build([{} for _ in groups], dict(lr=123.0))
                opt.add_param_group({"params": [Parameter(a) for a in added_init]})
                for p, w in zip(opt.params, weights):
                    p.data[...] = w
                opt.load_state_dict(sd)
            feed(opt, k)
            opt.step()
        return opt

    a, b = run(None), run(4)
    for p, q in zip(a.params, b.params):
        np.testing.assert_array_equal(p.data, q.data)
    assert a.state_dict()["param_groups"] == b.state_dict()["param_groups"]
    assert b._group_steps() == a._group_steps() == [7] * len(groups) + [5]


def test_one_group_state_dict_keeps_the_format_written_before_groups():
    p = Parameter(np.ones(3))
    opt = optim.Adam([{"params": [p], "lr": 0.3}], betas=(0.8, 0.9))
    optim.StepLR(opt, 2)
    p.grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"type", "hyper", "step", "arrays", "initial_lr"}
    assert sd["hyper"] == {
        "lr": 0.3,
        "betas": (0.8, 0.9),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "maximize": False,
    }
    assert (
        sd["initial_lr"] == 0.3
        and sd["step"] == 1
        and sorted(sd["arrays"])
        == [
            "0.exp_avg",
            "0.exp_avg_sq",
        ]
    )


# A state dict as lstm_fast wrote it before parameter groups existed (and before amsgrad and
# maximize): Adam(lr=0.01) with a StepLR(step_size=2, gamma=0.5), two steps, then saved.
OLD_ADAM = {
    "type": "Adam",
    "hyper": {"lr": 0.005, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
    "step": 2,
    "arrays": {
        "0.exp_avg": np.array([0.19, -0.19], np.float32),
        "0.exp_avg_sq": np.array([0.001999, 0.001999], np.float32),
        "1.exp_avg": np.array([0.0], np.float32),
        "1.exp_avg_sq": np.array([0.0], np.float32),
    },
    "initial_lr": 0.01,
}


def test_a_state_dict_written_before_groups_loads():
    ps = [Parameter(np.ones(2)), Parameter(np.ones(1))]
    opt = optim.Adam(ps, lr=7.0, amsgrad=True, maximize=True)
    opt.load_state_dict(copy.deepcopy(OLD_ADAM))
    assert len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert g["lr"] == 0.005 and g["betas"] == (0.9, 0.999) and g["initial_lr"] == 0.01
    assert g["amsgrad"] is False and g["maximize"] is False and opt.step_count == 2
    assert opt.initial_lr == 0.01 and opt._group_steps() == [2]
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], OLD_ADAM["arrays"]["0.exp_avg"])
    # a schedule goes on from the saved base rate; the step's bias correction uses step 3
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    assert opt.lr == 0.005 and sched.base_lr == 0.01
    ps[0].grad[...] = [1.0, -1.0]
    ps[1].grad[...] = 0.0
    m = 0.9 * 0.19 + 0.1
    v = 0.999 * 0.001999 + 0.001
    want = 1 - 0.005 / (1 - 0.9**3) * m / (math.sqrt(v) / math.sqrt(1 - 0.999**3) + 1e-8)
    opt.step()
    np.testing.assert_allclose(ps[0].data, [want, 2 - want], rtol=1e-6)


def test_a_state_dict_written_before_groups_needs_one_group():
    ps = [Parameter(np.ones(2)), Parameter(np.ones(1))]
    opt = optim.Adam([{"params": ps[0]}, {"params": ps[1]}], lr=0.1)
    snap = _snapshot(opt)
    with pytest.raises(
        ValueError,
        match=r"^load_state_dict: expected a state of 2 parameter groups \('param_groups'\), "
        r"got a one-group state \('hyper'\)",
    ):
        opt.load_state_dict(copy.deepcopy(OLD_ADAM))
    _assert_unchanged(opt, snap)


def test_a_one_group_state_with_param_groups_loads_too():
    p = Parameter(np.ones(2))
    src = optim.SGD([{"params": p}], lr=0.5, momentum=0.9)
    p.grad[...] = 1.0
    src.step()
    sd = src.state_dict()
    grouped = {
        "type": "SGD",
        "param_groups": [{"params": [0], **sd["hyper"], "initial_lr": 0.5}],
        "step": 1,
        "arrays": sd["arrays"],
    }
    opt = optim.SGD([Parameter(np.ones(2))], lr=0.1)
    opt.load_state_dict(grouped)
    assert opt.lr == 0.5 and opt.momentum == 0.9 and opt.initial_lr == 0.5
    assert opt._group_steps() == [1]  # group_steps left out: every group took `step`


def _grouped_opt():
    """An Adam over two groups (3 and 1 parameters), two steps taken, and its state dict."""
    ps = [
        Parameter(np.ones(2)),
        Parameter(np.ones(3)),
        Parameter(np.ones(1)),
        Parameter(np.ones(4)),
    ]
    opt = optim.Adam([{"params": ps[:3]}, {"params": ps[3], "lr": 0.5}], lr=0.1)
    for _ in range(2):
        for p in ps:
            p.grad[...] = 0.5
        opt.step()
    return opt, opt.state_dict()


def _fresh():
    ps = [
        Parameter(np.ones(2)),
        Parameter(np.ones(3)),
        Parameter(np.ones(1)),
        Parameter(np.ones(4)),
    ]
    return optim.Adam([{"params": ps[:3]}, {"params": ps[3], "lr": 9.0}], lr=7.0)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            lambda sd: sd["param_groups"].pop(),
            ValueError,
            r"param_groups: expected 2 parameter groups \(this optimizer's\), got 1",
        ),
        (
            lambda sd: sd.update(param_groups={"params": [0]}),
            TypeError,
            r"param_groups: expected a list of 2 dicts, got dict",
        ),
        (
            lambda sd: sd["param_groups"].__setitem__(1, [3]),
            TypeError,
            r"param_groups\[1\]: expected a dict, got list",
        ),
        (
            lambda sd: sd["param_groups"][0].update(params=[0, 1]),
            ValueError,
            r"param_groups\[0\]: params: expected 3 parameter positions \(this optimizer's "
            r"group 0 has 3 parameters\), got 2",
        ),
        (
            lambda sd: sd["param_groups"][1].update(params=[0]),
            ValueError,
            r"param_groups\[1\]: params: expected the positions \[3\], got \[0\]",
        ),
        (
            lambda sd: sd["param_groups"][1].update(lr=-1.0),
            ValueError,
            r"param_groups\[1\]: lr: expected a float >= 0, got -1.0",
        ),
        (
            lambda sd: sd["param_groups"][0].update(betas=(0.9, 1.5)),
            ValueError,
            r"param_groups\[0\]: betas: expected two floats in \[0, 1\), got \(0.9, 1.5\)",
        ),
        (
            lambda sd: sd["param_groups"][1].update(momentum=0.9),
            ValueError,
            r"param_groups\[1\]: expected the hyper-parameters \['amsgrad', 'betas', 'eps', "
            r"'lr', 'maximize', 'weight_decay'\], got \[.*'momentum'.*\]",
        ),
        (
            lambda sd: sd["param_groups"][0].pop("eps"),
            ValueError,
            r"param_groups\[0\]: expected the hyper-parameters .*, got \['amsgrad', 'betas', "
            r"'lr', 'maximize', 'weight_decay'\]",
        ),
        (
            lambda sd: sd["param_groups"][1].update(initial_lr="x"),
            TypeError,
            r"param_groups\[1\]: initial_lr: expected a float >= 0, got str",
        ),
        (
            lambda sd: sd.update(group_steps=[2, 3]),
            ValueError,
            r"group_steps: expected 2 ints in \[0, step=2\] \(the steps each group has taken\), "
            r"got \[2, 3\]",
        ),
        (
            lambda sd: sd.update(group_steps=[2]),
            ValueError,
            r"group_steps: expected 2 ints in \[0, step=2\]",
        ),
        (
            lambda sd: sd.update(hyper={"lr": 0.1}),
            ValueError,
            r"expected 'param_groups' \(each group's hyper-parameters and initial_lr\) or "
            r"'hyper' \(one group's\), got both: hyper",
        ),
        (
            lambda sd: sd.update(initial_lr=0.1),
            ValueError,
            r"expected 'param_groups' .* got both: initial_lr",
        ),
        (
            lambda sd: sd["arrays"].pop("3.exp_avg"),
            ValueError,
            r"missing arrays \['3.exp_avg'\] \(step 2\)",
        ),
        (
            lambda sd: sd["arrays"].update({"3.exp_avg": np.zeros(3, np.float32)}),
            ValueError,
            r"3.exp_avg: expected shape \(4,\), got \(3,\)",
        ),
        (
            lambda sd: sd.update(step=-1),
            ValueError,
            r"step: expected an int >= 0",
        ),
    ],
)
def test_load_state_dict_with_groups_is_checked_and_all_or_nothing(change, error, match):
    _, sd = _grouped_opt()
    sd = copy.deepcopy(sd)
    change(sd)
    fresh = _fresh()
    for p in fresh.params:  # a step taken, so there is state to keep
        p.grad[...] = 1.0
    fresh.step()
    snap = _snapshot(fresh)
    with pytest.raises(error, match=rf"^load_state_dict: {match}"):
        fresh.load_state_dict(sd)
    _assert_unchanged(fresh, snap)
    fresh.step()  # and it still works
    assert fresh.step_count == 2


def test_load_state_dict_restores_a_groups_initial_lr_and_drops_a_stale_one():
    opt, sd = _grouped_opt()
    sd = copy.deepcopy(sd)
    sd["param_groups"][0]["initial_lr"] = 0.2
    fresh = _fresh()
    fresh.param_groups[1]["initial_lr"] = 5.0
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["initial_lr"] == 0.2
    assert "initial_lr" not in fresh.param_groups[1]
    assert [g["lr"] for g in fresh.param_groups] == [0.1, 0.5]


def test_state_spec_with_groups():
    ps = [Parameter(np.ones(2)), Parameter(np.ones(3))]
    opt = optim.SGD([{"params": ps[0], "momentum": 0.9}, {"params": ps[1]}], lr=0.1)
    assert opt.state_spec() == {}
    for p in ps:
        p.grad[...] = 1.0
    opt.step()
    f32 = np.dtype(np.float32)
    assert opt.state_spec() == {"0.momentum_buffer": ((2,), f32)}
    assert set(opt.state_dict()["arrays"]) == set(opt.state_spec())
    q = Parameter(np.ones(4))
    opt.add_param_group({"params": q, "momentum": 0.5})
    assert opt.state_spec() == {"0.momentum_buffer": ((2,), f32)}  # no step of group 2 yet
    assert opt.state_spec([{"momentum": 0}, {"momentum": 1}, {"momentum": 1}], [1, 1, 0]) == {
        "1.momentum_buffer": ((3,), f32)
    }
    assert list(opt.state_spec({"momentum": 0.9}, 1)) == [
        "0.momentum_buffer",
        "1.momentum_buffer",
        "2.momentum_buffer",
    ]
    with pytest.raises(ValueError, match=r"^state_spec: expected one .* \(3\), got 2 and 3"):
        opt.state_spec([{}, {}], 1)


# ---- errors when building groups ---------------------------------------------------------------


@pytest.mark.parametrize(
    "groups, error, match",
    [
        (
            lambda p, q: [{"params": p}, {"params": q, "lrr": 0.1}],
            ValueError,
            r"^param group 1: lrr: expected a key among \['params', 'lr', 'momentum', "
            r"'dampening', 'weight_decay', 'nesterov', 'maximize', 'initial_lr'\] \(SGD's "
            r"hyper-parameters\), got an unknown one",
        ),
        (
            lambda p, q: [{"params": p}, {"params": q, "lr": -1}],
            ValueError,
            r"^param group 1: lr: expected a float >= 0, got -1",
        ),
        (
            lambda p, q: [{"params": p, "momentum": float("nan")}],
            ValueError,
            r"^param group 0: momentum: expected a float >= 0, got nan",
        ),
        (
            lambda p, q: [{"params": p, "maximize": 1}],
            TypeError,
            r"^param group 0: maximize: expected a bool, got int",
        ),
        (
            lambda p, q: [{"params": p}, {"params": q, "nesterov": True}],
            ValueError,
            r"^param group 1: nesterov: requires momentum > 0 and dampening = 0",
        ),
        (
            lambda p, q: [{"params": p}, {"params": q, "initial_lr": -0.5}],
            ValueError,
            r"^param group 1: initial_lr: expected a float >= 0, got -0.5",
        ),
        (
            lambda p, q: [{"params": [p, q]}, {"params": [q]}],
            ValueError,
            r"^param group 1: params: the parameter at position 0 \(shape \(3,\)\) is already in "
            r"param group 0 \(some parameters appear in more than one parameter group\)",
        ),
        (
            lambda p, q: [{"params": p}, {"params": []}],
            ValueError,
            r"^param group 1: params: expected at least one Parameter, got none",
        ),
        (
            lambda p, q: [{"params": p}, {"params": [q, np.ones(3)]}],
            TypeError,
            r"^param group 1: params: expected Parameter objects, got ndarray at position 1",
        ),
        (
            lambda p, q: [{"params": p}, {"params": None}],
            TypeError,
            r"^param group 1: params: expected a Parameter or an iterable of Parameters, got "
            r"NoneType",
        ),
        (
            lambda p, q: [{"params": q.data}],
            TypeError,
            r"^param group 0: params: expected a Parameter or an iterable of Parameters, got "
            r"ndarray",
        ),
        (
            lambda p, q: [{"params": {p, q}}],
            TypeError,
            r"^param group 0: params: expected an ordered collection of Parameters \(a list\), "
            r"got a set: its order",
        ),
        (
            lambda p, q: [{"params": p}, {"lr": 0.1}],
            ValueError,
            r"^param group 1: params: expected a 'params' entry \(the group's parameters\), got "
            r"the keys \['lr'\]",
        ),
        (
            lambda p, q: [{"params": p}, q],
            TypeError,
            r"^params: expected Parameters or dicts \(parameter groups\), not both: got a dict "
            r"at position 0 and a Parameter at position 1",
        ),
        (
            lambda p, q: {"params": [p, q]},
            TypeError,
            r"^params: expected an iterable of Parameters or of dicts \(parameter groups\), got "
            r"a dict",
        ),
        (lambda p, q: [], ValueError, r"^optimizer got an empty parameter list"),
    ],
)
def test_bad_groups_name_the_group_and_key(groups, error, match):
    p, q = Parameter(np.ones(2)), Parameter(np.ones(3))
    with pytest.raises(error, match=match):
        optim.SGD(groups(p, q), lr=0.1)


@pytest.mark.parametrize(
    "group, error, match",
    [
        ({"params": "q", "lr": 0.2}, TypeError, r"^param group 2: params: expected a Parameter"),
        ({"params": "P0"}, ValueError, r"^param group 2: params: the parameter at position 1 "),
        ({"params": "Q", "lr": -0.2}, ValueError, r"^param group 2: lr: expected a float >= 0"),
        ({"params": "Q", "betas": (0.9,)}, ValueError, r"^param group 2: betas: expected two"),
        ({"params": "Q", "step": 3}, ValueError, r"^param group 2: step: expected a key among"),
        ({"params": []}, ValueError, r"^param group 2: params: expected at least one"),
        ({"lr": 0.1}, ValueError, r"^param group 2: params: expected a 'params' entry"),
        ([1, 2], TypeError, r"^param group 2: expected a dict with a 'params' entry, got list"),
    ],
)
def test_a_failing_add_param_group_leaves_the_optimizer_unchanged(group, error, match):
    ps = [Parameter(np.ones(2)), Parameter(np.ones(3))]
    q = Parameter(np.ones(4))
    opt = optim.Adam([{"params": ps[0]}, {"params": ps[1], "lr": 0.5}], lr=0.1)
    for p in ps:
        p.grad[...] = 1.0
    opt.step()
    if isinstance(group, dict) and group.get("params") == "Q":
        group = {**group, "params": [q]}
    elif isinstance(group, dict) and group.get("params") == "P0":
        group = {**group, "params": [q, ps[0]]}  # q would be added, then ps[0] refused
    snap = _snapshot(opt)
    with pytest.raises(error, match=match):
        opt.add_param_group(group)
    _assert_unchanged(opt, snap)
    opt.add_param_group({"params": q})  # and it still takes a good one
    assert len(opt.param_groups) == 3 and opt.params[-1] is q


def test_a_parameter_twice_in_one_group_warns_and_is_kept_once():
    # (each occurrence was updated, with a state of its own; see test_review27_leftovers)
    p = Parameter(np.ones(2))
    with pytest.warns(UserWarning, match="more than once"):
        opt = optim.SGD([{"params": [p, p]}], lr=0.1)
    assert opt.param_groups[0]["params"] == [p] and len(opt.state) == 1
    p.grad[...] = 1.0
    opt.step()
    np.testing.assert_allclose(p.data, 0.9)


def test_step_checks_every_group_before_updating():
    ps = [Parameter(np.ones(2)), Parameter(np.ones(3))]
    opt = optim.SGD([{"params": ps[0]}, {"params": ps[1], "momentum": 0.5}], lr=0.1)
    for p in ps:
        p.grad[...] = 1.0
    opt.param_groups[1]["lr"] = -0.1  # changed in place, past the constructor's checks
    with pytest.raises(ValueError, match=r"^step: param group 1: lr: expected a float >= 0"):
        opt.step()
    del opt.param_groups[1]["momentum"]
    opt.param_groups[1]["lr"] = 0.1
    with pytest.raises(ValueError, match=r"^step: param group 1: missing the hyper-parameters"):
        opt.step()
    opt.param_groups[1]["momentum"] = 0.5
    opt.param_groups[1]["params"].append(Parameter(np.ones(1)))
    with pytest.raises(
        RuntimeError, match=r"^step: param_groups: expected 2 parameters in 2 groups .* got 3 in 2"
    ):
        opt.step()
    opt.param_groups[1]["params"].pop()
    ps[1].grad = np.ones(3, np.uint8)  # maximize in group 1 only: an unsigned grad refused
    opt.param_groups[1]["maximize"] = True
    with pytest.raises(TypeError, match=r"^step: parameter 1: grad: .* got dtype uint8"):
        opt.step()
    assert opt.step_count == 0 and opt.state == [{}, {}]
    np.testing.assert_array_equal(ps[0].data, 1.0)
    opt.param_groups[1]["maximize"] = False
    opt.step()
    np.testing.assert_allclose(ps[0].data, 0.9)
    np.testing.assert_allclose(ps[1].data, 0.9)


def test_an_optimizer_with_groups_copies_and_pickles():
    import pickle

    ps = [Parameter(np.ones(2)), Parameter(np.ones(3))]
    opt = optim.Adam([{"params": ps[0]}, {"params": ps[1], "lr": 0.5}], lr=0.1)
    for p in ps:
        p.grad[...] = 1.0
    opt.step()
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert [g["lr"] for g in other.param_groups] == [0.1, 0.5]
        assert other._group_steps() == [1, 1] and other.params[0] is not ps[0]
        other.lr = 0.3
        other.step()
        np.testing.assert_array_equal(other.state[1]["exp_avg"], np.full(3, 0.19, np.float32))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5] and opt.step_count == 1


def test_groups_differ_error_is_a_value_and_attribute_error():
    """Reading a hyper-parameter whose groups differ raises GroupsDifferError, a ValueError
    naming the values and an AttributeError, so hasattr / getattr with a default stay quiet."""
    a, b = Parameter(np.ones(3)), Parameter(np.ones(3))
    opt = optim.Adam([{"params": [a]}, {"params": [b], "eps": 1e-3}], lr=0.1)
    with pytest.raises(optim.GroupsDifferError, match=r"eps: the 2 parameter groups hold"):
        _ = opt.eps
    assert not hasattr(opt, "eps")
    assert getattr(opt, "eps", "default") == "default"
    assert opt.lr == 0.1 and hasattr(opt, "lr")
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = opt.nonexistent
