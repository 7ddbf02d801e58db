"""The native depthwise kernels of this checkout against those of another git revision.

Compiles ``examples/mobilenet/native/depthwise.cc`` as it is here and as it is at
``--against`` (default ``HEAD~1``), registers the two libraries under two sets
of FFI target names, checks that they agree, and times one forward + input
gradient + kernel gradient (3x3, SAME) of each, interleaved, on MobileNet-like
shapes. Prints the medians and minimums and the new/old ratios.

    python benchmarks/native_ab.py --against 5b80e95
    python benchmarks/native_ab.py --quick
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import _harness as harness
import _mobilenet_step as mstep

NAME = "native_ab"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = "examples/mobilenet/native"
SOURCE = "depthwise.cc"
HEADERS = ("parallel.h",)  # Included by SOURCE where a revision has them (since 2026-12-07).
SYMBOLS = {"forward": "Jrelu6DepthwiseForward", "input_grad": "Jrelu6DepthwiseInputGrad",
           "kernel_grad": "Jrelu6DepthwiseKernelGrad"}
# (N, H, W, C), stride: layers of a small-input MobileNetV2 at batch 128.
SHAPES = [((128, 32, 32, 96), 1), ((128, 16, 16, 144), 2), ((128, 4, 4, 576), 1),
          ((128, 2, 2, 960), 1)]


def _register(name: str, source: str, folder: str) -> None:
    library = os.path.join(folder, f"{name}.so")
    mstep.depthwise.native.compile_library([source], library)
    handle = ctypes.CDLL(library)
    for kind, symbol in SYMBOLS.items():
        jax.ffi.register_ffi_target(f"{name}_{kind}", jax.ffi.pycapsule(getattr(handle, symbol)),
                                    platform="cpu")


def _revision_source(revision: str, folder: str) -> str:
    """``revision``'s SOURCE, with the HEADERS it has beside it, written under ``folder``."""
    tree = os.path.join(folder, "old")
    os.makedirs(tree)
    for name in (SOURCE, *HEADERS):
        shown = subprocess.run(["git", "show", f"{revision}:{NATIVE}/{name}"], cwd=ROOT,
                               capture_output=True, text=True, check=name == SOURCE)
        if shown.returncode == 0:
            with open(os.path.join(tree, name), "w") as f:
                f.write(shown.stdout)
    return os.path.join(tree, SOURCE)


def _step(name: str, shape, stride: int):
    n, h, w, c = shape
    out = (n, (h - 1) // stride + 1, (w - 1) // stride + 1, c)
    # SAME padding of a 3x3 window: 1 before, whatever the stride for these sizes.
    attrs = dict(stride_h=np.int64(stride), stride_w=np.int64(stride), pad_top=np.int64(1),
                 pad_left=np.int64(1))

    def call(kind, result, *operands):
        return jax.ffi.ffi_call(f"{name}_{kind}", jax.ShapeDtypeStruct(result, jnp.float32))(
            *operands, **attrs)

    def f(x, k, g):
        return (call("forward", out, x, k), call("input_grad", shape, g, k),
                call("kernel_grad", (3, 3, c), x, g))

    return jax.jit(f), out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD~1", help="git revision (default HEAD~1)")
    parser.add_argument("--repeats", type=int, default=31, help="timed rounds (default 31)")
    harness.add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    shapes = [((8, 8, 8, 16), 1), ((8, 8, 8, 16), 2)] if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    info, command = harness.announce("native depthwise kernels, this checkout vs "
                                     f"{args.against}", NAME + ".py", argv)
    with tempfile.TemporaryDirectory() as folder:
        _register("old", _revision_source(args.against, folder), folder)
        _register("new", os.path.join(ROOT, NATIVE, SOURCE), folder)
    rows = []
    rng = np.random.default_rng(0)
    for shape, stride in shapes:
        steps = {name: _step(name, shape, stride) for name in ("old", "new")}
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        k = jnp.asarray(rng.normal(size=(3, 3, shape[3])), jnp.float32)
        g = jnp.asarray(rng.normal(size=steps["old"][1]), jnp.float32)
        for a, b in zip(steps["old"][0](x, k, g), steps["new"][0](x, k, g)):
            scale = float(jnp.max(jnp.abs(a))) or 1.0
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
        cases = {name: harness.Case(lambda _: None, lambda _, s=s, x=x, k=k, g=g: s[0](x, k, g))
                 for name, s in steps.items()}
        times = harness.time_interleaved(cases, repeats=repeats, warmup=2)
        rows.append({"shape": "x".join(map(str, shape)), "stride": stride,
                     "old_ms": 1e3 * harness.median(times["old"]),
                     "new_ms": 1e3 * harness.median(times["new"]),
                     "median_ratio": harness.median(times["new"]) / harness.median(times["old"]),
                     "min_ratio": min(times["new"]) / min(times["old"])})
    print(harness.format_table(rows, [
        ("shape", "NxHxWxC", ""), ("stride", "stride", ""), ("old_ms", "old median ms", ".2f"),
        ("new_ms", "new median ms", ".2f"), ("median_ratio", "new/old median", ".3f"),
        ("min_ratio", "new/old min", ".3f")]))
    path = harness.write_json(args, NAME, {"machine": info, "command": command,
                                           "config": vars(args), "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
