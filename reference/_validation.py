"""The error type the reference functions raise on bad input."""

from __future__ import annotations

__all__ = ["InvalidInput"]


class InvalidInput(ValueError):
    """An argument of a reference function breaks a documented rule.

    A subclass of ValueError; the message names the argument and the rule.
    """
