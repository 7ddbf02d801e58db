"""The training loop of the MobileNet example: :func:`train_and_evaluate`.

The recipe, in the order :func:`fit` runs it:

1. Check the work directory (writable, consistent, the same settings as the run
   it holds), then load the data: a bad directory fails here, before anything
   is written or compiled.
2. Build the one-axis device mesh (:mod:`mobilenet.sharding`): batches are
   split on it, the train state is replicated (``Config.distributed`` first
   calls ``jax.distributed.initialize()``).
3. Restore the newest intact checkpoint (:mod:`mobilenet.checkpoints`; damaged
   steps are moved aside and said so). The data order is a pure function of
   ``(seed, step)`` and the per-step PRNG key is ``fold_in(rng, step)``, so a
   resumed run repeats an uninterrupted one exactly.
4. Compile the train and eval steps (:mod:`mobilenet.train_state`) in threads
   while the main thread initializes the state.
5. Train. The host only dispatches: metrics are summed on the devices and fetched
   every ``log_every`` steps, when they go to the progress bar and ``metrics.jsonl``.
   A non-finite loss or gradient stops the run (:class:`TrainingDiverged`); no
   checkpoint is written after it, so the last one is good.
6. Evaluate with the running batch-norm statistics; save the final checkpoint and
   plot the curves (``metrics.png``).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mobilenet import compile_cache, input_pipeline, models, optim, train_state
from mobilenet.checkpoints import CheckpointError, Checkpoints
from mobilenet.configs import default
from mobilenet.configs.default import Config
from mobilenet.infra import resume_check
from mobilenet.metrics_log import MetricsLog, MetricsLogError, plot_metrics
from mobilenet.sharding import batch_sharding, create_mesh
from mobilenet.train_state import TrainState
from mobilenet.workdir import Workdir, WorkdirError

ModelFn = Callable[..., nn.Module]
"""``model_fn(config, *, num_classes) -> flax module``, as :func:`train_state.create_model`."""


class SetupError(ValueError):
    """A run that cannot start: settings, data, devices or work directory (one-line message)."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message says where and what was kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C; the message says what a rerun resumes from."""


@dataclasses.dataclass
class Loop:
    """What the training loop reads, and the last step it saved.

    Attributes:
      config: The run's settings.
      mesh: The device mesh.
      dataset: The data in host memory.
      steps: The run's length.
      train_step: ``(state, batch) -> (state, metrics)``, jitted.
      eval_step: ``(state, batch) -> sums``, jitted.
      test_batches: The test split, sharded.
      log: The metrics log.
      checkpoints: The work directory's checkpoints (``None``: nothing is saved).
      verbose: Show the progress bar.
      saved: The last step in ``checkpoints`` (``None`` while there is none).
    """

    config: Config
    mesh: Mesh
    dataset: input_pipeline.Dataset
    steps: int
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]
    test_batches: list[dict[str, jax.Array]]
    log: MetricsLog
    checkpoints: Checkpoints | None
    verbose: bool
    saved: int | None = None

    def kept(self) -> str:
        """Where a rerun would start, in words."""
        if self.checkpoints is None:
            return "no work directory, nothing saved"
        if self.saved is None:
            return f"no checkpoint was saved yet in {self.checkpoints.directory}"
        return f"the last checkpoint (step {self.saved}) is kept in {self.checkpoints.directory}"


def train_and_evaluate(config: Config, workdir: str | None, *,
                       model_fn: ModelFn | None = None) -> dict[str, Any]:
    """Trains and evaluates a model; resumes from ``workdir``'s newest intact checkpoint.

    Args:
      config: The configuration (:func:`mobilenet.configs.get_config`).
      workdir: Directory for ``config.json``, checkpoints, ``metrics.jsonl`` and
        ``metrics.png``; ``None`` writes nothing (quiet runs for studies, with
        ``config.progress=False``).
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
        cannot be written, is inconsistent, or holds a run with other settings
        (:func:`mobilenet.infra.resume_check.check_resume`) or another model; or
        ``config.distributed`` finds no cluster (:func:`_initialize_distributed`).
      optim.StateTooLarge: the parameters and optimizer state cannot fit in memory.
      TrainingDiverged: the loss became NaN or infinite.
      Interrupted: Ctrl-C; its message says what a rerun resumes from.
    """
    return fit(config, workdir, model_fn=model_fn)[1]


def fit(config: Config, workdir: str | None, *,
        model_fn: ModelFn | None = None) -> tuple[TrainState, dict[str, Any]]:
    """:func:`train_and_evaluate`, also returning the final :class:`TrainState`."""
    config.validate()
    start_time = time.perf_counter()
    if config.distributed:
        _initialize_distributed()
    work = Workdir(workdir) if workdir is not None else None
    if work is not None:
        _check_workdir(work)
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
        resolved = default.resolve(config, num_train=num_train)
    except ValueError as error:
        raise SetupError(f"train: {error}") from None
    steps = resolved.total_steps

    verbose = config.progress and jax.process_index() == 0
    say = _printer(verbose)
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
                                                mesh=mesh, total_steps=steps)
    optim.check_state_fits(abstract.params, abstract.opt_state)

    checkpoints, restored, background = None, None, []
    if work is not None:
        checkpoints = Checkpoints(work.checkpoints, keep=config.keep_checkpoints,
                                  aside=work.damaged)
    try:
        if checkpoints is not None and checkpoints.all_steps():
            _check_resume(work, config, num_train=num_train, step=checkpoints.all_steps()[-1])
        if checkpoints is not None:
            restored, damaged = checkpoints.restore_latest(_saved_tree(abstract))
            for step in damaged:
                _notice(f"warning: {step.describe()}; " + (
                    f"resuming from step {restored.step}" if restored else
                    "no intact checkpoint is left: starting from step 0"))
        start = restored.step if restored else 0
        meta = restored.meta if restored else {}
        log = MetricsLog(work.metrics if work is not None and jax.process_index() == 0
                         else None, resume_step=start)
        if log.dropped_partial_line:
            _notice(f"warning: dropped the last line of {work.metrics}, cut short by an "
                    "interrupted write")
        if work is not None and jax.process_index() == 0:
            work.write_config(dataclasses.asdict(config))

        compile_start, compiled_before = time.perf_counter(), compile_cache.compile_stats()
        # XLA compiles on one core: compile the two steps in threads while a third
        # initializes the state. They are daemon threads and the main thread only
        # waits for them, so Ctrl-C stops the run at once, even during compilation.
        compiling = [
            _Background(_compile, train_step, abstract,
                        _batch_spec(mesh, config.batch_size, dataset.image_shape, mask=False)),
            _Background(_compile, eval_step, abstract, jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                test_batches[0]))]
        background += compiling
        if restored is not None:
            state = abstract.replace(**restored.tree)
        else:
            background.append(_Background(
                train_state.create_train_state, config, model, image_shape=dataset.image_shape,
                mesh=mesh, total_steps=steps))
            state = background[-1].result()
        say(f"{config.model} x{config.width} ({models.count_params(state.params):,} "
            f"parameters) on {dataset.name} ({num_train} train / "
            f"{dataset.test_images.shape[0]} test), {mesh.size} "
            f"{jax.devices()[0].platform} device(s), batch {config.batch_size}, {steps} steps"
            + (f"; resuming from step {start}" if start else ""))
        for task in compiling:
            task.result()
        compiled = compile_cache.compile_stats()
        say(f"initialized and compiled in {time.perf_counter() - compile_start:.1f} s "
            f"({compiled['compile_seconds'] - compiled_before['compile_seconds']:.1f} s in "
            f"the compiler, {compiled['cache_hits'] - compiled_before['cache_hits']} "
            "programs from the persistent cache)")
        loop = Loop(config=config, mesh=mesh, dataset=dataset, steps=steps,
                    train_step=train_step, eval_step=eval_step, test_batches=test_batches,
                    log=log, checkpoints=checkpoints, verbose=verbose,
                    saved=start if restored else None)
        try:
            state, summary = _train(loop, state, start=start, meta=meta)
        except KeyboardInterrupt:
            raise Interrupted(f"{loop.kept()}; run the same command again to "
                              + ("resume from it" if loop.saved is not None
                                 else "start again")) from None
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, Interrupted):
            raise
        where = (f"a rerun resumes from step {restored.step}" if restored is not None
                 else "no checkpoint was saved yet" if work is not None else "nothing saved")
        raise Interrupted(f"interrupted before training started; {where}") from None
    except default.ConfigMismatch as error:  # Its message starts with "train:".
        raise SetupError(str(error)) from None
    except (CheckpointError, MetricsLogError, WorkdirError) as error:
        raise SetupError(f"train: {error}") from None
    finally:
        if checkpoints is not None:
            checkpoints.close()
        _Background.settle(background, interrupted=isinstance(sys.exc_info()[1],
                                                                KeyboardInterrupt))
    if work is not None and config.plot and jax.process_index() == 0 and log.records:
        plot_metrics(log.records, work.plot)
        say(f"wrote {work.plot} and {work.metrics}")
    summary["seconds"] = time.perf_counter() - start_time
    return state, summary


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


class _Background:
    """``function(*args, **kwargs)`` in a daemon thread; :meth:`result` waits for it.

    The wait can be interrupted (Ctrl-C), unlike a long call in the main thread,
    and a daemon thread does not hold up the exit.
    """

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any):
        self._result: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = function(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - raised again in result().
                self._error = error

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        """The function's result (or its exception, raised here)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    @staticmethod
    def settle(tasks: list[_Background], *, interrupted: bool) -> None:
        """Lets ``tasks`` end as the run does: waited for, or abandoned after Ctrl-C.

        A thread still in XLA's compiler when the interpreter shuts down would
        abort the process when it returns; after Ctrl-C the process instead ends
        at once (``os._exit(130)``) at shutdown if such a thread is still running.
        """
        running = [task._thread for task in tasks if task._thread.is_alive()]
        if not running:
            return
        if not interrupted:
            for thread in running:
                thread.join()
            return

        def exit_now() -> None:
            if any(thread.is_alive() for thread in running):
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)

        atexit.register(exit_now)


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
        f"train: the loss or gradient became NaN/inf at step {step}; stopped ({loop.kept()}). "
        "Try a lower --lr or --dtype float32.")


def _train(loop: Loop, state: TrainState, *, start: int, meta: dict[str, Any]
           ) -> tuple[TrainState, dict[str, Any]]:
    """The training loop proper, from step ``start`` to ``loop.steps``; then the evaluation."""
    from tqdm import tqdm

    config, steps = loop.config, loop.steps
    schedule = optim.learning_rate_schedule(config, total_steps=steps)
    last_train = dict(meta.get("last_train", {}))
    images_per_second = float("nan")
    bar = tqdm(total=steps, initial=start, disable=not loop.verbose, unit="step",
               dynamic_ncols=True, desc="train")
    batches = input_pipeline.train_batches(
        loop.dataset, batch_size=config.batch_size, seed=config.seed, start_step=start,
        sharding=batch_sharding(loop.mesh))
    per_epoch = input_pipeline.steps_per_epoch(loop.dataset.train_images.shape[0],
                                               config.batch_size)
    window_start, window_step = time.perf_counter(), start
    try:
        for step in range(start, steps):
            state, _ = loop.train_step(state, next(batches))
            done = step + 1
            bar.update(1)
            if done == start + 1:  # The first call compiles: time the steps after it.
                jax.block_until_ready(state.step)
                window_start, window_step = time.perf_counter(), done
            if done % config.log_every == 0 or done == steps:
                sums = jax.device_get(state.metrics)
                state = state.replace(metrics=_reset_sums(state.metrics))
                if sums["first_nonfinite"] >= 0:
                    raise _diverged(loop, int(sums["first_nonfinite"]) + 1)
                now = time.perf_counter()
                if done > window_step:
                    images_per_second = ((done - window_step) * config.batch_size
                                         / (now - window_start))
                window_start, window_step = now, done
                count = max(int(sums["count"]), 1)
                last_train = {"train_loss": float(sums["loss_sum"]) / count,
                              "train_accuracy": float(sums["accuracy_sum"]) / count}
                loop.log.write({"step": done, **last_train,
                                "learning_rate": float(schedule(done - 1)),
                                "images_per_second": images_per_second})
                bar.set_postfix(loss=f"{last_train['train_loss']:.4f}",
                                acc=f"{last_train['train_accuracy']:.3f}",
                                img_s=f"{images_per_second:.0f}")
            if config.eval_every and done % config.eval_every == 0 and done != steps:
                loop.log.write({"step": done, **evaluate(loop, state)})
            if loop.checkpoints is not None and (done == steps or (
                    config.checkpoint_every and done % config.checkpoint_every == 0)):
                first_bad = int(jax.device_get(state.metrics["first_nonfinite"]))
                if first_bad >= 0:  # Never save a state that has seen a NaN.
                    raise _diverged(loop, first_bad + 1)
                loop.checkpoints.save(done, _saved_tree(state), meta={
                    "step": done, "seed": config.seed, "data_position": done,
                    "epoch": done // per_epoch, "last_train": last_train})
                loop.saved = done
    finally:
        bar.close()
    first_bad = int(jax.device_get(state.metrics["first_nonfinite"]))
    if first_bad >= 0:
        raise _diverged(loop, first_bad + 1)
    results = evaluate(loop, state)
    if start < steps:
        loop.log.write({"step": steps, **results})
    return state, {
        **results, "train_loss": last_train.get("train_loss", float("nan")),
        "train_accuracy": last_train.get("train_accuracy", float("nan")), "steps": steps,
        "resumed_from": start, "images_per_second": images_per_second}


def evaluate(loop: Loop, state: TrainState) -> dict[str, float]:
    """Test loss and accuracy of ``state`` (:func:`train_state.evaluate` on the test split)."""
    return train_state.evaluate(loop.eval_step, state, loop.test_batches)


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
