"""Compiled cost of relu6 inside a jitted gradient: jrelu6 against jax.nn.

Compiles ``grad(loss)`` of a small conv + activation + conv network once with
each activation and prints, side by side, what XLA made of it: the number of
fusions (and of all kernels), the temp memory and the total argument/output
memory from ``memory_analysis()``. Equal numbers mean relu6 costs nothing
extra inside jit. No timing: these are properties of the compiled program.

    python benchmarks/compiled_cost.py            # default settings
    python benchmarks/compiled_cost.py --grad-at-zero 1 --grad-at-six 1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp

import jrelu6
from _harness import compiled_stats


def conv_net_loss(activation: Callable) -> Callable:
    """conv3x3 -> activation -> conv3x3 -> activation -> mean: a small CNN loss."""

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def loss(params, x):
        h = activation(conv(x, params["w1"]))
        return jnp.mean(activation(conv(h, params["w2"])))

    return loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=32, help="image height=width (default 32)")
    parser.add_argument("--channels", type=int, default=32, help="channels (default 32)")
    parser.add_argument("--grad-at-zero", type=float, default=0.0, help="jrelu6's g0")
    parser.add_argument("--grad-at-six", type=float, default=0.0, help="jrelu6's g6")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    c = args.channels
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(keys[0], (3, 3, 3, c)) * 0.3,
        "w2": jax.random.normal(keys[1], (3, 3, c, c)) * 0.1,
    }
    x = jax.random.normal(keys[2], (args.batch, args.size, args.size, 3))
    ours = lambda h: jrelu6.relu6(  # noqa: E731
        h, grad_at_zero=args.grad_at_zero, grad_at_six=args.grad_at_six
    )
    rows = {
        "jax.nn.relu6": compiled_stats(jax.grad(conv_net_loss(jax.nn.relu6)), params, x),
        "jrelu6.relu6": compiled_stats(jax.grad(conv_net_loss(ours)), params, x),
    }
    print(f"grad of conv-relu6-conv-relu6, x {tuple(x.shape)}, backend "
          f"{jax.default_backend()}, jax {jax.__version__}, "
          f"g0={args.grad_at_zero} g6={args.grad_at_six}")
    cols = list(next(iter(rows.values())))
    print(f"{'':14}" + "".join(f"{c:>16}" for c in cols))
    for name, row in rows.items():
        print(f"{name:14}" + "".join(f"{row[c]:>16,}" for c in cols))
    base, mine = rows["jax.nn.relu6"], rows["jrelu6.relu6"]
    ratio = mine["temp_bytes"] / base["temp_bytes"] if base["temp_bytes"] else float("nan")
    print(f"ratios jrelu6/jax.nn: fusions {mine['fusions']}/{base['fusions']}, "
          f"temp memory {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
