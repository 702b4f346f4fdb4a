r"""A multilayer perceptron for MNIST, its hand-written backward pass and an SGD step.

The network, for a batch ``X`` of ``N`` rows and ``L`` affine layers::

    h_0 = X
    z_l = h_{l-1} W_l + b_l          l = 1 .. L         (reference.affine)
    h_l = f(z_l)                     l = 1 .. L-1       (tanh, sigmoid or relu)
    loss = ell(z_L, y)

The default sizes are ``(784, 128, 10)``: one hidden layer. Weights are stored
as ``W_l`` of shape ``(n_in, n_out)`` so a layer is ``h W + b`` (PyTorch's
``nn.Linear`` stores the transpose). Parameters are a tuple
``(W_1, b_1, W_2, b_2, ...)`` of float64 arrays.

Two losses, with the convention fixed and written out:

``"cross_entropy"``
    ``ell = (1/N) sum_n -log softmax(z_L)[n, y_n]`` -- the mean over the batch
    of the cross-entropy against the integer label (``torch.nn.functional.cross_entropy``
    with its default ``reduction="mean"``).
``"squared_error"``
    ``ell = (1/N) sum_n sum_k (softmax(z_L)[n, k] - onehot(y)[n, k])^2`` --
    squared error of the softmax **probabilities** against one-hot targets,
    summed over the 10 classes and averaged over the batch
    (:func:`reference.squared_error` with ``reduction="batch_mean"``,
    ``half=False``). In PyTorch: ``F.mse_loss(p, Y, reduction="sum") / N``,
    which is ``C`` times ``F.mse_loss(p, Y)``.

Nothing here modifies its arguments; :func:`sgd_step` returns new arrays.

Inputs: lists are converted; ``None``, non-numbers, complex values (the
loss is a real number), layers without inputs or outputs, labels that are
not integers in ``[0, n_L)``, and a batch of 0 rows where a mean over the
rows is taken (the loss, :func:`accuracy`) raise
:class:`reference.InvalidInput` naming the argument. :func:`predict` on 0
rows gives 0 rows of logits.
"""

from __future__ import annotations

import numpy as np

from reference._validation import InvalidInput, as_floats, as_numbers, real_scalar
from reference.activations import relu, relu_vjp, sigmoid, sigmoid_vjp, tanh, tanh_vjp
from reference.affine import affine, affine_vjp
from reference.losses import cross_entropy, cross_entropy_vjp, squared_error, squared_error_vjp
from reference.softmax import softmax, softmax_vjp

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "accuracy",
    "backward",
    "forward",
    "init_params",
    "layer_sizes",
    "loss_and_grads",
    "mlp_loss",
    "mlp_loss_vjp",
    "params_to_vector",
    "predict",
    "sgd_step",
    "vector_to_params",
]

ACTIVATIONS = ("tanh", "sigmoid", "relu")
LOSSES = ("cross_entropy", "squared_error")

_REAL = "the MLP's loss is a real number"

_ACTIVATION_FNS = {
    "tanh": (tanh, tanh_vjp),
    "sigmoid": (sigmoid, sigmoid_vjp),
    "relu": (relu, relu_vjp),
}


# --- parameters ----------------------------------------------------------------------------------


def init_params(sizes=(784, 128, 10), *, seed=0):
    r"""Seeded initial parameters ``(W_1, b_1, ..., W_L, b_L)``, float64.

    ``W_l`` has entries drawn from ``N(0, 1 / n_in)`` (LeCun normal: keeps the
    pre-activations of order 1 for inputs of order 1) and ``b_l = 0``.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first, at least two entries.
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same
        parameters.

    Examples
    --------
    >>> [p.shape for p in init_params((4, 3, 2), seed=1)]
    [(4, 3), (3,), (3, 2), (2,)]
    """
    sizes = _check_sizes(sizes)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInput(
            f"seed must be a non-negative int (the same seed gives the same parameters), "
            f"got {seed!r}"
        )
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        params.append(rng.standard_normal((n_in, n_out)) / np.sqrt(n_in))
        params.append(np.zeros(n_out))
    return tuple(params)


def _check_sizes(sizes):
    """``sizes`` as a tuple of at least two positive ints, or InvalidInput."""
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise InvalidInput(f"sizes must be at least two positive ints, got {sizes!r}") from None
    if len(sizes) < 2 or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 1 for s in sizes
    ):
        raise InvalidInput(f"sizes must be at least two positive ints, got {sizes!r}")
    return tuple(int(s) for s in sizes)


def _as_arrays(arrays, name):
    """A sequence of arrays as a tuple of real float64 arrays named ``name[i]``."""
    if isinstance(arrays, np.ndarray | str) or arrays is None:
        raise InvalidInput(f"{name} must be a sequence of arrays, got {type(arrays).__name__}")
    try:
        arrays = tuple(arrays)
    except TypeError:
        raise InvalidInput(
            f"{name} must be a sequence of arrays, got {type(arrays).__name__}"
        ) from None
    return tuple(
        as_floats(a, f"{name}[{i}]", real=_REAL).astype(np.float64, copy=False)
        for i, a in enumerate(arrays)
    )


def _as_params(params):
    """Validate the layer chain and return the parameters as a tuple of float64 arrays."""
    params = _as_arrays(params, "params")
    if len(params) < 2 or len(params) % 2:
        raise InvalidInput(
            f"params must be (W_1, b_1, ..., W_L, b_L): an even number >= 2 of arrays, "
            f"got {len(params)}"
        )
    for i in range(0, len(params), 2):
        W, b = params[i], params[i + 1]
        layer = i // 2 + 1
        if W.ndim != 2 or b.shape != (W.shape[-1],):
            raise InvalidInput(
                f"params, layer {layer}: W must be 2-D (n_in, n_out) and b of shape (n_out,), "
                f"got W {W.shape} and b {b.shape}"
            )
        if W.size == 0:
            raise InvalidInput(
                f"params, layer {layer}: every layer needs at least 1 input and 1 output (the "
                f"last layer's outputs are the classes), got W of shape {W.shape}"
            )
        if i and W.shape[0] != params[i - 2].shape[1]:
            raise InvalidInput(
                f"params, layer {layer}: W has {W.shape[0]} input rows but layer {layer - 1} "
                f"has {params[i - 2].shape[1]} outputs"
            )
    return params


def layer_sizes(params):
    """The widths ``(n_0, n_1, ..., n_L)`` of a parameter tuple.

    Examples
    --------
    >>> layer_sizes(init_params((5, 4, 3)))
    (5, 4, 3)
    """
    params = _as_params(params)
    return (params[0].shape[0],) + tuple(W.shape[1] for W in params[::2])


def params_to_vector(params):
    """Concatenate the parameters, each flattened row-major, into one 1-D array.

    Examples
    --------
    >>> params_to_vector(init_params((2, 3, 1))).shape
    (13,)
    """
    return np.concatenate([p.ravel() for p in _as_params(params)])


def vector_to_params(vector, sizes):
    """Inverse of :func:`params_to_vector` for the layer widths ``sizes``.

    Returns new arrays (copies), never views of ``vector``.

    Examples
    --------
    >>> p = init_params((2, 3, 1), seed=0)
    >>> q = vector_to_params(params_to_vector(p), (2, 3, 1))
    >>> all(np.array_equal(a, b) for a, b in zip(p, q))
    True
    """
    vector = as_floats(vector, "vector", real=_REAL)
    sizes = _check_sizes(sizes)
    shapes = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        shapes += [(n_in, n_out), (n_out,)]
    total = sum(int(np.prod(s)) for s in shapes)
    if vector.ndim != 1 or vector.size != total:
        raise InvalidInput(
            f"vector must be 1-D with {total} entries for sizes {sizes}, got shape {vector.shape}"
        )
    params, start = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        params.append(vector[start : start + n].reshape(shape).copy())
        start += n
    return tuple(params)


# --- forward and backward ------------------------------------------------------------------------


def _check_options(activation, loss):
    if activation not in ACTIVATIONS:
        raise InvalidInput(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if loss not in LOSSES:
        raise InvalidInput(f"loss must be one of {LOSSES}, got {loss!r}")


def _check_X(X, params, *, why=None):
    """``X`` as real float64 of shape ``(N, n_in)``; ``why`` (a mean over the rows) needs N >= 1."""
    X = as_floats(X, "X", real=_REAL).astype(np.float64, copy=False)
    n_in = params[0].shape[0]
    rows = "N >= 1" if why else "N"
    if X.ndim != 2 or X.shape[1] != n_in:
        raise InvalidInput(f"X must have shape ({rows}, {n_in}), got {X.shape}")
    if why and X.shape[0] == 0:
        raise InvalidInput(
            f"X must have shape ({rows}, {n_in}), got {X.shape}: {why}, and a mean of 0 rows "
            f"is undefined"
        )
    return X


def _check_batch(X, y, params, *, why="the loss is a mean over the rows"):
    X = _check_X(X, params, why=why)
    n_classes = params[-1].shape[0]
    y = as_numbers(y, "y", bools=False)
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (X.shape[0],):
        raise InvalidInput(
            f"y must be integer class labels of shape ({X.shape[0]},), got dtype {y.dtype} "
            f"and shape {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise InvalidInput(
            f"y must lie in [0, {n_classes - 1}], got values in [{y.min()}, {y.max()}]"
        )
    return X, y


def _logits(params, X, activation):
    """Run the layers: the layer inputs ``h_0 .. h_{L-1}`` and pre-activations ``z_1 .. z_L``."""
    f, _ = _ACTIVATION_FNS[activation]
    hs, zs = [], []
    h = X
    n_layers = len(params) // 2
    for layer in range(n_layers):
        W, b = params[2 * layer], params[2 * layer + 1]
        z = affine(h, W, b)
        hs.append(h)
        zs.append(z)
        if layer < n_layers - 1:
            h = f(z)
    return hs, zs


def _one_hot(y, n_classes):
    Y = np.zeros((y.shape[0], n_classes))
    Y[np.arange(y.shape[0]), y] = 1.0
    return Y


def forward(params, X, y, *, activation="tanh", loss="cross_entropy"):
    """Loss of the MLP on a batch, and the cache :func:`backward` needs.

    Parameters
    ----------
    params : sequence of arrays
        ``(W_1, b_1, ..., W_L, b_L)``, ``W_l`` of shape ``(n_{l-1}, n_l)``.
    X : array, shape ``(N, n_0)``
    y : int array, shape ``(N,)``
        Class labels in ``[0, n_L)``.
    activation : {"tanh", "sigmoid", "relu"}
        Hidden-layer activation (the output layer has none: it gives logits).
    loss : {"cross_entropy", "squared_error"}
        See the module docstring for the exact conventions.

    Returns
    -------
    loss : float
    cache : dict
        Everything the backward pass reads: the layer inputs ``"h"``, the
        pre-activations ``"z"``, ``"X"``, ``"y"``, ``"activation"``, ``"loss"``.

    Examples
    --------
    >>> params = init_params((4, 3, 2), seed=0)
    >>> value, cache = forward(params, np.ones((5, 4)), np.array([0, 1, 0, 1, 1]))
    >>> value > 0, len(cache["z"])
    (True, 2)
    """
    _check_options(activation, loss)
    params = _as_params(params)
    X, y = _check_batch(X, y, params)
    hs, zs = _logits(params, X, activation)
    logits = zs[-1]
    if loss == "cross_entropy":
        value = cross_entropy(logits, y, reduction="mean")
    else:
        probs = softmax(logits, axis=-1)
        value = squared_error(
            probs, _one_hot(y, logits.shape[1]), reduction="batch_mean", half=False
        )
    cache = {"h": hs, "z": zs, "X": X, "y": y, "activation": activation, "loss": loss}
    return float(value), cache


def backward(params, cache, *, g=1.0):
    r"""Gradients of the loss with respect to every parameter: a chain of reference VJPs.

    Derivation
    ----------
    Reverse-mode differentiation runs the forward chain backwards, each step
    one vector-Jacobian product of a reference op, with ``G`` the cotangent
    carried along (``g = dloss/dloss``, 1 for a plain gradient):

    1. Output: ``G_{z_L} = dloss/dz_L``.

       - cross-entropy, mean over the batch: ``cross_entropy_vjp(g, z_L, y,
         reduction="mean")`` -- ``(softmax(z_L) - onehot(y)) / N`` times ``g``.
       - squared error on probabilities: first
         ``G_p = squared_error_vjp(g, p, Y, reduction="batch_mean")[0] = 2 (p - Y) g / N``
         with ``p = softmax(z_L)``, then through the softmax Jacobian
         ``diag(p) - p p^T``: ``G_{z_L} = softmax_vjp(G_p, z_L) = p * (G_p - sum_k G_p p)``.
         (Skipping the softmax Jacobian -- using ``2 (p - Y) / N`` as the
         logit gradient -- is the classic mistake.)

    2. For ``l = L, L-1, ..., 1``, the affine layer ``z_l = h_{l-1} W_l + b_l``
       (``affine_vjp``)::

           dW_l = h_{l-1}^T G_{z_l}      db_l = sum_n G_{z_l}[n]      G_{h_{l-1}} = G_{z_l} W_l^T

       and, while ``l > 1``, through the elementwise activation
       ``h_{l-1} = f(z_{l-1})`` (``tanh_vjp`` / ``sigmoid_vjp`` / ``relu_vjp``)::

           G_{z_{l-1}} = G_{h_{l-1}} * f'(z_{l-1})

    The ``1/N`` of the batch mean enters once, at step 1; ``db`` then sums
    (not averages) over the rows. ``G_{h_0}`` (the gradient with respect to the
    pixels) is not needed and not returned.

    Parameters
    ----------
    params : sequence of arrays
        The parameters :func:`forward` was called with.
    cache : dict
        The second result of :func:`forward`.
    g : float
        Cotangent of the scalar loss.

    Returns
    -------
    tuple of arrays
        ``(dW_1, db_1, ..., dW_L, db_L)``, shaped like ``params``.

    Examples
    --------
    >>> params = init_params((4, 3, 2), seed=0)
    >>> _, cache = forward(params, np.ones((5, 4)), np.array([0, 1, 0, 1, 1]))
    >>> [d.shape for d in backward(params, cache)]
    [(4, 3), (3,), (3, 2), (2,)]
    """
    params = _as_params(params)
    keys = ("h", "z", "X", "y", "activation", "loss")
    if not isinstance(cache, dict) or not all(k in cache for k in keys):
        raise InvalidInput(
            f"cache must be the dict forward returns (keys {keys}), got {type(cache).__name__}"
        )
    _check_options(cache["activation"], cache["loss"])
    g = real_scalar(g, "g", rule="a real number, the cotangent of the scalar loss")
    _, f_vjp = _ACTIVATION_FNS[cache["activation"]]
    hs, zs, y = cache["h"], cache["z"], cache["y"]
    logits = zs[-1]
    if cache["loss"] == "cross_entropy":
        G = cross_entropy_vjp(g, logits, y, reduction="mean")
    else:
        probs = softmax(logits, axis=-1)
        G_probs, _ = squared_error_vjp(
            g, probs, _one_hot(y, logits.shape[1]), reduction="batch_mean", half=False
        )
        G = softmax_vjp(G_probs, logits, axis=-1)
    n_layers = len(params) // 2
    grads = [None] * len(params)
    for layer in reversed(range(n_layers)):
        W, b = params[2 * layer], params[2 * layer + 1]
        G_h, grads[2 * layer], grads[2 * layer + 1] = affine_vjp(G, hs[layer], W, b)
        if layer > 0:
            G = f_vjp(G_h, zs[layer - 1])
    return tuple(grads)


def loss_and_grads(params, X, y, *, activation="tanh", loss="cross_entropy"):
    """Loss and the gradient of every parameter, in one call.

    Examples
    --------
    >>> value, grads = loss_and_grads(init_params((4, 3, 2)), np.zeros((2, 4)), np.array([0, 1]))
    >>> round(value, 6), len(grads)
    (0.693147, 4)
    """
    value, cache = forward(params, X, y, activation=activation, loss=loss)
    return value, backward(params, cache)


def sgd_step(params, grads, lr):
    """One plain SGD update ``p - lr * dp``, returned as new arrays.

    Examples
    --------
    >>> p = (np.ones(2),)
    >>> new = sgd_step(p, (np.array([1.0, 2.0]),), 0.5)
    >>> new[0].tolist(), p[0].tolist()
    ([0.5, 0.0], [1.0, 1.0])
    """
    params, grads = _as_arrays(params, "params"), _as_arrays(grads, "grads")
    lr = real_scalar(lr, "lr", rule="a real number, the step size")
    if len(params) != len(grads):
        raise InvalidInput(
            f"params and grads must have the same length, got {len(params)} and {len(grads)}"
        )
    new = []
    for i, (p, d) in enumerate(zip(params, grads, strict=True)):
        if p.shape != d.shape:
            raise InvalidInput(f"grads[{i}] has shape {d.shape}, params[{i}] has {p.shape}")
        new.append(p - lr * d)
    return tuple(new)


# --- gradient-check friendly signatures ----------------------------------------------------------


def mlp_loss(X, y, *params, activation="tanh", loss="cross_entropy"):
    """The loss as a function of the parameters, for gradient checkers.

    Returns a 0-d float64 array, so that
    ``check_vjp(lambda *p: mlp_loss(X, y, *p), lambda g, *p: mlp_loss_vjp(g, X, y, *p), params)``
    checks every parameter at once.

    Examples
    --------
    >>> round(float(mlp_loss(np.zeros((2, 4)), np.array([0, 1]), *init_params((4, 3, 2)))), 6)
    0.693147
    """
    value, _ = forward(params, X, y, activation=activation, loss=loss)
    return np.asarray(value, dtype=np.float64)


def mlp_loss_vjp(g, X, y, *params, activation="tanh", loss="cross_entropy"):
    """VJP of :func:`mlp_loss`: ``g`` times the gradient of each parameter, as a tuple.

    See :func:`backward` for the derivation.

    Examples
    --------
    >>> grads = mlp_loss_vjp(2.0, np.ones((2, 4)), np.array([0, 1]), *init_params((4, 3, 2)))
    >>> [d.shape for d in grads]
    [(4, 3), (3,), (3, 2), (2,)]
    """
    _, cache = forward(params, X, y, activation=activation, loss=loss)
    return backward(params, cache, g=g)


# --- inference -----------------------------------------------------------------------------------


def predict(params, X, *, activation="tanh"):
    """Logits ``z_L`` for the rows of ``X`` (argmax gives the predicted class).

    Examples
    --------
    >>> predict(init_params((4, 3, 2)), np.ones((5, 4))).shape
    (5, 2)
    """
    _check_options(activation, LOSSES[0])
    params = _as_params(params)
    X = _check_X(X, params)
    return _logits(params, X, activation)[1][-1]


def accuracy(params, X, y, *, activation="tanh"):
    """Fraction of rows whose largest logit is at the label.

    Examples
    --------
    >>> accuracy(init_params((4, 3, 2)), np.zeros((2, 4)), np.array([0, 1]))
    0.5
    """
    _check_options(activation, LOSSES[0])
    params = _as_params(params)
    X, y = _check_batch(X, y, params, why="accuracy is a mean over the rows")
    return float(np.mean(np.argmax(_logits(params, X, activation)[1][-1], axis=1) == y))
