"""Numeric derivatives that report their own error: the library's numeric oracle.

One concern per module:

* :mod:`~oracles.numerics.objective`: ``phi = <cotangent, fn>`` and its rounding-noise model;
* :mod:`~oracles.numerics.ladder`: the step ladder (central differences,
  Richardson extrapolation, error estimates, kinks), per element;
* :mod:`~oracles.numerics.directional`: derivatives along whole directions;
* :mod:`~oracles.numerics.exhaustive`: every element, screened (``mode="exhaustive"``);
* :mod:`~oracles.numerics.fast`: random projections and group testing (``mode="fast"``);
* :mod:`~oracles.numerics.modes`: what ``mode=`` means;
* :mod:`~oracles.numerics.complex_step`: the complex-step derivative.

Public here: :func:`numeric_vjp` (re-exported by :mod:`oracles`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from oracles.numerics.ladder import partials
from oracles.numerics.objective import ScalarObjective

__all__ = ["numeric_vjp"]


def numeric_vjp(
    fn: Callable[..., ArrayLike], inputs: Sequence[ArrayLike], cotangent: ArrayLike
) -> tuple[np.ndarray, ...]:
    """Central-difference VJP of ``fn`` at ``inputs`` contracted with ``cotangent``.

    Every element of every input is differentiated with the step ladder of
    this module (Richardson extrapolation, rung chosen by its own error
    estimate); see :func:`partials` for the error estimates themselves.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``.
    inputs : tuple of array_like
        Evaluated in float64 (copies; never modified).
    cotangent : array_like
        Shaped like ``fn(*inputs)``.

    Returns
    -------
    tuple of ndarray
        Float64, one per input, shaped like it.

    Examples
    --------
    >>> import numpy as np
    >>> (g,) = numeric_vjp(lambda x: x**3, (np.array([1.0, 2.0]),), np.ones(2))
    >>> np.allclose(g, [3.0, 12.0], rtol=1e-10)
    True
    """
    from oracles._guards import Guarded
    from oracles._validation import as_cotangent, as_inputs, check_callable

    check_callable(fn, "fn")
    xs = as_inputs(inputs)
    names = [f"inputs[{k}]" for k in range(len(xs))]
    out = Guarded(fn, "fn", xs, names)(*[x.copy() for x in xs])
    try:
        shape = np.shape(out)
    except Exception:  # a ragged or non-array result: let the guard name it below
        shape = None
    cot = as_cotangent(cotangent, shape)
    objective = ScalarObjective(Guarded(fn, "fn", xs, names, shape=cot.shape), xs, cot)
    indices = [(i, j) for i, x in enumerate(xs) for j in range(x.size)]
    est = partials(objective, indices)
    out, pos = [], 0
    for x in xs:
        out.append(est.value[pos : pos + x.size].reshape(x.shape))
        pos += x.size
    return tuple(out)
