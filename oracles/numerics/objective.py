"""The objective every numeric derivative differentiates, its scales and its measured noise.

``phi(x) = <cotangent, fn(*x)>`` over float64 working copies of the inputs
(:class:`ScalarObjective`), the constants of the step ladder, the result
type of the numeric methods (:class:`Estimate`), and the two properties of
``fn`` that make a numeric derivative independent of the units:

Scales (:func:`element_scales`)
    Every step is relative: element ``j`` of input ``i`` is stepped by
    ``t * s_ij`` with ``s_ij = max(|x_ij|, rms(x_i))``. Scaling an
    input by ``1e9`` scales its steps by ``1e9``: the ladder sees the same
    function. An input that is 0 everywhere has no scale of its own (a bias,
    an RNN's first hidden state): its scale is measured
    (:func:`measured_scales`), the largest one on which ``fn`` is smooth
    along it, from the largest scale of the other inputs down.

Noise (:func:`measure_noise`, :class:`NoiseModel`)
    The rounding noise of every output element is *measured*, not assumed,
    in the manner of Moré and Wild's ECnoise ("Estimating computational
    noise", SIAM J. Sci. Comput. 33, 2011): ``fn`` is evaluated at
    ``x + k h u`` (``k = -4 .. 4``, ``u`` a random direction scaled like the
    inputs) for up to three relative step sizes ``h``, from the largest,
    until every element's noise has shown; the ``k``-th differences of
    a smooth function shrink like ``h^k`` while those of noise do not, and
    the level where three successive orders agree (within a factor of 4,
    with sign changes) is the noise ``sigma_i`` of that element. A function
    scaled by ``1e-12`` has noise scaled by ``1e-12``; a function that casts
    to float32 inside has float32 noise whatever its inputs; a softmax of
    logits near ``1e6`` carries the rounding of ``x - max(x)``. The detected
    precision (the median relative noise, at least float64's epsilon) is
    stated in a note when it is coarser than float64.

The noise of an output element at any point is ``max(sigma_i, rho_i |f_i|)``
(``rho_i`` its noise relative to its magnitude); the noise of a difference
of outputs is summed (L1, times :data:`NOISE_SAFETY`) over the elements
that changed, after differencing elementwise, so large outputs that did not
change cost nothing. Outputs that never changed count only when they depend
on the element at all (:func:`oracles.numerics.ladder.partials` tests that
with far steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil, factorial, log2

import numpy as np

from oracles.errors import UserFunctionError

__all__ = [
    "ANALYTIC_ROUNDING",
    "EPS",
    "MAX_RUNGS",
    "N_RUNGS",
    "NOISE_SAFETY",
    "T0",
    "Estimate",
    "NoiseModel",
    "ScalarObjective",
    "analytic_rounding",
    "changed_noise",
    "element_scales",
    "measure_noise",
    "measured_scales",
    "precision_note",
]

EPS = float(np.finfo(np.float64).eps)

#: Spacing of the float64 numbers below the smallest normal one: the resolution of an output near 0.
QUANTUM = float(np.finfo(np.float64).smallest_subnormal)


#: Largest step of the ladder, relative to the element's scale (:func:`element_scales`).
T0 = 2.0**-3


#: Rungs of the classic ladder, ``2^-3 .. 2^-27`` (kept for callers that pass it explicitly).
N_RUNGS = 25


#: Most rungs the ladders of this package descend (``2^-3 .. 2^-58`` of the scale): a ladder
#: stops far earlier, once rounding dominates or the step falls below ``fn``'s resolution.
MAX_RUNGS = 56


#: Safety factor on the rounding-noise model of one evaluation of phi.
NOISE_SAFETY = 8.0


#: Floor of an element's scale, relative to the root-mean-square of its input.
SCALE_FLOOR = 1.0


#: Most scales :func:`measured_scales` tries for an input that is 0 everywhere, each
#: :data:`ZERO_SCALE_RATIO` times smaller than the one before (down to 1e-24 of the first).
ZERO_SCALE_LEVELS = 20

#: Ratio of successive scales tried by :func:`measured_scales`.
ZERO_SCALE_RATIO = 16.0

#: A scale is smooth when the central differences over it and over half of it agree
#: within this fraction (the third-order term is then small on it).
ZERO_SCALE_FIT = 0.1


#: ... and the second differences are not those of a kink at the point itself: over a
#: kink at the point ``|c(s) - 4 c(s/2)|`` is half of ``max(|c(s)|, 4|c(s/2)|) + |slope|``,
#: over kinks within the scale (a ReLU layer's units, crossed by some steps) far less, and
#: a softmax swamped by its steps is piecewise linear with its kink at the point (0.47 seen).
ZERO_SCALE_KINK = 0.35


#: Relative step sizes of the noise probe (times each element's scale).
PROBE_STEPS = (2.0**-14, 2.0**-27, 2.0**-40)

#: Where an output oscillates at the smallest probe step, the probe goes on at this
#: fraction of it ...
FINER_PROBE = 2.0**-3

#: ... down to this relative step (the probe's increments of at least half the step
#: times the scale are then two to four units of an element's spacing).
FINEST_PROBE = 2.0**-49

#: Steps between those, for the elements that moved but showed no noise at them: along one line
#: at one step the rounding errors of a nearly linear output can repeat a pattern that looks
#: smooth (a sigmoid output of 9e-10, rounded in steps of 5.5e-17 through ``1 + tanh``, showed
#: no noise at 2^-14 and 2^-27 of its scale, and 1.6e-17 at 2^-20).
BETWEEN_STEPS = (2.0**-20, 2.0**-33)

#: A last probe step for the elements that never moved at those (float16, bfloat16 inside).
COARSE_PROBE_STEP = 2.0**-7


#: Smallest magnitude of a component of the noise probe's direction (times the element's scale).
MIN_PROBE = 0.5

#: Points on each side of the base point in the noise probe.
PROBE_HALF = 4


#: No element's relative noise is taken below this quantile of the elements' (see measure_noise).
FLOOR_QUANTILE = 0.25

#: Second differences of a kink: one spike (or two adjacent), every other at most this fraction.
SPIKE_RATIO = 1e-3

#: Most spikes (of one sign) among a probe's second differences that are kinks, not noise.
MAX_SPIKES = 3

#: Kinks of both signs: the entries that do not stand out vary by at most this fraction of those
#: that do (see ``_mixed_kinks``).
BACKGROUND_RATIO = 0.1

#: ... and stand this many float64 units of the column's largest ``|f|`` above 0.
MIXED_ABOVE_ROUNDING = 1e5

#: Kinks of both signs are told from noise at probe steps down to this one only.
MIXED_STEP = 2.0**-20

#: Third and fourth differences of a jump in the second or third derivative: every other at most
#: this fraction of the spike (the smooth rest is ``h`` times the next derivative, and ``h`` need
#: not be small on the scale on which ``fn`` varies: an ELU at inputs of scale 1e3, probed at 0.06).
SMOOTHER_SPIKE_RATIO = 0.2

#: Widest span of a few values (relative to the largest) that may be a quantized staircase.
QUANTUM_SPAN = 2.0**-3

#: How far (relative) a change may be from a whole number of quanta (see _whole_multiples).
WHOLE_TOLERANCE = 1e-3

#: Fewest distinct values among the probe's points for a noise estimate (ECnoise's "h too small").
MIN_DISTINCT = 6

#: Distinct non-zero values (as MIN_DISTINCT) of the probe's outputs that all lie in a reduced type
#: name it, even where neither noise nor a quantum showed: a float64 fn at the probe's
#: random points gives a float32 value with odds of about 2^-29 each. (A float32 max at a
#: tie of exact zeros kinks along every probe line, so neither shows: its correct routing
#: failed at the float32 rounding of its weight, 2.5e-8, against a float64 tolerance.)
TYPE_DISTINCT = 6

#: Largest noise relative to the values themselves (coarser than bfloat16 is not rounding).
MAX_RELATIVE_NOISE = 2.0**-6

#: Noise above this (relative to the values) seen at one probe step is confirmed at the next.
CONFIRM_ABOVE = 1e3 * float(np.finfo(np.float64).eps)

#: A smaller probe step that measures this many times less noise refutes a larger step's.
REFUTE_RATIO = 1e3

#: Noise relative to the largest input or output above which a smaller step's distinct values
#: spread over :data:`REFUTE_RATIO` times less refute it. A part of ``fn`` that computes in
#: float32 can be below its resolution at the smaller step while a float64 part moves, and a
#: cancellation can make its noise a large part of a small output (GELU's tanh form below -6:
#: 10%), but rounding is never far above the unit of float32 (2^-24) times the magnitudes
#: about, with a cancellation of up to 4096 (float16 inside is a 16th of this, and is known by
#: its values, :attr:`NoiseModel.kind`).
SPREAD_REFUTES = 2.0**-12

#: ``(k!)^2 / (2k)!``: the variance of the k-th difference of unit white noise is ``1 / gamma_k``.
_GAMMA = np.array([factorial(k) ** 2 / factorial(2 * k) for k in range(2 * PROBE_HALF + 1)])


@dataclass
class Estimate:
    """Numeric derivatives with their error estimates, one entry per probe.

    Attributes
    ----------
    value : ndarray
        The derivative estimate (Richardson-extrapolated central difference).
    error : ndarray
        Its estimated absolute error (truncation + rounding). ``inf`` where no
        rung gave a finite value.
    step : ndarray
        The step of the rung that was chosen, relative to ``scale``.
    kink : ndarray of bool
        True where the one-sided slopes differ by a jump that does not shrink
        with the step: the function is not differentiable there.
    left, right : ndarray
        One-sided slopes ``(phi(x) - phi(x - t)) / t`` and
        ``(phi(x + t) - phi(x)) / t`` at the smallest rung evaluated (only
        meaningful where ``kink`` is True; ``nan`` elsewhere).
    nonfinite : ndarray of bool
        True where ``fn`` returned NaN or inf at some perturbed point used.
    evaluations : int
        Number of calls of ``fn`` spent.
    notes : list of str
    scale : ndarray, optional
        The scale the steps are relative to (absolute step = ``step * scale``).
    quantum : ndarray, optional
        Per probe, the rounding of ``phi``'s values its ladder measured beyond
        the noise model's (0 where none; see
        :func:`oracles.numerics.ladder._measured_quantum`).
    """

    value: np.ndarray
    error: np.ndarray
    step: np.ndarray
    kink: np.ndarray
    left: np.ndarray
    right: np.ndarray
    nonfinite: np.ndarray
    evaluations: int = 0
    notes: list = field(default_factory=list)
    scale: np.ndarray | None = None
    quantum: np.ndarray | None = None


def _as_point(x):
    """``x`` as a read-only-by-convention float64 C-contiguous array (no copy where it is one)."""
    a = np.asarray(x)
    if a.dtype == np.float64 and a.flags.c_contiguous:
        return a
    return np.array(a, dtype=np.float64, order="C", copy=True)


#: Elements per chunk where a statistic of a whole input is taken piece by piece (no copies).
CHUNK = 1 << 16


def _rms(a):
    """Root-mean-square of the finite entries of ``a`` without overflow (0 for none).

    Taken chunk by chunk: no temporary the size of ``a``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    top, count = 0.0, 0
    for k in range(0, a.size, CHUNK):
        c = np.abs(a[k : k + CHUNK])
        c = c[np.isfinite(c)]
        count += c.size
        if c.size:
            top = max(top, float(np.max(c)))
    if top == 0.0:
        return 0.0
    total = 0.0
    for k in range(0, a.size, CHUNK):
        c = np.abs(a[k : k + CHUNK])
        c = c[np.isfinite(c)] / top
        total += float(np.dot(c, c))
    return top * float(np.sqrt(total / count))


#: An input whose root-mean-square is more than this many times its median magnitude is
#: dominated by a few outliers: its typical scale is the root-mean-square of the others.
OUTLIER_RATIO = 2.0**10

#: Most elements the median of :func:`_typical` is taken over (an even sample of them).
MEDIAN_SAMPLE = 2**16


def _typical(x):
    """The scale of a typical element of ``x``: its root-mean-square, without outliers.

    One element of 1e10 among elements of about 1 would otherwise lend them
    steps of 1e9 (a ``tanh`` of them saturated at every rung, a ``sin``
    turned through many periods): where the root-mean-square is more than
    :data:`OUTLIER_RATIO` times the median magnitude (of an even sample of
    :data:`MEDIAN_SAMPLE` elements at most), it is taken over the elements
    within that ratio of the median. (A median of 0, a mostly sparse input,
    keeps the root-mean-square.)
    """
    r = _rms(x)
    if r == 0.0:
        return r
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    sample = np.abs(flat[:: max(1, flat.size // MEDIAN_SAMPLE)])
    sample = sample[np.isfinite(sample)]
    med = float(np.median(sample)) if sample.size else 0.0
    if med == 0.0 or r <= OUTLIER_RATIO * med:
        return r
    with np.errstate(invalid="ignore"):
        return _rms(flat[np.abs(flat) <= OUTLIER_RATIO * med])


def element_scales(xs):
    """Per-element step scales: ``max(|x_ij|, typ(x_i))``, one float64 array per input.

    The typical magnitude of the input (its root-mean-square without
    outliers, :func:`_typical`) is the scale of an element near 0 (a weight
    or a logit that happens to be small varies the output on the scale of
    its neighbours); a large element is stepped relative to itself.

    An input that is 0 everywhere borrows the largest root-mean-square of
    the other inputs (1 when all are 0).

    Examples
    --------
    >>> s = element_scales([np.array([1e9, 0.0]), np.zeros(2)])
    >>> s[0].tolist() == [1e9, 1e9 / np.sqrt(2)], s[1].tolist() == [1e9 / np.sqrt(2)] * 2
    (True, True)
    """
    typs = [_typical(x) for x in xs]
    fallback = max(typs, default=0.0) or 1.0
    out = []
    for x, typ in zip(xs, typs, strict=True):
        if typ == 0.0:
            out.append(np.full(np.shape(x), fallback))
            continue
        # The one array of the result, then in place.
        a = np.asarray(np.abs(np.asarray(x, dtype=np.float64)))  # 0-d: abs gives a scalar
        a[~np.isfinite(a)] = 0.0
        out.append(np.maximum(a, SCALE_FLOOR * typ, out=a))
    return out


def measured_scales(evaluate, xs, scales=None, f0=None):
    """:func:`element_scales`, with the scale of every input that is 0 everywhere measured.

    Such an input (a bias, an RNN's first hidden state) tells nothing of the
    scale on which ``fn`` varies with it, and borrowing the other inputs'
    (an RNN's inputs of scale 1e12 lent ``h0 = 0`` steps that saturated
    every ``tanh``) can make a correct derivative fail and a wrong one pass.
    Along a random sign pattern ``d`` over the input, scales ``s`` from the
    borrowed one down by :data:`ZERO_SCALE_RATIO` (at most
    :data:`ZERO_SCALE_LEVELS`) are tried until ``fn`` is smooth enough on
    one: per output element, the central differences over ``s d`` and over
    ``s d / 2`` agree within :data:`ZERO_SCALE_FIT` (plus rounding), and the
    second differences are not those of a kink at the point
    (:data:`ZERO_SCALE_KINK`). The first scale that meets only the first
    test is the answer where none meets both: ``fn`` kinks at the point
    itself (a ReLU of the bias alone); a softmax of logits swamped by the
    step meets only the first test too, being piecewise linear with its
    kink at the point on that scale, but both on its own scale. Where no
    scale meets even the first, the borrowed one is kept. (A scale larger
    than the borrowed one is never tried: too small a scale costs
    precision, too large a wrong verdict.) Four calls of
    ``evaluate`` per scale tried (one more without ``f0``), none when no
    input is 0 everywhere.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(xs) -> array``, the outputs of ``fn`` at the point ``xs``.
    xs : sequence of ndarray
        The evaluation point.
    scales : list of ndarray, optional
        :func:`element_scales` of ``xs`` when computed already.
    f0 : ndarray, optional
        ``evaluate(xs)``, when known.

    Examples
    --------
    >>> x, b = np.full(3, 1e12), np.zeros(3)
    >>> s = measured_scales(lambda xs: np.tanh(xs[0] * 1e-12 + xs[1]), [x, b])
    >>> float(s[0][0]), 1 / 16 <= float(s[1][0]) < 1.0
    (1000000000000.0, True)
    """
    scales = element_scales(xs) if scales is None else list(scales)
    zero = [k for k, x in enumerate(xs) if np.size(x) and _rms(x) == 0.0]
    if not zero:
        return scales
    if f0 is None:
        f0 = evaluate(list(xs))
    f0 = np.asarray(f0, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(0x5CA1E)  # a stream of its own: the user's RNGs are not touched
    for k in zero:
        d = rng.choice([-1.0, 1.0], np.shape(xs[k]))
        s = float(np.max(scales[k]))
        first = None
        for _ in range(ZERO_SCALE_LEVELS):
            odd, even = _smooth_over(evaluate, xs, f0, k, d, s)
            if odd and even:
                first = s
                break
            if odd and first is None:
                first = s
            s /= ZERO_SCALE_RATIO
        if first is not None:
            scales[k] = np.full(np.shape(xs[k]), first)
    return scales


def _smooth_over(evaluate, xs, f0, k, d, s):
    """Whether the first and the second differences of ``fn`` over ``s d`` along input ``k``
    are those of a smooth function (see :func:`measured_scales`)."""
    values = []
    for t in (s, -s, s / 2, -s / 2):
        point = list(xs)
        with np.errstate(over="ignore", invalid="ignore"):
            point[k] = np.asarray(xs[k], dtype=np.float64) + t * d
        try:
            with np.errstate(all="ignore"):
                values.append(np.asarray(evaluate(point), dtype=np.float64).reshape(-1))
        except (UserFunctionError, ValueError, ArithmeticError):
            return False, False  # outside fn's domain at this scale
    fp, fm, hp, hm = values
    if not all(np.all(np.isfinite(v)) for v in values):
        return False, False
    with np.errstate(all="ignore"):
        wide, narrow = (fp - fm) / 2.0, hp - hm  # both f' s + O(s^3)
        curve, curve_half = fp + fm - 2.0 * f0, 4.0 * (hp + hm - 2.0 * f0)  # both f'' s^2 + O(s^4)
        rounding = 64.0 * EPS * (np.abs(fp) + np.abs(fm) + np.abs(hp) + np.abs(hm) + np.abs(f0))
        slope = np.maximum(np.abs(wide), np.abs(narrow))
        odd = np.abs(wide - narrow) <= ZERO_SCALE_FIT * slope + rounding
        bend = np.maximum(np.abs(curve), np.abs(curve_half)) + slope
        even = np.abs(curve - curve_half) <= ZERO_SCALE_KINK * bend + 4.0 * rounding
        return bool(np.all(odd)), bool(np.all(even))


@dataclass
class NoiseModel:
    """The measured rounding noise of every output element of a function.

    Attributes
    ----------
    sigma : ndarray
        Absolute noise of each output element at the base point (flat).
    relative : ndarray
        Noise of each output element relative to its magnitude (flat), at
        least float64's epsilon: what the noise becomes where the element
        takes other values (at the steps of a ladder).
    precision : float
        The function's effective relative precision: the median of
        ``relative`` over the elements where noise was detected (about
        ``6e-8`` for a function that computes in float32).
    detected : ndarray of bool
        Where the probe saw noise (elsewhere ``sigma`` is a floor: half the
        smallest change seen, at least ``precision * |f_i|``, and
        ``relative`` is ``precision``).
    evaluations : int
        Calls of the function the probe spent.
    varies : ndarray, optional
        Per output element, the smallest relative probe step ``h`` over which
        it varied as much as its own size (``inf`` where it never did): the
        function varies on a scale below ``4 h`` of the inputs' scales there,
        and ladders need not start above it.
    calm : ndarray, optional
        Per output element, the largest relative probe step at which it
        looked like a smooth curve plus noise (0 where it never did): below a
        step where it varied wildly, ladders start at most ``4 calm`` (``sin(1e3
        x)`` at ``x ~ 1e4`` is wild at steps of ``0.6`` and smooth at ``7e-5``).
    wavy : ndarray, optional
        Per output element, the smallest relative probe step over which it
        varied wildly with no kink among the probe's points (``inf`` where it
        never did): it oscillates on a scale below that step. ``None`` where
        no output did.
    reach : ndarray, optional
        Per output element, the relative step at which it turns by about a
        radian, judged from its second differences next to its first where
        it looked smooth (``inf`` where it hardly turned): ladders start at
        most there (``sin(1e4 x)`` probed at ``7e-5`` turns by 0.33 radian
        from point to point).
    kind : str, optional
        ``"float32"``, ``"float16"`` or ``"bfloat16"`` when every output the
        probe saw is a value of that type (``fn`` computes in it and casts
        back); ``None`` otherwise.
    """

    sigma: np.ndarray
    relative: np.ndarray | None = None
    precision: float = EPS
    detected: np.ndarray | None = None
    evaluations: int = 0
    varies: np.ndarray | None = None
    kind: str | None = None
    calm: np.ndarray | None = None
    reach: np.ndarray | None = None
    wavy: np.ndarray | None = None

    def __post_init__(self):
        self.sigma = np.asarray(self.sigma, dtype=np.float64).reshape(-1)
        if self.relative is None:
            self.relative = np.full(self.sigma.shape, self.precision)
        if self.varies is None:
            self.varies = np.full(self.sigma.shape, np.inf)
        if self.calm is None:
            self.calm = np.zeros(self.sigma.shape)
        if self.reach is None:
            self.reach = np.full(self.sigma.shape, np.inf)

    def level(self, f):
        """Noise of output values ``f`` (shaped like the output): ``max(sigma, relative |f|, q)``.

        ``q`` is the spacing of float64 numbers below the smallest normal one
        (:data:`QUANTUM`): an output that rounds to 0 or underflows (``(a -
        b)**2`` at ``|a - b| ~ 1e-259``) is known to no better than that, so a
        step that leaves it unchanged bounds the derivative by ``q / t``, not
        by 0.
        """
        f = np.asarray(f, dtype=np.float64)
        return self.level_at(f.reshape(-1), slice(None)).reshape(f.shape)

    def level_at(self, values, at):
        """:meth:`level` of the flat output elements ``at``, whose values are ``values``."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.maximum(
                np.maximum(self.sigma[at], QUANTUM), self.relative[at] * np.abs(values)
            )

    def start_limit(self, turns=True):
        """Per output element, the largest relative step a ladder should start at.

        Where the probe saw the output vary wildly over steps of ``h`` (of the
        inputs' scales), larger steps are meaningless for it; where it looked
        smooth at a smaller probe step, ladders start at most 4 times that one
        (between the two, fn may oscillate: ``sin(1e3 x)`` at ``x ~ 1e4``,
        stepped by 1e-2 of its scale); and at most where it turns by about a
        radian (``sin(1e4 x)`` at steps of 7e-5 turns by 0.33 radian: at larger
        steps it aliases). ``turns=False`` counts only where it oscillated
        (:attr:`wavy`): a kink between the probe's points also makes its values
        wild and bends them. ``inf`` where nothing limits it.
        """
        if not turns:
            # Where it oscillated (wild, no kink seen) only; None where no output did.
            wavy = self.wavy
            if wavy is None:
                return None
            if getattr(self, "_wavy_limit", None) is None:  # once: ladders ask per element
                self._wavy_limit = 4.0 * np.where(
                    np.isfinite(wavy) & (self.calm > 0), self.calm, wavy
                )
            return self._wavy_limit
        limit = np.where(np.isfinite(self.varies) & (self.calm > 0), self.calm, self.varies)
        return np.minimum(4.0 * limit, self.reach)

    def first_rung(self, moved=None, t0=T0):
        """The first rung ``k`` (step ``t0 2^-k``) of a ladder that moves the outputs ``moved``.

        0 unless the probe saw one of them oscillate (:meth:`start_limit`
        with ``turns=False``) on a scale below ``t0``; ``moved``: a boolean
        mask over the outputs (``None``: all of them).
        """
        limits = self.start_limit(turns=False)
        if limits is None:
            return 0
        if moved is not None:
            limits = limits[np.asarray(moved).reshape(-1)]
        limit = float(np.min(limits)) if limits.size else np.inf
        if not (np.isfinite(limit) and limit > 0 and t0 > limit):
            return 0
        return ceil(log2(t0 / limit))

    @property
    def coarse(self):
        """True when the function computes well below float64 precision."""
        return self.precision > 1e3 * EPS

    def note(self, smallest_step=None):
        """The report note on a coarse precision, or ``None`` at float64 precision."""
        if not (self.coarse or self.kind is not None):
            return None
        return precision_note(
            max(self.precision, 2.0 * REDUCED_UNIT.get(self.kind, 0.0)), smallest_step, self.kind
        )


def precision_note(precision, smallest_step=None, kind=None):
    """The report's note on a function whose outputs are noisier than float64 rounding.

    Examples
    --------
    >>> precision_note(6e-8, kind="float32")[:60]
    'fn computes at about float32 precision (noise ~ 6e-08 relati'
    """
    if kind is not None:
        text = (
            f"fn computes at about {kind} precision (noise ~ {precision:.1g} relative, "
            "measured; its outputs are all {kind} values)"
        ).replace("{kind}", kind)
    else:
        text = (
            f"fn's outputs carry noise ~ {precision:.1g} relative (measured), far above float64 "
            "rounding: large inputs, cancellation, a noisy computation or reduced precision inside"
        )
    text += "; steps were chosen that it resolves"
    if smallest_step is not None and np.isfinite(smallest_step):
        text += f" (>= {smallest_step:.2g} of each element's scale)"
    return text + ", and the error estimates include that noise"


#: Unit roundoff of the reduced float types that :attr:`NoiseModel.kind` names.
REDUCED_UNIT = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def _reduced_kind(values):
    """The reduced float type every finite value in ``values`` belongs to, or ``None``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v != 0)]
    if v.size == 0 or (np.all(v == np.round(v)) and np.max(np.abs(v)) < 2.0**24):
        return None  # no values, or small integers: exact in any type, says nothing
    # A type is named only by a value that uses most of its bits: values of a few
    # significant bits are exact in every type (a float64 ``(1 + tanh(a)) / 2`` saturated
    # near 0 takes small multiples of 2^-54, and near 1 the value 1: it read as bfloat16).
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = v.astype(np.float32)
        if not np.array_equal(f32.astype(np.float64), v):
            return None  # (first: the significands below cost 4 passes over every value)
        top = int(np.max(53 - _trailing_zeros(v)))
        if np.all((f32.view(np.uint32) & 0xFFFF) == 0):
            return "bfloat16" if top >= TYPE_BITS["bfloat16"] else None
        if np.array_equal(v.astype(np.float16).astype(np.float64), v):
            return "float16" if top >= TYPE_BITS["float16"] else None
    return "float32" if top >= TYPE_BITS["float32"] else None


#: Bits fewer than its type's that mark a value as cancelled (see _cancelled_in_reduced).
FEW_BITS = 8


def _cancelled_in_reduced(f0, seen, kind):
    """The noise of outputs a reduced type computed by cancellation: half its spacing there.

    ``f0``: the outputs at ``x``; ``seen``: every row of outputs the probe
    evaluated (``f0`` among them); ``kind``: the reduced type
    (:data:`REDUCED_UNIT`). An output that uses :data:`FEW_BITS` fewer bits
    than its type and lies on the type's spacing at ``fn``'s largest output
    (``1 - tanh(x)^2`` in float32 at ``|x| ~ 8``: 14 units of ``2^-24``, 3
    significant bits) carries the rounding of the intermediates it was
    cancelled from, not its own: it is known to half the lowest set bit of
    its values, at most to half that spacing. Values computed to their own
    precision use all of their bits (no change). 0 where ``f0`` is 0.
    """
    f0 = np.asarray(f0, dtype=np.float64).ravel()
    out = np.zeros(f0.size)
    unit = REDUCED_UNIT[kind]
    finite = np.isfinite(f0)
    # Only where f0 itself uses at most the type's bits less FEW_BITS (every value seen is a
    # multiple of the spacing, f0 among them): a value computed to its own precision does so
    # by chance only (1 in 2^FEW_BITS), and its lowest set bit is near its own unit.
    fraction = -int(np.log2(unit)) - 1  # the type's fraction bits (23 for float32)
    low = np.uint64((1 << (52 - fraction + FEW_BITS)) - 1)  # float64 fraction bits it leaves 0
    big = float(np.max(np.abs(f0[finite]), initial=0.0))  # fn's largest output at x
    spacing = 2.0 * unit * big  # the type's spacing at fn's largest output
    at = np.flatnonzero(finite & (f0 != 0.0) & ((f0.view(np.uint64) & low) == 0))
    finest = _lowest_bit(f0[at])
    # And only where f0 lies on (a quarter of) that spacing, as a value cancelled from
    # there does.
    keep = finest >= 0.25 * spacing
    at, finest = at[keep], finest[keep]
    if not at.size:
        return out
    for v in seen:  # row by row, on those outputs only
        for row in np.reshape(v, (-1, f0.size)):
            vals = row[at]
            ok = np.isfinite(vals) & (vals != 0.0)
            finest[ok] = np.minimum(finest[ok], _lowest_bit(vals[ok]))
    out[at] = 0.5 * np.minimum(finest, spacing)
    return out


def _lowest_bit(v):
    """Per finite non-zero float64 value, its lowest set bit (as a power of 2)."""
    _, e = np.frexp(np.abs(v))
    return np.ldexp(1.0, e - 53 + _trailing_zeros(v))


#: Fewest significant bits of the values' widest that name a reduced type (of its 8, 11, 24).
TYPE_BITS = {"bfloat16": 6, "float16": 9, "float32": 17}


def _trailing_zeros(v):
    """Per finite non-zero float64 value, the zero bits at the end of its 53-bit significand."""
    m, _ = np.frexp(np.abs(v))
    sig = np.ldexp(m, 53).astype(np.int64)  # the significand as an integer, 2^52 <= sig < 2^53
    low = sig & -sig  # its lowest set bit
    return np.log2(low.astype(np.float64)).astype(np.int64)


#: Multiple of ``eps * sum |terms|`` allowed for the rounding of the analytic derivative.
ANALYTIC_ROUNDING = 8.0


def analytic_rounding(terms, kind=None):
    """What a correct floating-point derivative may be off by: ``8 eps * terms``.

    ``kind``: the reduced type ``fn`` computes in (:attr:`NoiseModel.kind`),
    whose epsilon replaces float64's. Such a ``fn`` rounds its constants and
    intermediates to it, and the derivative of what it computes differs from
    the derivative of what it means by that much relative to the terms, a
    float64 formula being right: a float32 max of tied zeros times a weight
    moves by exactly ``float32(w)`` along the tie, where the backward returns
    ``w`` (2.5e-8 apart), and exactly linear differences show no noise.

    ``terms`` is the sum of the magnitudes of the terms the derivative is
    made of, e.g. ``sum_i |c_i d f_i / d x_j|`` for element ``j`` of a VJP
    (``<|c|, |f(x + t e_j) - f(x - t e_j)|> / 2t``, free from the central
    difference). A derivative whose terms cancel (a log-softmax JVP at the
    row's maximum: terms of size 1, result ``1e-13``) carries the rounding of
    its terms, not of its result, however it is computed; the comparison
    must not call that a mistake. It depends on the element's own terms
    only, never on other elements.

    Examples
    --------
    >>> bool(analytic_rounding(1.0) == 8 * EPS)
    True
    """
    eps = EPS if kind not in REDUCED_UNIT else 2.0 * REDUCED_UNIT[kind]
    with np.errstate(over="ignore", invalid="ignore"):
        return ANALYTIC_ROUNDING * eps * np.asarray(terms, dtype=np.float64)


def _difference_levels(values):
    """``(levels, signs, e)`` of the differences of each column of ``values`` (:func:`_ecnoise`).

    ``levels[k - 1]``: the level of the ``k``-th differences, scaled as for
    white noise and by ``2^-e`` per column; ``signs[k - 1]``: whether they
    take both signs.
    """
    n, m = values.shape
    levels = np.empty((n - 1, m))
    signs = np.empty((n - 1, m), dtype=bool)
    # Scaled by a power of two per column (exact): the squares of differences
    # of values near 1e-218 (a softmax output 500 below its row's max)
    # underflow to 0, and those of values near 1e200 overflow.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _, e = np.frexp(np.max(np.abs(values), axis=0))
    e = np.where(np.isfinite(e), e, 0).astype(int)
    d = np.ldexp(values, -e)
    for k in range(1, n):
        d = np.diff(d, axis=0)
        with np.errstate(over="ignore", invalid="ignore"):
            levels[k - 1] = np.sqrt(_GAMMA[k] * np.mean(d * d, axis=0))
        signs[k - 1] = np.any(d > 0, axis=0) & np.any(d < 0, axis=0)
    return levels, signs, e


def _ecnoise(values):
    """ECnoise per column of ``values`` (``2m + 1`` equally spaced points down axis 0).

    Returns ``(sigma, rough, first, second)``: ``first`` and ``second`` are
    the levels of the first and second differences (scaled as for white
    noise); ``sigma`` is NaN where no order of
    differences looks like noise; ``rough`` is True where the second
    differences are at least a quarter of the first (scaled as for white
    noise, for which they are equal): the function turns by more than about
    0.4 radian from point to point (a sinusoid sampled at phase steps of
    ``theta`` gives ``1.15 sin(theta / 2)``), as it does not where it is
    sampled finely (``h^2 f''`` next to ``h f'``).
    """
    n, m = values.shape
    levels, signs, e = _difference_levels(values)
    sigma = np.full(m, np.nan)
    todo = np.ones(m, dtype=bool)
    for k in range(n - 3):
        trio = levels[k : k + 3]
        lo, hi = np.min(trio, axis=0), np.max(trio, axis=0)
        ok = todo & signs[k] & (lo > 0) & (hi <= 4.0 * lo) & np.isfinite(hi)
        sigma[ok] = levels[k, ok]
        todo &= ~ok
    with np.errstate(invalid="ignore"):
        rough = levels[1] >= 0.25 * levels[0]
    return np.ldexp(sigma, e), rough, np.ldexp(levels[0], e), np.ldexp(levels[1], e)


#: Smallest probe step at which lone jumps count as rounding (:func:`_lone_jumps`).
LONE_JUMP_STEP = 2.0**-20
#: Largest lone jump that counts as rounding, in units of roundoff of the inputs' magnitude.
LONE_JUMP_UNITS = 64.0


def _lone_jumps(values):
    """Per column, the smallest of one or two jumps among otherwise smooth values, else 0.

    ``values``: the probe's points down axis 0. A jump is a first difference
    more than 16 times the median one; the others must stay within an
    eighth of it.
    """
    d1 = np.abs(np.diff(values, axis=0))
    with np.errstate(invalid="ignore"):
        med = np.median(d1, axis=0)
        big = d1 > 16.0 * med
        count = np.count_nonzero(big, axis=0)
        jump = np.min(np.where(big, d1, np.inf), axis=0)
        rest = np.max(np.where(big, 0.0, d1), axis=0)
        lone = (count >= 1) & (count <= 2) & (rest <= 0.125 * jump) & np.isfinite(jump)
    return np.where(lone, jump, 0.0)


def _whole_multiples(gaps):
    """Columns whose finite ``gaps`` (inf where none) are whole multiples of their smallest.

    Values on a grid of quanta (a float32 or float16 output, rescaled in
    float64 or not) differ by whole numbers of quanta; the values of a
    smooth function sampled where it turns constant do not.

    Examples
    --------
    >>> q = 2.0 ** -23
    >>> gaps = np.array([[q, 0.0315], [2 * q, 0.032], [np.inf, 0.0088]])
    >>> _whole_multiples(gaps).tolist()
    [True, False]
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ratio = gaps / np.min(gaps, axis=0)
        off = np.abs(ratio - np.round(ratio))
        ok = ~np.isfinite(ratio) | (off <= WHOLE_TOLERANCE * np.maximum(ratio, 1.0))
    return np.all(ok, axis=0)


def _kinked(d2, coarse=None, ratio=SPIKE_RATIO, level=None, single=False):
    """Columns of second differences ``d2`` (down axis 0) that kinks made, not noise.

    A kink at one of the points is one spike, the others at most
    :data:`SPIKE_RATIO` of it; a kink between two points is two adjacent
    spikes of the same sign (their sum is the jump in slope times the step).
    Several kinks along the probe's line (a max-pool window of tied values
    that the probe's direction unties one by one) are a few spikes, all of
    one sign where the pieces meet convexly (a max) or concavely (a min). A
    jump in value (a staircase's quantum) gives adjacent spikes of opposite
    signs, and noise gives many, of both signs. ``coarse``: per column, its
    values are all values of float32 (or coarser), where only one kink (one
    spike, or an adjacent pair) is told from a staircase.

    Examples
    --------
    >>> h = 2.0 ** -10
    >>> t = h * np.arange(-4.0, 5.0)
    >>> kinks = [np.abs(t), np.abs(t - 0.3 * h), np.abs(t - 2.5 * h), np.sin(t)]
    >>> _kinked(np.diff(np.stack(kinks, axis=1), 2, axis=0)).tolist()
    [True, True, True, False]
    >>> _kinked(np.diff(np.array([[0.0], [0], [0], [1], [1], [1], [1], [1], [1]]), 2, axis=0))
    array([False])
    """
    a = np.abs(d2)
    top = np.max(a, axis=0)
    big = a > ratio * top
    n_big = np.count_nonzero(big, axis=0)
    one_sign = np.all(~big | (d2 > 0), axis=0) | np.all(~big | (d2 < 0), axis=0)
    first = np.argmax(big, axis=0)
    last = big.shape[0] - 1 - np.argmax(big[::-1], axis=0)
    one_kink = (n_big == 1) | ((n_big == 2) & (last - first == 1))
    allowed = one_kink if single else n_big <= MAX_SPIKES
    if coarse is not None:
        # A staircase of a reduced type can show a few jumps of one sign: only one kink there.
        allowed = np.where(coarse, one_kink, allowed)
    kinks = (top > 0) & one_sign & allowed
    if level is not None and d2.shape[0] >= MAX_SPIKES + 4:
        # Column by column in chunks (an elementwise fn of 1e7 elements has as many columns).
        todo = np.flatnonzero(~kinks & (top > 0) & (True if coarse is None else ~coarse))
        for k in range(0, todo.size, CHUNK):
            cols = todo[k : k + CHUNK]
            kinks[cols] = _mixed_kinks(d2[:, cols], level[cols])
    return kinks


def _mixed_kinks(d2, level):
    """Columns of ``d2`` that are a few kinks of both signs on a smooth background.

    Along a direction that moves many inputs, kinks of both signs sit next to
    each other: a max-pool window of tied pixels unties at ``x`` (one sign),
    a ReLU a little way off switches (the other), and the curvature between
    them is small but not 0. Up to :data:`MAX_SPIKES` entries stand out from
    the median; the others (at least four) vary by at most
    :data:`BACKGROUND_RATIO` of the smallest of those: noise spreads evenly
    (0.1% of columns of white noise pass). The spikes stand
    :data:`MIXED_ABOVE_ROUNDING` float64 units of ``level`` (the largest
    ``|f|`` of the column) above 0: rounding on a grid of a few quanta (``sin(1e3
    x)``, whose argument rounds in steps of ``1e-13``) repeats values exactly,
    and a few that differ by a quantum look the same. A jump in value (two
    adjacent spikes of opposite signs that cancel: a staircase's quantum) is
    noise, not a kink.

    Examples
    --------
    >>> d2 = np.array([[1.4e-8, 1.4e-8, 1.4e-8, -9e-6, 5.8e-7, 2.5e-7, -7e-10]]).T
    >>> jump = np.array([[1e-9, 1e-9, 1e-9, 1e-6, -1e-6, 1e-9, 1e-9]]).T
    >>> quantized = 4.4e-13 * np.array([[-1.0, 1, -1, 1, -1, 1, -1]]).T
    >>> _mixed_kinks(np.hstack([d2, jump, quantized]), np.array([2.9, 1.0, 1.0])).tolist()
    [True, False, False]
    """
    dev = np.abs(d2 - np.median(d2, axis=0))
    order = np.argsort(-dev, axis=0)
    dev = np.take_along_axis(dev, order, axis=0)
    values = np.take_along_axis(d2, order, axis=0)
    out = np.zeros(d2.shape[1], dtype=bool)
    for k in range(1, MAX_SPIKES + 1):
        rest = values[k:]
        spread = np.max(rest, axis=0) - np.min(rest, axis=0)
        smooth = (dev[k - 1] > MIXED_ABOVE_ROUNDING * EPS * level) & (
            spread <= BACKGROUND_RATIO * dev[k - 1]
        )
        # A jump in value among the spikes: two adjacent ones of opposite signs that cancel.
        spikes = np.zeros(d2.shape, dtype=bool)
        np.put_along_axis(spikes, order[:k], True, axis=0)
        pair = spikes[:-1] & spikes[1:] & (d2[:-1] * d2[1:] < 0)
        pair &= np.abs(d2[:-1] + d2[1:]) <= 0.5 * np.maximum(np.abs(d2[:-1]), np.abs(d2[1:]))
        out |= smooth & ~np.any(pair, axis=0)
    return out


def derivative_jumps(values, coarse=None, mixed=True):
    """Columns of equally spaced ``values`` (down axis 0) that a jump in a derivative made rough.

    A kink (a jump in ``f'``) is a spike among the second differences
    (:func:`_kinked`); a point where ``f`` is C1 but not C2 (a Huber loss at
    ``|r| = delta``, ``relu(r)^2`` or an ELU at 0), or C2 but not C3
    (``relu(r)^3``), is the same among the third or fourth differences.
    ECnoise would take any of them for noise (``h^2`` times the jump in
    ``f''``, far above rounding at the probe's larger steps). ``coarse``: as
    for :func:`_kinked`. ``mixed``: also tell kinks of both signs
    (:func:`_mixed_kinks`); at small steps a probe crosses few kinks, and
    rounding on a grid of quanta can look the same.

    Examples
    --------
    >>> t = np.arange(-4.0, 5.0) - 0.3
    >>> pieces = [np.abs(t), np.maximum(t, 0) ** 2, np.maximum(t, 0) ** 3, np.sin(t)]
    >>> derivative_jumps(np.stack(pieces, axis=1)).tolist()
    [True, True, True, False]
    """
    with np.errstate(over="ignore", invalid="ignore"):
        level = np.max(np.abs(values), axis=0)
        d2 = np.diff(values, 2, axis=0)
        jumps = _kinked(d2, coarse=coarse, level=level if mixed else None)
        # One jump in f'' or f''' (one spike, or two adjacent ones) inside the line: a value
        # off by a quantum at an end (rounding on a grid of quanta) is a spike at the end.
        d = d2
        for _ in range(2):
            d = np.diff(d, axis=0)
            inner = np.argmax(np.abs(d), axis=0)
            inner = (inner > 0) & (inner < d.shape[0] - 1)
            jumps |= inner & _kinked(d, coarse=coarse, ratio=SMOOTHER_SPIKE_RATIO, single=True)
    return jumps


def _confirmed(estimates, magnitude=np.inf):
    """The noise of each element over the probe steps so far, and which still need confirming.

    Noise does not depend on the step that shows it; a smooth function that
    varies on about the probe's step does (its high differences can look like
    noise: a softmax of logits near ``1e8`` probed at steps of 0.7 "measured"
    3e-3 where its rounding is 3e-10). An estimate of more than
    :data:`CONFIRM_ABOVE` relative to the values is confirmed at the next
    smaller step: where that step sees :data:`REFUTE_RATIO` times less, the
    larger step's estimate is dropped. Only a smaller step that resolves
    noise above float64 rounding (more than :data:`CONFIRM_ABOVE`) refutes:
    one that sees too few distinct values, or float64 rounding only, may be
    below the resolution of a part of ``fn`` that computes in float32
    (``tanh(float32(x)) + 0.1 x`` is a staircase plus a smooth float64 term
    at steps of 1e-8).

    An estimate far above any rounding (more than :data:`SPREAD_REFUTES` of
    ``magnitude``, the largest input or output) made of no jump is refuted
    too by a smaller step whose values all differ yet spread over
    :data:`REFUTE_RATIO` times less: noise of that size would have spread them.

    Returns ``(best, suspect)``: the largest estimate not refuted (NaN where
    none), and the elements whose estimate came from the smallest step
    probed so far and is large enough to need confirming.
    """
    m = estimates[0][1].size
    best = np.full(m, np.nan)
    smallest_below = np.full(m, np.inf)
    spread_below = np.full(m, np.inf)
    for _, sigma, top, *_, (spread, jumpless) in reversed(estimates):  # smallest step first
        with np.errstate(invalid="ignore"):
            refuted = sigma > REFUTE_RATIO * smallest_below
            resolved = sigma > CONFIRM_ABOVE * top
            # Far coarser than float32's rounding, and a smaller step's values all differ
            # yet spread over far less than it: not noise (a loss whose tanh units
            # saturate over the probe's larger step, inputs of scale 1e4, "measured"
            # 3e-3 where it is smooth to 1e-16 at the next).
            refuted |= (
                jumpless
                & (sigma > SPREAD_REFUTES * magnitude)
                & (sigma > REFUTE_RATIO * spread_below)
            )
        best = np.fmax(best, np.where(refuted, np.nan, sigma))
        smallest_below = np.fmin(smallest_below, np.where(resolved, sigma, np.nan))
        spread_below = np.fmin(spread_below, spread)
    _, last, top, *_ = estimates[-1]
    with np.errstate(invalid="ignore"):
        suspect = np.isfinite(last) & (last > CONFIRM_ABOVE * top) & (last >= best)
    return best, suspect


#: A value whose mantissa ends in this many zero bits lies on a grid far coarser than its
#: own spacing (a random value does so with probability 2^-10) ...
GRID_BITS = 10

#: ... and an output lies on such a grid where this many of one probe step's points do,
GRID_COUNT = 4

#: ... and the grid is at most this fraction of the largest of those values.
GRID_BELOW = 2.0**-20


def _cancellation_grid(rows_by_step, half):
    """Per output, the grid its values lie on far above their own spacing (0 where none).

    ``rows_by_step``: the probe's values, one ``(2 half + 1, m)`` array per
    step (row ``half`` is the base point, left out). At one step,
    :data:`GRID_COUNT` points or more whose mantissas end in at least
    :data:`GRID_BITS` zero bits are a grid (the smallest such spacing among
    them), where it is at most :data:`GRID_BELOW` of the largest value; the
    result is the largest grid over the steps.

    Examples
    --------
    >>> h = 1.37e-3 * np.arange(-4, 5)
    >>> rows = np.stack([np.expm1(h), np.exp(h) - 1.0], axis=1)  # the second cancels
    >>> g = _cancellation_grid([rows], 4)
    >>> bool(g[0] == 0.0), bool(2.0**-53 <= g[1] <= 2.0**-50)
    (True, True)
    """
    grid = None
    for values in rows_by_step:
        count, finest = None, None
        for k, row in enumerate(values):
            if k == half:
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                mant, e = np.frexp(np.where(np.isfinite(row), row, 0.0))
            whole = np.ldexp(mant, 53).astype(np.int64)
            low = whole & -whole  # the lowest set bit of the 53-bit mantissa (0 for 0)
            on = low >= (1 << GRID_BITS)
            spacing = np.where(on, np.ldexp(low.astype(np.float64), e - 53), np.inf)
            count = on.astype(np.int64) if count is None else count + on
            finest = spacing if finest is None else np.minimum(finest, spacing)
        if count is None:
            continue
        # Far below the values themselves too: points that are exact small multiples of
        # the probe's own step (sin(t) = t at x = 0, a direction component clamped to 1/2)
        # lie on a grid near their size, which is no cancellation.
        with np.errstate(invalid="ignore"):
            far = finest <= GRID_BELOW * np.max(np.abs(values), axis=0)
        step_grid = np.where((count >= GRID_COUNT) & far, finest, 0.0)
        grid = step_grid if grid is None else np.maximum(grid, step_grid)
    return grid if grid is not None else 0.0


def largest_magnitude(arrays):
    """``max(1, |a|)`` over the finite elements of ``arrays``."""
    m = 1.0
    for a in arrays:
        a = np.abs(np.asarray(a, dtype=np.float64).reshape(-1))
        a = a[np.isfinite(a)]
        if a.size:
            m = max(m, float(a.max()))
    return m


def measure_noise(evaluate, xs, scales, *, seed=0, steps=PROBE_STEPS, half=PROBE_HALF, f0=None):
    """Measure the noise of every output element of ``evaluate`` at ``xs`` (ECnoise).

    Parameters
    ----------
    evaluate : callable
        ``evaluate(list of arrays) -> flat float64 vector`` (a fresh one).
    xs : list of ndarray
        The base point.
    scales : list of ndarray
        Per-element scales (:func:`element_scales`): the probe direction is
        a standard normal draw (at least :data:`MIN_PROBE` in magnitude) times
        the scale.
    seed : int
        Seed of the probe direction.
    f0 : ndarray, optional
        ``evaluate(xs)``, when the caller has it already (saves a call).

    Returns
    -------
    NoiseModel

    Examples
    --------
    >>> x = np.linspace(0.5, 1.5, 6)
    >>> tiny = measure_noise(lambda a: 1e-12 * np.sin(a[0]), [x], [x])
    >>> f32 = measure_noise(lambda a: np.sin(a[0].astype(np.float32)).astype(float), [x], [x])
    >>> bool(tiny.precision < 1e-15), bool(1e-8 < f32.precision < 1e-6), f32.coarse
    (True, True, True)
    >>> bool(np.all(tiny.sigma < 1e-26))
    True
    """
    rng = np.random.default_rng(seed)
    # Random signs and sizes, none small: a component near 0 (a normal draw
    # can give 0.01) would probe that element at a hundredth of the step, and
    # an output that depends on it alone would look smooth at steps where it
    # oscillates (sin(1e3 x): the ladder then starts where it aliases).
    draws = [rng.standard_normal(np.shape(x)) for x in xs]
    us = [
        np.copysign(np.maximum(np.abs(d), MIN_PROBE), d) * s
        for d, s in zip(draws, scales, strict=True)
    ]
    if f0 is None:
        f0 = np.asarray(evaluate([np.array(x, copy=True) for x in xs]), dtype=np.float64).ravel()
        calls = 1
    else:
        f0 = np.asarray(f0, dtype=np.float64).ravel()
        calls = 0
    m = f0.size
    best = np.full(m, np.nan)
    quantum = np.full(m, np.inf)
    peak = np.abs(f0)  # the largest |f_i| seen at the probe's points
    varies = np.full(m, np.inf)  # the smallest probe step over which f_i varied wildly
    calm = np.zeros(m)  # the largest probe step at which f_i looked smooth plus noise
    moved = np.zeros(m, dtype=bool)  # f_i took two values at some probe step
    wavy = np.full(m, np.inf)  # the smallest probe step over which f_i varied wildly, no kink
    seen = [f0]
    # One record per probe step, largest step first: the step, the plausible noise per
    # element (NaN elsewhere), the largest |f_i|, where f_i looked smooth, its first
    # differences' level, and that level where the values were sloped (NaN elsewhere).
    estimates = []
    reach = np.full(m, np.inf)  # the step at which f_i turns by about a radian
    suspect = np.zeros(m, dtype=bool)
    between = [b for b in BETWEEN_STEPS if min(steps) < b < max(steps)]
    queue = list(steps) + between + [COARSE_PROBE_STEP]
    finer = set()  # steps below the smallest of ``steps``, probed where fn oscillated there
    wild_level = np.zeros(m)  # the first differences' level where f_i oscillated
    jump_level = np.zeros(m)  # half the smallest lone jump seen among smooth values
    magnitude = largest_magnitude(xs)
    lone_limit = LONE_JUMP_UNITS * EPS * magnitude if np.isfinite(magnitude) else 0.0
    largest = max(magnitude, largest_magnitude([f0]))  # inputs and outputs
    rows_at = {}  # probe step -> its values
    while queue:
        h = queue.pop(0)
        if (
            h not in finer
            and np.all(np.isfinite(best))
            and not (suspect.any() and h != COARSE_PROBE_STEP)
        ):
            # Every element's noise was seen: smaller steps would only see
            # less, unless it is large enough to need confirming.
            break
        if h in between and not np.any(moved & ~np.isfinite(best)):
            continue  # every element that moved showed its noise
        coarse = h == COARSE_PROBE_STEP
        if coarse and np.all(moved | np.isfinite(best)):
            break
        values = _probe_rows(evaluate, xs, us, f0, h, half)
        calls += 2 * half
        rows_at[h] = values
        seen.append(values)
        finite = np.all(np.isfinite(values), axis=0)
        if coarse:
            # Only for the elements that never moved at the usual steps (fn
            # computes in float16 or bfloat16, coarser than their reach).
            finite &= ~moved
        if not np.any(finite):
            continue
        values = np.where(finite, values, 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            peak = np.where(finite, np.maximum(peak, np.max(np.abs(values), axis=0)), peak)
            ordered = np.sort(values, axis=0)
            gaps = np.diff(ordered, axis=0)
            distinct = 1 + np.count_nonzero(gaps > 0, axis=0)
            gaps = np.where(gaps > 0, gaps, np.inf)
            # The smallest change is a quantum only where the values were few
            # (steps below the resolution); among many it is just the step. A
            # few values far apart are jumps, not a quantum: a softmax output of
            # 1.0 that drops to 0.5 where the probe's step lets another logit
            # overtake (logits near 1e6, one 500 above its row) is not known to
            # only 0.25.
            top = np.max(np.abs(values), axis=0)
            sigma, rough, first, second = _ecnoise(values)
            # A kink within the probe's points (max-pool over tied pixels: the
            # probe's direction breaks the tie; abs(x - c) with c between two
            # points) is a spike among the second differences, the rest
            # rounding; ECnoise would take it for noise of the size of the kink
            # times the step. Noise, and a float32 staircase, give many.
            with np.errstate(over="ignore", invalid="ignore"):
                reduced = np.all(values.astype(np.float32) == values, axis=0)
            spike = derivative_jumps(values, coarse=reduced, mixed=h >= MIXED_STEP)
            few = finite & (distinct < MIN_DISTINCT)
            few &= np.ptp(values, axis=0) <= QUANTUM_SPAN * top
            # A few values are a staircase of quanta only where they differ by whole
            # multiples of the smallest change and show no kink. A line that crosses
            # where fn turns constant (a dead ReLU, a clip's bound 1e-2 away: values
            # 0.895, 0.927, 0.959, 0.991, then 1.0 five times) is not known to 0.004.
            few &= (distinct < 3) | (_whole_multiples(gaps) & ~spike)
            if coarse:
                # Here for the outputs that never moved at the usual steps: two values,
                # one of them at a single end point, are as often a bound crossed by the
                # farthest point (a clip 1.2e-2 away) as a coarse type's quantum, whose
                # values are those of the type (float16 and bfloat16 are float32 values).
                few &= (distinct >= 3) | reduced
            quantum = np.where(few, np.minimum(quantum, np.min(gaps, axis=0)), quantum)
            sigma = np.where(spike, np.nan, sigma)
            # Moved at a larger step, not at all at this one, and no noise seen
            # at either (a float32 sum: smooth at 6e-5, below its resolution at
            # 7e-9): the noise shows in between, so probe there next.
            lost = finite & (distinct == 1) & moved & ~np.isfinite(best)
            larger = [e[0] for e in estimates if e[0] > h]
            if lost.any() and not coarse and larger and min(larger) > 16.0 * h:
                queue.insert(0, float(2.0 ** np.round(np.log2(np.sqrt(min(larger) * h)))))
            moved |= finite & (distinct > 1)
            # Noise, not a function that varies faster than the probe's step
            # (which looks random too, but at the size of the values
            # themselves): well resolved, and small next to the values.
            # Where ECnoise finds no noise, the values are wild only where they
            # are rough: a function sampled finely (sin(100 x) at steps of 1e-4)
            # shows no noise only because its differences stay above it.
            with np.errstate(invalid="ignore"):
                large = sigma > MAX_RELATIVE_NOISE * np.max(np.abs(values), axis=0)
            wild = finite & (distinct >= MIN_DISTINCT) & (large | (np.isnan(sigma) & rough))
            # Wild by one or two jumps among values that otherwise lie on a smooth
            # curve: fn rounds an intermediate far larger than its value (GELU's tanh
            # form at x ~ -6.9: 0.5 x (1 + tanh(u)) with 1 + tanh(u) a few units of
            # 2^-53 moves in jumps of 0.5 |x| 2^-53, 9% of its value), and that
            # jump is its resolution. It does not oscillate (sin at x ~ 1e14 jumps
            # between every pair of points).
            jumps = _lone_jumps(values)
            # Only at the larger probe steps: at the smaller ones the inputs' own
            # rounding makes jumps too (logits near 1e6, 1.2e-10 apart, probed at 1e-6).
            # And only as large as a few units of roundoff of the largest magnitude
            # about (the inputs, 1): a softmax output that drops from 1.0 to 0.5 where
            # a logit near 1e6 overtakes another is a jump of fn, not of its rounding.
            lone = wild & (jumps > 0) & (h >= LONE_JUMP_STEP) & (jumps <= lone_limit)
            wild &= ~lone
            jump_level = np.where(lone, np.fmax(jump_level, 0.5 * jumps), jump_level)
            plausible = finite & (distinct >= MIN_DISTINCT) & np.isfinite(sigma) & ~wild
            varies = np.where(wild, np.minimum(varies, h), varies)
            # Wild without a kink: fn oscillates at this step, so a larger one that
            # looks calm aliases (sin at x ~ 1e14, stepped by 1e6 x 2^-14: a calm
            # progression of phases modulo 2 pi).
            if not coarse:
                # Not among values of a reduced type: their rounding is wild too (a float16
                # sort near 0), and says nothing of where fn varies.
                osc = wild & ~spike & ~reduced
                wavy = np.where(osc, np.minimum(wavy, h), wavy)
                wild_level = np.where(osc & (wavy == h), first, wild_level)
                nxt = h * FINER_PROBE
                if h <= min(steps) and nxt >= FINEST_PROBE and np.any(wavy == h):
                    # Still oscillating at the smallest step: probe finer, down to a few
                    # units of the inputs' spacing, to find the scale on which fn varies
                    # (sin at x ~ 1e14 varies on a scale of 1: 2^-48 of the input).
                    finer.add(nxt)
                    queue.insert(0, nxt)
            tame = finite & (distinct >= MIN_DISTINCT) & ~wild
            # First differences that the slope, not the noise, makes: strictly
            # monotone values (a float32 staircase at steps below its
            # resolution repeats values and jumps by quanta), far above the noise.
            steps_ = np.diff(values, axis=0)
            monotone = np.all(steps_ > 0, axis=0) | np.all(steps_ < 0, axis=0)
            with np.errstate(invalid="ignore"):
                sloped = tame & monotone
                sloped &= ~(first < 4.0 * np.where(np.isfinite(sigma), sigma, 0.0))
            # How fast fn turns at this step: a sinusoid sampled at phase steps
            # of theta has second / first = 1.15 sin(theta / 2), about 0.58 theta:
            # the step at which it turns by 0.86 radian is h * 0.5 / (second / first).
            # Only where the second differences stand far above rounding (near
            # saturation, tanh at 12.5, they are rounding, and say nothing).
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                floor = 16.0 * np.fmax(np.where(np.isfinite(sigma), sigma, 0.0), EPS * top)
                bent = sloped & (second > floor)
                turn = np.where(bent, 0.5 * h * first / second, np.inf)
            reach = np.fmin(reach, turn)
            # How far values that all differ spread: noise of sigma would spread them by
            # about sigma at any step that resolves it (:func:`_confirmed`).
            # Only an estimate made of no jump can be refuted so (a staircase's jumps, GELU's
            # tanh form below -6, are its noise, and the pieces between them are smooth).
            spread = np.where(finite & (distinct >= MIN_DISTINCT), np.ptp(values, axis=0), np.nan)
            estimates.append(
                (h, np.where(plausible, sigma, np.nan), top, tame, first,
                 np.where(sloped, first, np.nan), (spread, jumps == 0))
            )  # fmt: skip
            estimates.sort(key=lambda e: -e[0])
            best, suspect = _confirmed(estimates, largest)
    # Where fn looked calm and where it varied stay as the probe's steps saw them (the
    # quarter's refutations lower the noise only: the steps at which a softmax of logits
    # near 1e6 varies, which limit where every ladder starts, are not moved by them).
    quarter_best, spent = _quarter_checked(
        evaluate, xs, us, f0, estimates, best, largest, half, rows_at, np.isfinite(varies)
    )
    calls += spent
    for p, (h, sigma, _, tame, first, *_) in enumerate(estimates):
        # Smooth at this step: noise that was not refuted, or no noise seen
        # among values that got smoother with the order of differences, and
        # not aliased: where fn is smooth, its first differences grow with
        # the step. sin(1e3 x) at x ~ 1e4 probed at steps of 0.6 turns by 92
        # periods and 0.05 radian from point to point, and looks as smooth
        # as at steps of 7e-5, with first differences no larger.
        refuted = np.isfinite(sigma) & ~(sigma <= best)
        for h_small, *_, first_small, _ in estimates[p + 1 :]:
            with np.errstate(invalid="ignore", over="ignore"):
                refuted |= tame & (first < 0.25 * (h / h_small) * first_small)
        refuted |= h > wavy
        calm = np.where(tame & ~refuted, np.maximum(calm, h), calm)
        varies = np.where(refuted, np.minimum(varies, h), varies)
    best = quarter_best
    # Oscillating even at the finest probe step, a few units of the inputs' spacing
    # (sin at x ~ 1e16, spaced by 2): fn varies on the scale of that spacing, and no
    # step resolves it. The size of its oscillation there is its noise.
    finest = min([e[0] for e in estimates if e[0] != COARSE_PROBE_STEP], default=np.inf)
    unresolved = (wavy <= finest) & (finest * FINER_PROBE < FINEST_PROBE)
    if unresolved.any():
        best = np.where(unresolved, np.fmax(best, wild_level), best)
    best = np.where(jump_level > 0, np.fmax(best, jump_level), best)
    detected = np.isfinite(best)
    absf = np.abs(f0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_all = np.where(detected & (peak > 0), best / peak, np.nan)
    rel = rel_all[np.isfinite(rel_all)]
    precision = max(EPS, float(np.median(rel))) if rel.size else EPS
    # A quantized output can look noise-free along one line (its steps happen
    # to be an exact progression): no element is taken to be more precise
    # than the lower quartile of the others.
    floor = max(EPS, float(np.quantile(rel, FLOOR_QUANTILE))) if rel.size else EPS
    # Outputs that moved in quanta far coarser than float64's (a max of inputs
    # cast to float32: every value it returns is a float32 value) say so too,
    # though their staircase showed no noise.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        coarse_steps = np.isfinite(quantum) & (0.5 * quantum > 1e3 * EPS * absf)
    values = np.concatenate([np.ravel(v) for v in seen])
    if (
        not moved.all()
        and _distinct_nonzero(values) < TYPE_DISTINCT
        and _reduced_kind(values) is not None
    ):
        # Outputs that did not change at any probe step are quantized, not noiseless
        # (a float32 loss of logits of scale 1e-6 moves by less than its unit): far
        # points tell the type they are computed in. Their values serve that only, and
        # only where those seen are values of a reduced type (else fn is not computed in one).
        far, spent = _far_values(evaluate, xs, us, ~moved, half)
        calls += spent
        values = np.concatenate([values, far])
    kind = (
        _reduced_kind(values)
        if precision > 1e3 * EPS
        or coarse_steps.any()
        or _at_least_distinct(values, TYPE_DISTINCT)
        else None
    )
    relative = np.where(np.isfinite(rel_all), np.maximum(rel_all, floor), precision)
    if kind in REDUCED_UNIT:
        # Every output is a value of the reduced type, rounded to it at least
        # once: one that showed neither noise nor a quantum (a ReLU in float16
        # whose probe points all rounded to one value) is known to its unit
        # roundoff, not to float64's.
        blank = ~detected & ~np.isfinite(quantum)
        relative = np.where(blank, np.maximum(relative, REDUCED_UNIT[kind]), relative)
        if not rel.size:
            precision = max(precision, REDUCED_UNIT[kind])
    # Where no noise showed and the values were few, the smallest change seen
    # is an upper bound on the resolution: take half of it (a quantized output
    # is off by up to half a quantum), and never less than the precision
    # times |f|.
    floor = np.where(np.isfinite(quantum), 0.5 * quantum, 0.0)
    sigma = np.where(detected, best, floor)
    with np.errstate(over="ignore"):
        sigma = np.maximum(sigma, relative * absf)
    if kind in REDUCED_UNIT:
        sigma = np.maximum(sigma, _cancelled_in_reduced(f0, seen, kind))
    zero = f0 == 0.0
    if kind is None and zero.any():
        # An output exactly 0 at x has no magnitude to be rounded relative to; where it
        # is computed by cancellation against a larger intermediate (ELU's exp(x) - 1 at
        # x = 0: multiples of 2^-53 for values of 1e-12) its values lie on that
        # intermediate's grid, and are known to half of it, whether or not the probe saw
        # that as noise (a C1 point whose other side is exact reads as a kink).
        grid = _cancellation_grid([v[:, zero] for v in seen[1:]], half)
        sigma[zero] = np.maximum(sigma[zero], 0.5 * grid)
    return NoiseModel(
        sigma=sigma,
        relative=relative,
        precision=precision,
        detected=detected,
        evaluations=calls,
        varies=varies,
        calm=calm,
        reach=reach,
        kind=kind,
        wavy=wavy if np.isfinite(wavy).any() else None,
    )


#: A noise estimate above float64 rounding is probed again at this fraction of its step ...
QUARTER = 0.25
#: ... and dropped where every order of differences from the second up is this many times
#: smaller there: noise does not shrink with the step, the high differences of a smooth
#: function do (by ``4^k`` for the ``k``-th), and a staircase's shrink by a few times at most.
QUARTER_DROP = 16.0


def _probe_rows(evaluate, xs, us, f0, h, half):
    """The probe's ``2 half + 1`` output rows at ``xs + k h us`` (row ``half`` is ``f0``)."""
    rows = []
    for k in range(-half, half + 1):
        if k == 0:
            rows.append(f0)
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            point = [np.asarray(x + (k * h) * u) for x, u in zip(xs, us, strict=True)]
        f = np.asarray(evaluate(point), dtype=np.float64).ravel()
        if f.shape != f0.shape:
            raise UserFunctionError(
                f"fn returned {f.size} elements at a perturbed point but {f0.size} at the "
                "evaluation point"
            )
        rows.append(f)
    return np.array(rows)


def _quarter_checked(evaluate, xs, us, f0, estimates, best, largest, half, rows_at, wild):
    """``(best, calls)``, where a quarter of the probe step refutes what a step "measured".

    ``estimates`` (:func:`measure_noise`'s records) is not changed: the refutations lower the
    noise only.

    A smooth function that varies on about the probe's step has high
    differences that look like noise (a layer norm of a row of scale 1, in an
    input whose other rows are of scale 1e4 and lend it their step: "noise" of
    1e-4 where it is smooth to 1e-16). Where the smaller probe steps resolve
    only float64 rounding, :func:`_confirmed` keeps such an estimate (it may be
    a float32 part of ``fn`` that those steps fall inside one unit of). The
    estimates that stand above :data:`CONFIRM_ABOVE`, made of no jump and of no
    staircase, of outputs that no probe step saw vary wildly, are probed again
    at :data:`QUARTER` of their step: where the values there all differ and
    every order of differences from the second up is :data:`QUARTER_DROP` times
    below the estimate, it was the function's shape, and is dropped (with the
    estimates of the larger steps for those outputs, which it had refuted).
    """
    calls = 0
    estimates = list(estimates)  # the caller's records stay as the probe's steps saw them
    for h, sigma, top, *rest in list(estimates):
        if h == COARSE_PROBE_STEP:
            continue
        jumpless = rest[-1][1]
        with np.errstate(invalid="ignore"):
            check = np.isfinite(sigma) & (sigma == best) & (sigma > CONFIRM_ABOVE * top)
        # Made of no jump: a staircase's jumps, sparse among smooth values, are its noise
        # (tanh(float32(x)) + 0.1 x at a step below float32's: the quarter sees none). Nor
        # of third differences that are whole multiples of one quantum: a staircase's
        # are, plus a smooth part of low degree (that sum, at the quarter, may cross its
        # stairs in lockstep and look as smooth as a line), a smooth fn's are not.
        with np.errstate(invalid="ignore", over="ignore"):
            d3 = np.abs(np.diff(rows_at[h], n=3, axis=0))
        check &= jumpless & ~_whole_multiples(np.where(d3 > 0, d3, np.inf))
        # Nor where some probe step saw fn vary wildly (``wild``): it may vary on a scale
        # the probe does not resolve (tanh(x - c) at c ~ 1e13, wild at the larger steps,
        # inputs 2e-3 apart at the smaller), and that "noise" is what the ladders cannot
        # resolve either (refuted there, planted errors of 1e-3 passed).
        check &= ~wild
        if not check.any():
            continue
        values = _probe_rows(evaluate, xs, us, f0, QUARTER * h, half)
        calls += 2 * half
        finite = np.all(np.isfinite(values), axis=0)
        values = np.where(finite, values, 0.0)
        distinct = 1 + np.count_nonzero(np.diff(np.sort(values, axis=0), axis=0) > 0, axis=0)
        levels, _, e = _difference_levels(values)
        ceiling = np.ldexp(np.min(levels[1:], axis=0), e)
        with np.errstate(invalid="ignore"):
            refuted = check & finite & (distinct >= MIN_DISTINCT) & (QUARTER_DROP * ceiling < sigma)
        if refuted.any():
            # At this step and every larger one: an estimate at a larger step that a smaller
            # one refuted before must not come back now that the smaller is gone (a softmax
            # of logits near 1e6 at the largest step, 8.7e-3 where its noise is 2e-13).
            for q, (h_q, sigma_q, *rest_q) in enumerate(estimates):
                if h_q >= h:
                    estimates[q] = (h_q, np.where(refuted, np.nan, sigma_q), *rest_q)
            best, _ = _confirmed(estimates, largest)
    return best, calls


#: Relative steps (times the probe direction) of the far points of :func:`_far_values`.
FAR_PROBE_STEPS = (2.0**-4, 2.0**-1, 2.0**2, 2.0**5)


def _distinct_nonzero(values):
    v = values[np.isfinite(values) & (values != 0)]
    return np.unique(v).size


def _at_least_distinct(values, k):
    """``_distinct_nonzero(values) >= k`` (``values`` flat), decided on the first values where
    they suffice: a sort of every value the probe saw (4e5 of them for 15,488 outputs) is not
    needed to find 6 distinct ones."""
    if _distinct_nonzero(values[: 64 * k]) >= k:
        return True
    return _distinct_nonzero(values) >= k


def _far_values(evaluate, xs, us, still, half):
    """``(values, calls)``: outputs ``still`` at the probe's far points.

    Along the probe's direction ``us`` at the relative steps
    :data:`FAR_PROBE_STEPS`, until those outputs took :data:`TYPE_DISTINCT`
    distinct non-zero values or ``fn`` stopped being finite (or failed).
    """
    got, calls = [], 0
    for h in FAR_PROBE_STEPS:
        for k in (-half, -1, 1, half):
            with np.errstate(over="ignore", invalid="ignore"):
                point = [np.asarray(x + (k * h) * u) for x, u in zip(xs, us, strict=True)]
            if not all(np.all(np.isfinite(p)) for p in point):
                return np.concatenate(got) if got else np.zeros(0), calls
            try:
                f = np.asarray(evaluate(point), dtype=np.float64).ravel()
            except Exception:  # noqa: BLE001 - far from x fn may refuse: the probe ends
                return np.concatenate(got) if got else np.zeros(0), calls
            calls += 1
            if f.shape != still.shape or not np.all(np.isfinite(f[still])):
                return np.concatenate(got) if got else np.zeros(0), calls
            got.append(f[still])
        if _distinct_nonzero(np.concatenate(got)) >= TYPE_DISTINCT:
            break
    return np.concatenate(got) if got else np.zeros(0), calls


def _fresh_outputs(fn):
    """True if every output of ``fn`` is a fresh float64 array (the pipeline's guard, shaped)."""
    from oracles._guards import Guarded

    return type(fn) is Guarded and fn.shape is not None


class ScalarObjective:
    """``phi(xs) = sum(cotangent * fn(*xs))`` over float64 working copies.

    Holds the evaluation point (:attr:`point`: the float64 C-contiguous
    inputs given, not copied, and never written to; the caller must not change
    them while the objective is in use) and, made on first use, working copies
    (:attr:`work`) that callers perturb in place. :meth:`output` hands ``fn``
    a fresh copy of its inputs on every call, so that ``fn`` can neither
    change them nor keep references that the next perturbation would change
    (an ``fn`` that returns its input, or a view of it, must not see its
    earlier outputs move). What ``fn`` returns is copied too: an ``fn`` that
    writes into and returns one buffer (``np.sin(x, out=buf)``) cannot make
    an earlier output change. (The fast mode builds its perturbed inputs in
    :meth:`scratch` arrays instead, refilled on every call.)

    The step scales of the inputs (:func:`measured_scales`) and the measured
    noise of ``fn``'s outputs (:func:`measure_noise`, computed on first use
    of :attr:`noise`, 9 to 25 calls of ``fn``) make every derivative of
    this objective independent of the units of inputs and outputs.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs) -> array``.
    inputs : sequence of ndarray
        The evaluation point (float64 C-contiguous arrays are used as they
        are, read-only; others are converted).
    cotangent : ndarray
        Shaped like ``fn(*inputs)``.
    noise : NoiseModel, optional
        A noise model measured before (an executor's worker reuses the
        parent's instead of measuring again).
    base_output : ndarray, optional
        ``fn(*inputs)``, when the caller has it already (one call less).
    scales : list of ndarray, optional
        The step scales (:attr:`scales`), when measured already for this
        ``fn`` and point (objectives of one check share them).
    """

    def __init__(self, fn, inputs, cotangent, *, noise=None, base_output=None, scales=None):
        self.fn = fn
        # Whether fn's outputs are fresh float64 arrays already (the pipeline's guard of a
        # known output shape copies them: Guarded.check).
        self._fresh = _fresh_outputs(fn)
        #: The evaluation point, read-only: the arrays given where they are float64 and
        #: C-contiguous already (no copy), else float64 copies.
        self.point = [_as_point(x) for x in inputs]
        self._work = None
        self._scales = None if scales is None else list(scales)
        self._magnitude = None
        self._scratch = None
        self.cotangent = np.array(cotangent, dtype=np.float64, copy=True)
        self.calls = 0
        self.notes = []
        if base_output is None:
            out = self.output(self.point)
        else:
            out = np.array(base_output, dtype=np.float64, copy=True)
        if out.shape != self.cotangent.shape:
            raise UserFunctionError(
                f"fn(*inputs) returned shape {out.shape}, but the cotangent has shape "
                f"{self.cotangent.shape}; they must match"
            )
        self.base_output = out
        self.base = self._contract(out)
        #: sum |c * f|: the scale of the rounding error of the contraction itself.
        self.scale = float(np.sum(np.abs(self.cotangent * out)))
        self._noise = noise

    @property
    def work(self):
        """Working copies of the inputs (float64, C-contiguous, owned), made on first use.

        Callers perturb them in place (and restore them); :attr:`point` stays
        the evaluation point. A check that only reads the point (the fast
        mode's projections) never makes them: one copy of the inputs less.
        """
        if self._work is None:
            self._work = [np.array(x, dtype=np.float64, order="C", copy=True) for x in self.point]
        return self._work

    @property
    def magnitude(self):
        """``max(1, |x|, |f(x)|)`` over the inputs and outputs (finite ones), on first use.

        The size of the intermediates a rounding quantum of ``fn`` can come from,
        as far as the point and the output tell: ``fn``'s own rounding is a few
        units of ``EPS`` times that.
        """
        if self._magnitude is None:
            self._magnitude = largest_magnitude([*self.point, self.base_output])
        return self._magnitude

    @property
    def scales(self):
        """Per-element step scales, one array per input (:func:`measured_scales`), on first use."""
        if self._scales is None:
            self._scales = measured_scales(self.output, self.point, f0=self.base_output)
        return self._scales

    def scratch(self, i):
        """A reusable array shaped like input ``i`` (``fn``'s inputs are built in it)."""
        if self._scratch is None:
            self._scratch = [None] * len(self.point)
        buf = self._scratch[i]
        if buf is None:
            buf = self._scratch[i] = np.empty_like(self.point[i])
        return buf

    def release(self):
        """Free the scratch arrays (they are made again when needed)."""
        self._scratch = None

    @property
    def measured_noise(self):
        """:attr:`noise` where it was measured already, else ``None`` (measuring costs calls)."""
        return self._noise

    @property
    def noise(self):
        """The measured :class:`NoiseModel` of ``fn``'s outputs (measured once, on first use)."""
        if self._noise is None:
            shape = self.base_output.shape

            def evaluate(xs):
                out = self.output(xs)
                if out.shape != shape:
                    raise UserFunctionError(
                        f"fn returned shape {out.shape} at a perturbed point but {shape} at the "
                        "evaluation point"
                    )
                return out.ravel()

            self._noise = measure_noise(evaluate, self.point, self.scales, f0=self.base_output)
            note = self._noise.note()
            if note and note not in self.notes:
                self.notes.append(note)
        return self._noise

    def output(self, xs):
        """``fn(*xs)`` on fresh copies, as a fresh float64 array (``xs`` are not modified)."""
        self.calls += 1
        # Perturbed points may leave fn's domain (log of a negative at the
        # largest step): such rungs are skipped, not warned about.
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            out = self.fn(*[x.copy() for x in xs])
        if self._fresh and type(out) is np.ndarray:
            return out  # the pipeline's guard returns a fresh float64 array: no second copy
        return np.array(out, dtype=np.float64, copy=True)

    def _contract(self, out):
        if out.shape != self.cotangent.shape:
            raise UserFunctionError(
                f"fn returned shape {out.shape} at a perturbed point but {self.cotangent.shape} at "
                "the evaluation point"
            )
        return float(np.vdot(self.cotangent.ravel(), out.ravel()))

    def __call__(self, xs):
        return self._contract(self.output(xs))

    def rung_noise(self, fp, fm, mask):
        """Rounding noise of ``<cotangent, fp - fm>`` (see :meth:`NoiseModel.level`).

        ``mask`` (bool, shaped like the output) accumulates in place the
        output elements seen to change across the rungs of one probe: an
        element that changed at a larger step still carries its noise at a
        step where it happens to round equal.
        """
        mask |= fp != fm
        at = np.flatnonzero(mask)
        if not at.size:
            return 0.0
        noise = self.noise
        c = np.abs(self.cotangent.reshape(-1)[at])
        with np.errstate(over="ignore", invalid="ignore"):
            # NoiseModel.level_at of both sides, the per-output terms gathered once (the ladder
            # calls this three times a rung; the same arithmetic, in a third of the time).
            floor = np.maximum(noise.sigma[at], QUANTUM)
            rel = noise.relative[at]
            level = np.maximum(floor, rel * np.abs(fp.reshape(-1)[at]))
            level += np.maximum(floor, rel * np.abs(fm.reshape(-1)[at]))
            # Each product c_i (fp_i - fm_i) is rounded to at least one quantum:
            # at subnormal magnitudes (steps of 1e-318) that is its whole error.
            return NOISE_SAFETY * (float(np.add.reduce(c * level)) + c.size * QUANTUM)

    def rung_noises(self, fp, fm, f0, mask, cache=None):
        """``(max(rung_noise(fp, f0), rung_noise(f0, fm)), rung_noise(fp, fm))``, in one pass.

        The three calls of :meth:`rung_noise` a ladder rung makes (each
        one-sided difference and the central one, ``mask`` accumulating in
        that order), bitwise: the per-output terms are gathered once over
        the outputs of the last two calls, and the first call's outputs
        (``mask`` after its own update) are a subset of them, in the same
        order. The third call adds nothing to ``mask``: where ``fp`` and
        ``fm`` both equal ``f0`` they equal each other. On ``tanh(x @ W)``
        a rung of the ladder spent a third of its Python time in the three
        calls.

        ``cache``: a dict kept over the rungs of one probe whose ``mask`` only
        grows (a mask of the same count is the same mask then), for the terms
        that depend on the changed outputs and ``f0`` only.
        """
        # np.flatnonzero, without its Python wrappers (3 us a rung of the ladder).
        mask |= fp != f0
        first = mask.ravel().nonzero()[0]
        mask |= fm != f0
        at = mask.ravel().nonzero()[0]
        if not at.size:
            return 0.0, 0.0
        got = None if cache is None else cache.get(at.size)
        with np.errstate(over="ignore", invalid="ignore"):
            if got is None:
                noise = self.noise
                c = np.abs(self.cotangent.reshape(-1)[at])
                floor = np.maximum(noise.sigma[at], QUANTUM)
                rel = noise.relative[at]
                l0 = np.maximum(floor, rel * np.abs(f0.reshape(-1)[at]))
                if cache is not None:
                    cache[at.size] = (c, floor, rel, l0)
            else:
                c, floor, rel, l0 = got
            lp = np.maximum(floor, rel * np.abs(fp.reshape(-1)[at]))
            lm = np.maximum(floor, rel * np.abs(fm.reshape(-1)[at]))
            if first.size == at.size:
                fwd = NOISE_SAFETY * (float(np.add.reduce(c * (lp + l0))) + c.size * QUANTUM)
            elif not first.size:
                fwd = 0.0
            else:
                sel = np.searchsorted(at, first)
                c1 = c[sel]
                fwd = NOISE_SAFETY * (
                    float(np.add.reduce(c1 * (lp[sel] + l0[sel]))) + c1.size * QUANTUM
                )
            bwd = NOISE_SAFETY * (float(np.add.reduce(c * (l0 + lm))) + c.size * QUANTUM)
            central = NOISE_SAFETY * (float(np.add.reduce(c * (lp + lm))) + c.size * QUANTUM)
        return max(fwd, bwd), central

    def difference(self, xs_plus, xs_minus, mask):
        """``phi(xs_plus) - phi(xs_minus)`` and its rounding noise.

        The outputs are subtracted elementwise *before* contracting with the
        cotangent: elements of ``fn``'s output that the perturbation does not
        touch cancel exactly, so the rounding noise is only that of the
        elements that changed (:meth:`rung_noise`), not that of the whole
        sum. Non-finite outputs give ``nan``.
        """
        fp = self.output(xs_plus)
        fm = self.output(xs_minus)
        if fp.shape != self.cotangent.shape or fm.shape != self.cotangent.shape:
            raise UserFunctionError(
                f"fn returned shape {fp.shape if fp.shape != self.cotangent.shape else fm.shape} "
                "at a "
                f"perturbed point but {self.cotangent.shape} at the evaluation point"
            )
        if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(fm))):
            return np.nan, np.inf
        noise = self.rung_noise(fp, fm, mask)
        return float(np.vdot(self.cotangent, fp - fm)), noise

    def hidden_noise(self, mask, t0):
        """Bound on the derivative hidden by quantization in outputs that never changed.

        An output element ``f_i`` that stayed bitwise equal even at the
        largest step ``t0`` (absolute) can still depend on the probe, by less
        than its own resolution, over ``t0``. (Softmax at logits of scale
        500: a logit's effect on the normalizer is 1e-200 relative.) The
        resolution is the measured noise of the element, at least its
        precision times ``|f_i|``: ``2 sum |c_i| level_i / t0`` over the
        unseen outputs.
        """
        unseen = ~mask
        if not unseen.any():
            return 0.0
        level = self.noise.level(self.base_output)[unseen]
        with np.errstate(over="ignore", invalid="ignore"):
            # Divided by the step first: |c| times a level of one quantum underflows to 0.
            return 2.0 * float(np.sum(np.abs(self.cotangent[unseen]) * (level / t0)))

    def input_noise(self, grads=None):
        """Legacy: ``eps * ||x * grad||_2`` over every input element, times the safety factor.

        The numerics of this package no longer use it: the noise that the
        magnitude of the inputs causes in the outputs (``x - max(x)`` in a
        softmax at ``x ~ 1e6``) is part of the measured noise of each output
        element, whereas this bound lends every element the scale of the
        largest ``x * grad`` anywhere.
        """
        if grads is None:
            return 0.0
        parts = [
            np.abs((EPS * x) * np.asarray(g, dtype=np.float64)).ravel()
            for x, g in zip(self.work, grads, strict=True)
            if g is not None
        ]
        v = np.concatenate(parts) if parts else np.zeros(0)
        v = v[np.isfinite(v)]
        top = float(np.max(v)) if v.size else 0.0
        if top == 0.0:
            return 0.0
        return NOISE_SAFETY * top * float(np.sqrt(np.sum((v / top) ** 2)))


def changed_noise(cot, fp, fm, mask):
    """Legacy noise model of ``<cot, fp - fm>``: ``8 eps sum |c| (max(|fp|, 1) + max(|fm|, 1))``.

    Assumes intermediates of magnitude at least 1, so it is not independent
    of the units; the numerics of this package use
    :meth:`ScalarObjective.rung_noise` (measured noise) instead. ``mask``
    accumulates (in place) the output elements seen to change.
    """
    mask |= fp != fm
    c = np.abs(cot[mask])
    level = np.maximum(np.abs(fp[mask]), 1.0) + np.maximum(np.abs(fm[mask]), 1.0)
    return NOISE_SAFETY * EPS * float(np.sum(c * level))
