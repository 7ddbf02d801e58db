"""Test set-up: eight host devices and strict dtype promotion.

``examples/`` and ``benchmarks/`` are importable through pytest's ``pythonpath``
(pyproject.toml), as they are for the scripts that live in them.
"""

import os

# Before JAX initialises its backends: eight CPU devices for the sharding tests.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

# Any implicit promotion in the library is a bug: make it an error.
jax.config.update("jax_numpy_dtype_promotion", "strict")

