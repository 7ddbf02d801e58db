"""Data for the MobileNet example: digits, CIFAR-10, synthetic; batching, sharding, augmentation.

Every dataset is held in host memory as uint8 NHWC images and int32 labels
(small enough here: CIFAR-10 is 150 MB). The training order is a pure function
of ``(seed, step)`` (:func:`batch_indices`), so a run resumed from a checkpoint
at step ``s`` sees exactly the batches an uninterrupted run sees. Batches are
placed on the devices with their sharding a couple of steps ahead
(:func:`train_batches`); scaling to ``[0, 1]``, normalization and augmentation
(:func:`augment`) run on the devices, inside the jitted step.

Loaders raise :class:`DataError` with a one-line message when a data directory
is missing or corrupt; the command line turns it into exit code 2.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet.configs.default import steps_per_epoch as steps_per_epoch  # One count, no JAX.
from mobilenet.infra import cifar10, digits
from mobilenet.infra.cifar10 import DataError as DataError  # Every loader's one-line error.


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset in host memory.

    Attributes:
      name: ``"digits"``, ``"cifar10"`` or ``"synthetic"``.
      train_images: uint8 array ``[N, H, W, C]``.
      train_labels: int32 array ``[N]``.
      test_images: uint8 array ``[M, H, W, C]``.
      test_labels: int32 array ``[M]``.
      num_classes: Number of classes.
      mean: Per-channel mean of the training images, in ``[0, 1]`` units.
      std: Per-channel standard deviation of the training images, in ``[0, 1]`` units.
      flip: Whether a horizontal flip keeps the label (not for digits).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0,
                 image_size: int = 32, synthetic_examples: int = 1024) -> Dataset:
    """Loads a dataset by name.

    Args:
      name: ``"digits"``, ``"cifar10"`` or ``"synthetic"``.
      data_dir: CIFAR-10's directory (required for ``"cifar10"``, unused otherwise).
      seed: Seed of the synthetic images.
      image_size: Side of the synthetic images.
      synthetic_examples: Number of synthetic training images.

    Returns:
      The :class:`Dataset`.

    Raises:
      DataError: if CIFAR-10's directory is missing, incomplete or corrupt.
      ValueError: for an unknown ``name``.
    """
    if name == "digits":
        return load_digits()
    if name == "cifar10":
        if not data_dir:
            raise DataError("cifar10: no data directory given (pass --data-dir DIR holding "
                            "data_batch_1..5, test_batch and batches.meta).")
        return load_cifar10(data_dir)
    if name == "synthetic":
        return make_synthetic(num_train=synthetic_examples, image_size=image_size, seed=seed)
    raise ValueError(f"load_dataset: name must be 'digits', 'cifar10' or 'synthetic', "
                     f"got {name!r}.")


def _statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scaled = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = np.maximum(scaled.std(axis=0), 1e-3)
    return tuple(float(m) for m in scaled.mean(axis=0)), tuple(float(s) for s in std)


def _make(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
          y_test: np.ndarray, *, num_classes: int, flip: bool) -> Dataset:
    mean, std = _statistics(x_train)
    return Dataset(name=name, train_images=np.ascontiguousarray(x_train, np.uint8),
                   train_labels=np.asarray(y_train, np.int32),
                   test_images=np.ascontiguousarray(x_test, np.uint8),
                   test_labels=np.asarray(y_test, np.int32), num_classes=num_classes,
                   mean=mean, std=std, flip=flip)


def load_digits() -> Dataset:
    """scikit-learn's bundled handwritten digits, upsampled to 32x32x3.

    The 1,797 8x8 images (values 0-16) are upsampled 4x by pixel repetition to
    32x32, scaled to 0-255 and repeated over three channels (so the models keep
    their standard three-channel stem). The split is fixed: a stratified 80/20
    split with ``random_state=0`` (1,437 training and 360 test images), cached
    after the first run (:mod:`mobilenet.infra.digits`).

    Returns:
      The :class:`Dataset`, 10 classes.
    """
    x_train, y_train, x_test, y_test = digits.load()
    x_train, x_test = (np.repeat(x.repeat(4, axis=1).repeat(4, axis=2)[..., None], 3, axis=-1)
                       for x in (x_train, x_test))
    return _make("digits", x_train, y_train, x_test, y_test, num_classes=10, flip=False)


def load_cifar10(data_dir: str) -> Dataset:
    """CIFAR-10 from its standard python-pickle directory.

    Args:
      data_dir: The directory holding ``data_batch_1`` ... ``data_batch_5``,
        ``test_batch`` and ``batches.meta`` (or the directory the official
        archive unpacks into, which holds ``cifar-10-batches-py/``).

    Returns:
      The :class:`Dataset`, 10 classes, 32x32x3 images.

    Raises:
      DataError: with one line naming the missing or corrupt file
        (:mod:`mobilenet.infra.cifar10` checks every file).
    """
    x_train, y_train, x_test, y_test = cifar10.load(data_dir)
    return _make("cifar10", x_train, y_train, x_test, y_test, num_classes=10, flip=True)


def make_synthetic(*, num_train: int = 1024, num_test: int = 256, image_size: int = 32,
                   num_classes: int = 10, seed: int = 0) -> Dataset:
    """Random but learnable images: a fixed blurry template per class plus noise.

    Args:
      num_train: Training images.
      num_test: Test images.
      image_size: Image side.
      num_classes: Classes (one template each).
      seed: Seed of the templates, the noise and the labels.

    Returns:
      The :class:`Dataset`.
    """
    rng = np.random.default_rng(seed)
    coarse = max(1, image_size // 8)
    templates = rng.uniform(0, 255, size=(num_classes, coarse, coarse, 3))
    templates = templates.repeat(image_size // coarse + 1, 1).repeat(image_size // coarse + 1, 2)
    templates = templates[:, :image_size, :image_size]

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, size=n)
        noise = rng.normal(0, 48, size=(n, image_size, image_size, 3))
        return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return _make("synthetic", x_train, y_train, x_test, y_test, num_classes=num_classes,
                 flip=False)


# --- order and batches ---------------------------------------------------------------------


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of the training examples in ``epoch``: a pure function of ``(seed, epoch)``.

    The latest orders are cached (read-only), so consecutive steps share one.
    """
    return _permutation(num_examples, seed, epoch)


@functools.lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.setflags(write=False)
    return order


def batch_indices(num_examples: int, *, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The training examples of global batch ``step``: a pure function of its arguments.

    Examples:
      >>> a = batch_indices(100, batch_size=8, seed=0, step=30)
      >>> b = batch_indices(100, batch_size=8, seed=0, step=30)
      >>> bool((a == b).all()), a.shape
      (True, (8,))
    """
    epoch, position = divmod(step, steps_per_epoch(num_examples, batch_size))
    order = epoch_permutation(num_examples, seed=seed, epoch=epoch)
    return order[position * batch_size:(position + 1) * batch_size]


def _process_slice(array: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch (all of it on one host)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return array
    share = array.shape[0] // count
    return array[index * share:(index + 1) * share]


def place(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Places a host batch on the devices with ``sharding`` (batch axis split over the mesh).

    Each process passes its own share of the global batch (:func:`_process_slice`);
    on one host that is the whole batch.
    """
    return {key: jax.make_array_from_process_local_data(sharding, value)
            for key, value in batch.items()}


def train_batches(dataset: Dataset, *, batch_size: int, seed: int, start_step: int,
                  sharding: jax.sharding.Sharding, prefetch: int = 2
                  ) -> Iterator[dict[str, jax.Array]]:
    """Yields the sharded training batches of steps ``start_step``, ``start_step + 1``, ...

    Batches are gathered on the host and placed on the devices ``prefetch``
    steps ahead, so the transfer overlaps the (asynchronously dispatched)
    training step.

    Args:
      dataset: The data.
      batch_size: Global batch size.
      seed: Seed of the order (:func:`batch_indices`).
      start_step: The first step's number (the data position when resuming).
      sharding: Sharding of a batch (split on its first axis).
      prefetch: Batches placed ahead.

    Yields:
      ``{"image": uint8 [B, H, W, C], "label": int32 [B]}`` global arrays.
    """
    num_examples = dataset.train_images.shape[0]

    def host_batch(step: int) -> dict[str, np.ndarray]:
        indices = _process_slice(batch_indices(num_examples, batch_size=batch_size, seed=seed,
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
    """The whole split as sharded batches, the last one padded and masked.

    Args:
      images: uint8 ``[N, H, W, C]``.
      labels: int32 ``[N]``.
      batch_size: Global batch size (a multiple of the device count).
      sharding: Sharding of a batch.

    Returns:
      A list of ``{"image", "label", "mask"}``; ``mask`` is 1.0 for real examples
      and 0.0 for padding.
    """
    batches = []
    for start in range(0, images.shape[0], batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        pad = batch_size - x.shape[0]
        mask = np.concatenate([np.ones(x.shape[0], np.float32), np.zeros(pad, np.float32)])
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        host = {"image": x, "label": y, "mask": mask}
        batches.append(place({k: _process_slice(v) for k, v in host.items()}, sharding))
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

    A shift by whole pixels is written as two products with 0/1 shift matrices,
    which is exact, cheap on every backend and keeps the batch axis shardable.

    Args:
      images: ``[B, H, W, C]`` pixel values (not yet normalized: 0 is the fill).
      key: A PRNG key.
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
