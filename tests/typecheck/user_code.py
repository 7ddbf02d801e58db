"""A user's file: every public module of jrelu6.linen and jrelu6.nnx, used correctly.

tools/typecheck.sh checks that basedpyright and mypy find no error here
(tests/typecheck/bad_keywords.py holds the mistakes they must catch). It also runs.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

import jrelu6.linen
import jrelu6.nnx

# linen: every class with every keyword, as values and as annotations.
act: jrelu6.linen.ReLU6 = jrelu6.linen.ReLU6(grad_at_zero=1.0)
swish: jrelu6.linen.HardSwish = jrelu6.linen.HardSwish(grad_at_six=0.5)
linen_modules: list[nn.Module] = [
    act,
    swish,
    jrelu6.linen.ReLU6(grad_at_zero=1.0, grad_at_six=0.5),
    jrelu6.linen.CappedReLU(cap=3.0, grad_at_zero=1.0, grad_at_cap=0.5),
    jrelu6.linen.HardSigmoid(grad_at_zero=0.5, grad_at_six=0.5),
    jrelu6.linen.HardSwish(grad_at_zero=1.0, grad_at_six=0.5),
    jrelu6.linen.QuantizedReLU6(num_bits=4),
    jrelu6.linen.QuantizedReLU6(
        num_bits=4, narrow_range=True, scheme="affine", grad_at_zero=1.0, grad_at_six=0.5
    ),
    jrelu6.linen.QuantizedHardSigmoid(num_bits=8, narrow_range=False, scheme="fixed_point",
                                      grad_at_zero=1.0, grad_at_six=0.0),
    jrelu6.linen.QuantizedHardSwish(num_bits=3, narrow_range=True, scheme="affine",
                                    grad_at_zero=0.0, grad_at_six=1.0),
    jrelu6.linen.FakeQuant(init_min=-1.0, init_max=3.0, num_bits=8, narrow_range=True),
]
cap: float = jrelu6.linen.CappedReLU(cap=3.0).cap
bits: int = jrelu6.linen.QuantizedReLU6(num_bits=4).num_bits


class MyReLU6(jrelu6.linen.ReLU6):
    """A subclass adds a field of its own (keyword-only, as the parent's)."""

    scale: float = 1.0

    def __call__(self, x: ArrayLike) -> jax.Array:
        return super().__call__(x) * self.scale


class Block(nn.Module):
    """A model that takes its activation as a field, as flax's examples do."""

    features: int
    act: Callable[[jax.Array], jax.Array] = jrelu6.linen.ReLU6()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(nn.Dense(self.features)(x))


model = nn.Sequential([
    nn.Dense(4),
    MyReLU6(grad_at_zero=1.0, scale=2.0),
    Block(features=3, act=jrelu6.linen.HardSwish(grad_at_six=1.0)),
    jrelu6.linen.QuantizedReLU6(num_bits=4),
])
x = jnp.ones((2, 3))
variables = model.init(jax.random.key(0), x)
y = model.apply(variables, x)
unbound: jax.Array = jrelu6.linen.ReLU6(grad_at_six=1.0)(x)

# nnx: every class with every keyword.
nnx_act: jrelu6.nnx.ReLU6 = jrelu6.nnx.ReLU6(grad_at_zero=1.0)
nnx_modules: list[nnx.Module] = [
    nnx_act,
    jrelu6.nnx.ReLU6(grad_at_zero=1.0, grad_at_six=0.5),
    jrelu6.nnx.CappedReLU(cap=3.0, grad_at_zero=1.0, grad_at_cap=0.5),
    jrelu6.nnx.HardSigmoid(grad_at_zero=0.5, grad_at_six=0.5),
    jrelu6.nnx.HardSwish(grad_at_zero=1.0, grad_at_six=0.5),
    jrelu6.nnx.QuantizedReLU6(num_bits=4),
    jrelu6.nnx.QuantizedReLU6(
        num_bits=4, narrow_range=True, scheme="affine", grad_at_zero=1.0, grad_at_six=0.5
    ),
    jrelu6.nnx.QuantizedHardSigmoid(num_bits=8, narrow_range=False, scheme="fixed_point",
                                    grad_at_zero=1.0, grad_at_six=0.0),
    jrelu6.nnx.QuantizedHardSwish(num_bits=3, narrow_range=True, scheme="affine",
                                  grad_at_zero=0.0, grad_at_six=1.0),
    jrelu6.nnx.FakeQuant(init_min=-1.0, init_max=3.0, num_bits=8, narrow_range=True),
]
nnx_cap: float = jrelu6.nnx.CappedReLU(cap=3.0).cap
fake_quant = jrelu6.nnx.FakeQuant(init_min=0.0, init_max=1.5)
upper: nnx.Param[jax.Array] = fake_quant.max


class MyHardSwish(jrelu6.nnx.HardSwish):
    """An nnx subclass with a setting of its own."""

    def __init__(self, *, scale: float = 1.0, grad_at_six: float = 0.0) -> None:
        super().__init__(grad_at_six=grad_at_six)
        self.scale = scale

    def __call__(self, x: ArrayLike) -> jax.Array:
        return super().__call__(x) * self.scale


net = nnx.Sequential(
    nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
    jrelu6.nnx.HardSwish(grad_at_six=1.0),
    MyHardSwish(scale=2.0, grad_at_six=1.0),
    jrelu6.nnx.QuantizedReLU6(num_bits=4),
)
z: jax.Array = net(x)
net.set_attributes(record_boundary_hits=True)
