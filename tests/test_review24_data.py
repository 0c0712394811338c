"""Edge cases found in the twenty-fourth review, data pipeline and command line: corpora,
vocabularies, the char-LM's training end, sampling, and the subcommands' output."""

from __future__ import annotations

import numpy as np
import pytest
from test_review21_training import TEXT, _weights  # (the same tiny run)
from test_review21_training import _cfg as _cfg21

from lstm_fast import cli
from lstm_fast.models import load_charlm, train_charlm


def _cfg(**kw):
    return _cfg21(**{"steps": 4, **kw})


# -- char-LM training: Ctrl-C at the end of a run ------------------------------------------------
def test_ctrl_c_in_the_final_validation_writes_a_checkpoint(tmp_path, monkeypatch):
    """The validation after the last step (up to ``val_max_chars`` held-out characters, the
    longest pause of a run's end) ran outside the loop's Ctrl-C handler: an interrupt there
    wrote no checkpoint and said nothing, so with ``checkpoint_every=0`` (only at the end) every
    step of the run was lost. Now the handler covers it: the checkpoint holds the last step,
    and ``resume`` ends with the weights of a run straight through."""
    import lstm_fast.models.charlm as charlm

    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_charlm(_cfg(), straight, text=TEXT, progress=False, log=lambda s: 0)
    evaluate = charlm.evaluate_bpc

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(charlm, "evaluate_bpc", interrupted)
    logged = []
    with pytest.raises(KeyboardInterrupt):
        train_charlm(_cfg(), cut, text=TEXT, progress=False, log=logged.append)
    assert (cut / "checkpoint.npz").exists(), "no checkpoint after Ctrl-C in the final validation"
    assert load_charlm(cut)[2]["step"] == 4
    assert "interrupted: checkpoint written at step 4" in logged[-1]
    monkeypatch.setattr(charlm, "evaluate_bpc", evaluate)
    res = train_charlm(_cfg(), cut, resume=True, text=TEXT, progress=False, log=lambda s: 0)
    assert res["step"] == 4 and res["val_bpc"] is not None
    a, b = _weights(straight), _weights(cut)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- corpora ------------------------------------------------------------------------------------
def test_load_corpus_reads_only_max_chars_of_a_large_file(tmp_path):
    """``load_corpus(path, max_chars=N)`` read the whole file and then cut it: ``inspect`` (20,000
    characters by default) or ``evaluate --max-chars`` on a multi-GB log needed the file's size
    in memory (a MemoryError under a 1 GiB address-space limit for a 3 GB file). Now only N
    characters are read, from a file and from a directory's files."""
    import os
    import subprocess
    import sys

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # sparse: 3 GB of NUL bytes that take no disk space
        f.write(b"ab\r\ncd")
        f.truncate(3 << 30)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from lstm_fast.data import load_corpus\n"
        "print(repr(load_corpus(sys.argv[1], max_chars=5)), repr(load_corpus(sys.argv[2], "
        "max_chars=5)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(big), str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["'ab\\ncd'"] * 2


def test_load_corpus_extensions_are_suffixes_not_a_string(tmp_path):
    """``extensions=".txt"`` (a str where a sequence is expected) was searched as a string:
    files named ``a.t``, ``b.tx`` and ``README`` (no suffix: ``"" in ".txt"``) were read as
    corpus, and ``extensions=(".TXT",)`` or ``("txt",)`` matched no file (a file's suffix is
    lower-cased, and has its dot). Now a str is refused naming ``extensions``, and suffixes are
    compared case-insensitively, the dot optional."""
    from lstm_fast.data import load_corpus

    for name, text in [("a.txt", "first"), ("b.t", "B"), ("README", "R"), ("c.TXT", "second")]:
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(TypeError, match=r"extensions: expected a sequence .*got '\.txt'"):
        load_corpus(tmp_path, extensions=".txt")
    with pytest.raises(TypeError, match="extensions: expected str suffixes, got 1"):
        load_corpus(tmp_path, extensions=[1])
    for exts in ([".txt"], (".TXT",), ("txt",)):
        assert load_corpus(tmp_path, extensions=exts) == "first\nsecond", exts
    with pytest.raises(TypeError, match="corpus: expected None or a path, got int"):
        load_corpus(5)


# -- sampling and inspection ----------------------------------------------------------------------
def test_sample_text_and_record_activations_refuse_another_models_vocabulary():
    """``sample_text(model, vocab)`` with another run's vocabulary: a smaller one generated the
    whole text and then failed in ``vocab.decode`` (an IndexError about ``ids``), a larger one
    reported ``prime_ids`` or decoded the draws into the wrong characters, and
    ``record_activations`` failed in NumPy's indexing (a larger one). Now both refuse it first,
    naming ``vocab`` with the expected and given sizes; a ``prime`` that is not a str is named
    too."""
    from lstm_fast.data import Vocab
    from lstm_fast.models import CharLM, sample_text
    from lstm_fast.models.inspect import record_activations

    model = CharLM(7, 4, 8, 1, seed=0)
    for text in ("abc", "abcdefghijkl"):  # 4 and 13 tokens
        vocab = Vocab.build(text)
        msg = f"vocab: expected 7 tokens \\(the model's vocab_size\\), got {len(vocab)}"
        with pytest.raises(ValueError, match=msg):
            sample_text(model, vocab, length=50, prime="l")
    with pytest.raises(ValueError, match="vocab: expected at most 7 tokens .*, got 13"):
        record_activations(model, vocab, "abcl")
    assert record_activations(model, Vocab.build("abc"), "abcl")["h"].shape == (4, 1, 8)
    vocab = Vocab.build("abcdef")
    with pytest.raises(TypeError, match="prime: expected a str, got int"):
        sample_text(model, vocab, length=5, prime=5)
    assert len(sample_text(model, vocab, length=5, prime="a")) == 5


# -- vocabularies -------------------------------------------------------------------------------
def test_vocab_refuses_tokens_and_unk_that_do_not_round_trip(tmp_path):
    """``Vocab(["a"], unk=5)`` and ``Vocab([1, 2], level="word")`` were made (a char vocabulary
    of ints failed with ``object of type 'int' has no len()``), but ``save`` then wrote a file
    ``load`` refused (``unk: expected a str``, ``itos: expected a list of str``), and an int
    word could never be encoded. Now the constructor refuses them, naming the argument;
    a repeated token is named too."""
    from lstm_fast.data import Vocab

    with pytest.raises(TypeError, match="unk: expected None or a str, got int"):
        Vocab(["a"], unk=5)
    for level in ("char", "word"):
        with pytest.raises(TypeError, match="tokens: expected str tokens, got int at 1"):
            Vocab(["a", 2], level=level)
    with pytest.raises(TypeError, match="tokens: expected an iterable of str, got NoneType"):
        Vocab(None)
    with pytest.raises(ValueError, match="tokens: expected unique tokens, got 'b' twice"):
        Vocab(["a", "b", "b"])
    v = Vocab(["a", "b"], unk="?", pad=True)
    v.save(tmp_path / "v.json")
    w = Vocab.load(tmp_path / "v.json")
    assert (w.itos, w.unk, w.pad) == (v.itos, "?", True)


# -- the command line ---------------------------------------------------------------------------
def test_json_output_of_a_diverged_run_is_json(tmp_path, monkeypatch, capsys):
    """``--json`` printed ``{"bpc": NaN, ...}`` for a diverged model (and ``Infinity`` for an
    overflowed figure): not JSON (RFC 8259), so ``jq`` and strict parsers failed on the line
    meant for them. Such figures are now null."""
    import json

    import lstm_fast.models.charlm as charlm

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    train_charlm(_cfg(steps=1), run, text=TEXT, progress=False, log=lambda s: 0)
    capsys.readouterr()
    monkeypatch.setattr(charlm, "evaluate_bpc", lambda *a, **k: float("nan"))
    assert cli.main(["evaluate", str(run), str(corpus), "--json"]) == 0

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    line = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(line, parse_constant=refuse)
    assert figures["bpc"] is None and figures["chars"] == len(TEXT)


def test_classify_lm_corpus_without_pretraining_steps_is_refused(tmp_path, capsys):
    """``classify train TSV --lm-corpus BOOK`` without ``--lm-steps`` (default 0) trained for
    minutes and never read BOOK -- not even to see that it exists -- and said nothing, as
    ``ClassifierConfig(lm_corpus=...)`` alone. Now a usage error naming the option, before any
    work (as ``--words`` without bigrams)."""
    from lstm_fast.models import ClassifierConfig

    tsv = tmp_path / "t.tsv"
    tsv.write_text("".join(f"{i % 2}\tgood {i}\n" for i in range(20)), encoding="utf-8")
    argv = ["classify", "train", str(tsv), "--out", str(tmp_path / "run"), "--quiet"]
    assert cli.main(argv + ["--lm-corpus", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err == (
        "classify: --lm-corpus: expected --lm-steps > 0 (the pretraining that reads it), "
        "got --lm-steps=0\n"
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"^lm_corpus: expected lm_steps > 0"):
        ClassifierConfig(lm_corpus=str(tsv))
    assert ClassifierConfig(lm_corpus=str(tsv), lm_steps=1).lm_corpus == str(tsv)


def test_classify_eval_takes_the_checkpoint_file_and_names_a_missing_one(tmp_path, capsys):
    """``classify eval RUN/classifier.npz TSV`` (``sample`` and ``evaluate`` take a checkpoint
    file) failed with ``[Errno 20] Not a directory: 'RUN/classifier.npz/classifier.npz'``; a
    missing run printed a bare ``[Errno 2]``. Now the file is read (with the Naive Bayes file
    beside it), and a missing one is ``no classifier checkpoint at ...``."""
    from lstm_fast.models import ClassifierConfig, load_classifier, train_classifier

    tsv = tmp_path / "t.tsv"
    rows = "".join(f"{i % 2}\t{'good' if i % 2 else 'bad'} {i}\n" for i in range(20))
    tsv.write_text(rows, encoding="utf-8")
    run = tmp_path / "run"
    cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, batch_size=8)
    train_classifier(tsv, run, cfg, progress=False, log=lambda s: 0)
    capsys.readouterr()
    assert cli.main(["classify", "eval", str(run / "classifier.npz"), str(tsv)]) == 0
    by_file = capsys.readouterr().out
    assert cli.main(["classify", "eval", str(run), str(tsv)]) == 0
    assert capsys.readouterr().out == by_file
    assert load_classifier(run / "classifier.npz")[2] is not None  # the Naive Bayes beside it
    assert cli.main(["classify", "eval", str(tmp_path / "none"), str(tsv)]) == 1
    err = capsys.readouterr().err
    assert err == f"classify: no classifier checkpoint at {tmp_path / 'none' / 'classifier.npz'}\n"


# -- labelled files and the Naive Bayes baseline --------------------------------------------------
def test_read_tsv_skips_whitespace_only_lines(tmp_path):
    """A line holding only spaces or a tab (an editor's trailing line, a spreadsheet's empty
    row) is blank, as the docstring says blank lines are ignored; it failed the whole file with
    ``expected 'label<TAB>text'`` (or ``label '' is not an integer``)."""
    from lstm_fast.data import read_tsv

    path = tmp_path / "t.tsv"
    path.write_bytes(b"\xef\xbb\xbflabel\ttext\r\n1\tgood film\r\n   \r\n\t\r\n0\tdull\r\n  \n")
    labels, texts = read_tsv(path)
    assert labels.tolist() == [1, 0] and texts == ["good film", "dull"]
    path.write_text("1\tok\nx y\n", encoding="utf-8")  # a line without a tab still fails
    with pytest.raises(ValueError, match=r"t\.tsv:2: expected 'label<TAB>text'"):
        read_tsv(path)


def test_naive_bayes_accuracy_checks_the_labels_and_predict_needs_fit():
    """``NaiveBayes.accuracy(texts, labels)`` broadcast labels of another length against the
    predictions (1 text and 2 labels gave 0.5, silently; no text gave NaN with two
    RuntimeWarnings), and ``predict`` before ``fit`` was an AttributeError about
    ``log_prior``. Now ``labels`` is named with the expected and given shapes, and an unfitted
    model says so."""
    from lstm_fast.models import NaiveBayes

    with pytest.raises(RuntimeError, match="NaiveBayes: not fitted"):
        NaiveBayes().predict(["a"])
    nb = NaiveBayes().fit(["good film", "bad film"], [1, 0])
    with pytest.raises(ValueError, match=r"labels: expected shape \(N=1,\) .*got \(2,\)"):
        nb.accuracy(["good"], [1, 0])
    with pytest.raises(ValueError, match=r"labels: expected shape \(N=2,\) .*got \(1, 2\)"):
        nb.accuracy(["good", "bad"], [[1, 0]])
    with pytest.raises(ValueError, match=r"labels: expected shape \(N=0,\) with N >= 1"):
        nb.accuracy([], [])
    with pytest.raises(TypeError, match="texts: expected a sequence of str, got a str"):
        nb.fit("good", [1, 0, 1, 1])
    assert nb.accuracy(["good", "bad"], [1, 0]) == 1.0


def test_vocab_save_that_fails_leaves_no_temporary_file(tmp_path):
    """``Vocab.save(path)`` wrote ``path.tmp<pid>`` and renamed it: when the rename failed (a
    ``path`` that is a directory) the temporary file stayed beside it, and two threads saving
    to one path wrote into the same one. It now writes as the checkpoints do."""
    from lstm_fast.data import Vocab

    (tmp_path / "vocab.json").mkdir()
    with pytest.raises(OSError):
        Vocab.build("hello").save(tmp_path / "vocab.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab.json"]
    Vocab.build("hello").save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == Vocab.build("hello").itos


@pytest.mark.parametrize("where", ["reading", "training"])
def test_cli_train_ctrl_c_says_it_was_interrupted(tmp_path, monkeypatch, capsys, where):
    """``train`` caught a Ctrl-C itself and returned 130 without a word: interrupted while it
    read the corpus (the default corpus, a large directory) it printed nothing at all, unlike
    every other subcommand (``lstm-fast X: interrupted``). Now it ends with that line too,
    after the training loop's own ``interrupted: checkpoint written ...``."""
    import lstm_fast.data as data
    from lstm_fast.models import CharLM

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "reading":
        monkeypatch.setattr(data, "_load_corpus", interrupted)
    else:
        monkeypatch.setattr(CharLM, "backward", interrupted)
    argv = ["train", str(corpus), "--out", str(tmp_path / "run"), "--quiet", "--steps", "3"]
    argv += ["--embed-size", "4", "--hidden-size", "8", "--num-layers", "1"]
    assert cli.main(argv + ["--seq-len", "8", "--batch-size", "2"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "lstm-fast train: interrupted"
    if where == "training":
        assert err[-2].startswith("interrupted: checkpoint written at step 0")


def test_bptt_windows_are_the_same_arrays_on_both_paths():
    """``BPTTBatcher(use_cython=False).window(k)`` returned Fortran-ordered arrays (``astype`` of
    the transposed view), the Cython loop C-contiguous ones: "the results are the same" held for
    the values only. And ``drop_last="no"`` was truthy, so the short last window was dropped."""
    from lstm_fast.data import BPTTBatcher

    ids = np.arange(40, dtype=np.int32)[::2]  # non-contiguous int32 ids
    for k in range(3):
        a = BPTTBatcher(ids, 2, 3, drop_last=False, use_cython=True).window(k)
        b = BPTTBatcher(ids, 2, 3, drop_last=False, use_cython=False).window(k)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
            assert u.dtype == v.dtype == np.int64
            assert u.flags.c_contiguous and v.flags.c_contiguous
    with pytest.raises(TypeError, match="drop_last: expected True or False, got 'no'"):
        BPTTBatcher(ids, 2, 3, drop_last="no")


def test_numpy_str_texts_on_the_cython_path():
    """Texts that are ``np.str_`` (the elements of ``np.array(texts)``, a str subclass) passed
    every check, then the Cython loops refused them: ``NaiveBayes().fit(np.array(texts), y)``
    raised ``Expected str, got numpy.str_``, and ``vocab.encode`` / ``Vocab.build`` of one
    ``Argument 'text' has incorrect type``, where the plain-Python path took them. Both paths
    now give the same results for them as for plain str."""
    from lstm_fast.data import Vocab, featurize
    from lstm_fast.models import NaiveBayes

    texts = ["good film 😀", "bad film"]
    arr = np.array(texts)
    assert type(arr[0]) is np.str_
    for cy in (True, False):
        a = featurize(arr, {}, grow=True, use_cython=cy)
        b = featurize(texts, {}, grow=True, use_cython=cy)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
        assert Vocab.build(arr[0], use_cython=cy).itos == Vocab.build(texts[0]).itos
        for level in ("char", "word"):
            vocab = Vocab.build(texts, level=level)
            np.testing.assert_array_equal(
                vocab.encode(arr[0], use_cython=cy), vocab.encode(texts[0], use_cython=cy)
            )
    nb = NaiveBayes().fit(arr, np.array([1, 0], np.int32))
    assert nb.predict(np.array(["good"])).tolist() == [1]


def test_classifier_predict_checks_its_arguments_first():
    """``predict_log_proba(model, seqs, batch_size=-1)`` ran no batch and returned
    ``np.empty``'s uninitialised memory as the probabilities (``batch_size=0``: a ``range()``
    error); an empty sequence failed as ``lengths`` in the middle of the batches. Now each is
    named before any batch runs."""
    from lstm_fast.models import SequenceClassifier
    from lstm_fast.models.classifier import predict, predict_log_proba

    m = SequenceClassifier(10, 3, 4, 5, pad_id=1, seed=0)
    seqs = [np.array([2, 3], np.int32), np.array([4], np.uint8), np.arange(2, 9)]
    ref = predict_log_proba(m, seqs)
    for bad in (-1, 0, 1.5):
        with pytest.raises(ValueError, match=f"batch_size: expected an int >= 1, got {bad}"):
            predict_log_proba(m, seqs, batch_size=bad)
    with pytest.raises(ValueError, match="seqs: expected sequences of at least 1 token, got an"):
        predict(m, seqs + [np.array([], np.int64)])
    np.testing.assert_allclose(predict_log_proba(m, seqs, batch_size=1), ref, rtol=1e-6)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_inspector_helpers_on_empty_mismatched_and_surrogate_input(tmp_path):
    """The inspector's public helpers: ``render_html`` / ``render_png`` cut ``values`` or the
    text to the shorter of the two (``zip``) and failed on an empty text with NumPy's
    ``zero-size array`` error; ``unit_series`` wrapped an index past the last unit around to
    another unit (and -1 to the last c unit); ``text_features`` raised UnicodeEncodeError for a
    lone surrogate (which training texts may hold); ``rank_cells`` failed to reshape 0 rows
    (then warned "Mean of empty slice")."""
    from lstm_fast.models import inspect as ins

    with pytest.raises(ValueError, match=r"values: expected shape \(N=3,\).*got \(2,\)"):
        ins.render_html("abc", np.zeros(2))
    with pytest.raises(ValueError, match=r"values: expected shape \(N=1,\).*got \(2,\)"):
        ins.render_png(tmp_path / "a.png", "a", np.zeros(2))
    assert ins.render_html("", np.zeros(0)).count("<span") == 0
    acts = {"c": np.zeros((3, 1, 2)), "h": np.ones((3, 1, 2))}
    for bad in (4, 7, -1):
        with pytest.raises(ValueError, match=rf"index: expected an int in \[0, 4\), got {bad}"):
            ins.unit_series(acts, bad)
    assert ins.unit_series(acts, 3).tolist() == [1.0, 1.0, 1.0]
    feats = ins.text_features('x = "a\udc80"\n')
    assert feats["in_quote"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0]
    empty = {"c": np.zeros((0, 1, 2)), "h": np.zeros((0, 1, 2))}
    assert len(ins.rank_cells(empty, ins.text_features(""), 1)["in_quote"]) == 1


def test_sampler_exclude_and_init_state_are_checked():
    """``Sampler(model, exclude=(1.5,))`` excluded id 1 (``int(1.5)``), ``exclude=("a",)`` or
    ``None`` raised TypeErrors naming nothing, and ``CharLM.init_state(-1)`` NumPy's
    ``negative dimensions are not allowed``. Each is now named."""
    from lstm_fast.models import CharLM, Sampler

    m = CharLM(5, 4, 8, 1, seed=0)
    for bad in ((1.5,), ("a",), None):
        with pytest.raises(TypeError, match="exclude: expected an iterable of int ids"):
            Sampler(m, exclude=bad)
    assert Sampler(m, exclude=np.array([1, 2, 9])).exclude.tolist() == [1, 2]
    for bad in (-1, 2.0):
        with pytest.raises(ValueError, match=f"batch_size: expected an int >= 0, got {bad}"):
            m.init_state(bad)
    assert m.init_state(np.int64(3))[0].shape == (1, 3, 8)


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_cli_output_to_a_full_disk_is_one_line(tmp_path, command):
    """``lstm-fast sample DIR > /dev/full`` (a full disk, a quota) ended in an ``OSError: [Errno
    28] No space left on device`` traceback through ``cli.main``; only a closed pipe was
    handled. Now one line naming the subcommand and the error, exit status 1."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    train_charlm(_cfg(steps=1), run, text=TEXT, progress=False, log=lambda s: 0)
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    argv = {
        "sample": ["sample", str(run), "--length", "20"],
        "evaluate": ["evaluate", str(run), str(corpus), "--json"],
    }[command]
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [sys.executable, "-m", "lstm_fast.cli"] + argv,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
            timeout=120,
        )
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"lstm-fast {command}: ") and line.endswith("No space left on device")


def test_ctrl_c_in_a_periodic_validation_resumes_with_it(tmp_path, monkeypatch):
    """A Ctrl-C in the validation of step k (``val_every``) checkpointed step k without its
    figure, and the resumed run went on to step k + 1: its history (``hist/val``, the loss plot)
    lacked step k's validation, unlike a run straight through. Now the resumed run validates
    step k first."""
    import lstm_fast.models.charlm as charlm
    from lstm_fast.models.checkpoint import load_npz

    cfg = dict(steps=6, val_every=2)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_charlm(_cfg(**cfg), straight, text=TEXT, progress=False, log=lambda s: 0)
    evaluate = charlm.evaluate_bpc
    calls = []

    def interrupted_at_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(charlm, "evaluate_bpc", interrupted_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_charlm(_cfg(**cfg), cut, text=TEXT, progress=False, log=lambda s: 0)
    monkeypatch.setattr(charlm, "evaluate_bpc", evaluate)
    assert load_charlm(cut)[2]["step"] == 4
    train_charlm(_cfg(**cfg), cut, resume=True, text=TEXT, progress=False, log=lambda s: 0)
    a = load_npz(straight / "checkpoint.npz")[0]
    b = load_npz(cut / "checkpoint.npz")[0]
    assert a["hist/val"][:, 0].tolist() == [2, 4, 6]
    np.testing.assert_array_equal(a["hist/val"], b["hist/val"])
    np.testing.assert_array_equal(a["hist/train_bpc"], b["hist/train_bpc"])


def test_out_dir_that_is_a_dangling_symbolic_link_is_refused_first(tmp_path):
    """An ``--out`` that is (or is under) a symbolic link to a missing target passed the run
    directory check as "missing", then ``mkdir`` raised ``FileExistsError``: for the classifier
    after every epoch had been trained (it writes at the end). Now refused before any work,
    naming the link and its target."""
    from lstm_fast.models import ClassifierConfig, train_classifier

    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone" / "run")
    tsv = tmp_path / "t.tsv"
    tsv.write_text("".join(f"{i % 2}\tgood {i}\n" for i in range(20)), encoding="utf-8")
    logged = []
    cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, batch_size=8)
    for out in (link, link / "sub"):
        with pytest.raises(NotADirectoryError, match="is a symbolic link to the missing"):
            train_classifier(tsv, out, cfg, progress=False, log=logged.append)
        with pytest.raises(NotADirectoryError, match=f"{str(link)!r} is a symbolic link"):
            train_charlm(_cfg(), out, text=TEXT, progress=False, log=logged.append)
    assert logged == [] and not (tmp_path / "gone").exists()


def test_inspect_out_through_a_dangling_link_is_checked_first(tmp_path, capsys, monkeypatch):
    """``inspect --out LINK.html`` with LINK pointing into a missing directory passed the output
    check (its own directory exists), recorded every activation, then failed to write ``No
    such file or directory``. Now a usage error first, naming the link and its target; a link
    to a new file in an existing directory is still written through."""
    from lstm_fast.models import inspect as ins

    run = tmp_path / "run"
    train_charlm(_cfg(steps=1), run, text=TEXT, progress=False, log=lambda s: 0)
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    link = tmp_path / "out.html"
    link.symlink_to(tmp_path / "gone" / "x.html")
    recorded = []
    record = ins.record_activations
    monkeypatch.setattr(ins, "record_activations", lambda *a: recorded.append(1) or record(*a))
    capsys.readouterr()
    assert cli.main(["inspect", str(run), str(corpus), "--out", str(link)]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link to" in err and "whose directory does not exist" in err, err
    assert recorded == []
    ok = tmp_path / "ok.html"
    ok.symlink_to(tmp_path / "new.html")
    assert cli.main(["inspect", str(run), str(corpus), "--out", str(ok)]) == 0
    assert (tmp_path / "new.html").stat().st_size > 0


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_directory_as_checkpoint_is_refused_without_blocking(tmp_path):
    """``lstm-fast sample FIFO`` (a named pipe where a checkpoint was expected) blocked in
    ``open()`` until some writer came -- forever; a directory named ``checkpoint.npz`` was an
    ``IsADirectoryError``. Both are now a :class:`CheckpointError` naming the path, before
    anything is opened."""
    import os
    import subprocess
    import sys

    from lstm_fast.models.checkpoint import CheckpointError, load_npz

    fifo = tmp_path / "ck.npz"
    os.mkfifo(fifo)
    p = subprocess.run(
        [sys.executable, "-m", "lstm_fast.cli", "sample", str(fifo)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,  # a guard against the old hang, not a timing assertion
    )
    assert p.returncode == 1, p.stderr
    assert (
        p.stderr
        == f"sample: {fifo}: not a regular file, not an lstm_fast checkpoint (a .npz file)\n"
    )
    (tmp_path / "run" / "checkpoint.npz").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="checkpoint.npz: a directory, not an lstm_fast"):
        load_charlm(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "missing.npz")
