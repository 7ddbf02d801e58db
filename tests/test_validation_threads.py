"""Validation is thread-safe: many threads check settings at once, each gets its own answer.

The example traces its init, train and eval steps in several threads at once, and
every call of a jrelu6 function checks its settings. The checks must not touch
process-wide state: ``warnings.catch_warnings()`` there, entered and left by
threads in an interleaved order, can restore another thread's saved filters and
leave warnings silenced for the whole process.
"""

from __future__ import annotations

import concurrent.futures
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import jrelu6
from jrelu6 import _validation

X16 = jnp.array([0.0, 3.0, 6.0, 7.0], jnp.float16)
X32 = X16.astype(jnp.float32)


def _call(i):
    """One validated call, good or bad by ``i``; returns what happened, to compare."""
    kind = i % 4
    try:
        if kind == 0:  # 7e4 is finite in float32 ...
            return np.asarray(jrelu6.relu6(X32, grad_at_zero=7e4)).tolist()
        if kind == 1:  # ... and not in float16 (largest 65504): an error naming relu6.
            return np.asarray(jrelu6.relu6(X16, grad_at_six=7e4)).tolist()
        if kind == 2:
            return bool(_validation._finite_in(65519.0, np.dtype(np.float16)))
        return bool(_validation._finite_in(65520.0, np.dtype(np.float16)))
    except ValueError as error:
        return str(error)


@pytest.fixture(autouse=True)
def _frequent_thread_switches():
    """Switches threads every microsecond (not 5 ms) so that the calls interleave."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_validation_from_many_threads_gives_each_call_its_answer_and_leaves_warnings_alone():
    expected = [_call(i) for i in range(4)]
    assert expected[0] == [0.0, 3.0, 6.0, 6.0]
    assert expected[1].startswith("relu6: grad_at_six=70000.0 is not finite in the input's dtype")
    assert expected[2:] == [True, False]  # 65520 rounds to inf in float16
    filters = list(warnings.filters)
    n = 16_000  # With catch_warnings, 3 runs of 3 left an "ignore" filter behind.
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(_call, range(n), chunksize=100))
    assert results == [expected[i % 4] for i in range(n)]
    assert warnings.filters == filters


def test_a_warning_raised_while_other_threads_validate_still_reaches_its_filter():
    # If validation in another thread silenced warnings process-wide, this would not raise.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(_call, i) for i in range(2000)]
        for _ in range(50):
            with pytest.warns(UserWarning, match="still seen"):
                warnings.warn("still seen", UserWarning, stacklevel=1)
        concurrent.futures.wait(futures)
