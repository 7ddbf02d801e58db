"""Depthwise convolution on this backend: the grouped convolution vs shifted multiply-adds.

Measures, side by side in one process (interleaved samples, medians):

1. one 3x3 depthwise convolution of an NxHxWxC float32 batch (default
   64x16x16x96), forward and forward+backward, as
   ``feature_group_count`` ("grouped"), as our shifted multiply-adds with
   their custom backward pass ("shifted") and, for reference, as the same
   multiply-adds differentiated by plain autodiff ("shifted, autodiff");
   plus the compiled fusion count and temporary memory of each gradient;
2. a whole MobileNetV2 training step (small-input variant, width 1.0, 10
   classes, SGD with momentum, batch 128 of 32x32 images) with
   ``depthwise="grouped"`` vs ``depthwise="auto"``.

Run ``python benchmarks/depthwise.py`` (a few minutes on 2 CPU cores) or
``--quick`` (smaller, fewer samples: a smoke run). Timings on a shared
machine are noisy; the ratios of interleaved medians are the figures to
quote.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
if _EXAMPLES not in sys.path:  # Run as a script: make the MobileNet example importable.
    sys.path.insert(0, _EXAMPLES)

from mobilenet import depthwise, models  # noqa: E402


def time_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int,
                     warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, sampled in turn (rotating the order)."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(fns[name]())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def _shifted_autodiff(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The shifted multiply-adds (3x3, stride 1, SAME) without the custom backward pass."""
    return depthwise._valid_shifted(depthwise._pad_input(x, ((1, 1), (1, 1))), kernel, (1, 1))


def conv_rows(shape: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """Forward and forward+backward times of the depthwise forms at ``shape``."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, shape[-1])), jnp.float32)
    forms = {
        "grouped": functools.partial(depthwise.depthwise_conv, impl="grouped"),
        "shifted": functools.partial(depthwise.depthwise_conv, impl="shifted"),
        "shifted, autodiff": _shifted_autodiff,
    }
    fwd, bwd, costs = {}, {}, {}
    for name, form in forms.items():
        f = jax.jit(form)
        g = jax.jit(jax.grad(lambda x, k, form=form: jnp.sum(jnp.sin(form(x, k))),
                             argnums=(0, 1)))
        compiled = g.lower(x, kernel).compile()
        memory = compiled.memory_analysis()
        costs[name] = (compiled.as_text().count(" fusion("),
                       getattr(memory, "temp_size_in_bytes", 0) / 2**20)
        fwd[name] = functools.partial(f, x, kernel)
        bwd[name] = functools.partial(g, x, kernel)
    t_fwd = time_interleaved(fwd, repeats=repeats)
    t_bwd = time_interleaved(bwd, repeats=repeats)
    return [{"form": name, "fwd_ms": 1e3 * t_fwd[name], "fwd_bwd_ms": 1e3 * t_bwd[name],
             "fusions": costs[name][0], "temp_mib": costs[name][1],
             "fwd_ratio": t_fwd["grouped"] / t_fwd[name],
             "fwd_bwd_ratio": t_bwd["grouped"] / t_bwd[name]} for name in forms]


def make_train_step(model: models.MobileNet, tx: optax.GradientTransformation):
    """A jitted SGD step: forward in train mode, cross-entropy, update; state donated."""

    def step(params, batch_stats, opt_state, images, labels, key):
        def loss_fn(params):
            logits, state = model.apply(
                {"params": params, "batch_stats": batch_stats}, images, train=True,
                mutable=["batch_stats"], rngs={"dropout": key})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, state["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def step_rows(batch: int, repeats: int, impls: Sequence[str] = ("grouped", "auto")
              ) -> list[dict[str, Any]]:
    """Seconds per MobileNetV2 training step with each depthwise implementation."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
    tx = optax.sgd(0.01, momentum=0.9)
    runners, compile_s = {}, {}
    for impl in impls:
        model = models.create_model("mobilenet_v2", num_classes=10, small_input=True,
                                    depthwise=impl)
        variables = jax.jit(lambda key, x, model=model: model.init(key, x, train=False))(
            jax.random.key(0), images[:1])
        state = [variables["params"], variables["batch_stats"]]
        state.append(tx.init(state[0]))
        step = make_train_step(model, tx)
        start = time.perf_counter()
        compiled = step.lower(*state, images, labels, jax.random.key(1)).compile()
        compile_s[impl] = time.perf_counter() - start

        def run(compiled=compiled, state=state):
            *state[:], loss = compiled(*state, images, labels, jax.random.key(1))
            return loss

        runners[impl] = run
    times = time_interleaved(runners, repeats=repeats, warmup=1)
    return [{"depthwise": impl, "step_s": times[impl], "compile_s": compile_s[impl],
             "images_per_s": batch / times[impl], "speedup": times["grouped"] / times[impl]}
            for impl in impls]


def _table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    header = [title for _, title, _ in columns]
    body = [[format(row[key], fmt) if isinstance(row[key], float) else str(row[key])
             for key, _, fmt in columns] for row in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a 16x16x16x96 conv, batch 16 steps, few samples")
    parser.add_argument("--shape", type=int, nargs=4, default=None, metavar=("N", "H", "W", "C"),
                        help="the depthwise conv input (default 64 16 16 96)")
    parser.add_argument("--batch", type=int, default=None,
                        help="MobileNetV2 training batch (default 128)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed samples per candidate (default 20 conv / 7 step)")
    parser.add_argument("--skip-model", action="store_true", help="only the single conv")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    shape = args.shape or ((16, 16, 16, 96) if args.quick else (64, 16, 16, 96))
    batch = args.batch or (16 if args.quick else 128)
    conv_repeats = args.repeats or (5 if args.quick else 20)
    step_repeats = args.repeats or (3 if args.quick else 7)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs; medians of interleaved samples (noisy on a shared machine)")
    print(f"\n3x3 depthwise conv, float32 {'x'.join(map(str, shape))}, SAME, stride 1")
    print(_table(conv_rows(shape, conv_repeats), [
        ("form", "form", ""), ("fwd_ms", "fwd ms", ".2f"), ("fwd_bwd_ms", "fwd+bwd ms", ".2f"),
        ("fwd_ratio", "fwd speedup", ".1f"), ("fwd_bwd_ratio", "fwd+bwd speedup", ".1f"),
        ("fusions", "grad fusions", ""), ("temp_mib", "grad temp MiB", ".1f")]))
    if args.skip_model:
        return
    print(f"\nMobileNetV2 training step (small_input, width 1.0, 10 classes, SGD momentum), "
          f"batch {batch}, 32x32")
    print(_table(step_rows(batch, step_repeats), [
        ("depthwise", "depthwise", ""), ("step_s", "s/step", ".3f"),
        ("images_per_s", "images/s", ".0f"), ("speedup", "speedup", ".2f"),
        ("compile_s", "compile s", ".1f")]))


if __name__ == "__main__":
    main()
