"""The training loop's progress: a progress bar, and the speed of the training steps.

The loop (:mod:`mobilenet.train`) says when a step was dispatched
(:meth:`Progress.stepped`) and when it fetched the metrics (:meth:`Progress.fetched`);
this module times the steps in between and draws the bar (tqdm, on stderr, process 0
with progress output only). The first step of a run compiles, so the timing starts
after it: the speed and the steps' own seconds leave it out, and the rest of a run's
wall time is its fixed cost (:mod:`mobilenet.infra.startup`).
"""

from __future__ import annotations

import time
from typing import Any

import jax


class Progress:
    """The bar, and the training steps' speed between fetches of the metrics.

    Attributes:
      images_per_second: The speed over the steps between the last two fetches (NaN
        before a fetch has timed a step).
      seconds: The timed steps' own time so far.
    """

    def __init__(self, *, total: int, start: int, batch_size: int, enabled: bool):
        """A bar of ``total`` steps starting at ``start`` (drawn only if ``enabled``)."""
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=start, disable=not enabled, unit="step",
                         dynamic_ncols=True, desc="train")
        self._first, self._batch_size = start, batch_size
        self._time, self._step = time.perf_counter(), start
        self.images_per_second = float("nan")
        self.seconds = 0.0

    def stepped(self, done: int, step: jax.Array) -> None:
        """Step ``done`` was dispatched (``step``: its output step counter, on the device).

        After the first step, which compiles, waits for it and starts the clock.
        """
        self._bar.update(1)
        if done == self._first + 1:
            jax.block_until_ready(step)
            self._time, self._step = time.perf_counter(), done

    def fetched(self, done: int) -> float:
        """The metrics of the steps up to ``done`` were fetched: their speed in images/s."""
        now = time.perf_counter()
        if done > self._step:
            self.images_per_second = (done - self._step) * self._batch_size / (now - self._time)
            self.seconds += now - self._time
        self._time, self._step = now, done
        return self.images_per_second

    def show(self, **values: Any) -> None:
        """Shows ``values`` after the bar."""
        self._bar.set_postfix(**values)

    def close(self) -> None:
        self._bar.close()


def describe_run(config: Any, dataset: Any, *, params: int, devices: int, steps: int,
                 start: int) -> str:
    """The line that opens a run's output: model, data, devices, batch and length."""
    return (f"{config.model} x{config.width} ({params:,} parameters) on {dataset.name} "
            f"({dataset.train_images.shape[0]} train / {dataset.test_images.shape[0]} test), "
            f"{devices} {jax.devices()[0].platform} device(s), batch {config.batch_size}, "
            f"{steps} steps" + (f"; resuming from step {start}" if start else ""))
