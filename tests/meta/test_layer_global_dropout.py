"""A dropout layer as published, drawing from NumPy's global generator (issue 13).

* A dropout layer that draws its mask from NumPy's global generator is
  re-seeded before every forward even where two masks happened to agree (6
  elements at ratio 0.5: one time in 64), which raised
  ``NonDeterministicFunction`` before.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_layer


class Dropout:
    def __init__(self, dropout_ratio=0.5, scale=1.0):
        self.dropout_ratio = dropout_ratio
        self.scale = scale  # 2.0: a wrong backward

    def forward(self, x, train_flg=True):
        self.mask = np.random.rand(*x.shape) > self.dropout_ratio  # noqa: NPY002 - as published
        return x * self.mask

    def backward(self, dout):
        return self.scale * dout * self.mask


@pytest.mark.parametrize("shape", [(2, 3), (1, 2), (4, 5)])
def test_a_global_dropout_mask_is_re_seeded_whatever_two_draws_gave(shape):
    x = np.random.default_rng(1).normal(size=shape)
    state = np.random.get_state()  # noqa: NPY002
    try:
        for k in range(120):
            np.random.seed(k)  # noqa: NPY002 - the global state dropout draws from
            right = check_layer(Dropout(), (x,))
            assert right.status in ("passed", "inconclusive"), f"global seed {k}\n{right}"
            if right.status == "passed":
                assert any("random" in n for n in right.notes), str(right)
        wrong = check_layer(Dropout(scale=2.0), (x,))
        assert wrong.status != "passed", str(wrong)
    finally:
        np.random.set_state(state)  # noqa: NPY002
