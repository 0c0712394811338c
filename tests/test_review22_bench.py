"""Review 22 of `lstm-fast bench` as users run it: bad option values give one-line errors naming
the option (before anything is timed), output paths that cannot be written fail early or with one
line, Ctrl-C leaves the cells measured so far in --json, a failing cold-start child is an error,
OMP_NUM_THREADS is honoured by the default thread counts, and the JSON rows follow the FLOP model
of --help. Tiny shapes, no timing asserts."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from lstm_fast import _peers, bench, cli

TINY = ["--shape", "3,2,5,7", "--quick", "--budget", "0.01", "--peak-size", "64"]


def _bench(*argv):
    return cli.main(["bench", *TINY, *argv])


# ------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
        (["--json", ""], "--json: expected a file path, got ''"),
        (["--plot", ""], "--plot: expected a file path, got ''"),
    ],
)
def test_bad_values_are_one_line_errors(argv, message, capsys, tmp_path):
    assert _bench(*argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_plot_to_a_directory_is_an_error(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert _bench("--plot", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "--plot: expected a file path, got the directory" in err
    assert not os.path.exists(str(tmp_path) + ".png")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_json_path_that_cannot_be_created_fails_before_the_run(capsys):
    # /proc is a writable-looking directory (root passes os.access) where no file can be made
    t = time.perf_counter()
    assert _bench("--json", "/proc/lstm_fast_bench.json") == 2
    err = capsys.readouterr().err
    assert "--json:" in err and "/proc/lstm_fast_bench.json" in err
    assert "Traceback" not in err
    assert capsys.readouterr().out == ""  # nothing timed
    assert time.perf_counter() - t < 5


def test_json_existing_file_is_replaced_and_probe_leaves_no_file(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text("old")
    assert _bench("--threads", "1", "--modes", "forward", "--json", str(path)) == 0
    assert json.loads(path.read_text())["schema"] == bench.SCHEMA
    assert not list(tmp_path.glob("*.tmp*"))
    # a failing check after the path probe (a bad --plot) leaves no empty file behind
    pytest.importorskip("matplotlib")
    other = tmp_path / "new.json"
    assert _bench("--json", str(other), "--plot", str(tmp_path / "x.xyz")) == 2
    assert not other.exists()
    assert "--plot: expected an image file" in capsys.readouterr().err


def test_write_failure_after_the_run_is_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.json"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "_write_json", boom)
    rc = _bench("--threads", "1", "--modes", "forward", "--json", str(path))
    assert rc == 1
    err = capsys.readouterr().err
    assert "lstm-fast bench: --json: cannot write" in err and "No space left" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ threads


def test_default_threads_honour_omp_num_threads(monkeypatch):
    args = cli.build_parser().parse_args(["bench", *TINY])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert bench.resolve(args).threads == [1]
    monkeypatch.setenv("OMP_NUM_THREADS", "garbage")
    assert bench.resolve(args).threads == list(dict.fromkeys([1, bench.core_count()]))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert bench.resolve(args).threads == list(dict.fromkeys([1, bench.core_count()]))
    args = cli.build_parser().parse_args(["bench", *TINY, "--threads", "2"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert bench.resolve(args).threads == [2]  # --threads wins


# ------------------------------------------------------------------------------ ratios


@pytest.mark.parametrize(
    "speedup, text", [(2.414, "2.41x"), (0.0045, "0.0045x"), (0.05, "0.050x"), (123.4, "123x")]
)
def test_small_ratios_keep_their_digits(speedup, text):
    cell = bench._peer_cell({"status": "ok", "speedup": speedup, "median_ms": 1.0})
    assert cell.startswith(text + " "), cell


# ------------------------------------------------------------------------------ JSON schema


def test_json_rows_follow_the_flop_model_and_ratios(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert _bench("--threads", "1", "--json", str(path)) == 0
    report = json.loads(path.read_text())
    assert report["schema"] == bench.SCHEMA and report.get("interrupted") is False
    peaks = {p["threads"]: p["gflops"] for p in report["peak"]}
    for c in report["results"]:
        T, B, I, H = c["T"], c["B"], c["I"], c["H"]
        want = 2.0 * T * B * (I + H) * 4 * H * (3 if c["mode"] == "training" else 1)
        assert c["flops"] == want
        assert c["peak_gflops"] == peaks[c["threads"]]
        ours = c["impls"]["lstm_fast"]
        for impl, r in c["impls"].items():
            assert r["status"] == "ok", (impl, r)
            for key in ("median_ms", "min_ms", "mean_ms", "stdev_ms", "first_call_ms"):
                assert math.isfinite(r[key]) and r[key] >= 0, (impl, key)
            assert r["repeats"] >= 1 and r["warmup"] >= 0
            assert r["gflops"] == pytest.approx(want / (r["median_ms"] * 1e-3) / 1e9)
            assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / c["peak_gflops"])
            if impl != "lstm_fast":
                assert r["speedup"] == pytest.approx(r["median_ms"] / ours["median_ms"])
    out = capsys.readouterr().out
    for c in report["results"]:
        r = c["impls"]["numpy"]
        assert bench._peer_cell(r) in out


# ------------------------------------------------------------------------------ cold start


def test_cold_start_child_failure_is_reported_and_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "_COLD_CODE", "import sys; sys.exit('child broke')")
    path = tmp_path / "r.json"
    rc = _bench("--threads", "1", "--modes", "forward", "--cold-start", "--json", str(path))
    out, err = capsys.readouterr()
    assert rc == 1
    assert "error: exit 1: child broke" in out
    assert "cold start" in err and "child broke" in err and "Traceback" not in err
    (cold,) = json.loads(path.read_text())["cold_start"]
    assert cold["status"] == "error"


def test_cold_start_child_garbage_output_is_an_error(monkeypatch):
    monkeypatch.setattr(bench, "_COLD_CODE", "print('not json')")
    res = bench.cold_start(1, 1, 4, 4, "forward", 1, 1)
    assert res["status"] == "error" and "not json" in res["error"]


# ------------------------------------------------------------------------------ subprocesses


def _env(**extra):
    env = dict(os.environ)
    env.update(extra)
    return env


BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnxruntime", "onnx"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, _Block())
"""


def test_peers_not_importable_in_a_fresh_process(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    path = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lstm_fast", "bench", *TINY, "--peers", "--threads", "1"]
        + ["--modes", "forward", "--json", str(path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "not installed" in proc.stdout
    assert "pip install" in proc.stdout  # how to get the peers
    (cell,) = json.loads(path.read_text())["results"]
    for peer in _peers.PEERS:
        assert cell["impls"][peer]["status"] == "not installed"


def test_sigint_mid_run_writes_partial_json(tmp_path):
    path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstm_fast", "bench", "--shape", "20,4,32,32", "--quick"]
        + ["--budget", "0.3", "--peak-size", "64", "--threads", "1", "--json", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # (not inherited ignored)
    )  # fmt: skip
    # wait for the first row of the table, then interrupt during the second cell
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, "bench ended before its first row"
        lines.append(line)
        if line.startswith("custom"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err and str(path) in err
    report = json.loads(path.read_text())
    assert report["interrupted"] is True
    assert 1 <= len(report["results"]) < 2
    assert report["results"][0]["impls"]["lstm_fast"]["status"] == "ok"


def test_broken_pipe_is_quiet():
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstm_fast", "bench", *TINY, "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert proc.returncode in (1, 120)


# ------------------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--budget", "1e9"],
            "--budget: expected a positive, finite number of seconds, at most 3600, "
            "got 1000000000.0",
        ),
        (["--repeats", "1000000"], "--repeats: expected an integer in [1, 10000], got 1000000"),
        (
            ["--shape", "1000000,10000,10000,1"],
            "--shape 1000000,10000,10000,1: needs about",
        ),
    ],
)
def test_values_that_would_never_finish_or_fit_fail_up_front(argv, message, capsys):
    t = time.perf_counter()
    assert cli.main(["bench", "--quick", "--peak-size", "64", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t < 5


def test_memory_error_during_the_run_is_one_line(monkeypatch, capsys):
    def boom(*a, **k):
        raise MemoryError("Unable to allocate 364. TiB")

    monkeypatch.setattr(_peers, "make_problem", boom)
    assert _bench("--threads", "1") == 1
    err = capsys.readouterr().err
    assert "lstm-fast bench: out of memory" in err and "364. TiB" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ benchmarks/


COMPARE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "compare_torch_charlm.py")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "argument --threads: expected an integer >= 1, got '0'"),
        (["--threads", "1000"], "argument --threads: expected an integer in [1, "),
        (["--seq-len", "0"], "argument --seq-len: expected an integer >= 1, got '0'"),
        (["--steps", "-3"], "argument --steps: expected an integer >= 1, got '-3'"),
    ],
)
def test_compare_torch_charlm_bad_values_are_usage_errors(argv, message):
    proc = subprocess.run(
        [sys.executable, COMPARE, "--default-corpus", *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_benchmark_suites_skip_without_torch_and_onnxruntime(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        BLOCKER.replace("ImportError", "ModuleNotFoundError")
    )
    root = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    env = _env(
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        LSTM_FAST_BENCH_SHAPES="S4",
        LSTM_FAST_BENCH_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable"]
        + ["-rs", os.path.join(root, "test_torch_bench.py")]
        + [os.path.join(root, "test_lstm_bench.py")],
        env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.splitlines()[-1]
    assert "could not import 'torch'" in proc.stdout and "not installed" in proc.stdout


def test_json_to_dev_stdout_and_through_a_symlink(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lstm_fast", "bench", *TINY, "--threads", "1"]
        + ["--modes", "forward", "--json", "/dev/stdout"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert '"schema": "lstm_fast.bench/1"' in proc.stdout
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert _bench("--threads", "1", "--modes", "forward", "--json", str(link)) == 0
    assert link.is_symlink() and json.loads(target.read_text())["schema"] == bench.SCHEMA
