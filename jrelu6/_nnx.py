"""``flax.nnx`` modules for the relu6 family, built from :data:`jrelu6._modules.TABLE`.

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
from typing import Any

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
    changes, and unset (the default) the module costs nothing more.
    """

    activation = None  # A class's declaration, set by _build.
    record_boundary_hits: bool = False

    def __init__(self, **settings: Any):
        activation = _modules.activation_of(self)
        names = [s.name for s in activation.settings]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unexpected setting(s) {unknown}; allowed: {names}."
            )
        for s in activation.settings:
            setattr(self, s.name, settings.get(s.name, s.default))
        for name, setting in activation.parameters.items():
            setattr(self, name, nnx.Param(_modules.initial_value(getattr(self, setting))))

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


def _value(variable: nnx.Variable):
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


def _build(name: str) -> type[_Activation]:
    """The nnx class of ``TABLE[name]``, with a keyword-only signature of its settings."""
    activation = _modules.TABLE[name]
    cls = type(
        name,
        (_Activation,),
        {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": _modules.docstring(activation, "Args"),
            "activation": activation,
        },
    )
    kw = inspect.Parameter.KEYWORD_ONLY
    cls.__signature__ = inspect.Signature(
        [inspect.Parameter(s.name, kw, default=s.default, annotation=s.type)
         for s in activation.settings]
    )
    return cls


CappedReLU = _build("CappedReLU")
FakeQuant = _build("FakeQuant")
HardSigmoid = _build("HardSigmoid")
HardSwish = _build("HardSwish")
QuantizedHardSigmoid = _build("QuantizedHardSigmoid")
QuantizedHardSwish = _build("QuantizedHardSwish")
QuantizedReLU6 = _build("QuantizedReLU6")
ReLU6 = _build("ReLU6")
