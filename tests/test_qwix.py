"""qwix's ODML QAT and jrelu6's relu6 (qwix is optional: skipped without it).

qwix's ``OdmlQatProvider`` recognises ``jax.nn.relu`` and ``jax.nn.relu6`` by
identity (``odml_ops.CustomJvpCall``) and fake-quantizes their output, fused
with the op before them. jrelu6's relu6 is another ``custom_jvp``, so qwix
passes it through: in the middle of a model the next op quantizes its input
anyway (nothing changes), but at a model's output the result is left
unquantized, silently. Registering ``jrelu6.relu6`` as an output-quantized op,
the way qwix's ``odml_ops.get_all_ops`` says to register other functions, makes
it behave exactly as ``jax.nn.relu6``. docs/modules.md says all this.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

import jrelu6
import jrelu6.linen
import jrelu6.nnx

qwix = pytest.importorskip("qwix", reason="qwix is not installed (pip install qwix)")

# qwix 0.1.8 calls flax APIs that flax 0.12 deprecates; not this project's warnings.
pytestmark = [
    pytest.mark.filterwarnings("ignore:'VariableState' was removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'm.iter_modules\\(\\)' method is deprecated"),
    pytest.mark.filterwarnings("ignore:'.value' (access|setter) is now deprecated"),
]


@pytest.fixture(autouse=True)
def _standard_dtype_promotion():
    """qwix mixes int32 counts with float32 statistics: not under strict promotion."""
    with jax.numpy_dtype_promotion("standard"):
        yield

X = jax.random.normal(jax.random.key(1), (128, 8)) * 4.0


def register_jrelu6(provider):
    """Has ``provider`` fake-quantize the output of jrelu6's relu6 and capped ReLU."""
    for name in ("jrelu6.relu6", "jrelu6.capped_relu"):
        provider._ops[name] = provider._ops["jax.numpy.clip"]  # Output-only, as relu6.
    return provider


def _linen_run(act, *, hidden=False, register=False):
    """(output, quant_stats names) of Dense[-act-Dense]-act under qwix's ODML QAT."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(16)(x)
            if hidden:
                x = nn.Dense(8)(act()(x))
                return jax.nn.relu6(x)
            return act()(x)

    rule = qwix.QuantizationRule(module_path=".*", weight_qtype="int8", act_qtype="int8")
    provider = qwix.OdmlQatProvider([rule])
    model = qwix.quantize_model(Model(), register_jrelu6(provider) if register else provider)
    variables = model.init(jax.random.key(0), X)
    y, _ = model.apply(variables, X, mutable=True)
    return np.asarray(y), sorted(variables["quant_stats"])


def _function(fn, **kw):
    return lambda: (lambda x: fn(x, **kw))


JAX_RELU6 = _function(jax.nn.relu6)
OURS = {
    "relu6": _function(jrelu6.relu6),
    "relu6(grad_at_zero=1)": _function(jrelu6.relu6, grad_at_zero=1.0),
    "capped_relu(cap=6)": _function(jrelu6.capped_relu, cap=6.0),
    "linen.ReLU6": jrelu6.linen.ReLU6,
}


@pytest.mark.parametrize("name", OURS)
def test_unregistered_jrelu6_relu6_at_the_output_is_left_unquantized(name):
    ref, ref_stats = _linen_run(JAX_RELU6)
    y, stats = _linen_run(OURS[name])
    assert "final_output0" in ref_stats and "final_output0" not in stats
    assert np.unique(ref).size <= 256 < np.unique(y).size  # int8: at most 256 levels.


@pytest.mark.parametrize("name", OURS)
def test_registered_jrelu6_relu6_is_quantized_exactly_as_jax_nn_relu6(name):
    ref, ref_stats = _linen_run(JAX_RELU6)
    y, stats = _linen_run(OURS[name], register=True)
    assert stats == ref_stats
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("name", OURS)
def test_jrelu6_relu6_inside_a_model_is_quantized_as_jax_nn_relu6_without_registering(name):
    ref, ref_stats = _linen_run(JAX_RELU6, hidden=True)
    y, stats = _linen_run(OURS[name], hidden=True)
    assert stats == ref_stats
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("ours, theirs", [
    (jrelu6.hard_swish, jax.nn.hard_swish), (jrelu6.hard_sigmoid, jax.nn.hard_sigmoid),
])
def test_hard_swish_and_hard_sigmoid_at_the_output_are_quantized_as_jax_nns(ours, theirs):
    ref, ref_stats = _linen_run(_function(theirs))
    y, stats = _linen_run(_function(ours))
    assert stats == ref_stats and "final_output0" in stats
    np.testing.assert_array_equal(y, ref)


def test_registered_nnx_relu6_module_is_quantized_as_jax_nn_relu6():
    class Model(nnx.Module):
        def __init__(self, act):
            self.linear = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
            self.act = act

        def __call__(self, x):
            return self.act(self.linear(x))

    def run(act, register):
        rule = qwix.QuantizationRule(module_path=".*", weight_qtype="int8", act_qtype="int8")
        provider = qwix.OdmlQatProvider([rule])
        model = qwix.quantize_model(
            Model(act), register_jrelu6(provider) if register else provider, X
        )
        return np.asarray(model(X))

    ref = run(jax.nn.relu6, register=False)
    assert np.unique(ref).size <= 256
    assert np.unique(run(jrelu6.nnx.ReLU6(), register=False)).size > 256
    np.testing.assert_array_equal(run(jrelu6.nnx.ReLU6(), register=True), ref)
