"""Third review of the training stack: data files, schedules, sampling, the classifier's labels
and the train / evaluate / classify commands on edge inputs."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import cli, data, optim
from lstm_fast.models import charlm
from lstm_fast.models.classifier import (
    ClassifierConfig,
    _encode_bigrams,
    evaluate_classifier,
    load_classifier,
    predict,
    train_classifier,
)
from lstm_fast.module import Parameter

TINY = dict(embed_size=6, hidden_size=8, num_layers=1, seq_len=8, batch_size=2, val_fraction=0.2)
TEXT = "hello world, 세계! " * 12


# -- data files -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,encoding",
    [
        ("1\tgood\n0\tbad\n", "utf-8-sig"),  # a byte-order mark before the first label
        ("+1\tgood\n0\tbad\n", "utf-8"),  # int()'s syntax, not a header
        ("\nlabel\ttext\n1\tgood\n0\tbad\n", "utf-8"),  # the header after a blank line
    ],
)
def test_read_tsv_keeps_the_first_row(tmp_path, content, encoding):
    p = tmp_path / "d.tsv"
    p.write_text(content, encoding=encoding)
    labels, texts = data.read_tsv(p)
    assert labels.tolist() == [1, 0] and texts == ["good", "bad"]


def test_read_tsv_max_rows(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("label\ttext\n1\ta\n0\tb\n", encoding="utf-8")
    assert data.read_tsv(p, max_rows=0)[1] == []
    assert data.read_tsv(p, max_rows=1)[1] == ["a"]
    with pytest.raises(ValueError, match="max_rows: expected None or an int >= 0, got -1"):
        data.read_tsv(p, max_rows=-1)


def test_load_corpus_drops_a_byte_order_mark(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("abc", encoding="utf-8-sig")
    assert data.load_corpus(p) == "abc"
    assert data.load_corpus(tmp_path) == "abc"


# -- optimizers and schedules ---------------------------------------------------------------------
def _lrs(make_sched, resume_at=None, steps=8):
    """The learning rates of a run; with ``resume_at``, the optimizer is rebuilt there from its
    state dict and a new schedule is attached after load_state_dict."""
    ps = [Parameter(np.ones(3))]
    opt = optim.Adam(ps, lr=1.0)
    sched = make_sched(opt)
    out = []
    for k in range(steps):
        if k == resume_at:
            sd = opt.state_dict()
            ps = [Parameter(p.data) for p in ps]
            opt = optim.Adam(ps, lr=1.0)
            opt.load_state_dict(sd)
            sched = make_sched(opt)
        out.append(opt.lr)
        ps[0].grad[...] = 1.0
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda o: optim.CosineLR(o, total_steps=8, warmup=2, min_factor=0.1),
        lambda o: optim.StepLR(o, step_size=2, gamma=0.5),
    ],
)
def test_schedule_built_after_load_state_dict_goes_on_from_the_same_rates(make):
    full = _lrs(make)
    assert _lrs(make, resume_at=5) == full
    # the optimizer state carries the base rate, checked on load
    opt = optim.Adam([Parameter(np.ones(3))], lr=0.3)
    make(opt)
    assert opt.state_dict()["initial_lr"] == 0.3
    sd = {**opt.state_dict(), "initial_lr": -1.0}
    with pytest.raises(ValueError, match="initial_lr: expected a float >= 0, got -1"):
        optim.Adam([Parameter(np.ones(3))]).load_state_dict(sd)


def test_clip_grad_norm_takes_one_parameter_and_make_optimizer_a_non_str():
    p = Parameter(np.ones(4))
    p.grad[...] = 1.0
    assert optim.clip_grad_norm(p, 1.0) == pytest.approx(2.0)
    np.testing.assert_allclose(p.grad, 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="optimizer: expected one of .*, got None"):
        optim.make_optimizer(None, [p])


# -- char-LM: sampling, evaluation, commands ----------------------------------------------------
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    (d / "c.txt").write_text(TEXT, encoding="utf-8")
    cfg = charlm.TrainConfig(corpus=str(d / "c.txt"), steps=4, val_every=0, **TINY)
    charlm.train_charlm(cfg, d / "run", progress=False, log=lambda m: None)
    return d


def test_sampling_at_extreme_temperatures(lm_run):
    model, vocab, _, _ = charlm.load_charlm(lm_run / "run")
    greedy = charlm.Sampler(model).generate([1], 30, temperature=0.0)
    # a temperature so small that 1/T overflows float32 is greedy, not NaN (the last token)
    assert charlm.Sampler(model).generate([1], 30, temperature=1e-45) == greedy
    # an infinite one samples uniformly among the allowed tokens (not NaN, not the last one)
    drawn = charlm.Sampler(model, seed=1).generate([1], 400, temperature=float("inf"))
    assert 0 not in drawn and set(drawn) == set(range(1, len(vocab)))
    # excluding every token would leave nothing to draw: nothing is excluded then
    assert len(charlm.Sampler(model, exclude=range(len(vocab))).generate([1], 5)) == 5
    for bad in ("1", None):
        with pytest.raises(TypeError, match="temperature: expected a number"):
            charlm.Sampler(model).generate([1], 3, temperature=bad)


def test_evaluate_bpc_checks_its_arguments(lm_run):
    model, vocab, _, _ = charlm.load_charlm(lm_run / "run")
    ids = vocab.encode(TEXT)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        charlm.evaluate_bpc(model, ids, batch_size=0)
    with pytest.raises(ValueError, match="seq_len: expected an int >= 1, got 0"):
        charlm.evaluate_bpc(model, ids, seq_len=0)
    with pytest.raises(ValueError, match="ids: expected at least 2 token ids, got 1"):
        charlm.evaluate_bpc(model, ids[:1])
    assert charlm.evaluate_bpc(model, ids[:2]) > 0


def test_train_command_when_no_step_is_left(lm_run, capsys):
    corpus, run = lm_run / "c.txt", str(lm_run / "run")
    sizes = ["--embed-size", "6", "--hidden-size", "8", "--num-layers", "1", "--seq-len", "8"]
    common = ["train", str(corpus), "--out", run, *sizes, "--batch-size", "2", "--quiet"]
    # resuming a finished run: nothing trained, nothing measured, still a summary
    assert cli.main(common + ["--steps", "4", "--resume", "--val-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "step 4: train" in out and "n/a chars/s" in out
    fresh = ["train", str(corpus), "--out", str(lm_run / "zero"), *sizes, "--batch-size", "2"]
    assert cli.main(fresh + ["--quiet", "--steps", "0"]) == 0
    assert "step 0: train n/a bits/char" in capsys.readouterr().out


def test_evaluate_command_on_a_too_short_text_and_bad_sizes(lm_run, capsys):
    run = str(lm_run / "run")
    short = lm_run / "short.txt"
    short.write_text("h", encoding="utf-8")
    assert cli.main(["evaluate", run, str(short)]) == 1
    assert "expected at least 2 characters, got 1" in capsys.readouterr().err
    for flag in ("--seq-len", "--batch-size"):
        with pytest.raises(SystemExit) as e:
            cli.main(["evaluate", run, str(lm_run / "c.txt"), flag, "0"])
        assert e.value.code == 2
        assert "expected an int >= 1, got '0'" in capsys.readouterr().err


# -- classifier labels ----------------------------------------------------------------------------
def _tsv(path, labels):
    words = {0: "bad awful", 1: "good fine"}
    rows = [f"{lab}\t{words[k % 2]} {words[k % 2]}" for k, lab in enumerate(labels)]
    path.write_text("label\ttext\n" + "\n".join(rows) + "\n", encoding="utf-8")


CFG = dict(embed_size=6, hidden_size=6, epochs=3, batch_size=8, ema=0.0, min_freq=1, lr=2e-2)


@pytest.mark.parametrize("codes", [(-1, 1), (10**9, 7)])
def test_classifier_takes_any_integer_labels(tmp_path, codes):
    # k even -> codes[0] ("bad"), k odd -> codes[1] ("good"): -1/1 labels were refused and
    # sparse codes made a head of max(label) + 1 outputs
    labels = [codes[k % 2] for k in range(40)]
    _tsv(tmp_path / "train.tsv", labels)
    cfg = ClassifierConfig(val_fraction=0.0, dropout=0.0, **CFG)
    res = train_classifier(
        tmp_path / "train.tsv", tmp_path / "run", cfg, progress=False, log=lambda m: None
    )
    assert res["classes"] == sorted(codes)
    model, vocab, nb, meta = load_classifier(tmp_path / "run")
    assert model.config["num_classes"] == 2 and meta["classes"] == sorted(codes)
    ev = evaluate_classifier(tmp_path / "run", tmp_path / "train.tsv")
    assert ev["accuracy"] == 1.0 and ev["nb_accuracy"] == 1.0
    # a label the model never saw counts as wrong
    _tsv(tmp_path / "other.tsv", [codes[0], 12345])
    assert evaluate_classifier(tmp_path / "run", tmp_path / "other.tsv")["accuracy"] == 0.5


def test_classifier_predictions_survive_save_and_load(tmp_path):
    _tsv(tmp_path / "train.tsv", [k % 2 for k in range(40)])
    cfg = ClassifierConfig(val_fraction=0.25, **CFG)
    train_classifier(
        tmp_path / "train.tsv", tmp_path / "run", cfg, progress=False, log=lambda m: None
    )
    a, vocab, _, meta = load_classifier(tmp_path / "run")
    b = load_classifier(tmp_path / "run")[0]
    texts = ["good", "bad bad", "미지의 글"]  # unknown characters too
    seqs = [vocab.encode(t) for t in texts]
    bseqs = _encode_bigrams(data.Vocab.from_dict(meta["bigram_vocab"]), texts, 150)
    assert predict(a, seqs, bseqs).tolist() == predict(b, seqs, bseqs).tolist()


def test_classifier_data_and_config_errors(tmp_path, capsys):
    (tmp_path / "empty.tsv").write_text("label\ttext\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected at least one 'label<TAB>text' row"):
        train_classifier(tmp_path / "empty.tsv", tmp_path / "r", ClassifierConfig(), log=print)
    for name, bad in (("epochs", 0), ("batch_size", 0), ("max_len", 0), ("patience", -1)):
        with pytest.raises(ValueError, match=f"{name}: expected an int >= "):
            ClassifierConfig(**{name: bad})
    for name, bad in (("ema", -0.5), ("ema", 1.0), ("bigram_dropout", 1.5)):
        with pytest.raises(ValueError, match=f"{name}: expected a float in \\[0, 1"):
            ClassifierConfig(**{name: bad})
    # classify eval of a run directory without its Naive Bayes file
    _tsv(tmp_path / "train.tsv", [k % 2 for k in range(16)])
    cfg = ClassifierConfig(val_fraction=0.0, **{**CFG, "epochs": 1})
    train_classifier(tmp_path / "train.tsv", tmp_path / "run", cfg, progress=False, log=print)
    (tmp_path / "run" / "naive_bayes.npz").unlink()
    capsys.readouterr()
    assert cli.main(["classify", "eval", str(tmp_path / "run"), str(tmp_path / "train.tsv")]) == 0
    assert "n/a (Naive Bayes)" in capsys.readouterr().out


# -- PyTorch's amsgrad and maximize ---------------------------------------------------------------
TORCH_OPTIONS = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    ("AdamW", dict(lr=0.01, amsgrad=True, maximize=True)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1, maximize=True)),
]


@pytest.mark.parametrize("name,kw", TORCH_OPTIONS)
def test_amsgrad_and_maximize_match_torch_and_resume_exactly(name, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    shapes = [(4, 3), (5,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    # gradients shrinking then growing: AMSGrad's running maximum matters
    grads = [
        [rng.standard_normal(s).astype(np.float32) * (3.0 if k in (0, 7) else 0.3) for s in shapes]
        for k in range(9)
    ]
    ours = [Parameter(a) for a in init]
    opt = getattr(optim, name)(ours, **kw)
    theirs = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    topt = getattr(torch.optim, name)(theirs, **kw)
    for k, gs in enumerate(grads):
        if k == 4:  # a restart from the state dict changes nothing
            sd = opt.state_dict()
            ours = [Parameter(p.data) for p in ours]
            opt = getattr(optim, name)(ours)
            opt.load_state_dict(sd)
        for p, t, g in zip(ours, theirs, gs):
            p.grad[...] = g
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert ("0.max_exp_avg_sq" in opt.state_dict()["arrays"]) == bool(kw.get("amsgrad"))


def test_state_dicts_without_amsgrad_and_maximize_still_load():
    ps = [Parameter(np.ones(3))]
    opt = optim.Adam(ps, lr=0.1)
    ps[0].grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    old = {
        **sd,
        "hyper": {k: v for k, v in sd["hyper"].items() if k not in ("amsgrad", "maximize")},
    }
    fresh = optim.Adam([Parameter(np.ones(3))], amsgrad=True, maximize=True)
    fresh.load_state_dict(old)
    assert fresh.amsgrad is False and fresh.maximize is False and fresh.step_count == 1
    with pytest.raises(TypeError, match="amsgrad: expected a bool, got int"):
        optim.Adam(ps, amsgrad=1)
    with pytest.raises(TypeError, match="maximize: expected a bool, got str"):
        optim.SGD(ps, maximize="no")


def test_cross_entropy_ignores_minus_100_by_default_as_torch():
    torch = pytest.importorskip("torch")
    from lstm_fast import nn

    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)).astype(np.float32)
    t = np.array([1, -100, 3, 0, -100])
    zt = torch.tensor(z, requires_grad=True)
    want = torch.nn.CrossEntropyLoss()(zt, torch.tensor(t))
    want.backward()
    crit = nn.CrossEntropyLoss()
    assert crit(z, t) == pytest.approx(want.item(), rel=1e-6)
    np.testing.assert_allclose(crit.backward(), zt.grad.numpy(), rtol=1e-5, atol=1e-7)
    loss, _ = nn.softmax_cross_entropy(z, t)
    assert loss == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(IndexError, match="targets: expected values in"):
        nn.softmax_cross_entropy(z, t, ignore_index=None)  # None: every row counts
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'sum', got 'none'"):
        nn.CrossEntropyLoss(reduction="none")  # at construction, not at the first forward
    with pytest.raises(TypeError, match="ignore_index: expected None or an int, got 1.5"):
        nn.CrossEntropyLoss(ignore_index=1.5)


def test_vocab_build_checks_its_input():
    with pytest.raises(TypeError, match="text: expected a str or a sequence of str, got bytes"):
        data.Vocab.build(b"abc")
    with pytest.raises(TypeError, match="got int at 1"):
        data.Vocab.build(["ab", 3], level="word")
    with pytest.raises(ValueError, match="min_freq: expected an int >= 0, got '2'"):
        data.Vocab.build("abc", min_freq="2")
    with pytest.raises(ValueError, match="max_size: expected an int >= 0, got -1"):
        data.Vocab.build("abc", max_size=-1)
    # (no "\n": the newlines joining the documents are not counted, test_review9_training.py)
    assert data.Vocab.build(["ab", "b"]).itos[1:] == ["b", "a"]


def test_sgd_default_learning_rate_is_pytorchs():
    """SGD's default lr was 1e-2; PyTorch 2's is 1e-3: code written for torch.optim.SGD that
    relies on the default got ten times the step."""
    import inspect

    p = Parameter(np.ones(3, np.float32))
    p.grad[...] = 1.0
    opt = optim.SGD([p])
    assert opt.lr == 1e-3
    opt.step()
    np.testing.assert_allclose(p.data, 1.0 - 1e-3, rtol=1e-6)
    torch = pytest.importorskip("torch")
    assert inspect.signature(torch.optim.SGD).parameters["lr"].default == opt.lr
