"""Whether the parameters and the optimizer state fit in memory: :func:`check_state_fits`.

Checked on the abstract state (shapes and dtypes only), before anything is
allocated, so a too-wide network fails at once with a one-line message rather
than deep inside XLA.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp


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
      mobilenet.infra.state_size.StateTooLarge: train: 1,000,000,000,000 parameters ... 3.6 TiB...
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
