"""The native kernel gradient of bfloat16 1x1 convolutions (``native/pointwise.cc``).

``mixed_matmul``'s kernel gradient ``x.T @ g`` (bfloat16 operands, float32 sums) runs
on CPU in a native kernel that reads the bfloat16 arrays as they are; XLA's dot stays
the reference (float32 copies of both operands) and the form used elsewhere.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import thread_counts  # tests/examples/thread_counts.py (shared with test_depthwise.py)

from mobilenet import depthwise, native

TARGET = "jrelu6_pointwise_kernel_grad"

# (K, M, N): rows summed, kernel rows, kernel columns. Odd row counts (a row without a
# pair), several row pieces (K >= 4096) and blocks of 256, M not a multiple of the 8-row
# tile, N not a multiple of 16 or past one tile of 48, more column tiles than row tiles.
SHAPES = [(1, 1, 1), (7, 3, 5), (37, 11, 5), (513, 24, 40), (4099, 9, 100),
          (2048, 144, 24), (300, 8, 200), (64, 130, 17)]


@pytest.fixture(autouse=True)
def _needs_native():
    if jax.default_backend() != "cpu":
        pytest.skip("the native kernels are CPU kernels")
    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
    if not native.has_pointwise_kernel_grad():
        pytest.skip("the kernel needs a CPU with AVX512-BF16 (XLA's dot is used elsewhere)")


def _operands(k, m, n, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(k, m)), jnp.bfloat16),
            jnp.asarray(rng.normal(size=(k, n)), jnp.bfloat16))


def _wide(a):
    return np.asarray(a.astype(jnp.float32), np.float64)


def _native(x, g):
    return jax.jit(depthwise._rows_product_op())(x, g)


def _xla(x, g):
    return jax.jit(lambda x, g: depthwise._contract(x, g, (0, 0), jnp.float32))(x, g)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_float64_product_of_the_bfloat16_values(shape):
    x, g = _operands(*shape)
    got = _native(x, g)
    assert got.dtype == jnp.float32 and got.shape == shape[1:]
    # Exact products, float32 sums: within float32 rounding of the sum of |products|.
    bound = 2**-20 * (np.abs(_wide(x)).T @ np.abs(_wide(g))) + 1e-30
    np.testing.assert_array_less(np.abs(_wide(got) - _wide(x).T @ _wide(g)), bound)


def test_no_rows_give_zeros():
    x, g = _operands(0, 3, 5)
    np.testing.assert_array_equal(_native(x, g), np.zeros((3, 5), np.float32))


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["x", "g"])
def test_non_finite_values_spread_as_in_xla(value, where):
    # A non-finite value meets a row of finite values (inf) and a row of zeros (NaN);
    # the tiles' zero padding (M = 11 of 16 rows, N = 21 of 32 columns) must not leak
    # into the result.
    x, g = _operands(37, 11, 21)
    x, g = x.at[3].set(0), g.at[5].set(0)
    if where == "x":
        x = x.at[6, 2].set(value).at[5, 7].set(value)
    else:
        g = g.at[4, 18].set(value).at[3, 19].set(value)
    got, want = _native(x, g), _xla(x, g)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    assert not np.isfinite(got).all()


@pytest.mark.parametrize("x_dtype,g_dtype", [(jnp.float32, jnp.float32),
                                             (jnp.bfloat16, jnp.float32)])
def test_the_kernel_refuses_other_dtypes(x_dtype, g_dtype):
    # _rows_product never asks for these (XLA's dot takes them); a direct call gets the
    # kernel's own error, not a misread buffer.
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((3, 4), jnp.float32))
    with pytest.raises(jax.errors.JaxRuntimeError, match="bfloat16 x and g"):
        jax.block_until_ready(call(jnp.ones((5, 3), x_dtype), jnp.ones((5, 4), g_dtype)))


def test_the_kernel_refuses_mismatched_shapes():
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((3, 4), jnp.float32))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"need x \(K, M\), g \(K, N\)"):
        jax.block_until_ready(call(jnp.ones((5, 3), jnp.bfloat16), jnp.ones((6, 4), jnp.bfloat16)))


def _native_call_types(hlo):
    """[(dtype, shape)] of the native call's result and operands in compiled HLO text."""
    (line,) = [line for line in hlo.splitlines() if f'custom_call_target="{TARGET}"' in line]
    result = re.search(r"= (\w+)\[([\d,]*)\]", line)
    constraints = line.split("operand_layout_constraints=")[1]
    return [result.groups(), *re.findall(r"(\w+)\[([\d,]*)\]", constraints)[:2]]


def _mixed_kernel_grad_hlo(x, kernel):
    def loss(kernel):
        return jnp.sum(jnp.sin(depthwise.mixed_matmul(x, kernel, jnp.float32)))

    return jax.jit(jax.grad(loss)).lower(kernel).compile().as_text()


def test_mixed_matmul_takes_the_native_kernel_on_bfloat16_as_it_is():
    x, _ = _operands(64, 8, 1)
    kernel = jnp.ones((8, 4), jnp.float32)
    hlo = _mixed_kernel_grad_hlo(x, kernel)
    assert _native_call_types(hlo) == [("f32", "8,4"), ("bf16", "64,8"), ("bf16", "64,4")]
    # No float32 copy of the activations for the kernel gradient.
    assert not re.search(r"f32\[64,8\]\S* (?:convert|fusion)", hlo)


def test_mixed_matmul_of_float32_keeps_xla_dot():
    x = jnp.ones((64, 8), jnp.float32)
    assert TARGET not in _mixed_kernel_grad_hlo(x, jnp.ones((8, 4), jnp.float32))


def test_mixed_matmul_kernel_gradient_under_vmap_matches_a_loop():
    xs = jnp.stack([_operands(40, 6, 1, seed)[0] for seed in range(3)])
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(6, 5)), jnp.float32)

    def grad(x):
        return jax.grad(lambda k: jnp.sum(jnp.sin(depthwise.mixed_matmul(x, k, jnp.float32))))(
            kernel)

    np.testing.assert_array_equal(jax.jit(jax.vmap(grad))(xs), jnp.stack([grad(x) for x in xs]))


# Prints the bits of the kernel's result (thread_counts binds the process's CPUs first).
_THREADS_PROBE = """
import hashlib
import jax, jax.numpy as jnp, numpy as np
from mobilenet import depthwise
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(20000, 40)), jnp.bfloat16)
g = jnp.asarray(rng.normal(size=(20000, 24)), jnp.bfloat16)
product = jax.jit(lambda x, g: depthwise._rows_product(x, g, jnp.float32))
assert "jrelu6_pointwise_kernel_grad" in product.lower(x, g).as_text()
print("bits", hashlib.sha256(np.asarray(product(x, g)).tobytes()).hexdigest())
"""


def test_bit_identical_with_one_and_two_threads():
    one, two = thread_counts.bits_with_one_and_two_threads(_THREADS_PROBE)
    assert one == two
