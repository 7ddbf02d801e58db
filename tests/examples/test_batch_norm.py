"""The two-pass batch norm equals flax's nn.BatchNorm: outputs, gradients, statistics."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet import models
from mobilenet.batch_norm import BatchNorm, batch_norm

SHAPES = [(4, 6, 6, 8), (8, 2, 2, 16), (3, 1, 1, 5), (2, 7, 5, 3)]


def _data(shape, shift=0.0, seed=0):
    keys = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(keys[0], shape) * 2.0 + shift
    w = jax.random.normal(keys[1], shape)
    features = shape[-1]
    params = {"scale": jnp.linspace(0.5, 2.0, features), "bias": jnp.linspace(-1.0, 1.0, features)}
    stats = {"mean": jnp.linspace(-0.2, 0.2, features), "var": jnp.linspace(0.5, 1.5, features)}
    return x, w, params, stats


def _loss_and_stats(module, params, stats, x, w):
    y, updates = module.apply({"params": params, "batch_stats": stats}, x,
                              mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y) * w), (y, updates["batch_stats"])


def _both(shape, shift=0.0, momentum=0.9, epsilon=1e-5):
    x, w, params, stats = _data(shape, shift)
    out = []
    for module in (nn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=epsilon),
                   BatchNorm(momentum=momentum, epsilon=epsilon)):
        grad = jax.jit(jax.value_and_grad(
            lambda p, x, module=module: _loss_and_stats(module, p, stats, x, w),
            argnums=(0, 1), has_aux=True))
        out.append(grad(params, x))
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_training_output_equals_flax(shape):
    (_, (ours_y, _)), _ = _both(shape)[1]
    (_, (ref_y, _)), _ = _both(shape)[0]
    np.testing.assert_allclose(ours_y, ref_y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_gradients_equal_flax(shape, shift):
    (ref, ours) = _both(shape, shift)
    for r, o in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(ours[1])):
        np.testing.assert_allclose(o, r, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize("shape", SHAPES)
def test_running_statistics_equal_flax(shape):
    (ref, ours) = _both(shape, momentum=0.8)
    for key in ("mean", "var"):
        np.testing.assert_allclose(ours[0][1][1][key], ref[0][1][1][key], rtol=1e-5, atol=1e-6)


def test_evaluation_equals_flax():
    x, _, params, stats = _data((4, 3, 3, 8))
    variables = {"params": params, "batch_stats": stats}
    ref = nn.BatchNorm(use_running_average=True, epsilon=1e-3).apply(variables, x)
    ours = BatchNorm(use_running_average=True, epsilon=1e-3).apply(variables, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_variables_have_flax_names_shapes_and_values():
    x = jnp.ones((2, 3, 3, 5))
    ref = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    ours = BatchNorm().init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_keeps_the_dtype_and_float32_statistics(dtype):
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 8)).astype(dtype)
    y, mean, var = batch_norm(x, jnp.ones(8), jnp.zeros(8), epsilon=1e-5)
    assert y.dtype == dtype and mean.dtype == jnp.float32 and var.dtype == jnp.float32


def test_rejects_other_ranks():
    with pytest.raises(ValueError, match="batch_norm: x must be"):
        batch_norm(jnp.ones((4, 8)), jnp.ones(8), jnp.zeros(8), epsilon=1e-5)


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2"])
def test_model_training_step_equals_flax_norm(name):
    """The whole model: logits, batch statistics and gradients with either norm."""
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    kwargs = {"num_classes": 10, "small_input": True, "dropout_rate": 0.0,
              "width_multiplier": 0.35}
    flax_model = models.create_model(name, norm="flax", **kwargs)
    fused_model = models.create_model(name, norm="fused", **kwargs)
    variables = flax_model.init(jax.random.key(1), x, train=False)

    def run(model):
        def loss(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"])
            return jnp.sum(logits * jnp.arange(10.0)), (logits, updates["batch_stats"])
        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    (ref_grads, (ref_logits, ref_stats)), (grads, (logits, stats)) = run(flax_model), run(
        fused_model)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Relative to the largest gradient: some (a batch-normed layer's bias before another
    # batch norm) are exactly zero in exact arithmetic, float32 rounding noise here.
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(ref_grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)


def test_model_rejects_an_unknown_norm():
    with pytest.raises(ValueError, match="norm must be one of"):
        models.create_model("tiny", norm="layer").init(
            jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)
