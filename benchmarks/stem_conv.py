"""The MobileNet stem as ``nn.Conv`` against :class:`mobilenet.depthwise.PatchConv`.

The stem is a 3x3 convolution of the 3-channel images to 32 filters (stride 1 in the
small-input variant, 2 in the standard one). ``PatchConv`` computes it as one matrix
product over the images' 3x3 windows (27 values a pixel); in training its kernel
gradient is the product of those windows and the cotangent, where XLA:CPU runs
``nn.Conv``'s as a convolution over transposed copies of both. For each batch and
stride this times (medians, interleaved, jitted) the forward pass alone and the
forward pass with the kernel's gradient, as the training step needs them, and prints
how many times faster ``PatchConv`` is. As the example does, the process restarts
with huge pages for malloc (``JRELU6_HUGE_PAGES=0`` turns that off).

    python benchmarks/stem_conv.py
    python benchmarks/stem_conv.py --dtype bfloat16
    python benchmarks/stem_conv.py --quick
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import _harness as harness
import _mobilenet_step as mstep
from mobilenet.depthwise import PatchConv, accumulator_dtype

NAME = "stem_conv"
FILTERS = 32


def _layers(dtype) -> dict[str, nn.Module]:
    """The two stems as ``LayerOptions.conv`` builds them before a batch norm."""
    out = accumulator_dtype(dtype)  # float32: the product's own dtype.
    return {"nn.Conv": lambda s: nn.Conv(FILTERS, (3, 3), strides=s, padding=((1, 1), (1, 1)),
                                         use_bias=False, dtype=dtype),
            "PatchConv": lambda s: PatchConv(FILTERS, kernel_size=(3, 3), strides=s,
                                             padding=((1, 1), (1, 1)), use_bias=False,
                                             dtype=dtype, preferred_element_type=out)}


def _cases(layer: nn.Module, images: jax.Array) -> dict[str, harness.Case]:
    """The layer's jitted forward pass, and forward pass with the kernel gradient."""
    params = layer.init(jax.random.key(0), images)
    forward = jax.jit(lambda p, x: layer.apply(p, x))
    cotangent = jnp.ones(forward(params, images).shape, jnp.float32)

    @jax.jit
    def with_gradient(p, x):
        y, pullback = jax.vjp(lambda p: layer.apply(p, x).astype(jnp.float32), p)
        return y, pullback(cotangent)

    return {"forward": harness.Case(lambda _: None, lambda _: forward(params, images)),
            "forward + kernel gradient": harness.Case(
                lambda _: None, lambda _: with_gradient(params, images))}


def main(argv: Sequence[str] | None = None) -> int:
    mstep.host_memory.reexec_with_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="compute dtype (default float32); parameters stay float32")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds (default 21)")
    harness.add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.size < 1:
        parser.error("--repeats and --size must be >= 1")
    batches, repeats = ((4,), 3) if args.quick else ((32, 128), args.repeats)
    dtype = jnp.dtype(args.dtype)
    info, command = harness.announce(f"MobileNet stem ({args.dtype})", NAME + ".py", argv)
    rows = []
    for batch in batches:
        images = jnp.asarray(np.random.default_rng(0).normal(
            size=(batch, args.size, args.size, 3)), jnp.float32)
        for stride in (1, 2):
            cases = {}
            for name, make in _layers(dtype).items():
                for work, case in _cases(make(stride), images).items():
                    cases[f"{name}|{work}"] = case
            times = harness.time_interleaved(cases, repeats=repeats, warmup=2)
            for work in ("forward", "forward + kernel gradient"):
                conv, patch = (1e3 * harness.median(times[f"{n}|{work}"])
                               for n in ("nn.Conv", "PatchConv"))
                rows.append({"batch": batch, "stride": stride, "work": work,
                             "conv_ms": conv, "patch_ms": patch, "patch_speedup": conv / patch})
    print(harness.format_table(rows, [
        ("batch", "batch", ""), ("stride", "stride", ""), ("work", "work", ""),
        ("conv_ms", "nn.Conv ms", ".2f"), ("patch_ms", "PatchConv ms", ".2f"),
        ("patch_speedup", "PatchConv x faster", ".2f")]))
    path = harness.write_json(args, NAME, {"machine": info, "command": command,
                                           "dtype": args.dtype, "size": args.size,
                                           "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
