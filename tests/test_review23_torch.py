"""Review 23 of lstm_fast.torch: graph tools that see a model through torch's dispatcher or
its module tree rather than eager calls. ``torch.fx.symbolic_trace`` keeps torch's recurrent
modules as ``call_module`` leaves and traced into ours (a TypeError on the Proxy); ``make_fx``
recorded the kernels' outputs as constants (a graph that ignored its input); a model built
under ``FakeTensorMode`` raised ".numpy() is not supported for tensor subclasses" where
torch's modules give the output shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")
import torch.nn.utils.prune  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

OUT_TOL = dict(rtol=1e-5, atol=1e-5)

# (class name, constructor keywords): a layer per node kind (_Direction, _BothDirections,
# projection) and the cells.
CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=2, batch_first=True)),
    ("GRU", {}),
    ("RNN", dict(nonlinearity="relu")),
    ("LSTMCell", {}),
    ("GRUCell", {}),
    ("RNNCell", {}),
]


def _id(case):
    kind, kw = case
    return kind + "".join(f"-{k}={v}" for k, v in kw.items())


class _Model(nn.Module):
    """A recurrent module inside a model: a Linear before it, states passed between two calls
    (a layer's (h_n, c_n) fed back as hx; a cell unrolled over three steps)."""

    def __init__(self, kind, kw):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 3)
        self.rnn = getattr(nn, kind)(3, 4, **kw)
        self.cell = kind.endswith("Cell")
        self.has_c = kind.startswith("LSTM")

    def forward(self, x):
        x = self.lin(x)
        if self.cell:  # x (T, B, I): one step per row
            state = self.rnn(x[0])
            for t in (1, 2):
                state = self.rnn(x[t], state)
            return state
        y, state = self.rnn(x)
        return self.rnn(x, state)


def _input(seed):
    return torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(seed))


def _flat(out):
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


def _close(a, b, tol, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a.detach() - b.detach()).abs().max().item() if a.numel() else 0.0
    assert torch.allclose(a.detach(), b.detach(), **tol), f"{what}: max abs diff {err}"


def _models(case):
    kind, kw = case
    ref = _Model(kind, kw)
    fast = _Model(kind, kw)
    fast.load_state_dict(ref.state_dict())
    lft.replace_rnns(fast)
    assert type(fast.rnn) is getattr(lft, kind)
    return ref, fast


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fx_symbolic_trace_keeps_the_module_as_one_call_module_node(case):
    """torch.fx.symbolic_trace of a replaced model gives torch's graph (the recurrent module a
    call_module node, its outputs unpacked by getitem, states passed back as arguments), and
    the GraphModule runs lstm_fast's module with torch's results. It raised a TypeError on the
    Proxy (the weights or the input)."""
    ref, fast = _models(case)
    graphs = [torch.fx.symbolic_trace(m) for m in (ref, fast)]

    def nodes(gm):
        return [(n.op, str(n.target), len(n.args)) for n in gm.graph.nodes]

    assert nodes(graphs[0]) == nodes(graphs[1])
    assert type(graphs[1].rnn) is type(fast.rnn)
    x = _input(1)
    for a, b in zip(_flat(ref(x)), _flat(graphs[1](x))):
        _close(a, b, OUT_TOL, "GraphModule output")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_make_fx_records_torchs_ops_not_the_kernels_outputs(case):
    """make_fx (real tensors) records torch's computation: the graph, run on another input,
    gives torch's outputs for that input. It held the kernels' outputs for the tracing input as
    constants, so every input gave the same result."""
    ref, fast = _models(case)
    graph = make_fx(lambda t: tuple(_flat(fast(t))), tracing_mode="real")(_input(1))
    x = _input(2)
    for a, b in zip(_flat(ref(x)), graph(x)):
        _close(a, b, OUT_TOL, "make_fx graph on a new input")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_a_model_built_under_fake_tensor_mode_gives_torchs_shapes(case):
    """A model and input made under FakeTensorMode (shape / memory estimation) give torch's
    output shapes, as parameters on the meta device do; it raised ".numpy() is not supported
    for tensor subclasses"."""
    kind, kw = case
    shapes = []
    for swap in (False, True):
        with FakeTensorMode():
            m = _Model(kind, kw)
            if swap:
                lft.replace_rnns(m)
            out = m(torch.randn(3, 2, 3))
        shapes.append([tuple(t.shape) for t in _flat(out)])
    assert shapes[0] == shapes[1]


def test_eager_calls_still_run_the_kernels(monkeypatch):
    """Guard for the checks above: an eager call (no tracer, no fake mode) runs lstm_fast's
    kernels, and an fx-traced GraphModule calls them too."""
    import lstm_fast.ops

    calls = []
    real = lstm_fast.ops.lstm_forward
    monkeypatch.setattr(
        lstm_fast.ops, "lstm_forward", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    ref, fast = _models(("LSTM", {}))
    x = _input(1)
    fast(x)
    assert len(calls) == 2  # two calls of one layer
    torch.fx.symbolic_trace(fast)(x)
    assert len(calls) == 4


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_an_initial_state_of_the_wrong_rank_raises_torchs_message(kind, batched):
    """A state of the wrong rank raises torch's exact message: GRU and RNN said "but got (2-D)
    tensors" where torch says "but got 2-D tensor" (LSTM's "(2-D, 2-D) tensors" matched)."""
    x = torch.randn(5, 2, 3) if batched else torch.randn(5, 3)
    h = torch.zeros(1, 4) if batched else torch.zeros(1, 1, 4)
    hx = (h, h) if kind == "LSTM" else h
    messages = []
    for m in (getattr(nn, kind)(3, 4), getattr(lft, kind)(3, 4)):
        with pytest.raises(RuntimeError) as info:
            m(x, hx)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("kind", ["LSTM", "GRUCell"])
def test_fx_symbolic_trace_of_the_module_itself_raises_a_trace_error(kind):
    """Tracing the module itself (the root, whose forward FX traces into) raises a TraceError
    as torch's module does, saying to trace a model that holds it; it raised a TypeError about
    a weight being a Proxy."""
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(getattr(nn, kind)(3, 4))
    with pytest.raises(
        torch.fx.proxy.TraceError, match=f"lstm_fast.torch.{kind}: .*a model that holds the module"
    ):
        torch.fx.symbolic_trace(getattr(lft, kind)(3, 4))


@pytest.mark.parametrize("kind", ["GRU", "RNNCell"])
def test_fx_symbolic_trace_of_a_subclass_overriding_forward_raises(kind):
    """A user subclass whose forward changes the input before super().forward(): FX has traced
    that code when the module's forward is reached, so a call_module node would apply it twice
    (a GraphModule silently computing another function). It raises a TraceError, as with a
    subclass of torch's module."""

    def model(base):
        class Scaled(base):
            def forward(self, x, hx=None):
                return super().forward(x * 2, hx)

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = Scaled(3, 4)

            def forward(self, x):
                return self.rnn(x)

        return Model()

    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model(getattr(nn, kind)))
    with pytest.raises(torch.fx.proxy.TraceError, match="forward of Scaled"):
        torch.fx.symbolic_trace(model(getattr(lft, kind)))


@pytest.mark.parametrize("kind", ["GRUCell", "LSTMCell", "LSTM"])
def test_the_checks_add_no_graph_break_under_torch_compile(kind):
    """Guard for the checks above (fx Proxy, make_fx, FakeTensorMode), which run before the
    kernels on every call: while Dynamo traces the forward they are skipped, so the graph of
    an unrolled loop of steps is split only where the kernels' call is skipped (each check,
    traced, was one more graph break per step: "Failed to convert args/kwargs to proxy").
    Layers are traced into with ``allow_rnn``."""
    import torch._dynamo

    torch.manual_seed(0)
    fast = getattr(lft, kind)(3, 4)
    layer = not kind.endswith("Cell")

    def run(module, xs):
        state, total = None, 0.0
        for x_t in xs:
            out = module(torch.tanh(x_t[None] if layer else x_t), state)
            state = out[1] if layer else out
            total = total + torch.tanh(_flat(out)[0]).sum()
        return total

    with torch._dynamo.config.patch(allow_rnn=True):
        torch._dynamo.reset()
        found = torch._dynamo.explain(run)(fast, torch.randn(3, 2, 3))
    reasons = [str(b.reason).splitlines()[0] for b in found.break_reasons]
    assert reasons and all("skip" in r.lower() for r in reasons), reasons


@pytest.mark.parametrize("hook", ["forward", "pre", "prune"])
def test_fx_symbolic_trace_of_a_module_with_forward_hooks_raises(hook):
    """FX runs a non-leaf module's forward hooks and pre-hooks on the traced values, so with a
    call_module node the GraphModule applied them twice (torch's module, a leaf, runs none
    while traced): a silently different function. It raises a TraceError naming the module."""
    models = []
    for swap in (False, True):
        m = _Model("GRU", {})
        if swap:
            lft.replace_rnns(m)
        if hook == "forward":
            m.rnn.register_forward_hook(lambda mod, args, out: (out[0] * 2, out[1]))
        elif hook == "pre":
            m.rnn.register_forward_pre_hook(lambda mod, args: (args[0] + 1, *args[1:]))
        else:
            torch.manual_seed(1)
            torch.nn.utils.prune.random_unstructured(m.rnn, "weight_hh_l0", amount=0.5)
        models.append(m)
    x = _input(1)
    graph = torch.fx.symbolic_trace(models[0])
    for a, b in zip(_flat(graph(x)), _flat(models[0](x))):
        _close(a, b, OUT_TOL, "torch's module traced with hooks")
    with pytest.raises(torch.fx.proxy.TraceError, match=r"cannot record rnn \(GRU\) while it has"):
        torch.fx.symbolic_trace(models[1])
