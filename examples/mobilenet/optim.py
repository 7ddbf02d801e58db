"""The example's optimizer: warm-up + cosine learning rate, SGD (Nesterov) or AdamW.

One schedule object serves both the training step (inside optax) and the host,
which logs the learning rate of a step by calling the same object::

    tx = create_optimizer(config, total_steps=300)
    lr = learning_rate_schedule(config, total_steps=300)
    float(lr(step))  # The learning rate the step `step` (0-based) uses.

Equal settings return the same objects (they are cached by value), so repeated
runs with one configuration reuse their compiled steps.
"""

from __future__ import annotations

import functools
import os
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
    ``peak / warmup_steps`` (not 0), and step ``total_steps`` reaches 0. Written
    out rather than taken from optax so that it stays float32 under strict dtype
    promotion. The result is a float32 scalar, on the device inside a jitted step
    and on the host when called with a Python ``int``.

    Args:
      peak: The learning rate at the end of the warm-up.
      warmup_steps: Steps of the linear warm-up (0: none).
      total_steps: The step at which the cosine reaches 0.

    Returns:
      The schedule ``count -> learning rate``.

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
    """The learning-rate schedule of ``config`` (the one :func:`create_optimizer` uses).

    Args:
      config: The configuration (``learning_rate`` and ``warmup_steps``, or their defaults).
      total_steps: Length of the run (:func:`mobilenet.configs.default.total_steps`).

    Returns:
      The schedule; the same object as inside ``create_optimizer(config, total_steps=...)``.

    Examples:
      >>> schedule = learning_rate_schedule(Config(), total_steps=300)  # 0.05, 30 warm-up
      >>> round(float(schedule(0)), 6), round(float(schedule(29)), 6)
      (0.001667, 0.05)
    """
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
    AdamW's ``b1``.

    Args:
      config: The configuration (optimizer, learning rate, momentum, weight decay,
        warm-up; ``None`` takes the defaults of :mod:`mobilenet.configs.default`).
      total_steps: Length of the learning-rate schedule.

    Returns:
      The optax transformation. Equal settings return the same object, so
      repeated runs reuse compiled steps.

    Raises:
      mobilenet.configs.default.InvalidSetting: (a ``ValueError``) for a setting that
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


# --- memory --------------------------------------------------------------------------------


class StateTooLarge(ValueError):
    """The parameters and the optimizer state would not fit in memory (one-line message)."""


def state_bytes(tree: Any) -> int:
    """Bytes of the arrays of ``tree`` (arrays or :class:`jax.ShapeDtypeStruct` leaves).

    Exact for any size (Python integers, no overflow).

    Examples:
      >>> state_bytes({"w": jax.ShapeDtypeStruct((10**7, 10**7), jnp.float32)})
      400000000000000
    """
    total = 0
    for leaf in jax.tree.leaves(tree):
        count = 1
        for dim in leaf.shape:
            count *= int(dim)
        total += count * jnp.dtype(leaf.dtype).itemsize
    return total


def memory_limit() -> tuple[int, int, str]:
    """``(bytes, copies, what)``: the memory a replicated state must fit in, for this process.

    A device that reports its memory (a GPU, a TPU) holds one copy of the state;
    host devices (CPU) share the host's physical memory, one copy each.
    """
    devices = jax.local_devices()
    stats = devices[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), 1, f"one {devices[0].device_kind}"
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host, len(devices), "this host"


def check_state_fits(params: Any, opt_state: Any, *, limit_bytes: int | None = None,
                     copies: int = 1) -> int:
    """Refuses parameters plus optimizer state that cannot fit in memory, before allocating.

    Call it with the abstract state (``jax.eval_shape`` of the initialization,
    e.g. the ``params`` and ``opt_state`` of an abstract train state): nothing is
    computed. Activations, gradients and XLA's buffers come on top, so passing
    does not promise that training fits; failing proves it cannot.

    Args:
      params: The parameters (arrays or ``jax.ShapeDtypeStruct`` leaves).
      opt_state: The optimizer state, likewise.
      limit_bytes: The memory to compare with; ``None``: :func:`memory_limit`.
      copies: Copies of the state in ``limit_bytes`` (``None`` limit: from
        :func:`memory_limit`).

    Returns:
      The bytes of one copy of the parameters and the optimizer state.

    Raises:
      StateTooLarge: naming the parameter count and both sizes.

    Examples:
      >>> params = {"w": jax.ShapeDtypeStruct((10**6, 10**6), jnp.float32)}
      >>> check_state_fits(params, {}, limit_bytes=2**30)
      Traceback (most recent call last):
        ...
      mobilenet.optim.StateTooLarge: train: 1,000,000,000,000 parameters ... need 3.6 TiB, ...
    """
    needed = state_bytes(params) + state_bytes(opt_state)
    where = ""
    if limit_bytes is None:
        limit_bytes, copies, where = memory_limit()
        where = f" of {where}"
    if needed * copies > limit_bytes:
        count = state_bytes(jax.tree.map(
            lambda p: jax.ShapeDtypeStruct(p.shape, jnp.uint8), params))
        total = _size(needed * copies) + (f" ({copies} copies, one per device)"
                                          if copies > 1 else "")
        raise StateTooLarge(
            f"train: {count:,} parameters and their optimizer state need {total}, more than "
            f"the {_size(limit_bytes)} of memory{where}; use a smaller --width.")
    return needed


def _size(num_bytes: int) -> str:
    """``3.6 TiB``; sizes beyond exbibytes in scientific notation."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if num_bytes < 1024 or unit == "EiB":
            break
        num_bytes /= 1024
    if num_bytes >= 1024:
        return f"{num_bytes:.3g} EiB"
    return f"{num_bytes:.1f} {unit}"
