"""Where the MobileNetV2 training step's time goes, by kind of work: ours and PyTorch's.

Ours: the jitted, donated step of ``train_step.py`` runs ``--repeats`` times
under :func:`jax.profiler.trace`. XLA:CPU's runtime records one event per
executed kernel ("thunk") of the compiled program, named after its HLO
instruction. Each kernel spreads its own work over the cores, and kernels that
do not depend on each other may also run at the same time (XLA:CPU's thunk
executor), so the kernels' times add up to more than the time some kernel runs;
both are printed, with the time none runs (the runtime between kernels). The
table's "wall" column divides the time some kernel runs among the kernels running
then (:func:`xla_wall_shares`): what each kind of work takes of the step.
Each kernel is mapped to a kind of work through the compiled HLO
(``compiled.as_text()``): what it contains (a ``dot``: the 1x1 convolutions,
the classifier, and the stem's product over its windows, counted as the stem; a
``convolution``: the stem as ``nn.Conv``, or a grouped depthwise one) or else
the layer its output belongs to (the ``op_name`` metadata JAX writes:
``.../block3/depthwise/conv/...``, ``.../bn/reduce_sum``, ``ReLU6`` ...), and
to forward, backward (``transpose(jvp(...))``) or the update
(everything outside the gradient: the optimizer). A kernel's time is the
median over the traced steps (robust to other jobs' time slices).

XLA fuses across layers, so a kind is "the kernels whose output belongs to
it": batch-norm *statistics* (the reductions) are their own kernels, but the
normalisation itself is fused into the activation that follows it and is
counted under elementwise. PyTorch's ``native_batch_norm`` computes both in one
op, counted under batch norm.

PyTorch: the eager step (``train_step.torch_step``) under
``torch.profiler``; each op's self time goes to the kind of its outermost ATen
op (convolutions split by their weight's shape: ``(C, 1, 3, 3)`` depthwise,
``(O, I, 1, 1)`` 1x1, the 3-channel stem), to backward inside the autograd
engine, to the update inside ``Optimizer.step`` / ``zero_grad``.

Also printed: the step's FLOPs and bytes from XLA's ``cost_analysis()`` and
the GFLOP/s and GB/s achieved (by ours and by PyTorch, both for the same
FLOPs), next to what this machine reaches on a large float32 matrix product
and a large streaming elementwise pass (measured here, same threads).

    python benchmarks/step_breakdown.py --quick                 # batch 8, ~1-2 min on 2 cores
    python benchmarks/step_breakdown.py                         # small-input, batch 128
    python benchmarks/step_breakdown.py --variant standard --batch 32
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import _harness
import _mobilenet_step as mstep

KINDS = (
    "depthwise conv",
    "1x1 conv / matmul",
    "stem conv",
    "other conv",
    "batch norm",
    "elementwise",
    "copies / transposes",
    "other",
)
PHASES = ("forward", "backward", "update")


# --- ours: the compiled HLO ----------------------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\(")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_GROUPS = re.compile(r"feature_group_count=(\d+)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_MOVES = {"copy", "transpose", "bitcast", "parameter", "reshape", "broadcast", "slice",
          "concatenate", "pad", "tuple", "get-tuple-element", "constant", "copy-start",
          "copy-done", "dynamic-slice", "dynamic-update-slice"}


class Instruction:
    """One HLO instruction: its opcode, the computation it calls, its metadata, a custom
    call's target."""

    def __init__(self, line: str, opcode: str):
        self.opcode = opcode
        calls = _CALLS.search(line)
        self.calls = calls.group(1) if calls else None
        op_name = _OP_NAME.search(line)
        self.op_name = op_name.group(1) if op_name else ""
        groups = _GROUPS.search(line)
        self.groups = int(groups.group(1)) if groups else 1
        target = _TARGET.search(line)
        self.target = target.group(1) if target else ""


def parse_hlo(text: str) -> tuple[dict[str, dict[str, Instruction]], str]:
    """``({computation: {instruction: Instruction}}, entry computation name)``."""
    computations: dict[str, dict[str, Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match:
                current = computations.setdefault(match.group(2), {})
                if match.group(1):
                    entry = match.group(2)
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            current[match.group(1)] = Instruction(line, match.group(2))
    return computations, entry


def _fused(computations, instruction: Instruction) -> list[Instruction]:
    """The instruction and everything inside the computations it calls, recursively."""
    out, todo = [instruction], [instruction.calls]
    while todo:
        name = todo.pop()
        for inner in computations.get(name, {}).values() if name else ():
            out.append(inner)
            todo.append(inner.calls)
    return out


def phase_of_op_name(op_name: str) -> str:
    """forward / backward / update from JAX's ``op_name`` (``transpose(jvp(...))``...)."""
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "update"


def classify_xla(computations, instruction: Instruction) -> str:
    """The kind of work of one executed kernel (see the module docstring)."""
    inside = _fused(computations, instruction)
    opcodes = {i.opcode for i in inside}
    path = instruction.op_name
    if "convolution" in opcodes:
        conv = next(i for i in inside if i.opcode == "convolution")
        if conv.groups > 1 or "/depthwise/" in conv.op_name:
            return "depthwise conv"
        if "/stem/" in conv.op_name:
            return "stem conv"
        return "other conv"
    if "dot" in opcodes or instruction.target == "jrelu6_pointwise_kernel_grad":
        return "stem conv" if "/stem/conv" in path else "1x1 conv / matmul"
    if "/depthwise/conv" in path:
        return "depthwise conv"
    if "/stem/conv" in path:
        return "stem conv"
    if "/bn/" in path or path.endswith("/bn"):
        return "batch norm"
    if opcodes <= _MOVES and opcodes & {"copy", "transpose", "copy-start"}:
        return "copies / transposes"
    if phase_of_op_name(path) == "update":
        return "elementwise" if path else "other"
    return "elementwise"


def xla_kernel_events(trace_dir: str, entry_names: Iterable[str]
                      ) -> list[list[tuple[str, int, int]]]:
    """Each traced step's entry-computation kernels as ``(name, start ns, end ns)``.

    Events are grouped by the run they belong to (the ``run_id`` XLA attaches);
    kernels nested in a ``while`` or ``call`` are inside their caller's time
    and are not listed again.
    """
    from jax.profiler import ProfileData  # jaxlib's xplane reader

    entry_names = set(entry_names)
    per_run: dict[Any, list[tuple[str, int, int]]] = collections.defaultdict(list)
    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"step_breakdown: no trace written under {trace_dir}")
    for path in files:
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    name = stats.get("hlo_op")
                    if name in entry_names:
                        per_run[stats.get("run_id")].append(
                            (name, event.start_ns, event.start_ns + event.duration_ns))
    return list(per_run.values())


def _by_kernel(totals: list[collections.Counter]) -> dict[str, list[float]]:
    """``{kernel: [its value in each traced step]}`` from one counter per step."""
    names = set().union(*totals) if totals else set()
    return {name: [total.get(name, 0.0) for total in totals] for name in names}


def xla_kernel_times(runs: list[list[tuple[str, int, int]]]) -> dict[str, list[float]]:
    """Seconds of every kernel, one value per traced step (0 where a step lacks it)."""
    totals = [collections.Counter() for _ in runs]
    for total, events in zip(totals, runs):
        for name, start, end in events:
            total[name] += (end - start) * 1e-9
    return _by_kernel(totals)


def _step_wall_shares(events: list[tuple[str, int, int]]) -> collections.Counter:
    """One step's :func:`xla_wall_shares`: a sweep over the kernels' starts and ends."""
    total = collections.Counter({name: 0.0 for name, _, _ in events})
    edges = sorted([(start, 1, i) for i, (_, start, _) in enumerate(events)]
                   + [(end, -1, i) for i, (_, _, end) in enumerate(events)])
    running: set[int] = set()
    last = None
    for time_ns, change, index in edges:
        if running and last is not None and time_ns > last:
            share = (time_ns - last) * 1e-9 / len(running)
            for i in running:
                total[events[i][0]] += share
        last = time_ns
        if change > 0:
            running.add(index)
        else:
            running.discard(index)
    return total


def xla_wall_shares(runs: list[list[tuple[str, int, int]]]) -> dict[str, list[float]]:
    """Each kernel's share of the time some kernel runs, one value per traced step.

    Every stretch of time is divided equally among the kernels running in it: a kernel
    that ran 10 ms alone gets 10 ms, one that ran 10 ms beside another the whole time
    gets 5 ms. The shares of a step add up to its ``busy_seconds``
    (:func:`xla_timeline`), where the kernels' own times add up to ``kernel_seconds``:
    a kind of work whose kernels mostly run beside others takes less of the step than
    its kernel time says.
    """
    return _by_kernel([_step_wall_shares(events) for events in runs])


def xla_timeline(runs: list[list[tuple[str, int, int]]]) -> dict[str, float]:
    """Medians over the traced steps of the span from the first kernel's start to the last
    one's end, the kernels' summed time (``kernel_seconds``), the time at least one
    kernel runs (``busy_seconds``: the step's wall shares summed) and the rest
    (``idle_seconds``: the runtime between kernels). XLA:CPU runs independent kernels
    concurrently, so ``kernel_seconds`` can exceed ``busy_seconds``: their ratio is the
    mean number of kernels running."""
    spans, sums, busy = [], [], []
    for events in runs:
        spans.append((max(end for _, _, end in events) - min(start for _, start, _ in events))
                     * 1e-9)
        sums.append(sum(end - start for _, start, end in events) * 1e-9)
        busy.append(sum(_step_wall_shares(events).values()))
    span, busy_s = statistics.median(spans), statistics.median(busy)
    return {"span_seconds": span, "kernel_seconds": statistics.median(sums),
            "busy_seconds": busy_s, "idle_seconds": span - busy_s}


def _xla_cost(config: dict[str, Any], compiled, state, images, labels) -> dict[str, float]:
    """XLA's cost analysis of the step, counted with the depthwise convolutions as XLA ops.

    XLA counts no FLOPs or bytes for a custom call (the native depthwise kernels), so
    the step with ``depthwise="shifted"`` (the same arithmetic in XLA ops) is
    compiled for the count when the timed step uses them.
    """
    if 'custom_call_target="jrelu6_depthwise' in compiled.as_text():
        model = mstep.models.create_model(
            config["model"], **{**mstep.model_kwargs(config), "depthwise": "shifted"})
        compiled = mstep.jitted_step(model).lower(state, images, labels).compile()
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def jax_breakdown(config: dict[str, Any], images, labels, *, steps: int) -> dict[str, Any]:
    """Ours: step time, cost analysis and the time per kind, phase and kernel."""
    model = mstep.models.create_model(config["model"], **mstep.model_kwargs(config))
    state = mstep.create_state(model, images.shape[1:])
    step = mstep.jitted_step(model)
    start = time.perf_counter()
    compiled = step.lower(state, images, labels).compile()
    compile_s = time.perf_counter() - start
    cost = _xla_cost(config, compiled, state, images, labels)
    computations, entry = parse_hlo(compiled.as_text())

    for _ in range(2):  # warm up
        state, loss = compiled(state, images, labels)
    jax.block_until_ready((state, loss))
    wall = []
    for _ in range(steps):  # untraced step times
        t0 = time.perf_counter()
        state, loss = compiled(state, images, labels)
        jax.block_until_ready((state, loss))
        wall.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                state, loss = compiled(state, images, labels)
                jax.block_until_ready((state, loss))
        runs = xla_kernel_events(trace_dir, computations[entry])
    kernel_times, timeline = xla_kernel_times(runs), xla_timeline(runs)
    shares = xla_wall_shares(runs)

    kernels = []
    for name, times in kernel_times.items():
        instruction = computations[entry][name]
        kernels.append({
            "kernel": name, "kind": classify_xla(computations, instruction),
            "phase": phase_of_op_name(instruction.op_name),
            "seconds": statistics.median(times),
            "wall_seconds": statistics.median(shares[name]), "op_name": instruction.op_name})
    kernels.sort(key=lambda k: -k["seconds"])
    return {"step_seconds": statistics.median(wall), "step_seconds_all": wall,
            "compile_seconds": compile_s, "flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "table": _tabulate((k["kind"], k["phase"], k["seconds"]) for k in kernels),
            "wall_table": _tabulate((k["kind"], k["phase"], k["wall_seconds"])
                                    for k in kernels),
            "kernels": kernels, "timeline": timeline}


def _tabulate(items: Iterable[tuple[str, str, float]]) -> dict[str, dict[str, float]]:
    """``{kind: {phase: seconds}}`` from ``(kind, phase, seconds)`` items."""
    table = {kind: dict.fromkeys(PHASES, 0.0) for kind in KINDS}
    for kind, phase, seconds in items:
        table[kind][phase] += seconds
    return table


# --- PyTorch: the profiler ----------------------------------------------------------


def _conv_kind(weight_shape: list[int]) -> str:
    if len(weight_shape) == 4 and weight_shape[1] == 1 and weight_shape[2:] != [1, 1]:
        return "depthwise conv"
    if len(weight_shape) == 4 and weight_shape[2:] == [1, 1]:
        return "1x1 conv / matmul"
    if len(weight_shape) == 4 and weight_shape[1] == 3:
        return "stem conv"
    return "other conv"


_TORCH_KINDS = {
    "aten::native_batch_norm": "batch norm", "aten::native_batch_norm_backward": "batch norm",
    "aten::batch_norm": "batch norm", "aten::_batch_norm_impl_index": "batch norm",
    "aten::_native_batch_norm_legit": "batch norm", "aten::_batch_norm_with_update": "batch norm",
    "aten::batch_norm_backward": "batch norm", "aten::linear": "1x1 conv / matmul",
    "aten::addmm": "1x1 conv / matmul", "aten::mm": "1x1 conv / matmul",
    "aten::copy_": "copies / transposes", "aten::contiguous": "copies / transposes",
    "aten::clone": "copies / transposes", "aten::to": "copies / transposes",
    "aten::_to_copy": "copies / transposes",
}


def classify_torch(event: Any) -> tuple[str, str]:
    """``(kind, phase)`` of one profiler event, from its outermost ATen op."""
    chain, node = [], event
    while node is not None:
        chain.append(node)
        node = node.cpu_parent
    names = [n.name for n in chain]
    if any(n.startswith("Optimizer.") for n in names):
        phase = "update"
    elif any(n.startswith("autograd::engine") for n in names):
        phase = "backward"
    else:
        phase = "forward"
    aten = [n for n in chain if n.name.startswith("aten::")]
    if not aten:
        return "other", phase
    outer = aten[-1]
    if outer.name in ("aten::conv2d", "aten::convolution", "aten::convolution_backward"):
        shapes = outer.input_shapes or []
        index = 2 if outer.name == "aten::convolution_backward" else 1
        return (_conv_kind(list(shapes[index])) if len(shapes) > index else "other conv"), phase
    if outer.name in _TORCH_KINDS:
        return _TORCH_KINDS[outer.name], phase
    return "elementwise", phase


def torch_breakdown(config: dict[str, Any], images, labels, *, steps: int) -> dict[str, Any]:
    """PyTorch eager: step time and the time per kind and phase (profiler self times)."""
    import train_step  # the PyTorch model lives there

    step, notes = train_step.torch_step(config, np.asarray(images), np.asarray(labels), "cpu")
    for _ in range(2):
        step()
    wall = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        wall.append(time.perf_counter() - t0)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    items = []
    for event in prof.events():
        kind, phase = classify_torch(event)
        items.append((kind, phase, event.self_cpu_time_total * 1e-6 / steps))
    return {"step_seconds": statistics.median(wall), "step_seconds_all": wall,
            "threads": notes.get("threads"), "table": _tabulate(items)}


# --- what the machine can do ------------------------------------------------------------


def machine_peaks(*, quick: bool) -> dict[str, float]:
    """GFLOP/s of a large float32 matmul and GB/s of a large elementwise pass, with XLA."""
    n = 1024 if quick else 2048
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    elems = (8 if quick else 64) * 2**20 // 4
    v = jnp.ones((elems,), jnp.float32)
    scale = jax.jit(lambda x: x * 1.0001 + 1.0)

    def best(fn, arg, repeats=5):
        jax.block_until_ready(fn(arg))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(arg))
            times.append(time.perf_counter() - t0)
        return min(times)

    return {"matmul_gflop_s": 2 * n**3 / best(matmul, a) / 1e9,
            "stream_gb_s": 2 * elems * 4 / best(scale, v) / 1e9,
            "matmul_n": n, "stream_mib": elems * 4 / 2**20}


# --- output -------------------------------------------------------------------------------


def markdown_table(ours: dict[str, Any], theirs: dict[str, Any] | None) -> str:
    """Kinds as rows: ours forward/backward/update/total kernel ms, share and wall ms
    (:func:`xla_wall_shares`), PyTorch's kernel ms."""
    header = ["kind of work", "ours fwd ms", "ours bwd ms", "ours update ms", "ours ms",
              "ours %", "ours wall ms"]
    if theirs:
        header += ["torch fwd ms", "torch bwd ms", "torch update ms", "torch ms", "torch %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(result):
        table = result["table"]
        total = sum(sum(p.values()) for p in table.values())
        return total, {kind: [table[kind][p] * 1e3 for p in PHASES] for kind in KINDS}

    ours_total, ours_cells = cells(ours)
    theirs_total, theirs_cells = cells(theirs) if theirs else (0.0, {})
    for kind in KINDS:
        row = ours_cells[kind]
        if sum(row) == 0 and (not theirs or sum(theirs_cells[kind]) == 0):
            continue
        wall = sum(ours["wall_table"][kind].values()) * 1e3
        values = [f"{v:.1f}" for v in row] + [f"{sum(row):.1f}",
                                              f"{100 * sum(row) / 1e3 / ours_total:.0f}",
                                              f"{wall:.1f}"]
        if theirs:
            t = theirs_cells[kind]
            values += [f"{v:.1f}" for v in t] + [f"{sum(t):.1f}",
                                                 f"{100 * sum(t) / 1e3 / theirs_total:.0f}"]
        lines.append(f"| {kind} | " + " | ".join(values) + " |")
    busy = sum(sum(p.values()) for p in ours["wall_table"].values()) * 1e3
    total = ["**in kernels**", "", "", "", f"**{ours_total * 1e3:.1f}**", "100",
             f"**{busy:.1f}**"]
    step = ["**step (untraced)**", "", "", "", f"**{ours['step_seconds'] * 1e3:.1f}**", "",
            ""]
    if theirs:
        total += ["", "", "", f"**{theirs_total * 1e3:.1f}**", "100"]
        step += ["", "", "", f"**{theirs['step_seconds'] * 1e3:.1f}**", ""]
    lines.append("| " + " | ".join(total) + " |")
    lines.append("| " + " | ".join(step) + " |")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    mstep.add_model_arguments(parser)
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch")
    parser.add_argument("--torch-threads", type=int,
                        help="PyTorch CPU threads (default: every core)")
    parser.add_argument("--top", type=int, default=15,
                        help="print this many of our slowest kernels (default 15)")
    _harness.add_output_arguments(parser, "step_breakdown")
    args = parser.parse_args(argv)
    if args.quick and args.batch is None:
        args.batch = 8
    config = mstep.resolve_config(parser, args)
    config["torch_threads"] = args.torch_threads
    if config["model"] != "mobilenet_v2":
        args.no_torch = True
    return args, config


def _print_rates(ours: dict, theirs: dict | None, peaks: dict) -> dict[str, dict]:
    """Prints the achieved FLOP and byte rates beside this machine's peaks; returns them."""
    flops, nbytes = ours["flops"], ours["bytes_accessed"]
    achieved = {"ours": {"gflop_s": flops / ours["step_seconds"] / 1e9,
                         "gb_s": nbytes / ours["step_seconds"] / 1e9}}
    if theirs:
        achieved["torch"] = {"gflop_s": flops / theirs["step_seconds"] / 1e9}
    print(f"\nXLA cost analysis of the step: {flops / 1e9:.2f} GFLOP, "
          f"{nbytes / 1e9:.2f} GB accessed")
    line = (f"achieved: ours {achieved['ours']['gflop_s']:.1f} GFLOP/s and "
            f"{achieved['ours']['gb_s']:.1f} GB/s")
    if theirs:
        line += f"; PyTorch {achieved['torch']['gflop_s']:.1f} GFLOP/s (the same FLOPs)"
    print(line)
    print(f"this machine (XLA, same threads): {peaks['matmul_gflop_s']:.0f} GFLOP/s on a "
          f"{peaks['matmul_n']}^2 float32 matmul, {peaks['stream_gb_s']:.1f} GB/s streaming "
          f"{peaks['stream_mib']:.0f} MiB (read + write); the step's bytes alone take "
          f"{nbytes / 1e9 / peaks['stream_gb_s'] * 1e3:.0f} ms at that rate, its FLOPs "
          f"{flops / 1e9 / peaks['matmul_gflop_s'] * 1e3:.0f} ms at matmul speed")
    return achieved


def main(argv: list[str] | None = None) -> int:
    args, config = _parse_args(argv)
    steps = config["repeats"]

    info, command = _harness.announce(f"{config['model']} training step breakdown",
                                      "step_breakdown.py", argv)
    print(f"{config['variant']} variant, batch {config['batch']} x {config['size']}x"
          f"{config['size']}x3, {config['dtype']}, {config['num_classes']} classes, "
          f"{steps} traced steps")
    images, labels = mstep.synthetic_batch(config["batch"], config["size"],
                                           config["num_classes"])
    ours = jax_breakdown(config, images, labels, steps=steps)
    theirs = None
    if not args.no_torch and _harness.torch_device() == "cpu":
        theirs = torch_breakdown(config, images, labels, steps=steps)
    peaks = machine_peaks(quick=args.quick)

    print()
    print(markdown_table(ours, theirs))
    achieved = _print_rates(ours, theirs, peaks)
    t = ours["timeline"]
    print(f"\nour traced step: {t['span_seconds'] * 1e3:.1f} ms from the first kernel to the "
          f"last, {t['kernel_seconds'] * 1e3:.1f} ms of kernel time, at least one kernel "
          f"running for {t['busy_seconds'] * 1e3:.1f} ms "
          f"({t['kernel_seconds'] / t['busy_seconds']:.2f} at a time on average), none for "
          f"{t['idle_seconds'] * 1e3:.1f} ms")
    print(f"\nour {args.top} slowest kernels (median ms per step):")
    for k in ours["kernels"][:args.top]:
        print(f"  {k['seconds'] * 1e3:7.2f}  {k['kind']:<20} {k['phase']:<8} {k['kernel']:<32} "
              f"{k['op_name'][-90:]}")
    path = _harness.write_json(args, "step_breakdown", {
        "benchmark": "step_breakdown", "command": command, "machine": info, "config": config,
        "ours": ours, "torch": theirs, "achieved": achieved, "machine_peaks": peaks,
        "kinds": list(KINDS), "phases": list(PHASES),
    })
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    # As the example does: huge pages for XLA's (and PyTorch's) large buffers.
    mstep.host_memory.reexec_with_huge_pages()
    sys.exit(main())
