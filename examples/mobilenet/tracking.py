"""What the train state tracks besides the metric sums: kink counts and the loss scale.

Two optional entries of the train state's ``metrics`` switch on features of the train
step (:mod:`mobilenet.train_state`). Unlike the sums, which restart at every fetch, they
are kept for the whole run (and saved with it):

- ``kinks`` (``config.count_kinks``): the kink hits of every relu6-family layer summed
  over the steps, as jrelu6's ``"boundary_hits"`` collection (:data:`KINKS`), whose
  ``total`` stays the count of one step's inputs; :func:`kink_counts` reads them out.
- ``loss_scale`` (float16 compute): the dynamic loss scale of :mod:`mobilenet.loss_scale`.
  The step differentiates the scaled loss (:func:`scale_loss`, :func:`unscale`), and a
  step whose gradients overflowed is skipped, not a divergence (:func:`keep_finite`).

The initialization adds the entries (:func:`initial`), the step updates them
(:func:`updated`), and the end of a run reports them (:func:`summary`). Nothing here
knows the model's layers or the optimizer.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jrelu6
from mobilenet import loss_scale
from mobilenet.configs.default import Config

KINKS = "boundary_hits"  # The collection jrelu6's modules record their kink hits in.


def options(config: Config) -> tuple[bool, bool]:
    """What a run tracks: ``(count_kinks, loss_scaling)``."""
    return config.count_kinks, config.dtype == "float16"


def initial(model: nn.Module, variables: dict[str, Any], dummy: jax.Array, key: jax.Array,
            *, count_kinks: bool, loss_scaling: bool) -> dict[str, Any]:
    """The tracked entries at step 0 (``{}`` when nothing is tracked).

    Args:
      model: The Flax module.
      variables: Its initial variables.
      dummy: An input batch of one (for the shapes of the kink counts).
      key: The dropout key of that one forward pass.
      count_kinks: Add ``kinks``: zeros shaped as one step's counts.
      loss_scaling: Add ``loss_scale``: :func:`mobilenet.loss_scale.initial_state`.
    """
    tracked = {}
    if count_kinks:  # Zeros shaped as one step's counts (the same layers record).
        _, recorded = model.apply(variables, dummy, train=True, rngs={"dropout": key},
                                  mutable=["batch_stats", KINKS])
        tracked["kinks"] = jax.tree.map(jnp.zeros_like, recorded.get(KINKS, {}))
    if loss_scaling:
        tracked["loss_scale"] = loss_scale.initial_state()
    return tracked


def mutable(metrics: dict[str, Any]) -> list[str]:
    """The collections the train step's forward pass updates: the kink counts too if tracked."""
    return ["batch_stats", KINKS] if "kinks" in metrics else ["batch_stats"]


def scale_loss(metrics: dict[str, Any], loss: jax.Array) -> jax.Array:
    """The loss to differentiate: scaled by the loss scale if tracked (float16)."""
    scaler = metrics.get("loss_scale")
    return loss if scaler is None else loss_scale.scale(loss, scaler)


def unscale(metrics: dict[str, Any], grads: Any) -> Any:
    """The gradients of :func:`scale_loss`'s loss, divided by the scale again."""
    scaler = metrics.get("loss_scale")
    return grads if scaler is None else loss_scale.unscale(grads, scaler)


def keep_finite(metrics: dict[str, Any], loss: jax.Array, grad_norm: jax.Array,
                updated: tuple[Any, ...], unchanged: tuple[Any, ...]
                ) -> tuple[tuple[Any, ...], jax.Array]:
    """The step's new state (``updated``, or ``unchanged``), and whether it stays finite.

    With a loss scale, gradients that overflowed are a skipped step (the state
    as it was; :func:`loss_scale.adjust` lowers the scale), not a divergence;
    only a non-finite loss is.
    """
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if "loss_scale" not in metrics:
        return updated, finite
    return loss_scale.select(finite, updated, unchanged), jnp.isfinite(loss)


def updated(sums: dict[str, Any], recorded: dict[str, Any],
            grad_norm: jax.Array) -> dict[str, Any]:
    """The tracked entries after a step: kink counts added, the loss scale adjusted."""
    tracked = {}
    if "kinks" in sums:  # Hits summed over the steps; `total` stays one step's inputs.
        tracked["kinks"] = jax.tree.map(
            lambda old, new: jrelu6.BoundaryHits(old.at_zero + new.at_zero,
                                                 old.at_cap + new.at_cap, new.total),
            sums["kinks"], recorded.get(KINKS, {}),
            is_leaf=lambda node: isinstance(node, jrelu6.BoundaryHits))
    if "loss_scale" in sums:
        tracked["loss_scale"] = loss_scale.adjust(sums["loss_scale"], jnp.isfinite(grad_norm))
    return tracked


def kink_counts(state: Any) -> list[dict[str, Any]]:
    """The kink hits per layer over every step so far, on the host (``count_kinks`` runs).

    Args:
      state: A :class:`~mobilenet.train_state.TrainState`.

    Returns:
      One dict per relu6 layer (sorted by name, as :func:`jrelu6.summarize_boundary_hits`):
      ``layer``, ``n`` (its inputs over all steps), ``at_zero`` and ``at_cap`` (how many
      were exactly 0 and 6; -3 and 3 for hard-swish and hard-sigmoid), ``frac_zero``,
      ``frac_cap``. Empty when the state counts no kinks.
    """
    if "kinks" not in state.metrics:
        return []
    steps = int(jax.device_get(state.step))
    counts = jax.tree.map(
        lambda hits: jrelu6.BoundaryHits(hits.at_zero, hits.at_cap,
                                         np.asarray(hits.total, np.int64) * steps),
        jax.device_get(state.metrics["kinks"]),
        is_leaf=lambda node: isinstance(node, jrelu6.BoundaryHits))
    return [row._asdict() for row in jrelu6.summarize_boundary_hits(counts)]


def summary(state: Any) -> dict[str, Any]:
    """``boundary_hits`` (:func:`kink_counts`) and the float16 loss scale (``loss_scale``,
    ``skipped_steps``), for what ``state`` tracks (``{}`` when nothing)."""
    result: dict[str, Any] = {}
    if "kinks" in state.metrics:
        result["boundary_hits"] = kink_counts(state)
    if "loss_scale" in state.metrics:
        scale = jax.device_get(state.metrics["loss_scale"])
        result.update(loss_scale=float(scale["scale"]), skipped_steps=int(scale["skipped"]))
    return result
