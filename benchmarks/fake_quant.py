"""Fake quantization inside jit: jrelu6.fake_quant against the same jnp expression.

Compiles and times, side by side (interleaved, warmed up, medians), on float32
and bfloat16 arrays:

- ``jnp``: the expression a user would write for 8-bit fake quantization on
  [-1, 1] (the nudged range, steps and zero point precomputed in Python):
  ``clip``, ``floor((x - m) * (1/s) + 1/2)``, ``(q - z) * s``, with the
  usual straight-through idiom ``c + stop_gradient(q(c) - c)`` for the gradient;
- ``jrelu6``: :func:`jrelu6.fake_quant` with ``min=-1, max=1``.

Forward is ``jax.jit(f)``; forward + backward is ``jax.jit`` of ``jax.vjp``
(output and input gradient). Printed per case: fusions, entry ops and temp
memory of the compiled program, the median time, and the ratio jrelu6 / jnp.

    python benchmarks/fake_quant.py --quick     # CI smoke run
    python benchmarks/fake_quant.py             # 2^16..2^24 elements, both dtypes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import _harness
import jrelu6
from _harness import Case, compiled_stats

_LO, _HI, _BITS = -1.0, 1.0, 8


def _grid() -> tuple[float, float, float, float]:
    """(m, M, s, z) of the 8-bit grid on [-1, 1], nudged as TensorFlow does, in float32."""
    f = np.float32
    steps = f(2**_BITS - 1)
    scale = (f(_HI) - f(_LO)) / steps
    zero_point = np.floor(np.clip(-f(_LO) / scale, 0, steps) + f(0.5))
    return float(-zero_point * scale), float((steps - zero_point) * scale), float(scale), \
        float(zero_point)


def plain_fake_quant(x: jax.Array) -> jax.Array:
    """The jnp expression: TensorFlow's grid and the straight-through idiom."""
    m, big_m, s, z = _grid()
    wide = x.astype(jnp.float32)
    c = jnp.clip(wide, m, big_m)
    q = (jnp.floor((c - m) * (1 / s) + 0.5) - z) * s
    return (c + jax.lax.stop_gradient(q - c)).astype(x.dtype)


def ours(x: jax.Array) -> jax.Array:
    return jrelu6.fake_quant(x, min=_LO, max=_HI, num_bits=_BITS)


def _programs(fn: Callable) -> dict[str, Callable]:
    def forward_backward(x, g):
        y, vjp = jax.vjp(fn, x)
        return y, vjp(g)[0]

    return {"forward": fn, "forward+backward": forward_backward}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="log2 of the array sizes (default 16 20 24; --quick: 12 16)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        help="dtypes (default float32 bfloat16)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (default 20; --quick: 3)")
    _harness.add_output_arguments(parser, "fake_quant")
    return parser.parse_args(argv)


def _measure(dtype: str, log2: int, repeats: int) -> list[tuple[dict, dict]]:
    """``(result, table row)`` of the forward and the forward+backward pass at one size."""
    candidates = {"jnp": plain_fake_quant, "jrelu6": ours}
    x = jax.random.uniform(jax.random.key(log2), (2**log2,), minval=-1.5, maxval=1.5)
    x = x.astype(dtype)
    g = jnp.ones_like(x)
    # The two compute the same values and input gradients.
    for a, b in zip(jax.jit(_programs(ours)["forward+backward"])(x, g),
                    jax.jit(_programs(plain_fake_quant)["forward+backward"])(x, g)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    measured = []
    for mode in ("forward", "forward+backward"):
        call_args = (x,) if mode == "forward" else (x, g)
        jitted, stats = {}, {}
        for name, fn in candidates.items():
            program = _programs(fn)[mode]
            jitted[name] = jax.jit(program)
            stats[name] = compiled_stats(program, *call_args)
        cases = {
            name: Case(setup=lambda n, a=call_args: a, run=lambda a, f=f: f(*a))
            for name, f in jitted.items()
        }
        times = {name: _harness.median(t) for name, t in
                 _harness.time_interleaved(cases, repeats=repeats).items()}
        result = {
            "dtype": dtype, "log2_size": log2, "mode": mode,
            "seconds": times, "compiled": stats,
            "time_ratio": _harness.ratio(times["jrelu6"], times["jnp"]),
            "temp_ratio": _harness.ratio(stats["jrelu6"]["temp_bytes"] or 1,
                                         stats["jnp"]["temp_bytes"] or 1),
        }
        measured.append((result, {
            "case": f"{dtype} 2^{log2} {mode}",
            "fusions": f"{stats['jrelu6']['fusions']}/{stats['jnp']['fusions']}",
            "ops": f"{stats['jrelu6']['entry_ops']}/{stats['jnp']['entry_ops']}",
            "temp": f"{stats['jrelu6']['temp_bytes']}/{stats['jnp']['temp_bytes']}",
            "jnp_us": times["jnp"] * 1e6,
            "ours_us": times["jrelu6"] * 1e6,
            "ratio": result["time_ratio"],
        }))
    return measured


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    sizes = args.sizes or ([12, 16] if args.quick else [16, 20, 24])
    repeats = args.repeats or (3 if args.quick else 20)
    info, command = _harness.announce("fake_quant vs the jnp expression", "fake_quant.py", argv)

    rows, results = [], []
    for dtype in args.dtypes:
        for log2 in sizes:
            for result, row in _measure(dtype, log2, repeats):
                results.append(result)
                rows.append(row)
    print(_harness.format_table(rows, [
        ("case", "case", "s"), ("fusions", "fusions ours/jnp", "s"),
        ("ops", "entry ops ours/jnp", "s"), ("temp", "temp bytes ours/jnp", "s"),
        ("jnp_us", "jnp us", ".1f"), ("ours_us", "jrelu6 us", ".1f"),
        ("ratio", "time jrelu6/jnp", ".3f"),
    ]))
    path = _harness.write_json(args, "fake_quant", {
        "machine": info, "command": command, "results": results,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
