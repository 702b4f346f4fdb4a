r"""A catalog of real mistakes: wrong derivations as tutorials and course notes publish them.

Each entry is a :class:`Pitfall`: the correct forward ``fn``, the published
wrong VJP ``wrong_vjp`` (rewritten here, faithfully to its mistake), the
reference VJP ``correct_vjp`` it should have been, inputs on which the mistake
shows, and which input's gradient is wrong. The test suite runs every entry
through :func:`oracles.check_vjp`: the wrong VJP must be flagged, with the
report pointing at ``wrong_input``; the correct one must pass.

=====================================  =====  ==============================================
name                                   wrong  what is wrong
=====================================  =====  ==============================================
softmax_diagonal_jacobian              x      ``g * a (1 - a)``: Jacobian cut to its diagonal
softmax_backward_ignores_upstream      x      returns ``a - a^2``, never multiplies by ``g``
softmax_over_batch_axis                x      forward and backward normalize over axis 0
squared_error_on_softmax_diagonal      z      ``2 (a - y) a (1 - a)``: off-diagonal terms dropped
cross_entropy_soft_targets_a_minus_y   z      ``a - y`` although the targets don't sum to 1
cross_entropy_mean_missing_1_over_n    z      mean loss, gradient of the sum (no ``1/N``)
cross_entropy_whole_columns            z      ``dz[:, t] -= 1``: whole columns, not ``(n, t_n)``
nll_backward_ignores_upstream          p      ``-1/p_r`` returned without the factor ``g``
sigmoid_derivative_of_output_on_input  x      ``x (1 - x)`` applied to the pre-activation
sigmoid_derivative_on_output           x      ``s(s(x)) (1 - s(s(x)))``: sigmoid applied twice
tanh_derivative_missing_square         x      ``1 - tanh(x)`` instead of ``1 - tanh(x)^2``
affine_dx_missing_transpose            x      ``dX = G W`` instead of ``G W^T`` (square ``W``)
affine_dw_missing_transpose            W      ``dW = G^T X`` instead of ``X^T G`` (square)
affine_db_averaged                     b      ``db = mean_n G_n`` instead of the sum
squared_error_missing_factor_2         pred   ``p - t`` for ``sum (p - t)^2`` (no ``half``)
relu_backward_in_place                 --     ``g[x <= 0] = 0; return g``: caller's ``g`` changes
cross_entropy_epsilon_dropped          p      ``log(p + 1e-7)`` forward, ``-y / p`` backward
gelu_tanh_forward_exact_backward       x      tanh-approximation forward, exact-GELU backward
embedding_repeated_indices_lost        W      ``dW[ids] += g``: a repeated id counts once
maxpool_ties_all_get_gradient          x      every tied maximum of a window gets ``g``
conv2d_padding_slice_empty_at_p0       x      ``dx_pad[p:-p, p:-p]`` is empty at ``p = 0``
lstm_step_backward_in_place            --     ``dc_next += ...``: caller's cotangent changes
=====================================  =====  ==============================================

Two entries compute the right numbers: their mistake is that they write into
their upstream gradient (``relu_backward_in_place``,
``lstm_step_backward_in_place``). Their ``wrong_input`` is ``None`` and their
``mutates_cotangent`` is True; an oracle must report the modification.

Layer-style mistakes (max-pool, convolution, LSTM step, embedding) are
written function-style, ``fn(*inputs)`` and ``vjp(g, *inputs)``, so that
:func:`oracles.check_vjp` runs them like the rest; an LSTM step returns
``[h_next, c_next]`` side by side as one array. Index arrays (labels, token
ids) cannot be perturbed, so those entries close over fixed ones.

Two entries are hard on purpose. ``gelu_tanh_forward_exact_backward`` is
only about 1e-3 off (the approximation is good; its derivative is not the
exact one's). ``maxpool_ties_all_get_gradient`` is wrong only at ties, where
the max is not differentiable: an oracle must judge each tie group (the
weights over tied entries must sum to 1), not each element alone.
``conv2d_padding_slice_empty_at_p0`` returns a gradient of the wrong shape;
an oracle refuses it naming the input (at ``p >= 1`` the same code is right:
its ``fn`` and VJPs take ``pad``).

Where a published derivation also gives a gradient it gets right (the target
gradient of a loss, say), or gives none, the entry's ``wrong_vjp`` returns
the correct one for it, so that exactly one input is wrong.

Examined and **not** entries (they are not wrong gradients):

* A sigmoid written as ``1 / (1 + exp(-x + 1e-9))`` with its derivative
  ``s (1 - s)`` of that same shifted ``s``: the forward is the true sigmoid
  at ``x - 1e-9``, and the backward is the exact derivative of the forward
  as written. Against the true sigmoid the gradient differs by a relative
  ``1e-9 |1 - 2 s|``, a forward perturbation far below any gradient mistake;
  an oracle must pass it.
* A softmax shifted by the global maximum of the array instead of each row's
  maximum: softmax is invariant to any constant shift, so values and
  gradients are unchanged; only rows far below the global maximum can
  underflow to ``0 / 0``. Summing over axis 0 in the same code is
  ``softmax_over_batch_axis``.
* ``log(a + 1e-7)`` inside a cross-entropy, differentiated as written
  (``1 / (a + 1e-7)``): a forward perturbation of the loss, like the
  shifted sigmoid. Dropping the epsilon in the backward only is the entry
  ``cross_entropy_epsilon_dropped``.

Examples
--------
>>> p = by_name("tanh_derivative_missing_square")
>>> (x,) = p.make_inputs(np.random.default_rng(0))
>>> g = np.ones_like(x)
>>> bool(np.allclose(p.wrong_vjp(g, x), p.correct_vjp(g, x)))
False
>>> len(CATALOG) >= 15
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reference._validation import InvalidInput
from reference.activations import relu, relu_vjp, sigmoid, sigmoid_vjp, tanh, tanh_vjp
from reference.affine import affine, affine_vjp
from reference.losses import cross_entropy, cross_entropy_vjp, squared_error, squared_error_vjp
from reference.softmax import log_softmax, softmax, softmax_vjp

__all__ = ["CATALOG", "Pitfall", "by_name"]


@dataclass(frozen=True)
class Pitfall:
    """One published wrong derivation, with the correct one beside it.

    Attributes
    ----------
    name : str
        Identifier, unique in :data:`CATALOG`.
    summary : str
        What is wrong, in one or two sentences.
    correct : str
        The correct form, in one or two sentences.
    source : str
        Where the mistake is published (described generically).
    fn : callable
        The correct forward, ``fn(*inputs) -> array``.
    wrong_vjp : callable
        The published VJP, ``wrong_vjp(g, *inputs)``; same signature and
        return structure as ``correct_vjp`` (a bare array for one input, a
        tuple otherwise). The wrong gradient may even have the wrong shape
        (``conv2d_padding_slice_empty_at_p0``).
    correct_vjp : callable
        The reference VJP of ``fn``.
    make_inputs : callable
        ``make_inputs(rng) -> tuple`` of float64 arrays on which the mistake
        shows; ``rng`` is a :class:`numpy.random.Generator`.
    wrong_input : int or None
        Index of the input whose gradient ``wrong_vjp`` gets wrong; ``None``
        when the values are right and the mistake is a side effect.
    input_names : tuple of str
        Names of the inputs, in order (for messages).
    mutates_cotangent : bool
        True when ``wrong_vjp`` writes into its cotangent argument.
    kind : str or None
        The kind of mistake, as :mod:`oracles.diagnose` names it
        (``"factor"``, ``"transpose"``, ``"diagonal_only"``, ``"region"``,
        ``"ignores_cotangent"``, ``"in_place"``, ...; ``"formula"`` for a
        wrong formula with no simpler signature, ``"shape"`` for a gradient
        of the wrong shape). A failed check given ``pitfalls=CATALOG`` names
        the entry its derivative reproduces, with this kind.
    """

    name: str
    summary: str
    correct: str
    source: str
    fn: Callable
    wrong_vjp: Callable
    correct_vjp: Callable
    make_inputs: Callable
    wrong_input: int | None
    input_names: tuple[str, ...]
    mutates_cotangent: bool = False
    kind: str | None = None


# --- shapes: batch N >= 3, classes C >= 4, N != C, non-square W ----------------

_N, _C = 5, 4
# Integer labels cannot be perturbed, so the loss entries that take labels
# close over this fixed set (a repeated class, a class that never occurs).
_LABELS = np.array([1, 3, 0, 3, 1])


def _logits(rng):
    return (rng.standard_normal((_N, _C)),)


def _activations_input(rng):
    # Away from 0, the one point where some wrong and right formulas meet.
    x = rng.uniform(0.3, 2.5, size=(_N, _C)) * rng.choice([-1.0, 1.0], size=(_N, _C))
    return (x,)


# --- softmax -------------------------------------------------------------------


def _softmax_vjp_diagonal(g, x):
    # d a_i / d x_j kept only for i == j: the -a_i a_j terms are gone.
    a = softmax(x)
    return g * a * (1.0 - a)


def _softmax_vjp_ignores_upstream(g, x):
    # The layer's backward returns the Jacobian's diagonal itself; the
    # upstream gradient is accepted and never used.
    del g
    a = softmax(x)
    return a - np.square(a)


def _softmax_vjp_over_batch_axis(g, x):
    # Column max, exp, divide by the column sum: a softmax over axis 0 for
    # 2-D input, and its (self-consistent) VJP over the same axis.
    return softmax_vjp(g, x, axis=0)


# --- squared error on softmax outputs --------------------------------------------


def _se_on_softmax(z, y):
    return squared_error(softmax(z), y, half=True)


def _se_on_softmax_vjp(g, z, y):
    da, dy = squared_error_vjp(g, softmax(z), y, half=True)
    return softmax_vjp(da, z), dy


def _se_on_softmax_vjp_diagonal(g, z, y):
    # sum_k (a_k - y_k) d a_k / d z_i, with every k != i term taken as ~0.
    a = softmax(z)
    _, dy = squared_error_vjp(g, a, y, half=True)
    return g * (a - y) * a * (1.0 - a), dy


def _soft_targets_inputs(rng):
    # Rows of the targets sum to 0.7 or 1.3, never to 1.
    (z,) = _logits(rng)
    y = rng.uniform(0.1, 1.0, size=(_N, _C))
    row_sums = np.where(np.arange(_N) % 2 == 0, 0.7, 1.3)[:, None]
    return z, y / y.sum(axis=-1, keepdims=True) * row_sums


def _one_hot_inputs(rng):
    (z,) = _logits(rng)
    y = np.zeros((_N, _C))
    y[np.arange(_N), rng.integers(0, _C, size=_N)] = 1.0
    return z, y


# --- cross-entropy ----------------------------------------------------------------


def _ce_sum(z, y):
    return cross_entropy(z, y, reduction="sum")


def _ce_sum_vjp(g, z, y):
    return cross_entropy_vjp(g, z, y, reduction="sum"), -g * log_softmax(z)


def _ce_sum_vjp_a_minus_y(g, z, y):
    # dL/dz = a sum(y) - y, with sum(y) = 1 assumed.
    return g * (softmax(z) - y), -g * log_softmax(z)


def _ce_mean_labels(z):
    return cross_entropy(z, _LABELS, reduction="mean")


def _ce_mean_labels_vjp(g, z):
    return cross_entropy_vjp(g, z, _LABELS, reduction="mean")


def _ce_mean_labels_vjp_no_1_over_n(g, z):
    # The forward divides by N, the backward does not.
    return cross_entropy_vjp(g, z, _LABELS, reduction="sum")


def _ce_mean_labels_vjp_whole_columns(g, z):
    # Fancy-indexing every row with the whole label vector subtracts 1 from
    # every column whose class occurs anywhere in the batch, in every row.
    dz = softmax(z)
    dz[:, _LABELS] -= 1.0
    return dz / z.shape[0] * g


_NLL_LABEL = 2


def _nll(p):
    # -log p_r for a vector of predicted probabilities and the true class r.
    return -np.log(p[_NLL_LABEL])


def _nll_vjp(g, p):
    dp = np.zeros_like(p)
    dp[_NLL_LABEL] = -g / p[_NLL_LABEL]
    return dp


def _nll_vjp_ignores_upstream(g, p):
    # A custom gradient that returns dC/dp, not g * dC/dp.
    del g
    dp = np.zeros_like(p)
    dp[_NLL_LABEL] = -1.0 / p[_NLL_LABEL]
    return dp


def _probabilities(rng):
    p = rng.uniform(0.2, 1.0, size=10)
    return (p / p.sum(),)


# --- activations -------------------------------------------------------------------


def _sigmoid_vjp_output_formula_on_input(g, x):
    # s' = y (1 - y) holds for the *output* y; here it gets the input x.
    return g * x * (1.0 - x)


def _sigmoid_vjp_on_output(g, x):
    # s' = s(u) (1 - s(u)) holds for the *input* u; here it gets y = s(x).
    y = sigmoid(x)
    return g * sigmoid(y) * (1.0 - sigmoid(y))


def _tanh_vjp_missing_square(g, x):
    return g * (1.0 - np.tanh(x))


def _relu_vjp_in_place(g, x):
    g[x <= 0] = 0.0
    return g


# --- affine ------------------------------------------------------------------------


def _affine_inputs(rng):
    n_in, n_out = 3, _C
    return (
        rng.standard_normal((_N, n_in)),
        rng.standard_normal((n_in, n_out)),
        rng.standard_normal(n_out),
    )


def _affine_square_inputs(rng):
    n = _C
    return rng.standard_normal((_N, n)), rng.standard_normal((n, n)), rng.standard_normal(n)


def _affine_vjp_dx_no_transpose(g, x, W, b):
    _, dW, db = affine_vjp(g, x, W, b)
    return g @ W, dW, db


def _affine_vjp_dw_no_transpose(g, x, W, b):
    dx, _, db = affine_vjp(g, x, W, b)
    return dx, g.T @ x, db


def _affine_vjp_db_mean(g, x, W, b):
    dx, dW, _ = affine_vjp(g, x, W, b)
    return dx, dW, g.mean(axis=0)


# --- squared error -----------------------------------------------------------------


def _squared_error_sum(pred, target):
    return squared_error(pred, target, reduction="sum", half=False)


def _squared_error_sum_vjp(g, pred, target):
    return squared_error_vjp(g, pred, target, reduction="sum", half=False)


def _squared_error_sum_vjp_no_2(g, pred, target):
    # The derivative of (1/2) sum (p - t)^2, used for a loss without the 1/2.
    _, dtarget = _squared_error_sum_vjp(g, pred, target)
    return g * (pred - target), dtarget


def _regression_inputs(rng):
    return rng.standard_normal((_N, _C)), rng.standard_normal((_N, _C))


# --- cross-entropy on probabilities, with an epsilon inside the log -------------------

_LOG_EPSILON = 1e-7


def _ce_probabilities(p, y):
    # -(1/N) sum y log(p + eps): the epsilon keeps log(0) away.
    return -np.sum(y * np.log(p + _LOG_EPSILON)) / p.shape[0]


def _ce_probabilities_vjp(g, p, y):
    n = p.shape[0]
    return -g * y / (p + _LOG_EPSILON) / n, -g * np.log(p + _LOG_EPSILON) / n


def _ce_probabilities_vjp_no_epsilon(g, p, y):
    # d/dp log(p) = 1/p: the derivative of the loss without its epsilon.
    n = p.shape[0]
    _, dy = _ce_probabilities_vjp(g, p, y)
    return -g * y / p / n, dy


def _tiny_true_class_inputs(rng):
    # Every other row gives its true class a probability of 1e-8 .. 1e-6,
    # where 1/p and 1/(p + 1e-7) differ by a factor of 1.1 to 11; the other
    # classes share the rest, so that every row sums to 1.
    true = np.where(np.arange(_N) % 2 == 0, 10.0 ** rng.uniform(-8.0, -6.0, size=_N), 0.5)
    p = rng.uniform(0.2, 1.0, size=(_N, _C))
    p[np.arange(_N), _LABELS] = 0.0
    p *= (1.0 - true)[:, None] / p.sum(axis=-1, keepdims=True)
    p[np.arange(_N), _LABELS] = true
    y = np.zeros((_N, _C))
    y[np.arange(_N), _LABELS] = 1.0
    return p, y


# --- GELU: tanh approximation forward, exact backward ------------------------------------

_GELU_K = float(np.sqrt(2.0 / np.pi))
_GELU_A = 0.044715
_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_tanh(x):
    # 0.5 x (1 + tanh(k (x + a x^3))), k = sqrt(2 / pi): the fast approximation.
    return 0.5 * x * (1.0 + np.tanh(_GELU_K * (x + _GELU_A * x**3)))


def _gelu_tanh_vjp(g, x):
    # With u = k (x + a x^3) and t = tanh(u):
    # d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 a x^2).
    t = np.tanh(_GELU_K * (x + _GELU_A * x**3))
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_K * (1.0 + 3.0 * _GELU_A * x * x)
    return g * slope


def _gelu_exact_vjp(g, x):
    # The derivative of the exact GELU x Phi(x): Phi(x) + x phi(x).
    cdf = 0.5 * (1.0 + _ERF(x / np.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    return g * (cdf + x * pdf)


# --- embedding lookup ------------------------------------------------------------------

# Token ids of one batch: 1 and 3 repeat, 2 and 4 never occur.
_TOKENS = np.array([1, 3, 1, 0, 3, 3, 5])


def _embedding(W):
    return W[_TOKENS]


def _embedding_vjp(g, W):
    # Row t of dW sums the cotangent rows of every position holding token t.
    dW = np.zeros_like(W)
    np.add.at(dW, _TOKENS, g)
    return dW


def _embedding_vjp_fancy_add(g, W):
    # dW[ids] += g reads each repeated row once and writes it once per
    # repetition, so only the last repetition's gradient survives.
    dW = np.zeros_like(W)
    dW[_TOKENS] += g
    return dW


def _embedding_inputs(rng):
    return (rng.standard_normal((6, 4)),)


# --- 2x2 max-pool, stride 2 ---------------------------------------------------------------


def _pool_windows(x):
    """``(H/2, W/2, 4)``: the four entries of each 2x2 window, row-major within it."""
    H, W = x.shape
    return x.reshape(H // 2, 2, W // 2, 2).transpose(0, 2, 1, 3).reshape(H // 2, W // 2, 4)


def _from_pool_windows(d):
    h, w, _ = d.shape
    return d.reshape(h, w, 2, 2).transpose(0, 2, 1, 3).reshape(2 * h, 2 * w)


def _max_pool(x):
    return _pool_windows(x).max(axis=-1)


def _max_pool_vjp(g, x):
    # The gradient of a window's max goes to one maximal entry, the first
    # (a valid subgradient at a tie: the weights over the tied entries sum to 1).
    windows = _pool_windows(x)
    d = np.zeros_like(windows)
    np.put_along_axis(d, np.argmax(windows, axis=-1)[..., None], g[..., None], axis=-1)
    return _from_pool_windows(d)


def _max_pool_vjp_every_tie(g, x):
    # mask = (x == max of its window): a window with k tied maxima passes g
    # on k times, a derivative of k instead of 1.
    windows = _pool_windows(x)
    mask = windows == windows.max(axis=-1, keepdims=True)
    return _from_pool_windows(mask * g[..., None])


def _pixel_inputs(rng):
    # Integer pixel values 0..2: most 2x2 windows have tied maxima.
    return (rng.integers(0, 3, size=(6, 8)).astype(np.float64),)


# --- naive 2-D convolution (cross-correlation), stride 1, padding p -----------------------


def _conv2d(x, k, *, pad=0):
    xp = np.pad(x, pad)
    kh, kw = k.shape
    H, W = xp.shape[0] - kh + 1, xp.shape[1] - kw + 1
    out = np.zeros((H, W))
    for a in range(kh):
        for b in range(kw):
            out += k[a, b] * xp[a : a + H, b : b + W]
    return out


def _conv2d_padded_grads(g, x, k, pad):
    """``(dxp, dk)``: the gradient with respect to the padded input, and the kernel's."""
    # out[i, j] = sum_ab k[a, b] xp[i + a, j + b], so dk[a, b] = sum_ij g[i, j] xp[i + a, j + b]
    # and every xp[i + a, j + b] receives g[i, j] k[a, b].
    xp = np.pad(x, pad)
    kh, kw = k.shape
    H, W = g.shape
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(k)
    for a in range(kh):
        for b in range(kw):
            dk[a, b] = np.sum(g * xp[a : a + H, b : b + W])
            dxp[a : a + H, b : b + W] += k[a, b] * g
    return dxp, dk


def _conv2d_vjp(g, x, k, *, pad=0):
    dxp, dk = _conv2d_padded_grads(g, x, k, pad)
    return dxp[pad : pad + x.shape[0], pad : pad + x.shape[1]], dk


def _conv2d_vjp_slice_minus_pad(g, x, k, *, pad=0):
    # The padding is cut off with [pad:-pad]: at pad = 0 that is [0:0], empty.
    dxp, dk = _conv2d_padded_grads(g, x, k, pad)
    return dxp[pad:-pad, pad:-pad], dk


def _image_and_kernel_inputs(rng):
    return rng.standard_normal((6, 7)), rng.standard_normal((3, 4))


# --- one LSTM step ----------------------------------------------------------------------------

_LSTM_HIDDEN = 4


def _lstm_gates(x, h, c, W, b):
    H = _LSTM_HIDDEN
    z = np.concatenate([x, h], axis=1) @ W + b
    i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), sigmoid(z[:, 2 * H : 3 * H])
    u = np.tanh(z[:, 3 * H :])
    c_next = f * c + i * u
    return i, f, o, u, c_next


def _lstm_step(x, h, c, W, b):
    # [h_next, c_next], side by side: one output array for one cotangent.
    _, _, o, _, c_next = _lstm_gates(x, h, c, W, b)
    return np.concatenate([o * np.tanh(c_next), c_next], axis=1)


def _lstm_step_backward(g, x, h, c, W, b, *, dc_total):
    # z = [x, h] W + b; gates i, f, o = sigmoid of their quarter of z, u = tanh of the last;
    # c' = f c + i u and h' = o tanh(c'). With cotangents dh of h' and dc' of c': the total
    # dc = dc' + dh o (1 - tanh(c')^2), then each gate's dz is its factor's cotangent times
    # the gate's derivative (s (1 - s) or 1 - u^2), dc_prev = dc f, and [dx, dh_prev] =
    # dz W^T, dW = [x, h]^T dz, db = sum_n dz: an affine layer's VJP.
    i, f, o, u, c_next = _lstm_gates(x, h, c, W, b)
    H = _LSTM_HIDDEN
    dh = g[:, :H]
    t = np.tanh(c_next)
    # c_next reaches the loss directly (dc) and through h_next = o tanh(c_next).
    dc = dc_total(g[:, H:], dh * o * (1.0 - t * t))
    dz = np.concatenate(
        [
            dc * u * i * (1.0 - i),  # input gate
            dc * c * f * (1.0 - f),  # forget gate
            dh * t * o * (1.0 - o),  # output gate
            dc * i * (1.0 - u * u),  # candidate
        ],
        axis=1,
    )
    xh = np.concatenate([x, h], axis=1)
    dxh = dz @ W.T
    return dxh[:, : x.shape[1]], dxh[:, x.shape[1] :], dc * f, xh.T @ dz, dz.sum(axis=0)


def _lstm_step_vjp(g, x, h, c, W, b):
    return _lstm_step_backward(g, x, h, c, W, b, dc_total=np.add)


def _lstm_step_vjp_in_place(g, x, h, c, W, b):
    # dc_next += dh * o * (1 - tanh(c)^2): the right sum, written into the
    # caller's upstream gradient (dc_next is a view of it).
    def accumulate(dc_next, through_h):
        dc_next += through_h
        return dc_next

    return _lstm_step_backward(g, x, h, c, W, b, dc_total=accumulate)


def _lstm_inputs(rng):
    n_in, H = 3, _LSTM_HIDDEN
    return (
        rng.standard_normal((_N, n_in)),
        rng.standard_normal((_N, H)),
        rng.standard_normal((_N, H)),
        rng.standard_normal((n_in + H, 4 * H)) / 2.0,
        rng.standard_normal(4 * H) / 2.0,
    )


CATALOG = (
    Pitfall(
        name="softmax_diagonal_jacobian",
        kind="diagonal_only",
        summary="The softmax Jacobian is reduced to its diagonal a_i (1 - a_i); the "
        "off-diagonal -a_i a_j terms are dropped, so the VJP is g * a * (1 - a).",
        correct="J = diag(a) - a a^T, so the VJP is a * (g - <g, a>) per row.",
        source="background doc 001 (a layer-class notebook) states that backward needs only "
        "the diagonal; common in course notes",
        fn=softmax,
        wrong_vjp=_softmax_vjp_diagonal,
        correct_vjp=softmax_vjp,
        make_inputs=_logits,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="softmax_backward_ignores_upstream",
        kind="ignores_cotangent",
        summary="The softmax layer's backward returns the diagonal a - a^2 itself and "
        "never uses the upstream gradient it receives.",
        correct="Multiply by the full Jacobian: a * (g - <g, a>) per row.",
        source="background doc 001 (a layer-class notebook), Softmax.backward",
        fn=softmax,
        wrong_vjp=_softmax_vjp_ignores_upstream,
        correct_vjp=softmax_vjp,
        make_inputs=_logits,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="softmax_over_batch_axis",
        kind="formula",
        summary="For a (N, C) batch, the max, the exp-sum and the normalization run over "
        "axis 0, the batch, so each column sums to 1; the backward follows the same axis. "
        "(Subtracting one global max instead does not change the values.)",
        correct="Normalize each row over the class axis (axis=-1), forward and backward.",
        source="background docs 001 and 004 (a layer-class notebook; a hand-written MNIST MLP "
        "when it evaluates a whole batch)",
        fn=softmax,
        wrong_vjp=_softmax_vjp_over_batch_axis,
        correct_vjp=softmax_vjp,
        make_inputs=_logits,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="squared_error_on_softmax_diagonal",
        kind="diagonal_only",
        summary="For L = 1/2 sum (softmax(z) - y)^2, the terms k != i of "
        "sum_k (a_k - y_k) da_k/dz_i are declared negligible, giving (a - y) a (1 - a).",
        correct="dL/dz = a * (d - <d, a>) with d = a - y: the -a_k a_i terms are not small "
        "unless a is one-hot.",
        source="background doc 000 (a blog derivation of a tanh-softmax network), written "
        "as an approximation",
        fn=_se_on_softmax,
        wrong_vjp=_se_on_softmax_vjp_diagonal,
        correct_vjp=_se_on_softmax_vjp,
        make_inputs=_one_hot_inputs,
        wrong_input=0,
        input_names=("z", "y"),
    ),
    Pitfall(
        name="cross_entropy_soft_targets_a_minus_y",
        kind="formula",
        summary="The gradient of -sum y log softmax(z) is simplified to a - y, which uses "
        "sum(y) = 1; with targets that do not sum to 1 it is wrong.",
        correct="dL/dz = a * sum(y) - y per row.",
        source="background doc 002 (a softmax + cross-entropy derivation); the same step in "
        "docs 000 and 001; common in course notes",
        fn=_ce_sum,
        wrong_vjp=_ce_sum_vjp_a_minus_y,
        correct_vjp=_ce_sum_vjp,
        make_inputs=_soft_targets_inputs,
        wrong_input=0,
        input_names=("z", "y"),
    ),
    Pitfall(
        name="cross_entropy_mean_missing_1_over_n",
        kind="factor",
        summary="The loss is the mean over the N rows of the batch, but the gradient is "
        "that of the sum: the 1/N is missing.",
        correct="dL/dz = (a - onehot(t)) / N for the mean.",
        source="common in course notes",
        fn=_ce_mean_labels,
        wrong_vjp=_ce_mean_labels_vjp_no_1_over_n,
        correct_vjp=_ce_mean_labels_vjp,
        make_inputs=_logits,
        wrong_input=0,
        input_names=("z",),
    ),
    Pitfall(
        name="cross_entropy_whole_columns",
        kind="region",
        summary="Labels index whole columns (dz[:, t] -= 1, or y[:, t] in the loss): every "
        "row gets -1 in every column whose class occurs in the batch.",
        correct="Index each row at its own label: dz[arange(N), t] -= 1, then divide by N.",
        source="background doc 001 (a layer-class notebook), SoftmaxWithLoss and "
        "cross_entropy_error",
        fn=_ce_mean_labels,
        wrong_vjp=_ce_mean_labels_vjp_whole_columns,
        correct_vjp=_ce_mean_labels_vjp,
        make_inputs=_logits,
        wrong_input=0,
        input_names=("z",),
    ),
    Pitfall(
        name="nll_backward_ignores_upstream",
        kind="ignores_cotangent",
        summary="A custom gradient of C = -log p_r returns dC/dp = -1/p_r at r without "
        "multiplying by the upstream gradient; right only when that is exactly 1.",
        correct="Return g * dC/dp: -g / p_r at index r, 0 elsewhere.",
        source="background doc 003 (a custom-gradient cross-entropy for an MNIST MLP)",
        fn=_nll,
        wrong_vjp=_nll_vjp_ignores_upstream,
        correct_vjp=_nll_vjp,
        make_inputs=_probabilities,
        wrong_input=0,
        input_names=("p",),
    ),
    Pitfall(
        name="sigmoid_derivative_of_output_on_input",
        kind="formula",
        summary="The helper y * (1 - y), valid for the sigmoid's output y, is applied to the "
        "pre-activation x.",
        correct="s'(x) = s(x) (1 - s(x)): apply y (1 - y) to y = s(x).",
        source="common in course notes and tutorials",
        fn=sigmoid,
        wrong_vjp=_sigmoid_vjp_output_formula_on_input,
        correct_vjp=sigmoid_vjp,
        make_inputs=_activations_input,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="sigmoid_derivative_on_output",
        kind="formula",
        summary="The helper s(u) (1 - s(u)), valid for the pre-activation u, is applied to "
        "the sigmoid's output: the sigmoid is taken twice.",
        correct="s'(x) = s(x) (1 - s(x)) evaluated at the pre-activation x.",
        source="common in course notes and tutorials",
        fn=sigmoid,
        wrong_vjp=_sigmoid_vjp_on_output,
        correct_vjp=sigmoid_vjp,
        make_inputs=_activations_input,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="tanh_derivative_missing_square",
        kind="formula",
        summary="tanh'(x) written as 1 - tanh(x), one factor of (1 + t)(1 - t) lost.",
        correct="tanh'(x) = 1 - tanh(x)^2 = (1 + t)(1 - t).",
        source="common in course notes",
        fn=tanh,
        wrong_vjp=_tanh_vjp_missing_square,
        correct_vjp=tanh_vjp,
        make_inputs=_activations_input,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="affine_dx_missing_transpose",
        kind="transpose",
        summary="dX = G W instead of G W^T; it only runs when W is square, and is then "
        "silently wrong.",
        correct="dX = G W^T.",
        source="common in course notes",
        fn=affine,
        wrong_vjp=_affine_vjp_dx_no_transpose,
        correct_vjp=affine_vjp,
        make_inputs=_affine_square_inputs,
        wrong_input=0,
        input_names=("x", "W", "b"),
    ),
    Pitfall(
        name="affine_dw_missing_transpose",
        kind="transpose",
        summary="dW = G^T X instead of X^T G: the transpose of the right answer, the same "
        "shape only when W is square.",
        correct="dW = X^T G.",
        source="common in course notes",
        fn=affine,
        wrong_vjp=_affine_vjp_dw_no_transpose,
        correct_vjp=affine_vjp,
        make_inputs=_affine_square_inputs,
        wrong_input=1,
        input_names=("x", "W", "b"),
    ),
    Pitfall(
        name="affine_db_averaged",
        kind="factor",
        summary="db is the mean of G over the batch rows instead of their sum.",
        correct="db = sum_n G_n: every row adds b, so every row's gradient adds up.",
        source="common in course notes",
        fn=affine,
        wrong_vjp=_affine_vjp_db_mean,
        correct_vjp=affine_vjp,
        make_inputs=_affine_inputs,
        wrong_input=2,
        input_names=("x", "W", "b"),
    ),
    Pitfall(
        name="squared_error_missing_factor_2",
        kind="factor",
        summary="For L = sum (p - t)^2 (no 1/2 in front) the gradient is written p - t, "
        "the factor 2 of the derivative of the square lost.",
        correct="dL/dp = 2 (p - t); the 2 cancels only when the loss is 1/2 sum (p - t)^2.",
        source="common in course notes",
        fn=_squared_error_sum,
        wrong_vjp=_squared_error_sum_vjp_no_2,
        correct_vjp=_squared_error_sum_vjp,
        make_inputs=_regression_inputs,
        wrong_input=0,
        input_names=("pred", "target"),
    ),
    Pitfall(
        name="relu_backward_in_place",
        kind="in_place",
        summary="The ReLU backward zeroes its upstream gradient in place (g[x <= 0] = 0) and "
        "returns it: the value is right, but the caller's array changes.",
        correct="Return a new array, e.g. where(x > 0, g, 0); never write to an argument.",
        source="background doc 001 (a layer-class notebook), Relu.backward",
        fn=relu,
        wrong_vjp=_relu_vjp_in_place,
        correct_vjp=relu_vjp,
        make_inputs=_activations_input,
        wrong_input=None,
        input_names=("x",),
        mutates_cotangent=True,
    ),
    Pitfall(
        name="cross_entropy_epsilon_dropped",
        kind="region",
        summary="The loss on probabilities is -(1/N) sum y log(p + 1e-7), but the backward "
        "is -y / (N p): the derivative of log(p), the epsilon dropped. Where a true class has "
        "p near 1e-7 or below, the gradient is off by up to a factor of 11.",
        correct="dL/dp = -y / (N (p + 1e-7)): differentiate the forward as written.",
        source="background doc 001 (a layer-class notebook) computes log(y + 1e-7); the "
        "backward without the epsilon is common in from-scratch code",
        fn=_ce_probabilities,
        wrong_vjp=_ce_probabilities_vjp_no_epsilon,
        correct_vjp=_ce_probabilities_vjp,
        make_inputs=_tiny_true_class_inputs,
        wrong_input=0,
        input_names=("p", "y"),
    ),
    Pitfall(
        name="gelu_tanh_forward_exact_backward",
        kind="formula",
        summary="The forward is the tanh approximation 0.5 x (1 + tanh(k (x + 0.044715 x^3))), "
        "the backward the exact GELU's Phi(x) + x phi(x): close (about 1e-3 apart), but the "
        "derivative of another function.",
        correct="Differentiate the approximation: 0.5 (1 + t) + 0.5 x (1 - t^2) k "
        "(1 + 3 * 0.044715 x^2), t = tanh(k (x + 0.044715 x^3)), k = sqrt(2 / pi).",
        source="common in from-scratch transformer code",
        fn=_gelu_tanh,
        wrong_vjp=_gelu_exact_vjp,
        correct_vjp=_gelu_tanh_vjp,
        make_inputs=_activations_input,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="embedding_repeated_indices_lost",
        kind="region",
        summary="The embedding backward is dW[ids] += g. Fancy-index assignment writes a "
        "repeated row once, so a token that occurs k times gets one of its k gradients.",
        correct="np.add.at(dW, ids, g): every occurrence adds its row.",
        source="common in from-scratch NLP code (word2vec and embedding layers)",
        fn=_embedding,
        wrong_vjp=_embedding_vjp_fancy_add,
        correct_vjp=_embedding_vjp,
        make_inputs=_embedding_inputs,
        wrong_input=0,
        input_names=("W",),
    ),
    Pitfall(
        name="maxpool_ties_all_get_gradient",
        kind="region",
        summary="The 2x2 max-pool backward passes g to every entry equal to its window's "
        "maximum; a window with k tied maxima passes it on k times.",
        correct="Route g to one maximal entry per window (the first, as argmax picks); any "
        "split over the ties with weights summing to 1 is a valid subgradient.",
        source="common in from-scratch CNN code (mask = x == max of the window)",
        fn=_max_pool,
        wrong_vjp=_max_pool_vjp_every_tie,
        correct_vjp=_max_pool_vjp,
        make_inputs=_pixel_inputs,
        wrong_input=0,
        input_names=("x",),
    ),
    Pitfall(
        name="conv2d_padding_slice_empty_at_p0",
        kind="shape",
        summary="The convolution backward removes the padding with dx_padded[p:-p, p:-p]; "
        "at p = 0 that slice is [0:0], and the gradient of x is an empty array. (At p >= 1 "
        "the same code is right.)",
        correct="Slice dx_padded[p:p + H, p:p + W], which is the whole array at p = 0.",
        source="common in from-scratch CNN code (a naive conv_backward)",
        fn=_conv2d,
        wrong_vjp=_conv2d_vjp_slice_minus_pad,
        correct_vjp=_conv2d_vjp,
        make_inputs=_image_and_kernel_inputs,
        wrong_input=0,
        input_names=("x", "k"),
    ),
    Pitfall(
        name="lstm_step_backward_in_place",
        kind="in_place",
        summary="The LSTM-step backward adds the path through h_next into dc_next in place "
        "(dc_next += dh * o * (1 - tanh(c)^2)), and dc_next is the caller's upstream gradient: "
        "the values are right, the caller's array changes.",
        correct="dc = dc_next + dh * o * (1 - tanh(c)^2), a new array.",
        source="common in from-scratch RNN code",
        fn=_lstm_step,
        wrong_vjp=_lstm_step_vjp_in_place,
        correct_vjp=_lstm_step_vjp,
        make_inputs=_lstm_inputs,
        wrong_input=None,
        input_names=("x", "h", "c", "W", "b"),
        mutates_cotangent=True,
    ),
)

_BY_NAME = {p.name: p for p in CATALOG}


def by_name(name):
    """Return the :class:`Pitfall` called ``name``.

    Raises
    ------
    InvalidInput
        If no entry has that name; the message lists the names.

    Examples
    --------
    >>> by_name("affine_db_averaged").wrong_input
    2
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise InvalidInput(
            f"name must be one of the catalog's entries {sorted(_BY_NAME)}, got {name!r}"
        ) from None
