"""Inside jit, relu6 at default settings compiles like jax.nn.relu6 (no timing)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrelu6
from _harness import compiled_stats
from compiled_cost import conv_net_loss


@pytest.fixture(scope="module")
def inputs():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w1": jax.random.normal(k1, (3, 3, 3, 8)), "w2": jax.random.normal(k2, (3, 3, 8, 8))}
    return params, jax.random.normal(k3, (4, 8, 8, 3))


@pytest.mark.parametrize("g0, g6", [(0.0, 0.0), (1.0, 0.5)])
def test_gradient_has_the_fusions_and_buffers_of_jax_nn(inputs, g0, g6):
    ours = lambda h: jrelu6.relu6(h, grad_at_zero=g0, grad_at_six=g6)  # noqa: E731
    mine = compiled_stats(jax.grad(conv_net_loss(ours)), *inputs)
    base = compiled_stats(jax.grad(conv_net_loss(jax.nn.relu6)), *inputs)
    # No more kernels than jax.nn's (equal on current jax; the XLA of jax 0.6.2, the oldest
    # supported, fuses jrelu6's backward into one kernel fewer: 6 against 7).
    assert mine["fusions"] <= base["fusions"]
    assert mine["entry_ops"] <= base["entry_ops"]
    assert mine["argument_bytes"] == base["argument_bytes"]
    assert mine["output_bytes"] == base["output_bytes"]


def test_no_host_callbacks_in_the_compiled_gradient(inputs):
    hlo = jax.jit(jax.grad(conv_net_loss(jrelu6.relu6))).lower(*inputs).compile().as_text()
    targets = re.findall(r'custom_call_target="([^"]*)"', hlo)
    assert not [t for t in targets if "callback" in t.lower()], targets


def test_forward_is_the_same_program_whatever_the_boundary_values():
    x = jnp.linspace(-2, 8, 64)
    texts = {
        g: jax.jit(lambda x, g=g: jrelu6.relu6(x, grad_at_zero=g, grad_at_six=g)).lower(x)
        .compile().as_text().count("fusion(")
        for g in (0.0, 1.0)
    }
    assert texts[0.0] == texts[1.0]


@pytest.mark.parametrize("kinks", ["default", "traced"])
def test_six_conv_bn_layers_compile_like_jax_nn(kinks):
    # The independent check of the issue: the jitted gradient of 6 conv-BN-relu6 layers.
    # At the default kink slopes relu6 takes its short rule; with traced slopes, the
    # general one. Either way XLA makes the same kernels and buffers as for jax.nn.
    from relu6_in_jit import conv_bn_loss, inputs

    if kinks == "default":
        ours = jrelu6.relu6
    else:
        ours = lambda h: jrelu6.relu6(h, grad_at_zero=jnp.float32(0),  # noqa: E731
                                      grad_at_six=jnp.float32(0))
    params, x = inputs(batch=4, size=8, channels=8)
    mine = compiled_stats(jax.grad(conv_bn_loss(ours)), params, x)
    base = compiled_stats(jax.grad(conv_bn_loss(jax.nn.relu6)), params, x)
    assert mine == base


@pytest.mark.parametrize("x, want", [(-1.0, 0.0), (0.0, 0.0), (3.0, 1.0), (6.0, 0.0), (7.0, 0.0),
                                     (np.inf, 0.0), (-np.inf, 0.0), (np.nan, np.nan)])
def test_short_rule_keeps_the_guarantees(x, want):
    # The default kinks' rule: jax.nn's slopes, NaN at NaN, 0 (not NaN) for an infinite
    # cotangent where the slope is 0, through grad and jvp under jit.
    x = jnp.float32(x)
    np.testing.assert_array_equal(jax.jit(jax.grad(jrelu6.relu6))(x), want)
    np.testing.assert_array_equal(jax.jvp(jax.jit(jrelu6.relu6), (x,), (jnp.float32(1),))[1],
                                  want)
    _, vjp = jax.vjp(jrelu6.relu6, x)
    (g,) = vjp(jnp.float32(np.inf))
    np.testing.assert_array_equal(g, np.inf if want == 1 else want)
