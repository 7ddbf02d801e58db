"""Mistakes a type checker must catch: each line marked ``# error`` is one.

tools/typecheck.sh checks that basedpyright and mypy each report an error on
every marked line and on no other. The body is a function so that importing
this file (pytest's doctest collection does) runs none of it.
"""

from __future__ import annotations

import jrelu6.linen
import jrelu6.nnx


def mistakes() -> None:
    jrelu6.linen.ReLU6(grad_at_zeroo=1.0)  # error
    jrelu6.linen.CappedReLU(grad_at_six=1.0)  # error
    jrelu6.linen.QuantizedReLU6(num_bit=4)  # error
    jrelu6.linen.QuantizedReLU6(num_bits="4")  # error
    jrelu6.linen.FakeQuant(init_min=0.0, init_maximum=1.0)  # error
    jrelu6.linen.HardSwish(1.0)  # error
    jrelu6.nnx.ReLU6(grad_at_zeroo=1.0)  # error
    jrelu6.nnx.HardSwish(grad_at_cap=1.0)  # error
    jrelu6.nnx.QuantizedHardSigmoid(narrow=True)  # error
    jrelu6.nnx.FakeQuant(init_min="0")  # error
    jrelu6.nnx.ReLU6(1.0)  # error
    _ = jrelu6.nnx.CappedReLU().grad_at_six  # error
    act: jrelu6.nnx.ReLU6 = jrelu6.nnx.HardSwish()  # error
    del act
