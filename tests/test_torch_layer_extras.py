"""The torch.nn.LSTM/GRU/RNN attributes that existing PyTorch code calls besides forward:
``flatten_parameters()`` (a no-op here), ``all_weights`` and ``_flat_weights_names`` in torch's
order, for every option that changes the parameter list."""

import numpy as np
import pytest

import lstm_fast

torch = pytest.importorskip("torch")

CONFIGS = [
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=3, bidirectional=True)),
    ("LSTM", dict(num_layers=2, proj_size=3, bidirectional=True)),
    ("LSTM", dict(bias=False, proj_size=2)),
    ("GRU", dict(num_layers=2, bias=False)),
    ("RNN", dict(bidirectional=True, nonlinearity="relu")),
]


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_weight_lists_as_torch(name, kw):
    ours = getattr(lstm_fast, name)(4, 5, **kw, seed=0)
    theirs = getattr(torch.nn, name)(4, 5, **kw)
    assert ours._flat_weights_names == list(theirs._flat_weights_names)
    got = [[tuple(p.data.shape) for p in group] for group in ours.all_weights]
    want = [[tuple(p.shape) for p in group] for group in theirs.all_weights]
    assert got == want
    by_name = dict(ours.named_parameters())
    flat = [p for group in ours.all_weights for p in group]
    assert all(p is by_name[n] for p, n in zip(flat, ours._flat_weights_names))


def test_flatten_parameters_changes_nothing():
    lstm = lstm_fast.LSTM(4, 5, num_layers=2, seed=0)
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    before = lstm(x)[0].copy()
    state = {k: v.copy() for k, v in lstm.state_dict().items()}
    assert lstm.flatten_parameters() is None
    np.testing.assert_array_equal(lstm(x)[0], before)
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
