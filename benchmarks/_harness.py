"""Shared plumbing for the benchmark scripts: timing, machine description, output.

Every benchmark here measures its candidates side by side in one process:
:func:`time_interleaved` warms each one up, then takes one sample of each in
turn (rotating the order every round, so no candidate always runs first) and
reports medians. Ratios between medians taken this way are much steadier than
absolute times on a shared machine. A sample can be slowed by the candidate run
just before it (caches it filled; PyTorch's OpenMP threads still spinning beside
XLA's): ``settle`` runs a candidate untimed right before its sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

try:  # Optional: the PyTorch columns appear only where torch is installed.
    import torch
except ImportError:  # pragma: no cover - exercised on machines without torch
    torch = None


@dataclasses.dataclass
class Case:
    """One candidate of a benchmark.

    Attributes:
      setup: builds the inputs of one sample outside the timed region (fresh
        buffers for a donating call, say); takes the number of calls per
        sample.
      run: does the timed work on what ``setup`` returned and returns
        something to wait for (arrays, a pytree, or ``None``).
      sync: waits for the work to finish; :func:`jax.block_until_ready` by
        default, ``torch.cuda.synchronize`` for PyTorch on a GPU.
    """

    setup: Callable[[int], Any]
    run: Callable[[Any], Any]
    sync: Callable[[Any], Any] = jax.block_until_ready


def time_interleaved(
    cases: dict[str, Case],
    *,
    repeats: int,
    warmup: int = 1,
    calls_per_sample: int = 1,
    settle: int = 0,
) -> dict[str, list[float]]:
    """Seconds per call of every case, sampled in interleaved rounds.

    Args:
      cases: the candidates, by name.
      repeats: timed rounds; each round takes one sample of every case.
      warmup: untimed rounds first (compilation, caches, allocator).
      calls_per_sample: how many calls one sample makes (``setup`` is told,
        so that it can prepare that many inputs); the sample's time is divided
        by it.
      settle: calls of a case run untimed right before each of its samples, so
        that the sample follows the case's own work, not another case's.

    Returns:
      For each case, its ``repeats`` timings in seconds per call.
    """
    if repeats < 1:
        raise ValueError(f"time_interleaved: repeats must be >= 1, got {repeats}")
    if settle < 0:
        raise ValueError(f"time_interleaved: settle must be >= 0, got {settle}")
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            case = cases[name]
            if settle and round_index >= warmup:
                case.sync(case.run(case.setup(settle)))
            state = case.setup(calls_per_sample)
            case.sync(state)
            start = time.perf_counter()
            out = case.run(state)
            case.sync(out)
            elapsed = time.perf_counter() - start
            del out, state
            if round_index >= warmup:
                samples[name].append(elapsed / calls_per_sample)
    return samples


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def torch_sync(device: str) -> Callable[[Any], None]:
    """A ``Case.sync`` for PyTorch on ``device`` (CPU work is synchronous)."""

    def sync(_: Any) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return sync


def torch_device() -> str | None:
    """The PyTorch device that matches JAX's default backend, or None.

    CPU against CPU, CUDA against a JAX GPU; None where torch is missing or
    has no matching device (a PyTorch-on-CPU figure next to a JAX-on-GPU one
    would compare machines, not libraries).
    """
    if torch is None:
        return None
    backend = jax.default_backend()
    if backend == "cpu":
        return "cpu"
    if backend == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip() and fields:  # the first processor's block is enough
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    return fields


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


# The CPU features that decide which kernels XLA and PyTorch can use (AVX-512, bfloat16
# and int8 dot products, AMX tiles): a "model name" alone ("AMD EPYC") says too little.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")


def cpu_details() -> dict[str, Any]:
    """The CPU's family, model and which of :data:`CPU_FLAGS` it has (Linux; empty
    elsewhere)."""
    fields = _cpuinfo()
    if not fields:
        return {}
    flags = set(fields.get("flags", "").split())
    return {"family": fields.get("cpu family"), "model": fields.get("model"),
            "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: device, CPU, versions, load."""
    device = jax.devices()[0]
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu_model(),
        "cpu_details": cpu_details(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "torch_threads": None if torch is None else torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        info["load_average_1min"] = None
    info["flax"] = _version("flax")
    return info


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None


def busy_warning(info: dict[str, Any]) -> str | None:
    """A warning when other jobs load the machine, else None.

    With more runnable threads than cores, PyTorch's OpenMP threads (which
    spin while they wait for each other by default) lose whole time slices:
    on a 2-core machine at load 4-6, PyTorch MobileNetV2 steps took from a few
    to tens of times longer than at load ~3, XLA's about 1.5x. Ratios are then
    still measured side by side, but say more about the load than the code.
    """
    load, cores = info.get("load_average_1min"), info.get("cpu_count")
    if load is None or not cores or load <= 0.75 * cores:
        return None
    hint = "" if info.get("omp_wait_policy") else (
        "; for steadier PyTorch CPU figures set OMP_WAIT_POLICY=PASSIVE")
    return (f"warning: the machine is busy (load {load} on {cores} cores): timings are noisy"
            f"{hint}")


def describe_machine(info: dict[str, Any]) -> str:
    """One line naming the machine and versions, for the top of a table."""
    torch_part = f", torch {info['torch']} ({info['torch_threads']} threads)" if info[
        "torch"] else ", torch not installed"
    pages = ("on" if "glibc.malloc.hugetlb=1" in (info.get("glibc_tunables") or "")
             else "off")
    details = info.get("cpu_details") or {}
    cpu = info["cpu"]
    if details:
        cpu += (f" (family {details['family']} model {details['model']}; "
                f"{' '.join(details['flags']) or 'no AVX2'})")
    return (
        f"{info['backend']} / {info['device']} x{info['device_count']}, CPU {cpu} "
        f"({info['cpu_count']} cores, load {info['load_average_1min']}), "
        f"jax {info['jax']}, jaxlib {info['jaxlib']}, numpy {info['numpy']}{torch_part}, "
        f"huge pages for malloc {pages}"
    )


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table.

    Args:
      rows: one dict per row.
      columns: ``(key, header, format)`` triples; a missing or None value
        prints as ``-``.

    Returns:
      The table, header and rule included, as one string.
    """
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, fmt in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, fmt))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for index, line in enumerate(cells):
        out.append("  ".join(c.rjust(w) if i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))))
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def add_output_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    """``--quick``, ``--json`` and ``--out`` as every benchmark takes them."""
    parser.add_argument(
        "--quick", action="store_true",
        help="small sizes and few repeats: a smoke run that takes well under a minute on a "
             "2-core CPU (what CI runs)")
    parser.add_argument(
        "--json", metavar="PATH",
        help=f"write the results here (default: OUT/{default_name}.json)")
    parser.add_argument(
        "--out", metavar="DIR", default="benchmarks/results",
        help="directory for the default JSON file (default: benchmarks/results)")


def write_json(args: argparse.Namespace, default_name: str, payload: dict[str, Any]) -> str:
    """Writes ``payload`` to ``--json`` or ``OUT/<default_name>.json``; returns the path."""
    path = args.json or os.path.join(args.out, f"{default_name}.json")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"write_json: cannot serialise {type(value).__name__}")


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that produced the figures, to quote next to them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"benchmarks/{script}", *argv])


def announce(title: str, script: str, argv: Sequence[str] | None) -> tuple[dict[str, Any], str]:
    """Prints what is measured, where, by which command (and a busy warning).

    Returns:
      ``(machine_info(), command_line(script, argv))`` for the JSON record.
    """
    info = machine_info()
    command = command_line(script, argv)
    print(f"{title} on {describe_machine(info)}")
    print(f"command: {command}")
    if warning := busy_warning(info):
        print(warning)
    return info, command


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def compiled_stats(fn: Callable, *args) -> dict[str, int]:
    """Fusion count, kernel count and memory of ``jax.jit(fn)`` compiled for ``args``."""
    compiled = jax.jit(fn).lower(*args).compile()
    hlo = compiled.as_text()
    entry = hlo[hlo.index("ENTRY"):]
    mem = compiled.memory_analysis()
    return {
        "fusions": len(re.findall(r"^\s*\S+ = \S+ fusion\(", entry, re.MULTILINE)),
        "entry_ops": len(re.findall(r"^\s*\S+ = ", entry, re.MULTILINE)),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
    }
