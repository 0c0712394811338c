"""lstm_fast.torch: parity with torch.nn.LSTM (outputs 1e-5, gradients 1e-4), replace_rnns /
restore_rnns, PackedSequence, inference modes, torch.compile, errors, and the optional import."""

from __future__ import annotations

import copy
import io
import itertools
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import lstm_fast.ops  # noqa: E402

OUT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)


def _pair(seed=0, **kw):
    """A torch.nn.LSTM and an lstm_fast copy with the same weights."""
    torch.manual_seed(seed)
    ref = nn.LSTM(**kw)
    fast = lft.LSTM(**kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _close(a, b, tol, what):
    assert a.shape == b.shape, what
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


def _compare_grads(ref, fast, pairs):
    for (n, p), (_, q) in zip(ref.named_parameters(), fast.named_parameters()):
        _close(p.grad, q.grad, GRAD_TOL, n)
    for name, a, b in pairs:
        _close(a.grad, b.grad, GRAD_TOL, name)


def test_import_lstm_fast_does_not_import_torch():
    code = "import sys, lstm_fast, lstm_fast.ops, lstm_fast.nn; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


OPTIONS = [
    dict(num_layers=L, bidirectional=bi, bias=bias, batch_first=bf)
    for L, bi, bias, bf in itertools.product((1, 2), (False, True), (True, False), (False, True))
    if bias or L == 1  # bias=False once per direction setting is enough
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_parity_with_torch(opts, with_hx):
    T, B, I, H = 7, 3, 5, 6
    ref, fast = _pair(input_size=I, hidden_size=H, **opts)
    D = 2 if opts["bidirectional"] else 1
    L = opts["num_layers"]
    x = torch.randn((B, T, I) if opts["batch_first"] else (T, B, I))
    xa, xb = _leaf(x), _leaf(x)
    args_a, args_b, extra = (xa,), (xb,), []
    if with_hx:
        h0, c0 = torch.randn(L * D, B, H), torch.randn(L * D, B, H)
        ha, ca, hb, cb = _leaf(h0), _leaf(c0), _leaf(h0), _leaf(c0)
        args_a, args_b = (xa, (ha, ca)), (xb, (hb, cb))
        extra = [("h0", ha, hb), ("c0", ca, cb)]
    ya, (hna, cna) = ref(*args_a)
    yb, (hnb, cnb) = fast(*args_b)
    assert yb.stride() == ya.stride()  # batch_first output is a transposed view, like torch's
    for what, a, b in (("output", ya, yb), ("h_n", hna, hnb), ("c_n", cna, cnb)):
        _close(a, b, OUT_TOL, what)
    gy, gh, gc = torch.randn_like(ya), torch.randn_like(hna), torch.randn_like(cna)
    ((ya * gy).sum() + (hna * gh).sum() + (cna * gc).sum()).backward()
    ((yb * gy).sum() + (hnb * gh).sum() + (cnb * gc).sum()).backward()
    _compare_grads(ref, fast, [("input", xa, xb), *extra])


PROJ_OPTIONS = [
    dict(num_layers=L, bidirectional=bi, bias=bias, batch_first=bf)
    for L, bi, bias, bf in [
        (1, False, True, False),
        (2, False, True, True),
        (1, True, False, False),
        (2, True, True, False),
        (3, True, True, True),
    ]
]


@pytest.mark.parametrize(
    "opts", PROJ_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_projection_parity_with_torch(opts, packed):
    """proj_size: weight_hr_l{k}, h of size P, c of size H, every option, hx and lengths."""
    T, B, I, H, P = 6, 4, 5, 7, 3
    ref, fast = _pair(input_size=I, hidden_size=H, proj_size=P, **opts)
    D = 2 if opts["bidirectional"] else 1
    L = opts["num_layers"]
    bf = opts["batch_first"]
    x = torch.randn((B, T, I) if bf else (T, B, I))
    h0, c0 = torch.randn(L * D, B, P), torch.randn(L * D, B, H)
    lengths = torch.tensor([6, 2, 5, 1])
    outs, leaves = [], []
    for m in (ref, fast):
        xl, hl, cl = _leaf(x), _leaf(h0), _leaf(c0)
        inp = (
            pack_padded_sequence(xl, lengths, batch_first=bf, enforce_sorted=False)
            if packed
            else xl
        )
        y, (hn, cn) = m(inp, (hl, cl))
        if packed:
            y = pad_packed_sequence(y, batch_first=bf)[0]
        assert hn.shape == (L * D, B, P) and cn.shape == (L * D, B, H)
        outs.append((y, hn, cn))
        leaves.append((xl, hl, cl))
    (ya, ha, ca), (yb, hb, cb) = outs
    for what, a, b in (("output", ya, yb), ("h_n", ha, hb), ("c_n", ca, cb)):
        _close(a, b, OUT_TOL, what)
    gy, gh, gc = torch.randn_like(ya), torch.randn_like(ha), torch.randn_like(ca)
    ((ya * gy).sum() + (ha * gh).sum() + (ca * gc).sum()).backward()
    ((yb * gy).sum() + (hb * gh).sum() + (cb * gc).sum()).backward()
    (xa, ha0, ca0), (xb, hb0, cb0) = leaves
    _compare_grads(ref, fast, [("input", xa, xb), ("h0", ha0, hb0), ("c0", ca0, cb0)])


def test_unbatched_input():
    ref, fast = _pair(input_size=4, hidden_size=5, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4)
    h0, c0 = torch.randn(4, 5), torch.randn(4, 5)
    xa, xb = _leaf(x), _leaf(x)
    ya, (ha, ca) = ref(xa, (h0, c0))
    yb, (hb, cb) = fast(xb, (h0, c0))
    assert yb.shape == (6, 10) and hb.shape == (4, 5)
    for a, b in ((ya, yb), (ha, hb), (ca, cb)):
        _close(a, b, OUT_TOL, "unbatched")
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    _compare_grads(ref, fast, [("input", xa, xb)])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence(bidirectional, enforce_sorted):
    T, B, I, H, L = 6, 4, 3, 5, 2
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([2, 6, 1, 4])
    ref, fast = _pair(input_size=I, hidden_size=H, num_layers=L, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I)
    h0, c0 = torch.randn(L * D, B, H), torch.randn(L * D, B, H)
    res, leaves = [], []
    for m in (ref, fast):
        xl, hl, cl = _leaf(x), _leaf(h0), _leaf(c0)
        packed = pack_padded_sequence(xl, lengths, enforce_sorted=enforce_sorted)
        out, (hn, cn) = m(packed, (hl, cl))
        assert isinstance(out, nn.utils.rnn.PackedSequence)
        torch.testing.assert_close(out.batch_sizes, packed.batch_sizes)
        y, lens = pad_packed_sequence(out)
        res.append((y, hn, cn))
        leaves.append((xl, hl, cl))
    (ya, ha, ca), (yb, hb, cb) = res
    for what, a, b in (("output", ya, yb), ("h_n", ha, hb), ("c_n", ca, cb)):
        _close(a, b, OUT_TOL, what)
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(yb[n:, b] == 0)  # outputs past a sequence's length are zero
    gy, gh = torch.randn_like(ya), torch.randn_like(ha)
    ((ya * gy).sum() + (ha * gh).sum() + ca.sum()).backward()
    ((yb * gy).sum() + (hb * gh).sum() + cb.sum()).backward()
    (xa, ha0, ca0), (xb, hb0, cb0) = leaves
    _compare_grads(ref, fast, [("input", xa, xb), ("h0", ha0, hb0), ("c0", ca0, cb0)])


def _graph_nodes(t):
    """Names of the autograd nodes t's graph holds (each node once)."""
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_packed_input_is_unpacked_in_one_differentiable_scatter(cls):
    """A PackedSequence is padded for the kernels by one scatter, whatever T: torch's
    pad_packed_sequence copies into a slice of its output per step, and its backward then
    copied the whole gradient once per step (a T = 20 RNN training step took 4x torch's time).
    Rows of data past the counts' sum are not read, as torch's modules."""
    torch.manual_seed(3)
    ref, fast = getattr(nn, cls)(3, 5), getattr(lft, cls)(3, 5)
    fast.load_state_dict(ref.state_dict())
    lengths = torch.tensor([30, 17, 17, 4, 1])
    x = torch.randn(30, 5, 3)
    packed = pack_padded_sequence(x, lengths)
    extra = torch.randn(packed.data.shape[0] + 2, 3)
    extra[: packed.data.shape[0]] = packed.data
    grads = []
    for m in (ref, fast):
        data = extra.clone().requires_grad_()
        out = m(nn.utils.rnn.PackedSequence(data, packed.batch_sizes))[0]
        if m is fast:
            nodes = _graph_nodes(out.data)
            assert "CopySlices" not in nodes, nodes
            assert len(nodes) < 20, nodes  # not one node per step
        out.data.pow(2).sum().backward()
        grads.append(data.grad)
    torch.testing.assert_close(grads[1], grads[0], **GRAD_TOL)
    assert not grads[1][-2:].any()


class _Model(nn.Module):
    """embedding -> 2-layer bidirectional LSTM -> linear head (the acceptance model)."""

    def __init__(self, vocab=17, emb=8, hidden=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, vocab)

    def forward(self, tokens):
        y, _ = self.rnn(self.embed(tokens))
        return self.head(y)


def test_replace_rnns_model_parity_and_state_dict():
    torch.manual_seed(1)
    ref = _Model()
    model = copy.deepcopy(ref)
    before = {n: p for n, p in model.named_parameters()}
    assert lft.replace_rnns(model) is model
    assert type(model.rnn) is lft.LSTM and isinstance(model.rnn, nn.LSTM)
    assert all(p is before[n] for n, p in model.named_parameters())  # same nn.Parameters
    sd_ref, sd = ref.state_dict(), model.state_dict()
    assert list(sd) == list(sd_ref)
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)

    tokens = torch.randint(0, 17, (4, 9))
    target = torch.randint(0, 17, (4, 9))
    losses = []
    for m in (ref, model):
        logits = m(tokens)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 17), target.reshape(-1))
        loss.backward()
        losses.append(loss)
    _close(losses[0], losses[1], OUT_TOL, "loss")
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        _close(p.grad, q.grad, GRAD_TOL, n)

    # torch.save / load of the state dict: loads into torch's own model as is.
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    plain = _Model()
    plain.load_state_dict(torch.load(buf))
    assert all(torch.equal(plain.state_dict()[k], sd[k]) for k in sd)

    assert lft.restore_rnns(model) is model
    assert type(model.rnn) is nn.LSTM
    assert all(p is before[n] for n, p in model.named_parameters())


def test_replace_rnns_optimizer_built_before_keeps_training():
    torch.manual_seed(2)
    ref = _Model()
    model = copy.deepcopy(ref)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, model)]
    lft.replace_rnns(model)
    tokens = torch.randint(0, 17, (3, 5))
    for m, opt in zip((ref, model), opts):
        for _ in range(2):
            opt.zero_grad()
            m(tokens).square().mean().backward()
            opt.step()
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        _close(p, q, GRAD_TOL, n)


def test_replace_rnns_skips_subclasses_keeps_projection():
    class MyLSTM(nn.LSTM):
        pass

    seq = nn.Sequential(nn.LSTM(3, 4), MyLSTM(3, 4), nn.LSTM(3, 4, proj_size=2))
    lft.replace_rnns(seq)
    assert [type(m) for m in seq] == [lft.LSTM, MyLSTM, lft.LSTM]
    root = lft.replace_rnns(nn.LSTM(3, 4))
    assert type(root) is lft.LSTM


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode", "requires_grad_false"])
def test_inference_path_has_no_cache(ctx, monkeypatch):
    ref, fast = _pair(input_size=4, hidden_size=5, num_layers=2, bidirectional=True)
    seen = []
    real = lstm_fast.ops.lstm_forward

    def spy(*args, training=False, **kw):
        seen.append(training)
        return real(*args, training=training, **kw)

    monkeypatch.setattr(lstm_fast.ops, "lstm_forward", spy)
    x = torch.randn(5, 2, 4)
    if ctx == "requires_grad_false":
        for m in (ref, fast):
            m.requires_grad_(False)
        ya, yb = ref(x)[0], fast(x)[0]
    else:
        with getattr(torch, ctx)():
            ya, yb = ref(x)[0], fast(x)[0]
    assert seen == [False] * 4
    assert not yb.requires_grad
    _close(ya, yb, OUT_TOL, "output")


def test_eval_mode_still_differentiable_and_dropout():
    ref, fast = _pair(input_size=4, hidden_size=5, num_layers=3, dropout=0.5)
    x = torch.randn(6, 2, 4)
    ref.eval()
    fast.eval()
    _close(ref(x)[0], fast(x)[0], OUT_TOL, "eval output (no dropout)")
    xb = _leaf(x)
    fast(xb)[0].sum().backward()
    assert xb.grad is not None
    fast.train()
    torch.manual_seed(5)
    y1 = fast(x)[0]
    torch.manual_seed(5)
    y2 = fast(x)[0]
    torch.testing.assert_close(y1, y2)  # dropout draws from torch's RNG
    assert not torch.allclose(y1, fast.eval()(x)[0])


def test_in_place_change_of_output_before_backward_raises():
    _, fast = _pair(input_size=3, hidden_size=4)
    y, _ = fast(_leaf(torch.randn(4, 2, 3)))
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_errors():
    _, fast = _pair(input_size=3, hidden_size=4)
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match="dtype.*does not match|must have the type"):
        fast(x.double())  # torch's own rule: input dtype == parameter dtype; never converted
    with pytest.raises(RuntimeError, match="on meta.*CPU only"):
        fast(torch.randn(4, 2, 3, device="meta"))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 4\)"):
        fast(x, (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        fast(torch.randn(4, 2, 5))


def test_torch_compile_falls_back():
    torch.manual_seed(3)
    ref = _Model()
    model = lft.replace_rnns(copy.deepcopy(ref))
    compiled = torch.compile(model, backend="eager")
    tokens = torch.randint(0, 17, (2, 5))
    out = compiled(tokens)
    _close(ref(tokens), out, OUT_TOL, "compiled output")
    out.sum().backward()
    assert model.rnn.weight_hh_l1_reverse.grad is not None


GRU_RNN = [
    ("GRU", dict()),
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu")),
]


@pytest.mark.parametrize("kind,extra", GRU_RNN, ids=["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gru_rnn_parity(kind, extra, bidirectional, packed):
    T, B, I, H, L = 6, 3, 4, 5, 2
    torch.manual_seed(4)
    kw = dict(input_size=I, hidden_size=H, num_layers=L, bidirectional=bidirectional, **extra)
    ref = getattr(nn, kind)(**kw)
    fast = lft.replace_rnns(copy.deepcopy(ref))
    assert type(fast) is getattr(lft, kind)
    D = 2 if bidirectional else 1
    x, h0 = torch.randn(T, B, I), torch.randn(L * D, B, H)
    lengths = torch.tensor([3, 6, 2])
    res, leaves = [], []
    for m in (ref, fast):
        xl, hl = _leaf(x), _leaf(h0)
        inp = pack_padded_sequence(xl, lengths, enforce_sorted=False) if packed else xl
        y, hn = m(inp, hl)
        y = pad_packed_sequence(y)[0] if packed else y
        res.append((y, hn))
        leaves.append((xl, hl))
    (ya, ha), (yb, hb) = res
    _close(ya, yb, OUT_TOL, "output")
    _close(ha, hb, OUT_TOL, "h_n")
    gy, gh = torch.randn_like(ya), torch.randn_like(ha)
    ((ya * gy).sum() + (ha * gh).sum()).backward()
    ((yb * gy).sum() + (hb * gh).sum()).backward()
    (xa, ha0), (xb, hb0) = leaves
    _compare_grads(ref, fast, [("input", xa, xb), ("h0", ha0, hb0)])
    assert type(lft.restore_rnns(fast)) is getattr(nn, kind)


# -- cells -----------------------------------------------------------------------------------------
CELLS = {
    "lstm": (nn.LSTMCell, lft.LSTMCell, dict()),
    "gru": (nn.GRUCell, lft.GRUCell, dict()),
    "rnn_tanh": (nn.RNNCell, lft.RNNCell, dict(nonlinearity="tanh")),
    "rnn_relu": (nn.RNNCell, lft.RNNCell, dict(nonlinearity="relu")),
}
CELL_FORWARD = {
    "lstm": "lstm_forward",
    "gru": "gru_forward",
    "rnn_tanh": "rnn_forward",
    "rnn_relu": "rnn_forward",
}


def _cell_pair(kind, seed=0, **kw):
    """A torch cell and an lstm_fast cell built from the same seed (torch's own initialisation)."""
    torch_cls, fast_cls, extra = CELLS[kind]
    torch.manual_seed(seed)
    ref = torch_cls(**kw, **extra)
    torch.manual_seed(seed)
    fast = fast_cls(**kw, **extra)
    return ref, fast


def _close_scaled(a, b, what):
    """Gradients: rtol 1e-4, atol 1e-4 relative to the reference's scale (its largest entry)."""
    assert a.shape == b.shape, what
    atol = 1e-4 * max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=lambda m: f"{what}: {m}")


def _unroll(cell, xs, hx, has_cell):
    """The real use: a Python loop over steps, feeding each step's state to the next.
    xs (B, T, I) batch-first (so xs[:, t] is a non-contiguous slice) or (T, I) unbatched.
    Returns the list of every step's outputs (h_t, or (h_t, c_t))."""
    T = xs.shape[-2]
    outs = []
    state = hx
    for t in range(T):
        x_t = xs[:, t] if xs.dim() == 3 else xs[t]
        state = cell(x_t, state)
        outs.append(state)
    return outs


def _loss(outs, has_cell, grads):
    """Sum of every step's h_t (and the last c_t) weighted by fixed random upstream gradients."""
    hs = [o[0] for o in outs] if has_cell else outs
    loss = sum((h * g).sum() for h, g in zip(hs, grads[0]))
    if has_cell:
        loss = loss + (outs[-1][1] * grads[1]).sum()
    return loss


@pytest.mark.parametrize("batch", [1, 3, None], ids=["B1", "B3", "unbatched"])
@pytest.mark.parametrize("H", [1, 7, 17, 33])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_parity_unrolled(kind, H, batch, isa):
    T, I = 4, 5
    ref, fast = _cell_pair(kind, input_size=I, hidden_size=H)
    has_cell = kind == "lstm"
    lead = () if batch is None else (batch,)
    xs = torch.randn(*lead, T, I)
    h0 = [torch.randn(*lead, H) for _ in range(2 if has_cell else 1)]
    gh = [torch.randn(*lead, H) for _ in range(T)]
    gc = torch.randn(*lead, H)
    leaves, results = [], []
    for m in (ref, fast):
        xl = _leaf(xs)
        hl = [_leaf(h) for h in h0]
        outs = _unroll(m, xl, tuple(hl) if has_cell else hl[0], has_cell)
        _loss(outs, has_cell, (gh, gc)).backward()
        leaves.append((xl, hl))
        results.append(outs)
    for t, (a, b) in enumerate(zip(*results)):
        for k, (u, v) in enumerate(zip(a, b) if has_cell else [(a, b)]):
            _close(u, v, OUT_TOL, f"step {t} output {k}")
    for (n, p), (_, q) in zip(ref.named_parameters(), fast.named_parameters()):
        _close_scaled(q.grad, p.grad, n)
    (xa, ha), (xb, hb) = leaves
    _close_scaled(xb.grad, xa.grad, "input")
    for k, (a, b) in enumerate(zip(ha, hb)):
        _close_scaled(b.grad, a.grad, f"hx[{k}]")


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_no_bias_no_hx_and_partial_grads(kind):
    """bias=False, hx omitted (zeros) on the first step; then only the input needs a gradient
    (frozen weights), then only the state."""
    T, B, I, H = 3, 2, 4, 6
    ref, fast = _cell_pair(kind, input_size=I, hidden_size=H, bias=False)
    assert fast.bias_ih is None and "bias_ih" not in dict(fast.named_parameters())
    has_cell = kind == "lstm"
    xs = torch.randn(B, T, I)
    gh, gc = [torch.randn(B, H) for _ in range(T)], torch.randn(B, H)
    xa, xb = _leaf(xs), _leaf(xs)
    oa, ob = _unroll(ref, xa, None, has_cell), _unroll(fast, xb, None, has_cell)
    _loss(oa, has_cell, (gh, gc)).backward()
    _loss(ob, has_cell, (gh, gc)).backward()
    for (n, p), (_, q) in zip(ref.named_parameters(), fast.named_parameters()):
        _close_scaled(q.grad, p.grad, n)
    _close_scaled(xb.grad, xa.grad, "input")

    for m in (ref, fast):
        m.requires_grad_(False)
    xa, xb = _leaf(xs[:, 0]), _leaf(xs[:, 0])
    ya, yb = ref(xa), fast(xb)
    ya, yb = (ya[0], yb[0]) if has_cell else (ya, yb)
    (ya * gh[0]).sum().backward()
    (yb * gh[0]).sum().backward()
    _close_scaled(xb.grad, xa.grad, "input (frozen weights)")

    h = torch.randn(B, H)
    ha, hb = _leaf(h), _leaf(h)
    state_a = (ha, torch.zeros(B, H)) if has_cell else ha
    state_b = (hb, torch.zeros(B, H)) if has_cell else hb
    ya, yb = ref(xs[:, 1], state_a), fast(xs[:, 1], state_b)
    ya, yb = (ya[0], yb[0]) if has_cell else (ya, yb)
    (ya * gh[1]).sum().backward()
    (yb * gh[1]).sum().backward()
    _close_scaled(hb.grad, ha.grad, "hx (input and weights without grad)")


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_is_torch_cell_constructor_init_state_dict(kind):
    import inspect

    torch_cls, fast_cls, extra = CELLS[kind]
    assert issubclass(fast_cls, torch_cls)
    assert inspect.signature(fast_cls) == inspect.signature(torch_cls)
    ref, fast = _cell_pair(kind, seed=7, input_size=3, hidden_size=5)
    assert repr(fast) == repr(ref).replace(torch_cls.__name__, fast_cls.__name__, 1)
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert [n for n, _ in fast.named_parameters()] == names
    assert all(type(p) is nn.Parameter for p in fast.parameters())
    sd_ref, sd = ref.state_dict(), fast.state_dict()
    assert list(sd) == list(sd_ref)
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)  # torch's reset_parameters, same RNG
    gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    assert fast.weight_ih.shape == (gates * 5, 3) and fast.bias_hh.shape == (gates * 5,)
    # torch's keyword arguments, positionally too; device / dtype are torch's factory kwargs.
    args = (3, 5, False) + (("relu",) if kind.startswith("rnn") else ())
    m = fast_cls(*args, device="cpu", dtype=torch.float32)
    assert m.bias_ih is None and m.weight_hh.dtype == torch.float32
    assert fast_cls(3, 5, dtype=torch.float64).weight_ih.dtype == torch.float64
    plain = torch_cls(3, 5, **extra)
    plain.load_state_dict(fast.state_dict())
    fast.load_state_dict(ref.state_dict())


def test_replace_rnns_swaps_cells_keeping_weights():
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTMCell(4, 6)
            self.gru = nn.GRUCell(6, 5)
            self.rnn = nn.RNNCell(5, 3, nonlinearity="relu", bias=False)

        def forward(self, xs):  # (T, B, 4)
            h = c = g = r = None
            outs = []
            for x_t in xs:
                h, c = self.lstm(x_t, None if h is None else (h, c))
                g = self.gru(h, g)
                r = self.rnn(g, r)
                outs.append(r)
            return torch.stack(outs)

    torch.manual_seed(3)
    ref = Decoder()
    model = copy.deepcopy(ref)
    before = {n: p for n, p in model.named_parameters()}
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, model)]
    assert lft.replace_rnns(model) is model
    assert [type(m) for m in (model.lstm, model.gru, model.rnn)] == [
        lft.LSTMCell,
        lft.GRUCell,
        lft.RNNCell,
    ]
    assert all(p is before[n] for n, p in model.named_parameters())
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    xs = torch.randn(5, 2, 4)
    g = torch.randn(5, 2, 3)
    for m, opt in zip((ref, model), opts):
        for _ in range(2):
            opt.zero_grad()
            (m(xs) * g).sum().backward()
            opt.step()
    _close(ref(xs), model(xs), GRAD_TOL, "output after two SGD steps")
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        _close_scaled(q, p, n)
    assert lft.restore_rnns(model) is model
    assert [type(m) for m in (model.lstm, model.gru, model.rnn)] == [
        nn.LSTMCell,
        nn.GRUCell,
        nn.RNNCell,
    ]
    assert all(p is before[n] for n, p in model.named_parameters())
    # A user subclass of a torch cell keeps its own forward.
    sub = type("MyCell", (nn.GRUCell,), {})(3, 4)
    assert type(lft.replace_rnns(nn.Sequential(sub))[0]) is type(sub)


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode", "requires_grad_false"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_inference_path_has_no_cache(kind, ctx, monkeypatch):
    ref, fast = _cell_pair(kind, input_size=4, hidden_size=5)
    seen = []
    real = getattr(lstm_fast.ops, CELL_FORWARD[kind])

    def spy(*args, training=False, **kw):
        seen.append(training)
        return real(*args, training=training, **kw)

    monkeypatch.setattr(lstm_fast.ops, CELL_FORWARD[kind], spy)
    x = torch.randn(2, 4)
    hx = torch.randn(2, 5)
    hx = (hx, torch.randn(2, 5)) if kind == "lstm" else hx
    if ctx == "requires_grad_false":
        for m in (ref, fast):
            m.requires_grad_(False)
        ya, yb = ref(x, hx), fast(x, hx)
    else:
        with getattr(torch, ctx)():
            ya, yb = ref(x, hx), fast(x, hx)
    assert seen == [False]
    ya, yb = (ya, yb) if kind == "lstm" else ((ya,), (yb,))
    for a, b in zip(ya, yb):
        assert not b.requires_grad and b.grad_fn is None
        _close(a, b, OUT_TOL, "output")
    # With a gradient needed the training kernel runs (a cache is kept for backward).
    fast.requires_grad_(True)
    fast(x, hx)
    assert seen == [False, True]


def test_cell_in_place_change_of_state_before_backward_raises():
    fast = lft.LSTMCell(3, 4)
    h, c = torch.randn(2, 4), torch.randn(2, 4)
    h1, c1 = fast(_leaf(torch.randn(2, 3)), (h, c))
    h.add_(1)  # the kernel cache refers to h's memory
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (h1.sum() + c1.sum()).backward()
    # Outputs are the step's own memory, not the cache's: changing them in place is fine.
    x = _leaf(torch.randn(2, 3))
    h1, c1 = fast(x, (torch.randn(2, 4), torch.randn(2, 4)))
    ref = torch.autograd.grad(h1.sum(), x, retain_graph=True)[0]
    h1.detach().mul_(0)
    torch.testing.assert_close(torch.autograd.grad(c1.sum() * 0 + h1.sum(), x)[0], ref)
    # The sequence modules keep the initial state's memory too.
    _, seq = _pair(input_size=3, hidden_size=4)
    h0 = torch.randn(1, 2, 4)
    y, _ = seq(_leaf(torch.randn(5, 2, 3)), (h0, torch.randn(1, 2, 4)))
    h0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_cell_errors():
    cell = lft.LSTMCell(3, 4)
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(TypeError, match=r"LSTMCell: input: expected dtype torch.float32.*float64"):
        cell(x.double(), (h, c))
    with pytest.raises(TypeError, match=r"hx\[1\]: expected dtype torch.float32.*float64"):
        cell(x, (h, c.double()))
    with pytest.raises(RuntimeError, match="LSTMCell: input is on meta.*CPU only"):
        cell(torch.randn(2, 3, device="meta"))
    with pytest.raises(RuntimeError, match=r"hx\[0\] is on meta.*CPU only"):
        cell(x, (torch.randn(2, 4, device="meta"), c))
    with pytest.raises(RuntimeError, match=r"input: expected shape \(B, I=3\), got \(2, 5\)"):
        cell(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match=r"input: expected shape \(I=3,\), got \(5,\)"):
        cell(torch.randn(5))
    with pytest.raises(RuntimeError, match=r"hx\[0\]: expected shape \(B=2, H=4\), got \(3, 4\)"):
        cell(x, (torch.randn(3, 4), c))
    with pytest.raises(RuntimeError, match=r"hx\[1\]: expected shape \(B=2, H=4\), got \(2, 5\)"):
        cell(x, (h, torch.randn(2, 5)))
    with pytest.raises(RuntimeError, match=r"hx\[0\]: expected shape \(H=4,\) for unbatched"):
        cell(torch.randn(3), (h, c))
    with pytest.raises(ValueError, match="LSTMCell: Expected input to be 1D or 2D, got 3D"):
        cell(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"LSTMCell: Expected hx\[1\] to be 1D or 2D, got 3D"):
        cell(x, (h, c[None]))
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\).*got a Tensor"):
        cell(x, h)
    with pytest.raises(TypeError, match=r"hx\[1\]: expected a torch.Tensor, got NoneType"):
        cell(x, (h, None))
    with pytest.raises(TypeError, match=r"input: expected a torch.Tensor, got ndarray"):
        cell(x.numpy())
    gru = lft.GRUCell(3, 4)
    with pytest.raises(ValueError, match="GRUCell: Expected hidden to be 1D or 2D, got 3D"):
        gru(x, h[None])
    with pytest.raises(
        RuntimeError, match=r"GRUCell: hx: expected shape \(B=2, H=4\), got \(2, 5\)"
    ):
        gru(x, torch.randn(2, 5))
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: sigmoid"):
        lft.RNNCell(3, 4, nonlinearity="sigmoid")(x)


def test_cell_torch_compile_falls_back():
    torch.manual_seed(4)
    ref = nn.GRUCell(3, 4)
    fast = lft.replace_rnns(copy.deepcopy(ref))

    def run(cell, xs):
        h = None
        for x_t in xs:
            h = torch.tanh(cell(x_t, h)) * 2
        return h

    xs = torch.randn(3, 2, 3)
    out = torch.compile(run, backend="eager")(fast, xs)
    _close(run(ref, xs), out, OUT_TOL, "compiled output")
    out.sum().backward()
    assert fast.weight_hh.grad is not None


@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_empty_batch(kind):
    ref, fast = _cell_pair(kind, input_size=3, hidden_size=4)
    xa, xb = _leaf(torch.randn(0, 3)), _leaf(torch.randn(0, 3))
    ya, yb = ref(xa), fast(xb)
    ya, yb = (ya[0], yb[0]) if kind == "lstm" else (ya, yb)
    assert yb.shape == ya.shape == (0, 4)
    yb.sum().backward()
    assert xb.grad.shape == (0, 3) and torch.all(fast.weight_ih.grad == 0)
