"""The Flax modules: linen and nnx wrappers of the same functions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jrelu6
import jrelu6.linen
import jrelu6.nnx

# name -> (function, settings that differ from the defaults)
CASES = {
    "ReLU6": (jrelu6.relu6, dict(grad_at_zero=1.0, grad_at_six=0.5)),
    "CappedReLU": (jrelu6.capped_relu, dict(cap=3.0, grad_at_zero=1.0, grad_at_cap=0.5)),
    "HardSigmoid": (jrelu6.hard_sigmoid, dict(grad_at_zero=1.0, grad_at_six=0.5)),
    "HardSwish": (jrelu6.hard_swish, dict(grad_at_zero=1.0, grad_at_six=0.5)),
}
X = jnp.array([-4.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0, 7.0])


def _linen(name, **settings):
    return getattr(jrelu6.linen, name)(**settings)


def _nnx(name, **settings):
    return getattr(jrelu6.nnx, name)(**settings)


def _derivative(fn):
    return jax.vmap(jax.grad(fn))(X)


def test_linen_and_nnx_export_the_same_names():
    assert jrelu6.linen.__all__ == jrelu6.nnx.__all__
    assert set(jrelu6.linen.__all__) == set(CASES)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("configured", [False, True])
def test_linen_module_equals_function(name, configured):
    fn, settings = CASES[name]
    settings = settings if configured else ({"cap": 6.0} if name == "CappedReLU" else {})
    module = _linen(name, **settings)
    np.testing.assert_array_equal(
        np.asarray(module.apply({}, X)), np.asarray(fn(X, **settings))
    )
    np.testing.assert_array_equal(
        np.asarray(_derivative(lambda x: module.apply({}, x))),
        np.asarray(_derivative(lambda x: fn(x, **settings))),
    )


@pytest.mark.parametrize("name", CASES)
def test_linen_and_nnx_give_identical_values_and_derivatives(name):
    _, settings = CASES[name]
    linen_module, nnx_module = _linen(name, **settings), _nnx(name, **settings)
    np.testing.assert_array_equal(
        np.asarray(linen_module.apply({}, X)), np.asarray(nnx_module(X))
    )
    np.testing.assert_array_equal(
        np.asarray(_derivative(lambda x: linen_module.apply({}, x))),
        np.asarray(_derivative(nnx_module)),
    )


@pytest.mark.parametrize("name", CASES)
def test_modules_have_no_parameters(name):
    assert _linen(name).init(jax.random.key(0), X) == {}
    assert nnx.state(_nnx(name), nnx.Param) == nnx.State({})


def test_defaults_match_jax_nn():
    np.testing.assert_array_equal(
        np.asarray(_derivative(lambda x: jrelu6.linen.ReLU6().apply({}, x))),
        np.asarray(_derivative(jax.nn.relu6)),
    )
    np.testing.assert_array_equal(
        np.asarray(_derivative(jrelu6.nnx.ReLU6())), np.asarray(_derivative(jax.nn.relu6))
    )


def test_linen_sequential_under_jit_and_grad():
    model = nn.Sequential([nn.Dense(4), jrelu6.linen.ReLU6(grad_at_zero=1.0), nn.Dense(1)])
    x = jnp.ones((2, 3))
    params = model.init(jax.random.key(0), x)

    @jax.jit
    def loss(params, x):
        return model.apply(params, x).sum()

    grads = jax.grad(loss)(params, x)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert np.isfinite(loss(params, x))


def test_nnx_sequential_under_nnx_jit_and_grad():
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        jrelu6.nnx.HardSwish(grad_at_six=1.0),
        nnx.Linear(4, 1, rngs=nnx.Rngs(1)),
    )
    x = jnp.ones((2, 3))

    @nnx.jit
    def loss(model, x):
        return model(x).sum()

    grads = nnx.grad(loss)(model, x)
    assert set(jax.tree.leaves(jax.tree.map(jnp.shape, grads)))
    assert np.isfinite(loss(model, x))


def test_a_kink_inside_a_model_gets_the_chosen_derivative():
    # Dense(1) with weight 1, bias 0: the activation sees x itself.
    def model(g0):
        return nn.Sequential([nn.Dense(1), jrelu6.linen.ReLU6(grad_at_zero=g0)])

    params = {"params": {"layers_0": {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros(1)}}}
    for g0 in (0.0, 1.0):
        dx = jax.grad(lambda x: model(g0).apply(params, x).sum())(jnp.zeros((1, 1)))
        assert dx[0, 0] == g0


def test_linen_repr_and_tabulate_name_the_module_and_settings():
    module = jrelu6.linen.ReLU6(grad_at_zero=1.0)
    assert "ReLU6" in repr(module) and "grad_at_zero" in repr(module)
    table = nn.tabulate(nn.Sequential([nn.Dense(2), module]), jax.random.key(0))(jnp.ones((1, 2)))
    assert "ReLU6" in table


def test_nnx_repr_and_tabulate_name_the_module_and_settings():
    module = jrelu6.nnx.ReLU6(grad_at_six=0.5)
    assert "ReLU6" in repr(module) and "grad_at_six=0.5" in repr(module).replace(" ", "")
    if not hasattr(nnx, "tabulate"):
        pytest.skip("this flax has no nnx.tabulate")
    model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), module)
    assert "ReLU6" in nnx.tabulate(model, jnp.ones((1, 2)))


def test_module_settings_are_keyword_only_in_nnx():
    with pytest.raises(TypeError):
        jrelu6.nnx.ReLU6(1.0)  # type: ignore[misc]


def test_module_passes_bad_settings_to_a_clear_error():
    with pytest.raises(ValueError, match="^relu6: grad_at_zero"):
        jrelu6.linen.ReLU6(grad_at_zero=float("nan")).apply({}, X)
    with pytest.raises(ValueError, match="^capped_relu: cap"):
        jrelu6.nnx.CappedReLU(cap=-1.0)(X)


@pytest.mark.parametrize("framework", [jrelu6.linen, jrelu6.nnx])
def test_a_subclass_keeps_its_parents_function(framework):
    class MyReLU6(framework.ReLU6):
        pass

    module = MyReLU6(grad_at_zero=1.0)
    call = (lambda x: module.apply({}, x)) if framework is jrelu6.linen else module
    np.testing.assert_array_equal(np.asarray(call(X)), np.asarray(jrelu6.relu6(X)))


@pytest.mark.parametrize("name", CASES)
def test_unbound_linen_module_applies_its_function(name):
    fn, settings = CASES[name]
    np.testing.assert_array_equal(
        np.asarray(_linen(name, **settings)(X)), np.asarray(fn(X, **settings))
    )


def test_unbound_linen_module_under_jit_and_grad():
    module = jrelu6.linen.ReLU6(grad_at_zero=1.0)
    assert jax.jit(jax.grad(lambda x: module(x)))(0.0) == 1.0
