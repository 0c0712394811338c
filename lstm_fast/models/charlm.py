"""Character-level language model: embedding -> LSTM stack -> linear, its training loop
(truncated BPTT, validation in bits per character, atomic checkpoints, exact resume), evaluation
and sampling (temperature, top-k, priming string; nothing allocated per character).
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import re
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import data as _data
from .._interrupt import deferred_interrupt
from ..module import Module
from ..nn import LSTM, Dropout, Embedding, Linear, _rng_state, _set_rng_state, softmax_cross_entropy
from ..optim import _OPTIMIZERS, clip_grad_norm, make_optimizer
from ._args import check_choice, check_float, check_int
from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    check_arrays,
    check_run_dir,
    interpreting,
    json_text,
    load_npz,
    restore_module,
    save_npz,
)

__all__ = [
    "CharLM",
    "TrainConfig",
    "train_charlm",
    "load_charlm",
    "evaluate_bpc",
    "Sampler",
    "sample_text",
    "CHECKPOINT",
]

CHECKPOINT = "checkpoint.npz"
LN2 = math.log(2.0)


class CharLM(Module):
    r"""Character-level language model: Embedding (V, E) -> LSTM (E -> H, ``num_layers``,
    dropout between layers) -> dropout -> Linear (H -> V).

    .. math::
        \mathrm{logits}_t = W_{dec}\, \mathrm{drop}(h^{(L)}_t) + b_{dec}, \qquad
        h^{(1)}_t = \mathrm{LSTM}(\mathrm{emb}[x_t], h^{(1)}_{t-1}, c^{(1)}_{t-1})

    The embedding lookup is folded into the first LSTM layer
    (:meth:`~lstm_fast.LSTM.forward_embedded`). Parameter names follow PyTorch
    (``embedding.weight``, ``rnn.weight_ih_l0``, ..., ``decoder.weight``), so an equivalent
    ``torch.nn`` model loads the same state dict.

    Args:
        vocab_size: V, the number of token ids.
        embed_size: E (default 64).
        hidden_size: H (default 256).
        num_layers: L, stacked LSTM layers (default 2).
        dropout: the drop probability between LSTM layers and before the decoder, in [0, 1]
            (default 0).
        seed: (keyword only) seed of the initialisation and the dropout masks, an int >= 0
            (default 0; the sub-layers get seed, seed + 1, ...).

    Inputs: ``x`` (T, B) int ids in [0, V); ``state`` optional ``(h, c)``, each (L, B, H)
    (default zeros). Outputs: ``logits`` (T, B, V) float32 and ``(h, c)``, the final state
    (carry it to the next window).

    ``backward(dlogits)`` accumulates every parameter's gradient (truncated BPTT: no gradient
    flows into the incoming state).

    Attributes:
        embedding: :class:`~lstm_fast.nn.Embedding` (V, E).  rnn: :class:`~lstm_fast.LSTM`.
        drop: :class:`~lstm_fast.nn.Dropout`.  decoder: :class:`~lstm_fast.nn.Linear` (H -> V).
        config: the constructor's sizes, a dict (saved in checkpoints).

    Raises ``ValueError`` naming the argument for a size < 1, a dropout outside [0, 1] or a
    negative seed.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.models import CharLM
        >>> m = CharLM(vocab_size=20, embed_size=8, hidden_size=16, num_layers=2, seed=0)
        >>> logits, (h, c) = m(np.zeros((5, 3), np.int64))
        >>> logits.shape, h.shape
        ((5, 3, 20), (2, 3, 16))
    """

    # a training forward ran (copies and pickles leave it out: their sub-layers keep none)
    _saved_forward = {"_saved": False}

    def __init__(
        self,
        vocab_size: int,
        embed_size: int = 64,
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        *,
        seed: int = 0,
    ):
        super().__init__()
        # checked here, so the errors name these arguments (not the layers' input_size, p, ...)
        for name, v in (
            ("vocab_size", vocab_size),
            ("embed_size", embed_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            check_int(name, v, 1)
        check_float("dropout", dropout, 0.0, 1.0)
        check_int("seed", seed, 0)
        self.config = dict(
            vocab_size=int(vocab_size),
            embed_size=int(embed_size),
            hidden_size=int(hidden_size),
            num_layers=int(num_layers),
            dropout=float(dropout),
        )
        self.embedding = Embedding(vocab_size, embed_size, seed=seed)
        self.rnn = LSTM(
            embed_size,
            hidden_size,
            num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            seed=seed + 1,
        )
        self.drop = Dropout(dropout, seed=seed + 2)
        self.decoder = Linear(hidden_size, vocab_size, seed=seed + 3)
        self._saved = False  # a training forward ran (and did not fail) since the last one

    def init_state(self, batch_size: int):
        """The zero state ``(h, c)`` for ``batch_size`` streams, each (L, B, H) float32."""
        check_int("batch_size", batch_size, 0)  # (NumPy's "negative dimensions" named nothing)
        L, H = self.config["num_layers"], self.config["hidden_size"]
        return (np.zeros((L, batch_size, H), np.float32), np.zeros((L, batch_size, H), np.float32))

    def forward(self, x, state=None):
        """``(logits (T, B, V), (h, c))`` for the ids ``x`` (T, B) from ``state`` (``(h, c)``,
        each (L, B, H); default None: zeros). In training mode what :meth:`backward` needs is
        kept (a call that raises keeps nothing)."""
        # a failed call leaves nothing for backward (the decoder would still hold the last one's)
        self._saved = False
        # the embedding lookup folded into the first LSTM layer (LSTM.forward_embedded)
        y, (h, c) = self.rnn.forward_embedded(x, self.embedding, state)
        logits = self.decoder(self.drop(y))
        self._saved = self.training
        return logits, (h, c)

    def forward_loss(self, x, targets, state=None):
        """Forward ``x`` (T, B) from ``state`` and the mean softmax cross-entropy against
        ``targets`` (T, B) (or (T * B,)): the training step's first half. The loss is computed
        in the logits' own buffer (they are not kept).

        Returns ``(loss, dlogits, (h, c))``; ``backward(dlogits)`` then accumulates the
        gradients.
        """
        logits, state = self.forward(x, state)
        # targets (T, B) as x, or flat: a transposed (B, T) one raises
        loss, g = softmax_cross_entropy(logits, targets, inplace=True)
        return loss, g, state

    def backward(self, dlogits) -> None:
        """Accumulate every parameter's gradient for the upstream gradient ``dlogits``
        (T, B, V) of the last training-mode forward (truncated BPTT: nothing flows into its
        incoming state). May be called more than once for the same forward: each call adds
        again, as its layers' backward (PyTorch's ``retain_graph=True``). Raises
        ``RuntimeError`` without one."""
        if not self._saved:
            raise RuntimeError("CharLM.backward: no saved forward (call it in training mode)")
        dy = self.drop.backward(self.decoder.backward(dlogits))
        self.rnn.backward(dy)  # accumulates the embedding's gradient too (forward_embedded)

    # the generators whose draws training consumes (dropout masks), for exact resume
    def rng_states(self) -> dict:
        """The states of the generators training draws from (the LSTM's and the decoder
        dropout's masks), ``{"rnn": ..., "drop": ...}``, JSON-able: saved in checkpoints."""
        return {"rnn": _rng_state(self.rnn._rng), "drop": self.drop.get_rng_state()}

    def set_rng_states(self, states: dict) -> None:
        """Restore ``states``, a dict :meth:`rng_states` returned (exact resume)."""
        _set_rng_state(self.rnn._rng, states["rnn"])
        self.drop.set_rng_state(states["drop"])


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of a char-LM run (:func:`train_charlm`; saved in the checkpoint).

    Every field is checked when the config is made (and again by :func:`train_charlm`, before
    anything is read or written): a bad value raises ``ValueError`` naming the field.

    Args:
        corpus: a text file or a directory of them (default None: the default corpus, the
            Python standard library's sources).
        max_chars: read at most this many characters (default None: all; the default corpus
            2,000,000).
        embed_size, hidden_size, num_layers, dropout: the :class:`CharLM`'s (defaults 64, 256,
            2, 0.0).
        seq_len: T, the truncated-BPTT window (default 100).
        batch_size: B, the parallel streams (default 32).
        steps: the optimizer steps of the run (default 1000).
        lr: the learning rate (default 2e-3).
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"adagrad"`` or
            ``"rmsprop"`` (:func:`~lstm_fast.optim.make_optimizer`).
        clip: the gradient-norm clip (default 5.0; 0: off).
        seed: initialisation and dropout seed (default 0).
        val_fraction: the held-out tail of the text, in [0, 1) (default 0.05).
        val_every: validate every this many steps (default 200; 0: only at the end).
        val_max_chars: validate on at most this many held-out characters (default 200,000).
        checkpoint_every: write a checkpoint every this many steps (default 200; 0: only at
            the end).

    Example::

        >>> from lstm_fast.models import TrainConfig
        >>> TrainConfig(steps=10).seq_len
        100
        >>> try:
        ...     TrainConfig(batch_size=0)
        ... except ValueError as e:
        ...     print(e)
        batch_size: expected an int >= 1, got 0
    """

    corpus: Optional[str] = None  # a text file or a directory; None: the default corpus
    max_chars: Optional[int] = None  # cap on the corpus (default corpus: 2,000,000)
    embed_size: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    seq_len: int = 100
    batch_size: int = 32
    steps: int = 1000
    lr: float = 2e-3
    optimizer: str = "adam"
    clip: float = 5.0
    seed: int = 0
    val_fraction: float = 0.05
    val_every: int = 200
    val_max_chars: int = 200_000
    checkpoint_every: int = 200

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field with a bad value."""
        if self.corpus is not None:
            if not isinstance(self.corpus, (str, os.PathLike)):
                raise ValueError(
                    f"corpus: expected None or a path, got {type(self.corpus).__name__}"
                )
            self.corpus = os.fspath(self.corpus)  # (saved as JSON in the checkpoint)
            if not self.corpus:  # Path("") is ".": the working directory was the corpus
                raise ValueError("corpus: expected None or a path, got an empty one ('')")
        # (stored as plain ints and floats: NumPy scalars would fail the checkpoint's JSON)
        self.max_chars = check_int("max_chars", self.max_chars, 1, optional=True)
        for name in ("embed_size", "hidden_size", "num_layers", "seq_len", "batch_size"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        for name in ("steps", "seed", "val_every", "val_max_chars", "checkpoint_every"):
            setattr(self, name, check_int(name, getattr(self, name), 0))
        self.dropout = check_float("dropout", self.dropout, 0.0, 1.0)
        self.lr = check_float("lr", self.lr, 0.0)
        self.clip = check_float("clip", self.clip, 0.0, finite=False)  # 0: off; inf: never clips
        self.val_fraction = check_float("val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True)
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in _OPTIMIZERS:
            check_choice("optimizer", self.optimizer, sorted(_OPTIMIZERS))  # raises


def _checkpoint_arrays(model, opt, state, hist) -> dict:
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    for k, v in opt.state_dict()["arrays"].items():
        arrays[f"optim/{k}"] = v
    arrays["state/h"], arrays["state/c"] = state
    arrays["hist/train_bpc"] = np.asarray(hist["train_bpc"], dtype=np.float64)
    arrays["hist/val"] = np.asarray(hist["val"], dtype=np.float64).reshape(-1, 2)
    return arrays


def _save(out_dir: Path, cfg, vocab, model, opt, state, hist, step, digest, extra=None) -> None:
    osd = opt.state_dict()
    meta = {
        "kind": "charlm",
        "config": dataclasses.asdict(cfg),
        "model": model.config,
        "vocab": vocab.to_dict(),
        "step": step,
        "optimizer": {"type": osd["type"], "hyper": osd["hyper"], "step": osd["step"]},
        "rng": model.rng_states(),
        "data_digest": digest,
        **(extra or {}),
    }
    save_npz(out_dir / CHECKPOINT, _checkpoint_arrays(model, opt, state, hist), meta)
    atomic_write_text(out_dir / "config.json", json.dumps(meta["config"], indent=1) + "\n")


def load_charlm(path):
    """``(model, vocab, meta, arrays)`` from ``path``, a run directory or a checkpoint file.

    ``model`` is the :class:`CharLM` with the saved weights (in training mode), ``vocab`` its
    :class:`~lstm_fast.data.Vocab`, ``meta`` the checkpoint's metadata (``"config"``,
    ``"step"``, ...) and ``arrays`` every stored array by name.

    Raises ``FileNotFoundError`` if there is no checkpoint, :class:`CheckpointError` (a
    ``ValueError``) if the file is not a char-LM checkpoint or its arrays do not fit the model its
    metadata describes (each offending array named, with the expected and given shape and dtype).

    Example::

        >>> import tempfile
        >>> from lstm_fast.models import TrainConfig, load_charlm, train_charlm
        >>> out = tempfile.mkdtemp()
        >>> cfg = TrainConfig(embed_size=4, hidden_size=8, num_layers=1, seq_len=8, batch_size=2,
        ...                   steps=3, val_every=0, checkpoint_every=0)
        >>> _ = train_charlm(cfg, out, text="abcab " * 40, progress=False, log=lambda s: None)
        >>> model, vocab, meta, arrays = load_charlm(out)
        >>> meta["step"], len(vocab), model.config["hidden_size"], "state/h" in arrays
        (3, 5, 8, True)
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    arrays, meta = load_npz(p)
    if meta.get("kind") != "charlm":
        raise CheckpointError(f"{p}: expected a charlm checkpoint, got {meta.get('kind')!r}")
    with interpreting(p, "__meta__ of a charlm checkpoint"):
        vocab = _data.Vocab.from_dict(meta["vocab"])
        mc = meta["model"]
        _check_sizes(p, mc, arrays, len(vocab))  # before the model they describe is built
        model = CharLM(
            mc["vocab_size"],
            mc["embed_size"],
            mc["hidden_size"],
            mc["num_layers"],
            mc["dropout"],
            seed=meta["config"]["seed"],
        )
    restore_module(p, model, arrays)
    return model, vocab, meta, arrays


def _check_sizes(path, mc: dict, arrays: dict, vocab_size: int) -> None:
    """The model sizes of a checkpoint's ``__meta__`` must be those of its stored arrays, checked
    before the model is built: a corrupt ``hidden_size=200000`` allocated terabytes (a
    MemoryError), ``num_layers=10**7`` built layers for hours. Raises :class:`CheckpointError`."""
    if not isinstance(mc, dict):
        raise ValueError(f"model: expected an object, got {type(mc).__name__}")
    V, E, H, L = (
        check_int(f"model.{k}", mc[k], 1)
        for k in ("vocab_size", "embed_size", "hidden_size", "num_layers")
    )
    if vocab_size != V:
        raise ValueError(f"vocab: expected {V} tokens (the model's vocab_size), got {vocab_size}")
    stored = sum(1 for k in arrays if re.fullmatch(r"param/rnn\.weight_hh_l\d+", k))
    if stored != L:
        raise CheckpointError(
            f"{os.fspath(path)}: model.num_layers: expected {stored} (the LSTM layers stored), "
            f"got {L}"
        )
    f32 = np.float32
    want = {"embedding.weight": ((V, E), f32), "decoder.weight": ((V, H), f32)}
    want.update({f"rnn.weight_hh_l{k}": ((4 * H, H), f32) for k in range(L)})
    check_arrays(path, arrays, want, prefix="param/", strict=False)


def _restore_training(path, meta, arrays, model: CharLM, opt, batch_size: int):
    """Check the training state of a checkpoint (carried LSTM state, history, optimizer state,
    generator states), then restore it into ``model`` and ``opt``; returns
    ``(state, hist, step)``. Nothing is changed unless every check passes."""
    L, H = model.config["num_layers"], model.config["hidden_size"]
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    expected = {
        "state/h": ((L, batch_size, H), f32),
        "state/c": ((L, batch_size, H), f32),
        "hist/train_bpc": ((None,), f64),
        "hist/val": ((None, 2), f64),
    }
    check_arrays(path, arrays, expected, strict=False)
    with interpreting(path, "training state"):
        step, osd, rng = meta["step"], meta["optimizer"], meta["rng"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step: expected an int >= 0, got {step!r}")
        spec = opt.state_spec(osd["hyper"], osd["step"])
        check_arrays(path, arrays, spec, prefix="optim/")
        before = model.rng_states()
        try:
            model.set_rng_states(rng)
            opt.load_state_dict(
                {**osd, "arrays": {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}}
            )
        except BaseException:
            model.set_rng_states(before)
            raise
    state = (arrays["state/h"].copy(), arrays["state/c"].copy())
    hist = {"train_bpc": arrays["hist/train_bpc"].tolist(), "val": arrays["hist/val"].tolist()}
    return state, hist, step


def evaluate_bpc(model: CharLM, ids: np.ndarray, batch_size: int = 32, seq_len: int = 100) -> float:
    r"""Bits per character of ``model`` on the token ids ``ids``: the mean of
    :math:`-\log_2 p(x_{t+1} \mid x_{\le t})` over every id after the first.

    The ids are read as ``batch_size`` streams (fewer when the text is short) carrying their
    state through windows of ``seq_len`` (:class:`~lstm_fast.data.BPTTBatcher`, last window
    kept), in eval mode; the model's own mode is restored afterwards.

    Args:
        model: a :class:`CharLM`.
        ids: token ids (N,), N >= 2, in [0, V).
        batch_size: the most streams (default 32).
        seq_len: the window length (default 100).

    Raises ``ValueError`` for fewer than 2 ids or a size < 1, ``IndexError`` for ids outside
    [0, V) (before any window runs).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.models import CharLM, evaluate_bpc
        >>> m = CharLM(vocab_size=8, embed_size=4, hidden_size=8, num_layers=1, seed=0)
        >>> m.decoder.weight.data[...] = 0  # zero logits: a uniform guess over 8 tokens
        >>> m.decoder.bias.data[...] = 0
        >>> round(evaluate_bpc(m, np.arange(50) % 8, batch_size=2, seq_len=10), 6)
        3.0
    """
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    if not hasattr(ids, "__len__"):  # a generator: len() failed unnamed
        raise TypeError(f"ids: expected a sequence or array of token ids, got {type(ids).__name__}")
    if len(ids) < 2:  # a character is predicted from the one before it
        raise ValueError(f"ids: expected at least 2 token ids, got {len(ids)}")
    ids = np.asarray(ids)
    V = model.config["vocab_size"]
    # checked before any window runs: an id >= V at the end was reported as "targets" (the
    # loss's argument) after the whole text but that window had been evaluated
    if ids.ndim == 1 and ids.dtype.kind in "iu" and (ids.min() < 0 or ids.max() >= V):
        raise IndexError(f"ids: expected values in [0, V={V}), got [{ids.min()}, {ids.max()}]")
    was_training = model.training
    model.eval()
    try:  # an error or Ctrl-C in the middle leaves the model in the mode it was given in
        B = max(1, min(batch_size, (len(ids) - 1) // seq_len))
        batcher = _data.BPTTBatcher(ids, B, seq_len, drop_last=False)
        state = model.init_state(B)
        total, count = 0.0, 0

        def score(x, y, state):
            logits, state = model(x, state)
            loss, _ = softmax_cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y.reshape(-1),
                reduction="sum",
                need_grad=False,
            )
            return loss, y.size, state

        for x, y in batcher:
            loss, n, state = score(x, y, state)
            total += loss
            count += n
        # The ids past the B equal streams (fewer than B) follow the last stream's text: scored
        # from that stream's final state, so every id after the first counts.
        tail = ids[B * batcher.n :].astype(np.int64)
        if len(tail) > 1:
            h, c = state
            last = (h[:, B - 1 : B].copy(), c[:, B - 1 : B].copy())
            loss, n, _ = score(tail[:-1, None], tail[1:, None], last)
            total += loss
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1) / LN2


def _plot(out_dir: Path, hist) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    tr = np.asarray(hist["train_bpc"])
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(tr):
        w = max(1, len(tr) // 100)
        smooth = np.convolve(tr, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(smooth)) + w, smooth, label="train (smoothed)")
    val = np.asarray(hist["val"]).reshape(-1, 2)
    if len(val):
        ax.plot(val[:, 0], val[:, 1], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def train_charlm(
    cfg: TrainConfig,
    out_dir,
    *,
    resume: bool = False,
    text: Optional[str] = None,
    progress: bool = True,
    on_step: Optional[Callable[[int, float], None]] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) a char-LM; returns the final figures.

    The corpus is read, a character :class:`~lstm_fast.data.Vocab` built from it, its tail held
    out for validation; then ``cfg.steps`` truncated-BPTT steps (:class:`CharLM`, the state
    carried from window to window and reset at each pass, gradient clipping, the optimizer of
    ``cfg``). ``out_dir`` receives ``checkpoint.npz`` (weights, optimizer state, generator
    states: the run resumes bitwise), ``config.json``, ``vocab.json`` and, with matplotlib,
    ``loss.png``; nothing is written before every input has been checked. A corpus directory
    may hold ``out_dir``: the files under it are not read as corpus.

    Args:
        cfg: a :class:`TrainConfig`.
        out_dir: the run directory (created if needed).
        resume: (keyword only) continue from ``out_dir/checkpoint.npz`` if there is one (its
            configuration wins, except ``steps`` and ``corpus``: the text is read from
            ``cfg.corpus`` or ``text``, and must be the checkpoint's) and end with the weights
            an uninterrupted run would have (default False).
        text: (keyword only) train on this text instead of ``cfg.corpus`` (default None).
        progress: (keyword only) show a tqdm progress bar, if tqdm is installed (default True).
        on_step: (keyword only) ``on_step(step, bpc)``, called after every step (default None).
        log: (keyword only) where messages go (default ``print``).

    Returns:
        A dict: ``step``, ``train_bpc`` (the mean of the last <= 50 steps), ``val_bpc`` (at the
        end; None without held-out text), ``chars_per_s``, ``train_seconds``, ``vocab_size``,
        ``parameters``, ``loss_png`` (a path or None) and ``checkpoint`` (its path).

    A KeyboardInterrupt (Ctrl-C, or raised by ``on_step``) writes a checkpoint at the current
    step first. Raises ``TypeError`` for a ``cfg`` that is not a TrainConfig, ``ValueError`` for
    a bad field, a corpus shorter than one window (``batch_size * seq_len + 1`` characters) or,
    on resume, a corpus other than the checkpoint's, ``NotADirectoryError`` /
    ``PermissionError`` for an ``out_dir`` that cannot be a directory.

    Example::

        >>> import tempfile
        >>> from lstm_fast.models import TrainConfig, train_charlm
        >>> cfg = TrainConfig(embed_size=4, hidden_size=8, num_layers=1, seq_len=8, batch_size=2,
        ...                   steps=3, val_every=0, checkpoint_every=0)
        >>> res = train_charlm(cfg, tempfile.mkdtemp(), text="abcab " * 40, progress=False,
        ...                    log=lambda s: None)
        >>> res["step"], res["vocab_size"], res["parameters"]
        (3, 5, 513)
        >>> res["val_bpc"] > 0
        True
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg: expected a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()  # (a field may have been changed since the config was made)
    # a file there (mkdir raised FileExistsError) or in its path (the classifier trained every
    # epoch before mkdir failed): refused before any work; so is "" (before Path makes it ".")
    check_run_dir(out_dir)
    out = Path(out_dir)
    ckpt = out / CHECKPOINT
    arrays = meta = None
    if resume and ckpt.exists():
        model, vocab, meta, arrays = load_charlm(ckpt)
        with interpreting(ckpt, "__meta__ of a charlm checkpoint"):
            saved = dict(meta["config"])
            saved["steps"] = cfg.steps
            # the text is read from where the caller says it is now (the CLI's CORPUS, which
            # it requires): the saved path, relative to another directory or moved since, was
            # read instead, and its errors named the CORPUS given. Its content must be the
            # checkpoint's all the same (the data digest below).
            saved["corpus"] = cfg.corpus
            # the checkpoint's settings win: say which of this call's differ (they are not used)
            differ = [
                f"{k} {saved[k]!r} (this call: {getattr(cfg, k)!r})"
                for k in saved
                if hasattr(cfg, k) and getattr(cfg, k) != saved[k]
            ]
            cfg = TrainConfig(**saved)
            saved_digest = meta["data_digest"]
        if differ:
            log("resume: the checkpoint's settings are used: " + ", ".join(differ))
    elif resume:
        log(f"resume: no checkpoint in {out}, starting from scratch")
    if text is None:
        # a corpus directory holding the run directory: its config.json and vocab.json (text
        # extensions) were read as corpus -- by a second run, and by --resume, whose corpus
        # then differed from the checkpoint's (refused, though CORPUS was the same)
        text = _data._load_corpus(cfg.corpus, False, cfg.max_chars, _data.TEXT_EXTENSIONS, out)
    if meta is None:
        vocab = _data.Vocab.build(text, level="char")
        model = CharLM(
            len(vocab), cfg.embed_size, cfg.hidden_size, cfg.num_layers, cfg.dropout, seed=cfg.seed
        )
    ids = vocab.encode(text)
    digest = _data.ids_digest(ids)
    if meta is not None and saved_digest != digest:
        raise ValueError(
            "resume: the corpus differs from the checkpoint's (data digest "
            f"{digest} != {saved_digest}); pass the same CORPUS"
        )
    train_ids, val_ids = _data.train_val_split(ids, cfg.val_fraction)
    val_ids = val_ids[: cfg.val_max_chars]
    need = cfg.batch_size * cfg.seq_len + 1  # one full window of every stream, and its target
    if len(train_ids) < need:  # (BPTTBatcher's own message named its internal "ids")
        n_val = len(ids) - len(train_ids)
        held = f" (of {len(ids)}: val_fraction={cfg.val_fraction:g} held out {n_val})"
        raise ValueError(
            f"corpus: expected at least batch_size * seq_len + 1 = {need} training characters "
            f"(batch_size={cfg.batch_size}, seq_len={cfg.seq_len}), got {len(train_ids)}"
            + (held if n_val else "")
        )
    batcher = _data.BPTTBatcher(train_ids, cfg.batch_size, cfg.seq_len)
    opt = make_optimizer(cfg.optimizer, list(model.parameters()), lr=cfg.lr)
    hist: dict[str, list] = {"train_bpc": [], "val": []}
    step = 0
    state = model.init_state(cfg.batch_size)
    if meta is not None:
        state, hist, step = _restore_training(ckpt, meta, arrays, model, opt, cfg.batch_size)
        log(f"resumed from step {step}")
    out.mkdir(parents=True, exist_ok=True)  # everything checked: only now is anything written
    model.train()
    params = list(model.parameters())
    V = len(vocab)
    chars = batcher.tokens_per_window
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = None
    if progress and tqdm is not None:
        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True)
    train_time = 0.0
    trained = 0
    val_bpc = None

    def checkpoint():
        _save(out, cfg, vocab, model, opt, state, hist, step, digest)

    def periodic_validation():
        nonlocal val_bpc
        due = cfg.val_every and step > 0 and step % cfg.val_every == 0 and step < cfg.steps
        if due and len(val_ids) > 1 and (not hist["val"] or hist["val"][-1][0] != step):
            val_bpc = evaluate_bpc(model, val_ids, cfg.batch_size, cfg.seq_len)
            hist["val"].append([step, val_bpc])
            if bar is not None:
                bar.write(f"step {step}: validation {val_bpc:.4f} bits/char")

    model.zero_grad()
    # the generators' states before the step under way: a Ctrl-C in its forward or backward
    # (after its dropout masks were drawn) checkpoints these, so the resumed run draws the
    # same masks for that step again (the states after the draws made it draw new ones)
    rng_start = None
    try:
        # a run interrupted in (or before) the validation of its last step does it first:
        # the resumed history is that of a run straight through (it lacked that entry)
        periodic_validation()
        while step < cfg.steps:
            t0 = time.perf_counter()
            rng_start = model.rng_states()
            k = step % batcher.num_windows
            if k == 0:
                state = model.init_state(cfg.batch_size)
            x, y = batcher.window(k)
            loss, g, new_state = model.forward_loss(x, y, state)
            model.backward(g)
            if cfg.clip:
                clip_grad_norm(params, cfg.clip)
            # Ctrl-C during the update is raised when it ends (deferred_interrupt): held back
            # until the step is also counted, or the checkpoint the handler writes held the
            # updated weights (and optimizer step) with the step before's count and state, and
            # a resume trained that window a second time
            with deferred_interrupt():
                opt.step(zero_grad=True)  # the gradients start the next step at zero
                state = new_state
                step += 1
                bpc = loss / LN2
                hist["train_bpc"].append(bpc)
                rng_start = None  # the step is complete
            dt = time.perf_counter() - t0
            train_time += dt
            trained += 1
            if bar is not None:
                bar.set_postfix(bpc=f"{bpc:.3f}", chars_s=f"{trained * chars / train_time:,.0f}")
                bar.update(1)
            if on_step is not None:
                on_step(step, bpc)
            periodic_validation()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint()
        if bar is not None:
            bar.close()
            bar = None
        # (the periodic validation's condition: a held-out part shorter than seq_len is still
        # evaluated, so the figure reported is the final weights', not an earlier step's)
        # Inside the try: a Ctrl-C in this last validation (up to val_max_chars characters)
        # wrote no checkpoint, and with checkpoint_every=0 the whole run was lost
        if len(val_ids) > 1 and (not hist["val"] or hist["val"][-1][0] != step):
            val_bpc = evaluate_bpc(model, val_ids, cfg.batch_size, cfg.seq_len)
            hist["val"].append([step, val_bpc])
        elif hist["val"]:
            val_bpc = hist["val"][-1][1]
        checkpoint()
    except KeyboardInterrupt:
        if rng_start is not None:  # interrupted in the middle of a step: it is redone
            model.set_rng_states(rng_start)
        checkpoint()
        if bar is not None:
            bar.close()
        log(f"interrupted: checkpoint written at step {step}; continue with --resume")
        raise
    atomic_write_text(out / "vocab.json", json_text(vocab.to_dict()))
    plot = _plot(out, hist)
    tail = hist["train_bpc"][-max(1, min(50, len(hist["train_bpc"]))) :]
    return {
        "step": step,
        "train_bpc": float(np.mean(tail)) if tail else None,
        "val_bpc": None if val_bpc is None else float(val_bpc),
        "chars_per_s": (trained * chars / train_time) if train_time > 0 else None,
        "train_seconds": train_time,
        "vocab_size": V,
        "parameters": model.num_parameters(),
        "loss_png": plot,
        "checkpoint": str(out / CHECKPOINT),
    }


def _sigmoid_(a: np.ndarray) -> None:
    np.negative(a, out=a)
    np.exp(a, out=a)
    a += 1.0
    np.reciprocal(a, out=a)


class Sampler:
    """Generates text one character at a time from a :class:`CharLM` (eval-mode maths).

    All buffers (state, gates, logits, probabilities) are allocated once here; the layer-0 input
    projection is folded into a (V, 4H) table (embedding · W_ih^T + biases), so each character
    costs one row lookup, ``num_layers`` small matrix-vector products into preallocated outputs
    and the decoder's.

    Args:
        model: the :class:`CharLM` (its weights are copied: later changes are not seen).
        seed: (keyword only) seed of the draws (default 0; None: fresh entropy).
        exclude: (keyword only) ids never drawn (default ``(0,)``: the unknown token); ids
            outside [0, V) are ignored, and excluding every id excludes none.

    Attributes:
        h, c: the state (L, H) after the tokens fed so far.  rng: the generator.

    Example::

        >>> from lstm_fast.models import CharLM, Sampler
        >>> m = CharLM(5, 4, 8, 1, seed=0)
        >>> s = Sampler(m, seed=0)
        >>> ids = s.generate([1, 2], 10)
        >>> len(ids), 0 in ids  # the unknown token (id 0) is never drawn
        (10, False)
    """

    def __init__(self, model: CharLM, *, seed: Optional[int] = 0, exclude: tuple = (0,)):
        check_int("seed", seed, 0, optional=True)  # NumPy's error named no argument
        try:  # (1.5 excluded id 1, "a" and None raised unnamed TypeErrors)
            exclude = [operator.index(e) for e in exclude]
        except TypeError:
            raise TypeError(f"exclude: expected an iterable of int ids, got {exclude!r}") from None
        mc = model.config
        L, H, V = mc["num_layers"], mc["hidden_size"], mc["vocab_size"]
        self.L, self.H, self.V = L, H, V
        rnn = model.rnn
        f32 = np.float32

        def bias(k):
            b = getattr(rnn, f"bias_ih_l{k}", None)
            b2 = getattr(rnn, f"bias_hh_l{k}", None)
            return (0 if b is None else b.data) + (0 if b2 is None else b2.data)

        w0 = rnn.weight_ih_l0.data
        self.table0 = np.ascontiguousarray(model.embedding.weight.data @ w0.T + bias(0), f32)
        self.w_ih_t = [None] + [
            np.ascontiguousarray(getattr(rnn, f"weight_ih_l{k}").data.T) for k in range(1, L)
        ]
        self.w_hh_t = [
            np.ascontiguousarray(getattr(rnn, f"weight_hh_l{k}").data.T) for k in range(L)
        ]
        self.bias = [None] + [np.asarray(bias(k), f32) for k in range(1, L)]
        self.w_dec_t = np.ascontiguousarray(model.decoder.weight.data.T)
        self.b_dec = model.decoder.bias.data.copy()
        self.h = np.zeros((L, H), f32)
        self.c = np.zeros((L, H), f32)
        self.gates = np.empty(4 * H, f32)
        self.tmp4 = np.empty(4 * H, f32)
        self.tmp = np.empty(H, f32)
        self.logits = np.empty(V, f32)
        self.work = np.empty(V, f32)
        self.mask = np.empty(V, bool)
        self.cdf = np.empty(V, np.float64)
        excl = sorted({e for e in exclude if 0 <= e < V})
        # excluding every token would leave nothing to draw (all -inf): then exclude none
        self.exclude = np.array(excl if len(excl) < V else [], dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Zero the state (start a new text); the generator goes on."""
        self.h[...] = 0
        self.c[...] = 0

    def step(self, token: int) -> np.ndarray:
        """Feed one ``token`` (an int id in [0, V)); returns the logits (V,) of the next one, a
        buffer the next call overwrites. Raises ``TypeError`` / ``IndexError`` for a bad id."""
        try:
            token = operator.index(token)  # 1.5 reached NumPy's indexing error
        except TypeError:
            raise TypeError(f"token: expected an int id, got {type(token).__name__}") from None
        if not 0 <= token < self.V:  # a negative id would wrap around the table silently
            raise IndexError(f"token: expected an id in [0, V={self.V}), got {token}")
        H, g = self.H, self.gates
        for k in range(self.L):
            h, c = self.h[k], self.c[k]
            if k == 0:
                np.dot(h, self.w_hh_t[0], out=g)
                g += self.table0[token]
            else:
                np.dot(self.h[k - 1], self.w_ih_t[k], out=g)
                np.dot(h, self.w_hh_t[k], out=self.tmp4)
                g += self.tmp4
                g += self.bias[k]
            i, f, gg, o = g[:H], g[H : 2 * H], g[2 * H : 3 * H], g[3 * H :]
            _sigmoid_(g[: 2 * H])
            np.tanh(gg, out=gg)
            _sigmoid_(o)
            np.multiply(f, c, out=c)
            np.multiply(i, gg, out=self.tmp)
            c += self.tmp
            np.tanh(c, out=self.tmp)
            np.multiply(o, self.tmp, out=h)
        np.dot(self.h[self.L - 1], self.w_dec_t, out=self.logits)
        self.logits += self.b_dec
        return self.logits

    def _draw(self, temperature: float, top_k: int) -> int:
        z = self.logits
        if self.exclude.size:
            z[self.exclude] = -np.inf
        if temperature <= 0:
            return int(np.argmax(z))
        # shift first, so the best logit is 0 and scaling cannot overflow it to inf - inf; the
        # scale is capped at float32's largest (a tiny temperature: greedy, not NaN) and leaves
        # the excluded -inf alone (an infinite temperature: -inf * 0 would be NaN)
        z -= z.max()
        scale = np.float32(min(1.0 / temperature, float(np.finfo(np.float32).max)))
        finite = np.isfinite(z, out=self.mask)
        with np.errstate(over="ignore"):
            np.multiply(z, scale, out=z, where=finite)
        if 0 < top_k < self.V:
            self.work[...] = z
            self.work.partition(self.V - top_k)
            np.less(z, self.work[self.V - top_k], out=self.mask)
            z[self.mask] = -np.inf
        np.exp(z, out=z)
        np.cumsum(z, out=self.cdf)
        u = self.rng.random() * self.cdf[-1]
        return min(int(np.searchsorted(self.cdf, u, side="right")), self.V - 1)

    def generate(self, prime_ids, length: int, temperature: float = 1.0, top_k: int = 0) -> list:
        """``length`` new token ids after feeding ``prime_ids`` (at least one id in [0, V)).
        ``temperature`` <= 0 picks the most likely token; ``top_k`` > 0 samples among the k
        most likely (tokens whose logit ties the k-th's are kept too, as Hugging Face's top-k
        filter keeps them). Everything is checked before the state changes."""
        ids = np.asarray(prime_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"prime_ids: expected at least one token id, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"prime_ids: expected integer token ids, got dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.V:
            raise ValueError(
                f"prime_ids: expected ids in [0, V={self.V}), got [{ids.min()}, {ids.max()}]"
            )
        for name, v in (("length", length), ("top_k", top_k)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(
            temperature, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"temperature: expected a number, got {type(temperature).__name__}")
        if math.isnan(temperature):
            raise ValueError(f"temperature: expected a number, got {temperature}")
        temperature = float(temperature)
        prime_ids = [int(t) for t in ids]
        for t in prime_ids:
            self.step(t)
        out = []
        for _ in range(length):
            t = self._draw(temperature, top_k)
            out.append(t)
            self.step(t)
        return out


def sample_text(
    model: CharLM,
    vocab,
    length: int = 500,
    temperature: float = 1.0,
    top_k: int = 0,
    prime: str = "\n",
    seed: Optional[int] = 0,
) -> str:
    """Sample ``length`` characters from ``model`` after priming it with the text ``prime``.

    Args:
        model: a :class:`CharLM`.
        vocab: its character :class:`~lstm_fast.data.Vocab` (encodes ``prime``, decodes the
            draws).
        length: the characters to generate (default 500).
        temperature: divides the logits; <= 0 picks the most likely character (default 1.0).
        top_k: > 0 samples among the k most likely (default 0: all; ties with the k-th kept).
        prime: the text fed first (default a newline; an empty one counts as a newline).
        seed: seed of the draws (default 0; None: fresh entropy).

    The unknown character (id 0) is never drawn (:class:`Sampler`). Raises ``ValueError`` for a
    ``vocab`` whose size is not the model's ``vocab_size``, ``TypeError`` for a ``prime`` that is
    not a str (and as :meth:`Sampler.generate`), before any character is generated.

    Example::

        >>> from lstm_fast.data import Vocab
        >>> from lstm_fast.models import CharLM, sample_text
        >>> vocab = Vocab.build("abc")
        >>> m = CharLM(len(vocab), 4, 8, 1, seed=0)
        >>> m.decoder.weight.data[...] = 0
        >>> m.decoder.bias.data[vocab.stoi["b"]] = 10.0  # 'b' is by far the most likely
        >>> sample_text(m, vocab, length=5, temperature=0, prime="a")
        'bbbbb'
    """
    # another run's vocabulary: a smaller one failed in decode after the whole text had been
    # generated, a larger one said "prime_ids" (or decoded the draws into the wrong characters)
    V = model.config["vocab_size"]
    if len(vocab) != V:
        raise ValueError(f"vocab: expected {V} tokens (the model's vocab_size), got {len(vocab)}")
    if not isinstance(prime, str):  # (vocab.encode's message named its own "text")
        raise TypeError(f"prime: expected a str, got {type(prime).__name__}")
    s = Sampler(model, seed=seed)
    ids = vocab.encode(prime or "\n")
    return vocab.decode(s.generate(ids, length, temperature, top_k))
