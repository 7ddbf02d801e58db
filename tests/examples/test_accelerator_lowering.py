"""The training step lowers for CUDA and TPU on a machine without either (jax.export).

On GPU/TPU the depthwise convolutions must be the grouped convolution (cuDNN,
the TPU convolution unit), never the CPU's native custom calls, whatever
``jax.default_backend()`` is where the step is traced. Lowered, not run: no
accelerator is needed, and nothing here depends on one.
"""

from __future__ import annotations

import jax
import jax.export
import jax.numpy as jnp
import pytest

import _mobilenet_step as mstep
from mobilenet import models, native


@pytest.mark.parametrize("name, dtype", [("mobilenet_v2", jnp.float32),
                                         ("mobilenet_v2", jnp.bfloat16),
                                         ("mobilenet_v3_large", jnp.float32)])
def test_training_step_lowers_for_cuda_and_tpu_without_cpu_calls(name, dtype):
    model = models.create_model(name, num_classes=10, dtype=dtype)
    images = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((8,), jnp.int32)
    state = jax.eval_shape(lambda: mstep.create_state(model, (32, 32, 3)))
    step = jax.jit(mstep.step_fn(model))
    for platform in ("cuda", "tpu"):
        module = jax.export.export(step, platforms=[platform])(state, images, labels)
        text = module.mlir_module()
        for target in native.TARGETS:  # Depthwise layers and 1x1 kernel gradients.
            assert target not in text, (platform, target)
        assert "CustomSPMDPartitioning" not in text, platform
        assert "feature_group_count = " in text, platform  # The depthwise layers, grouped.
