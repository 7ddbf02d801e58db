"""Data-parallel training step on 1 and 2 host devices: the native kernels' partitioning at work.

Runs the benchmark MobileNetV2 training step (``_mobilenet_step``, the
small-input variant by default) with the batch split over N CPU devices
(``--xla_force_host_platform_device_count=N``, one fresh process per N), and
prints per N: the median step time, the all-gathers and all-reduces in the
compiled step, the batch each native depthwise call sees and, in bfloat16 (``--dtype``),
the rows each native 1x1 kernel-gradient call sums. Each device runs its own shard
through the native kernels (``custom_partitioning``), so the only collectives are the
gradients' all-reduces.

Host devices share the machine's cores: N devices on C cores is not N times
faster; the figure to read is the ratio, and the HLO counts.

    python benchmarks/data_parallel.py             # batch 64, 1 and 2 devices
    python benchmarks/data_parallel.py --dtype bfloat16
    python benchmarks/data_parallel.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence

import _harness as harness

NAME = "data_parallel"


def _child(devices: int, batch: int, size: int, repeats: int, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    import _mobilenet_step as mstep

    assert jax.device_count() == devices, jax.devices()
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    model = mstep.create_model(num_classes=10, small_input=True, dtype=jnp.dtype(dtype))
    images, labels = mstep.synthetic_batch(batch, size, 10)
    state = jax.device_put(mstep.create_state(model, images.shape[1:]),
                           NamedSharding(mesh, PartitionSpec()))
    images = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    labels = jax.device_put(labels, NamedSharding(mesh, PartitionSpec("data")))
    step = jax.jit(mstep.step_fn(model), donate_argnums=0)
    compiled = step.lower(state, images, labels).compile()
    hlo = compiled.as_text()
    calls = re.findall(r'= (?:f32|bf16)\[(\d+),[\d,]*\]\S* custom-call\([^)]*\), '
                       r'custom_call_target="jrelu6_depthwise_(?:forward|input_grad)"', hlo)
    rows = re.findall(r'custom_call_target="jrelu6_pointwise_kernel_grad", '
                      r'operand_layout_constraints=\{bf16\[(\d+),', hlo)
    state, loss = compiled(state, images, labels)
    jax.block_until_ready(loss)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, loss = compiled(state, images, labels)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    return {"devices": devices, "median_ms": 1e3 * float(np.median(times)),
            "all_gathers": hlo.count("all-gather("), "all_reduces": hlo.count("all-reduce("),
            "native_call_batches": sorted({int(b) for b in calls}),
            "pointwise_call_rows": sorted({int(r) for r in rows}) or None}  # None: none.


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--repeats", type=int, default=9, help="timed steps (default 9)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="compute dtype (default float32)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    harness.add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.repeats = 8, 16, 2
    if args.child:
        print("RESULT " + json.dumps(_child(args.child, args.batch, args.size, args.repeats,
                                            args.dtype)))
        return 0
    info, command = harness.announce("data-parallel training step", NAME + ".py", argv)
    rows = []
    for devices in (1, 2):
        env = {**os.environ, "XLA_FLAGS": " ".join(
            [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}"])}
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", str(devices), "--batch",
             str(args.batch), "--size", str(args.size), "--repeats", str(args.repeats),
             "--dtype", args.dtype],
            env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(done.stderr[-3000:])
            return 1
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    rows[1]["time_vs_1_device"] = rows[1]["median_ms"] / rows[0]["median_ms"]
    print(f"batch {args.batch} x {args.size}x{args.size}, small-input MobileNetV2, "
          f"{args.dtype}, {args.repeats} timed steps each")
    print(harness.format_table(rows, [
        ("devices", "devices", ""), ("median_ms", "median ms", ".1f"),
        ("time_vs_1_device", "time / 1 device", ".3f"), ("all_gathers", "all-gathers", ""),
        ("all_reduces", "all-reduces", ""), ("native_call_batches", "native call batch", ""),
        ("pointwise_call_rows", "1x1 kernel-grad rows", "")]))
    path = harness.write_json(args, NAME, {"machine": info, "command": command,
                                           "config": vars(args), "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
