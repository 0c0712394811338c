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
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), ROOT])
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
    return _run(["-c", "import lstm_fast"], dict(os.environ, PYTHONPATH=ROOT, **env), cwd=tmp_path)


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
