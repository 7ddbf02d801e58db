"""The int8 file of a quantization-aware-trained run: the trained grid, not a calibrated one.

A run trained with ``--weight-bits`` (and ``--activation-bits``) evaluates, layer by
layer, what LiteRT's int8 kernels compute: convolutions with batch norm folded in and
per-channel int8 weights (:func:`jrelu6.quantize_weights`), activations on relu6's
[0, 6] grid or on their moving-average ranges (:class:`mobilenet.quantization.MovingRange`).
This module writes that model:

1. :func:`trained_layers` computes, with the library's functions, each weighted layer's
   int8 weights and scales and its float bias (batch norm folded), in the model's order.
2. The float model with those dequantized weights goes through the TFLite converter
   (:func:`mobilenet.export.to_tflite`, a few calibration images: the converter needs
   some ranges to build the int8 graph).
3. :func:`set_trained_grid` then overwrites the file: every weight tensor's int8 values
   and scales with the trained ones (the converter's own are checked to match), every
   activation tensor's scale and zero point with the trained range, and every int32
   bias requantized at ``input scale x weight scale``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax import lax

import jrelu6
from mobilenet import int8_emulation, models, qat_layers, quantization


class Layer(NamedTuple):
    """A weighted layer as the int8 file holds it.

    Attributes:
      path: its scope in the parameters (``("block2", "expand")``).
      q: int8 weights (int32 array, the flax layout: output channels last).
      scale: the weight scales (one per output channel, or one).
      bias: the float bias (batch norm folded in).
      depthwise: a depthwise convolution.
    """

    path: tuple[str, ...]
    q: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    depthwise: bool


class Range(NamedTuple):
    """An activation tensor's trained grid: int8 scale and zero point."""

    path: tuple[str, ...]
    scale: float
    zero_point: int


def _epsilon(model: models.MobileNet) -> float:
    return type(model).default_bn_epsilon if model.bn_epsilon is None else model.bn_epsilon


def trained_layers(model: models.MobileNet, variables: Mapping[str, Any]) -> list[Layer]:
    """Every convolution and dense layer of a QAT ``model``, in the order they are called.

    Computed as :class:`mobilenet.models.ConvBN` computes them in evaluation (jitted,
    the same expressions): ``f = gamma * rsqrt(var + eps)``, the weights
    ``quantize_weights(w * f)``, the bias ``beta - mean * f``.
    """
    if model.weight_bits is None:
        raise ValueError("trained_layers: the model has no weight_bits (a float run)")
    params = flatten_dict(dict(variables["params"]))
    stats = flatten_dict(dict(variables.get("batch_stats", {})))
    axis = quantization.weight_axis(model.weight_granularity)
    eps = _epsilon(model)
    bits = model.weight_bits

    @jax.jit
    def fold(kernel, gamma, beta, mean, var):
        factor = gamma * lax.rsqrt(var + eps)
        q, scale = jrelu6.quantize_weights(kernel * factor, num_bits=bits, axis=axis)
        return q, scale, beta - mean * factor

    @jax.jit
    def plain(kernel):
        return jrelu6.quantize_weights(kernel, num_bits=bits, axis=axis)

    layers = []
    for key in params:
        if key[-1] != "kernel":
            continue
        scope = key[:-2] if key[-2] == "conv" else key[:-1]
        kernel = jnp.asarray(params[key])
        if key[-2] == "conv" and (*scope, "bn", "scale") in params:
            q, scale, bias = fold(kernel, *(jnp.asarray(params[(*scope, "bn", n)])
                                            for n in ("scale", "bias")),
                                  *(jnp.asarray(stats[(*scope, "bn", n)])
                                    for n in ("mean", "var")))
        else:
            q, scale = plain(kernel)
            bias = params.get((*key[:-1], "bias"), np.zeros(kernel.shape[-1], np.float32))
        depthwise = kernel.ndim == 4 and kernel.shape[2] == 1 and kernel.shape[3] > 1 and (
            scope[-1] == "depthwise" or "depthwise" in scope[-1])
        layers.append(Layer(scope, np.asarray(q), np.asarray(scale), np.asarray(bias, np.float32),
                            depthwise))
    return layers


def trained_ranges(variables: Mapping[str, Any], num_bits: int = 8) -> dict[tuple, Range]:
    """Every :class:`~mobilenet.quantization.MovingRange`'s int8 grid, by its scope.

    The grid of :func:`jrelu6.fake_quant` on the stored ``[min, max]`` (nudged so that 0
    is a level): scale ``s`` and the int8 zero point ``z - 128``.
    """
    stats = flatten_dict(dict(variables.get("batch_stats", {})))
    out = {}
    for key in stats:
        if key[-1] != "min" or (*key[:-1], "max") not in stats:
            continue
        # The grid the integer evaluation uses (hi raised to lo + MIN_RANGE there too).
        grid = int8_emulation.grid(stats[key], stats[(*key[:-1], "max")], num_bits,
                                   min_range=quantization.MIN_RANGE)
        out[key[:-1]] = Range(key[:-1], float(grid.scale), int(grid.zero_point) - 128)
    return out


def dequantized_params(model: models.MobileNet, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of the float export model (``batch_norm=False``): each layer's kernel is
    its int8 weights times their scales (exactly the trained weights) and its bias the
    folded one."""
    out = {}
    for layer in trained_layers(model, variables):
        kernel = (layer.q.astype(np.float32) * layer.scale.astype(np.float32)).astype(np.float32)
        is_conv = (*layer.path, "conv", "kernel") in flatten_dict(dict(variables["params"]))
        where = (*layer.path, "conv") if is_conv else layer.path
        out[(*where, "kernel")] = kernel
        out[(*where, "bias")] = layer.bias
    return unflatten_dict(out)


# --- the flatbuffer -------------------------------------------------------------------------

_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_SAME_SCALE = ("PAD", "PADV2", "RESHAPE", "SQUEEZE")


class Pinned(NamedTuple):
    """What :func:`set_trained_grid` did: tensor name -> the JAX tensor it carries.

    Attributes:
      tensors: ``{tflite tensor index: (name of the JAX tensor, scale, zero point)}``.
      weights_equal: the converter's int8 weights equal to the trained ones (the file
        then holds the trained ones throughout).
      weights_total: all weight values of the matched layers.
    """

    tensors: dict[int, tuple[str, float, int]]
    weights_equal: int
    weights_total: int


def _tflite_layout(layer: Layer) -> np.ndarray:
    """The layer's int8 weights in TFLite's layout (OHWI, 1HWC, or (out, in))."""
    q = layer.q
    if q.ndim == 2:
        return q.T
    if layer.depthwise:
        return np.transpose(q, (2, 0, 1, 3))
    return np.transpose(q, (3, 0, 1, 2))


def _channel_scales(tensor, shape, scale=None) -> np.ndarray:
    """Per-output-channel scales broadcast against TFLite weights of ``shape``."""
    values = np.asarray(tensor.quantization.scale if tensor is not None else scale, np.float64)
    axis = 3 if len(shape) == 4 and shape[0] == 1 and values.size == shape[-1] > 1 else 0
    view = [1] * len(shape)
    view[axis] = -1
    return values.reshape(view) if values.size > 1 else values.reshape([1] * len(shape))


class _Flatbuffer:
    """An int8 TFLite model being edited: its operators' names, tensor values, pinned grids."""

    def __init__(self, data: bytes):
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils

        self.schema = schema
        self._utils = flatbuffer_utils
        self.model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
        self._names = {v: k for k, v in vars(schema.BuiltinOperator).items()
                       if not k.startswith("_")}
        self.graph = self.model.subgraphs[0]
        self.pinned: dict[int, tuple[str, float, int]] = {}

    def opname(self, op) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        return self._names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")

    def values(self, index: int, dtype) -> np.ndarray:
        tensor = self.graph.tensors[index]
        raw = np.asarray(self.model.buffers[tensor.buffer].data, np.uint8).tobytes()
        return np.frombuffer(raw, dtype).reshape(tensor.shape)

    def set_values(self, index: int, values: np.ndarray) -> None:
        buffer = self.model.buffers[self.graph.tensors[index].buffer]
        buffer.data = np.frombuffer(values.tobytes(), np.uint8).copy()

    def pin(self, index: int, name: str, scale: float, zero_point: int) -> None:
        tensor = self.graph.tensors[index]
        tensor.quantization.scale = [float(scale)]
        tensor.quantization.zeroPoint = [int(zero_point)]
        self.pinned[index] = (name, float(scale), int(zero_point))

    def to_bytes(self) -> bytes:
        return bytes(self._utils.convert_object_to_bytearray(self.model))


def set_trained_grid(data: bytes, layers: Sequence[Layer], ranges: Mapping[tuple, Range]
                     ) -> tuple[bytes, Pinned]:
    """The int8 flatbuffer ``data`` with the trained weights, scales and activation grids.

    Args:
      data: an int8 TFLite model of the float export model (dequantized trained weights).
      layers: :func:`trained_layers`.
      ranges: :func:`trained_ranges`.

    Returns:
      The new flatbuffer and what was pinned.

    Raises:
      ValueError: a weighted op whose weights match no trained layer.
    """
    fb = _Flatbuffer(data)
    matched, factors, equal, total = _put_trained_weights(fb, layers)
    _pin_activations(fb, matched, ranges)
    _pin_input(fb, matched, ranges)
    _set_scales_and_biases(fb, matched, factors)
    return fb.to_bytes(), Pinned(fb.pinned, equal, total)


def _put_trained_weights(fb: _Flatbuffer, layers: Sequence[Layer]
                         ) -> tuple[list[tuple[Any, Layer]], dict[int, float], int, int]:
    """Each weighted op's int8 weights replaced by its trained layer's (matched by shape and
    values): ``(matched ops, each op's folded factor, weights equal, weights total)``."""
    factors: dict[int, float] = {}
    unused = list(layers)
    equal = total = 0
    matched: list[tuple[Any, Layer]] = []
    for op in fb.graph.operators:
        if fb.opname(op) not in _WEIGHTED:
            continue
        got = fb.values(op.inputs[1], np.int8)
        candidates = [layer for layer in unused if _tflite_layout(layer).shape == got.shape]
        if not candidates:
            raise ValueError(f"set_trained_grid: a {fb.opname(op)} with weights {got.shape} "
                             "matches no trained layer")
        best = max(candidates, key=lambda layer: int(np.sum(_tflite_layout(layer) == got)))
        unused.remove(best)
        want = _tflite_layout(best)
        # The converter may have folded a constant factor into the weights (a mean's
        # 1 / count into the next dense layer): a power of two, measured on the values.
        theirs = np.abs(got.astype(np.float64)) * _channel_scales(
            fb.graph.tensors[op.inputs[1]], got.shape)
        ours = np.abs(want.astype(np.float64)) * _channel_scales(None, want.shape, best.scale)
        factors[id(op)] = float(np.exp2(np.round(np.log2(theirs.sum() / ours.sum()))))
        equal += int(np.sum(want == got))
        total += want.size
        # The file holds the trained integers (per tensor, the converter's per-channel
        # quantization would differ); scales follow in _set_scales_and_biases.
        fb.set_values(op.inputs[1], want.astype(np.int8))
        matched.append((op, best))
    return matched, factors, equal, total


def _scope(layer: Layer) -> tuple[str, ...]:
    """Where a layer's activation ranges live: a convolution's own scope (``ConvBN``), a
    dense layer's parent's (the squeeze-excite block's, or the model's)."""
    return layer.path if layer.q.ndim == 4 else layer.path[:-1]


def _pin_activations(fb: _Flatbuffer, matched: list[tuple[Any, Layer]],
                     ranges: Mapping[tuple, Range]) -> None:
    """Every int8 activation on its trained grid, in topological order."""
    producer = {out: op for op in fb.graph.operators for out in op.outputs}
    consumers: dict[int, list[Any]] = {}
    for op in fb.graph.operators:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    layer_of = {id(op): layer for op, layer in matched}

    def pin(index: int, key: tuple[str, ...], count: int = 1) -> None:
        if key in ranges:
            r = ranges[key]
            fb.pin(index, "/".join(key) + (f" x {count}" if count > 1 else ""),
                   r.scale * count, r.zero_point)

    for op in fb.graph.operators:
        out = op.outputs[0]
        if fb.graph.tensors[out].type != fb.schema.TensorType.INT8:
            continue
        name, layer = fb.opname(op), layer_of.get(id(op))
        if layer is not None:
            _pin_weighted(fb, op, layer, consumers.get(out, []), pin)
        elif name == "HARD_SWISH" and op.inputs[0] in producer:
            source = layer_of.get(id(producer[op.inputs[0]]))
            if source is not None:
                pin(out, (*_scope(source), "hard_swish_range"))
        elif name == "ADD":
            blocks = [layer.path[:-1] for o, layer in matched
                      if any(o.outputs[0] == i for i in op.inputs)]
            keys = [(*block, "add_range") for block in blocks if (*block, "add_range") in ranges]
            if keys:
                pin(out, keys[0])
        elif name in ("MEAN", "SUM"):
            # The pool's range is its reader's: the squeeze-excite's reduce layer, or the
            # classifier (the model's scope).
            reader = next((layer_of[id(o)] for o in consumers.get(out, [])
                           if id(o) in layer_of), None)
            shape = fb.graph.tensors[op.inputs[0]].shape
            count = int(np.prod(shape[1:-1])) if name == "SUM" else 1
            pin(out, (*(() if reader is None else _scope(reader)), "pool_range"), count)
        elif name == "MUL":
            _pin_mul(fb, op, producer, pin)
        elif name in _SAME_SCALE and op.inputs[0] in fb.pinned:
            fb.pin(out, *fb.pinned[op.inputs[0]])


def _pin_weighted(fb: _Flatbuffer, op: Any, layer: Layer, readers: list[Any],
                  pin: Callable[[int, tuple[str, ...]], None]) -> None:
    """A convolution's or dense layer's output: relu6's grid (a fused ReLU6), the range
    before a HARD_SWISH that reads it, or its ReLU, linear or logits range."""
    out = op.outputs[0]
    fused = getattr(op.builtinOptions, "fusedActivationFunction", None)
    kinds = fb.schema.ActivationFunctionType
    scope = _scope(layer)
    if fused == kinds.RELU6:
        fb.pin(out, "/".join(scope) + " relu6", 6 / 255, -128)
    elif any(fb.opname(o) == "HARD_SWISH" for o in readers):
        pin(out, (*scope, "hard_swish_in_range"))
    elif fused == kinds.RELU:
        pin(out, (*scope, "relu_range"))
    elif layer.path[-1] == "logits":
        pin(out, ("logits_range",))
    else:
        pin(out, (*layer.path, "out_range"))


def _pin_mul(fb: _Flatbuffer, op: Any, producer: Mapping[int, Any],
             pin: Callable[[int, tuple[str, ...]], None]) -> None:
    """Squeeze-excite's two MULs: hard-sigmoid's ``/ 6`` of the expand layer's ReLU6 output
    (its constant set to the int8 1 on the scale fl(1/6), the output on the fixed
    ``gate_range`` [0, 1]), and the product of the block's tensor and that gate
    (``scale_range``)."""
    a, b = op.inputs[:2]
    constant = next((i for i in (a, b) if i not in producer), None)
    if constant is not None:
        other = b if constant == a else a
        source = fb.pinned.get(other)
        if source is None or not source[0].endswith(" relu6"):
            return
        fb.set_values(constant, np.ones(fb.graph.tensors[constant].shape, np.int8))
        quant = fb.graph.tensors[constant].quantization
        quant.scale, quant.zeroPoint = [qat_layers.GATE_CONSTANT_SCALE], [0]
        scope = source[0][:-len(" relu6")]
        gate = int8_emulation.grid(0.0, 1.0, 8)
        fb.pin(op.outputs[0], scope + "/gate_range", float(gate.scale),
               int(gate.zero_point) - 128)
        return
    gates = [fb.pinned[i][0] for i in (a, b) if i in fb.pinned
             and fb.pinned[i][0].endswith("/gate_range")]
    if gates:
        pin(op.outputs[0], (*gates[0][:-len("/gate_range")].split("/"), "scale_range"))


def _pin_input(fb: _Flatbuffer, matched: list[tuple[Any, Layer]],
               ranges: Mapping[tuple, Range]) -> None:
    """The model's input tensor, what the first weighted layer reads (through PAD), on the
    trained input range; then its PADs again."""
    if ("input_range",) not in ranges:
        return
    producer = {out: op for op in fb.graph.operators for out in op.outputs}
    index = matched[0][0].inputs[0]
    while index in producer and fb.opname(producer[index]) in _SAME_SCALE:
        index = producer[index].inputs[0]
    r = ranges[("input_range",)]
    fb.pin(index, "input_range", r.scale, r.zero_point)
    for op in fb.graph.operators:
        if fb.opname(op) in _SAME_SCALE and op.inputs[0] in fb.pinned:
            fb.pin(op.outputs[0], *fb.pinned[op.inputs[0]])


def _set_scales_and_biases(fb: _Flatbuffer, matched: list[tuple[Any, Layer]],
                           factors: dict[int, float]) -> None:
    """Weight scales (the converter's differ from the trained ones by an ulp, or by the power
    of two of a folded division) and biases on the int32 grid of input x weight scale."""
    for op, layer in matched:
        weight = fb.graph.tensors[op.inputs[1]]
        depthwise = fb.opname(op) == "DEPTHWISE_CONV_2D"
        channels = weight.shape[3 if depthwise else 0]
        ours = np.asarray(layer.scale, np.float64) * np.ones(channels)
        weight.quantization.scale = [float(s) for s in
                                     (ours * factors[id(op)]).astype(np.float32)]
        weight.quantization.zeroPoint = [0] * channels
        weight.quantization.quantizedDimension = 3 if depthwise else 0
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = fb.graph.tensors[op.inputs[2]]
            # In float32, as training rounds it (mobilenet.quantization.fake_quant_bias):
            # in float64 a bias within float32's error of a half step rounds the other way.
            in_scale = np.float32(fb.graph.tensors[op.inputs[0]].quantization.scale[0])
            bias_scale = in_scale * np.asarray(weight.quantization.scale, np.float32)
            float_bias = layer.bias.astype(np.float32)
            if layer.path[-2:] == ("se", "expand"):
                # jax.nn.hard_sigmoid's + 3, which the converter folds into this bias (the
                # QAT evaluation adds it before rounding too: qat_layers.QATSqueezeExcite).
                float_bias = float_bias + np.float32(3.0)
            q = np.round(float_bias / bias_scale)
            q = np.clip(q, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
            fb.set_values(op.inputs[2], q)
            bias.quantization.scale = [float(s) for s in bias_scale.astype(np.float32)]
            bias.quantization.zeroPoint = [0] * len(bias_scale)


def export_model(model: models.MobileNet, variables: Mapping[str, Any]
                 ) -> tuple[models.MobileNet, dict[str, Any]]:
    """The float export model of a QAT run and its (dequantized trained) parameters."""
    float_model = model.clone(depthwise="grouped", pointwise="conv", batch_norm=False,
                              activation_bits=None, weight_bits=None, bn_freeze_step=None,
                              dtype=jnp.float32, activation="jax.nn")
    return float_model, dequantized_params(model, variables)


# --- export and the parity check ------------------------------------------------------------


def normalizer(run) -> Any:
    """The run's input normalization, ``(pixels / 255 - mean) / std``, on the host.

    The int8 file of a QAT run reads *normalized* images: its input QUANTIZE is then
    the trained input grid itself (with pixels in, TFLite's normalization ops would each
    round on a grid of their own).
    """
    from mobilenet import input_pipeline

    mean, std = tuple(float(m) for m in run.dataset.mean), tuple(float(s) for s in run.dataset.std)
    normalize = jax.jit(lambda x: input_pipeline.normalize(x, mean=mean, std=std,
                                                           dtype=jnp.float32))
    return lambda images: np.asarray(normalize(jnp.asarray(images, jnp.float32)))


def to_int8(run, *, calibration_images: int = 64) -> tuple[bytes, Pinned]:
    """The int8 TFLite file of a QAT ``run`` (a :class:`mobilenet.export.Run`) on its trained
    grid, and what :func:`set_trained_grid` pinned."""
    from mobilenet import export

    layers = trained_layers(run.model, run.variables)
    ranges = trained_ranges(run.variables, run.model.activation_bits or 8)
    model, params = export_model(run.model, run.variables)
    normalize = normalizer(run)
    data = export.to_tflite(lambda x: model.apply({"params": params}, x, train=False),
                            run.dataset.test_images.shape[1:],
                            representative=normalize(export.representative_images(
                                run, calibration_images)))
    return set_trained_grid(data, layers, ranges)


def qat_reference(run) -> Any:
    """The QAT model in JAX, evaluation mode, on normalized images: (logits, intermediates)
    of every quantized tensor (:class:`~mobilenet.quantization.MovingRange` and
    :class:`jrelu6.linen.QuantizedReLU6` outputs)."""
    import jrelu6.linen

    def keep(module, method):
        return method == "__call__" and isinstance(
            module, (quantization.MovingRange, jrelu6.linen.QuantizedReLU6,
                     qat_layers.FixedRange))

    @jax.jit
    def apply(variables, x):
        logits, state = run.model.apply(variables, x, train=False, capture_intermediates=keep,
                                        mutable=["intermediates"])
        return logits, {k: v[0] for k, v in flatten_dict(state["intermediates"]).items()}

    return lambda x: apply(run.variables, jnp.asarray(x, jnp.float32))


def augmented_inputs(run, count: int, *, seed: int = 0, batch: int = 512) -> np.ndarray:
    """``count`` training images with the run's random shifts (and flips), as pixels."""
    from mobilenet import configs, input_pipeline

    shift = configs.default.max_shift(run.config)
    flip = run.config.augment and run.dataset.flip
    train = np.asarray(run.dataset.train_images)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        images = jnp.asarray(train[rng.integers(0, train.shape[0], n)])
        key = jax.random.fold_in(jax.random.key(seed), start)
        if shift or flip:
            images = input_pipeline.augment(images, key, max_shift=shift, flip=flip)
        out.append(np.asarray(images, np.float32))
    return np.concatenate(out)


class Parity(NamedTuple):
    """The int8 file against the QAT model in JAX (see :func:`parity`)."""

    name: str
    count: int
    agreement: float
    max_logit_steps: float
    within_one_step: float
    rows: list[tuple[str, float, float, float]]
    accuracy: tuple[float, float] | None = None  # (file, JAX) with labels.


def parity(run, data: bytes, pinned: Pinned, images: np.ndarray, name: str, *,
           table_images: int = 200, labels: np.ndarray | None = None) -> Parity:
    """Top-1 agreement, logit differences in output steps and a per-tensor table.

    The table maps each pinned LiteRT tensor to the JAX tensor it carries and gives the
    share of int8 values equal, off by one and worse, over the first ``table_images``
    images (each network end to end: a difference upstream carries downstream).
    """
    from ai_edge_litert.interpreter import Interpreter

    normalize, reference = normalizer(run), qat_reference(run)
    with warnings.catch_warnings():  # "for debugging purposes only": it is one.
        warnings.filterwarnings("ignore", ".*experimental_preserve_all_tensors", UserWarning)
        interpreter = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    logits_scale = next((s for n, s, _ in pinned.tensors.values() if n == "logits_range"), None)
    agree, steps, within, correct, jax_correct = 0, 0.0, 0, 0, 0
    counts: dict[str, list[int]] = {}
    for start in range(0, images.shape[0], 256):
        x = normalize(images[start:start + 256])
        want, inter = reference(x)
        want = np.asarray(want)
        for i in range(x.shape[0]):
            interpreter.set_tensor(inp["index"], x[i:i + 1])
            interpreter.invoke()
            got = np.asarray(interpreter.get_tensor(out["index"]))[0]
            agree += int(got.argmax() == want[i].argmax())
            if labels is not None:
                correct += int(got.argmax() == labels[start + i])
                jax_correct += int(want[i].argmax() == labels[start + i])
            diff = np.abs(got - want[i]) / (logits_scale or 1.0)
            steps = max(steps, float(diff.max()))
            within += int(np.sum(diff <= 1.0 + 1e-3))
            if start + i >= table_images:
                continue
            for index, (tensor, scale, zero_point) in pinned.tensors.items():
                key = _intermediate(inter, tensor)
                if key is None:
                    continue
                value = np.asarray(inter[key][i])
                count = int(tensor.split(" x ")[1]) if " x " in tensor else 1
                expected = np.round(value / scale * count).astype(np.int64) + zero_point
                actual = interpreter.get_tensor(index).astype(np.int64)
                if actual.size != expected.size:
                    continue
                d = np.abs(actual.reshape(expected.shape) - expected)
                row = counts.setdefault(tensor, [0, 0, 0])
                row[0] += int(np.sum(d == 0))
                row[1] += int(np.sum(d == 1))
                row[2] += int(np.sum(d > 1))
    n = images.shape[0]
    rows = [(tensor, e / (e + o + w), o / (e + o + w), w / (e + o + w))
            for tensor, (e, o, w) in counts.items()]
    return Parity(name, n, agree / n, steps, within / (n * want.shape[-1]), rows,
                  None if labels is None else (correct / n, jax_correct / n))


def _intermediate(inter: Mapping[tuple, Any], tensor: str) -> tuple | None:
    if tensor.endswith(" relu6"):
        path = tuple(tensor[:-len(" relu6")].split("/"))
        return next((k for k in inter if k[:len(path)] == path and len(k) > len(path)
                     and k[len(path)].startswith("QuantizedReLU6")), None)
    path = tuple(tensor.split(" x ")[0].split("/"))
    return next((k for k in inter if k[:-1] == path), None)


def format_parity(results: Sequence[Parity]) -> str:
    """The check's printout: one line per input set, then the per-tensor table."""
    lines = []
    for r in results:
        lines.append(f"{r.name}: {r.count} inputs, top-1 agreement {r.agreement:.4%}, "
                     f"largest logit difference {r.max_logit_steps:.2f} output steps, "
                     f"{r.within_one_step:.4%} of logits within one step"
                     + ("" if r.accuracy is None else
                        f"; accuracy: file {r.accuracy[0]:.4f}, QAT JAX {r.accuracy[1]:.4f}"))
    lines.append(f"{'LiteRT tensor <- JAX tensor':40s} {'equal':>8s} {'off by 1':>9s} "
                 f"{'worse':>7s}")
    for tensor, e, o, w in results[0].rows:
        lines.append(f"{tensor:40s} {e:8.2%} {o:9.2%} {w:7.2%}")
    return "\n".join(lines)
