"""Whether a run's settings fit its data and its devices, checked before anything is built.

Example:
  >>> import types, numpy as np
  >>> data = types.SimpleNamespace(name="digits", num_classes=10, train_labels=np.arange(10),
  ...                              train_images=np.zeros((1437, 1)))
  >>> num_classes, resolved = check_setup(default.Config(), data, devices=8)
  >>> num_classes, resolved.total_steps
  (10, 550)
"""

from __future__ import annotations

from typing import Any

from mobilenet.configs import default
from mobilenet.configs.default import Config
from mobilenet.infra.lifecycle import SetupError


def check_setup(config: Config, dataset: Any, *, devices: int) -> tuple[int, default.Resolved]:
    """The number of classes and the resolved settings (:func:`default.resolve`) of a run.

    Args:
      config: The run's settings.
      dataset: Its data (:class:`mobilenet.infra.datasets.Dataset`).
      devices: The devices a batch is split over.

    Raises:
      SetupError: ``num_classes`` is too small for the labels, a batch does not divide
        over the devices, or the batch is larger than the training set.
    """
    num_classes = config.num_classes or dataset.num_classes
    if int(dataset.train_labels.max()) >= num_classes:
        raise SetupError(f"train: num_classes {num_classes} is too small for {dataset.name}'s "
                         f"{dataset.num_classes} classes.")
    if config.batch_size % devices or config.eval_batch_size % devices:
        raise SetupError(
            f"train: batch_size {config.batch_size} and eval_batch_size "
            f"{config.eval_batch_size} must be multiples of the {devices} devices.")
    try:
        return num_classes, default.resolve(config, num_train=dataset.train_images.shape[0])
    except ValueError as error:
        raise SetupError(f"train: {error}") from None
