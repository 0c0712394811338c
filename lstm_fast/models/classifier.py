"""Sequence classifier: embedding -> BiLSTM -> pooling (mean, max or last state) -> linear, and
its training loop on ``label<TAB>text`` files."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import data as _data
from ..module import Module
from ..nn import LSTM, Dropout, Embedding, Linear, log_softmax, softmax_cross_entropy
from ..optim import CosineLR, clip_grad_norm, make_optimizer
from ._args import check_bool, check_choice, check_float, check_int
from .checkpoint import (
    CheckpointError,
    check_arrays,
    check_run_dir,
    interpreting,
    load_npz,
    restore_module,
    save_npz,
)
from .naive_bayes import NaiveBayes

__all__ = [
    "SequenceClassifier",
    "ClassifierEnsemble",
    "ClassifierConfig",
    "train_classifier",
    "load_classifier",
]

CHECKPOINT = "classifier.npz"
POOLS = ("mean", "max", "meanmax", "last")
NB_FILE = "naive_bayes.npz"
MEMBER_SEED_STRIDE = 1000  # ensemble member k is seeded with seed + k * MEMBER_SEED_STRIDE


def _member_prefix(k: int) -> str:
    """Checkpoint key prefix of ensemble member k (member 0 is stored as a single model is)."""
    return "param/" if k == 0 else f"member{k}/"


def _reverse_index(lengths: np.ndarray, T: int) -> np.ndarray:
    """(T, B) time index that reverses each sequence within its length (pads stay in place).
    It is its own inverse."""
    t = np.arange(T)[:, None]
    L = lengths[None, :]
    return np.where(t < L, L - 1 - t, t)


class SequenceClassifier(Module):
    r"""Embedding (V, E) [+ bigram embedding (V2, E)] -> dropout -> bidirectional LSTM (H per
    direction) -> pooling over the valid steps -> dropout -> Linear (2H, or 4H for ``"meanmax"``,
    -> C).

    The two directions are single-layer :class:`~lstm_fast.LSTM` modules (``rnn_fwd``,
    ``rnn_bwd``); the reverse one reads each sequence reversed *within its length*, so padding
    (at the end) never reaches a valid step in either direction.

    With ``bigram_vocab_size > 0`` the LSTM input at step t is the sum of the token's embedding
    and the embedding of the character bigram starting at t (``bigram_ids``, the same layout,
    padded with ``bigram_pad_id``): character + character-bigram features, which suit Korean text.

    Inputs: ``ids`` (T, B) int, padded with ``pad_id``; ``lengths`` (B,) >= 1; ``bigram_ids``
    (T, B) int when the model has a bigram embedding, or (T, B, K) for K features per step (their
    embeddings are summed; :func:`train_classifier` uses K = 2 for bigram + whitespace word).
    Output: logits (B, C).

    Args:
        vocab_size: V, the token ids' range.
        num_classes: C, the number of classes.
        embed_size: E (default 64).
        hidden_size: H per direction (default 128).
        pool: ``"mean"`` (default) or ``"max"`` over valid steps, ``"meanmax"`` (both,
            concatenated), or ``"last"`` (the forward direction's state at the last valid step
            with the reverse direction's at step 0).
        dropout: on the pooled features (default 0).
        pad_id: the embedding's padding row (zeros, no gradient), or None (default).
        embed_dropout: (keyword only) on the embeddings, the LSTM input (default 0).
        bigram_vocab_size: (keyword only) V2, rows of the bigram embedding (default 0: none).
        bigram_pad_id: (keyword only) its padding row (zeros, no gradient), or None (default).
        seed: (keyword only) seed of the initialisation and dropout masks, an int >= 0
            (default 0).

    ``backward(dlogits)`` takes the logits' gradient (B, C) and accumulates every parameter's.

    Attributes:
        embedding.weight: (V, E).  bigram_embedding.weight: (V2, E) (``bigram_embedding`` is
            None without bigrams).
        rnn_fwd, rnn_bwd: :class:`~lstm_fast.LSTM` (E -> H).  head.weight: (C, 2H or 4H).
        config: the constructor's arguments but the seed, a dict (saved in checkpoints).

    Raises ``ValueError`` naming the argument for a size out of range, an unknown ``pool`` or a
    dropout outside [0, 1]; the forward raises ``ValueError`` / ``TypeError`` for ids that are
    not (T, B), lengths not (B,) integers in [1, T], or ``bigram_ids`` missing, unexpected or of
    another shape.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.models import SequenceClassifier
        >>> m = SequenceClassifier(vocab_size=10, num_classes=3, embed_size=4, hidden_size=5,
        ...                        pad_id=1, seed=0)
        >>> ids = np.array([[2, 3], [4, 1], [5, 1]])  # (T=3, B=2); the second text is 1 long
        >>> logits = m(ids, [3, 1])
        >>> logits.shape
        (2, 3)
        >>> m.backward(np.ones_like(logits))
        >>> m.head.weight.grad.shape, m.embedding.weight.grad[1].tolist()  # no pad gradient
        ((3, 10), [0.0, 0.0, 0.0, 0.0])
    """

    # (copies and pickles leave the saved forward out: their sub-layers keep none)
    _saved_forward = {"_cache": None}

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
        bigram_vocab_size: int = 0,
        bigram_pad_id: Optional[int] = None,
        seed: int = 0,
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
        # checked here, so the errors name these arguments (not the layers' input_size, p, ...)
        for name, v, lo in (
            ("vocab_size", vocab_size, 1),
            ("num_classes", num_classes, 1),
            ("embed_size", embed_size, 1),
            ("hidden_size", hidden_size, 1),
            ("bigram_vocab_size", bigram_vocab_size, 0),
            ("seed", seed, 0),
        ):
            check_int(name, v, lo)
        check_float("dropout", dropout, 0.0, 1.0)
        check_float("embed_dropout", embed_dropout, 0.0, 1.0)
        self.config = dict(
            vocab_size=int(vocab_size),
            num_classes=int(num_classes),
            embed_size=int(embed_size),
            hidden_size=int(hidden_size),
            pool=pool,
            dropout=float(dropout),
            pad_id=pad_id,
            embed_dropout=float(embed_dropout),
            bigram_vocab_size=int(bigram_vocab_size),
            bigram_pad_id=bigram_pad_id,
        )
        self.embedding = Embedding(vocab_size, embed_size, padding_idx=pad_id, seed=seed)
        self.bigram_embedding = None
        if bigram_vocab_size > 0:
            self.bigram_embedding = Embedding(
                bigram_vocab_size, embed_size, padding_idx=bigram_pad_id, seed=seed + 6
            )
        self.rnn_fwd = LSTM(embed_size, hidden_size, seed=seed + 1)
        self.rnn_bwd = LSTM(embed_size, hidden_size, seed=seed + 2)
        self.drop = Dropout(dropout, seed=seed + 3)
        feat = (4 if pool == "meanmax" else 2) * hidden_size
        self.head = Linear(feat, num_classes, seed=seed + 4)
        self.edrop = Dropout(embed_dropout, seed=seed + 5)
        self._cache = None

    def forward(self, ids, lengths, bigram_ids=None):
        """Logits (B, C) of the padded token ``ids`` (T, B) with valid ``lengths`` (B,), and
        ``bigram_ids`` (T, B) or (T, B, K) when the model has a bigram embedding (default None).
        In training mode what :meth:`backward` needs is kept."""
        self._cache = None  # a failed call leaves nothing for backward
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids: expected shape (T, B), got {ids.shape}")
        T, B = ids.shape
        lens = np.asarray(lengths)
        if lens.dtype.kind not in "iu" and not (lens.size == 0 and lens.dtype.kind == "f"):
            raise TypeError(f"lengths: expected integers, got dtype {lens.dtype}")
        if lens.shape != (B,):
            raise ValueError(f"lengths: expected shape (B={B},), got {lens.shape}")
        if B and (lens.min() < 1 or lens.max() > T):
            raise ValueError(f"lengths: expected values in [1, T={T}], got {lens.tolist()}")
        lengths = lens.astype(np.int64)
        H = self.config["hidden_size"]
        cols = np.arange(B)[None, :]
        rev = _reverse_index(lengths, T)
        if (self.bigram_embedding is None) != (bigram_ids is None):
            want = "bigram_ids" if bigram_ids is None else "no bigram_ids"
            raise ValueError(
                f"bigram_ids: expected {want} (bigram_vocab_size="
                f"{self.config['bigram_vocab_size']})"
            )
        e = self.embedding(ids)
        if self.bigram_embedding is not None:
            bigram_ids = np.asarray(bigram_ids)
            if bigram_ids.shape[:2] != ids.shape or bigram_ids.ndim > 3:
                raise ValueError(
                    f"bigram_ids: expected shape {ids.shape} (that of ids) or "
                    f"{ids.shape + ('K',)}, got {bigram_ids.shape}"
                )
            eb = self.bigram_embedding(bigram_ids)
            e = e + (eb.sum(axis=2) if bigram_ids.ndim == 3 else eb)
            self._bigram_shape = bigram_ids.shape
        e = self.edrop(e)
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
        logits = self.head(self.drop(feats))
        self._cache = (T, B, H, lengths, rev, mask, arg) if self.training else None
        return logits

    def backward(self, dlogits) -> None:
        """Accumulate every parameter's gradient for ``dlogits`` (B, C), the gradient of the
        last training-mode forward's logits. May be called more than once for the same
        forward: each call adds again, as its layers' backward (PyTorch's
        ``retain_graph=True``). Raises ``RuntimeError`` without one."""
        if self._cache is None:
            raise RuntimeError(
                "SequenceClassifier.backward: no saved forward (call it in training mode)"
            )
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
        de = self.edrop.backward(dxf + dxb_r[rev, cols])
        self.embedding.backward(de)
        if self.bigram_embedding is not None:
            shape = self._bigram_shape
            self.bigram_embedding.backward(
                de if len(shape) == 2 else np.repeat(de[:, :, None], shape[2], 2)
            )


class ClassifierEnsemble:
    r"""K classifiers that vote by averaging their class probabilities.

    .. math::
        \log \bar p(c \mid x) = \log \frac{1}{K} \sum_{k=1}^{K} \mathrm{softmax}(f_k(x))_c

    Called like a :class:`SequenceClassifier` (inference only; no ``backward``), it returns the
    log of the averaged probabilities (B, C), so ``argmax`` gives the ensemble's prediction.

    Args:
        members: the K >= 1 :class:`SequenceClassifier` models (same vocabulary and classes).

    Attributes:
        members: list of the models.  config: the first member's ``config``.

    Raises ``ValueError`` for no member, or members whose vocabulary size or class count differ
    from the first's.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.models import ClassifierEnsemble, SequenceClassifier
        >>> a = SequenceClassifier(9, 2, 4, 5, pad_id=1, seed=0)
        >>> b = SequenceClassifier(9, 2, 4, 5, pad_id=1, seed=1000)
        >>> ClassifierEnsemble([a, b])(np.zeros((3, 2), np.int64), [3, 1]).shape
        (2, 2)
    """

    def __init__(self, members: Sequence[SequenceClassifier]):
        members = list(members)
        if not members:
            raise ValueError("members: expected at least 1 classifier, got 0")
        want = (members[0].config["vocab_size"], members[0].config["num_classes"])
        for k, m in enumerate(members):
            got = (m.config["vocab_size"], m.config["num_classes"])
            if got != want:
                raise ValueError(
                    f"members[{k}]: expected (vocab_size, num_classes) = {want} like "
                    f"members[0], got {got}"
                )
        self.members = members
        self.config = members[0].config

    def __len__(self) -> int:
        return len(self.members)

    def __call__(self, ids, lengths, bigram_ids=None) -> np.ndarray:
        probs = [np.exp(log_softmax(m(ids, lengths, bigram_ids), axis=1)) for m in self.members]
        with np.errstate(divide="ignore"):
            return np.log(np.mean(probs, axis=0))

    def eval(self) -> ClassifierEnsemble:
        """Put every member in eval mode (no dropout); returns the ensemble."""
        for m in self.members:
            m.eval()
        return self

    def train(self, mode: bool = True) -> ClassifierEnsemble:
        """``member.train(mode)`` for every member (``mode=False``: eval); returns the
        ensemble."""
        for m in self.members:
            m.train(mode)
        return self


@dataclasses.dataclass
class ClassifierConfig:
    """Hyper-parameters of :func:`train_classifier` (the CLI's defaults).

    With ``lm_steps > 0``, the embedding and both LSTM directions are first pretrained as a
    forward and a backward character language model on the training texts (no labels;
    :func:`pretrain_lm`), then the whole classifier is fine-tuned. ``lm_corpus`` (a text file or
    a directory of them) adds unlabelled text to that stream, one text per non-blank line,
    encoded with the classifier's character vocabulary (characters it lacks become unknown);
    pretraining stops after ``lm_steps`` steps or ``lm_max_epochs`` passes over the stream.
    Training runs up to ``epochs`` epochs of Adam with a cosine learning-rate decay (to
    ``lr * min_lr_factor`` at the last epoch) and stops early when the validation accuracy has not
    improved for ``patience`` epochs; the weights saved are those of the best validation epoch.

    With ``bigrams`` (``level="char"`` only: the default, None, means on for ``"char"`` and off
    for ``"word"``; ``True`` with ``"word"`` is refused), each character's embedding is summed
    with that of the character bigram starting at it (bigrams seen ``bigram_min_freq`` times in
    training; the rest share the unknown row); with ``words`` too (which needs ``bigrams``), also
    with that of the whitespace word it belongs to (one shared feature table). ``bigram_dropout``
    replaces that fraction of the known bigrams by the unknown one in each training batch, so the
    model does not lean on bigrams it will often not know at test time. With ``ema > 0``, an
    exponential moving average of the weights (decay ``ema``, warmed up as
    ``min(ema, (1 + n) / (10 + n))`` after n steps) is what is validated and saved.

    With ``ensemble = K > 1``, K classifiers are trained one after the other on the same split
    and vocabularies, member k seeded with ``seed + 1000 k`` (initial weights, batch order,
    dropout; member 0 is the single model), each early-stopped on the validation split on its
    own; predictions average their probabilities (:class:`ClassifierEnsemble`).

    ``val_fraction`` is the share of the training file held out for validation (a seeded
    shuffle) when no validation file is given; 0 trains on every row for exactly ``epochs``
    epochs and keeps the last weights (choose ``epochs`` on a validation run first).

    The defaults were chosen on the validation split of NSMC's training file (docs/RESULTS.md).

    Args:
        embed_size, hidden_size, pool, dropout, embed_dropout: the
            :class:`SequenceClassifier`'s (defaults 64, 128, ``"mean"``, 0.5, 0.2).
        level: ``"char"`` (default) or ``"word"`` tokens.
        min_freq: tokens seen fewer times in training are unknown (default 2).
        bigrams: character-bigram features (default None: on for ``"char"``).
        bigram_min_freq: (default 2).  words: whitespace-word features (default False).
        bigram_dropout: (default 0.3).  ema: the weight average's decay, in [0, 1) (default
            0.999; 0: off).
        max_len: texts are cut to this many tokens (default 150).
        batch_size: (default 64).  epochs: (default 10).  patience: early-stopping epochs
            (default 3; 0: never stop early).
        lr: Adam's learning rate (default 2e-3).  min_lr_factor: the final rate's share of
            ``lr`` (default 0.05).  weight_decay: Adam's L2 penalty (default 0).
        clip: the gradient-norm clip (default 5.0; 0: off).  seed: (default 0).
        val_fraction: in [0, 1) (default 0.1).  max_rows: read at most this many training
            rows (default None: all).
        nb_char_n, nb_word_n: the Naive Bayes baseline's n-gram lengths (defaults 3, 1).
        lm_steps: LM pretraining steps (default 0: none).  lm_seq_len, lm_batch_size: its
            windows (defaults 100, 32).  lm_corpus: extra unlabelled text (default None).
            lm_max_epochs: (default 3). ``lm_corpus`` without ``lm_steps`` is refused.
        ensemble: K, the members trained (default 1).

    Example::

        >>> from lstm_fast.models import ClassifierConfig
        >>> ClassifierConfig().bigrams, ClassifierConfig(level="word").bigrams
        (True, False)
        >>> try:
        ...     ClassifierConfig(level="word", bigrams=True)
        ... except ValueError as e:
        ...     print(e)
        bigrams: expected level 'char' (character bigrams), got level 'word'
    """

    embed_size: int = 64
    hidden_size: int = 128
    pool: str = "mean"
    dropout: float = 0.5
    embed_dropout: float = 0.2
    level: str = "char"
    min_freq: int = 2
    bigrams: Optional[bool] = None  # None: level == "char"
    bigram_min_freq: int = 2
    words: bool = False
    bigram_dropout: float = 0.3
    ema: float = 0.999
    max_len: int = 150
    batch_size: int = 64
    epochs: int = 10
    patience: int = 3
    lr: float = 2e-3
    min_lr_factor: float = 0.05
    weight_decay: float = 0.0
    clip: float = 5.0
    seed: int = 0
    val_fraction: float = 0.1
    max_rows: Optional[int] = None
    nb_char_n: int = 3
    nb_word_n: int = 1
    lm_steps: int = 0
    lm_seq_len: int = 100
    lm_batch_size: int = 32
    lm_corpus: Optional[str] = None
    lm_max_epochs: int = 3
    ensemble: int = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field with a bad value (every field is checked
        when the config is made, and again by :func:`train_classifier` before any work)."""
        for name, lo in (
            ("embed_size", 1),
            ("hidden_size", 1),
            ("max_len", 1),
            ("batch_size", 1),
            ("epochs", 1),
            ("patience", 0),
            ("min_freq", 0),
            ("bigram_min_freq", 0),
            ("seed", 0),
            ("nb_char_n", 0),
            ("nb_word_n", 0),
            ("lm_steps", 0),
            ("lm_seq_len", 1),
            ("lm_batch_size", 1),
            ("lm_max_epochs", 1),
            ("ensemble", 1),
        ):
            setattr(self, name, check_int(name, getattr(self, name), lo))
        self.max_rows = check_int("max_rows", self.max_rows, 0, optional=True)
        check_choice("pool", self.pool, POOLS)
        check_choice("level", self.level, ("char", "word"))
        for name in ("dropout", "embed_dropout", "bigram_dropout", "min_lr_factor"):
            setattr(self, name, check_float(name, getattr(self, name), 0.0, 1.0))
        # a negative EMA decay would average the weights into garbage, silently
        self.ema = check_float("ema", self.ema, 0.0, 1.0, hi_open=True)
        self.lr = check_float("lr", self.lr, 0.0)
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        self.clip = check_float("clip", self.clip, 0.0, finite=False)  # 0: off
        v = self.val_fraction
        real = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        if not real or not 0.0 <= v < 1.0:
            raise ValueError(f"val_fraction: expected 0 <= val_fraction < 1, got {v!r}")
        self.val_fraction = float(v)
        if self.lm_corpus is not None:
            if not isinstance(self.lm_corpus, (str, os.PathLike)):
                raise ValueError(
                    f"lm_corpus: expected None or a path, got {type(self.lm_corpus).__name__}"
                )
            self.lm_corpus = os.fspath(self.lm_corpus)
            if not self.lm_corpus:  # Path("") is ".": the working directory was the corpus
                raise ValueError("lm_corpus: expected None or a path, got an empty one ('')")
            if not self.lm_steps:  # nothing read it: `--lm-corpus F` alone was ignored silently
                raise ValueError(
                    "lm_corpus: expected lm_steps > 0 (the pretraining that reads it), "
                    "got lm_steps=0"
                )
        # bigrams are character bigrams: a word-level run never worked with them (it failed
        # after the Naive Bayes baseline was trained and saved); unset means "with char level"
        if self.bigrams is None:
            self.bigrams = self.level == "char"
        check_bool("bigrams", self.bigrams)
        self.bigrams = bool(self.bigrams)
        if self.bigrams and self.level != "char":
            raise ValueError(
                f"bigrams: expected level 'char' (character bigrams), got level {self.level!r}"
            )
        check_bool("words", self.words)
        self.words = bool(self.words)
        if self.words and not self.bigrams:  # was silently ignored
            raise ValueError(
                "words: expected bigrams on (the word feature shares the bigram embedding), "
                "got bigrams off"
            )


BIGRAM_END = "\x03"  # second character of the bigram at a text's last character


WORD_MARK = "\x02"  # prefix of whitespace-word features (bigrams have two characters)


def _bigrams(text: str) -> list:
    """The character bigram starting at each character (the last one ends with BIGRAM_END)."""
    return [text[i : i + 2] for i in range(len(text) - 1)] + [text[-1:] + BIGRAM_END] * bool(text)


def _words_of_chars(text: str) -> list:
    """WORD_MARK + the whitespace word each character belongs to ("<pad>" for whitespace)."""
    out = []
    for w in re.findall(r"\S+|\s+", text):
        out += [("<pad>" if w.isspace() else WORD_MARK + w)] * len(w)
    return out


def build_bigram_vocab(texts: Sequence[str], min_freq: int = 2, words: bool = False) -> _data.Vocab:
    """A word-level :class:`~lstm_fast.data.Vocab` of the character bigrams of ``texts`` (and
    with ``words``, their whitespace words, marked with a ``"\\x02"`` prefix) seen at least
    ``min_freq`` times (default 2), by descending frequency, with an unknown token (id 0) and a
    pad token (id 1). The bigram at a text's last character ends with ``"\\x03"``."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(_bigrams(t))
        if words:
            counts.update(WORD_MARK + w for w in t.split())
    toks = sorted(
        ((b, n) for b, n in counts.items() if n >= min_freq), key=lambda kv: (-kv[1], kv[0])
    )
    return _data.Vocab([b for b, _ in toks], level="word", pad=True)


def _encode_all(vocab, texts: Sequence[str], max_len: int):
    seqs = [vocab.encode(t)[:max_len] for t in texts]
    seqs = [s if len(s) else np.zeros(1, np.int32) for s in seqs]  # empty text -> one unk
    return seqs


def _encode_bigrams(bvocab, texts: Sequence[str], max_len: int, words: bool = False):
    """Bigram ids (L,) aligned with the character ids of :func:`_encode_all` (a char-level
    vocab); with ``words``, (L, 2): each character's bigram and whitespace word."""
    get = bvocab.stoi.get
    out = []
    for t in texts:
        t = t[:max_len]
        s = np.array([get(b, 0) for b in _bigrams(t)], dtype=np.int32)
        if words:
            w = np.array([get(x, 0) for x in _words_of_chars(t)], dtype=np.int32)
            s = np.stack([s, w], axis=1).reshape(len(t), 2)
        out.append(s if len(s) else np.zeros((1,) + s.shape[1:], np.int32))
    return out


def _pad(seqs, idx, pad_id):
    lengths = np.array([len(seqs[i]) for i in idx], dtype=np.int64)
    T = int(lengths.max())
    out = np.full((T, len(idx)) + seqs[idx[0]].shape[1:], pad_id, dtype=np.int64)
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
    the previous character, as it reads in the classifier.

    Args:
        model: the :class:`SequenceClassifier` (its embedding and both LSTMs are trained).
        seqs: token id sequences (1-D int arrays).
        steps: the most steps.
        seq_len: (keyword only) the window length (default 100; shortened for a small stream).
        batch_size: (keyword only) the streams (default 32; fewer for a small stream).
        lr: (keyword only) Adam's rate, decayed by a cosine to a tenth (default 2e-3).
        clip: (keyword only) the gradient-norm clip (default 5.0; 0: off).
        max_epochs: (keyword only) the most passes over the stream (default 3).
        seed: (keyword only) the order and the decoders' initialisation (default 0).
        progress: (keyword only) log the losses every 50 steps (default False).
        log: (keyword only) where messages go (default ``print``).

    Returns:
        ``{"lm_steps_run", "lm_bpc_forward", "lm_bpc_backward", "lm_seconds", "lm_chars"}``:
        the bits/char are the means of the last <= 50 steps (None if no step ran).
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


def predict_log_proba(model, seqs, bseqs=None, batch_size: int = 256) -> np.ndarray:
    """Log class probabilities (N, C), float64, of N token sequences ``seqs`` (1-D int arrays;
    and their bigram ids ``bseqs`` when the model has a bigram embedding, default None), for a
    :class:`SequenceClassifier` or a :class:`ClassifierEnsemble` ``model``, in eval mode (the
    model's own mode is restored afterwards), ``batch_size`` sequences of similar length at a
    time (default 256). Raises ``ValueError`` for an empty sequence, ``bseqs`` of another
    length or a ``batch_size`` < 1, before any batch runs."""
    # (batch_size=-1 returned np.empty's garbage as the probabilities, 0 a range() error; an
    # empty sequence failed as "lengths" in the middle of the batches)
    check_int("batch_size", batch_size, 1)
    lens = [len(s) for s in seqs]
    if 0 in lens:
        raise ValueError(
            f"seqs: expected sequences of at least 1 token, got an empty one at {lens.index(0)}"
        )
    if bseqs is not None and len(bseqs) != len(seqs):
        raise ValueError(f"bseqs: expected {len(seqs)} sequences (one per seqs), got {len(bseqs)}")
    members = model.members if isinstance(model, ClassifierEnsemble) else [model]
    modes = [m.training for m in members]  # restored afterwards: a served model stays in eval
    model.eval()
    try:
        pad = model.config["pad_id"] or 0
        bpad = model.config.get("bigram_pad_id") or 0
        order = np.argsort(lens, kind="stable")
        out = np.empty((len(seqs), model.config["num_classes"]), np.float64)
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            ids, lengths = _pad(seqs, idx, pad)
            bids = _pad(bseqs, idx, bpad)[0] if bseqs is not None else None
            out[idx] = log_softmax(np.asarray(model(ids, lengths, bids), np.float64), axis=1)
    finally:
        for m, mode in zip(members, modes):
            m.train(mode)
    return out


def predict(model, seqs, bseqs=None, batch_size: int = 256) -> np.ndarray:
    """Class ids (N,): the argmax of :func:`predict_log_proba` (same ``model``, ``seqs``,
    ``bseqs`` and ``batch_size``)."""
    return predict_log_proba(model, seqs, bseqs, batch_size).argmax(axis=1)


def train_classifier(
    train_tsv,
    out_dir,
    cfg: ClassifierConfig,
    *,
    val_tsv=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    r"""Train the BiLSTM classifier and the Naive Bayes baseline on the same training split;
    report both accuracies on the validation split (``val_tsv``, or the held-out part of a
    seeded shuffle of ``train_tsv``).

    The labels may be any integers: the model's classes are their sorted distinct values
    (``meta["classes"]``). ``out_dir`` receives ``classifier.npz`` (every member's weights,
    vocabularies, configuration, history) and ``naive_bayes.npz``, written only at the end,
    after every input has been read and checked.

    Args:
        train_tsv: the ``label<TAB>text`` training file (:func:`~lstm_fast.data.read_tsv`).
        out_dir: the run directory (created if needed).
        cfg: a :class:`ClassifierConfig`.
        val_tsv: (keyword only) a validation file (default None: hold out ``cfg.val_fraction``
            of the training rows).
        progress: (keyword only) tqdm progress bars, if tqdm is installed (default True).
        log: (keyword only) where messages go (default ``print``).

    Returns:
        A dict: ``accuracy`` (validation; the ensemble's with K > 1; None without validation
        rows), ``classes``, ``nb_accuracy``, ``best_epoch``, ``epochs_run``,
        ``train_examples``, ``val_examples``, ``examples_per_s``, ``train_seconds``, the LM
        pretraining's figures when it ran, and per-member figures with K > 1.

    Each file (``train_tsv``, ``val_tsv``, ``cfg.lm_corpus``) is read once, so any may be a
    pipe (a shell's ``<(zcat train.tsv.gz)``, a named FIFO), but not one pipe for two of them.

    Raises ``TypeError`` for a ``cfg`` that is not a ClassifierConfig, ``ValueError`` for a bad
    field, an empty file, no training row left or one pipe given for two inputs,
    ``FileNotFoundError`` for a missing file or ``lm_corpus``.

    Example::

        >>> import os, tempfile
        >>> from lstm_fast.models import ClassifierConfig, train_classifier
        >>> d = tempfile.mkdtemp()
        >>> tsv = os.path.join(d, "train.tsv")
        >>> with open(tsv, "w", encoding="utf-8") as f:
        ...     for i in range(40):
        ...         _ = f.write(f"{i % 2}\t{'good fun' if i % 2 else 'bad dull'} {i}\n")
        >>> cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, batch_size=8)
        >>> run = os.path.join(d, "run")
        >>> res = train_classifier(tsv, run, cfg, progress=False, log=lambda s: None)
        >>> res["classes"], res["train_examples"], res["val_examples"], res["epochs_run"]
        ([0, 1], 36, 4, 1)
    """
    if not isinstance(cfg, ClassifierConfig):
        raise TypeError(f"cfg: expected a ClassifierConfig, got {type(cfg).__name__}")
    cfg.validate()  # (a field may have been changed since the config was made)
    # a file there (mkdir raised FileExistsError) or in its path (the classifier trained every
    # epoch before mkdir failed): refused before any work; so is "" (before Path makes it ".")
    check_run_dir(out_dir)
    out = Path(out_dir)
    # every input is read before any work, and nothing is written until the end: a failed
    # retrain into an existing run directory left it half-replaced (a new naive_bayes.npz)
    # each input is read once, as it streams (a pipe: ``<(zcat train.tsv.gz)``); one pipe given
    # for two of them would leave the second reader nothing
    lm_corpus = cfg.lm_corpus if cfg.lm_steps > 0 else None
    _data._check_read_once(train_tsv=train_tsv, val_tsv=val_tsv, lm_corpus=lm_corpus)
    labels, texts = _data.read_tsv(train_tsv, cfg.max_rows)
    if not len(texts):
        raise ValueError(f"{train_tsv}: expected at least one 'label<TAB>text' row, got none")
    rng = np.random.default_rng(cfg.seed)
    if val_tsv is not None:
        vlabels, vtexts = _data.read_tsv(val_tsv)
        if not len(vtexts):  # trained without validation (and said "on every row") silently
            raise ValueError(f"{val_tsv}: expected at least one 'label<TAB>text' row, got none")
    else:
        perm = rng.permutation(len(texts))
        n_val = int(round(len(texts) * cfg.val_fraction))
        vi, ti = perm[:n_val], perm[n_val:]
        vlabels, vtexts = labels[vi], [texts[i] for i in vi]
        labels, texts = labels[ti], [texts[i] for i in ti]
        if not len(texts):
            raise ValueError(
                f"{train_tsv}: no training rows left after holding out val_fraction="
                f"{cfg.val_fraction} of {len(perm)}"
            )
    # Any integer labels (-1/1, 1..5, sparse codes): the model's classes are their sorted
    # distinct values, index c standing for classes[c] (saved as meta["classes"]); a head of
    # max(label) + 1 outputs would refuse negative labels and grow with the largest code.
    classes = np.unique(np.concatenate([labels, vlabels]))
    labels, vlabels = _class_index(classes, labels), _class_index(classes, vlabels)
    C = len(classes)
    lm_lines = None
    if cfg.lm_steps > 0 and cfg.lm_corpus is not None:
        try:
            lm_text = _data.load_corpus(cfg.lm_corpus)
        except FileNotFoundError as e:  # named "corpus", which the caller never passed
            raise FileNotFoundError(f"lm_corpus: {str(e).partition(': ')[2]}") from None
        lm_lines = [t for t in lm_text.splitlines() if t.strip()]
    t0 = time.perf_counter()
    nb = NaiveBayes(char_n=cfg.nb_char_n, word_n=cfg.nb_word_n).fit(texts, labels)
    nb_acc = nb.accuracy(vtexts, vlabels) if len(vtexts) else None
    nb_seconds = time.perf_counter() - t0
    log(f"naive bayes: validation accuracy {nb_acc} ({nb_seconds:.1f} s)")

    vocab = _data.Vocab.build(texts, level=cfg.level, min_freq=cfg.min_freq, pad=True)
    seqs = _encode_all(vocab, texts, cfg.max_len)
    vseqs = _encode_all(vocab, vtexts, cfg.max_len)
    bvocab = bseqs = vbseqs = None
    if cfg.bigrams:  # (level "char": checked by cfg.validate())
        bvocab = build_bigram_vocab(texts, cfg.bigram_min_freq, cfg.words)
        bseqs = _encode_bigrams(bvocab, texts, cfg.max_len, cfg.words)
        vbseqs = _encode_bigrams(bvocab, vtexts, cfg.max_len, cfg.words)
        log(f"vocabulary: {len(vocab)} characters, {len(bvocab)} bigrams")
    lm_seqs = seqs
    if lm_lines is not None:
        lm_seqs = seqs + [vocab.encode(t) for t in lm_lines]
        log(
            f"lm pretraining corpus: {len(seqs)} training texts + {len(lm_lines)} lines of "
            f"{cfg.lm_corpus}"
        )
    V2 = len(bvocab) if bvocab is not None else 0
    members, runs = [], []
    for k in range(cfg.ensemble):
        seed = cfg.seed + k * MEMBER_SEED_STRIDE
        if cfg.ensemble > 1:
            log(f"ensemble member {k + 1}/{cfg.ensemble} (seed {seed})")
        model = SequenceClassifier(
            len(vocab),
            C,
            cfg.embed_size,
            cfg.hidden_size,
            cfg.pool,
            cfg.dropout,
            vocab.pad_id,
            embed_dropout=cfg.embed_dropout,
            bigram_vocab_size=V2,
            bigram_pad_id=bvocab.pad_id if bvocab is not None else None,
            seed=seed,
        )
        run = _train_member(
            model, cfg, seed, labels, seqs, bseqs, vlabels, vseqs, vbseqs, vocab, bvocab,
            progress, log, lm_seqs,
        )  # fmt: skip
        members.append(model)
        runs.append(run)
    # the ensemble's validation accuracy with its first 1, 2, ..., K members
    prefix_acc = []
    if len(vseqs):
        logp = [predict_log_proba(m, vseqs, vbseqs) for m in members]
        mean_p = np.zeros_like(logp[0])
        for lp in logp:
            mean_p += np.exp(lp)
            prefix_acc.append(float((mean_p.argmax(axis=1) == vlabels).mean()))
        if cfg.ensemble > 1:
            log(f"ensemble validation accuracy with 1..{cfg.ensemble} members: {prefix_acc}")
    # (no validation rows, val_fraction=0: no prefix accuracies, and None as a single model's)
    acc = prefix_acc[-1] if prefix_acc and cfg.ensemble > 1 else runs[0]["accuracy"]
    meta = {
        "kind": "classifier",
        "config": dataclasses.asdict(cfg),
        "model": members[0].config,
        "classes": classes.tolist(),
        "vocab": vocab.to_dict(),
        "bigram_vocab": bvocab.to_dict() if bvocab is not None else None,
        "history": runs[0]["history"],
        "best_epoch": runs[0]["best_epoch"],
        "ensemble": cfg.ensemble,
        "members": [
            {"seed": r["seed"], "best_epoch": r["best_epoch"], "history": r["history"]}
            for r in runs
        ],
    }
    arrays = {}
    for k, m in enumerate(members):
        arrays.update({_member_prefix(k) + n: v for n, v in m.state_dict().items()})
    out.mkdir(parents=True, exist_ok=True)
    save_npz(out / CHECKPOINT, arrays, meta)
    nb.save(out / NB_FILE)
    train_time = sum(r["train_seconds"] for r in runs)
    n_seen = sum(r["n_seen"] for r in runs)
    res = {
        "accuracy": acc,
        "classes": classes.tolist(),
        "nb_accuracy": nb_acc,
        "best_epoch": runs[0]["best_epoch"],
        "epochs_run": len(runs[0]["history"]),
        "train_examples": len(texts),
        "val_examples": len(vtexts),
        "examples_per_s": n_seen / train_time if train_time else None,
        "train_seconds": train_time,
        **runs[0]["lm"],
    }
    if cfg.ensemble > 1:
        res.update(
            ensemble=cfg.ensemble,
            member_accuracies=[r["accuracy"] for r in runs],
            member_best_epochs=[r["best_epoch"] for r in runs],
            ensemble_prefix_accuracies=prefix_acc,
        )
    return res


def _class_index(classes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Index of each label in the sorted ``classes`` (int64), -1 for a label not among them
    (it then matches no prediction)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(classes):
        return np.full(labels.shape, -1, np.int64)
    pos = np.minimum(np.searchsorted(classes, labels), len(classes) - 1)
    return np.where(classes[pos] == labels, pos, -1).astype(np.int64)


def _train_member(
    model,
    cfg,
    seed,
    labels,
    seqs,
    bseqs,
    vlabels,
    vseqs,
    vbseqs,
    vocab,
    bvocab,
    progress,
    log,
    lm_seqs=None,
) -> dict:
    """Optionally LM-pretrain, then train ``model`` with Adam and a cosine schedule, validating
    (the EMA weights, if any) after each epoch; ``model`` ends holding the best epoch's weights.
    ``seed`` drives the batch order and bigram dropout. The LM pretraining reads ``lm_seqs``
    (default: the training texts ``seqs``)."""
    lm = {}
    if cfg.lm_steps > 0:
        lm = pretrain_lm(
            model,
            seqs if lm_seqs is None else lm_seqs,
            cfg.lm_steps,
            seq_len=cfg.lm_seq_len,
            batch_size=cfg.lm_batch_size,
            max_epochs=cfg.lm_max_epochs,
            lr=cfg.lr,
            clip=cfg.clip,
            seed=seed,
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
    brng = np.random.default_rng([seed, 3])
    ema = [p.data.copy() for p in params] if cfg.ema else None
    n_steps = 0
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(seqs))
        batches = _batches(seqs, order, cfg.batch_size)
        bperm = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
        it = (batches[i] for i in bperm)
        bar = None
        if progress and tqdm is not None:
            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}", dynamic_ncols=True)
        losses = []
        for idx in it:
            t = time.perf_counter()
            ids, lengths = _pad(seqs, idx, vocab.pad_id)
            bids = _pad(bseqs, idx, bvocab.pad_id)[0] if bvocab is not None else None
            if bids is not None and cfg.bigram_dropout > 0:  # some known bigrams -> unknown
                drop = (brng.random(bids.shape) < cfg.bigram_dropout) & (bids != bvocab.pad_id)
                bids[drop] = bvocab.unk_id
            model.zero_grad()
            logits = model(ids, lengths, bids)
            loss, g = softmax_cross_entropy(logits, labels[idx])
            model.backward(g)
            if cfg.clip:
                clip_grad_norm(params, cfg.clip)
            opt.step()
            sched.step()
            n_steps += 1
            if ema is not None:  # exponential moving average of the weights (warmed up)
                d = np.float32(min(cfg.ema, (1 + n_steps) / (10 + n_steps)))
                for a, p in zip(ema, params):
                    a *= d
                    a += (1 - d) * p.data
            train_time += time.perf_counter() - t
            n_seen += len(idx)
            losses.append(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        live = None
        if ema is not None:  # validate (and keep) the averaged weights
            live = [p.data.copy() for p in params]
            for a, p in zip(ema, params):
                p.data[...] = a
        acc = float((predict(model, vseqs, vbseqs) == vlabels).mean()) if len(vseqs) else None
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_accuracy": acc})
        log(
            f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, validation accuracy {acc}, "
            f"lr {opt.lr:.2e}"
        )
        if acc is None or best_acc is None or acc > best_acc:
            best_acc, best_epoch, stale = acc, epoch + 1, 0
            best_state = model.state_dict()
        if live is not None:
            for w, p in zip(live, params):
                p.data[...] = w
        if best_epoch != epoch + 1:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                log(f"early stop: no improvement for {stale} epochs (best epoch {best_epoch})")
                break
    model.load_state_dict(best_state)
    return {
        "seed": seed,
        "accuracy": best_acc,
        "best_epoch": best_epoch,
        "history": history,
        "train_seconds": train_time,
        "n_seen": n_seen,
        "lm": lm,
    }


def load_classifier(path):
    r"""``(model, vocab, naive_bayes or None, meta)`` from ``path``, a run directory of
    :func:`train_classifier` (or its ``classifier.npz``).

    ``model`` is a :class:`SequenceClassifier`, or a :class:`ClassifierEnsemble` when the run
    trained ``ensemble > 1`` members. Class id ``c`` (what :func:`predict` returns) stands for
    the training file's label ``meta["classes"][c]``. Raises ``FileNotFoundError`` without a
    checkpoint and :class:`~lstm_fast.models.checkpoint.CheckpointError` (a ``ValueError``) for
    one that is not a classifier's or does not fit the model its metadata describes.

    Example::

        >>> import os, tempfile
        >>> from lstm_fast.models import ClassifierConfig, train_classifier
        >>> d = tempfile.mkdtemp()
        >>> tsv = os.path.join(d, "train.tsv")
        >>> with open(tsv, "w", encoding="utf-8") as f:
        ...     for i in range(40):
        ...         _ = f.write(f"{i % 2}\t{'good fun' if i % 2 else 'bad dull'} {i}\n")
        >>> cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, batch_size=8)
        >>> run = os.path.join(d, "run")
        >>> res = train_classifier(tsv, run, cfg, progress=False, log=lambda s: None)
        >>> from lstm_fast.models import load_classifier
        >>> model, vocab, nb, meta = load_classifier(run)
        >>> type(model).__name__, meta["classes"], type(nb).__name__
        ('SequenceClassifier', [0, 1], 'NaiveBayes')
    """
    p = Path(path)
    # (the checkpoint file itself was read as a directory: "Not a directory:
    # 'run/classifier.npz/classifier.npz'"); the Naive Bayes file is the one beside it
    ck = p if p.is_file() else p / CHECKPOINT
    p = ck.parent
    if not ck.exists():
        raise FileNotFoundError(f"no classifier checkpoint at {ck}")
    arrays, meta = load_npz(ck)
    if meta.get("kind") != "classifier":
        raise CheckpointError(f"{ck}: expected a classifier checkpoint, got {meta.get('kind')!r}")
    with interpreting(ck, "__meta__ of a classifier checkpoint"):
        mc = meta["model"]
        K = meta.get("ensemble", 1)
        if not isinstance(K, int) or isinstance(K, bool) or K < 1:
            raise ValueError(f"ensemble: expected an int >= 1, got {K!r}")
        _check_sizes(ck, mc, K, arrays)  # before the K models it describes are built
        members = [
            SequenceClassifier(
                mc["vocab_size"],
                mc["num_classes"],
                mc["embed_size"],
                mc["hidden_size"],
                mc["pool"],
                mc["dropout"],
                mc["pad_id"],
                embed_dropout=mc.get("embed_dropout", 0.0),
                bigram_vocab_size=mc.get("bigram_vocab_size", 0),
                bigram_pad_id=mc.get("bigram_pad_id"),
            )
            for _ in range(K)
        ]
        model = members[0]
        vocab = _data.Vocab.from_dict(meta["vocab"])
        bvocab = None
        if meta.get("bigram_vocab") is not None:
            bvocab = _data.Vocab.from_dict(meta["bigram_vocab"])
        nb_want = model.config["bigram_vocab_size"]
        if (len(bvocab) if bvocab is not None else 0) != nb_want:
            raise ValueError(
                f"bigram_vocab: expected {nb_want} tokens (the model's bigram_vocab_size), "
                f"got {len(bvocab) if bvocab is not None else 'none'}"
            )
        max_len = meta["config"]["max_len"]
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise ValueError(f"config.max_len: expected an int >= 1, got {max_len!r}")
        _classes_of(meta)  # checked here: evaluate_classifier maps labels through them
        if len(vocab) != model.config["vocab_size"]:
            raise ValueError(
                f"vocab: expected {model.config['vocab_size']} tokens (the model's vocab_size), "
                f"got {len(vocab)}"
            )
    for k, m in enumerate(members):
        restore_module(ck, m, arrays, prefix=_member_prefix(k))
    nb = NaiveBayes.load(p / NB_FILE) if (p / NB_FILE).exists() else None
    return (model if K == 1 else ClassifierEnsemble(members)), vocab, nb, meta


def _check_sizes(ck, mc: dict, K: int, arrays: dict) -> None:
    """The ensemble size and model sizes of a classifier checkpoint's ``__meta__`` must be those
    of its stored arrays, checked before the models are built (a corrupt ``hidden_size`` or
    ``ensemble`` would allocate or build without bound). Raises :class:`CheckpointError`."""
    stored = {n.split("/")[0] + "/" for n in arrays if n.startswith("member")}
    if len(stored) != K - 1 or not all(_member_prefix(k) in stored for k in range(1, K)):

        def show(names: list, n: int) -> str:  # a corrupt ensemble=10**6: not a 10 MB message
            return "none" if not n else f"{names}" + (f" and {n - 4} more" if n > 4 else "")

        want = [_member_prefix(k) for k in range(1, min(K, 5))]
        got = sorted(stored, key=lambda m: int(m[6:-1]) if m[6:-1].isdigit() else -1)
        raise CheckpointError(
            f"{ck}: expected ensemble members {show(want, K - 1)} (ensemble={K}), got "
            f"{show(got[:4], len(got))}"
        )
    if not isinstance(mc, dict):
        raise ValueError(f"model: expected an object, got {type(mc).__name__}")
    V, C, E, H = (
        check_int(f"model.{k}", mc[k], 1)
        for k in ("vocab_size", "num_classes", "embed_size", "hidden_size")
    )
    V2 = check_int("model.bigram_vocab_size", mc.get("bigram_vocab_size", 0), 0)
    pool = check_choice("model.pool", mc["pool"], POOLS)
    f32 = np.float32
    want_arrays = {
        "embedding.weight": ((V, E), f32),
        "rnn_fwd.weight_hh_l0": ((4 * H, H), f32),
        "head.weight": ((C, (4 if pool == "meanmax" else 2) * H), f32),
    }
    if V2:
        want_arrays["bigram_embedding.weight"] = ((V2, E), f32)
    check_arrays(ck, arrays, want_arrays, prefix="param/", strict=False)


def _classes_of(meta: dict) -> np.ndarray:
    """The labels of a classifier checkpoint's classes (index c is label ``classes[c]``):
    ``meta["classes"]``, or 0..C-1 in checkpoints written before labels were mapped."""
    C = meta["model"]["num_classes"]
    classes = meta.get("classes", list(range(C)))
    ok = isinstance(classes, list) and len(classes) == C
    ok = ok and all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    if not ok or any(a >= b for a, b in zip(classes, classes[1:])):
        raise ValueError(
            f"classes: expected {C} increasing int labels (the model's num_classes), "
            f"got {classes!r}"
        )
    return np.asarray(classes, dtype=np.int64)


def evaluate_classifier(path, tsv) -> dict:
    r"""Accuracy of the classifier of the run directory ``path`` (and of its Naive Bayes
    baseline) on the ``label<TAB>text`` file ``tsv``; labels are those of the training file
    (``meta["classes"]``; a label it did not have counts as a miss).

    Returns ``{"accuracy", "nb_accuracy", "examples", "examples_per_s", "ensemble"}``. Raises
    ``ValueError`` for a file without rows, and as :func:`load_classifier`.

    Example::

        >>> import os, tempfile
        >>> from lstm_fast.models import ClassifierConfig, train_classifier
        >>> d = tempfile.mkdtemp()
        >>> tsv = os.path.join(d, "train.tsv")
        >>> with open(tsv, "w", encoding="utf-8") as f:
        ...     for i in range(40):
        ...         _ = f.write(f"{i % 2}\t{'good fun' if i % 2 else 'bad dull'} {i}\n")
        >>> cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, batch_size=8)
        >>> run = os.path.join(d, "run")
        >>> res = train_classifier(tsv, run, cfg, progress=False, log=lambda s: None)
        >>> from lstm_fast.models import evaluate_classifier
        >>> r = evaluate_classifier(run, tsv)
        >>> r["examples"], r["ensemble"], r["nb_accuracy"]
        (40, 1, 1.0)
    """
    model, vocab, nb, meta = load_classifier(path)
    labels, texts = _data.read_tsv(tsv)
    if not len(texts):
        raise ValueError(f"{tsv}: expected at least one 'label<TAB>text' row, got none")
    labels = _class_index(_classes_of(meta), labels)  # the model's class ids; unknown: -1
    max_len = meta["config"]["max_len"]
    seqs = _encode_all(vocab, texts, max_len)
    bvocab = _data.Vocab.from_dict(meta["bigram_vocab"]) if meta.get("bigram_vocab") else None
    words = bool(meta["config"].get("words", False))
    bseqs = _encode_bigrams(bvocab, texts, max_len, words) if bvocab is not None else None
    t = time.perf_counter()
    acc = float((predict(model, seqs, bseqs) == labels).mean())
    dt = time.perf_counter() - t
    return {
        "accuracy": acc,
        "nb_accuracy": nb.accuracy(texts, labels) if nb is not None else None,
        "examples": len(texts),
        "examples_per_s": len(texts) / dt if dt else None,
        "ensemble": len(model) if isinstance(model, ClassifierEnsemble) else 1,
    }
