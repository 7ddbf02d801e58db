"""The example's optimizer: warm-up + cosine learning rate, SGD (Nesterov) or AdamW.

The training step (inside optax) and the host's log call one schedule object.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mobilenet.configs import default
from mobilenet.configs.default import Config


def warmup_cosine_schedule(*, peak: float, warmup_steps: int, total_steps: int
                           ) -> optax.Schedule:
    r"""Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    With :math:`w` = ``max(warmup_steps, 1)`` and :math:`d` =
    ``max(total_steps - warmup_steps, 1)``, step :math:`t` (0-based) uses

    .. math::
      \eta(t) = \eta_{peak} \min\left(\frac{t + 1}{w}, 1\right)
                \frac{1 + \cos(\pi \, \mathrm{clip}((t - w_0) / d, 0, 1))}{2},

    where :math:`w_0` = ``warmup_steps``: the first step already uses
    ``peak / warmup_steps`` (not 0), and step ``total_steps`` reaches 0. The result is a
    float32 scalar (docs/example.md: why not optax's).

    Examples:
      >>> schedule = warmup_cosine_schedule(peak=0.4, warmup_steps=4, total_steps=20)
      >>> [round(float(schedule(t)), 4) for t in (0, 1, 3, 12, 20)]
      [0.1, 0.2, 0.4, 0.2, 0.0]
    """
    warmup = max(int(warmup_steps), 1)
    decay = max(int(total_steps) - int(warmup_steps), 1)

    def schedule(count: jax.Array | int) -> jax.Array:
        t = jnp.asarray(count).astype(jnp.float32)
        ramp = jnp.minimum((t + 1.0) / warmup, 1.0)
        progress = jnp.clip((t - warmup_steps) / decay, 0.0, 1.0)
        return peak * ramp * (0.5 + 0.5 * jnp.cos(jnp.pi * progress))

    return schedule


def learning_rate_schedule(config: Config, *, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of ``config``: the same object as inside
    ``create_optimizer(config, total_steps=...)``."""
    return _schedule(default.learning_rate(config),
                     default.warmup_steps(config, total_steps=total_steps), int(total_steps))


@functools.lru_cache(maxsize=64)
def _schedule(peak: float, warmup: int, total_steps: int) -> optax.Schedule:
    return warmup_cosine_schedule(peak=peak, warmup_steps=warmup, total_steps=total_steps)


def decay_mask(params: Any) -> Any:
    """Weight decay on kernels only: no decay for batch-norm scales/offsets or biases.

    Examples:
      >>> decay_mask({"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)})
      {'bias': False, 'kernel': True}
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: Config, *, total_steps: int) -> optax.GradientTransformation:
    """SGD with Nesterov momentum or AdamW; warm-up + cosine decay; masked weight decay.

    SGD adds ``weight_decay * kernel`` to the gradient; AdamW decays the kernels
    decoupled from the adaptive step. ``config.momentum`` is SGD's momentum and
    AdamW's ``b1``. Equal settings return the same object (compiled steps are reused).

    Raises:
      mobilenet.infra.settings.InvalidSetting: (a ``ValueError``) for a setting that
        :meth:`~mobilenet.configs.default.Config.validate` refuses.
    """
    config.validate()
    return _optimizer(config.optimizer, default.learning_rate(config), config.momentum,
                      default.weight_decay(config),
                      default.warmup_steps(config, total_steps=total_steps), int(total_steps))


@functools.lru_cache(maxsize=64)
def _optimizer(name: str, peak: float, momentum: float, decay: float, warmup: int,
               total_steps: int) -> optax.GradientTransformation:
    schedule = _schedule(peak, warmup, total_steps)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(decay, mask=decay_mask),
                           optax.sgd(schedule, momentum=momentum, nesterov=True))
    return optax.adamw(schedule, b1=momentum, weight_decay=decay, mask=decay_mask)
