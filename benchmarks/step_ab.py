"""Our training step in this checkout against another git revision, taking turns.

The example's MobileNetV2 step (the same as ``train_step.py``'s ``jax (ours)``)
is compiled in two worker processes, one importing ``examples/`` and
``benchmarks/`` from this checkout, one from a copy of ``--against`` (``git
archive``). The workers take turns, so that both see the machine in the same
state; on the shared 2-core VMs this project runs on, a step's speed drifts by 20%
over minutes, more than most changes, and consecutive processes do not see the same
machine. In its turn a worker runs ``--untimed`` steps (default 1), then the timed
one: a step that directly follows another process's is slowed by it (that process's
threads still spinning, the caches it filled), by up to a third on those VMs. More
than two workers take their turns in a shuffled order (:func:`turn_orders`).

Each worker can also run another dtype (``--dtypes``: float32 against bfloat16 in
one checkout, say). ``--torch`` adds, per dtype, a worker running
``train_step.py``'s PyTorch step (eager; bfloat16 autocast for bfloat16) in the same
turns: each framework in a process of its own, where ``train_step.py`` runs them in
one process, whose thread pools and allocator they then share. ``--xla-flags``
(repeatable; ``=`` before the flags) adds workers of this checkout with flags of
their own added to ``XLA_FLAGS``: an XLA:CPU option against the defaults. Prints the
medians and minimums and each candidate's ratio to the first (and, with ``--torch``,
ours against PyTorch's per dtype).

    python benchmarks/step_ab.py --against HEAD~3 --dtype bfloat16
    python benchmarks/step_ab.py --against 23f409d --dtypes float32,bfloat16
    python benchmarks/step_ab.py --torch --variant standard --batch 128
    python benchmarks/step_ab.py --xla-flags=--xla_cpu_prefer_vector_width=512
    python benchmarks/step_ab.py --quick

The revision must have ``benchmarks/_mobilenet_step.py`` with ``synthetic_batch``,
``create_model``, ``model_kwargs``, ``create_state`` and ``jitted_step`` (every one
since 2026-12-06).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from typing import Any

NAME = "step_ab"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(tree: str, config: dict[str, Any]) -> None:
    """Compiles the step from ``tree``'s sources; then, for each line on stdin, runs one
    step and prints its seconds (the protocol: ``ready <temp bytes>``, then one float
    per step)."""
    sys.path[:0] = [os.path.join(tree, "benchmarks"), os.path.join(tree, "examples")]
    import jax

    import _mobilenet_step as mstep

    images, labels = mstep.synthetic_batch(config["batch"], config["size"],
                                           config["num_classes"])
    if config.get("torch"):
        return _torch_worker(config, images, labels)
    model = mstep.create_model(**mstep.model_kwargs(config))
    state = mstep.create_state(model, images.shape[1:])
    compiled = mstep.jitted_step(model).lower(state, images, labels).compile()
    state, loss = compiled(state, images, labels)
    jax.block_until_ready((state, loss))
    print(f"ready {compiled.memory_analysis().temp_size_in_bytes}", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        state, loss = compiled(state, images, labels)
        jax.block_until_ready((state, loss))
        print(time.perf_counter() - start, flush=True)


def _torch_worker(config: dict[str, Any], images: Any, labels: Any) -> None:
    """:func:`_worker`'s protocol for ``train_step.torch_step`` (temp bytes: 0, unknown)."""
    import numpy as np

    import train_step

    step, _ = train_step.torch_step(config, np.asarray(images), np.asarray(labels), "cpu")
    step()  # The first step allocates; as for ours, it is not timed.
    print("ready 0", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        step().item()  # Waits for the step, as block_until_ready does for ours.
        print(time.perf_counter() - start, flush=True)


def _copy_of(revision: str, folder: str) -> str:
    """``revision``'s files, extracted under ``folder``; its path."""
    archive = os.path.join(folder, "tree.tar")
    subprocess.run(["git", "archive", "--format=tar", "-o", archive, revision], cwd=ROOT,
                   check=True, capture_output=True)
    tree = os.path.join(folder, "tree")
    with tarfile.open(archive) as tar:
        # The "data" filter where Python has it (3.10.12+, 3.11.4+); git's own archive else.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tree, **safe)
    return tree


def _start(tree: str, config: dict[str, Any], xla_flags: str = ""
           ) -> tuple[subprocess.Popen, int]:
    """A worker for ``tree`` and ``config`` (with ``xla_flags`` added to ``XLA_FLAGS``),
    compiled; with its temp bytes."""
    env = dict(os.environ)
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    worker = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", tree, json.dumps(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert worker.stdout is not None
    line = worker.stdout.readline().split()
    if not line or line[0] != "ready":
        raise RuntimeError(f"step_ab: the worker for {tree} failed (exit {worker.wait()})")
    return worker, int(line[1])


def turn_orders(names: Sequence[str], rounds: int, *, seed: int = 0) -> list[list[str]]:
    """The order of each round's turns: two workers alternate which goes first; more take
    a shuffled order each round (seeded), so that no worker always follows the same one.
    A step can be slowed by the one before it (threads of the other process still
    spinning, caches it evicted): with a fixed order such as a, b, c, d then d, c, b, a,
    b would always follow a or c, never d."""
    if len(names) <= 2:
        return [list(names) if i % 2 == 0 else list(names)[::-1] for i in range(rounds)]
    rng = random.Random(seed)
    return [rng.sample(list(names), len(names)) for _ in range(rounds)]


def _step(worker: subprocess.Popen) -> float:
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write("step\n")
    worker.stdin.flush()
    return float(worker.stdout.readline())


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[dict]]:
    import _harness as harness

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="git revision to compare with (none: only this "
                                          "checkout, one worker per dtype)")
    parser.add_argument("--variant", choices=["small-input", "standard"], default="small-input")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--dtypes", help="comma-separated dtypes, each a worker per tree "
                                         "(default: --dtype)")
    parser.add_argument("--repeats", type=int, default=21, help="steps per worker (default 21)")
    parser.add_argument("--torch", action="store_true",
                        help="a PyTorch worker per dtype too (eager; autocast for bfloat16)")
    parser.add_argument("--untimed", type=int, default=1, metavar="N",
                        help="steps each worker runs untimed at the start of its turn, so "
                             "that the timed one follows its own (default 1)")
    parser.add_argument("--xla-flags", action="append", default=[], metavar="FLAGS",
                        help="a worker per dtype of this checkout with FLAGS added to "
                             "XLA_FLAGS (repeatable: one candidate each)")
    harness.add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    dtypes = (args.dtypes or args.dtype).split(",")
    if not set(dtypes) <= {"float32", "bfloat16"}:
        parser.error(f"--dtypes: float32 and bfloat16 only, got {args.dtypes!r}")
    if args.against is None and len(dtypes) < 2 and not (args.torch or args.xla_flags):
        parser.error("nothing to compare: give --against, two --dtypes, --xla-flags or "
                     "--torch")
    if args.torch and importlib.util.find_spec("torch") is None:
        parser.error("--torch needs PyTorch (pip install torch); it is optional otherwise")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.untimed < 0:
        parser.error(f"--untimed must be >= 0, got {args.untimed}")
    small = args.variant == "small-input"
    base = {"batch": 2 if args.quick else args.batch, "size": 32, "num_classes": 10,
            "width": 0.35 if args.quick else 1.0, "small_input": small}
    configs = [{**base, "dtype": dtype} for dtype in dtypes]
    return args, configs


def main(argv: Sequence[str] | None = None) -> int:
    import _harness as harness

    args, configs = _parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    info, command = harness.announce(
        f"MobileNetV2 training step, this checkout vs {args.against or 'itself'}",
        NAME + ".py", argv)
    with tempfile.TemporaryDirectory() as folder:
        trees = {"new": ROOT}
        if args.against:
            trees = {"old": _copy_of(args.against, folder), "new": ROOT}
        workers: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for label, tree in trees.items():
                for config in configs:
                    workers[f"{label} {config['dtype']}"] = _start(tree, config)
            for flags in args.xla_flags:
                for config in configs:
                    workers[f"new {config['dtype']} {flags}"] = _start(ROOT, config, flags)
            if args.torch:
                for config in configs:
                    workers[f"torch {config['dtype']}"] = _start(ROOT, {**config, "torch": True})
            times: dict[str, list[float]] = {name: [] for name in workers}
            names = list(workers)
            for order in turn_orders(names, repeats):
                for name in order:
                    for _ in range(args.untimed):
                        _step(workers[name][0])
                    times[name].append(_step(workers[name][0]))
        finally:
            for worker, _ in workers.values():
                worker.kill()
                worker.wait()
    first = names[0]
    rows = [{"candidate": name, "ms": 1e3 * harness.median(t), "min_ms": 1e3 * min(t),
             "temp_mib": None if name.startswith("torch") else workers[name][1] / 2**20,
             "ratio": harness.median(times[first]) / harness.median(t),
             "min_ratio": min(times[first]) / min(t)} for name, t in times.items()]
    print(harness.format_table(rows, [
        ("candidate", "candidate", ""), ("ms", "median ms", ".1f"), ("min_ms", "min ms", ".1f"),
        ("temp_mib", "temp MiB", ".0f"), ("ratio", f"x faster than {first}", ".3f"),
        ("min_ratio", "the same, fastest steps", ".3f")]))
    versus = {}
    for config in configs if args.torch else ():
        ours, theirs = times[f"new {config['dtype']}"], times[f"torch {config['dtype']}"]
        versus[config["dtype"]] = {"median": harness.median(theirs) / harness.median(ours),
                                   "fastest": min(theirs) / min(ours)}
        print(f"ours vs torch, {config['dtype']}: {versus[config['dtype']]['median']:.2f}x "
              f"(fastest steps {versus[config['dtype']]['fastest']:.2f}x)")
    path = harness.write_json(args, NAME, {"machine": info, "command": command,
                                           "configs": configs, "step_seconds": times,
                                           "results": rows, "ours_vs_torch": versus})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], json.loads(sys.argv[3]))
    else:
        import _mobilenet_step

        _mobilenet_step.host_memory.reexec_with_huge_pages()
        sys.exit(main())
