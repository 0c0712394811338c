"""Sequence classifier: embedding -> BiLSTM -> pooling (mean, max or last state) -> linear, and
its training loop on ``label<TAB>text`` files."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import data as _data
from ..module import Module
from ..nn import LSTM, Dropout, Embedding, Linear, softmax_cross_entropy
from ..optim import clip_grad_norm, make_optimizer
from .checkpoint import load_npz, save_npz
from .naive_bayes import NaiveBayes

__all__ = ["SequenceClassifier", "ClassifierConfig", "train_classifier", "load_classifier"]

CHECKPOINT = "classifier.npz"
NB_FILE = "naive_bayes.npz"


def _reverse_index(lengths: np.ndarray, T: int) -> np.ndarray:
    """(T, B) time index that reverses each sequence within its length (pads stay in place).
    It is its own inverse."""
    t = np.arange(T)[:, None]
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


class SequenceClassifier(Module):
    r"""Embedding (V, E) -> bidirectional LSTM (H per direction) -> pooling over the valid steps
    -> dropout -> Linear (2H -> C).

    The two directions are single-layer :class:`~lstm_fast.LSTM` modules (``rnn_fwd``,
    ``rnn_bwd``); the reverse one reads each sequence reversed *within its length*, so padding
    (at the end) never reaches a valid step in either direction.

    Inputs: ``ids`` (T, B) int, padded with ``pad_id``; ``lengths`` (B,) >= 1.
    Output: logits (B, C).

    Args:
        pool: ``"mean"`` or ``"max"`` over valid steps, or ``"last"`` (the forward direction's
            state at the last valid step with the reverse direction's at step 0).
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
        seed: int = 0,
    ):
        super().__init__()
        if pool not in ("mean", "max", "last"):
            raise ValueError(f"pool: expected 'mean', 'max' or 'last', got {pool!r}")
        self.config = dict(
            vocab_size=int(vocab_size),
            num_classes=int(num_classes),
            embed_size=int(embed_size),
            hidden_size=int(hidden_size),
            pool=pool,
            dropout=float(dropout),
            pad_id=pad_id,
        )
        self.embedding = Embedding(vocab_size, embed_size, padding_idx=pad_id, seed=seed)
        self.rnn_fwd = LSTM(embed_size, hidden_size, seed=seed + 1)
        self.rnn_bwd = LSTM(embed_size, hidden_size, seed=seed + 2)
        self.drop = Dropout(dropout, seed=seed + 3)
        self.head = Linear(2 * hidden_size, num_classes, seed=seed + 4)
        self._cache = None

    def forward(self, ids, lengths):
        ids = np.asarray(ids)
        lengths = np.asarray(lengths, dtype=np.int64)
        T, B = ids.shape
        H = self.config["hidden_size"]
        cols = np.arange(B)[None, :]
        rev = _reverse_index(lengths, T)
        e = self.embedding(ids)
        yf, _ = self.rnn_fwd(e)
        yb_r, _ = self.rnn_bwd(np.ascontiguousarray(e[rev, cols]))
        yb = yb_r[rev, cols]
        y = np.concatenate([yf, yb], axis=2)  # (T, B, 2H)
        mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.float32)  # (T, B)
        pool = self.config["pool"]
        arg = None
        if pool == "mean":
            feats = (y * mask[:, :, None]).sum(0) / lengths[:, None].astype(np.float32)
        elif pool == "max":
            ym = np.where(mask[:, :, None] > 0, y, -np.inf)
            arg = ym.argmax(axis=0)  # (B, 2H)
            feats = np.take_along_axis(y, arg[None], axis=0)[0]
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
        if pool == "mean":
            dy += (dfeat / lengths[:, None].astype(np.float32))[None] * mask[:, :, None]
        elif pool == "max":
            np.put_along_axis(dy, arg[None], dfeat[None], axis=0)
        else:
            dy[lengths - 1, b, :H] = dfeat[:, :H]
            dy[0, b, H:] = dfeat[:, H:]
        cols = b[None, :]
        dxf, _ = self.rnn_fwd.backward(np.ascontiguousarray(dy[:, :, :H]))
        dxb_r, _ = self.rnn_bwd.backward(np.ascontiguousarray(dy[:, :, H:][rev, cols]))
        self.embedding.backward(dxf + dxb_r[rev, cols])


@dataclasses.dataclass
class ClassifierConfig:
    embed_size: int = 64
    hidden_size: int = 128
    pool: str = "mean"
    dropout: float = 0.2
    level: str = "char"
    min_freq: int = 2
    max_len: int = 150
    batch_size: int = 64
    epochs: int = 3
    lr: float = 2e-3
    clip: float = 5.0
    seed: int = 0
    val_fraction: float = 0.1
    max_rows: Optional[int] = None
    nb_char_n: int = 3
    nb_word_n: int = 1


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
        seed=cfg.seed,
    )
    params = list(model.parameters())
    opt = make_optimizer("adam", params, lr=cfg.lr)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    history = []
    train_time, n_seen = 0.0, 0
    acc = None
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
        log(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, validation accuracy {acc}")
    meta = {
        "kind": "classifier",
        "config": dataclasses.asdict(cfg),
        "model": model.config,
        "vocab": vocab.to_dict(),
        "history": history,
    }
    save_npz(out / CHECKPOINT, {f"param/{k}": v for k, v in model.state_dict().items()}, meta)
    return {
        "accuracy": acc,
        "nb_accuracy": nb_acc,
        "train_examples": len(texts),
        "val_examples": len(vtexts),
        "examples_per_s": n_seen / train_time if train_time else None,
        "train_seconds": train_time,
    }


def load_classifier(path):
    """``(model, vocab, naive_bayes or None, meta)`` from a run directory."""
    p = Path(path)
    arrays, meta = load_npz(p / CHECKPOINT)
    if meta.get("kind") != "classifier":
        raise ValueError(f"{p}: expected a classifier checkpoint, got {meta.get('kind')!r}")
    mc = meta["model"]
    model = SequenceClassifier(
        mc["vocab_size"],
        mc["num_classes"],
        mc["embed_size"],
        mc["hidden_size"],
        mc["pool"],
        mc["dropout"],
        mc["pad_id"],
    )
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
    vocab = _data.Vocab.from_dict(meta["vocab"])
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
