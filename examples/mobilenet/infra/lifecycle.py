"""A training run's lifecycle around its loop: :class:`Lifecycle`.

The loop (:mod:`mobilenet.train`) trains; this module keeps the run safe and says
how it ended, in one line:

- before anything loads: joins the cluster (``Config.distributed``) and checks the
  work directory (:class:`SetupError`);
- :meth:`Lifecycle.running`: the work directory's lock (one run at a time), the
  SIGTERM handler (:class:`~mobilenet.infra.preemption.Preemption`), and on the way
  out the save in flight waited for, the background threads let end and every
  error that can stop a started run turned into one of this module's exceptions;
- :meth:`Lifecycle.restore`: the saved settings checked, the newest intact
  checkpoint restored, ``metrics.jsonl`` cut back to it, ``config.json`` written;
- :meth:`Lifecycle.compiling`: the steps compiled in threads while the state initializes
  (for the arguments :func:`spec_of` and :func:`batch_spec` describe);
- :meth:`Lifecycle.save` and what a rerun would start from (:meth:`Lifecycle.kept`);
- the errors that stop a run in its loop (:meth:`Lifecycle.diverged`,
  :meth:`Lifecycle.check_finite`, :meth:`Lifecycle.preempted`), each saying what is kept.

Nothing here knows the model or the training step: the loop hands over the tree
to save, and the settings only to compare them with the saved ones and to record
the data position with each checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

from mobilenet.configs.default import Config, steps_per_epoch
from mobilenet.infra import compile_cache, disk, resume_check
from mobilenet.infra import distributed as cluster
from mobilenet.infra.background import Background
from mobilenet.infra.checkpoints import CheckpointError, Checkpoints, Restored
from mobilenet.infra.metrics_log import MetricsLog, MetricsLogError, plot_metrics, plotting_modules
from mobilenet.infra.preemption import Preemption
from mobilenet.infra.program_cache import ProgramCache
from mobilenet.infra.settings import ConfigMismatch
from mobilenet.infra.workdir import Workdir, WorkdirError


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


def notice(message: str) -> None:
    """A line on stderr (process 0), shown even without progress output."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def compile_ahead(name: str, step: Any, *args: Any, cache: ProgramCache | None = None) -> Any:
    """A jitted step compiled for ``args`` (from ``cache`` when it holds it as ``name``).

    A step that cannot be compiled ahead (one the tests wrap) is returned as it is."""
    if not hasattr(step, "lower"):
        return step
    if cache is None:
        return step.lower(*args).compile()
    return cache.compile(name, step, *args)


def spec_of(tree: Any) -> Any:
    """``tree``'s arrays as :class:`jax.ShapeDtypeStruct` (shape, dtype, sharding): what a
    step is compiled for ahead of time."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def batch_spec(batch_size: int, fields: dict[str, tuple[tuple[int, ...], Any]],
               sharding: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """A batch of ``batch_size`` examples, ``{name: (shape of one example, dtype)}``, as
    :class:`jax.ShapeDtypeStruct` split by ``sharding``."""
    return {name: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
            for name, (shape, dtype) in fields.items()}


class Lifecycle:
    """A run's work directory, checkpoints, metrics log, preemption and background threads.

    Attributes:
      work: The work directory (``None``: nothing is written).
      checkpoints: Its checkpoints, once :meth:`running` has started (else ``None``).
      step: The last step in ``checkpoints`` (``None`` while there is none).
      log: The metrics log, once :meth:`restore` has run.
      preemption: Says when to save and stop (SIGTERM).
      training: Whether the training loop has started.
      verbose: Whether :meth:`say` prints (progress output on process 0).
    """

    def __init__(self, workdir: str | None, *, distributed: bool = False):
        """Joins the cluster and checks the work directory, before any data is loaded.

        Raises:
          SetupError: no cluster (:func:`mobilenet.infra.distributed.initialize`), or a
            work directory that cannot be written or is inconsistent.
        """
        if distributed:
            try:
                cluster.initialize()
            except cluster.ClusterError as error:
                raise SetupError(f"train: {error}") from None
        self.work = Workdir(workdir) if workdir is not None else None
        if self.work is not None:
            try:
                self.work.check()
            except WorkdirError as error:
                raise SetupError(f"train: {error}") from None
        self.checkpoints: Checkpoints | None = None
        self.step: int | None = None
        self.log = MetricsLog(None, resume_step=0)  # In memory until restore() opens the file.
        self.preemption = Preemption()
        self.training = False
        self.verbose = False
        self._background: list[Background] = []
        self._position = (0, 1)  # The seed and the steps per epoch, set by restore().

    @contextlib.contextmanager
    def running(self, *, keep: int, progress: bool) -> Iterator[Lifecycle]:
        """The block in which the run uses its work directory (see the module's docstring).

        Raises:
          SetupError, WriteFailed, Interrupted: what stopped the run, in one line.
        """
        self.verbose = progress and jax.process_index() == 0
        with locked(self.work), self.preemption, self._one_line_errors():
            if self.work is not None:
                self.checkpoints = Checkpoints(self.work.checkpoints, keep=keep,
                                               aside=self.work.damaged)
            yield self

    def restore(self, config: Config, tree: dict[str, Any], *, num_train: int
                ) -> Restored | None:
        """Checks the saved settings, restores the newest intact checkpoint, cuts the log back.

        Also writes ``config.json``: from here on the directory is this run's.

        Args:
          config: The run's settings, compared with those saved.
          tree: The abstract tree a checkpoint holds (shapes, dtypes, shardings).
          num_train: The number of training examples (an epoch's length).
        """
        work, restored = self.work, None
        if work is not None and self.checkpoints is not None:
            if self.checkpoints.all_steps():
                _check_resume(work, config, num_train=num_train,
                              step=self.checkpoints.all_steps()[-1])
            restored, damaged = self.checkpoints.restore_latest(tree)
            for step in damaged:
                notice(f"warning: {step.describe()}; " + (
                    f"resuming from step {restored.step}" if restored else
                    "no intact checkpoint is left: starting from step 0"))
        self.step = restored.step if restored else None
        self._position = (config.seed, steps_per_epoch(num_train, config.batch_size))
        main = work is not None and jax.process_index() == 0
        self.log = MetricsLog(work.metrics if main else None,
                              resume_step=restored.step if restored else 0)
        if self.log.dropped_partial_line:
            notice(f"warning: dropped the last line of {self.log.path}, cut short by an "
                   "interrupted write")
        if main:
            work.write_config(dataclasses.asdict(config))
        return restored

    def save(self, step: int, tree: dict[str, Any], *, first_nonfinite: Any,
             last_train: dict[str, float], wait: bool) -> None:
        """Saves ``tree`` as step ``step`` (in the background unless ``wait``), once per step.

        Its metadata hold the data position (the step, its epoch, the seed) and
        ``last_train``, the training metrics last logged (a resumed run reports them).
        A state that has seen a NaN/inf (``first_nonfinite``, :meth:`check_finite`) is
        never saved.

        Raises:
          TrainingDiverged: from :meth:`check_finite`.
          disk.WriteFailed: this save or the one before failed.
        """
        if self.checkpoints is None:
            return
        self.check_finite(first_nonfinite)
        if self.step != step:
            seed, per_epoch = self._position
            self.checkpoints.save(step, tree, meta={
                "step": step, "seed": seed, "data_position": step, "epoch": step // per_epoch,
                "last_train": last_train})
        if wait:
            self.checkpoints.wait()
        self.step = step

    def wait_for_save(self) -> None:
        """Waits for the checkpoint :meth:`save` is writing in the background.

        Raises:
          disk.WriteFailed: it failed.
        """
        if self.checkpoints is not None:
            self.checkpoints.wait()

    @contextlib.contextmanager
    def compiling(self, jobs: dict[str, tuple[Any, tuple[Any, ...]]], *,
                  cache: ProgramCache | None = None) -> Iterator[dict[str, Any]]:
        """Compiles each ``name: (step, args)`` in a thread (:func:`compile_ahead`) while the
        block runs; yields a dict that holds the compiled steps by name once the block ends,
        then says how long it all took.

        XLA compiles on one core: the steps compile in threads while the block (the
        state's initialization, in a thread of its own) runs. The main thread only
        waits, so Ctrl-C reaches it at once, even during compilation.
        """
        start = time.perf_counter()
        compiled: dict[str, Any] = {}
        with compile_cache.CompileStats() as stats:
            tasks = {name: self.in_background(compile_ahead, name, step, *args, cache=cache)
                     for name, (step, args) in jobs.items()}
            yield compiled
            compiled.update((name, task.result()) for name, task in tasks.items())
        counts = stats.counts()
        found = [f"{count} {what}{'s' if count != 1 else ''}" for count, what in
                 ((cache.hits, "program"), (cache.results, "result")) if count] if cache else []
        loaded = f", {' and '.join(found)} loaded whole from the program cache" if found else ""
        self.say(f"initialized and compiled in {time.perf_counter() - start:.1f} s "
                 f"({counts['compile_seconds']:.1f} s in the compiler, {counts['cache_hits']} "
                 f"programs from the persistent cache{loaded})")

    def in_background(self, function: Callable[..., Any], *args: Any, **kwargs: Any
                      ) -> Background:
        """``function(*args, **kwargs)`` in a thread, let end however the run ends."""
        self._background.append(Background(function, *args, **kwargs))
        return self._background[-1]

    def say(self, message: str) -> None:
        """A line of progress output (``verbose`` only), kept clear of the progress bar."""
        if self.verbose:
            from tqdm import tqdm

            tqdm.write(message)

    def import_ahead(self, *, plot: bool) -> None:
        """Starts the imports the run needs later in a thread, for a time the main thread
        only waits (the steps' loading, which holds no lock of Python's): orbax, for the
        first save, and the plot's modules (if ``plot``). Both are pure Python: beside
        the last save they hold it up (its wait 0.58 s with the plot's imports beside it,
        0.2 s without, on a 2-core EPYC)."""
        checkpoints = self.checkpoints is not None
        plots = plot and self.work is not None and jax.process_index() == 0

        def imports() -> None:
            if checkpoints:
                import orbax.checkpoint  # noqa: F401 - the first save's (Checkpoints.manager)
            if plots:
                plotting_modules()

        self.in_background(imports)

    def plot(self) -> None:
        """Plots ``metrics.jsonl`` to ``metrics.png`` (process 0; nothing without a log)."""
        if self.work is not None and jax.process_index() == 0 and self.log.records:
            plot_metrics(self.log.records, self.work.plot)
            self.say(f"wrote {self.work.plot} and {self.work.metrics}")

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

    def diverged(self, step: int) -> TrainingDiverged:
        """The error that stops the run when the loss or gradient of ``step`` became NaN/inf
        (such a state is never saved)."""
        return TrainingDiverged(
            f"train: the loss or gradient became NaN/inf at step {step}; stopped "
            f"({self.kept()}). Try a lower --lr or --dtype float32.")

    def check_finite(self, first_nonfinite: Any) -> None:
        """Raises :meth:`diverged` if ``first_nonfinite`` (the first step whose loss or
        gradient was NaN/inf, -1 while none; on the device or the host) names a step."""
        first_bad = int(jax.device_get(first_nonfinite))
        if first_bad >= 0:
            raise self.diverged(first_bad + 1)

    def preempted(self, step: int | None) -> Preempted:
        """The error that stops the run after a SIGTERM, saved at ``step`` (``None``: before
        training started)."""
        if step is None:
            return Preempted(f"before training started; {self.kept()}; run the same command "
                             f"again to {self.rerun()}")
        if self.checkpoints is None:
            return Preempted(f"stopped at step {step}; nothing saved (no work directory)")
        return Preempted(f"saved a checkpoint at step {step} in {self.checkpoints.directory}; "
                         "run the same command again to resume from it")

    @contextlib.contextmanager
    def _one_line_errors(self) -> Iterator[None]:
        """Turns what can stop a started run into the example's one-line errors, and cleans up.

        However the block ends, the checkpoint in flight is waited for and the
        background threads are let end (:meth:`Background.settle`).
        """
        finished = False
        try:
            yield
            finished = True
        except Interrupted:
            raise
        except KeyboardInterrupt:
            self._settle_checkpoints()
            prefix = "" if self.training else "interrupted before training started; "
            raise Interrupted(f"{prefix}{self.kept()}; run the same command again to "
                              f"{self.rerun()}") from None
        except ConfigMismatch as error:  # Its message starts with "train:".
            raise SetupError(str(error)) from None
        except (CheckpointError, MetricsLogError, WorkdirError) as error:
            raise SetupError(f"train: {error}") from None
        except disk.WriteFailed as error:
            self._settle_checkpoints()
            raise WriteFailed(f"train: {error}; {self._complete()}; free some space and run "
                              f"the same command again to {self.rerun()}") from None
        finally:
            self._close(finished)

    def _complete(self) -> str:
        """The newest complete checkpoint, in words (after a failed write)."""
        if self.checkpoints is None:
            return "nothing else was written"
        if self.step is None:
            return f"no checkpoint is complete in {self.checkpoints.directory}"
        return (f"the newest complete checkpoint is step {self.step} in "
                f"{self.checkpoints.directory}")

    def _settle_checkpoints(self) -> None:
        """Waits for the save in flight, then points ``step`` at the newest complete step.

        A failure of that save is not raised: the caller reports what stopped the run.
        """
        if self.checkpoints is not None:
            with contextlib.suppress(disk.WriteFailed):
                self.checkpoints.wait()
            self.step = self.checkpoints.latest()

    def _close(self, finished: bool) -> None:
        """Closes the checkpoints (a failure raised only if nothing else is), ends the threads."""
        try:
            if self.checkpoints is not None:
                with contextlib.nullcontext() if finished else contextlib.suppress(
                        disk.WriteFailed):  # Already reporting another error.
                    self.checkpoints.close()
        finally:
            Background.settle(self._background, interrupted=not finished)


@contextlib.contextmanager
def locked(work: Workdir | None) -> Iterator[None]:
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


def _check_resume(work: Workdir, config: Config, *, num_train: int, step: int) -> None:
    """Refuses to resume a run saved with other settings; prints the notes of an allowed change.

    Raises:
      ConfigMismatch: the settings that differ, one line each
        (:func:`mobilenet.infra.resume_check.check_resume`).
      WorkdirError: ``config.json`` cannot be read.
    """
    saved = work.saved_config()
    if saved is not None:
        for line in resume_check.check_resume(saved, config, num_train=num_train, step=step):
            notice(line)
