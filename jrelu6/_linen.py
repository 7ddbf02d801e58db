"""``flax.linen`` modules for the relu6 family: keyword-only dataclass fields, one class each.

Example:
  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> from jrelu6.linen import FakeQuant, ReLU6
  >>> model = nn.Sequential([nn.Dense(3), ReLU6(grad_at_zero=1.0)])
  >>> ReLU6().apply({}, jnp.array([-1.0, 7.0]))
  Array([0., 6.], dtype=float32)
  >>> ReLU6()(jnp.array([-1.0, 7.0]))  # unbound: applies the function
  Array([0., 6.], dtype=float32)
  >>> quant = FakeQuant(init_min=0.0, init_max=1.5, num_bits=2)
  >>> variables = quant.init(jax.random.key(0), jnp.zeros(2))
  >>> variables["params"]["max"]
  Array(1.5, dtype=float32)
  >>> quant.apply(variables, jnp.array([0.3, 2.0]))
  Array([0.5, 1.5], dtype=float32)
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
from jax.typing import ArrayLike

from jrelu6 import _diagnostics, _modules


def _constant(rng: jax.Array, value: float) -> jax.Array:
    """A parameter initialiser: ``value`` as a float32 scalar (``rng`` unused)."""
    del rng
    return _modules.initial_value(value)


class _Activation(nn.Module):
    """A module applying one jrelu6 function with its fields (and parameters).

    When the ``"boundary_hits"`` collection is mutable (``apply(...,
    mutable=["boundary_hits"])``), it also records how many of its inputs sit
    exactly on relu6's kinks (a :class:`jrelu6.BoundaryHits`, summed over
    calls); otherwise it records nothing and costs nothing more. Nothing is
    recorded by ``init``; ``mutable=True`` (every collection) does record.
    Under ``nn.scan``, list ``"boundary_hits"`` in its ``variable_axes``
    (``{"params": 0, "boundary_hits": 0}``) to get the counts back, one per
    layer of the stack; otherwise they are dropped. Called unbound
    (``ReLU6()(x)``), it applies its function and records nothing.
    """

    activation: ClassVar[_modules.Activation]  # Each class's declaration.

    def setup(self) -> None:
        for name, setting in _modules.activation_of(self).parameters.items():
            self.param(name, _constant, getattr(self, setting))

    def __call__(self, x: ArrayLike) -> jax.Array:
        if self.scope is None:  # Unbound: nothing to record into, no parameters.
            return _modules.apply(self, x)
        if self.is_mutable_collection(_diagnostics.COLLECTION) and not self.is_initializing():
            hits = _modules.hits(self, x)
            if hits is not None:
                self.sow(
                    _diagnostics.COLLECTION,
                    _diagnostics.COLLECTION,
                    hits,
                    init_fn=_diagnostics.zero_hits,
                    reduce_fn=_diagnostics.add_hits,
                )
        names = _modules.activation_of(self).parameters
        parameters: dict[str, jax.Array] = {n: self.get_variable("params", n) for n in names}
        return _modules.apply(self, x, parameters)


class _Kinks(_Activation, kw_only=True):
    """A relu6 with its two kink derivatives."""

    grad_at_zero: float = 0.0
    grad_at_six: float = 0.0


class _Quantized(_Activation, kw_only=True):
    """A fake-quantized relu6 with its two kink derivatives."""

    num_bits: int = 8
    narrow_range: bool = False
    scheme: str = "affine"
    grad_at_zero: float = 0.0
    grad_at_six: float = 0.0


class ReLU6(_Kinks):
    """:func:`jrelu6.relu6` as a module: ``min(max(x, 0), 6)``.

    Attributes:
      grad_at_zero: the derivative at ``x == 0`` (default 0, as jax.nn).
      grad_at_six: the derivative at ``x == 6`` (default 0, as jax.nn).
    """

    activation = _modules.TABLE["ReLU6"]


class CappedReLU(_Activation, kw_only=True):
    """:func:`jrelu6.capped_relu` as a module: ``min(max(x, 0), cap)``.

    Attributes:
      cap: the upper bound, > 0 (default 6: ReLU6).
      grad_at_zero: the derivative at ``x == 0`` (default 0).
      grad_at_cap: the derivative at ``x == cap`` (default 0).
    """

    activation = _modules.TABLE["CappedReLU"]
    cap: float = 6.0
    grad_at_zero: float = 0.0
    grad_at_cap: float = 0.0


class HardSigmoid(_Kinks):
    """:func:`jrelu6.hard_sigmoid` as a module: ``relu6(x + 3) / 6``.

    Attributes:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["HardSigmoid"]


class HardSwish(_Kinks):
    """:func:`jrelu6.hard_swish` as a module: ``x * relu6(x + 3) / 6``.

    Attributes:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["HardSwish"]


class QuantizedReLU6(_Quantized):
    """:func:`jrelu6.quantized_relu6` as a module: ``relu6(x)`` fake-quantized on [0, 6].

    Attributes:
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: affine scheme only: levels 1 to 2**num_bits - 1.
      scheme: ``"affine"`` (default) or ``"fixed_point"``.
      grad_at_zero: the derivative at ``x == 0`` (default 0, as jax.nn).
      grad_at_six: the derivative at ``x == 6`` (default 0, as jax.nn).
    """

    activation = _modules.TABLE["QuantizedReLU6"]


class QuantizedHardSigmoid(_Quantized):
    """:func:`jrelu6.quantized_hard_sigmoid` as a module: ``quantized_relu6(x + 3) / 6``.

    Attributes:
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: affine scheme only: levels 1 to 2**num_bits - 1.
      scheme: ``"affine"`` (default) or ``"fixed_point"``.
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["QuantizedHardSigmoid"]


class QuantizedHardSwish(_Quantized):
    """:func:`jrelu6.quantized_hard_swish` as a module: ``x * quantized_relu6(x + 3) / 6``.

    Attributes:
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: affine scheme only: levels 1 to 2**num_bits - 1.
      scheme: ``"affine"`` (default) or ``"fixed_point"``.
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["QuantizedHardSwish"]


class FakeQuant(_Activation, kw_only=True):
    """:func:`jrelu6.fake_quant` as a module: ``fake_quant(x, min=min, max=max)``.

    ``min`` and ``max`` are learnable parameters (float32 scalars; ``self.param``
    in linen, ``nnx.Param`` in nnx) that start at ``init_min`` and ``init_max``.
    An unbound linen module uses the initial values.

    Attributes:
      init_min: the initial lower end of the learnable range.
      init_max: the initial upper end (> init_min).
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: if True, levels 1 to 2**num_bits - 1.
    """

    activation = _modules.TABLE["FakeQuant"]
    init_min: float = -6.0
    init_max: float = 6.0
    num_bits: int = 8
    narrow_range: bool = False
