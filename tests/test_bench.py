"""Smoke tests of `lstm-fast bench` and the peer adapters: it runs, writes valid JSON, reports a
missing peer as 'not installed', rejects bad arguments with clear messages. No timing asserts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lstm_fast import _peers, bench, cli

TINY = ["--shape", "3,2,5,7", "--quick", "--budget", "0.01", "--peak-size", "64"]


def run_bench(tmp_path, *extra):
    path = tmp_path / "bench.json"
    rc = cli.main(["bench", *TINY, "--json", str(path), *extra])
    return rc, json.loads(path.read_text())


def test_bench_writes_json(tmp_path, capsys):
    rc, report = run_bench(tmp_path, "--threads", "1,2")
    assert rc == 0
    for key in ("schema", "date", "machine", "versions", "cpu_info", "settings", "peak", "results"):
        assert key in report
    assert report["cpu_info"]["isa"] in report["cpu_info"]["available_isas"]
    assert [p["threads"] for p in report["peak"]] == [1, 2]
    assert all(p["gflops"] > 0 for p in report["peak"])
    cells = report["results"]
    assert {(c["mode"], c["threads"]) for c in cells} == {
        (m, n) for m in ("forward", "training") for n in (1, 2)
    }
    for c in cells:
        assert (c["T"], c["B"], c["I"], c["H"]) == (3, 2, 5, 7)
        assert set(c["impls"]) == {"lstm_fast", "numpy"}
        ours, ref = c["impls"]["lstm_fast"], c["impls"]["numpy"]
        assert ours["status"] == "ok" and ref["status"] == "ok"
        assert ours["median_ms"] > 0 and ours["gflops"] > 0 and ours["repeats"] >= 1
        assert ref["speedup"] == pytest.approx(ref["median_ms"] / ours["median_ms"])
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "vs numpy" in out and "peak" in out
    assert f"allocator: {report['allocator']}" in out


def test_bench_missing_peers_are_reported(tmp_path, monkeypatch, capsys):
    for mod in ("torch", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    rc, report = run_bench(tmp_path, "--peers", "--threads", "1", "--modes", "forward")
    assert rc == 0
    (cell,) = report["results"]
    for peer in _peers.PEERS:
        assert cell["impls"][peer]["status"] == "not installed"
    assert report["versions"]["torch"] is None
    assert "not installed" in capsys.readouterr().out


def test_bench_with_installed_peers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    rc, report = run_bench(tmp_path, "--peers", "--threads", "1", "--shape", "1,2,5,7")
    assert rc == 0
    by = {(c["T"], c["mode"]): c["impls"] for c in report["results"]}
    assert by[(3, "forward")]["torch.nn.LSTM"]["status"] == "ok"
    assert by[(3, "forward")]["onnxruntime"]["status"] == "ok"  # passed the 1e-4 output check
    assert by[(3, "training")]["onnxruntime"]["status"].startswith("n/a")
    assert by[(3, "forward")]["torch.nn.LSTMCell"]["status"].startswith("n/a")
    assert by[(1, "forward")]["torch.nn.LSTMCell"]["status"] == "ok"
    assert by[(1, "training")]["torch.nn.LSTMCell"]["status"] == "ok"


def test_onnx_gate_order_is_checked(monkeypatch):
    """A wrong gate reordering is caught by the one-time output check, not timed."""
    pytest.importorskip("onnxruntime")
    p = _peers.make_problem(2, 3, 4, 5)
    _peers.make("onnxruntime", p, "forward", 1)()
    monkeypatch.setattr(_peers, "ONNX_GATE_ORDER", (0, 1, 2, 3))
    with pytest.raises(_peers.Mismatch, match="onnxruntime"):
        _peers.make("onnxruntime", p, "forward", 1)


def test_reference_and_lstm_fast_agree_on_problem():
    p = _peers.make_problem(4, 3, 6, 5)
    y_ref = _peers.make("numpy", p, "forward", 1)()[0]
    np.testing.assert_allclose(p.expected()[0], y_ref, rtol=1e-5, atol=1e-6)


def test_cold_start_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    rc, report = run_bench(
        tmp_path, "--threads", "1", "--modes", "forward", "--cold-start", "--plot", str(png)
    )
    assert rc == 0
    (cold,) = report["cold_start"]
    assert cold["status"] == "ok", cold
    assert cold["first_ms"] > 0 and cold["steady_ms"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = cli.main(["bench", *TINY, "--plot", str(tmp_path / "x.png")])
    assert rc == 2
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shape", "3,2,5"], "expected T,B,I,H"),
        (["--shape", "3,2,0,7"], "expected T,B,I,H"),
        (["--shapes", "S1,S9"], "unknown shape 'S9'"),
        (["--modes", "inference"], "unknown mode 'inference'"),
        (["--threads", "0"], "thread counts"),
        (["--threads", "two"], "thread counts"),
    ],
)
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--budget", "0"], "--budget"),
        (["--repeats", "0"], "--repeats"),
        (["--json", "/nonexistent-dir/x.json"], "does not exist"),
    ],
)
def test_value_errors(argv, message, capsys):
    assert cli.main(["bench", *TINY, *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "NumPy reference" in out and "--peers" in out and "S1 100,32,256,256" in out


def test_time_call_counts():
    calls = []
    t = bench.time_call(lambda: calls.append(1), budget=0.0, min_repeats=3, warmup=2)
    assert t.repeats == 3 and t.warmup >= 2 and len(calls) == t.repeats + t.warmup


def test_time_interleaved_takes_turns_and_counts():
    log = []
    fns = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    out = bench.time_interleaved(
        fns,
        budget=0.0,
        min_repeats={"a": 3, "b": 40, "c": 1},
        warmup={"a": 2, "b": 1, "c": 0},
        round_s=0.0,
        gap_s=0.0,
    )
    assert list(out) == ["a", "b", "c"]  # (each batch of a fast call starts with an untimed one)
    assert all(isinstance(t, bench.Timing) for t in out.values())
    assert out["a"].warmup >= 2 and out["c"].warmup == 0
    for name in fns:
        assert out[name].repeats >= {"a": 3, "b": 40, "c": 1}[name]
        assert log.count(name) == out[name].repeats + out[name].warmup
    # warm-ups one after the other (2 changes of name), then rounds in which each takes its
    # turn and "b", still short of its repeats, goes on alone: more changes than one block each
    assert sum(p != q for p, q in zip(log, log[1:])) >= 5
    assert log[-1] == "b"


def test_time_interleaved_with_no_warmup_at_all():
    # nothing measured before the first round (NumPy's reference on big shapes): one call
    calls = []
    out = bench.time_interleaved(
        {"x": lambda: calls.append(1)}, budget=0.0, min_repeats={"x": 2}, warmup={"x": 0}
    )
    assert out["x"].warmup >= 0 and out["x"].repeats >= 2
    assert len(calls) == out["x"].repeats + out["x"].warmup


def test_time_interleaved_isolates_a_failing_implementation():
    calls = {"ok": 0, "bad": 0}

    def ok():
        calls["ok"] += 1

    def bad():
        calls["bad"] += 1
        if calls["bad"] == 4:
            raise RuntimeError("boom")

    out = bench.time_interleaved(
        {"bad": bad, "ok": ok},
        budget=0.0,
        min_repeats={"bad": 10, "ok": 10},
        warmup={"bad": 2, "ok": 2},
        round_s=0.0,
        gap_s=0.0,
    )
    assert isinstance(out["bad"], bench.CallFailed) and "RuntimeError: boom" in str(out["bad"])
    assert isinstance(out["ok"], bench.Timing) and out["ok"].repeats >= 10
    assert calls["bad"] == 4
    failed_at_warmup = bench.time_interleaved(
        {"x": lambda: 1 / 0}, budget=0.0, min_repeats={"x": 1}, warmup={"x": 1}
    )
    assert "ZeroDivisionError" in str(failed_at_warmup["x"])


def _spin_until(stop: threading.Event, spent: list) -> None:
    while not stop.is_set():
        spent[0] = time.thread_time()


@pytest.mark.skipif(bench._other_threads_ns() is None, reason="no /proc/self/task schedstat")
def test_wait_quiet_waits_for_a_busy_thread():
    # A thread that keeps running (another runtime's pool spinning after its call) holds the
    # wait to its limit; once it has stopped, the wait ends after the minimum and one window.
    stop, spent = threading.Event(), [0.0]
    t = threading.Thread(target=_spin_until, args=(stop, spent))
    before = bench._other_threads_ns()
    t.start()
    try:
        while spent[0] < 0.03:  # the thread's own CPU time
            time.sleep(0.005)
        assert bench._other_threads_ns() - before >= 20e6
        assert bench.wait_quiet(0.0, max_s=0.2, window_s=0.02) >= 0.2
    finally:
        stop.set()
        t.join()
    waited = bench.wait_quiet(0.01, max_s=5.0, window_s=0.02)
    assert 0.01 <= waited < 5.0


def test_family_ratios_script_runs(tmp_path):
    """benchmarks/family_ratios.py (the layer family's targets, interleaved): every group runs
    and the last line is JSON with its figures (no torch here, so lstm_fast's own ratios)."""
    import os
    import subprocess

    # The script next to this test file (the package itself may be installed elsewhere, as in
    # CI); PYTHONPATH gains the imported package's root so a source checkout finds its _core.
    root = os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__)))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(here, "benchmarks", "family_ratios.py")
    if not os.path.exists(script):
        pytest.skip("benchmarks/ not in this checkout")
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, script, "--budget", "0", "--no-torch", "--threads", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=path),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fig["threads"] == 2 and fig["torch"] is None
    # ratios of timings: present and positive (their size is the machine's business, and a
    # loaded machine moves them far: no timing assertions in tests)
    for key in ("lengths_forward_over_full", "lengths_training_over_full", "step_s4_us"):
        assert math.isfinite(fig[key]) and fig[key] > 0, key
    assert "GRU S2 training" in proc.stdout and "LSTM.step() S4" in proc.stdout


def test_blas_describe_names_the_library():
    lib = _peers.blas_control().describe()
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        assert lib == {}
        return
    assert set(lib) <= {"internal_api", "version", "architecture"}
    assert lib.get("internal_api")  # NumPy's BLAS (OpenBLAS in the wheels) is found


def test_steady_allocator_stops_page_faults_of_reused_buffers():
    # In a fresh process, four 6 MiB buffers freed together go back to the OS (glibc trims the
    # heap's top) and every later round faults ~2,000 pages in again; after steady_allocator
    # the later rounds reuse them. In a fresh interpreter: this one's malloc state depends on
    # the tests that ran before.
    desc = _peers.steady_allocator()
    assert _peers.steady_allocator() == desc  # idempotent
    if not desc.startswith("glibc"):
        pytest.skip(f"allocator {desc}")
    code = """
import resource, numpy as np
from lstm_fast import _peers
_peers.steady_allocator()
def round_():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bufs = [np.empty((6 << 20) // 4, np.float32) for _ in range(4)]
    for a in bufs:
        a.fill(1.0)
    del bufs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print([round_() for _ in range(4)])
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(_peers.__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=root),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    faults = json.loads(out.strip().splitlines()[-1])
    pages = 4 * (6 << 20) // 4096
    assert faults[0] > pages // 10  # the first round faults its pages in (some as huge pages)
    assert max(faults[1:]) < pages // 50, faults  # the later ones reuse them
