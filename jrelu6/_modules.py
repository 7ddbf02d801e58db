"""What the linen and nnx modules share: which function each wraps, with which settings.

A module here carries configuration only (no parameters, no state). Each
framework's wrapper declares the settings in its own idiom (dataclass fields
for linen, a keyword-only ``__init__`` for nnx) and forwards them to the
function through :func:`apply`, so the two can never compute differently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from jrelu6 import _functions


class Spec(NamedTuple):
    """An activation module: its function and the names of its settings."""

    function: Callable[..., jax.Array]
    settings: tuple[str, ...]


SPECS: Mapping[str, Spec] = {
    "ReLU6": Spec(_functions.relu6, ("grad_at_zero", "grad_at_six")),
    "CappedReLU": Spec(_functions.capped_relu, ("cap", "grad_at_zero", "grad_at_cap")),
    "HardSigmoid": Spec(_functions.hard_sigmoid, ("grad_at_zero", "grad_at_six")),
    "HardSwish": Spec(_functions.hard_swish, ("grad_at_zero", "grad_at_six")),
}


def apply(module: Any, x: Any) -> jax.Array:
    """Calls the function of ``module``'s class with ``module``'s settings."""
    function, settings = SPECS[type(module).__name__]
    return function(x, **{name: getattr(module, name) for name in settings})
