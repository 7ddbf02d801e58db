"""``flax.linen`` modules for the relu6 family, built from :data:`jrelu6._modules.TABLE`.

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
    Called unbound (``ReLU6()(x)``), it applies its function and records nothing.
    """

    activation = None  # A class's declaration, set by _build.

    def setup(self):
        self.parameters = {
            name: self.param(name, _constant, getattr(self, setting))
            for name, setting in _modules.activation_of(self).parameters.items()
        }

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
        return _modules.apply(self, x, self.parameters)


def _build(name: str) -> type[_Activation]:
    """The linen class of ``TABLE[name]``: one dataclass field per setting."""
    activation = _modules.TABLE[name]
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": _modules.docstring(activation, "Attributes"),
        "__annotations__": {s.name: s.type for s in activation.settings},
        "activation": activation,
        **{s.name: s.default for s in activation.settings},
    }
    return type(name, (_Activation,), namespace)


CappedReLU = _build("CappedReLU")
FakeQuant = _build("FakeQuant")
HardSigmoid = _build("HardSigmoid")
HardSwish = _build("HardSwish")
QuantizedHardSigmoid = _build("QuantizedHardSigmoid")
QuantizedHardSwish = _build("QuantizedHardSwish")
QuantizedReLU6 = _build("QuantizedReLU6")
ReLU6 = _build("ReLU6")
