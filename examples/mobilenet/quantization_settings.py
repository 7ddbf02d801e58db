"""The quantization settings of a run: quantized activations, quantization-aware training
(docs/qat.md) and fine-tuning from another run.

A base of :class:`mobilenet.configs.default.Config`: its fields join the ``model``
group of ``--help``, after the float model's. Like the rest of the settings, this
module imports no JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mobilenet.infra import settings
from mobilenet.infra.settings import InvalidSetting

# As mobilenet.quantization's (this module imports no JAX).
NONLINEARITIES = ("relu6", "relu", "capped_relu")
QUANT_SCHEMES = ("affine", "fixed_point")
CALIBRATIONS = ("max", "percentile")
QAT_GRANULARITIES = ("per_channel", "per_tensor")  # As mobilenet.quantization's.

_field = settings.setting


@dataclasses.dataclass
class QuantizationSettings:
    """The settings of the quantized layers (:mod:`mobilenet.qat_layers`), all off by default."""

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

    def model_fields(self) -> dict[str, Any]:
        """The quantized layers' fields of :class:`mobilenet.models.MobileNet`, from these
        settings (the quantization-aware-training ones only with ``weight_bits``)."""
        fields = {"nonlinearity": self.nonlinearity, "cap": self.cap,
                  "activation_bits": self.activation_bits, "quant_scheme": self.quant_scheme,
                  "calibration": self.calibration}
        if self.weight_bits is not None:
            fields.update(weight_bits=self.weight_bits,
                          weight_granularity=self.weight_granularity,
                          bn_freeze_step=self.bn_freeze_step)
        return fields


def check_qat(config: Any) -> None:
    """The quantization-aware-training settings that need one another."""
    if config.weight_bits is None:  # --weight-granularity, --bn-freeze-step: no effect.
        return
    if config.bn_freeze_step is not None and not config.batch_norm:
        raise InvalidSetting("bn_freeze_step", "needs batch norm (--batch-norm)")
    if config.nonlinearity != "relu6" or config.quant_scheme != "affine":
        raise InvalidSetting("weight_bits", "trains LiteRT's int8 model: it needs "
                             "--nonlinearity relu6 and --quant-scheme affine")
