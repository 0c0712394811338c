"""Vocabularies, corpora, BPTT batching, TSV reading and the Cython/Python paths agreeing."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import data

KO = "그는 “안녕하세요” 하고 말했다.\n파이썬 def f(x):\n    return 'x'\n"


@pytest.mark.parametrize("cy", [True, False])
def test_char_vocab_roundtrip_korean(cy, tmp_path):
    v = data.Vocab.build(KO, use_cython=cy)
    ids = v.encode(KO, use_cython=cy)
    assert ids.dtype == np.int32 and v.decode(ids) == KO
    assert v.encode("가z", use_cython=cy).tolist()[1] == 0  # unknown -> 0
    v.save(tmp_path / "v.json")
    w = data.Vocab.load(tmp_path / "v.json")
    assert w.itos == v.itos and (w.encode(KO) == ids).all()


def test_cython_and_python_paths_agree():
    text = data.default_corpus(max_chars=20000) + KO
    a = data.Vocab.build(text, use_cython=True)
    b = data.Vocab.build(text, use_cython=False)
    assert a.itos == b.itos
    assert (a.encode(text, use_cython=True) == a.encode(text, use_cython=False)).all()
    docs = ["좋은 영화 좋은", "bad movie", ""]
    i1, i2 = {}, {}
    r1 = data.featurize(docs, i1, grow=True, char_n=3, word_n=2, use_cython=True)
    r2 = data.featurize(docs, i2, grow=True, char_n=3, word_n=2, use_cython=False)
    assert i1 == i2 and all((x == y).all() for x, y in zip(r1, r2))
    assert "w:좋은 영화" in i1 and "c:좋은" in i1
    ip, ids = data.featurize(["좋은 zzz"], i1, grow=False, use_cython=True)
    assert ip.tolist() == [0, len(ids)] and all(i < len(i1) for i in ids)


def test_word_vocab():
    v = data.Vocab.build(["a b b c", "b c"], level="word", pad=True, max_size=4)
    assert v.itos == ["<unk>", "<pad>", "b", "c"] and v.pad_id == 1
    assert v.encode("c a b").tolist() == [3, 0, 2]
    assert v.decode([2, 3]) == "b c"


def test_corpus_sources(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("beta\n", encoding="utf-8")
    (tmp_path / "c.bin").write_bytes(b"\x00")
    assert data.load_corpus(tmp_path) == "alpha\n\nbeta\n"
    assert data.load_corpus(tmp_path / "a.txt") == "alpha\n"
    d = data.load_corpus(default=True, max_chars=5000)
    assert len(d) == 5000 and ("def " in d or "import" in d)
    with pytest.raises(FileNotFoundError, match="corpus"):
        data.load_corpus(tmp_path / "missing")


@pytest.mark.parametrize("cy", [True, False])
def test_bptt_streams_continue(cy):
    ids = np.arange(1001, dtype=np.int32)
    b = data.BPTTBatcher(ids, batch_size=4, seq_len=10, use_cython=cy)
    assert b.n == 250 and len(b) == 25
    x0, y0 = b.window(0)
    x1, _ = b.window(1)
    assert x0.shape == (10, 4)
    assert (y0 == x0 + 1).all()
    assert (x1[0] == x0[-1] + 1).all()  # window k+1 continues each stream
    assert (x0[0] == np.arange(4) * 250).all()
    assert (b.window(25)[0] == x0).all()  # wraps around
    tail = data.BPTTBatcher(ids, 4, 30, drop_last=False)
    assert tail.window(len(tail) - 1)[0].shape == (250 - 8 * 30, 4)
    with pytest.raises(ValueError, match="too few"):
        data.BPTTBatcher(ids[:20], 4, 10)


def test_split_and_tsv(tmp_path):
    tr, va = data.train_val_split(np.arange(100), 0.1)
    assert len(tr) == 90 and va[0] == 90
    p = tmp_path / "d.tsv"
    p.write_text("label\ttext\n1\t좋다\n0\t별로\n\n1\ta\tb\n", encoding="utf-8")
    labels, texts = data.read_tsv(p)
    assert labels.tolist() == [1, 0, 1] and texts == ["좋다", "별로", "a\tb"]
    p.write_text("x\ty\nz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="label"):
        data.read_tsv(p)
