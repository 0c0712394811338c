"""Review 18: lstm_fast in the conditions users' programs create — more threads asked for than
the process has CPUs (set_num_threads, OMP_NUM_THREADS), and Ctrl-C in the middle of an optimizer
step, a gradient clipping, a multi-layer backward or a bidirectional call's helper thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import lstm_fast


def run_child(code: str, timeout: float = 120) -> str:
    """Run `code` in a fresh interpreter (the default CPU bound, not the suite's) and return its
    stdout; the child's failure fails the test with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# ---- more threads than CPUs -------------------------------------------------------------------

_OVERSUBSCRIBED = """
import os, sys
import numpy as np
import lstm_fast

cpu = min(os.sched_getaffinity(0))
if sys.argv[1] == "before_import":
    os.sched_setaffinity(0, {cpu})

def tasks():
    return len(os.listdir("/proc/self/task"))

def work():
    rng = np.random.default_rng(0)
    out = []
    for kind in ("LSTM", "GRU", "RNN"):
        layer = getattr(lstm_fast, kind)(5, 24, num_layers=2, bidirectional=True, seed=0)
        x = rng.standard_normal((12, 6, 5), dtype=np.float32)
        y, _ = layer(x, lengths=[12, 3, 7, 12, 1, 5])
        dx, _ = layer.backward(np.cos(y))
        out += [y, dx] + [p.grad.copy() for p in layer.parameters()]
        y1, _ = layer(x)  # no lengths: the direct path
        out.append(y1)
    a = rng.standard_normal((400, 300), dtype=np.float32)
    out.append(lstm_fast.ops.gemm(a, a, trans_b=True))
    return out

if sys.argv[1] == "after_import":
    os.sched_setaffinity(0, {cpu})  # read again by set_num_threads
lstm_fast.set_num_threads(1)
want = work()
before = tasks()
lstm_fast.set_num_threads(64)
got = work()
info = lstm_fast.cpu_info()
same = all(np.array_equal(u, v) for u, v in zip(got, want))
cpus = info.get("cpus", -1)
print(info["num_threads"], cpus, lstm_fast.get_num_threads(), tasks() - before, int(same))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
@pytest.mark.parametrize("when", ["before_import", "after_import"])
def test_more_threads_than_cpus_run_on_the_cpus(when):
    """set_num_threads(64) in a process that may run on one CPU: the kernels run on one thread
    (a team of 64 on one core made every step's barrier wait for 64 threads to be scheduled:
    up to 60-90x the time of 2 threads on 2 CPUs), bitwise the results of one thread;
    get_num_threads() still reports what was asked, cpu_info() the CPUs."""
    out = run_child(_OVERSUBSCRIBED.replace("sys.argv[1]", repr(when)))
    num_threads, cpus, asked, new_tasks, same = map(int, out.split())
    assert same == 1
    assert new_tasks < 4, f"{new_tasks} new OS threads for a process on one CPU"
    assert (num_threads, cpus, asked) == (64, 1, 64)


def test_omp_num_threads_above_the_cpus_is_bounded_too():
    """OMP_NUM_THREADS=32 (the default thread count) is bounded the same way."""
    code = """
    import os
    import numpy as np
    import lstm_fast

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    lstm_fast.set_num_threads(lstm_fast.get_num_threads())  # reads the CPUs again
    n0 = len(os.listdir("/proc/self/task"))
    layer = lstm_fast.GRU(4, 40, bidirectional=True, seed=0)
    y, _ = layer(np.ones((30, 20, 4), np.float32))
    layer.backward(y)
    print(lstm_fast.get_num_threads(), len(os.listdir("/proc/self/task")) - n0)
    """
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity here")
    env_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "32"
    try:
        asked, new_tasks = map(int, run_child(code).split())
    finally:
        if env_before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = env_before
    assert asked == 32
    assert new_tasks < 4


def test_cpu_info_reports_the_cpus():
    info = lstm_fast.cpu_info()
    assert isinstance(info["cpus"], int) and info["cpus"] >= 1


# ---- Ctrl-C ---------------------------------------------------------------------------------

_INTERRUPTED_STEP = """
import os, signal
import numpy as np
import lstm_fast
from lstm_fast import optim

layer = lstm_fast.LSTM(3, 5, num_layers=2, seed=0)
rng = np.random.default_rng(0)
for p in layer.parameters():
    p.grad[...] = rng.standard_normal(p.grad.shape)
Opt = getattr(optim, KIND)


class Probe(Opt):
    def _update(self, i, p, zero_grad=False):
        done = super()._update(i, p, zero_grad)
        if i == 1:  # Ctrl-C after the second parameter's update
            os.kill(os.getpid(), signal.SIGINT)
        return done


def states(opt):
    return [p.data.copy() for p in opt.params]


kw = {"momentum": 0.9} if KIND == "SGD" else {}
ref = Opt(layer.parameters(), lr=0.1, **kw)
want = [p.data.copy() for p in layer.parameters()]
probe = Probe(layer.parameters(), lr=0.1, **kw)
before = [p.data.copy() for p in layer.parameters()]
try:
    probe.step(zero_grad=ZERO)
    print("no interrupt")
except KeyboardInterrupt:
    pass
after = [p.data.copy() for p in layer.parameters()]
changed = [int(not np.array_equal(a, b)) for a, b in zip(before, after)]
grads_zero = [int(not p.grad.any()) for p in layer.parameters()]
print(probe.step_count, *changed, "|", *grads_zero)
"""


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
@pytest.mark.parametrize("zero_grad", [False, True])
def test_ctrl_c_in_an_optimizer_step_waits_for_the_whole_step(kind, zero_grad):
    """SIGINT while an optimizer step is half done: the KeyboardInterrupt comes after every
    parameter is updated (it had come between two of them: two of eight updated, the step
    counted), and is still raised."""
    code = _INTERRUPTED_STEP.replace("KIND", repr(kind)).replace("ZERO", str(zero_grad))
    out = run_child(code)
    assert "no interrupt" not in out
    counts, zeros = out.split("|")
    step_count, *changed = map(int, counts.split())
    assert step_count == 1
    assert changed == [1] * len(changed)
    assert list(map(int, zeros.split())) == [int(zero_grad)] * len(changed)


def test_ctrl_c_while_clipping_scales_every_gradient():
    code = """
    import os, signal
    import numpy as np
    from lstm_fast.module import Parameter
    from lstm_fast.optim import clip_grad_norm

    class Grad(np.ndarray):  # sends SIGINT when the first gradient is scaled
        def __imul__(self, other):
            out = super().__imul__(other)
            os.kill(os.getpid(), signal.SIGINT)
            return out

    params = [Parameter(np.zeros(4, np.float32)) for _ in range(3)]
    for p in params:
        p.grad[...] = 10.0
    params[0].grad = params[0].grad.view(Grad)
    try:
        clip_grad_norm(params, 1.0)
        print("no interrupt")
    except KeyboardInterrupt:
        print(*[float(np.asarray(p.grad)[0]) < 10.0 for p in params])
    """
    assert run_child(code).split() == ["True", "True", "True"]


def test_ctrl_c_during_a_bidirectional_call_joins_the_reverse_direction():
    """The reverse direction of a bidirectional layer runs on a helper thread; a Ctrl-C while
    the caller waited for it raised at once, while the helper went on writing the reverse
    direction's gradients (into arrays the interrupt's handler may be saving or zeroing)."""
    code = """
    import signal, threading, time
    import lstm_fast
    from lstm_fast import rnn

    lstm_fast.set_num_threads(2)
    getattr(lstm_fast.ops._core, "_set_cpu_limit", int)(2)  # two threads whatever the machine
    main = threading.main_thread().ident
    finished = []

    def run(d):
        if d == 1:
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.3)
            finished.append(d)
        return d

    rnn.BIDIRECTIONAL_CONCURRENT = True
    try:
        print(rnn._directions(run, 2))
    except KeyboardInterrupt:
        print("interrupted", finished)
    print(rnn._directions(lambda d: d, 2))  # the helper still serves the next call
    """
    assert run_child(code).split("\n")[:2] == ["interrupted [1]", "[0, 1]"]


def test_ctrl_c_between_two_layers_of_a_backward_waits_for_all_of_them():
    """SIGINT after the top layer's backward of a 2-layer LSTM: the KeyboardInterrupt comes once
    every parameter's gradient is in (the bottom layer's had been left out)."""
    code = """
    import os, signal
    import numpy as np
    import lstm_fast
    from lstm_fast import rnn

    layer = lstm_fast.LSTM(3, 6, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = layer(x)
    layer.backward(np.cos(y))
    want = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()

    original = rnn._Direction.backward
    calls = []

    def interrupted(*args, **kwargs):
        out = original(*args, **kwargs)
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(1)
        return out

    rnn._Direction.backward = staticmethod(interrupted)
    y, _ = layer(x)
    try:
        layer.backward(np.cos(y))
        print("no interrupt")
    except KeyboardInterrupt:
        print(*[int(np.array_equal(p.grad, w)) for p, w in zip(layer.parameters(), want)])
    """
    assert run_child(code).split() == ["1"] * 8
