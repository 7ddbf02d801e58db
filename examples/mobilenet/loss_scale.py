"""Dynamic loss scaling, for training with float16 compute.

float16 keeps 5 exponent bits: gradients below about ``6e-8`` flush to zero
and values above 65504 overflow. The loss is multiplied by a large scale
before differentiation, so the float16 intermediates of the backward pass sit
in range, and the float32 parameter gradients are divided by it again. The
scale adapts, as in mixed-precision training (Micikevicius et al. 2018) and
the usual implementations (PyTorch's ``GradScaler``, Keras'
``LossScaleOptimizer``, DeepMind's ``jmp``):

* a step whose gradients are not all finite is skipped (parameters and
  optimizer state unchanged) and the scale halves;
* after :data:`GROWTH_INTERVAL` finite steps in a row, the scale doubles.

The state is a dict of scalars (:func:`initial_state`), so it rides in the
train state's metrics, is saved with its checkpoints and passes through
``jit``. Nothing here depends on the model or the optimizer.

Examples:
  >>> import jax.numpy as jnp
  >>> state = initial_state()
  >>> state = adjust(state, jnp.asarray(False))  # An overflow: skip, halve.
  >>> float(state["scale"]), int(state["skipped"])
  (16384.0, 1)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

INITIAL_SCALE = 2.0**15  # As jmp's and Keras' defaults (PyTorch starts at 2**16).
GROWTH_INTERVAL = 2000  # Finite steps in a row before the scale doubles.
FACTOR = 2.0  # The scale halves on an overflow and doubles after GROWTH_INTERVAL steps.

LossScaleState = dict[str, jax.Array]


def initial_state(scale: float = INITIAL_SCALE) -> LossScaleState:
    """The scale to start from; no finite step counted yet, none skipped.

    Returns:
      ``{"scale": float32, "good_steps": int32, "skipped": int32}``: the current
      scale, the finite steps since it last changed, and the steps skipped so far.
    """
    if not scale > 0:
        raise ValueError(f"loss_scale.initial_state: scale must be > 0, got {scale}.")
    return {"scale": jnp.asarray(scale, jnp.float32), "good_steps": jnp.zeros((), jnp.int32),
            "skipped": jnp.zeros((), jnp.int32)}


def scale(loss: jax.Array, state: LossScaleState) -> jax.Array:
    """``loss * scale``: differentiate this instead of the loss."""
    return loss * state["scale"].astype(loss.dtype)


def unscale(grads: Any, state: LossScaleState) -> Any:
    """The gradients of the scaled loss divided by the scale: the loss's own gradients."""
    inverse = 1.0 / state["scale"]
    return jax.tree.map(lambda g: g * inverse.astype(g.dtype), grads)


def all_finite(tree: Any) -> jax.Array:
    """True (a bool scalar) when no leaf of ``tree`` holds a NaN or infinity."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def adjust(state: LossScaleState, finite: jax.Array, *,
           growth_interval: int = GROWTH_INTERVAL) -> LossScaleState:
    """The state after a step whose gradients were all finite (``finite``) or not.

    An overflow halves the scale and counts a skipped step; the
    ``growth_interval``-th finite step in a row doubles it.
    """
    good = jnp.where(finite, state["good_steps"] + 1, 0)
    grow = good >= growth_interval
    new_scale = jnp.where(finite, jnp.where(grow, state["scale"] * FACTOR, state["scale"]),
                          state["scale"] / FACTOR)
    return {"scale": new_scale, "good_steps": jnp.where(grow, 0, good),
            "skipped": state["skipped"] + jnp.where(finite, 0, 1)}


def select(finite: jax.Array, updated: Any, unchanged: Any) -> Any:
    """``updated`` where the step's gradients were finite, else ``unchanged`` (a skipped step)."""
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, unchanged)
