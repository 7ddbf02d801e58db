"""Values, dtypes and derivatives of the relu6 family."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

import jrelu6

FLOATS = [jnp.float16, jnp.bfloat16, jnp.float32]
INTS = [jnp.int8, jnp.int16, jnp.int32, jnp.uint8, jnp.uint16, jnp.uint32]
SETTINGS = [(0.0, 0.0), (1.0, 1.0), (0.5, 0.25), (-1.0, 2.0)]


def _x64():
    """A context with 64-bit types on, across jax versions."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # Older jax.

    return enable_x64()


def _grad(fn, **kwargs):
    return jax.grad(lambda x: fn(x, **kwargs))


def _reference(x, cap=6.0):
    return np.minimum(np.maximum(x, 0), cap)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", FLOATS)
def test_relu6_matches_numpy_reference(dtype):
    x = jnp.linspace(-3, 9, 97, dtype=dtype)
    expected = _reference(np.asarray(x, np.float32)).astype(dtype)
    np.testing.assert_array_equal(np.asarray(jrelu6.relu6(x)), np.asarray(expected))


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
        elements=(st.floats(-20, 20, width=32, allow_subnormal=False)
                  | st.sampled_from([0.0, 6.0, -0.0])),
    )
)
def test_relu6_matches_numpy_reference_on_any_shape(x):
    out = jrelu6.relu6(x)
    assert out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), _reference(x))


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        np.float32, st.integers(1, 20), elements=st.floats(-20, 20, width=32, allow_subnormal=False)
    ),
    st.floats(0.125, 16, width=32),
)
def test_capped_relu_matches_numpy_reference(x, cap):
    np.testing.assert_array_equal(
        np.asarray(jrelu6.capped_relu(x, cap=cap)), _reference(x, np.float32(cap))
    )


@pytest.mark.parametrize("dtype", FLOATS)
def test_relu6_keeps_float_dtype(dtype):
    assert jrelu6.relu6(jnp.ones(3, dtype)).dtype == dtype


def test_relu6_keeps_float64():
    with _x64():
        x = jnp.array([-1.0, 3.0, 7.0], jnp.float64)
        out = jrelu6.relu6(x)
        assert out.dtype == jnp.float64
        assert jax.grad(jrelu6.relu6)(x[1]).dtype == jnp.float64


@pytest.mark.parametrize("dtype", INTS)
def test_relu6_keeps_integer_dtype(dtype):
    lo = 0 if jnp.issubdtype(dtype, jnp.unsignedinteger) else -2
    x = jnp.arange(lo, 9, dtype=dtype)
    out = jrelu6.relu6(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out), _reference(np.asarray(x)).astype(dtype))


def test_relu6_keeps_int64():
    with _x64():
        assert jrelu6.relu6(jnp.arange(-2, 9, dtype=jnp.int64)).dtype == jnp.int64


def test_relu6_int8_example_from_the_issue():
    assert jrelu6.relu6(jnp.arange(-2, 9, dtype=jnp.int8)).dtype == jnp.int8


@pytest.mark.parametrize(
    "x, expected",
    [(3, 3), (-1.5, 0.0), (7.0, 6.0), (np.array([-1.0, 2.0]), [0.0, 2.0]), ([[-1, 8]], [[0, 6]])],
)
def test_relu6_accepts_what_jnp_asarray_accepts(x, expected):
    out = jrelu6.relu6(x)
    assert out.dtype == jnp.asarray(x).dtype
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_relu6_special_values():
    out = jrelu6.relu6(jnp.array([jnp.nan, jnp.inf, -jnp.inf, -0.0]))
    assert np.isnan(out[0])
    np.testing.assert_array_equal(np.asarray(out[1:]), [6.0, 0.0, 0.0])


@pytest.mark.parametrize("fn", [jrelu6.hard_sigmoid, jrelu6.hard_swish])
def test_hard_functions_promote_integers_to_float(fn):
    out = fn(jnp.arange(-4, 5, dtype=jnp.int32))
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_allclose(np.asarray(out), np.asarray(fn(jnp.arange(-4.0, 5.0))))


def test_hard_silu_is_hard_swish():
    assert jrelu6.hard_silu is jrelu6.hard_swish


# ------------------------------------------------------ parity with jax.nn

PAIRS = [
    (jrelu6.relu6, jax.nn.relu6),
    (jrelu6.hard_sigmoid, jax.nn.hard_sigmoid),
    (jrelu6.hard_swish, jax.nn.hard_swish),
]


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_values_equal_jax_nn(ours, theirs, dtype):
    x = jnp.concatenate([jnp.linspace(-8, 8, 257), jnp.array([-3.0, 0.0, 3.0, 6.0])])
    x = x.astype(dtype)
    np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(theirs(x)))


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_gradients_equal_jax_nn_at_defaults(ours, theirs):
    x = jnp.concatenate([jnp.linspace(-8, 8, 257), jnp.array([-3.0, 0.0, 3.0, 6.0])])
    # Equal up to the rounding of the product rule's terms (an ulp or so).
    np.testing.assert_allclose(
        np.asarray(jax.vmap(jax.grad(ours))(x)),
        np.asarray(jax.vmap(jax.grad(theirs))(x)),
        rtol=2e-6,
        atol=1e-7,
    )


# ------------------------------------------------------- derivatives


def _modes(fn):
    """Ways of computing the elementwise derivative of ``fn`` at a vector ``x``."""
    return {
        "grad": lambda x: jax.vmap(jax.grad(fn))(x),
        "jit_grad": lambda x: jax.jit(jax.vmap(jax.grad(fn)))(x),
        "jvp": lambda x: jax.jvp(fn, (x,), (jnp.ones_like(x),))[1],
        "vjp": lambda x: jax.vjp(fn, x)[1](jnp.ones_like(x))[0],
        "jacfwd": lambda x: jnp.diagonal(jax.jacfwd(fn)(x)),
        "jacrev": lambda x: jnp.diagonal(jax.jacrev(fn)(x)),
        "checkpoint": lambda x: jax.vmap(jax.grad(jax.checkpoint(fn)))(x),
        "scan": lambda x: jax.grad(
            lambda x: jax.lax.scan(lambda c, xi: (c + fn(xi), None), 0.0, x)[0]
        )(x),
    }


MODES = list(_modes(jrelu6.relu6))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("g0, g6", SETTINGS)
def test_relu6_derivative_at_the_kinks(mode, g0, g6):
    fn = functools.partial(jrelu6.relu6, grad_at_zero=g0, grad_at_six=g6)
    x = jnp.array([-1.0, 0.0, 3.0, 6.0, 7.0])
    got = _modes(fn)[mode](x)
    np.testing.assert_array_equal(np.asarray(got), [0.0, g0, 1.0, g6, 0.0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("g0, g6", SETTINGS)
def test_hard_sigmoid_derivative_at_the_kinks(mode, g0, g6):
    fn = functools.partial(jrelu6.hard_sigmoid, grad_at_zero=g0, grad_at_six=g6)
    x = jnp.array([-4.0, -3.0, 0.0, 3.0, 4.0])
    got = _modes(fn)[mode](x)
    np.testing.assert_allclose(np.asarray(got), [0.0, g0 / 6, 1 / 6, g6 / 6, 0.0], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("g0, g6", SETTINGS)
def test_hard_swish_derivative_at_the_kinks(mode, g0, g6):
    fn = functools.partial(jrelu6.hard_swish, grad_at_zero=g0, grad_at_six=g6)
    x = jnp.array([-4.0, -3.0, 0.0, 3.0, 4.0])
    got = _modes(fn)[mode](x)
    np.testing.assert_allclose(
        np.asarray(got), [0.0, -g0 / 2, 0.5, 1 + g6 / 2, 1.0], rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("g0, g6", SETTINGS)
def test_relu6_derivative_at_the_kinks_in_low_precision(dtype, g0, g6):
    x = jnp.array([0.0, 6.0], dtype)
    got = jax.vmap(jax.grad(lambda x: jrelu6.relu6(x, grad_at_zero=g0, grad_at_six=g6)))(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), [g0, g6])


def test_derivative_at_signed_zero_and_neighbours():
    x = jnp.array([-1e-30, -0.0, 1e-30, 6.0 - 4.7e-7, 6.0 + 4.8e-7], jnp.float32)
    got = jax.vmap(jax.grad(lambda x: jrelu6.relu6(x, grad_at_zero=0.5, grad_at_six=0.5)))(x)
    # -0.0 == 0.0, so it is the kink; its neighbours are not.
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.5, 1.0, 1.0, 0.0])


def test_derivative_at_subnormals_agrees_with_the_forward_pass():
    # XLA:CPU flushes subnormals to zero: there relu6(tiny) == 0, so tiny is
    # on the kink and gets grad_at_zero. Where they are kept, it is 1 or 0.
    tiny = np.finfo(np.float32).smallest_subnormal
    x = jnp.array([-tiny, tiny], jnp.float32)
    fn = functools.partial(jrelu6.relu6, grad_at_zero=0.5)
    out = np.asarray(jrelu6.relu6(x))
    got = np.asarray(jax.vmap(jax.grad(fn))(x))
    flushed = out[1] == 0
    np.testing.assert_array_equal(got, [0.5, 0.5] if flushed else [0.0, 1.0])


def test_derivative_is_nan_at_nan():
    for g0, g6 in SETTINGS:
        fn = functools.partial(jrelu6.relu6, grad_at_zero=g0, grad_at_six=g6)
        assert np.isnan(jax.grad(fn)(jnp.nan))
        assert np.isnan(jax.jvp(fn, (jnp.nan,), (1.0,))[1])
    assert np.isnan(jax.grad(jrelu6.hard_swish)(jnp.nan))


def test_derivative_is_zero_at_infinities():
    got = jax.vmap(jax.grad(jrelu6.relu6))(jnp.array([-jnp.inf, jnp.inf]))
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0])


@pytest.mark.parametrize("x", [-1.0, 0.0, 3.0, 6.0, 7.0])
def test_second_derivative_is_zero(x):
    fn = functools.partial(jrelu6.relu6, grad_at_zero=1.0, grad_at_six=1.0)
    assert jax.hessian(fn)(x) == 0.0
    assert jax.jacfwd(jax.jacrev(fn))(x) == 0.0
    assert jax.grad(jax.grad(jax.grad(fn)))(x) == 0.0


@pytest.mark.parametrize("fn", [jrelu6.relu6, jrelu6.hard_sigmoid, jrelu6.hard_swish])
def test_check_grads_in_smooth_regions(fn):
    for x in (-7.0, -1.0, 1.5, 3.0, 7.0):
        if fn is not jrelu6.relu6 and x == 3.0:
            continue  # A kink of the hard_* functions.
        check_grads(fn, (jnp.float32(x),), order=2, modes=("fwd", "rev"), eps=1e-2)


@pytest.mark.parametrize("g0, g6", SETTINGS)
def test_relu6_derivative_function_equals_grad(g0, g6):
    x = jnp.array([-jnp.inf, -1.0, -0.0, 0.0, 1e-30, 3.0, 6.0, 6.5, jnp.inf, jnp.nan])
    expected = jax.vmap(jax.grad(lambda x: jrelu6.relu6(x, grad_at_zero=g0, grad_at_six=g6)))(x)
    got = jrelu6.relu6_derivative(x, grad_at_zero=g0, grad_at_six=g6)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_capped_relu_derivative_with_respect_to_cap():
    x = jnp.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    def fn(c):
        return jrelu6.capped_relu(x, cap=c, grad_at_cap=0.25)

    got = jax.jacfwd(fn)(2.0)
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0, 0.0, 0.75, 1.0])
    np.testing.assert_array_equal(np.asarray(jax.jacrev(fn)(2.0)), np.asarray(got))


def test_capped_relu_kink_partials_add_up_to_one():
    # Along x == cap the output is the identity, whatever the convention.
    for g in (0.0, 0.3, 1.0):
        def f(t, g=g):
            return jrelu6.capped_relu(t, cap=t, grad_at_cap=g)

        assert jax.grad(f)(2.0) == 1.0


def test_integer_input_has_zero_tangent_under_jvp():
    x = jnp.arange(-2, 9)
    y, y_dot = jax.jvp(jrelu6.relu6, (x,), (np.zeros(x.shape, jax.dtypes.float0),))
    assert y.dtype == x.dtype and y_dot.dtype == jax.dtypes.float0


# -------------------------------------------------- transformations


def test_vmap_matches_elementwise():
    x = jnp.linspace(-2, 8, 12).reshape(3, 4)
    np.testing.assert_array_equal(
        np.asarray(jax.vmap(jrelu6.relu6)(x)), np.asarray(jrelu6.relu6(x))
    )


def test_boundary_values_may_be_traced():
    @jax.jit
    def f(x, g0, g6):
        return jax.grad(lambda x: jrelu6.relu6(x, grad_at_zero=g0, grad_at_six=g6).sum())(x)

    got = f(jnp.array([0.0, 6.0]), jnp.float32(0.75), jnp.float32(0.25))
    np.testing.assert_array_equal(np.asarray(got), [0.75, 0.25])


def test_new_boundary_values_do_not_retrace_a_users_jit():
    traces = []

    def loss(x, g):
        traces.append(None)
        return jrelu6.relu6(x, grad_at_zero=g).sum()

    f = jax.jit(jax.grad(loss))
    for g in (0.0, 0.0, 1.0, 0.5):
        f(jnp.zeros(4), g)
    assert len(traces) == 1


def test_eager_calls_compile_once_whatever_the_boundary_values():
    from jrelu6 import _core

    cache_size = getattr(_core.capped_relu.fun, "_cache_size", None)
    if cache_size is None:
        pytest.skip("this jax does not expose the jit cache size")
    x = jnp.arange(7.0, dtype=jnp.float16)  # A shape no other test uses.
    jrelu6.relu6(x)
    before = cache_size()
    for g in (0.0, 1.0, 0.5, 1, 0, np.float32(0.25)):
        jrelu6.relu6(x, grad_at_zero=g, grad_at_six=g)
    assert cache_size() == before


def test_sharded_input_keeps_its_sharding():
    devices = jax.devices()
    assert len(devices) == 8, "conftest forces eight host devices"
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = jax.device_put(jnp.linspace(-2, 8, 64), sharding)
    for fn in (jrelu6.relu6, jrelu6.hard_swish, jax.grad(lambda x: jrelu6.relu6(x).sum())):
        out = fn(x)
        assert out.sharding.is_equivalent_to(sharding, x.ndim)
    np.testing.assert_array_equal(np.asarray(jrelu6.relu6(x)), _reference(np.asarray(x)))


# ------------------------------------------------------------ in place


def test_relu6_inplace_consumes_input_and_matches():
    x = jnp.linspace(-2, 8, 1024)
    expected = jrelu6.relu6(x)
    out = jrelu6.relu6_inplace(x)
    assert x.is_deleted()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_relu6_inplace_integers():
    out = jrelu6.relu6_inplace(jnp.arange(-3, 10, dtype=jnp.int16))
    assert out.dtype == jnp.int16
    np.testing.assert_array_equal(np.asarray(out), _reference(np.arange(-3, 10)))


# ------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "fn",
    [jrelu6.relu6, jrelu6.hard_sigmoid, jrelu6.hard_swish, jrelu6.relu6_derivative,
     jrelu6.relu6_inplace],
)
@pytest.mark.parametrize(
    "bad, what",
    [
        (jnp.ones(2, jnp.complex64), "complex64"),
        (np.ones(2, np.complex128), "complex128"),
        (jnp.array([True, False]), "bool"),
        (np.array(["a"]), "<U1"),
        (np.array([object()]), "object"),
        (None, "None"),
        ("relu", "<U4"),
    ],
)
def test_bad_input_type_raises_type_error_naming_function(fn, bad, what):
    with pytest.raises(TypeError, match=rf"^{fn.__name__}: .*{what}"):
        fn(bad)


def test_capped_relu_error_names_function():
    with pytest.raises(TypeError, match=r"^capped_relu: .*complex"):
        jrelu6.capped_relu(1j, cap=1.0)


@pytest.mark.parametrize("name", ["grad_at_zero", "grad_at_six"])
@pytest.mark.parametrize(
    "value, error",
    [
        (jnp.ones(2), ValueError),
        (np.ones((1, 1)), ValueError),
        (1j, TypeError),
        (jnp.array(1j), TypeError),
        ("0", TypeError),
        (None, TypeError),
        (True, TypeError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
    ],
)
def test_bad_boundary_value_raises(name, value, error):
    with pytest.raises(error, match=rf"^relu6: {name}"):
        jrelu6.relu6(jnp.ones(2), **{name: value})


@pytest.mark.parametrize("cap", [0.0, -1.0, float("inf")])
def test_bad_cap_raises_value_error(cap):
    with pytest.raises(ValueError, match=r"^capped_relu: cap"):
        jrelu6.capped_relu(jnp.ones(2), cap=cap)


def test_hyperparameters_are_keyword_only():
    with pytest.raises(TypeError):
        jrelu6.relu6(jnp.ones(2), 1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        jrelu6.capped_relu(jnp.ones(2), 3.0)  # type: ignore[misc]


# ---------------------------------------------------- parity with PyTorch

TORCH_PAIRS = [("relu6", jrelu6.relu6), ("hardsigmoid", jrelu6.hard_sigmoid),
               ("hardswish", jrelu6.hard_swish)]


@pytest.mark.parity
@pytest.mark.parametrize("torch_name, ours", TORCH_PAIRS)
def test_values_and_gradients_match_torch(torch_name, ours):
    torch = pytest.importorskip("torch", reason="PyTorch is optional: parity tests only")
    x = np.concatenate([np.linspace(-8, 8, 161), [-3.0, 0.0, 3.0, 6.0]]).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn.functional, torch_name)(tx)
    ty.sum().backward()
    np.testing.assert_allclose(np.asarray(ours(x)), ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(jax.grad(ours))(x)), tx.grad.numpy(), rtol=1e-6, atol=1e-7
    )



@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_relu6_inplace_16bit_matches_relu6_on_every_value(dtype):
    bits = jnp.arange(-(2**15), 2**15, dtype=jnp.int32).astype(jnp.int16)
    x = jax.lax.bitcast_convert_type(bits, dtype)
    expected = np.asarray(jrelu6.relu6(x), np.float32)
    out = jrelu6.relu6_inplace(jnp.array(x, copy=True))
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out, np.float32), expected)


# ------------------------------------------------------------ edge cases

WEAK_CASES = [
    (jrelu6.relu6, {}),
    (jrelu6.hard_sigmoid, {}),
    (jrelu6.hard_swish, {}),
    (jrelu6.capped_relu, {"cap": 2.0}),
    (jrelu6.relu6_derivative, {}),
]


@pytest.mark.parametrize("fn, kwargs", WEAK_CASES)
def test_python_scalar_input_stays_weakly_typed(fn, kwargs):
    out = fn(3.0, **kwargs)
    assert (out * jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16
    assert (jax.nn.relu6(3.0) * jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("fn", [jrelu6.relu6, jrelu6.hard_sigmoid, jrelu6.hard_swish])
def test_gradient_of_a_python_scalar_is_weakly_typed_like_jax_nn(fn):
    assert (jax.grad(fn)(3.0) * jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("mode", ["grad", "jit_grad", "vjp", "jvp"])
@pytest.mark.parametrize("g0, g6", SETTINGS)
def test_infinite_cotangent_in_a_flat_region_gives_zero(mode, g0, g6):
    x = jnp.array([-1.0, 7.0, jnp.inf, -jnp.inf])
    fn = functools.partial(jrelu6.relu6, grad_at_zero=g0, grad_at_six=g6)
    inf = jnp.full_like(x, jnp.inf)
    got = {
        "grad": lambda: jax.grad(lambda v: (fn(v) * jnp.inf).sum())(x),
        "jit_grad": lambda: jax.jit(jax.grad(lambda v: (fn(v) * jnp.inf).sum()))(x),
        "vjp": lambda: jax.vjp(fn, x)[1](inf)[0],
        "jvp": lambda: jax.jvp(fn, (x,), (inf,))[1],
    }[mode]()
    np.testing.assert_array_equal(np.asarray(got), np.zeros(4))


def test_infinite_cotangent_matches_jax_nn_everywhere_at_defaults():
    x = jnp.array([-1.0, 0.0, 3.0, 6.0, 7.0])
    for cot in (jnp.inf, -jnp.inf):
        ours = jax.vjp(jrelu6.relu6, x)[1](jnp.full_like(x, cot))[0]
        theirs = jax.vjp(jax.nn.relu6, x)[1](jnp.full_like(x, cot))[0]
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_infinite_cotangent_on_a_nonzero_kink_slope_is_infinite():
    fn = functools.partial(jrelu6.relu6, grad_at_zero=0.5)
    assert jax.vjp(fn, 0.0)[1](jnp.inf)[0] == jnp.inf


def test_infinite_cotangent_under_vmap_and_for_the_cap():
    x = jnp.array([-1.0, 7.0])
    got = jax.vmap(jax.grad(lambda v: jrelu6.relu6(v) * jnp.inf))(x)
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0])
    dcap = jax.grad(lambda c: (jrelu6.capped_relu(x, cap=c) * jnp.inf).sum())(8.0)
    assert dcap == 0.0


def test_hard_swish_gradient_at_infinities_is_zero_and_one():
    got = jax.vmap(jax.grad(jrelu6.hard_swish))(jnp.array([-jnp.inf, jnp.inf]))
    np.testing.assert_array_equal(np.asarray(got), [0.0, 1.0])


@pytest.mark.parametrize("mode", ["grad", "jit_grad", "jvp", "vmap"])
def test_nan_input_still_gives_nan_gradient_with_an_infinite_cotangent(mode):
    fn = jrelu6.relu6
    got = {
        "grad": lambda: jax.grad(lambda v: fn(v) * jnp.inf)(jnp.nan),
        "jit_grad": lambda: jax.jit(jax.grad(fn))(jnp.nan),
        "jvp": lambda: jax.jvp(fn, (jnp.nan,), (jnp.inf,))[1],
        "vmap": lambda: jax.vmap(jax.grad(fn))(jnp.array([jnp.nan]))[0],
    }[mode]()
    assert np.isnan(got)


@pytest.mark.parametrize(
    "fn, kwargs",
    [
        (jrelu6.relu6, {"grad_at_zero": 1e39}),
        (jrelu6.relu6, {"grad_at_six": -1e39}),
        (jrelu6.hard_sigmoid, {"grad_at_zero": 1e39}),
        (jrelu6.hard_swish, {"grad_at_six": 1e39}),
        (jrelu6.relu6_derivative, {"grad_at_zero": 1e39}),
        (jrelu6.capped_relu, {"cap": 1e39}),
        (jrelu6.capped_relu, {"cap": 1.0, "grad_at_cap": 1e39}),
        (jrelu6.boundary_hits, {"cap": 1e39}),
        (jrelu6.boundary_hits, {"shift": 1e39}),
    ],
)
def test_setting_not_finite_in_float32_is_refused(fn, kwargs):
    name = next(iter(kwargs)) if len(kwargs) == 1 else "grad_at_cap"
    with pytest.raises(ValueError, match=rf"^{fn.__name__}: {name}=.*float32"):
        fn(jnp.ones(2), **kwargs)


@pytest.mark.parametrize("dtype, value", [(jnp.float16, 7e4), (jnp.bfloat16, 1e39)])
def test_setting_not_finite_in_16_bits_is_refused(dtype, value):
    with pytest.raises(ValueError, match=rf"^relu6: grad_at_zero=.*{jnp.dtype(dtype).name}"):
        jrelu6.relu6(jnp.ones(2, dtype), grad_at_zero=value)
    with pytest.raises(ValueError, match=r"^relu6_inplace: grad_at_zero"):
        jrelu6.relu6_inplace(jnp.ones(2, dtype), grad_at_zero=value)


def test_setting_finite_in_float16_is_accepted():
    g = jax.grad(lambda v: jrelu6.relu6(v, grad_at_zero=6e4).astype(jnp.float32))
    assert g(jnp.float16(0)) == jnp.float16(6e4)


@pytest.mark.parametrize("cap", [2.5, 0.5])
def test_fractional_cap_for_integer_input_is_refused(cap):
    with pytest.raises(ValueError, match=r"^capped_relu: cap must be a whole number.*int32"):
        jrelu6.capped_relu(jnp.array([3, 100]), cap=cap)


def test_whole_float_cap_for_integer_input_is_accepted():
    out = jrelu6.capped_relu(jnp.array([3, 100]), cap=2.0)
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out), [2, 2])


def test_cap_above_the_integer_range_caps_nothing():
    x = jnp.array([-3, 3, 100, 127], jnp.int8)
    np.testing.assert_array_equal(
        np.asarray(jrelu6.capped_relu(x, cap=300.0)), [0, 3, 100, 127]
    )


@pytest.mark.parametrize("fn", [jrelu6.relu6_inplace, jrelu6.relu6, jrelu6.hard_swish])
def test_donated_input_raises_an_error_naming_the_function(fn):
    x = jnp.array([-1.0, 7.0])
    jrelu6.relu6_inplace(x)
    with pytest.raises(ValueError, match=rf"^{fn.__name__}: the input array has been deleted"):
        fn(x)
