"""A harness for studies on the example's training loop: a grid of cells over seeds.

Not part of the recipe: the studies (``examples/precision_study.py``,
``examples/boundary_study.py``) build on it. A *cell* is a JSON-able key (the
settings of one run) and a seed; a *grid* is a list of cells.

* :class:`Results` keeps one line per finished cell in ``runs.jsonl`` (written,
  flushed and fsynced as the cell finishes). A rerun skips the finished cells, so
  a study resumes after Ctrl-C, SIGTERM or a kill; a file of another grid
  configuration is refused.
* :func:`run_grid` runs the missing cells. A diverged run
  (:class:`mobilenet.infra.lifecycle.TrainingDiverged`, or a NaN in its result) is recorded
  as ``{"status": "diverged", "step": ...}`` and the grid goes on; Ctrl-C and
  SIGTERM stop it (:class:`GridStopped`) with what is done kept.
* Statistics: the mean with its 95% t-interval over seeds (:func:`mean_interval`),
  the paired difference of two arms over the seeds both finished
  (:func:`paired_difference`), and the smallest difference a design detects
  (:func:`detectable_difference`).
* Command-line plumbing (:func:`add_common_args`, :func:`machine`), markdown
  tables (:func:`markdown_table`) and a plot (:func:`plot_lines`, skipped
  when matplotlib is missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mobilenet.infra.lifecycle import Preempted, TrainingDiverged

RUNS_FILE = "runs.jsonl"
#: One test image of digits' 360, in percentage points.
DIGITS_TEST_IMAGES = 360


class StudyError(RuntimeError):
    """A study cannot go on (a results file of another grid, say); one line."""


class Skip(Exception):
    """Raised by ``run_one``: the cell cannot run (its float run diverged, say); recorded
    as ``{"status": "skipped", "reason": str(error)}`` and the grid goes on."""


class GridStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the grid; the finished cells are kept."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a grid: its settings and its seed.

    Attributes:
      key: JSON-able settings (a flat dict of str to str, int, float, bool or None).
      seed: The seed; cells with the same key and different seeds are one arm.
    """

    key: Mapping[str, Any]
    seed: int

    @property
    def id(self) -> str:
        """A canonical string of the cell (sorted JSON), unique in a grid."""
        return json.dumps({"key": dict(self.key), "seed": self.seed}, sort_keys=True)

    def describe(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.key.items())
        return f"{settings}, seed {self.seed}"


def grid(keys: Iterable[Mapping[str, Any]], seeds: Iterable[int]) -> list[Cell]:
    """Every key with every seed, seed-major (seed 0's cells first, so that a partly
    run grid has whole seeds to pair)."""
    keys = list(keys)
    return [Cell(dict(key), seed) for seed in seeds for key in keys]


def fingerprint(configuration: Mapping[str, Any]) -> str:
    """A short hash of a grid's configuration (sorted JSON)."""
    text = json.dumps(configuration, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Results:
    """The finished cells of a grid, in ``<out>/runs.jsonl`` (append-only).

    Args:
      out: The output directory (created).
      configuration: What makes runs comparable (model, steps, ...): JSON-able.
        Every line carries its fingerprint; a file holding another is refused.

    Raises:
      StudyError: ``runs.jsonl`` holds a line of another configuration, or one that
        is not JSON (other than a torn last line, which is dropped).
    """

    def __init__(self, out: str, configuration: Mapping[str, Any]):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, RUNS_FILE)
        self.configuration = dict(configuration)
        self.grid = fingerprint(configuration)
        self.records: dict[str, dict[str, Any]] = {}
        if os.path.exists(self.path):
            self._load()

    def _load(self) -> None:
        with open(self.path) as f:
            lines = f.read().split("\n")
        complete, torn = lines[:-1], lines[-1]  # A kill mid-write leaves a torn last line.
        for number, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise StudyError(f"study: {self.path} line {number} is not JSON; "
                                 "remove that line to resume") from None
            if record.get("grid") != self.grid:
                raise StudyError(
                    f"study: {self.path} holds runs of another grid configuration "
                    f"({record.get('grid')}, this one is {self.grid}: model, steps or "
                    "another setting changed); use another --out or delete the file")
            self.records[Cell(record["key"], record["seed"]).id] = record
        if torn.strip():
            with open(self.path, "w") as f:  # Rewrite without the torn line.
                f.write("".join(line + "\n" for line in complete if line.strip()))

    def done(self, cell: Cell) -> bool:
        return cell.id in self.records

    def get(self, cell: Cell) -> dict[str, Any] | None:
        return self.records.get(cell.id)

    def add(self, cell: Cell, record: Mapping[str, Any]) -> dict[str, Any]:
        """Appends ``record`` for ``cell`` (flushed and fsynced) and returns the line."""
        line = {"grid": self.grid, "key": dict(cell.key), "seed": cell.seed, **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(line, sort_keys=True, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[cell.id] = line
        return line

    def values(self, key: Mapping[str, Any], field: str) -> dict[int, float]:
        """``{seed: record[field]}`` of the finished (not diverged) cells of ``key``."""
        want = dict(key)
        return {r["seed"]: float(r[field]) for r in self.records.values()
                if r["key"] == want and r.get("status") == "ok" and field in r}

    def diverged(self) -> list[dict[str, Any]]:
        """The records of the diverged and the skipped cells."""
        return [r for r in self.records.values() if r.get("status") != "ok"]


def _diverged_step(error: BaseException) -> int | None:
    found = re.search(r"at step (\d+)", str(error))
    return int(found.group(1)) if found else None


def _finite(result: Mapping[str, Any]) -> bool:
    return all(math.isfinite(v) for v in result.values()
               if isinstance(v, float) and not isinstance(v, bool))


def run_one_cell(cell: Cell, run_one: Callable[[Cell], Mapping[str, Any]]) -> dict[str, Any]:
    """``run_one(cell)`` as a record: ``{"status": "ok", **result, "seconds"}``, or
    ``{"status": "diverged", "step", "error", "seconds"}`` for a diverged run or a
    non-finite float in the result, or ``{"status": "skipped", "reason"}`` (:class:`Skip`)."""
    start = time.perf_counter()
    try:
        result = dict(run_one(cell))
    except TrainingDiverged as error:
        return {"status": "diverged", "step": _diverged_step(error), "error": str(error),
                "seconds": time.perf_counter() - start}
    except Skip as error:
        return {"status": "skipped", "reason": str(error), "seconds": 0.0}
    seconds = time.perf_counter() - start
    if not _finite(result):
        return {"status": "diverged", "step": None, "error": "non-finite result",
                **result, "seconds": seconds}
    return {"status": "ok", **result, "seconds": seconds}


def _stop(signum: int, frame: Any) -> None:
    raise GridStopped(f"signal {signum}")


def run_grid(cells: Sequence[Cell], run_one: Callable[[Cell], Mapping[str, Any]], *,
             results: Results, log: Callable[[str], None] = print) -> Results:
    """Runs the cells ``results`` lacks, in order, recording each as it finishes.

    Args:
      cells: The grid.
      run_one: ``run_one(cell) -> {name: value}`` (JSON-able: test accuracy, ...).
      results: Where finished cells are kept; done ones are skipped.
      log: Receives one line per cell.

    Returns:
      ``results``, with every cell of ``cells`` in it.

    Raises:
      GridStopped: Ctrl-C or SIGTERM (also a training run's ``Preempted``, or its
        ``Interrupted``, a ``KeyboardInterrupt``); the cells finished before it are kept.
    """
    missing = [c for c in cells if not results.done(c)]
    if len(missing) < len(cells):
        log(f"resuming: {len(cells) - len(missing)} of {len(cells)} cells already in "
            f"{results.path}")
    start = time.perf_counter()
    previous = _install(signal.SIGTERM, _stop)
    try:
        for number, cell in enumerate(missing, 1):
            record = run_one_cell(cell, run_one)
            results.add(cell, record)
            status = record["status"] if record["status"] != "ok" else ", ".join(
                f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)
                and k != "seconds")
            log(f"[{time.perf_counter() - start:6.0f}s] {number}/{len(missing)} "
                f"{cell.describe()}: {status} ({record['seconds']:.0f} s)")
    except (KeyboardInterrupt, Preempted) as error:
        done = sum(results.done(c) for c in cells)
        raise GridStopped(f"stopped ({type(error).__name__}): {done} of {len(cells)} cells "
                          f"are in {results.path}; rerun the same command to resume") from None
    finally:
        _install(signal.SIGTERM, previous)
    return results


def _install(signum: int, handler: Any) -> Any:
    """Sets a signal handler from the main thread (elsewhere: nothing); returns the old one."""
    try:
        return signal.signal(signum, handler)
    except ValueError:  # Not the main thread.
        return handler


# --- statistics -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its two-sided t-interval.

    Attributes:
      mean: The mean (NaN without values).
      half_width: Half the interval's width (NaN with fewer than 2 values).
      n: The number of values.
      sd: Their sample standard deviation (NaN with fewer than 2).
    """

    mean: float
    half_width: float
    n: int
    sd: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"98.9 ± 0.3"`` (scaled: percent by default); an en dash without values."""
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{scale * self.mean:.{digits}f}"
        return f"{scale * self.mean:.{digits}f} ± {scale * self.half_width:.{digits}f}"


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def mean_interval(values: Iterable[float], *, confidence: float = 0.95) -> Interval:
    """The mean of ``values`` and its ``confidence`` t-interval, ``t * sd / sqrt(n)``."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, 0, math.nan)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, 1, math.nan)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, half, n, sd)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], *,
                      confidence: float = 0.95) -> Interval:
    """``a - b`` over the seeds both arms finished (``{seed: value}``): mean and interval.

    A seed missing (or diverged) in either arm is dropped from both.
    """
    seeds = sorted(set(a) & set(b))
    return mean_interval([a[s] - b[s] for s in seeds], confidence=confidence)


def detectable_difference(sd: float, n: int, *, confidence: float = 0.95,
                          power: float = 0.8) -> float:
    """The smallest true paired difference a two-sided test at ``confidence`` finds with
    probability ``power``, for ``n`` pairs of standard deviation ``sd``:
    ``(t(1 - alpha/2, n-1) + t(power, n-1)) * sd / sqrt(n)``. NaN for ``n < 2``."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    alpha = 1.0 - confidence
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def resolution(test_images: int = DIGITS_TEST_IMAGES) -> float:
    """One test image, as a fraction of the test set (digits: 1/360, 0.28 points)."""
    return 1.0 / test_images


# --- command line, metadata, report -----------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, *, out: str, seeds: int,
                    quick: str) -> None:
    """``--out``, ``--seeds`` and ``--quick`` (``quick`` says what it runs)."""
    parser.add_argument("--out", default=out,
                        help=f"output directory: runs.jsonl (resumable), results.md, "
                             f"results.json, the plot, training work directories "
                             f"(default {out})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds 0..N-1 per cell, paired across arms (default {seeds})")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the results were measured on: CPU, cores, load, jax and its devices."""
    import jax

    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_average": list(load),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": jax.device_count(), "python": platform.python_version()}


def describe_machine(meta: Mapping[str, Any]) -> str:
    """One line: ``Intel Xeon ..., 2 CPUs (load average 3.1), jax 0.10.2 on cpu (8 devices)``."""
    return (f"{meta['cpu']}, {meta['cpus']} CPUs (load average {meta['load_average'][0]:.1f} "
            f"at the end), jax {meta['jax']} on {meta['backend']} ({meta['devices']} "
            f"device(s))")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
                   numeric_from: int = 1) -> str:
    """A MyST/GitHub markdown table; columns from ``numeric_from`` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str, payload: Any) -> None:
    """Writes ``payload`` as indented JSON atomically (a temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Series:
    """One line of :func:`plot_lines`: x values, means and interval half-widths."""

    label: str
    x: Sequence[float]
    mean: Sequence[float]
    half_width: Sequence[float]
    dashed: bool = False
    color: str | None = None  # A matplotlib colour; None: the next of the cycle.


def plot_lines(path: str, series: Sequence[Series], *, xlabel: str, ylabel: str,
               title: str, xticks: Mapping[float, str] | None = None,
               log: Callable[[str], None] = print) -> bool:
    """Means with error bars, one line per series, saved to ``path``.

    Returns:
      ``False`` (and one line to ``log``) if matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for s in series:
        yerr = [0.0 if not math.isfinite(h) else h for h in s.half_width]
        ax.errorbar(list(s.x), list(s.mean), yerr=yerr, capsize=3, label=s.label,
                    marker="s" if s.dashed else "o", linestyle="--" if s.dashed else "-",
                    color=s.color)
    if xticks:
        ax.set_xticks(list(xticks), list(xticks.values()))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
