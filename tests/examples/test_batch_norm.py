"""examples/mobilenet/batch_norm.py: flax's BatchNorm, with a hand-written backward pass."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet.batch_norm import BatchNorm, batch_norm

# (shape, mean, std): conv-like activations, a dense layer's, and data far from zero.
CASES = [((8, 6, 5, 12), 0.0, 1.0), ((16, 7), 0.5, 2.0), ((4, 3, 3, 8), 20.0, 0.5)]


def _x(shape, mean, std, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(mean, std, size=shape), jnp.float32)


def _apply(layer, variables, x, **kwargs):
    return layer.apply(variables, x, mutable=["batch_stats"], **kwargs)


def _grads(layer, variables, x, w):
    def loss(params, x):
        y, _ = _apply(layer, {"params": params, "batch_stats": variables["batch_stats"]}, x)
        return jnp.sum(jnp.sin(y) * w)  # A non-linear loss: a non-uniform cotangent.
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)


def _layers(**kwargs):
    return BatchNorm(**kwargs), nn.BatchNorm(**kwargs)


@pytest.mark.parametrize("shape,mean,std", CASES)
def test_training_output_and_statistics_match_flax(shape, mean, std):
    x = _x(shape, mean, std)
    ours, theirs = _layers(use_running_average=False, momentum=0.9)
    variables = theirs.init(jax.random.key(0), x)
    (y, got), (want_y, want) = _apply(ours, variables, x), _apply(theirs, variables, x)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=2e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(got["batch_stats"][name], want["batch_stats"][name],
                                   rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("shape,mean,std", CASES)
def test_gradients_match_flax(shape, mean, std):
    x = _x(shape, mean, std)
    w = _x(shape, 0.0, 1.0, seed=1)
    ours, theirs = _layers(use_running_average=False, momentum=0.9)
    variables = theirs.init(jax.random.key(0), x)
    variables = {**variables, "params": {"scale": _x(shape[-1:], 1.0, 0.3, seed=2),
                                         "bias": _x(shape[-1:], 0.0, 0.3, seed=3)}}
    got, want = _grads(ours, variables, x, w), _grads(theirs, variables, x, w)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_evaluation_matches_flax():
    x = _x((4, 5, 5, 6), 1.0, 2.0)
    ours, theirs = _layers(use_running_average=True)
    variables = theirs.init(jax.random.key(0), x)
    variables = {**variables, "batch_stats": {"mean": jnp.full((6,), 0.5),
                                              "var": jnp.full((6,), 3.0)}}
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x),
                               rtol=1e-6, atol=1e-6)


def test_variables_are_flax_batchnorms():
    x = _x((2, 4, 4, 3), 0.0, 1.0)
    ours, theirs = _layers(use_running_average=False)
    got, want = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)  # Initial values too; init does not update.


def test_gradient_through_the_returned_statistics():
    # The statistics are differentiable outputs too: compare with autodiff of the formula.
    x = _x((6, 5), 2.0, 1.5)
    scale, bias = _x((5,), 1.0, 0.2, seed=1), _x((5,), 0.0, 0.2, seed=2)

    def reference(x, scale, bias):
        mean = jnp.mean(x, 0)
        var = jnp.maximum(jnp.mean(x * x, 0) - mean * mean, 0)
        return (x - mean) * scale * jax.lax.rsqrt(var + 1e-5) + bias, mean, var

    def loss(f):
        def value(x, scale, bias):
            y, mean, var = f(x, scale, bias)
            return jnp.sum(jnp.sin(y)) + jnp.sum(mean ** 2) + jnp.sum(jnp.cos(var))
        return jax.grad(value, argnums=(0, 1, 2))(x, scale, bias)

    got = loss(lambda *a: batch_norm(*a, epsilon=1e-5))
    for a, b in zip(got, loss(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,scale_shape", [((5,), (5,)), ((4, 3), (4,))])
def test_bad_shapes_raise(shape, scale_shape):
    with pytest.raises(ValueError, match=r"batch_norm: need x \(\.\.\., C\)"):
        batch_norm(jnp.ones(shape), jnp.ones(scale_shape), jnp.ones(scale_shape))


@pytest.mark.slow
def test_mobilenet_float32_gradients_are_as_close_to_float64_as_with_flax(monkeypatch):
    # Flax's backward pass differentiates E[x^2] - E[x]^2, ours sums g * (x - mean); both
    # forward passes compute the variance as E[x^2] - E[x]^2, and that rounding sets the
    # error of both: the two medians differ by a few percent, either way round as the
    # network's other layers change. Reference: the network in float64 with flax's layer.
    from mobilenet import models

    rng = np.random.default_rng(0)
    images, labels = rng.standard_normal((16, 32, 32, 3)), rng.integers(0, 10, 16)

    def grads(layer, dtype):
        monkeypatch.setattr(models, "BatchNorm", layer)
        model = models.create_model("mobilenet_v2", num_classes=10, width_multiplier=0.35,
                                    depthwise="shifted", dtype=dtype, param_dtype=dtype,
                                    dropout_rate=0.0)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), dtype), train=False)

        def loss(params):
            logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                    jnp.asarray(images, dtype), train=True,
                                    mutable=["batch_stats"])
            log_p = jax.nn.log_softmax(logits.astype(dtype))
            return -jnp.mean(jnp.take_along_axis(log_p, jnp.asarray(labels)[:, None], 1))

        return [np.asarray(g, np.float64)
                for g in jax.tree.leaves(jax.jit(jax.grad(loss))(variables["params"]))]

    # The models are not written for float64: standard promotion for this comparison.
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        reference = grads(nn.BatchNorm, jnp.float64)
        errors = {}
        for name, layer in (("flax", nn.BatchNorm), ("ours", BatchNorm)):
            errors[name] = np.median(np.concatenate([
                np.abs(g - r).ravel() / (np.abs(r).ravel() + 1e-12)
                for g, r in zip(grads(layer, jnp.float32), reference, strict=True)]))
    assert errors["ours"] <= 1.1 * errors["flax"], errors
