"""Preemption: a step at which to save and stop, after a SIGTERM.

Schedulers (SLURM, Kubernetes, Cloud TPU maintenance) send ``SIGTERM`` some
time before they kill a job. :class:`Preemption` turns it into a decision
taken between two training steps: :meth:`Preemption.reached` says, after each
step, whether the run should save a checkpoint at that step and stop.

- One process: a ``SIGTERM`` handler, installed when the ``with`` block starts
  (only in the main thread; elsewhere Python allows no handlers) and the previous
  handler put back when it ends, sets a flag; the step then running finishes and
  :meth:`~Preemption.reached` returns ``True``.
- Several processes (``jax.distributed`` initialized): JAX's own preemption
  service catches ``SIGTERM`` in any process and agrees with the others on a step
  (:func:`jax.experimental.multihost_utils.reached_preemption_sync_point`); every
  process then sees ``True`` at that same step. No Python handler is installed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

import jax
from jax.experimental import multihost_utils

if TYPE_CHECKING:
    from typing_extensions import Self


class Preemption:
    """A ``with`` block in which ``SIGTERM`` asks the training loop to save and stop.

    Example:
      >>> with Preemption() as preemption:
      ...     preemption.reached(1)
      False
    """

    def __init__(self) -> None:
        self.signalled = False
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> Self:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def reached(self, step: int) -> bool:
        """Whether to save at ``step`` (just done) and stop. Call it after every step.

        With several processes it must be called by all of them at every step
        (JAX's sync point counts the steps); they all get ``True`` at the same one.
        """
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signalled
