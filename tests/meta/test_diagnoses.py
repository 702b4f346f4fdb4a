"""Diagnoses: what kind of mistake a failed check is, and which catalogued mistake it repeats.

Every entry of ``reference.pitfalls.CATALOG`` (the test iterates over the
catalog, so new entries are covered as they are added) must get its declared
kind and name itself when the catalog is passed in, and the black-box
signatures alone must never give it another kind. Then planted mistakes of
this file's own, at several shapes and seeds, for every kind; a passing (or
inconclusive) check has no diagnosis.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import reference as R
from oracles import (
    Diagnosis,
    InvalidArgumentType,
    UserFunctionError,
    check_hvp,
    check_jvp,
    check_layer,
    check_vjp,
)
from oracles.diagnose import KINDS
from reference.pitfalls import CATALOG

#: Kinds the library finds by itself; the others only a catalog can declare.
BLACK_BOX = set(KINDS) - {"formula"}
SEEDS = (11, 12, 13)


def _primary(report):
    assert report.diagnoses, str(report)
    return report.diagnoses[0]


# --- the catalog --------------------------------------------------------------------------------


def test_every_entry_declares_a_kind():
    for p in CATALOG:
        assert isinstance(p.kind, str) and p.kind, p.name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", CATALOG, ids=[p.name for p in CATALOG])
def test_every_catalog_entry_gets_its_kind_and_names_itself(p, seed):
    inputs = p.make_inputs(np.random.default_rng(seed))
    try:
        # The cotangent's seed differs from the inputs': a cotangent equal to an
        # input can hide a mistake (G = X makes X^T G symmetric).
        report = check_vjp(p.fn, p.wrong_vjp, inputs, seed=seed + 100, pitfalls=CATALOG)
    except UserFunctionError as exc:
        # A gradient of the wrong shape is refused before anything is compared.
        assert p.kind == "shape" and p.input_names[0] in str(exc)
        return
    assert report.status == "failed", str(report)
    d = _primary(report)
    assert (d.kind, d.pitfall) == (p.kind, p.name), str(report)
    expected = p.input_names[p.wrong_input] if p.wrong_input is not None else "cotangent"
    assert d.input == expected
    assert sum(x.pitfall == p.name for x in report.diagnoses) == 1


def _black_box(p, seed=11):
    inputs = p.make_inputs(np.random.default_rng(seed))
    try:
        return check_vjp(p.fn, p.wrong_vjp, inputs, seed=seed + 100)
    except UserFunctionError:
        assert p.kind == "shape"
        return None


@pytest.mark.parametrize("p", CATALOG, ids=[p.name for p in CATALOG])
def test_black_box_signatures_never_give_a_catalog_entry_another_kind(p):
    report = _black_box(p)
    if report is None:
        return
    assert all(d.pitfall is None for d in report.diagnoses)
    assert [d.kind for d in report.diagnoses][:1] in ([], [p.kind]), str(report)


def test_black_box_signatures_alone_find_most_catalog_entries():
    found = [p.name for p in CATALOG if (r := _black_box(p)) is not None and r.diagnoses]
    # Not found without the catalog: wrong formulas (tanh, sigmoid, GELU, a - y, the
    # batch axis) and a softmax diagonal hidden inside a scalar loss.
    assert len(found) >= 14, found


@pytest.mark.parametrize("p", CATALOG, ids=[p.name for p in CATALOG])
def test_the_correct_vjp_of_every_entry_has_no_diagnosis(p):
    inputs = p.make_inputs(np.random.default_rng(11))
    if p.kind == "shape":
        return  # its correct VJP takes the padding; covered by the catalog's own tests
    report = check_vjp(p.fn, p.correct_vjp, inputs, seed=0, pitfalls=CATALOG)
    assert report.status != "failed" and report.diagnoses == (), str(report)


def test_a_users_own_code_with_a_catalogued_mistake_is_named():
    # Written afresh, not the catalog's function: the behaviour is the signature.
    def my_softmax(x):
        e = np.exp(x - np.max(x, axis=1, keepdims=True))
        return e / np.sum(e, axis=1, keepdims=True)

    def my_backward(dout, x):
        y = my_softmax(x)
        return dout * y * (1.0 - y)

    z = np.random.default_rng(0).normal(size=(5, 4))
    report = check_vjp(my_softmax, my_backward, (z,), pitfalls=CATALOG)
    assert (_primary(report).kind, _primary(report).pitfall) == (
        "diagonal_only",
        "softmax_diagonal_jacobian",
    )


def test_any_object_with_the_attributes_is_a_catalog_entry():
    class Entry:
        name, kind, summary, correct = "my_missing_half", "factor", "No 1/2.", "Halve it."
        wrong_input = 0

        @staticmethod
        def fn(x):
            return np.sum(x**2) / 2

        @staticmethod
        def wrong_vjp(g, x):
            return 2 * g * x

    x = np.random.default_rng(1).normal(size=(3, 2))
    report = check_vjp(Entry.fn, lambda g, x: 2 * g * x, (x,), pitfalls=[Entry()])
    d = _primary(report)
    assert (d.kind, d.pitfall, d.evidence["named"]) == ("factor", "my_missing_half", "2")
    other = check_vjp(Entry.fn, lambda g, x: 3 * g * x, (x,), pitfalls=[Entry()])
    assert _primary(other).pitfall is None  # another factor: not that entry


@pytest.mark.parametrize("bad", ["CATALOG", 3, [object()], [type("E", (), {"name": "e"})()]])
def test_bad_pitfalls_are_refused_naming_the_argument(bad):
    with pytest.raises(InvalidArgumentType, match="pitfalls"):
        check_vjp(np.sin, lambda g, x: g * np.cos(x), (np.ones(2),), pitfalls=bad)


# --- planted mistakes of our own, every kind ---------------------------------------------------


def _inputs(seed, *shapes):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=s) for s in shapes)


def _sq(x):
    return np.sum(x**2)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("factor", "named"),
    [(0.5, "1/2"), (2.0, "2"), (-2.0, "-2"), (0.37, None), (5.0, "N"), (0.2, "1/N")],
)
def test_factor_is_named_and_a_dimension_recognized(factor, named, seed):
    (x,) = _inputs(seed, (5, 3))
    report = check_vjp(_sq, lambda g, x: factor * 2 * g * x, (x,))
    d = _primary(report)
    assert d.kind == "factor" and d.input == "x"
    assert d.evidence["factor"] == pytest.approx(factor, rel=1e-6)
    assert d.evidence["named"] == named
    if named in ("N", "1/N"):
        assert d.evidence["N"] == 5 and "axis 0 of x" in d.message


def test_factor_of_a_mean_over_a_batch_names_the_batch():
    x, W, b = _inputs(0, (7, 3), (3, 4), (4,))
    report = check_vjp(
        R.affine, lambda g, x, W, b: (g @ W.T, x.T @ g / 7, g.sum(0)), (x, W, b)
    )
    d = _primary(report)
    assert (d.kind, d.input, d.evidence["named"], d.evidence["N"]) == ("factor", "W", "1/N", 7)


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 2)], ids=str)
def test_sign_and_zero(shape):
    (x,) = _inputs(1, shape)
    assert _primary(check_vjp(np.sin, lambda g, x: -g * np.cos(x), (x,))).kind == "sign"
    assert _primary(check_vjp(np.sin, lambda g, x: 0 * g * x, (x,))).kind == "zero"


@pytest.mark.parametrize("n", [3, 6])
def test_transpose_of_the_result(n):
    x, W = _inputs(n, (n, n), (n, n))
    report = check_vjp(np.matmul, lambda g, x, W: (g @ W.T, g.T @ x), (x, W), names=("x", "W"))
    d = _primary(report)
    assert (d.kind, d.input, d.evidence["axes"]) == ("transpose", "W", [1, 0])


@pytest.mark.parametrize("n", [3, 5])
def test_transpose_of_an_input(n):
    x, W = _inputs(n, (2, n), (n, n))

    def fn(x, W):
        return x @ W

    def vjp(g, x, W):
        return g @ W, x.T @ g  # W where W^T belongs

    d = _primary(check_vjp(fn, vjp, (x, W), names=("x", "W")))
    assert (d.kind, d.input, d.evidence["transposed"]) == ("transpose", "x", "W")


@pytest.mark.parametrize("shape", [(3,), (2, 4)], ids=str)
def test_swapped_inputs(shape):
    x, y = _inputs(2, shape, shape)

    def fn(x, y):
        return x * y**2

    report = check_vjp(fn, lambda g, x, y: (2 * g * x * y, g * y**2), (x, y))
    d = _primary(report)
    assert d.kind == "swapped_inputs" and {d.input, d.evidence["with"]} == {"x", "y"}
    assert len(report.diagnoses) == 1


def _normalize_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _normalize_rows_diagonal(g, x):
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return g * (1.0 / n - x**2 / n**3)  # d y_i / d x_i only


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("fn", "diagonal"),
    [
        (R.log_softmax, lambda g, x: g * (1 - R.softmax(x))),
        (_normalize_rows, _normalize_rows_diagonal),
    ],
    ids=["log_softmax", "normalize"],
)
def test_diagonal_only_in_vjps(fn, diagonal, seed):
    (x,) = _inputs(seed, (4, 6))
    d = _primary(check_vjp(fn, diagonal, (x,)))
    assert (d.kind, d.input) == ("diagonal_only", "x")


def test_diagonal_only_in_jvps():
    (x,) = _inputs(3, (3, 5))
    report = check_jvp(R.softmax, lambda t, x: R.softmax(x) * (1 - R.softmax(x)) * t, (x,))
    assert _primary(report).kind == "diagonal_only"


def test_an_elementwise_formula_that_is_wrong_is_not_diagonal_only():
    (x,) = _inputs(4, (3, 5))
    report = check_vjp(np.tanh, lambda g, x: g * (1 - np.tanh(x)), (x,))
    assert report.status == "failed" and all(d.kind != "diagonal_only" for d in report.diagnoses)


@pytest.mark.parametrize("seed", range(2))
def test_ignores_cotangent_tangent_and_vector(seed):
    (x,) = _inputs(seed, (3, 4))
    vjp = check_vjp(np.sin, lambda g, x: np.cos(x), (x,))
    assert _primary(vjp).kind == "ignores_cotangent"
    jvp = check_jvp(np.sin, lambda t, x: np.cos(x), (x,))
    assert _primary(jvp).kind == "ignores_tangent"
    hvp = check_hvp(_sq, lambda v, x: 2 * np.ones_like(x), (x,), grad=lambda x: 2 * x)
    assert _primary(hvp).kind == "ignores_vector"


@pytest.mark.parametrize(
    "vjp",
    [
        lambda g, x: g**2 * np.cos(x),
        lambda g, x: (g + 1) * np.cos(x),
        lambda g, x: np.abs(g) * np.cos(x),
        lambda g, x: np.maximum(g, 0) * np.cos(x),
    ],
    ids=["squared", "added", "abs", "masked"],
)
def test_not_linear_in_cotangent(vjp):
    (x,) = _inputs(5, (4, 3))
    d = _primary(check_vjp(np.sin, vjp, (x,)))
    assert (d.kind, d.input) == ("not_linear_in_cotangent", "x")


def test_not_linear_in_tangent():
    (x,) = _inputs(6, (5,))
    assert _primary(check_jvp(np.sin, lambda t, x: np.cos(x) * t**3, (x,))).kind == (
        "not_linear_in_tangent"
    )


def test_in_place_into_the_cotangent_and_into_an_input():
    (x,) = _inputs(7, (6,))

    def into_g(g, x):
        g *= np.cos(x)
        return g

    def into_x(g, x):
        np.cos(x, out=x)
        return g * x

    d = _primary(check_vjp(np.sin, into_g, (x,)))
    assert (d.kind, d.input) == ("in_place", "cotangent")
    kinds = {(d.kind, d.input) for d in check_vjp(np.sin, into_x, (x,)).diagnoses}
    assert ("in_place", "x") in kinds


def _relu_leaky_backward(g, x):
    return g * np.where(x > 0, 1.0, 0.01)


def _border_scale(x):
    return 3.0 * x


def _border_forgotten(g, x):
    d = 3.0 * g
    d[..., 0, :] = d[..., -1, :] = 0.0
    d[..., :, 0] = d[..., :, -1] = 0.0
    return d


def _step_scale(x):
    return np.sin(x)


def _time_step_wrong(g, x):
    d = g * np.cos(x)
    d[:, 2] *= 1.5
    return d


def _column_wrong(g, x):
    d = g * np.cos(x)
    d[:, 1] = 0
    return d


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("fn", "vjp", "shape", "where"),
    [
        (R.relu, _relu_leaky_backward, (5, 6), {"where": "x < 0"}),
        (_border_scale, _border_forgotten, (6, 7), {"where": "border"}),
        (_border_scale, _border_forgotten, (2, 5, 5), {"where": "border"}),
        (_step_scale, _time_step_wrong, (3, 6, 2), {"axis": 1, "indices": [2]}),
        (_step_scale, _column_wrong, (5, 4), {"axis": 1, "indices": [1]}),
    ],
    ids=["x<0", "border 2-d", "border 3-d", "time step", "column"],
)
def test_region(fn, vjp, shape, where, seed):
    (x,) = _inputs(seed, shape)
    d = _primary(check_vjp(fn, vjp, (x,)))
    assert d.kind == "region", str(d)
    for key, value in where.items():
        assert d.evidence[key] == value, d


def test_region_at_ties_of_a_max():
    x = np.array([1.0, 3.0, 3.0, -2.0, 3.0])
    report = check_vjp(np.max, lambda g, x: g * (x == x.max()), (x,))
    d = _primary(report)
    assert (d.kind, d.input, d.evidence["where"]) == ("region", "a", "ties")  # np.max(a)


def test_region_where_another_input_is_nonzero():
    p, y = _inputs(8, (4, 3), (4, 3))
    y = (y > 0.5).astype(float)
    y[0, 0] = 1.0

    def fn(p, y):
        return np.sum(y * np.sin(p))

    def vjp(g, p, y):
        return g * y * (np.cos(p) + 0.1 * p), g * np.sin(p)

    d = _primary(check_vjp(fn, vjp, (p, y)))
    assert (d.kind, d.input) == ("region", "p") and d.evidence["where"] in ("y > 0", "y != 0")


# --- layers, JVPs and HVPs ------------------------------------------------------------------------


class _LossLayer:
    """Deep-learning-from-scratch style: backward(dout=1) ignores dout."""

    def forward(self, x, t):
        self.t = t
        e = np.exp(x - x.max(axis=1, keepdims=True))
        self.y = e / e.sum(axis=1, keepdims=True)
        return -np.sum(np.log(self.y[np.arange(len(t)), t])) / len(t)

    def backward(self, dout=1):
        dx = self.y.copy()
        dx[np.arange(len(self.t)), self.t] -= 1
        return dx / len(self.t)


def test_a_loss_layer_backward_that_ignores_dout_called_as_a_new_user_would():
    x = np.random.default_rng(0).normal(size=(4, 3))
    t = np.array([0, 2, 1, 1])
    layer = _LossLayer()

    def loss(x):
        return layer.forward(x, t)

    seen = []

    def loss_vjp(g, x):
        seen.append(float(g))
        layer.forward(x, t)
        return layer.backward(g)

    report = check_vjp(loss, loss_vjp, (x,))
    # backward returns the gradient at dout = 1 whatever the cotangent c the
    # check passes (its first call), where c * gradient is right: every
    # element is off by |1 - c| / |c| relative. (6.95 held at the old
    # direction only, c = 0.1257 = x[0, 0], both the first draw of
    # default_rng(0).)
    c = seen[0]
    assert report.input("x").max_rel_error == pytest.approx(abs(1 - c) / abs(c), rel=1e-6)
    d = _primary(report)
    assert (d.kind, d.input) == ("ignores_cotangent", "x")


def test_a_layer_that_writes_into_dout():
    class Relu:
        def forward(self, x):
            self.mask = x <= 0
            return np.maximum(x, 0)

        def backward(self, dout):
            dout[self.mask] = 0
            return dout

    x = np.random.default_rng(1).normal(size=(3, 4))
    report = check_layer(Relu(), (x,))
    assert report.status == "failed"
    assert any(d.kind == "in_place" for d in report.diagnoses), str(report)


def test_factor_in_a_jvp_and_an_hvp():
    (x,) = _inputs(9, (3, 3))
    jvp = check_jvp(np.exp, lambda t, x: 0.5 * np.exp(x) * t, (x,))
    assert (_primary(jvp).kind, _primary(jvp).evidence["named"]) == ("factor", "1/2")
    hvp = check_hvp(_sq, lambda v, x: 4 * v, (x,), grad=lambda x: 2 * x)
    assert (_primary(hvp).kind, _primary(hvp).input) == ("factor", "Hv[x]")


# --- only on failure, printed after the verdict, carried in JSON ---------------------------------


def test_passing_and_inconclusive_checks_have_no_diagnosis():
    (x,) = _inputs(10, (4,))
    assert check_vjp(np.sin, lambda g, x: g * np.cos(x), (x,)).diagnoses == ()
    vacuous = check_vjp(np.sin, lambda g, x: 2 * g, (x,), direction=np.zeros(4))
    assert vacuous.status == "inconclusive" and vacuous.diagnoses == ()


def test_a_failure_without_a_known_signature_has_no_diagnosis():
    (x,) = _inputs(11, (3, 4))
    report = check_vjp(np.sin, lambda g, x: g * np.cos(x) + 1e-3 * g * x**2, (x,))
    assert report.status == "failed" and report.diagnoses == ()


def test_diagnoses_are_printed_right_after_the_verdict_and_carried_in_json():
    (x,) = _inputs(12, (2, 3))
    report = check_vjp(_sq, lambda g, x: g * x, (x,))
    lines = str(report).splitlines()
    assert lines[1:3] == ["", "Diagnosis:"] and lines[3].startswith("  - [factor] x: ")
    d = report.to_dict()["diagnoses"]
    assert d[0]["kind"] == "factor" and d[0]["input"] == "x" and d[0]["pitfall"] is None
    assert d[0]["evidence"]["named"] == "1/2"
    json.dumps(report.to_dict())
    assert isinstance(report.diagnoses[0], Diagnosis)


def test_values_are_printed_with_the_digits_that_tell_them_apart():
    x = np.array([0.68, -0.3])
    report = check_vjp(np.sin, lambda g, x: g * np.cos(x) * (1 + 1e-6), (x,))
    lines = str(report).splitlines()
    first = lines.index("Worst elements (largest error / tolerance first):") + 2
    analytic, reference = lines[first].split()[3:5]
    assert analytic != reference, lines[first]
    assert float(analytic) / float(reference) == pytest.approx(1 + 1e-6, rel=1e-8)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [30.0, 60.0, 100.0])
def test_a_float32_vjp_with_underflowing_products_is_linear(scale, seed):
    """A float32 softmax VJP at logits of scale 30-100: its products fall below float32's
    smallest normal and round to a grid of 2^-149, so ``vjp(2 d)`` and ``2 vjp(d)`` differ by
    a unit of it. That is rounding, not a formula that is not linear (it was reported as one,
    and the correct VJP failed); a VJP that squares its cotangent still is."""

    def fn(z):
        z = np.asarray(z, dtype=np.float32)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def vjp(g, z):
        s = fn(z)
        g = np.asarray(g, dtype=np.float32)
        return s * (g - (g * s).sum(-1, keepdims=True))

    z = (np.random.default_rng(seed).standard_normal((3, 6)) * scale).astype(np.float32)
    with np.errstate(all="ignore"):
        report = check_vjp(fn, vjp, (z,), seed=seed)
        assert not any("not linear" in p for p in report.problems), report.problems
        assert report.status != "failed", str(report)
        squared = check_vjp(fn, lambda g, z: vjp(g**2, z), (z,), seed=seed)
    assert any("not linear" in p for p in squared.problems), str(squared)
