"""CharLM (gradients, sampling, training, exact resume), classifier and Naive Bayes, inspector."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lstm_fast import data
from lstm_fast.models import (
    CharLM,
    ClassifierConfig,
    NaiveBayes,
    Sampler,
    SequenceClassifier,
    TrainConfig,
    evaluate_classifier,
    load_charlm,
    train_charlm,
    train_classifier,
)
from lstm_fast.models import inspect as ins
from lstm_fast.models.checkpoint import CheckpointError, load_npz, save_npz
from lstm_fast.models.classifier import CHECKPOINT as CLASSIFIER_FILE
from lstm_fast.models.classifier import (
    ClassifierEnsemble,
    _encode_all,
    _encode_bigrams,
    build_bigram_vocab,
    load_classifier,
    predict_log_proba,
    pretrain_lm,
)
from lstm_fast.nn import softmax_cross_entropy

TINY = dict(
    embed_size=8,
    hidden_size=16,
    num_layers=2,
    seq_len=12,
    batch_size=4,
    val_every=4,
    checkpoint_every=3,
    max_chars=6000,
)


@pytest.fixture(scope="module")
def text():
    return data.default_corpus(max_chars=6000)


def test_charlm_gradient_finite_difference():
    m = CharLM(11, 5, 7, 2, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, (6, 3))
    y = rng.integers(0, 11, (6, 3))

    def loss():
        logits, _ = m(x)
        return softmax_cross_entropy(logits.reshape(-1, 11), y.reshape(-1))[0]

    m.zero_grad()
    logits, _ = m(x)
    _, g = softmax_cross_entropy(logits.reshape(-1, 11), y.reshape(-1))
    m.backward(g)
    for name, p in m.named_parameters():
        for idx in [(0,) * p.data.ndim, tuple(s - 1 for s in p.data.shape)]:
            if name == "embedding.weight":
                idx = (int(x[0, 0]), 0)
            old = p.data[idx]
            p.data[idx] = old + 1e-2
            fp = loss()
            p.data[idx] = old - 1e-2
            fm = loss()
            p.data[idx] = old
            assert p.grad[idx] == pytest.approx((fp - fm) / 2e-2, rel=5e-2, abs=2e-4), name


def test_charlm_forward_loss_matches_forward_then_loss():
    m = CharLM(13, 5, 9, 2, seed=3)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 13, (7, 4)), rng.integers(0, 13, (7, 4))
    st = m.init_state(4)
    logits, (h, c) = m(x, st)
    want_loss, want_g = softmax_cross_entropy(logits.reshape(-1, 13), y.reshape(-1))
    loss, g, (h2, c2) = m.forward_loss(x, y, st)
    assert loss == want_loss
    assert g.shape == (7, 4, 13)
    np.testing.assert_array_equal(g.reshape(-1, 13), want_g)
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(c2, c)


def test_sampler_matches_forward_and_is_seeded():
    m = CharLM(20, 6, 9, 2, seed=1).eval()
    x = np.random.default_rng(1).integers(1, 20, (15, 1))
    logits, _ = m(x)
    s = Sampler(m)
    for t in range(15):
        out = s.step(int(x[t, 0]))
    np.testing.assert_allclose(out, logits[-1, 0], rtol=1e-4, atol=1e-5)
    a = Sampler(m, seed=3).generate([1], 40, temperature=0.9, top_k=4)
    b = Sampler(m, seed=3).generate([1], 40, temperature=0.9, top_k=4)
    assert a == b and 0 not in a
    g = Sampler(m).generate([1, 2], 5, temperature=0)
    assert g == Sampler(m, seed=9).generate([1, 2], 5, temperature=0)


def test_train_resume_is_bitwise_exact(tmp_path, text):
    cfg = TrainConfig(steps=9, dropout=0.2, **TINY)
    full = train_charlm(cfg, tmp_path / "full", text=text, progress=False, log=lambda m: None)
    assert full["step"] == 9 and np.isfinite(full["val_bpc"])

    def interrupt(step, bpc):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_charlm(
            cfg, tmp_path / "cut", text=text, progress=False, on_step=interrupt, log=lambda m: None
        )
    _, _, meta, _ = load_charlm(tmp_path / "cut")
    assert meta["step"] == 5
    train_charlm(cfg, tmp_path / "cut", text=text, resume=True, progress=False, log=lambda m: None)
    a, _, _, arr_a = load_charlm(tmp_path / "full")
    b, _, _, arr_b = load_charlm(tmp_path / "cut")
    assert sorted(arr_a) == sorted(arr_b)
    for k in arr_a:
        np.testing.assert_array_equal(arr_a[k], arr_b[k], err_msg=k)
    assert (tmp_path / "full" / "loss.png").stat().st_size > 0
    with pytest.raises(ValueError, match="corpus differs"):
        train_charlm(
            cfg, tmp_path / "cut", text=text[:-10], resume=True, progress=False, log=lambda m: None
        )


def test_training_reduces_loss(tmp_path, text):
    cfg = TrainConfig(steps=60, lr=1e-2, **dict(TINY, checkpoint_every=0, val_every=0))
    res = train_charlm(cfg, tmp_path, text=text, progress=False)
    tr = np.load(tmp_path / "checkpoint.npz", allow_pickle=False)["hist/train_bpc"]
    assert tr[-10:].mean() < tr[:5].mean() - 1.0
    assert res["val_bpc"] < 6.0


@pytest.mark.parametrize("pool", ["mean", "max", "meanmax", "last"])
def test_classifier_gradient_and_padding(pool):
    m = SequenceClassifier(9, 3, 4, 5, pool=pool, pad_id=1, seed=0)
    ids = np.array([[2, 3], [4, 5], [6, 1], [7, 1]])
    lengths = np.array([4, 2])
    y = np.array([0, 2])
    logits = m(ids, lengths)
    # padding does not change the shorter sequence's prediction
    ids2 = ids.copy()
    ids2[2:, 1] = 8
    np.testing.assert_allclose(m(ids2, lengths)[1], logits[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(ids[:2, 1:], lengths[1:])[0], logits[1], rtol=1e-5, atol=1e-6)

    def loss():
        return softmax_cross_entropy(m(ids, lengths), y)[0]

    m.zero_grad()
    _, g = softmax_cross_entropy(m(ids, lengths), y)
    m.backward(g)
    for name, p in m.named_parameters():
        idx = (2, 1) if name == "embedding.weight" else (0,) * p.data.ndim
        old = p.data[idx]
        p.data[idx] = old + 1e-2
        fp = loss()
        p.data[idx] = old - 1e-2
        fm = loss()
        p.data[idx] = old
        assert p.grad[idx] == pytest.approx((fp - fm) / 2e-2, rel=5e-2, abs=2e-4), name


@pytest.mark.parametrize("K", [None, 2])
def test_classifier_bigram_embedding_gradient_and_padding(K):
    """Character + character-bigram input: the embeddings are summed per step (K features per
    step: bigram and whitespace word)."""
    m = SequenceClassifier(
        9, 2, 4, 5, pool="meanmax", pad_id=1, bigram_vocab_size=7, bigram_pad_id=1, seed=0
    )
    ids = np.array([[2, 3], [4, 5], [6, 1]])
    bids = np.array([[3, 2], [4, 6], [5, 1]])
    if K:
        bids = np.stack([bids, np.array([[6, 5], [6, 5], [2, 1]])], axis=2)
    lengths = np.array([3, 2])
    y = np.array([1, 0])
    logits = m(ids, lengths, bids)
    np.testing.assert_allclose(
        m(ids[:2, 1:], lengths[1:], bids[:2, 1:])[0], logits[1], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="bigram_ids"):
        m(ids, lengths)
    with pytest.raises(ValueError, match="bigram_ids: expected shape"):
        m(ids, lengths, bids[:2])

    def loss():
        return softmax_cross_entropy(m(ids, lengths, bids), y)[0]

    m.zero_grad()
    _, g = softmax_cross_entropy(m(ids, lengths, bids), y)
    m.backward(g)
    for name in ("embedding.weight", "bigram_embedding.weight"):
        p = dict(m.named_parameters())[name]
        for idx in [(4, 0), (5, 3)]:
            old = p.data[idx]
            p.data[idx] = old + 1e-2
            fp = loss()
            p.data[idx] = old - 1e-2
            fm = loss()
            p.data[idx] = old
            assert p.grad[idx] == pytest.approx((fp - fm) / 2e-2, rel=5e-2, abs=2e-4), name
    assert not dict(m.named_parameters())["bigram_embedding.weight"].grad[1].any()  # pad row


def test_bigram_vocab_aligns_with_characters():
    v = build_bigram_vocab(["abab", "ba"], min_freq=2)
    assert v.itos[:2] == ["<unk>", "<pad>"] and set(v.itos[2:]) == {"ab", "ba"}
    chars = data.Vocab.build("abab ba", level="char", pad=True)
    texts = ["abab", "", "bac"]
    for c, b in zip(_encode_all(chars, texts, 3), _encode_bigrams(v, texts, 3)):
        assert c.shape == b.shape
    assert v.decode(_encode_bigrams(v, ["abab"], 3)[0]) == "ab ba <unk>"
    v = build_bigram_vocab(["ab c", "ab c ab"], min_freq=2, words=True)
    ids = _encode_bigrams(v, ["ab c", ""], 10, words=True)
    assert ids[0].shape == (4, 2) and ids[1].shape == (1, 2)
    assert v.decode(ids[0][:, 1]) == "\x02ab \x02ab <pad> \x02c"


def _toy_tsv(path, n, seed):
    rng = np.random.default_rng(seed)
    pos, neg = ["좋다", "최고", "great"], ["별로", "최악", "bad"]
    lines = ["label\ttext"]
    for _ in range(n):
        lab = int(rng.integers(0, 2))
        words = list(rng.choice(["영화", "the", "film", "배우"], 3)) + [rng.choice([neg, pos][lab])]
        rng.shuffle(words)
        lines.append(f"{lab}\t{' '.join(words)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_classifier_and_naive_bayes_learn(tmp_path):
    _toy_tsv(tmp_path / "train.tsv", 300, 0)
    _toy_tsv(tmp_path / "test.tsv", 100, 1)
    # the other defaults (bigrams, bigram dropout, weight averaging: ema scaled to ~100 steps)
    cfg = ClassifierConfig(
        embed_size=8,
        hidden_size=8,
        epochs=6,
        batch_size=16,
        lr=1e-2,
        min_freq=1,
        dropout=0.0,
        ema=0.9,
    )
    res = train_classifier(
        tmp_path / "train.tsv", tmp_path / "run", cfg, progress=False, log=lambda m: None
    )
    assert res["nb_accuracy"] == 1.0 and res["accuracy"] >= 0.9
    ev = evaluate_classifier(tmp_path / "run", tmp_path / "test.tsv")
    assert ev["accuracy"] >= 0.9 and ev["nb_accuracy"] == 1.0
    nb = NaiveBayes.load(tmp_path / "run" / "naive_bayes.npz")
    assert nb.predict(["최고 최고", "최악"]).tolist() == [1, 0]


@pytest.mark.parametrize("extra", [{}, {"ema": 0.9, "bigram_dropout": 0.3, "words": True}])
def test_classifier_keeps_best_validation_epoch(tmp_path, extra):
    """Early stopping on the validation split; the saved weights are the best epoch's (with
    ``ema``, the averaged weights that were validated)."""
    _toy_tsv(tmp_path / "train.tsv", 200, 2)
    _toy_tsv(tmp_path / "val.tsv", 60, 3)
    cfg = ClassifierConfig(
        embed_size=6,
        hidden_size=6,
        epochs=4,
        patience=1,
        batch_size=16,
        lr=3e-2,
        min_freq=1,
        lm_steps=0,
        **extra,
    )
    res = train_classifier(
        tmp_path / "train.tsv",
        tmp_path / "run",
        cfg,
        val_tsv=tmp_path / "val.tsv",
        progress=False,
        log=lambda m: None,
    )
    _, _, _, meta = load_classifier(tmp_path / "run")
    accs = [h["val_accuracy"] for h in meta["history"]]
    assert res["epochs_run"] == len(accs) <= 4
    assert res["best_epoch"] == int(np.argmax(accs)) + 1 and res["accuracy"] == max(accs)
    ev = evaluate_classifier(tmp_path / "run", tmp_path / "val.tsv")
    assert ev["accuracy"] == pytest.approx(res["accuracy"])


def test_classifier_lm_pretraining(tmp_path):
    """Forward + backward char-LM pretraining of the embedding and both LSTM directions."""
    _toy_tsv(tmp_path / "t.tsv", 120, 4)
    _, texts = data.read_tsv(tmp_path / "t.tsv")
    vocab = data.Vocab.build(texts, level="char", min_freq=1, pad=True)
    seqs = [vocab.encode(t) for t in texts]
    m = SequenceClassifier(len(vocab), 2, 8, 12, pad_id=vocab.pad_id, seed=0)
    before = m.state_dict()
    res = pretrain_lm(m, seqs, 40, seq_len=20, batch_size=8, lr=1e-2, max_epochs=100)
    assert res["lm_steps_run"] == 40
    for side in ("lm_bpc_forward", "lm_bpc_backward"):
        assert res[side] < np.log2(len(vocab)) - 0.5, res
    after = m.state_dict()
    for k in ("embedding.weight", "rnn_fwd.weight_hh_l0", "rnn_bwd.weight_hh_l0"):
        assert not np.array_equal(before[k], after[k]), k
    assert np.array_equal(before["head.weight"], after["head.weight"])
    # tiny data: shorter windows, capped passes
    res = pretrain_lm(m, seqs[:2], 1000, seq_len=100, batch_size=32, max_epochs=2)
    assert 1 <= res["lm_steps_run"] <= 2 * sum(len(s) + 1 for s in seqs[:2])


def test_inspector_features_and_ranking(tmp_path):
    text = 'x = f("ab(c)", [1,\n    2])  # "no"\nreturn y\n'
    f = ins.text_features(text)
    q = f["in_quote"]
    assert q[text.index('"ab')] == 1 and q[text.index("ab")] == 1 and q[0] == 0
    assert q[text.index('"no')] == 0  # comment
    assert f["in_bracket"][text.index("ab")] == 1 and f["bracket_depth"][text.index("2")] == 2
    assert f["indentation"][text.index("2")] == 4 and f["position_in_line"][text.index("2")] == 4
    assert f["after_keyword"][text.index("y")] == 1
    m = CharLM(40, 4, 6, 2, seed=0)
    vocab = data.Vocab.build(text)
    acts = ins.record_activations(m, vocab, text)
    assert acts["h"].shape == (len(text), 2, 6) and acts["c"].shape == (len(text), 2, 6)
    m.eval()
    y, _ = m.rnn(m.embedding(vocab.encode(text).astype(np.int64))[:, None, :])
    np.testing.assert_allclose(acts["h"][:, 1], y[:, 0], rtol=1e-5, atol=1e-6)
    fake = {"c": np.zeros((len(text), 1, 2)), "h": np.zeros((len(text), 1, 2))}
    fake["h"][:, 0, 1] = q + 0.01 * np.arange(len(text)) / len(text)
    best = ins.rank_cells(fake, {"in_quote": q}, 1)["in_quote"][0]
    assert best["kind"] == "h" and best["unit"] == 1 and best["r"] > 0.99
    html = ins.render_html(text, q - 0.5, "t")
    assert html.count("<span") == len(text)
    assert ins.render_png(tmp_path / "a.png", text, q - 0.5, "t")
    assert (tmp_path / "a.png").stat().st_size > 0


def test_classifier_ensemble_averages_members(tmp_path):
    """``ensemble=3``: member 0 is the single model, the others are seeded apart; the saved
    ensemble reproduces the validation accuracy and averages the members' probabilities."""
    _toy_tsv(tmp_path / "train.tsv", 160, 5)
    _toy_tsv(tmp_path / "val.tsv", 60, 6)
    base = dict(embed_size=6, hidden_size=6, epochs=2, batch_size=16, lr=3e-2, min_freq=1)
    kw = dict(val_tsv=tmp_path / "val.tsv", progress=False, log=lambda m: None)
    single = train_classifier(
        tmp_path / "train.tsv", tmp_path / "one", ClassifierConfig(**base), **kw
    )
    res = train_classifier(
        tmp_path / "train.tsv", tmp_path / "ens", ClassifierConfig(ensemble=3, **base), **kw
    )
    assert res["ensemble"] == 3 and len(res["member_accuracies"]) == 3
    assert res["member_accuracies"][0] == single["accuracy"]
    assert res["ensemble_prefix_accuracies"][0] == single["accuracy"]
    assert res["accuracy"] == res["ensemble_prefix_accuracies"][-1]
    one, *_ = load_classifier(tmp_path / "one")
    ens, vocab, _, meta = load_classifier(tmp_path / "ens")
    assert isinstance(ens, ClassifierEnsemble) and len(ens) == 3 and meta["ensemble"] == 3
    assert [m["seed"] for m in meta["members"]] == [0, 1000, 2000]
    s0, s1 = ens.members[0].state_dict(), ens.members[1].state_dict()
    for k, v in one.state_dict().items():
        np.testing.assert_array_equal(s0[k], v)
    assert not np.array_equal(s0["rnn_fwd.weight_hh_l0"], s1["rnn_fwd.weight_hh_l0"])
    # the ensemble's output is the log of the mean of the members' softmax
    _, texts = data.read_tsv(tmp_path / "val.tsv")
    bv = data.Vocab.from_dict(meta["bigram_vocab"])
    seqs, bseqs = _encode_all(vocab, texts, 150), _encode_bigrams(bv, texts, 150)
    got = predict_log_proba(ens, seqs, bseqs)
    p = np.mean([np.exp(predict_log_proba(m, seqs, bseqs)) for m in ens.members], axis=0)
    np.testing.assert_allclose(np.exp(got), p, rtol=1e-5, atol=1e-7)
    ev = evaluate_classifier(tmp_path / "ens", tmp_path / "val.tsv")
    assert ev["ensemble"] == 3 and ev["accuracy"] == pytest.approx(res["accuracy"])


def test_classifier_ensemble_checkpoint_checks_members(tmp_path):
    _toy_tsv(tmp_path / "train.tsv", 60, 7)
    cfg = ClassifierConfig(embed_size=4, hidden_size=4, epochs=1, min_freq=1, ensemble=2)
    train_classifier(tmp_path / "train.tsv", tmp_path / "run", cfg, progress=False, log=print)
    ck = tmp_path / "run" / CLASSIFIER_FILE
    arrays, meta = load_npz(ck)
    save_npz(ck, {k: v for k, v in arrays.items() if not k.startswith("member1/")}, meta)
    with pytest.raises(CheckpointError, match="member1/"):
        load_classifier(tmp_path / "run")
    save_npz(ck, arrays, {**meta, "ensemble": 1})
    with pytest.raises(CheckpointError, match=r"expected ensemble members none \(ensemble=1\)"):
        load_classifier(tmp_path / "run")
    save_npz(ck, arrays, {**meta, "ensemble": 0})
    with pytest.raises(CheckpointError, match="ensemble: expected an int >= 1, got 0"):
        load_classifier(tmp_path / "run")


def test_classifier_val_fraction_zero_trains_on_every_row(tmp_path):
    _toy_tsv(tmp_path / "train.tsv", 80, 8)
    cfg = ClassifierConfig(
        embed_size=4, hidden_size=4, epochs=3, patience=1, min_freq=1, val_fraction=0.0
    )
    res = train_classifier(tmp_path / "train.tsv", tmp_path / "run", cfg, progress=False, log=print)
    assert res["train_examples"] == 80 and res["val_examples"] == 0
    assert res["accuracy"] is None and res["nb_accuracy"] is None
    assert res["epochs_run"] == 3 and res["best_epoch"] == 3  # the last weights are kept
    nb = NaiveBayes.load(tmp_path / "run" / "naive_bayes.npz")
    assert int(nb.class_count.sum()) == 80


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"ensemble": 0}, "ensemble: expected an int >= 1, got 0"),
        ({"ensemble": 2.0}, "ensemble: expected an int >= 1, got 2.0"),
        ({"val_fraction": 1.0}, "val_fraction: expected 0 <= val_fraction < 1, got 1.0"),
        ({"val_fraction": -0.1}, "val_fraction: expected 0 <= val_fraction < 1, got -0.1"),
        ({"lm_max_epochs": 0}, "lm_max_epochs: expected an int >= 1, got 0"),
    ],
)
def test_classifier_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        ClassifierConfig(**kw)


def test_classifier_lm_pretraining_reads_an_extra_corpus(tmp_path):
    """``lm_corpus`` lines join the training texts in the pretraining stream (each text plus a
    separator); ``lm_max_epochs`` caps the passes over that stream."""
    _toy_tsv(tmp_path / "train.tsv", 50, 9)
    extra = ["좋은 영화였다", "", "최악의 배우 xyz"]
    (tmp_path / "novel.txt").write_text("\n".join(extra) + "\n", encoding="utf-8")
    _, texts = data.read_tsv(tmp_path / "train.tsv")
    base = dict(embed_size=4, hidden_size=4, epochs=1, min_freq=1, val_fraction=0.0)
    lm = dict(lm_steps=10_000, lm_seq_len=8, lm_batch_size=4)
    runs = {}
    for name, kw in [
        ("plain", {}),
        ("extra", {"lm_corpus": str(tmp_path / "novel.txt")}),
        ("extra2", {"lm_corpus": str(tmp_path / "novel.txt"), "lm_max_epochs": 2}),
    ]:
        cfg = ClassifierConfig(**base, **lm, **kw)
        runs[name] = train_classifier(
            tmp_path / "train.tsv", tmp_path / name, cfg, progress=False, log=lambda m: None
        )
    plain = sum(len(t) + 1 for t in texts)
    assert runs["plain"]["lm_chars"] == plain
    assert runs["extra"]["lm_chars"] == plain + sum(len(t) + 1 for t in extra if t)
    windows = (runs["extra"]["lm_chars"] - 1) // (4 * 8)
    assert runs["extra"]["lm_steps_run"] == 3 * windows
    assert runs["extra2"]["lm_steps_run"] == 2 * windows
    _, _, _, meta = load_classifier(tmp_path / "extra2")
    assert meta["config"]["lm_corpus"] == str(tmp_path / "novel.txt")
    assert meta["config"]["lm_max_epochs"] == 2
