"""MobileNetV1, V2 and V3 (Small, Large) in flax.linen, with jrelu6 activations.

V1 is Keras' ``MobileNet``, V2 and V3 torchvision's ``mobilenet_v2`` and ``mobilenet_v3_*``
(docs/example.md: how they were checked). Every model takes the options of
:class:`MobileNet`, which reach each layer as one record,
:class:`~mobilenet.layer_options.LayerOptions`; the quantized layers are in
:mod:`mobilenet.qat_layers`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = create_model("mobilenet_v2", num_classes=10)
  >>> init = lambda key, x: model.init(key, x, train=False)
  >>> shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  >>> shapes["params"]["logits"]["kernel"].shape
  (1280, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

import jrelu6
import jrelu6.linen
from mobilenet.batch_norm import BatchNorm
from mobilenet.depthwise import accumulator_dtype, global_pool, rounded
from mobilenet.layer_options import LayerOptions
from mobilenet.qat_layers import (
    QATConvBN,
    QATInvertedResidual,
    QATMobileNet,
    QATSqueezeExcite,
    relu6_grid,
)

Dtype = Any


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to the nearest multiple of ``divisor`` (torchvision's rule).

    Never rounds down by more than 10%, and never below ``min_value``
    (default ``divisor``).

    Examples:
      >>> make_divisible(32 * 0.75), make_divisible(72 * 0.35), make_divisible(10)
      (24, 24, 16)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# --- building blocks ----------------------------------------------------------


class _Layers(LayerOptions):
    """The layer options (:class:`~mobilenet.layer_options.LayerOptions`), with the activations."""

    __slots__ = ()

    def act(self, kind: str) -> Callable[[jax.Array], jax.Array]:
        """The activation ``kind`` ("relu6", "hard_swish", "hard_sigmoid", "relu").

        jrelu6.linen modules with ``activation="jrelu6"`` (named layers: their kink hits
        are recorded per layer), else jax.nn's; "relu" is ``jax.nn.relu`` in both. A
        quantization field may pick another (:meth:`~mobilenet.qat_layers.QATLayers.quantized_act`).
        """
        if (module := self.quantized_act(kind)) is not None:
            return module
        if kind == "relu":
            return jax.nn.relu
        if self.activation == "jax.nn":
            return {"relu6": jax.nn.relu6, "hard_swish": jax.nn.hard_swish,
                    "hard_sigmoid": jax.nn.hard_sigmoid}[kind]
        module = {"relu6": jrelu6.linen.ReLU6, "hard_swish": jrelu6.linen.HardSwish,
                  "hard_sigmoid": jrelu6.linen.HardSigmoid}[kind]
        return module(grad_at_zero=self.grad_at_zero, grad_at_six=self.grad_at_six)


class ConvBN(QATConvBN):
    """Convolution, then BatchNorm (or a conv bias without it), then an activation.

    Attributes:
      act: the activation kind, or ``None`` for a linear layer.
      depthwise: a depthwise convolution (``features`` must equal the input's).
    """

    features: int
    kernel_size: int
    strides: int
    layers: _Layers
    act: str | None = None
    depthwise: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool,
                 in_scale: jax.Array | None = None) -> jax.Array:
        """The layer's output; ``in_scale``: the scale of ``x``'s grid in full QAT, which
        puts the folded bias on the int8 file's int32 grid (float bias without it)."""
        cfg = self.layers
        if cfg.weight_bits is not None:  # QAT: batch norm folded, weights quantized.
            return self.quantized(x, train=train, in_scale=in_scale)
        x = cfg.conv(self.features, self.kernel_size, self.strides, depthwise=self.depthwise,
                     name="conv")(x)
        dtype = x.dtype if cfg.dtype is None else jnp.dtype(cfg.dtype)
        x = x.astype(accumulator_dtype(dtype))  # Half precision: BN and act. in float32.
        if cfg.batch_norm:  # flax's, with its own backward pass (docs/example.md).
            x = BatchNorm(use_running_average=not train, momentum=cfg.bn_momentum,
                          epsilon=cfg.bn_epsilon, dtype=x.dtype, name="bn")(x)
        if self.act is not None:  # Rounded inputs (same kinks), one rounding: docs/speed_notes.md
            x = cfg.act(self.act)(rounded(x, dtype))
        return x.astype(dtype)


class SqueezeExcite(QATSqueezeExcite):
    """Squeeze-and-excite: global pool, 1x1 down + ReLU, 1x1 up + hard-sigmoid gate.

    Attributes:
      squeeze: the hidden channels.
    """

    squeeze: int
    layers: _Layers

    @nn.compact
    def __call__(self, x: jax.Array, in_grid: Any = None) -> jax.Array:
        cfg = self.layers
        if cfg.tensor_bits is not None:  # Full QAT: the int8 file's tensors (qat_layers).
            return self.quantized(x, in_grid)
        s = cfg.act("relu")(cfg.dense(global_pool(x), self.squeeze, "reduce"))
        s = cfg.act("hard_sigmoid")(cfg.dense(s, x.shape[-1], "expand"))
        return x * s[:, None, None, :]


class InvertedResidual(QATInvertedResidual):
    """MobileNetV2/V3 block: [1x1 expand], depthwise, [squeeze-excite], 1x1 linear project,
    [+ the input].

    Attributes:
      expanded: the hidden (expanded) channels.
      kernel_size, strides: the depthwise convolution's.
      act: the activation kind of the expansion and depthwise layers.
      squeeze: the squeeze-excite hidden channels, or ``None`` for no SE.
    """

    expanded: int
    features: int
    kernel_size: int
    strides: int
    act: str
    layers: _Layers
    squeeze: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool,
                 in_scale: jax.Array | None = None) -> jax.Array:
        cfg, inputs, scale = self.layers, x, in_scale
        if self.expanded != x.shape[-1]:
            expand = ConvBN(self.expanded, 1, 1, cfg, self.act, name="expand")
            x, scale = expand(x, train=train, in_scale=scale), expand.out_scale()
        depthwise = ConvBN(self.expanded, self.kernel_size, self.strides, cfg, self.act,
                           depthwise=True, name="depthwise")
        x, scale = depthwise(x, train=train, in_scale=scale), depthwise.out_scale()
        if self.squeeze is not None:
            se = SqueezeExcite(self.squeeze, cfg, name="se")
            x, scale = se(x, depthwise.out_grid()), se.out_scale()
        project = ConvBN(self.features, 1, 1, cfg, None, name="project")
        x = project(x, train=train, in_scale=scale)
        if self.strides == 1 and inputs.shape[-1] == self.features:  # x + inputs (QAT: ADD).
            x = self.add(x, inputs, train=train, scales=(project.out_scale(), in_scale))
        return x


def _chain(layers: Sequence[Any], x: jax.Array, scale: jax.Array | None, *, train: bool
           ) -> tuple[jax.Array, jax.Array | None]:
    """``x`` through ``layers`` (:class:`ConvBN` or :class:`InvertedResidual`), each given
    the previous one's output scale; returns the output and its scale."""
    for layer in layers:
        x = layer(x, train=train, in_scale=scale)
        scale = layer.out_scale()
    return x, scale


# --- the models -------------------------------------------------------------------


class MobileNet(QATMobileNet):
    """What every MobileNet here shares: its options, and the checks and plumbing.

    Attributes:
      width_multiplier: scales every layer's channels (the paper's alpha).
      small_input: for ~32x32 images: the stem and the first strided block
        keep stride 1, so the network downsamples by 8 instead of 32.
      dtype: the compute dtype (e.g. ``jnp.bfloat16``); parameters stay in
        ``param_dtype`` and the logits are returned in float32.
      grad_at_zero: relu6's derivative at 0 (hard-swish's and hard-sigmoid's at -3).
      grad_at_six: relu6's derivative at 6 (hard-swish's and hard-sigmoid's at 3).
      batch_norm: BatchNorm after every convolution; ``False``: none, and the
        convolutions get biases instead.
      bn_momentum: the running statistics' decay:
        ``new = momentum * old + (1 - momentum) * batch``.
      bn_epsilon: BatchNorm's epsilon; ``None``: the reference's (``default_bn_epsilon``).
      dropout_rate: the classifier's dropout; ``None``: the reference's
        (``default_dropout_rate``). Training with a rate > 0 needs a ``"dropout"`` rng.
      depthwise, pointwise, activation: implementations of the depthwise and 1x1
        convolutions and of the activations, all computing the same values
        (:mod:`mobilenet.layer_options`).

    The quantization fields (all off by default) are :class:`~mobilenet.qat_layers.QATMobileNet`'s.
    """

    num_classes: int = 1000
    width_multiplier: float = 1.0
    small_input: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    grad_at_zero: Any = 0.0
    grad_at_six: Any = 0.0
    batch_norm: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float | None = None
    dropout_rate: float | None = None
    depthwise: str = "auto"
    pointwise: str = "matmul"
    activation: str = "jrelu6"

    # The reference's defaults, per subclass.
    default_bn_epsilon: ClassVar[float] = 1e-5
    default_dropout_rate: ClassVar[float] = 0.2
    # PyTorch's symmetric padding (torchvision's models) or TensorFlow's "SAME" (Keras').
    symmetric_padding: ClassVar[bool] = True

    def __call__(self, x: jax.Array, *, train: bool, bn_frozen: Any = False) -> jax.Array:
        """``(N, num_classes)`` float32 logits of an NHWC batch of images.

        Args:
          x: images, ``(N, H, W, 3)`` float.
          train: batch statistics and dropout (``True``; pass ``mutable=
            ["batch_stats"]`` and a ``"dropout"`` rng to ``apply``) or running
            statistics and no dropout (``False``).
          bn_frozen: with ``weight_bits``, train with the running statistics, left
            unchanged (a bool, or a traced one: ``step >= bn_freeze_step``).
        """
        cfg = _Layers.of(self, bn_frozen=bn_frozen)  # Checked: a ValueError names the class.
        rate = self.default_dropout_rate if self.dropout_rate is None else self.dropout_rate
        return self._forward(jnp.asarray(x, self.dtype), cfg, rate, train=train)

    def _forward(self, x, cfg, rate, *, train):  # pragma: no cover - overridden
        raise NotImplementedError

    def _channels(self, channels: float) -> int:
        """``channels`` scaled by the width multiplier, rounded as torchvision does."""
        return make_divisible(channels * self.width_multiplier)

    def _stem_stride(self) -> int:
        return 1 if self.small_input else 2

    def _block_strides(self, strides: Sequence[int]) -> list[int]:
        """The blocks' strides; with ``small_input`` the first strided block's becomes 1."""
        strides = list(strides)
        if self.small_input:
            first = next((i for i, stride in enumerate(strides) if stride > 1), None)
            if first is not None:
                strides[first] = 1
        return strides

    def _classify(self, x, cfg, rate, *, train, hidden: int | None = None,
                  in_grid: Any = None):
        """Global pool, [dense hidden + hard-swish], dropout, dense logits (float32).

        ``in_grid``: the grid of ``x`` in full QAT (:meth:`quantized_classify`)."""
        if cfg.tensor_bits is not None:  # Full QAT: the int8 file's tensors (qat_layers).
            return self.quantized_classify(x, cfg, rate, train=train, hidden=hidden,
                                           in_grid=in_grid)
        x = global_pool(x)
        if hidden is not None:
            x = cfg.act("hard_swish")(cfg.dense(x, hidden, "pre_logits"))
        x = nn.Dropout(rate, deterministic=not train, name="dropout")(x)
        return cfg.dense(x, self.num_classes, "logits").astype(jnp.float32)


class MobileNetV1(MobileNet):
    """MobileNetV1 (Howard et al. 2017), as Keras' ``MobileNet``: a 3x3 stride-2 stem, 13
    depthwise-separable blocks (3x3 depthwise, 1x1 pointwise, each + BN + ReLU6), global
    pooling, dropout and a dense classifier."""

    default_bn_epsilon = 1e-3
    default_dropout_rate = 1e-3
    symmetric_padding = False  # Keras pads strided layers after only, like "SAME".

    # (pointwise channels, depthwise stride) of the 13 blocks.
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
              (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def _channels(self, channels: float) -> int:
        return int(channels * self.width_multiplier)  # Keras' rule.

    @nn.compact
    def _forward(self, x, cfg, rate, *, train):
        x, scale = self._quantize_input(x, cfg)
        layers = [ConvBN(self._channels(32), 3, self._stem_stride(), cfg, "relu6", name="stem")]
        strides = self._block_strides([stride for _, stride in self.BLOCKS])
        for i, ((features, _), stride) in enumerate(zip(self.BLOCKS, strides)):
            channels = self.BLOCKS[i - 1][0] if i else 32
            layers += [ConvBN(self._channels(channels), 3, stride, cfg, "relu6", depthwise=True,
                              name=f"block{i + 1}_depthwise"),
                       ConvBN(self._channels(features), 1, 1, cfg, "relu6",
                              name=f"block{i + 1}_pointwise")]
        x = _chain(layers, x, scale, train=train)[0]
        return self._classify(x, cfg, rate, train=train, in_grid=relu6_grid(cfg))


class MobileNetV2(MobileNet):
    """MobileNetV2 (Sandler et al. 2018), as torchvision's ``mobilenet_v2``: a 3x3 stride-2
    stem, 17 inverted residual blocks with linear bottlenecks and ReLU6, a 1x1 head to 1280
    channels, global pooling, dropout and a dense classifier."""

    # (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
    BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))

    @nn.compact
    def _forward(self, x, cfg, rate, *, train):
        x, scale = self._quantize_input(x, cfg)
        x, scale = _chain([ConvBN(self._channels(32), 3, self._stem_stride(), cfg, "relu6",
                                  name="stem")], x, scale, train=train)
        # One (expansion, channels, stride) per block: a stage's later blocks have stride 1.
        blocks = [(t, c, s if i == 0 else 1) for t, c, n, s in self.BLOCKS for i in range(n)]
        strides = self._block_strides([s for _, _, s in blocks])
        for index, ((t, c, _), stride) in enumerate(zip(blocks, strides)):
            x, scale = _chain([InvertedResidual(round(x.shape[-1] * t), self._channels(c),
                                                3, stride, "relu6", cfg,
                                                name=f"block{index + 1}")], x, scale, train=train)
        last = make_divisible(1280 * max(1.0, self.width_multiplier))
        x = _chain([ConvBN(last, 1, 1, cfg, "relu6", name="head")], x, scale, train=train)[0]
        return self._classify(x, cfg, rate, train=train, in_grid=relu6_grid(cfg))


class _V3Block(NamedTuple):
    kernel: int
    expanded: int
    out: int
    se: bool
    act: str
    stride: int


# MobileNetV3's "RE" is ReLU, not ReLU6 (paper, torchvision and Keras alike).
_RE, _HS = "relu", "hard_swish"

# torchvision's (kernel, expanded, out, SE, activation, stride) rows, from the paper's Tables 1-2.
_V3_LARGE = tuple(_V3Block(*row) for row in (
    (3, 16, 16, False, _RE, 1), (3, 64, 24, False, _RE, 2), (3, 72, 24, False, _RE, 1),
    (5, 72, 40, True, _RE, 2), (5, 120, 40, True, _RE, 1), (5, 120, 40, True, _RE, 1),
    (3, 240, 80, False, _HS, 2), (3, 200, 80, False, _HS, 1), (3, 184, 80, False, _HS, 1),
    (3, 184, 80, False, _HS, 1), (3, 480, 112, True, _HS, 1), (3, 672, 112, True, _HS, 1),
    (5, 672, 160, True, _HS, 2), (5, 960, 160, True, _HS, 1), (5, 960, 160, True, _HS, 1),
))
_V3_SMALL = tuple(_V3Block(*row) for row in (
    (3, 16, 16, True, _RE, 2), (3, 72, 24, False, _RE, 2), (3, 88, 24, False, _RE, 1),
    (5, 96, 40, True, _HS, 2), (5, 240, 40, True, _HS, 1), (5, 240, 40, True, _HS, 1),
    (5, 120, 48, True, _HS, 1), (5, 144, 48, True, _HS, 1), (5, 288, 96, True, _HS, 2),
    (5, 576, 96, True, _HS, 1), (5, 576, 96, True, _HS, 1),
))


class _MobileNetV3(MobileNet):
    """MobileNetV3 (Howard et al. 2019), as torchvision's ``mobilenet_v3_*``: a 3x3 stride-2
    stem with hard-swish, inverted residual blocks (:attr:`BLOCKS`, some with squeeze-excite),
    a 1x1 head, global pooling, a hard-swish layer, dropout and a dense classifier."""

    default_bn_epsilon: ClassVar[float] = 1e-3
    BLOCKS: ClassVar[Sequence[_V3Block]] = ()
    LAST_CHANNEL: ClassVar[int] = 1280

    @nn.compact
    def _forward(self, x, cfg, rate, *, train):
        x, scale = self._quantize_input(x, cfg)
        layers: list[nn.Module] = [ConvBN(self._channels(16), 3, self._stem_stride(), cfg,
                                          "hard_swish", name="stem")]
        strides = self._block_strides([block.stride for block in self.BLOCKS])
        for i, (block, stride) in enumerate(zip(self.BLOCKS, strides)):
            expanded = self._channels(block.expanded)
            layers.append(InvertedResidual(
                expanded, self._channels(block.out), block.kernel, stride, block.act, cfg,
                squeeze=make_divisible(expanded // 4) if block.se else None,
                name=f"block{i + 1}"))
        layers.append(ConvBN(6 * self._channels(self.BLOCKS[-1].out), 1, 1, cfg, "hard_swish",
                             name="head"))
        x = _chain(layers, x, scale, train=train)[0]
        return self._classify(x, cfg, rate, train=train, hidden=self._channels(self.LAST_CHANNEL),
                              in_grid=layers[-1].out_grid())


class MobileNetV3Small(_MobileNetV3):
    """MobileNetV3-Small (Howard et al. 2019), as torchvision's ``mobilenet_v3_small``:
    11 inverted residual blocks, a 1024-unit hard-swish layer before the classifier."""

    BLOCKS = _V3_SMALL
    LAST_CHANNEL = 1024


class MobileNetV3Large(_MobileNetV3):
    """MobileNetV3-Large (Howard et al. 2019), as torchvision's ``mobilenet_v3_large``:
    15 inverted residual blocks, a 1280-unit hard-swish layer before the classifier."""

    BLOCKS = _V3_LARGE
    LAST_CHANNEL = 1280


class TinyMobileNet(MobileNet):
    """A few-layer MobileNet for tests: every kind of layer (a strided block with
    squeeze-excite and hard-swish, a residual block), in milliseconds; no dropout."""

    default_dropout_rate = 0.0

    @nn.compact
    def _forward(self, x, cfg, rate, *, train):
        x, scale = self._quantize_input(x, cfg)
        width = self._channels
        x = _chain([
            ConvBN(width(16), 3, self._stem_stride(), cfg, "relu6", name="stem"),
            InvertedResidual(width(48), width(24), 3, self._block_strides([2])[0], "hard_swish",
                             cfg, squeeze=width(16), name="block1"),
            InvertedResidual(width(72), width(24), 3, 1, "relu6", cfg, name="block2"),
            ConvBN(width(64), 1, 1, cfg, "hard_swish", name="head"),
        ], x, scale, train=train)[0]
        return self._classify(x, cfg, rate, train=train)


MODELS: Mapping[str, type[MobileNet]] = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": MobileNetV3Small,
    "mobilenet_v3_large": MobileNetV3Large,
    "tiny": TinyMobileNet,
}


def create_model(name: str, **kwargs: Any) -> MobileNet:
    """The model called ``name`` (a key of :data:`MODELS`), with ``kwargs`` as its fields.

    Raises:
      ValueError: for an unknown name.
    """
    if name not in MODELS:
        raise ValueError(f"create_model: unknown model {name!r}; choose one of "
                         f"{', '.join(MODELS)}")
    return MODELS[name](**kwargs)
