"""``flax.nnx`` modules for the relu6 family: a keyword-only ``__init__`` each.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from jrelu6.nnx import FakeQuant, ReLU6
  >>> ReLU6(grad_at_zero=1.0)(jnp.array([-1.0, 7.0]))
  Array([0., 6.], dtype=float32)
  >>> quant = FakeQuant(init_min=0.0, init_max=1.5, num_bits=2)
  >>> quant(jnp.array([0.3, 2.0]))
  Array([0.5, 1.5], dtype=float32)
  >>> float(quant.max[...])
  1.5
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import jax
from flax import nnx
from jax.typing import ArrayLike

from jrelu6 import _diagnostics, _modules


class _Activation(nnx.Module):
    """A module applying one jrelu6 function with its settings (and parameters).

    With ``record_boundary_hits`` set (``model.set_attributes(
    record_boundary_hits=True)``, or ``nnx.view`` on newer flax), each call
    also adds how many of its inputs sit exactly on relu6's kinks to an
    ``nnx.Intermediate`` named ``boundary_hits`` (a
    :class:`jrelu6.BoundaryHits`); take them with ``nnx.pop(model,
    nnx.Intermediate)``. The flag is static, so ``nnx.jit`` retraces when it
    changes, and unset (the default) the module costs nothing more. Under
    ``nnx.scan`` the counts come back stacked, one per layer of the stack.
    """

    activation: ClassVar[_modules.Activation]  # Each class's declaration.
    record_boundary_hits: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # nnx's metaclass hides ``__init__`` from ``inspect.signature(cls)``: show its keywords.
        super().__init_subclass__(**kwargs)
        signature = inspect.signature(cls.__init__)
        keywords = list(signature.parameters.values())[1:]  # All but ``self``.
        # setattr: type checkers know no __signature__ on a class.
        setattr(cls, "__signature__", signature.replace(parameters=keywords))  # noqa: B010

    def __call__(self, x: ArrayLike) -> jax.Array:
        activation = _modules.activation_of(self)
        if self.record_boundary_hits:
            hits = _modules.hits(self, x)
            if hits is not None:
                _record(self, hits)
        parameters = {name: _value(getattr(self, name)) for name in activation.parameters}
        return _modules.apply(self, x, parameters)

    def set_view(self, record_boundary_hits: bool | None = None):
        """Used by ``nnx.view``.

        Args:
          record_boundary_hits: if True, record exact kink hits on each call.
        """
        if record_boundary_hits is not None:
            self.record_boundary_hits = record_boundary_hits


def _value(variable: nnx.Variable[Any]) -> Any:
    """A variable's value, across flax versions."""
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def _record(module: nnx.Module, hits: _diagnostics.BoundaryHits) -> None:
    """Adds ``hits`` to ``module.boundary_hits``, an ``nnx.Intermediate``."""
    variable = getattr(module, _diagnostics.COLLECTION, None)
    if not isinstance(variable, nnx.Intermediate):
        setattr(module, _diagnostics.COLLECTION, nnx.Intermediate(hits))
        return
    if hasattr(variable, "get_value"):  # flax >= 0.12: .value is read-only.
        variable.set_value(_diagnostics.add_hits(variable.get_value(), hits))
    else:
        variable.value = _diagnostics.add_hits(variable.value, hits)


class _Kinks(_Activation):
    """A relu6 with its two kink derivatives."""

    def __init__(self, *, grad_at_zero: float = 0.0, grad_at_six: float = 0.0) -> None:
        self.grad_at_zero = grad_at_zero
        self.grad_at_six = grad_at_six


class _Quantized(_Activation):
    """A fake-quantized relu6 with its two kink derivatives."""

    def __init__(
        self,
        *,
        num_bits: int = 8,
        narrow_range: bool = False,
        scheme: str = "affine",
        grad_at_zero: float = 0.0,
        grad_at_six: float = 0.0,
    ) -> None:
        self.num_bits = num_bits
        self.narrow_range = narrow_range
        self.scheme = scheme
        self.grad_at_zero = grad_at_zero
        self.grad_at_six = grad_at_six


class ReLU6(_Kinks):
    """:func:`jrelu6.relu6` as a module: ``min(max(x, 0), 6)``.

    Args:
      grad_at_zero: the derivative at ``x == 0`` (default 0, as jax.nn).
      grad_at_six: the derivative at ``x == 6`` (default 0, as jax.nn).
    """

    activation = _modules.TABLE["ReLU6"]


class CappedReLU(_Activation):
    """:func:`jrelu6.capped_relu` as a module: ``min(max(x, 0), cap)``.

    Args:
      cap: the upper bound, > 0 (default 6: ReLU6).
      grad_at_zero: the derivative at ``x == 0`` (default 0).
      grad_at_cap: the derivative at ``x == cap`` (default 0).
    """

    activation = _modules.TABLE["CappedReLU"]

    def __init__(
        self, *, cap: float = 6.0, grad_at_zero: float = 0.0, grad_at_cap: float = 0.0
    ) -> None:
        self.cap = cap
        self.grad_at_zero = grad_at_zero
        self.grad_at_cap = grad_at_cap


class HardSigmoid(_Kinks):
    """:func:`jrelu6.hard_sigmoid` as a module: ``relu6(x + 3) / 6``.

    Args:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["HardSigmoid"]


class HardSwish(_Kinks):
    """:func:`jrelu6.hard_swish` as a module: ``x * relu6(x + 3) / 6``.

    Args:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["HardSwish"]


class QuantizedReLU6(_Quantized):
    """:func:`jrelu6.quantized_relu6` as a module: ``relu6(x)`` fake-quantized on [0, 6].

    Args:
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: affine scheme only: levels 1 to 2**num_bits - 1.
      scheme: ``"affine"`` (default) or ``"fixed_point"``.
      grad_at_zero: the derivative at ``x == 0`` (default 0, as jax.nn).
      grad_at_six: the derivative at ``x == 6`` (default 0, as jax.nn).
    """

    activation = _modules.TABLE["QuantizedReLU6"]


class QuantizedHardSigmoid(_Quantized):
    """:func:`jrelu6.quantized_hard_sigmoid` as a module: ``quantized_relu6(x + 3) / 6``.

    Args:
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: affine scheme only: levels 1 to 2**num_bits - 1.
      scheme: ``"affine"`` (default) or ``"fixed_point"``.
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["QuantizedHardSigmoid"]


class QuantizedHardSwish(_Quantized):
    """:func:`jrelu6.quantized_hard_swish` as a module: ``x * quantized_relu6(x + 3) / 6``.

    Args:
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: affine scheme only: levels 1 to 2**num_bits - 1.
      scheme: ``"affine"`` (default) or ``"fixed_point"``.
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    activation = _modules.TABLE["QuantizedHardSwish"]


class FakeQuant(_Activation):
    """:func:`jrelu6.fake_quant` as a module: ``fake_quant(x, min=min, max=max)``.

    ``min`` and ``max`` are learnable parameters (float32 scalars; ``self.param``
    in linen, ``nnx.Param`` in nnx) that start at ``init_min`` and ``init_max``.
    An unbound linen module uses the initial values.

    Args:
      init_min: the initial lower end of the learnable range.
      init_max: the initial upper end (> init_min).
      num_bits: the bit width, in [2, 16] (default 8).
      narrow_range: if True, levels 1 to 2**num_bits - 1.
    """

    activation = _modules.TABLE["FakeQuant"]

    def __init__(
        self,
        *,
        init_min: float = -6.0,
        init_max: float = 6.0,
        num_bits: int = 8,
        narrow_range: bool = False,
    ) -> None:
        self.init_min = init_min
        self.init_max = init_max
        self.num_bits = num_bits
        self.narrow_range = narrow_range
        self.min = nnx.Param(_modules.initial_value(init_min))
        self.max = nnx.Param(_modules.initial_value(init_max))
