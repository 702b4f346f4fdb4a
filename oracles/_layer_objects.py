"""Paths into a layer object, walking its state, and copying it with new parameters.

A layer keeps what matters wherever its author put it: attributes
(``self.W``), ``__slots__``, dicts (``self.params['W']``), lists
(``self.grads[0]``), other layer objects (``self.layers['Affine1'].W``).
A *path* names one such place from the layer itself, as a tuple of steps
``("attr", name)`` or ``("item", key)``; :func:`render` writes it the way the
user would (``layer.layers['Affine1'].W``).

:func:`walk` visits every value reachable from the layer through those
containers (never into NumPy arrays, modules, functions or classes), so the
same array can be found under several paths: a network's ``params['W1']`` is
the very array its first layer holds as ``W``. :func:`copy_with` deep-copies
the layer while putting new arrays in place of given ones *everywhere* they
occur, which keeps such aliases aliased on the copy.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import sys
import types

import numpy as np
from numpy.lib.array_utils import byte_bounds

from oracles.errors import InvalidArgument

__all__ = [
    "Copier",
    "copy_with",
    "follow",
    "memory_order",
    "relink_views",
    "view_of",
    "is_private",
    "parse_path",
    "render",
    "resolve",
    "rng_states",
    "restore_rngs",
    "sizes",
    "walk",
]

#: How deep :func:`walk` goes (layer -> dict of layers -> layer -> dict -> array is 4).
MAX_DEPTH = 8

#: At most this many entries of one list, tuple or dict are visited.
MAX_ITEMS = 1000

_MISSING = object()

_SKIP_TYPES = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    np.ndarray,
    np.generic,
    np.random.Generator,
    np.random.RandomState,
    np.random.BitGenerator,
    str,
    bytes,
)

_FOREIGN_MODULES = ("builtins", "numpy", "scipy", "torch", "jax", "collections", "functools")


def render(path, root="layer"):
    """``("attr", "params"), ("item", "W")`` -> ``"layer.params['W']"``."""
    text = root
    for kind, key in path:
        text += f".{key}" if kind == "attr" else f"[{key!r}]"
    return text


def resolve(obj, path, default=_MISSING):
    """The value at ``path`` in ``obj``; ``default`` (or LookupError) when it is not there."""
    for kind, key in path:
        try:
            obj = getattr(obj, key) if kind == "attr" else obj[key]
        except (AttributeError, LookupError, TypeError):
            if default is _MISSING:
                raise LookupError(render(path)) from None
            return default
    return obj


def is_private(path):
    """True when a step of ``path`` is an attribute whose name starts with an underscore."""
    return any(kind == "attr" and str(key).startswith("_") for kind, key in path)


def parse_path(text, what):
    """``"W"``, ``"params['W']"``, ``"layers[0].W"`` -> a path; InvalidArgument otherwise.

    A leading ``layer.`` is allowed (``"layer.params['W']"``).
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"{what} must be an attribute name or a path, got {text!r}")
    rest = text[len("layer.") :] if text.startswith("layer.") else text
    path, i = [], 0
    while i < len(rest):
        if rest[i] == ".":
            i += 1
            continue
        if rest[i] == "[":
            end = rest.find("]", i)
            if end < 0:
                raise InvalidArgument(f"{what} {text!r}: a '[' is not closed")
            inner = rest[i + 1 : end].strip()
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                path.append(("item", inner[1:-1]))
            else:
                try:
                    path.append(("item", int(inner)))
                except ValueError:
                    raise InvalidArgument(
                        f"{what} {text!r}: [{inner}] must be a quoted key or an integer index"
                    ) from None
            i = end + 1
            continue
        j = i
        while j < len(rest) and rest[j] not in ".[":
            j += 1
        name = rest[i:j]
        if not name.isidentifier():
            raise InvalidArgument(f"{what} {text!r}: {name!r} is not an attribute name")
        path.append(("attr", name))
        i = j
    return tuple(path)


def _is_user_object(value):
    if isinstance(value, _SKIP_TYPES) or inspect.isroutine(value):
        return False
    module = getattr(type(value), "__module__", "") or ""
    if module.split(".")[0] in _FOREIGN_MODULES:
        return False
    return hasattr(value, "__dict__") or _slot_names(type(value))


def _slot_names(cls):
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names += [s for s in slots if s not in ("__dict__", "__weakref__") and s not in names]
    return names


def attributes(obj):
    """``(name, value)`` for the instance attributes of ``obj``: its ``__dict__`` and slots."""
    out = []
    try:
        out += list(vars(obj).items())
    except TypeError:
        pass
    for name in _slot_names(type(obj)):
        if name.startswith("__"):
            continue  # name-mangled; not something a user names
        value = getattr(obj, name, _MISSING)
        if value is not _MISSING and all(name != n for n, _ in out):
            out.append((name, value))
    return out


def _children(value):
    if isinstance(value, dict):
        items = [(("item", k), v) for k, v in value.items() if isinstance(k, (str, int))]
    elif isinstance(value, (list, tuple)):
        items = [(("item", k), v) for k, v in enumerate(value)]
    elif _is_user_object(value):
        items = [(("attr", k), v) for k, v in attributes(value) if not k.startswith("__")]
    else:
        return []
    return items[:MAX_ITEMS]


def walk(obj):
    """``(path, value)`` for every value reachable from ``obj`` (depth first, in order).

    Containers and objects are entered once (the first path that reaches
    them); arrays are reported under every path, so aliases show up.
    """
    seen = {id(obj)}
    out = []

    def visit(value, path):
        for step, child in _children(value):
            child_path = (*path, step)
            out.append((child_path, child))
            if len(child_path) < MAX_DEPTH and id(child) not in seen and _children(child):
                seen.add(id(child))
                visit(child, child_path)

    visit(obj, ())
    return out


def sizes(obj):
    """``{path: len}`` of every list and dict reachable from ``obj`` (to see state grow)."""
    return {p: len(v) for p, v in walk(obj) if isinstance(v, (list, dict))}


def rng_states(obj):
    """``{path: state}`` of every NumPy Generator and RandomState reachable from ``obj``."""
    states = {}
    for path, value in walk(obj):
        if isinstance(value, np.random.Generator):
            states[path] = copy.deepcopy(value.bit_generator.state)
        elif isinstance(value, np.random.RandomState):
            states[path] = value.get_state()
    return states


def restore_rngs(obj, states):
    """Put every generator of ``obj`` listed in ``states`` back into its recorded state."""
    for path, state in states.items():
        value = resolve(obj, path, None)
        if isinstance(value, np.random.Generator):
            value.bit_generator.state = copy.deepcopy(state)
        elif isinstance(value, np.random.RandomState):
            value.set_state(state)


def copy_with(template, substitutes=None):
    """A deep copy of ``template`` in which ``substitutes`` (``{id(old): new}``) replace arrays.

    Every reference to an old array, under any path, becomes a reference to
    its new array on the copy, so arrays shared between places stay shared.
    """
    memo = dict(substitutes or {})
    try:
        return copy.deepcopy(template, memo)
    except Exception as exc:  # noqa: BLE001 - whatever the user's object raises
        raise InvalidArgument(
            f"layer ({type(template).__name__}) cannot be deep-copied ({type(exc).__name__}: "
            f"{exc}); check_layer runs every evaluation on a copy so that your layer is never "
            "changed"
        ) from exc


class _Pickler(pickle.Pickler):
    def __init__(self, file, ids):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._ids = ids

    def persistent_id(self, obj):
        if isinstance(obj, np.ndarray):
            return self._ids.get(id(obj))
        # Pickling a class by reference imports its module: never import anything as a side
        # effect of a check. Objects from modules not imported yet go to deepcopy instead.
        by_reference = isinstance(obj, type) or inspect.isroutine(obj)
        module = getattr(obj, "__module__", None) if by_reference else type(obj).__module__
        if module is not None and module not in sys.modules:
            raise pickle.PicklingError(f"{module} is not imported")
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, values):
        super().__init__(file)
        self._values = values

    def persistent_load(self, pid):
        return self._values[pid]


class Copier:
    """Fresh copies of ``template`` with ``arrays`` replaced, fast.

    The same result as :func:`copy_with` (every reference to ``arrays[k]``
    becomes ``values[k]``), built by unpickling one pickle of the template,
    several times faster than ``copy.deepcopy`` of an object graph. Layers
    that cannot be pickled (a lambda attribute, a class defined inside a
    function) are deep-copied instead.
    """

    def __init__(self, template, arrays):
        self.template = template
        self.arrays = list(arrays)
        self.data = None
        ids = {id(a): k for k, a in enumerate(self.arrays)}
        try:
            buffer = io.BytesIO()
            _Pickler(buffer, ids).dump(template)
            self.data = buffer.getvalue()
            self.copy([np.array(a, copy=True) for a in self.arrays])
        except Exception:  # noqa: BLE001 - anything pickle refuses: deepcopy handles it
            self.data = None

    def copy(self, values):
        if self.data is not None:
            return _Unpickler(io.BytesIO(self.data), list(values)).load()
        return copy_with(
            self.template, {id(a): v for a, v in zip(self.arrays, values, strict=True)}
        )


# --- views: an array that is a view of another (self.WT = self.W.T) ------------------------------


def _chain(a):
    """``(ultimate base, number of .base steps)`` of an array."""
    depth = 0
    while isinstance(a.base, np.ndarray):
        a, depth = a.base, depth + 1
    return a, depth


def view_of(a, arrays):
    """The position in ``arrays`` of the array whose memory ``a`` views, or None.

    The viewed array is the one closer to the memory's owner, so of ``W`` and
    ``W.T`` the transpose is the view.
    """
    base, depth = _chain(a)
    if base is a:
        return None
    lo, hi = byte_bounds(a)
    for k, q in enumerate(arrays):
        if q is a or q.dtype != a.dtype:
            continue
        q_base, q_depth = _chain(q)
        if q_base is not base or q_depth >= depth:
            continue
        q_lo, q_hi = byte_bounds(q)
        if q_lo <= lo and hi <= q_hi:
            return k
    return None


def follow(view, owner, new_owner):
    """``view`` rebuilt on ``new_owner`` (in place of ``owner``): the same offset and strides."""
    ratio = new_owner.itemsize // owner.itemsize
    offset = view.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
    return np.ndarray(
        view.shape,
        new_owner.dtype,
        buffer=new_owner.reshape(-1, order="A"),
        offset=offset * ratio,
        strides=tuple(st * ratio for st in view.strides),
    )


def memory_order(a):
    """The order to build a stand-in of ``a`` in, so that views of ``a`` can follow it."""
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def _assign(obj, path, value):
    parent = resolve(obj, path[:-1])
    kind, key = path[-1]
    if kind == "attr":
        setattr(parent, key, value)
    else:
        parent[key] = value  # a tuple refuses: TypeError, left to the caller


def relink_views(original, duplicate):
    """Make the views of ``original`` views again on its ``duplicate`` (a deep copy breaks them).

    ``original`` is only read. Views that cannot be re-linked (inside a
    tuple, of a non-contiguous array) stay copies.
    """
    found = [(p, v) for p, v in walk(original) if isinstance(v, np.ndarray)]
    arrays = [v for _, v in found]
    for path, a in found:
        k = view_of(a, arrays)
        if k is None:
            continue
        owner_path, owner = found[k]
        if not (owner.flags.c_contiguous or owner.flags.f_contiguous):
            continue
        new_owner = resolve(duplicate, owner_path, None)
        if not isinstance(new_owner, np.ndarray) or new_owner.strides != owner.strides:
            continue
        try:
            _assign(duplicate, path, follow(a, owner, new_owner))
        except (TypeError, LookupError, AttributeError):
            continue
