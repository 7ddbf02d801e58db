"""The metrics log (``metrics.jsonl``, one JSON record per line) and its plot.

On resume the log is cut back to the restored step. A last line cut short (the
process killed during a write) is dropped; a damaged line before it is an
error (:class:`MetricsLogError`): it is not a kill's trace, and the log is left
as it is. A write that fails (a full disk) leaves the file as it was and raises
:class:`~mobilenet.infra.disk.WriteFailed`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from mobilenet.infra import disk


class MetricsLogError(ValueError):
    """A metrics log that cannot be read (one-line message)."""


def read_records(path: str) -> tuple[list[dict[str, Any]], bool]:
    """The records of ``path``, and whether a cut-short last line was dropped.

    Raises:
      MetricsLogError: a line other than the last is not a JSON object.
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records, dropped = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError):
            if number == len(lines):  # No newline after it: a write cut short.
                dropped = True
                continue
            raise MetricsLogError(
                f"{path}: line {number} is not a JSON record; repair or remove the file, "
                "or use a new --workdir") from None
        records.append(record)
    return records, dropped


class MetricsLog:
    """Appends records to ``path`` (``None``: keeps them in memory only).

    Args:
      path: The JSON-lines file.
      resume_step: Records of later steps (from a run that went past its last
        checkpoint) are dropped, and so is a cut-short last line; the file is
        rewritten atomically (write, then rename), so a kill loses nothing.

    Raises:
      MetricsLogError: from :func:`read_records`.
      disk.WriteFailed: the rewrite failed (the file is as it was).
    """

    def __init__(self, path: str | None, *, resume_step: int):
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.dropped_partial_line = False
        if path and os.path.exists(path):
            old, self.dropped_partial_line = read_records(path)
            self.records = [r for r in old if r.get("step", 0) <= resume_step]
            disk.replace_file(path, "".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict[str, Any]) -> None:
        """Appends ``record`` (one line, written through).

        Raises:
          disk.WriteFailed: the write failed; the file is as it was.
        """
        if self.path:
            disk.append_line(self.path, json.dumps(record))
        self.records.append(record)


@functools.cache
def plotting_modules() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` and its Agg canvas: the plot's imports (about 0.45 s on a
    2-core CPU), which :meth:`~mobilenet.infra.lifecycle.Lifecycle.import_ahead` does in
    the background, with the parser of the log axis's labels (built on first use, 0.05 s);
    once per process. No ``pyplot``: no global figure state, safe in any thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.mathtext import MathTextParser

    MathTextParser("agg").parse("$10^{-1}$")
    return Figure, FigureCanvasAgg


def plot_metrics(records: list[dict[str, Any]], path: str) -> None:
    """Training and test loss and accuracy against the step, as a PNG.

    Raises:
      disk.WriteFailed: the write failed; an older plot at ``path`` is kept.
    """
    figure_class, canvas_class = plotting_modules()

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    fig = figure_class(figsize=(10, 4))
    canvas_class(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
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
    temporary = path + ".tmp.png"
    try:
        fig.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise disk.failure(error, path) or error from None
