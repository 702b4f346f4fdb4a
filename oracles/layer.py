"""check_layer / assert_layer: judge a layer object's ``backward``.

A layer in the "from scratch" style has ``forward(*inputs)``, which caches
what it needs, and ``backward(dout)``, which returns the gradient with
respect to its input(s) and stores the gradients of its parameters as
attributes (``dW`` next to ``W``). :func:`check_layer` turns such an object
into the pair ``fn(*inputs, *params)`` / ``vjp(cotangent, *inputs,
*params)`` that the VJP check judges, so the report is the same
one, with the inputs named as ``forward`` names them and the parameters
named by their attributes (``x``, ``W``, ``b``).

The user's layer is never touched: every evaluation runs on a
``copy.deepcopy`` of it. The check is the VJP check of the pipeline
(:mod:`oracles._pipeline`), with the layer's hygiene findings added.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from oracles._guards import call_user, mutations
from oracles._pipeline import raise_unless_passed, run
from oracles._validation import check_names
from oracles.checks import VJP
from oracles.errors import (
    InvalidArgument,
    InvalidArgumentType,
    UserFunctionError,
)
from oracles.report import Report

__all__ = ["GRADIENT_NAMES", "assert_layer", "check_layer"]

#: Where :func:`check_layer` looks for the gradient of a parameter ``P`` when
#: ``params`` is not given: the first of these attributes that exists.
GRADIENT_NAMES = ("d{}", "grad_{}", "{}_grad")


def _layer_name(layer):
    return type(layer).__name__


def _check_layer_object(layer):
    for method in ("forward", "backward"):
        if not callable(getattr(layer, method, None)):
            raise InvalidArgumentType(
                f"layer must have callable forward and backward methods; "
                f"{_layer_name(layer)} has no callable {method!r}"
            )


def _copy_layer(layer, keep=()):
    """A deep copy of ``layer``; the objects in ``keep`` are shared, not copied.

    ``keep`` holds the parameter arrays that are about to be replaced on the
    copy anyway: copying them on every evaluation would cost a full copy of
    every weight per function call.
    """
    memo = {id(obj): obj for obj in keep}
    try:
        return copy.deepcopy(layer, memo)
    except Exception as exc:
        raise InvalidArgument(
            f"layer ({_layer_name(layer)}) cannot be deep-copied ({type(exc).__name__}: {exc}); "
            "check_layer runs every evaluation on a copy so that your layer is never changed"
        ) from exc


def _copy_value(value):
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else copy.deepcopy(value)


def _backward_takes_dout(layer):
    """False when ``backward`` takes no argument at all (a loss layer's ``backward()``)."""
    try:
        params = list(inspect.signature(layer.backward).parameters.values())
    except (TypeError, ValueError):
        return True
    return any(
        p.kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        )
        for p in params
    )


def _forward_names(layer, n, names=None):
    names = check_names(names, n)
    if names is not None:
        return names
    try:
        params = list(inspect.signature(layer.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= n:
        return positional[:n]
    return [f"inputs[{k}]" for k in range(n)]


def _is_float_array(value):
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def _gradient_attribute(layer, param):
    for pattern in GRADIENT_NAMES:
        name = pattern.format(param)
        if hasattr(layer, name):
            return name
    return None


def _discover_params(after):
    """``{P: dP}`` for public float arrays ``P`` of a layer that, after backward, has a ``dP``."""
    found = {}
    grad_attrs = set()
    try:
        attributes = vars(after)
    except TypeError:  # __slots__: no instance dict; pass params= explicitly
        attributes = {}
    for attr, value in attributes.items():
        if attr.startswith("_") or not _is_float_array(value) or attr in grad_attrs:
            continue
        grad = _gradient_attribute(after, attr)
        if grad is None:
            continue
        g = getattr(after, grad)
        if isinstance(g, np.ndarray) and g.shape == value.shape:
            found[attr] = grad
            grad_attrs.add(grad)
    # A gradient attribute is never a parameter itself (dW has no ddW, but be sure).
    return {p: g for p, g in found.items() if p not in grad_attrs}


def _parse_params(params, template):
    """``params`` as a dict ``{parameter attribute: gradient attribute}`` (None: discover later)."""
    if params is None:
        return None
    if isinstance(params, str):
        raise InvalidArgumentType(
            f"params must be a dict {{parameter: gradient attribute}} or a sequence of parameter "
            f"names, got the string {params!r}; write [{params!r}]"
        )
    if isinstance(params, dict):
        pairs = dict(params)
    else:
        try:
            names = list(params)
        except TypeError as exc:
            raise InvalidArgumentType(
                "params must be a dict {parameter: gradient attribute} or a sequence of "
                f"parameter names, got {type(params).__name__}"
            ) from exc
        pairs = {}
        for p in names:
            grad = _gradient_attribute(template, p) if isinstance(p, str) else None
            pairs[p] = grad if grad is not None else f"d{p}"
    for p, g in pairs.items():
        if not isinstance(p, str) or not isinstance(g, str):
            raise InvalidArgumentType(
                f"params must map attribute names (str) to attribute names (str), got {p!r}: {g!r}"
            )
        if not hasattr(template, p):
            raise InvalidArgument(f"params names {p!r}, but the layer has no attribute {p!r}")
        try:
            arr = np.asarray(getattr(template, p))
        except (TypeError, ValueError):
            arr = np.asarray(None)
        if arr.dtype.kind not in "fiu":
            raise InvalidArgument(
                f"params names {p!r}, but layer.{p} is not a numeric array "
                f"({type(getattr(template, p)).__name__})"
            )
    return pairs


def _parse_wrt(wrt, raw_inputs):
    if wrt is None:
        return None
    if isinstance(wrt, (int, np.integer)) and not isinstance(wrt, bool):
        wrt = (wrt,)
    try:
        wrt = tuple(wrt)
    except TypeError as exc:
        raise InvalidArgumentType(
            f"wrt must be a sequence of input positions, got {wrt!r}"
        ) from exc
    n = len(raw_inputs)
    for k in wrt:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InvalidArgumentType(f"wrt must hold input positions (ints), got {k!r}")
        if not 0 <= k < n:
            raise InvalidArgument(f"wrt holds {k}, but there are {n} inputs (positions 0..{n - 1})")
    if len(set(wrt)) != len(wrt) or list(wrt) != sorted(wrt):
        raise InvalidArgument(
            f"wrt must list distinct input positions in increasing order, got {wrt}"
        )
    return tuple(int(k) for k in wrt)


def _dout_for(out, cotangent, takes_dout):
    """The upstream gradient to pass to ``backward`` in the probe run."""
    if not takes_dout:
        return None
    if cotangent is not None:
        return np.array(cotangent, dtype=np.float64)
    return np.ones(np.shape(out))


def _changed_params(before, layer, names, who):
    """Problems for every parameter ``who`` changed (in place or by rebinding the attribute)."""
    problems = []
    for name, old in zip(names, before, strict=True):
        new = np.asarray(getattr(layer, name, None))
        if new.shape != old.shape or not np.array_equal(new, old, equal_nan=True):
            problems.append(
                f"{who} changed the parameter {name} (an optimizer step or a weight update "
                f"inside {who.split('.')[-1]}?): it must leave parameters as they are; update "
                "them separately, after the gradients are computed"
            )
    return problems


def _scaled(result, c):
    """``result`` (a gradient, or a tuple of them) times the scalar cotangent ``c``."""
    c = float(np.asarray(c))
    if result is None or c == 1.0:
        return result
    if isinstance(result, (tuple, list)):
        return type(result)(None if g is None else np.asarray(g) * c for g in result)
    return np.asarray(result) * c


def _returned_count(ret):
    if ret is None:
        return 0
    if isinstance(ret, (tuple, list)):
        return len(ret)
    return 1


def check_layer(
    layer: Any,
    inputs: Sequence[ArrayLike] | ArrayLike,
    *,
    direction: ArrayLike | None = None,
    params: dict | Sequence[str] | None = None,
    wrt: Sequence[int] | int | None = None,
    against: str | Sequence[str] = "numeric",
    mode: Any = "auto",
    names: Sequence[str] | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    torch_fn: Callable[..., Any] | None = None,
    jax_fn: Callable[..., Any] | None = None,
) -> Report:
    """Check a layer's ``backward`` (input and parameter gradients); return a report.

    Parameters
    ----------
    layer : object
        Has ``forward(*inputs) -> array`` and ``backward(dout)`` (or
        ``backward()`` for a loss layer) returning the gradient with respect
        to the input (a bare array) or to several inputs (a tuple, in
        order); parameter gradients are stored as attributes. Never
        modified: every evaluation runs on a deep copy.
    inputs : tuple of array_like
        The arguments of ``forward``, one entry per positional argument (a
        bare array counts as the only one). Inputs that are not
        differentiated (integer labels, targets) are passed unchanged.
    params : dict or sequence of str, optional
        ``{"W": "dW", "b": "db"}``: parameter attribute -> attribute where
        ``backward`` stores its gradient. A sequence of names looks the
        gradient up as ``dW``, ``grad_W`` or ``W_grad``. Default: every
        public floating-point array attribute ``P`` for which, after one
        ``forward`` and ``backward``, such a gradient attribute exists with
        ``P``'s shape. Pass ``{}`` to check the input gradient only.
    wrt : sequence of int, optional
        Positions of the inputs whose gradients ``backward`` returns, in
        order. Default: read from what ``backward`` returns: a bare array is
        the gradient of ``inputs[0]``, a tuple of ``k`` arrays those of
        ``inputs[0:k]``, ``None`` no input gradient (parameters only). The
        other inputs are held fixed. Integer inputs cannot be differentiated.
    direction : array_like, optional
        The ``dout`` passed to ``backward``, shaped like ``forward``'s
        output. Default: standard normal from ``numpy.random.default_rng(seed)``;
        ``1.0`` when ``backward`` takes no argument.
    names : sequence of str, optional
        Names of ``forward``'s inputs in the report (default: ``forward``'s
        parameter names); parameters are named by their attributes.
    against, mode, seed, rtol, atol, torch_fn, jax_fn
        As in :func:`oracles.check_vjp`. ``torch_fn`` and ``jax_fn`` take
        the differentiated inputs, then the parameters, in the report's
        order (``x, W, b``).

    Returns
    -------
    Report
        As from :func:`oracles.check_vjp`, with ``kind`` ``"check_layer"``.

    Raises
    ------
    InvalidArgument, InvalidArgumentType
        ``layer`` lacks ``forward``/``backward``, ``params`` names an
        attribute that does not exist, ``wrt`` is out of range, ...
    UserFunctionError
        ``forward`` or ``backward`` raised, returned the wrong number of
        gradients, or left a gradient attribute missing.

    Notes
    -----
    Layer bookkeeping mistakes are reported as problems that fail the
    check, even when every number agrees: ``backward`` writing into
    ``dout`` (``dout[x <= 0] = 0``), changing a parameter (an optimizer step
    inside ``backward``), ``forward`` or ``backward`` writing into an input.
    The layer is copied for every evaluation, so state cached by
    ``forward`` (``self._x``) always belongs to the point being evaluated.
    A layer that is random in ``forward`` (dropout in training mode) cannot
    be checked: fix its randomness first. The numeric oracle's notes apply
    (kinks, steps, near-zero gradients): see :func:`oracles.check_vjp`.

    Examples
    --------
    >>> import numpy as np
    >>> class Scale:
    ...     def __init__(self, w):
    ...         self.w = w
    ...     def forward(self, x):
    ...         self._x = x
    ...         return self.w * x
    ...     def backward(self, dout):
    ...         self.dw = dout * self._x
    ...         return dout * self.w
    >>> r = check_layer(Scale(np.array([2.0, 3.0])), (np.array([1.0, -1.0]),))
    >>> r.ok, [i.name for i in r.inputs]
    (True, ['x', 'w'])
    """
    __tracebackhide__ = True
    _check_layer_object(layer)
    if isinstance(inputs, np.ndarray) or np.isscalar(inputs):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise InvalidArgumentType(
            "inputs must be a tuple with one entry per argument of layer.forward, got "
            f"{type(inputs).__name__}"
        )
    if not inputs:
        raise InvalidArgument("inputs is empty; layer.forward needs at least one input")
    cotangent = direction
    template = _copy_layer(layer)
    raw_inputs = [_copy_value(x) for x in inputs]
    explicit = _parse_params(params, template)
    wrt = _parse_wrt(wrt, raw_inputs)
    takes_dout = _backward_takes_dout(template)
    if not takes_dout and cotangent is not None and not np.array_equal(cotangent, 1.0):
        raise InvalidArgument(
            f"{_layer_name(layer)}.backward takes no upstream gradient, so direction must be None "
            f"or 1.0, got {cotangent!r}"
        )

    # Probe: one forward and backward on a copy tells which gradients exist.
    probe = _copy_layer(template)
    out = call_user(probe.forward, [_copy_value(x) for x in raw_inputs], "layer.forward")
    try:
        out = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UserFunctionError(
            f"layer.forward returned {type(out).__name__}, which is not a real numeric array"
        ) from exc
    if not takes_dout:
        if out.shape != ():
            raise UserFunctionError(
                f"{_layer_name(layer)}.backward takes no upstream gradient, so forward must return "
                f"a scalar loss; it returned shape {out.shape}"
            )
        cotangent = 1.0
    if cotangent is not None and np.shape(cotangent) != out.shape:
        raise InvalidArgument(
            f"direction must have the shape of layer.forward's output {out.shape}, "
            f"got {np.shape(cotangent)}"
        )
    dout = _dout_for(out, cotangent, takes_dout)
    ret = call_user(probe.backward, [] if dout is None else [dout], "layer.backward")
    if wrt is None:
        n_ret = _returned_count(ret)
        if n_ret > len(raw_inputs):
            raise UserFunctionError(
                f"layer.backward returned {n_ret} gradients, but forward takes {len(raw_inputs)} "
                "inputs"
            )
        wrt = tuple(range(n_ret))
    pairs = _discover_params(probe) if explicit is None else explicit
    for p, g in pairs.items():
        if not hasattr(probe, g):
            raise UserFunctionError(
                f"after backward, the layer has no attribute {g!r} (the gradient of {p!r}); "
                "backward must store it"
            )
    for k in wrt:
        if np.asarray(raw_inputs[k]).dtype.kind not in "f":
            raise InvalidArgument(
                f"input {k} has dtype {np.asarray(raw_inputs[k]).dtype}, but the gradients "
                f"backward returns are taken to belong to inputs {list(wrt)}; integer inputs "
                "(labels) cannot be differentiated. Pass wrt= to say which inputs the "
                "returned gradients belong to"
            )
    if not wrt and not pairs:
        raise InvalidArgument(
            f"nothing to check: {_layer_name(layer)}.backward returned no input gradient and no "
            "parameter with a gradient attribute was found; pass params={'W': 'dW', ...}"
        )

    all_names = _forward_names(template, len(raw_inputs), names)
    in_names = [all_names[k] for k in wrt]
    param_names = list(pairs)
    names = in_names + param_names
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        names = [f"input {n}" if k < len(wrt) and n in dups else n for k, n in enumerate(names)]
    n_in = len(wrt)
    param_arrays = [getattr(template, p) for p in param_names]
    check_inputs = tuple([raw_inputs[k] for k in wrt] + [np.asarray(v) for v in param_arrays])
    problems = []

    def full_inputs(args):
        xs = [_copy_value(x) for x in raw_inputs]
        for k, a in zip(wrt, args[:n_in], strict=True):
            xs[k] = np.array(a, copy=True)
        return xs

    def with_params(args):
        lay = _copy_layer(template, keep=param_arrays)
        for p, a in zip(param_names, args[n_in:], strict=True):
            setattr(lay, p, np.array(a, copy=True))
        return lay

    def fn(*args):
        return with_params(args).forward(*full_inputs(args))

    def vjp(cot, *args):
        lay = with_params(args)
        xs = full_inputs(args)
        pristine_x = [xs[k].copy() for k in wrt]
        pristine_p = [np.array(getattr(lay, p), copy=True) for p in param_names]
        lay.forward(*xs)
        problems.extend(mutations(pristine_x, [xs[k] for k in wrt], in_names, "layer.forward"))
        problems.extend(_changed_params(pristine_p, lay, param_names, "layer.forward"))
        pristine_x = [xs[k].copy() for k in wrt]
        pristine_p = [np.array(getattr(lay, p), copy=True) for p in param_names]
        if takes_dout:
            d = np.array(cot, copy=True)
            result = lay.backward(d)
            problems.extend(mutations([cot], [d], ["dout"], "layer.backward"))
        else:
            # backward() is the gradient of the loss itself: the VJP at the
            # (scalar) cotangent c is c times it.
            result = lay.backward()
            result = _scaled(result, cot)
        problems.extend(mutations(pristine_x, [xs[k] for k in wrt], in_names, "layer.backward"))
        problems.extend(_changed_params(pristine_p, lay, param_names, "layer.backward"))
        if n_in == 0:
            grads = []
        elif isinstance(result, (tuple, list)):
            grads = list(result)
        else:
            grads = [result]
        if len(grads) != n_in:
            raise UserFunctionError(
                f"layer.backward returned {len(grads)} gradient(s), but {n_in} were expected "
                f"(for inputs {list(wrt)})"
            )
        for g in pairs.values():
            if not hasattr(lay, g):
                raise UserFunctionError(f"after backward, the layer has no attribute {g!r}")
            grads.append(getattr(lay, g) if takes_dout else _scaled(getattr(lay, g), cot))
        return tuple(grads)

    fn.__name__ = f"{_layer_name(layer)}.forward"
    vjp.__name__ = f"{_layer_name(layer)}.backward"
    report = run(
        VJP,
        fn,
        vjp,
        check_inputs,
        direction=cotangent,
        against=against,
        mode=mode,
        names=names,
        seed=seed,
        rtol=rtol,
        atol=atol,
        torch_fn=torch_fn,
        jax_fn=jax_fn,
        kind="check_layer",
        problems=problems,
    )
    fixed = [k for k in range(len(raw_inputs)) if k not in wrt]
    if fixed:
        report.notes.append(
            "held fixed (not differentiated): " + ", ".join(all_names[k] for k in fixed)
        )
    report.context = {"layer": _layer_name(layer), **report.context}
    if not takes_dout:
        report.context["direction"] = "1.0 (backward takes no upstream gradient)"
    return report


def assert_layer(layer: Any, inputs: Sequence[ArrayLike] | ArrayLike, **options: Any) -> Report:
    """Like :func:`check_layer`, but raise :class:`~oracles.errors.GradientMismatch` when it fails.

    Returns the report when the check passes; the exception's message is
    the readable report and ``exc.report`` the report object.

    Examples
    --------
    >>> import numpy as np
    >>> class Square:
    ...     def forward(self, x):
    ...         self._x = x
    ...         return x**2
    ...     def backward(self, dout):
    ...         return dout * self._x  # forgot the factor 2
    >>> assert_layer(Square(), (np.array([1.0, 2.0]),))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    oracles.errors.GradientMismatch: check_layer: FAILED: 2 of 2 elements of ... x disagree ...
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_layer(layer, inputs, **options))
