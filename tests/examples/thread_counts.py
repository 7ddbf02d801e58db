"""Runs a probe script in processes bound to 1 and to 2 CPUs (shared by the native tests).

XLA sizes its intra-op thread pool, which runs the native kernels, by the CPUs the
process may use; a kernel whose summation order depends on the shape alone prints
the same bits under both.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "examples")

# Put before a probe: binds the process to its first argv[1] CPUs before jax starts.
BIND = """
import os, sys
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(sys.argv[1])])
"""


def bits_with_one_and_two_threads(probe: str) -> list[str]:
    """The line starting ``bits`` that ``BIND + probe`` prints with 1, then 2 CPUs."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a Linux process allowed on at least two CPUs")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([EXAMPLES, os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)  # One host device, as a user's process has.
    outputs = []
    for threads in (1, 2):
        result = subprocess.run([sys.executable, "-c", BIND + probe, str(threads)], env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        outputs.append(next(line for line in result.stdout.splitlines()
                            if line.startswith("bits")))
    return outputs
