"""A configured model at a glance, without training it: ``examples/train.py --summary``.

Nothing is computed: the shapes come from :func:`jax.eval_shape`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mobilenet import models, train_state
from mobilenet.configs.default import Config


def summarize(config: Config) -> str:
    """The model's layer table (``flax`` tabulate) and its trainable parameter count.

    The input is 32x32x3 with ``small_input`` and 224x224x3 without; the classes are
    ``config.num_classes``, else 10.

    Returns:
      The table, then a last line ``trainable parameters: N``.
    """
    num_classes = config.num_classes or 10
    model = train_state.create_model(config, num_classes=num_classes)
    size = 32 if config.small_input else 224
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    table = model.tabulate(rngs, dummy, train=False, console_kwargs={"width": 160})
    variables = jax.eval_shape(lambda: model.init(rngs, dummy, train=False))
    return f"{table}\ntrainable parameters: {models.count_params(variables):,}"
