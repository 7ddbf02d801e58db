"""The options every layer of a MobileNet shares, checked and handed down as one record.

A :class:`~mobilenet.models.MobileNet`'s fields reach its layers as ``cfg``, a
:class:`LayerOptions` (:mod:`mobilenet.models` adds the float activations to it,
:class:`~mobilenet.qat_layers.QATLayers` the quantized layers' methods). Besides the
network's own options (dtype, batch norm, padding, the relu6 kink derivatives) it carries
the implementations the benchmarks compare, each computing the same values
(:meth:`LayerOptions.conv` builds the convolution they choose):

* ``depthwise``: the depthwise convolution, one of :data:`mobilenet.depthwise.IMPLS`
  (``"auto"``: the fast one for the platform; ``"grouped"``; ``"shifted"``; see
  :func:`mobilenet.depthwise.depthwise_conv`);
* ``pointwise``, one of :data:`POINTWISE`: the 1x1 convolutions as one matrix product
  (``"matmul"``, :class:`mobilenet.depthwise.PointwiseConv`; ~3x faster training on
  CPU), and the stem as one over its 3x3 windows (:class:`mobilenet.depthwise.PatchConv`),
  or both as ``nn.Conv`` (``"conv"``). With ``depthwise="grouped"``, ``"conv"`` gives the
  plain flax model, the baseline of the benchmarks;
* ``activation``, one of :data:`ACTIVATIONS`: jrelu6.linen modules with the settable
  kink derivatives (``"jrelu6"``), or jax.nn.relu6 / hard_swish / hard_sigmoid
  (``"jax.nn"``, for comparison; ``grad_at_*`` are then ignored);

and the quantization fields (:mod:`mobilenet.qat_layers` says what each does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn

from mobilenet.depthwise import IMPLS, DepthwiseConv, PatchConv, PointwiseConv, accumulator_dtype
from mobilenet.qat_layers import QATLayers, check_quantization

ACTIVATIONS = ("jrelu6", "jax.nn")
POINTWISE = ("matmul", "conv")

if TYPE_CHECKING:
    from typing_extensions import Self

Dtype = Any


class _LayerFields(NamedTuple):
    """The layer options every block shares (a model's fields, passed down)."""

    dtype: Dtype
    batch_norm: bool
    bn_momentum: float
    bn_epsilon: float
    depthwise: str
    pointwise: str
    activation: str
    grad_at_zero: Any
    grad_at_six: Any
    symmetric_padding: bool
    nonlinearity: str = "relu6"
    cap: float = 6.0
    activation_bits: int | None = None
    quant_scheme: str = "affine"
    calibration: str = "max"
    # Quantization-aware training (None: float weights; see ConvBN and mobilenet.quantization).
    weight_bits: int | None = None
    weight_granularity: str = "per_channel"
    bn_frozen: Any = False  # Training with the running statistics (a traced bool).


class LayerOptions(_LayerFields, QATLayers):
    """The layer options, with the padding and the convolutions they choose, and the
    quantized layers' methods (:class:`~mobilenet.qat_layers.QATLayers`)."""

    __slots__ = ()

    def padding(self, kernel_size: int) -> str | tuple[tuple[int, int], tuple[int, int]]:
        """PyTorch's ``(k - 1) // 2`` on each side, or TensorFlow's "SAME" (Keras).

        The two differ only for strided layers on even sizes, where "SAME" pads
        only after: the same shapes, but not the same sampled pixels.
        """
        if not self.symmetric_padding:
            return "SAME"
        pad = (kernel_size - 1) // 2
        return ((pad, pad), (pad, pad))

    def conv(self, features: int, kernel_size: int, strides: int, *, depthwise: bool,
             name: str) -> nn.Module:
        """A float convolution as ``depthwise`` and ``pointwise`` choose: the depthwise one
        (:class:`~mobilenet.depthwise.DepthwiseConv`), a 1x1 one as one matrix product
        (:class:`~mobilenet.depthwise.PointwiseConv`), a wider one (the stem) as one over its
        windows (:class:`~mobilenet.depthwise.PatchConv`) or ``nn.Conv``; a bias only without
        batch norm. Before a batch norm (which works in float32) a half-precision depthwise
        convolution or product returns its float32 sums as they are
        (:func:`~mobilenet.depthwise.depthwise_conv`'s ``preferred_element_type``,
        :func:`~mobilenet.depthwise.mixed_matmul`)."""
        use_bias = not self.batch_norm
        out_dtype = (accumulator_dtype(self.dtype)
                     if self.batch_norm and self.dtype is not None else None)
        if depthwise:
            return DepthwiseConv(features, (kernel_size, kernel_size), strides=strides,
                                 padding=self.padding(kernel_size), use_bias=use_bias,
                                 impl=self.depthwise, dtype=self.dtype,
                                 preferred_element_type=out_dtype, name=name)
        if kernel_size == 1 and strides == 1 and self.pointwise == "matmul":
            return PointwiseConv(features, use_bias=use_bias, dtype=self.dtype,
                                 preferred_element_type=out_dtype, name=name)
        if self.pointwise == "matmul":
            return PatchConv(features, use_bias=use_bias, dtype=self.dtype,
                             preferred_element_type=out_dtype,
                             kernel_size=(kernel_size, kernel_size), strides=strides,
                             padding=self.padding(kernel_size), name=name)
        return nn.Conv(features, (kernel_size, kernel_size), strides=strides,
                       padding=self.padding(kernel_size), use_bias=use_bias, dtype=self.dtype,
                       name=name)

    @classmethod
    def of(cls, model: Any, *, bn_frozen: Any = False) -> Self:
        """The options of ``model`` (a :class:`~mobilenet.models.MobileNet`), checked
        (:func:`check`); its class's reference epsilon where ``bn_epsilon`` is ``None``."""
        check(model)
        epsilon = model.default_bn_epsilon if model.bn_epsilon is None else model.bn_epsilon
        shared = {name: getattr(model, name) for name in cls._fields
                  if name not in ("bn_epsilon", "bn_frozen")}  # The model's fields by name.
        return cls(**shared, bn_epsilon=epsilon, bn_frozen=bn_frozen)


def check(model: Any) -> None:
    """Checks a model's options (the error names its class).

    Raises:
      ValueError: an implementation not in :data:`mobilenet.depthwise.IMPLS`,
        :data:`POINTWISE` or :data:`ACTIVATIONS`; a quantization setting that
        :func:`~mobilenet.qat_layers.check_quantization` refuses; a width multiplier
        that is not positive, or a number of classes that is not a positive int.
    """
    name = type(model).__name__
    if model.depthwise not in IMPLS:
        raise ValueError(f"{name}: depthwise must be one of {IMPLS}, got {model.depthwise!r}")
    if model.pointwise not in POINTWISE:
        raise ValueError(f"{name}: pointwise must be one of {POINTWISE}, "
                         f"got {model.pointwise!r}")
    if model.activation not in ACTIVATIONS:
        raise ValueError(f"{name}: activation must be one of {ACTIVATIONS}, "
                         f"got {model.activation!r}")
    check_quantization(name, model)
    if not model.width_multiplier > 0:
        raise ValueError(f"{name}: width_multiplier must be > 0, "
                         f"got {model.width_multiplier!r}")
    if not (isinstance(model.num_classes, int) and model.num_classes >= 1):
        raise ValueError(f"{name}: num_classes must be a positive int, "
                         f"got {model.num_classes!r}")
