"""Bad input to every public reference function: a right result, or InvalidInput naming it.

One table. Each row of ``SPECS`` is one public function (or layer method),
with arguments for a batch of ``n`` rows and ``c`` classes and what it must
do with each kind of bad value:

==================  ================================================================
kind                expected
==================  ================================================================
list                plain (nested) Python lists: the same result as the arrays
ragged              nested lists of unequal lengths: InvalidInput naming the argument
None                InvalidInput naming the argument (an optional array: its default)
complex             the analytic continuation, or InvalidInput where the function is
                    real by nature (the MLP's loss)
empty batch         0 rows: zeros of the right shapes (an empty array, a sum of 0),
                    or InvalidInput where a mean over the rows is taken
zero classes        0 columns: zeros of the right shapes, or InvalidInput where a
                    softmax over the classes is taken
labels              out of range, negative, float: InvalidInput naming the labels
==================  ================================================================

Every call runs with warnings as errors: a NaN from an empty mean, a
ComplexWarning or a RuntimeWarning fails the row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import reference as R
from reference import InvalidInput, layers, mlp

N, C, N_IN = 3, 4, 5


@dataclass(frozen=True)
class Refused:
    """InvalidInput whose message names ``argument``."""

    argument: str


@dataclass(frozen=True)
class Zeros:
    """Float arrays of these shapes, every entry 0 (an empty array counts)."""

    shapes: tuple


@dataclass(frozen=True)
class Spec:
    """One public callable and what it must do with each bad value.

    ``make(n, c)`` returns its arguments (by name) for ``n`` rows and ``c``
    classes; ``call(**arguments)`` runs it. ``empty`` and ``no_classes`` are
    the outcomes for ``make(0, C)`` and ``make(N, 0)`` (``None``: the
    function has no such axis).
    """

    name: str
    call: Callable
    make: Callable
    arrays: tuple[str, ...]
    labels: str | None = None
    options: tuple[str, ...] = ()
    none_is_default: tuple[str, ...] = ()
    varargs: str | None = None
    real: bool = False
    empty: object = None
    no_classes: object = None
    extra: dict = field(default_factory=dict)


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _labels(n, c):
    return np.arange(n) % max(c, 1)


def _x(n, c):
    return {"x": _normal(1, n, c)}


def _g_x(n, c):
    return {"g": _normal(2, n, c), "x": _normal(1, n, c)}


def _ce(n, c, reduction, *, first=None):
    args = {"logits": _normal(1, n, c), "targets": _labels(n, c), "reduction": reduction}
    if first == "g":
        args = {"g": _normal(2, n) if reduction == "none" else np.float64(1.5), **args}
    elif first == "v":
        args = {"v": _normal(2, n, c), **args}
    return args


def _se(n, c, reduction, *, first=None):
    args = {"pred": _normal(1, n, c), "target": _normal(3, n, c)}
    args.update(reduction=reduction, half=False)
    if first == "g":
        args = {"g": _normal(2, n, c) if reduction == "none" else np.float64(1.5), **args}
    elif first == "v":
        args = {"v": _normal(2, n, c), **args}
    return args


def _affine(n, c, *, g=False):
    args = {"x": _normal(1, n, 3), "W": _normal(2, 3, c), "b": _normal(3, c)}
    return {"g": _normal(4, n, c), **args} if g else args


def _params(c):
    return (_normal(5, N_IN, 3), _normal(6, 3), _normal(7, 3, c), _normal(8, c))


def _mlp(n, c):
    return {"params": _params(c), "X": _normal(9, n, N_IN), "y": _labels(n, c)}


def _rows(*shapes):
    return Zeros(shapes)


def _ce_empty(reduction, shape):
    return Refused("logits") if reduction == "mean" else Zeros((shape,))


def _se_outcomes(reduction, shape_empty, shape_no_classes):
    """(empty batch, zero classes) outcomes of a squared-error function."""
    if reduction == "mean":
        return Refused("pred"), Refused("pred")
    if reduction == "batch_mean":
        return Refused("pred"), Zeros((shape_no_classes,))
    return Zeros((shape_empty,)), Zeros((shape_no_classes,))


def _pair(outcome):
    """The outcome for ``(dpred, dtarget)`` from the outcome for ``dpred``."""
    return Zeros(outcome.shapes * 2) if isinstance(outcome, Zeros) else outcome


def _layer_backward(layer, forward_args, dout):
    layer.forward(*forward_args)
    return layer.backward(dout)


def _affine_backward(W, b, x, dout):
    layer = layers.Affine(W, b)
    layer.forward(x)
    dx = layer.backward(dout)
    return dx, layer.dW, layer.db


def _mlp_backward(n, c):
    args = _mlp(n, c)
    _, cache = mlp.forward(args["params"], args["X"], args["y"])
    return {"params": args["params"], "cache": cache, "g": np.float64(1.5)}


def _elementwise_specs():
    specs = []
    for name in ("tanh", "sigmoid", "relu"):
        fn, vjp = getattr(R, name), getattr(R, f"{name}_vjp")
        cls = getattr(layers, name.capitalize())
        specs += [
            Spec(name, fn, _x, ("x",), empty=_rows((0, C)), no_classes=_rows((N, 0))),
            Spec(
                f"{name}_vjp", vjp, _g_x, ("g", "x"), empty=_rows((0, C)), no_classes=_rows((N, 0))
            ),
            Spec(
                f"{cls.__name__}.forward",
                lambda x, cls=cls: cls().forward(x),
                _x,
                ("x",),
                empty=_rows((0, C)),
                no_classes=_rows((N, 0)),
            ),
            Spec(
                f"{cls.__name__}.backward",
                lambda x, dout, cls=cls: _layer_backward(cls(), (x,), dout),
                lambda n, c: {"x": _normal(1, n, c), "dout": _normal(2, n, c)},
                ("x", "dout"),
                empty=_rows((0, C)),
                no_classes=_rows((N, 0)),
            ),
        ]
    specs.append(
        Spec(
            "tanh_hvp",
            R.tanh_hvp,
            lambda n, c: {
                "v": _normal(2, n, c),
                "x": _normal(1, n, c),
                "weights": _normal(3, n, c),
            },
            ("v", "x", "weights"),
            none_is_default=("weights",),
            empty=_rows((0, C)),
            no_classes=_rows((N, 0)),
        )
    )
    return specs


def _softmax_specs():
    specs = []
    for name in ("softmax", "log_softmax"):
        fn, vjp = getattr(R, name), getattr(R, f"{name}_vjp")
        specs += [
            Spec(
                name,
                fn,
                lambda n, c: {"x": _normal(1, n, c), "axis": -1},
                ("x",),
                options=("axis",),
                empty=_rows((0, C)),
                no_classes=Refused("x"),
            ),
            Spec(
                f"{name}_vjp",
                vjp,
                lambda n, c: {**_g_x(n, c), "axis": -1},
                ("g", "x"),
                options=("axis",),
                empty=_rows((0, C)),
                no_classes=Refused("x"),
            ),
        ]
    specs += [
        Spec(
            "Softmax",
            lambda axis: layers.Softmax(axis=axis).axis,
            lambda n, c: {"axis": -1},
            (),
            options=("axis",),
        ),
        Spec(
            "Softmax.forward",
            lambda x: layers.Softmax().forward(x),
            _x,
            ("x",),
            empty=_rows((0, C)),
            no_classes=Refused("x"),
        ),
        Spec(
            "Softmax.backward",
            lambda x, dout: _layer_backward(layers.Softmax(), (x,), dout),
            lambda n, c: {"x": _normal(1, n, c), "dout": _normal(2, n, c)},
            ("x", "dout"),
            empty=_rows((0, C)),
            no_classes=Refused("x"),
        ),
    ]
    return specs


def _cross_entropy_specs():
    specs = []
    for red in R.losses.CE_REDUCTIONS:
        loss_shape = (0,) if red == "none" else ()
        specs += [
            Spec(
                f"cross_entropy[{red}]",
                R.cross_entropy,
                lambda n, c, red=red: _ce(n, c, red),
                ("logits",),
                labels="targets",
                options=("reduction",),
                empty=_ce_empty(red, loss_shape),
                no_classes=Refused("logits"),
            ),
            Spec(
                f"cross_entropy_vjp[{red}]",
                R.cross_entropy_vjp,
                lambda n, c, red=red: _ce(n, c, red, first="g"),
                ("g", "logits"),
                labels="targets",
                options=("reduction",),
                empty=_ce_empty(red, (0, C)),
                no_classes=Refused("logits"),
            ),
            Spec(
                f"SoftmaxWithLoss.forward[{red}]",
                lambda logits, targets, red=red: layers.SoftmaxWithLoss(reduction=red).forward(
                    logits, targets
                ),
                lambda n, c: {"logits": _normal(1, n, c), "targets": _labels(n, c)},
                ("logits",),
                labels="targets",
                empty=_ce_empty(red, loss_shape),
                no_classes=Refused("logits"),
            ),
            Spec(
                f"SoftmaxWithLoss.backward[{red}]",
                lambda logits, targets, dout, red=red: _layer_backward(
                    layers.SoftmaxWithLoss(reduction=red), (logits, targets), dout
                ),
                lambda n, c, red=red: {
                    "logits": _normal(1, n, c),
                    "targets": _labels(n, c),
                    "dout": _normal(2, n) if red == "none" else np.float64(1.5),
                },
                ("logits", "dout"),
                labels="targets",
                empty=_ce_empty(red, (0, C)),
                no_classes=Refused("logits"),
            ),
        ]
        if red != "none":
            specs.append(
                Spec(
                    f"cross_entropy_hvp[{red}]",
                    R.cross_entropy_hvp,
                    lambda n, c, red=red: _ce(n, c, red, first="v"),
                    ("v", "logits"),
                    labels="targets",
                    options=("reduction",),
                    empty=_ce_empty(red, (0, C)),
                    no_classes=Refused("logits"),
                )
            )
    specs.append(
        Spec(
            "SoftmaxWithLoss",
            lambda reduction: layers.SoftmaxWithLoss(reduction=reduction).reduction,
            lambda n, c: {"reduction": "mean"},
            (),
            options=("reduction",),
        )
    )
    return specs


def _squared_error_specs():
    specs = []
    for red in R.losses.SE_REDUCTIONS:
        loss = (0, C) if red == "none" else ()
        loss_nc = (N, 0) if red == "none" else ()
        empty, no_classes = _se_outcomes(red, loss, loss_nc)
        grad_empty, grad_no_classes = _se_outcomes(red, (0, C), (N, 0))
        specs += [
            Spec(
                f"squared_error[{red}]",
                R.squared_error,
                lambda n, c, red=red: _se(n, c, red),
                ("pred", "target"),
                options=("reduction", "half"),
                empty=empty,
                no_classes=no_classes,
            ),
            Spec(
                f"squared_error_vjp[{red}]",
                R.squared_error_vjp,
                lambda n, c, red=red: _se(n, c, red, first="g"),
                ("g", "pred", "target"),
                options=("reduction", "half"),
                empty=_pair(grad_empty),
                no_classes=_pair(grad_no_classes),
            ),
            Spec(
                f"SquaredErrorLoss.forward[{red}]",
                lambda pred, target, red=red: layers.SquaredErrorLoss(reduction=red).forward(
                    pred, target
                ),
                lambda n, c: {"pred": _normal(1, n, c), "target": _normal(3, n, c)},
                ("pred", "target"),
                empty=empty,
                no_classes=no_classes,
            ),
            Spec(
                f"SquaredErrorLoss.backward[{red}]",
                lambda pred, target, dout, red=red: _layer_backward(
                    layers.SquaredErrorLoss(reduction=red), (pred, target), dout
                ),
                lambda n, c, red=red: {
                    "pred": _normal(1, n, c),
                    "target": _normal(3, n, c),
                    "dout": _normal(2, n, c) if red == "none" else np.float64(1.5),
                },
                ("pred", "target", "dout"),
                empty=grad_empty,
                no_classes=grad_no_classes,
            ),
        ]
        if red != "none":
            specs.append(
                Spec(
                    f"squared_error_hvp[{red}]",
                    R.squared_error_hvp,
                    lambda n, c, red=red: _se(n, c, red, first="v"),
                    ("v", "pred", "target"),
                    options=("reduction", "half"),
                    empty=grad_empty,
                    no_classes=grad_no_classes,
                )
            )
    specs.append(
        Spec(
            "SquaredErrorLoss",
            lambda reduction, half: layers.SquaredErrorLoss(reduction=reduction, half=half).half,
            lambda n, c: {"reduction": "sum", "half": True},
            (),
            options=("reduction", "half"),
        )
    )
    return specs


def _affine_specs():
    return [
        Spec(
            "affine",
            R.affine,
            _affine,
            ("x", "W", "b"),
            empty=_rows((0, C)),
            no_classes=_rows((N, 0)),
        ),
        Spec(
            "affine_vjp",
            R.affine_vjp,
            lambda n, c: _affine(n, c, g=True),
            ("g", "x", "W", "b"),
            empty=_rows((0, 3), (3, C), (C,)),
            no_classes=_rows((N, 3), (3, 0), (0,)),
        ),
        Spec(
            "Affine",
            lambda W, b: (lambda layer: (layer.W, layer.b))(layers.Affine(W, b)),
            lambda n, c: {"W": _normal(2, 3, c), "b": _normal(3, c)},
            ("W", "b"),
            no_classes=_rows((3, 0), (0,)),
        ),
        Spec(
            "Affine.forward",
            lambda W, b, x: layers.Affine(W, b).forward(x),
            _affine,
            ("x", "W", "b"),
            empty=_rows((0, C)),
            no_classes=_rows((N, 0)),
        ),
        Spec(
            "Affine.backward",
            _affine_backward,
            lambda n, c: {**_affine(n, c), "dout": _normal(4, n, c)},
            ("x", "W", "b", "dout"),
            empty=_rows((0, 3), (3, C), (C,)),
            no_classes=_rows((N, 3), (3, 0), (0,)),
        ),
    ]


def _mlp_specs():
    def batch(name, call, *, empty=Refused("X"), labels="y", options=()):
        return Spec(
            name,
            call,
            _mlp if labels else lambda n, c: {k: v for k, v in _mlp(n, c).items() if k != "y"},
            ("params", "X"),
            labels=labels,
            options=options,
            real=True,
            empty=empty,
            no_classes=Refused("params"),
        )

    def flat(n, c):
        return {"vector": np.concatenate([p.ravel() for p in _params(c)]), "sizes": (N_IN, 3, c)}

    return [
        Spec(
            "init_params",
            mlp.init_params,
            lambda n, c: {"sizes": (N_IN, 3, c), "seed": 0},
            ("sizes",),
            options=("seed",),
            real=True,
            no_classes=Refused("sizes"),
        ),
        Spec(
            "layer_sizes",
            mlp.layer_sizes,
            lambda n, c: {"params": _params(c)},
            ("params",),
            real=True,
            no_classes=Refused("params"),
        ),
        Spec(
            "params_to_vector",
            mlp.params_to_vector,
            lambda n, c: {"params": _params(c)},
            ("params",),
            real=True,
            no_classes=Refused("params"),
        ),
        Spec(
            "vector_to_params",
            mlp.vector_to_params,
            flat,
            ("vector", "sizes"),
            real=True,
            no_classes=Refused("sizes"),
        ),
        batch("forward", mlp.forward, options=("activation", "loss")),
        batch("loss_and_grads", mlp.loss_and_grads, options=("activation", "loss")),
        Spec(
            "mlp_loss",
            lambda X, y, params: mlp.mlp_loss(X, y, *params),
            _mlp,
            ("params", "X"),
            labels="y",
            varargs="params",
            real=True,
            empty=Refused("X"),
            no_classes=Refused("params"),
        ),
        Spec(
            "mlp_loss_vjp",
            lambda g, X, y, params: mlp.mlp_loss_vjp(g, X, y, *params),
            lambda n, c: {"g": np.float64(1.5), **_mlp(n, c)},
            ("g", "params", "X"),
            labels="y",
            varargs="params",
            real=True,
            empty=Refused("X"),
            no_classes=Refused("params"),
        ),
        Spec(
            "backward", mlp.backward, _mlp_backward, ("params", "g"), options=("cache",), real=True
        ),
        Spec(
            "sgd_step",
            mlp.sgd_step,
            lambda n, c: {"params": _params(c), "grads": _params(c), "lr": 0.1},
            ("params", "grads", "lr"),
            real=True,
        ),
        batch("predict", mlp.predict, empty=_rows((0, C)), labels=None),
        batch("accuracy", mlp.accuracy),
    ]


SPECS = (
    _elementwise_specs()
    + _softmax_specs()
    + _cross_entropy_specs()
    + _squared_error_specs()
    + _affine_specs()
    + _mlp_specs()
)
_BY_NAME = {s.name: s for s in SPECS}


# --- the bad values -----------------------------------------------------------------------------


def _to_lists(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_to_lists(v) for v in value]
    return value


def _to_complex(value):
    if isinstance(value, tuple | list):
        return tuple(_to_complex(v) for v in value)
    return np.asarray(value) + 0.25j


def _ragged(value):
    rows = np.atleast_2d(np.asarray(value, dtype=float)).tolist()
    return [rows[0] + [0.0]] + rows[1:] if len(rows) > 1 else [rows[0], rows[0] + [0.0]]


def _first_none(value):
    return (None,) + tuple(value[1:])


#: Arguments that are sequences of arrays (a None can also be one of their items).
SEQUENCES = ("params", "grads")


def _cases():
    """``(spec name, kind, argument or None)`` for every applicable combination."""
    cases = []
    for s in SPECS:
        if s.arrays or s.labels:
            cases.append((s.name, "list", None))
        for a in s.arrays:
            if a != s.varargs:
                cases.append((s.name, "None", a))
            if a in SEQUENCES:
                cases.append((s.name, "None in", a))
            cases.append((s.name, "complex", a))
            if a not in SEQUENCES and np.ndim(s.make(N, C)[a]) == 2:
                cases.append((s.name, "ragged", a))
        for a in s.options:
            cases.append((s.name, "None", a))
        if s.labels:
            for kind in (
                "None",
                "complex",
                "labels out of range",
                "labels negative",
                "labels float",
            ):
                cases.append((s.name, kind, s.labels))
        if s.empty is not None:
            cases.append((s.name, "empty batch", None))
        if s.no_classes is not None:
            cases.append((s.name, "zero classes", None))
    return cases


CASES = _cases()


def _case_id(case):
    name, kind, argument = case
    return f"{name}-{kind}" + (f"-{argument}" if argument else "")


def _bad_arguments(s, kind, argument):
    """The arguments of the call, with the bad value in place; and the expected outcome."""
    args = s.make(N, C)
    if kind == "list":
        names = s.arrays + ((s.labels,) if s.labels else ())
        return {k: (_to_lists(v) if k in names else v) for k, v in args.items()}, "same"
    if kind == "empty batch":
        return s.make(0, C), s.empty
    if kind == "zero classes":
        return s.make(N, 0), s.no_classes
    if kind == "None":
        if argument in s.none_is_default:
            return {**args, argument: None}, "default"
        return {**args, argument: None}, Refused(argument)
    if kind == "None in":
        return {**args, argument: _first_none(args[argument])}, Refused(argument)
    if kind == "ragged":
        return {**args, argument: _ragged(args[argument])}, Refused(argument)
    if kind == "complex":
        refused = s.real or argument == s.labels
        return {**args, argument: _to_complex(args[argument])}, (
            Refused(argument) if refused else "analytic"
        )
    bad_labels = {
        "labels out of range": lambda y: np.where(y == y.max(), C, y),
        "labels negative": lambda y: np.where(y == y.max(), -1, y),
        "labels float": lambda y: y.astype(np.float64),
    }
    return {**args, argument: bad_labels[kind](np.asarray(args[argument]))}, Refused(argument)


# --- comparing results --------------------------------------------------------------------------


def _leaves(result):
    """Arrays and scalars of a result (tuples, dicts and layer outputs flattened), in order."""
    if isinstance(result, dict):
        return [leaf for k in sorted(result) for leaf in _leaves(result[k])]
    if isinstance(result, tuple | list):
        return [leaf for r in result for leaf in _leaves(r)]
    return [result]


def _assert_same(got, expected):
    got, expected = _leaves(got), _leaves(expected)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        if isinstance(b, str):
            assert a == b
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert np.asarray(a).dtype == np.asarray(b).dtype


def _flat(result):
    return np.concatenate([np.ravel(np.asarray(r)) for r in _leaves(result)])


def _assert_analytic(s, args, argument):
    """Complex input gives the analytic continuation: complex step = central difference."""
    x = np.asarray(args[argument], dtype=np.float64)
    u = np.random.default_rng(17).standard_normal(x.shape)

    def at(z):
        return _flat(s.call(**{**args, argument: z}))

    h, eps = 1e-20, 1e-6
    stepped = at(x + 1j * h * u)
    np.testing.assert_allclose(stepped.real, at(x), rtol=1e-13, atol=1e-300)
    slope = (at(x + eps * u) - at(x - eps * u)) / (2 * eps)
    np.testing.assert_allclose(stepped.imag / h, slope, rtol=1e-6, atol=1e-8)


def _names(message, argument):
    return re.search(rf"(?<![\w]){re.escape(argument)}(?![\w])", message) is not None


# --- the table ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input(case):
    name, kind, argument = case
    s = _BY_NAME[name]
    args, expected = _bad_arguments(s, kind, argument)
    state = np.geterr()
    if isinstance(expected, Refused):
        with pytest.raises(InvalidInput) as info:
            s.call(**args)
        assert _names(str(info.value), expected.argument), str(info.value)
    elif expected == "same":
        _assert_same(s.call(**args), s.call(**s.make(N, C)))
    elif expected == "default":
        _assert_same(s.call(**args), s.call(**{k: v for k, v in args.items() if k != argument}))
    elif expected == "analytic":
        _assert_analytic(s, s.make(N, C), argument)
        s.call(**args)  # the bad value itself, with warnings as errors
    else:
        leaves = [np.asarray(r) for r in _leaves(s.call(**args))]
        assert tuple(r.shape for r in leaves) == expected.shapes
        for r in leaves:
            assert r.dtype.kind == "f" and np.all(r == 0), r
    assert np.geterr() == state


# --- the table covers everything public ---------------------------------------------------------

#: Public callables that read files, not arrays (their bad input is in test_data.py).
NOT_ARRAY_FUNCTIONS = {"read_idx", "load_mnist"}


def _public_names():
    names = set()
    for name in R.__all__:
        obj = getattr(R, name)
        if callable(obj) and not isinstance(obj, type) and name not in NOT_ARRAY_FUNCTIONS:
            names.add(name)
    names |= {n for n in mlp.__all__ if callable(getattr(mlp, n))}
    for cls_name in layers.__all__:
        cls = getattr(layers, cls_name)
        if cls is layers.LayerStateError:
            continue
        names |= {cls_name, f"{cls_name}.forward", f"{cls_name}.backward"}
    return names


def test_the_table_has_every_public_function_and_layer_method():
    covered = {s.name.split("[")[0] for s in SPECS}
    # A layer without options is built with no arguments; nothing to feed it.
    no_arguments = {"Tanh", "Sigmoid", "Relu"}
    assert _public_names() - no_arguments <= covered, sorted(_public_names() - covered)


def test_every_spec_meets_every_kind_it_can():
    kinds = {}
    for name, kind, _ in CASES:
        kinds.setdefault(name, set()).add(kind)
    for s in SPECS:
        if s.arrays:
            assert {"list", "complex"} <= kinds[s.name], s.name
        if s.labels:
            assert {"labels out of range", "labels negative", "labels float"} <= kinds[s.name]
