"""relu6 on its own: jrelu6 against jax.nn, PyTorch, numpy and the memory-bandwidth limit.

Times relu6 forward, and forward + backward, on float32 and bfloat16 arrays of
2^12 to 2^26 elements, every candidate side by side in one run (interleaved,
warmed up, medians):

- ``scale``: ``jax.jit(lambda x: x * 2)``, the cheapest jitted op that writes a
  fresh array: the memory-bandwidth reference for an out-of-place relu6.
- ``jax.nn``, ``jrelu6``: :func:`jax.nn.relu6` and :func:`jrelu6.relu6`, called
  as a user calls them; ``jit(jrelu6)``: the same under ``jax.jit``.
- ``scale donated``, ``jax.nn donated``, ``jrelu6 inplace``: the same with the
  input donated (:func:`jrelu6.relu6_inplace`), so XLA may write the result
  over the input. Donation deletes the input, so every call gets its own
  copy, made outside the timed region.
- ``numpy inplace``: ``np.clip(a, 0, 6, out=a)`` (float32 on CPU only; numpy
  has no native bfloat16).
- ``torch``, ``torch inplace``: ``torch.nn.functional.relu6`` out of place and
  with ``inplace=True``, on the device that matches JAX's backend (when torch
  is installed).

Forward + backward is ``jax.jit`` of ``jax.vjp`` (the output and the input
gradient for a given cotangent), and ``y = relu6(x); y.backward(g)`` in torch.
GB/s counts the bytes read and written once each: 2 arrays forward, 4 arrays
forward + backward.

    python benchmarks/activation.py --quick          # CI smoke run, ~30 s on 2 cores
    python benchmarks/activation.py                  # 2^12..2^26, both dtypes
    python benchmarks/activation.py --sizes 25 --dtypes float32 --repeats 15
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import _harness
import jrelu6
from _harness import Case, torch

_FULL_SIZES = (12, 14, 16, 18, 20, 22, 24, 26)
_QUICK_SIZES = (12, 16, 20, 22)
_GOAL_MIN_LOG2 = 22  # the bandwidth goals are stated for arrays of >= 2^22 elements
_FORWARD = "forward"
_BACKWARD = "forward+backward"


def _scale(x):
    return x * jnp.asarray(2, x.dtype)


# An eager call of a custom_jvp function (jax.nn.relu6 and jrelu6.relu6 both)
# costs a few hundred microseconds of Python; under an outer jit it is one
# cached dispatch. This column shows what a small standalone call gains by it.
_JIT_RELU6 = jax.jit(jrelu6.relu6)


def _vjp_of(fn: Callable) -> Callable:
    """Jitted ``(x, g) -> (fn(x), g @ dfn/dx)``: one forward and one backward pass."""

    def both(x, g):
        y, pullback = jax.vjp(fn, x)
        return y, pullback(g)[0]

    return jax.jit(both)


def _repeat_jax(fn: Callable, *args: Any) -> Callable[[int], Any]:
    def run(calls: int):
        out = None
        for _ in range(calls):
            out = fn(*args)
        return out

    return run


def _fresh_copies(x: jax.Array) -> Callable[[int], list[jax.Array]]:
    """A ``setup`` that makes one copy of ``x`` per call, for donating calls."""
    return lambda calls: [jnp.array(x, copy=True) for _ in range(calls)]


def _donating_run(fn: Callable) -> Callable[[list[jax.Array]], Any]:
    def run(copies):
        out = None
        for copy in copies:
            out = fn(copy)
        return out

    return run


def _no_sync(_: Any) -> None:
    return None


def forward_cases(x: jax.Array, host: np.ndarray | None, device: str | None) -> dict[str, Case]:
    """The forward candidates on input ``x`` (and its numpy copy ``host``)."""
    scale_donated = jax.jit(_scale, donate_argnums=0)
    jax_nn_donated = jax.jit(jax.nn.relu6, donate_argnums=0)
    cases = {
        "scale": _calls_case(jax.jit(_scale), x),
        "jax.nn": _calls_case(jax.nn.relu6, x),
        "jrelu6": _calls_case(jrelu6.relu6, x),
        "jit(jrelu6)": _calls_case(_JIT_RELU6, x),
        "scale donated": Case(_fresh_copies(x), _donating_run(scale_donated)),
        "jax.nn donated": Case(_fresh_copies(x), _donating_run(jax_nn_donated)),
        "jrelu6 inplace": Case(_fresh_copies(x), _donating_run(jrelu6.relu6_inplace)),
    }
    if host is not None:
        a = host.copy()

        def numpy_inplace(calls):
            for _ in range(calls):
                np.clip(a, 0, 6, out=a)

        cases["numpy inplace"] = Case(lambda calls: calls, numpy_inplace, _no_sync)
    if device is not None:
        t = _to_torch(x, device)
        relu6 = torch.nn.functional.relu6
        sync = _harness.torch_sync(device)

        def torch_out(calls):
            out = None
            for _ in range(calls):
                out = relu6(t)
            return out

        def torch_inplace(calls):
            for _ in range(calls):
                relu6(t, inplace=True)

        cases["torch"] = Case(lambda calls: calls, torch_out, sync)
        cases["torch inplace"] = Case(lambda calls: calls, torch_inplace, sync)
    return cases


def _calls_case(fn: Callable, *args: Any) -> Case:
    repeat = _repeat_jax(fn, *args)
    return Case(lambda calls: calls, repeat)


def backward_cases(x: jax.Array, g: jax.Array, device: str | None) -> dict[str, Case]:
    """The forward + backward candidates: output and input gradient for cotangent ``g``."""
    cases = {
        "scale": _calls_case(_vjp_of(_scale), x, g),
        "jax.nn": _calls_case(_vjp_of(jax.nn.relu6), x, g),
        "jrelu6": _calls_case(_vjp_of(jrelu6.relu6), x, g),
    }
    if device is not None:
        t = _to_torch(x, device).requires_grad_(True)
        tg = _to_torch(g, device)
        relu6 = torch.nn.functional.relu6

        def torch_both(calls):
            out = None
            for _ in range(calls):
                t.grad = None
                y = relu6(t)
                y.backward(tg)
                out = (y, t.grad)
            return out

        cases["torch"] = Case(lambda calls: calls, torch_both, _harness.torch_sync(device))
    return cases


def _to_torch(x: jax.Array, device: str):
    """A torch copy of ``x`` (bfloat16 travels as its bits: numpy has no bfloat16)."""
    if x.dtype == jnp.bfloat16:
        bits = np.asarray(jax.lax.bitcast_convert_type(x, jnp.int16))
        t = torch.from_numpy(bits.copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.array(x))
    return t.to(device)


def _calls_per_sample(log2_size: int, quick: bool) -> int:
    """Enough calls that one sample of a small array is not just timer noise."""
    target = 18 if quick else 20
    return max(1, 2 ** max(0, target - log2_size))


def measure(
    *, sizes: tuple[int, ...], dtypes: tuple[str, ...], modes: tuple[str, ...],
    repeats: int, warmup: int, quick: bool, use_torch: bool,
) -> list[dict[str, Any]]:
    """Runs every (mode, dtype, size) point; returns one record per point."""
    backend = jax.default_backend()
    device = _harness.torch_device() if use_torch else None
    rng = np.random.default_rng(0)
    records = []
    for dtype_name in dtypes:
        dtype = jnp.dtype(dtype_name)
        for log2_size in sizes:
            n = 2 ** log2_size
            data = rng.standard_normal(n, dtype=np.float32) * 4 + 1
            x = jnp.asarray(data, dtype)
            g = jnp.asarray(rng.standard_normal(n, dtype=np.float32), dtype)
            calls = _calls_per_sample(log2_size, quick)
            for mode in modes:
                if mode == _FORWARD:
                    host = data.copy() if backend == "cpu" and dtype == jnp.float32 else None
                    cases = forward_cases(x, host, device)
                    arrays_moved = 2
                else:
                    cases = backward_cases(x, g, device)
                    arrays_moved = 4
                times = _harness.time_interleaved(
                    cases, repeats=repeats, warmup=warmup, calls_per_sample=calls)
                nbytes = arrays_moved * n * dtype.itemsize
                medians = {name: _harness.median(t) for name, t in times.items()}
                records.append({
                    "mode": mode, "dtype": dtype_name, "log2_size": log2_size, "size": n,
                    "bytes_per_call": nbytes, "calls_per_sample": calls,
                    "median_s": medians,
                    "gb_per_s": {name: nbytes / t / 1e9 for name, t in medians.items()},
                    "ratios": _ratios(mode, medians),
                })
                del cases
            del x, g
    return records


def _ratios(mode: str, t: dict[str, float]) -> dict[str, float | None]:
    """Speed ratios (> 1 means the first named is faster), from median times."""
    r = _harness.ratio
    ratios = {
        "jrelu6_vs_jax.nn": r(t.get("jax.nn"), t.get("jrelu6")),
        "jrelu6_vs_scale": r(t.get("scale"), t.get("jrelu6")),
        "jrelu6_vs_torch": r(t.get("torch"), t.get("jrelu6")),
    }
    if mode == _FORWARD:
        ratios.update({
            "inplace_vs_numpy_inplace": r(t.get("numpy inplace"), t.get("jrelu6 inplace")),
            "inplace_vs_torch_inplace": r(t.get("torch inplace"), t.get("jrelu6 inplace")),
            "inplace_vs_scale_donated": r(t.get("scale donated"), t.get("jrelu6 inplace")),
            "inplace_vs_jax.nn_donated": r(t.get("jax.nn donated"), t.get("jrelu6 inplace")),
        })
    return ratios


def goals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The two standalone goals (docs/performance.md, "Where we stand") on arrays >= 2^22 elements.

    Each goal reports the worst ratio among the points it covers and whether
    that worst ratio meets the target.
    """
    big = [r for r in records if r["log2_size"] >= _GOAL_MIN_LOG2 and r["mode"] == _FORWARD]

    def worst(key: str, target: float) -> dict[str, Any]:
        values = [(r["ratios"][key], r["dtype"], r["log2_size"]) for r in big
                  if r["ratios"].get(key) is not None]
        if not values:
            return {"target": target, "worst": None, "met": None, "points": 0}
        value, dtype, log2_size = min(values)
        return {"target": target, "worst": value, "at": f"{dtype} 2^{log2_size}",
                "met": value >= target, "points": len(values)}

    return {
        "forward_bandwidth_vs_scale": worst("jrelu6_vs_scale", 0.9),
        "inplace_vs_numpy_inplace": worst("inplace_vs_numpy_inplace", 0.8),
    }


_ORDER = ("scale", "jax.nn", "jrelu6", "jit(jrelu6)", "scale donated", "jax.nn donated",
          "jrelu6 inplace", "numpy inplace", "torch", "torch inplace")
_SHORT = {
    "jrelu6_vs_jax.nn": "jrelu6/jax.nn",
    "jrelu6_vs_scale": "jrelu6/scale",
    "jrelu6_vs_torch": "jrelu6/torch",
    "inplace_vs_numpy_inplace": "inpl/numpy",
    "inplace_vs_torch_inplace": "inpl/torch_",
    "inplace_vs_scale_donated": "inpl/scale_don",
    "inplace_vs_jax.nn_donated": "inpl/jax.nn_don",
}


def print_tables(records: list[dict[str, Any]]) -> None:
    """One GB/s table and one ratio table per mode."""
    for mode in (_FORWARD, _BACKWARD):
        rows = [r for r in records if r["mode"] == mode]
        if not rows:
            continue
        names = [n for n in _ORDER if any(n in r["gb_per_s"] for r in rows)]
        flat = [{"point": f"{r['dtype']} 2^{r['log2_size']}", **r["gb_per_s"]} for r in rows]
        print(f"\n{mode}: GB/s (bytes read + written per call / median time)")
        print(_harness.format_table(flat, [("point", "dtype size", "")] +
                                    [(n, n, ".1f") for n in names]))
        keys = [k for k in _SHORT if any(r["ratios"].get(k) is not None for r in rows)]
        flat = [{"point": f"{r['dtype']} 2^{r['log2_size']}",
                 "ms": r["median_s"].get("jrelu6", float("nan")) * 1e3, **r["ratios"]}
                for r in rows]
        print(f"\n{mode}: speed ratios (> 1: the first named is faster)")
        print(_harness.format_table(flat, [("point", "dtype size", ""), ("ms", "jrelu6 ms", ".3f")]
                                    + [(k, _SHORT[k], ".2f") for k in keys]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--sizes", type=int, nargs="+", metavar="LOG2",
                        help=f"array sizes as powers of two (default {list(_FULL_SIZES)}, "
                             f"quick {list(_QUICK_SIZES)})")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"],
                        help="element types (default float32 bfloat16)")
    parser.add_argument("--modes", nargs="+", default=[_FORWARD, _BACKWARD],
                        choices=[_FORWARD, _BACKWARD], help="what to time (default both)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 9, quick 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    _harness.add_output_arguments(parser, "activation")
    args = parser.parse_args(argv)

    sizes = tuple(args.sizes or (_QUICK_SIZES if args.quick else _FULL_SIZES))
    if any(not 0 <= s <= 30 for s in sizes):
        parser.error(f"--sizes must be powers of two between 0 and 30, got {list(sizes)}")
    repeats = args.repeats or (7 if args.quick else 9)
    info, command = _harness.announce("relu6 standalone", "activation.py", argv)

    records = measure(sizes=sizes, dtypes=tuple(args.dtypes), modes=tuple(args.modes),
                      repeats=repeats, warmup=args.warmup, quick=args.quick,
                      use_torch=not args.no_torch)
    print_tables(records)
    summary = goals(records)
    print(f"\ngoals over arrays of >= 2^{_GOAL_MIN_LOG2} elements (worst point):")
    for name, goal in summary.items():
        if goal["worst"] is None:
            print(f"  {name}: not measured (no such point in this run)")
        else:
            verdict = "met" if goal["met"] else "MISSED"
            print(f"  {name}: {goal['worst']:.2f} at {goal['at']} "
                  f"(target >= {goal['target']}) {verdict}")
    path = _harness.write_json(args, "activation", {
        "benchmark": "activation", "command": command, "machine": info,
        "config": {"sizes": list(sizes), "dtypes": args.dtypes, "modes": args.modes,
                   "repeats": repeats, "warmup": args.warmup, "quick": args.quick},
        "results": records, "goals": summary,
    })
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
