"""Sequence classifier: embedding -> BiLSTM -> pooling (mean, max or last state) -> linear, and
its training loop on ``label<TAB>text`` files."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import data as _data
from ..module import Module
from ..nn import LSTM, Dropout, Embedding, Linear, softmax_cross_entropy
from ..optim import CosineLR, clip_grad_norm, make_optimizer
from .checkpoint import CheckpointError, interpreting, load_npz, restore_module, save_npz
from .naive_bayes import NaiveBayes

__all__ = ["SequenceClassifier", "ClassifierConfig", "train_classifier", "load_classifier"]

CHECKPOINT = "classifier.npz"
POOLS = ("mean", "max", "meanmax", "last")
NB_FILE = "naive_bayes.npz"


def _reverse_index(lengths: np.ndarray, T: int) -> np.ndarray:
    """(T, B) time index that reverses each sequence within its length (pads stay in place).
    It is its own inverse."""
    t = np.arange(T)[:, None]
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


class SequenceClassifier(Module):
    r"""Embedding (V, E) -> dropout -> bidirectional LSTM (H per direction) -> pooling over the
    valid steps -> dropout -> Linear (2H, or 4H for ``"meanmax"``, -> C).

    The two directions are single-layer :class:`~lstm_fast.LSTM` modules (``rnn_fwd``,
    ``rnn_bwd``); the reverse one reads each sequence reversed *within its length*, so padding
    (at the end) never reaches a valid step in either direction.

    Inputs: ``ids`` (T, B) int, padded with ``pad_id``; ``lengths`` (B,) >= 1.
    Output: logits (B, C).

    Args:
        pool: ``"mean"`` or ``"max"`` over valid steps, ``"meanmax"`` (both, concatenated), or
            ``"last"`` (the forward direction's state at the last valid step with the reverse
            direction's at step 0).
        dropout: on the pooled features.  embed_dropout: on the embeddings (the LSTM input).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_size: int = 64,
        hidden_size: int = 128,
        pool: str = "mean",
        dropout: float = 0.0,
        pad_id: Optional[int] = None,
        *,
        embed_dropout: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
        self.config = dict(
            vocab_size=int(vocab_size),
            num_classes=int(num_classes),
            embed_size=int(embed_size),
            hidden_size=int(hidden_size),
            pool=pool,
            dropout=float(dropout),
            pad_id=pad_id,
            embed_dropout=float(embed_dropout),
        )
        self.embedding = Embedding(vocab_size, embed_size, padding_idx=pad_id, seed=seed)
        self.rnn_fwd = LSTM(embed_size, hidden_size, seed=seed + 1)
        self.rnn_bwd = LSTM(embed_size, hidden_size, seed=seed + 2)
        self.drop = Dropout(dropout, seed=seed + 3)
        feat = (4 if pool == "meanmax" else 2) * hidden_size
        self.head = Linear(feat, num_classes, seed=seed + 4)
        self.edrop = Dropout(embed_dropout, seed=seed + 5)
        self._cache = None

    def forward(self, ids, lengths):
        ids = np.asarray(ids)
        lengths = np.asarray(lengths, dtype=np.int64)
        T, B = ids.shape
        H = self.config["hidden_size"]
        cols = np.arange(B)[None, :]
        rev = _reverse_index(lengths, T)
        e = self.edrop(self.embedding(ids))
        yf, _ = self.rnn_fwd(e)
        yb_r, _ = self.rnn_bwd(np.ascontiguousarray(e[rev, cols]))
        yb = yb_r[rev, cols]
        y = np.concatenate([yf, yb], axis=2)  # (T, B, 2H)
        mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float32)  # (T, B)
        pool = self.config["pool"]
        arg = None
        parts = []
        if pool in ("mean", "meanmax"):
            parts.append((y * mask[:, :, None]).sum(0) / lengths[:, None].astype(np.float32))
        if pool in ("max", "meanmax"):
            ym = np.where(mask[:, :, None] > 0, y, -np.inf)
            arg = ym.argmax(axis=0)  # (B, 2H)
            parts.append(np.take_along_axis(y, arg[None], axis=0)[0])
        if parts:
            feats = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        else:
            b = np.arange(B)
            feats = np.concatenate([yf[lengths - 1, b], yb[0, b]], axis=1)
        self._cache = (T, B, H, lengths, rev, mask, arg)
        return self.head(self.drop(feats))

    def backward(self, dlogits) -> None:
        T, B, H, lengths, rev, mask, arg = self._cache
        dfeat = self.drop.backward(self.head.backward(dlogits))  # (B, 2H)
        pool = self.config["pool"]
        dy = np.zeros((T, B, 2 * H), np.float32)
        b = np.arange(B)
        if pool == "meanmax":
            dmean, dmax = dfeat[:, : 2 * H], dfeat[:, 2 * H :]
        else:
            dmean = dmax = dfeat
        if pool in ("mean", "meanmax"):
            dy += (dmean / lengths[:, None].astype(np.float32))[None] * mask[:, :, None]
        if pool in ("max", "meanmax"):
            # scatter-add: the max step of a feature may coincide with others only via ties
            dmx = np.zeros_like(dy)
            np.put_along_axis(dmx, arg[None], dmax[None], axis=0)
            dy += dmx
        if pool == "last":
            dy[lengths - 1, b, :H] = dfeat[:, :H]
            dy[0, b, H:] = dfeat[:, H:]
        cols = b[None, :]
        dxf, _ = self.rnn_fwd.backward(np.ascontiguousarray(dy[:, :, :H]))
        dxb_r, _ = self.rnn_bwd.backward(np.ascontiguousarray(dy[:, :, H:][rev, cols]))
        self.embedding.backward(self.edrop.backward(dxf + dxb_r[rev, cols]))


@dataclasses.dataclass
class ClassifierConfig:
    """Hyper-parameters of :func:`train_classifier` (the CLI's defaults).

    With ``lm_steps > 0``, the embedding and both LSTM directions are first pretrained as a
    forward and a backward character language model on the training texts only (no labels;
    :func:`pretrain_lm`), then the whole classifier is fine-tuned. Training runs up to ``epochs``
    epochs of Adam with a cosine learning-rate decay (to
    ``lr * min_lr_factor`` at the last epoch) and stops early when the validation accuracy has not
    improved for ``patience`` epochs; the weights saved are those of the best validation epoch.
    """

    embed_size: int = 128
    hidden_size: int = 256
    pool: str = "meanmax"
    dropout: float = 0.5
    embed_dropout: float = 0.2
    level: str = "char"
    min_freq: int = 2
    max_len: int = 150
    batch_size: int = 64
    epochs: int = 6
    patience: int = 2
    lr: float = 2e-3
    min_lr_factor: float = 0.05
    weight_decay: float = 0.0
    clip: float = 5.0
    seed: int = 0
    val_fraction: float = 0.1
    max_rows: Optional[int] = None
    nb_char_n: int = 3
    nb_word_n: int = 1
    lm_steps: int = 300
    lm_seq_len: int = 100
    lm_batch_size: int = 32


def _encode_all(vocab, texts: Sequence[str], max_len: int):
    seqs = [vocab.encode(t)[:max_len] for t in texts]
    seqs = [s if len(s) else np.zeros(1, np.int32) for s in seqs]  # empty text -> one unk
    return seqs


def _pad(seqs, idx, pad_id):
    lengths = np.array([len(seqs[i]) for i in idx], dtype=np.int64)
    T = int(lengths.max())
    out = np.full((T, len(idx)), pad_id, dtype=np.int64)
    for j, i in enumerate(idx):  # one slice assignment per sequence
        out[: lengths[j], j] = seqs[i]
    return out, lengths


def _batches(seqs, order, batch_size):
    """Bucket by length inside chunks of 50 batches (less padding), then shuffle the batches."""
    chunk = batch_size * 50
    out = []
    for s in range(0, len(order), chunk):
        part = order[s : s + chunk]
        part = part[np.argsort([len(seqs[i]) for i in part], kind="stable")]
        out += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    return out


def pretrain_lm(
    model: SequenceClassifier,
    seqs,
    steps: int,
    *,
    seq_len: int = 100,
    batch_size: int = 32,
    lr: float = 2e-3,
    clip: float = 5.0,
    max_epochs: int = 3,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Pretrain ``model``'s embedding, ``rnn_fwd`` and ``rnn_bwd`` as a forward and a backward
    character LM (shared embedding, two throwaway linear decoders) on the token sequences
    ``seqs`` (unlabelled), for ``steps`` truncated-BPTT steps (at most ``max_epochs`` passes over
    the texts).

    The forward stream is the texts in a seeded random order, each followed by the pad token as a
    separator; the backward stream is the same stream reversed, so ``rnn_bwd`` learns to predict
    the previous character, as it reads in the classifier. Returns the last losses in bits/char.
    """
    V = model.config["vocab_size"]
    H = model.config["hidden_size"]
    sep = model.config["pad_id"] or 0
    order = np.random.default_rng([seed, 7]).permutation(len(seqs))
    parts = []
    for i in order:
        parts += [seqs[i], np.array([sep], np.int32)]
    ids_f = np.concatenate(parts).astype(np.int32)
    ids_b = np.ascontiguousarray(ids_f[::-1])
    seq_len = max(1, min(seq_len, len(ids_f) - 1))  # small data: shorter windows, fewer streams
    batch_size = max(1, min(batch_size, (len(ids_f) - 1) // seq_len))
    bf = _data.BPTTBatcher(ids_f, batch_size, seq_len)
    bb = _data.BPTTBatcher(ids_b, batch_size, seq_len)
    steps = min(steps, max_epochs * bf.num_windows)
    dec_f = Linear(H, V, seed=seed + 11)
    dec_b = Linear(H, V, seed=seed + 12)
    params = (
        list(model.embedding.parameters())
        + list(model.rnn_fwd.parameters())
        + list(model.rnn_bwd.parameters())
        + list(dec_f.parameters())
        + list(dec_b.parameters())
    )
    opt = make_optimizer("adam", params, lr=lr)
    sched = CosineLR(opt, total_steps=steps, min_factor=0.1)
    B = batch_size
    zeros = (np.zeros((1, B, H), np.float32), np.zeros((1, B, H), np.float32))
    st_f = st_b = zeros
    hist_f, hist_b = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        k = step % bf.num_windows
        if k == 0:
            st_f = st_b = zeros
        xf, yf = bf.window(k)
        xb, yb = bb.window(k)
        for p in params:
            p.grad[...] = 0
        e = model.embedding(np.concatenate([xf, xb], axis=1))  # (T, 2B, E)
        hf, st_f = model.rnn_fwd(np.ascontiguousarray(e[:, :B]), st_f)
        hb, st_b = model.rnn_bwd(np.ascontiguousarray(e[:, B:]), st_b)
        lf, gf = softmax_cross_entropy(dec_f(hf).reshape(-1, V), yf.reshape(-1))
        lb, gb = softmax_cross_entropy(dec_b(hb).reshape(-1, V), yb.reshape(-1))
        dxf, _ = model.rnn_fwd.backward(dec_f.backward(gf).reshape(hf.shape))
        dxb, _ = model.rnn_bwd.backward(dec_b.backward(gb).reshape(hb.shape))
        model.embedding.backward(np.concatenate([dxf, dxb], axis=1))
        if clip:
            clip_grad_norm(params, clip)
        opt.step()
        sched.step()
        hist_f.append(lf / math.log(2.0))
        hist_b.append(lb / math.log(2.0))
        if progress and (step + 1) % 50 == 0:
            log(
                f"lm pretraining step {step + 1}/{steps}: bits/char forward "
                f"{np.mean(hist_f[-50:]):.3f}, backward {np.mean(hist_b[-50:]):.3f}"
            )
    n = max(1, min(50, steps))
    return {
        "lm_steps_run": steps,
        "lm_bpc_forward": float(np.mean(hist_f[-n:])) if hist_f else None,
        "lm_bpc_backward": float(np.mean(hist_b[-n:])) if hist_b else None,
        "lm_seconds": time.perf_counter() - t0,
        "lm_chars": int(len(ids_f)),
    }


def predict(model: SequenceClassifier, seqs, batch_size: int = 256) -> np.ndarray:
    model.eval()
    pad = model.config["pad_id"] or 0
    order = np.argsort([len(s) for s in seqs], kind="stable")
    preds = np.empty(len(seqs), np.int64)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        ids, lengths = _pad(seqs, idx, pad)
        preds[idx] = model(ids, lengths).argmax(axis=1)
    model.train()
    return preds


def train_classifier(
    train_tsv,
    out_dir,
    cfg: ClassifierConfig,
    *,
    val_tsv=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the BiLSTM classifier and the Naive Bayes baseline on the same training split;
    report both accuracies on the validation split (``val_tsv``, or the held-out tail of a
    seeded shuffle of ``train_tsv``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels, texts = _data.read_tsv(train_tsv, cfg.max_rows)
    rng = np.random.default_rng(cfg.seed)
    if val_tsv is not None:
        vlabels, vtexts = _data.read_tsv(val_tsv)
    else:
        perm = rng.permutation(len(texts))
        n_val = int(round(len(texts) * cfg.val_fraction))
        vi, ti = perm[:n_val], perm[n_val:]
        vlabels, vtexts = labels[vi], [texts[i] for i in vi]
        labels, texts = labels[ti], [texts[i] for i in ti]
    C = int(max(labels.max(), vlabels.max() if len(vlabels) else 0)) + 1
    t0 = time.perf_counter()
    nb = NaiveBayes(char_n=cfg.nb_char_n, word_n=cfg.nb_word_n).fit(texts, labels)
    nb_acc = nb.accuracy(vtexts, vlabels) if len(vtexts) else None
    nb_seconds = time.perf_counter() - t0
    nb.save(out / NB_FILE)
    log(f"naive bayes: validation accuracy {nb_acc} ({nb_seconds:.1f} s)")

    vocab = _data.Vocab.build(texts, level=cfg.level, min_freq=cfg.min_freq, pad=True)
    seqs = _encode_all(vocab, texts, cfg.max_len)
    vseqs = _encode_all(vocab, vtexts, cfg.max_len)
    model = SequenceClassifier(
        len(vocab),
        C,
        cfg.embed_size,
        cfg.hidden_size,
        cfg.pool,
        cfg.dropout,
        vocab.pad_id,
        embed_dropout=cfg.embed_dropout,
        seed=cfg.seed,
    )
    lm = {}
    if cfg.lm_steps > 0:
        lm = pretrain_lm(
            model,
            seqs,
            cfg.lm_steps,
            seq_len=cfg.lm_seq_len,
            batch_size=cfg.lm_batch_size,
            lr=cfg.lr,
            clip=cfg.clip,
            seed=cfg.seed,
            progress=True,
            log=log,
        )
        bpc = f"forward {lm['lm_bpc_forward']:.3f}, backward {lm['lm_bpc_backward']:.3f}"
        log(
            f"lm pretraining: {lm['lm_steps_run']} steps, bits/char {bpc} "
            f"({lm['lm_seconds']:.0f} s)"
        )
    params = list(model.parameters())
    opt = make_optimizer("adam", params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = sum(1 for _ in range(0, len(seqs), cfg.batch_size))
    sched = CosineLR(opt, total_steps=cfg.epochs * n_batches, min_factor=cfg.min_lr_factor)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    history = []
    train_time, n_seen = 0.0, 0
    acc = best_acc = None
    best_state, best_epoch, stale = None, 0, 0
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(seqs))
        batches = _batches(seqs, order, cfg.batch_size)
        bperm = np.random.default_rng([cfg.seed, epoch, 1]).permutation(len(batches))
        it = (batches[i] for i in bperm)
        bar = None
        if progress and tqdm is not None:
            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}", dynamic_ncols=True)
        losses = []
        for idx in it:
            t = time.perf_counter()
            ids, lengths = _pad(seqs, idx, vocab.pad_id)
            model.zero_grad()
            logits = model(ids, lengths)
            loss, g = softmax_cross_entropy(logits, labels[idx])
            model.backward(g)
            if cfg.clip:
                clip_grad_norm(params, cfg.clip)
            opt.step()
            sched.step()
            train_time += time.perf_counter() - t
            n_seen += len(idx)
            losses.append(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        acc = float((predict(model, vseqs) == vlabels).mean()) if len(vseqs) else None
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_accuracy": acc})
        log(
            f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, validation accuracy {acc}, "
            f"lr {opt.lr:.2e}"
        )
        if acc is None or best_acc is None or acc > best_acc:
            best_acc, best_epoch, stale = acc, epoch + 1, 0
            best_state = model.state_dict()
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                log(f"early stop: no improvement for {stale} epochs (best epoch {best_epoch})")
                break
    model.load_state_dict(best_state)
    meta = {
        "kind": "classifier",
        "config": dataclasses.asdict(cfg),
        "model": model.config,
        "vocab": vocab.to_dict(),
        "history": history,
        "best_epoch": best_epoch,
    }
    save_npz(out / CHECKPOINT, {f"param/{k}": v for k, v in model.state_dict().items()}, meta)
    return {
        "accuracy": best_acc,
        "nb_accuracy": nb_acc,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_examples": len(texts),
        "val_examples": len(vtexts),
        "examples_per_s": n_seen / train_time if train_time else None,
        "train_seconds": train_time,
        **lm,
    }


def load_classifier(path):
    """``(model, vocab, naive_bayes or None, meta)`` from a run directory."""
    p = Path(path)
    ck = p / CHECKPOINT
    arrays, meta = load_npz(ck)
    if meta.get("kind") != "classifier":
        raise CheckpointError(f"{ck}: expected a classifier checkpoint, got {meta.get('kind')!r}")
    with interpreting(ck, "__meta__ of a classifier checkpoint"):
        mc = meta["model"]
        model = SequenceClassifier(
            mc["vocab_size"],
            mc["num_classes"],
            mc["embed_size"],
            mc["hidden_size"],
            mc["pool"],
            mc["dropout"],
            mc["pad_id"],
            embed_dropout=mc.get("embed_dropout", 0.0),
        )
        vocab = _data.Vocab.from_dict(meta["vocab"])
        max_len = meta["config"]["max_len"]
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"config.max_len: expected an int >= 1, got {max_len!r}")
        if len(vocab) != model.config["vocab_size"]:
            raise ValueError(
                f"vocab: expected {model.config['vocab_size']} tokens (the model's vocab_size), "
                f"got {len(vocab)}"
            )
    restore_module(ck, model, arrays)
    nb = NaiveBayes.load(p / NB_FILE) if (p / NB_FILE).exists() else None
    return model, vocab, nb, meta


def evaluate_classifier(path, tsv) -> dict:
    model, vocab, nb, meta = load_classifier(path)
    labels, texts = _data.read_tsv(tsv)
    seqs = _encode_all(vocab, texts, meta["config"]["max_len"])
    t = time.perf_counter()
    acc = float((predict(model, seqs) == labels).mean())
    dt = time.perf_counter() - t
    return {
        "accuracy": acc,
        "nb_accuracy": nb.accuracy(texts, labels) if nb is not None else None,
        "examples": len(texts),
        "examples_per_s": len(texts) / dt if dt else None,
    }
