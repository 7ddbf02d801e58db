"""The training loop of the MobileNet example: :func:`train_and_evaluate`.

The recipe, in the order :func:`fit` runs it:

1. Check the work directory (writable, consistent), then load the data and
   build the model and steps (:func:`prepare`): a bad directory or bad data
   fails here, before anything is written or compiled.
2. Build the one-axis device mesh (:mod:`mobilenet.sharding`): batches are
   split on it, the train state is replicated (``Config.distributed`` first
   calls ``jax.distributed.initialize()``).
3. Lock the work directory (one run at a time), check that it holds a run with
   the same settings, and restore the newest intact checkpoint
   (:mod:`mobilenet.infra.checkpoints`; damaged steps are moved aside and said
   so). The data order is a pure function of ``(seed, step)`` and the per-step
   PRNG key is ``fold_in(rng, step)``, so a resumed run repeats an uninterrupted
   one exactly.
4. Compile the train and eval steps (:mod:`mobilenet.train_state`) in threads
   while the main thread initializes the state.
5. Train. The host only dispatches: metrics are summed on the devices and fetched
   every ``log_every`` steps, when they go to the progress bar and ``metrics.jsonl``.
   A non-finite loss or gradient stops the run (:class:`TrainingDiverged`); no
   checkpoint is written after it, so the last one is good. SIGTERM saves the
   step then running and stops (:class:`Preempted`,
   :mod:`mobilenet.infra.preemption`); a failed write stops with
   :class:`WriteFailed`, the newest complete checkpoint kept.
6. Evaluate with the running batch-norm statistics; save the final checkpoint and
   plot the curves (``metrics.png``).

The infrastructure (work directory, checkpoints, metrics log, preemption,
compile cache, host memory) is in :mod:`mobilenet.infra`; docs/fault_tolerance.md
describes what it guarantees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mobilenet import input_pipeline, models, optim, train_state
from mobilenet.configs import default
from mobilenet.configs.default import Config
from mobilenet.infra import compile_cache, disk, distributed, resume_check
from mobilenet.infra.background import Background
from mobilenet.infra.checkpoints import CheckpointError, Checkpoints, Restored
from mobilenet.infra.metrics_log import MetricsLog, MetricsLogError, plot_metrics
from mobilenet.infra.preemption import Preemption
from mobilenet.infra.workdir import Workdir, WorkdirError
from mobilenet.sharding import batch_sharding, create_mesh
from mobilenet.train_state import TrainState

ModelFn = Callable[..., nn.Module]
"""``model_fn(config, *, num_classes) -> flax module``, as :func:`train_state.create_model`."""


class SetupError(ValueError):
    """A run that cannot start: settings, data, devices or work directory (one-line message)."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message says where and what was kept."""


class WriteFailed(RuntimeError):
    """A write to the work directory failed (a full disk); the message names the cause, the
    path and the newest complete checkpoint, which is untouched."""


class Preempted(RuntimeError):
    """SIGTERM (or JAX's preemption notice): the message names the step saved."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C; the message says what a rerun resumes from."""


@dataclasses.dataclass
class Prepared:
    """What the run builds before it touches the work directory.

    Attributes:
      config: The run's settings.
      dataset: The data in host memory.
      mesh: The device mesh.
      steps: The run's length.
      model: The flax module.
      train_step: ``(state, batch) -> (state, metrics)``, jitted.
      eval_step: ``(state, batch) -> sums``, jitted.
      test_batches: The test split, sharded.
      abstract: The train state's shapes, dtypes and shardings.
    """

    config: Config
    dataset: input_pipeline.Dataset
    mesh: Mesh
    steps: int
    model: nn.Module
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    test_batches: list[dict[str, jax.Array]]
    abstract: TrainState


@dataclasses.dataclass
class Saved:
    """The run's checkpoints and the last step saved in them.

    Attributes:
      checkpoints: The work directory's checkpoints (``None``: nothing is saved).
      step: The last step in ``checkpoints`` (``None`` while there is none).
      training: Whether the training loop has started.
    """

    checkpoints: Checkpoints | None = None
    step: int | None = None
    training: bool = False

    def kept(self) -> str:
        """Where a rerun would start, in words."""
        if self.checkpoints is None:
            return "no work directory, nothing saved"
        if self.step is None:
            return f"no checkpoint was saved yet in {self.checkpoints.directory}"
        return (f"the last checkpoint (step {self.step}) is kept in "
                f"{self.checkpoints.directory}")

    def rerun(self) -> str:
        """What running the same command again does, in words."""
        return "resume from it" if self.step is not None else "start again"


@dataclasses.dataclass
class Loop:
    """What the training loop reads.

    Attributes:
      run: The prepared model, steps and data.
      log: The metrics log.
      saved: The checkpoints and the last step saved.
      preemption: Says when to save and stop (SIGTERM).
      verbose: Show the progress bar.
    """

    run: Prepared
    log: MetricsLog
    saved: Saved
    preemption: Preemption
    verbose: bool


def train_and_evaluate(config: Config, workdir: str | None, *,
                       model_fn: ModelFn | None = None) -> dict[str, Any]:
    """Trains and evaluates a model; resumes from ``workdir``'s newest intact checkpoint.

    Args:
      config: The configuration (:func:`mobilenet.configs.get_config`).
      workdir: Directory for ``config.json``, checkpoints, ``metrics.jsonl`` and
        ``metrics.png``; ``None`` writes nothing (quiet runs for studies, with
        ``config.progress=False``). It is locked while the run uses it.
      model_fn: Builds the model instead of :func:`train_state.create_model`
        (``model_fn(config, *, num_classes)``), for studies with their own networks.

    Returns:
      ``{"test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps",
      "resumed_from", "seconds", "images_per_second"}``: the final test metrics,
      the training loss and accuracy averaged over the last ``log_every`` steps
      (augmented, label-smoothed), and the number of steps.

    Raises:
      input_pipeline.DataError: the data directory is missing or corrupt
        (raised before anything is written).
      SetupError: the batch does not divide over the devices; the work directory
        cannot be written, is inconsistent, is in use by another process, or holds
        a run with other settings (:func:`mobilenet.infra.resume_check.check_resume`)
        or another model; or ``config.distributed`` finds no cluster
        (:func:`mobilenet.infra.distributed.initialize`).
      optim.StateTooLarge: the parameters and optimizer state cannot fit in memory.
      TrainingDiverged: the loss became NaN or infinite.
      WriteFailed: a checkpoint, ``metrics.jsonl`` or ``config.json`` could not be
        written (a full disk); the newest complete checkpoint is kept.
      Preempted: SIGTERM; a checkpoint was saved at the step then running.
      Interrupted: Ctrl-C; its message says what a rerun resumes from.
    """
    return fit(config, workdir, model_fn=model_fn)[1]


def fit(config: Config, workdir: str | None, *,
        model_fn: ModelFn | None = None) -> tuple[TrainState, dict[str, Any]]:
    """:func:`train_and_evaluate`, also returning the final :class:`TrainState`."""
    config.validate()
    start_time = time.perf_counter()
    if config.distributed:
        try:
            distributed.initialize()
        except distributed.ClusterError as error:
            raise SetupError(f"train: {error}") from None
    work = Workdir(workdir) if workdir is not None else None
    if work is not None:
        _check_workdir(work)
    run = prepare(config, model_fn)
    verbose = config.progress and jax.process_index() == 0
    saved, background = Saved(), []
    with _locked(work), Preemption() as preemption, _one_line_errors(saved, background):
        if work is not None:
            saved.checkpoints = Checkpoints(work.checkpoints, keep=config.keep_checkpoints,
                                            aside=work.damaged)
        restored, log = _restore(run, work, saved)
        state = _initialize(run, restored, background, say=_printer(verbose))
        loop = Loop(run=run, log=log, saved=saved, preemption=preemption, verbose=verbose)
        state, summary = _train(loop, state, start=restored.step if restored else 0,
                                meta=restored.meta if restored else {})
        if work is not None and config.plot and jax.process_index() == 0 and log.records:
            plot_metrics(log.records, work.plot)
            _printer(verbose)(f"wrote {work.plot} and {work.metrics}")
    summary["seconds"] = time.perf_counter() - start_time
    return state, summary


def prepare(config: Config, model_fn: ModelFn | None = None) -> Prepared:
    """Loads the data, checks it against the settings, builds the mesh, model and steps.

    Raises:
      input_pipeline.DataError: from :func:`input_pipeline.load_dataset`.
      SetupError: too few classes, a batch that does not divide over the devices,
        or settings that do not fit the data.
      optim.StateTooLarge: from :func:`optim.check_state_fits`.
    """
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
    try:
        resolved = default.resolve(config, num_train=dataset.train_images.shape[0])
    except ValueError as error:
        raise SetupError(f"train: {error}") from None
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
    abstract = train_state.abstract_train_state(config, model, image_shape=dataset.image_shape,
                                                mesh=mesh, total_steps=resolved.total_steps)
    optim.check_state_fits(abstract.params, abstract.opt_state)
    return Prepared(config=config, dataset=dataset, mesh=mesh, steps=resolved.total_steps,
                    model=model, train_step=train_step, eval_step=eval_step,
                    test_batches=test_batches, abstract=abstract)


def _restore(run: Prepared, work: Workdir | None, saved: Saved
             ) -> tuple[Restored | None, MetricsLog]:
    """Checks the saved settings, restores the newest intact checkpoint, cuts the log back.

    Also writes ``config.json``: from here on the directory is this run's.
    """
    config, checkpoints = run.config, saved.checkpoints
    num_train = run.dataset.train_images.shape[0]
    restored = None
    if work is not None and checkpoints is not None:
        if checkpoints.all_steps():
            _check_resume(work, config, num_train=num_train, step=checkpoints.all_steps()[-1])
        restored, damaged = checkpoints.restore_latest(_saved_tree(run.abstract))
        for step in damaged:
            _notice(f"warning: {step.describe()}; " + (
                f"resuming from step {restored.step}" if restored else
                "no intact checkpoint is left: starting from step 0"))
    saved.step = restored.step if restored else None
    main = work is not None and jax.process_index() == 0
    log = MetricsLog(work.metrics if main else None,
                     resume_step=restored.step if restored else 0)
    if log.dropped_partial_line:
        _notice(f"warning: dropped the last line of {log.path}, cut short by an "
                "interrupted write")
    if main:
        work.write_config(dataclasses.asdict(config))
    return restored, log


def _initialize(run: Prepared, restored: Restored | None, background: list[Background], *,
                say: Callable[[str], None]) -> TrainState:
    """The restored or a new train state, with the train and eval steps compiled.

    XLA compiles on one core: the two steps compile in threads while a third
    initializes the state. They are daemon threads and the main thread only
    waits for them, so Ctrl-C reaches the main thread at once, even during compilation.
    """
    config, mesh, dataset = run.config, run.mesh, run.dataset
    compile_start = time.perf_counter()
    with compile_cache.CompileStats() as stats:
        compiling = [
            Background(_compile, run.train_step, run.abstract,
                        _batch_spec(mesh, config.batch_size, dataset.image_shape, mask=False)),
            Background(_compile, run.eval_step, run.abstract, jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                run.test_batches[0]))]
        background += compiling
        if restored is not None:
            state = run.abstract.replace(**restored.tree)
        else:
            background.append(Background(
                train_state.create_train_state, config, run.model,
                image_shape=dataset.image_shape, mesh=mesh, total_steps=run.steps))
            state = background[-1].result()
        start = restored.step if restored else 0
        say(f"{config.model} x{config.width} ({models.count_params(state.params):,} "
            f"parameters) on {dataset.name} ({dataset.train_images.shape[0]} train / "
            f"{dataset.test_images.shape[0]} test), {mesh.size} "
            f"{jax.devices()[0].platform} device(s), batch {config.batch_size}, {run.steps} "
            "steps" + (f"; resuming from step {start}" if start else ""))
        for task in compiling:
            task.result()
    counts = stats.counts()
    say(f"initialized and compiled in {time.perf_counter() - compile_start:.1f} s "
        f"({counts['compile_seconds']:.1f} s in the compiler, {counts['cache_hits']} "
        "programs from the persistent cache)")
    return state


@contextlib.contextmanager
def _locked(work: Workdir | None) -> Iterator[None]:
    """Holds the work directory's lock (process 0 only: the directory is shared).

    Raises:
      SetupError: another process holds it (the message names it).
      WriteFailed: the lock file cannot be written.
    """
    if work is None or jax.process_index() != 0:
        yield
        return
    try:
        with work.lock():
            yield
    except WorkdirError as error:  # The block maps its own errors: this is the lock's.
        raise SetupError(f"train: {error}") from None
    except disk.WriteFailed as error:
        raise WriteFailed(f"train: {error}; nothing else was written") from None


@contextlib.contextmanager
def _one_line_errors(saved: Saved, background: list[Background]) -> Iterator[None]:
    """Turns what can stop a started run into the example's one-line errors, and cleans up.

    However the block ends, the checkpoint in flight is waited for and the
    compile threads are let end (:meth:`Background.settle`).
    """
    finished = False
    try:
        yield
        finished = True
    except Interrupted:
        raise
    except KeyboardInterrupt:
        _settle_checkpoints(saved)
        prefix = "" if saved.training else "interrupted before training started; "
        raise Interrupted(f"{prefix}{saved.kept()}; run the same command again to "
                          f"{saved.rerun()}") from None
    except default.ConfigMismatch as error:  # Its message starts with "train:".
        raise SetupError(str(error)) from None
    except (CheckpointError, MetricsLogError, WorkdirError) as error:
        raise SetupError(f"train: {error}") from None
    except disk.WriteFailed as error:
        _settle_checkpoints(saved)
        kept = ("nothing else was written" if saved.checkpoints is None else
                f"the newest complete checkpoint is step {saved.step} in "
                f"{saved.checkpoints.directory}" if saved.step is not None else
                f"no checkpoint is complete in {saved.checkpoints.directory}")
        raise WriteFailed(f"train: {error}; {kept}; free some space and run the same "
                          f"command again to {saved.rerun()}") from None
    finally:
        try:
            if saved.checkpoints is not None:
                with contextlib.nullcontext() if finished else contextlib.suppress(
                        disk.WriteFailed):  # Already reporting another error.
                    saved.checkpoints.close()
        finally:
            Background.settle(background, interrupted=not finished)


def _settle_checkpoints(saved: Saved) -> None:
    """Waits for the save in flight, then points ``saved.step`` at the newest complete step.

    A failure of that save is not raised: the caller reports what stopped the run.
    """
    if saved.checkpoints is not None:
        with contextlib.suppress(disk.WriteFailed):
            saved.checkpoints.wait()
        saved.step = saved.checkpoints.latest()


def _check_workdir(work: Workdir) -> None:
    """The work directory's checks, before the data is loaded (:class:`SetupError`)."""
    try:
        work.check()
    except WorkdirError as error:
        raise SetupError(f"train: {error}") from None


def _check_resume(work: Workdir, config: Config, *, num_train: int, step: int) -> None:
    """Refuses to resume a run saved with other settings; prints the notes of an allowed change.

    Raises:
      default.ConfigMismatch: the settings that differ, one line each
        (:func:`mobilenet.infra.resume_check.check_resume`).
      WorkdirError: ``config.json`` cannot be read.
    """
    saved = work.saved_config()
    if saved is not None:
        for line in resume_check.check_resume(saved, config, num_train=num_train, step=step):
            _notice(line)


def _saved_tree(state: TrainState) -> dict[str, Any]:
    """The part of the state a checkpoint holds (the model and optimizer are static)."""
    return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "rng": state.rng, "metrics": state.metrics}


def _notice(message: str) -> None:
    """A line on stderr (process 0), shown even without progress output."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def _compile(step: Any, *args: Any) -> None:
    """Compiles a jitted step for ``args`` (its later calls with such arguments reuse it)."""
    if hasattr(step, "lower"):  # Not for a wrapped step (the tests wrap it): it compiles later.
        step.lower(*args).compile()


def _batch_spec(mesh: Mesh, batch_size: int, image_shape: tuple[int, ...], *,
                mask: bool) -> dict[str, jax.ShapeDtypeStruct]:
    sharding = batch_sharding(mesh)
    spec = {"image": jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.uint8,
                                          sharding=sharding),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}
    if mask:
        spec["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=sharding)
    return spec


def _printer(verbose: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if verbose:
            from tqdm import tqdm

            tqdm.write(message)

    return say


@jax.jit
def _reset_sums(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return train_state.zero_metrics(metrics["first_nonfinite"])


def _diverged(loop: Loop, step: int) -> TrainingDiverged:
    return TrainingDiverged(
        f"train: the loss or gradient became NaN/inf at step {step}; stopped "
        f"({loop.saved.kept()}). Try a lower --lr or --dtype float32.")


@dataclasses.dataclass
class _Window:
    """The training metrics since the last fetch, and the speed over it."""

    start: float
    step: int
    images_per_second: float = float("nan")
    last_train: dict[str, float] = dataclasses.field(default_factory=dict)


def _train(loop: Loop, state: TrainState, *, start: int, meta: dict[str, Any]
           ) -> tuple[TrainState, dict[str, Any]]:
    """The training loop proper, from step ``start`` to the end; then the evaluation.

    Raises:
      TrainingDiverged: a NaN/inf loss or gradient.
      Preempted: SIGTERM: the step then running finished and was saved.
    """
    from tqdm import tqdm

    config, steps = loop.run.config, loop.run.steps
    window = _Window(time.perf_counter(), start, last_train=dict(meta.get("last_train", {})))
    bar = tqdm(total=steps, initial=start, disable=not loop.verbose, unit="step",
               dynamic_ncols=True, desc="train")
    batches = input_pipeline.train_batches(
        loop.run.dataset, batch_size=config.batch_size, seed=config.seed, start_step=start,
        sharding=batch_sharding(loop.run.mesh))
    loop.saved.training = True
    try:
        for step in range(start, steps):
            if step == start and loop.preemption.signalled:  # SIGTERM while compiling.
                raise Preempted(f"before training started; {loop.saved.kept()}; run the "
                                f"same command again to {loop.saved.rerun()}")
            state, _ = loop.run.train_step(state, next(batches))
            done = step + 1
            bar.update(1)
            if done == start + 1:  # The first call compiles: time the steps after it.
                jax.block_until_ready(state.step)
                window.start, window.step = time.perf_counter(), done
            if done % config.log_every == 0 or done == steps:
                state = _log_train_metrics(loop, state, done, window, bar)
            if config.eval_every and done % config.eval_every == 0 and done != steps:
                loop.log.write({"step": done, **evaluate(loop, state)})
            preempted = loop.preemption.reached(done)
            if preempted or done == steps or (
                    config.checkpoint_every and done % config.checkpoint_every == 0):
                _save(loop, state, done, window.last_train, wait=preempted or done == steps)
            if preempted:
                raise Preempted(f"saved a checkpoint at step {done} in "
                                f"{loop.saved.checkpoints.directory}; run the same command "
                                "again to resume from it" if loop.saved.checkpoints else
                                f"stopped at step {done}; nothing saved (no work directory)")
    finally:
        bar.close()
    return state, _finish(loop, state, start=start, window=window)


def _log_train_metrics(loop: Loop, state: TrainState, done: int, window: _Window,
                       bar: Any) -> TrainState:
    """Fetches the summed metrics, logs their means and resets the sums.

    Raises:
      TrainingDiverged: a step since the last fetch saw a NaN/inf.
    """
    config = loop.run.config
    sums = jax.device_get(state.metrics)
    state = state.replace(metrics=_reset_sums(state.metrics))
    if sums["first_nonfinite"] >= 0:
        raise _diverged(loop, int(sums["first_nonfinite"]) + 1)
    now = time.perf_counter()
    if done > window.step:
        window.images_per_second = (done - window.step) * config.batch_size / (now - window.start)
    window.start, window.step = now, done
    count = max(int(sums["count"]), 1)
    window.last_train = {"train_loss": float(sums["loss_sum"]) / count,
                         "train_accuracy": float(sums["accuracy_sum"]) / count}
    schedule = optim.learning_rate_schedule(config, total_steps=loop.run.steps)
    loop.log.write({"step": done, **window.last_train,
                    "learning_rate": float(schedule(done - 1)),
                    "images_per_second": window.images_per_second})
    bar.set_postfix(loss=f"{window.last_train['train_loss']:.4f}",
                    acc=f"{window.last_train['train_accuracy']:.3f}",
                    img_s=f"{window.images_per_second:.0f}")
    return state


def _save(loop: Loop, state: TrainState, done: int, last_train: dict[str, float], *,
          wait: bool) -> None:
    """Saves a checkpoint at step ``done`` (in the background unless ``wait``).

    Raises:
      TrainingDiverged: the state has seen a NaN (never saved).
      disk.WriteFailed: this save or the one before failed.
    """
    if loop.saved.checkpoints is None:
        return
    first_bad = int(jax.device_get(state.metrics["first_nonfinite"]))
    if first_bad >= 0:  # Never save a state that has seen a NaN.
        raise _diverged(loop, first_bad + 1)
    config = loop.run.config
    per_epoch = input_pipeline.steps_per_epoch(loop.run.dataset.train_images.shape[0],
                                               config.batch_size)
    if loop.saved.step != done:
        loop.saved.checkpoints.save(done, _saved_tree(state), meta={
            "step": done, "seed": config.seed, "data_position": done,
            "epoch": done // per_epoch, "last_train": last_train})
    if wait:
        loop.saved.checkpoints.wait()
    loop.saved.step = done


def _finish(loop: Loop, state: TrainState, *, start: int, window: _Window) -> dict[str, Any]:
    """The final evaluation (logged if this run trained) and the summary."""
    steps = loop.run.steps
    first_bad = int(jax.device_get(state.metrics["first_nonfinite"]))
    if first_bad >= 0:
        raise _diverged(loop, first_bad + 1)
    results = evaluate(loop, state)
    if start < steps:
        loop.log.write({"step": steps, **results})
    return {**results, "train_loss": window.last_train.get("train_loss", float("nan")),
            "train_accuracy": window.last_train.get("train_accuracy", float("nan")),
            "steps": steps, "resumed_from": start,
            "images_per_second": window.images_per_second}


def evaluate(loop: Loop, state: TrainState) -> dict[str, float]:
    """Test loss and accuracy of ``state`` (:func:`train_state.evaluate` on the test split)."""
    return train_state.evaluate(loop.run.eval_step, state, loop.run.test_batches)


def summarize(config: Config) -> str:
    """The model's layer table (``flax`` tabulate) and its trainable parameter count.

    Nothing is computed: shapes come from :func:`jax.eval_shape`. The input is
    32x32x3 with ``small_input`` and 224x224x3 without.

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
