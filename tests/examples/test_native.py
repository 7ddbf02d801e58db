"""examples/mobilenet/native: built once per machine, never required.

Each case runs in a fresh interpreter: whether the kernels are available is
decided once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples")

# Prints whether the kernels loaded, then whether "auto" used them in a gradient.
PROBE = """
import warnings
warnings.simplefilter("always")
import jax, jax.numpy as jnp
from mobilenet import depthwise, native
print("available", native.available())
grad = jax.grad(lambda x: jnp.sum(jnp.sin(depthwise.depthwise_conv(x, jnp.ones((3, 3, 1, 4))))))
hlo = jax.jit(grad).lower(jnp.ones((1, 5, 5, 4))).compile().as_text()
print("custom call", "jrelu6_depthwise" in hlo)
"""


def _probe(tmp_path, **env_changes: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([EXAMPLES, os.environ.get("PYTHONPATH", "")])}
    env.pop("CXX", None)
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_switched_off_falls_back_quietly(tmp_path):
    result = _probe(tmp_path, JRELU6_NATIVE="0")
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout and "custom call False" in result.stdout
    assert "RuntimeWarning" not in result.stderr


def test_no_compiler_warns_once_and_falls_back(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _probe(tmp_path, PATH=str(empty))
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout and "custom call False" in result.stdout
    assert result.stderr.count("mobilenet.native: no C++ compiler found") == 1


def test_failing_build_warns_with_the_reason_and_falls_back(tmp_path):
    result = _probe(tmp_path, CXX="false")
    assert result.returncode == 0, result.stderr
    assert "available False" in result.stdout and "custom call False" in result.stdout
    assert "mobilenet.native: building the kernels failed: false failed (exit 1)" in result.stderr


def test_builds_once_then_loads_from_the_cache(tmp_path):
    first = _probe(tmp_path)
    if "available True" not in first.stdout:
        pytest.skip(f"no working C++ compiler here: {first.stderr.strip()[-200:]}")
    assert "custom call True" in first.stdout
    (built,) = (tmp_path / "cache" / "jrelu6" / "native").glob("*/kernels.so")
    stamp = built.stat().st_mtime_ns
    second = _probe(tmp_path)
    assert "available True" in second.stdout and "custom call True" in second.stdout
    assert built.stat().st_mtime_ns == stamp
    assert not list(built.parent.glob(".build-*"))


def test_the_bfloat16_1x1_kernel_gradient_is_built_where_the_cpu_has_avx512_bf16():
    from mobilenet import native

    if not native.available():
        pytest.skip(f"native kernels unavailable: {native.unavailable_reason()}")
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    assert native.has_pointwise_kernel_grad() == ("avx512_bf16" in flags)
