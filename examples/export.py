"""Export a MobileNet trained by examples/train.py to StableHLO, TFLite or ONNX, and check it.

Loads the newest checkpoint of a run, writes the inference function
``logits = f(images)`` (float32 NHWC pixels 0-255, the run's normalization inside)
in each requested format, runs the file in its own runtime (jax.export,
ai_edge_litert, onnxruntime) on the run's test split and prints, per file, its
size, the largest logit difference against the float JAX model and the test
accuracies of the file, of the float JAX model and, for a run trained with
``--activation-bits``, of the JAX model as trained (fake quantization on)::

    python examples/train.py --workdir runs/v2
    python examples/export.py --workdir runs/v2 --format stablehlo tflite onnx
    python examples/export.py --workdir runs/v2 --format tflite --int8
    python examples/train.py --activation-bits 8 --workdir runs/qat8
    python examples/export.py --workdir runs/qat8 --format tflite --int8   # ReLU6 on [0, 6]

A run trained with ``--weight-bits`` (quantization-aware training, docs/qat.md) is
written on its trained grid: its int8 weights, weight scales and activation scales
and zero points, not calibrated ones; that file reads normalized images. ``--check``
then compares it with the QAT model in JAX, on the test split and on
``--check-inputs`` augmented training images: top-1 agreement, the largest logit
difference in output quantization steps and a per-tensor table::

    python examples/train.py --weight-bits 8 --activation-bits 8 --init-from runs/v2 \
        --workdir runs/v2_w8a8
    python examples/export.py --workdir runs/v2_w8a8 --format tflite --int8 --check

Needs the export extra: ``pip install -e ".[export]"``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For `import mobilenet`.

FORMATS = ("stablehlo", "tflite", "onnx")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python examples/export.py", description=__doc__.split("\n\n")[0],
        epilog="Files go to <workdir>/export/model[_int8].{jaxexport,tflite,onnx} unless --out "
               "is given.\nExit codes: 0 done, 1 a converter or runtime failed, 2 bad arguments "
               "or no trained run.")
    parser.add_argument("--workdir", required=True,
                        help="the --workdir of a run of examples/train.py (config.json and "
                             "checkpoints/)")
    parser.add_argument("--format", nargs="+", choices=FORMATS, required=True, dest="formats",
                        help="one or more of: stablehlo (jax.export, CPU/CUDA/TPU), tflite, onnx")
    parser.add_argument("--int8", action="store_true",
                        help="tflite only: int8 weights and activations (float32 input and "
                             "output), activation ranges per --int8-ranges")
    parser.add_argument("--int8-ranges", choices=("calibrated", "relu6"), default=None,
                        help="--int8's activation ranges: calibrated on training images, or "
                             "ReLU6 outputs on [0, 6] (default: relu6 for a ReLU6 model "
                             "trained with --activation-bits 8, calibrated otherwise)")
    parser.add_argument("--calibration-images", type=int, default=256,
                        help="training images that calibrate --int8 (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="with --int8 of a --weight-bits run: the parity check of the "
                             "int8 file against the QAT model in JAX")
    parser.add_argument("--check-inputs", type=int, default=10000,
                        help="--check's augmented training inputs (default: %(default)s)")
    parser.add_argument("--out", default=None,
                        help="the file to write (one --format only; default: "
                             "<workdir>/export/model[_int8].<suffix>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv``, exports, runs and compares; prints one line per file.

    Returns:
      The exit code: 0 done, 1 an export failed, 2 bad arguments or no run.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.int8 and args.formats != ["tflite"]:
        parser.error("--int8 applies to --format tflite only")
    if args.int8_ranges is not None and not args.int8:
        parser.error("--int8-ranges needs --int8")
    if args.out is not None and len(args.formats) != 1:
        parser.error("--out needs exactly one --format")
    if args.calibration_images < 1:
        parser.error(f"--calibration-images must be >= 1, got {args.calibration_images}")

    from mobilenet import export

    try:
        run = export.load_run(args.workdir)
    except export.ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.int8 and run.model.weight_bits is not None:
        return _qat_int8(run, args)
    if args.check:
        parser.error("--check needs --int8 of a run trained with --weight-bits")
    bits = run.config.activation_bits
    print(f"{run.config.model} x{run.config.width} from {args.workdir}, step {run.step}"
          f"{f' (trained with {bits}-bit activations)' if bits else ''}; "
          f"{run.dataset.name} test split: {run.dataset.test_images.shape[0]} images")
    int8_ranges = args.int8_ranges or export.default_int8_ranges(run.model)
    status = 0
    for fmt in args.formats:
        name = fmt + (f" int8 ({int8_ranges} ranges)" if args.int8 else "")
        try:
            report = export.export(run, fmt, int8=args.int8, path=args.out,
                                   workdir=args.workdir,
                                   calibration_images=args.calibration_images,
                                   int8_ranges=int8_ranges)
        except ImportError as error:
            print(f"{name}: needs the export extra (pip install -e \".[export]\"): {error}",
                  file=sys.stderr)
            status = 1
            continue
        except Exception as error:  # noqa: BLE001 - a converter's or runtime's own error
            # (report it, go on).
            print(f"{name}: failed: {type(error).__name__}: {str(error)[:500]}", file=sys.stderr)
            status = 1
            continue
        qat = ("" if report.qat_accuracy is None
               else f", QAT JAX {report.qat_accuracy:.4f}")
        print(f"{name}: wrote {report.path} ({report.size / 1024:.0f} KiB) in "
              f"{report.seconds:.1f} s; largest |logit - JAX logit| {report.max_logit_diff:.2g}; "
              f"test accuracy {report.accuracy:.4f} (float JAX {report.jax_accuracy:.4f}{qat}), "
              f"same class as float JAX on {report.agreement:.2%}")
    return status


def _qat_int8(run, args) -> int:
    """The int8 file of a quantization-aware-trained run, on its trained grid; --check."""
    import time

    from mobilenet import export, qat_export

    start = time.perf_counter()
    try:
        data, pinned = qat_export.to_int8(run, calibration_images=min(args.calibration_images,
                                                                      64))
    except ImportError as error:
        print(f"tflite int8: needs the export extra (pip install -e \".[export]\"): {error}",
              file=sys.stderr)
        return 1
    path = args.out or export.default_path(args.workdir, "tflite", int8=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print(f"{run.config.model} x{run.config.width} from {args.workdir}, step {run.step}, "
          f"trained W{run.model.weight_bits}A{run.model.activation_bits or 'float'} "
          f"({run.model.weight_granularity}): wrote {path} ({len(data) / 1024:.0f} KiB) in "
          f"{time.perf_counter() - start:.1f} s; int8 weights equal to the trained ones: "
          f"{pinned.weights_equal:,} of {pinned.weights_total:,}; "
          f"{len(pinned.tensors)} activation tensors on their trained grid")
    if args.check:
        results = [qat_export.parity(run, data, pinned, run.dataset.test_images, "test split",
                                     labels=run.dataset.test_labels)]
        if args.check_inputs > 0:
            results.append(qat_export.parity(
                run, data, pinned, qat_export.augmented_inputs(run, args.check_inputs),
                "augmented training inputs", table_images=0))
        print(qat_export.format_parity(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
