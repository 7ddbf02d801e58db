"""Tests of the export example (examples/mobilenet/export.py and examples/export.py).

Each exported file is run in its own runtime and compared with the JAX model.
StableHLO needs flatbuffers, TFLite TensorFlow (and ai_edge_litert where
installed), ONNX jax2onnx and onnxruntime: those tests skip where the
export extra (``pip install -e ".[export]"``) is absent, unless
``JRELU6_REQUIRE_EXPORT=1`` (CI's export stage), which makes a missing runtime a failure.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qat_runs  # tests/examples/qat_runs.py: a settled QAT network (shared).

from mobilenet import export, input_pipeline, models, qat_export
from mobilenet.infra import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = (16, 16, 3)
# A small V3 (squeeze-excite, hard-swish, hard-sigmoid) next to the tiny test network.
# Grouped depthwise convolutions compile fastest; the trained-run tests export "auto".
MODELS = {"tiny": dict(), "mobilenet_v3_small": dict(width_multiplier=0.25)}
# jax.export (de)serializes with flatbuffers, which jax does not install.
RUNTIMES = {"stablehlo": ("flatbuffers",), "tflite": ("tensorflow",),
            "onnx": ("jax2onnx", "onnxruntime")}
# float32 files compute the same function in another order: logits agree to ~1e-6.
ATOL = 1e-4


def _require(fmt: str) -> None:
    """Skips (or, with JRELU6_REQUIRE_EXPORT=1, fails) where ``fmt``'s runtime is missing."""
    for module in RUNTIMES[fmt]:
        if os.environ.get("JRELU6_REQUIRE_EXPORT") == "1":
            __import__(module)
        else:
            pytest.importorskip(module, reason=f"{fmt} export needs {module}: pip install -e "
                                               f"'.[export]'")


@functools.cache
def _run(name: str) -> export.Run:
    """A randomly initialised ``name`` with non-trivial batch statistics, on synthetic data."""
    model = models.create_model(name, num_classes=10, depthwise="grouped", **MODELS[name])
    init = jax.jit(functools.partial(model.init, train=False))  # One compile, not op by op.
    variables = init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
    # Running statistics away from (0, 1), so that folding them changes the kernels.
    rng = np.random.default_rng(1)
    stats = jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32),
                         variables["batch_stats"])
    variables = {"params": jax.tree.map(np.asarray, variables["params"]), "batch_stats": stats}
    dataset = datasets.make_synthetic(num_train=32, num_test=24, image_size=IMAGE[0])
    return export.Run(None, model, variables, 0, dataset)


@functools.cache
def _reference(name: str) -> export.Predict:
    return export.reference_function(_run(name))


@functools.cache
def _exported(name: str, fmt: str, int8: bool = False) -> export.Predict:
    data = export.export_bytes(_run(name), fmt, int8=int8, calibration_images=16)
    return export.RUNNERS[fmt](data)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *IMAGE)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_export_model_computes_the_trained_model(name):
    run = _run(name)
    model, params = export.export_model(run.model, run.variables, native_activations=True)
    x = jnp.asarray(input_pipeline.normalize(_images(4), mean=(0.5,) * 3, std=(0.25,) * 3))
    want = jax.jit(functools.partial(run.model.apply, train=False))(run.variables, x)
    got = jax.jit(functools.partial(model.apply, train=False))({"params": params}, x)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_export_model_parameters_fit_the_export_form(name):
    run = _run(name)
    model, params = export.export_model(run.model, run.variables)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)),
                                               train=False))
    assert "batch_stats" not in shapes
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, shapes["params"])


def test_export_model_drops_fake_quantization():
    model = models.create_model("tiny", num_classes=10, activation_bits=8)
    exported, _ = export.export_model(model, _run("tiny").variables, native_activations=True)
    assert exported.activation_bits is None and exported.activation == "jax.nn"


@pytest.mark.parametrize("options,want", [
    (dict(activation_bits=8), "relu6"),
    (dict(), "calibrated"),
    (dict(activation_bits=4), "calibrated"),
    (dict(activation_bits=8, quant_scheme="fixed_point"), "calibrated"),
    (dict(activation_bits=8, nonlinearity="relu"), "calibrated"),
])
def test_default_int8_ranges_follow_the_training(options, want):
    model = models.create_model("tiny", num_classes=10, **options)
    assert export.default_int8_ranges(model) == want


def test_fold_batch_norm_folds_scale_and_shift():
    params = {"c": {"conv": {"kernel": np.ones((1, 1, 1, 2))},
                    "bn": {"scale": np.array([2.0, 3.0]), "bias": np.array([1.0, -1.0])}}}
    stats = {"c": {"bn": {"mean": np.array([0.5, 2.0]), "var": np.array([3.0, 8.0])}}}
    folded = export.fold_batch_norm(params, stats, epsilon=1.0)
    np.testing.assert_allclose(folded["c"]["conv"]["kernel"].ravel(), [1.0, 1.0])
    np.testing.assert_allclose(folded["c"]["conv"]["bias"], [0.5, -3.0])
    assert "bn" not in folded["c"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exported_file_matches_jax(fmt, name):
    _require(fmt)
    predict, reference = _exported(name, fmt), _reference(name)
    images = _images(3)
    np.testing.assert_allclose(predict(images), reference(images), atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exported_file_takes_any_batch_size(fmt):
    # StableHLO and ONNX have a symbolic batch size; TFLite's runner runs chunks of its 1.
    _require(fmt)
    predict, reference = _exported("tiny", fmt), _reference("tiny")
    for n in (1, 5, 2):
        images = _images(n, seed=n)
        got = predict(images)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, reference(images), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_stablehlo_export_is_differentiable_with_the_trained_kinks():
    _require("stablehlo")
    run = _run("tiny")
    model, params = export.export_model(run.model, run.variables)
    predict = export.inference_function(model, {"params": params}, mean=(0.5,) * 3,
                                        std=(0.25,) * 3)
    loaded = jax.export.deserialize(bytearray(export.to_stablehlo(predict, IMAGE)))
    images = jnp.asarray(_images(2))
    grad = jax.grad(lambda x: loaded.call(x).sum())(images)
    want = jax.grad(lambda x: predict(x).sum())(images)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_int8_tflite_stays_close_to_float():
    _require("tflite")
    predict, reference = _exported("tiny", "tflite", int8=True), _reference("tiny")
    images = _images(8)
    got, want = predict(images), reference(images)
    assert got.dtype == np.float32 and got.shape == want.shape
    # int8 activations: the error is a few quantization steps of the logits' range.
    assert np.max(np.abs(got - want)) < 0.1 * np.ptp(want) + 1e-3


@functools.cache
def _pinned_tiny() -> bytes:
    return export.export_bytes(_run("tiny"), "tflite", int8=True, calibration_images=16,
                               int8_ranges="relu6")


@pytest.mark.slow
def test_pinned_relu6_ranges_requantize_the_biases_that_read_them():
    # The kernels add the int32 bias to the accumulator as it is: its scale must stay
    # input_scale * weight_scale when the input's scale is pinned.
    _require("tflite")
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(_pinned_tiny()))
    graph = model.subgraphs[0]
    checked = 0
    for op in graph.operators:
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            x, w, b = (graph.tensors[i].quantization for i in op.inputs[:3])
            if b is not None and b.scale is not None and len(b.scale) and x.scale is not None:
                np.testing.assert_allclose(b.scale, x.scale[0] * np.asarray(w.scale), rtol=1e-5)
                checked += 1
    assert checked >= 3  # The tiny model's convolutions and its classifier.


@pytest.mark.slow
def test_pinned_relu6_ranges_are_zero_to_six():
    _require("tflite")
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    data = _pinned_tiny()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    graph = model.subgraphs[0]
    outputs = [graph.tensors[op.outputs[0]] for op in graph.operators
               if getattr(op.builtinOptions, "fusedActivationFunction", None)
               == schema.ActivationFunctionType.RELU6]
    assert len(outputs) >= 2  # The tiny model's stem and block2's relu6 layers.
    for tensor in outputs:
        np.testing.assert_allclose(tensor.quantization.scale, [6 / 255])
        assert list(tensor.quantization.zeroPoint) == [-128]
    # The file still runs (an untrained model's activations are far below 6 / 255, so
    # its logits are not compared: the pinned grid is for models trained on it).
    got = export.run_tflite(data)(_images(4))
    assert got.shape == (4, 10) and np.all(np.isfinite(got))


@pytest.mark.parametrize("fmt,options", [("onnx", dict(int8=True)), ("nope", {}),
                                         ("tflite", dict(int8=True, int8_ranges="max"))])
def test_export_bytes_rejects_bad_settings(fmt, options):
    with pytest.raises(ValueError, match=r"^export_bytes: "):
        export.export_bytes(_run("tiny"), fmt, **options)


def test_load_run_rejects_a_directory_without_a_run(tmp_path):
    with pytest.raises(export.ExportError, match=r"^load_run: no config\.json"):
        export.load_run(str(tmp_path))


def _train(workdir, *options: str) -> str:
    """A real (short) run of examples/train.py: 5 steps of the tiny model on synthetic data."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "train.py"), "--model", "tiny",
         "--data", "synthetic", "--image-size", str(IMAGE[0]), "--steps", "5",
         "--batch-size", "16", "--eval-batch-size", "16", "--no-progress", "--no-plot",
         "--workdir", str(workdir), *options],
        check=True, env=env, capture_output=True, timeout=600)
    return str(workdir)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A float run (:func:`_train`)."""
    return _train(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    """A run trained with 8-bit fake-quantized ReLU6 (:func:`_train`)."""
    return _train(tmp_path_factory.mktemp("qat"), "--activation-bits", "8")


@pytest.mark.slow
def test_a_trained_checkpoint_exports_to_stablehlo(request):
    _require("stablehlo")
    trained_run = request.getfixturevalue("trained_run")  # Trained only where it is needed.
    run = export.load_run(trained_run)
    assert run.step == 5 and run.config.model == "tiny"
    report = export.export(run, "stablehlo", workdir=trained_run)
    assert os.path.getsize(report.path) == report.size > 0
    assert report.max_logit_diff < ATOL
    assert report.accuracy == report.jax_accuracy and report.agreement == 1.0
    assert report.qat_accuracy is None


@pytest.mark.slow
def test_a_qat_run_loads_as_trained(request):
    qat_run = request.getfixturevalue("qat_run")
    run = export.load_run(qat_run)
    assert run.model.activation_bits == 8 and run.config.activation_bits == 8
    images = run.dataset.test_images[:4]
    # The model as trained puts every ReLU6 output on the 8-bit grid; the float form does not.
    fake_quant = export.reference_function(run, fake_quant=True)(images)
    float_form = export.reference_function(run)(images)
    assert fake_quant.shape == float_form.shape == (4, 10)
    assert not np.allclose(fake_quant, float_form, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_qat_run_exports_to_int8_tflite_on_its_relu6_grid(request, capsys):
    _require("tflite")
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    qat_run = request.getfixturevalue("qat_run")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import export as cli  # examples/export.py

    # No --int8-ranges: the run's own grid.
    assert cli.main(["--workdir", qat_run, "--format", "tflite", "--int8",
                     "--calibration-images", "16"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("tflite int8 (relu6 ranges): wrote")
    # The file's accuracy against the float JAX model and against the QAT JAX model.
    assert re.search(r"test accuracy [0-9.]+ \(float JAX [0-9.]+, QAT JAX [0-9.]+\)", line)
    with open(export.default_path(qat_run, "tflite", int8=True), "rb") as f:
        model = flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    graph = model.subgraphs[0]
    relu6 = [graph.tensors[op.outputs[0]].quantization for op in graph.operators
             if getattr(op.builtinOptions, "fusedActivationFunction", None)
             == schema.ActivationFunctionType.RELU6]
    assert relu6 and all(q.scale[0] == pytest.approx(6 / 255) for q in relu6)


@pytest.mark.slow
def test_cli_exports_a_trained_checkpoint(request, capsys):
    _require("onnx")
    trained_run = request.getfixturevalue("trained_run")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import export as cli  # examples/export.py

    out = os.path.join(trained_run, "model.onnx")
    assert cli.main(["--workdir", trained_run, "--format", "onnx", "--out", out]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"onnx: wrote {out}") and "test accuracy" in line
    assert os.path.exists(out)


# --- quantization-aware training: the int8 file is the trained model --------------------------


class _ConvBNReLU6Net(models.MobileNet):
    """Conv-BN-ReLU6, depthwise Conv-BN-ReLU6, a linear 1x1 Conv-BN, global pooling,
    logits: the QAT export's core."""

    default_dropout_rate = 0.0

    @nn.compact
    def _forward(self, x, cfg, rate, *, train):
        x, scale = self._quantize_input(x, cfg)
        x = models._chain([models.ConvBN(8, 3, 2, cfg, "relu6", name="stem"),
                           models.ConvBN(8, 3, 1, cfg, "relu6", depthwise=True,
                                         name="depthwise"),
                           models.ConvBN(8, 1, 1, cfg, None, name="project")],
                          x, scale, train=train)[0]
        return self._classify(x, cfg, rate, train=train)


@functools.cache
def _qat_run(granularity: str) -> export.Run:
    """A Conv-BN-ReLU6 network after a few QAT training passes (statistics and ranges set)."""
    model = _ConvBNReLU6Net(num_classes=10, weight_bits=8, activation_bits=8,
                            weight_granularity=granularity)
    return qat_runs.settled_run(model, image_size=IMAGE[0], num_test=48)


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_a_qat_conv_bn_relu6_exports_its_trained_int8_model(granularity):
    _require("tflite")
    run = _qat_run(granularity)
    data, pinned = qat_export.to_int8(run, calibration_images=16)
    # Per channel, the converter's own int8 weights already equal the trained ones; per
    # tensor it would quantize per channel: the file is given the trained integers.
    assert pinned.weights_total == 3 * 3 * 3 * 8 + 3 * 3 * 8 + 8 * 8 + 8 * 10
    if granularity == "per_channel":
        assert pinned.weights_equal == pinned.weights_total
    interpreter = _interpreter(data)
    for layer in qat_export.trained_layers(run.model, run.variables):
        stored = [d for d in interpreter.get_tensor_details()
                  if d["dtype"] == np.int8 and tuple(d["shape"]) == _tflite_shape(layer)]
        assert any(np.array_equal(interpreter.get_tensor(d["index"]),
                                  qat_export._tflite_layout(layer)) for d in stored)
    layers = qat_export.trained_layers(run.model, run.variables)
    scales = {len(layer.scale) for layer in layers}
    assert scales == ({8, 10} if granularity == "per_channel" else {1})
    assert [layer.depthwise for layer in layers].count(True) == 1
    names = {name.split(" x ")[0] for name, _, _ in pinned.tensors.values()}
    assert {"input_range", "stem relu6", "depthwise relu6", "project/out_range",
            "pool_range", "logits_range"} <= names
    result = qat_export.parity(run, data, pinned, run.dataset.test_images, "test")
    # With every bias trained on its int32 grid (input scale x weight scale), the file
    # computes the simulation: the same class, the same logits and every int8 value equal.
    assert result.agreement == 1.0
    assert result.max_logit_steps == 0.0
    for tensor, equal, off_by_one, worse in result.rows:
        assert equal == 1.0, (tensor, equal, off_by_one, worse)


def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    return interpreter


def _tflite_shape(layer) -> tuple[int, ...]:
    return qat_export._tflite_layout(layer).shape
