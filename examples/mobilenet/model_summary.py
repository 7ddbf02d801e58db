"""A configured model at a glance, without training it: ``examples/train.py --summary``.

Nothing is computed: the shapes come from :func:`jax.eval_shape`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mobilenet import models
  >>> model = models.create_model("mobilenet_v2", num_classes=10)
  >>> init = lambda key, x: model.init(key, x, train=False)
  >>> count_params(jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  2236682
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet import train_state
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
    return f"{table}\ntrainable parameters: {count_params(variables):,}"


def count_params(variables_or_params: Mapping[str, Any]) -> int:
    """The number of trainable parameters (the ``"params"`` collection only).

    Args:
      variables_or_params: ``model.init``'s variables (only their ``"params"``
        are counted) or the params tree itself; arrays or
        ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``).

    Returns:
      The total number of scalars.
    """
    tree = variables_or_params
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree["params"]
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))
