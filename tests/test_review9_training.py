"""Edge cases found in the ninth review, training layer end to end: the char-LM's final validation
figure, corpora too short for a window, text UTF-8 cannot encode (lone surrogates) in vocabularies
and checkpoints, the classifier's validation file and LM corpus, the Naive Bayes smoothing, and the
`train` command's corpus options.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest

from lstm_fast import cli, data, optim
from lstm_fast.models.charlm import CharLM, TrainConfig, evaluate_bpc, load_charlm, train_charlm
from lstm_fast.models.checkpoint import load_npz, save_npz
from lstm_fast.models.classifier import ClassifierConfig, load_classifier, train_classifier
from lstm_fast.models.naive_bayes import NaiveBayes
from lstm_fast.module import Parameter
from lstm_fast.nn import Embedding, Linear

TINY_LM = dict(embed_size=4, hidden_size=6, num_layers=1, seq_len=8, batch_size=2)


def _quiet(msg: str) -> None:
    pass


def _tsv(path, rows):
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return path


# -- char-LM --------------------------------------------------------------------------------------
@pytest.mark.parametrize("val_every", [0, 2])
def test_final_validation_is_of_the_final_weights_on_a_short_held_out_part(tmp_path, val_every):
    """A held-out part of 2..seq_len characters was validated every val_every steps but not at
    the end: the reported val_bpc was an earlier step's (or None with val_every=0)."""
    text = "abcdefghij" * 10  # 100 characters: 5 held out, fewer than seq_len=8
    cfg = TrainConfig(steps=3, val_every=val_every, checkpoint_every=0, lr=0.05, **TINY_LM)
    res = train_charlm(cfg, tmp_path, text=text, progress=False, log=_quiet)
    model, vocab, _, arrays = load_charlm(tmp_path)
    _, val_ids = data.train_val_split(vocab.encode(text), cfg.val_fraction)
    assert 2 <= len(val_ids) <= cfg.seq_len
    want = evaluate_bpc(model, val_ids, cfg.batch_size, cfg.seq_len)
    assert res["val_bpc"] == want
    assert arrays["hist/val"][-1].tolist() == [3.0, want]


def test_a_corpus_too_short_for_a_window_is_named_with_the_sizes(tmp_path, capsys):
    """The error named BPTTBatcher's internal ``ids`` ("ids: 190 tokens are too few ..."), not
    the corpus, nor how many characters the sizes need."""
    text = "ab" * 100
    cfg = TrainConfig(steps=1, val_every=0, **dict(TINY_LM, batch_size=50, seq_len=5))
    with pytest.raises(ValueError) as e:
        train_charlm(cfg, tmp_path / "run", text=text, progress=False, log=_quiet)
    msg = str(e.value)
    assert msg.startswith("corpus: expected at least batch_size * seq_len + 1 = 251 ")
    assert "got 190 (of 200: val_fraction=0.05 held out 10)" in msg
    assert not (tmp_path / "run").exists()
    corpus = tmp_path / "c.txt"
    corpus.write_text(text, encoding="utf-8")
    argv = ["train", str(corpus), "--out", str(tmp_path / "run"), "--batch-size", "50"]
    argv += ["--seq-len", "5", "--steps", "1", "--quiet", "--hidden-size", "4"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    # (the command line names the settings as its options: review 25)
    assert err.startswith("train: CORPUS: expected at least --batch-size * --seq-len + 1 = 251 ")
    assert "(of 200: --val-fraction=0.05 held out 10)" in err
    argv = ["train", "--default-corpus", "--max-chars", "40", "--out", str(tmp_path / "run")]
    argv += ["--seq-len", "5", "--steps", "1", "--quiet", "--hidden-size", "4"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("train: --default-corpus: expected at least --batch-size * --seq-len + 1")
    assert not (tmp_path / "run").exists()


def test_train_refuses_corpus_and_default_corpus_together(tmp_path, capsys):
    """`train FILE --default-corpus` trained on the standard library, ignoring FILE."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc" * 50, encoding="utf-8")
    argv = ["train", str(corpus), "--default-corpus", "--out", str(tmp_path / "run"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "give CORPUS" in err and "not both" in err and str(corpus) in err
    assert not (tmp_path / "run").exists()


# -- text UTF-8 cannot encode ---------------------------------------------------------------------
def test_lone_surrogates_train_checkpoint_and_load(tmp_path):
    """A text holding a lone surrogate (os.fsdecode, surrogateescape) trained to the end, then
    the checkpoint's JSON failed to encode (UnicodeEncodeError): the run was lost."""
    text = "ab\udcffcd\ud800" * 20
    cfg = TrainConfig(steps=2, val_every=0, checkpoint_every=0, **TINY_LM)
    res = train_charlm(cfg, tmp_path, text=text, progress=False, log=_quiet)
    model, vocab, _, _ = load_charlm(tmp_path)
    assert "\udcff" in vocab.itos and "\ud800" in vocab.itos
    assert vocab.decode(vocab.encode(text)) == text
    assert res["vocab_size"] == len(vocab)
    saved = data.Vocab.from_dict(json.loads((tmp_path / "vocab.json").read_text("utf-8")))
    assert saved.itos == vocab.itos


def test_vocab_and_checkpoint_files_take_lone_surrogates(tmp_path):
    v = data.Vocab.build("x\udc80y", level="char")
    v.save(tmp_path / "v.json")  # raised UnicodeEncodeError, leaving v.json.tmp<pid> behind
    assert data.Vocab.load(tmp_path / "v.json").itos == v.itos
    assert [p.name for p in tmp_path.iterdir()] == ["v.json"]
    save_npz(tmp_path / "c.npz", {"w": np.ones(2, np.float32)}, {"path": "/d/\udcffx", "k": "한"})
    _, meta = load_npz(tmp_path / "c.npz")
    assert meta["path"] == "/d/\udcffx" and meta["k"] == "한"
    # text UTF-8 can encode stays readable in the file (not \\u escapes)
    save_npz(tmp_path / "k.npz", {}, {"k": "한글"})
    assert "한글".encode() in (tmp_path / "k.npz").read_bytes()


# -- classifier ---------------------------------------------------------------------------------
def test_classify_train_refuses_a_validation_file_without_rows(tmp_path, capsys):
    """A --val file with only a header trained with no validation at all, reporting "trained on
    every row" (the held-out split was not made either)."""
    rows = [(1, "좋다"), (2, "별로"), (1, "최고"), (2, "최악")] * 3
    train = _tsv(tmp_path / "t.tsv", rows)
    val = tmp_path / "v.tsv"
    val.write_text("label\ttext\n\n", encoding="utf-8")
    cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1)
    with pytest.raises(ValueError, match=r"v\.tsv: expected at least one 'label<TAB>text' row"):
        train_classifier(train, tmp_path / "run", cfg, val_tsv=val, progress=False, log=_quiet)
    assert not (tmp_path / "run").exists()
    argv = ["classify", "train", str(train), "--out", str(tmp_path / "run"), "--val", str(val)]
    assert cli.main(argv + ["--epochs", "1", "--quiet"]) == 1
    assert "v.tsv: expected at least one 'label<TAB>text' row, got none" in capsys.readouterr().err


def test_classify_lm_corpus_errors_name_the_option(tmp_path, capsys):
    """A missing --lm-corpus was reported as "classify: corpus: ..." (no such option)."""
    train = _tsv(tmp_path / "t.tsv", [(1, "가나"), (2, "다라")] * 4)
    missing = tmp_path / "nope.txt"
    cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, lm_steps=2, lm_corpus=missing)
    with pytest.raises(FileNotFoundError, match=r"^lm_corpus: expected a text file or a dir"):
        train_classifier(train, tmp_path / "run", cfg, progress=False, log=_quiet)
    argv = ["classify", "train", str(train), "--out", str(tmp_path / "run"), "--quiet"]
    argv += ["--lm-steps", "2", "--lm-corpus", str(missing)]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith("classify: --lm-corpus: expected a text file")


@pytest.mark.parametrize("alpha", [-1.0, 0.0, float("nan"), float("inf"), "1", None, True])
def test_naive_bayes_refuses_a_bad_alpha(alpha):
    """A negative or NaN alpha gave NaN scores (every prediction class 0), 0 gave -inf for any
    feature a class never showed, and a str raised float()'s message naming nothing."""
    with pytest.raises(ValueError, match=r"alpha: expected a finite float > 0, got"):
        NaiveBayes(alpha=alpha)


def test_naive_bayes_alpha_still_smooths_as_before():
    """Guard: a valid alpha is the Laplace smoothing of the docstring's formula."""
    texts, labels = ["aa b", "b c", "c"], [0, 1, 1]
    nb = NaiveBayes(alpha=0.5, char_n=1, word_n=0).fit(texts, labels)
    counts = {0: {"a": 2, " ": 1, "b": 1}, 1: {"b": 1, " ": 1, "c": 2}}
    feats = sorted(nb.index, key=nb.index.get)
    for c in (0, 1):
        n = np.array([counts[c].get(f[2:], 0) for f in feats], float)
        want = np.log(n + 0.5) - np.log(n.sum() + 0.5 * len(feats))
        np.testing.assert_allclose(nb.log_prob[:, c], want)


# -- optimizers -----------------------------------------------------------------------------------
def test_clip_grad_norm_of_float16_gradients_as_torch():
    """np.dot summed a float16 gradient's squares in float16: 100 values of 300 (norm 3000)
    overflowed to inf, and clipping multiplied every gradient by 0."""
    torch = pytest.importorskip("torch")
    g = np.full(100, 300, np.float16)
    h = np.linspace(-2, 2, 6, dtype=np.float16)
    p, q = Parameter(np.zeros(100)), Parameter(np.zeros(6))
    p.grad, q.grad = g.copy(), h.copy()
    norm = optim.clip_grad_norm([p, q], 1.0)
    want = math.sqrt(float(np.sum(g.astype(np.float64) ** 2) + np.sum(h.astype(np.float64) ** 2)))
    assert norm == pytest.approx(want, rel=1e-12)
    tp = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float16)) for a in (g, h)]
    for t, a in zip(tp, (g, h)):
        t.grad = torch.tensor(a)
    tnorm = torch.nn.utils.clip_grad_norm_(tp, 1.0)
    assert norm == pytest.approx(float(tnorm), rel=1e-3)
    for ours, t in zip((p, q), tp):
        assert ours.grad.dtype == np.float16
        np.testing.assert_allclose(ours.grad, t.grad.numpy(), rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("layout", ["float64", "strided float32"])
def test_clip_grad_norm_is_the_same_for_any_gradient_layout(layout):
    """Guard: gradients the C++ kernel cannot read in place are summed in float64 too."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 7)).astype(np.float32)
    p, q = Parameter(np.zeros((5, 7))), Parameter(np.zeros((5, 7)))
    p.grad = g.copy()
    q.grad = g.astype(np.float64) if layout == "float64" else np.repeat(g, 2, axis=1)[:, ::2]
    assert optim.clip_grad_norm([q], 0.5) == pytest.approx(optim.clip_grad_norm([p], 0.5), rel=1e-6)
    np.testing.assert_allclose(q.grad, p.grad, rtol=1e-6)


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "rmsprop"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.float16])
def test_narrow_gradients_update_as_their_float32_values(name, dtype, wd):
    """Gradients of a narrow dtype (accepted by step) were squared in it: an int8 100 wrapped
    around (100 * 100 = 16 in int8) and a float16 300 overflowed to inf, so Adam, RMSprop and
    Adagrad stepped those weights by a wrong amount."""
    values = [100, 3, 1, 120] if np.dtype(dtype).itemsize == 1 else [300, 3, 1, 250]
    kw = dict(momentum=0.9) if name in ("sgd", "rmsprop") else {}
    p, q = Parameter(np.zeros(4)), Parameter(np.zeros(4))
    a = optim.make_optimizer(name, [p], lr=0.01, weight_decay=wd, **kw)
    b = optim.make_optimizer(name, [q], lr=0.01, weight_decay=wd, **kw)
    for _ in range(3):
        p.grad = np.array(values, dtype=dtype)
        q.grad = np.array(values, dtype=np.float32)
        a.step()
        b.step()
    # (a float32 gradient takes Adam's fused kernel: the same maths, rounded in another order)
    np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=0)


def test_sample_refuses_a_prime_that_is_not_utf8(tmp_path, capsys):
    """--prime with bytes that are not UTF-8 (they arrive as lone surrogates) was fed as unknown
    tokens and then echoed: a UnicodeEncodeError traceback on a strict UTF-8 console."""
    cfg = TrainConfig(steps=1, val_every=0, checkpoint_every=0, **TINY_LM)
    train_charlm(cfg, tmp_path, text="abcdef" * 20, progress=False, log=_quiet)
    capsys.readouterr()
    assert cli.main(["sample", str(tmp_path), "--length", "3", "--prime", "a\udcff"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("sample: --prime: expected UTF-8 text, got a byte that is not UTF-8")
    assert cli.main(["sample", str(tmp_path), "--length", "3", "--prime", "ab"]) == 0
    assert capsys.readouterr().out.startswith("ab")


def test_evaluate_bpc_checks_the_id_range_before_running(monkeypatch):
    """An id >= V in the last position was reported as "targets: ..." (the loss's argument),
    after every window before it had run; a negative one likewise."""
    model = CharLM(7, 4, 6, 1, seed=0)
    calls = []
    forward = CharLM.forward
    monkeypatch.setattr(CharLM, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    for bad, shown in (([1, 2, 3, 4, 9], "[1, 9]"), ([5, -1, 2], "[-1, 5]")):
        with pytest.raises(
            IndexError, match=re.escape(f"ids: expected values in [0, V=7), got {shown}")
        ):
            evaluate_bpc(model, np.array(bad), batch_size=1, seq_len=2)
    assert calls == [] and model.training
    ids = np.array([1, 2, 3, 4, 6, 0])
    assert evaluate_bpc(model, ids, batch_size=1, seq_len=2) == evaluate_bpc(model, list(ids), 1, 2)


def test_classify_ensemble_without_validation_rows(tmp_path, capsys):
    """--ensemble K with --val-fraction 0 trained every member, then raised IndexError (no
    validation accuracies to average) before anything was saved."""
    train = _tsv(tmp_path / "t.tsv", [(1, "좋다"), (2, "별로"), (1, "최고"), (2, "최악")] * 2)
    cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, ensemble=2, val_fraction=0.0)
    res = train_classifier(train, tmp_path / "run", cfg, progress=False, log=_quiet)
    assert res["accuracy"] is None and res["ensemble"] == 2
    assert res["member_accuracies"] == [None, None] and res["ensemble_prefix_accuracies"] == []
    model, _, _, meta = load_classifier(tmp_path / "run")
    assert len(model) == 2 and meta["ensemble"] == 2
    argv = ["classify", "train", str(train), "--out", str(tmp_path / "cli"), "--ensemble", "2"]
    argv += ["--val-fraction", "0", "--epochs", "1", "--hidden-size", "4", "--embed-size", "4"]
    capsys.readouterr()
    assert cli.main(argv + ["--quiet"]) == 0
    assert "accuracy: no validation data" in capsys.readouterr().out


@pytest.mark.parametrize(
    "texts, labels, kw",
    [
        (["good", "bad", "meh"], [0, 2, 2], {}),  # class 1 has no training row
        (["good", "bad"], [0, 1], dict(char_n=0, word_n=0)),  # no features at all
        (["", ""], [0, 1], dict(word_n=1)),  # empty texts: no features either
    ],
)
def test_naive_bayes_fits_without_runtime_warnings(texts, labels, kw):
    """`classify train` printed "RuntimeWarning: divide by zero encountered in log" when a
    class had no training row (a small or skewed split) or there were no features (--nb-*-n 0):
    log 0 = -inf is the intended value there."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb = NaiveBayes(**kw).fit(texts, labels)
        pred = nb.predict(texts + ["unseen"])
    counts = np.bincount(labels)
    assert np.all(counts[pred] > 0)  # a class without training rows is never predicted
    if not nb.index:  # no features: the prior decides
        assert np.all(pred == np.argmax(counts))


# -- data pipeline --------------------------------------------------------------------------------
@pytest.mark.parametrize("use_cython", [True, False])
@pytest.mark.parametrize(
    "docs", [["ab", "cd", "ef"], ["a\nb", "c", "", "c\n"], ["좋다", "😀😀", "좋아"], ["x"], []]
)
def test_char_vocab_of_documents_counts_only_their_characters(docs, use_cython):
    """A list of documents was joined by newlines and counted: "\\n" got len(docs) - 1 phantom
    counts, so it led the classifier's vocabulary (id 2, kept by min_freq=2 and max_size) even
    when no text held one."""
    for min_freq, max_size in ((1, None), (2, None), (1, 3)):
        kw = dict(level="char", min_freq=min_freq, max_size=max_size, use_cython=use_cython)
        got = data.Vocab.build(docs, **kw)
        assert got.itos == data.Vocab.build("".join(docs), **kw).itos


# -- layers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["decoder first", "embedding first"])
def test_embedding_padding_row_keeps_a_tied_decoders_gradient(order):
    """Embedding.backward zeroed the padding row of the whole accumulated gradient: the weight
    tied to a decoder (a language model's output layer) lost the decoder's gradient for that
    row, which PyTorch keeps (padding_idx only stops the lookup's own contribution)."""
    torch = pytest.importorskip("torch")
    V, E = 6, 4
    rng = np.random.default_rng(0)
    emb = Embedding(V, E, padding_idx=1, seed=0)
    dec = Linear(E, V, bias=False, seed=1)
    dec.weight = emb.weight
    ids = np.array([[1, 2], [3, 1], [1, 5]])
    x = rng.standard_normal((5, E)).astype(np.float32)
    dy = rng.standard_normal((5, V)).astype(np.float32)
    de = rng.standard_normal((3, 2, E)).astype(np.float32)
    dec(x)
    emb(ids)
    emb.zero_grad()
    for step in ((dec.backward, dy), (emb.backward, de))[:: 1 if order == "decoder first" else -1]:
        step[0](step[1])
    te = torch.nn.Embedding(V, E, padding_idx=1).double()
    with torch.no_grad():
        te.weight.copy_(torch.tensor(emb.weight.data.astype(np.float64)))
    out = torch.nn.functional.linear(torch.tensor(x, dtype=torch.float64), te.weight)
    e = te(torch.tensor(ids))
    ((out * torch.tensor(dy)).sum() + (e * torch.tensor(de)).sum()).backward()
    np.testing.assert_allclose(emb.weight.grad, te.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(emb.weight.grad[1]).sum() > 0


def test_embedding_padding_row_gets_nothing_from_the_lookup():
    """The lookup's own gradient skips the padding row, whose accumulated value (0.5 here) is
    kept -- it was set to 0 -- with either gradient layout (the C++ scatter or np.add.at)."""
    for fast in (True, False):
        emb = Embedding(5, 3, padding_idx=-1, seed=0)
        emb(np.array([4, 0, 4, 2]))
        emb.weight.grad = np.full((5, 3), 0.5, np.float32 if fast else np.float64)
        emb.backward(np.ones((4, 3), np.float32))
        np.testing.assert_array_equal(emb.weight.grad[:, 0], [1.5, 0.5, 1.5, 0.5, 0.5])


@pytest.mark.parametrize("command", ["train", "classify"])
def test_out_below_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    """classify train --out FILE/run trained every epoch, then failed to make the directory
    ('[Errno 20] Not a directory') and lost the run; train checked it only after the corpus
    was read and the vocabulary built."""
    blocker = tmp_path / "taken.txt"
    blocker.write_text("keep me", encoding="utf-8")
    out = blocker / "sub" / "run"
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcdef" * 40, encoding="utf-8")
    tsv = _tsv(tmp_path / "t.tsv", [(1, "좋다"), (2, "별로")] * 4)
    logged = []
    with pytest.raises(NotADirectoryError, match=r"^out_dir: cannot create the run directory"):
        if command == "train":
            cfg = TrainConfig(steps=1, val_every=0, checkpoint_every=0, **TINY_LM)
            train_charlm(cfg, out, progress=False, log=logged.append, text="x" * 10**6)
        else:
            cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1)
            train_classifier(tsv, out, cfg, progress=False, log=logged.append)
    assert logged == []  # (nothing trained, not even the Naive Bayes baseline)
    if command == "train":
        argv = ["train", str(corpus), "--out", str(out), "--steps", "1", "--quiet"]
    else:
        argv = ["classify", "train", str(tsv), "--out", str(out), "--epochs", "1", "--quiet"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: cannot create the run directory" in err
    assert f"{str(blocker)!r} is a file" in err
    assert blocker.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize("norm_type", [1, 2, 3.5, float("inf"), "inf"])
def test_clip_grad_norm_takes_torchs_positional_norm_type(norm_type):
    """The third positional parameter was eps: torch's clip_grad_norm_(params, 1.0, 1) (an L1
    norm) clipped the L2 norm with eps = 1 here, silently; norm_type is torch's now."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s).astype(np.float32) * 3 for s in ((4, 5), (7,))]
    ps = [Parameter(np.zeros(g.shape)) for g in grads]
    tp = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, t, g in zip(ps, tp, grads):
        p.grad = g.copy()
        t.grad = torch.tensor(g.astype(np.float64))
    norm = optim.clip_grad_norm(ps, 1.0, norm_type)
    tnorm = torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type)
    assert norm == pytest.approx(float(tnorm), rel=1e-6)
    for p, t in zip(ps, tp):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_checks_norm_type_and_keeps_eps_by_keyword():
    p = Parameter(np.zeros(2))
    for bad in (0, -1.0, float("nan"), "l2", None, True):
        p.grad = np.array([3.0, 4.0], np.float32)
        with pytest.raises(ValueError, match=r"^norm_type: expected a float > 0 or inf, got"):
            optim.clip_grad_norm([p], 1.0, bad)
        np.testing.assert_array_equal(p.grad, [3.0, 4.0])  # nothing scaled
    assert optim.clip_grad_norm([p], 1.0, eps=0.0) == 5.0
    np.testing.assert_allclose(p.grad, [0.6, 0.8], rtol=1e-6)
