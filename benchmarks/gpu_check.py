"""One shot on a lent accelerator: the device, the training step against PyTorch, the example.

Runs, each stage in a fresh subprocess with a time limit (so that the whole
takes under 8 minutes, and a stage that hangs or fails is reported and
skipped), and writes everything as one JSON file:

1. ``device``: what JAX sees (platform, device kind and count, versions,
   ``nvidia-smi`` where present), then one training step of the benchmark
   MobileNetV2 at the step's sizes: its compiled memory
   (``memory_analysis()``) and the device's peak memory after it
   (``memory_stats()["peak_bytes_in_use"]``; CPUs report none);
2. ``train_step``: ``benchmarks/train_step.py`` at 224x224 bfloat16 (the
   standard variant), against PyTorch where it is installed (autocast
   bfloat16), its own JSON embedded;
3. ``example``: the default example (``python examples/train.py``), its wall
   time and last metrics line.

The stages run with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that JAX does
not take 75% of the GPU up front (PyTorch shares the device in stage 2, and
the peak of stage 1 is then the step's own).

    python benchmarks/gpu_check.py               # on the lent GPU: under 8 minutes
    python benchmarks/gpu_check.py --dry-run     # anywhere (CPU too): tiny sizes, a
                                                 # check of the plumbing in ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "gpu_check"
# Seconds per stage: 90 + 240 + 150 = 8 minutes at the very most, less in practice.
LIMITS = {"device": 90, "train_step": 240, "example": 150}
FULL = {"size": 224, "batch": 128, "dtype": "bfloat16", "variant": "standard", "repeats": 5}
DRY = {"size": 32, "batch": 8, "dtype": "bfloat16", "variant": "standard", "repeats": 1}


def _device_stage(config: dict[str, Any]) -> dict[str, Any]:
    """Device facts, then one step's compiled and peak memory (runs in the child)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import jax

    import _mobilenet_step as mstep

    device = jax.devices()[0]
    info: dict[str, Any] = {
        "platform": device.platform, "device_kind": device.device_kind,
        "device_count": jax.device_count(), "jax": jax.__version__,
    }
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=False)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    model = mstep.models.create_model(
        "mobilenet_v2", num_classes=1000, width_multiplier=1.0,
        small_input=False, dtype=jax.numpy.dtype(config["dtype"]))
    images, labels = mstep.synthetic_batch(config["batch"], config["size"], 1000)
    state = mstep.create_state(model, images.shape[1:])
    step = mstep.jitted_step(model)
    compiled = step.lower(state, images, labels).compile()
    memory = compiled.memory_analysis()
    info["step_temp_bytes"] = int(memory.temp_size_in_bytes)
    info["step_argument_bytes"] = int(memory.argument_size_in_bytes)
    start = time.perf_counter()
    state, loss = compiled(state, images, labels)
    jax.block_until_ready((state, loss))
    info["first_step_s"] = time.perf_counter() - start
    stats = device.memory_stats() or {}
    info["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
    return info


def _run(stage: str, command: list[str], limit: float, env: dict[str, str]) -> dict[str, Any]:
    """Runs ``command``; its outcome, wall time and output tail (never raises)."""
    print(f"[{stage}] {' '.join(command)} (limit {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=limit, check=False)
        outcome = {"ok": done.returncode == 0, "returncode": done.returncode,
                   "stdout_tail": done.stdout[-4000:], "stderr_tail": done.stderr[-2000:]}
    except subprocess.TimeoutExpired as error:
        outcome = {"ok": False, "returncode": None, "error": f"timed out after {limit:.0f} s",
                   "stdout_tail": (error.stdout or b"")[-4000:].decode(errors="replace")
                   if isinstance(error.stdout, bytes) else (error.stdout or "")[-4000:]}
    outcome["wall_s"] = time.perf_counter() - start
    print(f"[{stage}] {'ok' if outcome['ok'] else 'FAILED'} in {outcome['wall_s']:.1f} s",
          flush=True)
    return outcome


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes and the tiny example, on whatever backend is here")
    parser.add_argument("--json", metavar="PATH",
                        help="where to write the results (default: benchmarks/results/"
                             f"{NAME}.json)")
    parser.add_argument("--stage", choices=["device"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _device(config: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Stage 1, in a child process: the device, one step's compiled and peak memory."""
    device = _run("device", [sys.executable, os.path.abspath(__file__), "--stage", "device",
                             "--config", json.dumps(config)], LIMITS["device"], env)
    lines = [line for line in device.get("stdout_tail", "").splitlines()
             if line.startswith("RESULT ")]
    device["result"] = json.loads(lines[-1][len("RESULT "):]) if lines else None
    return device


def _train_step(config: dict[str, Any], env: dict[str, str], scratch: str, *,
                dry_run: bool) -> dict[str, Any]:
    """Stage 2: benchmarks/train_step.py at the configured size, against PyTorch."""
    step_json = os.path.join(scratch, "train_step.json")
    command = [sys.executable, "benchmarks/train_step.py", "--size", str(config["size"]),
               "--batch", str(config["batch"]), "--dtype", config["dtype"],
               "--variant", config["variant"], "--repeats", str(config["repeats"]),
               "--no-torch-compile", "--json", step_json]
    if dry_run:
        command.append("--no-torch")
    step = _run("train_step", command, LIMITS["train_step"], env)
    if os.path.exists(step_json):
        with open(step_json) as f:
            step["result"] = json.load(f)
    return step


def _example(env: dict[str, str], scratch: str, *, dry_run: bool) -> dict[str, Any]:
    """Stage 3: the example's default command (the tiny model with --dry-run)."""
    workdir = os.path.join(scratch, "example")
    command = [sys.executable, "examples/train.py", "--workdir", workdir, "--no-progress",
               "--no-plot"]
    if dry_run:
        command += ["--model", "tiny", "--data", "synthetic", "--image-size", "16",
                    "--synthetic-examples", "64", "--batch-size", "16",
                    "--eval-batch-size", "32", "--steps", "3"]
    example = _run("example", command, LIMITS["example"], env)
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            lines = f.read().splitlines()
        example["last_metrics"] = json.loads(lines[-1]) if lines else None
    return example


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.stage == "device":  # The child of stage 1: prints one JSON line.
        print("RESULT " + json.dumps(_device_stage(json.loads(args.config))))
        return 0

    config = DRY if args.dry_run else FULL
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    results: dict[str, Any] = {"config": config, "dry_run": args.dry_run}
    with tempfile.TemporaryDirectory() as scratch:
        results["device"] = _device(config, env)
        results["train_step"] = _train_step(config, env, scratch, dry_run=args.dry_run)
        results["example"] = _example(env, scratch, dry_run=args.dry_run)
    results["total_s"] = time.perf_counter() - started

    path = args.json or os.path.join(ROOT, "benchmarks", "results", f"{NAME}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    info = (results["device"].get("result") or {})
    print(f"device: {info.get('device_kind')} x{info.get('device_count')}, peak "
          f"{info.get('peak_bytes_in_use')} bytes after one step; total "
          f"{results['total_s']:.0f} s")
    print(f"wrote {path}")
    failed = [s for s in ("device", "train_step", "example") if not results[s]["ok"]]
    if failed:
        print(f"failed stages: {', '.join(failed)} (see their output tails in the JSON)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
