"""LiteRT's int8 arithmetic in JAX (mobilenet.int8_emulation): hand-computed values, and a
small residual QAT network and a MobileNetV3-style one (hard-swish, squeeze-excite) whose
evaluation equals its int8 file in LiteRT, value for value.

The LiteRT test skips without the export extra (TensorFlow's converter, ``ai_edge_litert``)
unless ``JRELU6_REQUIRE_EXPORT=1``.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import qat_runs  # tests/examples/qat_runs.py: a settled QAT network (shared).

from mobilenet import export, int8_emulation, models, qat_export, qat_layers

IMAGE = (16, 16, 3)


def _grid(scale: float, zero_point: int, bits: int = 8) -> int8_emulation.Grid:
    return int8_emulation.Grid(jnp.float32(scale), jnp.int32(zero_point), bits)


def test_grid_of_relu6_and_of_an_asymmetric_range():
    relu6 = int8_emulation.grid(0.0, 6.0, 8)
    assert float(relu6.scale) == np.float32(6.0) / np.float32(255.0)
    assert int(relu6.zero_point) == 0
    # [-1, 3] on 255 steps: scale 4/255, 0 at level 63.75, nudged to 64.
    signed = int8_emulation.grid(-1.0, 3.0, 8)
    assert float(signed.scale) == np.float32(4.0) / np.float32(255.0)
    assert int(signed.zero_point) == 64


def test_requantize_rounds_half_to_even_and_clamps():
    # ratio fl(fl(0.5 * 0.25) / 0.25) = 0.5: accumulators 5, 7, -3 -> 2.5, 3.5, -1.5.
    out = _grid(0.25, 10)
    acc = jnp.array([5, 7, -3, 1000, -1000], jnp.int32)
    levels = int8_emulation.requantize(acc, 0.5, 0.25, out)
    assert levels.tolist() == [12, 14, 8, 255, 0]
    relu = int8_emulation.requantize(acc, 0.5, 0.25, out, relu=True)
    assert relu.tolist() == [12, 14, 10, 255, 10]


def test_requantize_uses_one_scale_per_output_channel():
    out = _grid(1.0, 0)
    acc = jnp.array([[10, 10]], jnp.float32)
    levels = int8_emulation.requantize(acc, 1.0, jnp.array([0.5, 2.0]), out)
    assert levels.tolist() == [[5, 20]]


def test_add_multipliers_and_shift():
    # Ratios 0.5 and 0.25: the larger is 2**-1, so shift = 20 + 1 = 21, multipliers
    # 0.5 * 2**21 = 2**20 and 2**19.
    ma, mb, shift = int8_emulation.add_multipliers(0.02, 0.01, 0.04)
    assert (int(ma), int(mb), int(shift)) == (2**20, 2**19, 21)


def test_add_rounds_half_up_by_its_shift():
    out = _grid(0.04, 100)
    a = jnp.array([3, 1, -1, 0], jnp.int32)
    b = jnp.array([5, 0, 0, 2], jnp.int32)
    levels = int8_emulation.add(a, b, 0.02, 0.01, out)
    # 0.06 + 0.05 = 2.75 steps -> 3; 0.5 -> 1 and -0.5 -> 0 (ties upward); 0.5 -> 1.
    assert levels.tolist() == [103, 101, 100, 101]


def test_round_half_away_from_zero_is_exact():
    x = jnp.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 3.2], jnp.float32)
    assert int8_emulation.round_half_away(x).tolist() == [1, 2, 3, -1, -3, 0, 0, 3]


def test_spatial_sum_of_raw_int8_values():
    # Input on relu6's grid (zero point 0, int8 values offset - 128), 2x1 pixels.
    x_grid = int8_emulation.grid(0.0, 6.0, 8)
    offsets = jnp.array([[[[10]], [[21]]]], jnp.int32)  # (1, 2, 1, 1)
    out_scale = float(x_grid.scale) * 2 * 2  # the mean's step 2 * s_in, times n = 2
    levels = int8_emulation.spatial_sum(offsets, x_grid, out_scale, jnp.int32(0))
    # raw sum (10 - 128) + (21 - 128) = -225; ratio 1/4; bias 128 * 1/4 * 2 = 64:
    # -56.25 + 64 = 7.75 -> 8.
    assert levels.tolist() == [[8]]


def test_mean_values_is_the_mean_on_the_output_grid():
    x_grid = int8_emulation.grid(0.0, 6.0, 8)
    x = jnp.array([[[[10.0]], [[21.0]]]]) * x_grid.scale
    out = int8_emulation.Grid(x_grid.scale * 2, jnp.int32(0), 8)
    # The mean is 15.5 input steps = 7.75 output steps -> 8.
    assert float(int8_emulation.mean_values(x, x_grid, out)[0, 0]) == pytest.approx(
        8 * float(out.scale))


def test_quantize_values_multiplies_by_the_reciprocal_and_rounds_half_to_even():
    out = _grid(0.5, 3)
    x = jnp.array([0.25, 0.75, -0.25, 1.0, 200.0, -200.0], jnp.float32)
    # 0.5, 1.5, -0.5 steps -> 0, 2, -0 (half to even); 2; clamped to levels 255 and 0.
    assert int8_emulation.quantize_values(x, out).tolist() == [0.0, 1.0, 0.0, 1.0, 126.0,
                                                                 -1.5]


def test_dense_values_on_hand_values():
    x = jnp.array([[2.0, -1.0]]) * 0.5  # offsets 2, -1 at scale 0.5
    q = jnp.array([[3, 1], [1, -2]])
    bias = jnp.array([0.25, 0.0])  # 1 step of 0.5 * 0.5
    out = _grid(0.5, 4)
    # accumulators 2*3 - 1 + 1 = 6 and 2 + 2 = 4, times 0.25 / 0.5: 3 and 2 steps.
    values = int8_emulation.dense_values(x, 0.5, q, 0.5, bias, out)
    assert values.tolist() == [[1.5, 1.0]]


def test_multiply_rounds_half_to_even_and_clamps():
    # ratio fl(fl(0.5 * 0.5) / 0.5) = 0.5: products 5, 7, -3, 600 -> 2.5, 3.5, -1.5, 300.
    out = _grid(0.5, 10)
    a = jnp.array([5, 7, -3, 30], jnp.int32)
    b = jnp.array([1, 1, 1, 20], jnp.int32)
    assert int8_emulation.multiply(a, b, 0.5, 0.5, out).tolist() == [12, 14, 8, 255]


def test_hard_swish_table_is_tflites_fixed_point_kernel():
    # s_in = 3/256: the "reluish" multiplier hires / (3/32768) is exactly 1 (0.5 * 2**1);
    # s_out = s_in / 64: the output multiplier is 0.5 (exponent 0). For an offset k the
    # kernel then computes trunc(k (k + 256) / 8) output steps (hard-swish is exactly
    # k (k + 256) / 8 steps): truncated toward zero, not rounded.
    x_grid = _grid(3 / 256, 128)
    out = _grid(3 / 256 / 64, 100)
    table = int8_emulation.hard_swish_table(x_grid, out)
    assert table.shape == (256,)
    # k = 0, 1 (32.125), -1 (-31.875), 2 (64.5), 5 (163.1, clamped at 255).
    assert [int(table[128 + k]) for k in (0, 1, -1, 2, 5)] == [100, 132, 69, 164, 255]


def test_hard_swish_values_looks_up_each_level():
    x_grid, out = _grid(3 / 256, 128), _grid(3 / 256 / 64, 100)
    x = jnp.array([0.0, 1.0, -1.0]) * x_grid.scale
    values = int8_emulation.hard_swish_values(x, x_grid, out)
    np.testing.assert_array_equal(np.asarray(values),
                                  np.array([0, 32, -31]) * np.float32(out.scale))


# --- against LiteRT ----------------------------------------------------------------------


class _ResidualNet(models.MobileNet):
    """Conv-BN-ReLU6, an inverted residual block with its ADD, a ReLU6 head, global pooling
    and logits: every requantization of MobileNetV2's int8 file."""

    default_dropout_rate = 0.0

    @nn.compact
    def _forward(self, x, cfg, rate, *, train):
        x, scale = self._quantize_input(x, cfg)
        x = models._chain([models.ConvBN(8, 3, 2, cfg, "relu6", name="stem"),
                           models.InvertedResidual(24, 8, 3, 1, "relu6", cfg, name="block1"),
                           models.ConvBN(32, 1, 1, cfg, "relu6", name="head")],
                          x, scale, train=train)[0]
        return self._classify(x, cfg, rate, train=train, in_grid=qat_layers.relu6_grid(cfg))


@functools.cache
def _residual_run() -> export.Run:
    model = _ResidualNet(num_classes=10, weight_bits=8, activation_bits=8)
    return qat_runs.settled_run(model, image_size=IMAGE[0], num_test=64)


def _require_litert() -> None:
    if os.environ.get("JRELU6_REQUIRE_EXPORT") == "1":
        return
    pytest.importorskip("tensorflow", reason="the int8 file needs TensorFlow's converter: "
                        'pip install -e ".[export]"')
    pytest.importorskip("ai_edge_litert", reason="running the int8 file needs ai_edge_litert: "
                        'pip install -e ".[export]"')


def test_a_residual_qat_network_evaluates_as_its_int8_file():
    _require_litert()
    run = _residual_run()
    data, pinned = qat_export.to_int8(run, calibration_images=16)
    names = {name.split(" x ")[0] for name, _, _ in pinned.tensors.values()}
    assert {"block1/add_range", "pool_range", "logits_range", "head relu6"} <= names
    _assert_the_file_equals_its_emulation(run, data, pinned)


def _assert_the_file_equals_its_emulation(run, data, pinned):
    """Every pinned tensor and logit of the file equal to the integer emulation's, on the
    test images and on noise (values near a level's midpoint in every layer)."""
    noise = np.random.default_rng(0).uniform(0, 255, (192, *IMAGE)).astype(np.float32)
    images = np.concatenate([np.asarray(run.dataset.test_images, np.float32), noise])
    result = qat_export.parity(run, data, pinned, images, "test", table_images=images.shape[0])
    assert result.agreement == 1.0
    assert result.max_logit_steps == 0.0
    assert {row[0] for row in result.rows} == {name for name, _, _ in pinned.tensors.values()}
    for tensor, equal, off_by_one, worse in result.rows:
        assert equal == 1.0, (tensor, equal, off_by_one, worse)

class _V3Net(models.MobileNet):
    """MobileNetV3's int8 ops in a few layers: a hard-swish stem (CONV_2D, HARD_SWISH),
    blocks with squeeze-excite after a hard-swish and after a ReLU depthwise layer (SUM,
    FULLY_CONNECTED with fused ReLU and ReLU6, MUL by 1/6, MUL), a residual ADD, a
    hard-swish head and the classifier's hard-swish hidden layer."""

    default_dropout_rate = 0.0

    @nn.compact
    def _forward(self, x, cfg, rate, *, train):
        x, scale = self._quantize_input(x, cfg)
        layers = [models.ConvBN(8, 3, 2, cfg, "hard_swish", name="stem"),
                  models.InvertedResidual(24, 8, 3, 1, "hard_swish", cfg, squeeze=8,
                                          name="block1"),
                  models.InvertedResidual(16, 16, 3, 2, "relu", cfg, squeeze=8, name="block2"),
                  models.ConvBN(32, 1, 1, cfg, "hard_swish", name="head")]
        x = models._chain(layers, x, scale, train=train)[0]
        return self._classify(x, cfg, rate, train=train, hidden=24,
                              in_grid=layers[-1].out_grid())


@functools.cache
def _v3_run() -> export.Run:
    model = _V3Net(num_classes=10, weight_bits=8, activation_bits=8)
    return qat_runs.settled_run(model, image_size=IMAGE[0], num_test=64)


def test_a_v3_style_qat_network_evaluates_as_its_int8_file():
    _require_litert()
    run = _v3_run()
    data, pinned = qat_export.to_int8(run, calibration_images=16)
    names = {name.split(" x ")[0] for name, _, _ in pinned.tensors.values()}
    assert {"stem/hard_swish_in_range", "stem/hard_swish_range", "block1/se/pool_range",
            "block1/se/relu_range", "block1/se relu6", "block1/se/gate_range",
            "block1/se/scale_range", "block2/se/scale_range", "hard_swish_in_range",
            "hard_swish_range", "logits_range"} <= names
    _assert_the_file_equals_its_emulation(run, data, pinned)
