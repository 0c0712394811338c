"""Char-LM acceptance comparison: lstm_fast against torch.nn.LSTM + torch.optim.Adam.

The same model (embedding -> LSTM stack -> linear), trained for a fixed number of steps with
identical hyper-parameters, initial weights (the torch model loads the lstm_fast model's state
dict), data order (the same truncated-BPTT windows, hidden state carried across windows and reset
at each epoch start) and gradient clipping. Prints the validation bits/char of both, the training
throughput of both (chars/s, forward + loss + backward + clip + optimizer step, timed per step)
and their ratios, and a sample from each trained model.

The two runs are *interleaved* in chunks of ``--chunk`` steps (lstm_fast chunk, torch chunk, ...),
so background load on a shared machine slows both alike and the throughput ratio stays fair.

Usage::

    PYTHONPATH=. python benchmarks/compare_torch_charlm.py \\
        --corpus ../shared/data/ko_novels/train.txt --steps 300
    PYTHONPATH=. python benchmarks/compare_torch_charlm.py --default-corpus --steps 300

The last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

LN2 = math.log(2.0)


def build_torch_model(lf_model, torch):
    cfg = lf_model.config
    nn = torch.nn

    class TorchCharLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(cfg["vocab_size"], cfg["embed_size"])
            self.rnn = nn.LSTM(
                cfg["embed_size"],
                cfg["hidden_size"],
                cfg["num_layers"],
                dropout=cfg["dropout"] if cfg["num_layers"] > 1 else 0.0,
            )
            self.drop = nn.Dropout(cfg["dropout"])
            self.decoder = nn.Linear(cfg["hidden_size"], cfg["vocab_size"])

        def forward(self, x, state=None):
            y, state = self.rnn(self.embedding(x), state)
            return self.decoder(self.drop(y)), state

    m = TorchCharLM()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in lf_model.state_dict().items()}
    m.load_state_dict(sd, strict=True)
    return m


def torch_bpc(model, ids, batch_size, seq_len, torch, data):
    model.eval()
    B = max(1, min(batch_size, (len(ids) - 1) // max(seq_len, 1)))
    batcher = data.BPTTBatcher(ids, B, seq_len, drop_last=False)
    state, total, count = None, 0.0, 0
    with torch.no_grad():
        for x, y in batcher:
            logits, state = model(torch.from_numpy(x), state)
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                torch.from_numpy(y).reshape(-1),
                reduction="sum",
            ).item()
            count += y.size
    model.train()
    return total / max(count, 1) / LN2


def _positive_int(text: str) -> int:
    """An integer >= 1 (0 or a negative failed with a traceback deep in the run)."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="a UTF-8 text file")
    src.add_argument(
        "--default-corpus", action="store_true", help="the Python standard library's sources"
    )
    ap.add_argument(
        "--max-chars", type=_positive_int, default=1_000_000, help="corpus cap (characters)"
    )
    ap.add_argument("--steps", type=_positive_int, default=300)
    ap.add_argument("--embed-size", type=_positive_int, default=64)
    ap.add_argument("--hidden-size", type=_positive_int, default=256)
    ap.add_argument("--num-layers", type=_positive_int, default=2)
    ap.add_argument("--seq-len", type=_positive_int, default=100)
    ap.add_argument("--batch-size", type=_positive_int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=_positive_int, default=2)
    ap.add_argument("--chunk", type=_positive_int, default=10, help="steps per interleaved chunk")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--val-max-chars", type=_positive_int, default=100_000)
    ap.add_argument("--sample-length", type=_positive_int, default=400)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--prime", default=None, help="priming string of the samples")
    ap.add_argument(
        "--save",
        metavar="DIR",
        default=None,
        help="write the trained lstm_fast model as a char-LM run directory (for lstm-fast "
        "sample / evaluate / inspect)",
    )
    args = ap.parse_args(argv)
    from lstm_fast._core import max_threads

    limit = max_threads()
    if args.threads > limit:
        ap.error(f"argument --threads: expected an integer in [1, {limit}], got {args.threads}")

    import torch

    import lstm_fast
    from lstm_fast import _peers, data
    from lstm_fast.models.charlm import CharLM, evaluate_bpc, sample_text
    from lstm_fast.optim import Adam, clip_grad_norm

    allocator = _peers.steady_allocator()  # one malloc state for both trainings (_peers)
    lstm_fast.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    text = data.load_corpus(
        None if args.default_corpus else args.corpus,
        default=args.default_corpus,
        max_chars=args.max_chars,
    )
    vocab = data.Vocab.build(text, level="char")
    ids = vocab.encode(text)
    train_ids, val_ids = data.train_val_split(ids, args.val_fraction)
    val_ids = val_ids[: args.val_max_chars]
    batcher = data.BPTTBatcher(train_ids, args.batch_size, args.seq_len)
    V = len(vocab)
    corpus_name = "stdlib (default corpus)" if args.default_corpus else args.corpus
    print(
        f"corpus {corpus_name}: {len(text):,} chars, vocab {V}, train {len(train_ids):,}, "
        f"val {len(val_ids):,}; {batcher.num_windows} windows/epoch; allocator: {allocator}",
        file=sys.stderr,
    )

    lf = CharLM(V, args.embed_size, args.hidden_size, args.num_layers, 0.0, seed=args.seed)
    tm = build_torch_model(lf, torch)
    lf.train()
    tm.train()
    lf_params = list(lf.parameters())
    lf_opt = Adam(lf_params, lr=args.lr)
    t_opt = torch.optim.Adam(tm.parameters(), lr=args.lr)
    lf_state = lf.init_state(args.batch_size)
    t_state = None
    lf_time = t_time = 0.0
    lf_loss, t_loss = [], []

    def lf_step(k):
        nonlocal lf_state
        x, y = batcher.window(k)
        if k == 0:
            lf_state = lf.init_state(args.batch_size)
        loss, g, new_state = lf.forward_loss(x, y, lf_state)  # the step of lstm-fast train
        lf.backward(g)
        if args.clip:
            clip_grad_norm(lf_params, args.clip)
        lf_opt.step(zero_grad=True)  # as lstm-fast train: gradients zeroed in Adam's pass
        lf_state = new_state
        return loss

    def t_step(k):
        nonlocal t_state
        x, y = batcher.window(k)
        if k == 0:
            t_state = None
        t_opt.zero_grad(set_to_none=True)
        logits, st = tm(torch.from_numpy(x), t_state)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, V), torch.from_numpy(y).reshape(-1)
        )
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(tm.parameters(), args.clip)
        t_opt.step()
        t_state = (st[0].detach(), st[1].detach())
        return loss.item()

    # warm-up outside the timed region is not possible without changing the trajectory, so the
    # first step of each is excluded from the throughput instead (one-off allocations, packing).
    step = 0
    t_wall = time.perf_counter()
    while step < args.steps:
        n = min(args.chunk, args.steps - step)
        for which in ("lf", "torch"):
            for j in range(n):
                k = (step + j) % batcher.num_windows
                t0 = time.perf_counter()
                loss = lf_step(k) if which == "lf" else t_step(k)
                dt = time.perf_counter() - t0
                if step + j > 0:
                    if which == "lf":
                        lf_time += dt
                    else:
                        t_time += dt
                (lf_loss if which == "lf" else t_loss).append(loss / LN2)
        step += n
        if step % max(args.chunk, args.steps // 10) < args.chunk or step == args.steps:
            print(
                f"step {step}: train bpc lstm_fast {np.mean(lf_loss[-args.chunk :]):.4f}, "
                f"torch {np.mean(t_loss[-args.chunk :]):.4f}",
                file=sys.stderr,
            )
    wall = time.perf_counter() - t_wall
    chars = (args.steps - 1) * batcher.tokens_per_window
    lf_cps, t_cps = chars / lf_time, chars / t_time

    lf_val = evaluate_bpc(lf, val_ids, args.batch_size, args.seq_len)
    t_val = torch_bpc(tm, val_ids, args.batch_size, args.seq_len, torch, data)

    if args.save:
        from pathlib import Path

        from lstm_fast.models.charlm import TrainConfig, _save

        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig(
            corpus=None if args.default_corpus else args.corpus,
            max_chars=args.max_chars,
            embed_size=args.embed_size,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            steps=args.steps,
            lr=args.lr,
            clip=args.clip,
            seed=args.seed,
            val_fraction=args.val_fraction,
        )
        hist = {"train_bpc": lf_loss, "val": [[args.steps, lf_val]]}
        _save(out, cfg, vocab, lf, lf_opt, lf_state, hist, args.steps, data.ids_digest(ids))
        vocab.save(out / "vocab.json")

    # samples: the same sampler (and seed) on each trained model's weights
    tm_as_lf = CharLM(V, args.embed_size, args.hidden_size, args.num_layers, 0.0, seed=args.seed)
    tm_as_lf.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    prime = args.prime if args.prime is not None else "\n"
    samples = {
        name: sample_text(m, vocab, args.sample_length, args.temperature, 0, prime, seed=args.seed)
        for name, m in (("lstm_fast", lf), ("torch", tm_as_lf))
    }
    for name, s in samples.items():
        print(f"\n----- sample ({name}, temperature {args.temperature}) -----\n{s}\n")

    res = {
        "corpus": corpus_name,
        "corpus_chars": len(text),
        "vocab_size": V,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "embed_size": args.embed_size,
        "lr": args.lr,
        "threads": args.threads,
        "val_chars": int(len(val_ids)),
        "val_bpc_lstm_fast": lf_val,
        "val_bpc_torch": t_val,
        "val_bpc_rel_diff": (lf_val - t_val) / t_val,
        "train_bpc_last50_lstm_fast": float(np.mean(lf_loss[-50:])),
        "train_bpc_last50_torch": float(np.mean(t_loss[-50:])),
        "chars_per_s_lstm_fast": lf_cps,
        "chars_per_s_torch": t_cps,
        "speedup": lf_cps / t_cps,
        "wall_seconds": wall,
        "torch_version": torch.__version__,
        "allocator": allocator,
    }
    print(
        f"validation bits/char: lstm_fast {lf_val:.4f}, torch {t_val:.4f} "
        f"(relative difference {100 * res['val_bpc_rel_diff']:+.2f} %)\n"
        f"training chars/s ({args.threads} threads): lstm_fast {lf_cps:,.0f}, torch {t_cps:,.0f} "
        f"(ratio {res['speedup']:.2f}x)"
    )
    print(json.dumps(res, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
