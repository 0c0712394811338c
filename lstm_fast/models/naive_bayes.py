"""Multinomial Naive Bayes over bags of word and character n-grams, with Laplace smoothing: the
baseline the sequence classifier is compared with on the same split."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import data as _data
from ._args import check_int
from .checkpoint import CheckpointError, check_arrays, interpreting, load_npz, save_npz

__all__ = ["NaiveBayes"]


class NaiveBayes:
    r"""``log p(c | d) = log p(c) + \sum_{f \in d} log p(f | c)`` with
    ``p(f | c) = (n_{f,c} + alpha) / (n_c + alpha F)``.

    Args:
        alpha: Laplace (additive) smoothing (default 1).
        char_n: character n-grams 1..char_n (default 3; spaces count).
        word_n: whitespace-word n-grams 1..word_n (default 1).

    Features are :func:`~lstm_fast.data.featurize`'s (word and character n-grams, counted with
    repetition). Raises ``ValueError`` for a non-positive or infinite ``alpha`` or a negative
    n-gram length.

    Attributes (after :meth:`fit`):
        index: feature -> row.  counts: (F, C) feature counts per class.  class_count: (C,)
        documents per class.

    Example::

        >>> from lstm_fast.models import NaiveBayes
        >>> nb = NaiveBayes().fit(["good film", "bad film"], [1, 0])
        >>> nb.predict(["good", "bad"]).tolist()
        [1, 0]
    """

    def __init__(self, alpha: float = 1.0, char_n: int = 3, word_n: int = 1):
        # int(1.5) silently made char_n=1.5 a 1
        self.char_n, self.word_n = check_int("char_n", char_n, 0), check_int("word_n", word_n, 0)
        # float("x") raised unnamed; a negative or NaN alpha made every log-probability NaN, and
        # alpha = 0 gave -inf (log 0) to any feature a class never showed, all silently
        real = isinstance(alpha, (int, float, np.integer, np.floating)) and not isinstance(
            alpha, (bool, np.bool_)
        )
        if not real or not 0.0 < alpha < math.inf:
            raise ValueError(f"alpha: expected a finite float > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.index: dict = {}
        self.counts = None  # (F, C)
        self.class_count = None  # (C,)

    def fit(self, texts: Sequence[str], labels) -> NaiveBayes:
        """Count the features of ``texts`` (N str) per class, ``labels`` (N,) integer class ids
        >= 0 (C = the largest + 1); returns the model. Raises ``ValueError`` / ``TypeError``
        for labels of another length, non-integer or negative."""
        if isinstance(texts, str):  # (featurize's message named its own "docs")
            raise TypeError("texts: expected a sequence of str, got a str")
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.shape[0] != len(texts) or not lab.size:
            raise ValueError(
                f"labels: expected shape (N={len(texts)},) with N >= 1, got {lab.shape}"
            )
        if lab.dtype.kind not in "iu":
            raise TypeError(f"labels: expected integer class ids, got dtype {lab.dtype}")
        if lab.min() < 0:
            raise ValueError(f"labels: expected class ids >= 0, got {lab.min()}")
        labels = lab.astype(np.int64)
        C = int(labels.max()) + 1
        # a new index, made the model's once everything is counted: a fit that raised (a text
        # that is no str) left the model with an emptied index and the old counts, so it went
        # on predicting from the class priors alone, silently
        index: dict = {}
        indptr, ids = _data.featurize(
            texts, index, grow=True, char_n=self.char_n, word_n=self.word_n
        )
        doc_labels = np.repeat(labels, np.diff(indptr))
        counts = np.zeros((len(index), C), np.float64)
        np.add.at(counts, (ids, doc_labels), 1.0)
        class_count = np.bincount(labels, minlength=C).astype(np.float64)
        self.index, self.counts, self.class_count = index, counts, class_count
        self._prepare()
        return self

    def _prepare(self) -> None:
        F = self.counts.shape[0]
        num = self.counts + self.alpha
        # log 0 = -inf is meant (no features at all: char_n = word_n = 0 or empty texts; a class
        # id with no training row is never predicted), not a RuntimeWarning on the console
        with np.errstate(divide="ignore"):
            self.log_prob = np.log(num) - np.log(self.counts.sum(0) + self.alpha * F)
            self.log_prior = np.log(self.class_count / self.class_count.sum())

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """The unnormalised log posteriors (D, C), float64, of D ``texts`` (features not seen
        in training are left out). Raises ``RuntimeError`` before :meth:`fit`."""
        if self.counts is None:  # (an AttributeError about log_prior)
            raise RuntimeError("NaiveBayes: not fitted (call fit(texts, labels) first)")
        if isinstance(texts, str):  # (featurize's message named its own "docs")
            raise TypeError("texts: expected a sequence of str, got a str")
        indptr, ids = _data.featurize(
            texts, self.index, grow=False, char_n=self.char_n, word_n=self.word_n
        )
        D = len(indptr) - 1
        scores = np.tile(self.log_prior, (D, 1))
        doc = np.repeat(np.arange(D), np.diff(indptr))
        np.add.at(scores, doc, self.log_prob[ids])
        return scores

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The most likely class id (D,) of each of the D ``texts``."""
        return self.decision_function(texts).argmax(axis=1)

    def accuracy(self, texts: Sequence[str], labels) -> float:
        """The share of ``texts`` whose predicted class is their entry of ``labels`` (N,), N >=
        1. Raises ``ValueError`` for labels of another shape."""
        lab = np.asarray(labels)
        # (labels of another length were broadcast against the predictions: 1 text and 2
        # labels gave 0.5; none gave NaN with two RuntimeWarnings)
        if lab.ndim != 1 or len(lab) != len(texts) or not len(lab):
            raise ValueError(
                f"labels: expected shape (N={len(texts)},) with N >= 1, got {lab.shape}"
            )
        return float((self.predict(texts) == lab).mean())

    def save(self, path) -> None:
        """Write the model to ``path`` (a checkpoint ``.npz``: the counts and, in its metadata,
        the feature list and settings); :meth:`load` reads it back."""
        feats = [None] * len(self.index)
        for f, i in self.index.items():
            feats[i] = f
        meta = {
            "kind": "naive_bayes",
            "alpha": self.alpha,
            "char_n": self.char_n,
            "word_n": self.word_n,
            "features": feats,
        }
        save_npz(path, {"counts": self.counts, "class_count": self.class_count}, meta)

    @classmethod
    def load(cls, path) -> NaiveBayes:
        """Read the file ``path`` written by :meth:`save`; :class:`CheckpointError` (a
        ``ValueError``) if it is not one, or if its arrays do not fit its feature list:
        ``counts`` (F, C) and ``class_count`` (C,), float64."""
        arrays, meta = load_npz(Path(path))
        if meta.get("kind") != "naive_bayes":
            raise CheckpointError(f"{path}: expected a naive_bayes file, got {meta.get('kind')!r}")
        with interpreting(path, "__meta__ of a naive_bayes file"):
            nb = cls(meta["alpha"], meta["char_n"], meta["word_n"])
            feats = meta["features"]
            if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
                raise TypeError("features: expected a list of str")
        f64 = np.float64
        check_arrays(
            path, arrays, {"counts": ((len(feats), None), f64), "class_count": ((None,), f64)}
        )
        C = arrays["counts"].shape[1]
        check_arrays(path, arrays, {"class_count": ((C,), f64)}, strict=False)
        nb.index = {f: i for i, f in enumerate(feats)}
        nb.counts, nb.class_count = arrays["counts"], arrays["class_count"]
        nb._prepare()
        return nb
