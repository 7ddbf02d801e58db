"""Test set-up: eight host devices, strict dtype promotion, examples and benchmarks importable."""

import os
import sys

# Before JAX initialises its backends: eight CPU devices for the sharding tests.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

# Any implicit promotion in the library is a bug: make it an error.
jax.config.update("jax_numpy_dtype_promotion", "strict")

_ROOT = os.path.dirname(os.path.abspath(__file__))
for _folder in ("examples", "benchmarks"):  # Scripts, not packages: import them by name.
    sys.path.insert(0, os.path.join(_ROOT, _folder))
