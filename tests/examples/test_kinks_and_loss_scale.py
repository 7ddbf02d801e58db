"""The train step's opt-in kink counts (``count_kinks``) and float16 dynamic loss scaling."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrelu6.linen
from mobilenet import loss_scale, sharding, tracking, train, train_state
from mobilenet.configs import get_config
from mobilenet.infra import distributed

IMAGE = (16, 16, 3)
BATCH = 16
STEP_OPTIONS = dict(num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
# Per example, the relu6 layer sees 0 once and 6 twice; hard-swish sees KNOWN - 3,
# so -3 once and 3 twice.
KNOWN = (0.0, 6.0, 6.0, 3.0, -1.0)


class KnownHits(nn.Module):
    """A classifier whose relu6 and hard-swish inputs hold known kink hits, every step."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        known = jnp.broadcast_to(jnp.asarray(KNOWN, self.dtype), (x.shape[0], len(KNOWN)))
        features = jnp.concatenate([
            jrelu6.linen.ReLU6(name="relu6")(known),
            jrelu6.linen.HardSwish(name="hard_swish")(known - 3.0),
            jnp.mean(x.astype(self.dtype), axis=(1, 2))], axis=-1)
        return nn.Dense(10, dtype=self.dtype)(features)


def _config(**overrides):
    settings = dict(model="tiny", data="synthetic", image_size=IMAGE[0], synthetic_examples=64,
                    batch_size=BATCH, eval_batch_size=32, steps=6, log_every=2, eval_every=0,
                    checkpoint_every=0, learning_rate=0.2, warmup_steps=0, progress=False,
                    plot=False, augment=False)
    settings.update(overrides)
    return get_config(**settings)


def _batch(mesh, *, seed=0):
    rng = np.random.default_rng(seed)
    host = {"image": rng.integers(0, 256, (BATCH, *IMAGE), dtype=np.uint8),
            "label": rng.integers(0, 10, BATCH).astype(np.int32)}
    return distributed.place(host, sharding.batch_sharding(mesh))


def _state_and_step(config, model=None):
    mesh = sharding.create_mesh()
    model = model or train_state.create_model(config, num_classes=10)
    state = train_state.create_train_state(config, model, image_shape=IMAGE, mesh=mesh,
                                           total_steps=config.steps)
    step = train_state.make_train_step(mesh=mesh, dtype=train_state.DTYPES[config.dtype],
                                       donate=False, **STEP_OPTIONS)
    return mesh, state, step


# --- kink counts ---------------------------------------------------------------------------


def test_known_hits_are_summed_over_every_step_of_a_run():
    steps = 6  # Three metric fetches (log_every 2): the counts survive each reset of the sums.
    _, summary = train.fit(_config(count_kinks=True, steps=steps),
                           None, model_fn=lambda config, num_classes: KnownHits())
    rows = {row["layer"]: row for row in summary["boundary_hits"]}
    assert set(rows) == {"relu6", "hard_swish"}
    for row in rows.values():
        assert row["n"] == steps * BATCH * len(KNOWN)
        assert row["at_zero"] == steps * BATCH  # relu6: 0; hard-swish: -3.
        assert row["at_cap"] == 2 * steps * BATCH  # relu6: 6; hard-swish: 3.
        assert row["frac_cap"] == pytest.approx(2 / len(KNOWN))


def test_counts_start_at_zero_and_grow_by_one_step_each_step():
    config = _config(count_kinks=True)
    mesh, state, step = _state_and_step(config, KnownHits())
    assert all(row["at_zero"] == 0 and row["n"] == 0 for row in tracking.kink_counts(state))
    batch = _batch(mesh)
    for done in (1, 2, 3):
        state, _ = step(state, batch)
        for row in tracking.kink_counts(state):
            assert (row["at_zero"], row["at_cap"]) == (done * BATCH, 2 * done * BATCH)


def test_the_tiny_mobilenet_counts_its_relu6_and_hard_swish_layers():
    config = _config(count_kinks=True)
    mesh, state, step = _state_and_step(config)
    state, _ = step(state, _batch(mesh))
    rows = tracking.kink_counts(state)
    layers = [row["layer"] for row in rows]
    assert any("stem" in name for name in layers)  # relu6
    assert any("head" in name for name in layers)  # hard-swish
    assert all(row["n"] > 0 and 0 <= row["at_zero"] <= row["n"] for row in rows)


def test_counting_is_off_by_default_and_changes_no_parameter():
    results = {}
    for count in (False, True):
        config = _config(count_kinks=count)
        mesh, state, step = _state_and_step(config)
        for seed in range(3):
            state, _ = step(state, _batch(mesh, seed=seed))
        results[count] = state
    assert "kinks" not in results[False].metrics
    assert tracking.kink_counts(results[False]) == []
    for a, b in zip(jax.tree.leaves(results[False].params), jax.tree.leaves(results[True].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# --- float16 and the loss scale ------------------------------------------------------------


def test_a_float16_run_of_the_tiny_model_trains():
    config = _config(dtype="float16")
    mesh, state, step = _state_and_step(config)
    assert state.metrics["loss_scale"]["scale"].dtype == jnp.float32
    batch = _batch(mesh)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.85 * losses[0], losses
    assert int(state.metrics["first_nonfinite"]) == -1
    assert int(state.metrics["loss_scale"]["skipped"]) == 0


def test_an_overflowing_step_is_skipped_and_the_scale_lowered():
    config = _config(dtype="float16")
    mesh, state, step = _state_and_step(config)
    huge = 2.0**40  # The scaled loss's float16 gradients overflow to inf.
    state = state.replace(metrics={**state.metrics,
                                   "loss_scale": loss_scale.initial_state(huge)})
    before = jax.device_get((state.params, state.opt_state, state.batch_stats))
    state, metrics = step(state, _batch(mesh))
    assert not np.isfinite(float(metrics["grad_norm"]))
    after = jax.device_get((state.params, state.opt_state, state.batch_stats))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
    scale = jax.device_get(state.metrics["loss_scale"])
    assert float(scale["scale"]) == huge / 2 and int(scale["skipped"]) == 1
    assert int(state.step) == 1 and int(state.metrics["first_nonfinite"]) == -1


def test_a_float16_fit_reports_its_loss_scale():
    _, summary = train.fit(_config(dtype="float16", model="tiny"), None)
    assert summary["skipped_steps"] == 0 and summary["loss_scale"] == loss_scale.INITIAL_SCALE
    assert np.isfinite(summary["test_loss"])


def test_the_scale_doubles_after_a_run_of_finite_steps_and_halves_on_an_overflow():
    state = loss_scale.initial_state(8.0)
    for _ in range(3):
        state = loss_scale.adjust(state, jnp.asarray(True), growth_interval=3)
    assert float(state["scale"]) == 16.0 and int(state["good_steps"]) == 0
    state = loss_scale.adjust(state, jnp.asarray(True), growth_interval=3)
    state = loss_scale.adjust(state, jnp.asarray(False), growth_interval=3)
    assert float(state["scale"]) == 8.0 and int(state["good_steps"]) == 0
    assert int(state["skipped"]) == 1


def test_unscale_undoes_scale_and_all_finite_sees_an_inf():
    state = loss_scale.initial_state(1024.0)
    grads = {"w": jnp.asarray([1024.0, -2048.0]), "b": jnp.asarray(3072.0)}
    np.testing.assert_array_equal(loss_scale.unscale(grads, state)["w"], [1.0, -2.0])
    assert bool(loss_scale.all_finite(grads))
    assert not bool(loss_scale.all_finite({**grads, "b": jnp.asarray(jnp.inf)}))


def test_a_scale_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match=r"loss_scale\.initial_state: scale must be > 0"):
        loss_scale.initial_state(0.0)
