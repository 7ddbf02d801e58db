"""The example's data sets, in host memory: scikit-learn's digits, CIFAR-10, synthetic.

:func:`load_dataset` is the interface: a name in, a :class:`Dataset` out (uint8 NHWC
images, int32 labels, the per-channel statistics the input pipeline normalizes with).
Loaders raise :class:`DataError` with a one-line message when a data directory is
missing or corrupt (:mod:`mobilenet.infra.cifar10` checks every file); the command
line turns it into exit code 2. The batches, their order and the augmentation are the
recipe's, in :mod:`mobilenet.input_pipeline`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

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
