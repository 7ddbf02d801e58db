"""Counting the inputs that land exactly on a kink, where the derivative is a convention.

relu6's derivative at ``x == 0`` and ``x == 6`` is whatever the library says it
is, so the choice only matters for the inputs that are *exactly* 0 or 6. In
float32 these are rare; in bfloat16 (spacing 1/32 near 6) they are not. This
module counts them:

* :func:`boundary_hits` counts them in one array, inside or outside ``jit``;
* the Flax modules of :mod:`jrelu6.linen` and :mod:`jrelu6.nnx` record the
  counts of their own input, per layer, when asked to (and cost nothing
  otherwise);
* :func:`summarize_boundary_hits` and :func:`format_boundary_hits` turn the
  recorded counts into per-layer rows and a markdown table.

Counts are integer sums computed on the device: no host callback, no float
accumulation, exact for any array size below ``2**31`` elements per call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jrelu6._validation import check_array, check_scalar

#: The linen collection and the variable name under which modules record counts.
COLLECTION = "boundary_hits"


class BoundaryHits(NamedTuple):
    """How many inputs of a capped ReLU sat exactly on each kink.

    A NamedTuple of integer scalars (jax arrays, int32 unless
    ``jax_enable_x64`` is on), so it is a pytree: it passes through ``jit``,
    can be sown into a Flax collection and summed layer by layer.

    Args:
      at_zero: the number of inputs equal to 0 (``-0.0`` included).
      at_cap: the number of inputs equal to the cap (6 for relu6; for
        hard_sigmoid and hard_swish, inputs ``x`` with ``x + 3 == 6``).
      total: the number of inputs counted.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> hits = jrelu6.boundary_hits(jnp.array([0.0, 6.0, 6.0, 2.0]))
      >>> [int(n) for n in hits]
      [1, 2, 4]
    """

    at_zero: jax.Array
    at_cap: jax.Array
    total: jax.Array


def _count_dtype() -> np.dtype:
    """The default integer dtype: int32, or int64 under ``jax_enable_x64``."""
    return jnp.result_type(int)


@jax.jit
def _count(x: jax.Array, cap: ArrayLike, shift: ArrayLike) -> BoundaryHits:
    """Counts on ``x + shift``, computed in ``x.dtype`` as the activations compute it."""
    dtype = _count_dtype()
    z = x + jnp.asarray(shift, x.dtype)
    return BoundaryHits(
        at_zero=jnp.sum(z == jnp.zeros((), x.dtype), dtype=dtype),
        at_cap=jnp.sum(z == jnp.asarray(cap, x.dtype), dtype=dtype),
        total=jnp.asarray(x.size, dtype),
    )


def boundary_hits(
    x: ArrayLike,
    *,
    cap: ArrayLike = 6.0,
    shift: ArrayLike = 0.0,
) -> BoundaryHits:
    r"""Counts the inputs that land exactly on the kinks of a capped ReLU.

    With :math:`z = x + s` computed in ``x``'s dtype (as the activations
    compute it), returns

    .. math::
        \#\{z = 0\}, \qquad \#\{z = c\}, \qquad \#\{z\}

    the inputs at which the derivative is ``grad_at_zero``, ``grad_at_six``
    (or ``grad_at_cap``) rather than 0 or 1. :func:`hard_sigmoid` and
    :func:`hard_swish` apply relu6 to ``x + 3``: pass ``shift=3`` to count
    their kinks (``x == -3`` and ``x == 3``, after rounding ``x + 3``).

    The counts are integer sums on the device: the function works under
    ``jit``, ``vmap`` and on sharded arrays, with no host callback. NaN
    counts as neither kink. Integer inputs are counted as the default float
    type, as :func:`hard_sigmoid` would see them.

    Args:
      x: a real floating or integer array.
      cap: the upper kink :math:`c` (default 6: relu6), a real scalar > 0,
        compared in ``x``'s dtype.
      shift: :math:`s`, added to ``x`` before counting (default 0; 3 for
        hard_sigmoid and hard_swish), a real scalar.

    Returns:
      A :class:`BoundaryHits` of integer scalars ``(at_zero, at_cap, total)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jrelu6
      >>> x = jnp.array([-1.0, 0.0, 0.0, 3.0, 6.0, 7.0])
      >>> jrelu6.boundary_hits(x)
      BoundaryHits(at_zero=Array(2, dtype=int32), at_cap=Array(1, dtype=int32),
                   total=Array(6, dtype=int32))
      >>> jax.jit(lambda x: jrelu6.boundary_hits(x, shift=3.0))(x).at_cap  # hard_swish
      Array(1, dtype=int32)
      >>> # bfloat16 rounds 6.01 to 6, so relu6 takes the kink's derivative there:
      >>> int(jrelu6.boundary_hits(jnp.array([6.01], jnp.bfloat16)).at_cap)
      1

    See also:
      :func:`summarize_boundary_hits` for the per-layer counts recorded by
      the Flax modules, :func:`relu6`.
    """
    x = check_array("boundary_hits", x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(jnp.result_type(float))
    cap = check_scalar("boundary_hits", "cap", cap, positive=True, dtype=x.dtype)
    shift = check_scalar("boundary_hits", "shift", shift, dtype=x.dtype)
    return _count(x, cap, shift)


def zero_hits() -> BoundaryHits:
    """``BoundaryHits(0, 0, 0)``: the start of a running sum."""
    zero = jnp.zeros((), _count_dtype())
    return BoundaryHits(zero, zero, zero)


def add_hits(a: BoundaryHits, b: BoundaryHits) -> BoundaryHits:
    """Field-wise sum (``+`` on a NamedTuple would concatenate)."""
    return BoundaryHits(*(jnp.add(u, v) for u, v in zip(a, b, strict=True)))


class BoundaryRow(NamedTuple):
    """One layer's exact kink hits, on the host, as :func:`summarize_boundary_hits` gives.

    Args:
      layer: the layer's path in the model, ``/``-separated (``"(root)"``
        for a lone activation).
      n: the number of inputs counted.
      at_zero: how many were exactly 0.
      at_cap: how many were exactly at the cap (6, or 3 for hard_swish's ``x``).
      frac_zero: ``at_zero / n``.
      frac_cap: ``at_cap / n``.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> row, = jrelu6.summarize_boundary_hits(jrelu6.boundary_hits(jnp.zeros(4)))
      >>> row.layer, row.n, row.at_zero, row.frac_zero
      ('(root)', 4, 4, 1.0)
    """

    layer: str
    n: int
    at_zero: int
    at_cap: int
    frac_zero: float
    frac_cap: float


def _key_name(key: Any) -> str | None:
    """A path entry as text; None for entries that are not part of a layer's name."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    # GetAttrKey: a Variable's ``value`` (nnx) or a field; not a layer name.
    return None


def _layer_name(path: Sequence[Any]) -> str:
    parts = [name for name in map(_key_name, path) if name is not None]
    if parts and parts[0] == COLLECTION:  # linen: {"boundary_hits": {...}}
        parts = parts[1:]
    if parts and parts[-1] == COLLECTION:  # the recorded variable's own name
        parts = parts[:-1]
    return "/".join(parts) or "(root)"


def _natural_key(name: str) -> list[Any]:
    """Sorts ``layers_2`` before ``layers_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _row(layer: str, at_zero: int, at_cap: int, n: int) -> BoundaryRow:
    return BoundaryRow(
        layer=layer,
        n=n,
        at_zero=at_zero,
        at_cap=at_cap,
        frac_zero=at_zero / n if n else 0.0,
        frac_cap=at_cap / n if n else 0.0,
    )


def _rows(layer: str, hits: BoundaryHits) -> list[BoundaryRow]:
    """The rows of one recorded count: one, or one per index of a stack of layers."""
    try:
        at_zero, at_cap, total = (np.asarray(count) for count in hits)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"summarize_boundary_hits: the counts of {layer!r} are not arrays: {hits!r}."
        ) from error
    shapes = {at_zero.shape, at_cap.shape, total.shape}
    dtypes = (at_zero.dtype, at_cap.dtype, total.dtype)
    if len(shapes) != 1 or not all(np.issubdtype(d, np.integer) for d in dtypes):
        raise TypeError(
            f"summarize_boundary_hits: the counts of {layer!r} must be integer arrays of "
            f"one shape, got shapes {[c.shape for c in (at_zero, at_cap, total)]} and "
            f"dtypes {[d.name for d in dtypes]}."
        )
    if at_zero.ndim == 0:
        return [_row(layer, int(at_zero), int(at_cap), int(total))]
    # Stacked by nn.scan / nnx.scan (or a vmap over layers): a row per layer of the stack.
    return [
        _row(f"{layer}[{', '.join(map(str, index))}]", int(at_zero[index]),
             int(at_cap[index]), int(total[index]))
        for index in np.ndindex(at_zero.shape)
    ]


def summarize_boundary_hits(collected: Any) -> list[BoundaryRow]:
    """Per-layer rows from the counts the Flax modules recorded.

    Accepts whatever holds :class:`BoundaryHits` leaves: the collections
    returned by a linen ``apply(..., mutable=["boundary_hits"])`` (or their
    ``"boundary_hits"`` entry), the ``nnx.State`` returned by
    ``nnx.pop(model, nnx.Intermediate)``, a plain dict of them, or a single
    :class:`BoundaryHits`. Anything else in the tree is ignored. The counts
    are fetched to the host here, once.

    Layers stacked by ``nn.scan`` or ``nnx.scan`` (the scan-over-layers
    pattern) record counts with a leading layer axis; each layer of the stack
    gets its own row, named by the path and its index (``stack/ReLU6_0[2]``;
    ``[i, j]`` for a stack of stacks). Linen's ``nn.scan`` only returns the
    counts when ``"boundary_hits"`` is in its ``variable_axes`` (``{"params":
    0, "boundary_hits": 0}``); otherwise the collection comes back empty.

    Args:
      collected: a pytree with :class:`BoundaryHits` leaves, each of integer
        scalars or of integer arrays of one shape (a stack of layers).

    Returns:
      A list of :class:`BoundaryRow`, one per recording layer (and per layer of
      a stack), sorted by layer path (numbers in natural order). A layer
      called several times has the sum of its calls.

    Raises:
      TypeError: if a :class:`BoundaryHits` holds counts that are not integer
        arrays of one shape.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jrelu6
      >>> from jrelu6.linen import ReLU6
      >>> model = nn.Sequential([ReLU6(), nn.Dense(2), ReLU6()])
      >>> x = jnp.array([[0.0, 6.0, 7.0]])
      >>> params = model.init(jax.random.key(0), x)
      >>> y, hits = model.apply(params, x, mutable=["boundary_hits"])
      >>> for row in jrelu6.summarize_boundary_hits(hits):
      ...     print(row.layer, row.n, row.at_zero, row.at_cap)
      layers_0 3 1 1
      layers_2 2 0 0

    See also:
      :func:`format_boundary_hits`, :func:`boundary_hits`; the Flax modules guide
      for nnx (``record_boundary_hits``, then ``nnx.pop(model, nnx.Intermediate)``).
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        collected, is_leaf=lambda node: isinstance(node, BoundaryHits)
    )
    found = [(_layer_name(path), hits) for path, hits in leaves if isinstance(hits, BoundaryHits)]
    found = jax.device_get(found)
    rows = [row for layer, hits in found for row in _rows(layer, hits)]
    return sorted(rows, key=lambda row: _natural_key(row.layer))


def _total(rows: Iterable[BoundaryRow]) -> BoundaryRow:
    rows = list(rows)
    return _row(
        "all layers",
        sum(r.at_zero for r in rows),
        sum(r.at_cap for r in rows),
        sum(r.n for r in rows),
    )


def format_boundary_hits(rows: Sequence[BoundaryRow] | Any, *, total: bool = True) -> str:
    """A markdown table of per-layer exact kink hits.

    Args:
      rows: the rows of :func:`summarize_boundary_hits`, or anything it accepts.
      total: whether to end with an ``all layers`` row (when there are
        several layers).

    Returns:
      The table as a string, one row per layer.

    Examples:
      >>> import jax.numpy as jnp, jrelu6
      >>> x = jnp.array([0.0, 1.0, 6.0, 6.0], jnp.bfloat16)
      >>> print(jrelu6.format_boundary_hits({"act": jrelu6.boundary_hits(x)}))
      | layer | inputs | = 0 | = cap | fraction = 0 | fraction = cap |
      | --- | ---: | ---: | ---: | ---: | ---: |
      | act | 4 | 1 | 2 | 2.50e-01 | 5.00e-01 |

    See also:
      :func:`summarize_boundary_hits`.
    """
    if not (isinstance(rows, Sequence) and all(isinstance(r, BoundaryRow) for r in rows)):
        rows = summarize_boundary_hits(rows)
    rows = list(rows)
    if total and len(rows) > 1:
        rows.append(_total(rows))
    lines = [
        "| layer | inputs | = 0 | = cap | fraction = 0 | fraction = cap |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.layer} | {r.n} | {r.at_zero} | {r.at_cap} "
            f"| {r.frac_zero:.2e} | {r.frac_cap:.2e} |"
        )
    return "\n".join(lines)
