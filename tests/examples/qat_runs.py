"""A QAT network brought to a state worth exporting, for the export and emulation tests."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilenet import export, qat_export
from mobilenet.infra import datasets


def settled_run(model: nn.Module, *, image_size: int, num_test: int) -> export.Run:
    """``model`` initialized, then four train-mode passes of 16 synthetic images (its
    batch-norm statistics and moving ranges set), as a :class:`mobilenet.export.Run`."""
    shape = (image_size, image_size, 3)
    dataset = datasets.make_synthetic(num_train=64, num_test=num_test,
                                            image_size=image_size)
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), jnp.zeros((1, *shape)))
    step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1])
    normalize = qat_export.normalizer(export.Run(None, model, variables, 0, dataset))
    for start in range(0, 64, 16):
        stats = step(variables, normalize(dataset.train_images[start:start + 16]))
        variables = {"params": variables["params"], **stats}
    variables = jax.tree.map(np.asarray, variables)
    return export.Run(None, model, variables, 0, dataset)
