"""mode="fast" gives the per-element verdict: structured errors, tolerances, correct models.

Constructions of our own, at several sizes, scales and seeds:

* structured errors that cancel along +-1 directions (two swapped entries,
  the sign of a block flipped, a row permuted), at 6,000 / 20,000 /
  100,000 elements: every one caught, and the elements named;
* ``rtol``/``atol`` apply per element, never summed over a projection: one
  element off by more than its own tolerance fails whatever the size;
  within it, it passes, after being compared individually;
* a gradient wrong everywhere ends in a constant number of evaluations and
  says it is a wrong formula;
* correct derivations never fail: MLPs with tanh, sigmoid and relu, softmax
  at logits of scale 100, inputs offset by 1e6.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import oracles
from oracles.numerics import fast
from oracles.numerics.objective import ScalarObjective
from reference import mlp, mnist


def _tanh_layer(n_rows, n_cols, seed, k=8):
    """``fn(A) = tanh(A @ W)`` on ``A`` of ``n_rows x n_cols``, a random cotangent, its VJP."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n_rows, n_cols))
    W = rng.standard_normal((n_cols, k)) / np.sqrt(n_cols)
    C = rng.standard_normal((n_rows, k))

    def fn(A):
        return np.tanh(A @ W)

    def vjp(g, A):
        return (g * (1 - np.tanh(A @ W) ** 2)) @ W.T

    return A, C, fn, vjp, rng


def _edited(vjp, edit):
    def wrong(g, A):
        d = vjp(g, A).copy()
        edit(d)
        return d

    return wrong


def _failing(report, shape):
    """Flat indices of every element of the (single) input that failed, listed or not."""
    check = report.inputs[0].checks["numeric"]
    ratio = np.asarray(check.error_ratio).reshape(-1)
    with np.errstate(invalid="ignore"):
        failed = np.flatnonzero(ratio > 1.0)
    listed = [int(np.ravel_multi_index(e.index, shape)) for e in check.worst if not e.passed]
    assert set(listed) <= set(failed.tolist()) and failed.size == check.n_failed
    return sorted(int(j) for j in failed)


def _check(fn, vjp, A, C, seed, **kwargs):
    return oracles.check_vjp(fn, vjp, (A,), direction=C, mode="fast", seed=seed, **kwargs)


# --- structured errors ---------------------------------------------------------------------------

# (rows, columns, seeds): 12 pairs at 6,000 elements, 6 at 20,000, 3 at 100,000.
SWAPS = [(60, 100, range(12)), (200, 100, range(6)), (1000, 100, range(3))]


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "seed"), [(r, c, s) for r, c, seeds in SWAPS for s in seeds]
)
def test_two_swapped_entries_are_caught_and_named(n_rows, n_cols, seed):
    """+e at i, -e at j: invisible along every +-1 direction with u_i = u_j, half of them."""
    A, C, fn, vjp, rng = _tanh_layer(n_rows, n_cols, seed)
    g = vjp(C, A).reshape(-1)
    i, j = (int(k) for k in rng.choice(g.size, size=2, replace=False))
    # Typical entries, not easy large ones: the error is the difference of two of them.
    assert abs(g[i] - g[j]) < 10 * np.median(np.abs(g))

    def swap(d):
        f = d.reshape(-1)
        f[[i, j]] = f[[j, i]]

    report = _check(fn, _edited(vjp, swap), A, C, seed)
    assert not report.ok
    assert _failing(report, A.shape) == sorted([i, j]), str(report)


@pytest.mark.parametrize(("n_rows", "seed"), [(60, 0), (60, 1), (200, 2), (1000, 3)])
def test_a_block_with_its_sign_flipped_is_caught_and_named(n_rows, seed):
    A, C, fn, vjp, rng = _tanh_layer(n_rows, 100, seed)
    r0, c0 = int(rng.integers(0, n_rows - 3)), int(rng.integers(0, 97))

    def flip(d):
        d[r0 : r0 + 3, c0 : c0 + 3] *= -1

    report = _check(fn, _edited(vjp, flip), A, C, seed)
    block = sorted(
        int(np.ravel_multi_index((r, c), A.shape))
        for r in range(r0, r0 + 3)
        for c in range(c0, c0 + 3)
    )
    assert _failing(report, A.shape) == block, str(report)


@pytest.mark.parametrize(("n_rows", "seed"), [(300, 0), (300, 1), (1000, 2), (5000, 3)])
def test_a_permuted_row_is_caught_and_every_moved_entry_named(n_rows, seed):
    """6,000 / 20,000 / 100,000 elements; a row of 20 entries in a random order."""
    A, C, fn, vjp, rng = _tanh_layer(n_rows, 20, seed)
    row = int(rng.integers(0, n_rows))
    perm = rng.permutation(20)
    while np.all(perm == np.arange(20)):
        perm = rng.permutation(20)

    def permute(d):
        d[row] = d[row, perm]

    report = _check(fn, _edited(vjp, permute), A, C, seed)
    moved = sorted(
        int(np.ravel_multi_index((row, c), A.shape)) for c in np.flatnonzero(perm != np.arange(20))
    )
    assert _failing(report, A.shape) == moved, str(report)


def test_gaussian_directions_see_a_swap_that_rademacher_signs_miss():
    """The construction behind the swap tests: along +-1 signs with u_i = u_j the residual of a
    swap is exactly 0; along a Gaussian direction it is (u_i - u_j) e, never exactly 0."""
    rng = np.random.default_rng(0)
    n, e = 6000, 1e-3
    d = np.zeros(n)
    d[17], d[4021] = e, -e
    signs = rng.integers(0, 2, size=(400, n)) * 2.0 - 1.0
    assert np.mean(signs @ d == 0) > 0.4
    gauss = np.stack([fast._gaussian(rng, n) for _ in range(400)])
    assert np.all(gauss @ d != 0)


# --- tolerances are per element ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_rows", "edit", "tolerance"),
    [
        (60, ("rel", 1e-2), {"rtol": 1e-6}),  # 1% off, passed before as 6000 * 1e-6 |a|
        (1000, ("rel", 1e-2), {"rtol": 1e-6}),
        (60, ("add", 3e-5), {"atol": 1e-8}),  # passed before as 6000 * 1e-8
        (1000, ("add", 3e-5), {"atol": 1e-8}),
        (60, ("rel", 3e-3), {"rtol": 1e-3}),  # 3x its own tolerance
        (200, ("add", 3e-7), {"atol": 1e-7, "rtol": 1e-9}),
    ],
)
def test_one_element_beyond_its_own_tolerance_fails(n_rows, edit, tolerance):
    A, C, fn, vjp, rng = _tanh_layer(n_rows, 100, 5)
    g = vjp(C, A).reshape(-1)
    j = int(np.argsort(np.abs(g))[g.size // 2])
    how, size = edit

    def off(d):
        f = d.reshape(-1)
        f[j] = f[j] * (1 + size) if how == "rel" else f[j] + size

    report = _check(fn, _edited(vjp, off), A, C, 0, **tolerance)
    assert _failing(report, A.shape) == [j], str(report)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_element_within_its_tolerance_is_compared_individually_and_passes(seed):
    """Visible to the projections (far above the numerics' error) but within rtol: it is named
    by the search and judged on its own, never waved through by a summed allowance."""
    A, C, fn, vjp, rng = _tanh_layer(60, 100, seed)
    g = vjp(C, A).reshape(-1)
    j = int(np.argsort(np.abs(g))[g.size // 2])

    def off(d):
        d.reshape(-1)[j] *= 1 + 5e-4

    report = _check(fn, _edited(vjp, off), A, C, seed, rtol=1e-3)
    assert report.ok, str(report)
    compared = [int(np.ravel_multi_index(e.index, A.shape)) for e in report.inputs[0].worst]
    assert j in compared, str(report)


def test_tolerable_errors_everywhere_pass_after_an_every_element_check():
    """Every element off by 1e-8 relative, rtol 1e-6: all within tolerance, all visible."""
    A, C, fn, vjp, _ = _tanh_layer(30, 100, 3)

    report = _check(fn, lambda g, A: vjp(g, A) * (1 + 1e-8), A, C, 0, rtol=1e-6)
    assert report.ok, str(report)
    check = report.inputs[0].checks["numeric"]
    assert check.n_checked == A.size
    assert any("checked exhaustively" in n for n in report.notes), report.notes


# --- errors everywhere ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n_rows", "n_cols"), [(100, 100), (1000, 100)])
def test_a_wrong_formula_ends_early_and_says_so(n_rows, n_cols):
    """1% off in every element, 1e4 and 1e5 elements: a sample decides, at a constant cost."""
    A, C, fn, vjp, _ = _tanh_layer(n_rows, n_cols, 4)
    report = _check(fn, lambda g, A: vjp(g, A) * 1.01, A, C, 0)
    assert not report.ok
    assert any("a wrong formula, not a typo" in n for n in report.notes), report.notes
    evaluations = int(report.context["fn evaluations"])
    assert evaluations < 4000 <= A.size * 3 / 2, evaluations
    check = report.inputs[0].checks["numeric"]
    assert check.n_failed == check.n_checked  # every element compared fails ...
    assert check.n_checked < A.size  # ... and the others are not counted as checked


def test_a_wrong_formula_in_a_small_input_is_checked_exhaustively():
    rng = np.random.default_rng(2)
    x, W, b = (
        rng.standard_normal((16, 60)),
        rng.standard_normal((60, 100)),
        rng.standard_normal(100),
    )

    def fn(x, W, b):
        return np.tanh(x @ W + b)

    def vjp(g, x, W, b):
        d = g * (1 - np.tanh(x @ W + b) ** 2)
        return d @ W.T, x.T @ d, d.sum(axis=0) * 0.5  # db halved: wrong everywhere in b

    report = oracles.check_vjp(fn, vjp, (x, W, b), mode="fast", names=("x", "W", "b"))
    assert report.failed_inputs == ["b"], str(report)
    assert report.input("b").checks["numeric"].n_failed == 100


# --- correct derivations never fail --------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist.load_mnist()
    return mnist.as_float_features(images[:48]), labels[:48]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize(("hidden", "n", "seed"), [(8, 16, 0), (24, 48, 1), (40, 32, 2)])
def test_correct_mlps_pass(digits, activation, hidden, n, seed):
    X, y = digits[0][:n], digits[1][:n]
    params = mlp.init_params((784, hidden, 10), seed=seed)
    fn = functools.partial(mlp.mlp_loss, X, y, activation=activation)

    def vjp(g, *p):
        return mlp.mlp_loss_vjp(g, X, y, *p, activation=activation)

    report = oracles.check_vjp(fn, vjp, params, direction=1.0, mode="fast", seed=seed)
    assert not report.failed_inputs and report.status != "failed", str(report)
    if activation != "relu":  # kinks near x along every direction can leave relu unresolved
        assert report.ok, str(report)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_vjp(g, z):
    a = _softmax(z)
    return a * (g - (g * a).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize(
    ("shape", "scale", "offset", "seed"),
    [
        ((60, 100), 100.0, 0.0, 0),  # saturated: most outputs are exactly 0 or 1
        ((200, 30), 100.0, 0.0, 1),
        ((60, 100), 1.0, 1e6, 2),  # every logit rounded at 1e6
        ((200, 30), 3.0, 1e6, 3),
        ((60, 100), 1.0, 0.0, 4),
    ],
)
def test_correct_softmax_at_large_scales_and_offsets_passes(shape, scale, offset, seed):
    rng = np.random.default_rng(seed)
    z = offset + scale * rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    report = oracles.check_vjp(_softmax, _softmax_vjp, (z,), direction=g, mode="fast", seed=seed)
    assert report.ok, str(report)


@pytest.mark.parametrize("seed", range(4))
def test_correct_tanh_layers_pass_at_every_size(seed):
    for n_rows in (60, 200, 1000):
        A, C, fn, vjp, _ = _tanh_layer(n_rows, 100, 10 + seed)
        report = _check(fn, vjp, A, C, seed)
        assert report.ok, str(report)


# --- the numerics it rests on --------------------------------------------------------------------


def test_the_measured_noise_and_the_error_are_near_what_the_function_shows():
    """The error estimate of a projection is a few standard deviations of the noise actually
    seen along fresh directions: not 100x above it (sensitivity), nor below it (false alarms)."""
    A, C, fn, vjp, rng = _tanh_layer(200, 100, 8)
    objective = ScalarObjective(fn, (A,), C)
    space = fast._Space(objective, [vjp(C, A)])
    prober = fast._Prober(space)
    everything = np.arange(space.n)
    prober.measure(everything, fast._gaussian(rng, space.n))
    values, errors = [], []
    for _ in range(12):
        m = prober.measure(everything, fast._gaussian(rng, space.n))
        values.append(m.value)
        errors.append(m.error)
    spread = float(np.std(values))
    assert np.all(np.abs(values) <= np.array(errors))
    assert np.median(errors) < 40 * spread


def test_two_elements_each_off_by_1e6_are_both_named():
    A, C, fn, vjp, rng = _tanh_layer(1000, 100, 6)
    g = vjp(C, A).reshape(-1)
    order = np.argsort(np.abs(g))
    i, j = int(order[g.size // 2]), int(order[g.size // 2 + 1000])

    def off(d):
        f = d.reshape(-1)
        f[i] *= 1 + 1e-6
        f[j] *= 1 - 1e-6

    report = _check(fn, _edited(vjp, off), A, C, 1)
    assert _failing(report, A.shape) == sorted([i, j]), str(report)
