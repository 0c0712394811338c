"""Edge cases found in the twenty-fourth review, data pipeline and command line: corpora,
vocabularies, the char-LM's training end, sampling, and the subcommands' output."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast.models import TrainConfig, load_charlm, train_charlm

TEXT = "the quick brown fox jumps over the lazy dog. " * 30


def _cfg(**kw):
    base = dict(
        embed_size=4,
        hidden_size=8,
        num_layers=1,
        seq_len=8,
        batch_size=2,
        steps=4,
        val_every=0,
        checkpoint_every=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(out):
    model = load_charlm(out)[0]
    return {k: v.copy() for k, v in model.state_dict().items()}


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
