"""Fake quantization: TensorFlow's grid and straight-through gradient, quantized relu6."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrelu6

FLOATS = [jnp.float32, jnp.bfloat16, jnp.float16]
F32 = np.float32


def _std_round(z):
    """C's round(): half away from zero (here z >= 0)."""
    floor = np.floor(z)
    return floor + (z - floor >= F32(0.5))


def _tf_nudge(lo, hi, num_bits, narrow_range):
    """TensorFlow's Nudge, step by step in float32."""
    qmin, qmax = F32(1 if narrow_range else 0), F32(2**num_bits - 1)
    scale = (F32(hi) - F32(lo)) / (qmax - qmin)
    zero_point = _std_round(np.clip(qmin - F32(lo) / scale, qmin, qmax)).astype(F32)
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale, scale


def _tf_levels(x, lo, hi, num_bits=8, narrow_range=False):
    """TensorFlow's FakeQuantWithMinMaxVars, in float32 NumPy: ``(level, value)``.

    ``level`` is the signed integer ``q - z`` chosen for each input, ``value``
    TensorFlow's ``level_from_min * scale + nudged_min``.
    """
    nudged_min, nudged_max, scale = _tf_nudge(lo, hi, num_bits, narrow_range)
    clamped = np.maximum(np.minimum(np.asarray(x, F32), nudged_max), nudged_min)
    from_min = np.floor((clamped - nudged_min) * (F32(1) / scale) + F32(0.5))
    return from_min + np.round(nudged_min / scale), from_min * scale + nudged_min


def _tf_fake_quant(x, lo, hi, num_bits=8, narrow_range=False):
    """jrelu6's expected output: TensorFlow's level, dequantized as ``(q - z) * s``.

    TensorFlow's own ``level * s + nudged_min`` rounds twice; it is within an
    ulp of this (checked in ``test_values_equal_tensorflows_algorithm``).
    """
    level, _ = _tf_levels(x, lo, hi, num_bits, narrow_range)
    return (level * _tf_nudge(lo, hi, num_bits, narrow_range)[2]).astype(F32)


def _tf_gradients(x, lo, hi, num_bits=8, narrow_range=False):
    """TensorFlow's FakeQuantWithMinMaxVarsGradient for an all-ones cotangent."""
    nudged_min, nudged_max, _ = _tf_nudge(lo, hi, num_bits, narrow_range)
    x = np.asarray(x, F32)
    inside = (x >= nudged_min) & (x <= nudged_max)
    return inside.astype(F32), F32(np.sum(x < nudged_min)), F32(np.sum(x > nudged_max))


RANGES = [
    (0.0, 6.0),  # relu6's: nothing to nudge
    (-1.0, 1.0),
    (-0.3, 2.7),  # nudged
    (0.1, 1.0),  # min > 0: the zero point clamps to qmin, the range moves to [0, .9]
    (-2.0, -0.5),  # max < 0: the zero point clamps to qmax
    (-6.0, 6.0),
]


def _inputs(lo, hi, num_bits, narrow_range):
    """A sweep past both ends, plus every level and every half-way point (up to 256)."""
    nudged_min, nudged_max, scale = _tf_nudge(lo, hi, num_bits, narrow_range)
    steps = np.arange(min(2**num_bits, 256), dtype=F32)
    levels = steps * scale + nudged_min
    halves = (steps + F32(0.5)) * scale + nudged_min
    sweep = np.linspace(lo - 1, hi + 1, 301, dtype=F32)
    return np.concatenate([sweep, levels, halves, [nudged_min, nudged_max, 0.0]]).astype(F32)


# ------------------------------------------------------------ values


@pytest.mark.parametrize("num_bits", range(2, 17))
@pytest.mark.parametrize("narrow_range", [False, True])
@pytest.mark.parametrize("lo, hi", RANGES)
def test_values_equal_tensorflows_algorithm(lo, hi, num_bits, narrow_range):
    x = _inputs(lo, hi, num_bits, narrow_range)
    got = jrelu6.fake_quant(x, min=lo, max=hi, num_bits=num_bits, narrow_range=narrow_range)
    # The same level for every input, dequantized in one rounding ...
    np.testing.assert_array_equal(
        np.asarray(got), _tf_fake_quant(x, lo, hi, num_bits, narrow_range)
    )
    # ... which is within an ulp of TensorFlow's two roundings.
    _, tf_value = _tf_levels(x, lo, hi, num_bits, narrow_range)
    ulp = np.spacing(np.abs(tf_value).max())
    np.testing.assert_allclose(np.asarray(got), tf_value, rtol=0, atol=ulp)


# Worked by hand. 2 bits, min=-0.4, max=1.1: scale 0.5, zero point 0.8 -> 1,
# so the range is nudged *down* to [-0.5, 1]; min=-0.6, max=0.9: zero point
# 1.2 -> 1, nudged *up* to the same [-0.5, 1]. Half-way points round up.
HAND = [
    ((-0.4, 1.1, 2, False),
     [-1.0, -0.5, -0.26, -0.25, 0.2, 0.25, 0.74, 0.75, 1.05, 2.0],
     [-0.5, -0.5, -0.5, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0]),
    ((-0.6, 0.9, 2, False),
     [-0.6, -0.25, 0.25, 0.95, 1.2],
     [-0.5, 0.0, 0.5, 1.0, 1.0]),
    # Narrow range: levels 1..3, scale 1, zero point 2: {-1, 0, 1}.
    ((-1.0, 1.0, 2, True),
     [-2.0, -0.5, -0.4, 0.4, 0.5, 2.0],
     [-1.0, 0.0, 0.0, 0.0, 1.0, 1.0]),
    # min > 0: moved to [0, 1.5]; max < 0: moved to [-1.5, 0].
    ((0.5, 2.0, 2, False), [-1.0, 0.2, 0.25, 1.6], [0.0, 0.0, 0.5, 1.5]),
    ((-2.0, -0.5, 2, False), [-2.0, -0.75, -0.7, 1.0], [-1.5, -0.5, -0.5, 0.0]),
    # 3 bits on [0, 7]: steps of 1.
    ((0.0, 7.0, 3, False), [0.49, 0.5, 1.5, 2.5, 6.5, 7.5], [0.0, 1.0, 2.0, 3.0, 7.0, 7.0]),
]


@pytest.mark.parametrize("args, x, expected", HAND)
def test_values_worked_by_hand(args, x, expected):
    lo, hi, num_bits, narrow = args
    got = jrelu6.fake_quant(jnp.array(x), min=lo, max=hi, num_bits=num_bits, narrow_range=narrow)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected, F32))


@pytest.mark.parametrize("dtype", FLOATS)
def test_dtype_is_kept_and_16_bits_are_computed_in_float32(dtype):
    x = jnp.linspace(-3, 3, 97).astype(dtype)
    got = jrelu6.fake_quant(x, min=-2.0, max=2.5, num_bits=5)
    assert got.dtype == dtype
    expected = _tf_fake_quant(np.asarray(x, F32), -2.0, 2.5, 5).astype(dtype)
    np.testing.assert_array_equal(np.asarray(got, F32), np.asarray(expected, F32))


def test_output_takes_only_the_levels():
    x = jax.random.normal(jax.random.key(0), (4096,)) * 3
    got = np.unique(np.asarray(jrelu6.fake_quant(x, min=-1.0, max=2.0, num_bits=3)))
    assert len(got) == 8
    np.testing.assert_array_equal(got, np.unique(_tf_fake_quant(got, -1.0, 2.0, 3)))


def test_zero_is_a_level_after_nudging():
    for lo, hi in [(-0.3, 2.7), (-1.234, 5.678), (-0.01, 0.02)]:
        assert jrelu6.fake_quant(jnp.zeros(1), min=lo, max=hi)[0] == 0.0


def test_nan_stays_nan():
    assert np.isnan(jrelu6.fake_quant(jnp.array([jnp.nan]), min=0.0, max=1.0)[0])


# ------------------------------------------------------------ gradients


@pytest.mark.parametrize("num_bits, narrow_range", [(2, False), (3, True), (8, False), (16, True)])
@pytest.mark.parametrize("lo, hi", RANGES)
def test_gradients_equal_tensorflows(lo, hi, num_bits, narrow_range):
    x = _inputs(lo, hi, num_bits, narrow_range)

    def total(x, lo, hi):
        return jrelu6.fake_quant(x, min=lo, max=hi, num_bits=num_bits,
                                 narrow_range=narrow_range).sum()

    dx, dlo, dhi = jax.grad(total, argnums=(0, 1, 2))(x, lo, hi)
    tdx, tdlo, tdhi = _tf_gradients(x, lo, hi, num_bits, narrow_range)
    np.testing.assert_array_equal(np.asarray(dx), tdx)
    assert dlo == tdlo and dhi == tdhi


def test_gradient_uses_the_nudged_range():
    # [-0.4, 1.1] is nudged to [-0.5, 1]: -0.45 is inside, 1.05 is above.
    x = jnp.array([-0.6, -0.45, -0.5, 0.3, 1.0, 1.05])
    dx, dlo, dhi = jax.grad(
        lambda x, lo, hi: jrelu6.fake_quant(x, min=lo, max=hi, num_bits=2).sum(),
        argnums=(0, 1, 2),
    )(x, -0.4, 1.1)
    np.testing.assert_array_equal(np.asarray(dx), [0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    assert dlo == 1.0 and dhi == 1.0


def test_range_gradient_sums_the_cotangent():
    x = jnp.array([-3.0, -2.0, 0.0, 2.0, 3.0])
    ct = jnp.array([1.0, 2.0, 4.0, 8.0, 16.0])
    _, vjp = jax.vjp(lambda lo, hi: jrelu6.fake_quant(x, min=lo, max=hi), -1.0, 1.0)
    dlo, dhi = vjp(ct)
    assert dlo == 3.0 and dhi == 24.0


def test_infinite_cotangent_outside_the_range_gives_zero():
    x = jnp.array([-5.0, 5.0])
    got = jax.grad(lambda v: (jrelu6.fake_quant(v, min=-1.0, max=1.0) * jnp.inf).sum())(x)
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0])


def test_nan_input_gives_nan_gradient():
    x = jnp.array([jnp.nan, 0.5])
    got = jax.grad(lambda v: jrelu6.fake_quant(v, min=-1.0, max=1.0).sum())(x)
    assert np.isnan(got[0]) and got[1] == 1.0


def test_forward_and_reverse_mode_agree_for_the_range():
    x = jnp.array([-3.0, -0.2, 0.7, 4.0])
    def f(r):
        return jrelu6.fake_quant(x, min=r[0], max=r[1], num_bits=4)

    r = jnp.array([-1.0, 2.0])
    np.testing.assert_array_equal(np.asarray(jax.jacfwd(f)(r)), np.asarray(jax.jacrev(f)(r)))
    np.testing.assert_array_equal(
        np.asarray(jax.jacfwd(f)(r)), [[1, 0], [0, 0], [0, 0], [0, 1]]
    )


def test_jit_vmap_and_grad_compose():
    x = jnp.linspace(-3, 3, 41)

    def f(x, lo, hi):
        return jrelu6.fake_quant(x, min=lo, max=hi, num_bits=3)

    per_element = jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1, 2)), in_axes=(0, None, None)))
    dx, dlo, dhi = per_element(x, -1.0, 2.0)
    tdx, tdlo, tdhi = _tf_gradients(x, -1.0, 2.0, 3)
    np.testing.assert_array_equal(np.asarray(dx), tdx)
    assert float(dlo.sum()) == tdlo and float(dhi.sum()) == tdhi
    ranges = jnp.array([[-1.0, 2.0], [0.0, 1.0]])
    batched = jax.jit(jax.vmap(lambda r: f(x, r[0], r[1])))(ranges)
    np.testing.assert_array_equal(np.asarray(batched[1]), _tf_fake_quant(x, 0.0, 1.0, 3))


def test_traced_range_does_not_retrace():
    traces = []

    @jax.jit
    def f(x, lo, hi):
        traces.append(None)
        return jrelu6.fake_quant(x, min=lo, max=hi)

    for lo, hi in [(-1.0, 1.0), (-2.0, 3.0)]:
        f(jnp.ones(3), lo, hi)
    assert len(traces) == 1


# ------------------------------------------------------------ errors

ERRORS = [
    ({"x": jnp.arange(3)}, TypeError, "fake_quant: expected a floating array"),
    ({"x": [1j]}, TypeError, "fake_quant: expected a real"),
    ({"num_bits": 1}, ValueError, r"fake_quant: num_bits must be in \[2, 16\]"),
    ({"num_bits": 17}, ValueError, r"fake_quant: num_bits must be in \[2, 16\]"),
    ({"num_bits": 8.0}, TypeError, "fake_quant: num_bits must be an int"),
    ({"num_bits": True}, TypeError, "fake_quant: num_bits must be an int"),
    ({"narrow_range": 1}, TypeError, "fake_quant: narrow_range must be a bool"),
    ({"min": 1.0, "max": 1.0}, ValueError, "fake_quant: min must be less than max"),
    ({"min": 2.0, "max": 1.0}, ValueError, "fake_quant: min must be less than max"),
    ({"min": -jnp.inf}, ValueError, "fake_quant: min must be finite"),
    ({"max": jnp.nan}, ValueError, "fake_quant: max must be finite"),
    ({"max": 1e39}, ValueError, "fake_quant: max=.* float32"),
    ({"min": jnp.zeros(2)}, ValueError, "fake_quant: min must be a scalar"),
    ({"min": None}, TypeError, "fake_quant: min must be a real scalar"),
]


@pytest.mark.parametrize("kwargs, error, message", ERRORS)
def test_errors_name_the_function(kwargs, error, message):
    args = {"x": jnp.ones(2), "min": -1.0, "max": 1.0} | kwargs
    x = args.pop("x")
    with pytest.raises(error, match=f"^{message}"):
        jrelu6.fake_quant(x, **args)


def test_16_bit_input_range_is_checked_in_float32():
    # Computed in float32: a range end beyond float16's largest value (65504) is allowed.
    got = jrelu6.fake_quant(jnp.ones(2, jnp.float16), min=-1e5, max=1e5)
    assert got.dtype == jnp.float16


# ------------------------------------------------------------ quantized relu6

SCHEMES = [("affine", False), ("affine", True), ("fixed_point", False)]


@pytest.mark.parametrize("num_bits", range(2, 17))
@pytest.mark.parametrize("scheme, narrow_range", SCHEMES)
def test_zero_and_six_are_levels_for_every_width(num_bits, scheme, narrow_range):
    x = jnp.array([-1.0, 0.0, 6.0, 100.0])
    got = jrelu6.quantized_relu6(x, num_bits=num_bits, scheme=scheme, narrow_range=narrow_range)
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0, 6.0, 6.0])


@pytest.mark.parametrize("num_bits", [2, 4, 8, 12])
@pytest.mark.parametrize("narrow_range", [False, True])
def test_affine_is_fake_quant_of_relu6_on_zero_six(num_bits, narrow_range):
    x = jnp.linspace(-2, 8, 1001)
    np.testing.assert_array_equal(
        np.asarray(jrelu6.quantized_relu6(x, num_bits=num_bits, narrow_range=narrow_range)),
        _tf_fake_quant(np.asarray(jrelu6.relu6(x)), 0.0, 6.0, num_bits, narrow_range),
    )


@pytest.mark.parametrize("num_bits", [2, 3, 4, 5, 8])
def test_fixed_point_has_steps_of_two_to_the_minus_fraction_bits(num_bits):
    step = 2.0 ** -(num_bits - 3)
    x = jnp.linspace(-1, 7, 20001)
    got = np.asarray(jrelu6.quantized_relu6(x, num_bits=num_bits, scheme="fixed_point"))
    levels = np.unique(got)
    np.testing.assert_array_equal(levels, np.arange(0, 6 + step, step, dtype=F32))
    assert len(levels) <= 2**num_bits
    # Half-way points round up, as in the affine scheme.
    assert jrelu6.quantized_relu6(jnp.float32(step / 2), num_bits=num_bits,
                                  scheme="fixed_point") == step


MODES = {
    "grad": lambda f, x: jax.vmap(jax.grad(f))(x),
    "jit_grad": lambda f, x: jax.jit(jax.vmap(jax.grad(f)))(x),
    "jvp": lambda f, x: jax.jvp(f, (x,), (jnp.ones_like(x),))[1],
    "vjp": lambda f, x: jax.vjp(f, x)[1](jnp.ones_like(x))[0],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scheme, narrow_range", SCHEMES)
@pytest.mark.parametrize("g0, g6", [(0.0, 0.0), (1.0, 0.5)])
def test_quantized_relu6_keeps_relu6s_kink_settings(mode, scheme, narrow_range, g0, g6):
    def f(x):
        return jrelu6.quantized_relu6(x, num_bits=4, scheme=scheme, narrow_range=narrow_range,
                                      grad_at_zero=g0, grad_at_six=g6)

    # 1.3 and 2.9 are between levels, 1.5 is a level: straight through.
    x = jnp.array([-1.0, 0.0, 1.3, 1.5, 2.9, 6.0, 7.0])
    np.testing.assert_array_equal(
        np.asarray(MODES[mode](f, x)), [0.0, g0, 1.0, 1.0, 1.0, g6, 0.0]
    )


@pytest.mark.parametrize("fn", [jrelu6.quantized_relu6, jrelu6.quantized_hard_sigmoid,
                                jrelu6.quantized_hard_swish])
@pytest.mark.parametrize("dtype", FLOATS)
def test_quantized_functions_keep_the_dtype(fn, dtype):
    assert fn(jnp.linspace(-8, 8, 17).astype(dtype)).dtype == dtype


@pytest.mark.parametrize("fn", [jrelu6.quantized_relu6, jrelu6.quantized_hard_sigmoid,
                                jrelu6.quantized_hard_swish])
def test_quantized_functions_promote_integers_and_keep_python_scalars_weak(fn):
    assert fn(jnp.arange(-4, 8)).dtype == jnp.float32
    assert (fn(3.0) * jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("scheme", ["affine", "fixed_point"])
def test_quantized_hard_functions_are_hard_functions_of_quantized_relu6(scheme):
    x = jnp.linspace(-5, 5, 401)
    # Compiled, as the functions are (XLA divides by 6 as it multiplies by 1/6).
    gate = jax.jit(lambda x: jrelu6.quantized_relu6(x + 3, num_bits=5, scheme=scheme) / 6)
    np.testing.assert_array_equal(
        np.asarray(jrelu6.quantized_hard_sigmoid(x, num_bits=5, scheme=scheme)),
        np.asarray(gate(x)),
    )
    np.testing.assert_array_equal(
        np.asarray(jrelu6.quantized_hard_swish(x, num_bits=5, scheme=scheme)),
        np.asarray(jax.jit(lambda x: x * gate(x))(x)),
    )


@pytest.mark.parametrize("fn, exact", [(jrelu6.quantized_hard_sigmoid, jrelu6.hard_sigmoid),
                                       (jrelu6.quantized_hard_swish, jrelu6.hard_swish)])
def test_sixteen_bits_are_close_to_the_unquantized_function(fn, exact):
    x = jnp.linspace(-5, 5, 401)
    np.testing.assert_allclose(
        np.asarray(fn(x, num_bits=16)), np.asarray(exact(x)), atol=5 * 6 / 65535 / 6
    )


@pytest.mark.parametrize("g0, g6", [(0.0, 0.0), (1.0, 0.5)])
def test_quantized_hard_sigmoid_derivative_at_its_kinks(g0, g6):
    f = functools.partial(jrelu6.quantized_hard_sigmoid, grad_at_zero=g0, grad_at_six=g6)
    got = jax.vmap(jax.grad(f))(jnp.array([-4.0, -3.0, 0.1, 3.0, 4.0]))
    np.testing.assert_allclose(np.asarray(got), [0.0, g0 / 6, 1 / 6, g6 / 6, 0.0], rtol=1e-6)


def test_quantized_hard_swish_gradient_at_infinities_is_zero_and_one():
    got = jax.vmap(jax.grad(jrelu6.quantized_hard_swish))(jnp.array([-jnp.inf, jnp.inf]))
    np.testing.assert_array_equal(np.asarray(got), [0.0, 1.0])


QUANT_ERRORS = [
    ({"scheme": "log"}, ValueError, "scheme must be one of"),
    ({"scheme": "fixed_point", "narrow_range": True}, ValueError, "narrow_range applies"),
    ({"num_bits": 1}, ValueError, r"num_bits must be in \[2, 16\]"),
    ({"grad_at_zero": 1e39}, ValueError, "grad_at_zero=.*float32"),
    ({"grad_at_six": jnp.nan}, ValueError, "grad_at_six must be finite"),
]


@pytest.mark.parametrize("fn", [jrelu6.quantized_relu6, jrelu6.quantized_hard_sigmoid,
                                jrelu6.quantized_hard_swish])
@pytest.mark.parametrize("kwargs, error, message", QUANT_ERRORS)
def test_quantized_errors_name_the_function(fn, kwargs, error, message):
    with pytest.raises(error, match=f"^{fn.__name__}: {message}"):
        fn(jnp.ones(2), **kwargs)


# ------------------------------------------------------------ PyTorch


def _away_from_ties(x, nudged_min, scale):
    frac = np.mod((x - nudged_min) / scale, 1.0)
    return np.abs(frac - 0.5) > 1e-3


@pytest.mark.parity
@pytest.mark.parametrize("lo, hi, num_bits", [(-1.0, 1.0, 8), (0.0, 6.0, 8), (-0.3, 2.7, 4),
                                              (-2.0, 5.0, 3)])
def test_agrees_with_torch_away_from_ties_and_end_half_steps(lo, hi, num_bits):
    torch = pytest.importorskip("torch", reason="PyTorch parity runs where torch is installed")
    nudged_min, nudged_max, scale = _tf_nudge(lo, hi, num_bits, False)
    zero_point = round(float(-nudged_min / scale))
    x = np.random.default_rng(0).uniform(lo - 2, hi + 2, 4000).astype(F32)
    half = scale / 2
    near_ends = (np.abs(x - nudged_min) < half) | (np.abs(x - nudged_max) < half)
    x = x[_away_from_ties(x, nudged_min, scale) & ~near_ends]

    tx = torch.tensor(x, requires_grad=True)
    ty = torch.fake_quantize_per_tensor_affine(tx, float(scale), zero_point, 0, 2**num_bits - 1)
    ty.sum().backward()
    ours = jrelu6.fake_quant(x, min=lo, max=hi, num_bits=num_bits)
    np.testing.assert_allclose(np.asarray(ours), ty.detach().numpy(), rtol=0, atol=1e-5 * scale)
    dx = jax.grad(lambda v: jrelu6.fake_quant(v, min=lo, max=hi, num_bits=num_bits).sum())(x)
    np.testing.assert_array_equal(np.asarray(dx), tx.grad.numpy())


@pytest.mark.parity
def test_torch_differs_at_ties_as_documented():
    torch = pytest.importorskip("torch", reason="PyTorch parity runs where torch is installed")
    # Scale 1, zero point 0: 0.5 and 2.5 are ties. Half up: 1 and 3; half to even: 0 and 2.
    x = np.array([0.5, 2.5], F32)
    ours = jrelu6.fake_quant(x, min=0.0, max=3.0, num_bits=2)
    theirs = torch.fake_quantize_per_tensor_affine(torch.tensor(x), 1.0, 0, 0, 3)
    np.testing.assert_array_equal(np.asarray(ours), [1.0, 3.0])
    np.testing.assert_array_equal(theirs.numpy(), [0.0, 2.0])


# --- quantization_params: the affine form of the grid ---------------------------------

PARAM_RANGES = [(0.0, 6.0, 8, False), (-1.0, 1.0, 8, False), (-0.3, 2.7, 4, False),
                (-1.0, 1.0, 8, True), (0.1, 0.9, 2, False), (-5.0, -1.0, 3, False)]


@pytest.mark.parametrize("lo,hi,bits,narrow", PARAM_RANGES)
def test_quantization_params_are_tensorflows_nudged_grid(lo, hi, bits, narrow):
    scale, zero_point = jrelu6.quantization_params(min=lo, max=hi, num_bits=bits,
                                                   narrow_range=narrow)
    nudged_min, _, tf_scale = _tf_nudge(lo, hi, bits, narrow)
    assert scale.dtype == jnp.float32 and zero_point.dtype == jnp.int32
    assert float(scale) == tf_scale
    assert int(zero_point) == int(narrow) - round(float(nudged_min / tf_scale))


@pytest.mark.parametrize("lo,hi,bits,narrow", PARAM_RANGES)
def test_fake_quant_values_are_levels_of_the_params(lo, hi, bits, narrow):
    x = jax.random.uniform(jax.random.key(0), (4096,), minval=lo - 1, maxval=hi + 1)
    got = jrelu6.fake_quant(x, min=lo, max=hi, num_bits=bits, narrow_range=narrow)
    scale, zero_point = jrelu6.quantization_params(min=lo, max=hi, num_bits=bits,
                                                   narrow_range=narrow)
    z = zero_point.astype(scale.dtype)
    levels = jnp.round(got / scale) + z
    assert float(jnp.min(levels)) >= int(narrow) and float(jnp.max(levels)) <= 2**bits - 1
    np.testing.assert_array_equal(got, (levels - z) * scale)


def test_quantization_params_of_a_traced_range_equal_the_known_ones():
    traced = jax.jit(lambda lo, hi: jrelu6.quantization_params(min=lo, max=hi))(-0.37, 5.1)
    known = jrelu6.quantization_params(min=-0.37, max=5.1)
    assert (float(traced.scale), int(traced.zero_point)) == (float(known.scale),
                                                            int(known.zero_point))


@pytest.mark.parametrize("kwargs,error,message", [
    ({"min": 1.0, "max": 1.0}, ValueError, "min must be less than max"),
    ({"min": 0.0, "max": 6.0, "num_bits": 1}, ValueError, "num_bits must be in [2, 16]"),
    ({"min": 0.0, "max": float("inf")}, ValueError, "max"),
    ({"min": 0.0, "max": 6.0, "dtype": jnp.int8}, TypeError, "dtype must be a floating"),
    ({"min": 0.0, "max": 6.0, "narrow_range": 1}, TypeError, "narrow_range must be a bool"),
])
def test_quantization_params_reject_bad_input_naming_themselves(kwargs, error, message):
    with pytest.raises(error, match=r"^quantization_params: ") as info:
        jrelu6.quantization_params(**kwargs)
    assert message in str(info.value)
