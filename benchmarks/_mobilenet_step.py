"""A minimal jitted MobileNet training step for the benchmarks.

Forward pass in training mode (batch statistics, dropout), softmax
cross-entropy, gradients, SGD with momentum, the BatchNorm statistics update;
the whole state donated, nothing returned to the host but a scalar loss. It is
deliberately smaller than the example's ``train.py`` (no schedule, weight
decay, label smoothing, metrics or sharding) so that the comparison with the
PyTorch step in ``train_step.py`` is like for like: the same model, loss and
optimizer on both sides.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
if _EXAMPLES not in sys.path:  # Run as a script: make the MobileNet example importable.
    sys.path.insert(0, _EXAMPLES)

from mobilenet import depthwise, models  # noqa: E402, F401  (depthwise: for depthwise.py)
from mobilenet.infra import host_memory  # noqa: E402, F401

LEARNING_RATE = 0.05
MOMENTUM = 0.9


class StepState(NamedTuple):
    """Everything a training step updates."""

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array


def optimizer() -> optax.GradientTransformation:
    """SGD with momentum (PyTorch's ``SGD(lr, momentum)`` has the same update)."""
    return optax.sgd(LEARNING_RATE, momentum=MOMENTUM)


# Initialisation runs once, so it is compiled for compile speed, not run speed
# (XLA:CPU otherwise spends ~10 s optimising the init of a MobileNetV2).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def create_state(model: Any, image_shape: tuple[int, ...], *, seed: int = 0) -> StepState:
    """Initial parameters, BatchNorm statistics and optimizer state."""

    def init():
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        variables = model.init(jax.random.key(seed), dummy, train=False)
        params = variables["params"]
        return StepState(params, variables.get("batch_stats", {}),
                         optimizer().init(params), jnp.zeros((), jnp.int32))

    lowered = jax.jit(init).lower()
    try:
        compiled = lowered.compile(compiler_options=_FAST_COMPILE)
    except Exception:  # noqa: BLE001 - an XLA without that option: compile normally
        compiled = lowered.compile()
    return compiled()


def copy_state(state: StepState) -> StepState:
    """A copy with its own buffers (a donated step consumes the state it is given)."""
    return jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), state)


def step_fn(model: Any):
    """The un-jitted step ``(state, images, labels) -> (state, loss)``.

    Un-jitted so that :func:`_harness.compiled_stats` can compile it;
    :func:`jitted_step` is what gets timed.
    """
    tx = optimizer()

    def loss_fn(params, batch_stats, images, labels, rng):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True,
            mutable=["batch_stats"], rngs={"dropout": rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    def step(state: StepState, images: jax.Array, labels: jax.Array):
        rng = jax.random.fold_in(jax.random.key(1), state.step)
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, images, labels, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return StepState(params, batch_stats, opt_state, state.step + 1), loss

    return step


def jitted_step(model: Any):
    """:func:`step_fn` jitted with the state donated (updated in place)."""
    return jax.jit(step_fn(model), donate_argnums=0)


def synthetic_batch(batch: int, size: int, num_classes: int, *, seed: int = 0
                    ) -> tuple[jax.Array, jax.Array]:
    """Random normalised images ``(batch, size, size, 3)`` float32 and int32 labels."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, num_classes, size=batch).astype(np.int32)
    return jnp.asarray(images), jnp.asarray(labels)


def create_model(**kwargs: Any) -> Any:
    """``models.create_model("mobilenet_v2", **kwargs)``."""
    return models.create_model("mobilenet_v2", **kwargs)


# --- the model and batch options of the step benchmarks ---------------------------------

VARIANTS = ("small-input", "standard")


def backend_defaults(backend: str, quick: bool) -> dict[str, Any]:
    """Image size, batch, dtype and classes for ``backend``."""
    if backend == "cpu":
        return {"size": 32, "batch": 16 if quick else 128, "dtype": "float32",
                "num_classes": 10}
    return {"size": 224, "batch": 64 if quick else 256, "dtype": "bfloat16",
            "num_classes": 1000}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and batch options shared with ``train_step.py``."""
    parser.add_argument("--model", default="mobilenet_v2",
                        help="a mobilenet.models name (default mobilenet_v2; 'tiny' for tests)")
    parser.add_argument("--batch", type=int, help="batch size (default: 128 CPU, 256 GPU; "
                                                  "quick: 16 CPU, 64 GPU)")
    parser.add_argument("--size", type=int, help="image side (default: 32 CPU, 224 GPU)")
    parser.add_argument("--variant", choices=VARIANTS,
                        help="small-input: the stem and the first strided block keep stride 1 "
                             "(the CIFAR variant, 8x downsampling); standard: the reference "
                             "strides (32x). Default: small-input for images <= 64 pixels")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="compute dtype (default: float32 CPU, bfloat16 GPU); "
                             "parameters stay float32")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1)")
    parser.add_argument("--num-classes", type=int, help="classes (default: 10 CPU, 1000 GPU)")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 7, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")


def resolve_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: explicit options over the backend's defaults."""
    config = backend_defaults(jax.default_backend(), args.quick)
    for key in ("batch", "size", "dtype", "num_classes"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    for key in ("batch", "size", "num_classes"):
        if config[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {config[key]}")
    variant = args.variant or ("small-input" if config["size"] <= 64 else "standard")
    config.update(model=args.model, width=args.width, variant=variant,
                  small_input=variant == "small-input",
                  repeats=args.repeats or (3 if args.quick else 7), warmup=args.warmup)
    return config


def model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """``create_model`` keywords for ``config``."""
    return {"num_classes": config["num_classes"], "width_multiplier": config["width"],
            "small_input": config["small_input"], "dtype": jnp.dtype(config["dtype"])}
