"""Export a trained MobileNet to StableHLO, TFLite and ONNX, and check each file in its runtime.

A run of ``examples/train.py`` leaves ``config.json`` and orbax checkpoints in its
work directory. This module turns them into one inference function,
``logits = f(images)`` for float32 NHWC images in pixel units (0-255), with the
run's normalization inside, and writes it in three formats:

* ``"stablehlo"``: :func:`jax.export` for CPU, CUDA and TPU together, with a
  symbolic batch size; loaded back with :func:`jax.export.deserialize` (both
  need the ``flatbuffers`` package). It keeps
  the model's own activations, so gradients through the loaded model use the
  trained ``grad_at_zero`` / ``grad_at_six``.
* ``"tflite"``: ``jax2tf.convert`` for CPU, then TensorFlow's TFLite converter,
  float32 or int8 (post-training quantization with a representative dataset
  drawn from the run's training split), batch size 1 (a symbolic one costs
  the converter's fusions); run with ``ai_edge_litert`` (or TensorFlow's
  interpreter where it is absent).
* ``"onnx"``: ``jax2onnx``, with a symbolic batch size; run with onnxruntime.

Before export the model is put in its export form (:func:`export_model`): the
grouped depthwise convolution (one op that converters map to the runtimes'
depthwise kernels, not ``depthwise="auto"``'s per-platform switch), 1x1
convolutions as convolutions, float32, batch norm folded into the convolutions
(:func:`fold_batch_norm`) and, for TFLite and ONNX, ``jax.nn``'s relu6 and
hard-swish, which compute the same forward pass as jrelu6's (the same
``min(max(x, 0), 6)``) and which converters map to native RELU6 / HARD_SWISH
ops, while jrelu6's custom derivative rules do not concern inference.

Int8 TFLite takes its activation ranges from a representative dataset (a few
hundred training images) or, with ``int8_ranges="relu6"``, puts every ReLU6
output on [0, 6] (:func:`pin_relu6_ranges`): the grid of a model trained with
8-bit fake-quantized ReLU6, which calibration on a few images would narrow.
That is the default for such a run (:func:`default_int8_ranges`), and its
report gives the accuracy of the model as trained, fake quantization on, next
to the float model's and the file's.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mobilenet import models
  >>> model = models.create_model("tiny", num_classes=10)
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  >>> exported, params = export_model(model, variables)
  >>> exported.depthwise, exported.batch_norm, sorted(params["stem"]["conv"])
  ('grouped', False, ['bias', 'kernel'])
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet import input_pipeline, models, train_state
from mobilenet.configs import default
from mobilenet.infra import datasets

FORMATS = ("stablehlo", "tflite", "onnx")
SUFFIXES = {"stablehlo": ".jaxexport", "tflite": ".tflite", "onnx": ".onnx"}
CHECKPOINT_SUBDIR = "checkpoints"

Predict = Callable[[np.ndarray], np.ndarray]


class ExportError(RuntimeError):
    """A run that cannot be loaded, or a converter or runtime that failed."""


# --- the trained run ------------------------------------------------------------------------


class Run(NamedTuple):
    """A trained run, as :func:`load_run` finds it.

    Attributes:
      config: the run's configuration (``config.json``).
      model: the model as trained (its own depthwise form, batch norm, activations,
        fake-quantized activations where the run set ``activation_bits``).
      variables: ``{"params", "batch_stats"}`` of the newest checkpoint (numpy arrays;
        ``batch_stats`` also holds the quantized ReLUs' ranges).
      step: the checkpoint's step.
      dataset: the run's dataset (train and test splits, normalization statistics).
    """

    config: default.Config
    model: models.MobileNet
    variables: dict[str, Any]
    step: int
    dataset: datasets.Dataset


def load_run(workdir: str) -> Run:
    """The newest checkpoint of a run of ``examples/train.py``, with its model and data.

    Args:
      workdir: the run's ``--workdir`` (holding ``config.json`` and ``checkpoints/``).

    Returns:
      The :class:`Run`.

    Raises:
      ExportError: no ``config.json`` or no checkpoint in ``workdir``.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ExportError(f"load_run: no config.json in {workdir!r}; is it the --workdir of a "
                          f"run of examples/train.py?")
    with open(path) as f:
        saved = json.load(f)
    # A setting this module does not know might change the model: refuse rather than guess.
    unknown = sorted(set(saved) - {field.name for field in dataclasses.fields(default.Config)})
    if unknown:
        raise ExportError(f"load_run: {path} has settings this version does not know: "
                          f"{', '.join(unknown)}")
    config = default.Config(**saved)
    dataset = datasets.load_dataset(
        config.data, data_dir=config.data_dir, seed=config.seed, image_size=config.image_size,
        synthetic_examples=config.synthetic_examples)
    # The training example's own constructor: the model that was trained, fake
    # quantization (``activation_bits``) and ``nonlinearity`` included.
    model = train_state.create_model(config,
                                     num_classes=config.num_classes or dataset.num_classes)
    step, variables = restore_variables(os.path.join(workdir, CHECKPOINT_SUBDIR))
    return Run(config, model, variables, step, dataset)


def restore_variables(directory: str) -> tuple[int, dict[str, Any]]:
    """``(step, {"params", "batch_stats"})`` of the newest checkpoint in ``directory``.

    Reads the ``state`` item that the training example saves (orbax, StandardSave)
    as host numpy arrays, whatever devices wrote it, and keeps only the model's
    variables (``batch_stats``: batch norm's running statistics and the ranges of
    :class:`mobilenet.quantization.QuantizedReLU` layers).

    Raises:
      ExportError: no checkpoint in ``directory``.
    """
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise ExportError(f"restore_variables: no checkpoint directory {directory!r}")
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
        step = manager.latest_step()
        if step is None:
            raise ExportError(f"restore_variables: no checkpoint in {directory!r}")
        metadata = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda _: 0, dict(getattr(metadata, "tree", metadata)))
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args)))["state"]
    return step, {"params": state["params"], "batch_stats": state.get("batch_stats", {})}


# --- the export form --------------------------------------------------------------------------


def fold_batch_norm(params: Mapping[str, Any], batch_stats: Mapping[str, Any], *,
                    epsilon: float) -> dict[str, Any]:
    r"""Folds every inference-mode batch norm into the convolution before it.

    For a convolution with kernel :math:`W` (output channels last) followed by
    :math:`\gamma (y - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, the folded
    layer has kernel :math:`W s` and bias :math:`\beta - \mu s` with
    :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}`: the parameters of the same
    model built with ``batch_norm=False``.

    Args:
      params: the model's parameters; every scope holding ``conv`` and ``bn``
        (a :class:`mobilenet.models.ConvBN`) is folded, the rest is copied.
      batch_stats: the running statistics (``mean``, ``var`` per ``bn``).
      epsilon: batch norm's epsilon.

    Returns:
      The folded parameters (float32 numpy arrays).

    Example:
      >>> params = {"c": {"conv": {"kernel": np.ones((1, 1, 1, 2))},
      ...                 "bn": {"scale": np.array([1.0, 2.0]), "bias": np.array([0.0, 1.0])}}}
      >>> stats = {"c": {"bn": {"mean": np.array([1.0, 1.0]), "var": np.array([4.0, 1.0])}}}
      >>> folded = fold_batch_norm(params, stats, epsilon=0.0)
      >>> folded["c"]["conv"]["kernel"].ravel().tolist(), folded["c"]["conv"]["bias"].tolist()
      ([0.5, 2.0], [-0.5, -1.0])
    """
    out: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(value, Mapping):
            out[name] = np.asarray(value, np.float32)
        elif "conv" in value and "bn" in value:
            out[name] = {"conv": _fold(value["conv"], value["bn"], batch_stats[name]["bn"],
                                       epsilon)}
        else:
            out[name] = fold_batch_norm(value, batch_stats.get(name, {}), epsilon=epsilon)
    return out


def _fold(conv: Mapping[str, Any], bn: Mapping[str, Any], stats: Mapping[str, Any],
          epsilon: float) -> dict[str, np.ndarray]:
    """One convolution's folded kernel and bias, computed in float64."""
    s = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(stats["var"], np.float64)
                                                      + epsilon)
    kernel = np.asarray(conv["kernel"], np.float64) * s
    bias = np.asarray(bn["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * s
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def export_model(model: models.MobileNet, variables: Mapping[str, Any], *,
                 native_activations: bool = False) -> tuple[models.MobileNet, dict[str, Any]]:
    """The model in its export form, and its parameters.

    Grouped depthwise convolutions (no per-platform switch), 1x1 convolutions
    as ``nn.Conv``, float32, batch norm folded into the convolutions, float
    activations (no fake quantization: an int8 file quantizes them itself), and,
    with ``native_activations``, ``jax.nn``'s relu6 family (the same forward
    pass) for a ReLU6 model; another ``nonlinearity`` keeps its own modules.

    Args:
      model: the trained model.
      variables: its ``{"params", "batch_stats"}``.
      native_activations: ``jax.nn.relu6`` / ``hard_swish`` / ``hard_sigmoid``
        instead of jrelu6's, for converters that map them to native ops.

    Returns:
      ``(exported_model, params)``: apply with ``{"params": params}`` and ``train=False``.
    """
    changes: dict[str, Any] = dict(depthwise="grouped", pointwise="conv", dtype=jnp.float32,
                                   param_dtype=jnp.float32, batch_norm=False,
                                   activation_bits=None)
    if native_activations and model.nonlinearity == "relu6":
        changes["activation"] = "jax.nn"
    params = variables["params"]
    if model.batch_norm:
        epsilon = (type(model).default_bn_epsilon if model.bn_epsilon is None
                   else model.bn_epsilon)
        params = fold_batch_norm(params, variables.get("batch_stats", {}), epsilon=epsilon)
    else:
        params = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(params))
    return model.clone(**changes), params


def inference_function(model: models.MobileNet, variables: Mapping[str, Any], *,
                       mean: Sequence[float], std: Sequence[float]) -> Callable:
    """``logits = f(images)`` for float32 NHWC images in pixel units (0-255).

    The run's normalization is part of the function, so a deployed file takes
    raw pixels. ``variables`` are closed over (they become the file's constants).
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def predict(images: jax.Array) -> jax.Array:
        x = input_pipeline.normalize(images, mean=mean, std=std, dtype=jnp.float32)
        return model.apply(variables, x, train=False).astype(jnp.float32)

    return predict


# --- the three formats --------------------------------------------------------------------


def to_stablehlo(predict: Callable, image_shape: Sequence[int], *,
                 platforms: Sequence[str] = ("cpu", "cuda", "tpu"), vjp_order: int = 1) -> bytes:
    """Serialized :func:`jax.export` of ``predict`` with a symbolic batch size ``b``.

    With ``vjp_order=1`` the file also holds the backward pass, so the loaded
    model can be differentiated (fine-tuned) with the trained derivative rules.
    """
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    exported = jax.export.export(jax.jit(predict), platforms=tuple(platforms))(spec)
    return bytes(exported.serialize(vjp_order=vjp_order))


def run_stablehlo(data: bytes) -> Predict:
    """The deserialized export, called on the default device."""
    exported = jax.export.deserialize(bytearray(data))
    call = jax.jit(exported.call)
    return lambda images: np.asarray(call(jnp.asarray(images, jnp.float32)))


def to_tflite(predict: Callable, image_shape: Sequence[int], *, batch_size: int = 1,
              representative: np.ndarray | None = None) -> bytes:
    """A TFLite flatbuffer of ``predict`` (float32; int8 with ``representative`` images).

    Converted through ``jax2tf`` (StableHLO for CPU) and TensorFlow's TFLite
    converter, for a fixed batch size: with a symbolic one, every bias and
    broadcast becomes a run-time BROADCAST_TO and the converter no longer fuses
    ReLU6 into the convolutions nor finds HARD_SWISH.

    Args:
      predict: the inference function (:func:`inference_function`).
      image_shape: ``(H, W, C)``.
      batch_size: the file's batch size (1: one image per call, as on a phone).
      representative: ``(N, H, W, C)`` images for post-training int8
        quantization: weights and activations int8, ranges calibrated on these
        images; float32 input and output. ``None``: a float32 model.
    """
    tf = _import_tensorflow()
    from jax.experimental import jax2tf

    tf_predict = tf.function(
        jax2tf.convert(predict, with_gradient=False, native_serialization_platforms=("cpu",)),
        autograph=False,
        input_signature=[tf.TensorSpec((batch_size, *image_shape), tf.float32, name="images")])
    concrete = tf_predict.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf_predict)
    if representative is not None:
        images = np.asarray(representative, np.float32)

        def calibration() -> Iterator[list[np.ndarray]]:
            for start in range(0, images.shape[0] - batch_size + 1, batch_size):
                yield [images[start:start + batch_size]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        # Input statistics matter for integer inputs only; this model's input stays float32.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        return bytes(converter.convert())


# TFLite ops whose int8 kernels need their output quantized exactly like their input.
_SAME_SCALE_OPS = ("PAD", "PADV2", "RESHAPE", "SQUEEZE", "MAX_POOL_2D", "TRANSPOSE")
# TFLite ops whose int32 bias (input 2) is quantized with scale input_scale * weight_scale.
_BIAS_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def pin_relu6_ranges(data: bytes, *, low: float = 0.0, high: float = 6.0) -> bytes:
    """An int8 TFLite model with every ReLU6 output quantized on ``[low, high]``.

    A model trained with fake-quantized ReLU6 (8 bits on [0, 6]) learned to work
    on that grid; calibration on a few images would instead give each layer the
    range it happened to see. This sets scale ``(high - low) / 255`` and zero
    point ``-128 - low / scale`` on the output of every op with a fused ReLU6
    (and of RELU6 ops), and carries it through ops that need equal input and
    output quantization (PAD, RESHAPE, ...). The kernels read these parameters
    when the interpreter prepares them. A convolution's int32 bias is quantized
    with scale ``input_scale * weight_scale`` and added to the accumulator as
    it is, so the bias of every layer that reads a pinned tensor is
    requantized for the new input scale.

    Args:
      data: an int8 TFLite flatbuffer (:func:`to_tflite` with ``representative``).
      low: the lower end of the range.
      high: the upper end.

    Returns:
      The modified flatbuffer.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    names = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    scale = (high - low) / 255.0
    zero_point = round(float(-128 - low / scale))

    def opname(op) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")

    for graph in model.subgraphs:
        pinned: dict[int, float] = {}  # Tensor index -> its calibrated scale.
        for op in graph.operators:  # Topological order: producers come first.
            fused = getattr(op.builtinOptions, "fusedActivationFunction", None)
            same_scale = opname(op) in _SAME_SCALE_OPS and op.inputs[0] in pinned
            if fused == schema.ActivationFunctionType.RELU6 or opname(op) == "RELU6" or same_scale:
                tensor = graph.tensors[op.outputs[0]]
                if tensor.type == schema.TensorType.INT8 and tensor.quantization is not None:
                    pinned[op.outputs[0]] = float(tensor.quantization.scale[0])
                    tensor.quantization.scale = [scale]
                    tensor.quantization.zeroPoint = [zero_point]
        for op in graph.operators:
            if opname(op) in _BIAS_OPS and op.inputs[0] in pinned and len(op.inputs) > 2 \
                    and op.inputs[2] >= 0:
                _rescale_bias(model, graph.tensors[op.inputs[2]], scale / pinned[op.inputs[0]],
                              schema)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _rescale_bias(model, tensor, factor: float, schema) -> None:
    """An int32 bias requantized for its input's scale multiplied by ``factor``."""
    if tensor.type != schema.TensorType.INT32 or tensor.quantization is None:
        return
    buffer = model.buffers[tensor.buffer]
    values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32)
    limit = np.iinfo(np.int32)
    rescaled = np.clip(np.round(values.astype(np.float64) / factor), limit.min, limit.max)
    buffer.data = np.frombuffer(rescaled.astype(np.int32).tobytes(), np.uint8).copy()
    tensor.quantization.scale = [float(s) * factor for s in tensor.quantization.scale]


def run_tflite(data: bytes) -> Predict:
    """A TFLite interpreter (``ai_edge_litert``, else TensorFlow's) as a batch function.

    The file has a fixed batch size: a batch of another size runs in chunks of
    it (the last one padded).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = _import_tensorflow().lite.Interpreter
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    size = int(inp["shape"][0])

    def call(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        n = images.shape[0]
        padded = np.concatenate([images, np.zeros((-n % size, *images.shape[1:]), np.float32)])
        outputs = []
        for start in range(0, padded.shape[0], size):
            interpreter.set_tensor(inp["index"], padded[start:start + size])
            interpreter.invoke()
            outputs.append(np.array(interpreter.get_tensor(out["index"])))
        return np.concatenate(outputs)[:n]

    return call


def to_onnx(predict: Callable, image_shape: Sequence[int], *, opset: int = 21) -> bytes:
    """An ONNX model of ``predict`` (jax2onnx), with a symbolic batch size ``B``."""
    import jax2onnx

    # Some jax2onnx releases print their tracing steps: keep them out of the caller's output.
    with contextlib.redirect_stdout(io.StringIO()):
        proto = jax2onnx.to_onnx(predict, [("B", *image_shape)], model_name="mobilenet",
                                 opset=opset, input_names=["images"], output_names=["logits"])
    return proto.SerializeToString()


def run_onnx(data: bytes) -> Predict:
    """An onnxruntime CPU session as a batch function."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0]


EXPORTERS = {"stablehlo": to_stablehlo, "tflite": to_tflite, "onnx": to_onnx}
RUNNERS: Mapping[str, Callable[[bytes], Predict]] = {
    "stablehlo": run_stablehlo, "tflite": run_tflite, "onnx": run_onnx}


def _import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow's first import.
    import tensorflow as tf

    return tf


# --- export, run and compare ----------------------------------------------------------------


class Report(NamedTuple):
    """What :func:`export` wrote and measured.

    Attributes:
      path: the written file.
      size: its size in bytes.
      max_logit_diff: the largest absolute logit difference, file vs the float
        JAX model (the trained one, without fake quantization), over the test split.
      accuracy: the file's test accuracy (in its runtime).
      jax_accuracy: the float JAX model's test accuracy.
      qat_accuracy: the JAX model as trained, fake quantization on: its test
        accuracy for a run with ``activation_bits``, else ``None``.
      agreement: the fraction of test images where the file and the float JAX
        model predict the same class.
      seconds: the time to convert and write.
    """

    path: str
    size: int
    max_logit_diff: float
    accuracy: float
    jax_accuracy: float
    qat_accuracy: float | None
    agreement: float
    seconds: float


INT8_RANGES = ("calibrated", "relu6")


def default_int8_ranges(model: models.MobileNet) -> str:
    """The int8 activation ranges of ``model``'s own training: ``"relu6"`` or ``"calibrated"``.

    A ReLU6 model trained with 8-bit affine fake quantization (``activation_bits=8``)
    computed every ReLU6 output on the grid of 256 levels on [0, 6]: its int8 file
    keeps that grid (``"relu6"``). Any other model is calibrated.

    Example:
      >>> from mobilenet import models
      >>> default_int8_ranges(models.create_model("tiny", num_classes=10, activation_bits=8))
      'relu6'
      >>> default_int8_ranges(models.create_model("tiny", num_classes=10))
      'calibrated'
    """
    if (model.activation_bits == 8 and model.nonlinearity == "relu6"
            and model.quant_scheme == "affine"):
        return "relu6"
    return "calibrated"


def export_bytes(run: Run, fmt: str, *, int8: bool = False, calibration_images: int = 256,
                 int8_ranges: str | None = None) -> bytes:
    """The file's contents: ``run``'s model in ``fmt`` (a name in :data:`FORMATS`).

    Args:
      run: the trained run.
      fmt: ``"stablehlo"``, ``"tflite"`` or ``"onnx"``.
      int8: int8 post-training quantization (tflite only).
      calibration_images: training images that calibrate the int8 ranges.
      int8_ranges: ``"calibrated"`` (every activation's range from the
        calibration images), ``"relu6"`` (ReLU6 outputs on [0, 6], the grid of
        a model trained with 8-bit fake-quantized ReLU6; :func:`pin_relu6_ranges`)
        or ``None``: the model's own (:func:`default_int8_ranges`).

    Raises:
      ValueError: an unknown format or ``int8_ranges``, or ``int8`` with a
        format other than tflite.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export_bytes: format must be one of {FORMATS}, got {fmt!r}")
    if int8 and fmt != "tflite":
        raise ValueError(f"export_bytes: int8 is available for tflite only, got {fmt!r}")
    if int8_ranges is None:
        int8_ranges = default_int8_ranges(run.model)
    if int8_ranges not in INT8_RANGES:
        raise ValueError(f"export_bytes: int8_ranges must be one of {INT8_RANGES}, "
                         f"got {int8_ranges!r}")
    model, params = export_model(run.model, run.variables,
                                 native_activations=fmt != "stablehlo")
    predict = inference_function(model, {"params": params}, mean=run.dataset.mean,
                                 std=run.dataset.std)
    image_shape = run.dataset.test_images.shape[1:]
    if int8:
        data = to_tflite(predict, image_shape,
                         representative=representative_images(run, calibration_images))
        return pin_relu6_ranges(data) if int8_ranges == "relu6" else data
    return EXPORTERS[fmt](predict, image_shape)


def representative_images(run: Run, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` training images (float32 pixels), a fixed random sample, for calibration."""
    train = run.dataset.train_images
    index = np.random.default_rng(seed).permutation(train.shape[0])[:count]
    return np.asarray(train[np.sort(index)], np.float32)


def reference_function(run: Run, *, fake_quant: bool = False) -> Predict:
    """The trained JAX model (its own forms, batch norm in inference mode), jitted.

    Args:
      run: the trained run.
      fake_quant: keep the model's fake-quantized activations (the model as
        trained with ``activation_bits``); ``False``: its float activations,
        the function that the export form computes.
    """
    model = run.model if fake_quant else run.model.clone(activation_bits=None)
    predict = jax.jit(inference_function(model, run.variables, mean=run.dataset.mean,
                                         std=run.dataset.std))
    return lambda images: np.asarray(predict(jnp.asarray(images, jnp.float32)))


def compare(predict: Predict, reference: Predict, images: np.ndarray, labels: np.ndarray, *,
            batch_size: int = 128) -> dict[str, float]:
    """Accuracy of ``predict`` and ``reference`` on ``images`` and their largest logit gap."""
    correct = reference_correct = agree = 0
    gap = 0.0
    for start in range(0, images.shape[0], batch_size):
        x = np.asarray(images[start:start + batch_size], np.float32)
        y = np.asarray(labels[start:start + batch_size])
        got, want = np.asarray(predict(x)), np.asarray(reference(x))
        gap = max(gap, float(np.max(np.abs(got - want))))
        correct += int(np.sum(got.argmax(-1) == y))
        reference_correct += int(np.sum(want.argmax(-1) == y))
        agree += int(np.sum(got.argmax(-1) == want.argmax(-1)))
    n = images.shape[0]
    return {"max_logit_diff": gap, "accuracy": correct / n,
            "jax_accuracy": reference_correct / n, "agreement": agree / n}


def accuracy(predict: Predict, images: np.ndarray, labels: np.ndarray, *,
             batch_size: int = 128) -> float:
    """The fraction of ``images`` whose largest logit under ``predict`` is at their label."""
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        logits = np.asarray(predict(np.asarray(images[start:start + batch_size], np.float32)))
        correct += int(np.sum(logits.argmax(-1) == np.asarray(labels[start:start + batch_size])))
    return correct / images.shape[0]


def default_path(workdir: str, fmt: str, *, int8: bool = False) -> str:
    """``<workdir>/export/model[_int8].<suffix>``."""
    return os.path.join(workdir, "export", "model" + ("_int8" if int8 else "") + SUFFIXES[fmt])


def export(run: Run, fmt: str, *, int8: bool = False, path: str | None = None,
           workdir: str = ".", calibration_images: int = 256,
           int8_ranges: str | None = None) -> Report:
    """Writes ``run``'s model in ``fmt``, runs the file in its runtime, compares with JAX.

    Args:
      run: the trained run (:func:`load_run`).
      fmt: ``"stablehlo"``, ``"tflite"`` or ``"onnx"``.
      int8: int8 post-training quantization (tflite only).
      path: the file to write; ``None``: :func:`default_path` under ``workdir``.
      workdir: the run's directory, for the default path.
      calibration_images: training images that calibrate ``int8``.
      int8_ranges: where int8 activation ranges come from (:func:`export_bytes`).

    Returns:
      The :class:`Report`: on the run's test split, the file's accuracy and its
      largest logit difference against the float JAX model, with the float JAX
      model's accuracy and, for a run trained with fake-quantized activations,
      the accuracy of the model as trained (``qat_accuracy``).
    """
    start = time.perf_counter()
    data = export_bytes(run, fmt, int8=int8, calibration_images=calibration_images,
                        int8_ranges=int8_ranges)
    path = path or default_path(workdir, fmt, int8=int8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    seconds = time.perf_counter() - start
    with open(path, "rb") as f:
        predict = RUNNERS[fmt](f.read())
    images, labels = run.dataset.test_images, run.dataset.test_labels
    result = compare(predict, reference_function(run), images, labels)
    qat_accuracy = None
    if run.model.activation_bits is not None:
        qat_accuracy = accuracy(reference_function(run, fake_quant=True), images, labels)
    return Report(path, len(data), seconds=seconds, qat_accuracy=qat_accuracy, **result)
