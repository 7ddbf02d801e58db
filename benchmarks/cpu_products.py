"""The 1x1 convolution's three matrix products in float32 and bfloat16, and who runs them.

A MobileNet 1x1 convolution is ``y = x @ w`` over the flattened batch, with two
gradient products, ``dx = g @ w.T`` and ``dw = x.T @ g`` (the last one sums over
the rows). For each, at shapes of the small-input MobileNetV2 at batch 32, this
times (medians, interleaved) and names the kernel that XLA compiled it to
(``ynn``: a YNNPACK fusion; ``dot``: XLA's own dot; ``onednn``; ``+convert``:
with conversions of its operands or result around it):

- ``float32``: float32 operands and result;
- ``bfloat16``: bfloat16 operands and result (``jnp.matmul``'s);
- ``mixed``: bfloat16 operands, float32 result (``preferred_element_type``),
  as :func:`mobilenet.depthwise.mixed_matmul` computes it.

On a CPU with bfloat16 arithmetic (AVX512-BF16, AMX) the mixed product is the one
that can be faster than float32; the bfloat16 one is converted to float32 and back.
XLA runs the mixed ``dw = x.T @ g`` in its own dot on float32 copies; the ``native``
column times the example's own kernel for it (``mobilenet/native/pointwise.cc``, built
where the CPU has AVX512-BF16; ``-`` elsewhere and for the other products).

    python benchmarks/cpu_products.py
    python benchmarks/cpu_products.py --quick
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import _harness as harness
import _mobilenet_step  # noqa: F401  (puts examples/ on the path)
from mobilenet import depthwise, native

NAME = "cpu_products"
# (rows, in, out): the first expand and project layers, later ones and the head, batch 32.
SHAPES = [(32768, 24, 144), (32768, 144, 24), (8192, 192, 32), (2048, 96, 576),
          (512, 960, 160), (512, 320, 1280)]
# name -> (left operand, right operand, contracted axes): x (rows, in), w (in, out) and
# g (rows, out), the output's cotangent.
PRODUCTS = {"y = x @ w": ("x", "w", ((1,), (0,))), "dx = g @ w.T": ("g", "w", ((1,), (1,))),
            "dw = x.T @ g": ("x", "g", ((0,), (0,)))}
FORMS = {"float32": (jnp.float32, None), "bfloat16": (jnp.bfloat16, None),
         "mixed": (jnp.bfloat16, jnp.float32)}


def kernel_kind(compiled_text: str) -> str:
    """What a compiled product runs: ``ynn``, ``onednn`` or ``dot``, with ``+convert``
    where operands or the result are converted in separate kernels."""
    entry = compiled_text.split("ENTRY", 1)[-1]
    kind = ("ynn" if "__ynn_fusion" in entry else "onednn" if "onednn" in entry
            else "dot" if re.search(r"\bdot\(", entry) else "other")
    return kind + ("+convert" if re.search(r"convert", entry) else "")


def _operands(shape, product, dtype, rng):
    """``product``'s two operands at ``shape`` (rows, in, out), in ``dtype``."""
    rows, cin, cout = shape
    shapes = {"x": (rows, cin), "w": (cin, cout), "g": (rows, cout)}
    lhs, rhs, _ = PRODUCTS[product]
    return [jnp.asarray(rng.normal(size=shapes[name]), dtype) for name in (lhs, rhs)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=31, help="timed rounds (default 31)")
    harness.add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    shapes = [(256, 16, 24)] if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    info, command = harness.announce("1x1-convolution products by dtype", NAME + ".py", argv)
    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        for product, (_, _, dims) in PRODUCTS.items():
            cases, kinds = {}, {}
            for form, (dtype, result) in FORMS.items():
                a, b = _operands(shape, product, dtype, rng)
                f = jax.jit(lambda a, b, d=dims, r=result: lax.dot_general(
                    a, b, (d, ((), ())), preferred_element_type=r))
                kinds[form] = kernel_kind(f.lower(a, b).compile().as_text())
                cases[form] = harness.Case(lambda _: None, lambda _, f=f, a=a, b=b: f(a, b))
            if product == "dw = x.T @ g" and native.has_pointwise_kernel_grad():
                a, b = _operands(shape, product, jnp.bfloat16, rng)
                f = jax.jit(lambda a, b: depthwise._rows_product(a, b, jnp.float32))
                cases["native"] = harness.Case(lambda _: None, lambda _, f=f, a=a, b=b: f(a, b))
            times = harness.time_interleaved(cases, repeats=repeats, warmup=2)
            row = {"shape": "x".join(map(str, shape)), "product": product}
            for form in FORMS:
                row[f"{form}_ms"] = 1e3 * harness.median(times[form])
                row[f"{form}_kernel"] = kinds[form]
            row["mixed_vs_float32"] = row["float32_ms"] / row["mixed_ms"]
            native_ms = 1e3 * harness.median(times["native"]) if "native" in times else None
            row["native_ms"] = native_ms  # None: not built here, or another product.
            row["native_vs_mixed"] = row["mixed_ms"] / native_ms if native_ms else None
            rows.append(row)
    columns = [("shape", "rows x in x out", ""), ("product", "product", "")]
    for form in FORMS:
        columns += [(f"{form}_ms", f"{form} ms", ".2f"), (f"{form}_kernel", "kernel", "")]
    columns += [("mixed_vs_float32", "mixed x faster", ".2f"), ("native_ms", "native ms", ".2f"),
                ("native_vs_mixed", "native x faster than mixed", ".2f")]
    print(harness.format_table(rows, columns))
    path = harness.write_json(args, NAME, {"machine": info, "command": command,
                                           "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
