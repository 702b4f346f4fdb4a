"""Every strategy of :mod:`oracles.strategies` draws what it promises.

Two kinds of test: properties that hold for every drawn example (``@given``),
and reachability (``hypothesis.find``): the cases a strategy exists to cover
(a batch of 1, saturating logits, rows that do not sum to 1, negative axes)
are actually drawn.
"""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from oracles import strategies as S
from oracles.errors import InvalidArgument, InvalidArgumentType

FIND = settings(max_examples=2000, database=None, suppress_health_check=list(HealthCheck))


def _finite_float64(x):
    return isinstance(x, np.ndarray) and x.dtype == np.float64 and bool(np.all(np.isfinite(x)))


# --------------------------------------------------------------------------- shapes, axes


@given(st.data())
def test_shapes_respect_their_bounds(data):
    lo_d = data.draw(st.integers(0, 3))
    hi_d = data.draw(st.integers(lo_d, 5))
    lo_s = data.draw(st.integers(0, 3))
    hi_s = data.draw(st.integers(lo_s, 6))
    shape = data.draw(S.shapes(min_dims=lo_d, max_dims=hi_d, min_side=lo_s, max_side=hi_s))
    assert isinstance(shape, tuple)
    assert lo_d <= len(shape) <= hi_d
    assert all(isinstance(side, int) and lo_s <= side <= hi_s for side in shape)


@given(S.shapes())
def test_default_shapes(shape):
    assert 1 <= len(shape) <= 4
    assert all(1 <= side <= 7 for side in shape)


@pytest.mark.parametrize(
    "condition",
    [
        lambda s: s[0] == 1 and len(s) >= 2,  # a batch of one
        lambda s: s[0] > 1 and s[0] % 2 == 1,  # an odd batch
        lambda s: len(s) == 4,  # several leading axes
        lambda s: len(s) >= 2 and s[-1] != s[-2],  # non-square
    ],
    ids=["batch-1", "odd-batch", "four-axes", "non-square"],
)
def test_shapes_reach_the_cases_that_break_derivations(condition):
    find(S.shapes(), condition, settings=FIND)


@given(st.integers(1, 6).flatmap(lambda n: st.tuples(st.just(n), S.axes(n))))
def test_axes_are_valid(ndim_axis):
    ndim, axis = ndim_axis
    assert isinstance(axis, int)
    assert -ndim <= axis < ndim
    np.zeros((2,) * ndim).sum(axis=axis)  # NumPy accepts it


def test_axes_reach_negative_and_non_negative():
    assert find(S.axes(3), lambda a: a < 0, settings=FIND) < 0
    assert find(S.axes(3), lambda a: a > 0, settings=FIND) > 0
    assert find(S.axes(3), lambda a: a == -3, settings=FIND) == -3


# --------------------------------------------------------------------------- arrays


@given(S.arrays())
def test_default_arrays_are_finite_float64(x):
    assert _finite_float64(x)
    assert 1 <= x.ndim <= 4
    assert np.max(np.abs(x)) <= max(S.ARRAY_SCALES)


@given(st.data(), S.shapes(min_dims=0), st.floats(1e-6, 1e6))
def test_arrays_have_the_requested_shape_and_scale(data, shape, scale):
    x = data.draw(S.arrays(shape, scale=scale))
    assert _finite_float64(x)
    assert x.shape == shape
    assert np.all(np.abs(x) <= scale)


@given(S.arrays(3))
def test_int_shape_means_one_axis(x):
    assert x.shape == (3,)


@given(S.arrays((2, 2), elements=st.sampled_from([-2.5, 4.0])))
def test_arrays_elements_are_used_as_given(x):
    assert _finite_float64(x)
    assert set(np.unique(x)) <= {-2.5, 4.0}


@given(S.arrays((5,), scale=st.sampled_from([1e-3, 1e3])))
def test_arrays_scale_strategy(x):
    assert np.all(np.abs(x) <= 1e3)


@pytest.mark.parametrize(
    "condition",
    [
        lambda x: np.max(np.abs(x)) > 50.0,
        lambda x: 0 < np.max(np.abs(x)) < 1e-2,
        lambda x: x.size > 1 and len(np.unique(x)) == x.size,
    ],
    ids=["large", "small", "all-distinct"],
)
def test_arrays_reach_several_magnitudes(condition):
    find(S.arrays(), condition, settings=FIND)


@given(S.shapes(min_dims=0).flatmap(lambda s: st.tuples(st.just(s), S.cotangents(s))))
def test_cotangents_match_the_output_shape(shape_g):
    shape, g = shape_g
    assert _finite_float64(g)  # an ndarray even for shape ()
    assert g.shape == shape
    assert np.all(np.abs(g) <= max(S.COTANGENT_SCALES))


# --------------------------------------------------------------------------- logits, targets


@given(S.logits())
def test_default_logits(z):
    assert _finite_float64(z)
    assert 1 <= z.ndim <= 3
    assert 2 <= z.shape[-1] <= 7
    assert np.max(np.abs(z)) <= max(S.LOGIT_SCALES)


@given(S.logits((2, 3), scale=st.floats(1.0, 500.0), offset=st.sampled_from([-1e6, 0.0, 1e6])))
def test_logits_with_offset_stay_within_scale_of_it(z):
    assert _finite_float64(z)
    assert z.shape == (2, 3)
    center = np.round(z.mean() / 1e6) * 1e6
    assert np.all(np.abs(z - center) <= 500.0)


def test_logits_reach_saturating_magnitudes():
    z = find(S.logits(), lambda z: np.ptp(z, axis=-1).max() > 750.0, settings=FIND)
    # Saturated: some softmax probability underflows to exactly 0 in float64.
    assert np.any(np.exp(z - z.max(axis=-1, keepdims=True)) == 0.0)


@given(st.data(), st.integers(1, 12), S.shapes(min_dims=0, max_dims=3))
def test_class_labels_lie_in_range(data, n_classes, batch_shape):
    t = data.draw(S.class_labels(n_classes, batch_shape))
    assert isinstance(t, np.ndarray) and t.dtype == np.int64
    assert t.shape == batch_shape
    assert np.all((t >= 0) & (t < n_classes))


def test_class_labels_reach_every_class():
    find(S.class_labels(3, (3,)), lambda t: sorted(t.tolist()) == [0, 1, 2], settings=FIND)


@given(S.probability_targets(S.shapes(min_dims=1), normalized=True))
def test_normalized_targets_sum_to_one(y):
    assert _finite_float64(y)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


@given(S.probability_targets(normalized=False))
def test_unnormalized_targets_never_sum_to_one(y):
    assert _finite_float64(y)
    assert np.all(y >= 0)
    assert np.all(np.abs(y.sum(axis=-1) - 1.0) >= 0.1 - 1e-12)


def test_normalized_none_gives_both_kinds():
    s = S.probability_targets((2, 3), normalized=None)
    find(s, lambda y: np.allclose(y.sum(axis=-1), 1.0), settings=FIND)
    find(s, lambda y: not np.allclose(y.sum(axis=-1), 1.0), settings=FIND)


@pytest.mark.parametrize(
    "normalized, condition",
    [
        (True, lambda y: np.any(np.isclose(y.max(axis=-1), 1.0))),  # a one-hot row
        (True, lambda y: np.all(y > 0.05)),  # soft rows
        (False, lambda y: np.any(y.sum(axis=-1) > 1.5)),
        (False, lambda y: np.any((y.sum(axis=-1) > 0) & (y.sum(axis=-1) < 0.9))),
    ],
    ids=["one-hot", "soft", "sum-above-1", "sum-below-1"],
)
def test_probability_targets_reach(normalized, condition):
    find(S.probability_targets((2, 4), normalized=normalized), condition, settings=FIND)


@given(S.logits_and_targets())
def test_logits_and_targets_have_matching_shapes(pair):
    z, t = pair
    assert _finite_float64(z)
    if t.dtype == np.int64:
        assert t.shape == z.shape[:-1]
        assert np.all((t >= 0) & (t < z.shape[-1]))
    else:
        assert _finite_float64(t) and t.shape == z.shape


@given(S.logits_and_targets((3, 4), targets="probabilities", normalized=True))
def test_logits_and_probability_targets(pair):
    z, t = pair
    assert t.shape == z.shape == (3, 4)
    np.testing.assert_allclose(t.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- affine


@given(S.affine_inputs())
def test_affine_inputs_are_consistent(xwb):
    x, W, b = xwb
    assert all(_finite_float64(a) for a in (x, W, b))
    assert 1 <= x.ndim <= 3
    assert W.ndim == 2 and b.ndim == 1
    assert x.shape[-1] == W.shape[0]
    assert W.shape[1] == b.shape[0]
    assert (x @ W + b).shape == x.shape[:-1] + (W.shape[1],)


@given(S.affine_inputs(batch_shape=(1,), n_in=st.just(2), n_out=5, scale=3.0))
def test_affine_inputs_fixed_sizes(xwb):
    x, W, b = xwb
    assert x.shape == (1, 2) and W.shape == (2, 5) and b.shape == (5,)
    assert max(np.max(np.abs(a)) for a in xwb) <= 3.0


@pytest.mark.parametrize(
    "condition",
    [
        lambda xwb: xwb[1].shape[0] == xwb[1].shape[1],
        lambda xwb: xwb[1].shape[0] != xwb[1].shape[1],
    ],
    ids=["square-W", "non-square-W"],
)
def test_affine_inputs_reach_square_and_non_square(condition):
    find(S.affine_inputs(), condition, settings=FIND)


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: S.shapes(min_dims=-1), InvalidArgument, "min_dims must be >= 0"),
        (lambda: S.shapes(min_dims=3, max_dims=2), InvalidArgument, "min_dims must be <= max_dims"),
        (lambda: S.shapes(min_side=4, max_side=2), InvalidArgument, "min_side must be <= max_side"),
        (lambda: S.shapes(max_side=2.5), InvalidArgumentType, "max_side must be an int"),
        (lambda: S.shapes(max_dims=True), InvalidArgumentType, "max_dims must be an int"),
        (lambda: S.axes(0), InvalidArgument, "ndim must be >= 1"),
        (lambda: S.arrays((2, -1)), InvalidArgument, r"shape\[1\] must be >= 0"),
        (lambda: S.arrays("2x3"), InvalidArgumentType, "shape must be a tuple"),
        (lambda: S.arrays(scale=0.0), InvalidArgument, "scale must be > 0"),
        (lambda: S.arrays(scale=float("inf")), InvalidArgument, "scale must be finite"),
        (lambda: S.arrays(scale="big"), InvalidArgumentType, "scale must be a real number"),
        (
            lambda: S.arrays(scale=1.0, elements=st.just(1.0)),
            InvalidArgument,
            "either scale or elements",
        ),
        (lambda: S.arrays(elements=[1.0]), InvalidArgumentType, "elements must be a Search"),
        (lambda: S.cotangents(None), InvalidArgument, "shape is required"),
        (lambda: S.logits(()), InvalidArgument, "at least 1 axis"),
        (lambda: S.logits((3, 0)), InvalidArgument, "class axis"),
        (lambda: S.logits(offset=float("nan")), InvalidArgument, "offset must be finite"),
        (lambda: S.class_labels(0, (2,)), InvalidArgument, "n_classes must be >= 1"),
        (lambda: S.class_labels(3, None), InvalidArgument, "batch_shape is required"),
        (lambda: S.probability_targets((2, 3), normalized=1), InvalidArgumentType, "normalized"),
        (lambda: S.logits_and_targets(targets="onehot"), InvalidArgument, "targets must be one"),
        (lambda: S.affine_inputs(n_in=0), InvalidArgument, "n_in must be >= 1"),
        (lambda: S.affine_inputs(scale=-1.0), InvalidArgument, "scale must be > 0"),
    ],
)
def test_argument_validation(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    "strategy, match",
    [
        (S.arrays(st.just([2, 3])), "shape strategy must draw tuples"),
        (S.logits(st.just(())), "at least 1 axis"),
        (S.arrays((2,), scale=st.just(-1.0)), "scale strategy must draw finite numbers > 0"),
        (S.logits((2,), offset=st.just(np.inf)), "offset strategy must draw finite numbers"),
        (S.affine_inputs(n_out=st.just(0)), "n_out strategy must draw ints >= 1"),
        (S.logits((4,), scale=1.7e308, offset=1.7e308), "overflow"),
    ],
)
def test_bad_draws_from_user_strategies_are_reported(strategy, match):
    @settings(max_examples=200, database=None)
    @given(strategy)
    def draw_one(_):
        pass

    with pytest.raises(InvalidArgument, match=match):
        draw_one()


def test_strategies_are_search_strategies():
    built = [
        S.shapes(),
        S.axes(2),
        S.arrays(),
        S.cotangents((2,)),
        S.logits(),
        S.class_labels(3, (2,)),
        S.probability_targets(),
        S.logits_and_targets(),
        S.affine_inputs(),
    ]
    assert all(isinstance(s, SearchStrategy) for s in built)
    public_functions = sorted(
        name
        for name in dir(S)
        if not name.startswith("_")
        and callable(getattr(S, name))
        and getattr(getattr(S, name), "__module__", None) == S.__name__
    )
    assert sorted(S.__all__) == sorted(
        public_functions + ["ARRAY_SCALES", "COTANGENT_SCALES", "LOGIT_SCALES"]
    )


def test_importing_strategies_needs_neither_torch_nor_jax():
    code = (
        "import sys, oracles.strategies; "
        "bad = [m for m in ('torch', 'jax') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
