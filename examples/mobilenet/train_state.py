"""The training state (:class:`TrainState`) and the jitted steps: initialization, train
step (it donates the state: the parameters are updated in place), eval step."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from mobilenet import input_pipeline, models, optim, qat_layers, tracking
from mobilenet.configs.default import Config
from mobilenet.infra.program_cache import ProgramCache
from mobilenet.sharding import batch_sharding, replicated

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes.

    Attributes:
      step: Completed training steps (int32 scalar); also the data position.
      params: The model's parameters (float32).
      batch_stats: Batch-norm running statistics (``{}`` without batch norm).
      opt_state: The optax state.
      rng: PRNG key data (uint32); step ``s`` uses ``fold_in(rng, s)``.
      metrics: Sums since the last fetch (``loss_sum``, ``accuracy_sum``,
        ``count``) and ``first_nonfinite``, the first step whose loss or
        gradient was not finite (-1 while none); and what :mod:`mobilenet.tracking`
        tracks (``kinks``: kink counts, ``loss_scale``: float16's loss scale).
      model: The Flax module (static; compared by value, so equal configurations
        share compiled steps).
      tx: The optax transformation (static).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    metrics: dict[str, jax.Array]
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def apply_fn(self) -> Callable[..., Any]:
        """``model.apply``."""
        return self.model.apply


def create_model(config: Config, *, num_classes: int) -> nn.Module:
    """The configured model from :mod:`mobilenet.models` (its quantized layers' fields:
    :meth:`~mobilenet.quantization_settings.QuantizationSettings.model_fields`)."""
    return models.create_model(
        config.model, num_classes=num_classes, width_multiplier=config.width,
        small_input=config.small_input, dtype=DTYPES[config.dtype],
        grad_at_zero=config.grad_at_zero, grad_at_six=config.grad_at_six,
        batch_norm=config.batch_norm, **config.model_fields())


def zero_metrics(first_nonfinite: jax.Array | None = None) -> dict[str, jax.Array]:
    return {
        "loss_sum": jnp.zeros((), jnp.float32),
        "accuracy_sum": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
        "first_nonfinite": (jnp.full((), -1, jnp.int32) if first_nonfinite is None
                            else first_nonfinite),
    }


def create_train_state(config: Config, model: nn.Module, *, image_shape: tuple[int, ...],
                       mesh: Mesh, total_steps: int, cache: ProgramCache | None = None
                       ) -> TrainState:
    """The :class:`TrainState` at step 0: ``model`` initialized on ``(H, W, C)`` =
    ``image_shape`` inputs and the optimizer's state, replicated over ``mesh``.

    ``cache``: where the initial state (or the compiled initialization) may be found
    (or saved).
    """
    tx = optim.create_optimizer(config, total_steps=total_steps)
    init = _init_function(model, tx, tuple(image_shape), mesh, *tracking.options(config))
    keys = _init_keys(config.seed)
    if cache is None:
        return init(*keys)
    return cache.result("init", init, *keys, sharding=replicated(mesh))


def abstract_train_state(config: Config, model: nn.Module, *, image_shape: tuple[int, ...],
                         mesh: Mesh, total_steps: int, cache: ProgramCache | None = None
                         ) -> TrainState:
    """The :class:`TrainState` of :func:`create_train_state` as shapes, dtypes and shardings,
    to compile the steps for; nothing is computed (``cache``: where the shapes may be found,
    or saved, without tracing the initialization)."""
    tx = optim.create_optimizer(config, total_steps=total_steps)
    init = _init_function(model, tx, tuple(image_shape), mesh, *tracking.options(config))

    def shapes() -> TrainState:
        return jax.eval_shape(init, *_init_keys(config.seed))

    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)),
        shapes() if cache is None else cache.shapes("state", shapes))


@functools.partial(jax.jit, static_argnums=0)  # One program, not five eager ones.
def _init_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The initialization key and the training key data of ``seed``."""
    # "rbg" compiles about twice as fast as threefry on XLA:CPU (docs/example.md).
    return (jax.random.key(seed, impl="rbg"),
            jax.random.fold_in(jax.random.PRNGKey(seed), 1))


@functools.lru_cache(maxsize=16)
def _init_function(model: nn.Module, tx: optax.GradientTransformation,
                   image_shape: tuple[int, ...], mesh: Mesh, count_kinks: bool = False,
                   loss_scaling: bool = False) -> Callable[..., TrainState]:
    def init(init_key: jax.Array, state_key: jax.Array) -> TrainState:
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init({"params": init_key, "dropout": init_key}, dummy, train=False)
        params = variables["params"]
        with jax.numpy_dtype_promotion("standard"):  # optax's state init is not strict-clean.
            opt_state = tx.init(params)
        metrics = {**zero_metrics(), **tracking.initial(
            model, variables, dummy, init_key, count_kinks=count_kinks,
            loss_scaling=loss_scaling)}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=opt_state,
                          rng=state_key, metrics=metrics, model=model, tx=tx)

    return jax.jit(init, out_shardings=replicated(mesh))


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def make_train_step(*, mesh: Mesh, num_classes: int, mean: Iterable[float],
                    std: Iterable[float], dtype: Any = jnp.float32,
                    label_smoothing: float = 0.0, max_shift: int = 0, flip: bool = False,
                    donate: bool = True) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted training step ``(state, batch) -> (state, metrics)``.

    One optimizer step on a global batch split over ``mesh``: on-device augmentation
    (:func:`~mobilenet.input_pipeline.augment`) and normalization (``mean`` and ``std`` per
    channel, in ``[0, 1]`` units; then ``dtype``), the forward pass in train mode,
    label-smoothed cross-entropy in float32, the optax update. Batch-norm statistics are
    over the global batch: the result does not depend on the number of devices.
    ``donate``: the input state's buffers are reused for the output.

    Returns:
      The jitted step. ``batch`` is ``{"image": uint8 [B, H, W, C], "label": int32 [B]}``;
      ``metrics`` holds this step's ``loss``, ``accuracy`` and ``grad_norm`` (device
      scalars: fetch them only when needed). ``state.metrics`` accumulates them.
    """
    return _train_step(mesh, num_classes, tuple(float(m) for m in mean),
                       tuple(float(s) for s in std), dtype, float(label_smoothing),
                       int(max_shift), bool(flip), bool(donate))


@functools.lru_cache(maxsize=16)
def _train_step(mesh: Mesh, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                dtype: Any, label_smoothing: float, max_shift: int, flip: bool,
                donate: bool) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    def train_step(state: TrainState, batch: dict[str, jax.Array]
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        augment_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        images = batch["image"]
        if max_shift or flip:
            images = input_pipeline.augment(images, augment_key, max_shift=max_shift, flip=flip)
        images = input_pipeline.normalize(images, mean=mean, std=std, dtype=dtype)
        labels = batch["label"]
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32),
                                      label_smoothing)
        frozen = qat_layers.bn_frozen(state.model, state.step)  # QAT may freeze batch norm.

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
            logits, recorded = state.apply_fn(_variables(state, params), images, train=True,
                                              mutable=tracking.mutable(state.metrics),
                                              rngs={"dropout": dropout_key}, **frozen)
            logits = logits.astype(jnp.float32)
            loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
            # float16: differentiate a scaled loss (the identity otherwise).
            return tracking.scale_loss(state.metrics, loss), (loss, logits, recorded)

        (_, (loss, logits, recorded)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        grads = tracking.unscale(state.metrics, grads)
        batch_stats = recorded.get("batch_stats", state.batch_stats)
        with jax.numpy_dtype_promotion("standard"):  # optax's update is not strict-clean.
            updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                                 for g in jax.tree.leaves(grads)))
        (params, opt_state, batch_stats), finite = tracking.keep_finite(
            state.metrics, loss, grad_norm, (params, opt_state, batch_stats),
            (state.params, state.opt_state, state.batch_stats))
        sums = state.metrics
        first = sums["first_nonfinite"]
        metrics = {
            **tracking.updated(sums, recorded, grad_norm),
            "loss_sum": sums["loss_sum"] + loss,
            "accuracy_sum": sums["accuracy_sum"] + accuracy,
            "count": sums["count"] + 1,
            "first_nonfinite": jnp.where((first < 0) & ~finite, state.step, first),
        }
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, metrics=metrics)
        return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm}

    return jax.jit(train_step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)),
                   donate_argnums=(0,) if donate else ())


def make_eval_step(*, mesh: Mesh, mean: Iterable[float], std: Iterable[float],
                   dtype: Any = jnp.float32) -> Callable[[TrainState, dict], dict]:
    """The jitted evaluation step ``(state, batch) -> sums``, normalizing as the train step.

    The model runs in eval mode (running statistics: an example's prediction does not
    depend on its batch). ``batch`` is ``{"image", "label", "mask"}`` (mask 0: padding);
    the sums are the batch's ``loss_sum``, ``correct`` and ``count``.
    """
    return _eval_step(mesh, tuple(float(m) for m in mean), tuple(float(s) for s in std), dtype)


@functools.lru_cache(maxsize=16)
def _eval_step(mesh: Mesh, mean: tuple[float, ...], std: tuple[float, ...],
               dtype: Any) -> Callable[[TrainState, dict], dict]:
    def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        images = input_pipeline.normalize(batch["image"], mean=mean, std=std, dtype=dtype)
        logits = state.apply_fn(_variables(state, state.params), images, train=False)
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
        mask = batch["mask"]
        return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
                "count": jnp.sum(mask)}

    return jax.jit(eval_step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def evaluate(eval_step: Callable[[TrainState, dict], dict], state: TrainState,
             batches: Iterable[dict[str, jax.Array]]) -> dict[str, float]:
    """Test loss and accuracy over ``batches`` (one device-to-host transfer at the end)."""
    sums = jax.device_get([eval_step(state, batch) for batch in batches])
    count = sum(float(s["count"]) for s in sums)
    return {"test_loss": sum(float(s["loss_sum"]) for s in sums) / count,
            "test_accuracy": sum(float(s["correct"]) for s in sums) / count}
