"""Review 25: the data pipeline's and the command line's remaining loose ends (review 24's list).

* ``featurize(grow=...)`` and ``Vocab(pad=...)`` take a bool: ``"no"`` was truthy (the index
  grew, a pad token was added);
* ``train_val_split`` and ``evaluate_bpc`` given a generator name ``ids`` (``len()`` failed
  unnamed);
* the command line's messages name every setting as its option (``--lm-steps``, not
  ``lm_steps``), never inside a path or a quoted value;
* ``evaluate`` and ``inspect`` leave the run's own files out of a TEXT directory that holds the
  run, as ``train`` leaves them out of its corpus.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstm_fast import cli
from lstm_fast.commands import in_option_terms
from lstm_fast.data import Vocab, featurize, train_val_split
from lstm_fast.models import CharLM, evaluate_bpc


@pytest.mark.parametrize("grow", ["no", 1, None])
def test_featurize_grow_must_be_a_bool(grow):
    index: dict = {}
    with pytest.raises(TypeError, match="grow: expected True or False"):
        featurize(["ab"], index, grow=grow, char_n=1, word_n=1)
    assert index == {}  # refused before any feature was added


def test_featurize_takes_numpy_bools():
    index: dict = {}
    featurize(["ab"], index, grow=np.bool_(True), char_n=1, word_n=1)
    assert len(index) > 0


@pytest.mark.parametrize("pad", ["no", 0, None])
def test_vocab_pad_must_be_a_bool(pad):
    with pytest.raises(TypeError, match="pad: expected True or False"):
        Vocab(["a", "b"], pad=pad)
    assert Vocab(["a"], pad=np.bool_(True)).pad_id == 1


def test_train_val_split_names_ids_that_are_not_a_sequence():
    with pytest.raises(TypeError, match="ids: expected a sequence or array"):
        train_val_split(iter(range(10)), 0.1)
    train, val = train_val_split(list(range(10)), 0.2)  # a list still works
    assert list(val) == [8, 9] and len(train) == 8


def test_evaluate_bpc_names_ids_that_are_not_a_sequence():
    m = CharLM(vocab_size=5, embed_size=3, hidden_size=4, num_layers=1, seed=0)
    with pytest.raises(TypeError, match="ids: expected a sequence or array"):
        evaluate_bpc(m, (i % 5 for i in range(20)), batch_size=2, seq_len=4)
    assert evaluate_bpc(m, [i % 5 for i in range(20)], batch_size=2, seq_len=4) > 0


def test_option_terms_name_other_settings_as_options():
    names = {"lm_corpus": "--lm-corpus", "lm_steps": "--lm-steps", "out_dir": "--out"}
    msg = in_option_terms(
        ValueError("lm_corpus: expected lm_steps > 0 (the pretraining), got lm_steps=0"), names
    )
    assert msg == "--lm-corpus: expected --lm-steps > 0 (the pretraining), got --lm-steps=0"
    # a path or a quoted value that holds a setting's name is left as it is
    msg = in_option_terms(
        ValueError("out_dir: expected a directory, got '/tmp/out_dir/x' and /a/lm_steps"), names
    )
    assert msg == "--out: expected a directory, got '/tmp/out_dir/x' and /a/lm_steps"
    # a message that does not start with a setting is unchanged
    assert in_option_terms(ValueError("lm_steps is odd"), names) == "lm_steps is odd"


def test_classify_lm_corpus_alone_names_the_options(tmp_path, capsys):
    tsv = tmp_path / "r.tsv"
    tsv.write_text("".join(f"{i % 2}\ttext number {i}\n" for i in range(40)), encoding="utf-8")
    corpus = tmp_path / "lm.txt"
    corpus.write_text("some text " * 50, encoding="utf-8")
    rc = cli.main(
        ["classify", "train", str(tsv), "--out", str(tmp_path / "run"), "--lm-corpus", str(corpus)]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "--lm-corpus" in err and "--lm-steps" in err and "lm_steps" not in err


def _train(corpus_dir, run):
    args = ["train", str(corpus_dir), "--out", str(run), "--hidden-size", "8"]
    args += ["--embed-size", "4", "--num-layers", "1", "--seq-len", "8", "--batch-size", "2"]
    args += ["--steps", "3", "--val-every", "0", "--checkpoint-every", "0", "--quiet"]
    assert cli.main(args) == 0


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_and_inspect_leave_the_run_out_of_a_text_directory(tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("def f(x):\n    return x + 1\n" * 20, encoding="utf-8")
    alone = tmp_path / "alone"  # the same text without the run inside
    alone.mkdir()
    (alone / "a.txt").write_text((texts / "a.txt").read_text(encoding="utf-8"), encoding="utf-8")
    run = texts / "run"  # the run (with its JSON files) inside TEXT
    _train(alone, run)
    assert any(p.suffix == ".json" for p in run.iterdir())
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), str(texts), "--json"]) == 0
    inside = _last_json(capsys)
    assert cli.main(["evaluate", str(run), str(alone), "--json"]) == 0
    outside = _last_json(capsys)
    assert inside == {**inside, "bpc": outside["bpc"], "chars": outside["chars"]}
    # the checkpoint file given instead of its directory: the same run left out
    ckpt = next(p for p in run.iterdir() if p.suffix == ".npz")
    assert cli.main(["evaluate", str(ckpt), str(texts), "--json"]) == 0
    assert _last_json(capsys)["chars"] == outside["chars"]
    html = tmp_path / "act.html"
    assert cli.main(["inspect", str(run), str(texts), "--out", str(html), "--json"]) == 0
    a = _last_json(capsys)
    assert cli.main(["inspect", str(run), str(alone), "--out", str(html), "--json"]) == 0
    b = _last_json(capsys)
    assert a["correlations"] == b["correlations"]  # the same text read (the run's JSON not)
