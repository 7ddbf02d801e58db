"""Depthwise convolution: grouped, shifted multiply-adds and native kernels, alone and in a step.

Measures, side by side in one process (interleaved samples, medians):

1. one 3x3 depthwise convolution of an NxHxWxC float32 batch (default
   64x16x16x96, stride 1, SAME), forward and forward+backward, as
   ``feature_group_count`` ("grouped"), as our shifted multiply-adds with
   their custom backward pass ("shifted"), for reference as the same
   multiply-adds differentiated by plain autodiff, and as the native C++
   kernels (``mobilenet.native``); with the fusion count and temporary memory
   of each compiled gradient;
2. a whole MobileNetV2 training step (small-input variant, width 1.0, 10
   classes, SGD with momentum, batch 128 of 32x32 images, the step of
   ``_mobilenet_step``): the plain flax model (``depthwise="grouped",
   pointwise="conv"``: every convolution an ``nn.Conv``), then with the
   shifted depthwise form, then also with the 1x1 convolutions as matrix
   products (``pointwise="matmul"``), then with the depthwise convolutions
   chosen per platform (``depthwise="auto"``: the native kernels on CPU where
   they could be built; the defaults).

Run ``python benchmarks/depthwise.py`` (several minutes on 2 CPU cores: the
plain flax step takes seconds) or ``--quick`` (a smoke run). Timings on a
shared machine are noisy; quote the ratios of the interleaved medians.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import _harness as harness
import _mobilenet_step as mstep

NAME = "depthwise"

# name -> the model options of each training-step candidate; the first is the baseline.
STEP_VARIANTS = {
    "flax nn.Conv (grouped, conv)": {"depthwise": "grouped", "pointwise": "conv"},
    "shifted, conv": {"depthwise": "shifted", "pointwise": "conv"},
    "shifted, matmul": {"depthwise": "shifted", "pointwise": "matmul"},
    "auto (native), matmul: the defaults": {"depthwise": "auto", "pointwise": "matmul"},
}


def _shifted_autodiff(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The shifted multiply-adds (3x3, stride 1, SAME) without the custom backward pass."""
    padded = mstep.depthwise._pad_input(x, ((1, 1), (1, 1)))
    return mstep.depthwise._valid_shifted(padded, kernel, (1, 1))


CONV_FORMS = {
    "grouped": functools.partial(mstep.depthwise.depthwise_conv, impl="grouped"),
    "shifted": functools.partial(mstep.depthwise.depthwise_conv, impl="shifted"),
    "shifted, autodiff": _shifted_autodiff,
    # Left out (with the reason printed) where the kernels cannot be built.
    "native": functools.partial(mstep.depthwise.depthwise_conv, impl="native"),
}


def _through_float32(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The native kernels on float32 casts of ``x`` and ``kernel``, cast back to ``x``'s dtype."""
    wide = CONV_FORMS["native"](x.astype(jnp.float32), kernel.astype(jnp.float32))
    return wide.astype(x.dtype)


def _case(fn, *args) -> harness.Case:
    return harness.Case(setup=lambda _: None, run=lambda _: fn(*args))


def conv_rows(shape: Sequence[int], repeats: int, dtype: Any = jnp.float32
              ) -> list[dict[str, Any]]:
    """Forward and forward+backward times of the depthwise forms at ``shape``.

    In bfloat16 two more rows time the native kernels through float32 casts (inside the
    timing: what the kernels did before they read bfloat16) and on float32 copies of the
    same inputs (made outside the timing: the float32 kernels' own time).
    """
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, shape[-1]), dtype=np.float32), dtype)
    candidates = {name: (form, (x, kernel)) for name, form in CONV_FORMS.items()}
    if jnp.dtype(dtype).itemsize < 4:
        candidates["native through float32 casts"] = (_through_float32, (x, kernel))
        candidates["native on float32 copies"] = (
            CONV_FORMS["native"], (x.astype(jnp.float32), kernel.astype(jnp.float32)))
    forward, backward, rows = {}, {}, {}
    for name, (form, inputs) in candidates.items():
        if name.startswith("native") and not mstep.depthwise.native.available():
            print(f"{name}: left out ({mstep.depthwise.native.unavailable_reason()})")
            continue
        grad = jax.jit(jax.grad(lambda x, k, form=form: jnp.sum(jnp.sin(form(x, k))),
                                argnums=(0, 1)))
        compiled = grad.lower(*inputs).compile()
        rows[name] = {"form": name, "grad_fusions": compiled.as_text().count(" fusion("),
                      "grad_temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20}
        forward[name] = _case(jax.jit(form), *inputs)
        backward[name] = _case(compiled, *inputs)
    for key, cases in (("fwd_ms", forward), ("fwd_bwd_ms", backward)):
        times = harness.time_interleaved(cases, repeats=repeats, warmup=2)
        for name in cases:
            rows[name][key] = 1e3 * harness.median(times[name])
    for row in rows.values():
        row["fwd_speedup"] = harness.ratio(rows["grouped"]["fwd_ms"], row["fwd_ms"])
        row["fwd_bwd_speedup"] = harness.ratio(rows["grouped"]["fwd_bwd_ms"], row["fwd_bwd_ms"])
    return list(rows.values())


def step_rows(batch: int, size: int, width: float, repeats: int, *, small_input: bool = True,
              variants: dict[str, dict[str, str]] = STEP_VARIANTS) -> list[dict[str, Any]]:
    """Seconds per MobileNetV2 training step with each convolution implementation."""
    images, labels = mstep.synthetic_batch(batch, size, 10)
    cases, rows = {}, {}
    for name, options in variants.items():
        model = mstep.create_model(num_classes=10, small_input=small_input,
                                   width_multiplier=width, **options)
        holder = [mstep.create_state(model, images.shape[1:])]
        start = time.perf_counter()
        compiled = mstep.jitted_step(model).lower(holder[0], images, labels).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost  # A list on older jax.
        rows[name] = {"variant": name, **options, "compile_s": time.perf_counter() - start,
                      "gflop": (cost or {}).get("flops", 0.0) / 1e9}

        def run(_, compiled=compiled, holder=holder):
            holder[0], loss = compiled(holder[0], images, labels)
            return loss

        cases[name] = harness.Case(setup=lambda _: None, run=run)
    times = harness.time_interleaved(cases, repeats=repeats, warmup=1)
    baseline = harness.median(times[next(iter(variants))])
    for name, row in rows.items():
        row["step_s"] = harness.median(times[name])
        row["images_per_s"] = batch / row["step_s"]
        row["speedup"] = harness.ratio(baseline, row["step_s"])
        row["gflop_per_s"] = row["gflop"] / row["step_s"]
    return list(rows.values())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_output_arguments(parser, NAME)
    parser.add_argument("--shape", type=int, nargs=4, metavar=("N", "H", "W", "C"),
                        help="the single convolution's input (default 64 16 16 96; "
                             "--quick: 8 8 8 32)")
    parser.add_argument("--batch", type=int,
                        help="the MobileNetV2 training batch (default 128; --quick: 4)")
    parser.add_argument("--size", type=int,
                        help="the training images' side (default 32; --quick: 16)")
    parser.add_argument("--width", type=float,
                        help="MobileNetV2's width multiplier (default 1.0; --quick: 0.35)")
    parser.add_argument("--repeats", type=int,
                        help="timed samples per candidate (default 20 for the conv, 5 for "
                             "the step; --quick: 2)")
    parser.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=True,
                        help="MobileNetV2's small-input variant (downsampling by 8, the "
                             "default) or the ImageNet one (by 32: 1x1 maps at 32x32)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the single convolution's dtype (bfloat16 adds the native "
                             "kernels through float32 casts and on float32 copies)")
    parser.add_argument("--skip-step", action="store_true",
                        help="time the single convolution only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    shape = tuple(args.shape or ((8, 8, 8, 32) if quick else (64, 16, 16, 96)))
    batch = args.batch or (4 if quick else 128)
    size = args.size or (16 if quick else 32)
    width = args.width or (0.35 if quick else 1.0)
    info, command = harness.announce("depthwise convolution", "depthwise.py", argv)
    print("medians of interleaved samples; on a shared machine read the ratios")

    conv = conv_rows(shape, args.repeats or (2 if quick else 20), jnp.dtype(args.dtype))
    print(f"\n3x3 depthwise conv, {args.dtype} {'x'.join(map(str, shape))}, stride 1, SAME")
    print(harness.format_table(conv, [
        ("form", "form", ""), ("fwd_ms", "fwd ms", ".2f"), ("fwd_bwd_ms", "fwd+bwd ms", ".2f"),
        ("fwd_speedup", "fwd speedup", ".1f"), ("fwd_bwd_speedup", "fwd+bwd speedup", ".1f"),
        ("grad_fusions", "grad fusions", "d"), ("grad_temp_mib", "grad temp MiB", ".1f")]))

    step = []
    if not args.skip_step:
        step = step_rows(batch, size, width, args.repeats or (2 if quick else 5),
                         small_input=args.small_input)
        print(f"\nMobileNetV2 training step: small_input={args.small_input}, width {width}, "
              f"10 classes, SGD momentum, batch {batch}, {size}x{size}")
        print(harness.format_table(step, [
            ("variant", "convolutions", ""), ("step_s", "s/step", ".3f"),
            ("images_per_s", "images/s", ".1f"), ("speedup", "speedup", ".2f"),
            ("gflop", "GFLOP", ".1f"), ("gflop_per_s", "GFLOP/s", ".1f"),
            ("compile_s", "compile s", ".1f")]))

    path = harness.write_json(args, NAME, {
        "benchmark": NAME, "command": command,
        "machine": info, "conv_shape": list(shape), "conv_dtype": args.dtype, "conv": conv,
        "step_config": {"model": "mobilenet_v2", "batch": batch, "size": size,
                        "width": width, "small_input": args.small_input,
                        "num_classes": 10},
        "step": step})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    # As the example does: huge pages for XLA's (and PyTorch's) large buffers.
    mstep.host_memory.reexec_with_huge_pages()
    raise SystemExit(main())
