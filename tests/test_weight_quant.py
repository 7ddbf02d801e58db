"""Per-channel fake quantization, LiteRT's symmetric int8 weights, batch-norm folding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jrelu6

F32 = np.float32


def _tf_nudge(lo, hi, num_bits, narrow_range):
    """TensorFlow's nudged per-channel grid: ``(qmin, zero_point, scale, min, max)``."""
    qmin, qmax = F32(int(narrow_range)), F32(2**num_bits - 1)
    lo, hi = np.asarray(lo, F32), np.asarray(hi, F32)
    scale = (hi - lo) / (qmax - qmin)
    z = np.clip(qmin - lo / scale, qmin, qmax)
    zero_point = (np.floor(z) + (z - np.floor(z) >= F32(0.5))).astype(F32)
    return qmin, zero_point, scale, (qmin - zero_point) * scale, (qmax - zero_point) * scale


def _tf_per_channel(x, lo, hi, num_bits, narrow_range):
    """TensorFlow's FakeQuantWithMinMaxVarsPerChannel (last axis), in float32 NumPy.

    Returns ``(level, value, scale)``: the signed level ``q - z`` of each input, TensorFlow's
    ``floor((clip(x) - m) * (1/s) + 1/2) * s + m`` and the step. TensorFlow's ``_vars``
    kernels divide by ``s`` where this (and jrelu6, as TensorFlow's ``_args`` form)
    multiplies by ``1/s``: the two can choose different levels only within an ulp of a
    half-way point (see ``jrelu6._quant``; ``test_division_form_differs_only_at_halves``).
    """
    x = np.asarray(x, F32)
    qmin, zero_point, scale, nudged_min, nudged_max = _tf_nudge(lo, hi, num_bits, narrow_range)
    clamped = np.minimum(np.maximum(x, nudged_min), nudged_max)
    from_min = np.floor((clamped - nudged_min) * (F32(1) / scale) + F32(0.5))
    return from_min + (qmin - zero_point), from_min * scale + nudged_min, scale


def _tf_per_channel_gradients(x, lo, hi, num_bits, narrow_range):
    """TensorFlow's FakeQuantWithMinMaxVarsPerChannelGradient for an all-ones cotangent."""
    x = np.asarray(x, F32)
    *_, nudged_min, nudged_max = _tf_nudge(lo, hi, num_bits, narrow_range)
    below, above = x < nudged_min, x > nudged_max
    axes = tuple(range(x.ndim - 1))
    return ((~below & ~above).astype(F32), below.sum(axes).astype(F32),
            above.sum(axes).astype(F32))


def _channels_input(seed=0, shape=(5, 7, 4)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(F32) * 2
    lo = np.array([-1.0, -0.3, 0.1, -6.0], F32)  # the third is nudged to [0, .9]
    hi = np.array([1.0, 2.7, 1.0, 6.0], F32)
    return x, lo, hi


# ------------------------------------------------------------ fake_quant_per_channel


@pytest.mark.parametrize("num_bits", [2, 4, 8, 16])
@pytest.mark.parametrize("narrow_range", [False, True])
def test_per_channel_levels_equal_tensorflows_algorithm(num_bits, narrow_range):
    x, lo, hi = _channels_input()
    got = jrelu6.fake_quant_per_channel(x, min=lo, max=hi, num_bits=num_bits,
                                        narrow_range=narrow_range)
    level, value, scale = _tf_per_channel(x, lo, hi, num_bits, narrow_range)
    np.testing.assert_array_equal(np.asarray(got), (level * scale).astype(F32))
    # TensorFlow's own level * s + m rounds twice: within an ulp of the level's magnitude.
    np.testing.assert_allclose(np.asarray(got), value, rtol=0, atol=np.max(hi - lo) * 1e-6)


def test_division_form_differs_only_at_halves():
    x, lo, hi = _channels_input(shape=(200, 50, 4))
    level, _, scale = _tf_per_channel(x, lo, hi, 16, False)
    got = np.asarray(jrelu6.fake_quant_per_channel(x, min=lo, max=hi, num_bits=16)) / scale
    z = np.round(-lo / scale).clip(0, 2**16 - 1)
    nudged_min = -z * scale
    shifted = (np.clip(x, nudged_min, (2**16 - 1 - z) * scale) - nudged_min) / scale
    divided = np.floor(shifted + F32(0.5)) - z
    differ = divided != np.round(got)
    # Where the forms differ, the input is within a few ulps of a half-way point.
    half = np.abs(shifted - np.floor(shifted) - 0.5)
    assert np.all(half[differ] < 1e-6 * np.maximum(1, np.abs(shifted[differ])))
    np.testing.assert_array_equal(np.round(got), level)


def test_per_channel_is_fake_quant_of_each_channel():
    x, lo, hi = _channels_input()
    got = jrelu6.fake_quant_per_channel(x, min=lo, max=hi)
    for c in range(x.shape[-1]):
        want = jrelu6.fake_quant(x[..., c], min=float(lo[c]), max=float(hi[c]))
        np.testing.assert_array_equal(np.asarray(got[..., c]), np.asarray(want))


def test_per_channel_axis_moves_the_channels():
    x, lo, hi = _channels_input()
    last = jrelu6.fake_quant_per_channel(x, min=lo, max=hi)
    first = jrelu6.fake_quant_per_channel(np.moveaxis(x, -1, 0), min=lo, max=hi, axis=0)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(first), 0, -1), np.asarray(last))


def test_per_channel_gradients_equal_tensorflows():
    x, lo, hi = _channels_input()
    grads = jax.grad(lambda x, lo, hi: jrelu6.fake_quant_per_channel(
        x, min=lo, max=hi).sum(), argnums=(0, 1, 2))(jnp.asarray(x), jnp.asarray(lo),
                                                      jnp.asarray(hi))
    for got, want in zip(grads, _tf_per_channel_gradients(x, lo, hi, 8, False)):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_per_channel_traced_range_equals_known_range():
    x, lo, hi = _channels_input()
    known = jrelu6.fake_quant_per_channel(x, min=lo, max=hi)
    traced = jax.jit(lambda lo, hi: jrelu6.fake_quant_per_channel(x, min=lo, max=hi))(lo, hi)
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(known))


# ------------------------------------------------------------ fake_quant_weights


def _kernel(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32) * 0.1


KERNELS = [(3, 3, 16, 32), (1, 1, 24, 48), (3, 3, 1, 96), (160, 10)]


@pytest.mark.parametrize("shape", KERNELS)
@pytest.mark.parametrize("num_bits", [2, 8, 16])
def test_weights_are_litert_int8_per_output_channel(shape, num_bits):
    w = _kernel(shape)
    q, scale = jrelu6.quantize_weights(w, num_bits=num_bits)
    n = 2 ** (num_bits - 1) - 1
    q, scale, w_np = np.asarray(q), np.asarray(scale), np.asarray(w)
    assert scale.shape == (shape[-1],)
    assert q.min() >= -n and q.max() <= n
    # Zero point 0, and the channel's largest magnitude is the end of the grid.
    np.testing.assert_array_equal(np.abs(q).reshape(-1, shape[-1]).max(0), n)
    np.testing.assert_array_equal(
        scale, np.abs(w_np).reshape(-1, shape[-1]).max(0) / F32(n))
    # Round half up of w / s, within an ulp of the division: at most half a step off.
    dequantized = q.astype(F32) * scale
    error = np.abs(dequantized - w_np) - scale * F32(0.5)
    assert np.all(error <= 8 * np.spacing(np.abs(w_np).max())), float(error.max())
    np.testing.assert_array_equal(
        np.asarray(jrelu6.fake_quant_weights(w, num_bits=num_bits)), dequantized)


@pytest.mark.parametrize("num_bits", [2, 8, 16])
def test_weights_are_tensorflows_per_channel_op_with_a_symmetric_narrow_range(num_bits):
    w = _kernel((3, 3, 8, 6))
    m = np.abs(np.asarray(w)).reshape(-1, 6).max(0)
    level, _, scale = _tf_per_channel(w, -m, m, num_bits, True)
    q, _ = jrelu6.quantize_weights(w, num_bits=num_bits)
    np.testing.assert_array_equal(np.asarray(q), level)
    np.testing.assert_array_equal(np.asarray(jrelu6.fake_quant_weights(w, num_bits=num_bits)),
                                  (level * scale).astype(F32))


def test_per_tensor_has_one_scale_and_per_channel_is_finer():
    # Channels of very different magnitudes: per tensor rounds the small ones away.
    w = _kernel((3, 3, 4, 8)) * jnp.logspace(-3, 0, 8)
    q_t, scale_t = jrelu6.quantize_weights(w, axis=None)
    assert scale_t.shape == (1,)
    assert int(jnp.max(jnp.abs(q_t))) == 127
    np.testing.assert_array_equal(np.asarray(jrelu6.fake_quant_weights(w, axis=None)),
                                  np.asarray(q_t).astype(F32) * np.asarray(scale_t)[0])
    err_c = jnp.abs(jrelu6.fake_quant_weights(w) - w).max(axis=(0, 1, 2))
    err_t = jnp.abs(jrelu6.fake_quant_weights(w, axis=None) - w).max(axis=(0, 1, 2))
    assert bool(jnp.all(err_c <= err_t))
    assert bool(jnp.all(jrelu6.fake_quant_weights(w, axis=None)[..., 0] == 0))
    assert not bool(jnp.all(jrelu6.fake_quant_weights(w)[..., 0] == 0))


def test_weights_other_axis():
    w = _kernel((6, 3, 3, 5))  # TFLite's Conv2D layout: output channels first.
    first = jrelu6.fake_quant_weights(w, axis=0)
    last = jrelu6.fake_quant_weights(jnp.moveaxis(w, 0, -1))
    np.testing.assert_array_equal(np.asarray(jnp.moveaxis(first, 0, -1)), np.asarray(last))


def test_weights_gradient_is_the_identity_including_each_channels_largest():
    w = _kernel((1, 1, 64, 128))
    for axis in (-1, None):
        def weighted_sum(w, axis=axis):
            ramp = jnp.arange(w.size, dtype=jnp.float32).reshape(w.shape)
            return jnp.sum(jrelu6.fake_quant_weights(w, axis=axis) * ramp)

        grad = jax.jit(jax.grad(weighted_sum))(w)
        np.testing.assert_array_equal(np.asarray(grad),
                                      np.arange(w.size, dtype=F32).reshape(w.shape))


def test_weights_are_the_same_eagerly_under_jit_and_inside_a_gradient():
    w = _kernel((3, 3, 16, 32), seed=3)
    eager = jrelu6.fake_quant_weights(w)
    jitted = jax.jit(jrelu6.fake_quant_weights)(w)
    inside = jax.jit(jax.grad(lambda w: 0.5 * jnp.sum(jrelu6.fake_quant_weights(w) ** 2)))(w)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
    np.testing.assert_array_equal(np.asarray(inside), np.asarray(eager))
    q, scale = jax.jit(jrelu6.quantize_weights)(w)
    np.testing.assert_array_equal(np.asarray(q).astype(F32) * np.asarray(scale), np.asarray(eager))


def test_all_zero_channel_stays_zero():
    w = _kernel((3, 3, 2, 3)).at[..., 1].set(0.0)
    q, scale = jrelu6.quantize_weights(w)
    assert bool(jnp.all(jrelu6.fake_quant_weights(w)[..., 1] == 0))
    assert bool(jnp.all(q[..., 1] == 0)) and float(scale[1]) > 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_weights_keep_the_dtype(dtype):
    w = _kernel((3, 3, 4, 8)).astype(dtype)
    out = jrelu6.fake_quant_weights(w)
    assert out.dtype == dtype
    q, scale = jrelu6.quantize_weights(w)
    assert q.dtype == jnp.int32 and scale.dtype == jnp.float32
    dequantized = np.asarray(q).astype(F32) * np.asarray(scale)
    np.testing.assert_array_equal(np.asarray(out, F32),
                                  np.asarray(jnp.asarray(dequantized).astype(dtype), F32))


@pytest.mark.parametrize("fn, x, kwargs, error, message", [
    (jrelu6.fake_quant_weights, [1.0, 2.0], {}, TypeError, "fake_quant_weights"),
    (jrelu6.fake_quant_weights, jnp.ones(3, jnp.int32), {}, TypeError, "floating"),
    (jrelu6.fake_quant_weights, jnp.ones(3), {"num_bits": 1}, ValueError, r"\[2, 16\]"),
    (jrelu6.fake_quant_weights, jnp.ones(3), {"num_bits": 17}, ValueError, r"\[2, 16\]"),
    (jrelu6.fake_quant_weights, jnp.ones(3), {"num_bits": True}, TypeError, "num_bits"),
    (jrelu6.fake_quant_weights, jnp.ones((2, 3)), {"axis": 2}, ValueError, "axis 2"),
    (jrelu6.fake_quant_weights, jnp.ones(3), {"axis": 0.0}, TypeError, "axis"),
    (jrelu6.fake_quant_weights, jnp.ones(()), {"axis": -1}, ValueError, "axis=None"),
    (jrelu6.quantize_weights, jnp.ones(3), {"num_bits": 0}, ValueError, "quantize_weights"),
    (jrelu6.fake_quant_per_channel, jnp.ones((2, 3)), {"min": jnp.zeros(2),
                                                      "max": jnp.ones(3)},
     ValueError, r"shape \(3,\)"),
    (jrelu6.fake_quant_per_channel, jnp.ones((2, 3)), {"min": [0.0, 0.0, 0.0],
                                                      "max": jnp.ones(3)}, TypeError, "array"),
    (jrelu6.fake_quant_per_channel, jnp.ones((2, 3)),
     {"min": jnp.zeros(3), "max": jnp.array([1.0, 0.0, 1.0])}, ValueError, "channel 1"),
    (jrelu6.fake_quant_per_channel, jnp.ones((2, 3)),
     {"min": jnp.zeros(3), "max": jnp.array([1.0, jnp.inf, 1.0])}, ValueError, "finite"),
])
def test_errors_name_the_function(fn, x, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        fn(x, **kwargs)
    assert fn.__name__ in str(info.value)


def test_hyperparameters_are_keyword_only():
    with pytest.raises(TypeError):
        jrelu6.fake_quant_weights(jnp.ones(3), 8)  # type: ignore[misc]


# ------------------------------------------------------------ fold_batch_norm


@pytest.mark.parametrize("with_bias", [False, True])
def test_folding_equals_conv_then_batch_norm(with_bias):
    keys = jax.random.split(jax.random.key(1), 7)
    x = jax.random.normal(keys[0], (2, 9, 9, 5))
    w = jax.random.normal(keys[1], (3, 3, 5, 6)) * 0.3
    bias = jax.random.normal(keys[2], (6,)) if with_bias else None
    gamma = jax.random.uniform(keys[3], (6,), minval=-2.0, maxval=2.0)
    beta, mean = jax.random.normal(keys[4], (6,)), jax.random.normal(keys[5], (6,))
    var = jax.random.uniform(keys[6], (6,), minval=0.1, maxval=3.0)

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST)

    y = conv(x, w) + (0 if bias is None else bias)
    want = (y - mean) * gamma / jnp.sqrt(var + 1e-3) + beta
    w2, b2 = jrelu6.fold_batch_norm(w, bias, scale=gamma, offset=beta, mean=mean, var=var,
                                    epsilon=1e-3)
    np.testing.assert_allclose(np.asarray(conv(x, w2) + b2), np.asarray(want), rtol=1e-5,
                               atol=1e-5)


def test_folding_a_depthwise_and_a_dense_kernel_scales_the_last_axis():
    gamma, var = jnp.array([2.0, -1.0, 0.5]), jnp.array([3.0, 0.0, 15.0])
    for kernel in (jnp.ones((3, 3, 1, 3)), jnp.ones((4, 3))):
        w, b = jrelu6.fold_batch_norm(kernel, scale=gamma, offset=jnp.zeros(3),
                                      mean=jnp.ones(3), var=var, epsilon=1.0)
        np.testing.assert_allclose(np.asarray(w[(0,) * (w.ndim - 1)]), [1.0, -1.0, 0.125])
        np.testing.assert_allclose(np.asarray(b), [-1.0, 1.0, -0.125])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"scale": jnp.ones(2)}, ValueError, r"scale must have shape \(3,\)"),
    ({"epsilon": -1.0}, ValueError, "epsilon"),
    ({"mean": [0.0, 0.0, 0.0]}, TypeError, "fold_batch_norm"),
])
def test_folding_errors_name_the_function(kwargs, error, message):
    args = {"scale": jnp.ones(3), "offset": jnp.zeros(3), "mean": jnp.zeros(3),
            "var": jnp.ones(3), "epsilon": 1e-5, **kwargs}
    with pytest.raises(error, match=message):
        jrelu6.fold_batch_norm(jnp.ones((2, 3)), **args)
