"""A random ``fn`` (dropout left on, an unseeded generator) is caught up front, not as a mismatch.

check_vjp calls ``fn`` three times at the evaluation point before anything
else; any difference raises :class:`NonDeterministicFunction` saying so, and
the ``vjp`` is never called. Randomness the up-front calls miss (a tiny
dropout mask that happened to repeat) would surface as a mismatch: before a
failing report is returned, ``fn`` is called again and the error raised
instead. A ``vjp`` that draws its own mask is caught the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import check_vjp
from oracles.errors import NonDeterministicFunction, UserFunctionError
from oracles.layer import check_layer
from reference.layers import Affine

X = np.linspace(-1.0, 1.0, 32)


class _Counting:
    """A vjp that counts its calls (to prove the check stopped before it)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, g, x):
        self.calls += 1
        return g * np.cos(x)


def _dropout_unseeded(p):
    def fn(x):
        mask = np.random.random(x.shape) >= p  # noqa: NPY002 - the global, unseeded generator
        return np.sin(x) * mask / (1.0 - p)

    return fn


def _noise_default_rng(relative):
    rng = np.random.default_rng()  # fresh entropy: different on every run

    def fn(x):
        y = np.sin(x)
        return y + relative * np.max(np.abs(y)) * rng.standard_normal(y.shape)

    return fn


@settings(max_examples=15)
@given(p=st.floats(0.1, 0.9), size=st.integers(16, 64))
def test_dropout_left_on_is_detected_before_the_vjp_runs(p, size):
    vjp = _Counting()
    with pytest.raises(NonDeterministicFunction) as info:
        check_vjp(_dropout_unseeded(p), vjp, (np.linspace(0.1, 1.0, size),))
    message = str(info.value)
    assert "fn is not deterministic" in message
    assert "dropout" in message and "unseeded" in message
    assert vjp.calls == 0
    assert isinstance(info.value, UserFunctionError)


@settings(max_examples=15)
@given(relative=st.floats(1e-12, 1.0))
def test_unseeded_noise_of_any_size_above_rounding_is_detected(relative):
    with pytest.raises(NonDeterministicFunction, match="max difference"):
        check_vjp(_noise_default_rng(relative), _Counting(), (X,))


@pytest.mark.torch
def test_torch_dropout_in_training_mode_is_detected():
    import torch

    def fn(x):
        t = torch.from_numpy(np.sin(x))
        return torch.nn.functional.dropout(t, p=0.5, training=True).numpy()

    with pytest.raises(NonDeterministicFunction, match="switch dropout off"):
        check_vjp(fn, _Counting(), (X,))

    def fn_eval(x):
        t = torch.from_numpy(np.sin(x))
        return torch.nn.functional.dropout(t, p=0.5, training=False).numpy()

    assert check_vjp(fn_eval, _Counting(), (X,)).ok


def test_randomness_seeded_inside_fn_is_fine():
    def fn(x):
        mask = np.random.default_rng(7).random(x.shape) >= 0.5
        return np.sin(x) * mask

    def vjp(g, x):
        mask = np.random.default_rng(7).random(x.shape) >= 0.5
        return g * np.cos(x) * mask

    assert check_vjp(fn, vjp, (X,)).ok


def test_randomness_missed_up_front_is_still_reported_as_randomness_not_a_mismatch():
    """Deterministic for the first calls, random afterwards (a mask that repeated by chance)."""
    calls = {"n": 0}
    rng = np.random.default_rng()

    def fn(x):
        calls["n"] += 1
        y = np.sin(x)
        return y if calls["n"] <= 4 else y * (1.0 + 1e-3 * rng.standard_normal(y.shape))

    with pytest.raises(NonDeterministicFunction, match="fn is not deterministic"):
        check_vjp(fn, lambda g, x: g * np.cos(x), (X[:3],))


def test_a_vjp_that_draws_its_own_mask_is_named():
    def vjp(g, x):
        return g * np.cos(x) * (np.random.random(x.shape) >= 0.5) * 2.0  # noqa: NPY002

    with pytest.raises(NonDeterministicFunction, match="vjp is not deterministic.*gradients of x"):
        check_vjp(np.sin, vjp, (X,))


def test_fn_that_changes_its_output_shape_between_calls():
    calls = {"n": 0}

    def fn(x):
        calls["n"] += 1
        return np.sin(x) if calls["n"] == 1 else np.sin(x)[:-1]

    with pytest.raises(NonDeterministicFunction, match=r"shape \(32,\), then \(31,\)"):
        check_vjp(fn, _Counting(), (X,))


class _DropoutAffine(Affine):
    """An affine layer with dropout left on in forward."""

    def forward(self, x):
        out = super().forward(x)
        return out * (np.random.random(out.shape) >= 0.5) * 2.0  # noqa: NPY002


def test_a_layer_with_dropout_left_on_is_detected():
    # Re-seeding NumPy's global RNG makes the mask repeatable (issue 15); the Affine backward
    # ignores the mask, so the check fails instead of passing.
    rng = np.random.default_rng(0)
    layer = _DropoutAffine(rng.standard_normal((3, 8)), rng.standard_normal(8))
    report = check_layer(layer, (rng.standard_normal((4, 3)),))
    assert not report.ok and "x" in report.failed_inputs
    assert any("re-seeded" in n for n in report.notes)

    class _FreshGenerator(Affine):
        def forward(self, x):
            keep = np.random.default_rng().random((len(x), 8)) >= 0.5  # a new generator per call
            return super().forward(x) * keep * 2.0

    with pytest.raises(NonDeterministicFunction, match="not deterministic"):
        check_layer(_FreshGenerator(layer.W, layer.b), (rng.standard_normal((4, 3)),))
