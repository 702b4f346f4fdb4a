"""Hypothesis strategies for checking gradients: shapes, arrays, logits, targets.

Every function here returns a :class:`hypothesis.strategies.SearchStrategy`
to pass to ``@given``, for example ``@given(z=logits(shape=(4, 10)))``. The
module needs only NumPy and Hypothesis (never PyTorch or JAX), so another
project can use it on its own.

Conventions
-----------
* Arrays are float64 and always finite (no NaN, no infinity, no subnormal
  numbers: a value that would be subnormal is 0); integer class labels are
  int64. Shapes have at most 32 axes.
* A ``shape`` argument is a tuple of ints, a single int (a 1-D shape), a
  strategy that draws shapes (such as :func:`shapes`), or ``None`` for a
  sensible random default.
* A ``scale`` (or ``offset``) is a number, or a strategy that draws numbers,
  so one example can have entries of size 1e-3 and the next of size 500.
* Class scores, probabilities and labels index the **last** axis; every
  other axis is a batch axis.
* Bad arguments raise :class:`oracles.errors.InvalidArgument` (a
  ValueError) or :class:`oracles.errors.InvalidArgumentType` (a TypeError)
  when the strategy is built, not when it is drawn from.

Notes
-----
Hypothesis shrinks a failing example towards small shapes and values near 0
(and ``scale`` towards its first choice). Arrays drawn by Hypothesis often
contain repeated values and exact zeros: that is deliberate, those are the
cases where hand derivations break (ties in a max, the kink of relu at 0).
Filter them out in the test when the function under test has no derivative
there.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.strategies import SearchStrategy

from oracles.errors import InvalidArgument, InvalidArgumentType

#: What a ``shape`` argument accepts.
_ShapeLike = tuple[int, ...] | int | SearchStrategy[tuple[int, ...]]
#: What a ``scale`` or ``offset`` argument accepts.
_NumberLike = float | SearchStrategy[float]

__all__ = [
    "ARRAY_SCALES",
    "COTANGENT_SCALES",
    "LOGIT_SCALES",
    "affine_inputs",
    "arrays",
    "axes",
    "class_labels",
    "cotangents",
    "logits",
    "logits_and_targets",
    "probability_targets",
    "shapes",
]

#: Magnitudes :func:`arrays` draws from by default; the first is where Hypothesis shrinks to.
ARRAY_SCALES = (1.0, 0.1, 10.0, 1e-3, 100.0)
#: Magnitudes :func:`logits` draws from by default, up to saturating logits.
LOGIT_SCALES = (1.0, 10.0, 100.0, 500.0)
#: Magnitudes :func:`cotangents` draws from by default.
COTANGENT_SCALES = (1.0, 0.1, 10.0)

_MAX_DIMS = 32  # NumPy's own limit is 64; no gradient check needs more than a few.
#: The smallest normal float64: scales below it could only draw subnormal numbers or 0.
_TINY = float(np.finfo(np.float64).tiny)


# --------------------------------------------------------------------------- validation


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name, value, *, minimum=None, maximum=None):
    if not _is_int(value):
        raise InvalidArgumentType(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def _check_order(lo_name, lo, hi_name, hi):
    if lo > hi:
        raise InvalidArgument(f"{lo_name} must be <= {hi_name}, got {lo_name}={lo}, {hi_name}={hi}")


def _shape_strategy(name, shape, *, default, min_dims=0, max_dims=_MAX_DIMS):
    """``shape`` as a strategy of tuples; concrete shapes are checked now."""
    if shape is None:
        return default
    if isinstance(shape, SearchStrategy):
        return shape
    if _is_int(shape):
        shape = (shape,)
    if not isinstance(shape, tuple | list):
        raise InvalidArgumentType(
            f"{name} must be a tuple of ints, an int, a strategy of shapes or None, "
            f"got {type(shape).__name__} {shape!r}"
        )
    for i, side in enumerate(shape):
        _check_int(f"{name}[{i}]", side, minimum=0)
    if len(shape) > max_dims:
        raise InvalidArgument(f"{name} must have at most {max_dims} axes, got {len(shape)}")
    if len(shape) < min_dims:
        raise InvalidArgument(
            f"{name} must have at least {min_dims} axis (the class axis), got {tuple(shape)}"
        )
    if min_dims and shape[-1] < 1:
        raise InvalidArgument(
            f"{name} must have a class axis (the last) of length >= 1, got {tuple(shape)}"
        )
    return st.just(tuple(int(side) for side in shape))


def _number_strategy(name, value, *, default, positive):
    """``value`` as a strategy of finite floats; concrete numbers are checked now."""
    if value is None:
        return default
    if isinstance(value, SearchStrategy):
        return value
    if not _is_real(value):
        raise InvalidArgumentType(
            f"{name} must be a real number, a strategy of numbers or None, "
            f"got {type(value).__name__} {value!r}"
        )
    value = _as_float(value)
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise InvalidArgument(f"{name} must be > 0, got {value}")
    rule = _number_rule(value, positive=positive)
    if rule:
        raise InvalidArgument(f"{name} {rule}, got {value!r}")
    return st.just(value)


def _as_float(value):
    try:
        return float(value)
    except OverflowError:  # a Python int beyond the float64 range
        return math.inf if value > 0 else -math.inf


def _number_rule(value, *, positive):
    """The rule a finite scale (``positive``) or offset breaks, or ``None``."""
    if positive and value < _TINY:
        return (
            f"must be at least {_TINY!r} (the smallest normal float64): a smaller scale "
            "draws only subnormal numbers or 0"
        )
    if not positive and 0 < abs(value) < _TINY:
        return f"must be 0 or at least {_TINY!r} in magnitude (no subnormal numbers)"
    return None


def _draw_number(draw, name, strategy, *, positive):
    """Draw from a user's number strategy and check what came back."""
    value = draw(strategy)
    rule = "finite numbers > 0" if positive else "finite numbers"
    if not _is_real(value) or not math.isfinite(_as_float(value)) or (positive and value <= 0):
        raise InvalidArgument(f"the {name} strategy must draw {rule}, it drew {value!r}")
    broken = _number_rule(_as_float(value), positive=positive)
    if broken:
        raise InvalidArgument(f"the {name} strategy drew {value!r}: a {name} {broken}")
    return float(value)


def _draw_shape(draw, name, strategy, *, min_dims=0, max_dims=_MAX_DIMS):
    """Draw from a user's shape strategy and check what came back."""
    shape = draw(strategy)
    ok = isinstance(shape, tuple) and all(_is_int(s) and s >= 0 for s in shape)
    ok = ok and min_dims <= len(shape) <= max_dims
    if ok and min_dims:
        ok = shape[-1] >= 1
    if not ok:
        rule = f"tuples of at most {max_dims} non-negative ints"
        if min_dims:
            rule += f" with at least {min_dims} axis, the last of length >= 1"
        raise InvalidArgument(f"the {name} strategy must draw {rule}, it drew {shape!r}")
    return tuple(int(s) for s in shape)


# --------------------------------------------------------------------------- shapes, axes


def shapes(
    *, min_dims: int = 1, max_dims: int = 4, min_side: int = 1, max_side: int = 7
) -> SearchStrategy[tuple[int, ...]]:
    """Array shapes: ``min_dims`` to ``max_dims`` axes of ``min_side`` to ``max_side`` each.

    The default range (1 to 7 per side) covers the sizes where hand-written
    backward passes break: a batch of 1 (a wrong ``squeeze`` or sum over the
    wrong axis), odd sizes, sizes that differ from each other (a missing
    transpose only type-checks on square matrices), several leading axes.

    Parameters
    ----------
    min_dims, max_dims : int
        Number of axes, ``0 <= min_dims <= max_dims <= 32``.
    min_side, max_side : int
        Length of each axis, ``0 <= min_side <= max_side``.

    Returns
    -------
    SearchStrategy of tuple of int

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(shape=shapes(min_dims=2, max_dims=3, max_side=5))
    ... def test_shape(shape):
    ...     assert 2 <= len(shape) <= 3 and all(1 <= side <= 5 for side in shape)
    >>> test_shape()
    """
    min_dims = _check_int("min_dims", min_dims, minimum=0, maximum=_MAX_DIMS)
    max_dims = _check_int("max_dims", max_dims, minimum=0, maximum=_MAX_DIMS)
    min_side = _check_int("min_side", min_side, minimum=0)
    max_side = _check_int("max_side", max_side, minimum=0)
    _check_order("min_dims", min_dims, "max_dims", max_dims)
    _check_order("min_side", min_side, "max_side", max_side)
    return hnp.array_shapes(
        min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
    )


def axes(ndim: int) -> SearchStrategy[int]:
    """A valid axis of an ``ndim``-dimensional array, negative or non-negative.

    Draws from ``-ndim, ..., ndim - 1``, so a function that handles ``axis=1``
    but not the equivalent ``axis=-2`` (or the reverse) is caught.

    Parameters
    ----------
    ndim : int
        Number of axes, at least 1.

    Returns
    -------
    SearchStrategy of int

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(axis=axes(3))
    ... def test_axis(axis):
    ...     assert -3 <= axis <= 2
    >>> test_axis()
    """
    ndim = _check_int("ndim", ndim, minimum=1)
    return st.integers(min_value=-ndim, max_value=ndim - 1)


# --------------------------------------------------------------------------- float arrays


#: Unit values below this are drawn as 0 (see _scaled_arrays).
_UNIT_FLOOR = 2.0**-20
_UNIT = st.floats(
    min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False, allow_subnormal=False
)


def _check_element(value):
    """One value drawn by a user's ``elements`` strategy -> float, or a clear error."""
    if not _is_real(value):
        raise InvalidArgument(
            "the elements strategy must draw real numbers (int or float, not bool), it drew "
            f"{type(value).__name__} {value!r}"
        )
    out = _as_float(value)
    if not math.isfinite(out):
        raise InvalidArgument(f"the elements strategy must draw finite numbers, it drew {value!r}")
    return out


@st.composite
def _scaled_arrays(draw, shape, scale, offset, elements):
    shape = _draw_shape(draw, "shape", shape)
    if elements is not None:
        # Drawn one by one and checked here: hnp.arrays would fail inside Hypothesis, with
        # its own error, on a strategy of strings or objects.
        n = math.prod(shape)
        values = draw(st.lists(elements, min_size=n, max_size=n))
        return np.array([_check_element(v) for v in values], dtype=np.float64).reshape(shape)
    s = _draw_number(draw, "scale", scale, positive=True)
    c = _draw_number(draw, "offset", offset, positive=False)
    # np.asarray: arithmetic on a 0-d array gives a NumPy scalar, not an array.
    u = draw(hnp.arrays(np.float64, shape, elements=_UNIT))
    # Hypothesis favours extreme floats (1.2e-38, 2.2e-308): in a unit-scale array they span
    # dozens of orders of magnitude (W = [[1.2e-38]] leaves the gradient of x at 1e-38, which
    # no check can resolve). Below _UNIT_FLOOR a unit value is 0, where Hypothesis shrinks.
    u = np.where(np.abs(u) < _UNIT_FLOOR, 0.0, u)
    with np.errstate(over="ignore", under="ignore"):
        out = np.asarray(u * s + c)
    # A scale near the largest float could overflow: refuse it loudly.
    if not np.all(np.isfinite(out)):
        raise InvalidArgument(f"scale={s} and offset={c} overflow float64")
    # u * s can fall below the smallest normal number (u = 1e-300 at scale 1e-10): no
    # subnormals, as the module promises.
    return np.where(np.abs(out) < _TINY, 0.0, out)


def arrays(
    shape: _ShapeLike | None = None,
    *,
    scale: _NumberLike | None = None,
    elements: SearchStrategy[float] | None = None,
) -> SearchStrategy[np.ndarray]:
    """Finite float64 arrays of random shape and magnitude.

    Each entry is ``u * scale`` with ``u`` drawn from ``[-1, 1]`` (``|u| <
    2**-20`` drawn as 0), and ``scale`` drawn once per array, so a test
    sees arrays of size 1e-3 as well as 100 without any one array spanning
    ranges that make it ill-conditioned.

    Parameters
    ----------
    shape : tuple of int, int, SearchStrategy or None
        ``None`` draws from :func:`shapes` (1 to 4 axes of 1 to 7).
    scale : float, SearchStrategy of float or None
        Largest magnitude of the entries, ``> 0``. ``None`` draws from
        :data:`ARRAY_SCALES` ``(1, 0.1, 10, 1e-3, 100)``.
    elements : SearchStrategy of float, optional
        Draw entries from this strategy instead (then ``scale`` must be
        None). It must only draw finite numbers.

    Returns
    -------
    SearchStrategy of numpy.ndarray (float64)

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(x=arrays((2, 3), scale=10.0))
    ... def test_in_range(x):
    ...     assert x.shape == (2, 3) and x.dtype == np.float64
    ...     assert np.all(np.abs(x) <= 10.0)
    >>> test_in_range()
    """
    shape_s = _shape_strategy("shape", shape, default=shapes())
    if elements is not None:
        if scale is not None:
            raise InvalidArgument("pass either scale or elements, not both")
        if not isinstance(elements, SearchStrategy):
            raise InvalidArgumentType(
                f"elements must be a SearchStrategy, got {type(elements).__name__}"
            )
        return _scaled_arrays(shape_s, None, None, elements)
    scale_s = _number_strategy("scale", scale, default=st.sampled_from(ARRAY_SCALES), positive=True)
    return _scaled_arrays(shape_s, scale_s, st.just(0.0), None)


def cotangents(
    shape: _ShapeLike, *, scale: _NumberLike | None = None
) -> SearchStrategy[np.ndarray]:
    """Cotangents (upstream gradients) for an output of the given shape.

    The same as :func:`arrays` with moderate default magnitudes (1, 0.1 or
    10), and a shape that is required (it must match the output of the
    function under test) and may be ``()`` for a scalar output.

    Parameters
    ----------
    shape : tuple of int, int or SearchStrategy
        The shape of the function's output.
    scale : float, SearchStrategy of float or None
        ``None`` draws from :data:`COTANGENT_SCALES`.

    Returns
    -------
    SearchStrategy of numpy.ndarray (float64)

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(g=cotangents(()))
    ... def test_scalar(g):
    ...     assert g.shape == () and np.isfinite(g)
    >>> test_scalar()
    """
    if shape is None:
        raise InvalidArgument("shape is required: the shape of the output the cotangent is for")
    shape_s = _shape_strategy("shape", shape, default=None)
    scale_s = _number_strategy(
        "scale", scale, default=st.sampled_from(COTANGENT_SCALES), positive=True
    )
    return _scaled_arrays(shape_s, scale_s, st.just(0.0), None)


def _default_class_shapes():
    """Batch axes (0 to 2, sides 1 to 7) followed by a class axis of 2 to 7."""
    return st.tuples(shapes(min_dims=0, max_dims=2), st.integers(min_value=2, max_value=7)).map(
        lambda bc: bc[0] + (bc[1],)
    )


def logits(
    shape: _ShapeLike | None = None,
    *,
    scale: _NumberLike | None = None,
    offset: _NumberLike = 0.0,
) -> SearchStrategy[np.ndarray]:
    """Class scores (logits) of random magnitude, classes on the last axis.

    Each entry is ``u * scale + offset`` with ``u`` drawn from ``[-1, 1]``.
    Large scales saturate the softmax: at a spread of 500 within a row the
    largest probability rounds to exactly 1 in float64, above about 745 the
    smallest underflow to exactly 0. A large ``offset`` (softmax is invariant to it) catches code
    that exponentiates without subtracting the row maximum, and numerics
    whose step is relative to ``|x|``.

    Parameters
    ----------
    shape : tuple of int, int, SearchStrategy or None
        Must have at least one axis (the classes). ``None`` draws 0 to 2
        batch axes of 1 to 7 and a class axis of 2 to 7.
    scale : float, SearchStrategy of float or None
        Largest ``|u * scale|``, ``> 0``. ``None`` draws from
        :data:`LOGIT_SCALES` ``(1, 10, 100, 500)``.
    offset : float or SearchStrategy of float
        Added to every entry; default 0. Try ``1e6``, or
        ``st.sampled_from([0.0, -1e6, 1e6])``.

    Returns
    -------
    SearchStrategy of numpy.ndarray (float64)

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(z=logits((3, 5), scale=500.0, offset=1e6))
    ... def test_far_from_zero(z):
    ...     assert z.shape == (3, 5) and np.all(np.abs(z - 1e6) <= 500.0)
    >>> test_far_from_zero()
    """
    shape_s = _shape_strategy("shape", shape, default=_default_class_shapes(), min_dims=1)
    scale_s = _number_strategy("scale", scale, default=st.sampled_from(LOGIT_SCALES), positive=True)
    offset_s = _number_strategy("offset", offset, default=st.just(0.0), positive=False)
    return _scaled_arrays(_ensure_class_axis(shape_s), scale_s, offset_s, None)


def _ensure_class_axis(shape_strategy):
    """Wrap a shape strategy so that a drawn shape without axes is reported clearly."""

    @st.composite
    def checked(draw):
        return _draw_shape(draw, "shape", shape_strategy, min_dims=1)

    return checked()


# --------------------------------------------------------------------------- targets


def class_labels(n_classes: int, batch_shape: _ShapeLike) -> SearchStrategy[np.ndarray]:
    """Integer class labels in ``[0, n_classes)``, int64, of shape ``batch_shape``.

    Parameters
    ----------
    n_classes : int
        Number of classes, at least 1.
    batch_shape : tuple of int, int or SearchStrategy
        Shape of the labels: the logits' shape without the class axis.
        ``()`` gives a single label (a 0-d array).

    Returns
    -------
    SearchStrategy of numpy.ndarray (int64)

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(t=class_labels(10, (4,)))
    ... def test_labels(t):
    ...     assert t.shape == (4,) and t.dtype == np.int64
    ...     assert t.min() >= 0 and t.max() <= 9
    >>> test_labels()
    """
    n_classes = _check_int("n_classes", n_classes, minimum=1)
    if batch_shape is None:
        raise InvalidArgument(
            "batch_shape is required: the shape of the logits without the class axis"
        )
    shape_s = _shape_strategy("batch_shape", batch_shape, default=None)
    return _class_labels(n_classes, shape_s)


@st.composite
def _class_labels(draw, n_classes, shape_strategy):
    shape = _draw_shape(draw, "batch_shape", shape_strategy)
    elements = st.integers(min_value=0, max_value=n_classes - 1)
    return draw(hnp.arrays(np.int64, shape, elements=elements))


_WEIGHTS = st.floats(min_value=0.0, max_value=1.0, allow_subnormal=False)
# Row sums for unnormalized targets: clearly away from 1 on both sides, and 0.
_NOT_ONE = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.1, max_value=0.9),
    st.floats(min_value=1.1, max_value=3.0),
)


def _normalize_rows(w):
    """Rows of non-negative ``w`` scaled to sum to 1; an all-zero row becomes uniform."""
    total = w.sum(axis=-1, keepdims=True)
    uniform = np.full_like(w, 1.0 / w.shape[-1])
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), uniform)


@st.composite
def _probability_targets(draw, shape, normalized):
    shape = _draw_shape(draw, "shape", shape, min_dims=1)
    if normalized is None:
        normalized = draw(st.booleans())
    p = _normalize_rows(draw(hnp.arrays(np.float64, shape, elements=_WEIGHTS)))
    if normalized:
        return np.asarray(p)
    totals = draw(hnp.arrays(np.float64, shape[:-1] + (1,), elements=_NOT_ONE))
    return np.asarray(p * totals)


def probability_targets(
    shape: _ShapeLike | None = None, *, normalized: bool | None = True
) -> SearchStrategy[np.ndarray]:
    """Non-negative float64 probability targets, one row per sample on the last axis.

    Parameters
    ----------
    shape : tuple of int, int, SearchStrategy or None
        Shape of the targets (the logits' shape), at least one axis. ``None``
        uses the default shapes of :func:`logits`.
    normalized : bool or None
        ``True``: every row sums to 1 (to rounding). Rows range from one-hot
        to soft; a row Hypothesis draws as all zeros becomes uniform.
        ``False``: every row sums to 0, to a value in ``[0.1, 0.9]`` or to one
        in ``[1.1, 3]``, never to 1 (partial or weighted labels: the general
        cross-entropy gradient ``(sum y) a - y`` is needed, not ``a - y``).
        ``None``: either kind, chosen per example.

    Returns
    -------
    SearchStrategy of numpy.ndarray (float64)

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(y=probability_targets((2, 3)))
    ... def test_rows(y):
    ...     assert np.all(y >= 0) and np.allclose(y.sum(axis=-1), 1.0)
    >>> test_rows()
    """
    shape_s = _shape_strategy("shape", shape, default=_default_class_shapes(), min_dims=1)
    if normalized is not None and not isinstance(normalized, bool):
        raise InvalidArgumentType(
            f"normalized must be True, False or None, "
            f"got {type(normalized).__name__} {normalized!r}"
        )
    return _probability_targets(shape_s, normalized)


@st.composite
def _logits_and_targets(draw, shape, scale, offset, targets, normalized):
    z = draw(logits(shape, scale=scale, offset=offset))
    kind = targets if targets != "any" else draw(st.sampled_from(("labels", "probabilities")))
    if kind == "labels":
        return z, draw(class_labels(z.shape[-1], z.shape[:-1]))
    return z, draw(probability_targets(z.shape, normalized=normalized))


def logits_and_targets(
    shape: _ShapeLike | None = None,
    *,
    scale: _NumberLike | None = None,
    offset: _NumberLike = 0.0,
    targets: str = "any",
    normalized: bool | None = None,
) -> SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Pairs ``(logits, targets)`` with matching shapes, for a cross-entropy.

    Parameters
    ----------
    shape, scale, offset
        As for :func:`logits`.
    targets : {"any", "labels", "probabilities"}
        ``"labels"``: int64 :func:`class_labels` of shape ``logits.shape[:-1]``;
        ``"probabilities"``: :func:`probability_targets` shaped like the
        logits; ``"any"``: either, chosen per example.
    normalized : bool or None
        Passed to :func:`probability_targets`.

    Returns
    -------
    SearchStrategy of tuple (numpy.ndarray, numpy.ndarray)

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(pair=logits_and_targets((4, 3), targets="labels"))
    ... def test_pair(pair):
    ...     z, t = pair
    ...     assert z.shape == (4, 3) and t.shape == (4,)
    >>> test_pair()
    """
    if targets not in ("any", "labels", "probabilities"):
        raise InvalidArgument(
            f"targets must be one of ('any', 'labels', 'probabilities'), got {targets!r}"
        )
    # Build (and so validate) the parts once now, to fail at construction.
    logits(shape, scale=scale, offset=offset)
    probability_targets(None, normalized=normalized)
    return _logits_and_targets(shape, scale, offset, targets, normalized)


# --------------------------------------------------------------------------- affine


@st.composite
def _affine_inputs(draw, batch_shape, n_in, n_out, scale):
    batch = _draw_shape(draw, "batch_shape", batch_shape, max_dims=_MAX_DIMS - 1)
    n_in = _draw_size(draw, "n_in", n_in)
    n_out = _draw_size(draw, "n_out", n_out)
    x = draw(arrays(batch + (n_in,), scale=scale))
    W = draw(arrays((n_in, n_out), scale=scale))
    b = draw(arrays((n_out,), scale=scale))
    return x, W, b


def _draw_size(draw, name, strategy):
    value = draw(strategy)
    if not _is_int(value) or value < 1:
        raise InvalidArgument(f"the {name} strategy must draw ints >= 1, it drew {value!r}")
    return int(value)


def _size_strategy(name, value):
    if value is None:
        return st.integers(min_value=1, max_value=7)
    if isinstance(value, SearchStrategy):
        return value
    return st.just(_check_int(name, value, minimum=1))


def affine_inputs(
    *,
    batch_shape: _ShapeLike | None = None,
    n_in: int | SearchStrategy[int] | None = None,
    n_out: int | SearchStrategy[int] | None = None,
    scale: _NumberLike | None = None,
) -> SearchStrategy[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Triples ``(x, W, b)`` for ``x @ W + b`` with consistent shapes.

    ``x`` has shape ``batch_shape + (n_in,)``, ``W`` ``(n_in, n_out)`` and
    ``b`` ``(n_out,)``. ``n_in`` and ``n_out`` are drawn independently, so
    most examples have a non-square ``W`` (where a missing transpose fails
    loudly) and some a square one (where it is silently wrong).

    Parameters
    ----------
    batch_shape : tuple of int, int, SearchStrategy or None
        Leading axes of ``x``. ``None`` draws 0 to 2 axes of 1 to 7 (``()``
        is a single unbatched row).
    n_in, n_out : int, SearchStrategy of int or None
        ``None`` draws from 1 to 7.
    scale : float, SearchStrategy of float or None
        As for :func:`arrays`; drawn separately for ``x``, ``W`` and ``b``.

    Returns
    -------
    SearchStrategy of tuple (x, W, b) of float64 arrays

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20)
    ... @given(xwb=affine_inputs(n_in=3))
    ... def test_shapes(xwb):
    ...     x, W, b = xwb
    ...     assert x.shape[-1] == W.shape[0] == 3 and W.shape[1] == b.shape[0]
    >>> test_shapes()
    """
    batch_s = _shape_strategy(
        "batch_shape", batch_shape, default=shapes(min_dims=0, max_dims=2), max_dims=_MAX_DIMS - 1
    )
    n_in_s = _size_strategy("n_in", n_in)
    n_out_s = _size_strategy("n_out", n_out)
    arrays((1,), scale=scale)  # validate scale now
    return _affine_inputs(batch_s, n_in_s, n_out_s, scale)
