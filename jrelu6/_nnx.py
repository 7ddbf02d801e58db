"""``flax.nnx`` modules for the relu6 family."""

from __future__ import annotations

import jax
from flax import nnx
from jax.typing import ArrayLike

from jrelu6 import _diagnostics, _modules


class _Activation(nnx.Module):
    """A parameter-free module applying one jrelu6 function with its settings.

    With ``record_boundary_hits`` set (``model.set_attributes(
    record_boundary_hits=True)``, or ``nnx.view`` on newer flax), each call
    also adds how many of its inputs sit exactly on relu6's kinks to an
    ``nnx.Intermediate`` named ``boundary_hits`` (a
    :class:`jrelu6.BoundaryHits`); take them with ``nnx.pop(model,
    nnx.Intermediate)``. The flag is static, so ``nnx.jit`` retraces when it
    changes, and unset (the default) the module costs nothing more.
    """

    record_boundary_hits: bool = False

    def __call__(self, x: ArrayLike) -> jax.Array:
        if self.record_boundary_hits:
            _record(self, _modules.hits(self, x))
        return _modules.apply(self, x)

    def set_view(self, record_boundary_hits: bool | None = None):
        """Used by ``nnx.view``.

        Args:
          record_boundary_hits: if True, record exact kink hits on each call.
        """
        if record_boundary_hits is not None:
            self.record_boundary_hits = record_boundary_hits


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


class ReLU6(_Activation):
    """:func:`jrelu6.relu6` as a module: ``min(max(x, 0), 6)``.

    Args:
      grad_at_zero: the derivative at ``x == 0`` (default 0, as jax.nn).
      grad_at_six: the derivative at ``x == 6`` (default 0, as jax.nn).

    Example:
      >>> import jax.numpy as jnp
      >>> from jrelu6.nnx import ReLU6
      >>> ReLU6(grad_at_zero=1.0)(jnp.array([-1.0, 7.0]))
      Array([0., 6.], dtype=float32)
    """

    def __init__(self, *, grad_at_zero: float = 0.0, grad_at_six: float = 0.0):
        self.grad_at_zero = grad_at_zero
        self.grad_at_six = grad_at_six


class CappedReLU(_Activation):
    """:func:`jrelu6.capped_relu` as a module: ``min(max(x, 0), cap)``.

    Args:
      cap: the upper bound, > 0 (default 6: ReLU6).
      grad_at_zero: the derivative at ``x == 0`` (default 0).
      grad_at_cap: the derivative at ``x == cap`` (default 0).
    """

    def __init__(
        self, *, cap: float = 6.0, grad_at_zero: float = 0.0, grad_at_cap: float = 0.0
    ):
        self.cap = cap
        self.grad_at_zero = grad_at_zero
        self.grad_at_cap = grad_at_cap


class HardSigmoid(_Activation):
    """:func:`jrelu6.hard_sigmoid` as a module: ``relu6(x + 3) / 6``.

    Args:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    def __init__(self, *, grad_at_zero: float = 0.0, grad_at_six: float = 0.0):
        self.grad_at_zero = grad_at_zero
        self.grad_at_six = grad_at_six


class HardSwish(_Activation):
    """:func:`jrelu6.hard_swish` as a module: ``x * relu6(x + 3) / 6``.

    Args:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    def __init__(self, *, grad_at_zero: float = 0.0, grad_at_six: float = 0.0):
        self.grad_at_zero = grad_at_zero
        self.grad_at_six = grad_at_six
