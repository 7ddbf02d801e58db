"""The small interfaces the recipe calls for what is not recipe: the train state's tracked
entries (``tracking``), the layer options (``layer_options``), the settings checked against
the data and devices (``infra.setup_check``), the progress bar's timing (``infra.progress``),
the lifecycle's compile threads and divergence error, and each process's share of a batch."""

from __future__ import annotations

import math
import types

import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet import layer_options, loss_scale, models, tracking
from mobilenet.configs import get_config
from mobilenet.infra import distributed
from mobilenet.infra.lifecycle import Lifecycle, SetupError, TrainingDiverged
from mobilenet.infra.progress import Progress
from mobilenet.infra.setup_check import check_setup

# --- tracking ----------------------------------------------------------------------------


def test_nothing_tracked_leaves_the_step_plain():
    loss, grads = jnp.float32(2.5), {"w": jnp.ones(3)}
    assert tracking.mutable({}) == ["batch_stats"]
    assert tracking.scale_loss({}, loss) is loss
    assert tracking.unscale({}, grads) is grads
    assert tracking.updated({}, {}, jnp.float32(1.0)) == {}


def test_counting_kinks_makes_the_kink_collection_mutable():
    assert tracking.mutable({"kinks": {}}) == ["batch_stats", tracking.KINKS]


def test_the_loss_scale_scales_the_loss_and_unscales_the_gradients():
    metrics = {"loss_scale": loss_scale.initial_state(1024.0)}
    assert float(tracking.scale_loss(metrics, jnp.float32(3.0))) == 3072.0
    assert float(tracking.unscale(metrics, {"w": jnp.float32(3072.0)})["w"]) == 3.0


def test_a_nan_gradient_without_a_loss_scale_is_a_divergence():
    new, old = (jnp.ones(2),), (jnp.zeros(2),)
    kept, finite = tracking.keep_finite({}, jnp.float32(1.0), jnp.float32(jnp.nan), new, old)
    assert kept is new and not bool(finite)


def test_an_overflow_with_a_loss_scale_is_a_skipped_step():
    metrics = {"loss_scale": loss_scale.initial_state()}
    new, old = (jnp.ones(2),), (jnp.zeros(2),)
    kept, finite = tracking.keep_finite(metrics, jnp.float32(1.0), jnp.float32(jnp.inf),
                                        new, old)
    assert bool(finite)  # Not a divergence: the loss is finite.
    np.testing.assert_array_equal(kept[0], old[0])
    scale = tracking.updated(metrics, {}, jnp.float32(jnp.inf))["loss_scale"]
    assert int(scale["skipped"]) == 1


def test_a_state_without_kinks_reports_none():
    state = types.SimpleNamespace(metrics={}, step=jnp.int32(3))
    assert tracking.kink_counts(state) == [] and tracking.summary(state) == {}


def test_the_tracked_options_follow_the_config():
    assert tracking.options(get_config()) == (False, False)
    assert tracking.options(get_config(count_kinks=True, dtype="float16")) == (True, True)


# --- layer options -------------------------------------------------------------------------


@pytest.mark.parametrize("model, epsilon", [
    (models.MobileNetV1(num_classes=3), 1e-3),
    (models.MobileNetV2(num_classes=3), 1e-5),
    (models.MobileNetV2(num_classes=3, bn_epsilon=0.1), 0.1),
])
def test_the_layer_options_take_the_reference_epsilon_unless_set(model, epsilon):
    assert layer_options.LayerOptions.of(model).bn_epsilon == epsilon


def test_the_layer_options_carry_the_frozen_flag():
    assert layer_options.LayerOptions.of(models.TinyMobileNet(), bn_frozen=True).bn_frozen


def test_bad_layer_options_name_the_model_class():
    with pytest.raises(ValueError, match="MobileNetV2: pointwise must be one of"):
        layer_options.check(models.MobileNetV2(pointwise="fft"))


def test_a_float_config_gives_the_model_no_weight_quantization_fields():
    fields = get_config().model_fields()
    assert fields["activation_bits"] is None and "weight_bits" not in fields


def test_a_qat_config_gives_the_model_its_weight_quantization_fields():
    fields = get_config(weight_bits=8, bn_freeze_step=5).model_fields()
    assert (fields["weight_bits"], fields["bn_freeze_step"]) == (8, 5)


# --- settings against the data and the devices --------------------------------------------


def _data(num_train: int = 100) -> types.SimpleNamespace:
    return types.SimpleNamespace(name="digits", num_classes=10, train_labels=np.arange(10),
                                 train_images=np.zeros((num_train, 1)))


def test_setup_resolves_the_settings():
    num_classes, resolved = check_setup(get_config(batch_size=8, steps=3), _data(), devices=8)
    assert num_classes == 10 and resolved.total_steps == 3


@pytest.mark.parametrize("settings, devices, message", [
    ({"num_classes": 5}, 1, "num_classes 5 is too small for digits's 10 classes"),
    ({"batch_size": 12}, 8, "batch_size 12 and eval_batch_size 512 must be multiples of the 8"),
    ({"batch_size": 128}, 1, "batch_size 128 is larger than the 100 training examples"),
])
def test_setup_refuses_settings_that_do_not_fit(settings, devices, message):
    with pytest.raises(SetupError, match=f"^train: .*{message}"):
        check_setup(get_config(**settings), _data(), devices=devices)


# --- progress and lifecycle ----------------------------------------------------------------


def test_progress_times_the_steps_after_the_first(capsys):
    progress = Progress(total=4, start=0, batch_size=8, enabled=False)
    assert math.isnan(progress.fetched(0))  # Nothing timed yet.
    for done in (1, 2, 3):  # The first step compiles: the clock starts after it.
        progress.stepped(done, jnp.int32(done))
    speed = progress.fetched(3)
    assert speed == pytest.approx(2 * 8 / progress.seconds)  # Steps 2 and 3 only.
    progress.close()
    assert capsys.readouterr().err == ""  # Disabled: no bar.


def test_a_resumed_progress_times_from_its_first_step():
    progress = Progress(total=20, start=10, batch_size=4, enabled=False)
    for done in (11, 12):
        progress.stepped(done, jnp.int32(done))
    assert progress.fetched(12) == pytest.approx(4 / progress.seconds)
    progress.close()


def test_divergence_names_the_step_and_what_is_kept():
    error = Lifecycle(None).diverged(7)
    assert isinstance(error, TrainingDiverged)
    assert str(error).startswith("train: the loss or gradient became NaN/inf at step 7; "
                                 "stopped (no work directory, nothing saved)")


def test_compiling_gives_every_step_compiled_when_the_block_ends():
    class Step:
        def lower(self, *args):
            return types.SimpleNamespace(compile=lambda: ("compiled", args))

    life = Lifecycle(None)
    with life.compiling({"a": (Step(), (1, 2)), "b": (Step(), (3,))}) as compiled:
        pass
    assert compiled == {"a": ("compiled", (1, 2)), "b": ("compiled", (3,))}


def test_compiling_leaves_a_step_it_cannot_compile_ahead_as_it_is():
    def wrapped(state, batch):  # No .lower: the tests wrap steps so.
        return state, batch

    with Lifecycle(None).compiling({"train": (wrapped, (1, 2))}) as compiled:
        pass
    assert compiled == {"train": wrapped}


def test_one_process_places_the_whole_batch():
    batch = np.arange(8)
    assert distributed.process_share(batch) is batch
