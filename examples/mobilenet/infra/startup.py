"""Where a run's wall time went: the training steps, and the fixed cost around them.

A run's *fixed cost* is everything that is not a training step: starting Python,
importing JAX and the libraries, loading the data, tracing the steps and compiling
them (or loading them from the persistent compilation cache), the first step, the
evaluations, checkpoints and the plot. It is the process's wall time minus the
training steps' own time, which is what ``metrics.jsonl`` records (each training
record's ``images_per_second`` over the steps since the one before, the first,
compiling step left out).

:func:`process_seconds` reads the process's age from ``/proc`` on Linux, so it
counts from the interpreter's start, before any of this module's imports, and
through the example's one restart with huge pages (an ``exec`` keeps the process).
Elsewhere it counts from this module's import.

Example:
  >>> process_seconds() > 0
  True
  >>> print(fixed_cost_line(total=12.0, steps=9.5))
  12.0 s since the process started: 9.5 s in training steps, 2.5 s fixed cost
"""

from __future__ import annotations

import os
import time

_IMPORTED = time.monotonic()  # The fallback origin where /proc is missing.


def _process_start() -> float | None:
    """The process's start as a ``time.clock_gettime(CLOCK_BOOTTIME)`` reading, or None."""
    try:
        with open("/proc/self/stat") as stat:
            # Field 22 (starttime, clock ticks since boot); the command name in
            # field 2 may hold spaces and parentheses, so split after its last ")".
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_seconds() -> float:
    """Seconds since this process started (since this module's import where ``/proc``
    cannot tell; resolution: the kernel's clock tick, 10 ms)."""
    start = _process_start()
    if start is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return time.monotonic() - _IMPORTED
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start


def fixed_cost_line(*, total: float, steps: float, compile_seconds: float | None = None,
                    programs: int = 0, cache_hits: int = 0,
                    native_build_seconds: float | None = None) -> str:
    """One line: the wall time, the training steps' share and the fixed cost.

    Args:
      total: Seconds since the process started (:func:`process_seconds`).
      steps: The training steps' own seconds (as summed from ``metrics.jsonl``).
      compile_seconds: Seconds in XLA's compiler, summed over the compiling threads
        (persistent-cache loads included); ``None``: not reported.
      programs: Programs compiled or loaded.
      cache_hits: Programs loaded from the persistent compilation cache.
      native_build_seconds: Seconds spent building the native kernels in this
        process (``None`` or 0: they were loaded from their cache, or not used).
    """
    line = (f"{total:.1f} s since the process started: {steps:.1f} s in training steps, "
            f"{total - steps:.1f} s fixed cost")
    if compile_seconds is not None:
        line += (f"; XLA's compiler {compile_seconds:.1f} s (summed over threads) for "
                 f"{programs} programs, {cache_hits} from the persistent cache")
    if native_build_seconds:
        line += f"; native kernels built in {native_build_seconds:.1f} s"
    return line
