"""relu6 inside a jitted gradient: 6 conv-BN-relu6 layers, jax.nn against jrelu6 (both rules).

Compiles ``grad(loss)`` of six 3x3 convolution -> batch norm (batch statistics)
-> relu6 layers three times, identical but for the activation:

- ``jax.nn``: :func:`jax.nn.relu6`;
- ``jrelu6``: :func:`jrelu6.relu6` at its defaults (kink slopes 0: the short
  derivative rule, a select plus one for NaN inputs);
- ``jrelu6 traced kinks``: the same with the kink slopes passed as arrays, so
  that the general rule (any slope at 0 and 6) is compiled;

and prints, side by side, the fusion and kernel counts and the temp memory of
each compiled gradient (``memory_analysis()``), then the time per gradient of
each, interleaved, with the ratios of the medians to jax.nn's.

    python benchmarks/relu6_in_jit.py            # batch 32, 32x32, 32 channels
    python benchmarks/relu6_in_jit.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

import _harness as harness
import jrelu6

NAME = "relu6_in_jit"


def conv_bn_loss(activation: Callable, layers: int = 6) -> Callable:
    """``layers`` x (conv3x3 -> batch norm over the batch -> activation), then a squared error.

    (Not the plain mean: a linear loss makes the last activation's cotangent a
    constant, which XLA folds into that layer's rule, differently for each rule.)
    """

    def loss(params, x):
        h = x
        for w in params:
            h = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            mean, var = jnp.mean(h, axis=(0, 1, 2)), jnp.var(h, axis=(0, 1, 2))
            h = activation((h - mean) * jax.lax.rsqrt(var + 1e-5))
        return jnp.mean(jnp.square(h - 1))

    return loss


def inputs(batch: int, size: int, channels: int, layers: int = 6):
    """Parameters (a list of HWIO kernels) and an NHWC batch."""
    keys = jax.random.split(jax.random.key(0), layers + 1)
    params = [jax.random.normal(keys[0], (3, 3, 3, channels)) * 0.3]
    params += [jax.random.normal(k, (3, 3, channels, channels)) * 0.1 for k in keys[1:layers]]
    return params, jax.random.normal(keys[layers], (batch, size, size, 3))


ACTIVATIONS = {
    "jax.nn": jax.nn.relu6,
    "jrelu6": jrelu6.relu6,
    "jrelu6 traced kinks": lambda h: jrelu6.relu6(h, grad_at_zero=jnp.float32(0),
                                                  grad_at_six=jnp.float32(0)),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=32, help="image height=width (default 32)")
    parser.add_argument("--channels", type=int, default=32, help="channels (default 32)")
    parser.add_argument("--repeats", type=int, default=41, help="timed rounds (default 41)")
    harness.add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.channels, args.repeats = 4, 8, 8, 3
    info, command = harness.announce("relu6 in a jitted 6-layer conv-BN gradient", NAME + ".py",
                                     argv)
    params, x = inputs(args.batch, args.size, args.channels)
    grads = {name: jax.jit(jax.grad(conv_bn_loss(act))) for name, act in ACTIVATIONS.items()}
    stats = {name: harness.compiled_stats(jax.grad(conv_bn_loss(act)), params, x)
             for name, act in ACTIVATIONS.items()}
    cases = {name: harness.Case(setup=lambda _: None, run=lambda _, g=g: g(params, x))
             for name, g in grads.items()}
    times = harness.time_interleaved(cases, repeats=args.repeats, warmup=2)
    base = harness.median(times["jax.nn"])
    rows = []
    for name in ACTIVATIONS:
        t = harness.median(times[name])
        rows.append({"activation": name, **stats[name], "ms": t * 1e3,
                     "time_vs_jax_nn": t / base,
                     "temp_vs_jax_nn": harness.ratio(stats[name]["temp_bytes"],
                                                     stats["jax.nn"]["temp_bytes"])})
    print(f"x {tuple(x.shape)}, {args.channels} channels, {args.repeats} interleaved rounds")
    print(harness.format_table(rows, [
        ("activation", "activation", ""), ("fusions", "fusions", ""),
        ("entry_ops", "kernels", ""), ("temp_bytes", "temp bytes", ","),
        ("temp_vs_jax_nn", "temp / jax.nn", ".4f"), ("ms", "median ms", ".2f"),
        ("time_vs_jax_nn", "time / jax.nn", ".3f")]))
    path = harness.write_json(args, NAME, {"machine": info, "command": command,
                                           "config": vars(args), "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
