"""CIFAR-10 from its python-pickle files, every file checked: :func:`load`.

A missing, truncated or foreign file raises :class:`DataError` with one line
naming it and the problem (the command line turns it into exit code 2).
"""

from __future__ import annotations

import os
import pickle

import numpy as np

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
SUBDIR = "cifar-10-batches-py"  # What the official archive unpacks to.


class DataError(ValueError):
    """A dataset could not be loaded; the message is one line naming the file and the problem."""


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _read_cifar_pickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"cifar10: missing file {path}")
    try:
        with open(path, "rb") as f:
            # CIFAR-10's official python format is a pickle; only load directories you trust.
            content = pickle.load(f, encoding="bytes")
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means a corrupt file.
        raise DataError(f"cifar10: cannot read {path} ({_one_line(error)})") from None
    if not isinstance(content, dict):
        raise DataError(f"cifar10: {path} holds a {type(content).__name__}, not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def _cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    content = _read_cifar_pickle(path)
    if "data" not in content or "labels" not in content:
        raise DataError(f"cifar10: {path} lacks the 'data' or 'labels' entry")
    try:
        data = np.asarray(content["data"])
        labels = np.asarray(content["labels"], dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise DataError(f"cifar10: bad arrays in {path} ({_one_line(error)})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"cifar10: {path} 'data' must be uint8 [N, 3072], "
                        f"got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"cifar10: {path} has {data.shape[0]} images but "
                        f"{labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"cifar10: {path} has labels outside 0..9")
    # Rows are channel-major 3x32x32 (red, green, blue planes): to NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def load(data_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10's images and labels from its standard python-pickle directory.

    Args:
      data_dir: The directory holding ``data_batch_1`` ... ``data_batch_5``,
        ``test_batch`` and ``batches.meta`` (or the directory the official
        archive unpacks into, which holds ``cifar-10-batches-py/``).

    Returns:
      ``(train_images, train_labels, test_images, test_labels)``: uint8
      ``[N, 32, 32, 3]`` images, int32 labels in ``0..9``.

    Raises:
      DataError: with one line naming the missing or corrupt file.
    """
    if not os.path.isdir(data_dir):
        raise DataError(f"cifar10: data directory {data_dir} does not exist or is not a "
                        "directory")
    nested = os.path.join(data_dir, SUBDIR)
    if not os.path.exists(os.path.join(data_dir, META_FILE)) and os.path.isdir(nested):
        data_dir = nested
    meta = _read_cifar_pickle(os.path.join(data_dir, META_FILE))
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise DataError(f"cifar10: {os.path.join(data_dir, META_FILE)} must list "
                        "10 label_names")
    train = [_cifar_batch(os.path.join(data_dir, name)) for name in TRAIN_FILES]
    x_test, y_test = _cifar_batch(os.path.join(data_dir, TEST_FILE))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise DataError(f"cifar10: {data_dir} holds no training or no test images")
    return x_train, y_train, x_test, y_test
