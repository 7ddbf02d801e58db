"""The native depthwise kernels under data parallelism: each device computes its own shard.

conftest.py gives eight host devices. Without a partitioning rule XLA would gather
the whole batch onto every device around each native custom call (and run it on
the whole batch, eight times over); with it, each call sees its device's images and
the kernel gradient is one all-reduce of the per-device partial sums.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from mobilenet import depthwise, native, sharding, train_state
from mobilenet.configs import get_config
from mobilenet.depthwise import depthwise_conv
from mobilenet.infra import distributed

IMAGE = (16, 16, 3)
CUSTOM_CALL = re.compile(r'= ((?:f32|bf16)\[[\d,]*\])\S* custom-call\(([^)]*)\), '
                         r'custom_call_target="(jrelu6_depthwise_\w+)"')


@pytest.fixture(scope="module", autouse=True)
def _needs_native_and_devices():
    if jax.default_backend() != "cpu":
        pytest.skip("the native kernels are CPU kernels")
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
    if jax.device_count() < 2:
        pytest.skip("needs several devices (conftest.py forces 8 host devices)")


def _native_calls(hlo: str) -> list[tuple[str, str]]:
    """(target, result shape) of every native custom call in compiled HLO text."""
    return [(target, shape) for shape, _, target in CUSTOM_CALL.findall(hlo)]


def _sharded(mesh, x, spec):
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _loss(x, kernel):
    return jnp.sum(jnp.sin(depthwise_conv(x, kernel, strides=2, impl="native")))


def test_each_device_runs_the_kernels_on_its_own_images():
    mesh = sharding.create_mesh()
    batch = 2 * mesh.size
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 9, 9, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32)
    grad = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1)))
    args = _sharded(mesh, x, ("data",)), _sharded(mesh, kernel, ())
    hlo = grad.lower(*args).compile().as_text()
    assert "all-gather" not in hlo
    calls = dict(_native_calls(hlo))
    assert calls == {"jrelu6_depthwise_forward": "f32[2,5,5,8]",
                     "jrelu6_depthwise_input_grad": "f32[2,9,9,8]",
                     "jrelu6_depthwise_kernel_grad": "f32[3,3,8]"}
    # The same numbers as on one device (the kernel gradient: up to summation order).
    one_device = [jax.device_put(a, jax.devices()[0]) for a in (x, kernel)]
    (value, grads), (want_value, want_grads) = grad(*args), grad(*one_device)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_kernel_gradient_adds_the_devices_partial_sums_in_float32():
    # Each device's partial kernel gradient is float32, added across the batch before
    # one rounding to bfloat16: as close as one device's sum (here: the same bits).
    mesh = sharding.create_mesh()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2 * mesh.size, 8, 8, 40)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 40)), jnp.bfloat16)
    grad = jax.jit(jax.grad(lambda x, k: _loss(x, k).astype(jnp.float32), argnums=(0, 1)))
    args = _sharded(mesh, x, ("data",)), _sharded(mesh, kernel, ())
    hlo = grad.lower(*args).compile().as_text()
    assert "all-gather" not in hlo and re.search(r"f32\[3,3,40\]\S* all-reduce", hlo)
    one_device = [jax.device_put(a, jax.devices()[0]) for a in (x, kernel)]
    for got, want in zip(grad(*args), grad(*one_device)):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(got.astype(jnp.float32), want.astype(jnp.float32))


def test_sharded_channels_split_the_work_too():
    mesh = sharding.create_mesh()
    x = jnp.ones((2, 6, 6, 2 * mesh.size))
    kernel = jnp.ones((3, 3, 1, 2 * mesh.size))
    channels = (None, None, None, "data")
    args = _sharded(mesh, x, channels), _sharded(mesh, kernel, channels)
    hlo = jax.jit(jax.grad(_loss, argnums=(0, 1))).lower(*args).compile().as_text()
    assert "all-gather" not in hlo
    assert {shape for _, shape in _native_calls(hlo)} == {"f32[2,3,3,2]", "f32[2,6,6,2]",
                                                          "f32[3,3,2]"}


def test_each_device_sums_its_own_rows_of_a_1x1_kernel_gradient():
    # mixed_matmul's kernel gradient x.T @ g (bfloat16, native on CPU): each device's
    # rows (its images' pixels), then one float32 all-reduce of the partial sums.
    if not native.has_pointwise_kernel_grad():
        pytest.skip("the 1x1 kernel gradient needs a CPU with AVX512-BF16")
    mesh = sharding.create_mesh()
    rows = 4 * mesh.size
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(rows, 24)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(24, 40)), jnp.float32)

    def loss(x, kernel):
        return jnp.sum(jnp.sin(depthwise.mixed_matmul(x, kernel, jnp.float32)))

    grad = jax.jit(jax.grad(loss, argnums=1))
    args = _sharded(mesh, x, ("data",)), _sharded(mesh, kernel, ())
    hlo = grad.lower(*args).compile().as_text()
    assert "all-gather" not in hlo and re.search(r"f32\[24,40\]\S* all-reduce", hlo)
    (call,) = [line for line in hlo.splitlines()
               if 'custom_call_target="jrelu6_pointwise_kernel_grad"' in line]
    assert re.search(r"= f32\[24,40\]", call)
    assert "operand_layout_constraints={bf16[4,24]{1,0}, bf16[4,40]{1,0}}" in call
    one_device = [jax.device_put(a, jax.devices()[0]) for a in (x, kernel)]
    np.testing.assert_allclose(grad(*args), grad(*one_device), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_compiled_training_step_gathers_no_batch(dtype):
    # bfloat16 too: its 1x1 products have a backward pass of their own (mixed_matmul).
    mesh = sharding.create_mesh()
    config = get_config(model="tiny", data="synthetic", image_size=IMAGE[0], batch_size=16,
                        steps=2, progress=False, plot=False, dtype=dtype)
    model = train_state.create_model(config, num_classes=10)
    state = train_state.create_train_state(config, model, image_shape=IMAGE, mesh=mesh,
                                           total_steps=config.steps)
    step = train_state.make_train_step(mesh=mesh, num_classes=10, mean=(0.5,) * 3,
                                       std=(0.25,) * 3)
    batch = distributed.place(
        {"image": np.zeros((16, *IMAGE), np.uint8), "label": np.zeros(16, np.int32)},
        sharding.batch_sharding(mesh))
    hlo = step.lower(state, batch).compile().as_text()
    calls = _native_calls(hlo)
    assert calls, "the tiny model's depthwise convolutions should use the native kernels"
    assert any(shape.startswith("bf16[") for _, shape in calls) == (dtype == "bfloat16")
    assert "all-gather" not in hlo
    per_device = 16 // mesh.size
    for target, shape in calls:
        if target != "jrelu6_depthwise_kernel_grad":
            assert re.match(rf"(f32|bf16)\[{per_device},", shape), (target, shape)
