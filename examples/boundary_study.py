"""Does the boundary derivative matter? relu6'(0) and relu6'(6) on real training runs.

The derivative of relu6 at its kinks is a convention (0 in jax.nn, PyTorch and
TensorFlow). It can only matter where an input lands *exactly* on 0 or 6,
which bfloat16's coarse spacing (1/32 near 6) makes far likelier than
float32's. This script measures, on the bundled digits data (scikit-learn,
nothing downloaded, prepared as examples/mobilenet prepares it):

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

Runs of one (optimizer, batch-norm, dtype) group share one compiled training
step: the boundary settings are arguments of the step, not constants, so
changing them does not recompile (relu6 accepts traced boundary values).

Cost: ``--quick`` trains 48 runs of 300 steps of a small conv net, about 2.5
to 5 minutes on a shared 2-core CPU. The default (full) grid trains 72 runs of
a MobileNetV2 (width 0.25) from examples/mobilenet; at roughly 0.5-0.8 s per
step on that CPU it takes hours there: run it on a GPU, or narrow it with
``--optimizers``, ``--dtypes``, ``--batch-norm`` and ``--seeds``.
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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jrelu6
import jrelu6.linen

Setting = tuple[float, float]  # (grad_at_zero, grad_at_six)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
OPTIMIZERS = ("sgd", "adamw")
EXAMPLE_MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                  "tiny")


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
    train_limit: int = 0  # 0: the whole training split.
    quick: bool = False


QUICK = dict(model="convnet", steps=300, seeds=2, batch_size=64)


# --- data -------------------------------------------------------------------


def load_digits(*, train_limit: int = 0) -> tuple[np.ndarray, ...]:
    """The MobileNet example's digits: 32x32x3, its fixed split, its normalization.

    scikit-learn's bundled 8x8 digits upsampled to 32x32 and repeated over
    three channels, the stratified 80/20 split of
    :func:`mobilenet.input_pipeline.load_digits`, then ``(x / 255 - mean) /
    std`` with the training set's statistics, as the example's training step
    does (the study adds no augmentation).

    Returns:
      ``x_train, y_train, x_test, y_test``; images are float32 NHWC.
    """
    from mobilenet import input_pipeline  # examples/mobilenet, next to this script.

    data = input_pipeline.load_digits()

    def normalize(images: np.ndarray) -> np.ndarray:
        return np.asarray(input_pipeline.normalize(images, mean=data.mean, std=data.std))

    x_train, y_train = data.train_images, data.train_labels
    if train_limit:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    return normalize(x_train), y_train, normalize(data.test_images), data.test_labels


# --- models -----------------------------------------------------------------


class TinyConvNet(nn.Module):
    """Three 3x3 stride-2 convolutions with relu6, global pooling, a classifier.

    The study's small model for ``--quick`` and the tests: plain convolutions
    (milliseconds per step on a 2-core CPU, where even the example's ``tiny``
    MobileNet takes far longer), each followed by batch-norm (optional) and
    :class:`jrelu6.linen.ReLU6`. Compute in ``dtype``, parameters in float32.
    """

    num_classes: int = 10
    features: tuple[int, ...] = (16, 32, 64)
    batch_norm: bool = True
    dtype: Any = jnp.float32
    grad_at_zero: Any = 0.0
    grad_at_six: Any = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        for features in self.features:
            x = nn.Conv(features, (3, 3), strides=2, use_bias=not self.batch_norm,
                        dtype=self.dtype)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 dtype=self.dtype)(x)
            x = jrelu6.linen.ReLU6(grad_at_zero=self.grad_at_zero,
                                   grad_at_six=self.grad_at_six)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def build_model(cfg: StudyConfig, *, batch_norm: bool, dtype: str, setting: Any) -> nn.Module:
    """The study's model: its own small conv net, or a model of examples/mobilenet.

    ``setting`` is ``(grad_at_zero, grad_at_six)``: Python floats or traced
    scalars (inside the jitted step).
    """
    g0, g6 = setting
    if cfg.model == "convnet":
        return TinyConvNet(batch_norm=batch_norm, dtype=DTYPES[dtype],
                           grad_at_zero=g0, grad_at_six=g6)
    try:
        from mobilenet import models  # examples/mobilenet, on sys.path next to this script.
    except ImportError as e:
        raise SystemExit(f"boundary_study: --model {cfg.model} needs examples/mobilenet "
                         f"({e}); use --model tiny") from None

    # No dropout: the study's runs are deterministic given the seed.
    return models.create_model(
        cfg.model, num_classes=10, width_multiplier=cfg.width, small_input=True,
        dtype=DTYPES[dtype], grad_at_zero=g0, grad_at_six=g6, batch_norm=batch_norm,
        dropout_rate=0.0,
    )


def apply_model(model: nn.Module, variables: dict, x: jax.Array, *, train: bool,
                mutable: Sequence[str] = ()) -> tuple[jax.Array, dict]:
    """``model.apply`` in train or eval mode; returns (logits, mutated collections).

    In train mode batch-norm uses (and updates) batch statistics.
    """
    mutable = list(mutable) + (["batch_stats"] if train and "batch_stats" in variables else [])
    if not mutable:
        return model.apply(variables, x, train=train), {}
    return model.apply(variables, x, train=train, mutable=mutable)


def init_variables(model: nn.Module, key: jax.Array, x: jax.Array) -> dict:
    """``model.init`` in eval mode (jit it: it is called once per run)."""
    return model.init(key, x, train=False)


# --- training ---------------------------------------------------------------


def warmup_cosine(peak: float, warmup: int, steps: int) -> optax.Schedule:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``steps``.

    Written out (rather than optax's schedule) so that it is clean under
    ``jax_numpy_dtype_promotion="strict"``.
    """

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.float32)
        ramp = jnp.minimum(t / warmup, 1.0)
        progress = jnp.clip((t - warmup) / max(steps - warmup, 1), 0.0, 1.0)
        return peak * ramp * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return schedule


def make_optimizer(cfg: StudyConfig, name: str) -> optax.GradientTransformation:
    """SGD (momentum 0.9, weight decay) or AdamW, with warm-up and cosine decay."""
    warmup = max(1, cfg.steps // 10)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                           optax.sgd(warmup_cosine(cfg.sgd_lr, warmup, cfg.steps),
                                     momentum=0.9))
    if name == "adamw":
        return optax.adamw(warmup_cosine(cfg.adamw_lr, warmup, cfg.steps),
                           weight_decay=cfg.weight_decay)
    raise ValueError(f"boundary_study: optimizer must be one of {OPTIMIZERS}, got {name!r}.")


def _loss(model, params, other, x, y, mutable=()):
    logits, updates = apply_model(model, {"params": params, **other}, x, train=True,
                                  mutable=mutable)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    return jnp.mean(loss), updates


class Group:
    """The compiled functions for one (optimizer, batch-norm, dtype) group.

    The boundary setting is an argument (a float32 pair), so every setting
    and seed of the group reuses the same executables. A model that does not
    accept traced boundary values gets them as static arguments instead
    (one compilation per setting).
    """

    def __init__(self, cfg: StudyConfig, *, optimizer: str, batch_norm: bool, dtype: str):
        self.cfg, self.batch_norm, self.dtype = cfg, batch_norm, dtype
        self.tx = make_optimizer(cfg, optimizer)

        def model(setting):
            return build_model(cfg, batch_norm=batch_norm, dtype=dtype,
                               setting=(setting[0], setting[1]))

        self.model = model
        self.traced = _accepts_traced_settings(model)

        def train_step(params, other, opt_state, x, y, setting):
            grad_fn = jax.value_and_grad(lambda p: _loss(model(setting), p, other, x, y),
                                         has_aux=True)
            (loss, updates), grads = grad_fn(params)
            steps, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, steps), {**other, **updates}, opt_state, loss

        def accuracy(variables, x, y, setting):
            logits, _ = apply_model(model(setting), variables, x, train=False)
            return jnp.mean(jnp.argmax(logits, -1) == y)

        def gradients(params, other, x, y, setting):
            """The loss gradient, and the boundary hits of the very forward pass it used."""
            grad_fn = jax.grad(lambda p: _loss(model(setting), p, other, x, y,
                                               mutable=["boundary_hits"]), has_aux=True)
            grads, state = grad_fn(params)
            return grads, state["boundary_hits"]

        def jit(f, **kwargs):
            if not self.traced:
                kwargs["static_argnames"] = ("setting",)
            return jax.jit(f, **kwargs)

        self._init = jax.jit(lambda key, x: init_variables(model((0.0, 0.0)), key, x))
        self.train_step = jit(train_step, donate_argnums=(0, 1, 2))
        self.accuracy = jit(accuracy)
        self.gradients = jit(gradients)

    def setting(self, setting: Setting) -> Any:
        """The form the compiled functions take: an array, or a static pair of floats."""
        if self.traced:
            return jnp.asarray(setting, jnp.float32)
        return (float(setting[0]), float(setting[1]))

    def init(self, seed: int, x: jax.Array) -> dict:
        """The variables at initialisation for ``seed`` (``x``: one input image)."""
        return dict(self._init(jax.random.key(seed), jnp.asarray(x[:1])))

    def train(self, setting: Setting, seed: int, data: tuple[np.ndarray, ...]) -> dict:
        """Trains one run; returns its final variables and test accuracy."""
        x_train, y_train, x_test, y_test = data
        variables = self.init(seed, jnp.asarray(x_train[:1]))
        params = variables.pop("params")
        opt_state = self.tx.init(params)
        g = self.setting(setting)
        order = _batches(len(x_train), self.cfg.batch_size, self.cfg.steps, seed)
        x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)
        loss = jnp.nan
        for idx in order:
            params, variables, opt_state, loss = self.train_step(
                params, variables, opt_state, x_all[idx], y_all[idx], g)
        final = {"params": params, **variables}
        acc = float(self.accuracy(final, jnp.asarray(x_test), jnp.asarray(y_test), g))
        return {"variables": final, "test_accuracy": acc, "train_loss": float(loss)}


def _accepts_traced_settings(model: Callable[[Any], nn.Module]) -> bool:
    """Whether the model can be built with traced (grad_at_zero, grad_at_six)."""
    try:
        jax.eval_shape(lambda g: init_variables(model(g), jax.random.key(0),
                                                jnp.zeros((1, 32, 32, 3))),
                       jnp.zeros(2, jnp.float32))
    except (jax.errors.ConcretizationTypeError, TypeError):
        return False
    return True


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """Shuffled index batches, reshuffled every epoch; the same for every setting."""
    if batch_size > n:
        raise ValueError(f"boundary_study: batch size {batch_size} > {n} training images.")
    rng = np.random.default_rng(seed)
    batches, per_epoch = [], n // batch_size
    while len(batches) < steps:
        perm = rng.permutation(n)
        batches += [perm[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch)]
    return batches[:steps]


# --- measurements -----------------------------------------------------------


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
    # flax's BatchNorm mixes a bfloat16 input with float32 statistics by
    # implicit promotion; allow it here even where a test session made it strict.
    with jax.numpy_dtype_promotion("standard"):
        return _run_study(cfg, log)


def _run_study(cfg: StudyConfig, log: Callable[[str], None]) -> dict:
    data = load_digits(train_limit=cfg.train_limit)
    # One fixed batch of training images for every hit count and gradient.
    probe = (jnp.asarray(data[0][: cfg.probe_batch]), jnp.asarray(data[1][: cfg.probe_batch]))
    reference = cfg.settings[0]
    results: dict[str, list] = {"accuracy": [], "hits": [], "layers": [], "gradients": []}
    start = time.perf_counter()
    for optimizer in cfg.optimizers:
        for batch_norm in cfg.batch_norm:
            for dtype in cfg.dtypes:
                group = Group(cfg, optimizer=optimizer, batch_norm=batch_norm, dtype=dtype)
                runs: dict[Setting, list[dict]] = {}
                for setting in cfg.settings:
                    runs[setting] = []
                    for seed in range(cfg.seeds):
                        run = group.train(setting, seed, data)
                        runs[setting].append(run)
                        log(f"[{time.perf_counter() - start:6.0f}s] {optimizer} bn={batch_norm} "
                            f"{dtype} {_fmt_setting(setting)} seed {seed}: "
                            f"test accuracy {run['test_accuracy']:.4f}")
                for setting in cfg.settings:
                    accs = [r["test_accuracy"] for r in runs[setting]]
                    same = sum(_identical(r["variables"]["params"], ref["variables"]["params"])
                               for r, ref in zip(runs[setting], runs[reference]))
                    results["accuracy"].append(dict(
                        optimizer=optimizer, batch_norm=batch_norm, dtype=dtype,
                        setting=list(setting), accuracies=accs, mean=float(np.mean(accs)),
                        std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                        identical_to_reference=int(same), seeds=len(accs)))
                if optimizer != cfg.optimizers[0]:
                    continue  # Hits and gradients depend on the optimizer only through training.
                states = {"init": group.init(0, probe[0][:1]),
                          "trained": runs[reference][0]["variables"]}
                for when, variables in states.items():
                    _measure(group, cfg, variables, when, probe, results,
                             batch_norm=batch_norm, dtype=dtype)
    results["seconds"] = time.perf_counter() - start
    return results


def _measure(group, cfg, variables, when, probe, results, **cell):
    """Boundary hits and gradient differences at one set of parameters, on one batch."""
    params = variables["params"]
    other = {k: v for k, v in variables.items() if k != "params"}
    ref_grads, hits = group.gradients(params, other, *probe, group.setting(cfg.settings[0]))
    rows = jrelu6.summarize_boundary_hits(hits)
    n = sum(r.n for r in rows)
    at_zero, at_cap = sum(r.at_zero for r in rows), sum(r.at_cap for r in rows)
    results["hits"].append(dict(**cell, params=when, n=n, at_zero=at_zero, at_six=at_cap,
                                frac_zero=at_zero / n, frac_six=at_cap / n))
    results["layers"] += [dict(**cell, params=when, layer=r.layer, n=r.n,
                               frac_zero=r.frac_zero, frac_six=r.frac_cap) for r in rows]
    for setting in cfg.settings:  # The first is the control: the same setting, recomputed.
        grads, _ = group.gradients(params, other, *probe, group.setting(setting))
        results["gradients"].append(dict(**cell, params=when, setting=list(setting),
                                         **gradient_difference(ref_grads, grads)))


# --- report -----------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def format_results(results: dict, cfg: StudyConfig, meta: dict) -> str:
    """The markdown report: configuration, then one table per measurement."""
    ref = _fmt_setting(cfg.settings[0])
    settings = [_fmt_setting(s) for s in cfg.settings]
    lines = ["# Does the boundary derivative matter? (jrelu6 boundary study)", ""]
    lines.append(f"Configuration: {_describe(cfg)}")
    lines.append(f"Machine: {meta['machine']}; wall time {meta['seconds']:.0f} s.")
    lines.append("")
    lines.append(f"## Test accuracy (%), mean ± std over {cfg.seeds} seeds; "
                 f"[k/n]: seeds whose final parameters equal the {ref} run's bit for bit")
    lines.append("")
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
    lines += _table(header, rows, "lll" + "r" * len(settings))
    lines += ["", f"## Exact boundary hits of relu6 inputs (all layers; in the forward pass of "
              f"the gradients below: a fixed batch of {cfg.probe_batch} training images, "
              f"batch statistics in batch-norm)", "",
              f"Parameters: 'init' = seed 0 at initialisation; 'trained' = the end of the "
              f"{cfg.optimizers[0]} {ref} seed-0 run of the same batch-norm and dtype.", ""]
    rows = [[h["dtype"], "yes" if h["batch_norm"] else "no", h["params"], h["n"],
             h["at_zero"], h["at_six"], f"{h['frac_zero']:.2e}", f"{h['frac_six']:.2e}"]
            for h in results["hits"]]
    lines += _table(["dtype", "batch-norm", "parameters", "inputs", "= 0", "= 6",
                     "fraction = 0", "fraction = 6"], rows, "lllrrrrr")
    lines += ["", "## Per layer: fraction of relu6 inputs exactly on 0 / on 6 (for hard-swish "
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
    lines += [f"## Gradient difference from {ref}, same batch ({cfg.probe_batch} training "
              "images) and parameters (the first row of each group is the control: the "
              "same setting, recomputed). Where the table above counts no hit, the "
              "settings cannot differ.", ""]
    rows = [[g["dtype"], "yes" if g["batch_norm"] else "no", g["params"],
             _fmt_setting(tuple(g["setting"])), f"{g['rel_l2']:.2e}",
             f"{g['frac_differ']:.2e}", f"{g['cosine']:.6f}"] for g in results["gradients"]]
    lines += _table(["dtype", "batch-norm", "parameters", "(g0, g6)", "relative L2 diff",
                     "entries that differ", "cosine"], rows, "llllrrr")
    return "\n".join(lines) + "\n"


def _describe(cfg: StudyConfig) -> str:
    model = ("convnet (the study's TinyConvNet: 3 convs of 16/32/64 channels, relu6)"
             if cfg.model == "convnet" else
             f"{cfg.model} (examples/mobilenet), width {cfg.width:g}, small-input variant, "
             f"no dropout")
    return (f"{'--quick, ' if cfg.quick else ''}model {model}; digits 32x32, "
            f"{'first ' + str(cfg.train_limit) if cfg.train_limit else 'all'} training images; "
            f"{cfg.steps} steps of batch {cfg.batch_size}, no augmentation; "
            f"SGD momentum 0.9 lr {cfg.sgd_lr:g} / AdamW lr {cfg.adamw_lr:g}, warm-up + cosine, "
            f"weight decay {cfg.weight_decay:g}; seeds 0..{cfg.seeds - 1}; "
            f"settings {', '.join(_fmt_setting(s) for s in cfg.settings)}; "
            f"dtypes {', '.join(cfg.dtypes)} (compute; parameters float32).")


def plot_results(results: dict, cfg: StudyConfig, path: str) -> None:
    """Accuracy per cell, per-layer hit fractions, gradient differences: one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.MaxNLocator)

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
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

    ax = axes[1]
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

    ax = axes[2]
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    parser.add_argument("--model", choices=("convnet",) + EXAMPLE_MODELS, default=None,
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
                        help="sgd (momentum 0.9) and/or adamw (default both)")
    parser.add_argument("--sgd-lr", type=float, default=None,
                        help=f"SGD peak learning rate (default {d.sgd_lr})")
    parser.add_argument("--adamw-lr", type=float, default=None,
                        help=f"AdamW peak learning rate (default {d.adamw_lr})")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"weight decay, both optimizers (default {d.weight_decay})")
    parser.add_argument("--probe-batch", type=int, default=None,
                        help=f"images in the fixed batch for hit counts and gradients "
                             f"(default {d.probe_batch})")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="use only the first N training images (default: all)")
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
