"""The default configuration: MobileNetV2 on scikit-learn's digits, tuned for a 2-core CPU.

``python examples/train.py`` with no flags trains exactly this configuration. Each
:class:`Config` field carries its help, choices and bounds (:mod:`mobilenet.infra.settings`):
``examples/train.py`` makes one flag per field and :meth:`Config.validate` checks them.
Defaults that depend on other settings are ``None`` here and resolved by :func:`resolve`.
No JAX is imported (docs/example.md says why these defaults).

Examples:
  >>> from mobilenet.configs import get_config
  >>> config = get_config(model="tiny", steps=20)
  >>> config.model, config.steps, config.optimizer
  ('tiny', 20, 'sgd')
"""

from __future__ import annotations

import dataclasses
import math

from mobilenet.infra import settings
from mobilenet.infra.run_settings import RunSettings
from mobilenet.quantization_settings import QuantizationSettings, check_qat

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "tiny")
DATASETS = ("digits", "cifar10", "synthetic")
OPTIMIZERS = ("sgd", "adamw")
DTYPES = ("float32", "bfloat16", "float16")

# Derived defaults (see `resolve`).
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "adamw": 1e-2}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-5, "adamw": 0.05}
WARMUP_DIVISOR = 10  # The default warm-up is total_steps // WARMUP_DIVISOR (10%).
DEFAULT_MAX_SHIFT = {"digits": 2}  # Half a pixel of the original 8x8 digits.
FALLBACK_MAX_SHIFT = 4  # CIFAR's usual shift, for every other dataset.


_field = settings.setting  # A field with its help, --help group, choices and bounds.


@dataclasses.dataclass
class _FloatRecipe:
    """The float recipe's settings: model, data and training."""

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

    # --- data ---
    data: str = _field(
        "digits", "digits: scikit-learn's bundled 8x8 digits upsampled to 32x32; cifar10: "
        "the python-pickle files in --data-dir; synthetic: random images, for benchmarks",
        group="data", choices=DATASETS)
    data_dir: str | None = _field(
        None, "CIFAR-10 directory with data_batch_1..5, test_batch, batches.meta",
        group="data", neutral="where the data set is read from, not which one")
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
        neutral="evaluation is per example; the batch only changes the masked padding")
    optimizer: str = _field("sgd", "SGD with Nesterov momentum, or AdamW", group="training",
                            choices=OPTIMIZERS)
    learning_rate: float | None = _field(
        None, "peak learning rate after the linear warm-up, then cosine decay to 0",
        group="training", above=0, derived=settings.per_choice(DEFAULT_LEARNING_RATE))
    momentum: float = _field(0.9, "SGD momentum, AdamW's b1", group="training",
                             minimum=0, below=1)
    weight_decay: float | None = _field(
        None, "weight decay of the kernels, not of batch-norm parameters or biases (added "
        "to the gradient for sgd, decoupled for adamw)", group="training", minimum=0,
        derived=settings.per_choice(DEFAULT_WEIGHT_DECAY))
    warmup_steps: int | None = _field(None, "linear warm-up steps", group="training",
                                      minimum=0,
                                      derived=f"1/{WARMUP_DIVISOR} of the steps, rounded down")
    label_smoothing: float = _field(0.0, "label smoothing of the training loss (the test "
                                    "loss is plain)", group="training", minimum=0, below=1)
    seed: int = _field(0, "seeds initialization, data order, augmentation and dropout",
                       group="training", minimum=0)


@settings.documented
@dataclasses.dataclass
class Config(RunSettings, QuantizationSettings, _FloatRecipe):
    """Every setting of a training run: the float recipe's (:class:`_FloatRecipe`), the
    quantized layers' (:mod:`mobilenet.quantization_settings`) and the run's operation
    (:mod:`mobilenet.infra.run_settings`); the attributes below come from the fields'
    metadata, in that order."""

    def validate(self) -> Config:
        """Checks every field against its type, choices and bounds (numbers finite); returns
        ``self``.

        Raises:
          InvalidSetting: (a ``ValueError``) naming the bad field and what is allowed.
        """
        settings.validate(self)
        check_qat(self)
        return self


def get_config(**overrides: object) -> Config:
    """The default configuration, with ``overrides`` (fields of :class:`Config`) applied
    and validated.

    Raises:
      TypeError: if an override names no field.
      ValueError: if a value is not allowed (:meth:`Config.validate`).
    """
    return settings.create(Config, overrides, caller="get_config").validate()


# --- derived defaults (the examples of `resolve` show each) ---------------------------------


def learning_rate(config: Config) -> float:
    """The peak learning rate: ``config.learning_rate``, else the optimizer's default."""
    if config.learning_rate is not None:
        return float(config.learning_rate)
    return DEFAULT_LEARNING_RATE[config.optimizer]


def weight_decay(config: Config) -> float:
    """The weight decay: ``config.weight_decay``, else the optimizer's default."""
    if config.weight_decay is not None:
        return float(config.weight_decay)
    return DEFAULT_WEIGHT_DECAY[config.optimizer]


def warmup_steps(config: Config, *, total_steps: int) -> int:
    """``config.warmup_steps``, else ``total_steps // 10``."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return total_steps // WARMUP_DIVISOR


def max_shift(config: Config) -> int:
    """The augmentation's largest shift in pixels: 0 without ``augment``, else
    ``config.max_shift``, else 2 on digits and 4 on other data.
    """
    if not config.augment:
        return 0
    if config.max_shift is not None:
        return config.max_shift
    return DEFAULT_MAX_SHIFT.get(config.data, FALLBACK_MAX_SHIFT)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per pass over ``num_examples`` (the remainder of each epoch is skipped).

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
    """
    if config.epochs is None:
        return config.steps
    return max(1, math.ceil(config.epochs * steps_per_epoch(num_train, config.batch_size)))


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The settings a run uses, with every derived default resolved (:func:`resolve`): the
    :class:`Config` fields of the same names (``max_shift`` is 0 without ``augment``), the
    run's length in steps and its full batches per pass over the training set."""

    learning_rate: float
    weight_decay: float
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    max_shift: int


def resolve(config: Config, *, num_train: int) -> Resolved:
    """Resolves the derived defaults of ``config`` for a training set of ``num_train`` examples.

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
