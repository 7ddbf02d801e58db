"""The default command's fixed cost, cold and warm, each run a fresh process.

A run's fixed cost is its wall time minus its training steps' own time, as
``metrics.jsonl`` records them (``(step - previous step) * batch / images_per_second``
summed over the training records; the first, compiling step is not among them).
This script runs ``python examples/train.py`` (plus ``--args``) as a user does:

- **cold**: a fresh ``$XDG_CACHE_HOME`` (no compiled programs, no native kernels,
  no cached data) and a fresh work directory;
- **warm**: the same cache home again, a fresh work directory each time
  (``--repeats`` runs; the figure is their median).

With ``--against DIR`` (another checkout, e.g. ``git worktree add /tmp/old <rev>``)
it runs that tree's command too, interleaved with this one's, each with its own
cache home, and prints both; ``--against-python`` runs it with another environment's
interpreter (e.g. one with other package versions). Then it times the imports a warm run pays, one
package after another in a fresh process, and prints where the fixed cost goes.

    python benchmarks/startup.py                       # the default command
    python benchmarks/startup.py --against /tmp/old --repeats 3
    python benchmarks/startup.py --against /tmp/old --against-python /tmp/venv/bin/python
    python benchmarks/startup.py --quick               # a tiny model, 12 steps
    python benchmarks/startup.py --repeats 1 --phases  # and where a warm run's time goes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import _harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_ARGS = ("--model tiny --data synthetic --synthetic-examples 64 --image-size 16 "
              "--batch-size 16 --eval-batch-size 32 --steps 12 --log-every 3")
# What a warm run imports, in the order it does (each line's time is on top of the
# lines before it).
IMPORTS = (("python start, and exit after the imports", "pass"), ("numpy", "import numpy"),
           ("ml_dtypes (numpy dtypes for jax)", "import ml_dtypes"), ("jax", "import jax"),
           ("flax.linen", "import flax.linen"), ("optax", "import optax"),
           ("orbax.checkpoint", "import orbax.checkpoint"),
           ("the example (mobilenet.train)", "from mobilenet import train"),
           ("matplotlib.pyplot (the plot)", "import matplotlib.pyplot"),
           ("sklearn.datasets, model_selection (uncached digits)",
            "import sklearn.datasets, sklearn.model_selection"))


# Run as `python -c` with TREE and ARGS prepended: the command of `examples/train.py` as its
# `__main__` runs it, with the run's phases timed (wrappers around the recipe's functions;
# one JSON line of (phase, start s, seconds) on stderr at the end).
PHASE_DRIVER = r"""
import json, os, sys, time
sys.path.insert(0, os.path.join(TREE, "examples"))
sys.argv = [os.path.join(TREE, "examples", "train.py"), *ARGS]
import train as command
from mobilenet import train, train_state
from mobilenet.infra import lifecycle, progress, startup
EVENTS = [("imports (from the process's start)", 0.0, startup.process_seconds())]

def timed(owner, name, label):
    function = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = startup.process_seconds()
        try:
            return function(*args, **kwargs)
        finally:
            EVENTS.append((label, start, startup.process_seconds() - start))
    setattr(owner, name, wrapper)

for owner, name, label in (
        (train, "prepare", "data and steps built"),
        (lifecycle.Lifecycle, "restore", "settings checked, checkpoint restored"),
        (train, "_initialize", "steps loaded or compiled, state initialized"),
        (train_state, "evaluate", "evaluation"), (lifecycle.Lifecycle, "save", "save (its start)"),
        (lifecycle.Lifecycle, "wait_for_save", "final save's wait"),
        (lifecycle.Lifecycle, "plot", "plot")):
    timed(owner, name, label)
first = progress.Progress.stepped
def stepped(self, done, *args, **kwargs):
    progress.Progress.stepped = first  # Only the first step is timed.
    result = first(self, done, *args, **kwargs)
    loaded = [e for e in EVENTS if e[0].startswith("steps loaded")][-1]
    end = loaded[1] + loaded[2]
    EVENTS.append(("first step", end, startup.process_seconds() - end))
    return result
progress.Progress.stepped = stepped
code = command._main_as_process()
EVENTS.append(("main() returned at", startup.process_seconds(), 0.0))
print("PHASES " + json.dumps(EVENTS), file=sys.stderr, flush=True)
sys.exit(code)
"""


def phases(tree: str, cache_home: str, extra: list[str]) -> list[tuple[str, int, float]]:
    """One warm run of ``tree``'s command with its phases timed: (phase, count, seconds),
    the last row the exit (the process's wall time after ``main()`` returned)."""
    done, wall, _ = _fresh_run(
        tree, cache_home, lambda workdir: [sys.executable, "-c", (
            f"TREE = {tree!r}\nARGS = {['--workdir', workdir, *extra]!r}\n" + PHASE_DRIVER)],
        # As the command's restart, which the driver bypasses.
        GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"))
    line = [row for row in done.stderr.splitlines() if row.startswith("PHASES ")]
    if not line:
        raise SystemExit(f"startup: the timed run printed no phases:\n{done.stderr[-2000:]}")
    events = json.loads(line[-1][len("PHASES "):])
    rows: dict[str, list[float]] = {}
    for name, _, seconds in events[:-1]:
        rows.setdefault(name, []).append(seconds)
    returned = events[-1][1]
    return [(name, len(values), sum(values)) for name, values in rows.items()] + [
        ("exit (after main() returned)", 1, max(wall - returned, 0.0))]


def print_phases(timed: list[tuple[str, int, float]]) -> None:
    """The table of :func:`phases` (nothing if empty)."""
    if timed:
        print("\na warm run of this tree, phase by phase (seconds, summed over a phase's calls):")
        for label, count, seconds in timed:
            print(f"  {label:52s} {seconds:6.2f}" + (f"  ({count} calls)" if count > 1 else ""))


def steps_seconds(workdir: str) -> float:
    """The training steps' own time, summed from ``metrics.jsonl``."""
    with open(os.path.join(workdir, "config.json")) as file:
        batch = json.load(file)["batch_size"]
    seconds, previous = 0.0, 1  # A fresh run times the steps after its first.
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        for record in map(json.loads, file):
            if "images_per_second" in record:
                seconds += (record["step"] - previous) * batch / record["images_per_second"]
                previous = record["step"]
    return seconds


def _fresh_run(tree: str, cache_home: str, command: Callable[[str], list[str]],
               **env: str) -> tuple[subprocess.CompletedProcess[str], float, str]:
    """Runs ``command(workdir)`` in checkout ``tree`` with a fresh work directory (in
    ``cache_home``'s folder, removed with it), ``cache_home`` as ``$XDG_CACHE_HOME`` and
    ``env`` added: the finished process, its wall seconds and the work directory."""
    workdir = tempfile.mkdtemp(prefix="run-", dir=os.path.dirname(cache_home))
    environment = {**os.environ, "XDG_CACHE_HOME": cache_home, **env}
    environment.pop("PYTHONPATH", None)  # The script finds its own `mobilenet` package.
    start = time.perf_counter()
    done = subprocess.run(command(workdir), cwd=tree, env=environment, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"startup: {tree}'s command failed ({done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return done, wall, workdir


def run_once(tree: str, cache_home: str, extra: list[str], python: str = sys.executable
             ) -> dict[str, float | None]:
    """Runs the command of checkout ``tree`` with ``python`` in a fresh work directory (in
    ``cache_home``'s folder, removed with it); its figures."""
    done, wall, workdir = _fresh_run(tree, cache_home, lambda workdir: [
        python, os.path.join(tree, "examples", "train.py"), "--workdir", workdir, *extra])
    steps = steps_seconds(workdir)
    text = done.stdout + done.stderr

    def number(pattern: str) -> float | None:
        found = re.search(pattern, text)
        return float(found[1]) if found else None

    return {"wall": wall, "steps": steps, "fixed": wall - steps,
            "init_compile": number(r"initialized and compiled in ([\d.]+) s"),
            "compiler": number(r"XLA's compiler ([\d.]+) s"),
            # A tree without the fixed-cost line (older) says nothing of its native build.
            "native_build": ((number(r"native kernels built in ([\d.]+) s") or 0.0)
                             if "fixed cost" in text else None),
            "fixed_printed": number(r"([\d.]+) s fixed cost")}


def import_times(tree: str, *, skip_sklearn: bool, python: str = sys.executable
                 ) -> list[tuple[str, float]]:
    """Seconds each of :data:`IMPORTS` adds, in one fresh ``python`` process, in order."""
    lines = ["import sys, time", f"sys.path.insert(0, {os.path.join(tree, 'examples')!r})",
             "t = time.perf_counter()"]
    for name, statement in IMPORTS:
        if skip_sklearn and name.startswith("sklearn"):
            continue
        lines += [statement, f"print({name!r}, time.perf_counter() - t)",
                  "t = time.perf_counter()"]
    start = time.perf_counter()
    out = subprocess.run([python, "-c", "\n".join(lines)], capture_output=True,
                         text=True, check=True).stdout
    rows = [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1])) for line in out.splitlines()]
    rows[0] = (rows[0][0], time.perf_counter() - start - sum(s for _, s in rows[1:]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per tree (default: 3)")
    parser.add_argument("--against", metavar="DIR", help="another checkout to run side by side")
    parser.add_argument("--against-python", metavar="PYTHON", default=sys.executable,
                        help="the interpreter (environment) of --against (default: this one)")
    parser.add_argument("--args", default="", help="extra flags for examples/train.py")
    parser.add_argument("--phases", action="store_true",
                        help="also time one more warm run of this tree phase by phase")
    _harness.add_output_arguments(parser, "startup")
    args = parser.parse_args(argv)
    extra = shlex.split(args.args) + (shlex.split(QUICK_ARGS) if args.quick else [])
    info, command = _harness.announce("start-up of python examples/train.py", "startup.py", argv)
    trees = {"this tree": ROOT, **({"against": os.path.abspath(args.against)}
                                   if args.against else {})}
    pythons = {"this tree": sys.executable, "against": args.against_python}
    scratch = tempfile.mkdtemp(prefix="startup-")  # Cache homes and work directories.
    homes = {name: os.path.join(scratch, f"cache-{index}")
             for index, name in enumerate(trees)}
    results: dict[str, dict[str, list]] = {name: {"cold": [], "warm": []} for name in trees}
    try:
        for name, tree in trees.items():
            results[name]["cold"].append(run_once(tree, homes[name], extra, pythons[name]))
        for repeat in range(args.repeats):
            for name in (list(trees) if repeat % 2 == 0 else list(reversed(trees))):
                results[name]["warm"].append(
                    run_once(trees[name], homes[name], extra, pythons[name]))
        timed = phases(ROOT, homes["this tree"], extra) if args.phases else []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for name, kinds in results.items():
        for kind, runs in kinds.items():
            row = {"tree": name, "run": f"{kind} (median of {len(runs)})" if len(runs) > 1
                   else kind}
            for key in ("wall", "steps", "fixed", "init_compile", "compiler", "native_build"):
                values = [r[key] for r in runs if r[key] is not None]
                row[key] = statistics.median(values) if values else None
            rows.append(row)
    print(_harness.format_table(rows, [
        ("tree", "tree", "s"), ("run", "run", "s"), ("wall", "wall s", ".1f"),
        ("steps", "steps s", ".1f"), ("fixed", "fixed s", ".1f"),
        ("init_compile", "init+compile s", ".1f"), ("compiler", "compiler s", ".1f"),
        ("native_build", "native build s", ".1f")]))
    imports = {name: import_times(tree, skip_sklearn=False, python=pythons[name])
               for name, tree in trees.items()}
    print("\nimports, one after another in a fresh process (seconds each adds):")
    print(f"  {'':52s} " + " ".join(f"{name:>10s}" for name in trees))
    for index, (label, _) in enumerate(imports["this tree"]):
        print(f"  {label:52s} " + " ".join(f"{imports[name][index][1]:10.2f}"
                                            for name in trees))
    print_phases(timed)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    path = _harness.write_json(args, "startup", {
        "machine": info, "command": command, "runs": results, "table": rows,
        "imports": imports, "phases": timed})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
