"""The guards around every call of the user's code.

Whatever the user's function does (raise, return the wrong thing, write into
its arguments, return a buffer it reuses, draw random numbers), the check
reports it in the user's terms, naming the function and the argument, and
never as a traceback from inside the oracles:

* :func:`call_user` turns an exception into :class:`UserFunctionError`;
* :class:`Guarded` does the same at perturbed points, and names the element;
* :func:`mutations` finds arguments written into in place;
* :func:`differs` / :func:`check_repeatable` find non-determinism;
* :func:`own_stream` keeps the check's random draws apart from the user's data;
* :func:`users_state` runs a check so that the user's code sees the caller's global
  state (NumPy's error state, the warnings filters) and the caller finds it unchanged
  afterwards (and NumPy's, torch's and jax's random and dtype settings), however the
  check ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import warnings

import numpy as np

from oracles._validation import as_output
from oracles.errors import (
    GradientMismatch,
    NonDeterministicFunction,
    OraclesError,
    UserFunctionError,
)

__all__ = [
    "Guarded",
    "call_user",
    "check_repeatable",
    "differs",
    "mutations",
    "outside_the_domain",
    "own_stream",
    "users_state",
]

_EPS = float(np.finfo(np.float64).eps)
#: float64 is one dtype object (another float64, e.g. byte-swapped, takes as_output's path).
_F64 = np.dtype(np.float64)

#: One key per use, so that no two uses share a stream.
_STREAMS = {
    "direction": 0x646972,
    "projection": 0x70726F,
    "shift": 0x736866,
    "gradient": 0x677264,
}

#: The caller's ``np.geterr()`` while a check runs (the outermost check's), else None.
_USERS_ERRSTATE = contextvars.ContextVar("oracles_users_errstate", default=None)


def users_errstate():
    """The NumPy error state the user's code runs under: the caller's, as the check began.

    The numerics silence overflow and invalid operations around their own
    arithmetic (``np.errstate``); the user's ``fn`` called from inside such a
    block must not see that (an ``fn`` that reads ``np.geterr()``, or relies on
    ``np.seterr(all="raise")`` to find its own bugs). Outside a check: the
    current state.
    """
    state = _USERS_ERRSTATE.get()
    return np.geterr() if state is None else state


def _torch_state():
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "get_rng_state"):
        return None
    return torch, torch.get_rng_state(), torch.get_default_dtype()


def _jax_state():
    jax = sys.modules.get("jax")
    config = getattr(jax, "config", None)
    if config is None:
        return None
    try:
        return config, bool(config.jax_enable_x64)
    except Exception:  # noqa: BLE001 - a partly imported or unusual jax: nothing to keep
        return None


#: The warnings filters as the first of the checks running now found them (see
#: :func:`_filters_kept`), and how many checks are running, in any thread.
_KEPT = {"checks": 0, "saved": None}
_KEPT_LOCK = threading.Lock()


def _filters_kept():
    """Count a check in; the first of the checks running at once saves the warnings filters.

    ``warnings.catch_warnings`` per check restores the process-wide filters
    as that check found them: with checks in several threads, one that began
    while another had a filter of its own in place (the complex-step test's
    ComplexWarning error) put that filter back for good. The filters are put
    back once, when the last check running ends.
    """
    with _KEPT_LOCK:
        if _KEPT["checks"] == 0:
            keeper = warnings.catch_warnings()
            keeper.__enter__()
            _KEPT["saved"] = keeper
        _KEPT["checks"] += 1


def _filters_released():
    with _KEPT_LOCK:
        _KEPT["checks"] -= 1
        if _KEPT["checks"] == 0:
            keeper, _KEPT["saved"] = _KEPT["saved"], None
            keeper.__exit__(None, None, None)


@contextlib.contextmanager
def users_state():
    """Run a check: the user's code sees the caller's state, which is restored on every exit.

    Kept for the user's code while the check runs: NumPy's error state (see
    :func:`users_errstate`) and the warnings filters. Restored afterwards,
    bitwise, whatever the user's functions or the check did, on return and
    on an exception alike: NumPy's global random state, its error state, the
    warnings filters; torch's global random state and default dtype and
    jax's ``jax_enable_x64``, when those are imported. Nested checks (a layer
    check runs a VJP check) keep the outermost caller's state.
    """
    errstate = np.geterr()
    token = _USERS_ERRSTATE.set(_USERS_ERRSTATE.get() or errstate)
    random_state = np.random.get_state()  # noqa: NPY002 - restored, not used
    torch_state, jax_state = _torch_state(), _jax_state()
    _filters_kept()
    try:
        yield
    finally:
        _filters_released()
        _USERS_ERRSTATE.reset(token)
        np.seterr(**errstate)
        np.random.set_state(random_state)  # noqa: NPY002
        if torch_state is not None:
            torch, rng, dtype = torch_state
            torch.set_rng_state(rng)
            if torch.get_default_dtype() != dtype:
                torch.set_default_dtype(dtype)
        if jax_state is not None:
            config, x64 = jax_state
            with contextlib.suppress(Exception):
                if bool(config.jax_enable_x64) != x64:
                    config.update("jax_enable_x64", x64)


def own_stream(seed, use):
    """The check's random generator for ``use``, from ``seed``, never ``default_rng(seed)``.

    Users draw their test data from ``numpy.random.default_rng(seed)`` with the
    same small seeds as ours. A direction drawn from that stream then equals
    the user's input: with ``x`` and the cotangent both the first normal draw of
    ``default_rng(0)``, ``<g, x>`` is what the check measures, and a transposed
    weight gradient gives the same number. A spawn key keeps ours apart.

    >>> a = np.random.default_rng(0).standard_normal(4)
    >>> b = own_stream(0, "direction").standard_normal(4)
    >>> bool(np.any(a == b))
    False
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[use],)))


def call_user(func, args, what):
    """``func(*args)`` under the user's error state; an exception from the user's code becomes a
    :class:`UserFunctionError`."""
    try:
        with np.errstate(**users_errstate()):
            return func(*args)
    except (GradientMismatch, OraclesError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the user's code raised: say whose code it was
        raise UserFunctionError(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _quiet(state):
    """An error state with its warnings (``"warn"``, ``"print"``, ``"log"``) turned off."""
    return {k: ("ignore" if v in ("warn", "print", "log") else v) for k, v in state.items()}


def outside_the_domain(exc, args, xs):
    """True if ``exc`` is NumPy's floating-point error (raised by the user's error state or
    warnings filters) and ``args`` a perturbed point, not ``xs``: the function is not finite
    there (see :class:`Guarded`)."""
    if not isinstance(exc, (FloatingPointError, RuntimeWarning)):
        return False
    for a, x in zip(args, xs, strict=False):
        try:
            a = np.asarray(a, dtype=np.float64)
        except Exception:  # noqa: BLE001 - a framework tensor: not a point of ours
            return False
        if a.shape != x.shape or np.any(a != x):
            return True
    return False


class Guarded:
    """``fn`` as the oracles call it: misbehaviour anywhere becomes a clear UserFunctionError.

    The numeric oracle calls ``fn`` at perturbed points, far from the first
    call: an exception, a non-array, a complex result or a changed shape
    there is reported naming the perturbed element, never as a traceback
    from inside the numerics. With ``shape=None`` only exceptions are
    converted (autodiff functions return framework tensors). The result is
    always a fresh array: an ``fn`` that writes into and returns one buffer
    (``np.sin(x, out=buf)``) cannot make earlier results change.

    ``fn`` runs under the user's NumPy error state (:func:`users_errstate`,
    taken when the guard is made and carried to worker threads and
    processes), never the numerics' own, except that what it would only
    warn about (``"warn"``, ``"print"``, ``"log"``) is ignored: these are
    the oracle's points, not the user's (``sqrt`` just outside its domain at
    the largest steps), and their warnings would tell the user nothing (at
    the inputs themselves, ``fn`` and the derivatives run under the user's
    state exactly: :func:`call_user`). Where that state makes NumPy raise
    (``np.seterr(invalid="raise")``, or a RuntimeWarning turned into an
    error by the warnings filters) at a perturbed point, ``fn`` is not
    finite there: the result is NaN, and the numerics use their remaining
    steps, as they do for a NaN returned.
    """

    def __init__(self, fn, what, xs, names, shape=None, errstate=None):
        self.fn, self.what, self.xs, self.names, self.shape = fn, what, xs, names, shape
        self.errstate = _quiet(users_errstate() if errstate is None else errstate)
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __reduce__(self):
        return (Guarded, (self.fn, self.what, self.xs, self.names, self.shape, self.errstate))

    def _where(self, args):
        for x, a, name in zip(self.xs, args, self.names, strict=False):
            try:
                a = np.asarray(a, dtype=np.float64)
            except Exception:  # a framework tensor: no element to name
                return "while the oracle evaluated it"
            if a.shape != x.shape:
                continue
            changed = np.flatnonzero(a != x)
            if changed.size:
                idx = tuple(int(i) for i in np.unravel_index(int(changed[0]), x.shape))
                return (
                    f"at a perturbed point ({name}[{', '.join(map(str, idx))}] = {float(a[idx])!r} "
                    f"instead of {float(x[idx])!r})"
                )
        return "at the evaluation point"

    def __call__(self, *args):
        try:
            with np.errstate(**self.errstate):
                out = self.fn(*args)
        except (GradientMismatch, OraclesError, KeyboardInterrupt):
            raise
        except (FloatingPointError, RuntimeWarning) as exc:  # NumPy's, raised: see the class
            if self.shape is None or not outside_the_domain(exc, args, self.xs):
                raise UserFunctionError(
                    f"{self.what} raised {type(exc).__name__} {self._where(args)}: {exc}"
                ) from exc
            return np.full(self.shape, np.nan)
        except Exception as exc:
            raise UserFunctionError(
                f"{self.what} raised {type(exc).__name__} {self._where(args)}: {exc}"
            ) from exc
        return self.check(out, args)

    def check(self, out, args):
        """What a call does with ``out``, the result of ``fn(*args)``: checked, a fresh array."""
        if self.shape is None:
            return out
        if type(out) is np.ndarray and out.dtype is _F64 and out.shape == self.shape:
            # What as_output returns for a float64 array (its copy, in the same memory
            # order), without its checks: 2-3 us a call of a 3 us fn (the ladders' calls).
            return np.array(out, dtype=np.float64, copy=True)
        out = as_output(out, self.what, _Where(self, args))  # located only for a message
        if out.shape != self.shape:
            raise UserFunctionError(
                f"{self.what} returned shape {out.shape} {self._where(args)}, but {self.shape} at "
                "the evaluation point"
            )
        return out


class _Where:
    """``Guarded._where(args)``, computed only when a message formats it (not on every call)."""

    def __init__(self, guarded, args):
        self.guarded, self.args = guarded, args

    def __str__(self):
        return self.guarded._where(self.args)

    def __format__(self, spec):
        return format(str(self), spec)


def _first_change(before, after):
    diff = np.argwhere(~((before == after) | (np.isnan(before) & np.isnan(after))))
    idx = tuple(int(i) for i in diff[0]) if before.ndim else ()
    return idx, float(before[idx]), float(after[idx])


def mutations(pristine, passed, names, who):
    """Problems for every argument ``who`` wrote into (``passed`` against ``pristine``)."""
    problems = []
    for p, a, name in zip(pristine, passed, names, strict=True):
        a = np.asarray(a)
        if a.shape != p.shape:
            problems.append(f"{who} changed the shape of its argument {name} in place")
        elif not np.array_equal(p, a, equal_nan=True):
            idx, old, new = _first_change(p, a)
            problems.append(
                f"{who} modified its argument {name} in place (e.g. [{', '.join(map(str, idx))}] "
                f"changed from {old:.17g} to {new:.17g}): a caller's array would change. "
                "Compute into a new array instead."
            )
    return problems


def differs(first, again):
    """``(differs, max difference, scale)`` of two evaluations (NaN equals NaN)."""
    if again.shape != first.shape:
        return True, np.inf, np.nan
    if not first.size:
        return False, 0.0, 0.0
    same = (first == again) | (np.isnan(first) & np.isnan(again))
    if same.all():
        return False, 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        scale = float(np.max(np.abs(np.where(np.isfinite(first), first, 0.0))))
        diff = float(np.max(np.where(same, 0.0, np.abs(again - first))))
    return not diff <= 4 * _EPS * scale, diff, scale


def check_repeatable(evaluate, first, who, hint, labels, repeats=2):
    """Call ``evaluate()`` ``repeats`` more times; raise if a result differs from ``first``.

    ``first`` and every result are lists of arrays (the pieces of one call);
    ``labels`` says what each piece is, in the message (``"gradients of x"``).
    """
    for _ in range(repeats):
        again = evaluate()
        for a, b, label in zip(first, again, labels, strict=True):
            bad, diff, scale = differs(a, b)
            if bad:
                what = (
                    f"{label} of shape {a.shape}, then {b.shape}"
                    if a.shape != b.shape
                    else f"different {label} (max difference {diff:.3g} at scale {scale:.3g})"
                )
                raise NonDeterministicFunction(
                    f"{who} is not deterministic: it returned {what} for the same arguments. {hint}"
                )
