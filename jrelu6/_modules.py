"""What the linen and nnx modules share: which function each wraps, with which settings.

A module here carries configuration only (no parameters, no state). Each
framework's wrapper declares the settings in its own idiom (dataclass fields
for linen, a keyword-only ``__init__`` for nnx) and forwards them to the
function through :func:`apply`, so the two can never compute differently.
Likewise :func:`hits` counts, for both, the inputs on the kinks of the relu6
each module applies (see :mod:`jrelu6._diagnostics`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from jrelu6 import _diagnostics, _functions


class Spec(NamedTuple):
    """An activation module: its function, the names of its settings, and
    ``shift``, what the function adds to ``x`` before its relu6."""

    function: Callable[..., jax.Array]
    settings: tuple[str, ...]
    shift: float = 0.0


SPECS: Mapping[str, Spec] = {
    "ReLU6": Spec(_functions.relu6, ("grad_at_zero", "grad_at_six")),
    "CappedReLU": Spec(_functions.capped_relu, ("cap", "grad_at_zero", "grad_at_cap")),
    "HardSigmoid": Spec(_functions.hard_sigmoid, ("grad_at_zero", "grad_at_six"), shift=3.0),
    "HardSwish": Spec(_functions.hard_swish, ("grad_at_zero", "grad_at_six"), shift=3.0),
}


def _spec(module: Any) -> Spec:
    """The spec of ``module``'s class, or of the jrelu6 class it subclasses."""
    for cls in type(module).__mro__:
        if cls.__module__ in ("jrelu6._linen", "jrelu6._nnx") and cls.__name__ in SPECS:
            return SPECS[cls.__name__]
    raise TypeError(f"{type(module).__name__} is not a jrelu6 activation module.")


def apply(module: Any, x: Any) -> jax.Array:
    """Calls the function of ``module``'s class with ``module``'s settings."""
    function, settings, _ = _spec(module)
    return function(x, **{name: getattr(module, name) for name in settings})


def hits(module: Any, x: Any) -> _diagnostics.BoundaryHits:
    """Counts the inputs of ``module``'s relu6 that sit exactly on its kinks."""
    _, settings, shift = _spec(module)
    cap = module.cap if "cap" in settings else 6.0
    return _diagnostics.boundary_hits(x, cap=cap, shift=shift)
