"""Edge cases found in the twenty-first review, training stack: optimizers, truncated BPTT, the
char-LM and classifier training loops, the data pipeline and the CLI."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from lstm_fast import cli, optim
from lstm_fast.models import TrainConfig, load_charlm, train_charlm
from lstm_fast.module import Parameter

TEXT = "the quick brown fox jumps over the lazy dog. " * 30


def _cfg(**kw):
    base = dict(
        embed_size=4,
        hidden_size=8,
        num_layers=1,
        seq_len=8,
        batch_size=2,
        steps=6,
        val_every=0,
        checkpoint_every=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(out):
    model = load_charlm(out)[0]
    return {k: v.copy() for k, v in model.state_dict().items()}


# -- char-LM training: Ctrl-C and resume --------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_charlm_ctrl_c_during_the_optimizer_step_resumes_exactly(tmp_path, monkeypatch, optimizer):
    """A SIGINT arriving while the optimizer updated the weights was raised (deferred) at the end
    of ``opt.step()``, before the loop counted the step: the checkpoint the handler wrote held
    the updated weights and optimizer step 3 with training step 2 and the carried state of step
    2, so ``--resume`` trained window 2 a second time and ended with other weights than an
    uninterrupted run (Adam also with its bias correction one step ahead)."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_charlm(_cfg(optimizer=optimizer), straight, text=TEXT, progress=False, log=lambda s: 0)
    cls = type(optim.make_optimizer(optimizer, [Parameter(np.zeros(1))]))
    update = cls._update

    def interrupted(self, i, p, zero_grad=False):
        out = update(self, i, p, zero_grad)
        if self.step_count == 3 and i == 0:  # in the middle of the update of step 3
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(cls, "_update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_charlm(_cfg(optimizer=optimizer), cut, text=TEXT, progress=False, log=lambda s: 0)
    monkeypatch.setattr(cls, "_update", update)
    meta = load_charlm(cut)[2]
    assert meta["step"] == meta["optimizer"]["step"] == 3
    train_charlm(
        _cfg(optimizer=optimizer), cut, resume=True, text=TEXT, progress=False, log=lambda s: 0
    )
    a, b = _weights(straight), _weights(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_charlm_ctrl_c_in_the_backward_with_dropout_resumes_exactly(tmp_path, monkeypatch):
    """Ctrl-C in a step's forward or backward (where a run spends its time) checkpointed the
    dropout generators *after* that step had drawn its masks; the resumed run redid the step
    with the next masks instead, and ended with other weights than a run straight through
    (by ~1e-2). Now the states from before the interrupted step are saved."""
    from lstm_fast.models import CharLM

    cfg = dict(num_layers=2, dropout=0.3)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_charlm(_cfg(**cfg), straight, text=TEXT, progress=False, log=lambda s: 0)
    backward, calls = CharLM.backward, []

    def interrupted(self, dlogits):
        calls.append(1)
        if len(calls) == 3:  # in the middle of step 3, its masks drawn
            raise KeyboardInterrupt
        return backward(self, dlogits)

    monkeypatch.setattr(CharLM, "backward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_charlm(_cfg(**cfg), cut, text=TEXT, progress=False, log=lambda s: 0)
    monkeypatch.setattr(CharLM, "backward", backward)
    assert load_charlm(cut)[2]["step"] == 2
    train_charlm(_cfg(**cfg), cut, resume=True, text=TEXT, progress=False, log=lambda s: 0)
    a, b = _weights(straight), _weights(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- CLI: train --resume ---------------------------------------------------------------------------
_TINY_ARGS = [
    "--embed-size",
    "4",
    "--hidden-size",
    "8",
    "--num-layers",
    "1",
    "--seq-len",
    "8",
    "--batch-size",
    "2",
    "--val-every",
    "0",
    "--checkpoint-every",
    "0",
    "--quiet",
]


def test_cli_train_resume_reads_the_corpus_given_not_the_saved_path(tmp_path, monkeypatch, capsys):
    """``train CORPUS --resume`` requires CORPUS but read the path saved in the checkpoint
    instead, relative to the directory the first run was started in: resumed from another
    directory with the right path (``a/c.txt``) it failed with ``CORPUS: expected a text file or
    a directory, got 'c.txt'`` (a path the user never gave on that command line), and with
    ``--default-corpus`` the same message named ``--default-corpus``. Now CORPUS is read where
    it is given (its content must still be the checkpoint's: the data digest), and the resumed
    run ends with the weights of a run straight through."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "other.txt").write_text(TEXT[::-1], encoding="utf-8")
    monkeypatch.chdir(tmp_path / "a")
    assert cli.main(["train", "c.txt", "--out", "../cut", "--steps", "3"] + _TINY_ARGS) == 0
    assert cli.main(["train", "c.txt", "--out", "../straight", "--steps", "6"] + _TINY_ARGS) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    args = ["train", "a/c.txt", "--out", "cut", "--steps", "6", "--resume"] + _TINY_ARGS
    assert cli.main(args) == 0, capsys.readouterr().err
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "cut")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # another text is still refused, by its digest
    args = ["train", "other.txt", "--out", "cut", "--steps", "7", "--resume"] + _TINY_ARGS
    assert cli.main(args) == 1
    assert "the corpus differs from the checkpoint's" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "module", "name"),
    [
        ("evaluate", "lstm_fast.models.charlm", "evaluate_bpc"),
        ("sample", "lstm_fast.models.charlm", "sample_text"),
        ("classify", "lstm_fast.models.classifier", "_train_member"),
    ],
)
def test_cli_ctrl_c_exits_130_without_a_traceback(
    tmp_path, monkeypatch, capsys, command, module, name
):
    """Ctrl-C in ``evaluate``, ``sample``, ``classify`` (or ``inspect``) escaped ``cli.main`` as
    a KeyboardInterrupt: a 30-line traceback through the kernels' bindings. ``train`` alone
    caught it. Now every subcommand ends with one line and exit status 130 (128 + SIGINT)."""
    import importlib

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    train_charlm(_cfg(steps=1), run, text=TEXT, progress=False, log=lambda s: 0)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("".join(f"{i % 2}\tgood {i}\n" for i in range(20)), encoding="utf-8")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    argv = {
        "evaluate": ["evaluate", str(run), str(corpus)],
        "sample": ["sample", str(run), "--length", "5"],
        "classify": ["classify", "train", str(tsv), "--out", str(tmp_path / "cls"), "--quiet"],
    }[command]
    try:
        rc = cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail(f"{command}: KeyboardInterrupt escaped cli.main (a traceback)")
    assert rc == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"lstm-fast {command}: interrupted"


def test_cli_train_corpus_directory_holding_the_run_directory(tmp_path, capsys):
    """``train DIR --out DIR/runs/x``: the run's own ``config.json`` and ``vocab.json`` (text
    extensions) were read as corpus by the next run in it, so ``--resume`` with the same CORPUS
    failed (``the corpus differs from the checkpoint's``), and a fresh run there trained on
    the previous run's JSON. Files under the run directory are no longer corpus."""
    corpus = tmp_path / "src"
    corpus.mkdir()
    (corpus / "a.txt").write_text(TEXT, encoding="utf-8")
    run = corpus / "runs" / "x"
    args = ["train", str(corpus), "--out", str(run)] + _TINY_ARGS
    assert cli.main(args + ["--steps", "2"]) == 0
    assert (run / "vocab.json").exists()
    assert cli.main(args + ["--steps", "4", "--resume"]) == 0, capsys.readouterr().err
    straight = tmp_path / "straight"
    assert cli.main(["train", str(corpus / "a.txt"), "--out", str(straight), "--steps", "4"]
                    + _TINY_ARGS) == 0  # fmt: skip
    a, b = _weights(straight), _weights(run)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("command", ["train", "classify"])
def test_cli_empty_out_is_a_usage_error(tmp_path, monkeypatch, capsys, command):
    """``--out ""`` (``--out "$RUN"`` with RUN unset) wrote the run -- checkpoint.npz,
    config.json, vocab.json, loss.png, or classifier.npz -- into the working directory, over
    whatever was there; ``train_charlm(cfg, "")`` and ``train_classifier(..., "")`` the same
    (``Path("")`` is ``"."``). Now a usage error (exit 2) naming --out, and a ValueError naming
    out_dir before any work."""
    from lstm_fast.models import ClassifierConfig, train_classifier

    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "t.tsv").write_text("".join(f"{i % 2}\tgood {i}\n" for i in range(20)))
    monkeypatch.chdir(tmp_path)
    argv = {
        "train": ["train", "c.txt", "--out", ""] + _TINY_ARGS + ["--steps", "1"],
        "classify": ["classify", "train", "t.tsv", "--out", "", "--quiet", "--epochs", "1"],
    }[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"{command}: --out: expected a run directory path, got an empty one ('')\n"
    assert sorted(os.listdir(tmp_path)) == ["c.txt", "t.tsv"]
    want = "^out_dir: expected a run directory path, got an empty one"
    with pytest.raises(ValueError, match=want):
        train_charlm(_cfg(steps=1), "", text=TEXT, progress=False, log=lambda s: 0)
    with pytest.raises(ValueError, match=want):
        train_classifier("t.tsv", "", ClassifierConfig(epochs=1), progress=False, log=print)
    assert sorted(os.listdir(tmp_path)) == ["c.txt", "t.tsv"]


def test_empty_corpus_path_is_not_the_working_directory(tmp_path, monkeypatch, capsys):
    """``train "" --out run`` (``"$CORPUS"`` unset) trained on every text file under the working
    directory (``Path("")`` is ``"."``), and ``evaluate run ""`` / ``inspect run ""`` read it
    too, exit 0; ``ClassifierConfig(lm_corpus="")`` the same for pretraining. An empty path is
    now refused, naming the argument."""
    from lstm_fast import data
    from lstm_fast.models import ClassifierConfig

    (tmp_path / "notes.txt").write_text(TEXT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "", "--out", "run", "--steps", "1"] + _TINY_ARGS) == 2
    assert capsys.readouterr().err == (
        "train: CORPUS: expected None or a path, got an empty one ('')\n"
    )
    assert not (tmp_path / "run").exists()
    train_charlm(_cfg(steps=1), "run", text=TEXT, progress=False, log=lambda s: 0)
    assert cli.main(["evaluate", "run", ""]) == 1
    assert capsys.readouterr().err == (
        "evaluate: TEXT: expected a text file or a directory, got ''\n"
    )
    with pytest.raises(FileNotFoundError, match="^corpus: expected a text file or a directory"):
        data.load_corpus("")
    with pytest.raises(ValueError, match=r"^corpus: expected None or a path, got an empty one"):
        TrainConfig(corpus="")
    with pytest.raises(ValueError, match=r"^lm_corpus: expected None or a path, got an empty"):
        ClassifierConfig(lm_corpus="")


def test_cli_output_pipe_closed_early_is_no_traceback(tmp_path):
    """``lstm-fast sample DIR | head -c 0``: the reader closed the pipe and the command died
    with a ``BrokenPipeError`` traceback (or 'Exception ignored ... BrokenPipeError' at exit).
    Now it ends quietly with exit status 1 (Python's own for EPIPE)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    train_charlm(_cfg(steps=1), run, text=TEXT, progress=False, log=lambda s: 0)
    p = subprocess.Popen(
        [sys.executable, "-m", "lstm_fast.cli", "sample", str(run), "--length", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()  # the reader leaves before anything is written
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# -- data ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_cython", [None, False])
def test_featurize_n_gram_lengths_beyond_the_longest_document(use_cython):
    """``featurize`` (Naive Bayes' features) looped over n = 1..char_n and 1..word_n for every
    document even where no n-gram is that long: ``char_n=10**8`` took 30 s on 100 three-letter
    texts (``NaiveBayes(char_n=10**8).fit`` the same), and ``2**31`` raised an OverflowError
    naming nothing (the Cython loop's C int). The lengths are now bounded by the longest
    document, which changes no feature."""
    from lstm_fast import data

    docs = ["ab cd", "a", "", "abc d e"] * 25
    want_index: dict = {}
    want = data.featurize(docs, want_index, grow=True, char_n=7, word_n=7, use_cython=use_cython)
    for n in (8, 10**6, 2**31, 2**63):
        index: dict = {}
        got = data.featurize(docs, index, grow=True, char_n=n, word_n=n, use_cython=use_cython)
        assert index == want_index
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_evaluate_bpc_scores_every_id_after_the_first(batch_size):
    """evaluate_bpc reads the ids as B equal streams; the up to B - 1 ids past them were not
    scored, although the docstring promises every id after the first. They are now scored from
    the last stream's final state. A model whose prediction depends only on the current token
    (no recurrent weights, forget gates shut) gives the single-stream mean for any B."""
    from lstm_fast.models import CharLM, evaluate_bpc
    from lstm_fast.nn import softmax_cross_entropy

    V, H = 8, 8
    m = CharLM(vocab_size=V, embed_size=4, hidden_size=H, num_layers=2, seed=0)
    for k in range(2):
        getattr(m.rnn, f"weight_hh_l{k}").data[...] = 0.0
        getattr(m.rnn, f"bias_ih_l{k}").data[H : 2 * H] = -60.0  # forget gate: sigmoid ~ 0
    ids = np.random.default_rng(1).integers(0, V, 203)  # 202 targets: 7 streams leave 6 over
    m.eval()
    logits, _ = m(ids[:-1, None].astype(np.int64))
    total, _ = softmax_cross_entropy(
        logits.reshape(-1, V), ids[1:], reduction="sum", need_grad=False
    )
    expected = total / (len(ids) - 1) / np.log(2)
    got = evaluate_bpc(m, ids, batch_size=batch_size, seq_len=10)
    assert got == pytest.approx(expected, rel=1e-6)


def test_a_bad_threads_option_is_named_as_the_option(capsys):
    """--threads 0 said "--threads: set_num_threads: n: expected ...", naming the function's
    argument after the option; the message names the option alone, with the range."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--default-corpus", "--out", "unused-run-dir", "--threads", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--threads: expected an int in [1, " in err and "got 0" in err, err
    assert "set_num_threads" not in err


def test_resume_says_which_settings_of_the_call_the_checkpoint_overrides(tmp_path):
    """--resume continues with the checkpoint's settings and silently dropped the call's other
    ones (a new --lr, say). It now logs each that differs, with both values; a call with the
    same settings logs none."""
    out = tmp_path / "run"
    train_charlm(_cfg(steps=2), out, text=TEXT, progress=False, log=lambda s: 0)
    same, other = [], []
    train_charlm(_cfg(steps=3), out, text=TEXT, progress=False, resume=True, log=same.append)
    train_charlm(
        _cfg(steps=4, lr=0.5, hidden_size=12),
        out,
        text=TEXT,
        progress=False,
        resume=True,
        log=other.append,
    )
    assert not any("settings are used" in m for m in same), same
    said = [m for m in other if "settings are used" in m]
    assert len(said) == 1, other
    assert "lr 0.002 (this call: 0.5)" in said[0] and "hidden_size 8 (this call: 12)" in said[0]
    assert load_charlm(out)[0].config["hidden_size"] == 8  # the checkpoint's, as before
