"""Quantized activations of the MobileNet example: --activation-bits and mobilenet.quantization."""

from __future__ import annotations

import collections
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrelu6.linen
from mobilenet import models, quantization, train
from mobilenet.configs import default
from mobilenet.infra.settings import InvalidSetting

FLOAT_KINDS = (jrelu6.linen.ReLU6, jrelu6.linen.HardSwish, jrelu6.linen.HardSigmoid)


def _images(batch=4, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)),
                       jnp.float32)


def _activation_counts(model) -> collections.Counter:
    """How many times each activation module class is called (traced only)."""
    seen: collections.Counter = collections.Counter()

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and not isinstance(
                context.module, (models.ConvBN, models.InvertedResidual,
                                 models.SqueezeExcite, models.MobileNet)):
            seen[type(context.module).__name__] += 1
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), _images(1))
    return collections.Counter({k: v for k, v in seen.items()
                                if "ReLU" in k or "Hard" in k})


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2", "mobilenet_v3_small"])
def test_activation_bits_quantize_every_relu6_family_layer(name):
    plain = _activation_counts(models.create_model(name, num_classes=10))
    quantized = _activation_counts(models.create_model(name, num_classes=10,
                                                       activation_bits=4))
    assert quantized == {f"Quantized{kind}": count for kind, count in plain.items()}
    assert sum(plain.values()) > 0


def test_mobilenet_v3_quantizes_hard_swish_and_hard_sigmoid_but_not_its_relus():
    counts = _activation_counts(models.create_model("mobilenet_v3_small", num_classes=10,
                                                    activation_bits=8))
    assert set(counts) == {"QuantizedHardSwish", "QuantizedHardSigmoid"}


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2"])
def test_without_bits_the_model_is_the_float_one(name):
    model = models.create_model(name, num_classes=10)
    assert model == models.create_model(name, num_classes=10, activation_bits=None,
                                        nonlinearity="relu6")
    counts = _activation_counts(model)
    assert set(counts) <= {kind.__name__ for kind in FLOAT_KINDS}


def test_without_bits_the_compiled_program_is_unchanged():
    model = models.create_model("tiny", num_classes=10)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                               _images(1))
    explicit = models.create_model("tiny", num_classes=10, activation_bits=None,
                                   nonlinearity="relu6", quant_scheme="affine")

    def text(m):
        return jax.jit(lambda v, x: m.apply(v, x, train=False)).lower(
            variables, _images()).as_text()

    assert text(model) == text(explicit)
    assert "floor" not in text(model)


@pytest.mark.parametrize("nonlinearity, expected", [
    ("relu", {"QuantizedReLU": 4}), ("capped_relu", {"QuantizedCappedReLU": 3})])
def test_another_nonlinearity_replaces_the_relu6_layers(nonlinearity, expected):
    counts = _activation_counts(models.create_model(
        "tiny", num_classes=10, nonlinearity=nonlinearity, activation_bits=4))
    # tiny: three relu6 layers (stem, block2's expand and depthwise); with relu the
    # squeeze-excite's ReLU is quantized too. Its hard-swish layers stay hard-swish.
    assert {k: v for k, v in counts.items() if "Hard" not in k} == expected


@functools.cache
def _tiny_outputs(**settings):
    """The outputs of every activation layer of a tiny model (eval mode, random weights)."""
    model = models.create_model("tiny", num_classes=10, **settings)
    variables = model.init(jax.random.key(0), _images(1), train=False)
    _, state = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                capture_intermediates=True,
                                                mutable=["intermediates"]))(
        variables, 3 * _images())
    outputs = {}
    for path, value in jax.tree_util.tree_leaves_with_path(state["intermediates"]):
        name = jax.tree_util.keystr(path)
        if "Quantized" in name:
            outputs[name] = np.asarray(value)
    return outputs


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_affine_relu6_outputs_lie_on_the_grid(bits):
    outputs = _tiny_outputs(activation_bits=bits)
    relu6 = [v for k, v in outputs.items() if "QuantizedReLU6" in k]
    assert relu6
    levels = 2**bits - 1
    for values in relu6:
        codes = values * levels / 6
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert values.min() >= 0 and values.max() <= 6


@pytest.mark.parametrize("bits", [4, 6])
def test_fixed_point_relu6_outputs_are_multiples_of_its_step(bits):
    outputs = _tiny_outputs(activation_bits=bits, quant_scheme="fixed_point")
    step = 2.0 ** -(bits - 3)
    relu6 = [v for k, v in outputs.items() if "QuantizedReLU6" in k]
    assert relu6
    for values in relu6:
        np.testing.assert_allclose(values / step, np.round(values / step), atol=1e-4)


def test_the_hard_sigmoid_gate_lies_on_the_grid():
    outputs = _tiny_outputs(activation_bits=4)
    gates = [v for k, v in outputs.items() if "QuantizedHardSigmoid" in k]
    assert gates
    for values in gates:
        np.testing.assert_allclose(values * 15, np.round(values * 15), atol=1e-3)


def test_a_capped_relu_is_quantized_on_zero_to_cap():
    outputs = _tiny_outputs(nonlinearity="capped_relu", cap=3.0, activation_bits=3)
    capped = [v for k, v in outputs.items() if "QuantizedCappedReLU" in k]
    assert capped
    for values in capped:
        codes = values * 7 / 3
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
        assert values.max() <= 3


def test_range_statistics_are_the_max_and_the_percentile():
    x = jnp.arange(100_000, dtype=jnp.float32)
    stats = quantization.range_statistics(x)
    assert float(stats["max"]) == 99_999
    assert float(stats["percentile"]) == 99_990  # The 10th largest: 0.01% of 100,000.


def test_a_quantized_relu_keeps_a_running_range_while_training():
    layer = quantization.QuantizedReLU(num_bits=4)
    x = jnp.array([-1.0, 0.5, 2.1, 4.0])  # No input half-way between two levels.
    variables = layer.init(jax.random.key(0), x)
    assert float(variables["batch_stats"]["range"]) == 0
    y, updated = layer.apply(variables, x, mutable=["batch_stats"])
    assert float(updated["batch_stats"]["range"]) == 4.0  # The first batch's max.
    np.testing.assert_allclose(y, [0.0, 0.5333333, 2.1333334, 4.0], rtol=1e-6)
    _, again = layer.apply(updated, 2 * x, mutable=["batch_stats"])
    expected = quantization.RANGE_MOMENTUM * 4 + (1 - quantization.RANGE_MOMENTUM) * 8
    np.testing.assert_allclose(again["batch_stats"]["range"], expected, rtol=1e-6)
    # Evaluation (batch_stats not mutable) reads the range and leaves it.
    np.testing.assert_allclose(layer.apply(updated, x), y)


def test_the_quantized_relu_passes_the_gradient_straight_through_on_its_range():
    layer = quantization.QuantizedReLU(num_bits=2)
    variables = {"batch_stats": {"range": jnp.asarray(3.0)}}
    grad = jax.grad(lambda x: layer.apply(variables, x).sum())(jnp.array([-1.0, 1.1, 2.9, 5.0]))
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 0.0])


def test_calibration_records_both_statistics_and_returns_the_float_outputs():
    model = models.create_model("tiny", num_classes=10, nonlinearity="relu", activation_bits=4)
    variables = model.init(jax.random.key(0), _images(1), train=False)
    batches = [_images(seed=1), _images(seed=2)]
    ranges = quantization.calibrate(model.apply, variables, batches)
    assert set(ranges) == {"max", "percentile"}
    stem_max = float(ranges["max"]["stem"]["QuantizedReLU_0"]["range"])
    stem_pct = float(ranges["percentile"]["stem"]["QuantizedReLU_0"]["range"])
    assert 0 < stem_pct <= stem_max
    merged = quantization.set_ranges(variables["batch_stats"], ranges["max"])
    assert float(merged["stem"]["QuantizedReLU_0"]["range"]) == stem_max
    assert "bn" in merged["stem"]  # Batch norm's statistics are kept.


@pytest.mark.parametrize("settings, message", [
    ({"nonlinearity": "relu", "quant_scheme": "fixed_point"}, "fixed_point"),
    ({"activation": "jax.nn", "activation_bits": 4}, "activation='jrelu6'"),
    ({"nonlinearity": "gelu"}, "nonlinearity must be one of"),
    ({"activation_bits": 1}, "activation_bits must be None or an int in"),
    ({"nonlinearity": "capped_relu", "cap": 0.0}, "cap must be > 0"),
])
def test_bad_quantization_settings_are_refused(settings, message):
    model = models.create_model("tiny", num_classes=10, **settings)
    with pytest.raises(ValueError, match=f"TinyMobileNet: .*{message}"):
        _activation_counts(model)


@pytest.mark.parametrize("bits", [1, 17])
def test_the_config_bounds_the_bits(bits):
    with pytest.raises(InvalidSetting, match="activation_bits"):
        default.get_config(activation_bits=bits)


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{"activation_bits": 4},
                                      {"activation_bits": 4, "nonlinearity": "relu"}])
def test_a_short_quantized_run_trains(settings):
    config = default.get_config(model="tiny", steps=3, batch_size=32, eval_batch_size=64,
                                progress=False, plot=False, log_every=3, eval_every=0,
                                checkpoint_every=0, **settings)
    state, summary = train.fit(config, None)
    assert 0 <= summary["test_accuracy"] <= 1
    assert np.isfinite(summary["train_loss"])
    ranges = [v for path, v in jax.tree_util.tree_leaves_with_path(state.batch_stats)
              if "range" in jax.tree_util.keystr(path)]
    assert (len(ranges) > 0) == (settings.get("nonlinearity") == "relu")
    assert all(float(r) > 0 for r in ranges)
