"""Review 25 of `lstm-fast bench` and the benchmark suite: OMP_NUM_THREADS above lstm_fast's
thread limit (a traceback after the peak), `--json -` (a file named '-'), Ctrl-C while the peak
is measured and a closed pipe mid-run (no --json at all), an explicit --repeats lowered on big
shapes, duplicate --shapes, a 2-thread peak measured below the 1-thread one (%peak in the
thousands without a word), the oversubscription note, the plot's labels of --shape cells, the
torch peers' training checked for the gradients lstm_fast's backward computes (dx, dh0, dc0),
LSTM_FAST_BENCH_THREADS above the limit in benchmarks/, a stdout closed at the end (a
"cannot write" for a whole --json, no plot), --json and --plot naming one file, and the
cold-start child's sys.path (site-packages before the stdlib). Tiny shapes, no timing asserts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

import lstm_fast
from lstm_fast import _core, _peers, bench, cli

TINY = ["--shape", "3,2,5,7", "--quick", "--budget", "0.01", "--peak-size", "64"]


def _args(*argv):
    return cli.build_parser().parse_args(["bench", *argv])


# ------------------------------------------------------------------------------ threads


def test_omp_num_threads_above_the_limit_runs_lstm_fasts_default_team(monkeypatch, capsys):
    # lstm_fast's own default team is OMP_NUM_THREADS capped at max_threads(); the bench took
    # the raw value and failed in set_num_threads with a traceback after measuring the peak
    limit = _core.max_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(limit + 36))
    args = _args(*TINY)
    assert bench._check_args(args) is None
    assert bench.resolve(args).threads == [1, limit]
    assert cli.main(["bench", *TINY, "--modes", "forward", "--no-reference"]) == 0
    out = capsys.readouterr().out
    assert f"OMP_NUM_THREADS={limit + 36}" in out
    assert f"forward    {limit:>3}" in out  # the row of the capped team


def test_oversubscription_note_says_lstm_fast_runs_at_most_its_cpus(capsys):
    n = bench.core_count() + 1
    if n > _core.max_threads():
        pytest.skip("no thread count above the CPUs is allowed here")
    argv = [*TINY, "--threads", str(n), "--modes", "forward", "--no-reference"]
    assert cli.main(["bench", *argv]) == 0
    out = capsys.readouterr().out
    # (the suite lifts the kernels' CPU bound: cpu_info()["cpus"] is not the machine's here)
    cpus = lstm_fast.cpu_info()["cpus"]
    assert f"note: {n} threads on {n - 1} usable CPUs: lstm_fast runs at most {cpus}" in out
    assert "per-step barriers" not in out  # (lstm_fast never runs more threads than CPUs)


# ------------------------------------------------------------------------------ --json


def test_json_dash_is_stdout_and_the_table_goes_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", *TINY, "--threads", "1", "--modes", "forward", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout is the JSON alone (`--json - | jq`)
    assert report["schema"] == bench.SCHEMA and report["interrupted"] is False
    assert len(report["results"]) == 1
    assert "GFLOP/s" in err and "custom" in err
    assert not (tmp_path / "-").exists()  # no file named '-'


def test_ctrl_c_while_the_peak_is_measured_leaves_an_interrupted_json(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("a previous run's")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "measure_peak", interrupted)
    assert cli.main(["bench", *TINY, "--threads", "1", "--json", str(path)]) == 130
    report = json.loads(path.read_text())
    assert report["interrupted"] is True
    assert report["results"] == [] and report["peak"] == []


def test_closed_pipe_mid_run_keeps_the_finished_cells_in_the_json(tmp_path, monkeypatch):
    # `lstm-fast bench --json r.json | head`: the reader leaves after the first row; the cells
    # measured so far are written (interrupted), as on Ctrl-C, before cli.main's quiet exit 1
    path = tmp_path / "r.json"
    rows = []
    real_row = bench.Table.row

    def row(self, cell):
        if rows:
            raise BrokenPipeError(32, "Broken pipe")
        rows.append(cell)
        real_row(self, cell)

    monkeypatch.setattr(bench.Table, "row", row)
    args = _args(*TINY, "--threads", "1", "--json", str(path))
    with pytest.raises(BrokenPipeError):
        bench.run(args)
    report = json.loads(path.read_text())
    assert report["interrupted"] is True
    assert [c["mode"] for c in report["results"]] == ["forward", "training"]
    assert all(c["impls"]["lstm_fast"]["status"] == "ok" for c in report["results"])


# ------------------------------------------------------------------------------ settings


def test_explicit_repeats_hold_on_big_shapes():
    s3 = 3.0 * 2 * 100 * 128 * (1024 + 1024) * 4 * 1024  # S3 training by the FLOP model
    assert s3 / 3 > bench.HEAVY_FLOPS  # (its forward: a "heavy" shape)
    st = bench.resolve(_args("--shapes", "S3", "--repeats", "7"))
    assert bench._cell_settings("lstm_fast", "training", st, s3) == (7, 2)
    assert bench._cell_settings("numpy", "training", st, s3) == (7, 0)
    # the defaults stay lowered there (a call of S3 takes seconds)
    st = bench.resolve(_args("--shapes", "S3"))
    assert bench._cell_settings("lstm_fast", "training", st, s3) == (2, 2)
    assert bench._cell_settings("numpy", "training", st, s3) == (1, 0)


def test_repeated_shape_names_run_once():
    assert bench.parse_shape_names("S1,s1,S6,S1") == ["S1", "S6"]
    st = bench.resolve(_args("--shapes", "S6,S6", "--quick"))
    assert [n for n, _ in st.shapes] == ["S6"]


# ------------------------------------------------------------------------------ peak


def test_a_peak_below_fewer_threads_is_pointed_out(monkeypatch, capsys):
    # a busy machine measured the 2-thread matmul at 1.7 GFLOP/s and the 1-thread one at 152:
    # %peak of the 2-thread rows read 1,500-8,500 % without a word
    def peak(threads, n, budget, min_repeats):
        g = 150.0 if threads == 1 else 1.7
        return {"threads": threads, "n": n, "ms": 1.0, "gflops": g, "median_ms": 1.0,
                "median_gflops": g, "repeats": 3}  # fmt: skip

    monkeypatch.setattr(bench, "measure_peak", peak)
    assert cli.main(["bench", *TINY, "--threads", "1,2", "--modes", "forward"]) == 0
    out = capsys.readouterr().out
    assert "note: the matmul ran slower on 2 threads than on fewer threads" in out
    assert bench._slow_peaks([{"threads": 1, "gflops": 9.0}, {"threads": 2, "gflops": 17.0}]) == []


# ------------------------------------------------------------------------------ plot


def test_plot_labels_name_the_dimensions_of_custom_shapes():
    cell = {"shape": "custom", "T": 3, "B": 2, "I": 5, "H": 7}
    assert bench._shape_label(cell) == "3,2,5,7"  # two --shape cells were both "custom"
    assert bench._shape_label({**cell, "shape": "S6"}) == "S6"


# ------------------------------------------------------------------------------ peers


@pytest.mark.parametrize("peer, T", [("torch.nn.LSTM", 3), ("torch.nn.LSTMCell", 1)])
def test_torch_training_is_checked_for_dx_dh0_dc0(monkeypatch, peer, T):
    pytest.importorskip("torch")
    p = _peers.make_problem(T, 2, 5, 7, seed=4)
    step = _peers.make(peer, p, "training", 1)  # passes: the same gradients as lstm_fast
    step()
    # a training step whose input does not require its gradient skips dx's GEMM: less work
    # than lstm_fast's backward (which returns dx), so it must not be timed against it
    real = _peers._torch_tensors
    monkeypatch.setattr(_peers, "_torch_tensors", lambda torch, p, training: real(torch, p, False))
    with pytest.raises(_peers.Mismatch, match=f"{peer} training computes no dx"):
        _peers.make(peer, p, "training", 1)


def test_torch_training_gradient_mismatch_is_caught(monkeypatch):
    pytest.importorskip("torch")
    p = _peers.make_problem(3, 2, 5, 7, seed=5)
    dx, dh0, dc0 = p.expected_grads()
    p._expected["bwd"] = (dx, dh0 + 1e-2, dc0)  # as if torch's dh0 were off
    with pytest.raises(_peers.Mismatch, match="torch.nn.LSTM dh0 differs"):
        _peers.make("torch.nn.LSTM", p, "training", 1)


# ------------------------------------------------------------------------------ benchmarks/


def test_benchmark_threads_above_the_limit_are_a_usage_error(tmp_path):
    root = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    env = dict(os.environ, LSTM_FAST_BENCH_THREADS="1,100000", LSTM_FAST_BENCH_SHAPES="S4")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"]
        + [os.path.join(root, "test_lstm_bench.py")],
        env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    limit = _core.max_threads()
    assert f"LSTM_FAST_BENCH_THREADS='1,100000': expected thread counts in [1, {limit}]" in text


class _ClosedAfter(io.StringIO):
    """A stdout whose reader leaves at the first write containing ``word`` ('' : at once)."""

    def __init__(self, word: str):
        super().__init__()
        self.word = word

    def write(self, s):
        if self.word in s:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(s)


def test_a_closed_stdout_at_the_end_is_no_failed_json_or_plot(tmp_path, monkeypatch, capsys):
    # `... --json r.json --plot r.png | head`: the "wrote" line found stdout closed; it was
    # inside the --json try (reported as "cannot write r.json" though r.json was whole) and
    # the plot's, which was not written at all when the JSON's line raised first
    pytest.importorskip("matplotlib")
    path, png = tmp_path / "r.json", tmp_path / "r.png"
    monkeypatch.setattr(sys, "stdout", _ClosedAfter("wrote"))
    args = _args(
        *TINY, "--threads", "1", "--modes", "forward", "--json", str(path), "--plot", str(png)
    )
    with pytest.raises(BrokenPipeError):
        bench.run(args)
    assert json.loads(path.read_text())["interrupted"] is False
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "cannot write" not in capsys.readouterr().err


def test_json_dash_to_a_closed_stdout_is_quiet_and_still_plots(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "r.png"
    monkeypatch.setattr(sys, "stdout", _ClosedAfter(""))  # only the JSON goes to stdout
    args = _args(*TINY, "--threads", "1", "--modes", "forward", "--json", "-", "--plot", str(png))
    assert bench.run(args) == 1  # (cli.main: exit 1, as for any reader that left)
    assert png.read_bytes()[:4] == b"\x89PNG"
    err = capsys.readouterr().err
    assert "cannot write" not in err and "GFLOP/s" in err


def test_json_and_plot_to_one_file_is_an_error(tmp_path, capsys):
    # the plot was written over the JSON after the run (`--json r.png --plot r`)
    path = str(tmp_path / "r.png")
    assert cli.main(["bench", *TINY, "--json", path, "--plot", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"--plot: expected a file other than --json's, got {path!r} for both" in err
    assert not os.path.exists(path)


def test_cold_start_child_keeps_the_standard_library_first(tmp_path):
    # an installed lstm_fast lives in site-packages: the child ran with it as cwd and first on
    # PYTHONPATH, before the standard library, so a backport there named like a stdlib module
    # (enum34's enum, pathlib, ...) shadowed it and every cold start failed
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "lstm_fast").symlink_to(os.path.dirname(os.path.abspath(lstm_fast.__file__)))
    (site / "statistics.py").write_text("raise ImportError('a backport shadowed statistics')\n")
    code = (
        "import json, statistics, sys\n"  # (the parent's own stdlib comes first)
        f"sys.path.insert(0, {str(site)!r})\n"
        "from lstm_fast import bench\n"
        f"assert bench.__file__.startswith({str(site)!r}), bench.__file__\n"
        "print(json.dumps(bench.cold_start(2, 1, 3, 4, 'forward', 1, 1)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["status"] == "ok", res
