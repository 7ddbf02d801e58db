"""Quantization-aware training (QAT) in the MobileNets: the layers' quantized half.

:mod:`mobilenet.models` builds the float networks; its layers subclass the classes here,
which add what a model's quantization fields switch on (all off by default):

* ``nonlinearity`` (``"relu6"``; ``"relu"``, unbounded; or ``"capped_relu"``,
  ``min(max(x, 0), cap)``) replaces the relu6 layers, and ``activation_bits``
  fake-quantizes every relu6-family output (and ReLU's with ``nonlinearity="relu"``) to
  that many bits: relu6 on its ``quant_scheme``'s grid (``"affine"``, or
  ``"fixed_point"`` with 3 integer bits), a ReLU on the range its ``calibration``
  statistic measures (``"max"``, or ``"percentile"``: the 99.99th). These are the
  modules of :func:`mobilenet.quantization.activation` (:meth:`QATLayers.quantized_act`).
* ``weight_bits`` trains LiteRT's int8 model: batch norm folded into the convolutions
  and the weights fake-quantized to this many bits (:class:`QATConvBN`), with one scale
  per output channel (``weight_granularity="per_channel"``, LiteRT's) or per tensor;
  with ``activation_bits`` every activation tensor too, on moving ranges
  (:class:`~mobilenet.quantization.MovingRange`), each layer handing its output's grid
  scale (``out_scale``) to the next. From ``bn_freeze_step`` on (``None``: never),
  folded batch norm trains with its running statistics (the train step passes
  ``bn_frozen``). MobileNetV3's hard-swish layers quantize their input too
  (:meth:`QATLayers.hard_swish_q`), and squeeze-excite quantizes each tensor of LiteRT's
  int8 form of it (:meth:`QATSqueezeExcite.quantized`).
* Evaluation of an applied full-QAT model computes each op as LiteRT's int8 kernel does
  (:mod:`mobilenet.int8_emulation`), so that it equals the int8 file.

docs/qat.md describes the int8 file this trains for and how it is checked against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jrelu6
import jrelu6.linen
from mobilenet import int8_emulation, quantization
from mobilenet.batch_norm import batch_norm
from mobilenet.depthwise import depthwise_conv, global_pool


class QATLayers:
    """The quantized half of the layer options that :mod:`mobilenet.models` passes down
    (a base of its ``_Layers``, whose fields these methods read)."""

    __slots__ = ()

    @property
    def tensor_bits(self) -> int | None:
        """The bits of every activation tensor: ``activation_bits`` in full QAT, else None."""
        return self.activation_bits if self.weight_bits is not None else None

    def tensor_range(self, name: str | None = None) -> Callable[[jax.Array], jax.Array]:
        """A :class:`~mobilenet.quantization.MovingRange` in full QAT, else the identity."""
        if self.tensor_bits is None:
            return lambda x: x
        return quantization.MovingRange(self.tensor_bits, name=name)

    def quantize(self, x: jax.Array, name: str) -> tuple[jax.Array, jax.Array | None]:
        """``tensor_range(name)(x)`` and the scale of its grid (``None`` outside full QAT)."""
        if self.tensor_bits is None:
            return x, None
        quantizer = quantization.MovingRange(self.tensor_bits, name=name)
        return quantizer(x), quantizer.scale()

    def dense(self, x: jax.Array, features: int, name: str,
              in_scale: jax.Array | None = None, out: Any = None) -> jax.Array:
        """``nn.Dense`` of ``x``, or its weight-quantized twin with ``weight_bits`` (its
        bias on the int32 grid of ``in_scale``, the scale of ``x``, when given; with the
        output's grid ``out`` too, the int8 file's integer arithmetic)."""
        if self.weight_bits is None:
            return nn.Dense(features, dtype=self.dtype, name=name)(x)
        return quantization.QuantDense(features, self.weight_bits, self.weight_granularity,
                                       dtype=self.dtype, name=name)(x, in_scale, out)

    def act_q(self, kind: str, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """``act(kind)(x)`` and the scale of the output's grid (``None`` outside full QAT,
        and for hard-sigmoid, whose output only gates a product).

        In QAT hard-swish and ReLU are float, then quantized on a moving range named
        ``"{kind}_range"``, as LiteRT's HARD_SWISH and RELU ops quantize their outputs;
        hard-swish's input too, on ``"hard_swish_in_range"`` (:meth:`hard_swish_q`).
        """
        if self.tensor_bits is None:
            return self.act(kind)(x), None
        if kind == "hard_swish":
            return self.hard_swish_q(x)
        if kind == "relu":
            return self.quantize(jax.nn.relu(x), "relu_range")
        y = self.act(kind)(x)
        return y, (quantization.grid_scale(0.0, 6.0, self.tensor_bits) if kind == "relu6"
                   else None)

    def hard_swish_q(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """LiteRT's int8 HARD_SWISH in full QAT: its input on a moving range of its own
        (``"hard_swish_in_range"``, the int8 tensor the file holds between the layer and the
        op), its output on ``"hard_swish_range"``; the scale of the output's grid.

        Evaluation of an applied model computes the op as the file does
        (:func:`mobilenet.int8_emulation.hard_swish_values`); training is float hard-swish
        with straight-through fake quantization.
        """
        bits = self.tensor_bits
        before = quantization.MovingRange(bits, name="hard_swish_in_range")
        after = quantization.MovingRange(bits, name="hard_swish_range")
        x = before(x)
        if before.is_mutable_collection("batch_stats") or before.is_initializing():
            y = jrelu6.linen.HardSwish(grad_at_zero=self.grad_at_zero,
                                       grad_at_six=self.grad_at_six)(x)
        else:
            y = int8_emulation.hard_swish_values(x, module_grid(before), module_grid(after)
                                                 ).astype(x.dtype)
        return after(y), after.scale()

    def quantized_act(self, kind: str) -> Callable[[jax.Array], jax.Array] | None:
        """The activation ``kind`` a quantization field picks; ``None``: the float one.

        Another ``nonlinearity`` or ``activation_bits`` picks the modules of
        :func:`mobilenet.quantization.activation`. In QAT (``weight_bits``)
        hard-swish and ReLU are float (quantized on a moving range by :meth:`act_q`).
        """
        if self.weight_bits is not None and kind in ("hard_swish", "relu"):
            if kind == "relu":
                return jax.nn.relu
            return jrelu6.linen.HardSwish(grad_at_zero=self.grad_at_zero,
                                          grad_at_six=self.grad_at_six)
        if self.nonlinearity != "relu6" or self.activation_bits is not None:
            module = quantization.activation(
                kind, nonlinearity=self.nonlinearity, cap=self.cap,
                activation_bits=self.activation_bits, quant_scheme=self.quant_scheme,
                statistic=self.calibration, grad_at_zero=self.grad_at_zero,
                grad_at_six=self.grad_at_six)
            if module is not None:
                return module
        return None


class QATMobileNet(nn.Module):
    """The quantized half of :class:`mobilenet.models.MobileNet` (its base): the quantization
    fields, all off by default (this module's docstring says what each does), and the input
    and classifier of full QAT.

    Attributes:
      nonlinearity, cap, activation_bits, quant_scheme, calibration: quantized activations.
      weight_bits, weight_granularity, bn_freeze_step: quantization-aware training.
    """

    nonlinearity: str = "relu6"
    cap: float = 6.0
    activation_bits: int | None = None
    quant_scheme: str = "affine"
    calibration: str = "max"
    weight_bits: int | None = None
    weight_granularity: str = "per_channel"
    bn_freeze_step: int | None = None

    def _quantize_input(self, x: jax.Array, cfg: QATLayers) -> tuple[jax.Array, jax.Array | None]:
        """The int8 file's input QUANTIZE in full QAT, and its scale (call from ``_forward``;
        evaluation rounds as the file does, :func:`mobilenet.int8_emulation.quantize_values`)."""
        train = self.is_mutable_collection("batch_stats")
        grid = eval_grid(self, "input_range", train=train, given=cfg.tensor_bits)
        return cfg.quantize(x if grid is None else int8_emulation.quantize_values(
            x, grid).astype(x.dtype), "input_range")

    def quantized_classify(self, x: jax.Array, cfg: QATLayers, rate: float, *, train: bool,
                           hidden: int | None, in_grid: int8_emulation.Grid | None) -> jax.Array:
        """The classifier of :meth:`mobilenet.models.MobileNet._classify` in full QAT: the
        pool, the hidden layer's input and output and the logits on moving ranges.

        ``in_grid``: the grid of ``x``; evaluation then computes the pool and the logits as
        the int8 file does (:mod:`mobilenet.int8_emulation`).
        """
        grid = eval_grid(self, "pool_range", train=train, given=in_grid)
        x, scale = cfg.quantize(global_pool(x) if grid is None else int8_emulation.mean_values(
            x, in_grid, grid).astype(x.dtype), "pool_range")
        if hidden is not None:
            grid = eval_grid(self, "hard_swish_in_range", train=train, given=scale)
            x, scale = cfg.act_q("hard_swish", cfg.dense(x, hidden, "pre_logits", scale, out=grid))
        x = nn.Dropout(rate, deterministic=not train, name="dropout")(x)
        out = eval_grid(self, "logits_range", train=train, given=scale)
        x = cfg.quantize(cfg.dense(x, self.num_classes, "logits", scale, out=out),
                         "logits_range")[0]
        return x.astype(jnp.float32)


class QATConvBN(nn.Module):
    """The quantization-aware half of :class:`mobilenet.models.ConvBN` (its base)."""

    def quantized(self, x: jax.Array, *, train: bool, in_scale: jax.Array | None) -> jax.Array:
        """The layer in QAT (``weight_bits``): :meth:`_folded`, then the activation, and in
        full QAT the output on its grid (a moving range, or relu6's ``[0, 6]``)."""
        x = self._folded(x, train=train, in_scale=in_scale)
        if self.act is None:
            return self.layers.quantize(x, "out_range")[0]
        return self.layers.act_q(self.act, x)[0]

    def out_scale(self) -> jax.Array | None:
        """The scale of the last call's output grid (``None`` outside full QAT)."""
        cfg = self.layers
        if cfg.tensor_bits is None:
            return None
        if self.act == "relu6":
            return quantization.grid_scale(0.0, 6.0, cfg.tensor_bits)
        return _range_scale(self.variables, "out_range" if self.act is None
                            else f"{self.act}_range", bits=cfg.tensor_bits)

    def _folded(self, x: jax.Array, *, train: bool, in_scale: jax.Array | None) -> jax.Array:
        r"""The convolution with batch norm folded in and fake-quantized weights (QAT).

        With the running statistics :math:`\mu, \sigma^2` and
        :math:`f = \gamma / \sqrt{\sigma^2 + \epsilon}`, the layer's int8 form is
        ``conv(x, Q(w f)) + (beta - mu f)`` (:func:`jrelu6.fold_batch_norm`,
        :func:`jrelu6.fake_quant_weights`): evaluation, and training once
        ``bn_frozen`` (PyTorch's ``freeze_bn_stats``), compute exactly that. Before,
        training normalizes ``conv(x, Q(w f)) / f`` with the batch's statistics and
        updates the running ones (PyTorch's ``ConvBnReLU2d``): the weights are
        quantized as they will be exported while batch norm still sees its batches.
        With ``in_scale`` the deployed form's bias is on the accumulator's int32 grid,
        ``in_scale x weight scale`` (:func:`mobilenet.quantization.fake_quant_bias`).
        """
        cfg = self.layers
        channels = x.shape[-1]
        shape = ((self.kernel_size, self.kernel_size, 1, self.features) if self.depthwise
                 else (self.kernel_size, self.kernel_size, channels, self.features))
        kernel, bias = _ConvParams(shape, not cfg.batch_norm, name="conv")()
        axis = quantization.weight_axis(cfg.weight_granularity)

        def on_grid(bias, kernel):
            if in_scale is None:
                return bias
            return quantization.fake_quant_bias(bias, in_scale, quantization.weight_scale(
                kernel, cfg.weight_bits, cfg.weight_granularity))

        if not cfg.batch_norm:
            if not train and in_scale is not None:
                return self._integer(x, kernel, bias, in_scale)
            w = jrelu6.fake_quant_weights(kernel, num_bits=cfg.weight_bits, axis=axis)
            return self._conv(x, w.astype(cfg.dtype)) + on_grid(bias, kernel).astype(cfg.dtype)
        bn = _BatchNormVariables(self.features, name="bn")
        gamma, beta, mean, var = bn()
        factor = gamma * lax.rsqrt(var + cfg.bn_epsilon)
        if not train and in_scale is not None:
            return self._integer(x, kernel * factor, beta - mean * factor, in_scale)
        w = jrelu6.fake_quant_weights(kernel * factor, num_bits=cfg.weight_bits, axis=axis)
        c = self._conv(x, w.astype(cfg.dtype)).astype(jnp.float32)
        folded_bias = on_grid(beta - mean * factor, kernel * factor)

        def frozen(c):
            return c + folded_bias, mean, var

        def batch(c):
            return batch_norm(c / factor, gamma, beta, epsilon=cfg.bn_epsilon)

        if not train:
            return frozen(c)[0].astype(cfg.dtype)
        if isinstance(cfg.bn_frozen, bool):
            y, batch_mean, batch_var = (frozen if cfg.bn_frozen else batch)(c)
        else:
            y, batch_mean, batch_var = lax.cond(cfg.bn_frozen, frozen, batch, c)
        if not self.is_initializing():
            m = cfg.bn_momentum
            bn.update(jnp.where(cfg.bn_frozen, mean, m * mean + (1 - m) * batch_mean),
                      jnp.where(cfg.bn_frozen, var, m * var + (1 - m) * batch_var))
        return y.astype(cfg.dtype)

    def _integer(self, x: jax.Array, kernel: jax.Array, bias: jax.Array,
                 in_scale: jax.Array) -> jax.Array:
        """Evaluation given the input's scale, in the int8 file's integer arithmetic.

        ``x`` is on its grid (``(level - z) * in_scale``): the convolution of the integers
        ``level - z`` and the int8 weights, plus the int32 bias, is exact in float32 (its
        partial sums stay below 2**24), and is scaled once, by ``in_scale x weight scale``.
        The same values as ``conv(x, Q(w)) + fake_quant_bias(b)``, without the float sum's
        rounding errors, which move a value near a level's midpoint to the next level.
        """
        cfg = self.layers
        q, w_scale = jrelu6.quantize_weights(
            kernel, num_bits=cfg.weight_bits, axis=quantization.weight_axis(cfg.weight_granularity))
        step = jnp.asarray(in_scale, jnp.float32) * w_scale
        levels = jnp.round(x.astype(jnp.float32) / jnp.asarray(in_scale, jnp.float32))
        accumulator = self._conv(levels, q.astype(jnp.float32))
        accumulator = accumulator + jnp.round(bias.astype(jnp.float32) / step)
        out = self._out_grid()
        if out is not None:  # The file's requantization (mobilenet.int8_emulation).
            return int8_emulation.dequantize(int8_emulation.requantize(
                accumulator, in_scale, w_scale, out, relu=self.act == "relu"), out
            ).astype(cfg.dtype)
        return (accumulator * step).astype(cfg.dtype)

    def out_grid(self) -> int8_emulation.Grid | None:
        """The grid of the last call's output (``None`` outside full QAT or before the
        ranges exist)."""
        bits = self.layers.tensor_bits
        if bits is None or self.is_initializing():
            return None
        if self.act == "relu6":
            return int8_emulation.grid(0.0, 6.0, bits)
        return stored_grid(self.variables, "out_range" if self.act is None
                           else f"{self.act}_range", bits)

    def _out_grid(self) -> int8_emulation.Grid | None:
        """The grid the layer's int8 op writes (before a HARD_SWISH, its input's), in
        evaluation of an applied model (else ``None``)."""
        if self.act == "hard_swish" and self.layers.tensor_bits is not None:
            return (None if self.is_initializing() else stored_grid(
                self.variables, "hard_swish_in_range", self.layers.tensor_bits))
        return self.out_grid()

    def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """The layer's convolution with a given kernel (as the float layer computes it)."""
        cfg = self.layers
        padding = cfg.padding(self.kernel_size)
        if self.depthwise:
            return depthwise_conv(x, kernel, strides=self.strides, padding=padding,
                                  impl=cfg.depthwise)
        if self.kernel_size == 1 and self.strides == 1 and cfg.pointwise == "matmul":
            channels = x.shape[-1]
            y = jnp.matmul(x.reshape(-1, channels), kernel.reshape(channels, self.features))
            return y.reshape(*x.shape[:-1], self.features)
        return lax.conv_general_dilated(x, kernel, (self.strides, self.strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class _ConvParams(nn.Module):
    """A convolution's parameters alone (``kernel``, ``bias``), named as ``nn.Conv``'s."""

    shape: tuple[int, ...]
    use_bias: bool

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), self.shape, jnp.float32)
        bias = (self.param("bias", nn.initializers.zeros_init(), (self.shape[-1],),
                           jnp.float32) if self.use_bias else None)
        return kernel, bias


class _BatchNormVariables(nn.Module):
    """Batch norm's variables alone, named and initialised as :class:`BatchNorm`'s."""

    features: int

    def setup(self) -> None:
        self.mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,),
                                  jnp.float32)
        self.var = self.variable("batch_stats", "var", jnp.ones, (self.features,), jnp.float32)
        self.scale = self.param("scale", nn.initializers.ones_init(), (self.features,),
                                jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros_init(), (self.features,),
                               jnp.float32)

    def __call__(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        return self.scale, self.bias, self.mean.value, self.var.value

    def update(self, mean: jax.Array, var: jax.Array) -> None:
        self.mean.value = mean
        self.var.value = var


class FixedRange(nn.Module):
    """Fake-quantizes on a fixed ``[lo, hi]`` (:func:`jrelu6.fake_quant`); no variables.

    Attributes:
      lo, hi: the range.
      num_bits: the bit width.
    """

    lo: float
    hi: float
    num_bits: int

    def __call__(self, x: jax.Array) -> jax.Array:
        return jrelu6.fake_quant(x, min=self.lo, max=self.hi, num_bits=self.num_bits)

    def grid(self) -> int8_emulation.Grid:
        """The grid it quantizes on."""
        return int8_emulation.grid(self.lo, self.hi, self.num_bits)


#: LiteRT's MUL by 1/6 after the hard-sigmoid's fused ReLU6: the constant's int8 value 1 on
#: the scale fl(1/6) (the exporter writes it so; zero point 0).
GATE_CONSTANT_SCALE = float(np.float32(1.0) / np.float32(6.0))


class QATSqueezeExcite(nn.Module):
    """The quantization-aware half of :class:`mobilenet.models.SqueezeExcite`."""

    def out_scale(self) -> jax.Array | None:
        """The scale of the last call's output grid (``None`` outside full QAT)."""
        bits = self.layers.tensor_bits
        return None if bits is None else _range_scale(self.variables, "scale_range", bits=bits)

    def quantized(self, x: jax.Array, in_grid: int8_emulation.Grid | None) -> jax.Array:
        """Squeeze-excite in full QAT, tensor for tensor as LiteRT's int8 file computes it.

        The file holds: the pool (SUM, its 1 / n folded into the next layer) on
        ``pool_range``; the reduce layer with a fused ReLU on ``relu_range``; the expand
        layer with hard-sigmoid's ``+ 3`` in its bias and a fused ReLU6, on relu6's
        ``[0, 6]`` grid; MUL by 1/6 on the fixed ``[0, 1]`` grid (``gate_range``); the
        product with ``x`` (MUL) on ``scale_range``. Evaluation of an applied model, given
        ``x``'s grid ``in_grid``, computes each as the file does
        (:mod:`mobilenet.int8_emulation`); training is float with straight-through fake
        quantization on the same grids.
        """
        cfg, bits = self.layers, self.layers.tensor_bits
        pool = quantization.MovingRange(bits, name="pool_range")
        relu = quantization.MovingRange(bits, name="relu_range")
        gate = FixedRange(0.0, 1.0, bits, name="gate_range")
        product = quantization.MovingRange(bits, name="scale_range")
        emulate = not (in_grid is None or self.is_initializing()
                       or self.is_mutable_collection("batch_stats"))
        mean = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        s = pool(mean if not emulate else int8_emulation.mean_values(
            x, in_grid, module_grid(pool))).astype(x.dtype)
        s = relu(jax.nn.relu(cfg.dense(s, self.squeeze, "reduce", pool.scale(),
                                       out=module_grid(relu) if emulate else None)))
        relu6 = cfg.act("relu6")
        if not emulate:
            expand = cfg.dense(s, x.shape[-1], "expand", relu.scale())
            g = gate(relu6(expand + 3.0) / 6.0)
            return product(x * g[:, None, None, :])
        six, params = int8_emulation.grid(0.0, 6.0, bits), self.variables["params"]["expand"]
        q, w_scale = jrelu6.quantize_weights(
            params["kernel"], num_bits=cfg.weight_bits,
            axis=quantization.weight_axis(cfg.weight_granularity))
        h = relu6(int8_emulation.dense_values(s, relu.scale(), q, w_scale,
                                              params["bias"] + 3.0, six))
        g = gate(int8_emulation.dequantize(int8_emulation.multiply(
            int8_emulation.offsets(h, six.scale), jnp.int32(1), six.scale,
            GATE_CONSTANT_SCALE, gate.grid()), gate.grid()))
        y = int8_emulation.multiply_values(x, g[:, None, None, :], in_grid.scale,
                                           gate.grid().scale, module_grid(product))
        return product(y.astype(x.dtype))


class QATInvertedResidual(nn.Module):
    """The quantization-aware half of :class:`mobilenet.models.InvertedResidual`."""

    def add(self, x: jax.Array, inputs: jax.Array, *, train: bool,
            scales: tuple[jax.Array | None, jax.Array | None]) -> jax.Array:
        """The residual connection ``x + inputs``; in full QAT on the moving range
        ``add_range``, and in evaluation of an applied model as the int8 file's ADD
        (:func:`mobilenet.int8_emulation.add_values`), given ``scales``, those of ``x`` and
        ``inputs``."""
        out = eval_grid(self, "add_range", train=train, given=scales[1])
        x = (x + inputs if out is None else int8_emulation.add_values(
            x, inputs, *scales, out).astype(x.dtype))
        return self.layers.tensor_range("add_range")(x)

    def out_scale(self) -> jax.Array | None:
        """The scale of the last call's output grid (``None`` outside full QAT)."""
        bits = self.layers.tensor_bits
        if bits is None:
            return None
        stats = self.variables["batch_stats"]
        return _range_scale(stats if "add_range" in stats else stats["project"],
                            "add_range" if "add_range" in stats else "out_range", bits=bits)


def bn_frozen(model: Any, step: jax.Array) -> dict[str, Any]:
    """The keywords of a training call of ``model``: ``{"bn_frozen": step >=
    model.bn_freeze_step}`` where it freezes its folded batch norm from a step, else ``{}``."""
    freeze = getattr(model, "bn_freeze_step", None)
    return {} if freeze is None else {"bn_frozen": step >= freeze}


def relu6_grid(cfg: QATLayers) -> int8_emulation.Grid | None:
    """relu6's ``[0, 6]`` grid in full QAT (else ``None``)."""
    bits = cfg.tensor_bits
    return None if bits is None else int8_emulation.grid(0.0, 6.0, bits)


def eval_grid(module: Any, name: str, *, train: bool, given: Any
              ) -> int8_emulation.Grid | None:
    """The grid of ``module``'s range ``name`` where evaluation emulates the int8 file
    (not training, full QAT, ``given`` the input's scale or grid), else ``None``."""
    bits = (module.layers.tensor_bits if isinstance(module, (QATConvBN, QATInvertedResidual))
            else module.weight_bits and module.activation_bits)
    if train or given is None or bits is None or module.is_initializing():
        return None
    return stored_grid(module.variables, name, bits)


def module_grid(quantizer: quantization.MovingRange) -> int8_emulation.Grid:
    """The grid of a (bound) :class:`~mobilenet.quantization.MovingRange`'s stored range."""
    return int8_emulation.grid(quantizer.get_variable("batch_stats", "min"),
                               quantizer.get_variable("batch_stats", "max"), quantizer.num_bits)


def stored_grid(variables: Mapping[str, Any], name: str, bits: int
                ) -> int8_emulation.Grid | None:
    """The grid of the stored :class:`~mobilenet.quantization.MovingRange` ``name`` (or
    ``None`` before it exists)."""
    stats = variables.get("batch_stats", {}).get(name)
    return None if stats is None else int8_emulation.grid(stats["min"], stats["max"], bits)


def _range_scale(variables: Mapping[str, Any], name: str, *, bits: int) -> jax.Array:
    """The grid scale of the :class:`~mobilenet.quantization.MovingRange` ``name`` in a
    module's ``variables`` (or in a ``batch_stats`` tree)."""
    stats = variables.get("batch_stats", variables)[name]
    return quantization.grid_scale(stats["min"], stats["max"], bits)


def check_quantization(name: str, model: Any) -> None:
    """Checks a model's quantization fields; a ``ValueError`` names ``name`` and the field."""
    quantization.check(name, nonlinearity=model.nonlinearity, cap=model.cap,
                       activation_bits=model.activation_bits,
                       quant_scheme=model.quant_scheme, statistic=model.calibration,
                       activation=model.activation)
    quantization.check_qat(name, weight_bits=model.weight_bits,
                           granularity=model.weight_granularity,
                           bn_freeze_step=model.bn_freeze_step, batch_norm=model.batch_norm,
                           nonlinearity=model.nonlinearity, quant_scheme=model.quant_scheme,
                           activation=model.activation)
