"""The catalog of published mistakes: every entry is caught, every correction passes.

The first half checks the catalog itself with plain NumPy (each wrong VJP
really differs from the correct one, in the input it claims, on the inputs it
supplies). The second half runs every entry through :func:`oracles.check_vjp`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

import oracles
from oracles import UserFunctionError
from reference import pitfalls
from reference._validation import InvalidInput
from reference.pitfalls import CATALOG, Pitfall, by_name

VALUE_PITFALLS = [p for p in CATALOG if p.wrong_input is not None]
MUTATING_PITFALLS = [p for p in CATALOG if p.mutates_cotangent]
# Only a missing transpose needs square shapes to run at all.
SQUARE_ALLOWED = {"affine_dx_missing_transpose", "affine_dw_missing_transpose"}
# Seeds of the inputs each entry is checked on.
SEEDS = (11, 23, 37)
# The smallest relative difference between wrong and right that an entry must show. The tanh
# approximation of GELU has a derivative within ~1e-3 of the exact one's: subtle by nature.
MIN_DIFFERENCE = {"gelu_tanh_forward_exact_backward": 1e-4}


def _ids(p):
    return p.name


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def _cotangent(p, inputs, rng):
    return rng.standard_normal(np.shape(p.fn(*inputs)))


# --- the catalog itself ------------------------------------------------------------


def test_catalog_has_every_required_mistake():
    required = {
        "softmax_diagonal_jacobian",
        "softmax_backward_ignores_upstream",
        "softmax_over_batch_axis",
        "squared_error_on_softmax_diagonal",
        "cross_entropy_soft_targets_a_minus_y",
        "cross_entropy_mean_missing_1_over_n",
        "cross_entropy_whole_columns",
        "sigmoid_derivative_of_output_on_input",
        "sigmoid_derivative_on_output",
        "tanh_derivative_missing_square",
        "affine_dx_missing_transpose",
        "affine_dw_missing_transpose",
        "affine_db_averaged",
        "squared_error_missing_factor_2",
        "relu_backward_in_place",
        "cross_entropy_epsilon_dropped",
        "gelu_tanh_forward_exact_backward",
        "embedding_repeated_indices_lost",
        "maxpool_ties_all_get_gradient",
        "conv2d_padding_slice_empty_at_p0",
        "lstm_step_backward_in_place",
    }
    names = [p.name for p in CATALOG]
    assert len(names) == len(set(names))
    assert required <= set(names)


@pytest.mark.parametrize("p", CATALOG, ids=_ids)
def test_entry_is_a_complete_frozen_record(p):
    assert isinstance(p, Pitfall)
    assert by_name(p.name) is p
    for text in (p.summary, p.correct, p.source):
        assert isinstance(text, str) and len(text) > 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "renamed"
    inputs = p.make_inputs(np.random.default_rng(0))
    assert len(p.input_names) == len(inputs)
    assert p.wrong_input is None or 0 <= p.wrong_input < len(inputs)
    assert (p.wrong_input is None) == p.mutates_cotangent


@pytest.mark.parametrize("p", CATALOG, ids=_ids)
def test_make_inputs_is_float64_reproducible_and_well_shaped(p):
    a = p.make_inputs(np.random.default_rng(7))
    b = p.make_inputs(np.random.default_rng(7))
    c = p.make_inputs(np.random.default_rng(8))
    assert isinstance(a, tuple)
    for x, y in zip(a, b, strict=True):
        assert isinstance(x, np.ndarray) and x.dtype == np.float64
        assert np.all(np.isfinite(x))
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))
    matrices = [x for x in a if x.ndim == 2]
    if p.name in SQUARE_ALLOWED:
        assert any(m.shape[0] == m.shape[1] for m in matrices)
    else:
        # Shapes alone must not give the mistake away.
        assert all(m.shape[0] != m.shape[1] for m in matrices)
    for m in matrices:
        assert min(m.shape) >= 3


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", VALUE_PITFALLS, ids=_ids)
def test_wrong_vjp_differs_only_in_the_wrong_input(p, seed):
    rng = np.random.default_rng(seed)
    inputs = p.make_inputs(rng)
    g = _cotangent(p, inputs, rng)
    wrong = _as_tuple(p.wrong_vjp(g.copy(), *inputs))
    right = _as_tuple(p.correct_vjp(g.copy(), *inputs))
    assert len(wrong) == len(right) == len(inputs)
    for i, (w, r, x) in enumerate(zip(wrong, right, inputs, strict=True)):
        assert np.shape(r) == x.shape
        if i == p.wrong_input:
            if np.shape(w) != x.shape:  # a gradient of the wrong shape is wrong enough
                continue
            rel = np.max(np.abs(w - r)) / np.max(np.abs(r))
            least = MIN_DIFFERENCE.get(p.name, 1e-2)
            assert rel > least, f"{p.input_names[i]}: relative difference only {rel:.2e}"
        else:
            assert np.shape(w) == x.shape
            np.testing.assert_allclose(w, r, rtol=1e-13, atol=0)


@pytest.mark.parametrize("p", CATALOG, ids=_ids)
def test_vjps_leave_the_inputs_alone(p):
    rng = np.random.default_rng(3)
    inputs = p.make_inputs(rng)
    saved = [x.copy() for x in inputs]
    g = _cotangent(p, inputs, rng)
    p.correct_vjp(g.copy(), *inputs)
    p.wrong_vjp(g.copy(), *inputs)
    for x, s in zip(inputs, saved, strict=True):
        np.testing.assert_array_equal(x, s)


@pytest.mark.parametrize("p", MUTATING_PITFALLS, ids=_ids)
def test_mutating_vjp_has_right_values_but_changes_the_callers_cotangent(p):
    rng = np.random.default_rng(4)
    inputs = p.make_inputs(rng)
    g = _cotangent(p, inputs, rng)
    g_before = g.copy()
    right = _as_tuple(p.correct_vjp(g_before.copy(), *inputs))
    wrong = _as_tuple(p.wrong_vjp(g, *inputs))
    for w, r in zip(wrong, right, strict=True):
        np.testing.assert_array_equal(w, r)
    assert not np.array_equal(g, g_before), "the caller's cotangent should have changed"
    # The correct VJP leaves it alone.
    g2 = g_before.copy()
    p.correct_vjp(g2, *inputs)
    np.testing.assert_array_equal(g2, g_before)


@pytest.mark.parametrize("name", ["", "softmax", "SOFTMAX_DIAGONAL_JACOBIAN", None, 3])
def test_by_name_rejects_unknown_names_listing_the_known_ones(name):
    with pytest.raises(InvalidInput, match="softmax_diagonal_jacobian"):
        by_name(name)


def test_module_exports():
    assert set(pitfalls.__all__) == {"CATALOG", "Pitfall", "by_name"}


# --- the oracle against the catalog ----------------------------------------------------


def _failed_inputs(report):
    return [i for i, r in enumerate(report.inputs) if not r.ok]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", VALUE_PITFALLS, ids=_ids)
def test_oracle_flags_the_wrong_vjp_at_the_wrong_input(p, seed):
    inputs = p.make_inputs(np.random.default_rng(seed))
    name = p.input_names[p.wrong_input]
    g = _cotangent(p, inputs, np.random.default_rng(seed))
    if np.shape(_as_tuple(p.wrong_vjp(g, *inputs))[p.wrong_input]) != inputs[p.wrong_input].shape:
        # A gradient of the wrong shape is refused, naming the input, before any comparison.
        with pytest.raises(UserFunctionError, match=f"gradient of {name} with shape"):
            oracles.check_vjp(p.fn, p.wrong_vjp, inputs, seed=0)
        return
    report = oracles.check_vjp(p.fn, p.wrong_vjp, inputs, seed=0)
    assert report.ok is False, str(report)
    assert _failed_inputs(report) == [p.wrong_input], str(report)
    # The report names the input as the forward's signature does.
    assert report.inputs[p.wrong_input].name == name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", MUTATING_PITFALLS, ids=_ids)
def test_oracle_flags_a_vjp_that_modifies_its_cotangent(p, seed):
    inputs = p.make_inputs(np.random.default_rng(seed))
    report = oracles.check_vjp(p.fn, p.wrong_vjp, inputs, seed=0)
    assert report.ok is False, str(report)
    assert "modif" in str(report).lower(), str(report)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", CATALOG, ids=_ids)
def test_oracle_passes_the_correct_vjp(p, seed):
    inputs = p.make_inputs(np.random.default_rng(seed))
    report = oracles.check_vjp(p.fn, p.correct_vjp, inputs, seed=0)
    assert report.ok is True, str(report)
    assert _failed_inputs(report) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_the_padding_slice_is_right_once_there_is_padding(seed):
    # dx_padded[p:-p, p:-p] is empty only at p = 0: with p = 1 the published code is right.
    p = by_name("conv2d_padding_slice_empty_at_p0")
    fn, wrong, right = (functools.partial(f, pad=1) for f in (p.fn, p.wrong_vjp, p.correct_vjp))
    inputs = p.make_inputs(np.random.default_rng(seed))
    g = np.random.default_rng(seed).standard_normal(np.shape(fn(*inputs)))
    for w, r in zip(wrong(g, *inputs), right(g, *inputs), strict=True):
        np.testing.assert_array_equal(w, r)
    report = oracles.check_vjp(fn, wrong, inputs, seed=0)
    assert report.ok is True, str(report)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_inputs_are_where_the_mistakes_show(seed):
    rng = np.random.default_rng(seed)
    probabilities, targets = by_name("cross_entropy_epsilon_dropped").make_inputs(rng)
    true_class = probabilities[targets == 1.0]
    assert np.any((true_class >= 1e-8) & (true_class <= 1e-6))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-15)
    (pixels,) = by_name("maxpool_ties_all_get_gradient").make_inputs(rng)
    assert np.array_equal(pixels, np.round(pixels))
    h, w = pixels.shape
    windows = pixels.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(-1, 4)
    tied = np.sum(windows == windows.max(axis=-1, keepdims=True), axis=-1) > 1
    assert tied.sum() >= 3


def _native_pitfalls():
    """Entries whose forward is a reference op with torch and jax equivalents."""
    import reference
    from oracles.verify.native import NATIVE_OPS

    return [
        (p, NATIVE_OPS[p.fn.__name__])
        for p in VALUE_PITFALLS
        if p.fn.__name__ in NATIVE_OPS and getattr(reference, p.fn.__name__) is p.fn
    ]


NATIVE_PITFALLS = _native_pitfalls()


def test_several_entries_can_be_checked_against_the_frameworks():
    assert len(NATIVE_PITFALLS) >= 8


@pytest.mark.torch
@pytest.mark.parametrize(("p", "native"), NATIVE_PITFALLS, ids=[p.name for p, _ in NATIVE_PITFALLS])
def test_torch_oracle_flags_the_wrong_vjp_at_the_wrong_input(p, native):
    inputs = p.make_inputs(np.random.default_rng(12))
    report = oracles.check_vjp(p.fn, p.wrong_vjp, inputs, against="torch", torch_fn=native.torch)
    assert report.ok is False, str(report)
    assert _failed_inputs(report) == [p.wrong_input], str(report)
    report = oracles.check_vjp(p.fn, p.correct_vjp, inputs, against="torch", torch_fn=native.torch)
    assert report.ok is True, str(report)


@pytest.mark.jax
@pytest.mark.parametrize(("p", "native"), NATIVE_PITFALLS, ids=[p.name for p, _ in NATIVE_PITFALLS])
def test_jax_oracle_flags_the_wrong_vjp_at_the_wrong_input(p, native):
    inputs = p.make_inputs(np.random.default_rng(13))
    report = oracles.check_vjp(p.fn, p.wrong_vjp, inputs, against="jax", jax_fn=native.jax)
    assert report.ok is False, str(report)
    assert _failed_inputs(report) == [p.wrong_input], str(report)
    report = oracles.check_vjp(p.fn, p.correct_vjp, inputs, against="jax", jax_fn=native.jax)
    assert report.ok is True, str(report)


def _shifted_sigmoid(x):
    # A published forward: 1 / (1 + exp(-x + 1e-9)).
    return 1.0 / (1.0 + np.exp(-x + 1e-9))


def _shifted_sigmoid_vjp(g, x):
    s = _shifted_sigmoid(x)
    return g * s * (1.0 - s)


def test_oracle_passes_a_shifted_sigmoid_with_its_own_derivative():
    # Not a pitfall: the backward is the exact derivative of the forward as
    # written (see the module notes); an oracle must not flag it.
    x = np.random.default_rng(5).uniform(-4.0, 4.0, size=(5, 4))
    report = oracles.check_vjp(_shifted_sigmoid, _shifted_sigmoid_vjp, (x,), seed=0)
    assert report.ok is True, str(report)
