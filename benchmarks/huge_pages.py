"""The example's training step with and without huge pages for malloc (JRELU6_HUGE_PAGES).

``examples/train.py`` restarts itself once with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (``mobilenet/infra/host_memory.py``).
That setting is read by glibc when a process starts, so the two cases cannot
share a process: this script starts one child per sample, alternating with and
without the tunable (``--rounds`` of each), every child timing ``--steps`` of
the default configuration's real train step (the example's ``train.prepare``,
state and batches) after a warm-up, and reporting the median step time and the
minor page faults per step. It prints the median over the children of each case
and their ratio, with the CPU and the load average.

    python benchmarks/huge_pages.py              # the default run's model and batch
    python benchmarks/huge_pages.py --rounds 3 --steps 40
    # CIFAR-sized inputs, larger buffers:
    python benchmarks/huge_pages.py --set data=synthetic image_size=32 small_input=true width=1.0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TUNABLE = "glibc.malloc.hugetlb=1"


def _settings(pairs: list[str]) -> dict[str, object]:
    """``["width=1.0", "small_input=true"]`` as ``{"width": 1.0, "small_input": True}``."""
    settings = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            settings[key] = json.loads(text)
        except ValueError:
            settings[key] = text
    return settings


def child(steps: int, settings: dict[str, object]) -> dict[str, float]:
    """Times ``steps`` train steps of the configuration ``settings`` in this process."""
    sys.path.insert(0, _EXAMPLES)
    import jax

    from mobilenet import input_pipeline, train, train_state
    from mobilenet.configs import get_config
    from mobilenet.infra import compile_cache
    from mobilenet.sharding import batch_sharding

    compile_cache.enable()  # A rerun loads the compiled step instead of compiling it.
    config = get_config(**{"progress": False, **settings})
    run = train.prepare(config, None)
    state = train_state.create_train_state(config, run.model,
                                           image_shape=run.dataset.image_shape, mesh=run.mesh,
                                           total_steps=run.steps)
    batches = input_pipeline.train_batches(run.dataset, batch_size=config.batch_size,
                                           seed=config.seed, start_step=0,
                                           sharding=batch_sharding(run.mesh))
    for _ in range(5):  # Compile, then let the allocator settle.
        state, _ = run.train_step(state, next(batches))
    jax.block_until_ready(state)
    times, faults = [], []
    for _ in range(steps):
        batch = next(batches)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        state, _ = run.train_step(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"step_ms": 1000 * statistics.median(times), "faults": statistics.median(faults)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="children per case (default: 3)")
    parser.add_argument("--steps", type=int, default=40, help="steps timed per child (default: 40)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings of the configuration other than the defaults")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.steps, _settings(args.set))))
        return
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    cases = {"4 KiB pages (JRELU6_HUGE_PAGES=0)": base,
             "huge pages (JRELU6_HUGE_PAGES=1)": {**base, "GLIBC_TUNABLES": TUNABLE}}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
        for name in order:
            done = subprocess.run([sys.executable, __file__, "--child", "--steps",
                                   str(args.steps), "--set", *args.set], env=cases[name],
                                  capture_output=True, text=True, check=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    import _harness  # The benchmarks' folder is on sys.path (this script's own).

    settings = f" with {' '.join(args.set)}" if args.set else ""
    print(f"train step of the default configuration{settings}, {_harness.cpu_model()}, "
          f"{os.cpu_count()} CPUs, load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}; {args.rounds} processes per case, "
          f"median of {args.steps} steps each")
    medians = {}
    for name, samples in results.items():
        medians[name] = statistics.median(s["step_ms"] for s in samples)
        faults = statistics.median(s["faults"] for s in samples)
        print(f"  {name:36s} {medians[name]:7.1f} ms/step  {faults:8.0f} page faults/step  "
              f"(per process: {', '.join(format(s['step_ms'], '.1f') for s in samples)})")
    small, huge = medians.values()
    print(f"  huge pages: {small / huge:.2f}x the step speed of 4 KiB pages")


if __name__ == "__main__":
    main()
