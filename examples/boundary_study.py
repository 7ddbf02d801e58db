"""Does the boundary derivative matter? relu6'(0) and relu6'(6) on MobileNets.

The derivative of relu6 at its kinks is a convention (0 in jax.nn, PyTorch and
TensorFlow). It can only matter where an input lands *exactly* on 0 or 6 (for
MobileNetV3's hard-swish and hard-sigmoid, on -3 or 3), which bfloat16's and
float16's coarse spacing makes far likelier than float32's. This study trains
the MobileNet example's default recipe (:func:`mobilenet.train.fit`, digits)
with MobileNetV2 and MobileNetV3-Small, computing in float32, bfloat16 and
float16 (with dynamic loss scaling), for every boundary setting
``(grad_at_zero, grad_at_six)`` and several seeds, and reports:

1. the kink hits per layer, counted at every training step
   (``config.count_kinks``) and summed over the run, as a fraction of that
   layer's relu6 inputs;
2. how far the gradients of each setting differ from ``(0, 0)``'s on the same
   parameters and batch (relative L2 norm, cosine), at initialisation, half way
   through the ``(0, 0)`` run and at its end;
3. the final test accuracy and loss, and their paired differences from
   ``(0, 0)`` (same seed: same initialisation, data order, augmentation and
   dropout) with 95% t-intervals; a null result reads "no effect larger than X
   points", X the interval's farther end from 0.

The grid runs on the shared harness :mod:`mobilenet.study`: one line per run in
``<out>/runs.jsonl`` as it finishes, a diverged run recorded as such while the
grid goes on, and a rerun of the same command resumes. It writes
``results.md`` (MyST markdown, pasteable into the docs), ``results.json`` and
``boundary_study.png`` into ``--out``.

    python examples/boundary_study.py --quick
    python examples/boundary_study.py --out runs/boundary
    python examples/boundary_study.py --arms mobilenet_v2:float16 --seeds 3 --steps 200

Each (model, dtype, setting) compiles its own training step once; the seeds of
a cell reuse it. The full grid's size and cost are in docs/boundary_study.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jrelu6
from mobilenet import input_pipeline, loss_scale, sharding, study, tracking, train, train_state
from mobilenet.configs import default, get_config
from mobilenet.infra import datasets

Setting = tuple[float, float]  # (grad_at_zero, grad_at_six)
Arm = tuple[str, str]  # (model, dtype)
REFERENCE: Setting = (0.0, 0.0)
PROBE_POINTS = {"init": "at initialisation", "mid": "half way through the reference run",
                "final": "at its end"}
SETTINGS: tuple[Setting, ...] = ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5), (1.0, 0.0), (0.0, 1.0))
MODELS = ("mobilenet_v2", "mobilenet_v3_small", "tiny")
SHORT = {"mobilenet_v2": "V2", "mobilenet_v3_small": "V3-Small", "tiny": "tiny"}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that defines the grid (its fingerprint guards ``runs.jsonl``).

    Attributes:
      arms: ``(model, dtype)`` pairs; each runs every setting and seed.
      settings: ``(grad_at_zero, grad_at_six)``; the first is the reference.
      seeds: Seeds ``0..seeds-1``.
      steps: Training steps per model (the default recipe trains 550).
      probe_batch: Training images in the fixed batch of the gradient probes.
      probes: Where the gradients are probed: ``"init"`` (the seed's initial
        parameters), ``"mid"`` (the reference run's after half its steps) and
        ``"final"`` (its last).
      quick: Whether this is the ``--quick`` grid (said in the report).
    """

    arms: tuple[Arm, ...] = (
        ("mobilenet_v2", "float32"), ("mobilenet_v2", "bfloat16"), ("mobilenet_v2", "float16"),
        ("mobilenet_v3_small", "float32"), ("mobilenet_v3_small", "bfloat16"),
        ("mobilenet_v3_small", "float16"))
    settings: tuple[Setting, ...] = SETTINGS
    seeds: int = 5
    steps: tuple[tuple[str, int], ...] = (("mobilenet_v2", 200), ("mobilenet_v3_small", 200),
                                          ("tiny", 20))
    probe_batch: int = 256
    probes: tuple[str, ...] = ("init", "mid", "final")
    quick: bool = False

    def steps_of(self, model: str) -> int:
        return dict(self.steps)[model]


QUICK = StudyConfig(
    arms=(("mobilenet_v2", "float32"), ("mobilenet_v3_small", "float16")),
    settings=((0.0, 0.0), (1.0, 1.0)), seeds=2,
    steps=(("mobilenet_v2", 100), ("mobilenet_v3_small", 100), ("tiny", 20)), quick=True)


def run_config(model: str, dtype: str, setting: Setting, seed: int, steps: int
               ) -> default.Config:
    """The example's default recipe for one run: ``model`` in ``dtype``, kinks counted.

    Only the model, dtype, boundary setting, seed and length change; metrics are
    fetched once and nothing is written.
    """
    return get_config(model=model, dtype=dtype, grad_at_zero=float(setting[0]),
                      grad_at_six=float(setting[1]), seed=seed, steps=steps, count_kinks=True,
                      log_every=steps, eval_every=0, checkpoint_every=0, progress=False,
                      plot=False)


# --- measurements -----------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def gradients(model: nn.Module, variables: Any, images: jax.Array, labels: jax.Array,
              scale: jax.Array) -> tuple[Any, Any]:
    """The loss gradient on a batch, and the kink hits of the forward pass it used.

    Train mode, as a training step (batch statistics; dropout with a fixed key,
    the same for every setting). Plain cross-entropy in float32, multiplied by
    ``scale`` before differentiation and the gradient divided by it (float16
    needs the loss scale; 1 elsewhere).
    """
    def loss(params: Any) -> tuple[jax.Array, Any]:
        logits, recorded = model.apply(
            {**variables, "params": params}, images, train=True,
            mutable=["batch_stats", tracking.KINKS], rngs={"dropout": jax.random.key(0)})
        value = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels))
        return value * scale, recorded[tracking.KINKS]

    grads, hits = jax.grad(loss, has_aux=True)(variables["params"])
    return jax.tree.map(lambda g: g / scale, grads), hits


def gradient_difference(a: Any, b: Any) -> dict[str, float]:
    """How far two gradients (pytrees of the same structure) differ.

    Returns:
      ``rel_l2``: ``|a - b| / |a|`` (0 when both are 0); ``frac_differ``: the
      fraction of entries that are not bit-for-bit equal; ``cosine``: the
      cosine similarity (1 when both are equal).
    """
    fa = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(a)])
    fb = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(b)])
    if fa.shape != fb.shape:
        raise ValueError(f"gradient_difference: sizes differ, {fa.size} vs {fb.size}.")
    na, nb, nd = np.linalg.norm(fa), np.linalg.norm(fb), np.linalg.norm(fa - fb)
    rel = 0.0 if nd == 0 else (nd / na if na else float("inf"))
    if nd == 0:
        cos = 1.0  # Equal (the dot product could round to 1 - 1e-16).
    else:
        cos = float(fa @ fb / (na * nb)) if na and nb else 0.0
    return {"rel_l2": float(rel), "frac_differ": float(np.mean(fa != fb)), "cosine": cos}


def _probe_batch(dataset: datasets.Dataset, size: int, dtype: str
                 ) -> tuple[jax.Array, jax.Array]:
    images = input_pipeline.normalize(jnp.asarray(dataset.train_images[:size]),
                                      mean=dataset.mean, std=dataset.std,
                                      dtype=train_state.DTYPES[dtype])
    return images, jnp.asarray(dataset.train_labels[:size])


def probe(cfg: StudyConfig, model: str, dtype: str, seed: int, variables: Mapping[str, Any]
          ) -> list[dict[str, Any]]:
    """Each setting's gradient against the reference's, on ``variables`` and the probe batch.

    The first row compares the reference with itself, recomputed: the control
    (0 unless the computation is not deterministic).
    """
    dataset = datasets.load_digits()
    images, labels = _probe_batch(dataset, cfg.probe_batch, dtype)
    steps = cfg.steps_of(model)

    def grads_of(setting: Setting, scale: float) -> tuple[Any, Any]:
        config = run_config(model, dtype, setting, seed, steps)
        net = train_state.create_model(config, num_classes=dataset.num_classes)
        return jax.device_get(gradients(net, dict(variables), images, labels,
                                        jnp.asarray(scale, jnp.float32)))

    start = loss_scale.INITIAL_SCALE if dtype == "float16" else 1.0
    scale, (reference, hits) = finite_scale(lambda s: grads_of(REFERENCE, s), start)
    rows = jrelu6.summarize_boundary_hits(hits)
    found = {"probe_at_zero": sum(r.at_zero for r in rows),
             "probe_at_cap": sum(r.at_cap for r in rows), "probe_n": sum(r.n for r in rows)}
    return [{"setting": list(setting), **found,
             **gradient_difference(reference, grads_of(setting, scale)[0])}
            for setting in cfg.settings]


def finite_scale(grads_at: Callable[[float], tuple[Any, Any]], start: float
                 ) -> tuple[float, tuple[Any, Any]]:
    """The largest loss scale ``start / 2**k`` (down to 1) whose gradients are all finite,
    and ``grads_at(scale)``: the loss scaler's rule after an overflow, for the probes (a
    float16 network at initialisation overflows at the training step's first scale).

    >>> import numpy as np
    >>> finite_scale(lambda s: (np.array([np.inf if s > 8 else s]), None), 64.0)[0]
    8.0
    """
    scale = float(start)
    result = grads_at(scale)
    while scale > 1.0 and not bool(loss_scale.all_finite(result[0])):
        scale /= 2.0
        result = grads_at(scale)
    return scale, result


def _initial_variables(config: default.Config) -> dict[str, Any]:
    """The variables a run of ``config`` starts from (the loop's own initialization)."""
    run = train.prepare(config)
    state = train_state.create_train_state(config, run.model,
                                           image_shape=run.dataset.image_shape,
                                           mesh=sharding.create_mesh(), total_steps=run.steps)
    return _variables(state)


def _variables(state: train_state.TrainState) -> dict[str, Any]:
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def run_one(cfg: StudyConfig, cell: study.Cell) -> dict[str, Any]:
    """One training run of the grid; the reference setting's also probes the gradients."""
    key = cell.key
    setting = (key["g0"], key["g6"])
    config = run_config(key["model"], key["dtype"], setting, cell.seed, cfg.steps_of(key["model"]))
    reference = setting == tuple(cfg.settings[0])
    half: dict[str, Any] = {}

    def keep_half(done: int, state: train_state.TrainState) -> None:
        if done == config.steps // 2:
            half["mid"] = _variables(state)

    state, summary = train.fit(config, None, on_step=keep_half if reference else None)
    record = {name: summary[name] for name in ("test_accuracy", "test_loss", "train_loss")}
    record["kinks"] = [{k: row[k] for k in ("layer", "n", "at_zero", "at_cap")}
                       for row in summary["boundary_hits"]]
    record["skipped_steps"] = summary.get("skipped_steps", 0)
    if reference:
        points = {"init": _initial_variables(config), **half, "final": _variables(state)}
        record["gradients"] = {when: probe(cfg, key["model"], key["dtype"], cell.seed,
                                           points[when]) for when in cfg.probes}
    return record


def cells(cfg: StudyConfig) -> list[study.Cell]:
    """The grid, seed-major; the reference setting first within a seed."""
    keys = [{"model": model, "dtype": dtype, "g0": float(s[0]), "g6": float(s[1])}
            for model, dtype in cfg.arms for s in cfg.settings]
    return study.grid(keys, range(cfg.seeds))


def run_study(cfg: StudyConfig, out: str, *, log: Callable[[str], None] = print
              ) -> study.Results:
    """Runs (or resumes) the grid in ``out``, an arm at a time; returns its results.

    Each arm's compiled programs are dropped before the next arm compiles its own: a
    process that kept all six arms' (about 200 programs) ran out of memory maps on a
    Linux machine with the default ``vm.max_map_count`` (65,530), XLA:CPU's JIT
    holding several per program.
    """
    results = study.Results(out, dataclasses.asdict(cfg))
    for arm in cfg.arms:
        study.run_grid(cells(dataclasses.replace(cfg, arms=(arm,))),
                       functools.partial(run_one, cfg), results=results, log=log)
        jax.clear_caches()
    return results


def config_from_json(payload: Mapping[str, Any]) -> StudyConfig:
    """The :class:`StudyConfig` a ``results.json`` was written from (JSON has no tuples)."""
    return StudyConfig(
        arms=tuple((m, d) for m, d in payload["arms"]),
        settings=tuple((float(a), float(b)) for a, b in payload["settings"]),
        seeds=int(payload["seeds"]), steps=tuple((m, int(n)) for m, n in payload["steps"]),
        probe_batch=int(payload["probe_batch"]), quick=bool(payload["quick"]),
        probes=tuple(payload["probes"]))


def combine(parts: Sequence[str], out: str) -> tuple[StudyConfig, study.Results]:
    """One grid from grids run apart, one arm (or several) per directory.

    Each of ``parts`` is the ``--out`` of a finished or partial run of this study;
    they must agree on everything but their arms (settings, seeds, steps, probe
    batch). Their runs are copied into ``out``'s ``runs.jsonl`` as runs of the
    grid with all their arms, so rerunning that grid with ``--out out`` resumes
    it, and the report compares the arms side by side.

    Raises:
      study.StudyError: a directory without ``results.json``, grids that differ in
        more than their arms, or one arm in two directories.
    """
    configs = []
    for part in parts:
        path = os.path.join(part, "results.json")
        try:
            with open(path) as f:
                configs.append(config_from_json(json.load(f)["config"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise study.StudyError(f"boundary_study: --combine needs {path}, the report of a "
                                   f"run of this study ({error})") from None
    first = dataclasses.replace(configs[0], arms=())
    for part, cfg in zip(parts, configs):
        if dataclasses.replace(cfg, arms=()) != first:
            raise study.StudyError(f"boundary_study: {part} is a grid with other settings, "
                                   f"seeds, steps or probe batch than {parts[0]}")
    arms = [arm for cfg in configs for arm in cfg.arms]
    if len(set(arms)) != len(arms):
        raise study.StudyError("boundary_study: an arm is in more than one --combine directory")
    merged = dataclasses.replace(first, arms=tuple(arms))
    results = study.Results(out, dataclasses.asdict(merged))
    for part, cfg in zip(parts, configs):
        for record in study.Results(part, dataclasses.asdict(cfg)).records.values():
            cell = study.Cell(record["key"], record["seed"])
            if not results.done(cell):
                results.add(cell, {k: v for k, v in record.items()
                                   if k not in ("grid", "key", "seed")})
    return merged, results


# --- report -------------------------------------------------------------------


def _key(model: str, dtype: str, setting: Sequence[float]) -> dict[str, Any]:
    return {"model": model, "dtype": dtype, "g0": float(setting[0]), "g6": float(setting[1])}


def _fmt_setting(s: Sequence[float]) -> str:
    return f"({s[0]:g}, {s[1]:g})"


def _records(results: study.Results, model: str, dtype: str, setting: Sequence[float]
             ) -> list[dict[str, Any]]:
    want = _key(model, dtype, setting)
    return sorted((r for r in results.records.values() if r["key"] == want and
                   r.get("status") == "ok"), key=lambda r: r["seed"])


def bound(interval: study.Interval) -> float:
    """The largest effect the interval leaves possible: its farther end from 0."""
    return max(abs(interval.low), abs(interval.high))


def outcome_rows(results: study.Results, cfg: StudyConfig) -> list[dict[str, Any]]:
    """Per arm and setting: accuracy and loss, and their paired differences from the reference."""
    rows = []
    for model, dtype in cfg.arms:
        ref = _key(model, dtype, cfg.settings[0])
        for setting in cfg.settings:
            key = _key(model, dtype, setting)
            acc, loss = (results.values(key, f) for f in ("test_accuracy", "test_loss"))
            diverged = sum(r["key"] == key and r.get("status") == "diverged"
                           for r in results.records.values())
            rows.append({
                "model": model, "dtype": dtype, "setting": list(setting),
                "accuracy": study.mean_interval(acc.values()),
                "loss": study.mean_interval(loss.values()),
                "d_accuracy": study.paired_difference(acc, results.values(ref, "test_accuracy")),
                "d_loss": study.paired_difference(loss, results.values(ref, "test_loss")),
                "diverged": diverged, "skipped": sum(r.get("skipped_steps", 0) for r in
                                                     _records(results, model, dtype, setting))})
    return rows


def _verdict(d: study.Interval) -> str:
    if d.n < 2 or not math.isfinite(d.half_width):
        return "too few seeds"
    if d.low > 0 or d.high < 0:
        return f"effect: {100 * d.mean:+.2f} points (95% interval excludes 0)"
    return f"no effect larger than {100 * bound(d):.2f} points"


def outcome_table(rows: Sequence[dict[str, Any]], cfg: StudyConfig) -> str:
    ref = _fmt_setting(cfg.settings[0])
    header = ["model", "dtype", "(g0, g6)", "test accuracy (%)", f"Δ vs {ref} (points)",
              "test loss", f"Δ loss vs {ref}", "diverged", "skipped steps", "conclusion"]
    body = []
    for r in rows:
        first = tuple(r["setting"]) == tuple(cfg.settings[0])
        body.append([SHORT[r["model"]], r["dtype"], _fmt_setting(r["setting"]),
                     r["accuracy"].format(100, 2),
                     "–" if first else r["d_accuracy"].format(100, 2),
                     r["loss"].format(1, 4), "–" if first else r["d_loss"].format(1, 4),
                     r["diverged"], r["skipped"], "reference" if first else
                     _verdict(r["d_accuracy"])])
    return study.markdown_table(header, body, numeric_from=3)


def kink_fractions(results: study.Results, cfg: StudyConfig, model: str, dtype: str
                   ) -> dict[str, tuple[float, float]]:
    """Per layer: the fraction of relu6 inputs exactly on each kink, over every step and run.

    Summed over the seeds and settings of the arm (the settings only change what
    training does after a hit).
    """
    totals: dict[str, list[int]] = {}
    for setting in cfg.settings:
        for record in _records(results, model, dtype, setting):
            for row in record["kinks"]:
                t = totals.setdefault(row["layer"], [0, 0, 0])
                t[0] += row["n"]
                t[1] += row["at_zero"]
                t[2] += row["at_cap"]
    return {layer: (z / n if n else 0.0, c / n if n else 0.0)
            for layer, (n, z, c) in totals.items()}


def _fraction(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def kinks_table(results: study.Results, cfg: StudyConfig, model: str) -> str:
    """One model's per-layer kink fractions, one column per dtype."""
    dtypes = [d for m, d in cfg.arms if m == model]
    fractions = {d: kink_fractions(results, cfg, model, d) for d in dtypes}
    layers = list(dict.fromkeys(name for d in dtypes for name in fractions[d]))
    body = [[name] + [" / ".join(map(_fraction, fractions[d][name])) if name in fractions[d]
                      else "–" for d in dtypes] for name in layers]
    overall = []
    for d in dtypes:
        n = z = c = 0
        for setting in cfg.settings:
            for record in _records(results, model, d, setting):
                n += sum(r["n"] for r in record["kinks"])
                z += sum(r["at_zero"] for r in record["kinks"])
                c += sum(r["at_cap"] for r in record["kinks"])
        overall.append(f"**{_fraction(z / max(n, 1))} / {_fraction(c / max(n, 1))}**")
    body.append(["**all layers**", *overall])
    return study.markdown_table(["layer"] + [f"{d}: on 0 / on 6" for d in dtypes], body)


def gradient_rows(results: study.Results, cfg: StudyConfig) -> list[dict[str, Any]]:
    """Per arm, checkpoint and setting: the gradient difference from the reference, over seeds."""
    rows = []
    for model, dtype in cfg.arms:
        probes = [r["gradients"] for r in _records(results, model, dtype, cfg.settings[0])
                  if "gradients" in r]
        for when in cfg.probes:
            for k, setting in enumerate(cfg.settings):
                found = [p[when][k] for p in probes]
                if not found:
                    continue
                rows.append({"model": model, "dtype": dtype, "when": when,
                             "setting": list(setting), "seeds": len(found),
                             "probe_hits": sum(f["probe_at_zero"] + f["probe_at_cap"]
                                               for f in found) / len(found),
                             "probe_n": found[0]["probe_n"],
                             "rel_l2": float(np.mean([f["rel_l2"] for f in found])),
                             "rel_l2_max": max(f["rel_l2"] for f in found),
                             "cosine_min": min(f["cosine"] for f in found)})
    return rows


def gradients_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["model", "dtype", "parameters", "(g0, g6)", "kink hits in the probe (mean)",
              "relative L2 diff (mean)", "(max)", "cosine (min)"]
    body = [[SHORT[r["model"]], r["dtype"], r["when"], _fmt_setting(r["setting"]),
             f"{r['probe_hits']:.1f} of {r['probe_n']:,}", f"{r['rel_l2']:.2e}",
             f"{r['rel_l2_max']:.2e}", f"{r['cosine_min']:.6f}"] for r in rows]
    return study.markdown_table(header, body, numeric_from=4)


def describe(cfg: StudyConfig) -> str:
    steps = ", ".join(f"{SHORT[m]} {n}" for m, n in cfg.steps if any(m == a for a, _ in cfg.arms))
    arms = ", ".join(f"{SHORT[m]} {d}" for m, d in cfg.arms)
    return (f"{'`--quick`: ' if cfg.quick else ''}the example's default recipe on digits "
            f"(width 0.5, SGD with Nesterov momentum, warm-up + cosine, shifts of up to 2 "
            f"pixels; parameters float32, float16 with dynamic loss scaling); steps per run: "
            f"{steps}; arms (model, compute dtype): {arms}; settings (g0, g6): "
            f"{', '.join(_fmt_setting(s) for s in cfg.settings)}; seeds 0..{cfg.seeds - 1}, "
            f"paired (a seed fixes the initialisation, data order, augmentation and dropout); "
            f"gradient probes on the first {cfg.probe_batch} training images "
            f"({', '.join(PROBE_POINTS[p] for p in cfg.probes)}).")


def format_results(results: study.Results, cfg: StudyConfig, meta: Mapping[str, Any]) -> str:
    """results.md: the configuration, machine and cost, then the three tables."""
    ref = _fmt_setting(cfg.settings[0])
    lines = ["## Results", "", describe(cfg), "",
             f"Machine: {study.describe_machine(meta['machine'])}. Training runs: "
             f"{meta['runs']} ({meta['diverged']} diverged), {meta['run_seconds'] / 60:.1f} "
             f"min in all (each run's wall time, summed over every invocation that "
             f"resumed the grid); {_invocation(meta)}.", "",
             "![Paired accuracy differences, kink hits per layer, gradient differences]"
             "(boundary_study.png)", "",
             f"### Final test accuracy and loss, paired differences from {ref}", "",
             f"Mean ± half width of the 95% t-interval over seeds; Δ is the paired "
             f"difference (same seed) from {ref}. One test image is "
             f"{100 * study.resolution():.2f} points. *No effect larger than X* means the "
             "interval lies within ±X.", "", outcome_table(outcome_rows(results, cfg), cfg), ""]
    for model in dict.fromkeys(m for m, _ in cfg.arms):
        lines += [f"### Kink hits per layer, {SHORT[model]}", "",
                  "Fraction of each layer's relu6 inputs exactly on 0 / on 6 (hard-swish and "
                  "hard-sigmoid layers: on -3 / on 3), counted at every training step and "
                  "summed over all steps, seeds and settings.", "",
                  kinks_table(results, cfg, model), ""]
    lines += [f"### Gradient differences from {ref}", "",
              f"Same parameters (the seed's initialisation, or its {ref} run's half way "
              f"or end) and "
              f"batch; the {ref} row recomputes the reference (the control). Without a "
              "kink hit in the probe's forward pass the settings compute the same "
              "function, so a difference there comes from the compiled programs.", "",
              gradients_table(gradient_rows(results, cfg)), ""]
    return "\n".join(lines)


def _invocation(meta: Mapping[str, Any]) -> str:
    if meta.get("combined"):
        return (f"combined from {len(meta['combined'])} directories run apart "
                f"({', '.join(f'`{d}`' for d in meta['combined'])}), with `--combine`")
    return f"this invocation: {meta['seconds'] / 60:.1f} min"


def _color(cfg: StudyConfig, setting: Sequence[float]) -> str:
    """One colour per setting, the same in every panel."""
    return f"C{[tuple(s) for s in cfg.settings].index(tuple(setting))}"


def plot_results(results: study.Results, cfg: StudyConfig, path: str) -> bool:
    """Paired accuracy differences, kink fractions per layer, gradient differences: one PNG."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4))
    _plot_differences(axes[0], outcome_rows(results, cfg), cfg)
    _plot_kinks(axes[1], results, cfg)
    _plot_gradients(axes[2], gradient_rows(results, cfg), cfg)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_differences(ax: Any, rows: Sequence[dict[str, Any]], cfg: StudyConfig) -> None:
    others = cfg.settings[1:]
    width = 0.8 / max(len(others), 1)
    for k, setting in enumerate(others):
        found = [r for r in rows if tuple(r["setting"]) == tuple(setting)]
        d = [r["d_accuracy"] for r in found]
        ax.errorbar(np.arange(len(found)) + k * width, [100 * i.mean for i in d],
                    yerr=[100 * i.half_width if math.isfinite(i.half_width) else 0 for i in d],
                    fmt="o", capsize=3, color=_color(cfg, setting), label=_fmt_setting(setting))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(cfg.arms)) + width * (len(others) - 1) / 2,
                  [f"{SHORT[m]}\n{d}" for m, d in cfg.arms], fontsize=7)
    ax.set_ylabel(f"test accuracy minus {_fmt_setting(cfg.settings[0])}'s (points)")
    ax.set_title("paired difference, 95% interval")
    ax.legend(title="(g0, g6)", fontsize=7)


def _plot_kinks(ax: Any, results: study.Results, cfg: StudyConfig) -> None:
    styles = {"float32": ":", "bfloat16": "-", "float16": "--"}
    for model, dtype in cfg.arms:  # Arms by line style and marker, not the settings' colours.
        fractions = kink_fractions(results, cfg, model, dtype)
        ax.plot(range(len(fractions)), [max(z + c, 1e-9) for z, c in fractions.values()],
                color="0.25" if model == "mobilenet_v2" else "C9", ls=styles.get(dtype, "-"),
                marker="." if model == "mobilenet_v2" else "x", ms=4,
                label=f"{SHORT[model]} {dtype}")
    ax.set_yscale("log")
    ax.set_xlabel("relu6-family layer (in the tables' order)")
    ax.set_ylabel("fraction of inputs on a kink, all steps (1e-9: none)")
    ax.set_title("kink hits per layer during training")
    ax.legend(fontsize=7)


def _plot_gradients(ax: Any, rows: Sequence[dict[str, Any]], cfg: StudyConfig) -> None:
    groups = list(dict.fromkeys((r["model"], r["dtype"], r["when"]) for r in rows))
    for k, setting in enumerate(cfg.settings[1:]):
        ys = [next((r["rel_l2"] for r in rows if (r["model"], r["dtype"], r["when"]) == g
                    and tuple(r["setting"]) == tuple(setting)), 0.0) for g in groups]
        ax.scatter(np.arange(len(groups)) + 0.12 * k, [max(y, 1e-12) for y in ys],
                   color=_color(cfg, setting), label=_fmt_setting(setting))
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(groups)),
                  [f"{SHORT[m]} {d} {w}" for m, d, w in groups], fontsize=6, rotation=90)
    ax.set_ylabel("|g - g_ref| / |g_ref|, mean over seeds (1e-12: equal)")
    ax.set_title("gradient difference, same parameters and batch")
    ax.legend(fontsize=7)


# --- command line -----------------------------------------------------------


def _setting(text: str) -> Setting:
    try:
        g0, g6 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a setting is 'grad_at_zero,grad_at_six', e.g. 1,1; got {text!r}") from None
    return g0, g6


def _arm(text: str) -> Arm:
    model, _, dtype = text.partition(":")
    if model not in MODELS or dtype not in default.DTYPES:
        raise argparse.ArgumentTypeError(
            f"an arm is MODEL:DTYPE with MODEL in {', '.join(MODELS)} and DTYPE in "
            f"{', '.join(default.DTYPES)}; got {text!r}")
    return model, dtype


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    full = StudyConfig()
    parser = argparse.ArgumentParser(description=(
        "Train the MobileNet example with several relu6 boundary derivatives (grad_at_zero, "
        "grad_at_six) in several compute dtypes; report kink hits per layer during "
        "training, gradient differences and paired accuracy differences. Resumable: "
        "rerun the same command."))
    study.add_common_args(parser, out="runs/boundary_study", seeds=full.seeds, quick=(
        f"the small grid (at most 10 minutes on a 2-core CPU): "
        f"{', '.join(f'{m}:{d}' for m, d in QUICK.arms)}, settings "
        f"{' '.join(f'{a:g},{b:g}' for a, b in QUICK.settings)}, {QUICK.seeds} seeds, "
        f"{QUICK.steps_of('mobilenet_v2')} steps"))
    parser.add_argument("--arms", type=_arm, nargs="+", default=None, metavar="MODEL:DTYPE",
                        help="(model, compute dtype) pairs (default "
                             f"{' '.join(f'{m}:{d}' for m, d in full.arms)})")
    parser.add_argument("--settings", type=_setting, nargs="+", default=None, metavar="G0,G6",
                        help="boundary settings grad_at_zero,grad_at_six; the first is the "
                             "reference (default "
                             f"{' '.join(f'{a:g},{b:g}' for a, b in full.settings)})")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of every model (default: "
                             f"{', '.join(f'{m} {n}' for m, n in full.steps)})")
    parser.add_argument("--probe-batch", type=int, default=None,
                        help=f"images in the gradient probes' batch (default {full.probe_batch})")
    parser.add_argument("--combine", nargs="+", default=None, metavar="DIR",
                        help="train nothing: report the grids in these directories (each "
                             "the --out of a run of this study with other arms) as one, "
                             "in --out")
    args = parser.parse_args(argv)
    grid_flags = ("quick", "arms", "settings", "seeds", "steps", "probe_batch")
    if args.combine and any(getattr(args, name) not in (None, False) for name in grid_flags):
        parser.error("--combine takes the grid from its directories: drop --quick, --arms, "
                     "--settings, --seeds, --steps and --probe-batch")
    return args


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    cfg = QUICK if args.quick else StudyConfig()
    changes: dict[str, Any] = {}
    if args.arms:
        changes["arms"] = tuple(args.arms)
    if args.settings:
        changes["settings"] = tuple(args.settings)
    if args.seeds is not None:
        changes["seeds"] = args.seeds
    if args.steps is not None:
        changes["steps"] = tuple((m, args.steps) for m, _ in cfg.steps)
    if args.probe_batch is not None:
        changes["probe_batch"] = args.probe_batch
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.seeds < 1 or min(n for _, n in cfg.steps) < 2 or cfg.probe_batch < 1:
        raise SystemExit("boundary_study: --seeds and --probe-batch must be >= 1, "
                         "--steps >= 2 (the gradients are probed half way)")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    start = time.perf_counter()
    log = functools.partial(print, file=sys.stderr, flush=True)
    try:
        if args.combine:
            cfg, results = combine(args.combine, args.out)
        else:
            results = run_study(cfg, args.out, log=log)
    except study.GridStopped as error:
        log(f"boundary_study: {error}")
        return 130
    except study.StudyError as error:
        log(str(error))
        return 2
    meta = {"seconds": time.perf_counter() - start, "machine": study.machine(),
            "combined": list(args.combine or ()),
            "runs": len(results.records), "diverged": len(results.diverged()),
            "run_seconds": sum(r.get("seconds", 0.0) for r in results.records.values())}
    report = format_results(results, cfg, meta)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    study.write_json(os.path.join(args.out, "results.json"),
                     {"config": dataclasses.asdict(cfg), "meta": meta,
                      "runs": list(results.records.values())})
    if not args.no_plot:
        plot_results(results, cfg, os.path.join(args.out, "boundary_study.png"))
    print(report)
    log(f"Wrote {os.path.join(args.out, 'results.md')}")
    return 0


if __name__ == "__main__":
    from mobilenet.infra import compile_cache

    compile_cache.enable()  # A resumed or repeated grid loads its compiled programs.
    sys.exit(main())
