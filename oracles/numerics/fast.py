"""Fast checks of large gradients: Gaussian projections, then group testing to name wrong elements.

For a model with ``N`` parameters a per-element check costs at least ``2N``
evaluations of ``fn``. A *directional* check costs a few: along a direction
``u`` over all inputs at once, the residual

    ``r(u) = <true_grad - analytic, u> = sum_j u_j d_j``

is measured by central differences of ``phi(x + t u) - <analytic, t u>``
(the analytic part is subtracted before dividing by the step, so that only
the *error* ``d = true_grad - analytic`` is differentiated) at the steps
``2t, t, t/2, t/4`` (8 calls of ``fn``), extrapolated three times
(Richardson: ``t^2``, ``t^4``, ``t^6``). On the 784-128-10 MLP this is
accurate to about ``1e-12`` absolute.

The rule, per projection
------------------------
A projection over the elements not yet compared individually **passes when
its residual is within the numerics' own error**, ``|r| <= E``. Tolerances
never pass a projection: ``rtol`` and ``atol`` are applied to elements one
by one, after they are named. Why: a projection measures one number, so it
cannot tell one element off by ``1.5 * (atol + rtol |a_j|)`` from many
elements each within their tolerance. Any allowance that lets the second
case pass (summed, ``sum_j (atol + rtol |a_j|)``, or statistical,
``c * sqrt(sum_j (atol + rtol |a_j|)^2 u_j^2)``) also lets one element
exceed its own allowance by a factor of about ``sqrt(N)`` (``N`` in the
summed form) and pass. So whenever ``|r| > E``, the elements behind it are
named by group testing and judged individually, with the per-element rule
of :mod:`oracles.compare` (``|a_j - r_j| <= atol + rtol |r_j| + err_j``).
Elements that are within tolerance but visibly nonzero are therefore
compared one by one; when they are everywhere, the "errors everywhere"
branch below bounds the cost.

Why Gaussian directions, and what is promised
---------------------------------------------
``u`` is standard normal (quantized to multiples of ``2^-16``, so that
``x +- t u`` is exact for ``|x| < 2^33 t``, see :func:`_gaussian`). For any
fixed error vector ``d``, ``r(u) = <d, u>`` is normal with standard
deviation ``||d||_2 >= |d_j|`` for every ``j``, whatever the structure of
``d``: a swap (``+e`` at ``i``, ``-e`` at ``j``), a sign flip of a block or
a permuted row cannot cancel, as they do along ``+-1`` (Rademacher)
directions in half of them. The density of ``r`` is at most
``1 / (sqrt(2 pi) |d_j|)``, so the measured residual (true residual plus a
measurement error that does not depend on ``u_j``) falls within ``+-E``
with probability at most ``0.8 E / |d_j|``. With ``n`` independent
directions per round (default 3), **an element off by ``|d_j|`` escapes
with probability at most ``(0.8 E / |d_j|)^n``**: 5e-4 at ``|d_j| = 10 E``,
5e-7 at ``100 E``. This bound holds even if ``E`` underestimates the
measurement error; an ``E`` that is too small only costs time (a search
that finds nothing, then fresh directions). The report gives each covered
element the error at which it escapes with probability 1% as its
resolution.

The error estimate ``E``
------------------------
``E = NOISE_SIGMAS * noise + TRUNCATION_SAFETY * |R3 - R2| (+ kinks)``,
per measurement:

* the **noise** of ``phi`` is *measured*, once per check, not assumed: the
  residual ``psi(s) = phi(x + s u) - <analytic, s u>`` at 9 equally spaced
  points on one side of ``x`` (then on the other), its differences of
  orders 2 to 6, and the order where consecutive estimates
  ``sqrt(gamma_k mean(Delta^k psi)^2)``, ``gamma_k = (k!)^2 / (2k)!``,
  agree (the idea of Moré and Wild's ECnoise; a run that only bounds the
  noise is followed by a smaller spacing, and three runs that disagree give
  their median); pooled with the differences
  of neighbouring extrapolants along the same direction, which see the
  same residual and differ by noise at the working scale. Outputs are
  differenced elementwise before they are contracted with the cotangent,
  so outputs that do not change cancel exactly;
* the **rounding** of the contraction and of ``<analytic, step>`` (a bound
  per quotient, ``eps`` times the sums of absolute values) enters with the
  extrapolation's absolute weights, not as a standard deviation: where the
  steps are exact it is the same bias in every quotient (the step is a
  power of two times the direction), and the weights sum to 1;
* the **truncation** is each measurement's own, ``|R3 - R2|``, the last
  extrapolation's correction;
* outputs that stay **bitwise unchanged** along a direction (the rows of a
  layer a block of the search does not touch) can hide a derivative below
  their resolution over the step; where that bound matters, two calls at
  ``+-T0`` tell the outputs that never move (charged their resolution over
  ``T0``) from those that do;
* **kinks** within the steps (ReLU units whose pre-activation crosses 0
  between ``x - 2t u`` and ``x + 2t u``) show in the one-sided slopes,
  whose difference halves with the step where ``phi`` is smooth: such a
  measurement is widened by the bias the kink can cause and repeated at
  smaller steps. A kink *at* ``x`` (the same jump at every step) is not
  widened over: the residual is then real, and the elements at the kink
  are named and judged by the per-element ladder, which accepts a
  subgradient;
* the step ``t*`` is calibrated on the first direction: the steps halve
  from ``1/8`` until neighbouring extrapolants agree and see no kink; the
  step with the smallest ``E`` (truncation counted 3x) among those wins.
  Smaller blocks of the search are measured with larger steps
  (``t* ||u|| / ||u_S||``: the same perturbation size);
* where the stencil one step above ``t*`` saw a kink, the kink held every
  projection's step (and noise, ``~ 1 / t*``) down: an element whose own
  kink it is (``|x_j - c|``, ``c`` 1e-6 of the scale away) is found by
  halving the direction and asking each half whether it sees the same kink
  (:func:`_kink_search`), judged by its ladder, and the step calibrated
  again over the others (its neighbours resolved 9e-6 of their gradient
  before, 3e-10 after). Kinks that no element owns (ReLU units of a layer)
  end that search within a level or two (16 to 32 calls on the MNIST MLP).

The noise model of :class:`~oracles.numerics.objective.ScalarObjective`
(``8 eps (|f+| + |f-|)`` per evaluation, with ``|f|`` at least 1) is
10-100x above what the MLP's loss actually shows (differences of nearby
evaluations round alike); a single Richardson step forces steps about 4x
smaller; and the ladder's rung-consistency rule widens an estimate to the
disagreement of rungs that straddle kinks or noise: together they made the
projections of the previous fast mode about 100x less sensitive than the
numerics allow.

Group testing
-------------
A failing projection is followed down with the **same** direction ``u``:
the residual of a block ``S`` is ``r_S = sum_{j in S} u_j d_j``. One
measurement along ``u_A - u_B`` (the two halves of ``S``, with opposite
signs) gives both halves, ``r_A = (r_S + r_{A-B}) / 2`` and
``r_B = (r_S - r_{A-B}) / 2``, with errors that do not grow down the tree.
A single wrong element carries its full residual ``u_j d_j`` down every
level, so once seen it is not lost; several can only cancel within a
block on a set of directions of probability zero. Where a block's
residual is far above its error, one measurement along ``u * c`` (``c``
rising linearly from -1 to 1 across the block) locates a single wrong
element: ``r_{u c} / r_S = c_j``. The window it gives is measured directly
(its residual must be the block's; the rest of the block carries the
difference), so a ramp replaces many halvings at once and two errors in
one block only cost one measurement before the halving resumes. Every
block that disagrees is followed, level by level, down to single
elements. A named element is then measured along its own axis; where
that agrees with the search's residual for it, shows no kink and misses
by more than ``CONCLUSIVE`` times its error plus tolerance (or passes with
its error inside the tolerance), it decides; otherwise the per-element
ladder (:func:`oracles.numerics.exhaustive.sharp_partials`, which also
tells kinks apart) decides. Then the elements not yet compared
individually are tested again, until a round passes: by every direction
measured before (its residual minus that of the elements judged since;
drawn independently of the errors, it is as good as a fresh one), and by
fresh ones where those do not pass. A round whose first failing direction
shows its residual faintly (below ``CLEAR`` times its error) measures its
other directions before the search, which follows the clearest one (one
element off by 1e-7 in a million parameters is 3 to 20 errors out along a
direction, depending on its component there).

Errors everywhere
-----------------
When more than ``max_named`` blocks disagree at one level of the search,
the errors are everywhere (a wrong formula, not a typo). The disagreeing
elements of all the inputs involved are pooled: up to
``EXHAUSTIVE_AT_ONCE`` of them are checked exhaustively in one call;
above that, ``SAMPLE`` drawn at random from the pool (plus one from each
of the, at most ``SAMPLE``, largest inputs with none drawn) are checked
individually. Where sampled elements of an input fail, the
verdict is known: the input fails, the report says so, and its other
disagreeing elements are not compared (and not counted as checked);
neither are those of inputs with no element drawn, once some input
failed. Where every sampled element of an input passes (errors within
``rtol``/``atol``, say), or nothing failed at all, the input's
disagreeing elements are checked exhaustively
(:mod:`oracles.numerics.exhaustive`, all such inputs in one call). Either
way a wrong formula costs a constant number of evaluations, however many
elements and inputs it spans: a few thousand (the sample's per-element
ladders cost 20-60 evaluations each).

What the report says: elements named or sampled are compared like in the
exhaustive mode; every other element of the last, passing, round is
*covered* by its projections (counted in ``n_checked``) but never reported
with a value of its own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from oracles._guards import own_stream
from oracles._validation import check_seed
from oracles.compare import Reference, compare
from oracles.errors import InvalidArgument, InvalidArgumentType, UserFunctionError
from oracles.numerics.exhaustive import Exhaustive, exhaustive_partials, sharp_partials
from oracles.numerics.objective import (
    N_RUNGS,
    OUTLIER_RATIO,
    T0,
    _rms,
    _typical,
    changed_noise,
    derivative_jumps,
)

__all__ = [
    "Fast",
    "FastResult",
    "Projection",
    "fast_partials",
]

_EPS = float(np.finfo(np.float64).eps)

#: A projection's threshold allows this many estimated standard deviations of noise.
NOISE_SIGMAS = 3.5

#: The least noise of mode fast, as a share of the outputs' rounding (see _Prober.rounding_floor).
ROUNDING_SHARE = 0.25
#: Safety factor on a measurement's own truncation estimate, ``|R3 - R2|``.
TRUNCATION_SAFETY = 1.0
#: Points of the noise measurement on each side of ``x`` (``2 * NOISE_POINTS`` evaluations).
NOISE_POINTS = 4
#: Spacing (relative, as the steps) of the second noise measurement: float32 parts resolve it.
COARSE_NOISE_SPACING = 2.0**-14
#: Noise seen there, this many times that at the small spacing, calls for the objective's noise
#: model, which is taken where it is this many times larger too (a staircase).
COARSE_NOISE_ABOVE = 64.0
#: A projection whose |residual| is at most this many times its error is measured again.
MARGINAL = 3.0
#: Rounds of "project, localize, confirm" that may end without naming any element.
MAX_BARREN_ROUNDS = 2
#: Rounds in all before every remaining element is checked exhaustively.
MAX_ROUNDS = 8
#: Disagreeing elements of one input checked exhaustively at once when the errors are everywhere.
EXHAUSTIVE_AT_ONCE = 256
#: Elements sampled, above that, to decide between a wrong formula and tolerable errors.
SAMPLE = 16
#: Smaller blocks are measured with steps up to this many times larger than ``t*``.
STEP_GROWTH_MAX = 64.0
#: The largest input, where its root-mean-square is above ``2^UNIT_ABOVE``, is stepped in
#: units of ``2^(floor(log2 rms) - UNIT_ABOVE)``, where it is below ``2^-UNIT_ABOVE``, in units
#: of ``2^(floor(log2 rms) + UNIT_ABOVE)``, and the others in proportion (:func:`_units`);
#: between, in its own units (the calibration's descent from ``T0`` covers that band).
UNIT_ABOVE = 4

#: Inputs of at most this many elements get the objective's noise probe before the
#: calibration, to find where fn oscillates (:meth:`_Prober._largest_step`): the size
#: below which the default mode is exhaustive, which runs the probe anyway.
PROBE_AT_MOST = 5000
#: The error reported as the resolution of covered elements escapes with this probability.
MISS = 0.01
#: Resolution of the Gaussian directions (see :func:`_gaussian`).
DIRECTION_BITS = 16
#: Largest magnitude of a direction's component (a float32 then holds it exactly; a standard
#: normal draw exceeds it with probability below 1e-800).
DIRECTION_MAX = 64.0
#: Elements per chunk of the loops over a whole input (no temporaries the size of an input).
CHUNK = 1 << 16
#: Outputs of ``fn`` up to this size are kept for reuse along the calibration's direction.
KEEP_OUTPUTS = 1 << 12
#: Directions of up to this many elements stay in memory between rounds (4 MB).
KEEP_DIRECTION = 1 << 20

# Central differences q at the steps 2t, t, t/2, t/4 (errors r + a t^2 + b t^4 +
# c t^6 + ...). R2 = (q(t) - 20 q(t/2) + 64 q(t/4)) / 45 removes the t^2 and
# t^4 terms; the same at 2t, t, t/2 (R2_hi) differs from it by about 63 c t^6,
# so R3 = (64 R2 - R2_hi) / 63 removes the t^6 term too and |R3 - R2| measures
# what it removed: the truncation of R2 along *this* direction.
_R2 = np.array([1.0, -20.0, 64.0]) / 45.0
_R3 = np.array([-1.0, 84.0, -1344.0, 4096.0]) / 2835.0
_R2_LOW = np.array([0.0, 1.0, -20.0, 64.0]) / 45.0
_R3_ABS = np.abs(_R3)
# A quotient's noise is proportional to 1 / step: R3's standard deviation is
# NOISE_FACTOR times that of q(t) (its second step), R2's NOISE_FACTOR_R2 times.
_NOISE_FACTOR = float(np.sqrt(np.sum((_R3 * np.array([0.5, 1.0, 2.0, 4.0])) ** 2)))
_NOISE_FACTOR_R2 = float(np.sqrt(np.sum((_R2 * np.array([1.0, 2.0, 4.0])) ** 2)))


@dataclass(frozen=True)
class Fast:
    """The ``mode=`` of :func:`oracles.check_vjp` that checks along random directions.

    Parameters
    ----------
    directions : int
        Gaussian directions over all elements not yet compared individually,
        per round (default 3). They must all pass for the round to pass; an
        element off by ``|d|`` escapes all of them with probability at most
        ``(0.8 E / |d|)^directions``, with ``E`` the numerics' error (see
        the module notes).
    seed : int, optional
        Seed of the directions (default: the check's ``seed``).
    max_named : int
        More disagreeing blocks than this at one level of the search means
        "errors everywhere": a sample of those blocks is checked
        individually, then, if the sample passes, the blocks exhaustively.
    exhaustive : Exhaustive
        Settings (executor, progress) of the exhaustive checks.

    Examples
    --------
    >>> import numpy as np
    >>> from oracles import check_vjp
    >>> x = np.linspace(-1.0, 1.0, 6000)
    >>> def wrong(g, x):
    ...     d = g * np.cos(x)
    ...     d[1234] *= 1 + 1e-6
    ...     return d
    >>> r = check_vjp(np.sin, wrong, (x,), mode=Fast())
    >>> r.ok, [e.index for e in r.inputs[0].worst if not e.passed]
    (False, [(1234,)])
    """

    directions: int = 3
    seed: int | None = None
    max_named: int = 16
    exhaustive: Exhaustive = field(default_factory=Exhaustive)

    def __post_init__(self):
        for name in ("directions", "max_named"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InvalidArgumentType(f"{name} must be an int, got {v!r}")
            if v < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {v}")
        check_seed(self.seed)
        if not isinstance(self.exhaustive, Exhaustive):
            raise InvalidArgumentType(
                f"exhaustive must be an oracles.Exhaustive, got {type(self.exhaustive).__name__}"
            )

    def reference(self, objective, grads, *, atol=0.0, rtol=0.0, seed=None, must_check=None):
        """The numeric reference of every input.

        Returns ``(references, method, evaluations, notes)``: one
        :class:`~oracles.compare.Reference` per input, whose ``checked`` mask
        says which elements carry a numeric value of their own and whose
        ``covered`` counts the elements the reference vouches for.
        """
        res = fast_partials(
            objective,
            grads,
            atol=atol,
            rtol=rtol,
            directions=self.directions,
            seed=self.seed if self.seed is not None else (0 if seed is None else seed),
            max_named=self.max_named,
            must_check=must_check,
            exhaustive=self.exhaustive,
        )
        out = []
        for x, r, n in zip(objective.point, res.results, res.covered, strict=True):
            fields = {k: v.reshape(x.shape) for k, v in r.items()}
            if fields["value"].size and not any(fields["value"].strides):
                # Nothing compared individually: broadcast values (no memory), no kinks.
                fields.update(kink=None, left=None, right=None, nonfinite=None)
            out.append(Reference(**fields, covered=int(n)))
        return out, res.method, res.evaluations, res.notes


@dataclass(frozen=True)
class Projection:
    """One directional test over the elements not yet checked: residual, error, verdict.

    ``tolerance`` is the threshold the residual was held to: the numerics'
    own error estimate (tolerances apply per element, see the module notes).
    """

    n_elements: int
    residual: float
    error: float
    tolerance: float

    @property
    def passed(self):
        return bool(np.isfinite(self.residual) and abs(self.residual) <= self.tolerance)


@dataclass
class FastResult:
    """What :func:`fast_partials` found.

    Attributes
    ----------
    results : list of dict
        Per input, flat arrays ``value, error, kink, left, right, nonfinite``
        (meaningful where ``checked``) and ``checked`` (bool): the elements
        compared individually. Where an element is covered by the last,
        passing, projections instead, ``error`` is their resolution: an
        element off by that much escapes all of them with probability at
        most ``MISS`` (1%). An input with no element compared individually
        (and none given up) has read-only broadcast arrays instead (NaN
        values, one error): no memory.
    covered : list of int
        Per input, the elements the result vouches for: those checked
        individually plus those covered by the last, passing, projections.
        Elements of blocks given up as "errors everywhere" are not covered.
    projections : list of Projection
        The directions over all unchecked elements, every round (the last
        ones passed unless ``fallback_all``).
    localized : list of (input_number, flat_index)
        Elements named by the search.
    exhaustive_inputs : list of int
        Inputs with blocks of errors everywhere (sampled, then given up or
        checked exhaustively).
    fallback_all : bool
        True when the projections kept disagreeing without the search
        explaining it, and every remaining element was checked exhaustively.
    tests : int
        Directional derivatives evaluated (projections and search).
    evaluations : int
        Calls of ``fn``.
    step : float
        The calibrated step ``t*`` of the projections (``nan`` if none).
    noise : float
        The measured noise of one evaluation of the residual (``nan`` if none).
    method : str
    notes : list of str
    """

    results: list
    covered: list
    projections: list
    localized: list
    exhaustive_inputs: list
    fallback_all: bool
    tests: int
    evaluations: int
    step: float
    noise: float
    method: str
    notes: list


def _gaussian(rng, n):
    """Standard normal values, rounded to multiples of ``2^-DIRECTION_BITS``, as float32.

    ``t u`` is then exact for every power-of-two step ``t``, and so is
    ``x + t u`` while ``|x| < 2^(52 - DIRECTION_BITS) t``: the perturbation
    is exactly symmetric and exactly the same direction at every step, so
    the extrapolation across steps sees no rounding of the inputs. Two
    entries are equal with probability about ``2^-DIRECTION_BITS / 4``.
    Multiples of ``2^-16`` below :data:`DIRECTION_MAX` in magnitude are
    float32 values exactly: half the memory of float64, the same numbers
    (drawn chunk by chunk: no float64 temporary of size ``n``). Every use
    computes in float64.
    """
    scale = 2.0**DIRECTION_BITS
    out = np.empty(n, dtype=np.float32)
    for k in range(0, n, CHUNK):
        z = rng.standard_normal(min(CHUNK, n - k))
        np.clip(np.rint(z * scale) / scale, -DIRECTION_MAX, DIRECTION_MAX, out=z)
        out[k : k + z.size] = z
    return out


class _Direction:
    """A Gaussian direction of the check (:func:`_gaussian`), kept or drawn again on demand.

    Its values stay in memory while it is measured or searched; afterwards only
    directions of up to :data:`KEEP_DIRECTION` elements keep them, larger ones
    keep the generator's state and draw the same values again when a later
    round needs them (no extra copies of a large input's size between rounds).
    """

    def __init__(self, rng, n):
        self._kind = type(rng.bit_generator)
        self._state = rng.bit_generator.state
        self.n = int(n)
        self._values = _gaussian(rng, self.n)

    def values(self):
        if self._values is None:
            again = np.random.Generator(self._kind())
            again.bit_generator.state = self._state
            return _gaussian(again, self.n)
        return self._values

    def release(self):
        if self.n > KEEP_DIRECTION:
            self._values = None


#: Most outliers per input (:func:`_outliers`) checked individually from the start.
MAX_OUTLIERS = 32


def _outliers(xs):
    """``(input, flat index)`` of elements far larger than their input's typical ones.

    A direction over an input with one element of 1e10 among elements of
    about 1 has no step that resolves both (the projections' error
    estimates were larger than the gradient: the check was inconclusive, or
    a correct gradient failed): such elements, more than
    :data:`~oracles.numerics.objective.OUTLIER_RATIO` times the typical
    magnitude (:func:`~oracles.numerics.objective._typical`), are compared
    individually, at most :data:`MAX_OUTLIERS` per input (the largest).
    """
    out = []
    for i, x in enumerate(xs):
        typ = _typical(x)
        if typ == 0.0 or typ == _rms(x):
            continue  # no outliers set apart
        a = np.abs(np.asarray(x, dtype=np.float64).reshape(-1))
        with np.errstate(invalid="ignore"):
            far = np.flatnonzero(np.isfinite(a) & (a > OUTLIER_RATIO * typ))
        far = far[np.argsort(-a[far], kind="stable")[:MAX_OUTLIERS]]
        out += [(i, int(j)) for j in far]
    return out


def _units(xs, scales=None):
    """Per input, the power of two that a direction's values on it are multiplied by.

    The largest input (by root-mean-square ``R``) gets 1 when ``R`` is
    between ``2^-UNIT_ABOVE`` and ``2^UNIT_ABOVE``, ``2^(floor(log2 R) -
    UNIT_ABOVE)`` above and ``2^(floor(log2 R) + UNIT_ABOVE)`` below: the
    calibration's steps, from ``T0``, are then relative to its scale (an
    input of scale 1e9 stepped by at most 1/8 sees its fn change by
    rounding only: every measurement was inconclusive; one of scale 1e-9
    is 1e8 scales away at ``T0``, and the descent's 25 rungs end at
    ``2^-27 ~ 7e-9``, still above it: ``softmax(x / 1e-9)`` saturated at
    every rung, the stencils agreed on ``-<analytic, u>`` with an error of
    1e-8 of it, and the check fell back to every element). Both ends are
    continuous with the band between: its first step is 1/256 to 1/128 of
    ``R`` above it and 1 to 2 times ``R`` below it, as at its edges. Every other input
    gets that unit times the power of two between its scale and ``R``, so
    that one step resolves all of them (an input of scale 1e-3 beside one
    of 1e9 forced steps at which the large one's errors of 1e-7 were
    lost); an input that is 0 everywhere is placed by its measured scale
    (``scales``, :func:`~oracles.numerics.objective.measured_scales`; without
    them it gets the largest one's). Powers of two keep ``t u`` exact.

    Examples
    --------
    >>> _units([np.ones(3), np.zeros(2)]), _units([np.full(4, 1e9), np.full(4, 1e-3)])
    ([1.0, 1.0], [33554432.0, 6.103515625e-05])
    >>> _units([np.full(4, 1e-9)])
    [1.4901161193847656e-08]
    """
    sizes = [_typical(x) for x in xs]
    if scales is not None:  # the measured scale of an input that is 0 everywhere
        sizes = [r or _rms(s) for r, s in zip(sizes, scales, strict=True)]
    exps = [math.frexp(r)[1] - 1 if np.isfinite(r) and r > 0 else None for r in sizes]
    top = max((e for e in exps if e is not None), default=0)
    base = max(0, top - UNIT_ABOVE) + min(0, top + UNIT_ABOVE)
    return [math.ldexp(1.0, base + (0 if e is None else e - top)) for e in exps]


def _norm(v):
    """Euclidean norm of ``v`` in float64, chunk by chunk."""
    total = 0.0
    for k in range(0, v.size, CHUNK):
        c = np.asarray(v[k : k + CHUNK], dtype=np.float64)
        total += float(np.dot(c, c))
    return math.sqrt(total)


def _abs_dot(g, v):
    """``sum |g| |v|`` in float64, chunk by chunk."""
    total = 0.0
    for k in range(0, v.size, CHUNK):
        total += float(np.dot(np.abs(g[k : k + CHUNK]), np.abs(v[k : k + CHUNK]).astype(float)))
    return total


class _All:
    """Every element active: the index array ``arange(n)`` without its memory.

    ``active[pos]`` is ``pos`` itself (positions into the active elements are
    their global indices).
    """

    def __init__(self, n):
        self.size = int(n)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return np.arange(self.size)[key]
        return np.asarray(key)


def _noise_from_differences(values, mixed=False):
    """Noise level (standard deviation) of equally spaced samples, or ``None``.

    Returns ``(sigma, status)``: ``status`` is ``"ok"`` (also for samples
    that lie exactly on a line: no noise), ``"smooth"`` (no two consecutive
    orders agree, or a derivative jumps between the samples: the spacing is
    too large; ``sigma`` is then the smallest estimate, an upper bound) or
    ``"flat"`` (most samples are equal: the spacing is too small for the
    function's resolution). ``mixed``: kinks of both signs count too
    (:func:`~oracles.numerics.objective.derivative_jumps`; at coarse spacings
    only: at fine ones rounding on a grid of quanta looks the same).
    """
    v = np.asarray(values, dtype=np.float64)
    first = np.diff(v)
    if not np.any(np.diff(first)):
        return 0.0, "ok"  # exactly linear (or constant): no noise at this scale
    if np.count_nonzero(first == 0) > first.size // 2:
        return 0.0, "flat"
    sigmas = []
    # Scaled by a power of two (exact): squared differences of values near 1e-160
    # underflow, of values near 1e160 overflow.
    with np.errstate(divide="ignore", invalid="ignore"):
        _, e = np.frexp(np.max(np.abs(v)))
    e = int(e) if np.isfinite(e) else 0
    d = np.ldexp(v, -e)
    for k in range(1, 7):
        d = np.diff(d)
        gamma = math.factorial(k) ** 2 / math.factorial(2 * k)
        sigmas.append((k, math.ldexp(math.sqrt(gamma * float(np.mean(d * d))), e), d))
    # A kink, or a jump in f'' or f''', between the samples (relu(r)^2 of one element at
    # r = 0) makes differences that look like noise of h^2 times the jump: no noise seen.
    jumps = derivative_jumps(v[:, None], mixed=mixed)[0]
    for (_, s, d), (_, s_next, _) in zip(sigmas[1:], sigmas[2:], strict=False):
        both_signs = np.any(d > 0) and np.any(d < 0)
        if both_signs and s <= 4.0 * s_next and s_next <= 4.0 * s and not jumps:
            return max(s, s_next), "ok"
    return min(s for _, s, _ in sigmas[1:]), "smooth"


class _Space:
    """All inputs as one flat index space, and residual measurements along directions in it."""

    def __init__(self, objective, grads):
        self.objective = objective
        # The evaluation point, read only: perturbed inputs are built in the
        # objective's scratch arrays, never in it.
        self.work = objective.point
        self.flat = [w.reshape(-1) for w in self.work]
        sizes = [w.size for w in self.work]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.grads = [np.asarray(g, dtype=np.float64).reshape(-1) for g in grads]
        self.cot = objective.cotangent
        self.abs_cot = np.abs(self.cot)
        self.vector = self.cot.size > 1
        self.tests = 0
        self._step = np.empty(CHUNK)
        #: Per input, the power of two its direction's values are multiplied by (:func:`_units`).
        self.unit = _units(self.work, objective.scales)

    def input_of(self, gidx):
        """Input number of each global flat index."""
        return np.searchsorted(self.offsets, gidx, side="right") - 1

    def parts(self, gidx, vals):
        """Split a direction on sorted global indices into ``(input, local, values, sum)`` parts.

        ``sum`` is ``sum |analytic| |values|`` over the part, for the rounding
        floor of ``<analytic, step>``. ``gidx`` may be :class:`_All`.
        """
        if isinstance(gidx, _All):
            out = []
            for i in range(len(self.work)):
                a, b = int(self.offsets[i]), int(self.offsets[i + 1])
                if a == b:
                    continue
                v = self._scaled(i, vals[a:b])
                out.append((i, slice(0, b - a), v, _abs_dot(self.grads[i], v)))
            return out
        cuts = np.searchsorted(gidx, self.offsets)
        out = []
        for i in range(len(self.work)):
            a, b = int(cuts[i]), int(cuts[i + 1])
            if a == b:
                continue
            off = int(self.offsets[i])
            first, last = int(gidx[a]) - off, int(gidx[b - 1]) - off
            if last - first + 1 == b - a:  # sorted and distinct: a contiguous range
                loc = slice(first, last + 1)
            else:
                loc = np.asarray(gidx[a:b], dtype=np.int64) - off
            v = self._scaled(i, vals[a:b])
            out.append((i, loc, v, _abs_dot(self.grads[i][loc], v)))
        return out

    def _scaled(self, i, v):
        """Direction values ``v`` on input ``i`` in that input's units (exact: powers of two)."""
        unit = self.unit[i]
        return v if unit == 1.0 else np.multiply(v, unit, dtype=np.float64)

    @staticmethod
    def norm(parts):
        """Euclidean norm of a direction split into :meth:`parts` (in the inputs' units)."""
        return math.sqrt(sum(_norm(v) ** 2 for _, _, v, _ in parts))

    def call(self, xs):
        self.objective.calls += 1
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            out = self.objective.fn(*xs)
        out = np.asarray(out, dtype=np.float64)
        if out.shape != self.cot.shape:
            raise UserFunctionError(
                f"fn returned shape {out.shape} at a perturbed point but {self.cot.shape} at the "
                "evaluation point"
            )
        if any(np.may_share_memory(out, x) for x in xs):
            out = out.copy()  # fn returned (a view of) its input: the next call refills it
        return out

    def _inputs(self, parts, s):
        """The inputs with ``s * values`` added, in scratch arrays; ``<analytic, step>``.

        ``fn`` gets arrays of its own on every call (the objective's scratch
        arrays, never the evaluation point; what it writes into them is
        overwritten before the next call), and its outputs are used (or
        copied, where they are views of its inputs) before the next call, so
        the arrays can be reused: allocating a fresh 8 MB array per call costs
        as much as a small ``fn``. Contiguous parts are built chunk by chunk,
        with the step actually taken, ``(x + s v) - x``, in a small scratch.
        """
        xs = []
        lin = lin_abs = 0.0
        touched = {i: (loc, v, gv) for i, loc, v, gv in parts}
        for i, w in enumerate(self.work):
            buf = self.objective.scratch(i)
            flat = buf.reshape(-1)
            x = self.flat[i]
            if i not in touched:
                np.copyto(buf, w)
                xs.append(buf)
                continue
            loc, v, gv = touched[i]
            g = self.grads[i]
            if isinstance(loc, slice):
                start, stop = loc.start, loc.stop
                np.copyto(flat[:start], x[:start])
                np.copyto(flat[stop:], x[stop:])
                for k in range(start, stop, CHUNK):
                    e = min(k + CHUNK, stop)
                    step = self._step[: e - k]
                    np.multiply(v[k - start : e - start], s, out=step, dtype=np.float64)
                    np.add(x[k:e], step, out=flat[k:e])
                    np.subtract(flat[k:e], x[k:e], out=step)  # the step actually taken
                    lin += float(np.dot(g[k:e], step))
            else:
                np.copyto(buf, w)
                x0 = x[loc]
                flat[loc] = x0 + np.multiply(v, s, dtype=np.float64)
                lin += float(np.dot(g[loc], flat[loc] - x0))
            lin_abs += abs(s) * gv
            xs.append(buf)
        return xs, lin, lin_abs

    def perturbed(self, parts, s):
        """The inputs with ``s * values`` added (scratch arrays), ``<analytic, step>``, floor."""
        return self._inputs(parts, s)

    def evaluate(self, parts, s, points=None):
        """``(fn(x + s u), <analytic, step>, its rounding floor)``, evaluated once per ``s``.

        ``points`` (a dict, optional) holds the evaluations made along this
        direction so far: one at the same ``s`` is reused (the same inputs,
        built by the same code, give the same output: the noise samples'
        points ``8 h`` and ``4 h`` are rungs of the calibration), and a new
        one is recorded (its output only where it is small:
        :data:`KEEP_OUTPUTS`).
        """
        if points is not None and s in points and points[s][1] is not None:
            _, f, lin, lin_abs = points[s]
            return f, lin, lin_abs
        xs, lin, lin_abs = self._inputs(parts, s)
        f = self.call(xs)
        if points is not None:
            psi = float(np.vdot(self.cot, f - self.objective.base_output)) - lin
            points[s] = (psi, f if f.size <= KEEP_OUTPUTS else None, lin, lin_abs)
        return f, lin, lin_abs

    def quotient(self, parts, t, mask, points=None):
        """The residual's central-difference quotient at step ``t`` and its rounding floor.

        ``(phi(x + t u) - phi(x - t u) - <analytic, (x + t u) - (x - t u)>) / 2t``,
        with the outputs differenced elementwise before the contraction.
        Also returns the rounding of the contraction itself, the objective's
        model noise (used only to stop the calibration's descent) and the
        second difference ``phi(x + t u) - 2 phi(x) + phi(x - t u)`` (minus
        its analytic part, which cancels for steps symmetric up to
        rounding): at a kink it shrinks like ``t``, elsewhere like ``t^2``.
        ``mask`` accumulates the outputs that changed. ``points``: see
        :meth:`evaluate`.
        """
        fp, lp, ap = self.evaluate(parts, t, points)
        fm, lm, am = self.evaluate(parts, -t, points)
        if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
            return np.nan, np.inf, np.inf, np.nan
        diff = fp - fm
        num = float(np.vdot(self.cot, diff))
        model = changed_noise(self.cot, fp, fm, mask)
        if self.vector:
            rounding = _EPS * (float(np.vdot(self.abs_cot, np.abs(diff))) + ap + am)
        else:
            rounding = _EPS * (abs(num) + ap + am)
        f0 = self.objective.base_output
        second = float(np.vdot(self.cot, (fp - f0) + (fm - f0))) - (lp + lm)
        return (num - (lp - lm)) / (2.0 * t), rounding / (2.0 * t), model / (2.0 * t), second

    def hidden(self, mask, t):
        """Bound on the derivative hidden in outputs that never changed along a direction.

        An output that stayed bitwise equal at every step up to ``t`` can
        still depend on the direction, by less than its resolution over
        ``t``: ``2 sum |c_i| level_i / t`` over those outputs, with
        ``level_i`` the function's relative precision at that output times
        ``|f_i|`` (at least float64's epsilon times ``|f_i|``; the
        objective's measured relative precision where it has one). An output
        that is exactly 0 and stays so hides nothing. (The per-element noise
        the objective measured at ``x`` is not used here: an output next to
        a kink, ReLU of ``-1e-4``, looks noisy to a probe that crosses the
        kink, though it is exactly 0 along every step taken here.)
        """
        unseen = ~mask
        if not np.any(unseen):
            return 0.0
        f0 = np.abs(np.asarray(self.objective.base_output, dtype=np.float64))
        relative = getattr(getattr(self.objective, "noise", None), "relative", None)
        if relative is None:
            relative = np.full(f0.shape, _EPS)
        relative = np.maximum(np.asarray(relative, dtype=np.float64).reshape(f0.shape), _EPS)
        with np.errstate(over="ignore", invalid="ignore"):
            level = float(np.sum(self.abs_cot[unseen] * relative[unseen] * f0[unseen]))
        return 2.0 * level / t


@dataclass
class _Measurement:
    """A residual measured along one direction, and what is needed to measure it again."""

    value: float
    error: float
    parts: list
    t: float
    cache: dict
    norm: float


class _Prober:
    """Residuals along directions: calibrated once, then four steps per measurement.

    A measurement along ``u`` at step ``t`` evaluates the residual's central
    differences at ``2t, t, t/2, t/4`` (8 calls of ``fn``), returns the
    3rd-order extrapolant ``R3`` and the error estimate
    ``NOISE_SIGMAS * noise + TRUNCATION_SAFETY * |R3 - R2|``: the noise is
    the calibration's measured level propagated through the extrapolation,
    the truncation is this direction's own.
    """

    def __init__(self, space):
        self.space = space
        self.calibrated = False
        self.t_star = np.nan
        self.top = T0  # the calibration's largest step (:meth:`_largest_step`)
        self.sigma = np.nan  # measured noise of one evaluation of the residual
        self.unorm = np.nan  # norm of the calibration direction
        self._prior = (0.0, 0)  # the closely spaced samples' noise and degrees of freedom
        self._samples = []  # working-scale samples (see learn)
        #: The step just above ``t_star`` where the calibration's stencil saw a kink (``None``
        #: where it saw none there): a kink held the projections' step below it.
        self.kink_step = None

    # --- noise --------------------------------------------------------------------------------

    def _psi_samples(self, parts, h, points=None):
        """``psi(i h) - psi(0)`` for ``i = 0 .. 2 NOISE_POINTS`` (``h`` may be negative).

        One-sided, so that a kink at ``x`` itself (ReLU at 0) is at the end
        of the samples, not inside them: differences of order two and more
        see only the noise and the smooth part of one branch. ``points``
        (see :meth:`_Space.evaluate`): the samples at steps evaluated along
        this direction already (a rung of the calibration at ``8 h``) are
        reused, and the new ones recorded for the rungs below.
        """
        sp = self.space
        f0 = sp.objective.base_output
        vals = [0.0]
        for i in range(1, 2 * NOISE_POINTS + 1):
            s = i * h
            if points is not None and s in points:
                psi, f = points[s][0], points[s][1]
                if f is not None and not np.all(np.isfinite(f)):
                    return None
                if not np.isfinite(psi):
                    return None
                vals.append(psi)
                continue
            f, lin, _ = sp.evaluate(parts, s, points)
            if not np.all(np.isfinite(f)):
                return None
            vals.append(float(np.vdot(sp.cot, f - f0)) - lin)
        return np.array(vals)

    @functools.cached_property
    def rounding_floor(self):
        """The least noise of ``psi``: each output rounded to float64 at every call.

        Rounding to float64 puts each output off by up to half a unit in its
        last place (``u_i``, a standard deviation of ``u_i / sqrt(12)``). The
        samples of :meth:`_measure_noise` see about that where the rounding
        is random, but can show far less, and even none, where it is the same
        at nearby points (a loss near ``2e4`` whose moving part is linear:
        every change is a whole number of units, exactly proportional to the
        step, and a term of ``1.6e-8`` times the step is lost below them: the
        samples saw ``8.5e-21`` against a rounding of ``1e-12``). The
        difference quotients carry that rounding as a bias, so no noise below
        :data:`ROUNDING_SHARE` of it is taken.
        """
        f0 = np.asarray(self.space.objective.base_output, dtype=np.float64).reshape(-1)
        return ROUNDING_SHARE * self._contracted(np.spacing(np.abs(f0))) / math.sqrt(12.0)

    def _contracted(self, per_output):
        """``sqrt(sum (|c_i| s_i)^2)``: the noise of ``psi`` from independent output noises ``s_i``.

        Scaled by the largest term (no overflow near 1e200, no underflow near
        1e-200); 0 where that is not finite and positive.
        """
        s = np.asarray(per_output, dtype=np.float64).reshape(-1)
        c = np.asarray(self.space.cot, dtype=np.float64).reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            terms = np.abs(c) * s
        top = float(np.max(terms)) if terms.size else 0.0
        if not (top > 0 and np.isfinite(top)):
            return 0.0
        return top * float(np.sqrt(np.sum((terms / top) ** 2)))

    def _model_noise(self):
        """The noise of ``psi`` from the objective's measured noise model (9 to 41 calls)."""
        return self._contracted(self.space.objective.noise.sigma)

    def _coarse_noise(self, parts, points=None):
        """The noise at the spacing :data:`COARSE_NOISE_SPACING` (0 where none shows there).

        Below it, a part of ``fn`` that computes in float32 under a float64 term
        (``w * float32(x + 1e3)`` next to ``sin(x)``) is a staircase that does
        not move: samples there see the float64 term's rounding only, every
        stencil at such steps misses the float32 part's derivative alike (a
        backward that forgets it passed), and the calibration, which prefers
        the smallest error, settles there. At this spacing (the objective's
        first probe step) the staircase shows as noise; where it shows far more
        than the small spacings did, the objective's noise model is measured,
        and the steps chosen are ones it resolves. Eight calls at most (the
        calibration's rungs at ``2``, ``4`` and ``8`` times the spacing are
        reused).
        """
        v = self._psi_samples(parts, COARSE_NOISE_SPACING, points)
        if v is None:
            return 0.0
        sigma, status = _noise_from_differences(v, mixed=True)
        return sigma if status == "ok" else 0.0

    def _measure_noise(self, parts, h, points=None):
        """Noise of the residual along ``parts`` near spacing ``h`` (ECnoise-like).

        Nine samples hold only a few degrees of freedom of noise (one
        estimate is off by 3x now and then), so two runs, at spacing ``h``
        on one side and ``h / 16`` on the other, are pooled (root mean
        square), and a third, ``h / 4``,
        when those two differ by more than 2x. A spacing whose samples are
        mostly equal is below the function's resolution: it moves up.
        Returns ``(sigma, degrees of freedom)`` (0 for an upper bound).
        """
        ok, bounds = [], []
        spacings = [h, -h / 16.0]  # one run on each side of x
        tries = 0
        while spacings and tries < 5:
            s = spacings.pop(0)
            tries += 1
            v = self._psi_samples(parts, s, points)
            if v is None:  # fn not finite out there: stay closer to x
                spacings.append(s / 16.0)
                continue
            sigma, status = _noise_from_differences(v)
            if status == "ok":
                ok.append(sigma)
                if len(ok) == 2 and not spacings and max(ok) > 2.0 * min(ok):
                    spacings.append(h / 4.0)
            elif status == "smooth":
                # Only an upper bound: the spacing is too large for the differences to
                # reach the noise (a smooth fn along a long direction). Smaller spacings
                # measure it; an upper bound kept would make every projection blind (an
                # element off by 8x the usual error passed with an error of 1.8e-5).
                bounds.append(sigma)
                if not ok and not spacings:
                    spacings.append(s / 16.0)
            elif abs(s) * 16.0 <= T0 and not ok:
                spacings.append(s * 16.0)
        if len(ok) >= 3:
            # Two runs disagreed by more than 2x: the third decides. The median, not the
            # root mean square: a smooth fn's differences at the largest spacing can agree
            # by chance far above its noise (1.5e-7 against 1e-14, a tanh layer), and one
            # such estimate must not set the noise of every projection.
            return float(np.median(ok)), 3 * len(ok)
        if ok:
            top = max(ok)  # a root-mean-square that neither overflows nor underflows
            rms = top * math.sqrt(float(np.mean(np.square(np.asarray(ok) / top)))) if top else 0.0
            return rms, 3 * len(ok)
        return (min(bounds) if bounds else 0.0), 0

    def _working_sample(self, parts, cache, t):
        """One sample of the noise at the working scale, ``|R3(t) - R3(t/2)| / unit``.

        ``R3`` at ``t`` and at ``t/2`` measure the same residual along the
        same direction; where both see no kink and little truncation, their
        difference is noise at the working scale, whatever the gradient
        (which the closely spaced samples of :meth:`_measure_noise` can
        under- or overestimate: nearby evaluations round alike, or not).
        ``unit`` is its standard deviation for a noise of 1 per evaluation.
        Two more calls of ``fn`` at most. ``None`` where unusable.
        """
        s1 = self.stencil(parts, t, cache)
        s2 = self.stencil(parts, t / 2.0, cache)
        if not (np.isfinite(s1[0]) and np.isfinite(s2[0])):
            return None
        if s1[3] != "none" or s2[3] != "none" or s1[2] > 0.5 * (s1[1] - s1[2]):
            return None
        c = np.concatenate([_R3, [0.0]]) - np.concatenate([[0.0], _R3])
        steps = t * 2.0 ** (1 - np.arange(5))
        unit = math.sqrt(float(np.sum((c * math.sqrt(2.0) / (2.0 * steps)) ** 2)))
        # Not squared here: the square of a noise near 1e186 (outputs near 1e200) overflows.
        return abs(s1[0] - s2[0]) / unit

    def learn(self, parts, cache, t):
        """Pool one more working-scale sample (see :meth:`_working_sample`) into the noise."""
        # Marked in the direction's own cache (an id() of a cache could be reused by the
        # next direction's once this one is freed).
        key = ("learned", t)
        if key in cache:
            return
        cache[key] = True
        sample = self._working_sample(parts, cache, t)
        if sample is None:
            return
        self._samples.append(sample)
        sigma, dof = self._prior
        n = len(self._samples)
        # Root mean squares scaled by the largest value (no overflow near 1e200, no
        # underflow to 0 near 1e-200).
        top = max(self._samples)
        if dof == 0:  # an upper bound: keep it unless the working scale shows more
            rms = top * math.sqrt(sum((v / top) ** 2 for v in self._samples) / n) if top else 0.0
            self.sigma = max(sigma, rms)
        else:
            top = max(top, sigma)
            if top:
                total = dof * (sigma / top) ** 2 + sum((v / top) ** 2 for v in self._samples)
                self.sigma = top * math.sqrt(total / (dof + n))
            else:
                self.sigma = 0.0
        self.sigma = max(self.sigma, self.rounding_floor)

    # --- measurements ---------------------------------------------------------------------------

    def noise_of(self, t, factor=_NOISE_FACTOR):
        """Standard deviation of an extrapolant whose second step is ``t`` (``fn``'s noise)."""
        per_eval = math.sqrt(2.0) * self.sigma
        return factor * per_eval / (2.0 * t)

    def _quotient(self, parts, s, cache):
        if s not in cache:
            m = np.zeros(self.space.cot.shape, dtype=bool)
            q, r, model, second = self.space.quotient(parts, s, m, cache.get("points"))
            cache[s] = (q, r, m, model, second)
        return cache[s]

    def kink_state(self, rows, t, sigma=None):
        """``(state, error)`` of a stencil: ``"none"``, ``"at x"`` or ``"inside"``.

        ``g(s) = (phi(x + s u) - 2 phi(x) + phi(x - s u)) / s`` is the
        difference of the one-sided slopes: ``A s + B s^3 + ...`` where
        ``phi`` is smooth (it halves with the step), a constant ``J`` at a
        kink at ``x``, and ``J (1 - s_k / s)`` for a kink at ``s_k`` within
        the steps (neither). "inside" comes with the bias such a kink can
        give the extrapolant, ``2 max |g(s) - 2 g(s / 2)|`` over the smaller
        steps (a kink adds ``J (s - s_k) / 2s`` to each central difference,
        which no extrapolation in even powers removes).
        """
        sigma = self.sigma if sigma is None else sigma
        steps = [t * 2.0 ** (1 - k) for k in range(len(rows))]
        g = [r[4] / h for r, h in zip(rows, steps, strict=True)]
        n = [NOISE_SIGMAS * math.sqrt(6.0) * sigma / h for h in steps]
        pairs = list(zip(range(len(g) - 1), range(1, len(g)), strict=True))
        # g(s) - 2 g(s/2) is 0.75 B s^3 where phi is smooth: it falls 8x per halving
        # (half of that at least, up to the noise). A kink at x keeps it at -J: under a
        # curvature A s far above J (a clip's bound 3e-8 away, on a sine of scale 1e-3:
        # J = 2e-3, A = 82), the jump is a small part of g and hides below 0.3 |g|.
        d = [g[a] - 2.0 * g[b] for a, b in pairs]
        dn = [n[a] + 2.0 * n[b] for a, b in pairs]
        # (Below 2% of g, d is the rounding of the differences: before the calibration
        # has measured the noise, n is 0.)
        falls = all(
            abs(d[k + 1]) <= 0.5 * abs(d[k]) + dn[k] + dn[k + 1] + 0.02 * abs(g[k + 1])
            for k in range(len(d) - 1)
        )
        if falls and all(abs(d[k]) <= 0.3 * abs(g[a]) + dn[k] for k, (a, _) in enumerate(pairs)):
            return "none", 0.0
        # At x: the same jump at every step (g itself is that jump plus the curvature's A s).
        if abs(d[-1]) > dn[-1] and all(
            abs(d[k] - d[k + 1]) <= 0.2 * max(abs(d[k]), abs(d[k + 1])) + dn[k] + dn[k + 1]
            for k in range(len(d) - 1)
        ):
            return "at x", 0.0
        return "inside", 2.0 * max(abs(v) for v in d[1:])

    def stencil(self, parts, t, cache):
        """``(value, error, truncation and kink part, kink state)`` from ``2t, t, t/2, t/4``.

        The error is the noise (``NOISE_SIGMAS`` standard deviations), the
        truncation ``|R3 - R2|`` (``TRUNCATION_SAFETY`` times), and, where
        the one-sided slopes show a kink *within* the steps, the bias it can
        cause (:meth:`kink_state`); smaller steps avoid it. A kink *at*
        ``x`` (the same jump between the one-sided slopes at every step,
        also at ``t/8``) is not widened over: the central differences then
        see the mean of the one-sided slopes, the residual is real, and the
        search names the elements at the kink for the per-element ladder,
        which tells a subgradient from an error.
        """
        rows = [self._quotient(parts, t * 2.0 ** (1 - k), cache) for k in range(4)]
        q = np.array([r[0] for r in rows])
        if not (np.all(np.isfinite(q)) and all(np.isfinite(r[4]) for r in rows)):
            return np.nan, np.inf, np.inf, "none"
        mask = rows[0][2] | rows[1][2] | rows[2][2] | rows[3][2]
        value = float(_R3 @ q)
        trunc = TRUNCATION_SAFETY * abs(value - float(_R2_LOW @ q))
        state, kink = self.kink_state(rows, t)
        if state == "at x":
            # Kinks within the steps can mimic one at x by chance: a kink at x shows the
            # same jump from the next smaller step too (two more calls).
            below = self._quotient(parts, t / 8.0, cache)
            if np.isfinite(below[4]):
                state, kink = self.kink_state(rows + [below], t)
        # The rounding of the contraction and of <analytic, step> is a bound per quotient,
        # not a standard deviation: it enters with the extrapolation's absolute weights (where
        # the steps are exact it is the same bias in every quotient, and the weights sum to 1).
        rounding = float(_R3_ABS @ np.array([r[1] for r in rows]))
        noise = NOISE_SIGMAS * self.noise_of(t) + rounding
        hidden = self.space.hidden(mask, 2.0 * t)
        if hidden > 0.25 * (noise + trunc + kink):
            hidden = min(hidden, self._hidden_far(parts, mask, t, cache))
        return value, noise + trunc + kink + hidden, trunc + kink, state

    def _hidden_far(self, parts, mask, t, cache):
        """The hidden-derivative bound, with the outputs that stay put far out along ``parts``.

        Along a block of the search most outputs may not depend on the block
        at all (the other rows of a layer): bitwise unchanged at the steps
        up to ``2t``, each is charged its resolution over ``2t``, which can
        bury the residual of the search (an element 5 errors out was lost
        that way, and the check fell back to every element). Two calls at
        ``+-T`` (``T = T0``, at least twice ``2t``) tell them apart: an
        output bitwise unchanged there too hides at most its resolution over
        ``T``; the others keep the bound over ``2t``. ``inf`` when ``fn`` is
        not finite out there (the bound over ``2t`` stands).
        """
        far = self.top  # no farther: the calibration's first rung moved every element that far
        if far < 4.0 * t:
            return np.inf
        if "far" not in cache:
            f0 = self.space.objective.base_output
            moved = np.zeros(self.space.cot.shape, dtype=bool)
            for sign in (1.0, -1.0):
                # Along the calibration's direction, its first rung (reused where kept).
                f, _, _ = self.space.evaluate(parts, sign * far, cache.get("points"))
                if not np.all(np.isfinite(f)):
                    moved = None
                    break
                moved |= f != f0
            cache["far"] = moved
        moved = cache["far"]
        if moved is None:
            return np.inf
        unseen = ~mask
        near = self.space.hidden(~(unseen & moved), 2.0 * t)
        return near + self.space.hidden(~(unseen & ~moved), far)

    def step_for(self, norm):
        """Step for a direction of norm ``norm``: the calibrated perturbation size."""
        if not (norm > 0) or not np.isfinite(self.unorm):
            return self.t_star
        growth = min(STEP_GROWTH_MAX, self.unorm / norm, self.top / (2.0 * self.t_star))
        return self.t_star * 2.0 ** math.floor(math.log2(max(growth, 1.0)))

    def measure(self, gidx, vals, adapt=True, target=None):
        """One directional test along ``vals`` on the global indices ``gidx``: a _Measurement.

        With ``adapt``, a measurement whose error is mostly truncation (at
        most three times, or eight while the error is above ``target``), or
        that sees a kink within its steps (at most twelve), is repeated from
        the next smaller step, two more calls each time; the smallest error
        wins.
        """
        self.space.tests += 1
        parts = self.space.parts(gidx, vals)
        norm = self.space.norm(parts)
        if not self.calibrated:
            value, error, cache = self.calibrate(parts, norm)
            return _Measurement(value, error, parts, self.t_star, cache, norm)
        m = _Measurement(np.nan, np.inf, parts, self.step_for(norm), {}, norm)
        for _ in range(4):
            m.value, m.error, trunc, state = self.stencil(parts, m.t, m.cache)
            if np.isfinite(m.value):
                break
            m.t /= 4.0  # a step too large for fn's domain: try smaller ones
        t, tries = m.t, 0
        while adapt and np.isfinite(m.value) and tries < 12:
            # Truncation: a few steps down, more while the error is above ``target``
            # (the parent block's, in the search). A kink within the steps: on down
            # until the steps pass below it (its distance along a direction varies).
            limit = 3 if target is None or m.error <= target else 8
            if not (trunc > 0.5 * m.error and tries < limit or state == "inside"):
                break
            tries += 1
            t /= 2.0
            value, error, trunc, state = self.stencil(parts, t, m.cache)
            if error < m.error:
                m.value, m.error, m.t = value, error, t
        return m

    def again(self, m):
        """The same direction once more, from the next smaller step (two new calls)."""
        self.space.tests += 1
        value, error, _, _ = self.stencil(m.parts, m.t / 2.0, m.cache)
        return value, error

    # --- calibration ------------------------------------------------------------------------------

    def _largest_step(self, parts):
        """``T0``, or less where the noise probe saw fn oscillate on a smaller scale.

        The probe runs for this on inputs of at most :data:`PROBE_AT_MOST`
        elements (larger ones use it where it ran already: its points and
        scales cost memory the size of the inputs).

        The probe's :meth:`~oracles.numerics.objective.NoiseModel.start_limit`
        (``turns=False``: where it oscillated) is relative to each element's
        scale; along ``parts`` an element moves by ``t |u_j|``. Above the limit
        the central differences alias and can agree on about 0 (``sin`` at
        inputs near 1e9: one unit of its direction is ``2^25``).
        """
        objective = self.space.objective
        noise = objective.measured_noise
        if noise is None and sum(x.size for x in objective.point) <= PROBE_AT_MOST:
            noise = objective.noise  # a few dozen calls: what mode exhaustive spends anyway
        if noise is None or noise.wavy is None:
            return T0
        rel = 0.0  # the largest relative move of an element per unit step
        for i, loc, v, _ in parts:
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.abs(v) / np.asarray(objective.scales[i]).reshape(-1)[loc]
            r = r[np.isfinite(r)]
            rel = max(rel, float(np.max(r, initial=0.0)))
        return T0 * 2.0 ** -noise.first_rung(t0=T0 * rel) if rel > 0 else T0

    def calibrate(self, parts, norm):
        """Choose the step and measure the noise along the first direction.

        Descends ``t = 1/8, 1/16, ...``, each new step completing the 4-step
        stencil one step down, until two neighbouring stencils agree within
        their errors, see no kink, and their truncation and kink terms are
        below the objective's (pessimistic) noise model; or, after such a
        plateau, until the error keeps growing (noise). Then measures the
        noise at spacings below the last step and picks, among the stencils
        that agree with a neighbour and see no kink, the one whose error
        estimate (truncation and kinks counted 3x: the calibration
        direction may be a lucky one) is smallest, evaluating more steps
        while the best is the last one.
        """
        self.unorm = norm
        # The evaluations along this direction, for the noise samples and the rungs to share.
        cache = {"points": {}}
        self.sigma = 0.0  # the model noise decides the descent

        top = self.top = self._largest_step(parts)

        def rung(k):
            return self._quotient(parts, top * 2.0**-k, cache)

        def info(j):
            """``(value, error, truncation + kink, state)`` of the stencil at ``top 2^-j``."""
            value, error, tk, state = self.stencil(parts, top * 2.0**-j, cache)
            if self.sigma == 0.0:  # before the noise is measured: the model noise
                model = max(rung(k)[3] for k in range(j - 1, j + 3))
                error = error + NOISE_SIGMAS * _NOISE_FACTOR * model
            return value, error, tk, state

        def agree(a, b):
            return (
                a[3] != "inside"
                and b[3] != "inside"
                and np.isfinite(a[0])
                and np.isfinite(b[0])
                and abs(a[0] - b[0]) <= a[1] + b[1]
            )

        for k in range(4):
            rung(k)
        n = 4
        seen = {1: info(1)}
        plateau, worse = False, 0
        for k in range(4, N_RUNGS):
            rung(k)
            n = k + 1
            j = k - 2
            seen[j] = info(j)
            now, before = seen[j], seen[j - 1]
            if agree(now, before):
                plateau = True
                if now[2] <= now[1] - now[2]:  # truncation and kinks below the noise
                    break
            if plateau and np.isfinite(now[1]) and now[1] > before[1]:
                worse += 1
                if worse >= 3:
                    break
            else:
                worse = 0

        # The noise, measured below the smallest step so far, and at a coarse spacing.
        self.sigma, dof = self._measure_noise(parts, top * 2.0 ** -(n - 1) / 8.0, cache["points"])
        coarse = self._coarse_noise(parts, cache["points"])
        if coarse > COARSE_NOISE_ABOVE * self.sigma:
            # A staircase that the small spacings do not resolve, or kinks that the
            # coarse one crosses: the objective's noise probe (which tells kinks from
            # noise, and confirms what it sees at smaller steps) decides.
            # Only a model far above the small spacings' noise is taken: float64 rounding
            # measured two ways differs by a few times, and the calibration's choice of
            # step (and with it where the projections cross kinks) follows the noise.
            model = self._model_noise()
            if model > COARSE_NOISE_ABOVE * self.sigma:
                self.sigma, dof = model, 3
        self.sigma = max(self.sigma, self.rounding_floor)
        self._prior, self._samples = (self.sigma, dof), []
        refined = False

        best = None
        for _ in range(10):
            table = {j: info(j) for j in range(1, n - 2)}
            good = [
                j
                for j in table
                if any(agree(table[j], table[i]) for i in (j - 1, j + 1) if i in table)
            ]
            pool = good or [j for j in table if table[j][3] != "inside"] or list(table)
            scores = {j: table[j][1] + 2.0 * table[j][2] for j in pool}
            scores = {j: v for j, v in scores.items() if np.isfinite(v)}
            if scores:
                best = min(scores, key=scores.get)
                if best < n - 3 and refined:
                    break
                if best < n - 3:
                    # The noise at the working scale, whatever the gradient: neighbouring
                    # stencils along the same direction see the same residual.
                    for j in (best, best + 1):
                        self.learn(parts, cache, top * 2.0**-j)
                    refined = True
                    continue
            if n >= N_RUNGS:
                break
            rung(n)  # the best is the smallest evaluated (or none yet): one more step down
            n += 1
        self.calibrated = True
        if best is None:
            self.t_star = top * 2.0 ** -max(1, n - 3)
            return np.nan, np.inf, cache
        self.t_star = top * 2.0**-best
        above = table.get(best - 1)
        self.kink_step = (
            top * 2.0 ** -(best - 1)
            if above is not None and above[3] != "none" and table[best][3] == "none"
            else None
        )
        value, error, _, _ = self.stencil(parts, self.t_star, cache)
        return value, error, cache


#: The note of a fast check whose projections kept disagreeing without the search naming the
#: elements responsible (every remaining element is then checked on its own). Where that finds
#: none, the check is inconclusive: the projections saw an error the per-element checks do not
#: resolve (``_pipeline._references``).
UNEXPLAINED = (
    "random projections kept disagreeing without the search naming the elements "
    "responsible; every remaining element was checked exhaustively"
)


# --- the search ----------------------------------------------------------------------------------


@dataclass
class _Node:
    """A block of the search: positions into the active elements, and its residual."""

    pos: np.ndarray
    value: float
    error: float
    ramp: bool = True
    #: The measurement along this very block (when it was measured directly, not inferred).
    meas: _Measurement | None = None
    #: An independent estimate ``(value, error)`` of the same residual (the parent's).
    prior: tuple | None = None

    @property
    def size(self):
        return int(self.pos.size)

    def disagrees(self):
        return not (np.isfinite(self.value) and abs(self.value) <= self.error)


def _split_point(space, active, pos):
    """Middle of a block, moved to an input boundary when the block spans several inputs."""
    mid = pos.size // 2
    ends = space.input_of(active[[pos[0], pos[-1]]])
    if ends[0] == ends[1]:  # active is sorted: the block lies in one input
        return mid
    owner = space.input_of(active[pos])
    bounds = np.flatnonzero(np.diff(owner)) + 1
    return int(bounds[np.argmin(np.abs(bounds - mid))])


def _bisect(prober, active, u, node):
    """Both halves from one measurement along ``u_A - u_B``."""
    mid = _split_point(prober.space, active, node.pos)
    w = u[node.pos].copy()
    w[mid:] *= -1.0
    m = prober.measure(active[node.pos], w, target=node.error)
    e = 0.5 * (node.error + m.error)
    return [
        _Node(node.pos[:mid], 0.5 * (node.value + m.value), e),
        _Node(node.pos[mid:], 0.5 * (node.value - m.value), e),
    ]


def _ramp(prober, active, u, node):
    """Where in the block one wrong element would be, from a measurement along ``u * ramp``.

    With a single wrong element ``k`` in the block, the residual along
    ``u_j c_j`` (``c`` rising linearly from -1 to 1 over the block) is
    ``c_k`` times the block's: their ratio locates ``k`` to within the
    measurements' errors, in one measurement instead of one per halving.
    The window found is then measured directly; the rest of the block
    carries the difference (nothing, if the element is alone). Returns the
    two children, or ``None`` when the ratio is not that of one element.
    """
    pos, n = node.pos, node.size
    c = (2.0 * np.arange(n) + 1.0) / n - 1.0
    m = prober.measure(active[pos], u[pos] * c, target=node.error)
    margin = abs(node.value) - node.error
    if not (np.isfinite(m.value) and margin > 0):
        return None
    c_hat = m.value / node.value
    eps = (m.error + abs(c_hat) * node.error) / margin
    if abs(c_hat) > 1.0 + eps:
        return None
    lo = max(0, math.ceil(((c_hat - eps + 1.0) * n - 1.0) / 2.0))
    hi = min(n, math.floor(((c_hat + eps + 1.0) * n - 1.0) / 2.0) + 1)
    if hi <= lo:
        lo = int(np.clip(round(((c_hat + 1.0) * n - 1.0) / 2.0), 0, n - 1))
        hi = lo + 1
    if hi - lo > n // 2:
        return None
    inside = pos[lo:hi]
    w = prober.measure(active[inside], u[inside], target=node.error)
    rest = np.concatenate([pos[:lo], pos[hi:]])
    return [
        _Node(inside, w.value, w.error, True, w, (node.value, node.error)),
        _Node(rest, node.value - w.value, node.error + w.error, False),
    ]


#: A block is located by a ramp when its residual is this many times its error.
RAMP_SNR = 8.0
#: A failing projection whose residual is this many times its error ends its round: the
#: search follows it (fainter ones let the round measure its other directions first).
CLEAR = 4.0 * RAMP_SNR


def _search(prober, active, u, root, max_named):
    """Follow a failing projection down to single elements.

    Returns ``(leaves, everywhere)``: the single-element blocks (``_Node``)
    that disagree, and the blocks left when more than ``max_named``
    disagreed at once.
    """
    leaves = []
    frontier = [root]
    while frontier:
        if len(frontier) > max_named:
            return leaves, frontier
        nxt = []
        for node in frontier:
            if node.size == 1:
                leaves.append(node)
                continue
            children = None
            if (
                node.ramp
                and len(frontier) <= 2
                and node.size >= 3
                and abs(node.value) > RAMP_SNR * node.error * (1.0 if node.size >= 8 else 4.0)
            ):
                children = _ramp(prober, active, u, node)
            if children is None:
                children = _bisect(prober, active, u, node)
            nxt += [c for c in children if c.size and c.disagrees()]
        frontier = nxt
    return leaves, []


#: Blocks the kink search follows at one level (the two owners of a kink, at most); more
#: means kinks that no element owns (the ReLU units of a layer): the search stops there.
KINK_BLOCKS = 2
#: An element's kink seen from a block that holds it gives the jumps of the one-sided slopes
#: of the block above it to within this share of the largest (plus the noise). Measured: an
#: owned kink's jumps (|x - c|, a max-pool pair, |x - c| under a dense layer) agreed to 1e-6
#: from level to level; a ReLU unit's of the MNIST MLP changed by 18% to 10x.
KINK_SAME = 0.05


def _jumps(prober, parts, s, cache):
    """``d_k = g(s_k) - 2 g(s_k / 2)`` of the stencil at ``s`` (:meth:`_Prober.kink_state`).

    Returns ``(state, d, noise of d)``, or ``None`` where ``fn`` is not
    finite at the steps. ``g`` is the difference of the one-sided slopes;
    ``d`` cancels its smooth part ``A s`` and keeps the kink's.
    """
    rows = [prober._quotient(parts, s * 2.0 ** (1 - k), cache) for k in range(4)]
    if not all(np.isfinite(r[0]) and np.isfinite(r[4]) for r in rows):
        return None
    steps = [s * 2.0 ** (1 - k) for k in range(4)]
    g = [r[4] / h for r, h in zip(rows, steps, strict=True)]
    n = [NOISE_SIGMAS * math.sqrt(6.0) * prober.sigma / h for h in steps]
    d = np.array([g[k] - 2.0 * g[k + 1] for k in range(3)])
    dn = np.array([n[k] + 2.0 * n[k + 1] for k in range(3)])
    return prober.kink_state(rows, s)[0], d, dn


def _kink_search(prober, active, u, s, root):
    """The elements whose own kink held the calibration's step below ``s``, or ``[]``.

    The stencil at ``s`` along the calibration's direction ``u`` (``root``:
    its measurement) saw a kink within its steps (``2s .. s/4``), so the
    step chosen was below ``s``, and every projection's noise (``~ 1 / t``)
    with it: ``|x_j - c|`` with the kink ``c`` 1e-6 of the scale away from
    ``x_j`` held the step of all 40 elements at ``2.4e-7`` of their scale,
    and they resolved relative errors of ``9e-6`` only (``2e-8`` with the
    kink ``1e-4`` away). A kink that one element owns sits at the same
    distance along every block that holds that element (the block's
    direction has the same component there), so the block's one-sided
    slopes jump as its parent's do (:func:`_jumps`, to within
    :data:`KINK_SAME`): halving the block and asking each half's stencil at
    ``s`` (8 calls each) follows it down to the element. A kink two elements
    own (a max-pool window of two values ``d`` apart) splits once into a
    kink of each, along the halves that hold them; a kink that no element
    owns (a ReLU unit of a layer, whose pre-activation every weight of a
    column moves) changes again, or is lost, or shows in more than
    :data:`KINK_BLOCKS` blocks: the search ends there with nothing named (on
    the ReLU 784-128-10 MLP after one or two levels: 16 to 48 calls).
    Returns positions into ``active``.
    """
    top = _jumps(prober, root.parts, s, root.cache)
    if top is None or top[0] == "none":
        return []
    frontier, named = [(np.arange(active.size), top[1], False)], []
    while frontier:
        nxt = []
        for pos, d, changed in frontier:
            if pos.size == 1:
                named.append(int(pos[0]))
                continue
            mid = pos.size // 2
            kinked = []
            for half in (pos[:mid], pos[mid:]):
                got = _jumps(prober, prober.space.parts(active[half], u[half]), s, {})
                if got is None or got[0] == "none":
                    continue
                _, dh, dn = got
                if np.all(np.abs(dh - d) <= KINK_SAME * np.max(np.abs(d)) + dn):
                    kinked.append((half, d, changed))
                elif not changed:
                    kinked.append((half, dh, True))  # the kink of one of its owners
                else:
                    return []  # it changed twice: no element owns it
            if not kinked:
                return []  # lost
            nxt += kinked
        if len(nxt) > KINK_BLOCKS:
            return []
        frontier = nxt
    return sorted(named)


def _own_axes(prober, gidx, results):
    """Measure the elements the kink search named along their own axes; those left for the ladder.

    An element whose own measurement (the prober's stencil, whose steps go
    down past the kink) sees no kink and a residual within its error is
    stored with that measurement, as a projection over it alone would pass
    it; the others, ``(input, flat index)``, go to the per-element ladder,
    which tells a kink from an error. The ladder alone is not asked first:
    ``tanh(x - c)`` at ``c = 1e12`` (a transition narrower than all but its
    last few steps) is a known false alarm of it, which the projections
    never had.
    """
    space, ladder = prober.space, []
    saved = prober.sigma
    for g in gidx:
        i = int(space.input_of(g))
        j = g - int(space.offsets[i])
        axis, one = np.array([g], dtype=np.int64), np.array([1.0])
        # Its own noise (the outputs it moves, not all of them: the calibration's is that of
        # every output, 2e-6 of the gradient at x_j among 3000), measured below its step.
        parts = space.parts(axis, one)
        sigma, _ = prober._measure_noise(parts, prober.step_for(space.norm(parts)) / 8.0)
        f0 = np.abs(np.asarray(space.objective.base_output, dtype=np.float64))
        try:
            prober.sigma = sigma
            m = prober.measure(axis, one)
            rows = [m.cache.get(m.t * 2.0 ** (1 - k)) for k in range(4)]
            if all(r is not None for r in rows):
                moved = rows[0][2] | rows[1][2] | rows[2][2] | rows[3][2]
                spacing = np.where(moved, np.spacing(f0), 0.0)
                floor = ROUNDING_SHARE * prober._contracted(spacing) / math.sqrt(12.0)
                if floor > sigma:  # outputs that round alike: no less than their rounding
                    prober.sigma = floor
                    m.value, m.error, _, _ = prober.stencil(m.parts, m.t, m.cache)
        finally:
            prober.sigma = saved
        if (
            not np.isfinite(m.value)
            or any(r is None or not np.isfinite(r[4]) for r in rows)
            or _still_at_a_step(space.objective, rows)
            or prober.kink_state(rows, m.t)[0] != "none"
            or abs(m.value) > m.error
        ):
            ladder.append((i, j))
            continue
        unit = space.unit[i]
        est = {
            "value": np.array([float(space.grads[i][j]) + m.value / unit]),
            "error": np.array([m.error / unit]),
            "kink": np.array([False]),
            "left": np.array([np.nan]),
            "right": np.array([np.nan]),
            "nonfinite": np.array([False]),
        }
        _store(results, i, [j], est)
    return ladder


def _still_at_a_step(objective, rows):
    """True where a reduced-precision fn changed no output at some step of a stencil's ``rows``.

    Only where ``fn`` computes in a reduced type (:attr:`NoiseModel.kind`): in float64 a step
    that moves nothing is below the inputs' spacing (``tanh(x - c)`` at ``c = 1e12``), where
    the own-axis measurement, not the ladder, is the one to trust.
    """
    noise = objective.measured_noise
    if noise is None or noise.kind is None:
        return False
    return any(not np.any(row[2]) for row in rows)


#: A named element's own measurement decides when it misses by this many times its error.
CONCLUSIVE = 10.0


def _confirm(prober, active, u, leaves, grads, results, atol, rtol):
    """Judge named elements by a measurement along their own axis, where that is conclusive.

    The measurement (the same 4-step stencil, 8 calls) is conclusive when it
    agrees with the search's residual for that element (two independent
    measurements of the same error) and with itself at half the step (two
    calls more: no term odd in the step), the second differences show no kink
    (the jump between the one-sided slopes, extrapolated to step 0, is
    within the noise plus the margin below), and it fails by more than
    ``CONCLUSIVE`` times its error plus the tolerance, or passes with its
    error inside the tolerance. Everything else goes to the per-element
    ladder. Returns the ``(input, flat index)`` pairs left for the ladder.
    """
    space = prober.space
    undecided = []
    for leaf in leaves:
        p = int(leaf.pos[0])
        g = int(active[p])
        i = int(space.input_of(g))
        j = g - int(space.offsets[i])
        if leaf.meas is not None and leaf.prior is not None:
            # Measured directly along u_p e_p (a ramp's window), with the parent's
            # residual as the independent estimate.
            m, scale = leaf.meas, float(u[p]) * space.unit[i]
            agrees = abs(leaf.prior[0] - m.value) <= leaf.prior[1] + m.error
        else:
            axis = np.array([g], dtype=np.int64)
            m, scale = prober.measure(axis, np.array([1.0])), space.unit[i]
            up = float(u[p])
            agrees = abs(leaf.value - up * m.value) <= leaf.error + abs(up) * m.error
        rows = [m.cache.get(m.t * 2.0 ** (1 - k)) for k in range(4)]
        if not np.isfinite(m.value) or any(r is None or not np.isfinite(r[4]) for r in rows):
            undecided.append((i, j))
            continue
        state, _ = prober.kink_state(rows, m.t)
        r, e = m.value / scale, m.error / abs(scale)
        reference = float(grads[i].reshape(-1)[j]) + r
        tol = atol + rtol * abs(reference)
        fails = abs(r) > CONCLUSIVE * (e + tol)
        passes = abs(r) + e <= tol
        # An output that changed at a larger step of the stencil (2t, t, t/2, t/4) but not
        # at a smaller one: those fell below fn's resolution (a float32 loss near 1e4 at
        # inputs near 3e3, whose float32 unit the steps reach at 2t only), and their
        # quotients are minus the analytic value, with float64's rounding for an error.
        masks = [row[2] for row in rows]
        below = any(np.any(a & ~b) for a, b in zip(masks, masks[1:], strict=False))
        # Where nothing moved at a step (a float32 loss of logits of scale 1e-6 along one
        # axis), the measurement is inconclusive, not a pass or a fail: the ladder decides.
        below |= _still_at_a_step(space.objective, rows)
        if below or not (agrees and state == "none" and (fails or passes)):
            undecided.append((i, j))
            continue
        # The search measured with the same stencil, so agreeing with it does not rule out
        # a bias both share: a term odd in the step (phi C1 but not C2 at x, relu(r)^2 at
        # 0, hidden under a larger t^2 term) survives the extrapolation in even powers,
        # and halves with the step. Half the step must give the same value (two calls).
        value, error = prober.again(m)
        if not abs(value - m.value) <= error + m.error:
            undecided.append((i, j))
            continue
        _store(
            results,
            i,
            [j],
            {
                "value": np.array([reference]),
                "error": np.array([e]),
                "kink": np.array([False]),
                "left": np.array([np.nan]),
                "right": np.array([np.nan]),
                "nonfinite": np.array([False]),
            },
        )
    return undecided


# --- orchestration -------------------------------------------------------------------------------


_FIELDS = ("value", "error", "kink", "left", "right", "nonfinite")


def _empty_results(work):
    """Per input, the ``checked`` mask only: value arrays come with the first element stored."""
    return [{"checked": np.zeros(x.size, dtype=bool)} for x in work]


def _dense(r):
    """Give ``r`` its flat value arrays (NaN / inf / False: no element compared yet)."""
    if "value" not in r:
        n = r["checked"].size
        r["value"], r["error"] = np.full(n, np.nan), np.full(n, np.inf)
        r["kink"], r["nonfinite"] = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        r["left"], r["right"] = np.full(n, np.nan), np.full(n, np.nan)
    return r


def _store(results, i, flat_idx, est):
    r = _dense(results[i])
    for key in _FIELDS:
        r[key][flat_idx] = est[key]
    r["checked"][flat_idx] = True


def _finish(r, given_up, resolution):
    """Complete ``r``: ``error`` is ``resolution`` where covered, ``inf`` where given up.

    An input with no element compared individually and none given up gets
    read-only broadcast arrays (no memory): NaN values, one error.
    """
    n = r["checked"].size
    if "value" not in r and not given_up.any():
        r["value"] = np.broadcast_to(np.float64(np.nan), (n,))
        r["error"] = np.broadcast_to(np.float64(resolution), (n,))
        for key, fill in (("kink", False), ("nonfinite", False)):
            r[key] = np.broadcast_to(np.bool_(fill), (n,))
        r["left"] = r["right"] = r["value"]
        return
    _dense(r)
    if np.isfinite(resolution):
        r["error"][~(r["checked"] | given_up)] = resolution


def _check_elements(objective, grads, results, elements):
    """Per-element ladders for ``(input, flat index)`` pairs; stored in ``results``."""
    if not elements:
        return
    est = sharp_partials(objective, elements, grads)
    for p, (i, j) in enumerate(elements):
        _store(results, i, [j], {k: v[p : p + 1] for k, v in est.items()})


def _its(inputs):
    return "its" if len(inputs) == 1 else "their"


def _failing(results, grads, i, idx, atol, rtol):
    """How many of input ``i``'s elements ``idx`` (checked) fail the per-element rule."""
    if not np.size(idx):
        return 0
    r = _dense(results[i])
    cmp = compare(
        grads[i].reshape(-1)[idx],
        r["value"][idx],
        r["error"][idx],
        atol=atol,
        rtol=rtol,
        kink=r["kink"][idx],
        left=r["left"][idx],
        right=r["right"][idx],
    )
    return cmp.n_failed


def _clarity(value, error):
    """How clearly a failing projection shows its residual: ``|value| / error`` (-1 if NaN)."""
    if not np.isfinite(value):
        return -1.0
    if not error > 0:
        return math.inf
    return abs(float(value)) / float(error)


def _explained(previous, inactive, n_active, space, grads, results):
    """The residual of a measured direction once the elements judged since are taken out.

    ``previous = (active, u, residual, error)`` of an earlier round;
    ``inactive`` (bool, one per element of the flat index space) marks the
    elements no longer active: those of ``previous``'s ``active`` among them
    must now be checked individually. Returns a Projection over the
    ``n_active`` elements active now, or ``None`` when one of those taken out
    has no finite reference (or was given up).
    """
    before, u, value, error = previous
    if isinstance(before, _All):
        gone = np.flatnonzero(inactive)  # positions into before are global indices
        gidx = gone
    else:
        gone = np.flatnonzero(inactive[before])
        gidx = before[gone]
    for g, uj in zip(gidx, u[gone], strict=True):
        i = int(space.input_of(g))
        j = int(g) - int(space.offsets[i])
        r = results[i]
        if not r["checked"][j]:
            return None
        ref, e = float(r["value"][j]), float(r["error"][j])
        if not (np.isfinite(ref) and np.isfinite(e)):
            return None
        uj = float(uj) * space.unit[i]
        value -= uj * (ref - float(grads[i].reshape(-1)[j]))
        error += abs(uj) * e
    return Projection(n_elements=int(n_active), residual=value, error=error, tolerance=error)


def fast_partials(
    objective,
    grads,
    *,
    atol=0.0,
    rtol=0.0,
    directions=3,
    seed=0,
    max_named=16,
    must_check=None,
    exhaustive=None,
):
    """Gaussian projections over all inputs, then group testing down to the elements that disagree.

    Parameters
    ----------
    objective : oracles.numerics.objective.ScalarObjective
    grads : sequence of ndarray
        The analytic gradient, one finite array per input.
    atol, rtol : float
        Tolerances of the per-element comparison (projections pass only
        within the numerics' own error; see the module notes).
    directions : int
        Gaussian directions over all unchecked elements per round.
    seed : int
        Seed of the directions.
    max_named : int
        See :class:`Fast`.
    must_check : sequence of bool arrays, optional
        Elements to check individually whatever the projections say (e.g.
        where the analytic gradient was not finite).
    exhaustive : Exhaustive, optional
        Settings of the exhaustive checks.

    Returns
    -------
    FastResult

    Examples
    --------
    >>> import numpy as np
    >>> from oracles.numerics.objective import ScalarObjective
    >>> x = np.linspace(0.5, 2.0, 10000)
    >>> g = 1 / x
    >>> g[4321] += 1e-7
    >>> res = fast_partials(ScalarObjective(np.log, (x,), np.ones(x.size)), [g])
    >>> res.localized, bool(res.results[0]["checked"].sum() == 1)
    ([(0, 4321)], True)
    """
    exhaustive = exhaustive or Exhaustive()
    rng = own_stream(seed, "projection")
    grads = [np.asarray(g, dtype=np.float64) for g in grads]
    space = _Space(objective, grads)
    prober = _Prober(space)
    work = objective.point  # shapes only: reading it makes no working copy
    calls0 = objective.calls
    notes, remote_evals = [], 0
    results = _empty_results(work)
    given_up = [np.zeros(x.size, dtype=bool) for x in work]
    elements = _outliers(work)
    if must_check is not None:
        elements += [
            (i, int(j))
            for i, m in enumerate(must_check)
            for j in np.flatnonzero(np.asarray(m).reshape(-1))
        ]
    if elements:
        _check_elements(objective, grads, results, sorted(set(elements)))

    projections, localized, everywhere_inputs = [], [], []
    fallback_all = False
    passed = False
    n_sampled = n_given_up = n_exhaustive = 0

    def run_exhaustive(pairs):
        nonlocal remote_evals
        pairs = [(i, j) for i, j in pairs if j.size]
        if not pairs:
            return
        before = objective.calls
        res, info = exhaustive_partials(
            objective,
            grads,
            pairs,
            atol=atol,
            rtol=rtol,
            executor=exhaustive.executor,
            progress=exhaustive.progress,
            screen=exhaustive.screen,
            chunk_size=exhaustive.chunk_size,
            vectorized=exhaustive.vectorized,
        )
        # Chunks that ran on an executor do not show up in objective.calls.
        remote_evals += max(0, info["evaluations"] - (objective.calls - before))
        for i, j in pairs:
            _store(results, i, j, res[i])
        for note in info["notes"]:
            if note not in notes:
                notes.append(note)

    def everywhere(blocks, active):
        """Errors everywhere: check few disagreeing elements at once, else sample, then decide.

        The disagreeing elements of every input involved are pooled, so that
        the cost is a constant whatever the number of elements and inputs: up
        to ``EXHAUSTIVE_AT_ONCE`` of them are checked exhaustively in one
        call; above that, ``SAMPLE`` drawn from the pool, and one more from
        each of the (at most ``SAMPLE``) largest inputs with none drawn, are
        checked individually (their per-element ladders cost about 20-60
        evaluations each).
        """
        nonlocal n_sampled, n_given_up, n_exhaustive
        gidx = np.sort(np.concatenate([active[b.pos] for b in blocks]))
        owner = space.input_of(gidx)
        inputs = [int(i) for i in np.unique(owner)]
        local = {i: gidx[owner == i] - space.offsets[i] for i in inputs}
        everywhere_inputs.extend(inputs)

        def what(ins):
            if len(ins) == 1:
                return f"input {ins[0]} (shape {work[ins[0]].shape})"
            listed = ", ".join(str(i) for i in ins[:8]) + (", ..." if len(ins) > 8 else "")
            return f"{len(ins)} inputs ({listed})"

        if gidx.size <= EXHAUSTIVE_AT_ONCE:
            run_exhaustive([(i, local[i]) for i in inputs])
            n_exhaustive += gidx.size
            for i in inputs:
                n_bad = _failing(results, grads, i, local[i], atol, rtol)
                notes.append(
                    f"{'a wrong formula, not a typo: ' if n_bad else ''}errors everywhere in "
                    f"{what([i])}: its {local[i].size} disagreeing elements were checked "
                    f"exhaustively ({n_bad} fail)"
                )
            return
        drawn = np.zeros(gidx.size, dtype=bool)
        drawn[rng.choice(gidx.size, size=SAMPLE, replace=False)] = True
        missed = [i for i in inputs if not np.any(drawn[owner == i])]
        for i in sorted(missed, key=lambda i: -local[i].size)[:SAMPLE]:
            drawn[rng.choice(np.flatnonzero(owner == i))] = True
        sample = {i: gidx[drawn & (owner == i)] - space.offsets[i] for i in inputs}
        _check_elements(objective, grads, results, [(i, int(j)) for i in inputs for j in sample[i]])
        n_sampled += int(np.count_nonzero(drawn))
        bad = {i: _failing(results, grads, i, sample[i], atol, rtol) for i in inputs}
        wrong = [i for i in inputs if bad[i]]
        rest = {i: np.setdiff1d(local[i], sample[i]) for i in inputs}
        unsampled = [i for i in inputs if not sample[i].size] if wrong else []
        later = [i for i in inputs if not bad[i] and i not in unsampled]
        for i in wrong + unsampled:
            given_up[i][rest[i]] = True
            n_given_up += rest[i].size
        if wrong:
            n_drawn = sum(sample[i].size for i in wrong)
            n_rest = sum(rest[i].size for i in wrong)
            notes.append(
                f"a wrong formula, not a typo: errors everywhere in {what(wrong)}; "
                f"{sum(bad.values())} of {n_drawn} elements sampled from {_its(wrong)} "
                f"{n_drawn + n_rest} disagreeing elements fail individually, so the other "
                f"{n_rest} were not compared one by one (mode='exhaustive' compares them all)"
            )
        if unsampled:
            notes.append(
                f"errors everywhere in {what(unsampled)} too: none of {_its(unsampled)} "
                f"{sum(local[i].size for i in unsampled)} disagreeing elements was sampled, "
                "and they were not compared one by one (the sample failed elsewhere; "
                "mode='exhaustive' compares them all)"
            )
        for i in later:
            why = (
                f"the {sample[i].size} elements sampled from it pass individually (within "
                "rtol/atol, or at kinks)"
                if sample[i].size
                else "no element sampled failed"
            )
            notes.append(
                f"errors everywhere in {what([i])}, but {why}: its other {rest[i].size} "
                "disagreeing elements were checked exhaustively"
            )
        run_exhaustive([(i, rest[i]) for i in later])
        n_exhaustive += sum(rest[i].size for i in later)

    barren = 0
    kinks_searched, n_kinked = False, 0
    # Every direction measured so far, for the rounds after it: (elements then active, the
    # direction, residual, error). Its residual over the elements still active is the
    # measured one minus that of the elements judged one by one since (_explained).
    measured = []
    for _ in range(MAX_ROUNDS):
        inactive = None  # the elements judged one by one or given up, over all inputs
        if not any(r["checked"].any() or g.any() for r, g in zip(results, given_up, strict=True)):
            active = _All(space.n)  # every element: no index array
        else:
            inactive = np.concatenate(
                [r["checked"] | g for r, g in zip(results, given_up, strict=True)]
            )
            active = np.flatnonzero(~inactive).astype(np.int64)
        if active.size == 0:
            passed = True
            break
        this_round, failing, kept = [], [], []
        for before, d, value, error in measured:
            if len(this_round) == directions:
                break
            # An earlier round's direction, over what is left of its elements: its residual
            # minus that of the elements since judged one by one. Where that is within its
            # error, the direction passes without being measured again (it was drawn
            # independently of the errors like a fresh one; the search only chose which
            # elements to judge).
            if inactive is None:  # nothing judged since: the measurement as it was
                p = Projection(int(active.size), value, error, error)
            else:
                p = _explained(
                    (before, d.values(), value, error), inactive, active.size, space, grads, results
                )
            if p is not None and p.passed:
                this_round.append(p)
                kept.append((before, d, value, error))
        measured = kept
        restart = False
        while len(this_round) < directions:
            u = m = None  # the last direction (and the views of it) go before the next is drawn
            d = _Direction(rng, active.size)
            u = d.values()
            m = prober.measure(active, u)
            if prober.kink_step is not None and not kinks_searched:
                # The calibration's step was held down by a kink: where one element owns
                # it, that element is judged by its ladder, and the step chosen again.
                kinks_searched = True
                named = _kink_search(prober, active, u, prober.kink_step, m)
                if named:
                    gidx = [int(active[p]) for p in named]
                    _check_elements(objective, grads, results, _own_axes(prober, gidx, results))
                    n_kinked += len(named)
                    prober.calibrated = False
                    restart = True
                    break
            if np.isfinite(m.value):
                # Every projection adds a sample of the noise at the working scale (two
                # calls), and is then judged with the noise pooled so far.
                prober.learn(m.parts, m.cache, m.t)
                m.value, m.error, _, _ = prober.stencil(m.parts, m.t, m.cache)
            value, error = m.value, m.error
            if np.isfinite(value) and error < abs(value) <= MARGINAL * error:
                # A marginal disagreement: a wrong element shows again from the next
                # step down, while noise a few sigma out does not.
                # It must pass within the first measurement's error too: the next step
                # down is noisier, and a real residual a few errors out would pass there
                # often (one element off by 1e-7 in a million parameters did, 1 seed in 4).
                again = prober.again(m)
                if np.isfinite(again[0]) and abs(again[0]) <= min(again[1], error):
                    value, error = again
            p = Projection(
                n_elements=int(active.size), residual=value, error=error, tolerance=error
            )
            this_round.append(p)
            if p.passed:
                measured.append((active, d, value, error))
                d.release()
            else:
                # The round goes on while the failing directions show the wrong elements
                # only faintly: its other directions are needed after the search anyway
                # (a round passes only when all pass), and the search follows the one that
                # shows them the most clearly. One clear enough ends it (errors everywhere
                # would fail every direction of every round).
                failing.append((_clarity(m.value, m.error), d, m.value, m.error))
                if failing[-1][0] >= CLEAR:
                    break
        if restart:
            continue
        projections += this_round
        if not failing:
            passed = True
            break
        failing.sort(key=lambda f: -f[0])
        measured += [(active, d, value, error) for _, d, value, error in failing]
        _, d, value, error = failing[0]
        for _, other, _, _ in failing[1:]:
            other.release()
        index = np.int32 if active.size < 2**31 else np.int64
        u = m = None
        u = d.values()
        root = _Node(np.arange(active.size, dtype=index), value, error)
        leaves, blocks = _search(prober, active, u, root, max_named)
        elements = []
        for leaf in leaves:
            g = int(active[leaf.pos[0]])
            i = int(space.input_of(g))
            elements.append((i, g - int(space.offsets[i])))
        undecided = _confirm(prober, active, u, leaves, grads, results, atol, rtol)
        _check_elements(objective, grads, results, undecided)
        localized += elements
        d.release()
        if blocks:
            everywhere(blocks, active)
        barren = 0 if (elements or blocks) else barren + 1
        if barren >= MAX_BARREN_ROUNDS:
            break
    if not passed:
        fallback_all = True
        notes.append(UNEXPLAINED)
        run_exhaustive(
            [
                (i, np.flatnonzero(~(r["checked"] | g)))
                for i, (r, g) in enumerate(zip(results, given_up, strict=True))
            ]
        )

    covered = [
        int(np.count_nonzero(r["checked"]))
        + (int(np.count_nonzero(~(r["checked"] | g))) if passed else 0)
        for r, g in zip(results, given_up, strict=True)
    ]
    last = projections[-directions:] if projections else []
    resolution = np.inf
    if passed and last and len(last) == directions:
        # The resolution of the covered elements: an error this large escapes all
        # the last round's directions with probability at most MISS (module notes).
        resolution = 0.8 * max(p.tolerance for p in last) / MISS ** (1.0 / directions)
    for r, g, unit in zip(results, given_up, space.unit, strict=True):
        _finish(r, g, resolution / unit)  # the residuals are in the inputs' units
    objective.release()  # the scratch arrays: made again if anything evaluates later
    evaluations = objective.calls - calls0 + remote_evals
    n_individual = int(sum(np.count_nonzero(r["checked"]) for r in results))
    if passed and last and len(last) == directions and all(p.passed for p in last):
        worst_res = max(abs(p.residual) for p in last)
        worst_err = max(p.error for p in last)
        head = (
            f"{directions} Gaussian direction(s) over the {last[0].n_elements} elements not "
            f"checked individually (largest |residual| {worst_res:.1e}, error estimates "
            f"<= {worst_err:.1e}, step {prober.t_star:.1e})"
        )
    else:
        head = f"{directions} Gaussian direction(s) per round"
    method = (
        f"{head}, {space.tests} directional derivatives in all, + bisection: "
        f"{len(localized)} element(s) named and {n_individual} checked individually"
    )
    if n_kinked:
        method += (
            f"; {n_kinked} element(s) next to a kink that held the projections' step down "
            "checked individually"
        )
    if everywhere_inputs:
        method += f"; errors everywhere in input(s) {sorted(set(everywhere_inputs))}: "
        done = []
        if n_exhaustive:
            done.append(f"{n_exhaustive} element(s) checked exhaustively")
        if n_sampled:
            done.append(f"{n_sampled} sampled")
        if n_given_up:
            done.append(f"{n_given_up} not compared (a wrong formula)")
        method += ", ".join(done)
    # The objective's own notes (the precision the noise probe detected), as mode exhaustive
    # reports them.
    notes.extend(n for n in objective.notes if n not in notes)
    notes.append(
        f"mode fast: elements not named by the search were covered by random projections, not "
        f"compared one by one ({n_individual} element(s) compared individually)"
    )
    return FastResult(
        results=results,
        covered=covered,
        projections=projections,
        localized=localized,
        exhaustive_inputs=sorted(set(everywhere_inputs)),
        fallback_all=fallback_all,
        tests=space.tests,
        evaluations=evaluations,
        step=float(prober.t_star),
        noise=float(prober.sigma),
        method=method,
        notes=notes,
    )
