"""examples/mobilenet/depthwise.py: the fast forms compute flax's convolutions."""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.export
import jax.numpy as jnp
import numpy as np
import pytest
import thread_counts  # tests/examples/thread_counts.py (shared with the 1x1 kernel's tests)
from jax import lax

from mobilenet import depthwise, native
from mobilenet.depthwise import DepthwiseConv, PatchConv, PointwiseConv, depthwise_conv

# (input shape NHWC, kernel side, strides, padding): odd and even sizes, both strides.
CASES = [
    ((2, 7, 9, 5), 3, 1, "SAME"),
    ((2, 7, 9, 5), 3, 2, "SAME"),
    ((1, 8, 6, 3), 3, 2, "SAME"),
    ((2, 9, 7, 4), 5, 2, "SAME"),
    ((2, 9, 7, 4), 5, 1, "SAME"),
    ((2, 7, 9, 5), 3, 2, "VALID"),
    ((1, 6, 7, 3), 3, (2, 1), ((0, 1), (2, 1))),
    # 45 and 40 channels: the native kernels' blocks of 32 and of 8 channels, and the rest.
    ((2, 7, 9, 45), 3, 2, "SAME"),
    ((1, 6, 7, 40), 3, (2, 1), ((0, 1), (2, 1))),
]


def _inputs(shape, k, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), dtype)
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, shape[-1])), dtype)
    return x, kernel


def _value_and_grads(impl, x, kernel, strides, padding):
    def f(x, kernel):
        return depthwise_conv(x, kernel, strides=strides, padding=padding, impl=impl)

    def loss(x, kernel):  # A non-linear loss, so the output gradient is not uniform.
        return jnp.sum(jnp.sin(f(x, kernel)))

    return jax.jit(f)(x, kernel), *jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)


def _skip_without_native(impl):
    if impl == "native" and not native.available():
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")


@pytest.mark.parametrize("impl", ["shifted", "native", "auto"])
@pytest.mark.parametrize("shape,k,strides,padding", CASES)
def test_matches_grouped_forward_and_gradients(impl, shape, k, strides, padding):
    _skip_without_native(impl)
    x, kernel = _inputs(shape, k)
    want = _value_and_grads("grouped", x, kernel, strides, padding)
    got = _value_and_grads(impl, x, kernel, strides, padding)
    for name, a, b in zip(("output", "d/dx", "d/dkernel"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_matches_lax_conv_directly():
    x, kernel = _inputs((2, 5, 5, 3), 3)
    want = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=3)
    np.testing.assert_allclose(depthwise_conv(x, kernel, impl="shifted"), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", depthwise.IMPLS)
def test_half_precision_keeps_dtype(impl):
    _skip_without_native(impl)
    x, kernel = _inputs((2, 6, 6, 4), 3, jnp.bfloat16)
    y = depthwise_conv(x, kernel, strides=2, impl=impl)
    want = depthwise_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), strides=2,
                          impl="grouped")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), want, rtol=3e-2, atol=3e-2)


def _jitted_vjp(f):
    """``(x, kernel, g) -> (f(x, kernel), d/dx, d/dkernel)`` for the output gradient ``g``."""
    def run(x, kernel, g):
        y, vjp = jax.vjp(f, x, kernel)
        return (y, *vjp(g))

    return jax.jit(run)


def _native_values_and_grads(x, kernel, g, strides, padding, *, through_float32=False):
    """The native form's output (in ``g``'s dtype) and gradients for the cotangent ``g``."""
    def f(x, kernel):
        if through_float32:  # The float32 kernels on widened copies, rounded back.
            wide = depthwise_conv(x.astype(jnp.float32), kernel.astype(jnp.float32),
                                  strides=strides, padding=padding, impl="native")
            return wide.astype(g.dtype)
        return depthwise_conv(x, kernel, strides=strides, padding=padding, impl="native",
                              preferred_element_type=g.dtype)

    return _jitted_vjp(f)(x, kernel, g)


@pytest.mark.parametrize("result", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape,k,strides,padding", CASES)
def test_native_bfloat16_is_the_float32_kernels_rounded_once(shape, k, strides, padding,
                                                             result):
    # The kernels read bfloat16, sum in float32 and round each bfloat16 result once: the
    # bits of the float32 kernels on widened copies with the results converted to
    # bfloat16. A float32 result (and cotangent) is passed as it is. Non-finite values
    # too: an inf kernel tap and a NaN in the output gradient.
    _skip_without_native("native")
    x, kernel = _inputs(shape, k, jnp.bfloat16)
    kernel = kernel.at[0, 0, 0, 1].set(jnp.inf)
    y_shape = jax.eval_shape(functools.partial(depthwise_conv, strides=strides, padding=padding),
                             x, kernel).shape
    g = jnp.asarray(np.random.default_rng(1).normal(size=y_shape), result)
    g = g.at[0, 0, 0, 2].set(jnp.nan)
    got = _native_values_and_grads(x, kernel, g, strides, padding)
    want = _native_values_and_grads(x, kernel, g, strides, padding, through_float32=True)
    for name, a, b, dtype in zip(("output", "d/dx", "d/dkernel"), got, want,
                                 (result, jnp.bfloat16, jnp.bfloat16)):
        assert a.dtype == b.dtype == dtype, name
        a, b = np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32))
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_array_equal(np.where(np.isnan(a), 0, a).view(np.uint32),
                                      np.where(np.isnan(b), 0, b).view(np.uint32), err_msg=name)


@pytest.mark.parametrize("result,calls", [
    # Operands in bfloat16, results too but for the kernel gradient (a float32 sum).
    ("bf16", {"jrelu6_depthwise_forward": ("bf16", "bf16", "bf16"),
              "jrelu6_depthwise_input_grad": ("bf16", "bf16", "bf16"),
              "jrelu6_depthwise_kernel_grad": ("f32", "bf16", "bf16")}),
    # A float32 result: the output and its cotangent in float32, nothing else.
    ("f32", {"jrelu6_depthwise_forward": ("f32", "bf16", "bf16"),
             "jrelu6_depthwise_input_grad": ("bf16", "f32", "bf16"),
             "jrelu6_depthwise_kernel_grad": ("f32", "bf16", "f32")}),
])
def test_native_bfloat16_runs_without_float32_copies(result, calls):
    _skip_without_native("native")
    x, kernel = _inputs((2, 6, 6, 4), 3, jnp.bfloat16)
    dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32}[result]

    def loss(x, k):  # Non-linear, so that the forward call stays in the gradient.
        y = depthwise_conv(x, k, impl="native", preferred_element_type=dtype)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    grad = jax.grad(loss, argnums=(0, 1))
    hlo = jax.jit(grad).lower(x, kernel).compile().as_text()
    call = re.compile(r"= (\w+)\[[^=]* custom-call\(.*custom_call_target=\"(\w+)\", "
                      r"operand_layout_constraints=\{(\w+)\[[^]]*\]\{[^}]*\}, (\w+)\[")
    found = {target: (result, *operands) for result, target, *operands in call.findall(hlo)}
    assert found == calls


@pytest.mark.parametrize("impl", depthwise.IMPLS)
def test_float32_result_of_bfloat16_operands_in_every_form(impl):
    # preferred_element_type=float32: the float32 sums of the bfloat16 products (exact in
    # float32) as they are, and gradients from the float32 cotangent, rounded once.
    _skip_without_native(impl)
    x, kernel = _inputs((2, 7, 9, 45), 3, jnp.bfloat16)
    g = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 5, 45)), jnp.float32)

    def f(x, kernel):
        return depthwise_conv(x, kernel, strides=2, impl=impl, preferred_element_type=g.dtype)

    y, dx, dk = _jitted_vjp(f)(x, kernel, g)
    assert (y.dtype, dx.dtype, dk.dtype) == (jnp.float32, jnp.bfloat16, jnp.bfloat16)
    grouped = functools.partial(depthwise_conv, strides=2, impl="grouped")
    want_y, want_dx, want_dk = _jitted_vjp(grouped)(x.astype(jnp.float32),
                                                    kernel.astype(jnp.float32), g)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    for got, want in ((dx, want_dx), (dk, want_dk)):  # One rounding to bfloat16 apart.
        np.testing.assert_allclose(_widened(got), want, rtol=2**-8, atol=1e-5)


def _cpu_gradient_hlo(impl: str) -> str:
    x, kernel = _inputs((2, 6, 6, 4), 3)
    grad = jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(depthwise_conv(x, k, impl=impl))),
                              argnums=(0, 1))
    return jax.jit(grad).lower(x, kernel).compile().as_text()


def test_auto_compiles_to_no_convolution_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU choice")
    hlo = _cpu_gradient_hlo("auto")
    assert "convolution(" not in hlo and "conditional(" not in hlo


def test_auto_uses_the_native_kernels_on_cpu_where_built():
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU choice")
    _skip_without_native("native")
    hlo = _cpu_gradient_hlo("auto")
    for target in native.TARGETS:
        if target.startswith("jrelu6_depthwise_"):
            assert f'custom_call_target="{target}"' in hlo, target


# jax.export refuses custom calls without a compatibility guarantee unless told otherwise.
_ALLOW_NATIVE = [jax.export.DisabledSafetyCheck.custom_call(t) for t in native.TARGETS]


@pytest.mark.parametrize("platform,grouped", [("cpu", False), ("cuda", True), ("tpu", True)])
def test_auto_picks_per_platform_at_lowering(platform, grouped):
    # Lowered (not run) for each platform through jax.export: no accelerator needed.
    x, kernel = _inputs((2, 6, 6, 4), 3)
    grad = jax.grad(lambda x, k: jnp.sum(depthwise_conv(x, k, impl="auto")), argnums=(0, 1))
    exported = jax.export.export(jax.jit(grad), platforms=[platform],
                                 disabled_checks=_ALLOW_NATIVE)(x, kernel)
    module = exported.mlir_module()
    assert ("feature_group_count = 4" in module) == grouped
    assert ("jrelu6_depthwise_input_grad" in module) == (not grouped and native.available())


def test_native_is_deterministic():
    _skip_without_native("native")
    x, kernel = _inputs((4, 16, 16, 24), 3)
    once, twice = (_value_and_grads("native", x, kernel, 1, "SAME") for _ in range(2))
    for a, b in zip(once, twice):
        np.testing.assert_array_equal(a, b)


def test_native_under_vmap_matches_a_loop():
    _skip_without_native("native")
    x, kernel = _inputs((3, 2, 6, 6, 4), 3)

    def f(x):
        return depthwise_conv(x, kernel, strides=2, impl="native")

    np.testing.assert_allclose(jax.vmap(f)(x), jnp.stack([f(image) for image in x]),
                               rtol=1e-6, atol=1e-6)


def test_native_rejects_negative_padding():
    _skip_without_native("native")
    x, kernel = _inputs((1, 6, 6, 2), 3)
    with pytest.raises(ValueError, match="depthwise_conv: impl='native' needs padding >= 0"):
        depthwise_conv(x, kernel, padding=((-1, 1), (1, 1)), impl="native")


@pytest.mark.parametrize("x_dtype,kernel_dtype,result_dtype,match", [
    (jnp.float32, jnp.bfloat16, jnp.float32, "the kernel must have the image's dtype"),
    (jnp.float32, jnp.float32, jnp.bfloat16, "results of their dtype or float32"),
    (jnp.float16, jnp.float16, jnp.float16, "results of their dtype or float32"),
])
def test_native_kernels_refuse_other_dtypes(x_dtype, kernel_dtype, result_dtype, match):
    # depthwise_conv never asks for these (it goes through float32 copies); a direct
    # call gets the kernels' own error, not a misread buffer.
    _skip_without_native("native")
    x = jnp.ones((1, 4, 4, 2), x_dtype)
    kernel = jnp.ones((3, 3, 2), kernel_dtype)
    with pytest.raises(jax.errors.JaxRuntimeError, match=match):
        jax.block_until_ready(depthwise._ffi_call(
            "jrelu6_depthwise_forward", (1, 4, 4, 2), result_dtype, (1, 1), ((1, 1), (1, 1)),
            x, kernel))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"impl": "fast"}, "impl must be one of"),
        ({"padding": "FULL"}, "padding must be"),
        ({"padding": ((1, 1),)}, "padding must be"),
        ({"strides": 0}, "strides must be"),
        ({"strides": (1, 2, 3)}, "strides must be"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    x, kernel = _inputs((1, 4, 4, 2), 3)
    with pytest.raises(ValueError, match=f"depthwise_conv: {match}"):
        depthwise_conv(x, kernel, **kwargs)


def test_bad_kernel_shape_raises():
    x, _ = _inputs((1, 4, 4, 2), 3)
    with pytest.raises(ValueError, match=r"depthwise_conv: need x \(N, H, W, C\)"):
        depthwise_conv(x, jnp.ones((3, 3, 2, 2)))


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("impl", depthwise.IMPLS)
def test_layer_matches_flax_grouped_conv(use_bias, impl):
    _skip_without_native(impl)
    x, _ = _inputs((2, 7, 7, 6), 3)
    ours = DepthwiseConv(6, (3, 3), strides=2, use_bias=use_bias, impl=impl)
    theirs = nn.Conv(6, (3, 3), strides=2, use_bias=use_bias, feature_group_count=6)
    key = jax.random.key(0)
    variables = ours.init(key, x)
    reference = theirs.init(key, x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, reference)
    np.testing.assert_array_equal(variables["params"]["kernel"],
                                  reference["params"]["kernel"])
    if use_bias:  # Make the bias count.
        variables = jax.tree.map(lambda p: p + 0.5, variables)
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x),
                               rtol=1e-5, atol=1e-5)


def test_layer_computes_in_its_dtype_with_float32_params():
    x, _ = _inputs((1, 5, 5, 4), 3)
    layer = DepthwiseConv(4, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert layer.apply(variables, x).dtype == jnp.bfloat16


def test_layer_rejects_wrong_channels():
    x, _ = _inputs((1, 5, 5, 4), 3)
    with pytest.raises(ValueError, match="DepthwiseConv: expected 3 input channels"):
        DepthwiseConv(3).init(jax.random.key(0), x)


def _assert_same_as_flax_layer(ours: nn.Module, theirs: nn.Module, x: jax.Array) -> None:
    """``ours`` has ``theirs``'s parameter tree and computes its values and its parameter
    and input gradients."""
    variables = ours.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.key(0), x))
    variables = jax.tree.map(lambda p: p + 0.25, variables)
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x),
                               rtol=1e-5, atol=1e-5)

    def grads(layer):
        return jax.grad(lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x))), (0, 1))(variables, x)

    for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(theirs)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_bias", [True, False])
def test_pointwise_layer_matches_flax_conv(use_bias):
    x, _ = _inputs((2, 5, 3, 6), 1)
    _assert_same_as_flax_layer(PointwiseConv(4, use_bias=use_bias),
                               nn.Conv(4, (1, 1), use_bias=use_bias), x)


@pytest.mark.parametrize("kernel_size,strides,padding", [
    ((3, 3), 1, "SAME"), ((3, 3), 2, "SAME"), ((3, 3), 2, ((1, 1), (1, 1))),
    ((3, 2), (2, 1), "VALID"), ((1, 1), 2, "SAME"),
])
@pytest.mark.parametrize("use_bias", [True, False])
def test_patch_layer_matches_flax_conv(kernel_size, strides, padding, use_bias):
    x, _ = _inputs((2, 7, 6, 3), 1)
    kwargs = {"strides": strides, "padding": padding, "use_bias": use_bias}
    _assert_same_as_flax_layer(PatchConv(5, kernel_size=kernel_size, **kwargs),
                               nn.Conv(5, kernel_size, **kwargs), x)


def test_patch_layer_without_output_positions_gives_an_empty_array_and_zero_gradients():
    x, _ = _inputs((2, 2, 2, 3), 1)
    layer = PatchConv(4, kernel_size=(3, 3), padding="VALID")
    variables = layer.init(jax.random.key(0), x)
    want = nn.Conv(4, (3, 3), padding="VALID").apply(variables, x)
    got = layer.apply(variables, x)
    assert got.shape == want.shape == (2, 0, 0, 4)
    grads = jax.grad(lambda v: jnp.sum(layer.apply(v, x)))(variables)
    np.testing.assert_array_equal(grads["params"]["kernel"], np.zeros((3, 3, 3, 4)))


def test_patch_layer_hands_float32_sums_on_when_asked():
    x, _ = _inputs((2, 5, 5, 3), 1)
    mixed = PatchConv(4, dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
    variables = mixed.init(jax.random.key(0), x)
    y = mixed.apply(variables, x)
    assert y.dtype == jnp.float32
    rounded = lax.conv_general_dilated(
        x.astype(jnp.bfloat16).astype(jnp.float32),
        variables["params"]["kernel"].astype(jnp.bfloat16).astype(jnp.float32), (1, 1),
        "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    np.testing.assert_allclose(y, rounded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,shape,match", [
    ({"strides": 0}, (1, 4, 4, 3), "PatchConv: strides must be a positive int"),
    ({"kernel_size": (3,)}, (1, 4, 4, 3), "PatchConv: kernel_size must be"),
    ({"padding": "FULL"}, (1, 4, 4, 3), "PatchConv: padding must be"),
    ({}, (4, 4, 3), r"PatchConv: need an \(N, H, W, C\) input"),
])
def test_patch_layer_rejects_bad_arguments(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        PatchConv(2, **kwargs).init(jax.random.key(0), jnp.ones(shape))


def test_pointwise_layer_computes_in_its_dtype_with_float32_params():
    x, _ = _inputs((1, 3, 3, 4), 1)
    layer = PointwiseConv(2, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert layer.apply(variables, x).dtype == jnp.bfloat16


def _mixed_inputs(m=37, k=11, n=5):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(m, k)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(k, n)), jnp.float32)
    return x, kernel


def _widened(a):
    return np.asarray(a.astype(jnp.float32), np.float64)


def test_mixed_matmul_is_the_product_of_the_rounded_values_in_float32():
    x, kernel = _mixed_inputs()
    y = depthwise.mixed_matmul(x, kernel, jnp.float32)
    assert y.dtype == jnp.float32
    expected = _widened(x) @ _widened(kernel.astype(jnp.bfloat16))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_mixed_matmul_gradients_are_rounded_products_summed_in_float32():
    x, kernel = _mixed_inputs()
    g = jnp.asarray(np.random.default_rng(2).normal(size=(x.shape[0], kernel.shape[1])),
                    jnp.float32)
    _, vjp = jax.vjp(lambda x, k: depthwise.mixed_matmul(x, k, jnp.float32), x, kernel)
    dx, dkernel = vjp(g)
    # The input's gradient in the input's dtype, the float32 kernel's in float32.
    assert dx.dtype == jnp.bfloat16 and dkernel.dtype == jnp.float32
    g16, k16 = _widened(g.astype(jnp.bfloat16)), _widened(kernel.astype(jnp.bfloat16))
    np.testing.assert_allclose(_widened(dx), g16 @ k16.T, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(dkernel, _widened(x).T @ g16, rtol=1e-6, atol=1e-6)


def test_pointwise_layer_hands_float32_sums_on_when_asked():
    x, _ = _inputs((2, 3, 3, 4), 1, jnp.bfloat16)
    mixed = PointwiseConv(3, dtype=jnp.bfloat16, preferred_element_type=jnp.float32)
    plain = PointwiseConv(3, dtype=jnp.bfloat16)
    variables = mixed.init(jax.random.key(0), x)
    y = mixed.apply(variables, x)
    assert y.dtype == jnp.float32 and plain.apply(variables, x).dtype == jnp.bfloat16
    params = variables["params"]
    expected = (_widened(x).reshape(-1, 4) @ _widened(params["kernel"].astype(jnp.bfloat16))
                .reshape(4, 3) + _widened(params["bias"]))
    np.testing.assert_allclose(y.reshape(-1, 3), expected, rtol=1e-6, atol=1e-6)


# --- geometries without output, non-finite values, thread counts -------------------


@pytest.mark.parametrize("impl", depthwise.IMPLS)
@pytest.mark.parametrize(
    "shape,window,padding",
    [
        ((2, 1, 1, 3), (3, 3), "VALID"),  # The window is larger than the input.
        ((3, 9, 2, 4), (3, 5), ((0, 0), (0, 1))),  # Too narrow by one column.
        ((0, 5, 5, 3), (3, 3), "SAME"),  # No images.
    ],
)
def test_no_output_positions_give_empty_arrays_and_zero_gradients(impl, shape, window, padding):
    _skip_without_native(impl)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*window, 1, shape[-1])), jnp.float32)
    want = _value_and_grads("grouped", x, kernel, 1, padding)
    got = _value_and_grads(impl, x, kernel, 1, padding)
    assert want[0].size == 0
    for name, a, b in zip(("output", "d/dx", "d/dkernel"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(got[2], np.zeros(kernel.shape))


@pytest.mark.parametrize("impl", ["shifted", "native", "auto"])
@pytest.mark.parametrize("shape,k,strides,padding", CASES)
def test_non_finite_values_meet_padding_as_in_lax_conv(impl, shape, k, strides, padding):
    # The rule of lax.conv (the grouped form): padding, and the holes between strided
    # outputs in the input gradient, are zeros that are multiplied, so an inf or NaN that
    # meets them gives NaN (0 * inf), as it does anywhere else. Non-finite values in a
    # corner tap of the kernel (it meets the padding at the borders) or in a corner of
    # the output gradient.
    _skip_without_native(impl)
    x, kernel = _inputs(shape, k)

    forms = {impl: _jitted_vjp(functools.partial(depthwise_conv, strides=strides,
                                                 padding=padding, impl=impl))
             for impl in ("grouped", impl)}
    y_shape = jax.eval_shape(functools.partial(depthwise_conv, strides=strides, padding=padding),
                             x, kernel).shape

    def results(impl, kernel, cotangent_at, value):
        g = jnp.asarray(np.random.default_rng(1).normal(size=y_shape), x.dtype)
        if cotangent_at is not None:
            g = g.at[cotangent_at].set(value)
        return forms[impl](x, kernel, g)

    met_padding = 0  # Variants where an inf gives NaN: it met padding (or holes).
    for value in (np.inf, -np.inf, np.nan):
        variants = {f"kernel tap {tap}": (kernel.at[(*tap, 0, 1)].set(value), None)
                    for tap in ((0, 0), (k - 1, k - 1))}
        variants |= {f"cotangent at {at}": (kernel, at) for at in ((0, 0, 0, 2), (-1, -1, -1, 2))}
        for where, (kern, at) in variants.items():
            want = results("grouped", kern, at, value)
            got = results(impl, kern, at, value)
            met_padding += np.isinf(value) and any(np.isnan(a).any() for a in want)
            for name, a, b in zip(("output", "d/dx", "d/dkernel"), got, want):
                message = f"{name}, {value} in the {where}"
                np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=message)
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=message)
    assert met_padding


# Prints the bits of the native gradients (thread_counts binds the process's CPUs first).
_THREADS_PROBE = """
import hashlib
import jax, jax.numpy as jnp, numpy as np
from mobilenet.depthwise import depthwise_conv
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(4, 24, 24, 40)), jnp.float32)
kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 40)), jnp.float32)
loss = lambda x, k: jnp.sum(jnp.sin(depthwise_conv(x, k, strides=1, impl="native")))
grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
print("bits", *(hashlib.sha256(np.asarray(g).tobytes()).hexdigest() for g in grads))
"""


def test_native_gradients_are_bit_identical_with_one_and_two_threads():
    _skip_without_native("native")
    one, two = thread_counts.bits_with_one_and_two_threads(_THREADS_PROBE)
    assert one == two
