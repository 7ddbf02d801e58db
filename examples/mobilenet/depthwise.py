"""Depthwise (and pointwise) 2-D convolutions that are fast on every backend.

XLA:CPU lowers a grouped convolution (``feature_group_count == channels``) to a
slow generic loop: on a 2-core CPU a 3x3 depthwise convolution of a
64x16x16x96 batch takes tens of milliseconds forward and over a hundred
forward+backward. Written as ``kh * kw`` shifted multiply-adds it is one
elementwise fusion instead, tens of times faster. On GPU and TPU the grouped
convolution is the fast one (cuDNN / the TPU convolution unit). Fastest on
CPU are three small C++ kernels (:mod:`mobilenet.native`: forward, input
gradient, kernel gradient, vectorised over channels) that XLA calls through
its FFI: 3-4x the shifted form's forward+backward, on par with PyTorch's
oneDNN kernels (``benchmarks/depthwise.py``). They are built on first use
with the machine's C++ compiler; without one the shifted form is used. Each
is a :func:`jax.experimental.custom_partitioning` op: under a batch (or
channel) sharding every device runs it on its own shard (the kernel gradient
adds the devices' partial sums), where XLA would otherwise gather the batch.

Every form follows ``lax.conv``'s rules at the edges: a geometry without
output positions gives an empty array (and zero gradients), and padding takes
part in the products, so an inf or NaN that meets only padding gives NaN.

:func:`depthwise_conv` holds the forms behind one function. With
``impl="auto"`` the choice is made per *platform of the computation*, at
lowering time, through :func:`jax.lax.platform_dependent`: the same jitted
function runs the native kernels (or, without them, the shifted form) when
compiled for CPU and the grouped convolution when compiled for GPU/TPU,
whatever ``jax.default_backend()`` says. The shifted form has its own
backward pass (a :func:`jax.custom_vjp`):

* the input gradient is again a shifted multiply-add, of the output
  gradient (dilated by the stride, padded) with the flipped kernel;
* the kernel gradient sums the output gradient times each tap's shifted
  input, all taps in one variadic reduction (one pass over the data).

Plain autodiff of the forward form would instead build the input gradient
as a sum of ``kh * kw`` padded copies.

:class:`DepthwiseConv` is the flax.linen layer, with a ``(kh, kw, 1, C)``
kernel exactly like ``nn.Conv(C, ..., feature_group_count=C)`` (same
parameter shapes, names and initialisation), so the two are interchangeable.

:class:`PointwiseConv` is the MobileNets' other convolution, the 1x1, as one
matrix product over the flattened batch and positions. XLA:CPU computes a
1x1 ``nn.Conv``'s kernel gradient as a spatial convolution over transposed
copies of the activations, about 3x slower than the matrix product's; on
GPU/TPU both are matrix products. Its parameters are a 1x1 ``nn.Conv``'s.
:class:`PatchConv` does the same for the stem, a 3x3 convolution of the 3-channel
images: one matrix product over the images' 3x3 windows (:func:`conv_patches`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from mobilenet import native
from mobilenet.native import ops

IMPLS = ("auto", "grouped", "shifted", "native")

Padding = str | Sequence[tuple[int, int]]


def _pair(value: int | Sequence[int], name: str, *, caller: str = "depthwise_conv"
          ) -> tuple[int, int]:
    """``value`` as a pair of positive ints (an int is used for both axes)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{caller}: {name} must be a positive int or a pair of them, "
                         f"got {value!r}")
    return pair  # type: ignore[return-value]


def _explicit_padding(
    padding: Padding, spatial: tuple[int, int], window: tuple[int, int],
    strides: tuple[int, int], *, caller: str = "depthwise_conv",
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``padding`` ("SAME", "VALID" or explicit pairs) as ((lo, hi), (lo, hi))."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{caller}: padding must be 'SAME', 'VALID' or two "
                             f"(low, high) pairs, got {padding!r}")
        pads = lax.padtype_to_pads(spatial, window, strides, padding.upper())
    else:
        pads = [tuple(p) for p in padding]
    if len(pads) != 2 or not all(len(p) == 2 and all(isinstance(v, int) for v in p)
                                 for p in pads):
        raise ValueError(f"{caller}: padding must be 'SAME', 'VALID' or two "
                         f"(low, high) pairs of ints, got {padding!r}")
    return (tuple(pads[0]), tuple(pads[1]))  # type: ignore[return-value]


# --- the two forms ------------------------------------------------------------


def _grouped(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             pads: tuple[tuple[int, int], tuple[int, int]], out_dtype: Any) -> jax.Array:
    """The grouped convolution, as ``nn.Conv(..., feature_group_count=C)`` runs it."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
        preferred_element_type=None if out_dtype == x.dtype else out_dtype,
    )


def _taps(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
          out_hw: tuple[int, int]):
    """Yields ``(i, j, view)``: the strided view of (padded) ``x`` under tap ``(i, j)``."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    n, _, _, c = x.shape
    for i in range(kh):
        for j in range(kw):
            yield i, j, lax.slice(x, (0, i, j, 0),
                                  (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                                  (1, sh, sw, 1))


def accumulator_dtype(dtype: Any) -> Any:
    """The dtype to accumulate ``dtype`` values in: float32 for half precision, else ``dtype``.

    Examples:
      >>> accumulator_dtype(jnp.bfloat16), accumulator_dtype(jnp.float32)
      (dtype('float32'), dtype('float32'))
    """
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def rounded(x: jax.Array, dtype: Any) -> jax.Array:
    r"""``x`` rounded to ``dtype``'s values and kept in ``x``'s dtype, with the identity as
    its derivative (straight through); ``x`` itself when the two dtypes are one.

    Between a float32 batch norm and an activation of a bfloat16 network it gives the
    activation bfloat16 inputs (the kinks where a bfloat16 network has them) while the
    cotangent stays float32: autodiff of ``x.astype(dtype).astype(x.dtype)`` would round
    the cotangent to ``dtype`` and widen it again (XLA:CPU gives the widening a pass).

    Examples:
      >>> x = jnp.float32(1 + 2 ** -10)
      >>> rounded(x, jnp.bfloat16), jax.grad(rounded)(x, jnp.bfloat16)
      (Array(1., dtype=float32), Array(1., dtype=float32))
    """
    return x if jnp.dtype(dtype) == x.dtype else _straight_through_round(x, jnp.dtype(dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _straight_through_round(x: jax.Array, dtype: Any) -> jax.Array:
    return x.astype(dtype).astype(x.dtype)


@_straight_through_round.defjvp
def _straight_through_round_jvp(dtype, primals, tangents):
    return _straight_through_round(primals[0], dtype), tangents[0]


def global_pool(x: jax.Array) -> jax.Array:
    """The spatial mean of an NHWC batch, accumulated in :func:`accumulator_dtype`, returned
    in ``x``'s dtype: ``(N, C)``."""
    return jnp.mean(x.astype(accumulator_dtype(x.dtype)), axis=(1, 2)).astype(x.dtype)


def _out_size(size: int, window: int, stride: int) -> int:
    return max(0, (size - window) // stride + 1)


def _out_shape(shape, window, strides, pads) -> tuple[int, int, int, int]:
    """The output's shape (N, H', W', C) for an input of ``shape``; H' or W' may be 0."""
    n, h, w, c = shape
    return (n, _out_size(h + sum(pads[0]), window[0], strides[0]),
            _out_size(w + sum(pads[1]), window[1], strides[1]), c)


def _empty(x: jax.Array, kernel: jax.Array, strides, pads, out_dtype: Any) -> jax.Array:
    """The empty output of a geometry without output positions (or images, or channels).

    It depends on neither argument, so both gradients are zeros (an empty sum).
    """
    return jnp.zeros(_out_shape(x.shape, kernel.shape[:2], strides, pads), out_dtype)


def _valid_shifted(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """VALID depthwise correlation of already padded ``xp`` as shifted multiply-adds.

    Accumulates in float32 for half-precision inputs and returns ``xp``'s dtype.
    """
    kh, kw = kernel.shape[:2]
    out_hw = (_out_size(xp.shape[1], kh, strides[0]), _out_size(xp.shape[2], kw, strides[1]))
    acc_dtype = accumulator_dtype(xp.dtype)
    taps = kernel.reshape(kh, kw, -1).astype(acc_dtype)
    out = None
    for i, j, view in _taps(xp, (kh, kw), strides, out_hw):
        term = view.astype(acc_dtype) * taps[i, j]
        out = term if out is None else out + term
    return out.astype(xp.dtype)


def _pad_input(x: jax.Array, pads) -> jax.Array:
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Depthwise correlation as ``kh * kw`` shifted multiply-adds (fast on XLA:CPU)."""
    return _valid_shifted(_pad_input(x, pads), kernel, strides)


def _shifted_to(x: jax.Array, kernel: jax.Array, strides, pads, out_dtype: Any) -> jax.Array:
    """:func:`_shifted` with an ``out_dtype`` result: for a wider one, the same sums of
    the same (exact) products on widened copies."""
    if out_dtype != x.dtype:
        x, kernel = x.astype(out_dtype), kernel.astype(out_dtype)
    return _shifted(x, kernel, strides, pads)


def _shifted_fwd(x, kernel, strides, pads):
    return _shifted(x, kernel, strides, pads), (x, kernel)


def _shifted_bwd(strides, pads, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (sh, sw), (h, w) = strides, x.shape[1:3]
    ho, wo = g.shape[1:3]
    # Input gradient: dx[a] = sum_i g_dilated[a + lo - i] * k[i] (per axis), i.e. a VALID
    # correlation of the stride-dilated, padded output gradient with the flipped kernel.
    # low = kh - 1 - lo; high makes the padded length h + kh - 1 (either may be < 0: crop).
    dilated = (sh * (ho - 1) + 1, sw * (wo - 1) + 1)
    lows = (kh - 1 - pads[0][0], kw - 1 - pads[1][0])
    highs = (h + kh - 1 - lows[0] - dilated[0], w + kw - 1 - lows[1] - dilated[1])
    zero = jnp.zeros((), g.dtype)
    gp = lax.pad(g, zero, ((0, 0, 0), (lows[0], highs[0], sh - 1),
                           (lows[1], highs[1], sw - 1), (0, 0, 0)))
    dx = _valid_shifted(gp, kernel[::-1, ::-1], (1, 1)).astype(x.dtype)
    # Kernel gradient: dk[i, j] = sum over batch and positions of g * (tap (i, j) view of x).
    # One variadic reduction computes all taps in a single pass over x and g (separate
    # jnp.sums would each materialise their shifted view of x first: ~10x slower on CPU);
    # it sums over the positions, then a small reduction sums over the batch.
    xp = _pad_input(x, pads)
    acc_dtype = accumulator_dtype(g.dtype)
    g_acc = g.astype(acc_dtype)
    products = tuple(view.astype(acc_dtype) * g_acc
                     for _, _, view in _taps(xp, (kh, kw), strides, (ho, wo)))
    zeros = tuple(jnp.zeros((), acc_dtype) for _ in products)
    per_image = lax.reduce(products, zeros, _add_tuples, (1, 2))
    dk = jnp.stack([jnp.sum(p, axis=0) for p in per_image])
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


def _add_tuples(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return tuple(u + v for u, v in zip(a, b))


_shifted.defvjp(_shifted_fwd, _shifted_bwd)


# --- the native CPU kernels ---------------------------------------------------------


def _native_supported(pads) -> bool:
    """Whether the native kernels take this case: padding >= 0, kernels built and loaded."""
    return all(p >= 0 for pair in pads for p in pair) and native.available()


# The element types the native kernels compute in; any other is cast to float32 around them.
NATIVE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def _native_any_dtype(x: jax.Array, kernel: jax.Array, strides, pads, out_dtype: Any
                      ) -> jax.Array:
    """:func:`_native` with an ``out_dtype`` result: float32 and bfloat16 arrays as they
    are (the kernels read and write both, summing in float32; a bfloat16 input may have
    a float32 result), others through float32 copies."""
    if (x.dtype in NATIVE_DTYPES and kernel.dtype == x.dtype
            and out_dtype in (x.dtype, jnp.dtype(jnp.float32))):
        return _native(x, kernel, strides, pads, out_dtype)
    wide = _native(x.astype(jnp.float32), kernel.astype(jnp.float32), strides, pads,
                   jnp.dtype(jnp.float32))
    return wide.astype(out_dtype)


def _ffi_call(target: str, shape: Sequence[int], dtype: Any, strides, pads, *operands
              ) -> jax.Array:
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tuple(shape), dtype))
    return call(*operands, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
                pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]))


# Each kernel's factors for Shardy: n batch, c channels; the spatial and window axes
# (h w: input, p q: output, i j: window) stay whole.
_SHARDING_RULES = {
    "jrelu6_depthwise_forward": "n h w c, i j c -> n p q c",
    "jrelu6_depthwise_kernel_grad": "n h w c, n p q c -> i j c",
    "jrelu6_depthwise_input_grad": "n p q c, i j c -> n h w c",
}


@functools.cache
def _native_op(target: str, strides, pads, static_shape: tuple[int, ...], out_dtype: Any
               ) -> Callable:
    """The native kernel ``target`` as an op that XLA partitions by batch and channels.

    Each kernel is independent per image and per channel, so under a sharded batch
    (or sharded channels) every device runs it on its own shard: the forward and
    input-gradient outputs are sharded like their inputs, and the kernel gradient,
    a sum over the batch, is each device's partial sum added up across the batch's
    mesh axes. Without a partitioning rule XLA would gather the whole batch onto
    every device around each call. ``static_shape`` is what the output's shape
    needs besides the operands': the kernel window (forward), the input's
    ``(H, W)`` (input gradient) or nothing (kernel gradient: its window is in
    ``static_shape`` too); ``out_dtype`` is the result's (float32 for the kernel
    gradient, a sum over the batch: the shards' partial sums too).
    """
    kernel_grad = target == "jrelu6_depthwise_kernel_grad"

    def body(a: jax.Array, b: jax.Array) -> jax.Array:  # Shapes are per-device shapes.
        n, c = a.shape[0], a.shape[3]
        if target == "jrelu6_depthwise_forward":
            shape = _out_shape(a.shape, static_shape, strides, pads)
        elif kernel_grad:
            shape = (*static_shape, c)
        else:
            shape = (n, *static_shape, c)
        return _ffi_call(target, shape, out_dtype, strides, pads, a, b)

    def shardings(mesh, arg_shapes):
        batch, _, _, channels = ops.spec_of(arg_shapes[0].sharding, 4)
        image = NamedSharding(mesh, PartitionSpec(batch, None, None, channels))
        taps = NamedSharding(mesh, PartitionSpec(None, None, channels))
        return batch, image, taps

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        batch, image, taps = shardings(mesh, arg_shapes)
        if not kernel_grad:
            return mesh, body, image, (image, taps)
        return mesh, ops.summed_over(batch, body), taps, (image, image)

    def infer(mesh, arg_shapes, result_shape):  # For the GSPMD partitioner.
        del result_shape
        _, image, taps = shardings(mesh, arg_shapes)
        return taps if kernel_grad else image

    op = custom_partitioning(body)
    rule = _SHARDING_RULES[target]
    whole = ops.factors(rule, but=("n", "c"))
    op.def_partition(partition, infer_sharding_from_operands=infer,
                     propagate_user_sharding=None, sharding_rule=rule,
                     reduction_factors=("n",) if kernel_grad else (),
                     need_replication_factors=whole)
    return ops.sequential_vmap(op)


def _native_call(target: str, static_shape: Sequence[int], strides, pads, out_dtype: Any,
                 a: jax.Array, b: jax.Array) -> jax.Array:
    return _native_op(target, strides, pads, tuple(static_shape), jnp.dtype(out_dtype))(a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _native(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
            pads: tuple[tuple[int, int], tuple[int, int]], out_dtype: Any) -> jax.Array:
    """Depthwise correlation by the native C++ kernels (:mod:`mobilenet.native`), its
    float32 sums returned in ``out_dtype``."""
    (kh, kw), c = kernel.shape[:2], x.shape[3]
    return _native_call("jrelu6_depthwise_forward", (kh, kw), strides, pads, out_dtype, x,
                        kernel.reshape(kh, kw, c))


def _native_fwd(x, kernel, strides, pads, out_dtype):
    return _native(x, kernel, strides, pads, out_dtype), (x, kernel)


def _native_bwd(strides, pads, out_dtype, residuals, g):
    del out_dtype  # g's dtype: the kernels read it as it is.
    x, kernel = residuals
    kh, kw, _, c = kernel.shape
    dx = _native_call("jrelu6_depthwise_input_grad", x.shape[1:3], strides, pads, x.dtype, g,
                      kernel.reshape(kh, kw, c))
    dk = _native_call("jrelu6_depthwise_kernel_grad", (kh, kw), strides, pads, jnp.float32,
                      x, g)
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


_native.defvjp(_native_fwd, _native_bwd)


def _checked_geometry(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int],
                      padding: Padding, impl: str) -> tuple[tuple[int, int], Any]:
    """:func:`depthwise_conv`'s arguments checked: its strides pair and explicit padding."""
    if impl not in IMPLS:
        raise ValueError(f"depthwise_conv: impl must be one of {IMPLS}, got {impl!r}")
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[3]:
        raise ValueError(f"depthwise_conv: need x (N, H, W, C) and kernel (kh, kw, 1, C), got "
                         f"x {x.shape} and kernel {kernel.shape}")
    pair = _pair(strides, "strides")
    return pair, _explicit_padding(padding, x.shape[1:3], kernel.shape[:2], pair)


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    impl: str = "auto",
    preferred_element_type: Any = None,
) -> jax.Array:
    """Depthwise 2-D convolution (cross-correlation, as ``lax.conv``) of an NHWC batch.

    Equal, up to float rounding, to ``lax.conv_general_dilated(x, kernel, strides,
    padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=C)``.

    Args:
      x: the input, shape ``(N, H, W, C)``.
      kernel: ``(kh, kw, 1, C)`` (flax's depthwise ``nn.Conv`` layout) in ``x``'s dtype.
      strides: an int or a pair.
      padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``.
      impl: ``"grouped"`` (the grouped convolution: fast on GPU/TPU, slow on
        XLA:CPU), ``"shifted"`` (``kh * kw`` shifted multiply-adds of XLA ops
        with a matching custom backward pass: fast on CPU), ``"native"`` (the
        C++ kernels of :mod:`mobilenet.native` through XLA's FFI, CPU only, on
        float32 and bfloat16 arrays as they are (other dtypes through float32
        copies): fastest on CPU; padding must be >= 0) or ``"auto"`` (on CPU
        native where its kernels could be built, else shifted; grouped
        elsewhere; chosen at lowering time, so it follows the device the
        jitted function runs on).
      preferred_element_type: the result's dtype (``None``: ``x``'s), as in
        ``lax.conv``: float32 for bfloat16 operands gives their products' float32
        sums unrounded, and takes a float32 cotangent as it is.

    Returns:
      ``(N, H', W', C)`` in ``preferred_element_type`` (``None``: ``x``'s dtype).

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 4, 4, 2))
      >>> k = jnp.ones((3, 3, 1, 2))
      >>> depthwise_conv(x, k, strides=2)[0, :, :, 0]
      Array([[9., 6.],
             [6., 4.]], dtype=float32)
    """
    strides, pads = _checked_geometry(x, kernel, strides, padding, impl)
    out = x.dtype if preferred_element_type is None else jnp.dtype(preferred_element_type)
    if 0 in _out_shape(x.shape, kernel.shape[:2], strides, pads):
        # Nothing to compute (lax.conv's answer too): an empty array whose gradients
        # are zeros, in every form (the shifted and native forms cannot express it).
        return _empty(x, kernel, strides, pads, out)
    forms = {name: functools.partial(form, strides=strides, pads=pads, out_dtype=out)
             for name, form in (("grouped", _grouped), ("shifted", _shifted_to),
                                ("native", _native_any_dtype))}
    if impl == "native" and not _native_supported(pads):
        raise ValueError(
            f"depthwise_conv: impl='native' needs padding >= 0 and the native kernels "
            f"({native.unavailable_reason() or 'available'}); got padding {pads}")
    if impl != "auto":
        return forms[impl](x, kernel)
    cpu = forms["native"] if _native_supported(pads) else forms["shifted"]
    return lax.platform_dependent(x, kernel, cpu=cpu, default=forms["grouped"])


class DepthwiseConv(nn.Module):
    """A depthwise 2-D convolution layer (one ``kh x kw`` filter per channel).

    Parameter names, shapes (``kernel``: ``(kh, kw, 1, features)``, ``bias``:
    ``(features,)``) and default initialisers are those of
    ``nn.Conv(features, kernel_size, feature_group_count=features)``; the
    computation is :func:`depthwise_conv`, fast on CPU as well.

    Attributes:
      features: the number of channels, in and out.
      kernel_size: ``(kh, kw)``.
      strides: an int or a pair.
      padding: ``"SAME"``, ``"VALID"`` or ``((lo, hi), (lo, hi))``.
      use_bias: whether to add a bias.
      impl: ``"auto"``, ``"grouped"`` or ``"shifted"`` (see :func:`depthwise_conv`).
      dtype: the compute dtype (``None``: the input's).
      param_dtype: the parameters' dtype.
      preferred_element_type: the output dtype (``None``: ``dtype``; see
        :func:`depthwise_conv`).
      kernel_init: the kernel initialiser.
      bias_init: the bias initialiser.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    preferred_element_type: Any = None
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.features:
            raise ValueError(f"DepthwiseConv: expected {self.features} input channels, "
                             f"got shape {x.shape}")
        kernel = self.param("kernel", self.kernel_init,
                            (*self.kernel_size, 1, self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = depthwise_conv(x, kernel, strides=self.strides, padding=self.padding,
                           impl=self.impl, preferred_element_type=self.preferred_element_type)
        if bias is not None:
            y = y + bias
        return y


def _contract(a: jax.Array, b: jax.Array, dims: tuple[int, int], dtype: Any) -> jax.Array:
    """The 2-D product of ``a`` and ``b`` over axis ``dims[0]`` of ``a`` and ``dims[1]``
    of ``b``, with ``a``'s dtype's products summed (and returned) in ``dtype``."""
    return lax.dot_general(a, b, (((dims[0],), (dims[1],)), ((), ())),
                           preferred_element_type=dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_matmul(x: jax.Array, kernel: jax.Array, dtype: Any) -> jax.Array:
    r"""``x @ kernel`` from ``x``'s low-precision values, summed and returned in ``dtype``.

    For an ``(M, K)`` input in bfloat16, a ``(K, N)`` kernel (any float dtype; it is
    rounded to ``x``'s) and ``dtype=float32``:

    .. math:: y_{mn} = \sum_k x_{mk}\, \mathrm{bf16}(w_{kn}) \quad \text{in float32.}

    The backward pass is of the same kind: the float32 cotangent is rounded to ``x``'s
    dtype once, and both gradients are bfloat16 products summed in float32; the input's
    is returned in ``x``'s dtype, the kernel's in ``kernel``'s (float32 parameters get a
    gradient that was never rounded to bfloat16). On a CPU with bfloat16 arithmetic
    (AVX512-BF16 on a Zen 4 EPYC) XLA:CPU hands the forward and input-gradient products
    to YNNPACK as they are, 1.2-2.4x as fast as float32 ones at MobileNet shapes
    (``benchmarks/cpu_products.py``), where a bfloat16 ``jnp.matmul`` (bfloat16 result)
    is converted to float32 around a float32 product, slower than float32. The kernel
    gradient, summed over the rows, XLA:CPU would compute in its own dot on float32
    copies of both operands; on CPU it is a native kernel that reads them as they are
    (:mod:`mobilenet.native`, ``pointwise.cc``) where the kernels are built.
    Plain autodiff of ``lax.dot(..., preferred_element_type=float32)`` would compute
    both gradients in float32.

    Examples:
      >>> x = jnp.array([[1.0, 2.0]], jnp.bfloat16)
      >>> mixed_matmul(x, jnp.array([[3.0], [4.0]]), jnp.float32)
      Array([[11.]], dtype=float32)
    """
    return _contract(x, kernel.astype(x.dtype), (1, 0), dtype)


def _mixed_matmul_fwd(x, kernel, dtype):
    return mixed_matmul(x, kernel, dtype), (x, kernel)


def _mixed_matmul_bwd(dtype, residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    dx = _contract(g, kernel.astype(x.dtype), (1, 1), dtype)
    dkernel = _rows_product(x, g, dtype)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def _rows_product(x: jax.Array, g: jax.Array, dtype: Any) -> jax.Array:
    """``x.T @ g`` in ``dtype``, a 1x1 convolution's kernel gradient: on CPU by the native
    kernel (:mod:`mobilenet.native`) for bfloat16 operands and a float32 result, where it
    is built (a CPU with AVX512-BF16); XLA's dot otherwise (on CPU a float32 dot on
    float32 copies of both)."""
    xla = functools.partial(_contract, dims=(0, 0), dtype=dtype)
    if not (x.dtype == g.dtype == jnp.bfloat16 and jnp.dtype(dtype) == jnp.float32
            and native.has_pointwise_kernel_grad()):
        return xla(x, g)
    return lax.platform_dependent(x, g, cpu=_rows_product_op(), default=xla)


@functools.cache
def _rows_product_op() -> Callable:
    """The native ``x.T @ g`` as an op that XLA partitions by rows: each device sums its
    own rows (its shard of the batch) and the partial sums are added across devices."""
    return ops.row_sum_op(
        "jrelu6_pointwise_kernel_grad",
        lambda x, g: jax.ShapeDtypeStruct((x.shape[1], g.shape[1]), jnp.float32),
        rule="k m, k n -> m n")


class PointwiseConv(nn.Module):
    """A 1x1 convolution (stride 1) computed as one matrix product.

    Parameter names, shapes (``kernel``: ``(1, 1, in, features)``, ``bias``:
    ``(features,)``) and default initialisers are those of
    ``nn.Conv(features, (1, 1))``.

    With ``preferred_element_type=float32`` and a half-precision ``dtype`` the product is
    :func:`mixed_matmul`'s: half-precision products summed and returned in float32 (no
    rounding to ``dtype`` between the product and a float32 batch norm), with a backward
    pass of the same kind.

    Attributes:
      features: the output channels.
      use_bias: whether to add a bias.
      dtype: the compute dtype (``None``: the input's).
      preferred_element_type: the output dtype (``None``: ``dtype``).
      param_dtype: the parameters' dtype.
      kernel_init: the kernel initialiser.
      bias_init: the bias initialiser.
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    preferred_element_type: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self._product(x, (1, 1, x.shape[-1]))

    def _product(self, x: jax.Array, window: tuple[int, int, int]) -> jax.Array:
        """``x @ kernel`` over ``x``'s last axis, with the layer's ``(*window, features)``
        kernel (``x``'s last axis: the window's values in the kernel's order) and bias."""
        kernel = self.param("kernel", self.kernel_init, (*window, self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        kernel = kernel.reshape(-1, self.features)
        inputs, dtype = kernel.shape[0], self.preferred_element_type
        # A 2-D product: its gradients are plain matrix products too (a dot_general on
        # the 4-D array makes XLA:CPU transpose the activations first).
        if dtype is None or jnp.dtype(dtype) == nn.dtypes.canonicalize_dtype(x, dtype=self.dtype):
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
            y = jnp.matmul(x.reshape(-1, inputs), kernel)
        else:
            (x,) = nn.dtypes.promote_dtype(x, dtype=self.dtype)
            y = mixed_matmul(x.reshape(-1, inputs), kernel, jnp.dtype(dtype))
            bias = None if bias is None else bias.astype(y.dtype)
        y = y.reshape(*x.shape[:-1], self.features)
        if bias is not None:
            y = y + bias
        return y


def conv_patches(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                 pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    r"""Each output position's input window of a ``(N, H, W, C)`` batch, flattened:
    ``(N, H', W', kh * kw * C)``, the taps in the order of an HWIO kernel's rows, so that

    .. math:: \mathrm{conv}(x, w)_{nhw} = \mathrm{patches}(x)_{nhw} \cdot
              \mathrm{reshape}(w, (k_h k_w C, F)).

    Examples:
      >>> conv_patches(jnp.arange(3.0).reshape(1, 1, 3, 1), (1, 2), (1, 1),
      ...              ((0, 0), (0, 0)))[0, 0]
      Array([[0., 1.],
             [1., 2.]], dtype=float32)
    """
    n, _, _, c = x.shape
    xp = _pad_input(x, pads)
    out_hw = (_out_size(xp.shape[1], window[0], strides[0]),
              _out_size(xp.shape[2], window[1], strides[1]))
    if 0 in out_hw:
        return jnp.zeros((n, *out_hw, window[0] * window[1] * c), x.dtype)
    return jnp.concatenate([view for _, _, view in _taps(xp, window, strides, out_hw)], -1)


class PatchConv(PointwiseConv):
    """A ``kernel_size`` convolution computed as one matrix product over its input
    windows (:func:`conv_patches`): a MobileNet's stem, a 3x3 convolution of 3 channels.

    XLA:CPU runs that convolution, and its kernel gradient (a convolution over
    transposed copies of the images and the cotangent), slower than the product
    (``benchmarks/stem_conv.py``). The windows take ``kh * kw`` times the input's
    memory (27 values a pixel for the stem). Parameters are those of
    ``nn.Conv(features, kernel_size)``; the product, dtypes and bias are
    :class:`PointwiseConv`'s.

    Attributes:
      kernel_size: the window ``(kh, kw)``.
      strides: an int or a pair.
      padding: "SAME", "VALID" or two ``(low, high)`` pairs.
    """

    kernel_size: tuple[int, int] = (3, 3)
    strides: int | tuple[int, int] = 1
    padding: Padding = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window = _pair(self.kernel_size, "kernel_size", caller="PatchConv")
        strides = _pair(self.strides, "strides", caller="PatchConv")
        if x.ndim != 4:
            raise ValueError(f"PatchConv: need an (N, H, W, C) input, got shape {x.shape}")
        pads = _explicit_padding(self.padding, x.shape[1:3], window, strides,
                                 caller="PatchConv")
        return self._product(conv_patches(x, window, strides, pads), (*window, x.shape[-1]))
