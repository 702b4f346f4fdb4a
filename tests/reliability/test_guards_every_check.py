"""Every guard of the pipeline, triggered through each of the four checks.

``check_vjp``, ``check_jvp``, ``check_hvp`` and ``check_layer`` run one pipeline
(:mod:`oracles._pipeline`), so every guard around the user's code applies to
each of them: fresh copies for every call, mutation detection, determinism
before and after the numerics, non-finite estimates that never pass, loosely
judged elements, the step limit, and clear errors for what the user's
functions (``fn``, the derivative, ``torch_fn``/``jax_fn``) return. Each test
is parametrized over the four checks and triggers the guard through that
check, with a function built here for the purpose, and asserts what the
report (or the exception) says.

The four checks share one construction: ``phi = sin`` elementwise. The VJP
check judges ``vjp(g, x) = g cos(x)``, the JVP check ``jvp(t, x) = cos(x) t``,
the HVP check ``hvp(v, x) = -sin(x) v`` of ``sum(sin(x))`` (with ``grad = cos``),
and the layer check a layer whose ``forward`` is ``sin`` and whose
``backward(dout)`` is ``dout cos(x)``. Each guard test wraps the check's ``fn``
(the layer's ``forward``) or its derivative (the layer's ``backward``).

Where a guard does not apply to a check, the test says why.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from oracles import check_hvp, check_jvp, check_layer, check_vjp
from oracles.errors import InvalidArgument, NonDeterministicFunction, UserFunctionError

KINDS = ["vjp", "jvp", "hvp", "layer"]
X = np.array([0.3, -1.1, 2.0, 0.7])

#: What each check calls its direction, and its derivative, in messages.
DIRECTION = {"vjp": "cotangent", "jvp": "tangents", "hvp": "vectors", "layer": "dout"}
DERIVATIVE = {"vjp": "vjp", "jvp": "jvp", "hvp": "hvp", "layer": "layer.backward"}
FN = {"vjp": "fn", "jvp": "fn", "hvp": "fn", "layer": "layer.forward"}


def _fn(kind):
    """The check's function: ``sin`` (``sum(sin)`` for the HVP check)."""
    if kind == "hvp":
        return lambda x: np.sum(np.sin(x))
    return np.sin


def _derivative(kind):
    """The check's correct derivative, called ``derivative(direction, x)``."""
    return {
        "vjp": lambda g, x: g * np.cos(x),
        "jvp": lambda t, x: np.cos(x) * t,
        "hvp": lambda v, x: -np.sin(x) * v,
        "layer": lambda d, x: d * np.cos(x),
    }[kind]


def _grad(x):
    return np.cos(x)


def _layer(forward, backward):
    """A layer whose forward is ``forward(x)`` and whose backward is ``backward(dout, x)``."""

    class Layer:
        def forward(self, x):
            self.x = x
            return forward(x)

        def backward(self, dout):
            return backward(dout, self.x)

    return Layer()


def check(kind, fn=None, derivative=None, inputs=None, **options):
    """Run the ``kind`` check of ``fn`` (default: the construction's) and its derivative."""
    fn = _fn(kind) if fn is None else fn
    derivative = _derivative(kind) if derivative is None else derivative
    inputs = (X,) if inputs is None else inputs
    if kind == "vjp":
        return check_vjp(fn, derivative, inputs, **options)
    if kind == "jvp":
        return check_jvp(fn, derivative, inputs, **options)
    if kind == "hvp":
        options.setdefault("grad", _grad)
        return check_hvp(fn, derivative, inputs, **options)
    return check_layer(_layer(fn, derivative), inputs, **options)


@pytest.mark.parametrize("kind", KINDS)
def test_the_construction_passes_and_a_planted_mistake_fails(kind):
    assert check(kind).ok
    right = _derivative(kind)
    report = check(kind, derivative=lambda d, x: right(d, x) * (1 + 1e-6))
    assert not report.ok


# --- fresh copies -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_of_user_code_gets_fresh_copies(kind):
    x = X.copy()
    seen = []  # every array the user's code received (kept alive: ids stay unique)

    def fn(a):
        seen.append(a)
        return _fn(kind)(a)

    def derivative(d, a):
        # (A layer's backward sees the x its forward cached, not an argument of its own.)
        seen.extend([d] if kind == "layer" else [d, a])
        return _derivative(kind)(d, a)

    def grad(a):
        seen.append(a)
        return _grad(a)

    options = {"grad": grad} if kind == "hvp" else {}
    report = check(kind, fn, derivative, (x,), **options)
    assert report.ok, str(report)
    assert len(seen) > 10
    assert all(s is not x for s in seen)
    assert len({id(s) for s in seen}) == len(seen), "an array was handed to user code twice"
    assert np.array_equal(x, X)


@pytest.mark.parametrize("kind", KINDS)
def test_user_code_that_returns_its_own_arguments_is_judged_right(kind):
    # Identity functions return (views of) the arrays they were given: without fresh copies,
    # later evaluations would move earlier results.
    if kind == "hvp":
        # sum(x^2)/2: grad returns its argument itself, the HVP returns its direction itself.
        report = check_hvp(lambda x: 0.5 * np.sum(x * x), lambda v, x: v, (X,), grad=lambda x: x)
    elif kind == "jvp":
        report = check(kind, lambda x: x, lambda t, x: t)
    else:
        report = check(kind, lambda x: x.reshape(x.shape), lambda d, x: d)
    assert report.ok, str(report)


@pytest.mark.parametrize("kind", ["layer"])
def test_the_users_layer_object_is_never_touched(kind):
    layer = _layer(np.sin, lambda d, x: d * np.cos(x))
    assert check_layer(layer, (X,)).ok
    assert not hasattr(layer, "x")  # forward ran on copies of the layer only


# --- mutation detection -------------------------------------------------------------------------


def _writes_into_its_input(f):
    def g(x):
        out = f(x)
        x[...] = 0.0  # after computing: the value is right, the caller's array is not
        return out

    return g


@pytest.mark.parametrize("kind", KINDS)
def test_fn_writing_into_its_input_is_a_problem(kind):
    report = check(kind, fn=_writes_into_its_input(_fn(kind)))
    assert not report.ok
    assert any(f"{FN[kind]} modified its argument x in place" in p for p in report.problems), (
        report.problems
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_derivative_writing_into_its_direction_is_a_problem(kind):
    right = _derivative(kind)

    def derivative(d, x):
        out = right(d, x)
        d[...] = 0.0
        return out

    report = check(kind, derivative=derivative)
    assert not report.ok
    wanted = f"{DERIVATIVE[kind]} modified its argument {DIRECTION[kind]} in place"
    assert any(wanted in p for p in report.problems), report.problems


@pytest.mark.parametrize("kind", KINDS)
def test_the_derivative_writing_into_an_input_is_a_problem(kind):
    right = _derivative(kind)

    def derivative(d, x):
        out = right(d, x)
        x[0] = 42.0
        return out

    report = check(kind, derivative=derivative)
    assert not report.ok
    wanted = f"{DERIVATIVE[kind]} modified its argument x in place"
    assert any(wanted in p for p in report.problems), report.problems


# --- determinism, before and after the numerics -------------------------------------------------

_COUNTER = itertools.count()


def _drifting(f):
    """``f`` plus a tiny amount that changes at every call (randomness nobody can re-seed)."""

    def g(x):
        return f(x) + 1e-9 * next(_COUNTER)

    return g


def _names(kind, role):
    """The names a message may give the user's function: the layer check reports its
    forward and backward as the pipeline's "fn" and "vjp" in some messages."""
    names = {"fn": FN, "derivative": DERIVATIVE}[role]
    pipeline = {"fn": "fn", "derivative": "vjp"}[role]
    return {names[kind], pipeline} if kind == "layer" else {names[kind]}


def _refused_as_random(info, kind, role):
    message = str(info.value)
    assert any(f"{n} is not deterministic" in message for n in _names(kind, role)), message


@pytest.mark.parametrize("kind", KINDS)
def test_a_random_fn_is_refused_before_anything_is_judged(kind):
    with pytest.raises(NonDeterministicFunction) as info:
        check(kind, fn=_drifting(_fn(kind)))
    _refused_as_random(info, kind, "fn")


@pytest.mark.parametrize("kind", KINDS)
def test_a_random_derivative_is_refused(kind):
    right = _derivative(kind)

    def derivative(d, x):
        return right(d, x) * (1.0 + 1e-9 * next(_COUNTER))

    with pytest.raises(NonDeterministicFunction) as info:
        check(kind, derivative=derivative)
    _refused_as_random(info, kind, "derivative")


@pytest.mark.parametrize("kind", KINDS)
def test_randomness_that_starts_during_the_numerics_is_caught_afterwards(kind):
    # fn is deterministic until the oracle evaluates it at a perturbed point; from then on
    # it adds a constant that changes at every call. Constant offsets cancel in central
    # differences, so the numerics alone would be fooled: the determinism check after
    # them is what refuses it. (For the HVP check the numeric oracle differentiates grad=,
    # not fn: there grad's first perturbed call starts fn's drift.)
    state = {"started": False}

    def fn(x):
        out = _fn(kind)(x)
        if not np.array_equal(x, X):
            state["started"] = True
        return out + (1e-9 * next(_COUNTER) if state["started"] else 0.0)

    def grad(x):
        if not np.array_equal(x, X):
            state["started"] = True
        return _grad(x)

    options = {"grad": grad} if kind == "hvp" else {}
    with pytest.raises(NonDeterministicFunction) as info:
        check(kind, fn=fn, **options)
    _refused_as_random(info, kind, "fn")
    assert state["started"]


# --- what the numerics cannot judge never passes ------------------------------------------------


def _finite_only_at_the_point(f):
    """``f`` at the evaluation point, NaN everywhere else: no step gives a finite difference."""

    def g(x):
        out = f(x)
        return np.where(np.all(x == X), out, np.nan)

    return g


@pytest.mark.parametrize("kind", KINDS)
def test_a_reference_that_could_not_be_computed_fails(kind):
    if kind == "hvp":
        # The HVP's numeric oracle differentiates grad=: make grad the function that is
        # finite only at the point (fn itself is never evaluated at perturbed points).
        report = check(kind, grad=lambda x: np.where(np.all(x == X), np.cos(x), np.nan))
    else:
        report = check(kind, fn=_finite_only_at_the_point(_fn(kind)))
    assert not report.ok
    assert any("NaN or inf at perturbed points" in n for n in report.notes), report.notes


def _sqrt_case(kind, framework):
    """sqrt at a point with a 0: the framework's derivative there is not finite (inf), the
    user's below is finite (the 0 shifted by 1e-100). A reference that is not finite must
    make the element fail, never pass."""
    if framework == "torch":
        import torch as lib
    else:
        import jax.numpy as lib
    s = 1e-100
    pieces = {
        "vjp": (np.sqrt, lambda g, x: 0.5 * g / np.sqrt(x + s), lib.sqrt),
        "jvp": (np.sqrt, lambda t, x: 0.5 * t / np.sqrt(x + s), lib.sqrt),
        "hvp": (
            lambda x: np.sum(np.sqrt(x)),
            lambda v, x: -0.25 * v / np.sqrt(x + s) ** 3,
            lambda t: lib.sum(lib.sqrt(t)),
        ),
        "layer": (np.sqrt, lambda d, x: 0.5 * d / np.sqrt(x + s), lib.sqrt),
    }
    return pieces[kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "framework",
    [pytest.param("torch", marks=pytest.mark.torch), pytest.param("jax", marks=pytest.mark.jax)],
)
def test_a_reference_that_is_not_finite_never_passes(framework, kind):
    fn, derivative, framework_fn = _sqrt_case(kind, framework)
    x = np.array([0.0, 1.0, 4.0])
    options = {"against": framework, f"{framework}_fn": framework_fn}
    if kind == "hvp":
        options["grad"] = None
    with np.errstate(divide="ignore", invalid="ignore"):
        report = check(kind, fn, derivative, (x,), **options)
    assert not report.ok
    check_of_x = report.inputs[0].checks[framework]
    assert check_of_x.n_failed >= 1
    failed = [e for e in check_of_x.worst if not e.passed]
    assert any(e.index == (0,) for e in failed), str(report)  # the element at 0
    # The autodiff error estimate scales with the largest gradient of the tensor: an inf
    # there leaves no element judgeable, and the report says they count as failures.
    assert all(not e.passed for e in check_of_x.worst), str(report)
    assert any("cannot be judged and count as failures" in n for n in report.notes), str(report)


def _noisy(f):
    """``f`` plus deterministic noise of relative size 1e-3 at every bit of ``x`` (a hash):
    no step resolves it, and no error estimate can be small."""

    def g(x):
        # A hash of the float's bits: sin(12345.678 x) * 43758.5453 (the shader idiom) is
        # smooth below steps of 1e-9, where its derivative of 5e5 is resolved, and a check
        # rightly fails a derivative that leaves it out.
        bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
        with np.errstate(over="ignore"):
            h = (bits * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)
        return f(x) + 1e-3 * (h.astype(np.float64) / 2.0**53)

    return g


@pytest.mark.parametrize("kind", KINDS)
def test_elements_judged_only_loosely_are_said_to_be(kind):
    if kind == "hvp":
        report = check(kind, grad=_noisy(_grad))
    else:
        report = check(kind, fn=_noisy(_fn(kind)))
    notes = " ".join(report.notes)
    assert "judged only loosely" in notes or not report.ok, str(report)
    assert "judged only loosely" in notes, str(report)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_beyond_the_step_limit_are_said_to_be_unjudgeable(kind):
    x = np.array([2.0**52, 0.5])  # at 2^52 inputs are 1 apart: sin there is not resolved
    report = check(kind, inputs=(x,))
    assert any("cannot be judged numerically" in n for n in report.notes), report.notes


# --- what the user's functions return -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_fn_returning_none_is_a_user_function_error(kind):
    with pytest.raises(UserFunctionError, match=f"{FN[kind]} returned None"):
        check(kind, fn=lambda x: None)


@pytest.mark.parametrize("kind", [*KINDS[:3], "layer"])
@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
def test_a_derivative_returning_complex_values_is_refused_never_passed(kind):
    right = _derivative(kind)
    with pytest.raises(UserFunctionError, match=r"complex"):
        check(kind, derivative=lambda d, x: right(d, x) + 0j)


@pytest.mark.parametrize("kind", KINDS[:3])
def test_a_derivative_returning_none_is_a_user_function_error(kind):
    with pytest.raises(UserFunctionError, match=f"{DERIVATIVE[kind]} returned None"):
        check(kind, derivative=lambda d, x: None)


def test_a_layer_backward_returning_none_has_nothing_to_check():
    # For a layer, backward() returning None means "no input gradient" (a layer with only
    # parameters); with no parameter either, there is nothing to check: a usage error.
    with pytest.raises(InvalidArgument, match="nothing to check"):
        check("layer", derivative=lambda d, x: None)


def _torch_fn(kind):
    import torch

    if kind == "hvp":
        return lambda t: torch.sum(torch.sin(t))
    return torch.sin


def _jax_fn(kind):
    import jax.numpy as jnp

    if kind == "hvp":
        return lambda a: jnp.sum(jnp.sin(a))
    return jnp.sin


def _misbehaving(framework, how, kind):
    """A torch_fn / jax_fn that raises, computes with NumPy, returns a NumPy array, or returns
    an integer array."""
    good = _torch_fn(kind) if framework == "torch" else _jax_fn(kind)
    if how == "raises":

        def bad(t):
            raise ZeroDivisionError("the user's own bug")

    elif how == "numpy ops":  # NumPy on the framework's array: it raises inside, as it would

        def bad(t):
            return np.sin(t)

    elif how == "numpy result":  # a NumPy array that does not depend on the input

        def bad(t):
            return np.float64(1.0) if kind == "hvp" else np.ones(X.shape)

    else:

        def bad(t):
            out = good(t)
            if framework == "torch":
                import torch

                return (out * 100).to(torch.int64)
            import jax.numpy as jnp

            return (out * 100).astype(jnp.int32)

    return bad


_BACKEND_MESSAGES = {
    "raises": r"{name} raised ZeroDivisionError.*the user's own bug",
    "numpy ops": r"{name} raised \w+",
    "numpy result": r"{name} must return a floating .*got (ndarray|float64)",
    "integer": r"{name} must return a floating .*got .*int",
}


@pytest.mark.parametrize("how", list(_BACKEND_MESSAGES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "framework",
    [pytest.param("torch", marks=pytest.mark.torch), pytest.param("jax", marks=pytest.mark.jax)],
)
def test_a_misbehaving_autodiff_function_is_a_user_function_error_naming_it(framework, kind, how):
    name = f"{framework}_fn"
    options = {"against": framework, name: _misbehaving(framework, how, kind)}
    if kind == "hvp":
        options["grad"] = None  # the numeric oracle is not asked for: only the framework's
    with pytest.raises(UserFunctionError, match=_BACKEND_MESSAGES[how].format(name=name)):
        check(kind, **options)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "framework",
    [pytest.param("torch", marks=pytest.mark.torch), pytest.param("jax", marks=pytest.mark.jax)],
)
def test_the_autodiff_oracles_agree_with_the_construction(framework, kind):
    # The misbehaving functions above are the only difference from a check that passes.
    fn = _torch_fn(kind) if framework == "torch" else _jax_fn(kind)
    options = {"against": ("numeric", framework), f"{framework}_fn": fn}
    report = check(kind, **options)
    assert report.ok, str(report)


# --- check_hvp's grad=: user code too, under the same guards --------------------------------


def test_grad_writing_into_its_argument_is_a_problem():
    def grad(x):
        out = np.cos(x)
        x[...] = 0.0
        return out

    report = check("hvp", grad=grad)
    assert not report.ok
    assert any("grad modified its argument x in place" in p for p in report.problems)


def test_a_random_grad_is_refused():
    # The numeric HVP oracle differentiates grad=: randomness in it would widen its error
    # estimates until they accept anything.
    with pytest.raises(NonDeterministicFunction, match="grad is not deterministic"):
        check("hvp", grad=lambda x: np.cos(x) + 1e-9 * next(_COUNTER))


def test_a_grad_that_turns_random_during_the_numerics_is_caught_afterwards():
    state = {"started": False}

    def grad(x):
        if not np.array_equal(x, X):
            state["started"] = True
        return np.cos(x) + (1e-9 * next(_COUNTER) if state["started"] else 0.0)

    with pytest.raises(NonDeterministicFunction, match="grad is not deterministic"):
        check("hvp", grad=grad)
    assert state["started"]
