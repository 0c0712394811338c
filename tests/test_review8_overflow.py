"""Integer overflow on large but valid shapes (review 8): size arithmetic that must not wrap.

Nothing here allocates more than ~100 MiB: the shapes are checked through size helpers, or are
zero-size arrays whose dimensions are large.
"""

import numpy as np
import pytest

from lstm_fast import _core


def test_proj_workspace_does_not_wrap_when_t_b_4h_exceeds_int64():
    # An inference call with a projection: y is (T, B, P), c_n (B, H), so nothing bounds
    # T * B * 4H, which here is 2^63. The chunk test and the unpacked block formed that product
    # and wrapped: a negative workspace (a tiny block, overrun by the input projection).
    T, B, I, H, P = 2**32, 1, 0, 2**29, 1
    ws = _core._proj_forward_workspace_floats(T, B, I, H, P, False)
    assert 0 < ws < 2**40
    # Chunked (one step per chunk at this B * 4H): the same scratch as a shorter sequence.
    assert ws == _core._proj_forward_workspace_floats(2**21, B, I, H, P, False)
    assert 0 < _core._proj_forward_workspace_floats(T, B, I, H, P, True) <= ws


@pytest.mark.parametrize("training", [False, True])
def test_proj_workspace_small_shapes_still_hold_the_unpacked_block(training):
    # T * B <= 4 runs the unpacked path: its (T*B, 4H) block is still reserved.
    T, B, I, H, P = 2, 2, 3, 7, 3
    ws = _core._proj_forward_workspace_floats(T, B, I, H, P, training)
    assert ws >= T * B * 4 * H + 2 * B * H + B * max(H, P)


@pytest.mark.parametrize("sizes", [(-1, 1, 1, 2, 1), (1, 1, 1, 2**62, 1), (2**40, 2**40, 0, 2, 1)])
def test_proj_workspace_helper_refuses_sizes_beyond_memory(sizes):
    with pytest.raises(ValueError):
        _core._proj_forward_workspace_floats(*sizes, False)


def test_take_rows_zero_width_rows_return_at_once():
    # (T, B, 0) with a large T: nothing to copy. The row loop counted T * N empty rows (2^50
    # iterations here: a hang).
    a = np.zeros((2**40, 1, 0), np.float32)
    out = _core.take_rows(a, np.zeros(1024, np.int64))
    assert out.shape == (2**40, 1024, 0) and out.dtype == np.float32


def test_take_rows_refuses_an_output_beyond_any_memory_before_allocating():
    # out (T, N, F) of 2^46 floats: refused by size, naming the argument, before any allocation
    # (was the allocator's MemoryError, or NumPy's "array is too big" where the size wrapped).
    a = np.zeros((2**12, 1, 2**12), np.float32)  # 64 MiB
    index = np.zeros(2**22, np.int64)  # 32 MiB
    with pytest.raises(ValueError, match=r"index: these sizes need out \(T=4096, N=4194304"):
        _core.take_rows(a, index)


def test_take_rows_small_unchanged():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5, 4)).astype(np.float32)
    idx = np.array([4, 0, 2, 2], np.int64)
    np.testing.assert_array_equal(_core.take_rows(a, idx), a[:, idx, :])
