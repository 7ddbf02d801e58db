"""jrelu6: ReLU6 and its family for JAX, with a settable derivative at the kinks.

The functions live here; Flax modules wrapping them live in :mod:`jrelu6.linen`
and :mod:`jrelu6.nnx`.
"""

from jrelu6._diagnostics import BoundaryHits as BoundaryHits
from jrelu6._diagnostics import BoundaryRow as BoundaryRow
from jrelu6._diagnostics import boundary_hits as boundary_hits
from jrelu6._diagnostics import format_boundary_hits as format_boundary_hits
from jrelu6._diagnostics import summarize_boundary_hits as summarize_boundary_hits
from jrelu6._functions import capped_relu as capped_relu
from jrelu6._functions import hard_sigmoid as hard_sigmoid
from jrelu6._functions import hard_silu as hard_silu
from jrelu6._functions import hard_swish as hard_swish
from jrelu6._functions import relu6 as relu6
from jrelu6._functions import relu6_derivative as relu6_derivative
from jrelu6._functions import relu6_inplace as relu6_inplace
from jrelu6._quant import QuantizationParams as QuantizationParams
from jrelu6._quant import fake_quant as fake_quant
from jrelu6._quant import fake_quant_per_channel as fake_quant_per_channel
from jrelu6._quant import fake_quant_weights as fake_quant_weights
from jrelu6._quant import fold_batch_norm as fold_batch_norm
from jrelu6._quant import quantization_params as quantization_params
from jrelu6._quant import quantize_weights as quantize_weights
from jrelu6._quant import quantized_hard_sigmoid as quantized_hard_sigmoid
from jrelu6._quant import quantized_hard_swish as quantized_hard_swish
from jrelu6._quant import quantized_relu6 as quantized_relu6

__version__ = "0.1.0"

__all__ = (
    "BoundaryHits",
    "BoundaryRow",
    "QuantizationParams",
    "boundary_hits",
    "capped_relu",
    "fake_quant",
    "fake_quant_per_channel",
    "fake_quant_weights",
    "fold_batch_norm",
    "format_boundary_hits",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "quantization_params",
    "quantize_weights",
    "quantized_hard_sigmoid",
    "quantized_hard_swish",
    "quantized_relu6",
    "relu6",
    "relu6_derivative",
    "relu6_inplace",
    "summarize_boundary_hits",
)
