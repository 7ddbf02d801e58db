"""Inside jit, relu6 at default settings compiles like jax.nn.relu6 (no timing)."""

import re

import jax
import jax.numpy as jnp
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
