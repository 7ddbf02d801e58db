"""Training-step throughput: the example's MobileNetV2 vs PyTorch (eager and compiled).

Up to four candidates, each doing one full SGD-with-momentum training step
(forward in training mode, cross-entropy, backward, update, BatchNorm
statistics) on the same synthetic batch, timed side by side, interleaved, in
one process:

- ``jax (ours)``: the example's model (``mobilenet.models``) with
  ``depthwise="auto"``: shifted multiply-adds on CPU, the grouped convolution
  elsewhere; jitted, state donated.
- ``torch``: an equivalent hand-written PyTorch MobileNetV2 (torchvision's
  layer for layer, the same trainable parameter count; torchvision itself is
  not required), ``channels_last``, ``torch.optim.SGD`` with the same
  learning rate and momentum, all CPU threads (``--torch-threads``), eager;
  bfloat16 autocast when the JAX side computes in bfloat16.
- ``torch.compile``: the same model through ``torch.compile`` (inductor; on
  CPU it needs a C++ compiler). Where it fails, the output says why and the
  run goes on without it (``--no-torch-compile`` leaves it out).
- ``jax grouped`` (``--grouped``): the same Flax model as plain flax builds
  it, ``depthwise="grouped"`` and ``pointwise="conv"``; the naive baseline.
- ``jax (ours, float32)`` (``--float32-too``, with ``--dtype bfloat16``): our
  step in float32, so that one run says whether bfloat16 pays on this machine
  (goal: the bfloat16 step faster where the CPU has bfloat16 arithmetic).

Each sample is one step of one candidate; ``--steps-per-sample N`` makes it N
consecutive steps, as a training loop runs them. Strict alternation can cost the
step that follows the other framework's: on the 2-core EPYC, small-input batch 32,
our step took 248 ms with no PyTorch in the process, 293-299 ms alternating with
PyTorch's (478 ms with ``OMP_WAIT_POLICY=ACTIVE``, whose OpenMP threads spin between
steps) and 568 ms when each sample followed a 0.5 s pause; our step's median also
moved between 249 and 328 ms from run to run (its fastest steps: 245-263 ms).

``--variant`` picks the network: ``small-input`` (the stem and the first
strided block keep stride 1, the CIFAR variant; the default for 32x32) or
``standard`` (the reference strides). Sizes follow the backend otherwise:
float32, batch 128, 32x32 and 10 classes on CPU; 224x224, bfloat16, batch 256
and 1000 classes on GPU/TPU. Reports images/s and how many times faster ours
is than each other candidate (goals on CPU: > 1x PyTorch eager, target
1.25x; >= 3x the grouped baseline).

    python benchmarks/train_step.py --quick      # batch 16 on CPU, ~2-3 min on 2 cores
    python benchmarks/train_step.py              # small-input, batch 128
    python benchmarks/train_step.py --variant standard --batch 32
    python benchmarks/train_step.py --no-torch-compile --grouped --batch 64
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

import jax
import numpy as np

import _harness
import _mobilenet_step as mstep
from _harness import torch
from mobilenet.model_summary import count_params

OURS, GROUPED, TORCH, TORCH_COMPILE = "jax (ours)", "jax grouped", "torch", "torch.compile"
OURS_FLOAT32 = "jax (ours, float32)"

if torch is not None:
    from torch import nn as tnn

    class TorchConvBN(tnn.Sequential):
        """Conv (no bias) + BatchNorm2d [+ ReLU6], torchvision's Conv2dNormActivation."""

        def __init__(self, cin: int, cout: int, kernel: int, stride: int, *,
                     groups: int = 1, act: bool = True):
            layers = [tnn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                                 bias=False),
                      tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)]
            if act:
                layers.append(tnn.ReLU6(inplace=True))
            super().__init__(*layers)

    class TorchInvertedResidual(tnn.Module):
        """1x1 expand, 3x3 depthwise, 1x1 linear project, residual when shapes allow."""

        def __init__(self, cin: int, cout: int, stride: int, expansion: int):
            super().__init__()
            hidden = round(cin * expansion)
            layers = [TorchConvBN(cin, hidden, 1, 1)] if hidden != cin else []
            layers += [TorchConvBN(hidden, hidden, 3, stride, groups=hidden),
                       TorchConvBN(hidden, cout, 1, 1, act=False)]
            self.block = tnn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.block(x) if self.residual else self.block(x)

    class TorchMobileNetV2(tnn.Module):
        """torchvision's ``mobilenet_v2``, layer for layer, with the small-input option.

        ``small_input`` keeps stride 1 in the stem and the first strided block,
        exactly as ``mobilenet.models.MobileNetV2`` does.
        """

        def __init__(self, *, num_classes: int, width_multiplier: float = 1.0,
                     small_input: bool = False, dropout: float = 0.2):
            super().__init__()
            width = lambda c: mstep.models.make_divisible(c * width_multiplier)  # noqa: E731
            cin = width(32)
            layers = [TorchConvBN(3, cin, 3, 1 if small_input else 2)]
            first_strided = small_input
            for t, c, n, s in mstep.models.MobileNetV2.BLOCKS:
                for i in range(n):
                    stride = s if i == 0 else 1
                    if stride > 1 and first_strided:
                        stride, first_strided = 1, False
                    layers.append(TorchInvertedResidual(cin, width(c), stride, t))
                    cin = width(c)
            last = mstep.models.make_divisible(1280 * max(1.0, width_multiplier))
            layers.append(TorchConvBN(cin, last, 1, 1))
            self.features = tnn.Sequential(*layers)
            self.classifier = tnn.Sequential(tnn.Dropout(dropout), tnn.Linear(last, num_classes))

        def forward(self, x):
            x = self.features(x).mean(dim=(2, 3))
            return self.classifier(x)


def count_torch_params(model: Any) -> int:
    """Trainable parameters of a torch module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def torch_step(config: dict[str, Any], images: np.ndarray, labels: np.ndarray,
               device: str, *, compiled: bool = False) -> tuple[Any, dict[str, Any]]:
    """A PyTorch training step equivalent to ``_mobilenet_step``'s; returns it and notes.

    Args:
      config: the run's settings (``_mobilenet_step.resolve_config``).
      images: NHWC float32 images.
      labels: int labels.
      device: ``"cpu"`` or ``"cuda"``.
      compiled: run the model through ``torch.compile`` (inductor; forward
        and backward compiled, the optimizer eager). The first call, which
        compiles, is made here; if compiling fails the error is raised.

    Returns:
      ``(step, notes)``: ``step()`` runs one training step and returns the
      loss tensor; ``notes`` says how the model was run (compiled, threads,
      the first call's seconds).
    """
    notes: dict[str, Any] = {"device": device}
    if device == "cpu":
        torch.set_num_threads(config.get("torch_threads") or os.cpu_count() or 1)
        notes["threads"] = torch.get_num_threads()
    else:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)  # The same initial weights for the eager and the compiled model.
    model = TorchMobileNetV2(num_classes=config["num_classes"], width_multiplier=config["width"],
                             small_input=config["small_input"])
    model = model.to(device=device, memory_format=torch.channels_last).train()
    notes["params"] = count_torch_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=mstep.LEARNING_RATE, momentum=mstep.MOMENTUM)
    x = torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    bf16 = config["dtype"] == "bfloat16"
    notes["autocast_bfloat16"] = bf16
    notes["compiled"] = compiled
    forward = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        return loss.detach()

    if compiled:  # torch.compile compiles lazily, on the first call (and may fail there).
        start = time.perf_counter()
        step()
        notes["first_call_s"] = time.perf_counter() - start
    return step, notes


def torch_compile_failure(error: BaseException) -> str:
    """One line saying why ``torch.compile`` did not run (its error's first line)."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:300]}"


def jax_case(config: dict[str, Any], depthwise: str, images, labels, state: mstep.StepState
             ) -> tuple[_harness.Case, dict[str, Any]]:
    """A donated, jitted Flax training step as a benchmark case, compiled here.

    Every JAX candidate starts from a copy of the same ``state``: the depthwise
    implementation changes the computation, not the parameters.
    """
    # The baseline is the model as plain flax builds it: grouped nn.Conv for the
    # depthwise layers and nn.Conv for the 1x1 ones.
    pointwise = "conv" if depthwise == "grouped" else "matmul"
    model = mstep.models.create_model(config["model"], depthwise=depthwise, pointwise=pointwise,
                                      **mstep.model_kwargs(config))
    holder = [mstep.copy_state(state)]
    step = mstep.jitted_step(model)
    start = time.perf_counter()
    holder[0], loss = step(holder[0], images, labels)
    jax.block_until_ready((holder[0], loss))
    notes = {"depthwise": depthwise, "pointwise": pointwise,
             "first_call_s": time.perf_counter() - start,
             "params": count_params(holder[0].params)}

    def run(calls):
        for _ in range(calls):
            holder[0], loss = step(holder[0], images, labels)
        return holder[0], loss

    return _harness.Case(lambda calls: calls, run), notes


# ratio key -> (the candidate ours is compared with, rule, goal, target) on CPU.
_RATIOS = {
    "ours_vs_torch": (TORCH, ">", 1.0, 1.25),
    "ours_vs_torch_compile": (TORCH_COMPILE, None, None, None),
    "ours_vs_grouped": (GROUPED, ">=", 3.0, None),
    "ours_vs_float32": (OURS_FLOAT32, ">", 1.0, None),
}


def _goals(ratios: dict[str, float | None], backend: str) -> dict[str, dict[str, Any]]:
    """The goals: on CPU faster than PyTorch eager (target 1.25x) and >= 3x the
    grouped baseline; on a GPU at least PyTorch's images/s; a bfloat16 step faster
    than our float32 one. torch.compile is reported, with no goal."""
    on_cpu = backend == "cpu"
    goals = {}
    for key, value in ratios.items():
        _, rule, goal, target = _RATIOS[key]
        if not on_cpu and key != "ours_vs_float32":
            rule, goal, target = (">=", 1.0, None) if key == "ours_vs_torch" else (None,) * 3
        met = None
        if value is not None and goal is not None:
            met = value > goal if rule == ">" else value >= goal
        goals[key] = {"value": value, "rule": rule, "goal": goal, "target": target,
                      "met": met,
                      "target_met": None if value is None or target is None else value >= target}
    return goals


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    mstep.add_model_arguments(parser)
    parser.add_argument("--grouped", action="store_true",
                        help="also time the grouped-convolution baseline (plain flax; ~8x "
                             "slower than ours on CPU, so off by default)")
    parser.add_argument("--float32-too", action="store_true",
                        help="with --dtype bfloat16: also time our float32 step, side by side")
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="leave out torch.compile (inductor; compiling takes ~1-2 min "
                             "on 2 cores)")
    parser.add_argument("--steps-per-sample", type=int, default=1, metavar="N",
                        help="consecutive steps of one candidate per timed sample, as in a "
                             "training loop (default 1: strictly alternating steps)")
    parser.add_argument("--settle", type=int, default=1, metavar="N",
                        help="untimed steps of a candidate right before each of its samples, "
                             "so that a sample follows its own framework's step, as in "
                             "training, not the other one's (default 1; 0: none)")
    parser.add_argument("--torch-threads", type=int,
                        help="PyTorch CPU threads (default: every core). On a machine shared "
                             "with other jobs PyTorch's OpenMP threads slow down far more than "
                             "XLA's; compare the min times too")
    _harness.add_output_arguments(parser, "train_step")
    args = parser.parse_args(argv)
    config = mstep.resolve_config(parser, args)
    config["torch_threads"] = args.torch_threads
    if args.steps_per_sample < 1:
        parser.error(f"--steps-per-sample must be >= 1, got {args.steps_per_sample}")
    config["steps_per_sample"] = args.steps_per_sample
    if args.settle < 0:
        parser.error(f"--settle must be >= 0, got {args.settle}")
    config["settle"] = args.settle
    if args.float32_too and config["dtype"] == "float32":
        parser.error("--float32-too compares a bfloat16 step with the float32 one: "
                     "give --dtype bfloat16")
    return args, config


def _repeat(step: Any, calls: int) -> Any:
    """``calls`` consecutive calls of ``step``; the last one's result."""
    for _ in range(calls):
        out = step()
    return out


def _add_torch_cases(config: dict[str, Any], images: Any, labels: Any, device: str, *,
                     compiled: bool, cases: dict[str, _harness.Case],
                     notes: dict[str, Any]) -> None:
    """Adds PyTorch's eager step (and, with ``compiled``, torch.compile's) to ``cases``."""
    np_images, np_labels = np.asarray(images), np.asarray(labels)
    step, notes[TORCH] = torch_step(config, np_images, np_labels, device)
    cases[TORCH] = _harness.Case(lambda calls: calls, functools.partial(_repeat, step),
                                 _harness.torch_sync(device))
    if not compiled:
        return
    print("compiling the PyTorch step with torch.compile")
    try:
        step, notes[TORCH_COMPILE] = torch_step(config, np_images, np_labels, device,
                                                compiled=True)
        cases[TORCH_COMPILE] = _harness.Case(
            lambda calls: calls, functools.partial(_repeat, step), _harness.torch_sync(device))
    except Exception as error:  # noqa: BLE001 - any failure: report it and go on
        notes[TORCH_COMPILE] = {"compiled": False,
                                "error": torch_compile_failure(error)}
        print(f"(no torch.compile column: it failed here: "
              f"{notes[TORCH_COMPILE]['error']})")


def _cases(args: argparse.Namespace, config: dict[str, Any], images: Any, labels: Any
           ) -> tuple[dict[str, _harness.Case], dict[str, Any]]:
    """Every candidate's compiled step as a timing case, and notes on each."""
    cases: dict[str, _harness.Case] = {}
    notes: dict[str, Any] = {}
    start = time.perf_counter()
    state = mstep.create_state(
        mstep.models.create_model(config["model"], **mstep.model_kwargs(config)), images.shape[1:])
    print(f"initialised in {time.perf_counter() - start:.1f} s; compiling the steps")
    cases[OURS], notes[OURS] = jax_case(config, "auto", images, labels, state)
    if args.float32_too:
        cases[OURS_FLOAT32], notes[OURS_FLOAT32] = jax_case(
            {**config, "dtype": "float32"}, "auto", images, labels, state)
    if args.grouped:
        cases[GROUPED], notes[GROUPED] = jax_case(config, "grouped", images, labels, state)
    del state
    device = None if args.no_torch else _harness.torch_device()
    if device is not None and config["model"] == "mobilenet_v2":
        _add_torch_cases(config, images, labels, device, compiled=not args.no_torch_compile,
                         cases=cases, notes=notes)
    elif device is not None:
        print(f"(no PyTorch column: there is a PyTorch model for mobilenet_v2 only, "
              f"not {config['model']})")
    return cases, notes


def _print_goals(goals: dict[str, dict]) -> None:
    print()
    for key, goal in goals.items():
        other = _RATIOS[key][0]
        if goal["value"] is None:
            print(f"{key}: not measured in this run")
            continue
        line = f"{key}: {goal['value']:.2f}x (ours is x faster than {other}"
        if goal["goal"] is not None:
            line += (f"; goal {goal['rule']} {goal['goal']:g}x: "
                     f"{'met' if goal['met'] else 'MISSED'}")
        if goal["target"] is not None:
            line += (f"; target >= {goal['target']:g}x: "
                     f"{'met' if goal['target_met'] else 'not met'}")
        print(line + ")")


def main(argv: list[str] | None = None) -> int:
    args, config = _parse_args(argv)
    info, command = _harness.announce(f"{config['model']} training step", "train_step.py", argv)
    print(f"{config['variant']} variant, batch {config['batch']} x {config['size']}x"
          f"{config['size']}x3, {config['dtype']}, width {config['width']}, "
          f"{config['num_classes']} classes, SGD lr {mstep.LEARNING_RATE} "
          f"momentum {mstep.MOMENTUM}; {config['steps_per_sample']} step(s) per sample, "
          f"{config['settle']} untimed before each")

    images, labels = mstep.synthetic_batch(config["batch"], config["size"],
                                           config["num_classes"])
    cases, notes = _cases(args, config, images, labels)
    times = _harness.time_interleaved(cases, repeats=config["repeats"], warmup=config["warmup"],
                                      calls_per_sample=args.steps_per_sample,
                                      settle=args.settle)
    medians = {name: _harness.median(t) for name, t in times.items()}
    rows = [{"candidate": name, "ms": medians[name] * 1e3, "min_ms": min(times[name]) * 1e3,
             "img_s": config["batch"] / medians[name],
             "speedup": _harness.ratio(medians[name], medians[OURS]),
             "params": notes[name].get("params")} for name in cases]
    print()
    print(_harness.format_table(rows, [
        ("candidate", "candidate", ""), ("ms", "step ms (median)", ".1f"),
        ("min_ms", "min ms", ".1f"), ("img_s", "images/s", ".1f"),
        ("speedup", "ours is x faster", ".2f"), ("params", "params", ",d")]))
    fastest = {name: min(t) for name, t in times.items()}
    ratios = {key: _harness.ratio(medians.get(other), medians[OURS])
              for key, (other, *_) in _RATIOS.items()}
    ratios_of_min = {key: _harness.ratio(fastest.get(other), fastest[OURS])
                     for key, (other, *_) in _RATIOS.items()}
    goals = _goals(ratios, info["backend"])
    _print_goals(goals)
    shown = {k: round(v, 2) for k, v in ratios_of_min.items() if v is not None}
    print(f"the same from the fastest sample of each (less sensitive to other jobs): {shown}")
    for name, note in notes.items():
        print(f"  {name}: {note}")
    path = _harness.write_json(args, "train_step", {
        "benchmark": "train_step", "command": command, "machine": info, "config": config,
        "step_seconds": times, "median_step_seconds": medians,
        "images_per_second": {name: config["batch"] / t for name, t in medians.items()},
        "ratios": ratios, "ratios_of_min": ratios_of_min, "goals": goals, "notes": notes,
    })
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    # As the example does: huge pages for XLA's (and PyTorch's) large buffers.
    mstep.host_memory.reexec_with_huge_pages()
    sys.exit(main())
