"""Low precision on the default recipe: ReLU6 against ReLU, PTQ against QAT fine-tuning.

Per seed, on the example's default MobileNetV2 x0.5 (digits, ~99% float), run in
this process with :func:`mobilenet.train.fit`:

1. **Float**: one run per activation: ReLU6, ReLU, and a capped ReLU on
   ``[0, --cap]`` (3 by default), with the recipe's settings.
2. **The activation's question** (weights float, the relu6-family outputs quantized
   to ``a`` bits): ReLU6 on its fixed ``[0, 6]`` grid, the capped ReLU on
   ``[0, cap]``, ReLU on ``[0, r]`` with ``r`` per layer: calibrated (the largest
   batch maximum over the calibration batches) for PTQ, a running mean of the
   batch maxima in QAT. PTQ evaluates the float run so quantized; QAT fine-tunes
   the float run (``--init-from``) quantized.
3. **The integer model** (ReLU6 only, as LiteRT's int8 file; docs/qat.md): batch
   norm folded, weights fake-quantized to ``w`` bits per output channel or per
   tensor, every activation tensor to ``a`` bits, at ``w/a`` = 8/8, 8/4, 4/8,
   4/4, 3/3, 8/2. PTQ: the float run's weights, its activation ranges calibrated
   on training batches (the moving ranges QAT uses, updated with batch norm
   frozen); QAT: fine-tuned from the float run (``--weight-bits``,
   ``--bn-freeze-step`` half way).

Runs with the same seed share the initialisation and the data order, so the arms
are compared **paired by seed**: the report gives each arm's mean with its 95%
t-interval, and the paired differences ReLU6 - ReLU, ReLU6 - capped ReLU,
QAT - PTQ and per channel - per tensor with their 95% intervals, n, and the
smallest difference the design detects (:mod:`mobilenet.study`). Every finished
run is a line of ``--out``/runs.jsonl: rerun the same command to resume after an
interruption; a diverged run is recorded as diverged and the study goes on.

    python examples/precision_study.py --quick
    python examples/precision_study.py --out runs/precision --seeds 5

Writes results.md (MyST markdown, pasteable into docs/precision_study.md),
results.json and precision_study.png into ``--out``, and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For `import mobilenet`.

from mobilenet import study

ACTIVATIONS = ("relu6", "relu", "capped_relu")
#: Weight / activation bits of the integer model.
PAIRS = ((8, 8), (8, 4), (4, 8), (4, 4), (3, 3), (8, 2))
GRANULARITIES = ("per_channel", "per_tensor")


@dataclasses.dataclass(frozen=True)
class Design:
    """What the study runs. Everything but ``seeds`` is the grid's configuration:
    a rerun with more seeds resumes, one with another setting is refused.

    Attributes:
      model: The example's model.
      width: Its width multiplier.
      float_steps: Steps of the float runs (the recipe's 550 by default).
      qat_steps: Steps of each QAT fine-tune (batch norm frozen half way).
      qat_learning_rate: The fine-tunes' peak learning rate (cosine to 0).
      cap: The capped ReLU's bound.
      activations: The activations trained and compared.
      activation_bits: The activation-only arms' bit widths under PTQ.
      qat_activation_bits: Those also fine-tuned (QAT).
      pairs: ``(w, a)`` of the integer model's per-channel arms (PTQ and QAT).
      per_tensor_ptq: The pairs also evaluated with per-tensor weights (PTQ).
      per_tensor_qat: The pairs also fine-tuned with per-tensor weights.
      calibration_batches: Training batches the PTQ ranges are measured on.
      seeds: Seeds ``0 .. seeds - 1``.
      quick: ``--quick``'s design.
    """

    model: str = "mobilenet_v2"
    width: float = 0.5
    float_steps: int | None = None
    qat_steps: int = 100
    qat_learning_rate: float = 0.001
    cap: float = 3.0
    activations: tuple[str, ...] = ACTIVATIONS
    activation_bits: tuple[int, ...] = (8, 4, 2)
    qat_activation_bits: tuple[int, ...] = (4,)
    pairs: tuple[tuple[int, int], ...] = PAIRS
    per_tensor_ptq: tuple[tuple[int, int], ...] = ((8, 8), (4, 8), (4, 4))
    per_tensor_qat: tuple[tuple[int, int], ...] = ((8, 8),)
    calibration_batches: int = 8
    seeds: int = 5
    quick: bool = False

    def configuration(self) -> dict[str, Any]:
        """The grid's configuration (all but ``seeds``), for :class:`study.Results`."""
        fields = dataclasses.asdict(self)
        fields.pop("seeds")
        return fields

    def keys(self) -> list[dict[str, Any]]:
        """Every cell's settings, in the order one seed runs them (float first)."""
        def key(arm: str, act: str, w: int | None = None, a: int | None = None,
                gran: str | None = None) -> dict[str, Any]:
            return {"arm": arm, "act": act, "w": w, "a": a, "gran": gran}

        keys = [key("float", act) for act in self.activations]
        for arm, bits in (("ptq", self.activation_bits), ("qat", self.qat_activation_bits)):
            keys += [key(arm, act, None, a) for a in bits for act in self.activations]
            per_tensor = self.per_tensor_ptq if arm == "ptq" else self.per_tensor_qat
            if "relu6" in self.activations:
                keys += [key(arm, "relu6", w, a, gran) for w, a in self.pairs
                         for gran in GRANULARITIES
                         if gran == "per_channel" or (w, a) in per_tensor]
        return keys

    def cells(self) -> list[study.Cell]:
        return study.grid(self.keys(), range(self.seeds))


QUICK = Design(activations=("relu6", "relu"), activation_bits=(4,), pairs=((8, 4),),
               per_tensor_ptq=((8, 4),), per_tensor_qat=(), seeds=2, quick=True)


# --- the runs ---------------------------------------------------------------------------


class Runner:
    """Runs one cell: a float training run, a PTQ evaluation or a QAT fine-tune.

    Float runs keep their final checkpoint in ``<out>/work/seed<S>/<act>``, which
    the PTQ and QAT cells of that seed start from.
    """

    def __init__(self, design: Design, out: str, results: study.Results):
        self.design, self.out, self.results = design, out, results
        self._evaluators: dict[int, Any] = {}

    def float_dir(self, seed: int, act: str) -> str:
        return os.path.join(self.out, "work", f"seed{seed}", act)

    def config(self, cell: study.Cell, **overrides: Any) -> Any:
        """The example's config of ``cell`` (quiet, one evaluation at the end)."""
        from mobilenet.configs import default

        d, key = self.design, cell.key
        settings: dict[str, Any] = {
            "model": d.model, "width": d.width, "seed": cell.seed,
            "nonlinearity": key["act"], "progress": False, "plot": False, "eval_every": 0,
            "checkpoint_every": 0, "keep_checkpoints": 1}
        if d.float_steps is not None:
            settings["steps"] = d.float_steps
        if key["act"] == "capped_relu":
            settings["cap"] = d.cap
        if key["arm"] != "float":
            settings["activation_bits"] = key["a"]
        if key["w"] is not None:
            settings.update(weight_bits=key["w"], weight_granularity=key["gran"])
        return default.get_config(**{**settings, **overrides})

    def __call__(self, cell: study.Cell) -> dict[str, Any]:
        from mobilenet import train

        if cell.key["arm"] == "float":
            _, summary = train.fit(self.config(cell), self.float_dir(cell.seed, cell.key["act"]))
            return {"test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"]}
        source = self._float_run(cell)
        if cell.key["arm"] == "ptq":
            return self._evaluator(cell.seed).ptq(self.config(cell), source)
        steps = self.design.qat_steps
        config = self.config(
            cell, init_from=source, steps=steps, learning_rate=self.design.qat_learning_rate,
            log_every=steps, **({"bn_freeze_step": steps // 2} if cell.key["w"] else {}))
        state, summary = train.fit(config, None)
        out = {"test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"]}
        if cell.key["w"] is not None:  # Quantized logits: count their ties.
            out.update(self._evaluator(cell.seed).ties(
                state.model, {"params": state.params, "batch_stats": state.batch_stats}))
        return out

    def _float_run(self, cell: study.Cell) -> str:
        """The work directory of ``cell``'s float run; :class:`study.Skip` if it failed."""
        record = self.results.get(study.Cell(
            {"arm": "float", "act": cell.key["act"], "w": None, "a": None, "gran": None},
            cell.seed))
        if record is None or record["status"] != "ok":
            raise study.Skip(f"its float run ({cell.key['act']}, seed {cell.seed}) "
                             f"{'did not finish' if record is None else record['status']}")
        return self.float_dir(cell.seed, cell.key["act"])

    def _evaluator(self, seed: int) -> Any:
        if seed not in self._evaluators:
            self._evaluators = {seed: PTQ(seed, self.design)}  # One seed's data at a time.
        return self._evaluators[seed]


def _apply(model: Any) -> Any:
    """``model.apply`` in evaluation mode, jitted once per model."""
    import jax

    if model not in _APPLY:
        _APPLY[model] = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
    return _APPLY[model]


_APPLY: dict[Any, Any] = {}


class PTQ:
    """Post-training quantization of a float run, evaluated on the test split."""

    def __init__(self, seed: int, design: Design):
        from mobilenet import input_pipeline, train_state
        from mobilenet.configs import default
        from mobilenet.infra import datasets
        from mobilenet.sharding import batch_sharding, create_mesh

        config = default.get_config(seed=seed)
        self.dataset = datasets.load_dataset(config.data, seed=seed)
        self.mesh = create_mesh()
        self.test_batches = input_pipeline.eval_batches(
            self.dataset.test_images, self.dataset.test_labels,
            batch_size=config.eval_batch_size, sharding=batch_sharding(self.mesh))
        self.eval_step = train_state.make_eval_step(mesh=self.mesh, mean=self.dataset.mean,
                                                    std=self.dataset.std)
        n = self.dataset.train_images.shape[0]
        # The first training batches of this seed's order, unaugmented, normalized.
        self.calibration = [
            input_pipeline.normalize(
                self.dataset.train_images[input_pipeline.batch_indices(
                    n, batch_size=config.batch_size, seed=seed, step=step)],
                mean=self.dataset.mean, std=self.dataset.std)
            for step in range(design.calibration_batches)]

    def ptq(self, config: Any, workdir: str) -> dict[str, Any]:
        """Test metrics of the float run in ``workdir`` quantized as ``config`` says."""
        import jax

        from mobilenet import export, quantization, train_state

        float_run = export.load_run(workdir)
        model = train_state.create_model(config, num_classes=self.dataset.num_classes)
        variables = {"params": float_run.variables["params"],
                     "batch_stats": float_run.variables.get("batch_stats", {})}
        if config.weight_bits is not None:
            variables["batch_stats"] = self._moving_ranges(model, variables)
        elif config.nonlinearity == "relu":
            ranges = quantization.calibrate(model.apply, variables, self.calibration)["max"]
            variables["batch_stats"] = quantization.set_ranges(variables["batch_stats"], ranges)
        state = train_state.TrainState(
            step=jax.numpy.zeros((), "int32"), params=variables["params"],
            batch_stats=variables["batch_stats"], opt_state={}, rng=jax.numpy.zeros(2, "uint32"),
            metrics=train_state.zero_metrics(), model=model, tx=None)  # type: ignore[arg-type]
        metrics = train_state.evaluate(self.eval_step, state, self.test_batches)
        out = {"test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}
        if config.weight_bits is not None:
            out.update(self.ties(model, variables))
        return out

    def ties(self, model: Any, variables: dict[str, Any]) -> dict[str, float]:
        """The integer model's logits are on a grid of ``2**a`` levels: at 4 bits and below
        several classes often share the top level, and argmax takes the first of them.

        Returns:
          ``{"tied": share of test images whose top logit is shared, "split_accuracy":
          accuracy with a tie counted as 1/k correct when the label is among the k}``
          (the expected accuracy with ties broken at random).
        """
        import numpy as np

        from mobilenet import input_pipeline

        images = input_pipeline.normalize(self.dataset.test_images, mean=self.dataset.mean,
                                          std=self.dataset.std)
        logits = np.asarray(_apply(model)(variables, images))
        labels = np.asarray(self.dataset.test_labels)
        top = logits == logits.max(axis=-1, keepdims=True)
        shared = top.sum(axis=-1)
        hit = top[np.arange(labels.size), labels]
        return {"tied": float(np.mean(shared > 1)),
                "split_accuracy": float(np.mean(hit / shared))}

    def _moving_ranges(self, model: Any, variables: dict[str, Any]) -> Any:
        """The integer model's activation ranges, calibrated: its moving ranges updated over
        the calibration batches in training mode, batch norm frozen (running statistics,
        unchanged), no dropout; the first batch sets them, as in QAT."""
        import functools

        import jax
        import numpy as np

        calibrating = model.clone(dropout_rate=0.0)

        @jax.jit
        def update(variables, x):
            _, new = calibrating.apply(variables, x, train=True, bn_frozen=True,
                                       mutable=["batch_stats"])
            return {**variables, "batch_stats": new["batch_stats"]}

        from flax.traverse_util import flatten_dict, unflatten_dict

        shapes = jax.eval_shape(functools.partial(model.init, train=False),
                                jax.random.PRNGKey(0), self.calibration[0][:1])
        # The moving ranges start at 0 (the first batch sets them); the rest is the float run's.
        saved = flatten_dict(variables["batch_stats"])
        stats = {k: saved[k] if k in saved else np.zeros(v.shape, v.dtype)
                 for k, v in flatten_dict(shapes["batch_stats"]).items()}
        variables = {**variables, "batch_stats": unflatten_dict(stats)}
        for x in self.calibration:
            variables = update(variables, x)
        return variables["batch_stats"]


# --- the report -------------------------------------------------------------------------

LABELS = {"relu6": "ReLU6 [0, 6]", "relu": "ReLU (calibrated / learned range)",
          "capped_relu": "capped ReLU [0, {cap:g}]"}
ARMS = {"ptq": "PTQ", "qat": "QAT"}
GRAN = {"per_channel": "per channel", "per_tensor": "per tensor"}


def key(arm: str, act: str, w: int | None = None, a: int | None = None,
        gran: str | None = None) -> dict[str, Any]:
    return {"arm": arm, "act": act, "w": w, "a": a, "gran": gran}


def label(act: str, design: Design) -> str:
    return LABELS[act].format(cap=design.cap)


def arm_tables(results: study.Results, design: Design) -> str:
    """Test accuracy (%) of every arm: mean ± 95% half-width over the seeds (n)."""
    def cell(k: dict[str, Any], field: str = "test_accuracy") -> str:
        interval = study.mean_interval(results.values(k, field).values())
        return "–" if not interval.n else f"{interval.format(digits=2)} ({interval.n})"

    bits = design.activation_bits
    rows = [[label(act, design), ARMS[arm], cell(key("float", act))]
            + [cell(key(arm, act, None, a)) for a in bits]
            for arm in ARMS for act in design.activations]
    first = study.markdown_table(
        ["activation", "mode", "float"] + [f"a{a}" for a in bits], rows, numeric_from=2)
    pairs = design.pairs
    keys = design.keys()
    arms = [(arm, gran) for arm in ARMS for gran in GRANULARITIES
            if any(key(arm, "relu6", w, a, gran) in keys for w, a in pairs)]
    header = ["mode", "weights"] + [f"w{w}/a{a}" for w, a in pairs]
    second, split = (study.markdown_table(header, [
        [ARMS[arm], GRAN[gran]] + [cell(key(arm, "relu6", w, a, gran), field) for w, a in pairs]
        for arm, gran in arms], numeric_from=2) for field in ("test_accuracy", "split_accuracy"))
    return (f"Activations quantized, weights float (test accuracy %, mean ± 95% interval "
            f"(seeds)):\n\n{first}\n\nThe integer model, ReLU6 (batch norm folded, weights "
            f"w bits, every activation tensor a bits, the logits too):\n\n{second}\n\n"
            f"The same with ties split: at a bits the logits take 2^a levels, several classes "
            f"can share the top one and argmax takes the first; counting such an image as "
            f"1/k correct when its label is among the k (the expected accuracy with ties "
            f"broken at random):\n\n{split}")


def comparisons(design: Design) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(what, arm A, arm B)`` of every paired difference A - B the report gives."""
    out = []
    for other in ("relu", "capped_relu"):
        name = "ReLU" if other == "relu" else "capped ReLU"
        out.append((f"ReLU6 - {name}, float", key("float", "relu6"), key("float", other)))
        out += [(f"ReLU6 - {name}, {ARMS[arm]} a{a}", key(arm, "relu6", None, a),
                 key(arm, other, None, a)) for arm in ARMS for a in design.activation_bits]
    out += [(f"QAT - PTQ, {label(act, design).split(' [')[0].split(' (')[0]} a{a}",
             key("qat", act, None, a), key("ptq", act, None, a))
            for a in design.qat_activation_bits for act in ACTIVATIONS]
    out += [(f"QAT - PTQ, integer ReLU6 w{w}/a{a} per channel{ties}",
             key("qat", "relu6", w, a, "per_channel"), key("ptq", "relu6", w, a, "per_channel"))
            for ties in ("", ", ties split") for w, a in design.pairs]
    out += [(f"per channel - per tensor, PTQ w{w}/a{a}", key("ptq", "relu6", w, a, "per_channel"),
             key("ptq", "relu6", w, a, "per_tensor")) for w, a in design.per_tensor_ptq]
    out += [(f"per channel - per tensor, QAT w{w}/a{a}", key("qat", "relu6", w, a, "per_channel"),
             key("qat", "relu6", w, a, "per_tensor")) for w, a in design.per_tensor_qat]
    keys = design.keys()
    return [(what, a, b) for what, a, b in out if a in keys and b in keys]


def differences(results: study.Results, design: Design) -> list[dict[str, Any]]:
    """Every paired difference (percentage points) with its interval, n and the smallest
    difference detectable at 80% power given its spread, never below one test image."""
    out = []
    for what, a, b in comparisons(design):
        field = "split_accuracy" if what.endswith("ties split") else "test_accuracy"
        d = study.paired_difference(results.values(a, field), results.values(b, field))
        out.append({"what": what, "mean": 100 * d.mean, "half_width": 100 * d.half_width,
                    "n": d.n, "detectable": 100 * max(study.detectable_difference(d.sd, d.n),
                                                      study.resolution())})
    return out


def difference_table(rows: list[dict[str, Any]]) -> str:
    def fmt(x: float) -> str:
        return "–" if x != x else f"{x:+.2f}"

    return study.markdown_table(
        ["paired difference (points)", "mean", "95% interval", "n", "detectable (80% power)"],
        [[r["what"], fmt(r["mean"]),
          "–" if r["n"] < 2 else f"[{r['mean'] - r['half_width']:+.2f}, "
          f"{r['mean'] + r['half_width']:+.2f}]", r["n"],
          "–" if r["detectable"] != r["detectable"] else f"{r['detectable']:.2f}"]
         for r in rows])


def describe(design: Design, seeds: int) -> str:
    steps = "the recipe's 550" if design.float_steps is None else str(design.float_steps)
    return (f"{'`--quick`: ' if design.quick else ''}{design.model} x{design.width:g} on "
            f"digits, the example's default recipe ({steps} float steps per activation); "
            f"QAT fine-tunes {design.qat_steps} steps from the same seed's float run, peak "
            f"learning rate {design.qat_learning_rate:g} (warm-up 1/10, cosine to 0), batch "
            f"norm frozen at step {design.qat_steps // 2} in the integer model; PTQ ranges "
            f"calibrated on {design.calibration_batches} training batches; capped ReLU on "
            f"[0, {design.cap:g}]; {seeds} seeds (0..{seeds - 1}), paired.")


def report(results: study.Results, design: Design, meta: dict[str, Any],
           rows: list[dict[str, Any]]) -> str:
    """results.md: MyST markdown to paste into docs/precision_study.md."""
    failed = results.diverged()
    lines = [
        f"Configuration: {describe(design, meta['seeds'])}", "",
        f"Machine: {study.describe_machine(meta['machine'])}; this invocation: "
        f"{meta['seconds']:.0f} s wall, {meta['cpu_seconds']:.0f} s of CPU (command: "
        f"`{meta['command']}`).", "",
        arm_tables(results, design), "",
        "Paired differences (A - B over the seeds both finished; one test image is "
        f"{100 * study.resolution():.2f} points):", "", difference_table(rows), ""]
    if failed:
        lines += ["Diverged or skipped runs: " + "; ".join(
            f"{r['key']} seed {r['seed']}: {r['status']}"
            + (f" at step {r['step']}" if r.get("step") else "") for r in failed), ""]
    return "\n".join(lines)


def plot(results: study.Results, design: Design, path: str) -> bool:
    """Accuracy against activation bits: the activation-only arms, float at the right."""
    bits = sorted(design.activation_bits)
    float_x = max(bits) + 2
    series = []
    for arm in ARMS:
        for act in design.activations:
            xs, means, halves = [], [], []
            for x, k in [(a, key(arm, act, None, a)) for a in bits] + [
                    (float_x, key("float", act))]:
                interval = study.mean_interval(results.values(k, "test_accuracy").values())
                if interval.n:
                    xs.append(x)
                    means.append(100 * interval.mean)
                    halves.append(100 * interval.half_width)
            series.append(study.Series(  # One colour per activation; QAT dashed.
                f"{label(act, design)}, {ARMS[arm]}", xs, means, halves, dashed=arm == "qat",
                color=f"C{list(design.activations).index(act)}"))
    return study.plot_lines(
        path, series, xlabel="activation bits (weights float)", ylabel="test accuracy (%)",
        title=f"{design.model} x{design.width:g} on digits (mean, 95% interval)",
        xticks={**{b: str(b) for b in bits}, float_x: "float"},
        log=lambda s: print(s, file=sys.stderr))


# --- command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/precision_study.py",
        description="Train the default MobileNetV2 in float with ReLU6, ReLU and a capped "
                    "ReLU, quantize it after training (PTQ) and fine-tune it quantized "
                    "(QAT), paired by seed; writes results.md, results.json and "
                    "precision_study.png into --out (runs.jsonl: rerun to resume).")
    study.add_common_args(
        parser, out="runs/precision_study", seeds=Design.seeds,
        quick=f"a small grid for a 2-core CPU (about 10 minutes): activations at "
              f"{QUICK.activation_bits} bits, the integer model at "
              f"{', '.join(f'w{w}/a{a}' for w, a in QUICK.pairs)}, QAT {QUICK.qat_steps} "
              f"steps, {QUICK.seeds} seeds unless --seeds")
    parser.add_argument("--model", default=None, help="the example's model (default "
                        f"{Design.model}; tests use tiny)")
    parser.add_argument("--float-steps", type=int, default=None,
                        help="float training steps (default: the recipe's)")
    parser.add_argument("--qat-steps", type=int, default=None,
                        help=f"steps of each QAT fine-tune (default {Design.qat_steps})")
    parser.add_argument("--qat-learning-rate", type=float, default=None,
                        help=f"peak learning rate of the fine-tunes "
                             f"(default {Design.qat_learning_rate:g})")
    parser.add_argument("--cap", type=float, default=None,
                        help=f"the capped ReLU's bound (default {Design.cap:g})")
    return parser.parse_args(argv)


def design_from_args(args: argparse.Namespace) -> Design:
    base = QUICK if args.quick else Design()
    changes = {name: getattr(args, name) for name in
               ("model", "float_steps", "qat_steps", "qat_learning_rate", "cap", "seeds")
               if getattr(args, name) is not None}
    design = dataclasses.replace(base, **changes)
    if design.seeds < 1 or design.qat_steps < 2 or (design.float_steps or 1) < 1:
        raise SystemExit("precision_study: --seeds must be >= 1, --qat-steps >= 2 and "
                         "--float-steps >= 1")
    return design


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    design = design_from_args(args)
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        results = study.Results(args.out, design.configuration())
    except study.StudyError as error:
        log(f"error: {error}")
        return 2
    from mobilenet.infra import compile_cache

    compile_cache.enable(None)  # As the example's CLI: a resumed or repeated grid skips compiling.
    start = time.perf_counter()
    try:
        study.run_grid(design.cells(), Runner(design, args.out, results), results=results,
                       log=log)
    except study.GridStopped as error:
        log(f"precision_study: {error}")
        return 130
    command = "python examples/precision_study.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    used = os.times()
    meta = {"seconds": time.perf_counter() - start, "machine": study.machine(),
            "cpu_seconds": used.user + used.system,
            "seeds": design.seeds, "command": command.strip()}
    rows = differences(results, design)
    text = report(results, design, meta, rows)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    study.write_json(os.path.join(args.out, "results.json"), {
        "design": dataclasses.asdict(design), "meta": meta, "differences": rows,
        "runs": list(results.records.values())})
    if not args.no_plot:
        plot(results, design, os.path.join(args.out, "precision_study.png"))
    print(text)
    log(f"wrote {os.path.join(args.out, 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
