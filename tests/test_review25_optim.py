"""Edge cases found in the twenty-fifth review, the NumPy training API: parameters of odd shapes
and dtypes, optimizer state dicts, gradient clipping and train()/eval()."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import optim
from lstm_fast.module import Module, Parameter

torch = pytest.importorskip("torch")


# -- Parameter ------------------------------------------------------------------------------------
def test_a_zero_dim_parameter_stays_zero_dim_and_trains_as_torchs():
    """np.ascontiguousarray made a 0-d value 1-d: Parameter(2.5) had shape (1,), so a torch
    state dict with a 0-d parameter (a learned temperature) did not load into the module."""
    p = Parameter(np.float32(2.5))
    assert p.shape == () and p.grad.shape == () and p.data.flags.c_contiguous

    class Temperature(Module):
        def __init__(self):
            super().__init__()
            self.t = Parameter(1.0)

    m = Temperature()
    m.load_state_dict({"t": torch.tensor(0.5)})
    assert m.t.data.shape == () and float(m.t.data) == 0.5
    tp = torch.nn.Parameter(torch.tensor(0.5))
    opt, topt = optim.Adam([m.t], lr=0.1), torch.optim.Adam([tp], lr=0.1)
    for k in range(5):
        m.t.grad[...] = 0.3 * k - 0.5
        tp.grad = torch.tensor(0.3 * k - 0.5)
        opt.step()
        topt.step()
    np.testing.assert_allclose(m.t.data, tp.detach().numpy(), rtol=1e-6)
