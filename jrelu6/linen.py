"""``flax.linen`` modules for relu6, the capped ReLU, hard sigmoid and hard swish."""

from jrelu6._linen import CappedReLU as CappedReLU
from jrelu6._linen import HardSigmoid as HardSigmoid
from jrelu6._linen import HardSwish as HardSwish
from jrelu6._linen import ReLU6 as ReLU6

__all__ = ("CappedReLU", "HardSigmoid", "HardSwish", "ReLU6")
