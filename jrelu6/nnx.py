"""``flax.nnx`` modules for relu6, the capped ReLU, hard sigmoid and hard swish, their
fake-quantized forms, and a fake quantizer with a learnable range."""

from jrelu6._nnx import CappedReLU as CappedReLU
from jrelu6._nnx import FakeQuant as FakeQuant
from jrelu6._nnx import HardSigmoid as HardSigmoid
from jrelu6._nnx import HardSwish as HardSwish
from jrelu6._nnx import QuantizedHardSigmoid as QuantizedHardSigmoid
from jrelu6._nnx import QuantizedHardSwish as QuantizedHardSwish
from jrelu6._nnx import QuantizedReLU6 as QuantizedReLU6
from jrelu6._nnx import ReLU6 as ReLU6

__all__ = (
    "CappedReLU",
    "FakeQuant",
    "HardSigmoid",
    "HardSwish",
    "QuantizedHardSigmoid",
    "QuantizedHardSwish",
    "QuantizedReLU6",
    "ReLU6",
)
