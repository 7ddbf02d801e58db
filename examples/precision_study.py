"""Is ReLU6 better at low precision? Quantized activations, measured on real training runs.

ReLU6 is said to be "robust when used with low-precision computation"
(MobileNetV2): its range [0, 6] is known in advance (no calibration) and needs
only 3 integer bits. This script measures it with the example's own training
loop (:func:`mobilenet.train.fit`) on the bundled digits data, MobileNetV2:

* activations: ReLU6 on [0, 6] (affine: ``2**B`` levels, steps of
  ``6 / (2**B - 1)``; and fixed point: 3 integer bits, steps of
  ``2**-(B - 3)``); ReLU, unbounded, quantized on [0, r] with ``r`` per layer
  the maximum or the 99.99th percentile of its outputs; a capped ReLU
  ``min(max(x, 0), cap)`` on [0, cap] (``--cap``, 3 by default);
* activation bits: float, 8, 6, 5, 4, 3, 2 (only activations: weights stay
  float32, as the question is about the activation's range);
* PTQ (post-training quantization): train in float once per (activation,
  seed), then evaluate with every bit width. ReLU's ranges come from a
  calibration pass over the first ``--calibration-batches`` training batches
  (eval mode, unquantized): the largest batch maximum, or the mean of the
  batches' 99.99th percentiles, per layer;
* QAT (quantization-aware training): one run per (activation, bits, seed),
  forward quantized during training (straight-through gradient). ReLU's range
  is a running mean of each training batch's maximum (or percentile), kept
  beside batch norm's statistics (see :mod:`mobilenet.quantization`).

Runs with the same seed share the initialisation and the data order (the
activations have no parameters). The test accuracy (mean ± std over seeds) is
written as a markdown table (rows: activation x scheme x mode, columns: bits)
to ``results.md``, with ``results.json`` (every run) and
``precision_study.png`` (accuracy against bits, one line per row) in
``--out``; the table is printed.

    python examples/precision_study.py --quick
    python examples/precision_study.py --out runs/precision --seeds 5

Cost: ``--quick`` (MobileNetV2 x0.25, 150 steps of batch 64, 3 seeds; PTQ at
every bit width for all five rows, QAT at 4 and 2 bits for ReLU6 affine /
fixed point and ReLU (max)) trains 27 short runs: 429 s wall (596 s of CPU
time) on a 2-core CPU at load average 2-4, and 1950 s when other jobs kept the
load at 12-15. Compilation dominates: each distinct model compiles its init,
train and eval steps once, and the seeds reuse them. The full grid (width 0.5, 300 steps
of batch 128 with label smoothing 0.1, QAT at all six bit widths for all five rows, 3 seeds)
trains 99 runs: an estimated 2-3 hours on that CPU, minutes on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For `import mobilenet`.

import jax
import numpy as np

from mobilenet import input_pipeline, quantization, train, train_state
from mobilenet.configs import default
from mobilenet.sharding import batch_sharding, create_mesh

ALL_BITS = (8, 6, 5, 4, 3, 2)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: an activation, its quantization scheme, and the mode.

    Attributes:
      nonlinearity: ``"relu6"``, ``"relu"`` or ``"capped_relu"`` (the example's
        ``--nonlinearity``).
      scheme: ``"affine"``/``"fixed_point"`` (a quantizer) or ``"max"``/
        ``"percentile"`` (ReLU's range statistic).
    """

    nonlinearity: str
    scheme: str

    @property
    def key(self) -> str:
        """``"nonlinearity:scheme"``, as ``--rows`` and ``--qat-rows`` name it."""
        return f"{self.nonlinearity}:{self.scheme}"

    def settings(self) -> dict[str, str]:
        """The example's config fields of this row."""
        if self.nonlinearity == "relu":
            return {"nonlinearity": "relu", "calibration": self.scheme}
        return {"nonlinearity": self.nonlinearity, "quant_scheme": self.scheme}

    def label(self, cap: float) -> str:
        name = {"relu6": "ReLU6 [0, 6]", "relu": "ReLU",
                "capped_relu": f"capped ReLU [0, {cap:g}]"}[self.nonlinearity]
        scheme = {"affine": "affine", "fixed_point": "fixed point (3 int bits)",
                  "max": "range: max", "percentile": f"range: p{quantization.PERCENTILE:g}"}
        return f"{name}, {scheme[self.scheme]}"


ROWS = (Row("relu6", "affine"), Row("relu6", "fixed_point"), Row("relu", "max"),
        Row("relu", "percentile"), Row("capped_relu", "affine"))


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What the study runs (written into results.md)."""

    model: str = "mobilenet_v2"
    width: float = 0.5
    steps: int = 300
    batch_size: int = 128
    seeds: int = 3
    cap: float = 3.0
    bits: tuple[int, ...] = ALL_BITS
    qat_bits: tuple[int, ...] = ALL_BITS
    rows: tuple[str, ...] = tuple(r.key for r in ROWS)
    qat_rows: tuple[str, ...] = tuple(r.key for r in ROWS)
    calibration_batches: int = 4
    quick: bool = False

    def ptq(self) -> list[Row]:
        """The rows evaluated after float training."""
        return [r for r in ROWS if r.key in self.rows]

    def qat(self) -> list[Row]:
        """The rows trained quantized."""
        return [r for r in ROWS if r.key in self.qat_rows]


LABEL_SMOOTHING = 0.1
QUICK = {"width": 0.25, "steps": 150, "batch_size": 64, "qat_bits": (4, 2),
         "qat_rows": ("relu6:affine", "relu6:fixed_point", "relu:max")}


def base_config(cfg: StudyConfig, seed: int, **settings: Any) -> default.Config:
    """The example's config of one run: quiet, no work directory, one evaluation at the end."""
    # Label smoothing 0.1 as when docs/precision_study.md's table was measured (the example's
    # default recipe has none since).
    return default.get_config(
        model=cfg.model, width=cfg.width, steps=cfg.steps, batch_size=cfg.batch_size,
        seed=seed, cap=cfg.cap, label_smoothing=LABEL_SMOOTHING, progress=False, plot=False,
        eval_every=0, log_every=cfg.steps, checkpoint_every=0, **settings)


class Evaluator:
    """Evaluates a float-trained state with quantized activations (PTQ), per seed."""

    def __init__(self, cfg: StudyConfig, seed: int):
        config = base_config(cfg, seed)
        self.dataset = input_pipeline.load_dataset(config.data, seed=seed)
        self.mesh = create_mesh()
        sharding = batch_sharding(self.mesh)
        self.test_batches = input_pipeline.eval_batches(
            self.dataset.test_images, self.dataset.test_labels,
            batch_size=config.eval_batch_size, sharding=sharding)
        self.eval_step = train_state.make_eval_step(mesh=self.mesh, mean=self.dataset.mean,
                                                    std=self.dataset.std)
        n = self.dataset.train_images.shape[0]
        # The first training batches of this seed's order, unaugmented, normalized.
        self.calibration = [
            input_pipeline.normalize(
                self.dataset.train_images[input_pipeline.batch_indices(
                    n, batch_size=cfg.batch_size, seed=seed, step=step)],
                mean=self.dataset.mean, std=self.dataset.std)
            for step in range(cfg.calibration_batches)]

    def ranges(self, state: train_state.TrainState, model: Any) -> dict[str, Any]:
        """ReLU's calibrated ranges (``{"max": tree, "percentile": tree}``) for ``state``."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return quantization.calibrate(model.apply, variables, self.calibration)

    def accuracy(self, state: train_state.TrainState, model: Any,
                 batch_stats: Any) -> float:
        quantized = state.replace(model=model, batch_stats=batch_stats)
        return train_state.evaluate(self.eval_step, quantized,
                                    self.test_batches)["test_accuracy"]


def run_study(cfg: StudyConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains and evaluates the grid; returns every run's test accuracy.

    Returns:
      ``{"runs": [{"row", "mode", "bits", "seed", "test_accuracy"}, ...],
      "seconds"}`` with ``bits`` ``None`` for float (mode ``"float"``).
    """
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []

    def record(row: Row | None, mode: str, bits: int | None, seed: int, accuracy: float,
               nonlinearity: str | None = None) -> None:
        runs.append({"nonlinearity": row.nonlinearity if row else nonlinearity,
                     "scheme": row.scheme if row else None, "mode": mode, "bits": bits,
                     "seed": seed, "test_accuracy": accuracy})
        what = f"{row.label(cfg.cap)} {mode}" if row else f"{nonlinearity} float"
        log(f"[{time.perf_counter() - start:5.0f}s] seed {seed} {what}"
            f"{f' {bits} bits' if bits else ''}: test accuracy {accuracy:.4f}")

    nonlinearities = list(dict.fromkeys(r.nonlinearity for r in cfg.ptq() + cfg.qat()))
    for seed in range(cfg.seeds):
        evaluator = Evaluator(cfg, seed)
        for nonlinearity in nonlinearities:
            config = base_config(cfg, seed, nonlinearity=nonlinearity)
            state, summary = train.fit(config, None)
            record(None, "float", None, seed, summary["test_accuracy"], nonlinearity)
            ranges = None
            for row in (r for r in cfg.ptq() if r.nonlinearity == nonlinearity):
                for bits in cfg.bits:
                    qconfig = base_config(cfg, seed, activation_bits=bits, **row.settings())
                    model = train_state.create_model(qconfig,
                                                     num_classes=evaluator.dataset.num_classes)
                    batch_stats = state.batch_stats
                    if nonlinearity == "relu":
                        if ranges is None:  # Calibration is float: one pass serves all bits.
                            ranges = evaluator.ranges(state, model)
                        batch_stats = quantization.set_ranges(batch_stats, ranges[row.scheme])
                    record(row, "PTQ", bits, seed,
                           evaluator.accuracy(state, model, batch_stats))
        for row in cfg.qat():
            for bits in cfg.qat_bits:
                config = base_config(cfg, seed, activation_bits=bits, **row.settings())
                record(row, "QAT", bits, seed,
                       train.train_and_evaluate(config, None)["test_accuracy"])
    return {"runs": runs, "seconds": time.perf_counter() - start}


# --- report -----------------------------------------------------------------


def _cells(runs: list[dict[str, Any]], nonlinearity: str, scheme: str | None, mode: str,
           bits: int | None) -> list[float]:
    return [r["test_accuracy"] for r in runs if r["nonlinearity"] == nonlinearity
            and r["mode"] == mode and r["bits"] == bits
            and (scheme is None or r["scheme"] == scheme)]


def table_rows(results: dict[str, Any], cfg: StudyConfig
               ) -> list[tuple[Row, str, dict[Any, list[float]]]]:
    """``(row, mode, {"float" or bits: accuracies over seeds})`` for every table row.

    The float column of a row is its activation's float training runs.
    """
    runs = results["runs"]
    out = []
    for mode, rows, bit_list in (("PTQ", cfg.ptq(), cfg.bits), ("QAT", cfg.qat(), cfg.qat_bits)):
        for row in rows:
            cells: dict[Any, list[float]] = {
                "float": _cells(runs, row.nonlinearity, None, "float", None)}
            for bits in bit_list:
                cells[bits] = _cells(runs, row.nonlinearity, row.scheme, mode, bits)
            out.append((row, mode, cells))
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{100 * float(np.mean(values)):.1f} ± {100 * std:.1f}"


def format_table(results: dict[str, Any], cfg: StudyConfig) -> str:
    """The markdown table: test accuracy (%) mean ± std over seeds; columns float, then bits."""
    columns = sorted(set(cfg.bits) | set(cfg.qat_bits), reverse=True)
    header = ["activation, scheme", "mode", "float"] + [f"{b} bits" for b in columns]
    lines = ["| " + " | ".join(header) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |"]
    for row, mode, cells in table_rows(results, cfg):
        values = [_mean_std(cells["float"])] + [_mean_std(cells.get(b, [])) for b in columns]
        lines.append(f"| {row.label(cfg.cap)} | {mode} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def describe(cfg: StudyConfig) -> str:
    qat = ", ".join(r.label(cfg.cap) for r in cfg.qat())
    return (f"{'--quick: ' if cfg.quick else ''}{cfg.model} x{cfg.width:g} on digits "
            f"(32x32), {cfg.steps} steps of batch {cfg.batch_size} (SGD, the example's "
            f"defaults otherwise), {cfg.seeds} seeds; PTQ at {_bits(cfg.bits)} bits "
            f"(ReLU calibrated on {cfg.calibration_batches} training batches); QAT at "
            f"{_bits(cfg.qat_bits)} bits for {qat}. Activations only: weights stay float32.")


def _bits(bits: Sequence[int]) -> str:
    return ", ".join(map(str, bits))


def format_results(results: dict[str, Any], cfg: StudyConfig, meta: dict[str, Any]) -> str:
    return "\n".join([
        "# Low-precision activations: ReLU6 vs ReLU (jrelu6 precision study)", "",
        f"Configuration: {describe(cfg)}",
        f"Machine: {meta['machine']}; wall time {meta['seconds']:.0f} s.", "",
        f"Test accuracy (%), mean ± std over {cfg.seeds} seeds:", "",
        format_table(results, cfg), ""])


def _std(values: list[float]) -> float:
    """The sample standard deviation in percent (0 for one value)."""
    return 100 * float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def plot_results(results: dict[str, Any], cfg: StudyConfig, path: str) -> None:
    """Accuracy against bits, one line per (activation, mode); float at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    float_x = max(cfg.bits) + 2
    fig, ax = plt.subplots(figsize=(8, 5))
    for row, mode, cells in table_rows(results, cfg):
        xs = [b for b in sorted(k for k in cells if k != "float") if cells[b]]
        if not xs:
            continue
        style = {"marker": "o" if mode == "PTQ" else "s", "capsize": 3}
        line = ax.errorbar(xs, [100 * np.mean(cells[b]) for b in xs],
                           yerr=[_std(cells[b]) for b in xs],
                           linestyle="-" if mode == "PTQ" else "--",
                           label=f"{row.label(cfg.cap)}, {mode}", **style)
        if cells["float"]:  # The float run, unconnected: no bit widths lie in between.
            ax.errorbar([float_x], [100 * np.mean(cells["float"])],
                        yerr=[_std(cells["float"])], linestyle="none",
                        color=line[0].get_color(), **style)
    ticks = sorted(set(cfg.bits) | set(cfg.qat_bits))
    ax.set_xticks([*ticks, float_x], [str(t) for t in ticks] + ["float"])
    ax.set_xlabel("activation bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{cfg.model} x{cfg.width:g} on digits, {cfg.seeds} seeds (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line -----------------------------------------------------------


def _bit_list(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits are a comma-separated list, e.g. 8,4,2; "
                                         f"got {text!r}") from None
    if not bits or any(not 2 <= b <= 16 for b in bits):
        raise argparse.ArgumentTypeError(f"bits must lie in [2, 16], got {text!r}")
    return bits


def _shown(value: Any) -> str:
    """A value as its flag takes it: bits comma-separated, rows space-separated."""
    if isinstance(value, tuple):
        return ("," if all(isinstance(v, int) for v in value) else " ").join(map(str, value))
    return str(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/precision_study.py",
        description="Train MobileNetV2 on the bundled digits with ReLU6, ReLU and a capped "
                    "ReLU, quantize their outputs to 8..2 bits after training (PTQ) and "
                    "during training (QAT), and report test accuracy (mean ± std over "
                    "seeds). Writes results.md, results.json and precision_study.png into "
                    "--out and prints the table.")
    d = StudyConfig()
    quick = ", ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in QUICK.items())
    parser.add_argument("--quick", action="store_true",
                        help=f"the configuration for a 2-core CPU (about 7 minutes): "
                             f"{quick}; flags given explicitly still win")
    parser.add_argument("--out", default="runs/precision_study",
                        help="output directory (default runs/precision_study)")
    parser.add_argument("--model", choices=default.MODELS, default=None,
                        help=f"the example's model (default {d.model})")
    parser.add_argument("--width", type=float, default=None,
                        help=f"width multiplier (default {d.width})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps per run (default {d.steps})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"training batch size (default {d.batch_size})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds 0..N-1 per cell (default {d.seeds})")
    parser.add_argument("--cap", type=float, default=None,
                        help=f"the capped ReLU's bound (default {d.cap:g})")
    parser.add_argument("--bits", type=_bit_list, default=None,
                        help=f"PTQ bit widths (default {_bits(d.bits)})")
    parser.add_argument("--qat-bits", type=_bit_list, default=None,
                        help=f"QAT bit widths (default {_bits(d.qat_bits)})")
    parser.add_argument("--rows", nargs="+", default=None, choices=[r.key for r in ROWS],
                        metavar="ROW",
                        help=f"the rows evaluated with PTQ: "
                             f"{', '.join(r.key for r in ROWS)} (default all)")
    parser.add_argument("--qat-rows", nargs="+", default=None, choices=[r.key for r in ROWS],
                        metavar="ROW",
                        help="the rows trained with QAT (default all)")
    parser.add_argument("--calibration-batches", type=int, default=None,
                        help=f"training batches ReLU's PTQ ranges are measured on "
                             f"(default {d.calibration_batches})")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    values: dict[str, Any] = dict(QUICK, quick=True) if args.quick else {}
    for field in dataclasses.fields(StudyConfig):
        given = getattr(args, field.name, None)
        if field.name != "quick" and given is not None:
            values[field.name] = tuple(given) if isinstance(given, list) else given
    cfg = StudyConfig(**values)
    if cfg.steps < 1 or cfg.seeds < 1 or cfg.batch_size < 1 or cfg.calibration_batches < 1:
        raise SystemExit("precision_study: --steps, --seeds, --batch-size and "
                         "--calibration-batches must be >= 1")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    os.makedirs(args.out, exist_ok=True)
    results = run_study(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    meta = {"seconds": results["seconds"],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (load average "
                       f"{load:.1f} at the end), jax {jax.__version__} on "
                       f"{jax.default_backend()} ({jax.device_count()} device(s))"}
    report = format_results(results, cfg, meta)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(cfg), "meta": meta, **results}, f, indent=1)
    if not args.no_plot:
        plot_results(results, cfg, os.path.join(args.out, "precision_study.png"))
    print(report)
    print(f"Wrote {os.path.join(args.out, 'results.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
