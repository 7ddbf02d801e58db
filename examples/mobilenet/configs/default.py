"""The default configuration: MobileNetV2 on scikit-learn's digits, tuned for a 2-core CPU.

``python examples/train.py`` with no flags trains exactly this configuration;
every field has a flag of the same name (``--batch-size`` for ``batch_size``).
The defaults were chosen by measurement on a 2-core CPU: MobileNetV2 at half
width with the standard strides (32x32 inputs end at 1x1; digits carry 8x8
pixels of information, so nothing is lost) takes about 0.2 s per step at
batch 128, while the small-input variant costs about 7x more per step for no
gain on digits. SGD at 0.05 with shifts of at most 2 pixels reaches about 98%
test accuracy in 300 steps (see the README for the measured figures).

Examples:
  >>> from mobilenet.configs import get_config
  >>> config = get_config(model="tiny", steps=20)
  >>> config.model, config.steps, config.optimizer
  ('tiny', 20, 'sgd')
"""

from __future__ import annotations

import dataclasses

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "tiny")
DATASETS = ("digits", "cifar10", "synthetic")
OPTIMIZERS = ("sgd", "adamw")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class Config:
    """Every setting of a training run.

    Attributes:
      model: Architecture, one of :data:`MODELS` (``tiny`` is a small test network).
      num_classes: Classifier outputs; ``None`` takes the dataset's number of classes.
      width: Width multiplier of the MobileNet (1.0 = the paper's network).
      small_input: Fewer early downsamplings, for 32x32 inputs (CIFAR-style MobileNets).
      batch_norm: Batch normalization after every convolution (else a bias).
      dtype: Compute dtype, ``"float32"`` or ``"bfloat16"``; parameters stay float32.
      grad_at_zero: The derivative relu6 uses at exactly 0 (jrelu6's boundary setting).
      grad_at_six: The derivative relu6 uses at exactly 6.
      data: ``"digits"`` (bundled with scikit-learn), ``"cifar10"`` (needs ``data_dir``)
        or ``"synthetic"`` (random images, for benchmarks).
      data_dir: Directory holding CIFAR-10's python pickles (``data_batch_1`` ... ``test_batch``).
      image_size: Side of the (square) synthetic images; digits and CIFAR-10 are 32.
      synthetic_examples: Training examples in the synthetic dataset.
      augment: Random shifts (and horizontal flips on CIFAR-10) on device, in the jitted step.
      max_shift: Largest random shift, in pixels, of the augmentation; ``None``: 2 on
        digits (half a pixel of the original 8x8 image), 4 otherwise (CIFAR's usual).
      batch_size: Global batch size (all devices together); must divide by the device count.
      eval_batch_size: Global batch size of evaluation.
      steps: Training steps; ignored when ``epochs`` is set.
      epochs: Training length in passes over the training set (overrides ``steps``).
      optimizer: ``"sgd"`` (Nesterov momentum) or ``"adamw"``.
      learning_rate: Peak learning rate, reached at the end of the warm-up;
        ``None``: 0.05 for SGD, 1e-2 for AdamW (measured best on digits).
      momentum: SGD momentum (``b1`` for AdamW).
      weight_decay: Weight decay of the kernels (never of batch-norm parameters or
        biases); ``None``: 5e-5 for SGD (added to the gradient), 0.05 for AdamW (decoupled).
      warmup_steps: Linear warm-up length; ``None`` takes 10% of the steps.
      label_smoothing: Label smoothing of the training loss (the test loss is plain).
      seed: Seeds initialization, data order, augmentation and dropout.
      log_every: Steps between metric fetches (device to host) and JSON lines.
      eval_every: Steps between evaluations on the test split (0: only at the end).
      checkpoint_every: Steps between checkpoints (0: only at the end).
      keep_checkpoints: Checkpoints kept in the work directory.
      progress: Show a progress bar and a few status lines; ``False`` is silent.
      plot: Write ``metrics.png`` (training curves) into the work directory at the end.
      distributed: Call ``jax.distributed.initialize()`` first (multi-host launches).
    """

    model: str = "mobilenet_v2"
    num_classes: int | None = None
    width: float = 0.5
    small_input: bool = False
    batch_norm: bool = True
    dtype: str = "float32"
    grad_at_zero: float = 0.0
    grad_at_six: float = 0.0

    data: str = "digits"
    data_dir: str | None = None
    image_size: int = 32
    synthetic_examples: int = 1024
    augment: bool = True
    max_shift: int | None = None

    batch_size: int = 128
    eval_batch_size: int = 512
    steps: int = 300
    epochs: float | None = None

    optimizer: str = "sgd"
    learning_rate: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_steps: int | None = None
    label_smoothing: float = 0.1

    seed: int = 0
    log_every: int = 25
    eval_every: int = 50
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    progress: bool = True
    plot: bool = True
    distributed: bool = False

    def validate(self) -> Config:
        """Checks the settings; returns ``self``.

        Raises:
          ValueError: naming the bad field and what is allowed.
        """
        _choice("model", self.model, MODELS)
        _choice("data", self.data, DATASETS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("dtype", self.dtype, DTYPES)
        for name in ("batch_size", "eval_batch_size", "steps", "log_every", "image_size",
                     "synthetic_examples", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"Config: {name} must be >= 1, got {getattr(self, name)!r}.")
        for name in ("eval_every", "checkpoint_every", "label_smoothing"):
            if getattr(self, name) < 0:
                raise ValueError(f"Config: {name} must be >= 0, got {getattr(self, name)!r}.")
        if self.max_shift is not None and self.max_shift < 0:
            raise ValueError(f"Config: max_shift must be >= 0, got {self.max_shift!r}.")
        if self.width <= 0:
            raise ValueError(f"Config: width must be > 0, got {self.width!r}.")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"Config: weight_decay must be >= 0, got {self.weight_decay!r}.")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"Config: learning_rate must be > 0, got {self.learning_rate!r}.")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"Config: epochs must be > 0, got {self.epochs!r}.")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"Config: num_classes must be >= 2, got {self.num_classes!r}.")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"Config: warmup_steps must be >= 0, got {self.warmup_steps!r}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(
                f"Config: label_smoothing must be in [0, 1), got {self.label_smoothing!r}.")
        return self


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Config: {name} must be one of {allowed}, got {value!r}.")


def get_config(**overrides: object) -> Config:
    """The default configuration, with ``overrides`` applied and validated.

    Args:
      **overrides: Field names of :class:`Config` and their values.

    Returns:
      A validated :class:`Config`.

    Raises:
      TypeError: if an override names no field.
    """
    fields = {field.name for field in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"get_config: unknown setting(s) {unknown}; known: {sorted(fields)}.")
    return Config(**overrides).validate()  # type: ignore[arg-type]
