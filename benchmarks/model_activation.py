"""relu6 inside a model: the MobileNetV2 training step with jrelu6 against jax.nn.relu6.

Builds the example's MobileNetV2 twice, identical but for the activation
(``activation="jrelu6"``: jrelu6.linen.ReLU6 modules; ``"jax.nn"``:
:func:`jax.nn.relu6`), jits one training step of each (forward in training
mode, cross-entropy, gradients, SGD with momentum, BatchNorm statistics) and
reports, side by side:

- the step time of both, interleaved, and their ratio (goal: <= 1.02);
- the compiled program's temp memory from ``memory_analysis()`` and its ratio
  (goal: <= 1.00);
- the number of fusions in the compiled HLO of both.

The executable that is timed is the one analysed (``_harness.compiled_stats``
compiles the same function with the same arguments, which JAX serves from its
cache). The step is not donated here, so that this holds; ``train_step.py``
times the donated step.

Sizes follow the backend: 32x32 (small-input variant), float32, batch 128 and
10 classes on CPU; 224x224, bfloat16, batch 256 and 1000 classes on GPU/TPU.

    python benchmarks/model_activation.py --quick     # batch 16 on CPU, ~1 min on 2 cores
    python benchmarks/model_activation.py             # batch 128 on CPU
    python benchmarks/model_activation.py --grad-at-zero 1 --grad-at-six 1
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import jax

import _harness
import _mobilenet_step as mstep
from _harness import compiled_stats

_ACTIVATIONS = ("jax.nn", "jrelu6")
def op_counts(fn, *args) -> dict[str, int]:
    """Element-wise ``select`` and ``compare`` ops in the whole compiled module.

    The derivative rule's extra work shows up here (fused, so it changes no
    fusion count): jrelu6 selects on ``x == 0``, ``x == 6`` and NaN inputs.
    Served from JAX's compilation cache after the step has run once.
    """
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return {op: len(re.findall(rf"= \S+ {op}\(", hlo)) for op in ("select", "compare")}


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    mstep.add_model_arguments(parser)
    parser.add_argument("--grad-at-zero", type=float, default=0.0, help="jrelu6's g0 (default 0)")
    parser.add_argument("--grad-at-six", type=float, default=0.0, help="jrelu6's g6 (default 0)")
    _harness.add_output_arguments(parser, "model_activation")
    args = parser.parse_args(argv)
    config = mstep.resolve_config(parser, args)
    config.update(grad_at_zero=args.grad_at_zero, grad_at_six=args.grad_at_six)
    return args, config


def _compile_cases(config: dict[str, Any], images: Any, labels: Any
                   ) -> tuple[dict[str, _harness.Case], dict[str, dict]]:
    """One compiled training step per activation, as timing cases, and their compiled stats."""
    cases, stats = {}, {}
    # One initial state for both: the activation has no parameters, so the two
    # models have the same variables (and the step is not donated: shareable).
    state = mstep.create_state(
        mstep.models.create_model(config["model"], **mstep.model_kwargs(config)), images.shape[1:])
    for activation in _ACTIVATIONS:
        extra = ({"grad_at_zero": config["grad_at_zero"], "grad_at_six": config["grad_at_six"]}
                 if activation == "jrelu6" else {})
        model = mstep.models.create_model(config["model"], activation=activation,
                                          **mstep.model_kwargs(config), **extra)
        fn = mstep.step_fn(model)
        step = jax.jit(fn)
        jax.block_until_ready(step(state, images, labels))  # compile once, here
        stats[activation] = compiled_stats(fn, state, images, labels)  # cached: same program
        stats[activation].update(op_counts(fn, state, images, labels))
        cases[activation] = _harness.Case(
            lambda calls: calls,
            lambda _, step=step, state=state: step(state, images, labels))
    return cases, stats


def _print_table(config: dict[str, Any], times: dict[str, list[float]],
                 medians: dict[str, float], stats: dict[str, dict]) -> None:
    rows = [{"activation": name, "ms": medians[name] * 1e3, "min_ms": min(times[name]) * 1e3,
             "img_s": config["batch"] / medians[name],
             "temp_mib": stats[name]["temp_bytes"] / 2**20, "fusions": stats[name]["fusions"],
             "entry_ops": stats[name]["entry_ops"], "select": stats[name]["select"],
             "compare": stats[name]["compare"]} for name in _ACTIVATIONS]
    print()
    print(_harness.format_table(rows, [
        ("activation", "activation", ""), ("ms", "step ms (median)", ".1f"),
        ("min_ms", "min ms", ".1f"), ("img_s", "images/s", ".1f"),
        ("temp_mib", "temp MiB", ".2f"), ("fusions", "fusions", "d"),
        ("entry_ops", "entry ops", "d"), ("select", "selects", "d"),
        ("compare", "compares", "d")]))


def main(argv: list[str] | None = None) -> int:
    args, config = _parse_args(argv)
    info, command = _harness.announce(f"relu6 in the {config['model']} training step",
                                      "model_activation.py", argv)
    print(f"batch {config['batch']} x {config['size']}x{config['size']}x3, {config['dtype']}, "
          f"width {config['width']}, {config['num_classes']} classes, depthwise=auto, "
          f"jrelu6 g0={config['grad_at_zero']} g6={config['grad_at_six']}")

    images, labels = mstep.synthetic_batch(config["batch"], config["size"],
                                           config["num_classes"])
    cases, stats = _compile_cases(config, images, labels)
    times = _harness.time_interleaved(cases, repeats=config["repeats"], warmup=config["warmup"])
    medians = {name: _harness.median(t) for name, t in times.items()}
    base, ours = "jax.nn", "jrelu6"
    paired = [a / b for a, b in zip(times[ours], times[base])]
    ratios = {
        "step_time": _harness.ratio(medians[ours], medians[base]),
        "step_time_paired": _harness.median(paired),
        "temp_memory": _harness.ratio(stats[ours]["temp_bytes"], stats[base]["temp_bytes"]),
        "fusions": _harness.ratio(stats[ours]["fusions"], stats[base]["fusions"]),
    }
    _print_table(config, times, medians, stats)
    goals = {
        "step_time_ratio": {"value": ratios["step_time"], "target": 1.02,
                            "met": ratios["step_time"] <= 1.02},
        "temp_memory_ratio": {"value": ratios["temp_memory"], "target": 1.00,
                              "met": ratios["temp_memory"] <= 1.00},
    }
    print(f"\nratios jrelu6 / jax.nn: step time {ratios['step_time']:.3f} "
          f"(median of the per-round ratios {ratios['step_time_paired']:.3f}, "
          f"range {min(paired):.3f}-{max(paired):.3f}) "
          f"(goal <= 1.02: {'met' if goals['step_time_ratio']['met'] else 'MISSED'}), "
          f"temp memory {ratios['temp_memory']:.3f} "
          f"(goal <= 1.00: {'met' if goals['temp_memory_ratio']['met'] else 'MISSED'}), "
          f"fusions {stats[ours]['fusions']} vs {stats[base]['fusions']}")
    path = _harness.write_json(args, "model_activation", {
        "benchmark": "model_activation", "command": command, "machine": info,
        "config": config, "step_seconds": times, "median_step_seconds": medians,
        "compiled": stats, "ratios": ratios, "goals": goals,
    })
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    # As the example does: huge pages for XLA's (and PyTorch's) large buffers.
    mstep.host_memory.reexec_with_huge_pages()
    sys.exit(main())
