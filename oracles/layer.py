"""check_layer / assert_layer: judge a layer object, or a whole network, as its author wrote it.

Three shapes of code are recognised:

* a **layer**: ``forward(*inputs)`` caches what it needs, ``backward(dout)``
  returns the gradient of its input(s) and stores the gradients of its
  parameters wherever its author keeps them (``dW`` next to ``W``,
  ``grads['W']``, ``gradients['W']`` next to ``parameters['W']``, inside
  nested layers). A loss layer (``forward`` returns a scalar, ``backward()``
  or ``backward(dout=1)``) is called as its author calls it;
* a **network** in the from-scratch style: ``loss(x, t)`` and
  ``gradient(x, t)`` returning a dict keyed like its ``params`` (or, in the
  CS231n style, ``loss(X, y)`` returning ``(loss, grads)``);
* with a layer containing other layers (a list or dict of them), the whole
  is checked: its output against every parameter of every layer inside.

Either way the object becomes the pair ``fn(*inputs, *params)`` /
``vjp(cotangent, *inputs, *params)`` that the one VJP pipeline
(:mod:`oracles._pipeline`) judges, with the hygiene findings of
:mod:`oracles._layer_hygiene` added as problems. Every evaluation runs on a
deep copy of the layer in which the parameters are replaced by the arrays
being evaluated, everywhere they are referenced; the user's layer is never
touched, and NumPy's global random state is restored afterwards.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from oracles._guards import call_user, differs, mutations, own_stream, users_state
from oracles._layer_objects import (
    Copier,
    copy_with,
    follow,
    is_private,
    memory_order,
    relink_views,
    render,
    resolve,
    restore_rngs,
    rng_states,
    sizes,
    walk,
)
from oracles._layer_params import (
    GRADIENT_NAMES,
    candidates,
    describe,
    explicit_params,
    gradient_problem,
    missing_gradient_error,
    name_params,
    network_keys,
    partner_paths,
)
from oracles._pipeline import raise_unless_passed, run
from oracles._validation import as_cotangent, as_output, check_names, check_seed
from oracles.checks import VJP
from oracles.errors import (
    InvalidArgument,
    InvalidArgumentType,
    NonDeterministicFunction,
    UserFunctionError,
)
from oracles.report import Report

__all__ = ["GRADIENT_NAMES", "RESET_METHODS", "assert_layer", "check_layer"]

#: Methods that reset accumulated gradients (numpy-ml's ``flush_gradients``, the
#: ``zero_grad`` convention). A layer whose backward accumulates and that has one
#: of these is reset before every evaluation.
RESET_METHODS = ("flush_gradients", "zero_grad", "zero_grads", "zero_gradients", "reset_gradients")

#: Methods that reset the state a stateful layer carries between forward calls.
STATE_RESETS = ("reset_state",)

_MISSING = object()


# --- how the object is called --------------------------------------------------------------------


def _first_positional(method):
    """``(style, default)``: ``"none"`` (no argument), ``"default"`` or ``"required"``."""
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return "required", None
    for p in params:
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            return "required", None
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            if p.default is inspect.Parameter.empty:
                return "required", None
            return "default", p.default
    return "none", None


def _is_unit_default(value):
    if value is None:
        return True
    try:
        return bool(np.asarray(value, dtype=np.float64) == 1.0) and np.ndim(value) == 0
    except (TypeError, ValueError):
        return False


class _LayerCalls:
    """``forward(*inputs)`` / ``backward(dout)`` (or ``backward()``) on a layer object."""

    kind = "layer"
    forward_name = "layer.forward"
    backward_name = "layer.backward"

    def __init__(self, template):
        self.style, self.default = _first_positional(template.backward)
        self.loss = False
        self.signature_of = template.forward

    def forward(self, obj, xs):
        return obj.forward(*xs)

    def backward(self, obj, xs, dout):
        ret = obj.backward() if self.loss else obj.backward(dout)
        return ret, None

    def gradient(self, obj, returned, param):
        return resolve(obj, param.grad, _MISSING)

    def call_description(self, layer_name):
        if self.style == "none":
            return "backward()"
        return f"backward() (its default dout={self.default!r})"


class _NetworkCalls:
    """A network: ``loss(*inputs)``, and ``gradient(*inputs)`` -> ``{key: gradient}``.

    Without a ``gradient`` method, ``loss(*inputs)`` returns ``(loss, grads)``.
    """

    kind = "network"
    forward_name = "layer.loss"
    loss = True

    def __init__(self, template):
        self.has_gradient = callable(getattr(template, "gradient", None))
        self.backward_name = "layer.gradient" if self.has_gradient else "layer.loss"
        self.signature_of = template.loss

    def forward(self, obj, xs):
        out = obj.loss(*xs)
        if not self.has_gradient and isinstance(out, tuple) and len(out) == 2:
            out = out[0]
        return out

    def backward(self, obj, xs, dout):
        if self.has_gradient:
            grads = obj.gradient(*xs)
            what = "layer.gradient(...)"
        else:
            result = obj.loss(*xs)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise UserFunctionError(
                    f"layer.loss returned {type(result).__name__}; a network without a gradient "
                    "method must return (loss, grads) from loss(X, y), grads a dict keyed like "
                    "its params"
                )
            grads = result[1]
            what = "the grads that layer.loss(...) returns"
        if not isinstance(grads, dict):
            raise UserFunctionError(
                f"{what} is a {type(grads).__name__}; expected a dict of gradients keyed like "
                "the network's params (grads['W1'] for params['W1'])"
            )
        return None, grads

    def gradient(self, obj, returned, param):
        return returned.get(param.grad, _MISSING)

    @property
    def source(self):
        if self.has_gradient:
            return "the dict layer.gradient() returns"
        return "the grads layer.loss() returns"


class _Functions:
    """A CS231n-style pair between its two calls: the functions, and the cache between them."""

    def __init__(self, forward, backward):
        self.forward_fn, self.backward_fn = forward, backward
        self.cache = None
        self.grads = None


def _positional_names(func):
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and p.default is inspect.Parameter.empty
    ]


class _FunctionCalls:
    """``out, cache = forward(*inputs)`` / ``grads = backward(dout, cache)`` (CS231n's layers).

    Several outputs (``next_h, next_c, cache = lstm_step_forward(...)``, then
    ``lstm_step_backward(dnext_h, dnext_c, cache)``) are checked as one
    output, their concatenation. Without a backward, ``forward(*inputs)``
    returns ``(loss, grads)`` (``softmax_loss(x, y)``).
    """

    kind = "functions"
    style = "function"

    def __init__(self, template):
        f, b = template.forward_fn, template.backward_fn
        self.forward_name = getattr(f, "__name__", "forward")
        self.backward_name = (
            getattr(b, "__name__", "backward") if b is not None else (self.forward_name)
        )
        self.signature_of = f
        self.loss = b is None
        self.shapes = None
        names = _positional_names(b) if b is not None else None
        self.dout_names = names[:-1] if names and len(names) >= 2 else None

    def forward(self, obj, xs):
        res = obj.forward_fn(*xs)
        if obj.backward_fn is None:
            if not (isinstance(res, tuple) and len(res) == 2):
                raise UserFunctionError(
                    f"{self.forward_name} returned {type(res).__name__}; a loss function checked "
                    "on its own returns (loss, grads): the scalar loss and the gradient(s) of its "
                    "inputs"
                )
            obj.grads = res[1]
            return res[0]
        if not (isinstance(res, tuple) and len(res) >= 2):
            raise UserFunctionError(
                f"{self.forward_name} returned {type(res).__name__}; a forward function returns "
                "(out, cache), or (out1, out2, ..., cache) for several outputs"
            )
        outs, obj.cache = res[:-1], res[-1]
        if self.dout_names is not None and len(outs) != len(self.dout_names):
            raise UserFunctionError(
                f"{self.forward_name} returned {len(outs)} output(s) and a cache, but "
                f"{self.backward_name} takes {len(self.dout_names)} upstream gradient(s) "
                f"({', '.join(self.dout_names)}) and the cache"
            )
        if len(outs) == 1:
            return outs[0]
        arrays = [np.asarray(o, dtype=np.float64) for o in outs]
        self.shapes = [a.shape for a in arrays]
        return np.concatenate([a.ravel() for a in arrays])

    def split(self, dout):
        if self.shapes is None:
            return [dout]
        out, pos = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape, dtype=np.int64))
            out.append(dout[pos : pos + size].reshape(shape))
            pos += size
        return out

    def backward(self, obj, xs, dout):
        if obj.backward_fn is None:
            return obj.grads, None
        return obj.backward_fn(*self.split(dout), obj.cache), None

    def gradient(self, obj, returned, param):
        return _MISSING  # functions have no parameters: every array is an input

    def douts(self, d):
        names = self.dout_names or ["dout"]
        pieces = self.split(d)
        if len(names) != len(pieces):
            names = [f"dout[{k}]" for k in range(len(pieces))]
        return pieces, names


def _calls_for(layer):
    if isinstance(layer, type):
        raise InvalidArgumentType(
            f"layer must be a layer object, got the class {layer.__name__}; pass an instance "
            f"({layer.__name__}(...))"
        )
    if callable(getattr(layer, "forward", None)) and callable(getattr(layer, "backward", None)):
        return _LayerCalls
    if callable(getattr(layer, "loss", None)) and not callable(getattr(layer, "forward", None)):
        return _NetworkCalls
    if isinstance(layer, _Functions):
        return _FunctionCalls
    missing = "forward" if not callable(getattr(layer, "forward", None)) else "backward"
    raise InvalidArgumentType(
        "layer must have callable forward and backward methods (a network: loss and gradient; "
        "CS231n-style functions: a pair (forward, backward)); "
        f"{type(layer).__name__} has no callable {missing!r}"
    )


def _as_layer(layer):
    """A (forward, backward) pair or a lone loss function as an object with their state."""
    if (
        isinstance(layer, tuple)
        and len(layer) == 2
        and all(callable(f) and not isinstance(f, type) for f in layer)
    ):
        return _Functions(*layer)
    if (
        callable(layer)
        and not isinstance(layer, type)
        and not callable(getattr(layer, "forward", None))
        and not callable(getattr(layer, "loss", None))
    ):
        return _Functions(layer, None)
    return layer


# --- small helpers -------------------------------------------------------------------------------


def _copy_value(value):
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else copy.deepcopy(value)


def _input_names(method, n, names=None):
    names = check_names(names, n)
    if names is not None:
        return names
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= n:
        return positional[:n]
    return [f"inputs[{k}]" for k in range(n)]


def _parse_wrt(wrt, n):
    if wrt is None:
        return None
    if isinstance(wrt, (int, np.integer)) and not isinstance(wrt, bool):
        wrt = (wrt,)
    try:
        wrt = tuple(wrt)
    except TypeError as exc:
        raise InvalidArgumentType(
            f"wrt must be a sequence of input positions, got {wrt!r}"
        ) from exc
    for k in wrt:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InvalidArgumentType(f"wrt must hold input positions (ints), got {k!r}")
        if not 0 <= k < n:
            raise InvalidArgument(f"wrt holds {k}, but there are {n} inputs (positions 0..{n - 1})")
    if len(set(wrt)) != len(wrt) or list(wrt) != sorted(wrt):
        raise InvalidArgument(
            f"wrt must list distinct input positions in increasing order, got {wrt}"
        )
    return tuple(int(k) for k in wrt)


def _check_array_like(value, k):
    """An input that claims to be an array (``__array__``) must become one: a torch tensor
    that requires grad cannot; say so instead of letting the layer fail on it."""
    if isinstance(value, (np.ndarray, np.generic, int, float, list, tuple, dict, str)):
        return
    if value is None or not hasattr(value, "__array__"):
        return
    try:
        np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - the array-like's own conversion error
        raise InvalidArgumentType(
            f"inputs[{k}] could not be converted to a NumPy array ({type(exc).__name__}: {exc}); "
            "check_layer checks NumPy layers: pass NumPy arrays"
        ) from exc


def _is_float(value):
    if not isinstance(value, (np.ndarray, float, np.floating)):
        return False
    return np.asarray(value).dtype.kind == "f"


def _returned(ret):
    """What backward returned, as a list of input gradients."""
    if ret is None:
        return []
    if isinstance(ret, (tuple, list)):
        return list(ret)
    return [ret]


def _scaled(value, c):
    if c == 1.0 or value is None:
        return value
    return np.asarray(value) * c


def _other_inputs(xs):
    """Inputs that differ from ``xs`` but keep its values (rows rolled): another x, same domain."""
    out = []
    for x in xs:
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiub":
            out.append(copy.deepcopy(x))  # a dict of options, a scalar: kept as it is
            continue
        a = x
        if a.ndim >= 1 and a.shape[0] > 1:
            out.append(np.roll(a, 1, axis=0))
        elif a.size > 1:
            out.append(a.reshape(-1)[::-1].reshape(a.shape).copy())
        else:
            out.append(np.array(a, copy=True))
    return out


def _snapshot(value):
    if isinstance(value, np.ndarray):
        return ("array", id(value), value.copy())
    return ("other", id(value), value)


def _unchanged(before, value):
    kind, ident, saved = before
    if id(value) != ident:
        return False
    if kind == "array":
        return saved.shape == value.shape and np.array_equal(saved, value, equal_nan=True)
    return True


# --- the check -----------------------------------------------------------------------------------


class _Session:
    """Everything check_layer learns about one layer, and the copies it evaluates."""

    def __init__(self, layer, inputs, seed):
        self.name = type(layer).__name__
        if isinstance(layer, _Functions):
            f, b = layer.forward_fn, layer.backward_fn
            self.name = getattr(f, "__name__", "forward") + (
                f"/{getattr(b, '__name__', 'backward')}" if b is not None else ""
            )
        self.template = copy_with(layer)
        relink_views(layer, self.template)
        self.original = layer  # only read: which of its arrays share memory (tied weights)
        self.calls = _calls_for(layer)(self.template)
        self.inputs = [_copy_value(x) for x in inputs]
        self.seed = 0 if seed is None else seed
        self.reseed = False
        self.rngs = rng_states(self.template)
        self.reset = None
        self.params = []
        self.problems = {}
        self.notes = []
        self.wrt = ()
        self.piece_names = []
        self._copier = None
        self.grads_before = []
        self.followers = []
        self.unwritten = []  # (param, message): stored gradients of zeros backward left as zeros

    # copies and calls

    def fresh(self, values=None):
        """A deep copy of the template; the parameters replaced by ``values`` (or copies)."""
        subs = {}
        for k, p in enumerate(self.params):
            v = p.array if values is None else values[k]
            subs[id(p.array)] = np.array(v, dtype=np.float64, order=memory_order(p.array))
        for view, owner in self.followers:  # views of a parameter follow it (self.WT = self.W.T)
            subs[id(view.array)] = follow(view.array, owner.array, subs[id(owner.array)])
        arrays = [p.array for p in self.params] + [v.array for v, _ in self.followers]
        key = (id(self.template), tuple(id(a) for a in arrays))
        if self._copier is None or self._copier[0] != key:
            self._copier = (key, Copier(self.template, arrays))
        obj = self._copier[1].copy(list(subs.values()))
        if self.reset is not None:
            call_user(getattr(obj, self.reset), [], f"layer.{self.reset}")
        return obj, subs

    def xs(self):
        return [_copy_value(x) for x in self.inputs]

    def before_forward(self, obj):
        if self.reseed:
            np.random.seed(self.seed)  # noqa: NPY002 - the global RNG is what published code uses
            restore_rngs(obj, self.rngs)

    def forward(self, obj, xs):
        self.before_forward(obj)
        raw = call_user(lambda: self.calls.forward(obj, xs), [], self.calls.forward_name)
        return as_output(raw, self.calls.forward_name)

    def backward(self, obj, xs, dout):
        if self.calls.kind == "network":
            self.before_forward(obj)
        return call_user(lambda: self.calls.backward(obj, xs, dout), [], self.calls.backward_name)

    def record(self, key, message):
        self.problems.setdefault(key, message)

    # randomness

    def settle_randomness(self):
        """The output at the inputs; re-seed before every forward if that makes it repeatable."""
        # Drawing from NumPy's global generator is randomness even where two draws happened
        # to agree (a dropout mask over 6 elements repeats one time in 64): the state it
        # leaves differs from call to call (a forward that seeds it itself, CS231n's
        # dropout with a seed, leaves the same state each time, and is deterministic).
        first = self.forward(self.fresh()[0], self.xs())
        after_first = np.random.get_state()  # noqa: NPY002
        second = self.forward(self.fresh()[0], self.xs())
        drew = _moved(after_first, np.random.get_state())  # noqa: NPY002
        if drew or differs(first, second)[0]:
            self.reseed = True
            first, second = (self.forward(self.fresh()[0], self.xs()) for _ in range(2))
            if differs(first, second)[0]:
                raise NonDeterministicFunction(
                    f"{self.calls.forward_name} is not deterministic: it returned different "
                    "outputs for the same inputs even with NumPy's global random generator and "
                    "the layer's own generators re-seeded before every call. It draws from a "
                    "source check_layer cannot reset (np.random.default_rng() created inside "
                    "forward, Python's random module, ...): create the generator in __init__ "
                    "(self.rng = np.random.default_rng(seed)), or switch dropout off"
                )
            self._note_reseed()
        elif not self.reseed:
            try:
                obj = self.fresh()[0]
                same = [self.forward(obj, self.xs()) for _ in range(2)]
                if differs(*same)[0] and self.rngs:
                    self.reseed = True
                    obj = self.fresh()[0]
                    same = [self.forward(obj, self.xs()) for _ in range(2)]
                    if differs(*same)[0]:
                        self.reseed = False  # not randomness: the second-forward check says more
                    else:
                        self._note_reseed()
            except UserFunctionError:
                pass  # forward cannot run twice on one object; the second-forward check says so
        return first

    def _note_reseed(self):
        gens = ", ".join(render(p) for p in self.rngs)
        self.notes.append(
            f"{self.calls.forward_name} is random (a dropout mask?): NumPy's global random "
            f"generator{' (and ' + gens + ')' if gens else ''} was re-seeded (seed {self.seed}) "
            "before every forward, which made it deterministic, so the derivative of the function "
            "with that mask was checked; the caller's random state was restored afterwards"
        )

    # parameters

    def find_gradient(self, obj, returned, p):
        """Where the gradient of ``p`` is after backward (a path, or a key), or None."""
        if p.grad is not None:
            if self.calls.gradient(obj, returned, p) is _MISSING:
                text = p.extra.get("grad_text", p.grad)
                raise UserFunctionError(
                    f"after backward, there is no {text!r} on the layer (the gradient of "
                    f"{render(p.slots[0])}, as params= says); backward must store it there"
                )
            return p.grad
        for slot in p.slots:
            options = network_keys(slot) if self.calls.kind == "network" else partner_paths(slot)
            for q in options:
                if self.calls.gradient(obj, returned, _Probe(q)) is not _MISSING:
                    return q
        return None

    def discover(self, out, dout, explicit):
        """The parameters (with their gradients), validated; errors name what is wrong."""
        if explicit is not None:
            found = explicit
            explicit_views = self._views_of_explicit(explicit)  # refuses a named view first
        else:
            found = candidates(self.template)
        self.params = found
        obj, subs = self.fresh()
        xs = self.xs()
        self.forward(obj, xs)
        keep = []
        for p in found:
            new = subs[id(p.array)]
            if not p.explicit and any(resolve(obj, s, None) is not new for s in p.slots):
                continue  # forward assigns it anew: a cache of the input, not a parameter
            p.modified_by_forward = not np.array_equal(new, p.array, equal_nan=True)
            keep.append(p)
        before = {}
        for p in keep:
            for s in p.slots:
                for q in partner_paths(s):
                    v = resolve(obj, q, _MISSING)
                    if v is not _MISSING:
                        before.setdefault(q, _snapshot(v))
        floats = self._float_parameters(obj)
        ret, returned = self.backward(obj, xs, dout)
        params, unpaired, views = [], [], []
        for p in keep:
            p.grad = self.find_gradient(obj, returned, p)
            if p.grad is not None:
                params.append(p)
            elif p.explicit:
                looked = ", ".join(render(q) for q in partner_paths(p.slots[0])[:4])
                raise UserFunctionError(
                    f"after backward, there is no gradient of {render(p.slots[0])} (looked for "
                    f"{looked}); backward must store it, or name it: params={{'W': 'dW'}}"
                )
            elif p.extra.get("view_of") is not None:
                views.append(p)  # no gradient of its own: it follows what it views
            elif not p.modified_by_forward:
                unpaired.append(p)
        partners = {tuple(p.grad) for p in params if isinstance(p.grad, tuple)}
        params = [p for p in params if not any(tuple(s) in partners for s in p.slots)]
        unpaired = [p for p in unpaired if not any(tuple(s) in partners for s in p.slots)]
        self._check_found(obj, returned, params, before)
        self._check_shared(obj, returned, params)
        self._check_floats(obj, floats)
        if self.calls.kind == "network" and explicit is None:
            self._check_keys(returned, params)
        unread = [p for p in unpaired if self._reads(p, found, out)]
        if unread and not params and explicit is None and _lazy_suspected(self, dout):
            return []  # read only to make the parameters (lazy init): look at a warm copy
        if unread:
            raise missing_gradient_error(
                unread, self.calls.kind == "network", self.calls.forward_name, self.backward_name
            )
        self.params = params
        if explicit is not None:
            views = explicit_views
        self.followers = self._followers(views, params)
        return params

    def _views_of_explicit(self, params):
        """The arrays of the layer that view a parameter named by ``params=``: they follow it.

        Found as :func:`candidates` finds them for discovered parameters: a
        tied ``WT = W.T`` is rebuilt on every copy of ``W``, so both uses see
        the perturbation. A named parameter that is itself a view of another
        array of the layer (``params=["WT"]``) is refused: its owner would
        not follow it.
        """
        named = {id(p.array): p for p in params}
        views = []
        for c in candidates(self.template):
            if id(c.array) in named:
                owner = c.extra.get("view_of")
                if owner is not None and id(owner.array) not in named:
                    raise InvalidArgument(
                        f"params names {named[id(c.array)].where}, a view of "
                        f"{render(owner.slots[0])}: name the array it views instead (its "
                        "views follow it on every copy), with the gradient summed over both uses"
                    )
                continue
            owner = c.extra.get("view_of")
            if owner is not None and id(owner.array) in named:
                c.extra["view_of"] = named[id(owner.array)]
                views.append(c)
        return views

    def _followers(self, views, params):
        out = []
        for view in views:
            owner = view.extra["view_of"]
            if owner not in params:
                continue  # a view of a constant: copied with it, nothing to follow
            a = owner.array
            if not (a.flags.c_contiguous or a.flags.f_contiguous) or 8 % a.itemsize:
                raise InvalidArgument(
                    f"{render(view.slots[0])} is a view of the parameter {render(owner.slots[0])}, "
                    "which is not contiguous: check_layer cannot rebuild the view on its copies. "
                    "Take the view in forward (W.T where it is used), or pass params="
                )
            out.append((view, owner))
        return out

    @property
    def backward_name(self):
        return self.calls.backward_name

    def _where(self, p):
        if self.calls.kind == "network":
            return f"{self.calls.source}[{p.grad!r}]"
        return render(p.grad)

    def _check_found(self, obj, returned, params, before):
        for p in params:
            value = self.calls.gradient(obj, returned, p)
            where = self._where(p)
            problem = gradient_problem(value, p, where)
            if problem is None and isinstance(p.grad, tuple) and p.grad in before:
                if _unchanged(before[p.grad], value):
                    problem = (
                        f"backward never wrote {where}, the gradient of {p.where}: it holds "
                        "exactly what it held before backward"
                    )
                    if not np.any(before[p.grad][2]):
                        # Zeros that stay zeros: a gradient that is 0 here (tanh saturated, a
                        # dead ReLU: `+= 0`) looks the same as one never written. The numerics
                        # tell them apart: an error only if the true gradient is not 0.
                        self.unwritten.append((p, problem))
                        problem = None
            if problem is not None:
                raise UserFunctionError(problem)

    def _check_shared(self, obj, returned, params):
        """Tied weights: one array in several places, or arrays that overlap in memory.

        One array in several places (``params['W1']`` is ``params['W2']``) is
        one parameter, perturbed as one: its gradient, the sum over its uses,
        is judged where the first place keeps it (a per-use gradient there
        fails); a note names the other places' gradients, not compared (a
        sub-layer's ``dW`` of its own use may rightly differ). Two arrays that
        overlap in memory (``WT = W.T``, overlapping slices of one buffer),
        each with a gradient of its own, are two parameters, each judged with
        the gradient of its own use (the convention of listing tied weights
        twice); a note says so and what it means for an optimizer step.
        """
        for p in params:
            if len(p.slots) < 2:
                continue
            others = []
            for slot in p.slots[1:]:
                keys = network_keys(slot) if self.calls.kind == "network" else partner_paths(slot)
                for q in keys:
                    found = self.calls.gradient(obj, returned, _Probe(q))
                    if q != p.grad and found is not _MISSING:
                        others.append(self._where_at(q))
                        break
            if others:
                self.notes.append(
                    f"{' and '.join(render(slot) for slot in p.slots)} are one array (tied): "
                    f"its gradient, the sum over its uses, was judged at {self._where(p)}; "
                    f"{', '.join(others)} {'was' if len(others) == 1 else 'were'} not compared"
                )
        # In the caller's layer: a tie through a buffer the layer does not hold (two slices of a
        # local array) is not kept by the copies, and would go unseen on the template.
        originals = []
        for p in params:
            original = resolve(self.original, p.slots[0], p.array)
            originals.append(original if isinstance(original, np.ndarray) else p.array)
        for k, a in enumerate(params):
            for b, ob in zip(params[k + 1 :], originals[k + 1 :], strict=True):
                oa = originals[k]
                if np.may_share_memory(oa, ob) and np.shares_memory(oa, ob, max_work=10**6):
                    self.notes.append(
                        f"{a.where} and {b.where} share memory (tied weights), and backward "
                        f"stores a gradient for each ({self._where(a)}, {self._where(b)}): each "
                        "was judged as the gradient of its own use (the tie broken on the "
                        "copies), so an optimizer that steps both applies their sum, the "
                        "gradient of the shared memory. A gradient that already holds the sum "
                        "fails: it would count the other use twice. To keep one gradient, store "
                        "the sum for one of them and name only that one in params="
                    )

    def _where_at(self, grad):
        if self.calls.kind == "network":
            return f"{self.calls.source}[{grad!r}]"
        return render(grad)

    def _float_parameters(self, obj):
        """Python-float attributes with a gradient-named sibling, and that sibling's state."""
        out = []
        for path, value in walk(obj):
            if path[-1][0] != "attr" or str(path[-1][1]).startswith("_"):
                continue
            if isinstance(value, float) and not isinstance(value, bool):
                for q in partner_paths(path)[: len(GRADIENT_NAMES)]:
                    v = resolve(obj, q, _MISSING)
                    out.append((path, q, _snapshot(v) if v is not _MISSING else None))
        return out

    def _check_floats(self, obj, floats):
        for path, q, before in floats:
            v = resolve(obj, q, _MISSING)
            if v is _MISSING or (before is not None and _unchanged(before, v)):
                continue
            raise UserFunctionError(
                f"{render(path)} is a Python float and backward stores its gradient in "
                f"{render(q)}: check_layer checks parameters that are NumPy arrays. Store it as "
                f"a 0-d array (np.array({resolve(obj, path)!r})), or pass params= without it"
            )

    def _check_keys(self, returned, params):
        used = {p.grad for p in params}
        extra = [k for k in returned if k not in used]
        if extra:
            known = sorted({str(k) for p in params for s in p.slots for k in network_keys(s)})
            raise UserFunctionError(
                f"{self.calls.source} has gradients for {', '.join(map(repr, extra))}, but the "
                f"network has no parameter under that key (parameters found: "
                f"{', '.join(known) or 'none'}); key the gradients like the parameters"
            )

    def _reads(self, p, found, out):
        """Does forward's output change when ``p`` changes? (Then it is a parameter.)"""
        rng = np.random.default_rng(self.seed + 1)
        values = []
        for q in found:
            v = np.array(q.array, dtype=np.float64, copy=True)
            if q is p:
                v = v + (1.0 + np.abs(v)) * rng.standard_normal(v.shape)
            values.append(v)
        saved, self.params = self.params, found
        try:
            obj = self.fresh(values)[0]
            try:
                again = self.forward(obj, self.xs())
            except UserFunctionError:
                return True
        finally:
            self.params = saved
        return bool(differs(out, again)[0])

    # hygiene

    def params_unchanged(self, obj, subs, values, who):
        for p, before in zip(self.params, values, strict=True):
            new = subs[id(p.array)]
            for s in p.slots:
                now = resolve(obj, s, _MISSING)
                if now is not new:
                    self.record(
                        (who, "param", p.name),
                        f"{who} changed the parameter {p.name}: it assigned a new value to "
                        f"{render(s)} (an optimizer step inside {who.split('.')[-1]}?): it must "
                        "leave parameters as they are; update them separately, after the "
                        "gradients are computed",
                    )
                    break
            else:
                if new.shape != before.shape or not np.array_equal(new, before, equal_nan=True):
                    where = ", ".join(render(s) for s in p.slots)
                    self.record(
                        (who, "param", p.name),
                        f"{who} changed the parameter {p.name} in place ({where}; an optimizer "
                        f"step or a weight update inside {who.split('.')[-1]}?): it must leave "
                        "parameters as they are; update them separately, after the gradients "
                        "are computed",
                    )

    def inputs_unchanged(self, before, xs, names, who):
        arrays = [(b, x, n) for b, x, n in zip(before, xs, names, strict=True)]
        arrays = [(b, x, n) for b, x, n in arrays if isinstance(b, np.ndarray)]
        for message in mutations(
            [a[0] for a in arrays], [a[1] for a in arrays], [a[2] for a in arrays], who
        ):
            self.record((who, "input", message.split(" in place")[0]), message)

    def dout_unchanged(self, before, d):
        if d is None:
            return
        if isinstance(self.calls, _FunctionCalls):
            (old, names), (new, _) = self.calls.douts(np.asarray(before)), self.calls.douts(d)
        else:
            old, new, names = [np.asarray(before)], [d], ["dout"]
        for o, n, name in zip(old, new, names, strict=True):
            for message in mutations([o], [n], [name], self.calls.backward_name):
                self.record(("dout", name), message)

    def evaluate(self, values, xs, dout, names, record=True):
        """One forward and backward on a fresh copy: ``(input gradients, parameter gradients)``."""
        obj, subs = self.fresh(values)
        before_x = [_copy_value(x) for x in xs]
        before_p = [np.array(subs[id(p.array)], copy=True) for p in self.params]
        if self.calls.kind != "network":
            self.forward(obj, xs)
            if record:
                self.inputs_unchanged(before_x, xs, names, self.calls.forward_name)
                self.params_unchanged(obj, subs, before_p, self.calls.forward_name)
            before_x = [_copy_value(x) for x in xs]
            before_p = [np.array(subs[id(p.array)], copy=True) for p in self.params]
        self.grads_before = [self._stored(obj, p) for p in self.params]
        d = None if dout is None else np.array(dout, dtype=np.float64, copy=True)
        ret, returned = self.backward(obj, xs, d)
        if record:
            self.dout_unchanged(dout, d)
            self.inputs_unchanged(before_x, xs, names, self.backward_name)
            self.params_unchanged(obj, subs, before_p, self.backward_name)
        return obj, ret, returned

    def _stored(self, obj, p):
        """The gradient of ``p`` stored on ``obj`` now (before a backward), zeros if none."""
        value = _MISSING if self.calls.kind == "network" else self.calls.gradient(obj, None, p)
        if isinstance(value, np.ndarray) and value.shape == p.array.shape:
            return np.array(value, dtype=np.float64, copy=True)
        return np.zeros(p.array.shape)

    def pieces(self, obj, ret, returned):
        """Input gradients then parameter gradients, validated, as float64 arrays."""
        grads, wrt = _returned(ret), self.wrt
        if len(grads) != len(wrt):
            raise UserFunctionError(
                f"{self.backward_name} returned {len(grads)} gradient(s), but {len(wrt)} were "
                "expected (one per input it differentiates)"
            )
        out = []
        for g, k, name in zip(grads, wrt, self.piece_names, strict=False):
            shape = np.shape(self.inputs[k])
            if g is None or isinstance(g, (list, tuple)) or np.shape(g) != shape:
                what = (
                    "None"
                    if g is None
                    else (
                        f"a {type(g).__name__}"
                        if isinstance(g, (list, tuple))
                        else f"shape {np.shape(g)}"
                    )
                )
                raise UserFunctionError(
                    f"{self.backward_name} returned {what} as the gradient of {name}; expected "
                    f"an array of shape {shape}, the shape of the input"
                )
            kind = np.asarray(g).dtype.kind
            if kind not in "fiu":
                what = "complex values" if kind == "c" else f"dtype {np.asarray(g).dtype}"
                raise UserFunctionError(
                    f"{self.backward_name} returned {what} as the gradient of {name}; expected "
                    "real numbers (a real function has a real gradient)"
                )
            out.append(np.array(g, dtype=np.float64, copy=True))
        for p in self.params:
            value = self.calls.gradient(obj, returned, p)
            where = self._where(p)
            if value is _MISSING:
                raise UserFunctionError(
                    f"after backward, {where} (the gradient of {p.name}) is not there"
                )
            problem = gradient_problem(value, p, where)
            if problem is not None:
                raise UserFunctionError(problem)
            out.append(np.array(value, dtype=np.float64, copy=True))
        return out


class _Probe:
    """A stand-in parameter whose gradient is looked up at ``grad`` (see find_gradient)."""

    def __init__(self, grad):
        self.grad = grad


def _dout(session, out, direction):
    if session.calls.loss:
        return None
    if direction is not None:
        return np.array(direction, dtype=np.float64)
    return own_stream(session.seed, "direction").standard_normal(out.shape)


def _flatten_direction(direction, shapes):
    if shapes is None:  # one output: a tuple of arrays is one array (and its shape is checked)
        return np.asarray(direction, dtype=np.float64)
    if len(direction) != len(shapes):
        raise InvalidArgument(
            f"direction must give one array per output ({len(shapes)}), got {len(direction)}"
        )
    parts = []
    for k, (d, shape) in enumerate(zip(direction, shapes, strict=True)):
        if np.shape(d) != shape:
            raise InvalidArgument(
                f"direction[{k}] must have the shape of output {k}, {shape}, got {np.shape(d)}"
            )
        parts.append(np.asarray(d, dtype=np.float64).ravel())
    return np.concatenate(parts)


def _moved(before, after):
    """True where NumPy's global random state ``after`` is not the state ``before``."""
    return any(
        not np.array_equal(a, b) if isinstance(a, np.ndarray) else a != b
        for a, b in zip(before, after, strict=True)
    )


def _decide_loss(session, out, direction):
    calls = session.calls
    if calls.kind == "network" or (calls.kind == "functions" and calls.loss):
        if out.shape != ():
            raise UserFunctionError(
                f"{calls.forward_name} must return a scalar loss; it returned shape {out.shape}"
            )
        if direction is not None and np.shape(direction) != ():
            raise InvalidArgument(
                f"direction must be a scalar for a loss (the loss is a scalar), got shape "
                f"{np.shape(direction)}"
            )
        return
    if calls.kind == "functions":
        if direction is not None and np.shape(direction) != out.shape:
            raise InvalidArgument(
                f"direction must have the shape of {calls.forward_name}'s output {out.shape} "
                "(several outputs: a tuple of arrays shaped like them), got "
                f"{np.shape(direction)}"
            )
        return
    if calls.style == "none":
        if out.shape != ():
            raise UserFunctionError(
                f"{session.name}.backward takes no upstream gradient, so forward must return a "
                f"scalar loss; it returned shape {out.shape}"
            )
        if direction is not None and not np.array_equal(direction, 1.0):
            raise InvalidArgument(
                f"{session.name}.backward takes no upstream gradient, so direction must be None "
                f"or 1.0, got {direction!r}"
            )
        calls.loss = True
    elif (
        calls.style == "default"
        and direction is None
        and out.shape == ()
        and _is_unit_default(calls.default)
    ):
        calls.loss = True
    if not calls.loss and direction is not None and np.shape(direction) != out.shape:
        raise InvalidArgument(
            f"direction must have the shape of layer.forward's output {out.shape}, "
            f"got {np.shape(direction)}"
        )


def check_layer(
    layer: Any,
    inputs: Sequence[ArrayLike] | ArrayLike,
    *,
    direction: ArrayLike | None = None,
    params: dict | Sequence[str] | None = None,
    wrt: Sequence[int] | int | None = None,
    against: str | Sequence[str] = "numeric",
    mode: Any = "auto",
    names: Sequence[str] | None = None,
    seed: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    torch_fn: Callable[..., Any] | None = None,
    jax_fn: Callable[..., Any] | None = None,
    resolve: float | None = None,
    pitfalls: Any = None,
) -> Report:
    """Check a layer's ``backward``, or a network's gradient, against every parameter.

    Parameters
    ----------
    layer : object
        A layer: ``forward(*inputs) -> array`` and ``backward(dout)`` (a loss
        layer: ``backward(dout=1)`` or ``backward()``) returning the
        gradient of the input (a bare array) or of several inputs (a tuple,
        in order), the parameter gradients stored in the layer. Or a
        network: ``loss(*inputs) -> scalar`` and ``gradient(*inputs) ->
        dict`` keyed like its parameters (or ``loss`` returning ``(loss,
        grads)``). Never modified: every evaluation runs on a deep copy.
    inputs : tuple of array_like
        The arguments of ``forward`` (or ``loss``), one entry per positional
        argument (a bare array counts as the only one). Inputs that are not
        differentiated (integer labels, targets) are passed unchanged.
    direction : array_like, optional
        The ``dout`` passed to ``backward``, shaped like ``forward``'s
        output. Default: standard normal from
        ``numpy.random.default_rng(seed)``. A loss layer or network is
        called as its author calls it, ``backward()`` or ``gradient(...)``,
        and its result scaled by the (scalar) direction, default 1.
    params : dict or sequence of str, optional
        ``{"W": "dW", "b": "db"}``: parameter -> where ``backward`` stores
        its gradient, as attribute names or paths (``"params['W']"``,
        ``"layers[0].W"``; for a network, keys of the returned dict). A
        sequence of parameters looks their gradients up by the rules below.
        ``{}`` checks the input gradient only. Default: discovered (see
        Notes); the report says what was found where.
    wrt : sequence of int, optional
        Positions of the inputs whose gradients ``backward`` returns, in
        order. Default: read from what ``backward`` returns: a bare array is
        the gradient of ``inputs[0]``, a tuple of ``k`` arrays those of
        ``inputs[0:k]``, ``None`` no input gradient (parameters only). The
        other inputs are held fixed. Integer inputs cannot be differentiated.
    names : sequence of str, optional
        Names of ``forward``'s inputs in the report (default: ``forward``'s
        parameter names); parameters are named by their attribute or key,
        or by their path where two would share a name.
    against, mode, seed, rtol, atol, torch_fn, jax_fn, resolve, pitfalls
        As in :func:`oracles.check_vjp`. ``torch_fn`` and ``jax_fn`` take
        the differentiated inputs, then the parameters, in the report's
        order (``x, W, b``).

    Returns
    -------
    Report
        As from :func:`oracles.check_vjp`, with ``kind`` ``"check_layer"``;
        its notes say which parameters were checked and where they were
        found, and how the layer was called.

    Raises
    ------
    InvalidArgument, InvalidArgumentType
        ``layer`` has neither ``forward``/``backward`` nor ``loss``,
        ``params`` names something that does not exist, ``wrt`` is out of
        range, the layer cannot be deep-copied, ...
    UserFunctionError
        ``forward`` or ``backward`` raised or returned the wrong number of
        gradients; ``forward`` reads an array for which no gradient is
        stored; a gradient is None, a list, or has the wrong shape (a
        transposed ``dW``). The message names the parameter and what was
        expected.
    NonDeterministicFunction
        ``forward`` stays random even with NumPy's random state re-seeded.

    Notes
    -----
    Parameters are the floating-point arrays of the layer (attributes,
    ``__slots__``, entries of dicts and lists, inside nested layers) that
    ``forward`` reads without assigning them; their gradients are found
    next to them: ``dW``, ``grad_W`` or ``W_grad`` for ``W``; ``grads['W']``
    or ``gradients['W']`` for ``W`` or ``params['W']``/``parameters['W']``;
    ``grads[0]`` for ``params[0]``. An array ``forward`` assigns (``self.x =
    x``) is a cache, one it writes into is a buffer: neither is a
    parameter. Arrays shared between places (a network's ``params['W1']``
    that is also its first layer's ``W``) are one parameter.

    Hygiene mistakes fail the check as problems even when every number
    agrees, each naming the attribute: ``backward`` writing into ``dout``
    (``dout[x <= 0] = 0``), into its inputs or into a parameter (an
    optimizer step, also through ``self.params['W'] -= ...``); ``backward``
    accumulating (``self.dW += ...``: a second backward after one forward
    must give the same gradients) or growing the layer's state; ``forward``
    keeping state that makes a second forward, with another input, give
    another answer. A layer whose accumulation is by design and that
    offers ``flush_gradients()`` or ``zero_grad()`` is reset before every
    evaluation instead (a note says so). A random ``forward`` (dropout
    drawing its mask from ``np.random``) is re-seeded before every call;
    the caller's random state is restored. The numeric oracle's notes
    apply (kinks, steps, near-zero gradients): see :func:`oracles.check_vjp`.

    Examples
    --------
    >>> import numpy as np
    >>> class Scale:
    ...     def __init__(self, w):
    ...         self.w = w
    ...     def forward(self, x):
    ...         self.x = x
    ...         return self.w * x
    ...     def backward(self, dout):
    ...         self.dw = dout * self.x
    ...         return dout * self.w
    >>> r = check_layer(Scale(np.array([2.0, 3.0])), (np.array([1.0, -1.0]),))
    >>> r.ok, [i.name for i in r.inputs]
    (True, ['x', 'w'])
    >>> [n for n in r.notes if n.startswith("parameters")]
    ['parameters checked: w (layer.w, gradient layer.dw)']
    """
    __tracebackhide__ = True
    with users_state():  # the caller's global state, restored bitwise whatever the layer does
        return _check_layer(
            layer,
            inputs,
            direction=direction,
            params=params,
            wrt=wrt,
            against=against,
            mode=mode,
            names=names,
            seed=seed,
            rtol=rtol,
            atol=atol,
            torch_fn=torch_fn,
            jax_fn=jax_fn,
            resolve=resolve,
            pitfalls=pitfalls,
        )


def _check_layer(layer, inputs, *, direction, params, wrt, names, **options):
    __tracebackhide__ = True
    layer = _as_layer(layer)
    _calls_for(layer)
    if isinstance(inputs, np.ndarray) or np.isscalar(inputs):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise InvalidArgumentType(
            "inputs must be a tuple with one entry per argument of layer.forward, got "
            f"{type(inputs).__name__}"
        )
    if not inputs:
        raise InvalidArgument("inputs is empty; layer.forward needs at least one input")
    for k, x in enumerate(inputs):
        _check_array_like(x, k)
    if direction is not None and not isinstance(direction, (tuple, list)):
        direction = as_cotangent(direction, None, "direction")
    elif direction is not None:
        direction = type(direction)(
            as_cotangent(d, None, f"direction[{k}]") for k, d in enumerate(direction)
        )
    seed = check_seed(options["seed"])
    s = _Session(layer, inputs, seed)
    n = len(s.inputs)
    wrt = _parse_wrt(wrt, n)
    all_names = _input_names(s.calls.signature_of, n, names)
    explicit = None
    if params is not None and s.calls.kind == "functions":
        raise InvalidArgument(
            "params= does not apply to (forward, backward) functions: their parameters are "
            "inputs; pass them in inputs and their gradients are checked like the others"
        )
    if params is not None:
        explicit = explicit_params(params, s.template, s.calls.kind == "network")
        texts = list(params.values()) if isinstance(params, dict) else []
        for p, text in zip(explicit, texts, strict=False):
            p.extra["grad_text"] = text

    out = s.settle_randomness()
    if isinstance(direction, (tuple, list)):
        direction = _flatten_direction(direction, getattr(s.calls, "shapes", None))
    _decide_loss(s, out, direction)
    dout = _dout(s, out, direction)
    found = s.discover(out, dout, explicit) if s.calls.kind != "functions" else []
    if not found and explicit is None and s.calls.kind != "functions":
        _try_lazy(s, dout)

    name_params(s.params, set(all_names))
    # One forward and backward: which inputs have gradients, and hygiene.
    obj, ret, returned = s.evaluate(None, s.xs(), dout, all_names)
    if s.calls.kind == "network":
        wrt = ()
    elif wrt is None:
        n_ret = len(_returned(ret))
        if n_ret > n:
            raise UserFunctionError(
                f"{s.backward_name} returned {n_ret} gradients, but forward takes {n} inputs"
            )
        wrt = tuple(range(n_ret))
        floats = tuple(k for k in range(n) if _is_float(s.inputs[k]))
        if len(floats) == n_ret and any(not _is_float(s.inputs[k]) for k in wrt):
            wrt = floats  # word_embedding_backward returns dW only: W is the one float input
    for k in wrt:
        if not _is_float(s.inputs[k]):
            what = (
                f"dtype {s.inputs[k].dtype}"
                if isinstance(s.inputs[k], np.ndarray)
                else f"type {type(s.inputs[k]).__name__}"
            )
            raise InvalidArgument(
                f"input {k} has {what}, but the gradients "
                f"backward returns are taken to belong to inputs {list(wrt)}; integer inputs "
                "(labels) cannot be differentiated. Pass wrt= to say which inputs the "
                "returned gradients belong to"
            )
    if not wrt and not s.params:
        raise InvalidArgument(
            f"nothing to check: {s.backward_name} returned no input gradient and no "
            "parameter with a gradient was found; pass params={'W': 'dW', ...}"
        )
    in_names = [all_names[k] for k in wrt]
    n_in = len(wrt)
    s.wrt, s.piece_names = wrt, in_names + [p.name for p in s.params]
    first = s.pieces(obj, ret, returned)
    _accumulation(s, obj, first, dout)
    if s.reset is not None:
        obj, ret, returned = s.evaluate(None, s.xs(), dout, all_names, record=False)
        first = s.pieces(obj, ret, returned)
    _second_forward(s, out, first, dout)

    problems = []
    if s.calls.loss:
        direction = 1.0 if direction is None else direction

    def full_inputs(args):
        xs = s.xs()
        for k, a in zip(wrt, args[:n_in], strict=True):
            xs[k] = np.array(a, copy=True)
        return xs

    def fn(*args):
        obj = s.fresh(args[n_in:])[0]
        s.before_forward(obj)
        return s.calls.forward(obj, full_inputs(args))

    def vjp(cot, *args):
        xs = full_inputs(args)
        dout = None if s.calls.loss else cot
        obj, ret, returned = s.evaluate(args[n_in:], xs, dout, all_names)
        grads = s.pieces(obj, ret, returned)
        if s.calls.loss:
            scale = float(np.asarray(cot))
            grads = [_scaled(g, scale) for g in grads]
        problems[:] = list(s.problems.values())
        return tuple(grads)

    fn.__name__ = f"{s.name}.{'loss' if s.calls.kind == 'network' else 'forward'}"
    vjp.__name__ = f"{s.name}.{s.backward_name.split('.')[-1]}"
    problems[:] = list(s.problems.values())
    check_inputs = tuple([inputs[k] for k in wrt] + [p.array for p in s.params])
    report = run(
        VJP,
        fn,
        vjp,
        check_inputs,
        direction=direction,
        names=s.piece_names,
        kind="check_layer",
        problems=problems,
        **options,
    )
    _finish(s, report, all_names, direction)
    for p, message in s.unwritten:
        if p.name in report.failed_inputs:
            raise UserFunctionError(
                f"{message} (zeros), and the numerics say the gradient of {p.name} is not 0 here"
            )
        report.notes.append(
            f"backward left {s._where(p)}, the gradient of {p.name}, at the zeros it held before "
            "backward: it was compared as a gradient of 0"
        )
    return report


def _lazy_suspected(s, dout):
    """Did one forward and backward create arrays that have gradients next to them?"""
    before = {path for path, v in walk(s.template) if isinstance(v, np.ndarray)}
    obj, xs = s.fresh()[0], s.xs()
    s.forward(obj, xs)
    _, returned = s.backward(obj, xs, None if dout is None else dout.copy())
    for path, value in walk(obj):
        if (
            not isinstance(value, np.ndarray)
            or value.dtype.kind != "f"
            or path in before
            or is_private(path)
        ):
            continue
        options = network_keys(path) if s.calls.kind == "network" else partner_paths(path)
        if any(s.calls.gradient(obj, returned, _Probe(q)) is not _MISSING for q in options):
            return True
    return False


def _try_lazy(s, dout):
    """Parameters created by the first forward (numpy-ml's lazy init): take them from a warm copy.

    The warm copy ran one forward at the inputs (and its gradient reset, if it
    has one, which also clears what that forward cached).
    """
    if not _lazy_suspected(s, dout):
        return
    warm = s.fresh()[0]
    s.forward(warm, s.xs())
    for method in RESET_METHODS:
        if callable(getattr(warm, method, None)):
            call_user(getattr(warm, method), [], f"layer.{method}")
            break
    cold = s.template
    s.template = warm
    s.rngs = rng_states(warm)
    if s.discover(s.forward(s.fresh()[0], s.xs()), dout, None):
        s.notes.append(
            f"{s.name} creates its parameters in its first forward: they were taken from a copy "
            "after one forward at the given inputs"
        )
    else:
        s.template, s.params, s.rngs = cold, [], rng_states(cold)


def _adds_again(before, first, again):
    """True when ``again - first`` is ``first - before``: the same gradient added once more."""
    step1, step2 = first - before, again - first
    scale = max(
        float(np.max(np.abs(first), initial=0.0)), float(np.max(np.abs(again), initial=0.0))
    )
    return bool(np.any(step1 != 0)) and bool(np.all(np.abs(step2 - step1) <= 1e-9 * scale + 1e-300))


def _accumulation(s, obj, first, dout):
    """Call backward a second time after one forward: nothing may change, nothing may grow.

    A gradient that changes by the same amount again accumulates (``self.dW
    += ...``); a layer with a reset method does that by design and is reset
    before every evaluation. Any other change means backward changes the
    state it reads.
    """
    names, n_in = s.piece_names, len(s.wrt)
    before = list(s.grads_before)
    grown_before = sizes(obj)
    try:
        ret, returned = s.backward(obj, s.xs(), None if dout is None else dout.copy())
        again = s.pieces(obj, ret, returned)
    except UserFunctionError:
        s.notes.append(
            f"{s.backward_name} cannot run twice after one forward, so accumulation across "
            "calls was checked with two forward-backward pairs"
        )
        try:
            obj, ret, returned = s.evaluate(None, s.xs(), dout, [], record=False)
            first = s.pieces(obj, ret, returned)
            before = [np.array(g, copy=True) for g in first[n_in:]]
            if s.calls.kind != "network":
                s.forward(obj, s.xs())
            ret, returned = s.backward(obj, s.xs(), None if dout is None else dout.copy())
            again = s.pieces(obj, ret, returned)
        except UserFunctionError:
            return
        grown_before = None
    accumulates, changes = [], []
    for k, (a, b) in enumerate(zip(first, again, strict=True)):
        bad, diff, scale = differs(a, b)
        if not bad:
            continue
        if k >= n_in and _adds_again(before[k - n_in], a, b):
            accumulates.append((names[k], diff, scale))
        else:
            changes.append((names[k], diff, scale))
    reset = next((m for m in RESET_METHODS if callable(getattr(s.template, m, None))), None)
    if accumulates and reset is not None:
        s.reset = reset
        s.notes.append(
            f"{s.backward_name} accumulates gradients by design (a second call adds to "
            f"{', '.join(n for n, _, _ in accumulates)} again); layer.{reset}() was called before "
            "every evaluation"
        )
    else:
        for name, diff, scale in accumulates:
            s.record(
                ("accumulates", name),
                f"{s.backward_name} accumulates into the gradient of {name}: a second call after "
                f"one forward added it again (a change of up to {diff:.3g}, at scale "
                f"{scale:.3g}); it adds to the stored gradient (self.dW += ...) instead of setting "
                "it, so every call after the first returns a wrong gradient. Set it (self.dW = "
                "...), or give the layer a zero_grad() that resets it",
            )
    for name, diff, scale in changes:
        s.record(
            ("changes", name),
            f"a second {s.backward_name} after one forward returned another gradient of {name} "
            f"(by up to {diff:.3g}, at scale {scale:.3g}): backward changes the state it reads "
            "(writes into its cache?), so calling it again gives another answer",
        )
    if grown_before is not None:
        for path, n_after in sizes(obj).items():
            n_before = grown_before.get(path)
            if n_before is not None and n_after > n_before:
                s.record(
                    ("grows", path),
                    f"{s.backward_name} grows {render(path)} ({n_before} -> {n_after} entries "
                    "on a second call after one forward): the layer's state must not grow "
                    "with every backward",
                )


def _second_forward(s, out, first, dout):
    """Forward with another input, then with the inputs: the same as on a fresh layer?"""
    accumulating = any(k[0] == "accumulates" for k in s.problems)
    # The output to compare with, from a fresh layer as the attempts make it: ``out`` was
    # computed before the parameters were found, in their own dtype, and the attempts run
    # with float64 copies of them (a float32 layer's two outputs differ by its rounding).
    out = s.forward(s.fresh()[0], s.xs()) if s.params else out

    def attempt(state_reset):
        obj = s.fresh()[0]
        other = _other_inputs(s.xs())
        if state_reset:
            call_user(getattr(obj, state_reset), [], f"layer.{state_reset}")
        if s.calls.kind != "network":
            s.forward(obj, other)
        s.backward(obj, other, None if dout is None else dout.copy())
        if s.reset is not None:
            call_user(getattr(obj, s.reset), [], f"layer.{s.reset}")
        if state_reset:
            call_user(getattr(obj, state_reset), [], f"layer.{state_reset}")
        out2 = s.forward(obj, s.xs())
        ret, returned = s.backward(obj, s.xs(), None if dout is None else dout.copy())
        return out2, s.pieces(obj, ret, returned)

    try:
        out2, again = attempt(None)
    except UserFunctionError as exc:
        s.notes.append(
            f"a second forward on one layer object, with another input, could not be checked: {exc}"
        )
        return
    bad_out = differs(out, out2)[0]
    bad = [n for n, a, b in zip(s.piece_names, first, again, strict=True) if differs(a, b)[0]]
    if accumulating:
        bad = []
    if not bad_out and not bad:
        return
    reset = next((m for m in STATE_RESETS if callable(getattr(s.template, m, None))), None)
    if reset is not None:
        try:
            out3, again3 = attempt(reset)
            ok = not differs(out, out3)[0] and not any(
                differs(a, b)[0] for a, b in zip(first, again3, strict=True)
            )
        except UserFunctionError:
            ok = False
        if ok:
            s.notes.append(
                f"{s.name} carries state from one forward to the next (stateful by design); "
                f"each evaluation ran on a fresh copy, and layer.{reset}() made a second "
                "forward agree with the first"
            )
            return
    what = "output" if bad_out else "gradients of " + ", ".join(bad)
    s.record(
        ("second forward",),
        f"{s.calls.forward_name} keeps state from an earlier call: after a forward with another "
        f"input, a forward and backward at the inputs gave another {what} than on a fresh "
        "layer (an input cached only on the first call, a buffer or result reused?). A layer "
        "must give the same answer however often it was called before",
    )


def _finish(s, report, all_names, direction):
    wrt = s.wrt
    if s.params:
        source = s.calls.source if s.calls.kind == "network" else None
        where = describe(s.params, source)
        report.notes.insert(0, f"parameters checked: {where}")
        report.context["parameters"] = where
    report.notes.extend(n for n in s.notes if n not in report.notes)
    fixed = [k for k in range(len(s.inputs)) if k not in wrt]
    if fixed:
        report.notes.append(
            "held fixed (not differentiated): " + ", ".join(all_names[k] for k in fixed)
        )
    report.context = {"layer": s.name, **report.context}
    if s.calls.kind == "network":
        report.context["direction"] = (
            f"{direction} (a network: "
            f"{s.backward_name}(...) as its author calls it, scaled by the cotangent)"
        )
    elif s.calls.kind == "functions" and s.calls.loss:
        report.notes.append(
            f"{s.name} is a loss function returning (loss, gradient): its gradient was scaled by "
            "the cotangent"
        )
        report.context["direction"] = "1.0 (a loss function returning (loss, gradient))"
    elif s.calls.loss:
        call = s.calls.call_description(s.name)
        report.notes.append(
            f"{s.name} is a loss layer (forward returns a scalar, backward takes "
            f"{'no upstream gradient' if s.calls.style == 'none' else 'a defaulted dout'}): "
            f"checked as its author calls it, {call}, with the gradients scaled by the cotangent"
        )
        report.context["direction"] = f"1.0 (loss layer: {call})"
    if s.reset is not None:
        report.context["reset"] = f"layer.{s.reset}() before every evaluation"


def assert_layer(layer: Any, inputs: Sequence[ArrayLike] | ArrayLike, **options: Any) -> Report:
    """Like :func:`check_layer`, but raise :class:`~oracles.errors.GradientMismatch` when it fails.

    Returns the report when the check passes; the exception's message is
    the readable report and ``exc.report`` the report object.

    Examples
    --------
    >>> import numpy as np
    >>> class Square:
    ...     def forward(self, x):
    ...         self._x = x
    ...         return x**2
    ...     def backward(self, dout):
    ...         return dout * self._x  # forgot the factor 2
    >>> assert_layer(Square(), (np.array([1.0, 2.0]),))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    oracles.errors.GradientMismatch: check_layer: FAILED: 2 of 2 elements of ... x disagree ...
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_layer(layer, inputs, **options))
