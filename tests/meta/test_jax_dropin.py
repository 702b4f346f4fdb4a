"""oracles.jax: JAX's derivatives through custom_vjp / custom_jvp rules, judged; float32 kernels.

* The four rules of the benchmark (affine, softmax-cross-entropy, layer
  norm, a ReLU at exact zeros) pass when right and fail with each planted
  error, in float64 (64-bit mode on in a scope of the test) and in float32
  (JAX's default), where a correct rule passes at every one of 32 seeds and
  one element off by 1e-3 fails.
* custom_jvp rules through "fwd", "lin" and "rev", up to order 2, with the
  recursion of jax.test_util.check_grads; a custom_vjp's fwd returning a
  different primal is found; pytree arguments are named by their paths.
* Signature compatibility: the drop-in and jax.test_util.check_grads are
  called with the same arguments and agree where both can see.
* 64-bit mode stays as the caller set it; bad input raises the project's
  exception types.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import oracles.jax as oj
from oracles.backends.jax import x64_enabled
from oracles.errors import (
    GradientMismatch,
    InvalidArgument,
    InvalidArgumentType,
    UserFunctionError,
)
from oracles.verify.kernels import PLANTED as PLANT
from oracles.verify.kernels import (
    expected_statuses,
    float32_kernel_reference,
    jax_rule,
    kernel_inputs,
    plant_index,
)

pytestmark = pytest.mark.jax


def _case(name, seed, size, scale=1.0, dtype=np.float64, err=0.0, where=None):
    """``(f, args)`` of one rule (oracles.verify.kernels); shapes grow with ``size``, values
    scaled by ``scale``; ``err`` planted at the flat element ``where`` (every one if None)."""
    inputs = kernel_inputs(name, seed, size, scale)
    if name == "softmax_ce":
        z, labels = inputs
        return jax_rule(name, err, where, labels=labels), (z.astype(dtype),)
    return jax_rule(name, err, where), tuple(a.astype(dtype) for a in inputs)


NAMES = ["affine", "softmax_ce", "layernorm", "relu"]

def _where(name, args):
    return 1


# --- float64 (64-bit mode in a scope), float32 ------------------------------------------------


#: Float64 points: a jitted softmax-CE at logits of scale 30 (XLA's fused evaluation order,
#: 1-2 ulps off NumPy's at a third of the points) was inconclusive until round 6, when the
#: sensitivity figure stopped lending the thresholds of large sampled elements to typical ones.
FLOAT64_POINTS = [
    (name, seed, size, scale)
    for name in NAMES
    for seed, size, scale in [(0, 2, 1.0), (1, 4, 30.0), (2, 3, 1e-3)]
]


@pytest.mark.parametrize(("name", "seed", "size", "scale"), FLOAT64_POINTS)
def test_correct_float64_rules_pass(name, seed, size, scale):
    with x64_enabled(jax):
        f, args = _case(name, seed, size, scale)
        report = oj.check(f, args, seed=seed)
        assert report.status == "passed", str(report)
        assert oj.check_grads(f, args, order=1) is None


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("err", "where"), [(1e-6, "one"), (-1e-6, "one"), (1e-7, None)])
def test_planted_float64_errors_fail(name, err, where):
    with x64_enabled(jax):
        _, args = _case(name, 3, 3)
        index = _where(name, args) if where == "one" else None
        f, args = _case(name, 3, 3, err=err, where=index)
        report = oj.check(f, args)
        assert report.status == "failed", str(report)
        assert report.failed_inputs == [report.inputs[PLANT[name]].name]
        with pytest.raises(GradientMismatch, match=r"check_grads \(VJP\): FAILED"):
            oj.check_grads(f, args, order=1)


def _float32_is_off(name, seed, size, scale):
    """Whether the float32 derivative itself is off from the float64 one (the same rule on
    the same values in 64-bit mode) by more than 1e-4 relative in an element that is not
    negligible (>= 1e-3 of the largest): where float32 rounding, not the check, limits what
    can be resolved."""
    f, args = _case(name, seed, size, scale, np.float32)
    y, pullback = jax.vjp(f, *args)
    g32 = pullback(jnp.ones_like(y))
    with x64_enabled(jax):
        f, args = _case(name, seed, size, scale, np.float32)
        args = tuple(a.astype(np.float64) for a in args)
        y, pullback = jax.vjp(f, *args)
        g64 = pullback(jnp.ones_like(y))
    for a, b in zip(g32, g64, strict=True):
        a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b))
        big = b >= 1e-3 * b.max()
        if np.any(np.abs(a - b)[big] > 1e-4 * b[big]):
            return True
    return False


@pytest.mark.parametrize("name", NAMES)
def test_float32_rules_pass_at_every_seed(name):
    """12 seeds: every size 1-4 with every scale 1e-3, 1, 5, JAX's default float32: no false
    alarm. Inconclusive only where the float32 derivative itself cannot deliver 1e-4 relative
    (:func:`_float32_is_off`)."""
    outcomes = []
    for seed in range(12):
        point = (name, seed, 1 + seed % 4, [1.0, 5.0, 1e-3][seed % 3])
        f, args = _case(*point, np.float32)
        report = oj.check(f, args, seed=seed)
        assert report.status != "failed", str(report)
        if report.status == "inconclusive":
            assert _float32_is_off(*point), str(report)
        outcomes.append(report.status)
    assert outcomes.count("passed") >= 9, outcomes


@pytest.mark.parametrize("name", NAMES)
def test_float32_one_element_off_by_1e3_fails(name):
    _, args = _case(name, 4, 3, 1.0, np.float32)
    f, args = _case(name, 4, 3, 1.0, np.float32, err=1e-3, where=_where(name, args))
    report = oj.check(f, args)
    assert report.status == "failed", str(report)
    assert report.failed_inputs == [report.inputs[PLANT[name]].name]
    assert report.notes[0].startswith("float32 kernel: differs by up to")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("in_scale", "out_scale"), [(1e-6, 1e6), (1e6, 1e-6)])
def test_inputs_and_outputs_at_extreme_scales(name, dtype, in_scale, out_scale):
    """Inputs of scale 1e-6 with outputs multiplied by 1e6, and the other way round (float64
    in 64-bit mode, float32 without): correct passes, one element off by 1e-6 (float64) or
    1e-3 (float32) fails; softmax-CE in float32 at logits of 1e6 (one ulp of a logit moves
    a probability by 6%) is inconclusive, or fails the wrong rule."""
    scope = x64_enabled(jax) if dtype == np.float64 else contextlib.nullcontext()
    with scope:
        rule, args = _case(name, 1, 3, in_scale, dtype)
        y, pullback = jax.vjp(rule, *args)
        g = pullback(jnp.ones_like(y) * out_scale)[PLANT[name]]
        where = plant_index(np.asarray(g, np.float64))
        err = 1e-6 if dtype == np.float64 else 1e-3
        right = oj.check(lambda *a: rule(*a) * out_scale, args, seed=1)
        bad, args = _case(name, 1, 3, in_scale, dtype, err=err, where=where)
        wrong = oj.check(lambda *a: bad(*a) * out_scale, args, seed=1)
    right_may, wrong_may = expected_statuses(name, dtype == np.float32, in_scale)
    assert right.status in right_may, str(right)
    assert wrong.status in wrong_may, str(wrong)
    if wrong.status == "failed":
        assert wrong.failed_inputs == [wrong.inputs[PLANT[name]].name]


def test_float32_report_and_float64_inputs_without_x64():
    f, args = _case("layernorm", 5, 3, 1.0, np.float64)  # float64 NumPy, x64 off: float32
    report = oj.check(f, args)
    assert report.ok, str(report)
    assert report.notes[0].startswith("float32 kernel: agrees within")
    assert "would catch relative errors >= " in report.notes[0]
    assert any("jax_enable_x64 is off" in n for n in report.notes)
    assert "x (3, 4) float32" in report.context["inputs"]


def test_x64_mode_stays_as_the_caller_set_it():
    before = jax.config.jax_enable_x64
    f, args = _case("affine", 6, 2, 1.0, np.float32)
    oj.check(f, args)
    assert jax.config.jax_enable_x64 == before
    assert jnp.asarray(1.0).dtype == (jnp.float64 if before else jnp.float32)
    with x64_enabled(jax):
        f, args = _case("affine", 6, 2)
        oj.check_grads(f, args, order=2)
        assert jnp.asarray(1.0).dtype == jnp.float64
    assert jax.config.jax_enable_x64 == before


def test_jitted_rules_are_checked_too():
    f, args = _case("layernorm", 7, 2, 1.0, np.float32)
    assert oj.check(jax.jit(f), args).ok
    bad, args = _case("layernorm", 7, 2, 1.0, np.float32, err=1e-3, where=1)
    assert oj.check(jax.jit(bad), args).status == "failed"


# --- custom_jvp, modes, orders ------------------------------------------------------------------


def softplus_jvp(err=0.0):
    @jax.custom_jvp
    def f(x):
        return jnp.logaddexp(x, 0.0)

    @f.defjvp
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        return f(x), jax.nn.sigmoid(x) * t * (1 + err)

    return f


@pytest.mark.parametrize("modes", [("fwd",), ("rev",), ("lin",), ("fwd", "rev")])
def test_custom_jvp_through_every_mode_up_to_order_2(modes):
    x = np.array([-2.0, -0.3, 0.4, 3.0], dtype=np.float32)
    assert oj.check_grads(softplus_jvp(), (x,), order=2, modes=modes) is None
    with pytest.raises(GradientMismatch):
        oj.check_grads(softplus_jvp(1e-3), (x,), order=1, modes=modes)


def test_second_order_error_is_named():
    """A first derivative right, its own derivative wrong: order 2 fails, and says where."""

    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    @f.defjvp
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        # The tangent is right at x, but built from a function of x whose derivative is not
        # -sin: cos(x) computed as a rounded table would do this. Here: cos + a flat bump.
        wrong_cos = jnp.cos(x) + 1e-3 * jax.lax.stop_gradient(x) - 1e-3 * x
        return jnp.sin(x), wrong_cos * t

    x = np.array([0.3, 1.1, -0.7], dtype=np.float32)
    oj.check_grads(f, (x,), order=1, modes=("fwd",))
    with pytest.raises(GradientMismatch, match=r"JVP of JVP"):
        oj.check_grads(f, (x,), order=2, modes=("fwd",))


def test_forward_mode_of_a_custom_vjp_is_a_clear_error():
    f, args = _case("affine", 8, 2, 1.0, np.float32)
    with pytest.raises(UserFunctionError, match="jax.jvp raised TypeError"):
        oj.check(f, args, ad="fwd")


def test_fwd_rule_with_another_primal_is_a_problem():
    @jax.custom_vjp
    def f(x):
        return jnp.tanh(x)

    f.defvjp(lambda x: (jnp.tanh(x) * 1.01, x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))
    report = oj.check(f, (np.linspace(-1, 1, 4, dtype=np.float32),))
    assert report.status == "failed"
    assert any("fwd must return the same primal" in p for p in report.problems), report.problems


def test_pytree_arguments_are_named_by_their_paths():
    rng = np.random.default_rng(9)
    params = {"W": rng.standard_normal((3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
    x = rng.standard_normal((4, 3)).astype(np.float32)
    aff = jax_rule("affine")

    def net(params, x):
        return jnp.tanh(aff(x, params["W"], params["b"]))

    report = oj.check(net, (params, x))
    assert report.ok, str(report)
    assert [i.name for i in report.inputs] == ["args[0]['W']", "args[0]['b']", "args[1]"]
    bad = jax_rule("affine", 1e-3, 2)
    report = oj.check(lambda p, x: jnp.tanh(bad(x, p["W"], p["b"])), (params, x))
    assert report.failed_inputs == ["args[0]['W']"]


def test_a_float32_only_kernel_needs_and_uses_reference_func():
    for seed, size in [(10, 3), (11, 1)]:  # 6 rows: benchmarks/bench_frameworks.py
        kernel, args = _case("float32_kernel", seed, size, 1.0, np.float32)
        with pytest.raises(InvalidArgument, match="reference_func="):
            oj.check(kernel, args)
        report = oj.check(kernel, args, reference_func=float32_kernel_reference, seed=seed)
        assert report.ok and report.oracles == ("numeric", "jax"), str(report)
        assert "reference_func in float64" in report.notes[0]
        bad, args = _case("float32_kernel", seed, size, 1.0, np.float32, err=1e-3, where=1)
        bad = oj.check(bad, args, reference_func=float32_kernel_reference, seed=seed)
        assert bad.status == "failed", str(bad)
        assert bad.failed_inputs == ["x"]


# --- compatibility with jax.test_util.check_grads -----------------------------------------------


def test_signature_matches_jaxs():
    import inspect

    ours = inspect.signature(oj.check_grads).parameters
    theirs = inspect.signature(jax.test_util.check_grads).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name in ("atol", "rtol", "eps"):
        assert ours[name].default is None and theirs[name].default is None


SAME_CALLS = [
    ((1,), {"modes": ["rev"]}),
    ((2,), {"modes": ("fwd", "rev")}),
    ((1,), {"modes": ("rev",), "atol": 1e-2, "rtol": 1e-2}),
    ((1,), {"modes": ("rev",), "eps": 1e-3}),
    ((), {"order": 2, "modes": ("lin",)}),
]


@pytest.mark.parametrize(("order", "kwargs"), SAME_CALLS)
def test_same_arguments_as_jax_check_grads(order, kwargs):
    with x64_enabled(jax):
        x = np.array([-1.5, 0.2, 2.0])
        f = softplus_jvp()
        assert jax.test_util.check_grads(f, (x,), *order, **kwargs) is None
        assert oj.check_grads(f, (x,), *order, **kwargs) is None


def test_gross_error_both_raise_small_error_only_the_drop_in():
    with x64_enabled(jax):
        _, args = _case("affine", 11, 3)
        gross, args = _case("affine", 11, 3, err=0.3, where=1)
        for checker in (jax.test_util.check_grads, oj.check_grads):
            with pytest.raises(AssertionError):
                checker(gross, args, 1, modes=("rev",))
        small, args = _case("affine", 11, 3, err=1e-5, where=1)
        jax.test_util.check_grads(small, args, 1, modes=("rev",))
        with pytest.raises(AssertionError):
            oj.check_grads(small, args, 1, modes=("rev",))


# --- bad input, state -------------------------------------------------------------------------


def _x():
    return np.linspace(-1.0, 1.0, 3, dtype=np.float32)


BAD = [
    ("f not callable", lambda: oj.check(3, (_x(),)), InvalidArgumentType, "f must be callable"),
    ("args not a tuple", lambda: oj.check(jnp.sin, 3.0), InvalidArgumentType, "args"),
    ("args empty", lambda: oj.check(jnp.sin, ()), InvalidArgument, "empty"),
    ("integer arg", lambda: oj.check(jnp.sin, (np.arange(3),)), InvalidArgumentType, "dtype"),
    (
        "complex arg",
        lambda: oj.check(jnp.sin, (np.ones(2, np.complex64),)),
        InvalidArgumentType,
        "complex",
    ),
    ("NaN arg", lambda: oj.check(jnp.sin, (np.array([np.nan]),)), InvalidArgument, "NaN"),
    ("unknown ad", lambda: oj.check(jnp.sin, (_x(),), ad="sideways"), InvalidArgument, "ad"),
    ("order 0", lambda: oj.check_grads(jnp.sin, (_x(),), 0), InvalidArgument, "order"),
    ("unknown mode", lambda: oj.check_grads(jnp.sin, (_x(),), 1, ["up"]), InvalidArgument, "modes"),
    ("eps negative", lambda: oj.check_grads(jnp.sin, (_x(),), 1, eps=-1.0), InvalidArgument, "eps"),
    ("atol negative", lambda: oj.check(jnp.sin, (_x(),), atol=-1.0), InvalidArgument, "atol"),
    (
        "mode with fwd",
        lambda: oj.check(jnp.sin, (_x(),), ad="fwd", mode="fast"),
        InvalidArgument,
        "mode=",
    ),
    (
        "f returns integers",
        lambda: oj.check(lambda x: jnp.round(x).astype(jnp.int32), (_x(),)),
        UserFunctionError,
        "floating",
    ),
    (
        "f raises",
        lambda: oj.check(lambda x: x.no_such_method(), (_x(),)),
        UserFunctionError,
        "f raised AttributeError",
    ),
]


@pytest.mark.parametrize(("case", "call", "exc", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_the_projects_exceptions(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_callers_arrays_and_random_state_are_untouched():
    f, args = _case("softmax_ce", 12, 3, 1.0, np.float32)
    copies = [a.copy() for a in args]
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the legacy global state
    assert oj.check(f, args).ok
    assert all(np.array_equal(a, b) for a, b in zip(args, copies, strict=True))
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


def test_import_oracles_jax_loads_no_jax():
    code = "import sys, oracles.jax\nassert 'jax' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_plugin_fixture_checks_jax_rules(gradcheck):
    f, args = _case("affine", 13, 2, 1.0, np.float32)
    assert gradcheck.jax(f, args).ok
    bad, args = _case("affine", 13, 2, 1.0, np.float32, err=1e-3, where=1)
    with pytest.raises(GradientMismatch):
        gradcheck.jax(bad, args)
