"""``flax.linen`` modules for the relu6 family."""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.typing import ArrayLike

from jrelu6 import _diagnostics, _modules


class _Activation(nn.Module):
    """A parameter-free module applying one jrelu6 function with its fields.

    When the ``"boundary_hits"`` collection is mutable (``apply(...,
    mutable=["boundary_hits"])``), it also records how many of its inputs sit
    exactly on relu6's kinks (a :class:`jrelu6.BoundaryHits`, summed over
    calls); otherwise it records nothing and costs nothing more. Nothing is
    recorded by ``init``; ``mutable=True`` (every collection) does record.
    """

    def __call__(self, x: ArrayLike) -> jax.Array:
        if self.scope is None:  # Unbound (``ReLU6()(x)``): nothing to record into.
            return _modules.apply(self, x)
        if self.is_mutable_collection(_diagnostics.COLLECTION) and not self.is_initializing():
            self.sow(
                _diagnostics.COLLECTION,
                _diagnostics.COLLECTION,
                _modules.hits(self, x),
                init_fn=_diagnostics.zero_hits,
                reduce_fn=_diagnostics.add_hits,
            )
        return _modules.apply(self, x)


class ReLU6(_Activation):
    """:func:`jrelu6.relu6` as a module: ``min(max(x, 0), 6)``.

    Attributes:
      grad_at_zero: the derivative at ``x == 0`` (default 0, as jax.nn).
      grad_at_six: the derivative at ``x == 6`` (default 0, as jax.nn).

    Example:
      >>> import jax.numpy as jnp, flax.linen as nn
      >>> from jrelu6.linen import ReLU6
      >>> model = nn.Sequential([nn.Dense(3), ReLU6(grad_at_zero=1.0)])
      >>> ReLU6().apply({}, jnp.array([-1.0, 7.0]))
      Array([0., 6.], dtype=float32)
    """

    grad_at_zero: float = 0.0
    grad_at_six: float = 0.0


class CappedReLU(_Activation):
    """:func:`jrelu6.capped_relu` as a module: ``min(max(x, 0), cap)``.

    Attributes:
      cap: the upper bound, > 0 (default 6: ReLU6).
      grad_at_zero: the derivative at ``x == 0`` (default 0).
      grad_at_cap: the derivative at ``x == cap`` (default 0).
    """

    cap: float = 6.0
    grad_at_zero: float = 0.0
    grad_at_cap: float = 0.0


class HardSigmoid(_Activation):
    """:func:`jrelu6.hard_sigmoid` as a module: ``relu6(x + 3) / 6``.

    Attributes:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    grad_at_zero: float = 0.0
    grad_at_six: float = 0.0


class HardSwish(_Activation):
    """:func:`jrelu6.hard_swish` as a module: ``x * relu6(x + 3) / 6``.

    Attributes:
      grad_at_zero: relu6's derivative at its lower kink (x == -3 here).
      grad_at_six: relu6's derivative at its upper kink (x == 3 here).
    """

    grad_at_zero: float = 0.0
    grad_at_six: float = 0.0
