"""The table of activation modules, shared by :mod:`jrelu6.linen` and :mod:`jrelu6.nnx`.

Each activation is declared once here, as an :class:`Activation`: the function
it wraps, its settings (name, default, type, doc), its learnable parameters if
any, and where its relu6 kinks sit (for the kink-hit counts). The linen and
nnx classes are *built* from that declaration (dataclass fields for linen, a
keyword-only ``__init__`` for nnx) and carry it as the class attribute
``activation``, which :func:`apply` and :func:`hits` read; a subclass inherits
it. So linen and nnx cannot compute differently, and adding an activation
means one entry in :data:`TABLE` and one export line per framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jrelu6 import _diagnostics, _functions, _quant


class Setting(NamedTuple):
    """One keyword of a module: its name, default, type and one-line doc."""

    name: str
    default: Any
    type: type
    doc: str


class Activation(NamedTuple):
    """An activation module, declared once for both frameworks.

    Attributes:
      function: the jrelu6 function the module applies.
      settings: its keywords, forwarded to ``function`` as they are, except
        those named in ``parameters``.
      summary: the formula, for the class docstring.
      parameters: learnable parameters, ``{name: setting}``: the parameter
        ``name`` (a keyword of ``function``) starts at the value of the
        setting. Empty for configuration-only modules.
      shift: what the function adds to ``x`` before its relu6, for
        :func:`hits`; None if it has no relu6 (nothing is recorded).
    """

    function: Callable[..., jax.Array]
    settings: tuple[Setting, ...]
    summary: str
    parameters: Mapping[str, str] = {}
    shift: float | None = 0.0


_G0 = Setting("grad_at_zero", 0.0, float, "the derivative at ``x == 0`` (default 0, as jax.nn).")
_G6 = Setting("grad_at_six", 0.0, float, "the derivative at ``x == 6`` (default 0, as jax.nn).")
_G0_SHIFTED = Setting(
    "grad_at_zero", 0.0, float, "relu6's derivative at its lower kink (x == -3 here)."
)
_G6_SHIFTED = Setting(
    "grad_at_six", 0.0, float, "relu6's derivative at its upper kink (x == 3 here)."
)
_NUM_BITS = Setting("num_bits", 8, int, "the bit width, in [2, 16] (default 8).")
_NARROW = Setting(
    "narrow_range", False, bool, "affine scheme only: levels 1 to 2**num_bits - 1."
)
_SCHEME = Setting("scheme", "affine", str, '``"affine"`` (default) or ``"fixed_point"``.')

#: Every activation module, by class name.
TABLE: Mapping[str, Activation] = {
    "ReLU6": Activation(_functions.relu6, (_G0, _G6), "``min(max(x, 0), 6)``"),
    "CappedReLU": Activation(
        _functions.capped_relu,
        (
            Setting("cap", 6.0, float, "the upper bound, > 0 (default 6: ReLU6)."),
            Setting("grad_at_zero", 0.0, float, "the derivative at ``x == 0`` (default 0)."),
            Setting("grad_at_cap", 0.0, float, "the derivative at ``x == cap`` (default 0)."),
        ),
        "``min(max(x, 0), cap)``",
    ),
    "HardSigmoid": Activation(
        _functions.hard_sigmoid, (_G0_SHIFTED, _G6_SHIFTED), "``relu6(x + 3) / 6``", shift=3.0
    ),
    "HardSwish": Activation(
        _functions.hard_swish, (_G0_SHIFTED, _G6_SHIFTED), "``x * relu6(x + 3) / 6``", shift=3.0
    ),
    "QuantizedReLU6": Activation(
        _quant.quantized_relu6,
        (_NUM_BITS, _NARROW, _SCHEME, _G0, _G6),
        "``relu6(x)`` fake-quantized on [0, 6]",
    ),
    "QuantizedHardSigmoid": Activation(
        _quant.quantized_hard_sigmoid,
        (_NUM_BITS, _NARROW, _SCHEME, _G0_SHIFTED, _G6_SHIFTED),
        "``quantized_relu6(x + 3) / 6``",
        shift=3.0,
    ),
    "QuantizedHardSwish": Activation(
        _quant.quantized_hard_swish,
        (_NUM_BITS, _NARROW, _SCHEME, _G0_SHIFTED, _G6_SHIFTED),
        "``x * quantized_relu6(x + 3) / 6``",
        shift=3.0,
    ),
    "FakeQuant": Activation(
        _quant.fake_quant,
        (
            Setting("init_min", -6.0, float, "the initial lower end of the learnable range."),
            Setting("init_max", 6.0, float, "the initial upper end (> init_min)."),
            _NUM_BITS,
            Setting("narrow_range", False, bool, "if True, levels 1 to 2**num_bits - 1."),
        ),
        "``fake_quant(x, min=min, max=max)`` with ``min`` and ``max`` learnable "
        "parameters (float32 scalars)",
        parameters={"min": "init_min", "max": "init_max"},
        shift=None,
    ),
}


def docstring(activation: Activation, section: str) -> str:
    """The class docstring: what it applies, then its settings under ``section``."""
    fn = activation.function.__name__
    lines = [f":func:`jrelu6.{fn}` as a module: {activation.summary}.", ""]
    if activation.parameters:
        lines += [
            f"Parameters: {', '.join(map(repr, activation.parameters))} (``self.param``"
            " in linen, ``nnx.Param`` in nnx). An unbound linen module uses the"
            " initial values.",
            "",
        ]
    lines.append(f"{section}:")
    lines += [f"  {s.name}: {s.doc}" for s in activation.settings]
    return "\n".join(lines)


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
