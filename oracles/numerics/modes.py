"""The ``mode=`` of the checks: which numeric method computes a per-element reference."""

from __future__ import annotations

from oracles.errors import InvalidArgument, InvalidArgumentType
from oracles.numerics.exhaustive import Exhaustive
from oracles.numerics.fast import Fast

__all__ = ["AUTO_EXHAUSTIVE_MAX", "MODES", "resolve_mode"]

#: ``mode="auto"`` checks every element up to this many elements in all, else runs :class:`Fast`.
AUTO_EXHAUSTIVE_MAX = 5000
#: The strings ``mode=`` accepts (or a :class:`Fast` / :class:`Exhaustive` object).
MODES = ("auto", "fast", "exhaustive", "ladder")


def resolve_mode(mode, n_elements):
    """The mode object for ``mode=`` (a string of :data:`MODES` or a mode object).

    Examples
    --------
    >>> resolve_mode("auto", 100)
    Exhaustive(executor=None, progress=None, screen=True, chunk_size=None, vectorized=False)
    >>> type(resolve_mode("auto", 10**6)).__name__
    'Fast'
    """
    if isinstance(mode, (Fast, Exhaustive)):
        return mode
    if not isinstance(mode, str):
        raise InvalidArgumentType(
            f"mode must be one of {MODES} or an oracles.Fast or oracles.Exhaustive, "
            f"got {type(mode).__name__}"
        )
    if mode == "auto":
        return Exhaustive() if n_elements <= AUTO_EXHAUSTIVE_MAX else Fast()
    if mode == "fast":
        return Fast()
    if mode == "exhaustive":
        return Exhaustive()
    if mode == "ladder":
        return Exhaustive(screen=False)
    raise InvalidArgument(f"mode must be one of {MODES}, got {mode!r}")
