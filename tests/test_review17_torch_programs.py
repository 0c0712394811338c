"""Review 17 of lstm_fast.torch: complete small PyTorch programs of the kinds tutorials and
projects write (seq2seq with attention, a char-RNN language model, a packed bidirectional
classifier, time-series regression with projections and frozen layers, autocast, saving and
loading, an inference server with hooks and re-initialisation, GRU/RNN variants), each run
twice from the same seed -- with torch's modules, then after ``replace_rnns`` -- comparing
losses, outputs and parameters after several optimizer steps. They guard the drop-in promise;
the regressions this review found have their own tests at the end."""

from __future__ import annotations

import copy
import io
import math
import threading

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
lft = pytest.importorskip("lstm_fast.torch")
from torch.nn.utils.rnn import (  # noqa: E402
    pack_padded_sequence,
    pad_packed_sequence,
)

OUT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)


def _close(a, b, tol, what):
    if isinstance(a, (float, int)):
        a, b = torch.tensor(float(a)), torch.tensor(float(b))
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs {b.dtype}"
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{what}: {m}")


def _both(program, *args, **kw):
    """``program(use_lft, ...)`` run with torch's modules, then with lstm_fast's."""
    return program(False, *args, **kw), program(True, *args, **kw)


def _fast_modules(model):
    return [m for m in model.modules() if type(m).__module__ == "lstm_fast.torch"]


def _prepare(model, use_lft):
    """The model as a user adopting lstm_fast leaves it: replaced in place (or untouched)."""
    if use_lft:
        assert lft.replace_rnns(model) is model
        assert _fast_modules(model), "replace_rnns swapped nothing"
    return model


def _compare_params(ref, fast, tol=GRAD_TOL, what="parameter"):
    rp, fp = dict(ref.named_parameters()), dict(fast.named_parameters())
    assert rp.keys() == fp.keys()
    for name in rp:
        _close(rp[name].detach(), fp[name].detach(), tol, f"{what} {name}")


# -- 1. seq2seq with attention -----------------------------------------------------------------
class Seq2Seq(nn.Module):
    """Bidirectional batch-first GRU encoder, LSTMCell decoder with dot-product attention over
    the encoder outputs and teacher forcing."""

    def __init__(self, src_vocab=11, tgt_vocab=9, emb=6, hidden=8):
        super().__init__()
        self.src_emb = nn.Embedding(src_vocab, emb)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb)
        self.encoder = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, hidden)
        self.decoder = nn.LSTMCell(emb + 2 * hidden, hidden)
        self.attn = nn.Linear(hidden, 2 * hidden, bias=False)
        self.out = nn.Linear(hidden + 2 * hidden, tgt_vocab)

    def forward(self, src, tgt, teacher_forcing):
        enc, h_n = self.encoder(self.src_emb(src))  # (B, S, 2H), (2, B, H)
        h = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], dim=1)))
        c = torch.zeros_like(h)
        ctx = enc.mean(1)
        token = tgt[:, 0]
        logits = []
        for t in range(1, tgt.shape[1]):
            h, c = self.decoder(torch.cat([self.tgt_emb(token), ctx], dim=1), (h, c))
            scores = torch.bmm(enc, self.attn(h).unsqueeze(2)).squeeze(2)  # (B, S)
            ctx = torch.bmm(F.softmax(scores, dim=1).unsqueeze(1), enc).squeeze(1)
            step = self.out(torch.cat([h, ctx], dim=1))
            logits.append(step)
            token = tgt[:, t] if teacher_forcing[t] else step.argmax(1)
        return torch.stack(logits, 1)


def _seq2seq(use_lft, steps=4):
    torch.manual_seed(0)
    model = _prepare(Seq2Seq(), use_lft)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    g = torch.Generator().manual_seed(1)
    losses, norms = [], []
    for _ in range(steps):
        src = torch.randint(0, 11, (3, 7), generator=g)
        tgt = torch.randint(0, 9, (3, 5), generator=g)
        tf = torch.rand(5, generator=g) < 0.5
        opt.zero_grad()
        logits = model(src, tgt, tf)
        loss = F.cross_entropy(logits.reshape(-1, 9), tgt[:, 1:].reshape(-1))
        loss.backward()
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), 0.5).item())
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        greedy = model(src, tgt, torch.zeros(5, dtype=torch.bool))
    return model, losses, norms, greedy


def test_seq2seq_attention_adam_clip_scheduler():
    (ref, rl, rn, rg), (fast, fl, fn, fg) = _both(_seq2seq)
    for i, (a, b) in enumerate(zip(rl, fl)):
        _close(a, b, OUT_TOL, f"loss at step {i}")
    for i, (a, b) in enumerate(zip(rn, fn)):
        _close(a, b, GRAD_TOL, f"gradient norm at step {i}")
    _compare_params(ref, fast)
    _close(rg, fg, GRAD_TOL, "greedy decoding logits")


# -- 2. char-RNN language model ----------------------------------------------------------------
class CharRNN(nn.Module):
    def __init__(self, vocab=13, emb=5, hidden=10, layers=2, dropout=0.3, kind="LSTM"):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = getattr(nn, kind)(emb, hidden, layers, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, hidden=None):
        y, hidden = self.rnn(self.emb(x), hidden)
        return self.head(y), hidden


def _detach(hidden):
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def _char_rnn(use_lft, kind="LSTM", steps=5, bptt=6):
    torch.manual_seed(0)
    model = _prepare(CharRNN(kind=kind), use_lft)
    g = torch.Generator().manual_seed(2)
    corpus = torch.randint(0, 13, (steps * bptt + 1, 4), generator=g)  # (T, B) columns
    hidden = None
    losses = []
    model.train()
    for i in range(steps):  # truncated BPTT, the state carried across batches
        x = corpus[i * bptt : (i + 1) * bptt]
        target = corpus[i * bptt + 1 : (i + 1) * bptt + 1]
        if hidden is not None:
            hidden = _detach(hidden)
        logits, hidden = model(x, hidden)
        loss = F.cross_entropy(logits.view(-1, 13), target.reshape(-1))
        model.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():  # the classic hand-written update
            p.data.add_(p.grad, alpha=-0.5)
        losses.append(loss.item())
    # sampling one character at a time (T = 1, B = 1), unbatched state in eval mode
    model.eval()
    sampled, probs = [], []
    gen = torch.Generator().manual_seed(3)
    token = torch.tensor([[1]])
    state = None
    with torch.no_grad():
        for _ in range(8):
            logits, state = model(token, state)
            p = F.softmax(logits[-1, 0] / 0.8, dim=0)
            probs.append(p)
            token = torch.multinomial(p, 1, generator=gen).view(1, 1)
            sampled.append(token.item())
    with torch.inference_mode():
        logits_im, _ = model(corpus[:5, :1])
    return model, losses, sampled, torch.stack(probs), logits_im


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_char_rnn_truncated_bptt_and_sampling(kind):
    (ref, rl, rs, rp, ri), (fast, fl, fs, fp, fi) = _both(_char_rnn, kind=kind)
    for i, (a, b) in enumerate(zip(rl, fl)):
        _close(a, b, OUT_TOL, f"loss at step {i}")
    _compare_params(ref, fast)
    _close(rp, fp, GRAD_TOL, "sampling probabilities")
    assert rs == fs
    _close(ri, fi, GRAD_TOL, "inference_mode logits")
    assert not fi.requires_grad


# -- 3. packed bidirectional classifier --------------------------------------------------------
class Classifier(nn.Module):
    def __init__(self, vocab=17, emb=6, hidden=7, classes=3, kind="LSTM", dropout=0.4):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb, padding_idx=0)
        self.rnn = getattr(nn, kind)(
            emb, hidden, num_layers=2, batch_first=True, bidirectional=True, dropout=dropout
        )
        self.kind = kind
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * hidden, classes)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(
            self.emb(tokens), lengths, batch_first=True, enforce_sorted=False
        )
        out, hidden = self.rnn(packed)
        h_n = hidden[0] if self.kind == "LSTM" else hidden
        out, out_lengths = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        assert torch.equal(out_lengths, lengths)
        mask = (torch.arange(tokens.shape[1]) < lengths.unsqueeze(1)).unsqueeze(2)
        pooled = (out * mask).sum(1) / lengths.unsqueeze(1)  # masked mean over time
        last = torch.cat([h_n[-2], h_n[-1]], dim=1)  # both directions of the top layer
        return self.fc(self.drop(torch.cat([pooled, last], dim=1)[:, : self.fc.in_features]))


def _classifier(use_lft, kind="LSTM", dropout=0.0, steps=4):
    torch.manual_seed(0)
    model = Classifier(kind=kind, dropout=dropout)
    model.fc = nn.Linear(2 * model.rnn.hidden_size * 2, 3)
    model = _prepare(model, use_lft)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(4)
    losses = []
    for _ in range(steps):
        lengths = torch.randint(1, 9, (5,), generator=g)
        tokens = torch.randint(1, 17, (5, 9), generator=g)
        tokens[torch.arange(9) >= lengths.unsqueeze(1)] = 0
        labels = torch.randint(0, 3, (5,), generator=g)
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(tokens, lengths), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        pred = model(tokens, lengths)
    return model, losses, pred


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_packed_bidirectional_classifier(kind, dropout):
    (ref, rl, rp), (fast, fl, fp) = _both(_classifier, kind=kind, dropout=dropout)
    for i, (a, b) in enumerate(zip(rl, fl)):
        _close(a, b, OUT_TOL, f"loss at step {i}")
    _compare_params(ref, fast)
    _close(rp, fp, GRAD_TOL, "eval predictions")


# -- 4. time-series regression: projections, frozen layers, parameter groups ------------------
class Forecaster(nn.Module):
    """A frozen pretrained GRU feature extractor, a projected 2-layer LSTM, a linear head."""

    def __init__(self, features=3, hidden=9, proj=4, horizon=2):
        super().__init__()
        self.features = nn.GRU(features, 5, batch_first=True)
        self.lstm = nn.LSTM(5, hidden, num_layers=2, proj_size=proj, batch_first=True)
        self.head = nn.Linear(proj, horizon)
        self.h0 = nn.Parameter(torch.zeros(2, 1, proj))  # learned initial state
        self.c0 = nn.Parameter(torch.zeros(2, 1, hidden))

    def forward(self, x):
        z, _ = self.features(x)
        B = x.shape[0]
        y, (h_n, c_n) = self.lstm(z, (self.h0.expand(-1, B, -1), self.c0.expand(-1, B, -1)))
        return self.head(y[:, -1]), self.head(h_n[-1])


def _forecaster(use_lft, steps=6):
    torch.manual_seed(0)
    model = _prepare(Forecaster(), use_lft)
    model.features.requires_grad_(False)  # frozen: its forward needs no gradient
    model.lstm.weight_ih_l0.requires_grad_(False)  # fine-tune all but the first input weights
    opt = torch.optim.SGD(
        [
            {"params": [p for n, p in model.lstm.named_parameters() if p.requires_grad]},
            {"params": [model.h0, model.c0], "lr": 0.05, "weight_decay": 0.0},
            {"params": model.head.parameters(), "lr": 0.02},
        ],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        nesterov=True,
    )
    t = torch.linspace(0, 6, 40)
    series = torch.stack([torch.sin(t), torch.cos(1.3 * t), torch.sin(0.7 * t + 1)], 1)
    windows = series.unfold(0, 10, 3).permute(0, 2, 1)  # (N, 10, 3), batch-first windows
    target = series[12::3][: windows.shape[0], :2]
    windows = windows[: target.shape[0]]
    losses = []
    for i in range(steps):
        xb, yb = windows[i % 2 :: 2], target[i % 2 :: 2]
        pred, pred_h = model(xb)
        loss = F.mse_loss(pred, yb) + 0.1 * F.smooth_l1_loss(pred_h, yb)
        opt.zero_grad(set_to_none=i % 2 == 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    frozen_grads = [p.grad for p in model.features.parameters()] + [model.lstm.weight_ih_l0.grad]
    return model, losses, frozen_grads


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_time_series_projection_frozen_param_groups():
    (ref, rl, rg), (fast, fl, fg) = _both(_forecaster)
    for i, (a, b) in enumerate(zip(rl, fl)):
        _close(a, b, OUT_TOL, f"loss at step {i}")
    _compare_params(ref, fast)
    assert all(g is None for g in rg) and all(g is None for g in fg)


# -- 5. autocast (bfloat16 on the CPU) ---------------------------------------------------------
class Tagger(nn.Module):
    def __init__(self, kind="LSTM"):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.rnn = getattr(nn, kind)(6, 8, batch_first=True)
        self.cell = nn.GRUCell(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.rnn(self.inp(x))
        h = self.cell(y[:, -1])
        return self.out(y).mean(1) + self.out(h)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_autocast_bfloat16_training_runs_and_stays_close(kind):
    """Documented difference: under CPU autocast the kernels compute in float32 and return
    float32 (torch's LSTM and RNN return bfloat16, its GRU the input's dtype). A training loop
    runs unchanged, and its losses agree with torch's to bfloat16 precision."""
    found = []
    for use_lft in (False, True):
        torch.manual_seed(0)
        model = _prepare(Tagger(kind), use_lft)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(5)
        losses = []
        for _ in range(3):
            x = torch.randn(4, 5, 4, generator=g)
            labels = torch.randint(0, 3, (4,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
                loss = F.cross_entropy(logits, labels)
            assert loss.dtype == torch.float32
            opt.zero_grad()
            loss.backward()
            assert all(
                p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters()
            )
            opt.step()
            losses.append(loss.item())
        found.append(losses)
    for i, (a, b) in enumerate(zip(*found)):
        assert math.isclose(a, b, rel_tol=3e-2, abs_tol=3e-2), f"loss at step {i}: {a} vs {b}"


# -- 6. saving, loading, copying ---------------------------------------------------------------
def _train(model, steps, seed, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 6, 3, generator=g)
        y = torch.randn(4, 2, generator=g)
        opt.zero_grad()
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, opt


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(12, 5, batch_first=True)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.gru(self.rnn(x)[0])[1][0])


def test_save_load_copy_then_keep_training():
    """A whole-model pickle after replace_rnns loads as lstm_fast's model; its state dict loads
    into a fresh torch model; deepcopy and share_memory keep the modules' classes; each copy
    trains on exactly as torch's model does."""
    torch.manual_seed(0)
    ref = Regressor()
    fast = lft.replace_rnns(copy.deepcopy(ref))
    _train(ref, 2, seed=1)
    _train(fast, 2, seed=1)
    _compare_params(ref, fast)

    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded.rnn) is lft.LSTM and type(loaded.gru) is lft.GRU
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    fresh = Regressor()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert type(fresh.rnn) is nn.LSTM
    deep = copy.deepcopy(fast)
    shared = copy.deepcopy(fast).share_memory()
    assert type(deep.rnn) is lft.LSTM and type(shared.gru) is lft.GRU
    assert all(p.is_shared() for p in shared.parameters())
    restored = lft.restore_rnns(copy.deepcopy(fast))
    assert type(restored.rnn) is nn.LSTM
    assert restored.state_dict().keys() == ref.state_dict().keys()

    expect, _ = _train(ref, 3, seed=2)
    for name, m in [
        ("loaded", loaded),
        ("fresh", fresh),
        ("deepcopy", deep),
        ("shared", shared),
        ("restored", restored),
    ]:
        got, _ = _train(m, 3, seed=2)
        for i, (a, b) in enumerate(zip(expect, got)):
            _close(a, b, GRAD_TOL, f"{name}: loss at step {i}")
        _compare_params(ref, m, what=name)


# -- 7. an inference server: threads, hooks, re-initialisation, repr ---------------------------
def _init_weights(m):
    """The usual RNN initialisation: orthogonal recurrent weights, Xavier input weights, forget
    gate bias 1."""
    if isinstance(m, (nn.LSTM, nn.GRU)):
        for name, p in m.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("bias"):
                nn.init.zeros_(p)
                if isinstance(m, nn.LSTM):
                    p.data[m.hidden_size : 2 * m.hidden_size].fill_(1.0)
    elif isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2)
        self.gru = nn.GRU(8, 6, bidirectional=True)
        self.proj = nn.Linear(12, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.proj(y[-1])


def _serve(use_lft):
    torch.manual_seed(0)
    model = Encoder()
    if use_lft:
        lft.replace_rnns(model)
    model.apply(_init_weights)  # after the replacement: isinstance still sees torch's classes
    seen = []
    handle = model.lstm.register_forward_hook(
        lambda mod, inp, out: seen.append((type(mod).__name__, out[0].shape))
    )
    pre = model.gru.register_forward_pre_hook(lambda mod, args: (args[0] * 0.5,))
    model.eval()
    g = torch.Generator().manual_seed(7)
    inputs = [torch.randn(5, 2, 4, generator=g) for i in range(6)]
    results = [None] * len(inputs)

    def serve(idx):
        with torch.no_grad():  # grad mode is per thread
            for i in idx:
                results[i] = model(inputs[i])

    workers = [threading.Thread(target=serve, args=(range(k, 6, 2),)) for k in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    torch.set_grad_enabled(False)
    try:
        results.append(model(inputs[0]))
    finally:
        torch.set_grad_enabled(True)
    handle.remove()
    pre.remove()
    assert all(not r.requires_grad for r in results)
    names = [n for n, _ in model.named_modules()]
    return results, seen, repr(model), names, model.state_dict()


def test_inference_server_threads_hooks_init():
    (rr, rs, rrepr, rnames, rsd), (fr, fs, frepr, fnames, fsd) = _both(_serve)
    for i, (a, b) in enumerate(zip(rr, fr)):
        _close(a, b, OUT_TOL, f"request {i}")
    assert sorted(rs, key=str) == sorted(fs, key=str) and len(fs) == 7
    assert rrepr == frepr and rnames == fnames
    for k in rsd:
        _close(rsd[k], fsd[k], dict(rtol=0, atol=0), k)


# -- 8. GRU / RNN(relu) variants: unbatched input, h0 given or not, cells ----------------------
class Controller(nn.Module):
    """Unbatched sequences (T, I) through an RNN(relu), a GRUCell loop and an RNNCell."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(3, 5, nonlinearity="relu", num_layers=2)
        self.gru_cell = nn.GRUCell(5, 4)
        self.rnn_cell = nn.RNNCell(4, 4, nonlinearity="tanh")
        self.gru = nn.GRU(4, 4, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(2, 5) * 0.1)

    def forward(self, x, use_h0):
        y, h_n = self.rnn(x, self.h0 if use_h0 else None)  # (T, 5), (2, 5) unbatched
        h = None
        outs = []
        for x_t in y:  # (5,) unbatched cell steps
            h = self.gru_cell(x_t, h)
            outs.append(self.rnn_cell(h, h))
        z, h2 = self.gru(
            torch.stack(outs), h.unsqueeze(0)
        )  # unbatched, batch_first ignored: (T, 4)
        return z.sum(0) + h2[0] + h_n.sum()


def _controller(use_lft, steps=4):
    torch.manual_seed(0)
    model = _prepare(Controller(), use_lft)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(6)
    losses = []
    for i in range(steps):
        x = torch.randn(7, 3, generator=g)
        target = torch.randn(4, generator=g)
        opt.zero_grad()
        loss = F.huber_loss(model(x, use_h0=i % 2 == 1), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_unbatched_relu_rnn_gru_cells_h0_given_or_not():
    (ref, rl), (fast, fl) = _both(_controller)
    for i, (a, b) in enumerate(zip(rl, fl)):
        _close(a, b, OUT_TOL, f"loss at step {i}")
    _compare_params(ref, fast)


# -- 9. a recurrent GAN: two optimizers, detach, retain_graph ----------------------------------
class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 6, batch_first=True)
        self.out = nn.Linear(6, 2)

    def forward(self, z):
        return torch.tanh(self.out(self.lstm(z)[0]))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(2, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(10, 1)

    def forward(self, x):
        return self.out(self.gru(x)[0][:, -1])


def _gan(use_lft, steps=3):
    torch.manual_seed(0)
    G, D = _prepare(Generator(), use_lft), _prepare(Discriminator(), use_lft)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(8)
    losses = []
    for _ in range(steps):
        real = torch.sin(torch.linspace(0, 3, 7)).repeat(4, 2, 1).transpose(1, 2)
        real = real + 0.1 * torch.randn(real.shape, generator=g)
        fake = G(torch.randn(4, 7, 3, generator=g))
        opt_d.zero_grad()
        d_loss = bce(D(real), torch.ones(4, 1)) + bce(D(fake.detach()), torch.zeros(4, 1))
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_out = D(fake)
        g_loss = bce(g_out, torch.ones(4, 1))
        g_loss.backward(retain_graph=True)  # a second loss on the same graph
        (0.1 * fake.pow(2).mean() + 0.01 * g_out.mean()).backward()
        opt_g.step()
        losses.append((d_loss.item(), g_loss.item()))
    return (G, D), losses


def test_recurrent_gan_two_optimizers_retain_graph():
    ((rg, rd), rl), ((fg, fd), fl) = _both(_gan)
    for i, (a, b) in enumerate(zip(rl, fl)):
        _close(a[0], b[0], OUT_TOL, f"D loss at step {i}")
        _close(a[1], b[1], OUT_TOL, f"G loss at step {i}")
    _compare_params(rg, fg, what="generator")
    _compare_params(rd, fd, what="discriminator")


# -- 10. the tutorial seq2seq: nn.GRU decoding one step at a time; AWD-LSTM weight drop ---------
class WeightDrop(nn.Module):
    """AWD-LSTM's DropConnect: the recurrent weight is a dropout of a raw parameter, set as a
    plain tensor attribute before each call."""

    def __init__(self, module, p=0.3):
        super().__init__()
        self.module, self.p = module, p
        raw = module.weight_hh_l0
        del module._parameters["weight_hh_l0"]
        module.register_parameter("weight_hh_l0_raw", nn.Parameter(raw.detach().clone()))

    def forward(self, *args):
        w = F.dropout(self.module.weight_hh_l0_raw, self.p, self.training)
        self.module.weight_hh_l0 = w
        return self.module(*args)


class StepDecoder(nn.Module):
    def __init__(self, vocab=10, hidden=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.encoder = WeightDrop(nn.LSTM(hidden, hidden, batch_first=True))
        self.bridge = nn.Linear(2 * hidden, hidden)
        self.decoder = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src, tgt_len, target=None):
        _, (h, c) = self.encoder(self.emb(src))
        hidden = torch.tanh(self.bridge(torch.cat([h, c], 2)))  # (1, B, H)
        token = torch.zeros(src.shape[0], 1, dtype=torch.long)
        outputs = []
        for t in range(tgt_len):  # one nn.GRU call of T = 1 per step, the state carried
            out, hidden = self.decoder(F.relu(self.emb(token)), hidden)
            logits = self.out(out)
            outputs.append(logits)
            if target is not None:
                token = target[:, t].unsqueeze(1)  # teacher forcing
            else:
                token = logits.topk(1)[1].squeeze(-1).detach()
        return F.log_softmax(torch.cat(outputs, 1), dim=-1), hidden


def _step_decoder(use_lft, steps=4):
    torch.manual_seed(0)
    model = _prepare(StepDecoder(), use_lft)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.NLLLoss()
    g = torch.Generator().manual_seed(9)
    losses = []
    for i in range(steps):
        src = torch.randint(1, 10, (3, 6), generator=g)
        tgt = torch.randint(1, 10, (3, 4), generator=g)
        opt.zero_grad()
        logp, _ = model(src, 4, tgt if i % 2 == 0 else None)
        loss = crit(logp.view(-1, 10), tgt.view(-1))
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        decoded, h = model(src, 4)
    return model, losses, decoded


def test_tutorial_step_decoder_with_weight_drop():
    (ref, rl, rd), (fast, fl, fd) = _both(_step_decoder)
    assert type(fast.encoder.module) is lft.LSTM and type(fast.decoder) is lft.GRU
    for i, (a, b) in enumerate(zip(rl, fl)):
        _close(a, b, OUT_TOL, f"loss at step {i}")
    _compare_params(ref, fast)
    _close(rd, fd, GRAD_TOL, "greedy decoding")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*quantize:UserWarning")
def test_dynamic_quantization_documented_difference():
    """Documented (README): quantize_dynamic matches exact types and leaves lstm_fast's modules
    in float32; quantizing restore_rnns(model) gives torch's quantized model."""
    quantize = getattr(getattr(torch, "ao", None), "quantization", None)
    quantize = getattr(quantize, "quantize_dynamic", None)
    if quantize is None:
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    torch.manual_seed(0)
    model = Regressor()
    ref_q = quantize(copy.deepcopy(model), {nn.LSTM, nn.GRU})
    fast = lft.replace_rnns(copy.deepcopy(model))
    kept = quantize(copy.deepcopy(fast), {nn.LSTM, nn.GRU})
    assert type(kept.rnn) is lft.LSTM and type(kept.gru) is lft.GRU
    q = quantize(lft.restore_rnns(fast), {nn.LSTM, nn.GRU})
    assert type(q.rnn) is type(ref_q.rnn) and type(q.gru) is type(ref_q.gru)
    x = torch.randn(2, 5, 3)
    _close(ref_q(x), q(x), OUT_TOL, "quantized output")


# -- regressions found by this review ----------------------------------------------------------
@pytest.mark.parametrize(
    "kind, kw",
    [("LSTM", dict(bidirectional=True)), ("GRU", {}), ("RNN", dict(nonlinearity="relu"))],
)
def test_packed_dropout_draws_torchs_masks(kind, kw):
    """Inter-layer dropout on a PackedSequence draws torch's mask: torch's module applies it to
    the packed data (the real steps only, step-major), so the same seed gives torch's outputs
    and gradients (dropout on the padded tensor drew another mask)."""
    torch.manual_seed(0)
    ref = getattr(nn, kind)(3, 4, num_layers=3, dropout=0.5, **kw)
    fast = lft.replace_rnns(copy.deepcopy(ref))
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([3, 6, 1])
    found = []
    for m in (ref, fast):
        torch.manual_seed(11)
        xx = x.clone().requires_grad_()
        y, _ = pad_packed_sequence(m(pack_padded_sequence(xx, lengths, enforce_sorted=False))[0])
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(12)))
        found.append((y, xx.grad, [p.grad for p in m.parameters()]))
        found[-1] += (torch.randn(()).item(),)  # the RNG advanced as torch's
    (ry, rdx, rdw, rnext), (fy, fdx, fdw, fnext) = found
    _close(ry, fy, OUT_TOL, "output")
    _close(rdx, fdx, GRAD_TOL, "input grad")
    for a, b in zip(rdw, fdw):
        _close(a, b, GRAD_TOL, "weight grad")
    assert rnext == fnext


_THREADS_SCRIPT = """
import sys, threading
if sys.argv[1] == "lstm_fast first":
    import lstm_fast, torch
else:
    import torch, lstm_fast
import lstm_fast.torch as lft
seen = []
for n in (1, 2, 1):
    torch.set_num_threads(n)
    seen.append(lstm_fast.get_num_threads())
x = torch.randn(5, 2, 3)
other = []
def worker():  # a new thread whose first op is lstm_fast's
    lft.LSTM(3, 4)(x)
    other.append(lstm_fast.get_num_threads())
    lft.GRUCell(3, 4)(x[0])
    other.append(lstm_fast.get_num_threads())
t = threading.Thread(target=worker)
t.start(); t.join()
lstm_fast.set_num_threads(2)
torch.set_num_threads(1)
print(seen, other, lstm_fast.get_num_threads())
"""


@pytest.mark.parametrize("order", ["lstm_fast first", "torch first"])
def test_torch_set_num_threads_is_followed_until_lstm_fast_sets_its_own(order):
    """README: ``torch.set_num_threads(n)`` sets lstm_fast's thread count too (one OpenMP
    runtime) until ``lstm_fast.set_num_threads`` is called. A fresh process: the test suite's
    own processes have called lstm_fast.set_num_threads."""
    import os
    import subprocess
    import sys

    import lstm_fast

    if not sys.platform.startswith("linux") or not lstm_fast.cpu_info()["openmp"]:
        pytest.skip("needs lstm_fast built with GNU OpenMP on Linux")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, order],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[1, 2, 1] [1, 1] 2"
