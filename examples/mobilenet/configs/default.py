"""The default configuration: MobileNetV2 on scikit-learn's digits, tuned for a 2-core CPU.

``python examples/train.py`` with no flags trains exactly this configuration.
Each :class:`Config` field carries its help text, its choices and its bounds in
its ``dataclasses.field`` metadata; ``examples/train.py`` generates one flag per
field from them (``--batch-size`` for ``batch_size``), and :meth:`Config.validate`
checks every field against them (the machinery: :mod:`mobilenet.infra.settings`).
Defaults that depend on other settings (the learning rate and weight decay per
optimizer, the warm-up, the largest shift, the number of steps) are ``None`` in
the config and resolved by :func:`resolve`, here and nowhere else. A resumed run
is checked against the settings it was started with by
:func:`mobilenet.infra.resume_check.check_resume`; the fields that cannot change
its result say why in their metadata (``neutral``).

The defaults were chosen by measurement on a 2-core CPU: MobileNetV2 at half
width with the standard strides (32x32 inputs end at 1x1; digits carry 8x8
pixels of information, so nothing is lost) processes about 2,700 images per
second, while the small-input variant costs about 7x more per step for no
gain on digits. SGD at 0.05 on batches of 64 without label smoothing, with
shifts of at most 2 pixels, reaches 98.9-99.2% test accuracy in 550 steps (25
epochs; seeds 0-2, mean 99.0%), in 23-24 s with a filled compilation cache and
31 s with an empty one (docs/example.md has the measured figures).

This module imports no JAX: the command line parses and checks its flags
without it.

Examples:
  >>> from mobilenet.configs import get_config
  >>> config = get_config(model="tiny", steps=20)
  >>> config.model, config.steps, config.optimizer
  ('tiny', 20, 'sgd')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from mobilenet.infra import settings

# Re-exported: the command line and the training loop use them under this module's name.
from mobilenet.infra.settings import ConfigMismatch as ConfigMismatch
from mobilenet.infra.settings import InvalidSetting as InvalidSetting
from mobilenet.infra.settings import default_text as default_text
from mobilenet.infra.settings import field_kind as field_kind
from mobilenet.infra.settings import flag as flag

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "tiny")
DATASETS = ("digits", "cifar10", "synthetic")
OPTIMIZERS = ("sgd", "adamw")
DTYPES = ("float32", "bfloat16", "float16")
# As mobilenet.quantization's (this module imports no JAX).
NONLINEARITIES = ("relu6", "relu", "capped_relu")
QUANT_SCHEMES = ("affine", "fixed_point")
CALIBRATIONS = ("max", "percentile")
QAT_GRANULARITIES = ("per_channel", "per_tensor")  # As mobilenet.quantization's.

# Derived defaults (see `resolve`). The learning rates were measured best on digits.
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "adamw": 1e-2}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-5, "adamw": 0.05}
WARMUP_DIVISOR = 10  # The default warm-up is total_steps // WARMUP_DIVISOR (10%).
DEFAULT_MAX_SHIFT = {"digits": 2}  # Half a pixel of the original 8x8 digits.
FALLBACK_MAX_SHIFT = 4  # CIFAR's usual shift, for every other dataset.


_field = settings.setting  # A field with its help, --help group, choices and bounds.


def _per_optimizer(values: Mapping[str, float]) -> str:
    return ", ".join(f"{value:g} for {name}" for name, value in values.items())


@settings.documented
@dataclasses.dataclass
class Config:
    """Every setting of a training run (the attributes below come from the fields' metadata)."""

    # --- model ---
    model: str = _field("mobilenet_v2", "architecture ('tiny' is a small test network)",
                        group="model", choices=MODELS)
    num_classes: int | None = _field(
        None, "classifier outputs", group="model", minimum=2,
        derived="the dataset's classes; 10 for --summary")
    width: float = _field(
        0.5, "width multiplier of the MobileNet, 1.0 = the paper's network (--summary "
        "defaults to 1.0, which prints the reference parameter counts)",
        group="model", above=0)
    small_input: bool = _field(
        False, "fewer early downsamplings, for 32x32 inputs as CIFAR MobileNets do (digits "
        "carry 8x8 pixels of information and the standard strides are ~7x cheaper)",
        group="model")
    batch_norm: bool = _field(
        True, "batch normalization after every convolution (else convolutions get a bias)",
        group="model")
    dtype: str = _field("float32", "compute dtype; parameters and the loss stay float32 "
                        "(float16 trains with dynamic loss scaling)",
                        group="model", choices=DTYPES)
    grad_at_zero: float = _field(0.0, "the derivative relu6 uses at exactly 0", group="model")
    grad_at_six: float = _field(0.0, "the derivative relu6 uses at exactly 6", group="model")
    nonlinearity: str = _field(
        "relu6", "what every relu6 layer computes: relu6, relu (unbounded; quantized over a "
        "range measured on training batches) or capped_relu (min(max(x, 0), --cap))",
        group="model", choices=NONLINEARITIES)
    cap: float = _field(6.0, "the bound of --nonlinearity capped_relu (6 computes relu6)",
                        group="model", above=0)
    activation_bits: int | None = _field(
        None, "fake-quantize every relu6 output (for MobileNetV3 the relu6 inside hard-swish "
        "and hard-sigmoid; with --nonlinearity relu every ReLU) to this many bits during "
        "training and evaluation", group="model", minimum=2, below=17, derived="float")
    quant_scheme: str = _field(
        "affine", "relu6's grid with --activation-bits: affine (2^B levels on [0, 6]) or "
        "fixed_point (3 integer bits, B-3 fractional: steps of 2^-(B-3))", group="model",
        choices=QUANT_SCHEMES)
    calibration: str = _field(
        "max", "the range of a quantized relu: a running mean of each training batch's max "
        "or 99.99th percentile", group="model", choices=CALIBRATIONS)

    # --- quantization-aware training (issue 16; docs/qat.md) ---
    weight_bits: int | None = _field(
        None, "quantization-aware training of LiteRT's int8 model: batch norm folded into "
        "the convolutions and every weight fake-quantized to this many bits (symmetric, "
        "zero point 0); with --activation-bits every activation tensor too (relu6 on "
        "[0, 6], the rest on moving-average ranges)", group="model", minimum=2, below=17,
        derived="float weights")
    weight_granularity: str = _field(
        "per_channel", "weight scales with --weight-bits: one per output channel (LiteRT's) "
        "or one per tensor", group="model", choices=QAT_GRANULARITIES)
    bn_freeze_step: int | None = _field(
        None, "with --weight-bits: the step from which folded batch norm trains with its "
        "running statistics, frozen (PyTorch's freeze_bn_stats)", group="model", minimum=0,
        derived="never")
    init_from: str | None = _field(
        None, "fine-tune from the newest checkpoint of this run's --workdir (a run of the "
        "same model and classes, e.g. a float run): its parameters and batch statistics, "
        "a fresh optimizer and schedule", group="model")

    # --- data ---
    data: str = _field(
        "digits", "digits: scikit-learn's bundled 8x8 digits upsampled to 32x32; cifar10: "
        "the python-pickle files in --data-dir; synthetic: random images, for benchmarks",
        group="data", choices=DATASETS)
    data_dir: str | None = _field(
        None, "CIFAR-10 directory with data_batch_1..5, test_batch, batches.meta",
        group="data",
        # The data are named by `data`; this is only where a copy of them lies.
        neutral="where the data set is read from, not which one")
    image_size: int = _field(32, "side of the synthetic images (digits and CIFAR-10 are 32)",
                             group="data", minimum=1)
    synthetic_examples: int = _field(1024, "training examples of the synthetic data set",
                                     group="data", minimum=1)
    augment: bool = _field(True, "random shifts (and horizontal flips on CIFAR-10) on device",
                           group="data")
    max_shift: int | None = _field(
        None, "largest random shift of the augmentation, in pixels", group="data", minimum=0,
        derived=f"{DEFAULT_MAX_SHIFT['digits']} on digits, {FALLBACK_MAX_SHIFT} otherwise")

    # --- training ---
    steps: int = _field(550, "training steps (or --epochs)", group="training", minimum=1)
    epochs: float | None = _field(None, "training length in passes over the training set, "
                                  "instead of --steps", group="training", above=0,
                                  derived="--steps decides")
    batch_size: int = _field(64, "global batch size; must divide by the number of devices",
                             group="training", minimum=1)
    eval_batch_size: int = _field(
        512, "global evaluation batch size", group="training", minimum=1,
        # Evaluation runs in eval mode (running statistics), example by example;
        # the batch size only changes the padding of the last batch, which is masked.
        neutral="evaluation is per example; the batch only changes the masked padding")
    optimizer: str = _field("sgd", "SGD with Nesterov momentum, or AdamW", group="training",
                            choices=OPTIMIZERS)
    learning_rate: float | None = _field(
        None, "peak learning rate after the linear warm-up, then cosine decay to 0",
        group="training", above=0, derived=_per_optimizer(DEFAULT_LEARNING_RATE))
    momentum: float = _field(0.9, "SGD momentum, AdamW's b1", group="training",
                             minimum=0, below=1)
    weight_decay: float | None = _field(
        None, "weight decay of the kernels, not of batch-norm parameters or biases (added "
        "to the gradient for sgd, decoupled for adamw)", group="training", minimum=0,
        derived=_per_optimizer(DEFAULT_WEIGHT_DECAY))
    warmup_steps: int | None = _field(None, "linear warm-up steps", group="training",
                                      minimum=0,
                                      derived=f"1/{WARMUP_DIVISOR} of the steps, rounded down")
    label_smoothing: float = _field(0.0, "label smoothing of the training loss (the test "
                                    "loss is plain)", group="training", minimum=0, below=1)
    seed: int = _field(0, "seeds initialization, data order, augmentation and dropout",
                       group="training", minimum=0)

    # --- run ---
    log_every: int = _field(
        25, "steps between metric fetches from the devices and metrics.jsonl lines",
        group="run", minimum=1,
        # The sums are fetched and reset; the parameters and the data order do not see it.
        neutral="fetching the metric sums does not touch the parameters")
    eval_every: int = _field(
        150, "steps between test evaluations; 0: only at the end", group="run", minimum=0,
        neutral="evaluation reads the state without changing it")
    checkpoint_every: int = _field(
        150, "steps between checkpoints; 0: only at the end", group="run", minimum=0,
        neutral="saving reads the state without changing it")
    keep_checkpoints: int = _field(2, "checkpoints kept in the work directory", group="run",
                                   minimum=1, neutral="only how many checkpoints stay on disk")
    progress: bool = _field(True, "a progress bar and status lines (the last line is printed "
                            "either way)", group="run", neutral="output only")
    count_kinks: bool = _field(
        False, "count, at every step, the inputs of every relu6 exactly on 0 and on 6 "
        "(hard-swish/hard-sigmoid: on -3 and 3) per layer, summed over the run (in the "
        "returned summary's boundary_hits)", group="run")
    plot: bool = _field(True, "write metrics.png (training curves) at the end", group="run",
                        neutral="output only")
    distributed: bool = _field(
        False, "multi-process launch: call jax.distributed.initialize() first (cluster "
        "found under SLURM, Open MPI, Cloud TPU; else from JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID)", group="run",
        # Batch norm and the loss are computed over the global batch, so the number of
        # devices (and of hosts) does not change the result beyond rounding.
        neutral="the global batch, not the device count, decides the result")
    allow_schedule_change: bool = _field(
        False, "on resume, accept another --steps/--epochs: the learning-rate schedule is "
        "recomputed for the new length from the restored step on", group="run",
        neutral="it only permits a schedule change, which is checked on its own")

    def validate(self) -> Config:
        """Checks every field against its type, choices and bounds; returns ``self``.

        Numbers must be finite (no NaN or infinity).

        Raises:
          InvalidSetting: (a ``ValueError``) naming the bad field and what is allowed.

        Examples:
          >>> try:
          ...     Config(width=float("nan")).validate()
          ... except ValueError as error:
          ...     print(error)
          Config: width must be a finite number, got nan.
        """
        settings.validate(self)
        _check_qat(self)
        return self


def _check_qat(config: Config) -> None:
    """The quantization-aware-training settings that need one another."""
    if config.weight_bits is None:  # --weight-granularity, --bn-freeze-step: no effect.
        return
    if config.bn_freeze_step is not None and not config.batch_norm:
        raise InvalidSetting("bn_freeze_step", "needs batch norm (--batch-norm)")
    if config.nonlinearity != "relu6" or config.quant_scheme != "affine":
        raise InvalidSetting("weight_bits", "trains LiteRT's int8 model: it needs "
                             "--nonlinearity relu6 and --quant-scheme affine")


def get_config(**overrides: object) -> Config:
    """The default configuration, with ``overrides`` applied and validated.

    Args:
      **overrides: Field names of :class:`Config` and their values.

    Returns:
      A validated :class:`Config`.

    Raises:
      TypeError: if an override names no field.
      ValueError: if a value is not allowed (:meth:`Config.validate`).
    """
    fields = {field.name for field in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"get_config: unknown setting(s) {unknown}; known: {sorted(fields)}.")
    return Config(**overrides).validate()  # type: ignore[arg-type]


# --- derived defaults ----------------------------------------------------------------------


def learning_rate(config: Config) -> float:
    """The peak learning rate: ``config.learning_rate``, else the optimizer's default.

    Examples:
      >>> learning_rate(Config()), learning_rate(Config(optimizer="adamw"))
      (0.05, 0.01)
    """
    if config.learning_rate is not None:
        return float(config.learning_rate)
    return DEFAULT_LEARNING_RATE[config.optimizer]


def weight_decay(config: Config) -> float:
    """The weight decay: ``config.weight_decay``, else the optimizer's default.

    Examples:
      >>> weight_decay(Config()), weight_decay(Config(optimizer="adamw"))
      (5e-05, 0.05)
    """
    if config.weight_decay is not None:
        return float(config.weight_decay)
    return DEFAULT_WEIGHT_DECAY[config.optimizer]


def warmup_steps(config: Config, *, total_steps: int) -> int:
    """``config.warmup_steps``, else ``total_steps // 10``.

    Examples:
      >>> warmup_steps(Config(), total_steps=300), warmup_steps(Config(), total_steps=9)
      (30, 0)
    """
    if config.warmup_steps is not None:
        return config.warmup_steps
    return total_steps // WARMUP_DIVISOR


def max_shift(config: Config) -> int:
    """The augmentation's largest shift in pixels: 0 without ``augment``, else
    ``config.max_shift``, else 2 on digits and 4 on other data.

    Examples:
      >>> max_shift(Config()), max_shift(Config(data="cifar10")), max_shift(Config(augment=False))
      (2, 4, 0)
    """
    if not config.augment:
        return 0
    if config.max_shift is not None:
        return config.max_shift
    return DEFAULT_MAX_SHIFT.get(config.data, FALLBACK_MAX_SHIFT)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per pass over ``num_examples`` (the remainder of each epoch is skipped).

    Defined here, where no JAX is imported, for the settings and the input pipeline alike.

    Raises:
      ValueError: if the batch is larger than the dataset.
    """
    if batch_size > num_examples:
        raise ValueError(f"steps_per_epoch: batch_size {batch_size} is larger than the "
                         f"{num_examples} training examples.")
    return num_examples // batch_size


def total_steps(config: Config, *, num_train: int) -> int:
    """``config.steps``, or ``ceil(epochs * steps per epoch)`` (at least 1) with ``epochs``.

    Raises:
      ValueError: with ``epochs``, if the batch is larger than the ``num_train`` training
        examples.

    Examples:
      >>> total_steps(Config(steps=7), num_train=64)
      7
      >>> total_steps(Config(epochs=2.5, batch_size=16), num_train=64)  # 4 steps per epoch.
      10
    """
    if config.epochs is None:
        return config.steps
    return max(1, math.ceil(config.epochs * steps_per_epoch(num_train, config.batch_size)))


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The settings a run uses, with every derived default resolved (:func:`resolve`).

    Attributes:
      learning_rate: Peak learning rate of the schedule.
      weight_decay: Weight decay of the kernels.
      total_steps: Training steps (the schedule's length).
      steps_per_epoch: Full batches per pass over the training set.
      warmup_steps: Linear warm-up steps.
      max_shift: Largest random shift of the augmentation in pixels (0 without augment).
    """

    learning_rate: float
    weight_decay: float
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    max_shift: int


def resolve(config: Config, *, num_train: int) -> Resolved:
    """Resolves the derived defaults of ``config`` for a training set of ``num_train`` examples.

    Args:
      config: The configuration; its ``None`` fields take their derived defaults.
      num_train: Training examples of the data set (for ``epochs``).

    Returns:
      The :class:`Resolved` settings.

    Raises:
      ValueError: if the batch is larger than the training set (a run needs one batch).

    Examples:
      >>> resolve(Config(), num_train=1437)
      Resolved(learning_rate=0.05, weight_decay=5e-05, total_steps=550, steps_per_epoch=22,
               warmup_steps=55, max_shift=2)
      >>> resolve(Config(optimizer="adamw", data="cifar10", epochs=2.0), num_train=50000)
      Resolved(learning_rate=0.01, weight_decay=0.05, total_steps=1562, steps_per_epoch=781,
               warmup_steps=156, max_shift=4)
    """
    per_epoch = steps_per_epoch(num_train, config.batch_size)
    steps = total_steps(config, num_train=num_train)
    return Resolved(learning_rate=learning_rate(config), weight_decay=weight_decay(config),
                    total_steps=steps, steps_per_epoch=per_epoch,
                    warmup_steps=warmup_steps(config, total_steps=steps),
                    max_shift=max_shift(config))
