"""Edge cases found in the fourth review: optimizers (gradient dtypes, clip_grad_norm, betas,
load_state_dict's order of checks) and the small layers (gradients set to None or of a wrong
shape, complex input)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lstm_fast import nn as lnn
from lstm_fast import optim
from lstm_fast.module import Parameter

OPTIMIZERS = ["sgd", "adam", "adamw", "adagrad", "rmsprop"]


def _two_params():
    p0, p1 = Parameter(np.ones(3)), Parameter(np.ones(4))
    p0.grad[...] = 1.0
    p1.grad[...] = 1.0
    return p0, p1


# ---- optimizers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("bad", [np.complex128, np.str_, object, np.bool_])
def test_optimizer_step_checks_grad_dtypes_before_updating(name, bad):
    """A complex, str or object gradient on a later parameter raised a raw UFuncTypeError after
    parameter 0 was updated and step_count incremented (a bool one did so with maximize)."""
    p0, p1 = _two_params()
    p1.grad = np.ones(4).astype(bad)
    opt = optim.make_optimizer(name, [p0, p1], lr=0.1)
    with pytest.raises(TypeError, match=r"^step: parameter 1: grad: expected a real floating"):
        opt.step()
    assert opt.step_count == 0 and opt.state == [{}, {}]
    np.testing.assert_array_equal(p0.data, 1.0)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_step_still_takes_integer_and_float64_grads(name):
    """(What was accepted before stays accepted, with a float32 gradient's result up to the
    float64 rounding of the mixed-dtype update.) Only an unsigned gradient with maximize=True
    is refused: its negation wrapped around silently."""
    ref = Parameter(np.ones(3))
    ref.grad[...] = 2.0
    optim.make_optimizer(name, [ref], lr=0.01).step()
    for dtype in (np.int64, np.int32, np.uint8, np.float64):
        p = Parameter(np.ones(3))
        p.grad = np.full(3, 2, dtype)
        optim.make_optimizer(name, [p], lr=0.01).step()
        np.testing.assert_allclose(p.data, ref.data, rtol=1e-6, err_msg=str(dtype))
    p = Parameter(np.ones(3))
    p.grad = np.full(3, 2, np.uint8)
    opt = optim.make_optimizer(name, [p], lr=0.1, maximize=True)
    with pytest.raises(TypeError, match="step: parameter 0: grad: .* got dtype uint8"):
        opt.step()
    np.testing.assert_array_equal(p.data, 1.0)


@pytest.mark.parametrize("how", ["read-only", "int64", "complex"])
def test_clip_grad_norm_checks_every_grad_before_scaling(how):
    """A read-only or integer gradient on a later parameter raised NumPy's 'output array is
    read-only' / UFuncTypeError after the earlier gradients were already scaled."""
    p0, p1 = _two_params()
    if how == "read-only":
        p1.grad.setflags(write=False)
        error, match = ValueError, "parameter 1: grad: expected a writeable array, got a read-only"
    else:
        p1.grad = np.ones(4, np.int64 if how == "int64" else np.complex64)
        error, match = TypeError, "parameter 1: grad: expected a real floating-point array, got"
    with pytest.raises(error, match=rf"^clip_grad_norm: {match}"):
        optim.clip_grad_norm([p0, p1], 0.1)
    np.testing.assert_array_equal(p0.grad, 1.0)


def test_clip_grad_norm_checks_eps():
    """eps was never checked: eps=-1 flipped the sign of every gradient even when the norm was
    below max_norm, eps='x' raised "unsupported operand type(s) for +", and eps=0 with all
    gradients zero raised ZeroDivisionError."""
    p = Parameter(np.ones(4))
    p.grad[...] = 0.1
    with pytest.raises(ValueError, match=r"^eps: expected a float >= 0, got -1.0"):
        optim.clip_grad_norm([p], 1.0, eps=-1.0)
    with pytest.raises(TypeError, match=r"^eps: expected a float >= 0, got str"):
        optim.clip_grad_norm([p], 1.0, eps="x")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^eps: expected a"):
            optim.clip_grad_norm([p], 1.0, eps=bad)
    np.testing.assert_array_equal(p.grad, np.float32(0.1))
    assert optim.clip_grad_norm([p], 1.0, eps=0.0) == pytest.approx(0.2)
    np.testing.assert_array_equal(p.grad, np.float32(0.1))
    p.grad[...] = 0.0
    assert optim.clip_grad_norm([p], 1.0, eps=0.0) == 0.0


def test_optimizer_and_clip_grad_norm_name_params():
    """SGD(None) raised "'NoneType' object is not iterable" and clip_grad_norm([ndarray])
    "'numpy.ndarray' object has no attribute 'grad'"."""
    with pytest.raises(TypeError, match=r"^params: expected an iterable of Parameter objects .*"):
        optim.SGD(None)
    with pytest.raises(TypeError, match=r"got NoneType$"):
        optim.clip_grad_norm(None, 1.0)
    with pytest.raises(TypeError, match=r"^params: expected Parameter objects, got ndarray"):
        optim.clip_grad_norm([np.ones(3)], 1.0)
    with pytest.raises(TypeError, match=r"^params: expected Parameter objects, got ndarray"):
        optim.Adam([np.ones(3)])
    # a generator of parameters and one parameter are still taken
    p = Parameter(np.ones(2))
    p.grad[...] = 3.0
    assert optim.clip_grad_norm((q for q in [p]), 100.0) == pytest.approx(np.sqrt(18))
    assert optim.clip_grad_norm(p, 100.0) == pytest.approx(np.sqrt(18))


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_adam_betas_must_be_a_pair(cls):
    """Adam(betas=0.9) / betas=None raised "'float' object is not iterable" from tuple(betas),
    before the check that names betas ran."""
    for bad in (0.9, None, "ab"):
        with pytest.raises(TypeError, match=r"^betas: expected two floats in \[0, 1\), got"):
            cls([Parameter(np.ones(2))], betas=bad)
    with pytest.raises(ValueError, match=r"^betas: expected two floats in \[0, 1\), got \(0.9,\)"):
        cls([Parameter(np.ones(2))], betas=[0.9])
    assert cls([Parameter(np.ones(2))], betas=[0.8, 0.9]).betas == (0.8, 0.9)
    assert cls([Parameter(np.ones(2))], betas=np.array([0.8, 0.9])).betas == (0.8, 0.9)


def _stepped(cls, **kw):
    p = Parameter(np.ones(4))
    p.grad[...] = 1.0
    opt = cls([p], lr=0.1, **kw)
    opt.step()
    return opt, opt.state_dict()


def _same(opt, sd):
    after = opt.state_dict()
    assert after["hyper"] == sd["hyper"] and after["step"] == sd["step"]
    assert set(after["arrays"]) == set(sd["arrays"])
    for k, v in sd["arrays"].items():
        np.testing.assert_array_equal(after["arrays"][k], v)


@pytest.mark.parametrize(
    "cls, kw, change, error, match",
    [
        (
            optim.RMSprop,
            dict(momentum=0.5),
            lambda sd: sd["hyper"].update(momentum="0.5"),
            TypeError,
            r"load_state_dict: hyper: momentum: expected a float >= 0, got str",
        ),
        (
            optim.Adam,
            {},
            lambda sd: sd["hyper"].update(amsgrad="yes"),
            TypeError,
            r"load_state_dict: hyper: amsgrad: expected a bool, got str",
        ),
        (
            optim.Adam,
            {},
            lambda sd: sd["hyper"].update(betas=0.9),
            TypeError,
            r"load_state_dict: hyper: betas: expected two floats in \[0, 1\), got 0.9",
        ),
        (
            optim.Adam,
            {},
            lambda sd: sd["arrays"].update({"0.exp_avg": [[1.0], [1.0, 2.0]]}),
            TypeError,
            r"load_state_dict: 0.exp_avg: expected a float32 array \(",
        ),
        (
            optim.Adam,
            {},
            lambda sd: sd.update(step=10**400),
            ValueError,
            r"load_state_dict: step: expected an int >= 0 \(below 2\*\*63\), got 1000",
        ),
        (
            optim.Adam,
            {},
            lambda sd: sd.update(step=2**63),
            ValueError,
            r"load_state_dict: step: expected an int >= 0 \(below 2\*\*63\)",
        ),
    ],
)
def test_optimizer_load_state_dict_checks_hyper_and_step_first(cls, kw, change, error, match):
    """The arrays a state needs were computed from the hyper-parameters before those were
    checked: RMSprop momentum='0.5' raised "'>' not supported", Adam amsgrad='yes' a misleading
    "missing arrays"; a ragged array raised NumPy's message without its key; step=10**400 was
    accepted, then step() raised OverflowError after incrementing step_count."""
    opt, sd = _stepped(cls, **kw)
    before = opt.state_dict()
    change(sd)
    with pytest.raises(error, match=rf"^{match}"):
        opt.load_state_dict(sd)
    _same(opt, before)
    opt.step()  # and the optimizer still works
    assert opt.step_count == 2


def test_optimizer_load_state_dict_takes_the_largest_step():
    opt, sd = _stepped(optim.Adam)
    sd["step"] = 2**63 - 1
    opt.load_state_dict(sd)
    opt.step()
    assert opt.step_count == 2**63 and np.isfinite(opt.params[0].data).all()


# ---- nn -----------------------------------------------------------------------------------------


def _linear():
    lin = lnn.Linear(4, 3, seed=0)
    lin(np.arange(8, dtype=np.float32).reshape(2, 4))
    return lin


@pytest.mark.parametrize(
    "which, bad, error, match",
    [
        ("bias", lambda g: np.zeros(5), ValueError, r"bias.grad: expected shape \(O,\) = \(3,\)"),
        ("bias", lambda g: g.setflags(write=False) or g, ValueError, "bias.grad: expected a wri"),
        ("bias", lambda g: g.astype(np.int64), TypeError, "bias.grad: expected a real floating"),
        ("bias", lambda g: 0.0, TypeError, r"bias.grad: expected a real .* got float"),
        ("weight", lambda g: g.T, ValueError, r"weight.grad: expected shape \(O, I\) = \(3, 4\)"),
        ("weight", lambda g: g.setflags(write=False) or g, ValueError, "weight.grad: expected a"),
    ],
)
def test_linear_backward_checks_grads_before_accumulating(which, bad, error, match):
    """A wrong-shaped or read-only bias.grad raised NumPy's broadcast / 'output array is
    read-only' error after weight.grad had been accumulated into."""
    lin = _linear()
    p = getattr(lin, which)
    p.grad = bad(p.grad)
    with pytest.raises(error, match=rf"^{match}"):
        lin.backward(np.ones((2, 3), np.float32))
    assert not lin.weight.grad.any() if which == "bias" else not lin.bias.grad.any()


def test_linear_and_embedding_take_grads_set_to_none():
    """.grad = None (PyTorch's set_to_none habit, which the recurrent layers take) raised
    "'NoneType' object has no attribute 'dtype'" in Linear and Embedding."""
    rng = np.random.default_rng(0)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    ref, lin = _linear(), _linear()
    ref.backward(dy)
    lin.weight.grad = lin.bias.grad = None
    lin.backward(dy)
    for name in ("weight", "bias"):
        g = getattr(lin, name).grad
        assert g.dtype == np.float32 and g.flags.c_contiguous
        np.testing.assert_array_equal(g, getattr(ref, name).grad)
    dy = rng.standard_normal((3, 2)).astype(np.float32)
    ids = np.array([1, 4, 1])
    ref, emb = lnn.Embedding(5, 2, seed=0), lnn.Embedding(5, 2, seed=0)
    ref(ids)
    ref.backward(dy)
    emb(ids)
    emb.weight.grad = None
    emb.backward(dy)
    np.testing.assert_array_equal(emb.weight.grad, ref.weight.grad)


def test_embedding_backward_checks_weight_grad():
    """A gradient of a wrong shape (a stale (3, 4) for a (10, 4) table) was accumulated into
    silently, and when it failed the error named the core's internals ("V=3", "src")."""
    emb = lnn.Embedding(10, 4, seed=0)
    emb(np.array([1, 2]))
    dy = np.ones((2, 4), np.float32)
    for shape in ((3, 4), (10, 5), (40,)):
        emb.weight.grad = np.zeros(shape, np.float32)
        with pytest.raises(
            ValueError,
            match=rf"^weight.grad: expected shape \(V, E\) = \(10, 4\) .*, got \({shape[0]},",
        ):
            emb.backward(dy)
        assert not emb.weight.grad.any()
    emb.weight.grad = np.zeros((10, 4), np.int32)
    with pytest.raises(TypeError, match="^weight.grad: expected a real floating-point array"):
        emb.backward(dy)
    emb.weight.grad = np.zeros((10, 4))  # a float64 gradient is still accumulated into
    emb.backward(dy)
    assert emb.weight.grad.dtype == np.float64 and emb.weight.grad[1:3].all()


def test_small_layers_refuse_complex_input():
    """Complex input was silently reduced to its real part (only a ComplexWarning) by Linear's
    forward and backward, Dropout, Embedding.from_pretrained, softmax_cross_entropy and
    log_softmax; the recurrent layers refuse it with a TypeError."""
    z = np.ones((2, 4)) + 5j
    msg = "expected a real floating-point array, got dtype complex128"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way
        with pytest.raises(TypeError, match=f"^x: {msg}"):
            lnn.Linear(4, 3, seed=0)(z)
        lin = _linear()
        with pytest.raises(TypeError, match=f"^dy: {msg}"):
            lin.backward(np.ones((2, 3)) + 1j)
        assert not lin.weight.grad.any()
        d = lnn.Dropout(0.5, seed=0)
        with pytest.raises(TypeError, match=f"^x: {msg}"):
            d(z)
        d(np.ones((2, 4)))
        with pytest.raises(TypeError, match=f"^dy: {msg}"):
            d.backward(z)
        with pytest.raises(TypeError, match=f"^x: {msg}"):
            d.eval()(z)
        with pytest.raises(TypeError, match="^weight: expected a real numeric array, got dtype"):
            lnn.Embedding.from_pretrained(z)
        with pytest.raises(ValueError, match="^weight: expected values within float32's range"):
            lnn.Embedding.from_pretrained(np.full((2, 3), 1e300))
        emb = lnn.Embedding(5, 4, seed=0)
        emb(np.array([1, 2]))
        with pytest.raises(TypeError, match=f"^dy: {msg}"):
            emb.backward(z)
        with pytest.raises(TypeError, match=f"^logits: {msg}"):
            lnn.softmax_cross_entropy(np.zeros((2, 3)) + 1j, [0, 1])
        with pytest.raises(TypeError, match=f"^logits: {msg}"):
            lnn.log_softmax(np.zeros((2, 3)) + 1j)


def test_small_layers_name_a_non_numeric_argument():
    """Linear(4, 3)('abc') and CrossEntropyLoss.backward('x') raised "could not convert string
    to float" (the str was parsed as a number when it could be), naming no argument."""
    with pytest.raises(TypeError, match=r"^x: expected a real floating-point array, got dtype <U3"):
        lnn.Linear(4, 3)("abc")
    with pytest.raises(TypeError, match=r"^x: expected a real floating-point array \("):
        lnn.Linear(2, 3)([[1.0, 2.0], [3.0]])
    with pytest.raises(TypeError, match=r"^x: expected a real floating-point array, got dtype <U"):
        lnn.Linear(1, 3)(["1.5"])
    crit = lnn.CrossEntropyLoss()
    crit(np.zeros((2, 3), np.float32), [0, 1])
    for bad, got in (("x", "str"), (1j, "complex"), (None, "NoneType"), (np.ones(2), "shape")):
        with pytest.raises(TypeError, match=rf"^scale: expected a real number, got {got}"):
            crit.backward(bad)
    g = crit.backward()
    np.testing.assert_array_equal(crit.backward(2), g * np.float32(2))
    np.testing.assert_array_equal(crit.backward(np.array(0.5)), g * np.float32(0.5))
