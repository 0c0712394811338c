"""Review 23, small robustness fixes: peers (torch, onnx, onnxruntime) installed but failing to
import are absent with the reason, in `lstm-fast bench --peers` and in the benchmark suites;
LSTM_FAST_ISA / LSTM_FAST_SCHEDULE with an unknown value fail the import with one clear error;
the NumPy cells' ``hx`` edge cases against torch.nn.GRUCell / RNNCell / LSTMCell. Broken
installs and environment variables are tried in subprocesses, so this process keeps its torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lstm_fast import _peers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--shape", "3,2,5,7", "--quick", "--budget", "0.01", "--peak-size", "64"]

# (package, what its __init__ raises): a shared library missing, a loader error, a failed init
BROKEN = {
    "torch": 'ImportError("libfoo.so: cannot open shared object file")',
    "onnx": 'OSError("libbar.so: wrong ELF class")',
    "onnxruntime": 'RuntimeError("cannot initialise the runtime")',
}


def _broken_env(tmp_path, **extra):
    """An environment whose sys.path finds broken torch, onnx and onnxruntime packages first."""
    for name, exc in BROKEN.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text(f"raise {exc}\n")
    env = dict(os.environ)
    # the lstm_fast under test: the installed one, or a checkout named by PYTHONPATH (ROOT, a
    # source tree, may hold no compiled core)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _run(argv, env, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------ 1. peers that fail to import


def test_bench_reports_peers_that_fail_to_import(tmp_path):
    env = _broken_env(tmp_path / "site")
    path = tmp_path / "r.json"
    argv = ["-m", "lstm_fast", "bench", *TINY, "--peers", "--threads", "1", "--modes", "forward"]
    proc = _run([*argv, "--json", str(path)], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (cell,) = json.loads(path.read_text())["results"]
    impls = cell["impls"]
    assert impls["lstm_fast"]["status"] == "ok"
    for peer in ("torch.nn.LSTM", "torch.nn.LSTMCell"):
        assert impls[peer]["status"] == (
            "not available: ImportError: libfoo.so: cannot open shared object file"
        )
    assert impls["onnxruntime"]["status"].startswith("not available: ")
    assert "unavailable" in proc.stdout  # the table's cell
    # the reason, once per implementation
    assert proc.stderr.count("note: torch.nn.LSTM not available: ImportError: libfoo.so") == 1


def test_import_peer_reasons(tmp_path):
    code = (
        "from lstm_fast import _peers\n"
        "for m in ('torch', 'onnx', 'onnxruntime', 'no_such_peer_pkg'):\n"
        "    try:\n"
        "        _peers.import_peer(m)\n"
        "    except _peers.Unavailable as e:\n"
        "        print(m, '=', e)\n"
    )
    proc = _run(["-c", code], _broken_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "torch = not available: ImportError: libfoo.so: cannot open shared object file",
        "onnx = not available: OSError: libbar.so: wrong ELF class",
        "onnxruntime = not available: RuntimeError: cannot initialise the runtime",
        "no_such_peer_pkg = not installed",
    ]


def test_import_peer_blocked_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(_peers.Unavailable, match="^not installed$"):
        _peers.import_peer("onnxruntime")


@pytest.mark.parametrize(
    "target",
    [
        "test_torch_bench.py",  # torch imported at module level
        "test_family_bench.py::test_gru",  # torch imported inside the test
        "test_proj_bench.py::test_lstm_proj",
        "test_lengths_bench.py::test_lstm_lengths_s1",
    ],
)
def test_benchmarks_skip_torch_that_fails_to_import(tmp_path, target):
    env = _broken_env(tmp_path / "site", LSTM_FAST_BENCH_SHAPES="S1", LSTM_FAST_BENCH_THREADS="1")
    path = os.path.join(ROOT, "benchmarks", target)
    argv = ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--benchmark-disable", path]
    if "::" in target:
        argv += ["-k", "torch"]
    proc = _run(argv, env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    # all skipped, nothing errored (a file skipped whole at collection: 5, no tests collected)
    assert proc.returncode == (5 if "::" not in target else 0), out
    assert "ERROR" not in out and "error" not in out.strip().splitlines()[-1], out
    assert "SKIPPED" in out, out
    assert "could not import 'torch': not available: ImportError: libfoo.so: cannot open" in out


# ----------------------------------------------------- 2. LSTM_FAST_ISA / LSTM_FAST_SCHEDULE values


def _import_with(tmp_path, **env):
    return _run(["-c", "import lstm_fast"], dict(os.environ, **env), cwd=tmp_path)


def _one_error(proc) -> str:
    """The import failed with exit status 1 (no crash), one traceback, no chained ones: its last
    line."""
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert "During handling" not in proc.stderr and "direct cause" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def _available_isas() -> str:
    import lstm_fast

    return ", ".join(lstm_fast.cpu_info()["available_isas"])


@pytest.mark.parametrize("value", ["bogus", "AVX2", " avx2", "scalar,avx2"])
def test_unknown_isa_is_one_clear_import_error(tmp_path, value):
    last = _one_error(_import_with(tmp_path, LSTM_FAST_ISA=value))
    assert last == (
        f"ImportError: LSTM_FAST_ISA: unknown ISA {value!r}; available: {_available_isas()}"
    )


@pytest.mark.parametrize("value", ["avx2", "avx512"])
def test_unsupported_isa_is_one_clear_import_error(tmp_path, value):
    import lstm_fast

    if value in lstm_fast.cpu_info()["available_isas"]:
        pytest.skip(f"this CPU supports {value}")
    last = _one_error(_import_with(tmp_path, LSTM_FAST_ISA=value))
    assert last == (
        f"ImportError: LSTM_FAST_ISA: this CPU does not support {value!r}; "
        f"available: {_available_isas()}"
    )


@pytest.mark.parametrize("value", ["bogus", "AUTO"])
def test_unknown_schedule_is_one_clear_import_error(tmp_path, value):
    last = _one_error(_import_with(tmp_path, LSTM_FAST_SCHEDULE=value))
    assert last == (
        "ImportError: LSTM_FAST_SCHEDULE: expected one of auto, units, batch, serial, "
        f"got {value!r}"
    )


# ------------------------------------------------------------- 3. the cells' hx, against torch's

I, H, B = 4, 3, 2
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]


def _cells(name, training):
    """lstm_fast's cell in training or eval mode and torch's, loaded with the same weights."""
    import torch

    import lstm_fast

    ours = getattr(lstm_fast, name)(I, H, seed=0).train(training)
    theirs = getattr(torch.nn, name)(I, H)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            p.copy_(torch.from_numpy(getattr(ours, n).data))
    return ours, theirs


def _state(name, a):
    return (a, a * np.float32(0.5)) if name == "LSTMCell" else a


def _flat(out):
    return [np.asarray(o.detach() if hasattr(o, "detach") else o) for o in _tup(out)]


def _tup(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", CELLS)
def test_cell_hx_accepted_as_torch_accepts_it(name, training):
    import torch

    ours, theirs = _cells(name, training)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, I)).astype(np.float32)
    h = rng.standard_normal((B, H)).astype(np.float32)
    T = torch.from_numpy
    tstate = (lambda a: (T(a[0]), T(a[1]))) if name == "LSTMCell" else T
    cases = [
        (x, None),  # zeros
        (x[0], _state(name, h[0])),  # unbatched input and state
        (x[0], None),
        (x, _state(name, h)),
    ]
    for xi, hx in cases:
        want = _flat(theirs(T(xi), None if hx is None else tstate(hx)))
        got = _flat(ours(xi, hx))
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", CELLS)
def test_cell_hx_of_another_real_dtype_is_converted(name, training):
    """Documented: any real dtype is converted to float32, as for the layers' states (torch
    refuses a dtype other than the weights')."""
    ours, _ = _cells(name, training)
    x = np.random.default_rng(2).standard_normal((B, I)).astype(np.float32)
    h = np.arange(B * H, dtype=np.float32).reshape(B, H) / 10
    want = _flat(ours(x, _state(name, h)))
    for dtype in (np.float64, np.float16):
        got = _flat(ours(x, _state(name, h.astype(dtype))))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3)
    hi = np.ones((B, H), np.int64)
    got = _flat(ours(x, _state(name, hi)))
    for g, w in zip(got, _flat(ours(x, _state(name, hi.astype(np.float32))))):
        np.testing.assert_array_equal(g, w)
    assert all(g.dtype == np.float32 for g in got)


def _hx_errors(name):
    x = np.zeros((B, I), np.float32)
    h = np.zeros((B, H), np.float32)
    lstm = name == "LSTMCell"
    want = r"\(B=2, H=3\)"
    cases = [
        # batched input, unbatched state (torch raises)
        (x, _state(name, h[0]), ValueError,
         r"^hx: h_0: expected shape \(2, 3\), got \(3,\): an unbatched state for a batched "
         r"input \(B=2\)$"),
        # unbatched input, batched state (torch raises)
        (x[0], _state(name, h), ValueError,
         r"^hx: h_0: expected shape \(3,\), got \(2, 3\): a batched state for an unbatched "),
        (x, _state(name, h.astype(bool)), TypeError,
         r"^hx: h_0: expected a real floating-point array, got dtype bool$"),
        (x, _state(name, h.astype(np.complex64)), TypeError,
         r"^hx: h_0: expected a real floating-point array, got dtype complex64$"),
    ]  # fmt: skip
    if lstm:
        for hx, got in [((h,), "a tuple of 1"), ((h, h, h), "a tuple of 3"), (h, "ndarray")]:
            msg = rf"^hx: expected a tuple \(h_0, c_0\), each of shape {want}, got {got}$"
            cases.append((x, hx, TypeError, msg))
        cases.append((x, (h, h[0]), ValueError, r"^hx: c_0: expected shape \(2, 3\), got \(3,\)"))
    else:
        for hx, got in [((h,), "a tuple of 1"), ((h, h), "a tuple of 2"), ([h, h], "a list of 2")]:
            msg = (
                rf"^hx: h_0: expected a real floating-point array of shape {want}, got {got} "
                rf"\({name} has one state, h_0\)$"
            )
            cases.append((x, hx, TypeError, msg))
    return cases


@pytest.mark.parametrize("check_finite", [False, True])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", CELLS)
def test_cell_hx_errors_name_hx_with_expected_and_given(name, training, check_finite):
    import torch

    import lstm_fast

    ours = getattr(lstm_fast, name)(I, H, seed=0, check_finite=check_finite).train(training)
    theirs = getattr(torch.nn, name)(I, H)
    before = {
        n: (p.data.copy(), None if p.grad is None else p.grad.copy())
        for n, p in ours.named_parameters()
    }
    for x, hx, exc, msg in _hx_errors(name):
        with pytest.raises(exc, match=msg):
            ours(x, hx)
        if exc is ValueError or isinstance(hx, (tuple, list)) and name != "LSTMCell":
            # torch refuses these too (a dtype it would refuse as well, differently)
            th = (
                tuple(torch.from_numpy(np.asarray(a)) for a in hx)
                if isinstance(hx, (tuple, list))
                else torch.from_numpy(np.asarray(hx))
            )
            with pytest.raises((RuntimeError, TypeError, ValueError, AttributeError)):
                theirs(torch.from_numpy(x), th)
    for n, p in ours.named_parameters():  # nothing changed
        np.testing.assert_array_equal(p.data, before[n][0])
        if before[n][1] is None:
            assert p.grad is None
        else:
            np.testing.assert_array_equal(p.grad, before[n][1])
    with pytest.raises(RuntimeError, match="no saved forward"):
        ours.backward(np.ones((B, H), np.float32))


def test_gru_cell_hx_as_nested_lists_is_still_an_array():
    import lstm_fast

    cell = lstm_fast.GRUCell(I, H, seed=0)
    x = np.ones((B, I), np.float32)
    h = np.full((B, H), 0.25, np.float32)
    want = cell(x, h)
    np.testing.assert_array_equal(cell(x, h.tolist()), want)
    np.testing.assert_array_equal(cell(x[0], [np.float32(0.25)] * H), want[0])
