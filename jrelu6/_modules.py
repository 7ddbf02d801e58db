"""What the linen and nnx activation modules share: one declaration per activation.

Each activation is declared once here, as an :class:`Activation`: the function
it wraps, its settings (name, default, type), its learnable parameters if any,
and where its relu6 kinks sit (for the kink-hit counts). The linen and nnx
classes are written out in :mod:`jrelu6._linen` and :mod:`jrelu6._nnx` (so
type checkers and IDEs see their fields and keywords) and carry their
declaration as the class attribute ``activation``, which :func:`apply` and
:func:`hits` read; a subclass inherits it. So linen and nnx cannot compute
differently, and the tests check that each class's fields (linen) and
keywords (nnx) are exactly its declaration's settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jrelu6 import _diagnostics, _functions, _quant


class Setting(NamedTuple):
    """One keyword of a module: its name, default and type."""

    name: str
    default: Any
    type: type


class Activation(NamedTuple):
    """An activation module's declaration, shared by its linen and nnx classes.

    Attributes:
      function: the jrelu6 function the module applies.
      settings: its keywords (the class's fields, in order), forwarded to
        ``function`` as they are, except those named in ``parameters``.
      parameters: learnable parameters, ``{name: setting}``: the parameter
        ``name`` (a keyword of ``function``) starts at the value of the
        setting. Empty for configuration-only modules.
      shift: what the function adds to ``x`` before its relu6, for
        :func:`hits`; None if it has no relu6 (nothing is recorded).
    """

    function: Callable[..., jax.Array]
    settings: tuple[Setting, ...]
    parameters: Mapping[str, str] = {}
    shift: float | None = 0.0


_KINKS = (Setting("grad_at_zero", 0.0, float), Setting("grad_at_six", 0.0, float))
_QUANT = (
    Setting("num_bits", 8, int),
    Setting("narrow_range", False, bool),
    Setting("scheme", "affine", str),
    *_KINKS,
)

#: Every activation module, by class name.
TABLE: Mapping[str, Activation] = {
    "ReLU6": Activation(_functions.relu6, _KINKS),
    "CappedReLU": Activation(
        _functions.capped_relu,
        (
            Setting("cap", 6.0, float),
            Setting("grad_at_zero", 0.0, float),
            Setting("grad_at_cap", 0.0, float),
        ),
    ),
    "HardSigmoid": Activation(_functions.hard_sigmoid, _KINKS, shift=3.0),
    "HardSwish": Activation(_functions.hard_swish, _KINKS, shift=3.0),
    "QuantizedReLU6": Activation(_quant.quantized_relu6, _QUANT),
    "QuantizedHardSigmoid": Activation(_quant.quantized_hard_sigmoid, _QUANT, shift=3.0),
    "QuantizedHardSwish": Activation(_quant.quantized_hard_swish, _QUANT, shift=3.0),
    "FakeQuant": Activation(
        _quant.fake_quant,
        (
            Setting("init_min", -6.0, float),
            Setting("init_max", 6.0, float),
            Setting("num_bits", 8, int),
            Setting("narrow_range", False, bool),
        ),
        parameters={"min": "init_min", "max": "init_max"},
        shift=None,
    ),
}


def activation_of(module: Any) -> Activation:
    """The declaration of ``module``'s class (inherited by subclasses)."""
    activation = getattr(type(module), "activation", None)
    if not isinstance(activation, Activation):
        raise TypeError(f"{type(module).__name__} is not a jrelu6 activation module.")
    return activation


def initial_value(value: Any) -> jax.Array:
    """A learnable range end's starting value: a float32 scalar."""
    return jnp.asarray(value, jnp.float32)


def apply(module: Any, x: Any, parameters: Mapping[str, Any] | None = None) -> jax.Array:
    """Calls the function of ``module``'s class with its settings and parameters.

    ``parameters`` maps each learnable parameter to its current value; those
    missing start from their settings' values.
    """
    activation = activation_of(module)
    initial = set(activation.parameters.values())
    kwargs = {s.name: getattr(module, s.name) for s in activation.settings if s.name not in initial}
    for name, setting in activation.parameters.items():
        kwargs[name] = (parameters or {}).get(name, getattr(module, setting))
    return activation.function(x, **kwargs)


def hits(module: Any, x: Any) -> _diagnostics.BoundaryHits | None:
    """Counts the inputs of ``module``'s relu6 that sit exactly on its kinks.

    None for a module without a relu6 (nothing to record).
    """
    activation = activation_of(module)
    if activation.shift is None:
        return None
    cap = getattr(module, "cap", 6.0)
    return _diagnostics.boundary_hits(x, cap=cap, shift=activation.shift)
