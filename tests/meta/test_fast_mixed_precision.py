"""Mode fast on a fn that is part float32, part float64 (a staircase under a smooth term).

``w * (float32(x + off) - off) + sin(x)``: the float32 part moves in quanta of
``ulp(off)``, the float64 part at every step. Before round 8 the fast mode measured its
noise at spacings below the float32 part's resolution, where only the float64 term
moves, and settled its steps there: every stencil missed the float32 part's derivative
alike. A correct backward failed (31 of 36 constructions at offsets 10 to 1e3), and a
backward that forgets the float32 part passed (5 of 6 at offset 1e3). Mode exhaustive
(whose probe starts at steps a float32 part resolves) was right in every case.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracles import check_vjp


def _case(seed, n, off, frac):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    w = rng.normal(size=n)

    def fn(x):
        return np.sum(w * ((x + off).astype(np.float32).astype(np.float64) - off)) + frac * np.sum(
            np.sin(x)
        )

    return fn, x, w


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [6, 300])
@pytest.mark.parametrize("off", [10.0, 1e3])
@pytest.mark.parametrize("frac", [0.1, 10.0])
def test_a_correct_backward_does_not_fail(seed, n, off, frac):
    fn, x, w = _case(seed, n, off, frac)
    r = check_vjp(fn, lambda g, x: g * (w + frac * np.cos(x)), (x,), mode="fast", seed=seed)
    # Inconclusive is allowed: at offset 1e3 the float32 part resolves steps of 6e-5 only.
    assert r.status != "failed", str(r)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [6, 300])
@pytest.mark.parametrize("off", [10.0, 1e3])
def test_a_backward_that_forgets_the_float32_part_fails(seed, n, off):
    fn, x, _ = _case(seed, n, off, 1.0)
    r = check_vjp(fn, lambda g, x: g * np.cos(x), (x,), mode="fast", seed=seed)
    assert r.status == "failed", str(r)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "rel"), [(300, 0.1), (300, 0.01), (6000, 0.1), (6000, 0.01)])
def test_one_wrong_element_of_the_float32_part_never_passes(seed, n, rel):
    # At 6000 elements mode "auto" is the fast mode. The float32 part's noise over 6000
    # terms can leave its projections inconclusive (they resolve about 4e-2 there, 4e-3 at
    # 300 elements, and say so); at 300 elements an error of 10% is named.
    fn, x, w = _case(seed, n, 10.0, 1.0)
    wrong = w.copy()
    wrong[17] *= 1.0 + rel
    r = check_vjp(
        fn,
        lambda g, x: g * (wrong + np.cos(x)),
        (x,),
        mode="auto" if n > 5000 else "fast",
        seed=seed,
    )
    assert r.status != "passed", str(r)
    if n == 300 and rel == 0.1:
        assert r.status == "failed", str(r)
        worst = r.input("x").checks["numeric"].worst
        assert any(e.index == (17,) and not e.passed for e in worst), str(r)
