"""Argument validation shared by the entry points: clear errors naming the argument."""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from oracles.errors import InvalidArgument, InvalidArgumentType, UserFunctionError

__all__ = [
    "as_cotangent",
    "as_directions",
    "as_inputs",
    "as_output",
    "check_arity",
    "check_callable",
    "check_executor",
    "check_names",
    "check_seed",
    "check_tolerance",
    "normalize_gradients",
    "parse_against",
    "rescaled_direction",
]

_FLOAT_KINDS = "f"


def _as_float64(value, name):
    """One array-like -> a fresh float64 C-contiguous copy, or a clear error."""
    if value is None:
        raise InvalidArgumentType(f"{name} is None; expected an array or a number")
    if isinstance(value, np.ma.MaskedArray):
        raise InvalidArgumentType(
            f"{name} is a masked array; its mask would be ignored. Pass value.filled(...) or "
            "the unmasked part as a plain array"
        )
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any array-like's own conversion error
            raise InvalidArgumentType(
                f"{name} could not be converted to a NumPy array ({type(exc).__name__}: {exc}); "
                "expected a real numeric array"
            ) from exc
    kind = arr.dtype.kind
    if kind == "b":
        raise InvalidArgumentType(
            f"{name} has dtype bool; booleans have no derivative. Close over it in fn "
            "instead of passing it as an input"
        )
    if kind == "c":
        raise InvalidArgumentType(
            f"{name} has complex dtype {arr.dtype}; only real arrays can be checked. "
            "Pass real and imaginary parts as separate real inputs"
        )
    if kind not in "fiu":
        raise InvalidArgumentType(f"{name} has dtype {arr.dtype}; expected a real numeric array")
    out = np.array(arr, dtype=np.float64, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))
        where = tuple(int(i) for i in bad[0]) if out.ndim else ()
        raise InvalidArgument(
            f"{name} contains NaN or inf (first at index {where}); a derivative can only be "
            "checked at a finite point"
        )
    return out, arr.dtype


def as_inputs(inputs, names=None):
    """Validate ``inputs`` (a tuple of arrays) -> (float64 copies, original dtypes).

    A bare array is accepted as a single input. Returns a list of arrays when
    called with ``names``; the dtypes are returned via :func:`input_dtypes`.
    """
    if isinstance(inputs, np.ndarray) or isinstance(inputs, numbers.Number):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise InvalidArgumentType(
            "inputs must be a tuple of arrays (one per argument of fn), "
            f"got {type(inputs).__name__}"
        )
    if len(inputs) == 0:
        raise InvalidArgument("inputs is empty; fn needs at least one input to differentiate")
    out = []
    for k, x in enumerate(inputs):
        name = names[k] if names else f"inputs[{k}]"
        arr, _ = _as_float64(x, name)
        out.append(arr)
    return out


def input_dtypes(inputs):
    """The dtypes of the user's inputs as given (for the report's notes)."""
    if isinstance(inputs, np.ndarray) or isinstance(inputs, numbers.Number):
        inputs = (inputs,)
    return [np.asarray(x).dtype for x in inputs]


def as_cotangent(cotangent, shape=None, name="cotangent"):
    """Validate a cotangent -> float64 copy; with ``shape``, it must match."""
    arr, _ = _as_float64(cotangent, name)
    if shape is not None and arr.shape != tuple(shape):
        raise InvalidArgument(
            f"{name} must have the shape of fn's output {tuple(shape)}, got {arr.shape}"
        )
    return arr


def as_directions(directions, xs, name="direction"):
    """One float64 array per input, shaped like it.

    The convention of every input-space object (tangents, HVP vectors,
    gradients): a bare array when there is one input, else a tuple (or
    list) with one array per input.
    """
    if len(xs) == 1 and not isinstance(directions, (tuple, list)):
        directions = (directions,)
    if not isinstance(directions, (tuple, list)):
        raise InvalidArgumentType(
            f"{name} must be a tuple with one array per input ({len(xs)}), got "
            f"{type(directions).__name__}"
        )
    if len(directions) != len(xs):
        raise InvalidArgument(
            f"{name} must give one array per input ({len(xs)}), got {len(directions)}"
        )
    labels = [name] if len(xs) == 1 else [f"{name}[{k}]" for k in range(len(xs))]
    out = []
    for u, x, label in zip(directions, xs, labels, strict=True):
        arr, _ = _as_float64(u, label)
        if arr.shape != x.shape:
            raise InvalidArgument(
                f"{label} must have the shape of its input {x.shape}, got {arr.shape}"
            )
        out.append(arr)
    return out


#: A direction whose largest element is below this is rescaled (:func:`rescaled_direction`).
SMALL_DIRECTION = 2.0**-500


def rescaled_direction(arrays):
    """``(arrays, k)``: a tiny direction times ``2**k`` (exact), its largest element in [1, 2).

    A direction (cotangent, tangents, HVP vectors) whose largest element is
    below :data:`SMALL_DIRECTION` (1e-310, a subnormal) leaves the derivative
    and the oracles nothing to resolve: products with it round to a few
    bits, or to 0, and steps scaled by its inverse overflow. Every derivative
    is linear in its direction (the check verifies that), and scaling by a
    power of 2 upwards is exact, so the check runs with the scaled direction
    and says so. ``k = 0`` (and the arrays unchanged) otherwise.
    """
    largest = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    if not 0.0 < largest < SMALL_DIRECTION:
        return arrays, 0
    k = 1 - int(np.frexp(largest)[1])
    return [np.ldexp(a, k) for a in arrays], k


def parse_against(against, supported, kind, name="against"):
    """``against=`` -> a tuple of distinct oracle names that ``kind`` supports.

    ``name`` is what the messages call the argument (the pytest plugin's
    ``--oracles`` applies the same rules).
    """
    known = ("numeric", "torch", "jax", "complex", "taylor", "dot")
    listed = ", ".join(supported)
    if isinstance(against, str):
        against = (against,)
    try:
        against = tuple(against)
    except TypeError as exc:
        raise InvalidArgumentType(
            f"{name} must be one of {listed} or a sequence of them, got {against!r}"
        ) from exc
    if not against:
        raise InvalidArgument(f"{name} is empty; name at least one of {listed}")
    for a in against:
        if not isinstance(a, str) or a not in known:
            raise InvalidArgument(f"{name} must name oracles among {listed}, got {a!r}")
        if a not in supported:
            raise InvalidArgument(f"{kind} does not support {name}={a!r}; its oracles are {listed}")
    if len(set(against)) != len(against):
        raise InvalidArgument(f"{name} names an oracle twice: {against!r}")
    return against


def check_callable(obj, name):
    if not callable(obj):
        raise InvalidArgumentType(f"{name} must be callable, got {type(obj).__name__}")


def check_executor(executor, name="executor"):
    """Raise :class:`InvalidArgument` if ``executor`` no longer accepts work.

    ``concurrent.futures`` executors raise ``RuntimeError`` from ``submit``
    once shut down (or broken: a process pool whose worker died), so that is
    what is asked of it, with a task that does nothing (the builtin
    ``int``, picklable for a process pool); the task is cancelled if it has
    not started. Called before any chunk is submitted, so a dead executor
    fails at once and clearly, not in the middle of a check.
    """
    kind = type(executor).__name__
    try:
        probe = executor.submit(int)
    except NotImplementedError as exc:  # a RuntimeError too: the abstract Executor.submit
        raise InvalidArgument(
            f"{name} ({kind}) cannot run the check's chunks: its submit() is not implemented"
        ) from exc
    except RuntimeError as exc:
        raise InvalidArgument(
            f"{name} ({kind}) cannot run the check's chunks: {exc}. Pass an executor that is "
            "not shut down (create it in a with-block around the check)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any executor's own refusal, named
        raise InvalidArgument(
            f"{name} ({kind}) cannot run the check's chunks: its submit() raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    probe.cancel()


def check_arity(func, n_args, name, rule):
    """Raise :class:`InvalidArgument` if ``func`` cannot take ``n_args`` positional arguments.

    ``rule`` says how the function is called (it ends the message). Functions
    without an inspectable signature (NumPy ufuncs, some builtins) pass.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(n_args))
    except TypeError as exc:
        raise InvalidArgument(
            f"{name} cannot take {n_args} positional argument(s) ({exc}); {rule}"
        ) from None


def check_seed(seed):
    """``None`` or a non-negative integer (what ``numpy.random.default_rng`` accepts)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidArgumentType(f"seed must be an int >= 0 or None, got {seed!r}")
    if seed < 0:
        raise InvalidArgument(f"seed must be an int >= 0 or None, got {seed!r}")
    return int(seed)


def check_names(names, n):
    """``None`` or a list/tuple of ``n`` distinct non-empty strings, one name per input.

    The report says which input failed by its name: two inputs of one name
    (``names=["a", "a"]``) would make ``failed_inputs == ["a"]`` say nothing
    about which one.
    """
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise InvalidArgumentType(
            f"names must be a list or tuple of strings, one per input, got {names!r}"
        )
    if len(names) != n:
        raise InvalidArgument(f"names must give one name per input ({n}), got {len(names)}")
    for k, name in enumerate(names):
        if not isinstance(name, str):
            raise InvalidArgumentType(f"names[{k}] must be a string, got {name!r}")
        if not name.strip():
            raise InvalidArgument(
                f"names[{k}] is {name!r}; every input needs a name the report can show"
            )
        if name in names[:k]:
            raise InvalidArgument(
                f"names gives {name!r} twice (names[{list(names).index(name)}] and names[{k}]); "
                "the report tells inputs apart by their names, so they must be distinct"
            )
    return list(names)


def as_output(out, who="fn", where="at the evaluation point"):
    """The user's function's output -> float64 array, or :class:`UserFunctionError`.

    One real array is expected: integer and boolean outputs are converted
    (their derivative is 0); ``None``, tuples and lists of outputs (several
    outputs), complex and non-numeric values are rejected with a message that
    says what came back.
    """
    if out is None:
        raise UserFunctionError(
            f"{who} returned None {where}; it must return one array (did it forget to return?)"
        )
    if isinstance(out, (tuple, list)):
        raise UserFunctionError(
            f"{who} returned a {type(out).__name__} of {len(out)} {where}; it must return one "
            "array. For several outputs, check each separately or concatenate them into one array"
        )
    try:
        arr = np.asarray(out)
    except Exception as exc:  # noqa: BLE001 - any array-like's own refusal (a torch tensor
        # that requires grad raises RuntimeError), said in the user's terms
        raise UserFunctionError(
            f"{who} returned {type(out).__name__} {where}, which is not a real numeric array "
            f"(NumPy cannot convert it: {type(exc).__name__}: {exc})"
        ) from exc
    if arr.dtype.kind == "c":
        raise UserFunctionError(
            f"{who} returned complex values (dtype {arr.dtype}) {where}; only real-valued "
            "functions can be checked: return the real and imaginary parts as real outputs"
        )
    if arr.dtype.kind not in "fiub":
        raise UserFunctionError(
            f"{who} returned {type(out).__name__} of dtype {arr.dtype} {where}, which is not a "
            "real numeric array"
        )
    # A copy: an fn that writes into and returns one buffer must not change earlier results.
    return np.array(arr, dtype=np.float64, copy=True)


def check_tolerance(value, name):
    """``None`` or a finite non-negative float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentType(f"{name} must be a non-negative real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name} must be finite and >= 0, got {value!r}")
    return value


def normalize_gradients(result, shapes, names, who="vjp"):
    """The user's VJP result -> list of float64 arrays, one per input, or a clear error.

    NaN/inf values are kept (they are reported as mismatches, never as
    agreement).
    """
    n = len(shapes)
    if isinstance(result, (tuple, list)):
        grads = list(result)
    elif n == 1:
        grads = [result]
    else:
        raise UserFunctionError(
            f"{who} returned a single {type(result).__name__}, but there are {n} inputs; "
            f"it must return a tuple of {n} gradients (one per input, in order)"
        )
    if len(grads) != n:
        raise UserFunctionError(
            f"{who} returned {len(grads)} gradients, but there are {n} inputs "
            f"({', '.join(names)}); "
            "it must return one gradient per input, in order"
        )
    out = []
    for g, shape, name in zip(grads, shapes, names, strict=True):
        if g is None:
            raise UserFunctionError(
                f"{who} returned None as the gradient of {name}; return zeros of shape {shape} "
                "when the output does not depend on it"
            )
        try:
            arr = np.asarray(g)
        except Exception as exc:  # noqa: BLE001 - any array-like's own refusal, named
            raise UserFunctionError(
                f"{who} returned a gradient of {name} that is not an array ({type(g).__name__}: "
                f"{type(exc).__name__}: {exc})"
            ) from exc
        if arr.dtype.kind not in "fiu":
            raise UserFunctionError(
                f"{who} returned a gradient of {name} with dtype {arr.dtype}; expected real numbers"
            )
        if arr.shape != tuple(shape):
            raise UserFunctionError(
                f"{who} returned a gradient of {name} with shape {arr.shape}; "
                f"expected {tuple(shape)} "
                "(the shape of the input)"
            )
        out.append(np.array(arr, dtype=np.float64, copy=True))
    return out
