"""Plot relu6 and its derivative, with the derivative's values at the kinks marked.

The derivative is computed by ``jax.grad`` of :func:`jrelu6.relu6` (vmapped),
never by a hand-written formula, so the picture shows what training uses.

    python examples/plot_relu6.py                       # writes relu6.png
    python examples/plot_relu6.py --grad-at-zero 1 --grad-at-six 0.5 --out kinks.png
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jrelu6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Plot jrelu6.relu6 and its derivative (from jax.grad) on x in [-2, 8].",
    )
    parser.add_argument("--grad-at-zero", type=float, default=0.0,
                        help="derivative of relu6 at x == 0 (default 0, as jax.nn)")
    parser.add_argument("--grad-at-six", type=float, default=0.0,
                        help="derivative of relu6 at x == 6 (default 0, as jax.nn)")
    parser.add_argument("--out", default="relu6.png", help="output PNG file (default relu6.png)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution (default 150)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = dict(grad_at_zero=args.grad_at_zero, grad_at_six=args.grad_at_six)
    fn = lambda x: jrelu6.relu6(x, **settings)  # noqa: E731
    derivative = jax.jit(jax.vmap(jax.grad(fn)))

    x = jnp.linspace(-2.0, 8.0, 2001)
    # Draw the derivative piecewise so the jumps at the kinks are not joined up.
    pieces = [x[x < 0], x[(x > 0) & (x < 6)], x[x > 6]]
    kinks = jnp.array([0.0, 6.0])
    kink_values = np.asarray(derivative(kinks))

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, fn(x), color="C0", lw=2, label="relu6(x)")
    for i, piece in enumerate(pieces):
        ax.plot(piece, derivative(piece), color="C1", lw=2,
                label="relu6'(x)  (jax.grad)" if i == 0 else None)
    for k, v in zip(np.asarray(kinks), kink_values):
        ax.plot([k], [v], "o", color="C3", ms=7, zorder=3)
        ax.annotate(f"relu6'({k:g}) = {v:g}", (k, v), textcoords="offset points",
                    xytext=(8, 10 if v < 0.5 else -16), color="C3")
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.set(xlabel="x", xlim=(-2, 8), ylim=(-0.5, 6.5),
           title=f"jrelu6.relu6 (grad_at_zero={args.grad_at_zero:g}, "
                 f"grad_at_six={args.grad_at_six:g})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    plt.close(fig)
    print(f"wrote {args.out}: relu6'(0) = {kink_values[0]:g}, relu6'(6) = {kink_values[1]:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
