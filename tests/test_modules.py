"""The Flax modules: linen and nnx wrappers of the same functions."""

from __future__ import annotations

import dataclasses
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jrelu6
import jrelu6.linen
import jrelu6.nnx
from jrelu6 import _modules


def _fake_quant(x, init_min=-6.0, init_max=6.0, **settings):
    """fake_quant with a FakeQuant module's settings (its range at the initial values)."""
    return jrelu6.fake_quant(x, min=init_min, max=init_max, **settings)


_QUANT = {"num_bits": 4, "scheme": "fixed_point", "grad_at_zero": 1.0, "grad_at_six": 0.5}

# name -> (function, settings that differ from the defaults)
CASES = {
    "ReLU6": (jrelu6.relu6, {"grad_at_zero": 1.0, "grad_at_six": 0.5}),
    "CappedReLU": (jrelu6.capped_relu, {"cap": 3.0, "grad_at_zero": 1.0, "grad_at_cap": 0.5}),
    "HardSigmoid": (jrelu6.hard_sigmoid, {"grad_at_zero": 1.0, "grad_at_six": 0.5}),
    "HardSwish": (jrelu6.hard_swish, {"grad_at_zero": 1.0, "grad_at_six": 0.5}),
    "QuantizedReLU6": (jrelu6.quantized_relu6, _QUANT),
    "QuantizedHardSigmoid": (jrelu6.quantized_hard_sigmoid, _QUANT),
    "QuantizedHardSwish": (
        jrelu6.quantized_hard_swish, {"num_bits": 3, "narrow_range": True, "grad_at_six": 1.0}
    ),
    "FakeQuant": (
        _fake_quant, {"init_min": -2.0, "init_max": 5.0, "num_bits": 3, "narrow_range": True}
    ),
}
PARAMETER_FREE = [name for name in CASES if name != "FakeQuant"]
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


@pytest.mark.parametrize("framework", [jrelu6.linen, jrelu6.nnx])
def test_every_table_entry_is_a_module_that_carries_it(framework):
    assert set(framework.__all__) == set(_modules.TABLE)
    for name, activation in _modules.TABLE.items():
        assert getattr(framework, name).activation is activation
        assert getattr(framework, name).__name__ == name


def _linen_fields(cls):
    """A linen class's own fields: (name, default, annotation), flax's parent and name aside."""
    return [(f.name, f.default, f.type) for f in dataclasses.fields(cls)
            if f.name not in ("parent", "name")]


def _nnx_keywords(cls):
    """An nnx class's ``__init__`` keywords: (name, default, annotation)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    return [(p.name, p.default, p.annotation) for p in parameters]


@pytest.mark.parametrize("name", sorted(_modules.TABLE))
def test_each_class_declares_exactly_its_table_settings(name):
    # The classes are written out for type checkers; the table keeps them from drifting.
    settings = [(s.name, s.default, s.type.__name__) for s in _modules.TABLE[name].settings]
    assert _linen_fields(getattr(jrelu6.linen, name)) == settings
    assert _nnx_keywords(getattr(jrelu6.nnx, name)) == settings


def _documented(doc, section):
    """The names listed under ``section:`` in a Google-style docstring."""
    body = inspect.cleandoc(doc).split(f"\n{section}:\n", 1)[1].split("\n\n")[0]
    return [line.split(":")[0].strip() for line in body.splitlines() if line[2] != " "]


@pytest.mark.parametrize("name", sorted(_modules.TABLE))
def test_each_class_documents_its_settings_the_same_in_linen_and_nnx(name):
    linen_doc, nnx_doc = getattr(jrelu6.linen, name).__doc__, getattr(jrelu6.nnx, name).__doc__
    names = [s.name for s in _modules.TABLE[name].settings]
    assert _documented(linen_doc, "Attributes") == names
    assert _documented(nnx_doc, "Args") == names
    assert linen_doc.replace("Attributes:", "Args:") == nnx_doc


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("configured", [False, True])
def test_linen_module_equals_function(name, configured):
    fn, settings = CASES[name]
    settings = settings if configured else ({"cap": 6.0} if name == "CappedReLU" else {})
    module = _linen(name, **settings)
    variables = module.init(jax.random.key(0), X)
    np.testing.assert_array_equal(
        np.asarray(module.apply(variables, X)), np.asarray(fn(X, **settings))
    )
    np.testing.assert_array_equal(
        np.asarray(_derivative(lambda x: module.apply(variables, x))),
        np.asarray(_derivative(lambda x: fn(x, **settings))),
    )


@pytest.mark.parametrize("name", CASES)
def test_linen_and_nnx_give_identical_values_and_derivatives(name):
    _, settings = CASES[name]
    linen_module, nnx_module = _linen(name, **settings), _nnx(name, **settings)
    variables = linen_module.init(jax.random.key(0), X)
    np.testing.assert_array_equal(
        np.asarray(linen_module.apply(variables, X)), np.asarray(nnx_module(X))
    )
    np.testing.assert_array_equal(
        np.asarray(_derivative(lambda x: linen_module.apply(variables, x))),
        np.asarray(_derivative(nnx_module)),
    )


@pytest.mark.parametrize("name", PARAMETER_FREE)
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
        dx = jax.grad(lambda x, g0=g0: model(g0).apply(params, x).sum())(jnp.zeros((1, 1)))
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


def test_module_settings_are_keyword_only_in_linen():
    # Positionally, flax's own first fields (parent, name) take the value and refuse it.
    with pytest.raises(ValueError, match="parent"):
        jrelu6.linen.ReLU6(1.0)  # type: ignore[arg-type]
    assert all(f.kw_only for f in dataclasses.fields(jrelu6.linen.QuantizedReLU6)
               if f.name not in ("parent", "name"))


def test_module_passes_bad_settings_to_a_clear_error():
    with pytest.raises(ValueError, match=r"^relu6: grad_at_zero"):
        jrelu6.linen.ReLU6(grad_at_zero=float("nan")).apply({}, X)
    with pytest.raises(ValueError, match=r"^capped_relu: cap"):
        jrelu6.nnx.CappedReLU(cap=-1.0)(X)


@pytest.mark.parametrize("framework", [jrelu6.linen, jrelu6.nnx])
def test_a_subclass_keeps_its_parents_function(framework):
    class MyReLU6(framework.ReLU6):
        pass

    module = MyReLU6(grad_at_zero=1.0)
    call = (lambda x: module.apply({}, x)) if framework is jrelu6.linen else module
    np.testing.assert_array_equal(np.asarray(call(X)), np.asarray(jrelu6.relu6(X)))


@pytest.mark.parametrize("name", CASES)
def test_unbound_linen_module_applies_its_function(name):  # FakeQuant: at its initial range
    fn, settings = CASES[name]
    np.testing.assert_array_equal(
        np.asarray(_linen(name, **settings)(X)), np.asarray(fn(X, **settings))
    )


def test_unbound_linen_module_under_jit_and_grad():
    module = jrelu6.linen.ReLU6(grad_at_zero=1.0)
    assert jax.jit(jax.grad(lambda x: module(x)))(0.0) == 1.0


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_nnx_and_linen_refuse_unknown_settings(framework):
    make = _linen if framework == "linen" else _nnx
    with pytest.raises(TypeError, match="unexpected"):
        make("ReLU6", grad_at_seven=1.0)


def test_nnx_signature_is_keyword_only_with_defaults():
    params = inspect.signature(jrelu6.nnx.QuantizedReLU6).parameters
    assert list(params) == ["num_bits", "narrow_range", "scheme", "grad_at_zero", "grad_at_six"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert params["num_bits"].default == 8


def test_fake_quant_module_parameters_start_at_the_given_range():
    linen_module = jrelu6.linen.FakeQuant(init_min=-1.0, init_max=3.0)
    params = linen_module.init(jax.random.key(0), X)["params"]
    assert set(params) == {"min", "max"}
    assert params["min"] == -1.0 and params["max"] == 3.0
    assert params["max"].dtype == jnp.float32
    nnx_module = jrelu6.nnx.FakeQuant(init_min=-1.0, init_max=3.0)
    state = nnx.state(nnx_module, nnx.Param)
    assert float(state["min"][...]) == -1.0 and float(state["max"][...]) == 3.0


def _range_grads(lo, hi, x):
    return jax.grad(lambda r: jrelu6.fake_quant(x, min=r[0], max=r[1]).sum())(jnp.array([lo, hi]))


def test_fake_quant_module_range_gradients_equal_the_functions():
    x = jnp.array([-3.0, -2.5, 0.3, 1.0, 4.0, 9.0])
    expected = _range_grads(-2.0, 3.0, x)
    module = jrelu6.linen.FakeQuant(init_min=-2.0, init_max=3.0)
    params = module.init(jax.random.key(0), x)
    grads = jax.grad(lambda p: module.apply(p, x).sum())(params)["params"]
    np.testing.assert_array_equal([grads["min"], grads["max"]], np.asarray(expected))
    model = jrelu6.nnx.FakeQuant(init_min=-2.0, init_max=3.0)
    grads = nnx.grad(lambda m: m(x).sum())(model)
    np.testing.assert_array_equal(
        [grads["min"][...], grads["max"][...]], np.asarray(expected)
    )
    np.testing.assert_array_equal(np.asarray(expected), [2.0, 2.0])  # two below, two above


def test_fake_quant_module_range_learns_to_cover_the_data():
    # Data in [0, 4]; the range starts at [0, 1]: a squared error pulls max up.
    x = jnp.linspace(0.0, 4.0, 64)
    model = jrelu6.nnx.FakeQuant(init_min=0.0, init_max=1.0, num_bits=8)

    @nnx.jit
    def step(model):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - x) ** 2))(model)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 0.5 * g, params, grads))
        return loss

    first = step(model)
    for _ in range(50):
        last = step(model)
    assert float(last) < 0.01 * float(first)
    assert 3.5 < float(model.max[...]) < 4.1


def test_quantized_and_fake_quant_modules_record_only_relu6_kinks():
    x = jnp.array([[0.0, 6.0, 3.0]])
    model = nn.Sequential([jrelu6.linen.QuantizedReLU6(), jrelu6.linen.FakeQuant()])
    variables = model.init(jax.random.key(0), x)
    _, hits = model.apply(variables, x, mutable=["boundary_hits"])
    rows = jrelu6.summarize_boundary_hits(hits)
    assert [(r.layer, r.at_zero, r.at_cap) for r in rows] == [("layers_0", 1, 1)]
    net = nnx.Sequential(jrelu6.nnx.QuantizedHardSwish(), jrelu6.nnx.FakeQuant())
    net.set_attributes(record_boundary_hits=True)
    net(x - 3.0)
    rows = jrelu6.summarize_boundary_hits(nnx.pop(net, nnx.Intermediate))
    assert [(r.layer, r.at_zero, r.at_cap) for r in rows] == [("layers/0", 1, 1)]
