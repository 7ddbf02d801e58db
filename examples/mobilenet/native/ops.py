"""The native kernels as JAX operations: partitioned over devices, and under ``vmap``.

A custom call is opaque to XLA's partitioner: without a rule, XLA gathers every
operand whole onto each device around it. :func:`row_sum_op` gives the kernels
that sum over their operands' leading axis (the batch's rows) the rule they
need: each device sums its own rows and the partial sums are added across the
devices' mesh axes (one all-reduce). :mod:`mobilenet.depthwise` builds its
depthwise kernels' rules from :func:`spec_of`, :func:`summed_over` and
:func:`sequential_vmap` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec


def spec_of(sharding: Any, ndim: int) -> tuple[Any, ...]:
    """A sharding's PartitionSpec padded to ``ndim`` entries (replicated if not named)."""
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    return spec + (None,) * (ndim - len(spec))


def factors(rule: str, *, but: tuple[str, ...]) -> tuple[str, ...]:
    """The factor names of the Shardy ``rule`` other than ``but``, in order of appearance.

    Example:
      >>> factors("n h w c, i j c -> n p q c", but=("n", "c"))
      ('h', 'w', 'i', 'j', 'p', 'q')
    """
    names = rule.replace(",", " ").split()
    return tuple(dict.fromkeys(f for f in names if f not in (*but, "->")))


def summed_over(axes: Any, body: Callable) -> Callable:
    """``body`` (a sum over a sharded axis) followed by the sum of the devices' partial
    results over the mesh axes ``axes`` (a name, a tuple of names or ``None``)."""
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)

    def summed(*operands: jax.Array) -> Any:
        partial = body(*operands)
        return lax.psum(partial, axes) if axes else partial

    return summed


def sequential_vmap(op: Callable) -> Callable:
    """``op`` under :func:`jax.vmap` as a loop over the mapped axis (the kernels take
    unbatched arrays)."""
    op = jax.custom_batching.custom_vmap(op)

    @op.def_vmap
    def _rule(axis_size, in_batched, *operands):
        del axis_size
        mapped = [a for a, batched in zip(operands, in_batched) if batched]

        def one(slices):
            rest = iter(slices)
            return op(*(next(rest) if batched else a for a, batched in zip(operands, in_batched)))

        out = lax.map(one, mapped)
        return out, jax.tree.map(lambda _: True, out)

    return op


def row_sum_op(target: str, results: Callable[..., Any], *, rule: str) -> Callable:
    """The FFI kernel ``target`` as an op that sums over its operands' leading axis.

    Args:
      target: the registered custom-call target.
      results: ``results(*operands)``: the ``jax.ShapeDtypeStruct`` (or tuple of them)
        of the kernel's results for unsharded operands of those shapes.
      rule: the Shardy sharding rule, with ``k`` for the summed rows (operands of two
        or more axes lead with it; one-axis operands are replicated), e.g.
        ``"k m, k n -> m n"``.

    Returns:
      A function of the operands: under a row-sharded mesh each device runs the kernel
      on its rows and the results are all-reduced over the rows' mesh axes; under
      :func:`jax.vmap`, a loop.
    """

    def body(*operands: jax.Array) -> Any:
        return jax.ffi.ffi_call(target, results(*operands))(*operands)

    def replicated(mesh, shapes):
        return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), shapes)

    def partition(mesh, arg_shapes, result_shape):
        rows = spec_of(arg_shapes[0].sharding, arg_shapes[0].ndim)[0]
        by_rows = tuple(NamedSharding(mesh, PartitionSpec(rows, *[None] * (a.ndim - 1)))
                        if a.ndim > 1 else NamedSharding(mesh, PartitionSpec())
                        for a in arg_shapes)
        return mesh, summed_over(rows, body), replicated(mesh, result_shape), by_rows

    def infer(mesh, arg_shapes, result_shape):  # For the GSPMD partitioner.
        del arg_shapes
        return replicated(mesh, result_shape)

    op = custom_partitioning(body)
    op.def_partition(partition, infer_sharding_from_operands=infer,
                     propagate_user_sharding=None, sharding_rule=rule,
                     reduction_factors=("k",), need_replication_factors=factors(rule, but=("k",)))
    return sequential_vmap(op)
