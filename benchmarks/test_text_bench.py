"""The Cython data pipeline (lstm_fast._text) against the plain Python/NumPy path, on the 1.2 MB
Korean corpus and the 20,000 NSMC reviews (skipped when ../shared/data is absent).

Run: ``PYTHONPATH=. pytest benchmarks/test_text_bench.py --benchmark-group-by=group``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstm_fast import data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
KO = DATA / "ko_novels" / "train.txt"
NSMC = DATA / "nsmc" / "train.tsv"
PATHS = [pytest.param(True, id="cython"), pytest.param(False, id="python")]


@pytest.fixture(scope="module")
def ko_text():
    if not KO.exists():
        pytest.skip(f"{KO} absent (see ../shared/data/README.md)")
    return KO.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reviews():
    if not NSMC.exists():
        pytest.skip(f"{NSMC} absent (see ../shared/data/README.md)")
    return data.read_tsv(NSMC)[1]


@pytest.mark.parametrize("cy", PATHS)
def test_build_vocab(benchmark, ko_text, cy):
    benchmark.group = "vocab build (ko_novels)"
    v = benchmark(data.Vocab.build, ko_text, use_cython=cy)
    assert len(v) > 1000


@pytest.mark.parametrize("cy", PATHS)
def test_encode(benchmark, ko_text, cy):
    benchmark.group = "encode (ko_novels)"
    v = data.Vocab.build(ko_text)
    ids = benchmark(v.encode, ko_text, use_cython=cy)
    assert len(ids) == len(ko_text)


@pytest.mark.parametrize("cy", PATHS)
def test_ngram_features(benchmark, reviews, cy):
    benchmark.group = "n-gram features (nsmc 20k)"
    indptr, _ = benchmark(
        lambda: data.featurize(reviews, {}, grow=True, char_n=3, word_n=1, use_cython=cy)
    )
    assert len(indptr) == len(reviews) + 1


@pytest.mark.parametrize("cy", PATHS)
def test_bptt_windows(benchmark, ko_text, cy):
    benchmark.group = "BPTT windows (ko_novels, B=32, T=100)"
    ids = data.Vocab.build(ko_text).encode(ko_text)
    b = data.BPTTBatcher(ids, 32, 100, use_cython=cy)

    def epoch():
        return sum(int(x[0, 0]) for x, _ in b)

    benchmark(epoch)
    assert np.isfinite(epoch())
