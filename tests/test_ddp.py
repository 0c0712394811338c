"""Data-parallel training with lstm_fast.torch under DistributedDataParallel (gloo, 2 processes).

Two processes on localhost each take half of a batch; after one step their (all-reduced)
gradients and updated weights must equal a single-process run over the whole batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
import torch.multiprocessing as mp  # noqa: E402

import lstm_fast  # noqa: E402
import lstm_fast.torch as lft  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB, T, B, LR = 11, 6, 4, 0.5  # B = the combined batch; each of 2 processes gets B / 2
TIMEOUT = 120.0


class CharModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.rnn = torch.nn.LSTM(8, 10, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(20, VOCAB)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


def _setup():
    torch.manual_seed(0)
    model = lft.replace_rnns(CharModel())
    tokens = torch.randint(0, VOCAB, (B, T + 1))
    return model, tokens[:, :-1], tokens[:, 1:]


def _step(model, x, y):
    """One SGD step; returns (gradients, weights after the step) as name -> tensor."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    opt.zero_grad()
    logits = model(x)
    torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    return grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    lstm_fast.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        model, x, y = _setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        shard = slice(rank * B // world, (rank + 1) * B // world)
        grads, weights = _step(ddp, x[shard], y[shard])
        strip = {n: n.removeprefix("module.") for n in grads}
        grads = {strip[n]: g for n, g in grads.items()}
        weights = {strip[n]: w for n, w in weights.items()}
        # (written whole or not at all: a rank may be killed when another aborts)
        part = os.path.join(out_dir, f"rank{rank}.part")
        torch.save((grads, weights), part)
        os.replace(part, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_workers(world: int, out_dir: Path) -> None:
    """Runs _worker on `world` processes until they finish. A rank aborted by gloo's teardown
    (SIGABRT, "terminate called without an active exception": see _teardown_abort) after every
    rank saved its result counts as finished, as the results are then complete (and checked by
    the caller); an abort before that runs the workers again, up to three runs in all. (It
    struck this test once, 2026-12-06, in a CI run whose previous run had passed, with rank 0
    aborted.)"""
    for attempt in range(3):
        for f in out_dir.glob("rank*.pt"):
            f.unlink()
        ctx = mp.start_processes(
            _worker,
            args=(world, _free_port(), str(out_dir)),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + TIMEOUT
        try:
            while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    pytest.fail(f"DDP workers did not finish within {TIMEOUT:.0f} s")
            return
        except mp.ProcessExitedException as e:
            saved = all((out_dir / f"rank{r}.pt").exists() for r in range(world))
            if e.signal_name != "SIGABRT" or attempt == 2:
                raise
            if saved:
                return
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()


def test_two_processes_match_one_process_over_the_combined_batch(tmp_path):
    world = 2
    _spawn_workers(world, tmp_path)

    torch.set_num_threads(1)
    model, x, y = _setup()
    ref_grads, ref_weights = _step(model, x, y)
    for rank in range(world):
        grads, weights = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(grads) == set(ref_grads)
        for n in ref_grads:
            torch.testing.assert_close(grads[n], ref_grads[n], rtol=0, atol=1e-6, msg=n)
            torch.testing.assert_close(weights[n], ref_weights[n], rtol=0, atol=1e-6, msg=n)


def _teardown_abort(res) -> bool:
    """A rank that finished its work and was then aborted while the interpreter shut down:
    gloo's threads are still being torn down ("terminate called without an active exception",
    SIGABRT). The example shuts down in order (barrier, reducer released, group destroyed),
    which made it rare; it still hit 3 of 33 runs here (2026-12-05, torch 2.13.0), against 0
    of 16 with the code of the session before: too few runs to tell whether that code was
    spared, and nothing of lstm_fast's runs at that point (its calls are done; it starts no
    C++ threads of its own). Under load it struck twice in a row in one CI run (2026-12-05,
    another job building beside it); in a later stress run, 1 of 8 runs with lstm_fast's LSTM
    and 0 of 8 with torch's under two busy loops, then 0 of 25."""
    return (
        res.returncode != 0
        and "step 2/2" in res.stdout
        and "terminate called without an active exception" in res.stderr
    )


def test_example_script_under_torchrun(tmp_path):
    """examples/ddp_train.py runs under torchrun with 2 processes (2 steps, tiny model). A run
    whose only failure is the abort at interpreter shutdown (_teardown_abort) is run again, up
    to three runs in all; the last must succeed."""
    res = _run_example()
    for _ in range(2):
        if not _teardown_abort(res):
            break
        res = _run_example()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "step 2/2" in res.stdout, res.stdout


def _run_example():
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
        str(ROOT / "examples" / "ddp_train.py"),
        "--steps",
        "2",
        "--seq-len",
        "8",
        "--batch-size",
        "4",
        "--hidden",
        "16",
        "--threads",
        "1",
    ]
    # conftest.py puts the imported lstm_fast first on PYTHONPATH for child processes.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
