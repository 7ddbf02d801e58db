"""Fine-tuning from another run: ``--init-from RUN`` (quantization-aware training, say).

The new run starts from the weights and batch statistics of ``RUN``'s newest
checkpoint, with a fresh optimizer and step count; a run of another model, width
or class count is refused in one line.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh

from mobilenet import export  # The run loader; imports no converter.
from mobilenet.configs.default import Config
from mobilenet.infra.settings import ConfigMismatch
from mobilenet.sharding import replicated
from mobilenet.train_state import TrainState


class InitFromError(ConfigMismatch):
    """``--init-from`` names a run this one cannot start from (one line)."""


def init_from(state: TrainState, workdir: str, *, config: Config, mesh: Mesh) -> TrainState:
    """``state`` with the parameters and batch statistics of the run in ``workdir``.

    The newest checkpoint of that run (e.g. a float run) must have this model's
    parameters, the same names and shapes (the same architecture, width and
    classes); its batch statistics replace this state's where they share a name
    (a QAT model adds activation ranges, which start from its first batch). The
    optimizer state and the step stay fresh: fine-tuning runs its own schedule.

    Raises:
      InitFromError: no run there, another model, or other parameter shapes.
    """
    where = f"train: --init-from {workdir}"
    try:
        run = export.load_run(workdir)
    except export.ExportError as error:
        raise InitFromError(f"{where}: {error}") from None
    if run.config.model != config.model:
        raise InitFromError(f"{where}: that run trained {run.config.model}, this one "
                            f"trains {config.model}")
    have, want = _shapes(run.variables["params"]), _shapes(state.params)
    if have != want:
        logits = [k for k in want if k.startswith("logits/kernel")]
        if logits and have.get(logits[0], (0,))[-1] != want[logits[0]][-1]:
            raise InitFromError(f"{where}: that run has {have.get(logits[0], ('?',))[-1]} "
                                f"classes, this one {want[logits[0]][-1]}")
        first = min(set(have.items()) ^ set(want.items()))[0]
        raise InitFromError(f"{where}: its parameters differ from this model's (first: "
                            f"{first}); same --model, --width, --small-input, --batch-norm?")
    params = jax.tree.map(jnp.asarray, run.variables["params"])
    saved = flatten_dict(run.variables.get("batch_stats", {}))
    stats = flatten_dict(jax.device_get(state.batch_stats))
    stats.update({k: v for k, v in saved.items() if k in stats and np.shape(v) == stats[k].shape})
    replicate = functools.partial(jax.device_put, device=replicated(mesh))
    with jax.numpy_dtype_promotion("standard"):
        opt_state = state.tx.init(params)
    return state.replace(params=replicate(params),
                         batch_stats=replicate(unflatten_dict(stats)),
                         opt_state=replicate(opt_state))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {"/".join(map(str, k)): tuple(np.shape(v)) for k, v in flatten_dict(tree).items()}
