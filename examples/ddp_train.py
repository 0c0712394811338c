"""Train a character-level language model with lstm_fast's LSTM on N processes (DDP, gloo).

    torchrun --nproc-per-node 2 examples/ddp_train.py --steps 200
    torchrun --nproc-per-node 2 examples/ddp_train.py --text corpus.txt --torch-lstm  # baseline

Model: embedding -> 2-layer ``lstm_fast.torch.LSTM`` -> linear head over the vocabulary. Each
process takes its own slice of every global batch (``--batch-size`` sequences per process), DDP
averages the gradients over the processes (gloo, CPU), and every process applies the same Adam
step, so the weights stay identical. Rank 0 prints the loss and the throughput. Without torchrun
(no ``RANK`` in the environment) it runs as a single process.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

import lstm_fast
import lstm_fast.torch as lft

SAMPLE_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered as the rightful property of some one or other "
    "of their daughters. "
) * 20


class CharLM(torch.nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.rnn = torch.nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        y, state = self.rnn(self.embed(tokens), state)
        return self.head(y), state


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", help="UTF-8 text file to train on (default: a built-in sample)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per process")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1, help="threads per process (torch + kernels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-lstm", action="store_true", help="keep torch's nn.LSTM (baseline)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" not in os.environ:  # plain `python ddp_train.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(args.threads)
    lstm_fast.set_num_threads(args.threads)

    text = SAMPLE_TEXT
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    n_windows = (len(data) - 1) // args.seq_len
    if n_windows < args.batch_size * world:
        raise SystemExit(
            f"text too short: {n_windows} windows of {args.seq_len} characters for a global batch "
            f"of {args.batch_size * world}"
        )

    torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = CharLM(len(chars), args.embed, args.hidden, args.layers)
    if not args.torch_lstm:
        lft.replace_rnns(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)  # same global batches on every rank

    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, n_windows, (args.batch_size * world,), generator=gen)
        mine = starts[rank * args.batch_size : (rank + 1) * args.batch_size] * args.seq_len
        idx = mine[:, None] + torch.arange(args.seq_len + 1)
        batch = data[idx]
        logits, _ = ddp(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, len(chars)), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps):
            dt = time.perf_counter() - t0
            chars_per_s = step * args.batch_size * world * args.seq_len / dt
            print(
                f"step {step}/{args.steps}  loss {loss.item():.4f}  {chars_per_s:,.0f} chars/s",
                flush=True,
            )
    # Shut down in step: every rank past its last collective, the DDP reducer (which holds gloo
    # work and tensors) released, then the group destroyed. Exiting with gloo work still alive
    # aborted a rank now and then ("terminate called without an active exception", SIGABRT
    # while the interpreter was being torn down).
    dist.barrier()
    del ddp, opt
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
