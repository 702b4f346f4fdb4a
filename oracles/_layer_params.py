"""Where a layer keeps its parameters and their gradients.

Conventions found in real NumPy layer code, each one a place to look:

* attributes: ``W`` with ``dW`` (or ``grad_W``, ``W_grad``); ``weight`` with
  ``grad_weight``; ``W`` with ``grads['W']``;
* dicts and lists: ``params['W']`` with ``grads['W']``,
  ``parameters['W']`` with ``gradients['W']``, ``params[0]`` with
  ``grads[0]``;
* other layers inside the layer (a network's dict or list of layers), at any
  depth, the same rules applied to each;
* a network's ``gradient(x, t)`` (or ``loss(x, y)``) returning a dict keyed
  like its ``params``.

A *candidate* is a floating-point array reachable from the layer before
anything ran. Forward tells candidates apart: a cache (``self.x``) is assigned
anew by forward; a buffer (a running mean) is written into by forward; a
parameter is only read. A candidate with a gradient next to it is a
parameter; one without a gradient that forward reads is an error that names
it (a ``db`` never stored would otherwise pass unnoticed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from oracles._layer_objects import is_private, parse_path, render, resolve, view_of, walk
from oracles.errors import InvalidArgument, UserFunctionError

__all__ = [
    "GRADIENT_CONTAINERS",
    "GRADIENT_NAMES",
    "Param",
    "candidates",
    "describe",
    "explicit_params",
    "gradient_problem",
    "name_params",
    "partner_paths",
]

#: Attribute names tried for the gradient of an attribute parameter ``P``.
GRADIENT_NAMES = ("d{}", "grad_{}", "{}_grad")

#: Containers (attributes of the same object) tried for the gradient of ``P`` or ``D[K]``.
GRADIENT_CONTAINERS = ("grads", "gradients", "grad", "dparams")

_MISSING = object()


@dataclass
class Param:
    """One parameter: the template's array, every place it lives, where its gradient is."""

    array: np.ndarray
    slots: list
    grad: object = None  # a path on the layer, or a key of the dict a network returns
    name: str = ""
    explicit: bool = False
    modified_by_forward: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def where(self):
        return render(self.slots[0])


def _container_names(dict_name):
    own = (f"d{dict_name}", f"grad_{dict_name}", f"{dict_name}_grad", f"{dict_name}_grads")
    return own + GRADIENT_CONTAINERS


def is_gradient_container(name):
    """True for attribute names that hold gradients (``grads``, ``gradients``, ``dparams``...)."""
    name = str(name)
    return (
        name in GRADIENT_CONTAINERS
        or name.startswith("grad_")
        or name.endswith(("_grad", "_grads"))
    )


def partner_paths(slot):
    """Paths where the gradient of the parameter at ``slot`` may be stored, most likely first."""
    slot = tuple(slot)
    last_attr = max((i for i, (kind, _) in enumerate(slot) if kind == "attr"), default=None)
    if last_attr is None:
        return []
    owner, (_, name), items = slot[:last_attr], slot[last_attr], slot[last_attr + 1 :]
    out = []
    if not items:  # an attribute: W -> dW, grad_W, W_grad, grads['W'], grads['dW']
        out += [(*owner, ("attr", p.format(name))) for p in GRADIENT_NAMES]
        out += [
            (*owner, ("attr", c), ("item", k))
            for c in GRADIENT_CONTAINERS
            for k in (name, f"d{name}")
        ]
        return out
    # an entry of a container: params['W'] -> grads['W'], grads['dW'], dW; params[0] -> grads[0]
    *outer, (_, key) = items
    keys = [key] + ([f"d{key}"] if isinstance(key, str) else [])
    out += [
        (*owner, ("attr", c), *outer, ("item", k)) for c in _container_names(name) for k in keys
    ]
    if isinstance(key, str) and not outer and key.isidentifier():
        out += [(*owner, ("attr", p.format(key))) for p in GRADIENT_NAMES]
    return out


def network_keys(slot):
    """Keys of a network's returned gradient dict for the parameter at ``slot``."""
    slot = tuple(slot)
    if len(slot) == 1 and slot[0][0] == "attr":
        return [slot[0][1]]
    if len(slot) == 2 and slot[0][0] == "attr" and slot[1][0] == "item":
        return [slot[1][1]]
    return []


def candidates(template):
    """Floating-point arrays reachable from ``template``, grouped by identity, in order found.

    Private attributes (``_x``), anything inside a gradient container
    (``grads``) and attributes named like the gradient of a sibling
    (``dW`` next to ``W``) are left out.
    """
    groups = {}
    values = walk(template)
    present = {p for p, _ in values}
    for path, value in values:
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or is_private(path):
            continue
        if any(kind == "attr" and is_gradient_container(key) for kind, key in path[:-1]):
            continue
        kind, key = path[-1]
        if kind == "attr" and _names_a_gradient(str(key), path[:-1], present):
            continue
        if id(value) in groups:
            groups[id(value)].slots.append(path)
        else:
            groups[id(value)] = Param(array=value, slots=[path])
    for p in groups.values():  # the shortest path names it: net.params['W1'], not a layer's W
        p.slots.sort(key=len)
    found = list(groups.values())
    arrays = [p.array for p in found]
    for p in found:
        k = view_of(p.array, arrays)
        if k is not None:
            p.extra["view_of"] = found[k]
    return found


def _names_a_gradient(name, owner, present):
    for base in (name[1:], name[5:] if name.startswith("grad_") else None):
        if (
            base
            and (*owner, ("attr", base)) in present
            and name in {p.format(base) for p in GRADIENT_NAMES}
        ):
            return True
    if name.endswith("_grad") and (*owner, ("attr", name[:-5])) in present:
        return True
    return False


def explicit_params(params, template, network):
    """``params=`` as a list of :class:`Param` (``grad`` None: look it up after backward)."""
    from oracles.errors import InvalidArgumentType

    if isinstance(params, str):
        raise InvalidArgumentType(
            f"params must be a dict {{parameter: gradient attribute}} or a sequence of parameter "
            f"names, got the string {params!r}; write [{params!r}]"
        )
    if isinstance(params, dict):
        pairs = list(params.items())
    else:
        try:
            pairs = [(p, None) for p in params]
        except TypeError as exc:
            raise InvalidArgumentType(
                "params must be a dict {parameter: gradient attribute} or a sequence of "
                f"parameter names, got {type(params).__name__}"
            ) from exc
    out = []
    everywhere = walk(template)
    for p, g in pairs:
        if not isinstance(p, str) or (g is not None and not isinstance(g, str)):
            raise InvalidArgumentType(
                f"params must map attribute names (str) to attribute names (str), got {p!r}: {g!r}"
            )
        path = parse_path(p, "params")
        value = resolve(template, path, _MISSING)
        if value is _MISSING:
            raise InvalidArgument(f"params names {p!r}, but the layer has no attribute {p!r}")
        kind = np.asarray(value).dtype.kind if isinstance(value, np.ndarray) else "O"
        if kind not in "fiu":
            raise InvalidArgument(
                f"params names {p!r}, but {render(path)} is not a numeric NumPy array "
                f"({type(value).__name__})"
            )
        for other in out:
            if other.array is value:
                raise InvalidArgument(
                    f"params names {render(other.slots[0])} and {render(path)}, which are one "
                    "array (the same object): one parameter, with one gradient (the sum over its "
                    "uses); name it once"
                )
        slots = [path] + [q for q, v in everywhere if v is value and q != path]
        grad = None if g is None else (g if network else parse_path(g, "params"))
        out.append(Param(array=value, slots=slots, grad=grad, explicit=True))
    return out


def gradient_problem(value, param, where):
    """Why ``value`` (found at ``where``) cannot be the gradient of ``param``; None if it can."""
    shape = param.array.shape
    expected = f"expected a NumPy array of shape {shape}, like {param.where}"
    if value is None:
        return f"{where} is None after backward: backward never set the gradient of {param.where}"
    if isinstance(value, (list, tuple)):
        return (
            f"{where} is a {type(value).__name__}, not a NumPy array ({expected}); an "
            "optimizer step such as W -= lr * dW fails or goes wrong with it"
        )
    if not isinstance(value, (np.ndarray, np.generic, float, int)) or isinstance(value, bool):
        return f"{where} is a {type(value).__name__}; {expected}"
    arr = np.asarray(value)
    if arr.dtype.kind == "c":
        return f"{where} holds complex values (dtype {arr.dtype}); {expected}, of real numbers"
    if arr.dtype.kind not in "fiu":
        return f"{where} has dtype {arr.dtype}; {expected}"
    if not isinstance(value, np.ndarray) and shape != ():
        return f"{where} is a scalar ({type(value).__name__}); {expected}"
    if arr.shape != shape:
        hint = ""
        if arr.ndim == 2 and arr.shape == shape[::-1]:
            hint = " It is the transpose: for out = x @ W, dW = x.T @ dout, not dout.T @ x."
        elif arr.size == int(np.prod(shape, dtype=np.int64)):
            hint = " It has the right number of elements: reshape it to the parameter's shape."
        return f"{where} has shape {arr.shape}, but {param.where} has shape {shape}.{hint}"
    return None


def name_params(params, taken):
    """Give every parameter a report name: its attribute or key, or its path when that clashes."""
    leaves = []
    for p in params:
        _, key = p.slots[0][-1]
        # params[0] is named by its path: "0" alone says nothing
        leaves.append(key if isinstance(key, str) else render(p.slots[0], root="")[1:])
    for p, leaf in zip(params, leaves, strict=True):
        clash = leaves.count(leaf) > 1 or leaf in taken
        p.name = render(p.slots[0], root="")[1:] if clash else leaf


def _join(names):
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def describe(params, network_source=None):
    """Where the parameters were found: ``"W and b from layer.parameters and layer.gradients"``.

    Parameters kept in one container with their gradients in another are
    grouped; attributes are listed one by one with their gradient.
    """
    groups, singles = {}, []
    for p in params:
        slot = p.slots[0]
        param_box = render(slot[:-1]) if slot[-1][0] == "item" else None
        if network_source is not None:
            grad_box, grad_where = network_source, network_source
        else:
            grad_where = render(p.grad)
            grad_box = render(p.grad[:-1]) if p.grad[-1][0] == "item" else None
        if param_box is not None and grad_box is not None:
            groups.setdefault((param_box, grad_box), []).append(p.name)
        else:
            singles.append(f"{p.name} ({render(slot)}, gradient {grad_where})")
    parts = [f"{_join(names)} from {pb} and {gb}" for (pb, gb), names in groups.items()]
    return "; ".join(parts + singles)


def missing_gradient_error(unread, network, who_forward, who_backward):
    """The error for parameters forward reads but whose gradient is nowhere to be found."""
    lines = []
    for p in unread:
        if network:
            keys = [k for s in p.slots for k in network_keys(s)]
            looked = (
                f"a key {keys[0]!r} in the dict {who_backward} returns"
                if keys
                else (f"a key for it in the dict {who_backward} returns")
            )
        else:
            looked = ", ".join(render(q) for q in partner_paths(p.slots[0])[:4])
        lines.append(
            f"{who_forward} reads {p.where} (shape {p.array.shape}), but after backward there is "
            f"no gradient for it (looked for {looked})"
        )
    return UserFunctionError(
        "; ".join(lines)
        + ". Store the gradient there, or, if it is a constant and not a parameter, pass "
        "params= naming the parameters to check (params={} checks the input gradient only)"
    )
