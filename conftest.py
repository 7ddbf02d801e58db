"""Test set-up: eight host devices, strict dtype promotion, this checkout for subprocesses.

``examples/`` and ``benchmarks/`` are importable through pytest's ``pythonpath``
(pyproject.toml), as they are for the scripts that live in them.
"""

import atexit
import os
import shutil
import tempfile

# Scripts the tests run in subprocesses (the CLI, the benchmarks) import this
# checkout's jrelu6, whether or not it is pip-installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.dirname(os.path.abspath(__file__)), *filter(None, [os.environ.get("PYTHONPATH")])])

# The example's command line keeps JAX's persistent compilation cache under
# $XDG_CACHE_HOME: the tests' runs share one in a folder of their own, removed at exit.
_CACHE_HOME = tempfile.mkdtemp(prefix="jrelu6-tests-cache-")
atexit.register(shutil.rmtree, _CACHE_HOME, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME

# Before JAX initialises its backends: eight CPU devices for the sharding tests.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

# Any implicit promotion in the library is a bug: make it an error.
jax.config.update("jax_numpy_dtype_promotion", "strict")

