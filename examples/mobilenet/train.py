"""Training and evaluation of the MobileNet example: optax, jax.sharding, orbax.

The recipe, in the order :func:`train_and_evaluate` runs it:

1. Load the data (a bad data directory fails here, before anything is written).
2. Build a :class:`jax.sharding.Mesh` over every device with one axis, ``"data"``:
   batches are split on it, the train state is replicated. The same code runs on
   one CPU, on 8 forced host devices, on a GPU/TPU host, and on several hosts
   after ``jax.distributed.initialize()`` (``Config.distributed``).
3. Create the replicated :class:`TrainState` (:func:`create_train_state`) and the
   jitted steps (:func:`make_train_step`, :func:`make_eval_step`); the train step
   donates the state, so parameters are updated in place.
4. Restore the latest orbax checkpoint of the work directory, if any. The data
   order is a pure function of ``(seed, step)`` and the per-step PRNG key is
   ``fold_in(rng, step)``, so a resumed run repeats an uninterrupted one exactly.
5. Train. The host only dispatches: metrics are summed on the devices and fetched
   every ``log_every`` steps, when they go to the progress bar and ``metrics.jsonl``.
   A non-finite loss or gradient stops the run (:class:`TrainingDiverged`); no
   checkpoint is written after it, so the last one is good.
6. Evaluate with the running batch-norm statistics; save the final checkpoint and
   plot the curves (``metrics.png``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobilenet import input_pipeline
from mobilenet.configs.default import Config

DATA_AXIS = "data"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "adamw": 1e-2}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-5, "adamw": 0.05}
CHECKPOINT_SUBDIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"


class SetupError(ValueError):
    """A configuration that cannot run on this data or these devices (one-line message)."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message says where and what was kept."""


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
        gradient was not finite (-1 while none).
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


# --- building blocks -----------------------------------------------------------------------


def create_mesh(devices: Iterable[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (``"data"``) over ``devices`` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: split along its first axis over the ``"data"`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def create_model(config: Config, *, num_classes: int) -> nn.Module:
    """The configured model from :mod:`mobilenet.models`."""
    from mobilenet import models

    return models.create_model(
        config.model, num_classes=num_classes, width_multiplier=config.width,
        small_input=config.small_input, dtype=DTYPES[config.dtype],
        grad_at_zero=config.grad_at_zero, grad_at_six=config.grad_at_six,
        batch_norm=config.batch_norm)


def learning_rate(config: Config) -> float:
    """The peak learning rate: ``config.learning_rate``, else the optimizer's default."""
    if config.learning_rate is not None:
        return float(config.learning_rate)
    return DEFAULT_LEARNING_RATE[config.optimizer]


def weight_decay(config: Config) -> float:
    """The weight decay: ``config.weight_decay``, else the optimizer's default."""
    if config.weight_decay is not None:
        return float(config.weight_decay)
    return DEFAULT_WEIGHT_DECAY[config.optimizer]


def max_shift(config: Config, dataset: input_pipeline.Dataset) -> int:
    """``config.max_shift``, else 2 pixels on digits and 4 on other data."""
    if config.max_shift is not None:
        return config.max_shift
    return 2 if dataset.name == "digits" else 4


def total_steps(config: Config, num_train: int) -> int:
    """``config.steps``, or ``ceil(epochs * steps per epoch)`` when ``config.epochs`` is set."""
    if config.epochs is None:
        return config.steps
    per_epoch = input_pipeline.steps_per_epoch(num_train, config.batch_size)
    return max(1, math.ceil(config.epochs * per_epoch))


def warmup_cosine_schedule(*, peak: float, warmup_steps: int, total_steps: int
                           ) -> optax.Schedule:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    The first step already uses ``peak / warmup_steps`` (not 0). Written out
    rather than taken from optax so it stays float32 under strict dtype promotion.
    """
    warmup = max(int(warmup_steps), 1)
    decay = max(int(total_steps) - int(warmup_steps), 1)

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count).astype(jnp.float32)
        ramp = jnp.minimum((t + 1.0) / warmup, 1.0)
        progress = jnp.clip((t - warmup_steps) / decay, 0.0, 1.0)
        return peak * ramp * (0.5 + 0.5 * jnp.cos(jnp.pi * progress))

    return schedule


def _decay_mask(params: Any) -> Any:
    """Weight decay on kernels only: no decay for batch-norm scales/offsets or biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: Config, *, total_steps: int) -> optax.GradientTransformation:
    """SGD with Nesterov momentum or AdamW; warm-up + cosine decay; masked weight decay.

    Equal settings return the same object, so repeated runs reuse compiled steps.
    """
    if config.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"create_optimizer: optimizer must be 'sgd' or 'adamw', "
                         f"got {config.optimizer!r}.")
    warmup = config.warmup_steps if config.warmup_steps is not None else total_steps // 10
    return _optimizer(config.optimizer, learning_rate(config), config.momentum,
                      weight_decay(config), warmup, total_steps)


@functools.lru_cache(maxsize=64)
def _optimizer(name: str, peak: float, momentum: float, decay: float, warmup: int,
               total_steps: int) -> optax.GradientTransformation:
    schedule = warmup_cosine_schedule(peak=peak, warmup_steps=warmup, total_steps=total_steps)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(decay, mask=_decay_mask),
                           optax.sgd(schedule, momentum=momentum, nesterov=True))
    return optax.adamw(schedule, b1=momentum, weight_decay=decay, mask=_decay_mask)


def _zero_metrics(first_nonfinite: jax.Array | None = None) -> dict[str, jax.Array]:
    return {
        "loss_sum": jnp.zeros((), jnp.float32),
        "accuracy_sum": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
        "first_nonfinite": (jnp.full((), -1, jnp.int32) if first_nonfinite is None
                            else first_nonfinite),
    }


def create_train_state(config: Config, model: nn.Module, *, image_shape: tuple[int, ...],
                       mesh: Mesh, total_steps: int) -> TrainState:
    """Initializes the model and the optimizer, replicated over ``mesh``.

    Args:
      config: The run's configuration (seed, optimizer, schedule).
      model: The Flax module (``model.apply(variables, x, train=...)``).
      image_shape: ``(H, W, C)`` of one input image.
      mesh: The device mesh; the state is replicated on it.
      total_steps: Length of the learning-rate schedule.

    Returns:
      The :class:`TrainState` at step 0.
    """
    tx = create_optimizer(config, total_steps=total_steps)
    return _init_function(model, tx, tuple(image_shape), mesh)(*_init_keys(config.seed))


def abstract_train_state(config: Config, model: nn.Module, *, image_shape: tuple[int, ...],
                         mesh: Mesh, total_steps: int) -> TrainState:
    """The :class:`TrainState` of :func:`create_train_state` as shapes, dtypes and shardings.

    Nothing is computed; use it to compile the steps ahead of time
    (``train_step.lower(abstract_state, batch_spec).compile()``).
    """
    tx = create_optimizer(config, total_steps=total_steps)
    shapes = jax.eval_shape(_init_function(model, tx, tuple(image_shape), mesh),
                            *_init_keys(config.seed))
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), shapes)


def _init_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The initialization key and the training key data of ``seed``."""
    # XLA:CPU takes seconds per hundred threefry draws to compile (MobileNetV2 init: ~15 s);
    # the "rbg" generator compiles about twice as fast. Init runs once, so its key can differ.
    return (jax.random.key(seed, impl="rbg"),
            jax.random.fold_in(jax.random.PRNGKey(seed), 1))


@functools.lru_cache(maxsize=16)
def _init_function(model: nn.Module, tx: optax.GradientTransformation,
                   image_shape: tuple[int, ...], mesh: Mesh) -> Callable[..., TrainState]:
    def init(init_key: jax.Array, state_key: jax.Array) -> TrainState:
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init({"params": init_key, "dropout": init_key}, dummy, train=False)
        params = variables["params"]
        with jax.numpy_dtype_promotion("standard"):  # optax's state init is not strict-clean.
            opt_state = tx.init(params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=opt_state,
                          rng=state_key, metrics=_zero_metrics(), model=model, tx=tx)

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

    One SGD/AdamW step on a global batch split over ``mesh``: on-device
    augmentation and normalization, forward in train mode (batch statistics,
    dropout), label-smoothed cross-entropy in float32, the optax update.
    Batch-norm statistics are computed over the global batch, so the result
    does not depend on the number of devices.

    Args:
      mesh: The device mesh (state replicated, batch split on ``"data"``).
      num_classes: Classifier outputs.
      mean: Per-channel mean of the images in ``[0, 1]`` units.
      std: Per-channel standard deviation.
      dtype: Compute dtype of the input (the model casts its own).
      label_smoothing: Label smoothing of the loss.
      max_shift: Largest random translation in pixels (0: none).
      flip: Random horizontal flips.
      donate: Donate the input state (its buffers are reused for the output).

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

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            logits, updates = state.apply_fn(_variables(state, params), images, train=True,
                                             mutable=["batch_stats"],
                                             rngs={"dropout": dropout_key})
            logits = logits.astype(jnp.float32)
            loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        with jax.numpy_dtype_promotion("standard"):  # optax's update is not strict-clean.
            updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                                 for g in jax.tree.leaves(grads)))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        sums = state.metrics
        first = sums["first_nonfinite"]
        metrics = {
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
    """The jitted evaluation step ``(state, batch) -> sums``.

    The model runs in eval mode: batch norm uses the running statistics, so an
    example's prediction does not depend on the rest of its batch.

    Args:
      mesh: The device mesh.
      mean: Per-channel mean of the images in ``[0, 1]`` units.
      std: Per-channel standard deviation.
      dtype: Compute dtype of the input.

    Returns:
      The jitted step. ``batch`` is ``{"image", "label", "mask"}`` (mask 0 marks
      padding); the result holds the batch's ``loss_sum``, ``correct`` and ``count``.
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


# --- checkpoints, metrics and plots --------------------------------------------------------


class _Checkpoints:
    """Orbax CheckpointManager for the train state plus a JSON record of the data position."""

    def __init__(self, directory: str, *, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    @staticmethod
    def _tree(state: TrainState) -> dict[str, Any]:
        return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
                "opt_state": state.opt_state, "rng": state.rng, "metrics": state.metrics}

    def save(self, state: TrainState, *, step: int, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(self._tree(state)), meta=ocp.args.JsonSave(meta)))

    def restore(self, state: TrainState, *, step: int) -> tuple[TrainState, dict[str, Any]]:
        """Restores ``step`` into the structure, dtypes and shardings of ``state``."""
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._tree(state))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as error:
            raise SetupError(
                f"train: the checkpoint at step {step} in {self.directory} does not match this "
                f"configuration (another model or optimizer?); use a new --workdir "
                f"({' '.join(str(error).split())[:200]})") from None
        tree = restored["state"]
        return state.replace(**tree), dict(restored["meta"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class _MetricsLog:
    """JSON lines in ``metrics.jsonl``; on resume, records past the restored step are dropped."""

    def __init__(self, path: str | None, *, resume_step: int):
        self.path = path
        self.records: list[dict[str, Any]] = []
        if path and os.path.exists(path):
            with open(path) as f:
                old = [json.loads(line) for line in f if line.strip()]
            self.records = [r for r in old if r.get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def plot_metrics(records: list[dict[str, Any]], path: str) -> None:
    """Training and test loss and accuracy against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train (smoothed labels)"), ("test_loss", "test")):
        ax_loss.plot(*series(key), marker="." if key.startswith("test") else None, label=label)
    for key, label in (("train_accuracy", "train (augmented)"), ("test_accuracy", "test")):
        ax_acc.plot(*series(key), marker="." if key.startswith("test") else None, label=label)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1.01))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the loop ------------------------------------------------------------------------------


DISTRIBUTED_ENV = {"JAX_NUM_PROCESSES": "num_processes", "JAX_PROCESS_ID": "process_id"}


def _initialize_distributed() -> None:
    """``jax.distributed.initialize()`` once, with the cluster read from the environment.

    On SLURM, Open MPI, Kubernetes and Cloud TPU, JAX finds the coordinator, the
    process count and this process's id by itself. Elsewhere it reads only
    ``JAX_COORDINATOR_ADDRESS``; the count and the id are then taken from
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (:data:`DISTRIBUTED_ENV`).

    Raises:
      SetupError: a variable is not an integer, or the cluster is not fully described.
    """
    arguments = {}
    for variable, argument in DISTRIBUTED_ENV.items():
        value = os.environ.get(variable)
        if value is not None:
            try:
                arguments[argument] = int(value)
            except ValueError:
                raise SetupError(f"train: {variable} must be an integer, got {value!r}.") from None
    try:
        jax.distributed.initialize(**arguments)
    except RuntimeError as error:  # Already initialized by the caller: fine.
        if "already" not in str(error).lower():
            raise
    except ValueError as error:  # Nothing detected and not enough variables set.
        raise SetupError(
            f"train: --distributed: {error} Set JAX_COORDINATOR_ADDRESS (host:port of "
            "process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, or launch under SLURM, "
            "Open MPI or on a Cloud TPU.") from None


@jax.jit
def _reset_sums(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return _zero_metrics(metrics["first_nonfinite"])


def _diverged(step: int, checkpoints: _Checkpoints | None, saved: int | None) -> TrainingDiverged:
    if checkpoints is None:
        kept = "no work directory, nothing saved"
    elif saved is None:
        kept = f"no checkpoint was saved yet in {checkpoints.directory}"
    else:
        kept = f"the last good checkpoint (step {saved}) is kept in {checkpoints.directory}"
    return TrainingDiverged(
        f"train: the loss or gradient became NaN/inf at step {step}; stopped ({kept}). "
        "Try a lower --lr or --dtype float32.")


def train_and_evaluate(config: Config, workdir: str | None) -> dict[str, Any]:
    """Trains and evaluates a model; resumes from ``workdir``'s latest checkpoint.

    Args:
      config: The configuration (:func:`mobilenet.configs.get_config`).
      workdir: Directory for checkpoints, ``metrics.jsonl`` and ``metrics.png``;
        ``None`` writes nothing (quiet runs for studies, with ``config.progress=False``).

    Returns:
      ``{"test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps",
      "resumed_from", "seconds", "images_per_second"}``: the final test metrics,
      the training loss and accuracy averaged over the last ``log_every`` steps
      (augmented, label-smoothed), and the number of steps.

    Raises:
      input_pipeline.DataError: the data directory is missing or corrupt
        (raised before anything is written).
      SetupError: the batch does not divide over the devices, the work
        directory holds another configuration's checkpoint, or ``config.distributed``
        finds no cluster (:func:`_initialize_distributed`).
      TrainingDiverged: the loss became NaN or infinite.
    """
    config.validate()
    start_time = time.perf_counter()
    if config.distributed:
        _initialize_distributed()
    dataset = input_pipeline.load_dataset(
        config.data, data_dir=config.data_dir, seed=config.seed, image_size=config.image_size,
        synthetic_examples=config.synthetic_examples)
    num_classes = config.num_classes or dataset.num_classes
    if int(dataset.train_labels.max()) >= num_classes:
        raise SetupError(f"train: num_classes {num_classes} is too small for {dataset.name}'s "
                         f"{dataset.num_classes} classes.")
    mesh = create_mesh()
    if config.batch_size % mesh.size or config.eval_batch_size % mesh.size:
        raise SetupError(
            f"train: batch_size {config.batch_size} and eval_batch_size "
            f"{config.eval_batch_size} must be multiples of the {mesh.size} devices.")
    num_train = dataset.train_images.shape[0]
    try:
        steps = total_steps(config, num_train)
        input_pipeline.steps_per_epoch(num_train, config.batch_size)
    except ValueError as error:
        raise SetupError(f"train: {error}") from None

    verbose = config.progress and jax.process_index() == 0
    say = _printer(verbose)
    model = create_model(config, num_classes=num_classes)
    dtype = DTYPES[config.dtype]
    train_step = make_train_step(
        mesh=mesh, num_classes=num_classes, mean=dataset.mean, std=dataset.std, dtype=dtype,
        label_smoothing=config.label_smoothing,
        max_shift=max_shift(config, dataset) if config.augment else 0,
        flip=config.augment and dataset.flip)
    eval_step = make_eval_step(mesh=mesh, mean=dataset.mean, std=dataset.std, dtype=dtype)
    test_batches = input_pipeline.eval_batches(
        dataset.test_images, dataset.test_labels, batch_size=config.eval_batch_size,
        sharding=batch_sharding(mesh))
    # XLA compiles on one core: compile the two steps in threads while this one
    # compiles and runs the initialization (and restores a checkpoint).
    abstract = abstract_train_state(config, model, image_shape=dataset.image_shape, mesh=mesh,
                                    total_steps=steps)
    compile_start = time.perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    compiling = [
        pool.submit(_compile, train_step, abstract,
                    _batch_spec(mesh, config.batch_size, dataset.image_shape, mask=False)),
        pool.submit(_compile, eval_step, abstract, jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            test_batches[0]))]
    pool.shutdown(wait=False)
    state = create_train_state(config, model, image_shape=dataset.image_shape, mesh=mesh,
                               total_steps=steps)

    checkpoints, meta = None, {}
    start = 0
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
        checkpoints = _Checkpoints(os.path.join(workdir, CHECKPOINT_SUBDIR),
                                   keep=config.keep_checkpoints)
    try:
        latest = checkpoints.latest_step() if checkpoints else None
        if latest is not None:
            state, meta = checkpoints.restore(state, step=latest)
            start = int(meta["step"])
        say(f"{config.model} x{config.width} ({_count(state.params):,} parameters) on "
            f"{dataset.name} ({num_train} train / {dataset.test_images.shape[0]} test), "
            f"{mesh.size} {jax.devices()[0].platform} device(s), batch {config.batch_size}, "
            f"{steps} steps" + (f"; resuming from step {start}" if start else ""))
        if workdir is not None and jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump(dataclasses.asdict(config), f, indent=2)
        log = _MetricsLog(os.path.join(workdir, METRICS_FILE)
                          if workdir is not None and jax.process_index() == 0 else None,
                          resume_step=start)
        for future in compiling:
            future.result()
        say(f"initialized and compiled in {time.perf_counter() - compile_start:.1f} s")
        summary = _run(config, mesh, state, train_step, eval_step, test_batches, dataset, log,
                       checkpoints, start=start, steps=steps, meta=meta, verbose=verbose)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    if workdir is not None and config.plot and jax.process_index() == 0 and log.records:
        plot_metrics(log.records, os.path.join(workdir, PLOT_FILE))
        say(f"wrote {os.path.join(workdir, PLOT_FILE)} and {os.path.join(workdir, METRICS_FILE)}")
    summary["seconds"] = time.perf_counter() - start_time
    return summary


def _batch_spec(mesh: Mesh, batch_size: int, image_shape: tuple[int, ...], *,
                mask: bool) -> dict[str, jax.ShapeDtypeStruct]:
    sharding = batch_sharding(mesh)
    spec = {"image": jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.uint8,
                                          sharding=sharding),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}
    if mask:
        spec["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=sharding)
    return spec


def _compile(step: Any, *args: Any) -> None:
    """Compiles a jitted step for ``args`` (its later calls with such arguments reuse it)."""
    if hasattr(step, "lower"):  # Not for a wrapped step (the tests wrap it): it compiles later.
        step.lower(*args).compile()


def _count(params: Any) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _printer(verbose: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if verbose:
            from tqdm import tqdm

            tqdm.write(message)

    return say


def _run(config: Config, mesh: Mesh, state: TrainState, train_step: Callable,
         eval_step: Callable, test_batches: list, dataset: input_pipeline.Dataset,
         log: _MetricsLog,
         checkpoints: _Checkpoints | None, *, start: int, steps: int, meta: dict[str, Any],
         verbose: bool) -> dict[str, Any]:
    """The training loop proper, from step ``start`` to ``steps``."""
    from tqdm import tqdm

    last_train = dict(meta.get("last_train", {}))
    saved = start if start else None
    images_per_second = float("nan")
    bar = tqdm(total=steps, initial=start, disable=not verbose, unit="step", dynamic_ncols=True,
               desc="train")
    batches = input_pipeline.train_batches(
        dataset, batch_size=config.batch_size, seed=config.seed, start_step=start,
        sharding=batch_sharding(mesh))
    window_start, window_step = time.perf_counter(), start
    try:
        for step in range(start, steps):
            state, _ = train_step(state, next(batches))
            done = step + 1
            bar.update(1)
            if done == start + 1:  # The first call compiles: time the steps after it.
                jax.block_until_ready(state.step)
                window_start, window_step = time.perf_counter(), done
            if done % config.log_every == 0 or done == steps:
                sums = jax.device_get(state.metrics)
                state = state.replace(metrics=_reset_sums(state.metrics))
                if sums["first_nonfinite"] >= 0:
                    raise _diverged(int(sums["first_nonfinite"]) + 1, checkpoints, saved)
                now = time.perf_counter()
                if done > window_step:
                    images_per_second = ((done - window_step) * config.batch_size
                                         / (now - window_start))
                window_start, window_step = now, done
                count = max(int(sums["count"]), 1)
                last_train = {"train_loss": float(sums["loss_sum"]) / count,
                              "train_accuracy": float(sums["accuracy_sum"]) / count}
                log.write({"step": done, **last_train, "learning_rate": _lr_at(config, steps, done - 1),
                           "images_per_second": images_per_second})
                bar.set_postfix(loss=f"{last_train['train_loss']:.4f}",
                                acc=f"{last_train['train_accuracy']:.3f}",
                                img_s=f"{images_per_second:.0f}")
            if config.eval_every and done % config.eval_every == 0 and done != steps:
                log.write({"step": done, **evaluate(eval_step, state, test_batches)})
            if checkpoints is not None and (done == steps or (
                    config.checkpoint_every and done % config.checkpoint_every == 0)):
                first_bad = int(jax.device_get(state.metrics["first_nonfinite"]))
                if first_bad >= 0:  # Never save a state that has seen a NaN.
                    raise _diverged(first_bad + 1, checkpoints, saved)
                checkpoints.save(state, step=done, meta={
                    "step": done, "seed": config.seed, "data_position": done,
                    "epoch": done // input_pipeline.steps_per_epoch(
                        dataset.train_images.shape[0], config.batch_size),
                    "last_train": last_train})
                saved = done
    finally:
        bar.close()
    first_bad = int(jax.device_get(state.metrics["first_nonfinite"]))
    if first_bad >= 0:
        raise _diverged(first_bad + 1, checkpoints, saved)
    results = evaluate(eval_step, state, test_batches)
    if start < steps:
        log.write({"step": steps, **results})
    return {**results, "train_loss": last_train.get("train_loss", float("nan")),
            "train_accuracy": last_train.get("train_accuracy", float("nan")), "steps": steps,
            "resumed_from": start, "images_per_second": images_per_second}


def _lr_at(config: Config, steps: int, step: int) -> float:
    """The learning rate of step ``step`` (host-side copy of the schedule, for the log)."""
    warmup = config.warmup_steps if config.warmup_steps is not None else steps // 10
    ramp = min((step + 1.0) / max(warmup, 1), 1.0)
    progress = min(max((step - warmup) / max(steps - warmup, 1), 0.0), 1.0)
    return learning_rate(config) * ramp * (0.5 + 0.5 * math.cos(math.pi * progress))


# --- summary -------------------------------------------------------------------------------


def summarize(config: Config) -> str:
    """The model's layer table (``flax`` tabulate) and its trainable parameter count.

    Nothing is computed: shapes come from :func:`jax.eval_shape`. The input is
    32x32x3 with ``small_input`` and 224x224x3 without.

    Returns:
      The table, then a last line ``trainable parameters: N``.
    """
    num_classes = config.num_classes or 10
    model = create_model(config, num_classes=num_classes)
    size = 32 if config.small_input else 224
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    table = model.tabulate(rngs, dummy, train=False, console_kwargs={"width": 160})
    variables = jax.eval_shape(lambda: model.init(rngs, dummy, train=False))
    from mobilenet import models

    return f"{table}\ntrainable parameters: {models.count_params(variables):,}"
