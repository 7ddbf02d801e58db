"""The MobileNet example's input pipeline: the batch order, batching, sharding, augmentation.

The data (:func:`mobilenet.infra.datasets.load_dataset`) are held in host memory as uint8
NHWC images and int32 labels. The training order is a pure function of ``(seed, step)``
(:func:`batch_indices`), so a resumed run sees the batches an uninterrupted one sees.
Batches are placed on the devices a couple of steps ahead (:func:`train_batches`);
normalization and augmentation (:func:`augment`) run on the devices, in the jitted step.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet.configs.default import steps_per_epoch
from mobilenet.infra.datasets import Dataset
from mobilenet.infra.distributed import place, process_share

# --- order and batches ---------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of the training examples in ``epoch``: a pure function of ``(seed, epoch)``.

    The latest orders are cached (read-only), so consecutive steps share one.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.setflags(write=False)
    return order


def batch_indices(num_examples: int, *, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The training examples of global batch ``step``: a pure function of its arguments."""
    epoch, position = divmod(step, steps_per_epoch(num_examples, batch_size))
    order = epoch_permutation(num_examples, seed=seed, epoch=epoch)
    return order[position * batch_size:(position + 1) * batch_size]


def train_batches(dataset: Dataset, *, batch_size: int, seed: int, start_step: int,
                  sharding: jax.sharding.Sharding, prefetch: int = 2
                  ) -> Iterator[dict[str, jax.Array]]:
    """Yields the sharded training batches of steps ``start_step``, ``start_step + 1``, ...

    Each is placed on the devices ``prefetch`` steps ahead, so the transfer overlaps
    the (asynchronously dispatched) training step; ``seed`` orders them (:func:`batch_indices`).

    Yields:
      ``{"image": uint8 [B, H, W, C], "label": int32 [B]}`` global arrays.
    """
    num_examples = dataset.train_images.shape[0]

    def host_batch(step: int) -> dict[str, np.ndarray]:
        indices = process_share(batch_indices(num_examples, batch_size=batch_size, seed=seed,
                                              step=step))
        return {"image": dataset.train_images[indices], "label": dataset.train_labels[indices]}

    ahead: collections.deque[dict[str, jax.Array]] = collections.deque()
    step = start_step
    while True:
        while len(ahead) < max(1, prefetch):
            ahead.append(place(host_batch(step), sharding))
            step += 1
        yield ahead.popleft()


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 sharding: jax.sharding.Sharding) -> list[dict[str, jax.Array]]:
    """The whole split (uint8 ``[N, H, W, C]`` images, int32 labels) as sharded batches
    ``{"image", "label", "mask"}``, the last one padded (``mask`` 0.0) to ``batch_size``."""
    batches = []
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        pad = batch_size - x.shape[0]
        mask = np.concatenate([np.ones(x.shape[0], np.float32), np.zeros(pad, np.float32)])
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        host = {"image": x, "label": y, "mask": mask}
        batches.append(place({k: process_share(v) for k, v in host.items()}, sharding))
    return batches


# --- on device -----------------------------------------------------------------------------


def normalize(images: jax.Array, *, mean: Sequence[float], std: Sequence[float],
              dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """uint8 (or float 0-255) images to ``(x / 255 - mean) / std`` in ``dtype``."""
    x = images.astype(jnp.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) * np.asarray(1.0 / np.asarray(std), np.float32)
    return x.astype(dtype)


def _shift_matrices(offsets: jax.Array, size: int) -> jax.Array:
    """``[B, size, size]`` 0/1 matrices ``S`` with ``(S @ v)[i] = v[i + offset]`` (0 outside)."""
    rows = jnp.arange(size, dtype=jnp.int32)
    return (rows[None, None, :] == rows[None, :, None] + offsets[:, None, None]).astype(
        jnp.float32)


def augment(images: jax.Array, key: jax.Array, *, max_shift: int, flip: bool) -> jax.Array:
    """Random translations (zero fill) and optional horizontal flips, per example.

    A shift by whole pixels is two products with 0/1 shift matrices (exact; docs/example.md
    says why): per image and channel, :math:`x' = R x C^T`, ``R`` and ``C`` shifting rows
    and columns (:func:`_shift_matrices`).

    Args:
      images: ``[B, H, W, C]`` pixel values (not yet normalized: 0 is the fill).
      max_shift: Largest shift in pixels along each axis.
      flip: Also flip half of the images left-right.

    Returns:
      float32 images of the same shape.
    """
    x = images.astype(jnp.float32)
    batch, height, width = x.shape[:3]
    shift_key, flip_key = jax.random.split(key)
    if max_shift > 0:
        offsets = jax.random.randint(shift_key, (2, batch), -max_shift, max_shift + 1,
                                     dtype=jnp.int32)
        rows = _shift_matrices(offsets[0], height)
        cols = _shift_matrices(offsets[1], width)
        x = jnp.einsum("bij,bjkc,blk->bilc", rows, x, cols,
                       precision=jax.lax.Precision.HIGHEST)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
        x = jnp.where(flips, x[:, :, ::-1, :], x)
    return x
