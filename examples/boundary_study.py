"""Does the boundary derivative matter? relu6'(0) and relu6'(6) on real training runs.

The derivative of relu6 at its kinks is a convention (0 in jax.nn, PyTorch and
TensorFlow). It can only matter where an input lands *exactly* on 0 or 6,
which bfloat16's coarse spacing (1/32 near 6) makes far likelier than
float32's. This script measures, on the bundled digits data (scikit-learn,
nothing downloaded), with the MobileNet example's own configuration and
training loop (:func:`mobilenet.train.fit`: its data pipeline without
augmentation, its optimizers and warm-up + cosine schedule):

1. test accuracy, mean +/- std over seeds, for each boundary setting
   ``(grad_at_zero, grad_at_six)`` x compute dtype x batch-norm on/off x
   optimizer (SGD with momentum, AdamW); and for how many seeds a setting's
   final parameters are bit-for-bit those of the ``(0, 0)`` run;
2. the fraction of relu6 inputs exactly on 0 and on 6, per precision and per
   layer, on a fixed batch, at initialisation and after training (with
   :func:`jrelu6.summarize_boundary_hits`);
3. how far the gradients of two settings differ on the same batch and
   parameters: relative L2 norm of the difference, fraction of parameter
   entries that differ, cosine similarity.

It writes ``results.md`` (the tables, with the configuration used),
``results.json`` and ``boundary_study.png`` into ``--out``, and prints the
tables. ``--quick`` is a small configuration that runs in minutes on a 2-core
CPU; the table says what was run.

    python examples/boundary_study.py --quick
    python examples/boundary_study.py --out runs/boundary --seeds 5
    python examples/boundary_study.py --settings 0,0 1,1 0,1 --dtypes float32 float16

Runs with the same seed share their initialization and their data order
(the loop draws both from the seed alone); each (optimizer, batch-norm,
dtype, setting) cell compiles its own training step.

Cost: ``--quick`` trains 48 runs of 300 steps of a small conv net, a few
minutes on a 2-core CPU. The default (full) grid trains 72 runs of
a MobileNetV2 (width 0.25) from examples/mobilenet; at roughly 0.5-0.8 s per
step on that CPU it takes hours there: run it on a GPU, or narrow it with
``--optimizers``, ``--dtypes``, ``--batch-norm`` and ``--seeds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jrelu6
import jrelu6.linen
from mobilenet import input_pipeline, models, sharding, train, train_state
from mobilenet.configs import default, get_config

Setting = tuple[float, float]  # (grad_at_zero, grad_at_six)
BOUNDARY = "relu6_boundary"  # TinyConvNet's state entry holding (grad_at_zero, grad_at_six).

DTYPES = default.DTYPES
OPTIMIZERS = default.OPTIMIZERS
EXAMPLE_MODELS = default.MODELS


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study run (written into results.md)."""

    model: str = "mobilenet_v2"
    width: float = 0.25
    steps: int = 400
    batch_size: int = 64
    seeds: int = 3
    settings: tuple[Setting, ...] = ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5))
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    batch_norm: tuple[bool, ...] = (True, False)
    optimizers: tuple[str, ...] = OPTIMIZERS
    sgd_lr: float = 0.1
    adamw_lr: float = 3e-3
    weight_decay: float = 5e-4
    probe_batch: int = 256
    quick: bool = False


QUICK = dict(model="convnet", steps=300, seeds=2, batch_size=64)


# --- models -----------------------------------------------------------------


class TinyConvNet(nn.Module):
    """Three 3x3 stride-2 convolutions with relu6, global pooling, a classifier.

    The study's small model for ``--quick`` and the tests: plain convolutions
    (milliseconds per step on a 2-core CPU, where even the example's ``tiny``
    MobileNet takes far longer), each followed by batch-norm (optional, in
    float32 as the example's models do) and :class:`jrelu6.linen.ReLU6`.
    Compute in ``dtype``, parameters in float32. The boundary setting is
    initialized from ``grad_at_zero`` and ``grad_at_six`` into the
    ``"batch_stats"`` entry :data:`BOUNDARY` and read from there.
    """

    num_classes: int = 10
    features: tuple[int, ...] = (16, 32, 64)
    batch_norm: bool = True
    dtype: Any = jnp.float32
    grad_at_zero: float = 0.0
    grad_at_six: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        # The setting rides in the state the loop carries (the "batch_stats"
        # collection), not in the compiled program: with a constant, XLA simplifies
        # around it (a product by 1.0 changes fusions and the rounding of the whole
        # gradient), so settings would differ away from the kinks too. As a runtime
        # value, every setting runs one program and can differ only at the kinks.
        g0, g6 = self.variable("batch_stats", BOUNDARY, lambda: jnp.asarray(
            [self.grad_at_zero, self.grad_at_six], jnp.float32)).value
        x = x.astype(self.dtype)
        for features in self.features:
            x = nn.Conv(features, (3, 3), strides=2, use_bias=not self.batch_norm,
                        dtype=self.dtype)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 dtype=jnp.float32)(x.astype(jnp.float32)).astype(self.dtype)
            x = jrelu6.linen.ReLU6(grad_at_zero=g0, grad_at_six=g6)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def convnet(config: default.Config, *, num_classes: int) -> nn.Module:
    """The study's :class:`TinyConvNet` with ``config``'s batch-norm, dtype and boundary setting."""
    return TinyConvNet(num_classes=num_classes, batch_norm=config.batch_norm,
                       dtype=train_state.DTYPES[config.dtype],
                       grad_at_zero=config.grad_at_zero, grad_at_six=config.grad_at_six)


def example_mobilenet(config: default.Config, *, num_classes: int) -> nn.Module:
    """``config``'s MobileNet from examples/mobilenet, small-input variant, without dropout.

    No dropout: a run is then a function of its seed and setting alone.
    """
    return models.create_model(
        config.model, num_classes=num_classes, width_multiplier=config.width,
        small_input=True, dtype=train_state.DTYPES[config.dtype],
        grad_at_zero=config.grad_at_zero, grad_at_six=config.grad_at_six,
        batch_norm=config.batch_norm, dropout_rate=0.0)


def run_config(cfg: StudyConfig, *, optimizer: str, batch_norm: bool, dtype: str,
               setting: Setting, seed: int) -> default.Config:
    """The example's configuration of one run of the study.

    Digits without augmentation or label smoothing; the example's optimizer and
    schedule with the study's learning rates and weight decay; metrics fetched
    once, nothing written. With the convnet, ``model`` names the example's
    ``tiny`` but :func:`convnet` builds the network.
    """
    return get_config(
        model="tiny" if cfg.model == "convnet" else cfg.model, width=cfg.width,
        small_input=True, batch_norm=batch_norm, dtype=dtype, grad_at_zero=float(setting[0]),
        grad_at_six=float(setting[1]), data="digits", augment=False, label_smoothing=0.0,
        batch_size=cfg.batch_size, steps=cfg.steps, optimizer=optimizer,
        learning_rate=cfg.sgd_lr if optimizer == "sgd" else cfg.adamw_lr,
        weight_decay=cfg.weight_decay, seed=seed, log_every=cfg.steps, eval_every=0,
        checkpoint_every=0, progress=False, plot=False)


def model_fn(cfg: StudyConfig) -> train.ModelFn:
    """The study's model factory for :func:`mobilenet.train.fit`."""
    return convnet if cfg.model == "convnet" else example_mobilenet


# --- measurements -----------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def gradients(model: nn.Module, params: Any, batch_stats: Any, images: jax.Array,
              labels: jax.Array) -> tuple[Any, Any]:
    """The loss gradient on a batch, and the boundary hits of the very forward pass it used.

    Train mode, as in a training step: batch-norm normalizes with the batch's
    statistics. The loss is plain cross-entropy in float32.
    """
    def loss(p: Any) -> tuple[jax.Array, Any]:
        variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
        logits, state = model.apply(variables, images, train=True,
                                    mutable=["batch_stats", "boundary_hits"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                               labels)
        return jnp.mean(loss), state["boundary_hits"]

    return jax.grad(loss, has_aux=True)(params)


def gradient_difference(a: Any, b: Any) -> dict[str, float]:
    """How far two gradients (pytrees of the same structure) differ.

    Returns:
      ``rel_l2``: ``|a - b| / |a|`` (0 when both are 0); ``frac_differ``: the
      fraction of entries that are not bit-for-bit equal; ``cosine``: the
      cosine similarity (1 when both are 0).
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


def _identical(a: Any, b: Any) -> bool:
    return all(np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _fmt_setting(s: Setting) -> str:
    return f"({s[0]:g}, {s[1]:g})"


def run_study(cfg: StudyConfig, *, log: Callable[[str], None] = print) -> dict:
    """Runs every cell; returns plain data (lists, floats) for the tables and plot."""
    data = input_pipeline.load_digits()
    probe = data.train_images[:cfg.probe_batch], data.train_labels[:cfg.probe_batch]
    build = model_fn(cfg)
    reference = cfg.settings[0]
    results: dict[str, list] = {"accuracy": [], "hits": [], "layers": [], "gradients": []}
    start = time.perf_counter()
    for optimizer in cfg.optimizers:
        for batch_norm in cfg.batch_norm:
            for dtype in cfg.dtypes:
                cell = dict(optimizer=optimizer, batch_norm=batch_norm, dtype=dtype)
                runs: dict[Setting, list[dict]] = {}
                for setting in cfg.settings:
                    runs[setting] = []
                    for seed in range(cfg.seeds):
                        config = run_config(cfg, setting=setting, seed=seed, **cell)
                        state, summary = train.fit(config, None, model_fn=build)
                        runs[setting].append({
                            "test_accuracy": summary["test_accuracy"],
                            "variables": _host_variables(state.params, state.batch_stats)})
                        log(f"[{time.perf_counter() - start:6.0f}s] {optimizer} bn={batch_norm} "
                            f"{dtype} {_fmt_setting(setting)} seed {seed}: "
                            f"test accuracy {summary['test_accuracy']:.4f}")
                for setting in cfg.settings:
                    accs = [r["test_accuracy"] for r in runs[setting]]
                    same = sum(_identical(r["variables"]["params"], ref["variables"]["params"])
                               for r, ref in zip(runs[setting], runs[reference]))
                    results["accuracy"].append(dict(
                        **cell, setting=list(setting), accuracies=accs,
                        mean=float(np.mean(accs)),
                        std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                        identical_to_reference=int(same), seeds=len(accs)))
                if optimizer != cfg.optimizers[0]:
                    continue  # Hits and gradients depend on the optimizer only through training.
                config = run_config(cfg, setting=reference, seed=0, **cell)
                states = {"init": _initial_variables(config, build),
                          "trained": runs[reference][0]["variables"]}
                for when, variables in states.items():
                    _measure(cfg, config, build, variables, when, data, probe, results,
                             batch_norm=batch_norm, dtype=dtype)
    results["seconds"] = time.perf_counter() - start
    return results


def _host_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    return jax.device_get({"params": params, "batch_stats": batch_stats})


def _initial_variables(config: default.Config, build: train.ModelFn) -> dict[str, Any]:
    """The variables a run of ``config`` starts from (the loop's own initialization)."""
    state = train_state.create_train_state(
        config, build(config, num_classes=10), image_shape=(32, 32, 3),
        mesh=sharding.create_mesh(), total_steps=config.steps)
    return _host_variables(state.params, state.batch_stats)


def _measure(cfg, config, build, variables, when, data, probe, results, **cell):
    """Boundary hits and gradient differences at one set of parameters, on one batch."""
    images = input_pipeline.normalize(probe[0], mean=data.mean, std=data.std,
                                      dtype=train_state.DTYPES[config.dtype])
    labels = jnp.asarray(probe[1])

    model = build(config, num_classes=10)

    def grads(setting: Setting) -> tuple[Any, Any]:
        if BOUNDARY in variables["batch_stats"]:  # The convnet: the same program throughout.
            batch_stats = {**variables["batch_stats"],
                           BOUNDARY: np.asarray(setting, np.float32)}
            return gradients(model, variables["params"], batch_stats, images, labels)
        other = build(dataclasses.replace(config, grad_at_zero=float(setting[0]),
                                          grad_at_six=float(setting[1])), num_classes=10)
        return gradients(other, variables["params"], variables["batch_stats"], images, labels)

    ref_grads, hits = grads(cfg.settings[0])
    rows = jrelu6.summarize_boundary_hits(hits)
    n = sum(r.n for r in rows)
    at_zero, at_cap = sum(r.at_zero for r in rows), sum(r.at_cap for r in rows)
    results["hits"].append(dict(**cell, params=when, n=n, at_zero=at_zero, at_six=at_cap,
                                frac_zero=at_zero / n, frac_six=at_cap / n))
    results["layers"] += [dict(**cell, params=when, layer=r.layer, n=r.n,
                               frac_zero=r.frac_zero, frac_six=r.frac_cap) for r in rows]
    for setting in cfg.settings:  # The first is the control: the same setting, recomputed.
        other, _ = grads(setting)
        results["gradients"].append(dict(**cell, params=when, setting=list(setting),
                                         **gradient_difference(ref_grads, other)))


# --- report -----------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def format_results(results: dict, cfg: StudyConfig, meta: dict) -> str:
    """The markdown report: configuration, then one table per measurement."""
    lines = ["# Does the boundary derivative matter? (jrelu6 boundary study)", ""]
    lines.append(f"Configuration: {_describe(cfg)}")
    lines.append(f"Machine: {meta['machine']}; wall time {meta['seconds']:.0f} s.")
    lines.append("")
    lines += _accuracy_section(results, cfg)
    lines += _hits_section(results, cfg)
    lines += _layers_section(results, cfg)
    lines += _gradients_section(results, cfg)
    return "\n".join(lines) + "\n"


def _accuracy_section(results: dict, cfg: StudyConfig) -> list[str]:
    ref = _fmt_setting(cfg.settings[0])
    settings = [_fmt_setting(s) for s in cfg.settings]
    lines = [f"## Test accuracy (%), mean ± std over {cfg.seeds} seeds; "
             f"[k/n]: seeds whose final parameters equal the {ref} run's bit for bit", ""]
    header = ["optimizer", "batch-norm", "dtype"] + [f"(g0, g6) = {s}" for s in settings]
    by_cell: dict[tuple, dict] = {}
    for r in results["accuracy"]:
        by_cell.setdefault((r["optimizer"], r["batch_norm"], r["dtype"]), {})[
            _fmt_setting(tuple(r["setting"]))] = r
    rows = []
    for (opt, bn, dtype), cells in by_cell.items():
        row = [opt, "yes" if bn else "no", dtype]
        for s in settings:
            c = cells[s]
            text = f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"
            if s != ref:
                text += f" [{c['identical_to_reference']}/{c['seeds']}]"
            row.append(text)
        rows.append(row)
    return lines + _table(header, rows, "lll" + "r" * len(settings))


def _hits_section(results: dict, cfg: StudyConfig) -> list[str]:
    ref = _fmt_setting(cfg.settings[0])
    lines = ["", f"## Exact boundary hits of relu6 inputs (all layers; in the forward pass of "
             f"the gradients below: a fixed batch of {cfg.probe_batch} training images, "
             f"batch statistics in batch-norm)", "",
             f"Parameters: 'init' = seed 0 at initialisation; 'trained' = the end of the "
             f"{cfg.optimizers[0]} {ref} seed-0 run of the same batch-norm and dtype.", ""]
    rows = [[h["dtype"], "yes" if h["batch_norm"] else "no", h["params"], h["n"],
             h["at_zero"], h["at_six"], f"{h['frac_zero']:.2e}", f"{h['frac_six']:.2e}"]
            for h in results["hits"]]
    return lines + _table(["dtype", "batch-norm", "parameters", "inputs", "= 0", "= 6",
                           "fraction = 0", "fraction = 6"], rows, "lllrrrrr")


def _layers_section(results: dict, cfg: StudyConfig) -> list[str]:
    lines = ["", "## Per layer: fraction of relu6 inputs exactly on 0 / on 6 (for hard-swish "
             "and hard-sigmoid layers the relu6 input is x + 3)", ""]
    keys = sorted({(h["batch_norm"], h["params"]) for h in results["layers"]},
                  key=lambda k: (not k[0], k[1] != "init"))
    for bn, when in keys:
        lines.append(f"Batch-norm {'on' if bn else 'off'}, {when} parameters:")
        lines.append("")
        layer_names = list(dict.fromkeys(h["layer"] for h in results["layers"]
                                         if h["batch_norm"] == bn and h["params"] == when))
        rows = []
        for name in layer_names:
            row = [name]
            for dtype in cfg.dtypes:
                match = [h for h in results["layers"] if h["batch_norm"] == bn
                         and h["params"] == when and h["layer"] == name and h["dtype"] == dtype]
                row.append(f"{match[0]['frac_zero']:.2e} / {match[0]['frac_six']:.2e}"
                           if match else "-")
            rows.append(row)
        lines += _table(["layer"] + [f"{d}: = 0 / = 6" for d in cfg.dtypes], rows,
                        "l" + "r" * len(cfg.dtypes))
        lines.append("")
    return lines


def _gradients_section(results: dict, cfg: StudyConfig) -> list[str]:
    ref = _fmt_setting(cfg.settings[0])
    lines = [f"## Gradient difference from {ref}, same batch ({cfg.probe_batch} training "
             "images) and parameters (the first row of each group is the control: the "
             "same setting, recomputed). Where the table above counts no hit, the "
             "settings cannot differ.", ""]
    rows = [[g["dtype"], "yes" if g["batch_norm"] else "no", g["params"],
             _fmt_setting(tuple(g["setting"])), f"{g['rel_l2']:.2e}",
             f"{g['frac_differ']:.2e}", f"{g['cosine']:.6f}"] for g in results["gradients"]]
    return lines + _table(["dtype", "batch-norm", "parameters", "(g0, g6)", "relative L2 diff",
                           "entries that differ", "cosine"], rows, "llllrrr")


def _describe(cfg: StudyConfig) -> str:
    model = ("convnet (the study's TinyConvNet: 3 convs of 16/32/64 channels, relu6)"
             if cfg.model == "convnet" else
             f"{cfg.model} (examples/mobilenet), width {cfg.width:g}, small-input variant, "
             f"no dropout")
    return (f"{'--quick, ' if cfg.quick else ''}model {model}; digits 32x32, the example's "
            f"training loop (mobilenet.train.fit); {cfg.steps} steps of batch {cfg.batch_size}, "
            f"no augmentation or label smoothing; SGD (Nesterov, momentum 0.9) lr "
            f"{cfg.sgd_lr:g} / AdamW lr {cfg.adamw_lr:g}, the example's warm-up (10%) + "
            f"cosine, weight decay {cfg.weight_decay:g} of the kernels; "
            f"seeds 0..{cfg.seeds - 1}; "
            f"settings {', '.join(_fmt_setting(s) for s in cfg.settings)}; "
            f"dtypes {', '.join(cfg.dtypes)} (compute; parameters float32).")


def plot_results(results: dict, cfg: StudyConfig, path: str) -> None:
    """Accuracy per cell, per-layer hit fractions, gradient differences: one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    _plot_accuracy(axes[0], results, cfg)
    _plot_layer_hits(axes[1], results, cfg)
    _plot_gradients(axes[2], results, cfg)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_accuracy(ax: Any, results: dict, cfg: StudyConfig) -> None:
    groups = list(dict.fromkeys((r["optimizer"], r["batch_norm"], r["dtype"])
                                for r in results["accuracy"]))
    width = 0.8 / len(cfg.settings)
    for k, setting in enumerate(cfg.settings):
        cells = [next(r for r in results["accuracy"] if (r["optimizer"], r["batch_norm"],
                      r["dtype"]) == g and tuple(r["setting"]) == setting) for g in groups]
        ax.bar(np.arange(len(groups)) + k * width, [100 * c["mean"] for c in cells], width,
               yerr=[100 * c["std"] for c in cells], capsize=2, label=_fmt_setting(setting))
    ax.set_xticks(np.arange(len(groups)) + width * (len(cfg.settings) - 1) / 2)
    ax.set_xticklabels([f"{o}\n{'BN' if b else 'no BN'}\n{d}" for o, b, d in groups], fontsize=7)
    lo = min(100 * r["mean"] - 100 * r["std"] for r in results["accuracy"])
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"mean ± std over {cfg.seeds} seeds")
    ax.legend(title="(g0, g6)", fontsize=7)


def _plot_layer_hits(ax: Any, results: dict, cfg: StudyConfig) -> None:
    import matplotlib.ticker

    for bn in cfg.batch_norm:
        for dtype in cfg.dtypes:
            layers = [h for h in results["layers"] if h["batch_norm"] == bn
                      and h["dtype"] == dtype and h["params"] == "trained"]
            if not layers:
                continue
            for key, kink, marker in (("frac_zero", 0, "o"), ("frac_six", 6, "^")):
                ax.plot(range(len(layers)), [max(h[key], 1e-7) for h in layers], marker=marker,
                        label=f"{dtype}, {'BN' if bn else 'no BN'}, = {kink}")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("relu6-family layer (sorted by name, as in results.md)")
    ax.set_ylabel("fraction of inputs exactly on the kink (1e-7: none)")
    ax.set_title("exact hits per layer, trained parameters")
    ax.legend(fontsize=6)


def _plot_gradients(ax: Any, results: dict, cfg: StudyConfig) -> None:
    floor = 1e-9
    cells = list(dict.fromkeys((g["dtype"], g["batch_norm"], g["params"])
                               for g in results["gradients"]))
    for k, setting in enumerate(cfg.settings[1:]):
        rel = [next(g["rel_l2"] for g in results["gradients"]
                    if (g["dtype"], g["batch_norm"], g["params"]) == c
                    and tuple(g["setting"]) == setting) for c in cells]
        xs = np.arange(len(cells)) + 0.15 * k
        color = f"C{k + 1}"
        ax.scatter(xs, [max(r, floor) for r in rel], color=color,
                   label=f"{_fmt_setting(setting)} vs {_fmt_setting(cfg.settings[0])}")
        equal = [x for x, r in zip(xs, rel) if r == 0]
        ax.scatter(equal, [floor] * len(equal), marker="x", s=60, color="k",
                   label="identical" if k == 0 and equal else None)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(cells)))
    ax.set_xticklabels([f"{d}\n{'BN' if b else 'no BN'}\n{w}" for d, b, w in cells], fontsize=6)
    ax.set_ylabel("|g - g_ref| / |g_ref|  (x: identical)")
    ax.set_title("gradient difference, same batch and parameters")
    ax.legend(fontsize=7)


# --- command line -----------------------------------------------------------


def _setting(text: str) -> Setting:
    try:
        g0, g6 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a setting is 'grad_at_zero,grad_at_six', e.g. 1,1; got {text!r}") from None
    return g0, g6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train on the bundled digits data with several relu6 boundary derivatives "
                    "(grad_at_zero, grad_at_six), dtypes, with/without batch-norm and with "
                    "SGD/AdamW; report test accuracy, exact boundary hits per layer and "
                    "gradient differences. Writes results.md, results.json and "
                    "boundary_study.png into --out and prints the tables.",
    )
    d = StudyConfig()
    quick = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
    parser.add_argument("--quick", action="store_true",
                        help=f"a small configuration for a 2-core CPU (a few minutes): {quick}; "
                             "flags given explicitly still win")
    parser.add_argument("--out", default="runs/boundary_study",
                        help="output directory for results.md, results.json and the PNG "
                             "(default runs/boundary_study)")
    parser.add_argument("--model", choices=("convnet", *EXAMPLE_MODELS), default=None,
                        help=f"'convnet' (a 3-conv relu6 net defined here, fast on CPU) or a "
                             f"model of examples/mobilenet ('tiny' is its small test "
                             f"MobileNet) (default {d.model}; convnet with --quick)")
    parser.add_argument("--width", type=float, default=None,
                        help=f"MobileNet width multiplier; not used by convnet "
                             f"(default {d.width})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps per run (default {d.steps}; "
                             f"{QUICK['steps']} with --quick)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"training batch size (default {d.batch_size})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per cell, 0..N-1: initialisation and data order "
                             f"(default {d.seeds}; {QUICK['seeds']} with --quick)")
    parser.add_argument("--settings", type=_setting, nargs="+", default=None,
                        metavar="G0,G6",
                        help="boundary settings grad_at_zero,grad_at_six; the first is the "
                             "reference for comparisons (default 0,0 1,1 0.5,0.5)")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None,
                        help="compute dtypes (default float32 bfloat16); parameters stay "
                             "float32")
    parser.add_argument("--batch-norm", choices=("both", "on", "off"), default="both",
                        help="train with batch-norm, without, or both (default both)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=None,
                        help="sgd (Nesterov momentum 0.9) and/or adamw (default both)")
    parser.add_argument("--sgd-lr", type=float, default=None,
                        help=f"SGD peak learning rate (default {d.sgd_lr})")
    parser.add_argument("--adamw-lr", type=float, default=None,
                        help=f"AdamW peak learning rate (default {d.adamw_lr})")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"weight decay, both optimizers (default {d.weight_decay})")
    parser.add_argument("--probe-batch", type=int, default=None,
                        help=f"images in the fixed batch for hit counts and gradients "
                             f"(default {d.probe_batch})")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    values: dict[str, Any] = dict(QUICK, quick=True) if args.quick else {}
    for field in dataclasses.fields(StudyConfig):
        given = getattr(args, field.name, None)
        if field.name in ("batch_norm", "quick") or given is None:
            continue
        values[field.name] = tuple(given) if isinstance(given, list) else given
    values["batch_norm"] = {"both": (True, False), "on": (True,), "off": (False,)}[
        args.batch_norm]
    cfg = StudyConfig(**values)
    if cfg.steps < 1 or cfg.seeds < 1 or cfg.batch_size < 1:
        raise SystemExit("boundary_study: --steps, --seeds and --batch-size must be >= 1")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    os.makedirs(args.out, exist_ok=True)
    results = run_study(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    meta = dict(seconds=results["seconds"],
                machine=f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
                        f"on {jax.default_backend()} ({jax.device_count()} device(s))")
    report = format_results(results, cfg, meta)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(config=dataclasses.asdict(cfg), meta=meta, **results), f, indent=1)
    if not args.no_plot:
        plot_results(results, cfg, os.path.join(args.out, "boundary_study.png"))
    print(report)
    print(f"Wrote {os.path.join(args.out, 'results.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
