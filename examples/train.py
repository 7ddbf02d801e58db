"""Train a MobileNet (V1, V2, V3) built with jrelu6, over every local device.

With no flags this trains MobileNetV2 (width 0.5) on scikit-learn's bundled
digits for 550 steps of batch 64 (about 25 s on a 2-core CPU), writes checkpoints,
config.json, metrics.jsonl and metrics.png to ./runs/mobilenet_v2 and prints
the final test accuracy as its last line:

    python examples/train.py
    python examples/train.py --model mobilenet_v3_small --optimizer adamw --steps 600
    python examples/train.py --data cifar10 --data-dir ~/data/cifar-10-batches-py \\
        --small-input --width 1.0 --epochs 30
    python examples/train.py --summary --num-classes 1000 --model mobilenet_v3_large

Running again with the same --workdir resumes from its latest checkpoint (a
finished run just re-evaluates). The settings must be those of the run, except
the ones that cannot change its result (logging, evaluation and checkpoint
frequency, progress, plot); a new --steps/--epochs needs --allow-schedule-change.

Multi-host: start the same command in every process with --distributed; it
calls jax.distributed.initialize(), which finds the cluster itself under SLURM,
Open MPI and on Cloud TPU. Elsewhere set JAX_COORDINATOR_ADDRESS (process 0's
host:port, read by JAX), JAX_NUM_PROCESSES and JAX_PROCESS_ID (read by this
example) in each process. The batch is then split over the devices of all
processes; use a shared --workdir (see "Scaling out" in docs/example.md).

A work directory serves one run at a time (a second process on it exits with
code 2 naming the first). SIGTERM, which schedulers send before they preempt a
job, finishes the current step, saves a checkpoint at it and exits with 143; the
same command then resumes there. A full disk stops the run with exit code 3,
keeping metrics.jsonl and the newest complete checkpoint intact. Each of these
ends with one line on stderr (docs/fault_tolerance.md).

Exit codes:
  0    done
  1    the loss became NaN/inf (the last good checkpoint is kept)
  2    bad arguments, data or work directory, or the work directory is in use
  3    a write to the work directory failed (no space left on device, ...); the
       newest complete checkpoint is kept: free space and rerun to resume
  130  interrupted (Ctrl-C); a rerun resumes from the last checkpoint
  143  preempted (SIGTERM): a checkpoint was saved at the step then running

On Linux with glibc >= 2.35 and transparent huge pages in "madvise" mode, the
command restarts itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (huge
pages for XLA's large buffers; faster steps on CPU) and says so on stderr;
JRELU6_HUGE_PAGES=0 turns that off.
"""

# The flags are generated from the fields of `mobilenet.configs.default.Config`
# (their metadata hold the help, choices and bounds); the recipe is in
# examples/mobilenet/. Parsing imports no JAX, so --help and bad flags answer at once.

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
from collections.abc import Sequence
from typing import Any

# Python puts this script's folder on sys.path, so `mobilenet` imports as a package.
from mobilenet.configs import default  # (light: no JAX import)
from mobilenet.infra.settings import ConfigMismatch, InvalidSetting, default_text, field_kind, flag

# Extra spellings of a field's flag (the first is shown first in --help).
ALIASES = {"learning_rate": ("--lr",)}
# Mutually exclusive fields: one of them sets the run's length.
EXCLUSIVE = (("steps", "epochs"),)
# The sections of --help, in order.
GROUPS = ("model", "data", "training", "run")


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr (exit code 2), without the long usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def _converter(base: type) -> Any:
    if base is float:
        return float
    if base is int:
        return int
    return str


_METAVARS = {int: "N", float: "X", str: "PATH"}


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per :class:`mobilenet.configs.default.Config` field.

    Flags that are not given are absent from the parsed namespace (their default
    is ``argparse.SUPPRESS``), so the :class:`Config` defaults apply; ``--help``
    shows them. Four options are not settings of the run: ``--summary`` (an action),
    --workdir (where the run lives; its ``config.json`` records the settings) and the
    persistent compilation cache's two (a property of this process, not of the run).
    """
    parser = _Parser(prog="python examples/train.py", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     argument_default=argparse.SUPPRESS)
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    exclusive = {}
    for names in EXCLUSIVE:
        group = groups[default.Config.__dataclass_fields__[names[0]].metadata["group"]]
        shared = group.add_mutually_exclusive_group()
        exclusive.update(dict.fromkeys(names, shared))
    for field in dataclasses.fields(default.Config):
        meta = field.metadata
        base, _ = field_kind(field)
        help_text = f"{meta['help']} (default: {default_text(field)})".replace("%", "%%")
        container = exclusive.get(field.name, groups[meta["group"]])
        names = (flag(field.name), *ALIASES.get(field.name, ()))
        if base is bool:
            container.add_argument(*names, dest=field.name,
                                   action=argparse.BooleanOptionalAction, help=help_text)
        else:
            container.add_argument(*names, dest=field.name, type=_converter(base),
                                   choices=meta["choices"] or None, help=help_text,
                                   metavar=None if meta["choices"] else _METAVARS[base])
    groups["model"].add_argument(
        "--summary", action="store_true", default=False,
        help="print the layer table and the trainable parameter count, then exit (no "
             "training, nothing written)")
    groups["run"].add_argument(
        "--workdir", default=None,
        help="checkpoints, config.json, metrics.jsonl and metrics.png; rerunning with the "
             "same directory resumes (default: ./runs/<model>)")
    groups["run"].add_argument(
        "--compilation-cache", action=argparse.BooleanOptionalAction, default=True,
        help="keep compiled programs in JAX's persistent compilation cache, and the "
             "training steps whole beside it, so that a rerun of the same configuration "
             "skips compiling and tracing (default: on; JRELU6_PROGRAM_CACHE=0 keeps only "
             "JAX's cache)")
    groups["run"].add_argument(
        "--compilation-cache-dir", default=None, metavar="DIR",
        help="the cache's folder (default: $XDG_CACHE_HOME/jrelu6/jax-compilation-cache, "
             "~/.cache when XDG_CACHE_HOME is unset)")
    return parser


def parse(argv: Sequence[str] | None = None) -> tuple[default.Config, dict[str, Any]]:
    """Parses and validates ``argv``; exits with code 2 and one line on a bad flag or value.

    Returns:
      The validated :class:`Config` and the other options, ``{"summary", "workdir",
      "compilation_cache", "compilation_cache_dir"}``.
    """
    parser = build_parser()
    settings = vars(parser.parse_args(argv))
    options = {name: settings.pop(name) for name in (
        "summary", "workdir", "compilation_cache", "compilation_cache_dir")}
    if options["summary"]:
        settings.setdefault("width", 1.0)  # The paper's network: the reference counts.
    try:
        config = default.get_config(**settings)
    except InvalidSetting as error:
        parser.error(f"argument {flag(error.field)}: {error.reason}")
    return config, options


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv``, trains (or summarizes), prints the final test accuracy last.

    Returns:
      The exit code: 0 done, 1 diverged (NaN/inf loss), 2 bad arguments, data or
      work directory (or the directory is in use), 3 a write failed (a full disk),
      130 interrupted, 143 preempted (SIGTERM).
    """
    config, options = parse(argv)

    from mobilenet import model_summary, native, train  # JAX loads here.
    from mobilenet.infra import compile_cache, lifecycle, program_cache, startup, state_size
    from mobilenet.infra.datasets import DataError

    if options["compilation_cache"]:
        # Also the compiled steps whole, found without tracing (mobilenet/infra/program_cache.py).
        program_cache.enable(compile_cache.enable(options["compilation_cache_dir"]) is not None)
    if options["summary"]:
        print(model_summary.summarize(config))
        return 0
    workdir = options["workdir"] or os.path.join("runs", config.model)
    try:
        with compile_cache.CompileStats() as compiles:
            metrics = train.train_and_evaluate(config, workdir)
    except (DataError, lifecycle.SetupError, ConfigMismatch,
            state_size.StateTooLarge) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except lifecycle.TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except lifecycle.WriteFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except lifecycle.Preempted as error:  # It names the step saved.
        print(f"preempted: {error}", file=sys.stderr)
        return 143
    except lifecycle.Interrupted as error:  # It says what a rerun starts from.
        print(f"interrupted: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Before the loop took over: nothing was saved.
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    if config.progress:
        counts = compiles.counts()
        print(startup.fixed_cost_line(
            total=startup.process_seconds(), steps=metrics["step_seconds"],
            compile_seconds=counts["compile_seconds"], programs=counts["compiles"],
            cache_hits=counts["cache_hits"], native_build_seconds=native.build_seconds()))
        print(f"test loss {metrics['test_loss']:.4f}, train loss {metrics['train_loss']:.4f}, "
              f"{metrics['steps']} steps, {metrics['seconds']:.1f} s wall, "
              f"{metrics['images_per_second']:.0f} images/s")
    print(f"final test accuracy: {metrics['test_accuracy']:.4f}")
    return 0


def _main_as_process() -> int:
    """:func:`main` as the whole life of this process, with Python's garbage collector told
    what it holds: few cycles and many objects that live as long as the process. On a
    2-core EPYC the default run's collections then take 0.12 s instead of 0.35 s, and its
    exit 0.07 s instead of 0.42 s."""
    gc.set_threshold(10_000)  # (from 700) The loop allocates much; little of it is cyclic.
    import mobilenet.train  # noqa: F401 - main's imports: JAX, flax, optax, made here

    gc.freeze()  # Their objects are never garbage: the collections while training skip them.
    code = main()
    gc.freeze()  # Nor is anything now (files closed, checkpoints complete): the exit's skip all.
    return code


if __name__ == "__main__":
    parse()  # --help and bad flags answer before anything else.
    # Huge pages for XLA's per-step buffers (mobilenet/infra/host_memory.py): restarts this
    # command once with GLIBC_TUNABLES set, where that helps, saying so on stderr;
    # JRELU6_HUGE_PAGES=0: never.
    from mobilenet.infra import host_memory

    host_memory.reexec_with_huge_pages()
    sys.exit(_main_as_process())
