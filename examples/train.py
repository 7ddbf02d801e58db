"""Train a MobileNet (V1, V2, V3) built with jrelu6, over every local device.

With no flags this trains MobileNetV2 (width 0.5) on scikit-learn's bundled
digits for 300 steps (about a minute on a 2-core CPU), writes
checkpoints, ``metrics.jsonl`` and ``metrics.png`` to ``./runs/mobilenet_v2`` and
prints the final test accuracy as its last line::

    python examples/train.py
    python examples/train.py --model mobilenet_v3_small --optimizer adamw --steps 600
    python examples/train.py --data cifar10 --data-dir ~/data/cifar-10-batches-py \
        --small-input --width 1.0 --epochs 30
    python examples/train.py --summary --num-classes 1000 --model mobilenet_v3_large

Running again with the same ``--workdir`` resumes from its latest checkpoint
(a finished run just re-evaluates). Exit codes: 0 done, 1 the loss became
NaN/inf (the last good checkpoint is kept), 2 bad arguments or data directory,
130 interrupted (Ctrl-C).

Multi-host: start the same command in every process with ``--distributed``; it
calls ``jax.distributed.initialize()``, which finds the cluster itself under SLURM,
Open MPI and on Cloud TPU. Elsewhere set ``JAX_COORDINATOR_ADDRESS`` (process 0's
host:port, read by JAX), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read by this
example) in each process. The batch is then split over the devices of all
processes; use a shared ``--workdir`` (see "Scaling out" in the README).

This file only parses flags: the recipe is in ``examples/mobilenet/``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For `import mobilenet`.

from mobilenet.configs import default  # noqa: E402  (light: no JAX import)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per :class:`mobilenet.configs.default.Config` field."""
    d = default.Config()
    parser = argparse.ArgumentParser(
        prog="python examples/train.py",
        description=__doc__.split("\n\n")[0],
        epilog="The defaults train MobileNetV2 x0.5 on the bundled digits in about a minute on "
               "a 2-core CPU.\nRerunning with the same --workdir resumes from its latest "
               "checkpoint. Multi-host: run the same\ncommand on every host with --distributed "
               "(jax.distributed.initialize() reads the cluster from the\nenvironment).\n"
               "Exit codes: 0 done, 1 the loss became NaN/inf (the last good checkpoint is "
               "kept), 2 bad\narguments or data, 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter)

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=default.MODELS, default=d.model,
                       help="architecture ('tiny' is a small test network; default: %(default)s)")
    model.add_argument("--num-classes", type=int, default=None,
                       help="classifier outputs (default: the dataset's classes; for "
                            "--summary: 10)")
    model.add_argument("--width", type=float, default=None,
                       help=f"width multiplier, 1.0 = the paper's network (default: {d.width} "
                            "for training, the quick digits recipe; 1.0 for --summary, which "
                            "then prints the reference parameter counts)")
    model.add_argument("--small-input", action=argparse.BooleanOptionalAction,
                       default=d.small_input,
                       help="fewer early downsamplings, for 32x32 inputs as CIFAR MobileNets "
                            "do; off by default: digits carry 8x8 pixels of information and "
                            "the standard strides are ~7x cheaper")
    model.add_argument("--no-batch-norm", dest="batch_norm", action="store_false",
                       help="no batch normalization (convolutions get a bias instead)")
    model.add_argument("--dtype", choices=default.DTYPES, default=d.dtype,
                       help="compute dtype; parameters and the loss stay float32 (default: %(default)s)")
    model.add_argument("--grad-at-zero", type=float, default=d.grad_at_zero,
                       help="the derivative relu6 uses at exactly 0 (default: %(default)s)")
    model.add_argument("--grad-at-six", type=float, default=d.grad_at_six,
                       help="the derivative relu6 uses at exactly 6 (default: %(default)s)")
    model.add_argument("--summary", action="store_true",
                       help="print the layer table and the trainable parameter count, then "
                            "exit (no training, nothing written)")

    data = parser.add_argument_group("data")
    data.add_argument("--data", choices=default.DATASETS, default=d.data,
                      help="digits: scikit-learn's bundled 8x8 digits upsampled to 32x32; "
                           "cifar10: the python-pickle files in --data-dir; synthetic: "
                           "random images, for benchmarks (default: %(default)s)")
    data.add_argument("--data-dir", default=None,
                      help="CIFAR-10 directory with data_batch_1..5, test_batch, batches.meta")
    data.add_argument("--image-size", type=int, default=d.image_size,
                      help="side of the synthetic images (default: %(default)s)")
    data.add_argument("--no-augment", dest="augment", action="store_false",
                      help="no random shifts/flips")
    data.add_argument("--max-shift", type=int, default=None,
                      help="largest random shift of the augmentation, in pixels (default: 2 "
                           "on digits, 4 otherwise)")

    training = parser.add_argument_group("training")
    length = training.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=d.steps, help="training steps (default: %(default)s)")
    length.add_argument("--epochs", type=float, default=None,
                        help="training length in epochs (instead of --steps)")
    training.add_argument("--batch-size", type=int, default=d.batch_size,
                          help="global batch size; must divide by the number of devices (default: %(default)s)")
    training.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                          help="global evaluation batch size (default: %(default)s)")
    training.add_argument("--optimizer", choices=default.OPTIMIZERS, default=d.optimizer,
                          help="SGD with Nesterov momentum, or AdamW (default: %(default)s)")
    training.add_argument("--lr", dest="learning_rate", type=float, default=None,
                          help="peak learning rate after the linear warm-up, then cosine "
                               "decay (default: 0.05 for sgd, 1e-2 for adamw)")
    training.add_argument("--momentum", type=float, default=d.momentum,
                          help="SGD momentum, AdamW's b1 (default: %(default)s)")
    training.add_argument("--weight-decay", type=float, default=None,
                          help="weight decay of the kernels, not of batch-norm parameters or "
                               "biases (default: 5e-5 for sgd, 0.05 for adamw)")
    training.add_argument("--warmup-steps", type=int, default=None,
                          help="linear warm-up steps (default: 10%% of the steps)")
    training.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                          help="label smoothing of the training loss (default: %(default)s)")
    training.add_argument("--seed", type=int, default=d.seed,
                          help="seeds initialization, data order, augmentation and dropout (default: %(default)s)")

    run = parser.add_argument_group("run")
    run.add_argument("--workdir", default=None,
                     help="checkpoints, metrics.jsonl and metrics.png; rerunning with the same "
                          "directory resumes (default: ./runs/<model>)")
    run.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                     help="steps between checkpoints; 0: only at the end (default: %(default)s)")
    run.add_argument("--eval-every", type=int, default=d.eval_every,
                     help="steps between test evaluations; 0: only at the end (default: %(default)s)")
    run.add_argument("--log-every", type=int, default=d.log_every,
                     help="steps between metric fetches from the devices (default: %(default)s)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar or status lines (the last line is still printed)")
    run.add_argument("--no-plot", dest="plot", action="store_false",
                     help="do not write metrics.png")
    run.add_argument("--distributed", action="store_true",
                     help="multi-process launch: call jax.distributed.initialize() first "
                          "(cluster found under SLURM, Open MPI, Cloud TPU; else from "
                          "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv``, trains (or summarizes), prints the final test accuracy last.

    Returns:
      The exit code: 0 done, 1 diverged (NaN/inf loss), 2 bad arguments or data.
    """
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    summary, workdir = args.pop("summary"), args.pop("workdir")
    if args["width"] is None:
        args["width"] = 1.0 if summary else default.Config.width
    try:
        config = default.get_config(**args)
    except ValueError as error:
        parser.error(str(error))  # Exit code 2.

    from mobilenet import input_pipeline
    from mobilenet import train

    if summary:
        print(train.summarize(config))
        return 0
    workdir = workdir or os.path.join("runs", config.model)
    try:
        metrics = train.train_and_evaluate(config, workdir)
    except (input_pipeline.DataError, train.SetupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except train.TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to resume from the last checkpoint in "
              f"{workdir}", file=sys.stderr)
        return 130
    if config.progress:
        print(f"test loss {metrics['test_loss']:.4f}, train loss {metrics['train_loss']:.4f}, "
              f"{metrics['steps']} steps, {metrics['seconds']:.1f} s wall, "
              f"{metrics['images_per_second']:.0f} images/s")
    print(f"final test accuracy: {metrics['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
