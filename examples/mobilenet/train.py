"""The training loop of the MobileNet example: :func:`train_and_evaluate`.

:func:`fit` reads top to bottom: :func:`prepare` loads the data and builds the mesh,
model and steps (bad settings and data fail there, before anything is written); the
newest intact checkpoint is restored; :func:`_initialize` builds the state while the
steps compile; :func:`_train` trains, the host only dispatching, and evaluates. What
keeps the run safe is behind :class:`mobilenet.infra.lifecycle.Lifecycle`
(docs/fault_tolerance.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mobilenet import finetune, input_pipeline, optim, tracking, train_state
from mobilenet.configs.default import Config
from mobilenet.infra import datasets, program_cache
from mobilenet.infra.checkpoints import Restored, state_tree
from mobilenet.infra.lifecycle import Lifecycle, batch_spec, spec_of
from mobilenet.infra.progress import Progress, describe_run
from mobilenet.infra.setup_check import check_setup
from mobilenet.infra.state_size import check_state_fits
from mobilenet.model_summary import count_params
from mobilenet.sharding import batch_sharding, create_mesh
from mobilenet.train_state import TrainState

ModelFn = Callable[..., nn.Module]
"""``model_fn(config, *, num_classes) -> flax module``, as :func:`train_state.create_model`."""


@dataclasses.dataclass
class Prepared:
    """What the run builds before it touches the work directory.

    Attributes:
      dataset: The data in host memory.
      steps: The run's length.
      train_step: ``(state, batch) -> (state, metrics)``, jitted (compiled once initialized).
      eval_step: ``(state, batch) -> sums``, jitted (compiled once initialized).
      test_batches: The test split, sharded.
      abstract: The train state's shapes, dtypes and shardings.
      programs: Where the compiled steps are kept between runs (``None``: not kept).
    """

    config: Config
    dataset: datasets.Dataset
    mesh: Mesh
    steps: int
    model: nn.Module
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    test_batches: list[dict[str, jax.Array]]
    abstract: TrainState
    programs: program_cache.ProgramCache | None = None


def train_and_evaluate(config: Config, workdir: str | None, *,
                       model_fn: ModelFn | None = None) -> dict[str, Any]:
    """Trains and evaluates a model; resumes from ``workdir``'s newest intact checkpoint.

    Args:
      workdir: Directory for ``config.json``, checkpoints, ``metrics.jsonl`` and
        ``metrics.png``; ``None`` writes nothing (quiet runs for studies, with
        ``config.progress=False``). It is locked while the run uses it.
      model_fn: Builds the model instead of :func:`train_state.create_model`
        (``model_fn(config, *, num_classes)``), for studies with their own networks.

    Returns:
      ``{"test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps",
      "resumed_from", "seconds", "images_per_second", "step_seconds"}``: the final
      test metrics, the training loss and accuracy averaged over the last
      ``log_every`` steps (augmented, label-smoothed), the number of steps, and the
      timed training steps' own seconds (the first, compiling step left out). With
      ``config.count_kinks``, also ``"boundary_hits"``: the relu6 inputs exactly on
      each kink, per layer, over all steps (:func:`mobilenet.tracking.kink_counts`); with
      float16 compute, ``"loss_scale"`` (the final scale) and ``"skipped_steps"``.

    Raises:
      datasets.DataError, SetupError, mobilenet.infra.state_size.StateTooLarge:
        before anything is written (:class:`Lifecycle`'s checks, :func:`prepare`).
      TrainingDiverged, WriteFailed, Preempted, Interrupted: what stopped a started run
        (:mod:`mobilenet.infra.lifecycle` says what each keeps; docs/fault_tolerance.md).
    """
    return fit(config, workdir, model_fn=model_fn)[1]


def fit(config: Config, workdir: str | None, *, model_fn: ModelFn | None = None,
        on_step: Callable[[int, TrainState], None] | None = None
        ) -> tuple[TrainState, dict[str, Any]]:
    """:func:`train_and_evaluate`, also returning the final :class:`TrainState`.

    ``on_step(done, state)``, if given, sees the state after each training step
    (``done`` steps taken), for studies that probe a run as it trains; it must not
    keep ``state`` past its call (the next step donates its buffers).
    """
    config.validate()
    start_time = time.perf_counter()
    life = Lifecycle(workdir, distributed=config.distributed)  # Joins, checks: SetupError.
    run = prepare(config, model_fn)
    with life.running(keep=config.keep_checkpoints, progress=config.progress):
        restored = life.restore(config, state_tree(run.abstract),
                                num_train=run.dataset.train_images.shape[0])
        run, state = _initialize(run, life, restored)
        state, summary = _train(run, life, state, restored, on_step)
        if config.plot:
            life.plot()
    summary["seconds"] = time.perf_counter() - start_time
    return state, summary


def prepare(config: Config, model_fn: ModelFn | None = None) -> Prepared:
    """Loads the data, checks it against the settings, builds the mesh, model and steps.

    Raises:
      datasets.DataError: from :func:`datasets.load_dataset`.
      SetupError: too few classes, a batch that does not divide over the devices,
        or settings that do not fit the data (:func:`check_setup`).
      mobilenet.infra.state_size.StateTooLarge: from :func:`check_state_fits`.
    """
    dataset = datasets.load_dataset(
        config.data, data_dir=config.data_dir, seed=config.seed, image_size=config.image_size,
        synthetic_examples=config.synthetic_examples)
    mesh = create_mesh()
    num_classes, resolved = check_setup(config, dataset, devices=mesh.size)
    model = (model_fn or train_state.create_model)(config, num_classes=num_classes)
    dtype = train_state.DTYPES[config.dtype]
    train_step = train_state.make_train_step(
        mesh=mesh, num_classes=num_classes, mean=dataset.mean, std=dataset.std, dtype=dtype,
        label_smoothing=config.label_smoothing, max_shift=resolved.max_shift,
        flip=config.augment and dataset.flip)
    eval_step = train_state.make_eval_step(mesh=mesh, mean=dataset.mean, std=dataset.std,
                                           dtype=dtype)
    test_batches = input_pipeline.eval_batches(
        dataset.test_images, dataset.test_labels, batch_size=config.eval_batch_size,
        sharding=batch_sharding(mesh))
    programs = None if model_fn else program_cache.open_for_run(
        config, dataset, model, optim.create_optimizer(config, total_steps=resolved.total_steps),
        num_classes=num_classes)
    abstract = train_state.abstract_train_state(config, model, image_shape=dataset.image_shape,
                                                mesh=mesh, total_steps=resolved.total_steps,
                                                cache=programs)
    check_state_fits(abstract.params, abstract.opt_state)
    return Prepared(config=config, dataset=dataset, mesh=mesh, steps=resolved.total_steps,
                    model=model, train_step=train_step, eval_step=eval_step,
                    test_batches=test_batches, abstract=abstract, programs=programs)


def _initialize(run: Prepared, life: Lifecycle, restored: Restored | None
                ) -> tuple[Prepared, TrainState]:
    """The run with its steps compiled, and the restored or a new train state, initialized
    while the train and eval steps compile
    (:meth:`~mobilenet.infra.lifecycle.Lifecycle.compiling`)."""
    config, mesh, dataset = run.config, run.mesh, run.dataset
    eval_spec = spec_of(run.test_batches[0])
    train_spec = batch_spec(config.batch_size, {"image": (dataset.image_shape, jnp.uint8),
                                                "label": ((), jnp.int32)}, batch_sharding(mesh))
    with life.compiling({"train": (run.train_step, (run.abstract, train_spec)),
                         "eval": (run.eval_step, (run.abstract, eval_spec))},
                        cache=run.programs) as compiled:
        # The logged learning rate's eager programs (11) and later imports, as steps load.
        life.in_background(optim.learning_rate_schedule(config, total_steps=run.steps), 0)
        life.import_ahead(plot=config.plot)
        if restored is not None:
            state = run.abstract.replace(**restored.tree)
        else:
            state = life.in_background(
                train_state.create_train_state, config, run.model,
                image_shape=dataset.image_shape, mesh=mesh, total_steps=run.steps,
                cache=run.programs).result()
            if config.init_from is not None:
                state = finetune.init_from(state, config.init_from, config=config, mesh=mesh)
        start = restored.step if restored else 0
        life.say(describe_run(config, dataset, params=count_params(state.params),
                              devices=mesh.size, steps=run.steps, start=start))
    return dataclasses.replace(run, train_step=compiled["train"],
                               eval_step=compiled["eval"]), state


def _train(run: Prepared, life: Lifecycle, state: TrainState, restored: Restored | None,
           on_step: Callable[[int, TrainState], None] | None = None
           ) -> tuple[TrainState, dict[str, Any]]:
    """The training loop proper, from the restored step to the end; then the evaluation.

    Raises:
      TrainingDiverged: a NaN/inf loss or gradient (a state that saw one is never saved).
      disk.WriteFailed: a checkpoint could not be written.
      Preempted: SIGTERM: the step then running finished and was saved.
    """
    config, steps = run.config, run.steps
    start = restored.step if restored else 0
    last_train = dict(restored.meta.get("last_train", {})) if restored else {}
    progress = Progress(total=steps, start=start, batch_size=config.batch_size,
                        enabled=life.verbose)
    batches = input_pipeline.train_batches(
        run.dataset, batch_size=config.batch_size, seed=config.seed, start_step=start,
        sharding=batch_sharding(run.mesh))
    life.training = True
    try:
        for step in range(start, steps):
            if step == start and life.preemption.signalled:  # SIGTERM while compiling.
                raise life.preempted(None)
            state, _ = run.train_step(state, next(batches))
            done = step + 1
            progress.stepped(done, state.step)
            if on_step is not None:
                on_step(done, state)
            if done % config.log_every == 0 or done == steps:
                state, last_train = _log_train_metrics(run, life, state, done, progress)
            if config.eval_every and done % config.eval_every == 0 and done != steps:
                life.log.write({"step": done, **train_state.evaluate(
                    run.eval_step, state, run.test_batches)})
            preempted = life.preemption.reached(done)
            if preempted or done == steps or (
                    config.checkpoint_every and done % config.checkpoint_every == 0):
                life.save(done, state_tree(state), last_train=last_train,
                          first_nonfinite=state.metrics["first_nonfinite"], wait=preempted)
            if preempted:
                raise life.preempted(done)
    finally:
        progress.close()
    return state, _finish(run, life, state, start=start, progress=progress,
                          last_train=last_train)


def _log_train_metrics(run: Prepared, life: Lifecycle, state: TrainState, done: int,
                       progress: Progress) -> tuple[TrainState, dict[str, float]]:
    """Fetches the summed metrics, logs their means (returned with the state, its sums reset).

    Raises:
      TrainingDiverged: a step since the last fetch saw a NaN/inf.
    """
    sums = jax.device_get(state.metrics)
    state = state.replace(metrics=_reset_sums(state.metrics))
    life.check_finite(sums["first_nonfinite"])
    images_per_second = progress.fetched(done)
    count = max(int(sums["count"]), 1)
    means = {"train_loss": float(sums["loss_sum"]) / count,
             "train_accuracy": float(sums["accuracy_sum"]) / count}
    schedule = optim.learning_rate_schedule(run.config, total_steps=run.steps)
    life.log.write({"step": done, **means, "learning_rate": float(schedule(done - 1)),
                    "images_per_second": images_per_second})
    progress.show(loss=f"{means['train_loss']:.4f}", acc=f"{means['train_accuracy']:.3f}",
                  img_s=f"{images_per_second:.0f}")
    return state, means


@jax.jit
def _reset_sums(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    # The sums restart; what the state tracks across the run (kink counts, loss scale) stays.
    return {**metrics, **train_state.zero_metrics(metrics["first_nonfinite"])}


def _finish(run: Prepared, life: Lifecycle, state: TrainState, *, start: int,
            progress: Progress, last_train: dict[str, float]) -> dict[str, Any]:
    """The final evaluation (logged if this run trained, once the final checkpoint is
    complete: it is written meanwhile) and the summary."""
    life.check_finite(state.metrics["first_nonfinite"])
    results = train_state.evaluate(run.eval_step, state, run.test_batches)
    life.wait_for_save()
    if start < run.steps:
        life.log.write({"step": run.steps, **results})
    return {**results, "train_loss": last_train.get("train_loss", float("nan")),
            "train_accuracy": last_train.get("train_accuracy", float("nan")),
            "steps": run.steps, "resumed_from": start,
            "images_per_second": progress.images_per_second, "step_seconds": progress.seconds,
            **tracking.summary(state)}
