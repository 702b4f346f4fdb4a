"""The exception types of :mod:`oracles`.

Two channels, as in NumPy and SciPy: wrong *usage* raises
:class:`InvalidArgument` (a ValueError) or :class:`InvalidArgumentType` (a
TypeError), naming the argument and the rule; a wrong *gradient* raises
:class:`GradientMismatch` (an AssertionError) whose message is the readable
report; a check that could not have caught a mistake raises
:class:`InconclusiveCheck` (an AssertionError too), whose message says why
and what to do instead. Problems with the user's functions themselves (a ``vjp`` returning
the wrong number of gradients, NaN, a function that is not deterministic)
raise :class:`UserFunctionError` with what was expected and what came back.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "GradientMismatch",
    "InconclusiveCheck",
    "InvalidArgument",
    "InvalidArgumentType",
    "NonDeterministicFunction",
    "OraclesError",
    "UserFunctionError",
]


class OraclesError(Exception):
    """Base class of the errors raised by :mod:`oracles` (except the two verdicts,
    GradientMismatch and InconclusiveCheck)."""


class InvalidArgument(OraclesError, ValueError):
    """An argument breaks a documented rule; the message names both."""


class InvalidArgumentType(OraclesError, TypeError):
    """An argument has a type the function does not accept."""


class BackendUnavailable(OraclesError, ImportError):
    """An oracle needs PyTorch or JAX and it is not installed; names the extra to install."""


class UserFunctionError(OraclesError):
    """The function under test (``fn``, ``vjp``, a layer) misbehaved: raised, returned
    the wrong number or shape of results, or returned NaN/inf where it must not."""


class NonDeterministicFunction(UserFunctionError):
    """``fn`` returned different outputs for the same input (dropout left on, an
    unseeded random generator): no derivative can be checked."""


class GradientMismatch(AssertionError):
    """The hand-written gradient disagrees with the oracle(s).

    ``str()`` is the readable report; the report object is ``.report``.
    """

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


class InconclusiveCheck(AssertionError):
    """The check passed vacuously: it could not have caught the mistake it is meant to.

    Raised by the ``assert_*`` functions when ``report.status`` is
    ``"inconclusive"``: every element agrees, but for some input this run
    could not have caught a relative error of ``resolve`` (default 1e-3) in a
    typical element. A zero or degenerate cotangent or tangent, a reference
    gradient of about 0 everywhere although the function is not constant
    (a normalized output with an all-ones cotangent), elements judged only
    loosely, projections that cannot resolve an input: a check that cannot
    fail is worse than none in a CI guard, so it does not pass.

    ``str()`` is the readable report, which says why and what to do instead
    (another point, a random cotangent, ``against="torch"`` or ``"jax"``);
    the report object is ``.report``.
    """

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report
