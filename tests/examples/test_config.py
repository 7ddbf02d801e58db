"""Tests of the example's settings: the Config, its derived defaults and the optimizer.

(examples/mobilenet/configs/default.py and examples/mobilenet/optim.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet import optim
from mobilenet.configs import default
from mobilenet.configs.default import Config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


# --- derived defaults ----------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, learning_rate, weight_decay",
                         [("sgd", 0.05, 5e-5), ("adamw", 1e-2, 0.05)])
def test_learning_rate_and_weight_decay_default_per_optimizer(optimizer, learning_rate,
                                                              weight_decay):
    resolved = default.resolve(Config(optimizer=optimizer), num_train=1000)
    assert resolved.learning_rate == learning_rate
    assert resolved.weight_decay == weight_decay


@pytest.mark.parametrize("optimizer", default.OPTIMIZERS)
def test_explicit_learning_rate_and_weight_decay_win(optimizer):
    config = Config(optimizer=optimizer, learning_rate=0.3, weight_decay=0.0)
    resolved = default.resolve(config, num_train=1000)
    assert (resolved.learning_rate, resolved.weight_decay) == (0.3, 0.0)


@pytest.mark.parametrize("steps, warmup", [(300, 30), (9, 0), (1000, 100), (19, 1)])
def test_the_default_warmup_is_a_tenth_of_the_steps_rounded_down(steps, warmup):
    assert default.resolve(Config(steps=steps), num_train=1000).warmup_steps == warmup


def test_an_explicit_warmup_wins():
    assert default.resolve(Config(steps=300, warmup_steps=7), num_train=1000).warmup_steps == 7


@pytest.mark.parametrize("overrides, shift", [
    ({}, 2), ({"data": "cifar10"}, 4), ({"data": "synthetic"}, 4), ({"max_shift": 3}, 3),
    ({"augment": False}, 0), ({"augment": False, "max_shift": 3}, 0)])
def test_max_shift_is_two_on_digits_else_four(overrides, shift):
    assert default.resolve(Config(**overrides), num_train=1000).max_shift == shift


@pytest.mark.parametrize("epochs, batch_size, num_train, steps", [
    (2.5, 16, 64, 10),     # 4 steps per epoch.
    (1.0, 16, 70, 4),      # The remainder of an epoch is skipped.
    (0.01, 16, 64, 1),     # At least one step.
    (2.0, 128, 50000, 780)])
def test_epochs_set_the_total_steps(epochs, batch_size, num_train, steps):
    config = Config(epochs=epochs, batch_size=batch_size, steps=999)
    resolved = default.resolve(config, num_train=num_train)
    assert resolved.total_steps == steps
    assert resolved.warmup_steps == steps // 10


def test_without_epochs_the_steps_are_the_total():
    assert default.resolve(Config(steps=7, batch_size=16), num_train=64).total_steps == 7


def test_a_batch_larger_than_the_training_set_is_refused():
    with pytest.raises(ValueError, match="steps_per_epoch: batch_size 128 is larger than the 100"):
        default.resolve(Config(batch_size=128), num_train=100)


def test_the_config_module_does_not_import_jax():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from mobilenet.configs import default; "
            "default.resolve(default.get_config(), num_train=1000); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    result = subprocess.run([sys.executable, "-c", code, EXAMPLES], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# --- the schedule and the optimizer --------------------------------------------------------


def test_the_schedule_warms_up_linearly_from_its_first_step():
    schedule = optim.warmup_cosine_schedule(peak=0.4, warmup_steps=4, total_steps=20)
    values = [float(schedule(t)) for t in range(5)]
    np.testing.assert_allclose(values, [0.1, 0.2, 0.3, 0.4, 0.4], rtol=1e-6)


def test_the_schedule_decays_along_a_cosine_to_zero():
    peak, warmup, total = 0.4, 4, 20
    schedule = optim.warmup_cosine_schedule(peak=peak, warmup_steps=warmup, total_steps=total)
    values = np.array([float(schedule(t)) for t in range(warmup, total + 3)])
    t = np.arange(warmup, total + 3)
    expected = peak * 0.5 * (1 + np.cos(np.pi * np.clip((t - warmup) / (total - warmup), 0, 1)))
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(values) <= 0)
    assert values[total - warmup:].tolist() == [0.0] * 3


def test_without_warmup_the_first_step_uses_the_peak():
    schedule = optim.warmup_cosine_schedule(peak=0.4, warmup_steps=0, total_steps=10)
    assert float(schedule(0)) == pytest.approx(0.4)


def test_the_schedule_is_float32_on_the_host_and_on_the_device():
    schedule = optim.learning_rate_schedule(Config(), total_steps=300)
    assert schedule(3).dtype == jnp.float32
    assert jax.jit(schedule)(jnp.int32(3)).dtype == jnp.float32


def test_host_and_device_learning_rates_agree():
    schedule = optim.learning_rate_schedule(Config(steps=50, warmup_steps=7, learning_rate=0.3),
                                            total_steps=50)
    host = [float(schedule(t)) for t in range(51)]
    device = jax.jit(jax.vmap(schedule))(jnp.arange(51, dtype=jnp.int32))
    np.testing.assert_allclose(host, np.asarray(device), rtol=1e-6, atol=1e-9)


def test_the_step_uses_the_logged_schedule():
    # SGD without momentum or decay: the update is -lr * gradient, step by step.
    config = Config(steps=20, warmup_steps=4, learning_rate=0.4, momentum=0.0, weight_decay=0.0)
    tx = optim.create_optimizer(config, total_steps=20)
    schedule = optim.learning_rate_schedule(config, total_steps=20)
    params = {"kernel": jnp.zeros((2, 2), jnp.float32)}
    grads = {"kernel": jnp.ones((2, 2), jnp.float32)}
    with jax.numpy_dtype_promotion("standard"):  # optax's state init is not strict-clean.
        state = tx.init(params)
        for t in range(20):
            updates, state = tx.update(grads, state, params)
            np.testing.assert_allclose(np.asarray(updates["kernel"]), -float(schedule(t)),
                                       rtol=1e-6)


def test_equal_settings_give_the_same_optimizer():
    a = optim.create_optimizer(Config(), total_steps=300)
    assert optim.create_optimizer(Config(learning_rate=0.05), total_steps=300) is a
    assert optim.create_optimizer(Config(), total_steps=301) is not a
    assert optim.create_optimizer(Config(optimizer="adamw"), total_steps=300) is not a


def test_weight_decay_skips_batch_norm_and_biases():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))},
              "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)}}
    assert optim.decay_mask(params) == {"conv": {"kernel": True},
                                        "bn": {"scale": False, "bias": False}}


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="create_optimizer: optimizer must be one of"):
        optim.create_optimizer(Config(optimizer="rmsprop"), total_steps=10)
