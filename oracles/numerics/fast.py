"""Fast checks of large gradients: random projections, then group testing to name wrong elements.

For a model with ``N`` parameters, a per-element check costs at least ``2N``
evaluations of ``fn``. A *directional* check costs a few dozen: along a
Rademacher direction ``u`` (``+-1`` per element, over all inputs at once)
the step ladder of :func:`oracles.numerics.directional` measures the
residual ``<true_grad - analytic, u>`` with its own error estimate (about
``1e-10`` absolute on the MNIST MLP). A single element off by ``d`` moves
the residual by ``+-d``, so it stands out once ``d`` exceeds that estimate.

The rule, per projection over an index set ``S``::

    |residual| <= error_estimate + sum_{j in S} (atol + rtol * |analytic_j|)

(with the default ``atol = rtol = 0`` exactly the numerics' own error). It
follows from the per-element rule of :mod:`oracles.compare` summed over
``S``, so a projection that fails means some element is off.

When one fails, **group testing** names the elements: the index set is split
by input, then in halves, each half tested along fresh random signs (so that
two errors cannot cancel the same way twice), recursing into every half that
disagrees, down to single elements. Each named element is then checked with
the per-element ladder of :func:`oracles.numerics.ladder.partials`, which also tells
kinks apart; only that check decides the element's verdict. Then fresh
directions over the elements not yet checked individually verify that
nothing else is wrong (up to three rounds). When more than ``max_named``
blocks of one input disagree at once, the errors are everywhere (a wrong
formula, not a typo) and that input is checked exhaustively instead
(:mod:`oracles.numerics.exhaustive`).

What the report says: elements checked individually are compared like in
the exhaustive mode; every other element is *covered* by the passing
projections (counted in ``n_checked``) but never reported with a value of
its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from oracles._validation import check_seed
from oracles.compare import Reference
from oracles.errors import InvalidArgument, InvalidArgumentType
from oracles.numerics.directional import directional
from oracles.numerics.exhaustive import Exhaustive, exhaustive_partials, sharp_partials
from oracles.numerics.objective import N_RUNGS, T0

__all__ = [
    "Fast",
    "FastResult",
    "Projection",
    "fast_partials",
]

#: Rounds of "project, localize, confirm" before giving up to an exhaustive check.
MAX_ROUNDS = 3
#: After calibration the ladder starts this many times above the step the first direction chose.
T0_ABOVE_BEST = 16.0


@dataclass(frozen=True)
class Fast:
    """The ``mode=`` of :func:`oracles.check_vjp` that checks along random directions.

    Parameters
    ----------
    directions : int
        Rademacher directions over all inputs per round (default 3). A
        single wrong element is missed by all of them only when the numerics
        cannot see it at all; more directions guard against errors in
        several elements cancelling.
    seed : int, optional
        Seed of the directions (default: the check's ``seed``).
    max_named : int
        More disagreeing blocks than this in one input at one level of the
        bisection means "errors everywhere": that input is checked
        exhaustively.
    exhaustive : Exhaustive
        Settings (executor, progress) of that exhaustive fallback.

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
        says which elements carry a numeric value of their own.
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
        out = [
            Reference(**{k: v.reshape(x.shape) for k, v in r.items()}, covered=x.size)
            for x, r in zip(objective.work, res.results, strict=True)
        ]
        return out, res.method, res.evaluations, res.notes


@dataclass(frozen=True)
class Projection:
    """One directional test: the residual along a random direction and its verdict."""

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
        compared individually.
    projections : list of Projection
        The directions over all unchecked elements, every round (the last
        ones passed unless ``fallback_all``).
    localized : list of (input_number, flat_index)
        Elements named by the bisection.
    exhaustive_inputs : list of int
        Inputs checked exhaustively because their errors were everywhere.
    fallback_all : bool
        True when the projections kept disagreeing without being explained
        and every remaining element was checked exhaustively.
    tests : int
        Directional derivatives evaluated (projections and bisection).
    evaluations : int
        Calls of ``fn``.
    method : str
    notes : list of str
    """

    results: list
    projections: list
    localized: list
    exhaustive_inputs: list
    fallback_all: bool
    tests: int
    evaluations: int
    method: str
    notes: list


class _Tester:
    """Directional tests over index sets, with fresh Rademacher signs each time."""

    def __init__(self, objective, grads, atol, rtol, rng):
        self.objective = objective
        self.grads = [np.asarray(g, dtype=np.float64) for g in grads]
        self.abs_grads = [np.abs(g).reshape(-1) for g in self.grads]
        self.atol, self.rtol = atol, rtol
        self.rng = rng
        self.t0, self.n_rungs = T0, N_RUNGS
        self.calibrated = False
        self.tests = 0

    def direction(self, parts):
        u = [np.zeros(x.shape) for x in self.objective.work]
        slack, n = 0.0, 0
        for i, idx in parts:
            u[i].reshape(-1)[idx] = self.rng.integers(0, 2, size=idx.size) * 2.0 - 1.0
            n += idx.size
            slack += idx.size * self.atol + self.rtol * float(np.sum(self.abs_grads[i][idx]))
        return tuple(u), slack, n

    def measure(self, u, slack, n, t0=None, n_rungs=None):
        self.tests += 1
        est = directional(
            self.objective, [u], grads=self.grads, t0=t0 or self.t0, n_rungs=n_rungs or self.n_rungs
        )
        r, e = float(est.value[0]), float(est.error[0])
        return Projection(n_elements=n, residual=r, error=e, tolerance=e + slack), est

    def calibrate(self, u, slack, n):
        """First test: the full ladder picks a step; later ladders start just above it.

        Along a direction through many parameters, the largest steps may
        cross kinks (ReLU) that smaller steps do not; the rung-consistency
        rule then widens the error estimate to the disagreement of those
        large rungs. Re-running from ``16 x`` the chosen step keeps the
        estimate to the steps that are informative; the sharper of the two
        estimates is kept.
        """
        first, est = self.measure(u, slack, n)
        self.calibrated = True
        step = float(est.step[0])
        if not np.isfinite(step):
            return first
        t0 = min(T0, T0_ABOVE_BEST * step)
        drop = int(round(np.log2(T0 / t0)))
        self.t0, self.n_rungs = T0 * 2.0**-drop, max(6, N_RUNGS - drop)
        if drop == 0:
            return first
        second, _ = self.measure(u, slack, n)
        return second if second.error < first.error else first

    def test(self, parts):
        u, slack, n = self.direction(parts)
        if not self.calibrated:
            return self.calibrate(u, slack, n)
        return self.measure(u, slack, n)[0]


def _localize(tester, unchecked, max_named):
    """Group testing: ``(leaves, everywhere)`` from the disagreeing inputs down to elements."""
    leaves, everywhere = [], []
    if len(unchecked) == 1:
        failing = list(unchecked)
    else:
        failing = [i for i, idx in unchecked.items() if not tester.test([(i, idx)]).passed]
    for i in failing:
        named, nodes = [], [unchecked[i]]
        while nodes and len(nodes) <= max_named:
            nxt = []
            for node in nodes:
                if node.size == 1:
                    named.append((i, int(node[0])))
                    continue
                half = node.size // 2
                nxt += [
                    part
                    for part in (node[:half], node[half:])
                    if not tester.test([(i, part)]).passed
                ]
            nodes = nxt
        if nodes:  # more disagreeing blocks than max_named: errors everywhere
            everywhere.append(i)
        else:
            leaves += named
    return leaves, everywhere


def _store(results, i, flat_idx, est):
    r = results[i]
    for key in ("value", "error", "kink", "left", "right", "nonfinite"):
        r[key][flat_idx] = est[key]
    r["checked"][flat_idx] = True


def _ladder_elements(objective, grads, elements):
    return sharp_partials(objective, elements, grads)


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
    """Directional checks over all inputs, then bisection to the elements that disagree.

    Parameters
    ----------
    objective : oracles.numerics.objective.ScalarObjective
    grads : sequence of ndarray
        The analytic gradient, one finite array per input.
    atol, rtol : float
        Tolerances (see the module notes for the rule per projection).
    directions : int
        Rademacher directions over all unchecked elements per round.
    seed : int
        Seed of the random signs.
    max_named : int
        See :class:`Fast`.
    must_check : sequence of bool arrays, optional
        Elements to check individually whatever the projections say (e.g.
        where the analytic gradient was not finite).
    exhaustive : Exhaustive, optional
        Settings of the exhaustive fallback.

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
    rng = np.random.default_rng(seed)
    tester = _Tester(objective, grads, atol, rtol, rng)
    work = objective.work
    calls0 = objective.calls
    notes, remote_evals = [], 0
    results = [
        {
            "value": np.full(x.size, np.nan),
            "error": np.full(x.size, np.inf),
            "kink": np.zeros(x.size, dtype=bool),
            "left": np.full(x.size, np.nan),
            "right": np.full(x.size, np.nan),
            "nonfinite": np.zeros(x.size, dtype=bool),
            "checked": np.zeros(x.size, dtype=bool),
        }
        for x in work
    ]
    if must_check is not None:
        elements = [
            (i, int(j))
            for i, m in enumerate(must_check)
            for j in np.flatnonzero(np.asarray(m).reshape(-1))
        ]
        if elements:
            est = _ladder_elements(objective, grads, elements)
            for p, (i, j) in enumerate(elements):
                _store(results, i, [j], {k: v[p : p + 1] for k, v in est.items()})

    projections, localized, everywhere_all = [], [], []
    fallback_all = False

    def run_exhaustive(inputs):
        nonlocal remote_evals
        idx = [(i, np.flatnonzero(~results[i]["checked"])) for i in inputs]
        idx = [(i, j) for i, j in idx if j.size]
        if not idx:
            return
        before = objective.calls
        res, info = exhaustive_partials(
            objective,
            grads,
            idx,
            atol=atol,
            rtol=rtol,
            executor=exhaustive.executor,
            progress=exhaustive.progress,
            screen=exhaustive.screen,
            chunk_size=exhaustive.chunk_size,
        )
        # Chunks that ran on an executor do not show up in objective.calls.
        remote_evals += max(0, info["evaluations"] - (objective.calls - before))
        for i, j in idx:
            _store(results, i, j, res[i])
        for note in info["notes"]:
            if note not in notes:
                notes.append(note)

    for _ in range(MAX_ROUNDS):
        unchecked = {i: np.flatnonzero(~r["checked"]) for i, r in enumerate(results)}
        unchecked = {i: idx for i, idx in unchecked.items() if idx.size}
        if not unchecked:
            break
        parts = list(unchecked.items())
        this_round = [tester.test(parts) for _ in range(directions)]
        projections += this_round
        if all(p.passed for p in this_round):
            break
        leaves, everywhere = _localize(tester, unchecked, max_named)
        if leaves:
            est = _ladder_elements(objective, grads, leaves)
            for p, (i, j) in enumerate(leaves):
                _store(results, i, [j], {k: v[p : p + 1] for k, v in est.items()})
            localized += leaves
        if everywhere:
            everywhere_all += everywhere
            run_exhaustive(everywhere)
    else:
        fallback_all = True
        notes.append(
            f"random projections kept disagreeing after {MAX_ROUNDS} rounds of bisection without "
            "the disagreement being explained by individually checked elements; every remaining "
            "element was checked exhaustively"
        )
        run_exhaustive(range(len(work)))

    evaluations = objective.calls - calls0 + remote_evals
    n_individual = int(sum(np.count_nonzero(r["checked"]) for r in results))
    last = projections[-directions:] if projections else []
    if last and all(p.passed for p in last):
        worst_res = max(abs(p.residual) for p in last)
        worst_err = max(p.error for p in last)
        head = (
            f"{directions} Rademacher direction(s) over the {last[0].n_elements} elements not "
            f"checked individually (largest |residual| {worst_res:.1e}, error estimates "
            f"<= {worst_err:.1e})"
        )
    else:
        head = f"{directions} Rademacher direction(s) per round"
    method = (
        f"{head}, {tester.tests} directional derivatives in all, + bisection: "
        f"{len(localized)} element(s) named and {n_individual} checked individually"
    )
    if everywhere_all:
        method += (
            f"; input(s) {sorted(set(everywhere_all))} checked exhaustively (errors everywhere)"
        )
    notes.append(
        f"mode fast: elements not named by the bisection were covered by random projections, not "
        f"compared one by one ({n_individual} element(s) compared individually)"
    )
    return FastResult(
        results=results,
        projections=projections,
        localized=localized,
        exhaustive_inputs=sorted(set(everywhere_all)),
        fallback_all=fallback_all,
        tests=tester.tests,
        evaluations=evaluations,
        method=method,
        notes=notes,
    )
