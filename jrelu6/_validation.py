"""Argument checks shared by the public functions. Errors name the caller."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _dtype_of(x: Any) -> np.dtype | None:
    """The dtype ``jnp.asarray(x)`` would give, or None if it has none."""
    if hasattr(x, "dtype"):
        try:
            return np.dtype(x.dtype)
        except TypeError:
            return None
    try:
        return np.asarray(x).dtype
    except (TypeError, ValueError):
        return None


def _is_real_number_dtype(dtype: np.dtype | None) -> bool:
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    )


def check_array(fn_name: str, x: Any) -> jax.Array:
    """Returns ``x`` as a jax array of a real (floating or integer) dtype.

    Python scalars, NumPy arrays and (nested) lists are accepted as
    :func:`jax.numpy.asarray` accepts them. Complex, bool, string, object and
    None inputs raise TypeError naming ``fn_name`` and the dtype.
    """
    if x is None:
        raise TypeError(f"{fn_name}: expected a real-valued array, got None.")
    dtype = _dtype_of(x)
    if not _is_real_number_dtype(dtype):
        what = f"dtype {dtype}" if dtype is not None else f"type {type(x).__name__}"
        raise TypeError(
            f"{fn_name}: expected a real floating or integer array, got {what}."
        )
    return jnp.asarray(x)


def check_scalar(
    fn_name: str, arg_name: str, value: Any, *, positive: bool = False
) -> Any:
    """Checks that ``value`` is a real scalar (finite when known).

    Python numbers come back as ``float`` so that ``0`` and ``0.0`` share one
    compiled function; arrays and tracers come back unchanged. Values known at
    trace time are checked to be finite (and > 0 when ``positive``).
    """
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise TypeError(
            f"{fn_name}: {arg_name} must be a real scalar, got {value!r}."
        )
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = float(value)
        concrete = value
    else:
        dtype = _dtype_of(value)
        if not _is_real_number_dtype(dtype):
            raise TypeError(
                f"{fn_name}: {arg_name} must be a real scalar, got "
                f"{type(value).__name__}"
                + (f" of dtype {dtype}." if dtype is not None else ".")
            )
        if np.ndim(value) != 0:
            raise ValueError(
                f"{fn_name}: {arg_name} must be a scalar, got an array of shape "
                f"{np.shape(value)}."
            )
        concrete = None if isinstance(value, jax.core.Tracer) else float(value)
    if concrete is not None:
        if not math.isfinite(concrete):
            raise ValueError(f"{fn_name}: {arg_name} must be finite, got {concrete}.")
        if positive and concrete <= 0:
            raise ValueError(f"{fn_name}: {arg_name} must be > 0, got {concrete}.")
    return value
