"""MobileNetV1/V2/V3 in flax.linen with jrelu6 activations, and a fast depthwise convolution."""
