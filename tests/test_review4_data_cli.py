"""Edge cases found in the fourth review: the text pipeline (window gathering, corpora, TSV labels,
vocabularies), checkpoint metadata checked before a model is built, and the command line (every
option checked up front and named, one-line errors instead of tracebacks, nothing half-written).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lstm_fast import _text, cli, data
from lstm_fast.models import charlm, classifier
from lstm_fast.models import inspect as ins
from lstm_fast.models.charlm import CharLM, Sampler, TrainConfig, load_charlm, train_charlm
from lstm_fast.models.checkpoint import CheckpointError, load_npz, save_npz
from lstm_fast.models.classifier import ClassifierConfig, load_classifier, train_classifier
from lstm_fast.models.naive_bayes import NaiveBayes

TEXT = 'def f(x):\n    return "a(b)" + x  # c\n' * 40
TINY_LM = dict(embed_size=4, hidden_size=6, num_layers=1, seq_len=8, batch_size=2)
TINY_CLI = [
    "--hidden-size", "6", "--embed-size", "4", "--num-layers", "1", "--seq-len", "8",
    "--batch-size", "2", "--steps", "1", "--val-every", "0", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny trained char-LM run directory and the corpus it was trained on."""
    d = tmp_path_factory.mktemp("lm")
    corpus = d / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    cfg = TrainConfig(steps=2, val_every=0, checkpoint_every=0, **TINY_LM)
    train_charlm(cfg, d / "run", text=TEXT, progress=False, log=lambda m: None)
    return d / "run", corpus


def _tsv(path, n=24):
    lines = ["label\ttext"] + [
        f"{k % 2}\t{'좋다 최고' if k % 2 else '별로 최악'} {k}" for k in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CLS_SMALL = ["--epochs", "1", "--hidden-size", "4", "--embed-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    """A tiny trained classifier run directory and its training file."""
    d = tmp_path_factory.mktemp("cls")
    tsv = _tsv(d / "d.tsv")
    cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, min_freq=1)
    train_classifier(tsv, d / "run", cfg, progress=False, log=lambda m: None)
    return d / "run", tsv


def _files(path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else {}


# ---- lstm_fast._text.gather_windows -----------------------------------------------------------


@pytest.mark.parametrize("start, length", [(2, 5), (-4, 2), (10**12, 3), (0, -1), (4, 0)])
def test_gather_windows_refuses_windows_outside_the_streams(start, length):
    """gather_windows runs without bounds checks: start + length > n and a negative start read
    garbage from outside the buffer, and a huge start segfaulted the process."""
    streams = np.arange(6, dtype=np.int32).reshape(2, 3)
    with pytest.raises(ValueError, match=r"start, length: expected 0 <= start and start \+ length"):
        _text.gather_windows(streams, start, length)
    with pytest.raises(TypeError, match="start: expected an int, got float"):
        _text.gather_windows(streams, 1.0, 1)
    np.testing.assert_array_equal(_text.gather_windows(streams, 1, 2), streams[:, 1:3].T)
    assert _text.gather_windows(streams, np.int64(3), 0).shape == (0, 2)


# ---- corpora, TSV files, the text API --------------------------------------------------------


def test_load_corpus_refuses_a_negative_or_non_int_max_chars(tmp_path):
    """load_corpus(max_chars=-3) sliced text[:-3] and silently dropped characters from the end
    (files, directories and the default corpus alike); 2.5 raised a raw slicing TypeError."""
    (tmp_path / "a.txt").write_text("hello world\n", encoding="utf-8")
    for path in (tmp_path / "a.txt", tmp_path):
        with pytest.raises(ValueError, match="max_chars: expected None or an int >= 0, got -3"):
            data.load_corpus(path, max_chars=-3)
    with pytest.raises(ValueError, match="max_chars: expected None or an int >= 0, got -10"):
        data.default_corpus(-10)
    for bad in (2.5, "5", True):
        with pytest.raises(TypeError, match="max_chars: expected None or an int >= 0"):
            data.load_corpus(tmp_path / "a.txt", max_chars=bad)
    assert data.load_corpus(tmp_path / "a.txt", max_chars=np.int64(5)) == "hello"
    assert data.load_corpus(tmp_path, max_chars=0) == ""


def test_train_refuses_a_negative_max_chars_before_training(tmp_path, capsys):
    """`train CORPUS --max-chars -5` trained on the corpus minus its last 5 characters and exited
    0; TrainConfig(max_chars=-5) was accepted too."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", str(corpus), "--out", str(tmp_path / "r"), "--max-chars", "-5"])
    assert e.value.code == 2
    assert "argument --max-chars: expected an int >= 1, got '-5'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="max_chars: expected None or an int >= 1, got -5"):
        TrainConfig(max_chars=-5)


def test_read_tsv_names_file_and_line_of_a_label_outside_int64(tmp_path, cls_run, capsys):
    """A label outside int64 raised a raw OverflowError naming neither the file nor the line,
    and `classify train` / `classify eval` died with a traceback."""
    bad = tmp_path / "big.tsv"
    bad.write_text("label\ttext\n1\tgood\n99999999999999999999\tbig\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"big.tsv:3: label '99999999999999999999' is outside"):
        data.read_tsv(bad)
    out = tmp_path / "run"
    assert cli.main(["classify", "train", str(bad), "--out", str(out), *CLS_SMALL]) == 1
    assert "big.tsv:3: label '99999999999999999999' is outside the int64 range" in (
        capsys.readouterr().err
    )
    assert not out.exists()
    assert cli.main(["classify", "eval", str(cls_run[0]), str(bad)]) == 1
    assert "big.tsv:3:" in capsys.readouterr().err
    labels, _ = data.read_tsv(_write(tmp_path / "edge.tsv", f"{-(2**63)}\ta\n{2**63 - 1}\tb\n"))
    assert labels.tolist() == [-(2**63), 2**63 - 1]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_text_api_names_the_bad_argument():
    """train_val_split(ids, '0.1') compared a float with a str, BPTTBatcher.window('1') failed
    with 'not all arguments converted during string formatting', Vocab.build(None) with
    "'NoneType' object is not iterable", Sampler.step(1.5) with NumPy's indexing error."""
    with pytest.raises(TypeError, match="val_fraction: expected a float in \\[0, 1\\), got str"):
        data.train_val_split(np.arange(10), "0.1")
    b = data.BPTTBatcher(np.arange(100), 2, 5)
    for bad in ("1", 1.5, None):
        with pytest.raises(TypeError, match="k: expected an int window index"):
            b.window(bad)
    np.testing.assert_array_equal(b.window(np.int64(1))[0], b.window(1)[0])
    with pytest.raises(TypeError, match="text: expected a str or a sequence of str, got NoneType"):
        data.Vocab.build(None)
    s = Sampler(CharLM(5, 2, 3, 1))
    with pytest.raises(TypeError, match="token: expected an int id, got float"):
        s.step(1.5)
    assert s.step(np.int64(1)).shape == (5,)


@pytest.mark.parametrize("use_cython", [True, False])
def test_featurize_takes_integer_ngram_sizes_on_both_paths(use_cython):
    """The Cython featurize truncated char_n=1.5 to 1 while the Python path raised a TypeError
    that named no argument; NaiveBayes(char_n=1.5) silently made it 1."""
    for name in ("char_n", "word_n"):
        with pytest.raises(TypeError, match=f"{name}: expected an int >= 0, got 1.5"):
            data.featurize(["ab"], {}, grow=True, use_cython=use_cython, **{name: 1.5})
        with pytest.raises(ValueError, match=f"{name}: expected an int >= 0, got -1"):
            data.featurize(["ab"], {}, grow=True, use_cython=use_cython, **{name: -1})
    indptr, ids = data.featurize(["ab"], {}, grow=True, char_n=np.int64(2), use_cython=use_cython)
    assert indptr.tolist() == [0, 4] and len(ids) == 4
    with pytest.raises(ValueError, match="char_n: expected an int >= 0, got 1.5"):
        NaiveBayes(char_n=1.5)


@pytest.mark.parametrize(
    "content, message",
    [
        ([], "vocab: expected a dict"),
        ({"format_version": 1}, r"vocab: missing field\(s\) \['level', 'unk', 'pad', 'itos'\]"),
        ({"format_version": 1, "level": "x", "unk": "?", "pad": False, "itos": ["?"]},
         "vocab: level: expected 'char' or 'word', got 'x'"),
        ({"format_version": 1, "level": "char", "unk": 0, "pad": False, "itos": []},
         "vocab: unk: expected a str, got int"),
        ({"format_version": 1, "level": "char", "unk": "?", "pad": 1, "itos": ["?"]},
         "vocab: pad: expected true or false, got 1"),
        ({"format_version": 1, "level": "char", "unk": "?", "pad": False, "itos": "?ab"},
         "vocab: itos: expected a list of str"),
        ({"format_version": 1, "level": "char", "unk": "?", "pad": False, "itos": ["a", "b"]},
         r"vocab: itos: expected to start with the special tokens \['\?'\], got \['a'\]"),
    ],
)  # fmt: skip
def test_vocab_from_dict_and_load_refuse_bad_content(tmp_path, content, message):
    """Vocab.from_dict raised KeyError or AttributeError on content that is not a vocabulary
    (and an itos without its special tokens silently shifted every id by one or two)."""
    with pytest.raises(ValueError, match=message):
        data.Vocab.from_dict(content)
    path = _write(tmp_path / "v.json", json.dumps(content))
    with pytest.raises(ValueError, match=f"v.json: {message}"):
        data.Vocab.load(path)


def test_vocab_load_names_a_file_that_is_not_json(tmp_path):
    """Vocab.load of a file that is not JSON raised json's error without the path."""
    with pytest.raises(ValueError, match="v.json: not a vocabulary"):
        data.Vocab.load(_write(tmp_path / "v.json", "{not json"))
    v = data.Vocab.build("hello 세계", level="char")
    v.save(tmp_path / "ok.json")
    assert data.Vocab.load(tmp_path / "ok.json").itos == v.itos


# ---- checkpoints: metadata checked against the arrays before a model is built -----------------


def _refuse_build(*args, **kwargs):
    raise AssertionError("the model was built before its sizes were checked")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("hidden_size", 200_000, r"param/decoder.weight: expected shape \(\d+, 200000\)"),
        ("num_layers", 10**7, r"model.num_layers: expected 1 \(the LSTM layers stored\)"),
        ("embed_size", 10**9, r"param/embedding.weight: expected shape \(\d+, 1000000000\)"),
        ("hidden_size", "8", "model.hidden_size: expected an int >= 1, got '8'"),
    ],
)
def test_load_charlm_checks_meta_against_arrays_first(
    lm_run, tmp_path, monkeypatch, capsys, key, value, message
):
    """load_charlm built CharLM from __meta__ before checking the arrays: hidden_size=200000
    died with a MemoryError traceback and num_layers=10**7 hung building layers."""
    run = tmp_path / "run"
    shutil.copytree(lm_run[0], run)
    arrays, meta = load_npz(run / "checkpoint.npz")
    meta["model"][key] = value
    save_npz(run / "checkpoint.npz", arrays, meta)
    monkeypatch.setattr(charlm, "CharLM", _refuse_build)
    with pytest.raises(CheckpointError, match=message):
        load_charlm(run)
    assert cli.main(["sample", str(run), "--length", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.npz:" in err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ensemble": 10**6}, r"expected ensemble members \['member1/', "),
        ({"model": {"hidden_size": 10**6}}, r"param/rnn_fwd.weight_hh_l0: expected shape"),
        ({"model": {"num_classes": 10**9}}, r"param/head.weight: expected shape \(1000000000, "),
    ],
)
def test_load_classifier_checks_meta_against_arrays_first(
    cls_run, tmp_path, monkeypatch, change, message
):
    """load_classifier built its K SequenceClassifiers from __meta__ before checking the arrays:
    a corrupt ensemble or hidden_size built or allocated without bound."""
    run = tmp_path / "run"
    shutil.copytree(cls_run[0], run)
    arrays, meta = load_npz(run / "classifier.npz")
    meta.update({k: v for k, v in change.items() if k != "model"})
    meta["model"].update(change.get("model", {}))
    save_npz(run / "classifier.npz", arrays, meta)
    monkeypatch.setattr(classifier, "SequenceClassifier", _refuse_build)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(run)


# ---- classify train: every option checked up front, nothing half-written ---------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--hidden-size", "0", "--hidden-size: expected an int >= 1, got 0"),
        ("--embed-size", "0", "--embed-size: expected an int >= 1, got 0"),
        ("--dropout", "2", "--dropout: expected a float in [0, 1], got 2.0"),
        ("--embed-dropout", "-0.1", "--embed-dropout: expected a float in [0, 1], got -0.1"),
        ("--clip", "-1", "--clip: expected a float >= 0, got -1.0"),
        ("--min-freq", "-1", "--min-freq: expected an int >= 0, got -1"),
        ("--bigram-min-freq", "-1", "--bigram-min-freq: expected an int >= 0, got -1"),
        ("--lr", "nan", "--lr: expected a finite float >= 0, got nan"),
        ("--weight-decay", "-1", "--weight-decay: expected a finite float >= 0, got -1.0"),
        ("--seed", "-1", "--seed: expected an int >= 0, got -1"),
        ("--lm-steps", "-1", "--lm-steps: expected an int >= 0, got -1"),
        ("--max-rows", "-1", "--max-rows: expected None or an int >= 0, got -1"),
    ],
)
def test_classify_train_checks_options_before_any_work(tmp_path, capsys, option, value, message):
    """These were refused only after the Naive Bayes baseline was trained and written into
    --out, under the layers' names (p, input_size, max_norm); --seed -1 named no option."""
    tsv = _tsv(tmp_path / "d.tsv")
    out = tmp_path / "run"
    assert cli.main(["classify", "train", str(tsv), "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err
    assert err == f"classify: {message}\n"
    assert not out.exists()


def test_failed_classify_retrain_leaves_the_run_directory_as_it_was(cls_run, tmp_path, capsys):
    """A failed `classify train` into an existing run directory replaced that run's
    naive_bayes.npz (trained on the new data) before failing: the run was left half-replaced."""
    run = tmp_path / "run"
    shutil.copytree(cls_run[0], run)
    before = _files(run)
    one = _write(tmp_path / "one.tsv", "1\tonly one label\n1\tagain\n1\tand again\n")
    for extra in (
        ["--hidden-size", "0"],
        ["--lm-steps", "5", "--lm-corpus", str(tmp_path / "missing.txt")],
        ["--val", str(_write(tmp_path / "bad.tsv", "x\ty\nbad\tlabel\n"))],
    ):
        rc = cli.main(["classify", "train", str(one), "--out", str(run), "--quiet", *extra])
        assert rc in (1, 2), extra
        assert capsys.readouterr().err.count("\n") == 1
        assert _files(run) == before, extra


def test_classify_word_level_takes_no_bigrams(tmp_path, capsys):
    """`classify train --level word` failed with the default --bigrams (a documented choice that
    never worked), after the Naive Bayes baseline was trained and saved."""
    assert ClassifierConfig(level="word").bigrams is False
    assert ClassifierConfig().bigrams is True
    tsv = _tsv(tmp_path / "d.tsv")
    out = tmp_path / "run"
    args = ["classify", "train", str(tsv), "--out", str(out), *CLS_SMALL, "--min-freq", "1"]
    assert cli.main(args + ["--level", "word"]) == 0
    assert load_classifier(out)[3]["bigram_vocab"] is None
    capsys.readouterr()
    for extra, message in [
        (["--bigrams"], "--bigrams: expected level 'char' (character bigrams), got level 'word'"),
        (["--words"], "--words: expected bigrams on"),
    ]:
        shutil.rmtree(out, ignore_errors=True)
        assert cli.main(args + ["--level", "word", *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ValueError, match="bigrams: expected level 'char'"):
        ClassifierConfig(level="word", bigrams=True)


# ---- train / sample / inspect ------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message, api_value",
    [
        ("--clip", "-1", "--clip: expected a float >= 0, got -1.0", -1.0),
        ("--dropout", "2", "--dropout: expected a float in [0, 1], got 2.0", 2.0),
        ("--embed-size", "0", "--embed-size: expected an int >= 1, got 0", 0),
        ("--hidden-size", "0", "--hidden-size: expected an int >= 1, got 0", 0),
        ("--seed", "-1", "--seed: expected an int >= 0, got -1", -1),
        ("--lr", "inf", "--lr: expected a finite float >= 0, got inf", float("inf")),
        ("--val-fraction", "1", "--val-fraction: expected a float in [0, 1), got 1.0", 1.0),
        ("--val-every", "-1", "--val-every: expected an int >= 0, got -1", -1),
    ],
)
def test_train_checks_options_before_any_work(tmp_path, capsys, option, value, message, api_value):
    """train --clip -1 was refused after the first forward/backward as 'max_norm', --dropout 2
    as 'p', --embed-size 0 as 'input_size'; --seed -1 said 'expected non-negative integer'."""
    corpus = _write(tmp_path / "c.txt", TEXT)
    out = tmp_path / "run"
    assert cli.main(["train", str(corpus), "--out", str(out), *TINY_CLI, option, value]) == 2
    assert capsys.readouterr().err == f"train: {message}\n"
    assert not out.exists()
    name = option[2:].replace("-", "_")
    with pytest.raises(ValueError) as e:
        TrainConfig(**{name: api_value})
    assert str(e.value) == name + message[len(option) :]


def test_train_config_is_checked_again_by_train_charlm(tmp_path):
    """train_charlm trusted its config: a field changed after the config was made reached the
    layers (or the first step) under their own names."""
    cfg = TrainConfig(steps=1, **TINY_LM)
    cfg.clip = -1.0
    with pytest.raises(ValueError, match="clip: expected a float >= 0, got -1.0"):
        train_charlm(cfg, tmp_path / "run", text=TEXT, progress=False, log=print)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -1"):
        CharLM(5, 2, 3, 1, seed=-1)
    with pytest.raises(ValueError, match="embed_size: expected an int >= 1, got 0"):
        CharLM(5, 0, 3, 1)


@pytest.mark.parametrize("command", ["train", "classify"])
def test_out_pointing_at_a_file_is_a_one_line_error(tmp_path, capsys, command):
    """train / classify train with --out naming an existing file died with a FileExistsError
    traceback."""
    corpus = _write(tmp_path / "c.txt", TEXT)
    tsv = _tsv(tmp_path / "d.tsv")
    target = _write(tmp_path / "taken.txt", "keep me")
    if command == "train":
        argv = ["train", str(corpus), "--out", str(target), *TINY_CLI]
    else:
        argv = ["classify", "train", str(tsv), "--out", str(target), *CLS_SMALL]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: expected a run directory, got the file" in err
    assert target.read_text() == "keep me"


def test_sample_refuses_a_negative_seed(lm_run, capsys):
    """sample --seed -1 died with a traceback ('expected non-negative integer')."""
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", str(lm_run[0]), "--length", "3", "--seed", "-1"])
    assert e.value.code == 2
    assert "argument --seed: expected an int >= 0, got '-1'" in capsys.readouterr().err
    model, _, _, _ = load_charlm(lm_run[0])
    with pytest.raises(ValueError, match="seed: expected None or an int >= 0, got -1"):
        Sampler(model, seed=-1)


def test_inspect_checks_its_options_and_output_first(lm_run, tmp_path, capsys):
    """inspect --out DIR, --max-chars 0, an empty text and --top 0 died with tracebacks (the
    last two after recording every activation); --top -1 silently listed all units but one."""
    run, corpus = map(str, lm_run)
    html = str(tmp_path / "i.html")
    assert cli.main(["inspect", run, corpus, "--out", str(tmp_path)]) == 2
    assert "--out: expected a file path, got the directory" in capsys.readouterr().err
    assert cli.main(["inspect", run, corpus, "--out", str(tmp_path / "i.png")]) == 2
    assert "--out: expected an .html path" in capsys.readouterr().err
    for opt, bad in (("--max-chars", "0"), ("--top", "0"), ("--top", "-1"), ("--png-chars", "-5")):
        with pytest.raises(SystemExit) as e:
            cli.main(["inspect", run, corpus, "--out", html, opt, bad])
        assert e.value.code == 2
        assert f"argument {opt}: expected an int >= 1, got '{bad}'" in capsys.readouterr().err
    empty = _write(tmp_path / "empty.txt", "")
    assert cli.main(["inspect", run, str(empty), "--out", html]) == 1
    assert "empty.txt: expected at least 2 characters, got 0" in capsys.readouterr().err
    assert cli.main(["inspect", run, corpus, "--out", html, "--cell", "12"]) == 2
    assert "--cell: expected 0 <= N < 12, got 12" in capsys.readouterr().err
    assert not (tmp_path / "i.html").exists() and not (tmp_path / "i.png").exists()
    acts = {"c": np.zeros((3, 1, 2)), "h": np.zeros((3, 1, 2))}
    with pytest.raises(ValueError, match="top: expected an int >= 1, got 0"):
        ins.rank_cells(acts, {"f": np.arange(3.0)}, 0)
    assert cli.main(["inspect", run, corpus, "--out", html, "--top", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["html"] == html and (tmp_path / "i.png").exists()


# ---- bench: argument checks before the run ----------------------------------------------------

BENCH = ["--shape", "3,2,5,7", "--quick", "--budget", "0.01", "--peak-size", "64", "--threads", "1"]
BENCH += ["--modes", "forward", "--no-reference"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "100000"], "--threads: expected thread counts in [1, "),
        (["--json", "."], "--json: expected a file path, got the directory '.'"),
        (["--peak-size", "10000000"], "--peak-size: expected an integer in [16, 8192]"),
        (["--plot", "chart.xyz"], "--plot: expected an image file matplotlib writes"),
    ],
)
def test_bench_refuses_bad_options_before_running(tmp_path, monkeypatch, capsys, argv, message):
    """bench --threads 100000 ran the peak measurement then died with a traceback; --json DIR
    failed only after the whole benchmark ran; --peak-size 10000000 raised a MemoryError."""
    if argv[0] == "--plot":
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", *BENCH, *argv]) == 2
    out, err = capsys.readouterr()
    assert message in err and "lstm-fast bench  " not in out  # nothing ran


def test_bench_plot_reports_the_file_it_wrote(tmp_path, capsys):
    """bench --plot foo wrote foo.png (matplotlib adds the extension) but printed 'wrote foo'."""
    pytest.importorskip("matplotlib")
    assert cli.main(["bench", *BENCH, "--plot", str(tmp_path / "chart")]) == 0
    assert f"wrote {tmp_path / 'chart.png'}\n" in capsys.readouterr().out
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
