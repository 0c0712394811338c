"""Review 27: bugs earlier reviews found and left open -- the data pipeline and the command line,
the training API, ONNX interop, the command's import-time errors, check_finite's order and
step()'s atomicity, and what the torch drop-in saves for backward. Each test failed before its
fix (the last one pins a documented limitation)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from lstm_fast import GRU, LSTM, RNN, cli, interop, ops, optim
from lstm_fast.data import ids_digest, load_corpus, read_tsv
from lstm_fast.module import Parameter
from lstm_fast.nn import Linear

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def _run(argv, env=None, timeout=300, **kw):
    return subprocess.run(
        [sys.executable, *argv],
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# ------------------------------------------------------------------ 1. data and the command line
def test_ids_digest_tells_float_ids_apart():
    """The ids were cast to int32 before hashing: [0.1, 1.5] and [0.2, 1.7] (both [0, 1]) had
    one digest, and so had int64 ids 2**32 and 0."""
    assert ids_digest(np.array([0.1, 1.5])) != ids_digest(np.array([0.2, 1.7]))
    assert ids_digest(np.array([0.5])) != ids_digest(np.array([0.0]))
    assert ids_digest(np.array([2**32, 7])) != ids_digest(np.array([0, 7]))
    assert ids_digest(np.array([np.nan, 1.0])) != ids_digest(np.array([0.0, 1.0]))
    assert ids_digest(np.array([2**63 + 1], np.uint64)) != ids_digest(np.array([1]))
    # the same values give the same digest whatever the dtype, and the int32 digest is the one
    # saved checkpoints hold (data_digest)
    old = hashlib.sha256(np.arange(5, dtype=np.int32).tobytes()).hexdigest()[:16]
    for a in (np.arange(5), np.arange(5.0), np.arange(5, dtype=np.uint8), [0, 1, 2, 3, 4]):
        assert ids_digest(a) == old
    assert ids_digest(np.array([2**40, 3])) == ids_digest(np.array([2.0**40, 3.0]))
    assert ids_digest(np.array([], np.float32)) == ids_digest(np.array([], np.int64))
    with pytest.raises(TypeError, match=r"^ids: expected an array of integer token ids"):
        ids_digest(np.array(["a"]))


def test_read_tsv_keeps_a_carriage_return_inside_a_text(tmp_path):
    """The file was read with Python's universal newlines, which end a line at a lone "\\r" as
    well: a review holding one became two rows (or "expected 'label<TAB>text'")."""
    path = tmp_path / "r.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("label\ttext\r\n1\tgreat\rfilm\r\n0\tdull\r\r\n1\tend\rx\n1\tlast\r")
    labels, texts = read_tsv(path)
    assert labels.tolist() == [1, 0, 1, 1]
    assert texts == ["great\rfilm", "dull\r", "end\rx", "last"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("1\ta\rb\n0\tc\n")
    assert read_tsv(path)[1] == ["a\rb", "c"]


def _unblock_readers(path, seconds=10.0):
    """A watchdog: for ``seconds``, a reader of the FIFO ``path`` waiting for a writer gets an
    empty pipe instead of hanging the test (where the code under test should not read it)."""
    stop = threading.Event()

    def run():
        while not stop.wait(0.05):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # (ENXIO while no reader)
            except OSError:
                continue
            os.close(fd)

    threading.Thread(target=run, daemon=True).start()
    threading.Timer(seconds, stop.set).start()
    return stop


def _feed(path, data: bytes):
    """A writer thread for the FIFO ``path`` (opening it blocks until a reader comes)."""

    def write():
        with open(path, "wb") as f:
            f.write(data)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_a_pipe_is_read_as_a_corpus():
    """A corpus given as a pipe (``<(zcat corpus.gz)``, /dev/fd/N) was refused: "expected a text
    file or a directory". It is read once, as it streams."""
    r, w = os.pipe()
    try:
        os.write(w, "tëxt\nmore".encode())
        os.close(w)
        assert load_corpus(f"/dev/fd/{r}") == "tëxt\nmore"
    finally:
        os.close(r)
    with pytest.raises(FileNotFoundError, match=r"expected a text file, a directory or a pipe"):
        load_corpus("/dev/null")


_TINY = ["--hidden-size", "8", "--embed-size", "4", "--num-layers", "1", "--seq-len", "5"]
_TINY += ["--batch-size", "2", "--steps", "2", "--val-every", "0", "--quiet", "--json"]


@needs_fifo
def test_train_and_evaluate_read_a_fifo_corpus(tmp_path, capsys):
    text = ("def f(x):\n    return x + 1\n" * 20).encode()
    fifo = tmp_path / "corpus"
    os.mkfifo(fifo)
    run = str(tmp_path / "run")
    t = _feed(fifo, text)
    assert cli.main(["train", str(fifo), "--out", run, *_TINY]) == 0
    t.join(10)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    t = _feed(fifo, text)
    assert cli.main(["evaluate", run, str(fifo), "--json"]) == 0
    t.join(10)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bpc"] > 0


_TRAIN_FD = """
import sys, tempfile
from lstm_fast import cli
run = tempfile.mkdtemp() + "/run"
raise SystemExit(cli.main(["train", "/dev/fd/" + sys.argv[1], "--out", run, *sys.argv[2:]]))
"""


def test_train_reads_a_process_substitution():
    """``lstm-fast train <(cat file)`` as a shell runs it: the command reads /dev/fd/N."""
    r, w = os.pipe()
    os.write(w, ("abcabd\n" * 40).encode())  # (small: it fits in the pipe's buffer)
    os.close(w)
    try:
        out = _run(["-c", _TRAIN_FD, str(r), *_TINY], pass_fds=(r,))
    finally:
        os.close(r)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 2


@needs_fifo
def test_classify_refuses_one_pipe_for_two_inputs_before_reading_it(tmp_path, capsys):
    """The one place a second pass is needed: the same pipe as TSV and --val (or --lm-corpus).
    Refused, naming both, before anything is read (the second open would wait for a writer)."""
    from lstm_fast.models import ClassifierConfig, train_classifier

    fifo = tmp_path / "train.tsv"
    os.mkfifo(fifo)
    run = str(tmp_path / "cls")
    args = ["classify", "train", str(fifo), "--out", run, "--val", str(fifo), "--quiet"]
    watchdog = _unblock_readers(fifo)  # (before the fix: opened, and waited for a writer)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err == (
        f"classify: --val: the pipe {str(fifo)!r} is TSV too (a pipe can be read once only); "
        "give a regular file, or one pipe each\n"
    )
    cfg = ClassifierConfig(lm_steps=1, lm_corpus=str(fifo))
    with pytest.raises(ValueError, match=r"^lm_corpus: the pipe .* is train_tsv too"):
        train_classifier(fifo, run, cfg, progress=False, log=lambda m: None)
    watchdog.set()
    # one pipe each: read once each, as they stream
    rows = "".join(f"{i % 2}\t{'good fun' if i % 2 else 'bad dull'} {i}\n" for i in range(20))
    other = tmp_path / "val.tsv"
    os.mkfifo(other)
    ts = [_feed(fifo, rows.encode()), _feed(other, rows.encode())]
    small = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, batch_size=8)
    res = train_classifier(fifo, run, small, val_tsv=other, progress=False, log=lambda m: None)
    assert res["train_examples"] == 20 and res["val_examples"] == 20
    for t in ts:
        t.join(10)


# ------------------------------------------------------------------------ 2. the training API
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_a_parameter_listed_twice_has_one_state_and_one_update(name):
    """Each occurrence had a state of its own (two Adam moments for one weight, two entries in
    the state dict) and took an update with it. PyTorch keeps one state per parameter."""
    p, q = Parameter(np.ones(3)), Parameter(np.ones(2))
    with pytest.warns(UserWarning, match=r"appears more than once \(2 repeats dropped\)"):
        opt = optim.make_optimizer(name, [p, q, p, p], lr=0.1)
    assert opt.params == [p, q] and len(opt.state) == 2
    assert opt.param_groups[0]["params"] == [p, q]
    p1, q1 = Parameter(np.ones(3)), Parameter(np.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        once = optim.make_optimizer(name, [p1, q1], lr=0.1)
    for _ in range(3):
        for a in (p, p1):
            a.grad[...] = [1.0, -2.0, 0.5]
        for a in (q, q1):
            a.grad[...] = [0.3, 0.0]
        opt.step()
        once.step()
    np.testing.assert_array_equal(p.data, p1.data)
    np.testing.assert_array_equal(q.data, q1.data)
    sd = opt.state_dict()
    assert sd["arrays"].keys() == once.state_dict()["arrays"].keys()
    assert not any(k.startswith("2.") for k in sd["arrays"])
    resumed = optim.make_optimizer(name, [Parameter(np.ones(3)), Parameter(np.ones(2))], lr=0.1)
    resumed.load_state_dict(sd)  # (a state dict of 4 parameters did not fit one of 2)


@pytest.mark.parametrize("centered", [True, False])
def test_rmsprop_stays_finite_for_huge_gradients(centered):
    """Centered RMSprop squared the gradient and its average in float32: at |g| ~ 1e38 both
    squares overflowed and their difference was inf - inf = NaN, in the parameter. At |g| =
    1e20, (1 - alpha) g^2 = 1e38 is a float32, but g * g overflowed first (a step of 0)."""
    for g0 in (1e38, 3e38):
        p = Parameter(np.zeros(3))
        opt = optim.RMSprop([p], lr=0.01, centered=centered, momentum=0.5)
        for _ in range(3):
            p.grad[...] = [g0, -g0, 1.0]
            opt.step()
            assert np.isfinite(p.data).all(), p.data
    # |g| = 1e20: the float64 update of the same float32 states (what a float32 state can hold)
    alpha, lr, eps = 0.99, 0.01, 1e-8
    p = Parameter(np.zeros(2))
    opt = optim.RMSprop([p], lr=lr, alpha=alpha, eps=eps, centered=centered)
    v = gbar = 0.0
    want = np.zeros(2)
    for g in (1e20, 0.5e20, -0.8e20):  # (v stays below float32's 3.4e38)
        p.grad[...] = [g, 1.0]
        opt.step()
        v = alpha * v + (1 - alpha) * g * g
        gbar = alpha * gbar + (1 - alpha) * g
        want[0] -= lr * g / (np.sqrt(v - gbar * gbar if centered else v) + eps)
    np.testing.assert_allclose(p.data[0], want[0], rtol=1e-5)
    assert np.isfinite(opt.state[0]["square_avg"]).all()


def test_rmsprop_centered_variance_never_goes_negative():
    """A constant gradient: v and gbar^2 become equal, and float32 rounding left v - gbar^2
    just below 0 (its square root NaN)."""
    p = Parameter(np.zeros(4))
    opt = optim.RMSprop([p], lr=1e-3, alpha=0.5, centered=True)
    for _ in range(200):
        p.grad[...] = [0.1, 3.3, 7.7, 1e-3]
        opt.step()
    assert np.isfinite(p.data).all()


@pytest.mark.parametrize(
    "where, shape, bias",
    [
        ("weight", (3, 3), False),
        ("weight", (1, 3), True),
        ("weight", (6,), True),
        ("bias", (5,), True),
    ],
)
def test_linear_names_a_weight_of_another_shape(where, shape, bias):
    """A (3, 3) weight for Linear(3, 2) failed in NumPy's reshape ("cannot reshape array of
    size 12 into shape (4,2)"), a 1-D one in the GEMM naming its own "b"."""
    lin = Linear(3, 2, bias=bias, seed=0)
    getattr(lin, where).data = np.ones(shape, np.float32)
    want = "(O=2,) (out_features,)"
    if where == "weight":
        want = "(O=2, I=3) (out_features, in_features)"
    with pytest.raises(ValueError) as e:
        lin(np.ones((4, 3), np.float32))
    assert str(e.value) == f"{where}: expected shape {want}, got {shape}"


# -------------------------------------------------------------------------------- 3. ONNX nodes
@pytest.mark.parametrize(
    "make, given, why",
    [
        (lambda: RNN(2, 3, nonlinearity="relu"), ["relu"], "case-sensitive"),
        (lambda: GRU(2, 3), ["sigmoid", "tanh"], "case-sensitive"),
        (lambda: LSTM(2, 3), ["Sigmoid", "TANH", "Tanh"], "case-sensitive"),
        (lambda: RNN(2, 3, nonlinearity="relu", bidirectional=True), ["Relu"], "lists 2"),
        (lambda: GRU(2, 3, bidirectional=True), ["Sigmoid", "Tanh"], "lists 4"),
        (lambda: LSTM(2, 3, bidirectional=True), ["Sigmoid", "Tanh", "Tanh"], "lists 6"),
        (lambda: RNN(2, 3, bidirectional=True), ["Tanh", "Relu"], None),
    ],
)
def test_from_onnx_checks_activations_as_the_onnx_spec_does(make, given, why):
    """Names were compared case-insensitively, and one list passed for both directions of a
    bidirectional node: ONNX Runtime refuses such nodes ("Invalid activation attribute - relu",
    "activations_.size() == num_directions"), so a model the check passed could not run."""
    layer = make()
    init = interop.to_onnx(layer)
    want = interop.onnx_attributes(layer).get("activations")
    node = {**interop.onnx_attributes(layer), "activations": given}
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match=r"^node: activations: expected \[") as e:
        interop.from_onnx(layer, init["W"], init["R"], init.get("B"), node=node)
    assert why is None or why in str(e.value)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    one = {"GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"], "RNN": ["Tanh"]}
    spelled = want or one[type(layer).__name__] * layer.num_directions  # ONNX's own spelling
    interop.from_onnx(layer, **init, node={**node, "activations": spelled})


# --------------------------------------------------------------- 4. the command's import errors
_SCRIPT = """import re
import sys
from lstm_fast.cli import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


@pytest.mark.parametrize("how", ["script", "-m lstm_fast", "-m lstm_fast.cli"])
@pytest.mark.parametrize(
    "env, want",
    [
        ({"LSTM_FAST_ISA": "bogus"}, "LSTM_FAST_ISA: unknown ISA 'bogus'; available: "),
        ({"LSTM_FAST_SCHEDULE": "x"}, "LSTM_FAST_SCHEDULE: expected one of auto, units, "),
    ],
)
def test_the_command_prints_a_bad_environment_setting_as_one_line(tmp_path, how, env, want):
    """``LSTM_FAST_ISA=bogus lstm-fast bench`` printed a traceback of the package import
    (the console script imports lstm_fast.cli before main runs), exit status 1. Now the one
    line and 2, a usage error's; ``import lstm_fast`` still raises the ImportError."""
    if how == "script":  # as pip writes the console script
        script = tmp_path / "lstm-fast"
        script.write_text(_SCRIPT)
        argv = [str(script), "bench"]
    else:
        argv = [*how.split(), "bench"]
    out = _run(argv, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("lstm-fast: " + want), out.stderr
    lib = _run(["-c", "import lstm_fast"], env=env, cwd=tmp_path)
    assert lib.returncode == 1
    assert lib.stderr.strip().splitlines()[-1].startswith("ImportError: " + want)
    other = tmp_path / "lstm_fast_user.py"  # a program that imports it: the ImportError too
    other.write_text("import lstm_fast\n")
    assert "ImportError: " + want in _run([str(other)], env=env, cwd=tmp_path).stderr


# ------------------------------------------------------------------ 5. check_finite, and step()
def _lstm_args(rng, T=3, B=2, I=2, H=3):
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    w = rng.standard_normal((4 * H, I), dtype=np.float32)
    u = rng.standard_normal((4 * H, H), dtype=np.float32)
    return x, w, u


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sorted_indices": np.array([0, 0])}, "sorted_indices: expected a permutation"),
        ({"sorted_indices": np.array([0, 5])}, r"sorted_indices: expected values in \[0, B=2\)"),
        ({"sorted_indices": np.array([0, 1, 2])}, r"sorted_indices: expected shape \(B=2,\)"),
        ({"batch_sizes": np.array([1, 2, 1])}, "batch_sizes: expected non-increasing"),
        ({"batch_sizes": np.array([3, 1, 1])}, r"batch_sizes: expected values in \[0, B=2\]"),
        ({"batch_sizes": np.array([2, 1])}, r"batch_sizes: expected shape \(T=3,\)"),
    ],
)
def test_check_finite_reports_bad_lengths_before_nan_in_the_padding(rng, kw, match):
    """Bad sorted_indices (or batch_sizes) made the padding unknown, so all of x was scanned and
    its padding's NaN reported ("x: expected finite values"), not the bad argument."""
    x, w, u = _lstm_args(rng)
    x[2, 1, 0] = np.nan  # padding of sequence 1 (lengths 3 and 1)
    kw = {"batch_sizes": np.array([2, 1, 1]), **kw}
    for check in (False, True):
        with pytest.raises(ValueError, match="^" + match):
            ops.lstm_forward(x, w, u, check_finite=check, **kw)
    ok = {"batch_sizes": np.array([2, 1, 1]), "sorted_indices": np.array([0, 1])}
    ops.lstm_forward(x, w, u, check_finite=True, **ok)  # (the NaN is padding: never read)
    with pytest.raises(ValueError, match=r"^x: expected finite values, got NaN at index"):
        ops.lstm_forward(x, w, u, check_finite=True, **{**ok, "sorted_indices": np.array([1, 0])})


@pytest.mark.parametrize("fn", ["lstm", "gru", "rnn"])
def test_check_finite_reports_a_bad_argument_before_a_nan(rng, fn):
    """A weight, bias or x of a shape the core refuses, with NaN in x: the NaN was reported."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[fn]
    x = rng.standard_normal((3, 2, 2), dtype=np.float32)
    w = rng.standard_normal((G * 3, 2), dtype=np.float32)
    u = rng.standard_normal((G * 3, 3), dtype=np.float32)
    x[0, 0, 0] = np.nan
    forward = getattr(ops, f"{fn}_forward")
    for args, match in [
        ((x, w[:, :1], u), r"^weight_ih: expected shape"),
        ((x, w, u, np.ones(5, np.float32)), r"^bias_ih: expected shape"),
        ((x[0], w, u), r"^x: expected 3 dimensions"),
        ((x.astype(np.float64), w, u), r"^x: expected dtype float32"),
    ]:
        for check in (False, True):
            with pytest.raises((ValueError, TypeError), match=match):
                forward(*args, check_finite=check)
    # backward: a dy of another shape holding NaN
    out = forward(np.nan_to_num(x), w, u, training=True)
    dy = np.full((3, 2, 4), np.nan, np.float32)
    backward = getattr(ops, f"{fn}_backward")
    for check in (False, True):
        with pytest.raises(ValueError, match=r"^dy: expected shape"):
            backward(out[-1], dy, check_finite=check)
    with pytest.raises(ValueError, match=r"^dy: expected finite values"):
        backward(out[-1], np.ascontiguousarray(dy[..., :3]), check_finite=True)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_layer_check_finite_reports_a_bad_shape_before_a_nan(cls):
    m = cls(3, 4, check_finite=True, seed=0)
    x = np.ones((2, 2, 5), np.float32)
    x[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^input: expected shape \(T, B, I=3\)"):
        m(x)
    with pytest.raises(ValueError, match=r"^lengths"):
        m(np.full((2, 2, 3), np.nan, np.float32), lengths=[3, 1])
    with pytest.raises(ValueError, match=r"^input: expected finite values"):
        m(x[..., :3])


@pytest.mark.parametrize(
    "make",
    [
        lambda: LSTM(3, 4, num_layers=2, seed=0),
        lambda: GRU(3, 4, num_layers=2, seed=0),
        lambda: RNN(3, 4, num_layers=3, seed=0),
        lambda: LSTM(3, 4, num_layers=2, proj_size=2, seed=0),
    ],
    ids=["lstm", "gru", "rnn", "lstm-proj"],
)
@pytest.mark.parametrize("given", ["other", "none", "own-h"])
def test_step_that_fails_part_way_leaves_the_previous_state(make, given):
    """step() with a state of the caller's copied it into the buffer of the state it had
    returned last (and a state of None zeroed it) before running the layers: when a layer
    failed (a weight of another shape), that state object, still the caller's, was lost."""
    m = make()
    L, P, H = m.num_layers, m._out_size, m.hidden_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y, s = m.step(x)
    y, s = m.step(x, s)
    keep = [a.copy() for a in (s if isinstance(s, tuple) else (s,))] + [y.copy()]
    h = rng.standard_normal((L, 2, P)).astype(np.float32)
    other = (h, rng.standard_normal((L, 2, H)).astype(np.float32)) if isinstance(s, tuple) else h
    if given == "own-h" and isinstance(s, tuple):
        other = (s[0], other[1])  # the stream's own h with another c
    state = None if given == "none" else other
    last = getattr(m, f"weight_hh_l{L - 1}")
    good = last.data
    last.data = np.ones((good.shape[0], good.shape[1] + 1), np.float32)
    with pytest.raises(ValueError, match=r"^weight_hh(_l\d)?: expected shape"):
        m.step(x, state)
    for a, b in zip([*(s if isinstance(s, tuple) else (s,)), y], keep):
        np.testing.assert_array_equal(a, b)
    # the stream goes on from there, as if the failed call had not been made
    last.data = good
    ref = make()
    ref.load_state_dict(m.state_dict())
    s_ref = tuple(a.copy() for a in s) if isinstance(s, tuple) else s.copy()
    want = ref.step(x, s_ref)[0].copy()
    np.testing.assert_array_equal(m.step(x, s)[0], want)
    want = ref.step(x, state)[0].copy()
    np.testing.assert_array_equal(m.step(x, state)[0], want)
    if isinstance(s, tuple):  # the stream's own h (the state it returned last) with another c
        y, s = m.step(x)
        c = rng.standard_normal((L, 2, H)).astype(np.float32)
        want = ref.step(x, (s[0].copy(), c))[0].copy()
        np.testing.assert_array_equal(m.step(x, (s[0], c))[0], want)


# ------------------------------------------------------------------------- 6. the torch drop-in
def _cell_trial(torch, mod, what, x_grad, h_grad):
    """Change ``what`` in place between a cell's forward and backward: "raises" (torch's
    version-counter error) or the gradients."""
    x = torch.randn(2, 3, requires_grad=x_grad)
    h = torch.randn(2, 4, requires_grad=h_grad)
    hx = (h, torch.randn(2, 4)) if "LSTM" in type(mod).__name__ else h
    out = mod(x, hx)
    out = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        getattr(mod, what).add_(1)
    try:
        out.sum().backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return "raises"
    return [p.grad.clone() for p in mod.parameters()] + [
        t.grad.clone() for t in (x, h) if t.grad is not None
    ]


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("what", ["weight_ih", "weight_hh", "bias_ih", "bias_hh"])
@pytest.mark.parametrize("x_grad, h_grad", [(False, False), (True, False), (False, True)])
def test_cells_save_only_what_their_backward_reads(cls, what, x_grad, h_grad):
    """A cell saved every weight and bias for the version check whenever a gradient was needed:
    a bias (never read by backward), or weight_ih when the input needs no gradient, changed in
    place before backward raised where torch's cell (whose products save only what their
    backward reads) gives the gradients. Now each raises exactly where torch's does, and the
    gradients are torch's."""
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    torch.manual_seed(0)
    theirs = getattr(torch.nn, cls)(3, 4)
    ours = getattr(lft, cls)(3, 4)
    ours.load_state_dict(theirs.state_dict())
    torch.manual_seed(1)
    want = _cell_trial(torch, theirs, what, x_grad, h_grad)
    torch.manual_seed(1)
    got = _cell_trial(torch, ours, what, x_grad, h_grad)
    if want == "raises":
        assert got == "raises"
    else:
        assert got != "raises"
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cells_keep_the_double_backward_error_for_unsaved_weights():
    """A weight no longer saved still links the first-order gradients to the node that
    refuses a second-order one (it was among the saved tensors the links came from)."""
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    cell = lft.LSTMCell(3, 4)
    x = torch.randn(2, 3)  # no gradient: weight_ih is not saved
    h, _ = cell(x)
    (g,) = torch.autograd.grad(h.sum(), cell.weight_ih, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_gradients_are_numpy_memory_that_cannot_grow_as_documented():
    """Documented limitation: torch does not let memory shared with NumPy grow, so a gradient
    the kernels computed cannot be resize_()'d to a larger size; its clone can."""
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    m = lft.LSTM(3, 4)
    y, _ = m(torch.randn(5, 2, 3, requires_grad=True))
    y.sum().backward()
    g = m.weight_ih_l0.grad
    g.clone().resize_(1000)  # torch's own memory grows
    g.view(-1)[:6].mul_(2)  # in place, the same size: fine
    with pytest.raises(RuntimeError, match="not resizable"):
        g.resize_(1000)
    assert "Trying to resize storage that is not resizable" in lft.__doc__.replace("\n    ", " ")
