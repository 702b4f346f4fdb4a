"""What every public entry point accepts, and the one table of clear errors for everything else.

The entry points: ``check_vjp``, ``check_jvp``, ``check_hvp``, ``check_layer`` and
their ``assert_*`` forms; the oracle functions ``numeric_vjp``, ``torch_vjp``,
``jax_vjp`` and ``complex_step_vjp``; the modes ``Fast(...)`` and
``Exhaustive(...)``; the strategies of :mod:`oracles.strategies`; and the
pytest plugin's options. Real arrays of any float or integer dtype, Python
numbers, lists, 0-d and empty arrays, strided and read-only views work
(``check_vjp``'s docstring says so); everything else raises one of
:mod:`oracles.errors`' types, naming the argument and the rule. As in
Hypothesis' own ``tests/cover/test_argument_validation.py``, one table
(:data:`BAD_ARGUMENTS`) holds every bad value, each row run against every entry
point it applies to.

One deliberate exception: ``mode=`` passed to ``check_jvp`` or ``check_hvp``,
which have no such option, gets Python's own ``TypeError`` for an unexpected
keyword argument (it names ``mode``), as any misspelt keyword would.
"""

from __future__ import annotations

from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import oracles.strategies as S
from oracles import (
    Exhaustive,
    Fast,
    assert_hvp,
    assert_jvp,
    assert_layer,
    assert_vjp,
    check_hvp,
    check_jvp,
    check_layer,
    check_vjp,
    complex_step_vjp,
    jax_vjp,
    numeric_vjp,
    torch_vjp,
)
from oracles.errors import (
    InconclusiveCheck,
    InvalidArgument,
    InvalidArgumentType,
    OraclesError,
    UserFunctionError,
)

# --- the entry points and their default call ------------------------------------------------


def _square(x):
    # Only operators: the same function runs on NumPy arrays, torch tensors and jax arrays.
    return x * x


def _square_vjp(g, x):
    return 2.0 * g * x


def _square_jvp(t, x):
    return 2.0 * x * t


def _cube_sum(x):
    return (x * x * x).sum()


def _cube_sum_grad(x):
    return 3.0 * x * x


def _cube_sum_hvp(v, x):
    return 6.0 * x * v


class _SquareLayer:
    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, dout):
        return 2.0 * dout * self.x


class _ScaleLayer:
    """``x * w``, its parameter in ``params['w']`` and, as the same array, in ``params['v']``
    (``shared``); ``wr`` is a view of it (``viewed``), read by forward with no gradient."""

    def __init__(self, shared=False, viewed=False):
        self.params = {"w": np.array([1.5, -0.5])}
        if shared:
            self.params["v"] = self.params["w"]
        if viewed:
            self.wr = self.params["w"][::-1]
        self.grads = {}

    def forward(self, x):
        self.x = x
        w = self.params["w"]
        return x * (w if not hasattr(self, "wr") else 0.5 * (w + self.wr[::-1]))

    def backward(self, dout):
        self.grads["w"] = dout * self.x
        if "v" in self.params:
            self.grads["v"] = self.grads["w"]
        return dout * self.params["w"]


# entry -> (function, fn, derivative, extra keywords); fn is None for the layer checks.
CHECKS = {
    "check_vjp": (check_vjp, _square, _square_vjp, {}),
    "assert_vjp": (assert_vjp, _square, _square_vjp, {}),
    "check_jvp": (check_jvp, _square, _square_jvp, {}),
    "assert_jvp": (assert_jvp, _square, _square_jvp, {}),
    "check_hvp": (check_hvp, _cube_sum, _cube_sum_hvp, {"grad": _cube_sum_grad}),
    "assert_hvp": (assert_hvp, _cube_sum, _cube_sum_hvp, {"grad": _cube_sum_grad}),
    "check_layer": (check_layer, None, None, {}),
    "assert_layer": (assert_layer, None, None, {}),
}
#: The same checks for a function of two inputs (x, y), used by rows with ``two_inputs``.
TWO_INPUTS = {
    "vjp": (lambda x, y: x * y, lambda g, x, y: (g * y, g * x)),
    "jvp": (lambda x, y: x * y, lambda t, x, y: t[0] * y + x * t[1]),
    "hvp": (lambda x, y: (x * y).sum(), lambda v, x, y: (v[1], v[0])),
}
ORACLE_FUNCTIONS = {
    "numeric_vjp": numeric_vjp,
    "torch_vjp": torch_vjp,
    "jax_vjp": jax_vjp,
    "complex_step_vjp": complex_step_vjp,
}
MODES = {"Fast": Fast, "Exhaustive": Exhaustive}

ALL_CHECKS = tuple(CHECKS)
FN_CHECKS = tuple(e for e in CHECKS if "layer" not in e)
#: Checks whose direction is a cotangent (output space) and which take ``mode=``.
VJP_LIKE = ("check_vjp", "assert_vjp", "check_layer", "assert_layer")
#: Checks whose direction lives in the input space (tangents, HVP vectors); no ``mode=``.
FORWARD = ("check_jvp", "assert_jvp", "check_hvp", "assert_hvp")
LAYERS = ("check_layer", "assert_layer")
TAKES_INPUTS = ALL_CHECKS + tuple(ORACLE_FUNCTIONS)
#: The entry points that convert every input to float64 (a layer passes its inputs to
#: ``forward`` unchanged: integer labels and other inputs it does not differentiate).
ALL_WITH_FN = FN_CHECKS + tuple(ORACLE_FUNCTIONS)

_X = np.array([0.5, -1.5])
#: The direction of the default call: fn(_X) has _X's shape, so it is a cotangent for the
#: VJP-like checks and a tangent / HVP vector for the others.
_D = np.array([1.0, 2.0])


def _kind(entry):
    return entry.split("_")[1]


def _marks(entry):
    if entry == "torch_vjp":
        return [pytest.mark.torch]
    if entry == "jax_vjp":
        return [pytest.mark.jax]
    return []


def _resolve(value):
    """Table values built at call time (an executor, a torch tensor): zero-argument thunks."""
    return value() if isinstance(value, _Later) else value


class _Later:
    """Wraps a zero-argument function whose result is the value of a table cell."""

    def __init__(self, build):
        self.build = build

    def __call__(self):
        return self.build()

    def __repr__(self):
        return f"<built at call time: {getattr(self.build, '__name__', 'lambda')}>"


def _call(entry, changes):
    """Run ``entry`` with the default call changed by ``changes``; return what it returns."""
    args = {k: _resolve(v) for k, v in changes.items()}
    if entry in MODES:
        return MODES[entry](**args)
    inputs = args.pop("inputs", (_X,))
    if args.pop("two_inputs", False):
        inputs = (_X, _X)
        fn, derivative = TWO_INPUTS[_kind(entry)]
        args.setdefault("fn", fn)
        args.setdefault("derivative", derivative)
        if _kind(entry) == "hvp":
            args.setdefault("grad", lambda x, y: (y, x))
    if entry in ORACLE_FUNCTIONS:
        fn = args.pop("fn", _square)
        cotangent = args.pop("direction", _D)
        return ORACLE_FUNCTIONS[entry](fn, inputs, cotangent, **args)
    run, fn, derivative, extra = CHECKS[entry]
    options = {"direction": _D, **extra, **args}
    if fn is None:
        return run(options.pop("layer", _SquareLayer()), inputs, **options)
    return run(options.pop("fn", fn), options.pop("derivative", derivative), inputs, **options)


def _default_call_passes(entry):
    result = _call(entry, {})
    if entry in CHECKS:
        assert result.ok, str(result)
    else:
        (g,) = result
        np.testing.assert_allclose(g, 2.0 * _X * _D, rtol=1e-9)


@pytest.mark.parametrize("entry", [pytest.param(e, marks=_marks(e)) for e in TAKES_INPUTS])
def test_the_default_call_of_every_entry_point_passes(entry):
    # Every row below changes one thing of this call: the error is that change's.
    _default_call_passes(entry)


# --- what works -----------------------------------------------------------------------------

# (check_layer is not here: a layer's integer inputs are labels, held fixed, by design.)
ENTRY_POINTS = [
    "check_vjp",
    "assert_vjp",
    "check_jvp",
    "check_hvp",
    "numeric_vjp",
    "complex_step_vjp",
    pytest.param("torch_vjp", marks=pytest.mark.torch),
    pytest.param("jax_vjp", marks=pytest.mark.jax),
]


def _accepts(entry, inputs, direction):
    """Run one entry point on ``inputs``; return the report or the gradients (checked)."""
    if entry in CHECKS:
        d = direction if _kind(entry) in ("vjp", "layer") else np.ones(np.shape(inputs[0]))
        # The derivative along d is 2 x d (6 x d for the HVP): where it is 0 everywhere (x or
        # d all zero) no mistake could show, and the check is inconclusive (the assert_*
        # forms raise InconclusiveCheck); an empty input passes with nothing compared. It
        # must never fail a right derivative.
        # Below |x| ~ 1e-154 the square (the cube's gradient) underflows: fn's outputs round to
        # 0 at every step, the derivative cannot be resolved, and inconclusive is the answer.
        # So where the contracted output d x^2 underflows (x = 5e-85 with d = 1.4e-275: the
        # true VJP, 1.4e-359, is 0 in float64, and so is any other).
        x64 = np.asarray(inputs[0], dtype=np.float64)
        d64 = np.abs(np.asarray(d, dtype=np.float64))
        if np.any((np.abs(x64) > 1e-150) & (d64 * x64 * x64 > 1e-290)):
            report = _call(entry, {"inputs": inputs, "direction": d})
            assert report.ok, str(report)
            return report
        try:
            report = _call(entry, {"inputs": inputs, "direction": d})
        except InconclusiveCheck as exc:
            report = exc.report
        assert report.status in ("inconclusive", "passed"), str(report)
        return report
    return _call(entry, {"inputs": inputs, "direction": direction})


_REAL_DTYPES = [
    np.float16, np.float32, np.float64,
    np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64,
]  # fmt: skip
_LAYOUTS = ["contiguous", "fortran", "reversed", "strided", "broadcast", "transposed"]


def _layout(base, layout):
    """A view of ``base``'s values (or of its first row, for ``broadcast``) in another layout."""
    if base.ndim == 0 or base.size == 0 or layout == "contiguous":
        return base
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "reversed":  # negative strides
        return np.ascontiguousarray(base[::-1])[::-1]
    if layout == "strided":
        return np.repeat(base, 2, axis=0)[::2]
    if layout == "broadcast":  # zero strides, read-only
        return np.broadcast_to(base[:1], base.shape)
    return np.ascontiguousarray(base.T).T


@st.composite
def real_inputs(draw):
    """A real array of any float or integer dtype, shape (0-d, empty), layout, writeability."""
    dtype = np.dtype(draw(st.sampled_from(_REAL_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    if dtype.kind == "f":
        elements = st.floats(-100, 100, width=dtype.itemsize * 8)
    else:
        lo = 0 if dtype.kind == "u" else -100
        elements = st.integers(lo, 100)
    x = _layout(draw(hnp.arrays(dtype, shape, elements=elements)), draw(st.sampled_from(_LAYOUTS)))
    if draw(st.booleans()) and x.flags.writeable:
        x.flags.writeable = False
    return x


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@settings(max_examples=15)
@given(x=real_inputs(), data=st.data())
@example(x=np.array(2.5, dtype=np.float16), data=None)
@example(x=np.zeros((0, 3), dtype=np.int32), data=None)
def test_real_arrays_of_any_dtype_shape_and_layout_work(entry, x, data):
    x64 = np.asarray(x, dtype=np.float64)
    cot = (
        np.arange(1.0, x64.size + 1.0).reshape(x64.shape)
        if data is None
        else data.draw(
            hnp.arrays(np.float64, x64.shape, elements=st.floats(-2, 2)), label="cotangent"
        )
    )
    before = (x.copy(), x.dtype, x.strides, x.flags.writeable)
    result = _accepts(entry, (x,), cot)
    if entry in CHECKS:
        if x.dtype != np.float64:
            note = f"given as {x.dtype}; it was evaluated in float64"
            assert any(note in n for n in result.notes)
    else:
        (g,) = result
        assert g.dtype == np.float64 and g.shape == x.shape
        np.testing.assert_allclose(g, 2.0 * x64 * cot, rtol=1e-9, atol=1e-9)
    assert np.array_equal(x, before[0]) and (x.dtype, x.strides, x.flags.writeable) == before[1:]


PLAIN_PYTHON = [
    pytest.param(2.5, 4.0, id="float"),
    pytest.param(3, 1.5, id="int"),
    pytest.param([1.0, -2.0], [1.0, 0.5], id="list"),
    pytest.param([[1, 2], [3, 4]], np.ones((2, 2)), id="nested list of ints"),
    pytest.param(np.float32(1.5), 1.0, id="numpy scalar"),
    pytest.param(np.ones((2, 2), dtype=np.float32).view(np.matrix), np.ones((2, 2)), id="matrix"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("x", "cot"), PLAIN_PYTHON)
def test_python_numbers_lists_and_array_likes_work(entry, x, cot):
    result = _accepts(entry, (x,), cot)
    if entry not in CHECKS:
        np.testing.assert_allclose(result[0], 2.0 * np.asarray(x, dtype=float) * cot, rtol=1e-9)


def test_a_bare_array_or_number_is_the_only_input():
    assert check_vjp(_square, _square_vjp, np.array([1.0, 2.0])).ok
    assert check_vjp(_square, _square_vjp, 1.5).ok
    assert check_jvp(_square, _square_jvp, np.array([1.0, 2.0])).ok
    assert check_layer(_SquareLayer(), np.array([1.0, 2.0])).ok
    (g,) = numeric_vjp(_square, np.array([1.0, 2.0]), np.ones(2))
    np.testing.assert_allclose(g, [2.0, 4.0], rtol=1e-10)
    (g,) = complex_step_vjp(_square, 1.5, 1.0)
    assert g.tolist() == 3.0


def test_the_docstring_says_what_is_accepted_and_what_raises():
    doc = " ".join(check_vjp.__doc__.split())
    accepted_kinds = ("integer dtype", "Python numbers", "nested lists", "0-d and empty")
    accepted_kinds += ("read-only",)
    for accepted in accepted_kinds:
        assert accepted in doc, accepted
    for rejected in ("boolean", "complex", "NaN or inf in an input", "negative seed"):
        assert rejected in doc, rejected


# --- one table for argument validation ------------------------------------------------------


def _torch_tensor_requiring_grad():
    import torch

    return torch.ones(2, dtype=torch.float64, requires_grad=True)


def _shut_down(kind):
    def build():
        executor = kind(max_workers=1)
        executor.shutdown()
        return executor

    build.__name__ = f"shut down {kind.__name__}"
    return build


def _exhaustive_on(kind):
    build = _shut_down(kind)
    return _Later(lambda: Exhaustive(executor=build()))


# (id, entry points, changes to the default call, error, fragments the message must contain)
# "{direction}" in a fragment is what the entry point calls its direction: "direction" for
# the checks, "cotangent" for the oracle functions.
BAD_ARGUMENTS = [
    # inputs: the container
    ("inputs None", ALL_WITH_FN, dict(inputs=None), InvalidArgumentType,
     ["inputs", "tuple of arrays"]),
    ("inputs None", LAYERS, dict(inputs=None), InvalidArgumentType,
     ["inputs must be a tuple with one entry per argument of layer.forward", "NoneType"]),
    ("inputs a dict", TAKES_INPUTS, dict(inputs={"x": _X}), InvalidArgumentType,
     ["inputs", "tuple"]),
    ("inputs a set", TAKES_INPUTS, dict(inputs={1.0}), InvalidArgumentType, ["inputs", "tuple"]),
    ("inputs a string", ALL_WITH_FN, dict(inputs="ab"), InvalidArgumentType,
     ["inputs", "tuple"]),
    ("inputs empty", TAKES_INPUTS, dict(inputs=()), InvalidArgument, ["inputs is empty"]),
    ("more inputs than fn takes", FN_CHECKS, dict(inputs=[1.0, 2.0]), InvalidArgument,
     ["fn cannot take 2 positional", "one array per positional argument"]),
    ("the derivative takes no direction", ("check_vjp", "assert_vjp"),
     dict(derivative=lambda x: x), InvalidArgument,
     ["vjp cannot take 2", "vjp(cotangent, *inputs)"]),
    ("the derivative takes no direction", ("check_jvp", "assert_jvp"),
     dict(derivative=lambda x: x), InvalidArgument,
     ["jvp cannot take 2", "jvp(tangents, *inputs)"]),
    ("the derivative takes no direction", ("check_hvp", "assert_hvp"),
     dict(derivative=lambda x: x), InvalidArgument,
     ["hvp cannot take 2", "hvp(vectors, *inputs)"]),
    # inputs: one element
    ("input None", ALL_WITH_FN, dict(inputs=(None,)), InvalidArgumentType,
     ["inputs[0] is None"]),
    ("input bool", ALL_WITH_FN, dict(inputs=(np.array([True, False]),)), InvalidArgumentType,
     ["inputs[0]", "bool", "no derivative"]),
    ("input Python bool", ALL_WITH_FN, dict(inputs=(True,)), InvalidArgumentType,
     ["inputs[0]", "bool"]),
    ("input complex", ALL_WITH_FN, dict(inputs=(_X + 1j,)), InvalidArgumentType,
     ["inputs[0]", "complex", "real and imaginary parts"]),
    ("input object dtype", ALL_WITH_FN, dict(inputs=(np.array([1.0, 2.0], dtype=object),)),
     InvalidArgumentType, ["inputs[0]", "dtype object", "real numeric"]),
    ("input Python ints too big", ALL_WITH_FN, dict(inputs=([2**70, 1],)), InvalidArgumentType,
     ["inputs[0]", "dtype object"]),
    ("input strings", ALL_WITH_FN, dict(inputs=(np.array(["1.0", "2"]),)), InvalidArgumentType,
     ["inputs[0]", "<U3", "real numeric"]),
    ("input datetime", ALL_WITH_FN,
     dict(inputs=(np.array(["2020-01-01"], dtype="datetime64[D]"),)),
     InvalidArgumentType, ["inputs[0]", "datetime64"]),
    ("input structured", ALL_WITH_FN, dict(inputs=(np.zeros(2, dtype=[("a", float)]),)),
     InvalidArgumentType, ["inputs[0]", "real numeric"]),
    ("input ragged list", ALL_WITH_FN, dict(inputs=([[1.0], [1.0, 2.0]],)), InvalidArgumentType,
     ["inputs[0] could not be converted", "inhomogeneous"]),
    ("input masked", ALL_WITH_FN, dict(inputs=(np.ma.array(_X, mask=[0, 1]),)),
     InvalidArgumentType, ["inputs[0] is a masked array", "mask would be ignored"]),
    ("input torch tensor requiring grad", ALL_WITH_FN,
     dict(inputs=_Later(lambda: (_torch_tensor_requiring_grad(),))), InvalidArgumentType,
     ["inputs[0] could not be converted", "detach"]),
    ("input NaN", ALL_WITH_FN, dict(inputs=(np.array([0.5, np.nan]),)), InvalidArgument,
     ["inputs[0] contains NaN or inf", "(1,)", "finite point"]),
    ("input inf", ALL_WITH_FN, dict(inputs=(np.array([np.inf, 0.5]),)), InvalidArgument,
     ["inputs[0] contains NaN or inf", "(0,)"]),
    ("input -inf, second input", ("check_vjp", "assert_vjp"),
     dict(fn=lambda x, y: x * y, derivative=lambda g, x, y: (g * y, g * x),
          inputs=(_X, np.array([1.0, -np.inf]))),
     InvalidArgument, ["inputs[1] contains NaN or inf"]),
    ("input float16 inf", ALL_WITH_FN, dict(inputs=(np.array([np.inf, 1], dtype=np.float16),)),
     InvalidArgument, ["inputs[0] contains NaN or inf"]),
    # a layer's inputs go to forward unchanged; the gradients it returns must be of floats
    ("input None", LAYERS, dict(inputs=(None,)), UserFunctionError,
     ["layer.forward raised TypeError"]),
    ("input bool", LAYERS, dict(inputs=(np.array([True, False]),)), InvalidArgument,
     ["input 0 has dtype bool", "cannot be differentiated", "wrt="]),
    ("input Python bool", LAYERS, dict(inputs=(True,), direction=None), InvalidArgument,
     ["input 0 has", "bool", "cannot be differentiated"]),
    ("input integers", LAYERS, dict(inputs=(np.array([1, 2]),)), InvalidArgument,
     ["input 0 has dtype int64", "integer inputs (labels) cannot be differentiated"]),
    ("input complex", LAYERS, dict(inputs=(_X + 1j,)), UserFunctionError,
     ["layer.forward returned complex values"]),
    ("input object dtype", LAYERS, dict(inputs=(np.array([1.0, 2.0], dtype=object),)),
     UserFunctionError, ["layer.forward returned", "dtype object", "not a real numeric array"]),
    ("input strings", LAYERS, dict(inputs=(np.array(["1.0", "2"]),)), UserFunctionError,
     ["layer.forward raised", "multiply"]),
    ("input ragged list", LAYERS, dict(inputs=([[1.0], [1.0, 2.0]],)), UserFunctionError,
     ["layer.forward raised TypeError"]),
    ("input torch tensor requiring grad", LAYERS,
     dict(inputs=_Later(lambda: (_torch_tensor_requiring_grad(),))), InvalidArgumentType,
     ["inputs[0]", "detach"]),
    # the direction: cotangent, tangents, HVP vectors
    ("direction longer", TAKES_INPUTS, dict(direction=np.ones(3)), InvalidArgument,
     ["{direction}", "shape", "(2,)", "(3,)"]),
    ("direction with an extra axis", TAKES_INPUTS, dict(direction=np.ones((2, 1))),
     InvalidArgument, ["{direction}", "(2, 1)"]),
    ("direction a scalar for a vector", TAKES_INPUTS, dict(direction=1.0), InvalidArgument,
     ["{direction}", "shape", "()"]),
    ("direction None", tuple(ORACLE_FUNCTIONS), dict(direction=None), InvalidArgumentType,
     ["{direction} is None"]),
    ("direction NaN", TAKES_INPUTS, dict(direction=np.array([1.0, np.nan])), InvalidArgument,
     ["{direction} contains NaN or inf"]),
    ("direction inf", TAKES_INPUTS, dict(direction=np.array([-np.inf, 1.0])), InvalidArgument,
     ["{direction} contains NaN or inf", "(0,)"]),
    ("direction complex", TAKES_INPUTS, dict(direction=_D + 0j), InvalidArgumentType,
     ["{direction}", "complex"]),
    ("direction bool", TAKES_INPUTS, dict(direction=np.array([True, False])),
     InvalidArgumentType, ["{direction}", "bool"]),
    ("direction strings", TAKES_INPUTS, dict(direction=np.array(["a", "b"])),
     InvalidArgumentType, ["{direction}", "<U1"]),
    ("direction a string", ALL_WITH_FN, dict(direction="ab"), InvalidArgumentType,
     ["{direction}", "<U2"]),
    ("direction an object", TAKES_INPUTS, dict(direction=np.array([object(), 1.0])),
     InvalidArgumentType, ["{direction}", "dtype object"]),
    ("direction two arrays for one input", FORWARD, dict(direction=(_D, _D)), InvalidArgument,
     ["direction must give one array per input (1), got 2"]),
    ("direction two arrays for one output", VJP_LIKE, dict(direction=(_D, _D)), InvalidArgument,
     ["direction must have the shape of", "(2, 2)"]),
    ("direction one bare array for two inputs", FORWARD, dict(two_inputs=True, direction=_D),
     InvalidArgumentType, ["direction must be a tuple with one array per input (2)", "ndarray"]),
    ("direction three arrays for two inputs", FORWARD,
     dict(two_inputs=True, direction=(_D, _D, _D)), InvalidArgument,
     ["direction must give one array per input (2), got 3"]),
    ("direction one array for two inputs in a tuple", FORWARD,
     dict(two_inputs=True, direction=(_D,)), InvalidArgument,
     ["direction must give one array per input (2), got 1"]),
    ("direction's second array of the wrong shape", FORWARD,
     dict(two_inputs=True, direction=(_D, np.ones(3))), InvalidArgument,
     ["direction[1] must have the shape of its input (2,), got (3,)"]),
    ("direction's second array NaN", FORWARD,
     dict(two_inputs=True, direction=(_D, np.array([np.nan, 1.0]))), InvalidArgument,
     ["direction[1] contains NaN or inf"]),
    ("direction a dict", FORWARD, dict(two_inputs=True, direction={"x": _D, "y": _D}),
     InvalidArgumentType, ["direction must be a tuple with one array per input", "dict"]),
    # the functions
    ("fn not callable", ALL_WITH_FN, dict(fn=3.0), InvalidArgumentType,
     ["fn must be callable", "float"]),
    ("fn None", ALL_WITH_FN, dict(fn=None), InvalidArgumentType,
     ["fn must be callable", "NoneType"]),
    ("vjp not callable", ("check_vjp", "assert_vjp"), dict(derivative=None), InvalidArgumentType,
     ["vjp must be callable", "NoneType"]),
    ("jvp not callable", ("check_jvp", "assert_jvp"), dict(derivative="d"), InvalidArgumentType,
     ["jvp must be callable", "str"]),
    ("hvp not callable", ("check_hvp", "assert_hvp"), dict(derivative=np.ones(2)),
     InvalidArgumentType, ["hvp must be callable", "ndarray"]),
    ("grad not callable", ("check_hvp", "assert_hvp"), dict(grad=1), InvalidArgumentType,
     ["grad must be callable", "int"]),
    ("the numeric HVP oracle without a gradient", ("check_hvp", "assert_hvp"), dict(grad=None),
     InvalidArgument, ["grad=", "torch_fn= / jax_fn="]),
    ("layer without backward", ("check_layer", "assert_layer"), dict(layer=object()),
     InvalidArgumentType, ["layer must have callable forward and backward", "object"]),
    ("torch_fn missing", ALL_CHECKS, dict(against="torch"), InvalidArgument,
     ["against includes 'torch'", "torch_fn= must be given"]),
    ("jax_fn missing", ALL_CHECKS, dict(against=("numeric", "jax")), InvalidArgument,
     ["against includes 'jax'", "jax_fn= must be given"]),
    ("torch_fn not callable", ALL_CHECKS, dict(against="torch", torch_fn=1), InvalidArgumentType,
     ["torch_fn must be callable", "int"]),
    ("torch_fn not callable, not in against", ALL_CHECKS, dict(torch_fn=np.ones(2)),
     InvalidArgumentType, ["torch_fn must be callable", "ndarray"]),
    ("jax_fn not callable", ALL_CHECKS, dict(against="jax", jax_fn="f"), InvalidArgumentType,
     ["jax_fn must be callable", "str"]),
    ("torch_vjp's torch_fn not callable", ("torch_vjp",), dict(fn=[1]), InvalidArgumentType,
     ["torch_fn must be callable", "list"]),
    ("jax_vjp's jax_fn not callable", ("jax_vjp",), dict(fn=[1]), InvalidArgumentType,
     ["jax_fn must be callable", "list"]),
    # against
    ("against unknown", ALL_CHECKS, dict(against="finite-differences"), InvalidArgument,
     ["against must name oracles among", "'finite-differences'"]),
    ("against wrong case", ALL_CHECKS, dict(against=["Numeric"]), InvalidArgument,
     ["against must name oracles among", "'Numeric'"]),
    ("against None", ALL_CHECKS, dict(against=None), InvalidArgumentType,
     ["against must be one of", "or a sequence of them", "None"]),
    ("against a number", ALL_CHECKS, dict(against=3), InvalidArgumentType, ["against", "got 3"]),
    ("against empty", ALL_CHECKS, dict(against=[]), InvalidArgument,
     ["against is empty", "name at least one of"]),
    ("against an empty string", ALL_CHECKS, dict(against=""), InvalidArgument,
     ["against must name oracles among", "''"]),
    ("against a comma-separated string", ALL_CHECKS, dict(against="numeric,torch"),
     InvalidArgument, ["against must name oracles among", "'numeric,torch'"]),
    ("against repeated", ALL_CHECKS, dict(against=("numeric", "numeric")), InvalidArgument,
     ["against names an oracle twice"]),
    ("against nested", ALL_CHECKS, dict(against=[["numeric"]]), InvalidArgument,
     ["against must name oracles among", "['numeric']"]),
    ("against an oracle the check does not support", FORWARD, dict(against="complex"),
     InvalidArgument, ["does not support against='complex'", "its oracles are numeric"]),
    ("against an unsupported oracle among others", FORWARD, dict(against=("numeric", "complex")),
     InvalidArgument, ["does not support against='complex'"]),
    # tolerances
    *[
        row
        for tol in ("rtol", "atol")
        for row in [
            (f"{tol} a string", ALL_CHECKS, {tol: "1e-3"}, InvalidArgumentType,
             [tol, "must be a non-negative real number", "'1e-3'"]),
            (f"{tol} an array", ALL_CHECKS, {tol: np.array([1e-3])}, InvalidArgumentType,
             [tol, "must be a non-negative real number"]),
            (f"{tol} a 0-d array", ALL_CHECKS, {tol: np.array(1e-3)}, InvalidArgumentType,
             [tol, "must be a non-negative real number"]),
            (f"{tol} True", ALL_CHECKS, {tol: True}, InvalidArgumentType, [tol, "True"]),
            (f"{tol} complex", ALL_CHECKS, {tol: 1e-3j}, InvalidArgumentType,
             [tol, "must be a non-negative real number"]),
            (f"{tol} negative", ALL_CHECKS, {tol: -1e-3}, InvalidArgument,
             [f"{tol} must be finite and >= 0", "-0.001"]),
            (f"{tol} NaN", ALL_CHECKS, {tol: float("nan")}, InvalidArgument,
             [f"{tol} must be finite and >= 0", "nan"]),
            (f"{tol} inf", ALL_CHECKS, {tol: float("inf")}, InvalidArgument,
             [f"{tol} must be finite and >= 0", "inf"]),
            (f"{tol} -inf", ALL_CHECKS, {tol: -np.inf}, InvalidArgument,
             [f"{tol} must be finite and >= 0"]),
        ]
    ],
    # seeds
    ("seed a float", ALL_CHECKS + ("Fast",), dict(seed=1.5), InvalidArgumentType,
     ["seed must be an int >= 0 or None", "1.5"]),
    ("seed an integral float", ALL_CHECKS + ("Fast",), dict(seed=2.0), InvalidArgumentType,
     ["seed must be an int >= 0 or None", "2.0"]),
    ("seed a string", ALL_CHECKS + ("Fast",), dict(seed="1"), InvalidArgumentType,
     ["seed", "'1'"]),
    ("seed True", ALL_CHECKS + ("Fast",), dict(seed=True), InvalidArgumentType,
     ["seed", "True"]),
    ("seed negative", ALL_CHECKS + ("Fast",), dict(seed=-1), InvalidArgument,
     ["seed must be an int >= 0", "-1"]),
    ("seed a negative NumPy int", ALL_CHECKS + ("Fast",), dict(seed=np.int64(-3)),
     InvalidArgument, ["seed must be an int >= 0", "-3"]),
    ("seed a Generator", ALL_CHECKS + ("Fast",), dict(seed=np.random.default_rng(0)),
     InvalidArgumentType, ["seed must be an int >= 0 or None", "Generator"]),
    ("seed a SeedSequence", ALL_CHECKS + ("Fast",), dict(seed=np.random.SeedSequence(0)),
     InvalidArgumentType, ["seed must be an int >= 0 or None"]),
    # modes
    ("mode unknown", VJP_LIKE, dict(mode="bogus"), InvalidArgument,
     ["mode must be one of", "'auto', 'fast', 'exhaustive', 'ladder'", "'bogus'"]),
    ("mode wrong case", VJP_LIKE, dict(mode="Fast"), InvalidArgument,
     ["mode must be one of", "'Fast'"]),
    ("mode a number", VJP_LIKE, dict(mode=3), InvalidArgumentType,
     ["mode must be one of", "oracles.Fast or oracles.Exhaustive", "int"]),
    ("mode None", VJP_LIKE, dict(mode=None), InvalidArgumentType, ["mode must be one of"]),
    ("mode the class, not an instance", VJP_LIKE, dict(mode=Fast), InvalidArgumentType,
     ["mode must be one of", "type"]),
    ("mode on a check that has none", FORWARD, dict(mode="fast"), TypeError,
     ["unexpected keyword argument 'mode'"]),
    # names
    ("names too many", ALL_CHECKS, dict(names=["a", "b"]), InvalidArgument,
     ["names must give one name per input (1), got 2"]),
    ("names too few", FN_CHECKS, dict(two_inputs=True, names=["a"]), InvalidArgument,
     ["names must give one name per input (2), got 1"]),
    ("names empty", ALL_CHECKS, dict(names=[]), InvalidArgument,
     ["names must give one name per input (1), got 0"]),
    ("names a string", ALL_CHECKS, dict(names="x"), InvalidArgumentType,
     ["names must be a list or tuple of strings"]),
    ("names a number", ALL_CHECKS, dict(names=5), InvalidArgumentType, ["names", "5"]),
    ("names not strings", ALL_CHECKS, dict(names=[0]), InvalidArgumentType,
     ["names[0] must be a string", "0"]),
    ("names a dict", ALL_CHECKS, dict(names={"x": "y"}), InvalidArgumentType,
     ["names must be a list or tuple of strings"]),
    ("names repeated", FN_CHECKS, dict(two_inputs=True, names=["a", "a"]), InvalidArgument,
     ["names gives 'a' twice (names[0] and names[1])", "must be distinct"]),
    ("names an empty string", ALL_CHECKS, dict(names=[""]), InvalidArgument,
     ["names[0] is ''", "a name the report can show"]),
    ("names blank", ALL_CHECKS, dict(names=["  "]), InvalidArgument, ["names[0] is '  '"]),
    # a layer's params=: one parameter named twice, or a view named instead of what it views
    ("params one slot spelled twice", LAYERS,
     dict(layer=_Later(_ScaleLayer), params={"params['w']": "grads['w']",
                                             'params["w"]': "grads['w']"}),
     InvalidArgument, ["params names layer.params['w'] and layer.params['w']",
                       "one array (the same object)", "name it once"]),
    ("params two places of one array", LAYERS,
     dict(layer=_Later(lambda: _ScaleLayer(shared=True)),
          params={"params['w']": "grads['w']", "params['v']": "grads['v']"}),
     InvalidArgument, ["params names layer.params['w'] and layer.params['v']",
                       "one array (the same object)"]),
    ("params a view of a parameter", LAYERS,
     dict(layer=_Later(lambda: _ScaleLayer(viewed=True)), params={"wr": "grads['w']"}),
     InvalidArgument, ["params names layer.wr, a view of layer.params['w']",
                       "name the array it views instead"]),
    # executors
    ("executor not an Executor", ("Exhaustive",), dict(executor=3), InvalidArgumentType,
     ["executor must be a concurrent.futures.Executor or None", "int"]),
    ("executor a class", ("Exhaustive",), dict(executor=ThreadPoolExecutor), InvalidArgumentType,
     ["executor must be a concurrent.futures.Executor or None", "type"]),
    ("executor a function", ("Exhaustive",), dict(executor=map), InvalidArgumentType,
     ["executor must be a concurrent.futures.Executor"]),
    ("executor a thread pool already shut down", VJP_LIKE,
     dict(mode=_exhaustive_on(ThreadPoolExecutor)), InvalidArgument,
     ["executor (ThreadPoolExecutor) cannot run the check's chunks", "shutdown",
      "not shut down"]),
    ("executor a process pool already shut down", VJP_LIKE,
     dict(mode=_exhaustive_on(ProcessPoolExecutor)), InvalidArgument,
     ["executor (ProcessPoolExecutor) cannot run the check's chunks", "shutdown"]),
    ("executor with no submit", VJP_LIKE,
     dict(mode=_Later(lambda: Exhaustive(executor=Executor()))), InvalidArgument,
     ["executor (Executor) cannot run", "submit() is not implemented"]),
    # the modes' own options
    ("directions zero", ("Fast",), dict(directions=0), InvalidArgument,
     ["directions must be at least 1", "0"]),
    ("directions a float", ("Fast",), dict(directions=1.5), InvalidArgumentType,
     ["directions must be an int", "1.5"]),
    ("directions True", ("Fast",), dict(directions=True), InvalidArgumentType,
     ["directions must be an int", "True"]),
    ("max_named negative", ("Fast",), dict(max_named=-2), InvalidArgument,
     ["max_named must be at least 1"]),
    ("max_named a string", ("Fast",), dict(max_named="4"), InvalidArgumentType,
     ["max_named must be an int"]),
    ("exhaustive not an Exhaustive", ("Fast",), dict(exhaustive="exhaustive"),
     InvalidArgumentType, ["exhaustive must be an oracles.Exhaustive", "str"]),
    ("progress a string", ("Exhaustive",), dict(progress="yes"), InvalidArgumentType,
     ["progress must be True, False or None", "'yes'"]),
    ("progress 1", ("Exhaustive",), dict(progress=1), InvalidArgumentType,
     ["progress must be True, False or None"]),
    ("screen None", ("Exhaustive",), dict(screen=None), InvalidArgumentType,
     ["screen must be True or False", "None"]),
    ("chunk_size zero", ("Exhaustive",), dict(chunk_size=0), InvalidArgument,
     ["chunk_size must be a positive int or None", "0"]),
    ("chunk_size negative", ("Exhaustive",), dict(chunk_size=-5), InvalidArgument,
     ["chunk_size must be a positive int or None", "-5"]),
    # (Exhaustive raises InvalidArgument, not InvalidArgumentType, for a wrong type here.)
    ("chunk_size a float", ("Exhaustive",), dict(chunk_size=2.5), InvalidArgument,
     ["chunk_size must be a positive int or None", "2.5"]),
    ("chunk_size True", ("Exhaustive",), dict(chunk_size=True), InvalidArgument,
     ["chunk_size must be a positive int or None", "True"]),
    # the complex step's h
    ("h zero", ("complex_step_vjp",), dict(h=0.0), InvalidArgument,
     ["h must be finite and in (0, 1e-8]", "0.0"]),
    ("h negative", ("complex_step_vjp",), dict(h=-1e-30), InvalidArgument,
     ["h must be finite and in (0, 1e-8]"]),
    ("h too large", ("complex_step_vjp",), dict(h=1e-3), InvalidArgument,
     ["h must be finite and in (0, 1e-8]", "h^2 f'''"]),
    ("h NaN", ("complex_step_vjp",), dict(h=float("nan")), InvalidArgument, ["h must be finite"]),
    ("h True", ("complex_step_vjp",), dict(h=True), InvalidArgumentType,
     ["h must be a positive real number", "True"]),
    ("h a string", ("complex_step_vjp",), dict(h="1e-30"), InvalidArgumentType,
     ["h must be a positive real number", "'1e-30'"]),
    ("h None", ("complex_step_vjp",), dict(h=None), InvalidArgumentType,
     ["h must be a positive real number", "None"]),
]  # fmt: skip


#: Rows that fail today, each a known bug: strict, so a fix shows as XPASS and fails the run
#: until the mark is removed.
KNOWN_BUGS = {}


def _table():
    for case_id, entries, changes, error, fragments in BAD_ARGUMENTS:
        for entry in entries:
            case = f"{entry}: {case_id}"
            marks = _marks(entry)
            if (entry, case_id) in KNOWN_BUGS:
                marks = [*marks, pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[entry, case_id])]
            yield pytest.param(entry, changes, error, fragments, id=case, marks=marks)


def test_the_table_covers_every_entry_point_and_every_kind_of_bad_value():
    covered = {entry for _, entries, _, _, _ in BAD_ARGUMENTS for entry in entries}
    assert covered == set(CHECKS) | set(ORACLE_FUNCTIONS) | set(MODES)
    ids = " ".join(case_id for case_id, *_ in BAD_ARGUMENTS)
    for kind in ("inputs", "direction", "fn", "against", "rtol", "atol", "seed", "mode",
                 "names", "executor", "torch_fn", "jax_fn"):  # fmt: skip
        assert kind in ids, kind
    for entry in ALL_CHECKS:
        for kind in ("seed", "rtol", "atol", "against", "names", "direction"):
            rows = [r for r in BAD_ARGUMENTS if r[0].startswith(kind) and entry in r[1]]
            assert len(rows) >= 3, (entry, kind)


@pytest.mark.parametrize(("entry", "changes", "error", "fragments"), list(_table()))
def test_argument_validation(entry, changes, error, fragments):
    with pytest.raises(error) as info:
        _call(entry, changes)
    if error is not TypeError:  # the one row of Python's own signature check
        assert isinstance(info.value, OraclesError), repr(info.value)
    message = str(info.value)
    # The checks call their direction ``direction=``; the oracle functions ``cotangent``.
    direction = "cotangent" if entry in ORACLE_FUNCTIONS else "direction"
    for fragment in fragments:
        fragment = fragment.replace("{direction}", direction)
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_shut_down_executor_fails_before_any_chunk_runs():
    calls = []

    def fn(x):
        calls.append(1)
        return np.sin(x)

    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()
    x = np.linspace(-1.0, 1.0, 200)  # large enough for the screen: chunks would be submitted
    with pytest.raises(InvalidArgument, match="cannot run the check's chunks"):
        check_vjp(fn, lambda g, x: g * np.cos(x), (x,), mode=Exhaustive(executor=executor))
    before_numerics = len(calls)
    assert check_vjp(fn, lambda g, x: g * np.cos(x), (x,), mode="exhaustive").ok
    # The failed check stopped where the numerics start: it spent none of their evaluations.
    assert before_numerics < (len(calls) - before_numerics) / 10


# --- the strategies ---------------------------------------------------------------------------

_TINY = float(np.finfo(np.float64).tiny)

# (id, building the strategy, error, fragments): all raise when the strategy is built.
BAD_STRATEGY_ARGUMENTS = [
    ("scale below the smallest normal float", lambda: S.arrays((2,), scale=1e-310),
     InvalidArgument, ["scale must be at least", "smallest normal float64", "1e-310"]),
    ("scale the smallest subnormal", lambda: S.cotangents((2,), scale=5e-324), InvalidArgument,
     ["scale must be at least", "smallest normal"]),
    ("logit scale subnormal", lambda: S.logits((2, 3), scale=1e-320), InvalidArgument,
     ["scale must be at least"]),
    ("affine scale subnormal", lambda: S.affine_inputs(scale=1e-309), InvalidArgument,
     ["scale must be at least"]),
    ("offset subnormal", lambda: S.logits((2,), offset=-1e-315), InvalidArgument,
     ["offset must be 0 or at least", "no subnormal"]),
    ("scale zero", lambda: S.arrays((2,), scale=0.0), InvalidArgument, ["scale must be > 0"]),
    ("scale negative", lambda: S.arrays((2,), scale=-1.0), InvalidArgument,
     ["scale must be > 0"]),
    ("scale NaN", lambda: S.arrays((2,), scale=float("nan")), InvalidArgument,
     ["scale must be finite"]),
    ("scale inf", lambda: S.arrays((2,), scale=float("inf")), InvalidArgument,
     ["scale must be finite"]),
    ("scale a Python int beyond float64", lambda: S.arrays((2,), scale=10**400), InvalidArgument,
     ["scale must be finite"]),
    ("scale a string", lambda: S.arrays((2,), scale="1"), InvalidArgumentType,
     ["scale must be a real number", "str"]),
    ("scale True", lambda: S.arrays((2,), scale=True), InvalidArgumentType,
     ["scale must be a real number", "bool"]),
    ("too many dimensions", lambda: S.arrays((1,) * 33), InvalidArgument,
     ["shape must have at most 32 axes, got 33"]),
    ("too many dimensions for logits", lambda: S.logits((2,) * 40), InvalidArgument,
     ["shape must have at most 32 axes, got 40"]),
    ("too many dimensions for labels", lambda: S.class_labels(3, (1,) * 33), InvalidArgument,
     ["batch_shape must have at most 32 axes"]),
    ("too many batch dimensions for affine inputs", lambda: S.affine_inputs(batch_shape=(1,) * 32),
     InvalidArgument, ["batch_shape must have at most 31 axes"]),
    ("shapes with too many dimensions", lambda: S.shapes(max_dims=33), InvalidArgument,
     ["max_dims must be <= 32"]),
    ("a negative size", lambda: S.arrays((2, -1)), InvalidArgument,
     ["shape[1] must be >= 0, got -1"]),
    ("a negative size for labels", lambda: S.class_labels(3, (-2,)), InvalidArgument,
     ["batch_shape[0] must be >= 0, got -2"]),
    ("a negative side", lambda: S.shapes(min_side=-1), InvalidArgument,
     ["min_side must be >= 0, got -1"]),
    ("a negative n_in", lambda: S.affine_inputs(n_in=-3), InvalidArgument,
     ["n_in must be >= 1, got -3"]),
    ("a negative number of classes", lambda: S.class_labels(-1, (2,)), InvalidArgument,
     ["n_classes must be >= 1, got -1"]),
    ("a negative ndim", lambda: S.axes(-2), InvalidArgument, ["ndim must be >= 1, got -2"]),
    ("a float size", lambda: S.arrays((2.0, 3)), InvalidArgumentType,
     ["shape[0] must be an int", "float"]),
    ("a shape that is a string", lambda: S.logits("2x3"), InvalidArgumentType,
     ["shape must be a tuple of ints", "str"]),
    ("elements not a strategy", lambda: S.arrays((2,), elements=[1.0, 2.0]), InvalidArgumentType,
     ["elements must be a SearchStrategy", "list"]),
    ("elements and scale", lambda: S.arrays((2,), elements=st.floats(0, 1), scale=1.0),
     InvalidArgument, ["either scale or elements"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "error", "fragments"),
    [pytest.param(b, e, f, id=i) for i, b, e, f in BAD_STRATEGY_ARGUMENTS],
)
def test_strategy_argument_validation(build, error, fragments):
    with pytest.raises(error) as info:
        build()
    assert isinstance(info.value, OraclesError)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


# (id, strategy, fragments): the strategy is built, and what a user's strategy drew is bad.
BAD_STRATEGY_DRAWS = [
    ("elements strings", S.arrays((3,), elements=st.text()),
     ["the elements strategy must draw real numbers", "str"]),
    ("elements objects", S.arrays((3,), elements=st.builds(object)),
     ["the elements strategy must draw real numbers", "object"]),
    ("elements booleans", S.arrays((2, 2), elements=st.booleans()),
     ["the elements strategy must draw real numbers", "not bool", "bool"]),
    ("elements complex", S.arrays((2,), elements=st.complex_numbers()),
     ["the elements strategy must draw real numbers", "complex"]),
    ("elements NaN", S.arrays((2,), elements=st.just(float("nan"))),
     ["the elements strategy must draw finite numbers", "nan"]),
    ("elements a Python int beyond float64", S.arrays((1,), elements=st.just(10**400)),
     ["the elements strategy must draw finite numbers"]),
    ("scale drawn subnormal", S.arrays((2,), scale=st.just(1e-310)),
     ["the scale strategy drew 1e-310", "at least", "smallest normal"]),
    ("offset drawn subnormal", S.logits((2,), offset=st.just(1e-320)),
     ["the offset strategy drew", "no subnormal"]),
    ("scale drawn a string", S.arrays((2,), scale=st.just("big")),
     ["the scale strategy must draw finite numbers > 0", "'big'"]),
    ("shape drawn with too many dimensions", S.arrays(st.just((1,) * 33)),
     ["the shape strategy must draw tuples of at most 32 non-negative ints"]),
    ("shape drawn with a negative size", S.cotangents(st.just((2, -1))),
     ["the shape strategy must draw tuples of", "non-negative ints", "(2, -1)"]),
    ("labels' batch shape drawn negative", S.class_labels(3, st.just((-1,))),
     ["the batch_shape strategy must draw tuples of", "(-1,)"]),
    ("affine batch shape drawn with 32 axes", S.affine_inputs(batch_shape=st.just((1,) * 32)),
     ["the batch_shape strategy must draw tuples of at most 31"]),
    ("n_in drawn negative", S.affine_inputs(n_in=st.just(-1)),
     ["the n_in strategy must draw ints >= 1", "-1"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "fragments"), [pytest.param(s, f, id=i) for i, s, f in BAD_STRATEGY_DRAWS]
)
def test_bad_draws_from_user_strategies_are_named(strategy, fragments):
    # No shrinking: the first bad draw is the answer (shrinking complex numbers takes seconds).
    @settings(max_examples=50, database=None, phases=[Phase.generate])
    @given(strategy)
    def draw(_):
        pass

    with pytest.raises(InvalidArgument) as info:
        draw()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


@settings(max_examples=60)
@given(
    x=S.arrays(scale=st.sampled_from([1e-300, 1e-200, 1e-10, 1.0])),
    z=S.logits(scale=st.sampled_from([1e-300, 1.0]), offset=st.sampled_from([0.0, 1e-300])),
)
def test_strategies_never_draw_subnormal_numbers(x, z):
    for a in (x, z):
        assert np.all(np.isfinite(a))
        assert not np.any((a != 0) & (np.abs(a) < _TINY)), a


@settings(max_examples=20)
@given(x=S.arrays((3, 2), elements=st.integers(-5, 5) | st.floats(-1, 1) | st.fractions(-2, 2)))
def test_real_numbers_of_any_python_type_are_fine_elements(x):
    assert x.dtype == np.float64 and x.shape == (3, 2) and np.all(np.abs(x) <= 5)


# --- the pytest plugin's options: the same rules, as usage errors at start-up -----------------

BAD_PLUGIN_OPTIONS = [
    ("--oracles-rtol=inf", ["--oracles-rtol must be finite and >= 0", "inf"]),
    ("--oracles-rtol=-1e-3", ["--oracles-rtol must be finite and >= 0", "-0.001"]),
    ("--oracles-atol=-1", ["--oracles-atol must be finite and >= 0", "-1.0"]),
    ("--oracles-atol=nan", ["--oracles-atol must be finite and >= 0", "nan"]),
    ("--oracles=numeric,numeric", ["--oracles names an oracle twice", "'numeric', 'numeric'"]),
    ("--oracles=", ["--oracles is empty", "name at least one of numeric"]),
    ("--oracles=,", ["--oracles is empty"]),
    ("--oracles=fd", ["--oracles must name oracles among numeric, torch, jax", "'fd'"]),
    ("--oracles=numeric,Torch", ["--oracles must name oracles among", "'Torch'"]),
    ("--oracles-examples=0", ["--oracles-examples must be an integer >= 1", "0"]),
]


pytest_plugins = ["pytester"]


def _run_pytest(pytester, *options):
    """pytest in this process on a trivial test file, with the plugin (loaded as installed)."""
    pytester.makepyfile(test_trivial="def test_nothing():\n    pass\n")
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *options)


@pytest.mark.parametrize(
    ("option", "fragments"), BAD_PLUGIN_OPTIONS, ids=[o for o, _ in BAD_PLUGIN_OPTIONS]
)
def test_bad_plugin_options_are_usage_errors_at_start_up(pytester, option, fragments):
    result = _run_pytest(pytester, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    err = result.stderr.str()
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert "passed" not in result.stdout.str()  # no test ran


def test_good_plugin_options_start(pytester):
    result = _run_pytest(
        pytester, "--oracles=numeric,torch,complex", "--oracles-rtol=1e-6", "--oracles-atol=0"
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
