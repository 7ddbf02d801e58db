"""Tests of the example's settings: the Config, its derived defaults and the optimizer.

(examples/mobilenet/configs/default.py, examples/mobilenet/optim.py and the machinery
behind them in examples/mobilenet/infra/: settings.py, resume_check.py, state_size.py.)
"""

from __future__ import annotations

import dataclasses
import importlib.util
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
from mobilenet.infra import resume_check, state_size
from mobilenet.infra import settings as infra_settings

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
    assert default.total_steps(Config(steps=7), num_train=64) == 7
    assert default.total_steps(Config(epochs=2.5, batch_size=16), num_train=64) == 10


def test_the_default_schedule_warms_up_over_a_tenth_of_the_steps():
    schedule = optim.learning_rate_schedule(Config(), total_steps=300)  # 0.05, 30 warm-up.
    assert (round(float(schedule(0)), 6), round(float(schedule(29)), 6)) == (0.001667, 0.05)


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
    with pytest.raises(infra_settings.InvalidSetting, match="optimizer must be one of sgd, adamw"):
        optim.create_optimizer(Config(optimizer="rmsprop"), total_steps=10)


# --- validation ----------------------------------------------------------------------------


def test_an_unknown_setting_is_refused():
    with pytest.raises(TypeError, match="get_config: unknown setting"):
        default.get_config(learning_rte=0.1)


@pytest.mark.parametrize("name, value, message", [
    ("optimizer", "rmsprop", "must be one of sgd, adamw"),
    ("model", "resnet", "must be one of"),
    ("batch_size", 0, "must be >= 1"),
    ("steps", 0, "must be >= 1"),
    ("eval_every", -1, "must be >= 0"),
    ("seed", -1, "must be >= 0"),
    ("num_classes", 1, "must be >= 2"),
    ("width", 0.0, "must be > 0"),
    ("learning_rate", 0.0, "must be > 0"),
    ("epochs", -1.0, "must be > 0"),
    ("weight_decay", -1e-4, "must be >= 0"),
    ("label_smoothing", 1.0, "must be < 1"),
    ("momentum", 1.0, "must be < 1"),
    ("batch_size", 1.5, "must be an integer"),
    ("batch_norm", 1, "must be True or False"),
    ("width", "wide", "must be a number"),
    ("steps", None, "must be set"),
])
def test_a_bad_value_is_refused_naming_the_field(name, value, message):
    with pytest.raises(infra_settings.InvalidSetting, match=f"^Config: {name} {message}") as info:
        default.get_config(**{name: value})
    assert info.value.field == name


FLOAT_FIELDS = [f.name for f in dataclasses.fields(Config)
                if infra_settings.field_kind(f)[0] is float]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_non_finite_number_is_refused(name, value):
    with pytest.raises(infra_settings.InvalidSetting,
                       match=f"^Config: {name} must be a finite number, got {value}.$"):
        default.get_config(**{name: value})


# --- the command line ----------------------------------------------------------------------


def _load_cli():
    spec = importlib.util.spec_from_file_location("train_cli", os.path.join(EXAMPLES,
                                                                            "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli()
FIELDS = dataclasses.fields(Config)


def _other_value(field):
    """A valid value of ``field`` other than its default, as (flag arguments, value)."""
    base, _ = infra_settings.field_kind(field)
    flag = infra_settings.flag(field.name)
    if base is bool:
        return [flag if not field.default else "--no-" + flag[2:]], not field.default
    if field.metadata["choices"]:
        value = next(c for c in field.metadata["choices"] if c != field.default)
    elif base is str:
        value = "/some/dir"
    elif base is int:
        value = 3 if field.default is None else field.default + 1
    else:
        value = 0.25 if field.default != 0.25 else 0.5
    return [flag, str(value)], value


@pytest.fixture(scope="module")
def help_text():
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("field", FIELDS, ids=[f.name for f in FIELDS])
def test_help_has_a_flag_for_every_field(help_text, field):
    assert infra_settings.flag(field.name) in help_text


@pytest.mark.parametrize("field", FIELDS, ids=[f.name for f in FIELDS])
def test_the_flag_of_every_field_sets_it(field):
    args, value = _other_value(field)
    config, _ = cli.parse(args)
    assert getattr(config, field.name) == value
    unchanged = {f.name: getattr(config, f.name) for f in FIELDS if f.name != field.name}
    assert unchanged == {f.name: getattr(Config(), f.name) for f in FIELDS if f is not field}


def test_no_flags_give_the_default_config():
    config, options = cli.parse([])
    assert config == Config()
    assert options == {"summary": False, "workdir": None, "compilation_cache": True,
                       "compilation_cache_dir": None}


@pytest.mark.parametrize("args, options", [
    (["--no-compilation-cache"], {"compilation_cache": False}),
    (["--compilation-cache-dir", "/tmp/cache"], {"compilation_cache_dir": "/tmp/cache"}),
])
def test_the_compilation_cache_options_are_not_settings_of_the_run(args, options):
    config, parsed = cli.parse(args)
    assert config == Config()
    assert {name: parsed[name] for name in options} == options


def test_help_shows_the_resolved_defaults(help_text):
    text = " ".join(help_text.split())
    assert "default: 0.05 for sgd, 0.01 for adamw" in text
    assert "default: 5e-05 for sgd, 0.05 for adamw" in text
    assert f"(default: {Config().steps})" in text and "(default: on)" in text


@pytest.mark.parametrize("args, name, value", [
    (["--lr", "0.2"], "learning_rate", 0.2),
    (["--no-batch-norm"], "batch_norm", False),
    (["--no-augment"], "augment", False),
    (["--no-progress"], "progress", False),
    (["--no-plot"], "plot", False),
    (["--small-input"], "small_input", True),
    (["--distributed"], "distributed", True),
    (["--epochs", "2"], "epochs", 2.0),
])
def test_the_readme_spellings_still_work(args, name, value):
    config, _ = cli.parse(args)
    assert getattr(config, name) == value


def test_summary_defaults_to_the_papers_width():
    assert cli.parse(["--summary"])[0].width == 1.0
    assert cli.parse(["--summary", "--width", "0.75"])[0].width == 0.75
    config, options = cli.parse(["--workdir", "w"])
    assert (config, options["summary"], options["workdir"]) == (Config(), False, "w")


@pytest.mark.parametrize("args, message", [
    (["--width", "nan"], "error: argument --width: must be a finite number, got nan"),
    (["--epochs", "inf"], "error: argument --epochs: must be a finite number, got inf"),
    (["--grad-at-zero", "nan"], "error: argument --grad-at-zero: must be a finite number"),
    (["--momentum", "nan"], "error: argument --momentum: must be a finite number"),
    (["--lr=-inf"], "error: argument --learning-rate: must be a finite number"),
    (["--batch-size", "0"], "error: argument --batch-size: must be >= 1, got 0"),
    (["--steps", "3", "--epochs", "2"], "error: argument --epochs: not allowed with"),
    (["--optimizer", "rmsprop"], "error: argument --optimizer: invalid choice"),
])
def test_a_bad_flag_exits_2_with_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        cli.parse(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_the_command_line_refuses_nan_without_jax_or_a_traceback():
    # As `python examples/train.py --width nan`, whose folder Python puts on sys.path.
    code = ("import runpy, sys; sys.argv = ['train.py', '--width', 'nan']\n"
            "sys.path.insert(0, {!r})\n"
            "try:\n    runpy.run_path({!r}, run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    assert 'jax' not in sys.modules, 'jax imported'\n"
            "    raise\n").format(EXAMPLES, os.path.join(EXAMPLES, "train.py"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: argument --width: must be a finite number, got nan (see --help)"]


# --- memory --------------------------------------------------------------------------------


def _abstract_state(width):
    from mobilenet import models

    model = models.create_model("tiny", num_classes=10, width_multiplier=width)
    variables = jax.eval_shape(
        lambda key: model.init({"params": key, "dropout": key},
                               jnp.zeros((1, 16, 16, 3), jnp.float32), train=False),
        jax.ShapeDtypeStruct((2,), jnp.uint32))
    tx = optim.create_optimizer(Config(), total_steps=10)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = jax.eval_shape(tx.init, variables["params"])
    return variables["params"], opt_state


def test_a_model_too_wide_for_memory_is_refused_before_allocation():
    params, opt_state = _abstract_state(1e6)
    with pytest.raises(state_size.StateTooLarge,
                       match=r"^train: [\d,]+ parameters .* use a smaller"):
        state_size.check_state_fits(params, opt_state)


def test_a_small_model_fits():
    params, opt_state = _abstract_state(0.5)
    needed = state_size.check_state_fits(params, opt_state)
    # SGD with momentum: one float32 trace per parameter, plus the schedule's step count.
    traces = 2 * state_size.state_bytes(params)
    assert 0 < traces < needed <= traces + 16


def test_the_copies_of_a_replicated_state_count():
    params, opt_state = _abstract_state(0.5)
    needed = state_size.check_state_fits(params, opt_state, limit_bytes=10**12)
    with pytest.raises(state_size.StateTooLarge, match=r"\(8 copies, one per device\)"):
        state_size.check_state_fits(params, opt_state, limit_bytes=needed * 8 - 1, copies=8)


# --- resuming ------------------------------------------------------------------------------


SAVED = dataclasses.asdict(Config())
NEUTRAL = [f for f in FIELDS if f.metadata["neutral"]]
TRAJECTORY = [f for f in FIELDS
              if not f.metadata["neutral"] and f.name not in ("steps", "epochs")]


def _changed(field):
    """A valid config that differs from the default in ``field`` (resolved), and the value."""
    _base, _ = infra_settings.field_kind(field)
    if field.name in ("learning_rate", "weight_decay", "max_shift", "warmup_steps"):
        value = {"learning_rate": 0.2, "weight_decay": 1e-3, "max_shift": 3,
                 "warmup_steps": 7}[field.name]
    else:
        _, value = _other_value(field)
    settings = {field.name: value}
    if field.name in ("image_size", "synthetic_examples"):
        settings["data"] = "synthetic"
    return Config(**settings), value


@pytest.mark.parametrize("field", TRAJECTORY, ids=[f.name for f in TRAJECTORY])
def test_resuming_with_a_setting_that_changes_the_trajectory_is_refused(field):
    config, value = _changed(field)
    saved = {**SAVED, "data": "synthetic"} if config.data == "synthetic" else SAVED
    with pytest.raises(infra_settings.ConfigMismatch) as info:
        resume_check.check_resume(saved, config)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("train: ")
    assert lines[-1].startswith("Use a new --workdir, or the run's settings")
    flag = infra_settings.flag(field.name)
    mine = [line for line in lines if line.strip().startswith(flag + ":")]
    assert len(mine) == 1, lines
    shown = ("on" if value else "off") if isinstance(value, bool) else str(value)
    assert mine[0].endswith(f", now {shown}"), mine[0]


@pytest.mark.parametrize("field", NEUTRAL, ids=[f.name for f in NEUTRAL])
def test_resuming_with_a_neutral_setting_changed_is_accepted(field):
    config, _ = _changed(field)
    assert resume_check.check_resume(SAVED, config) == []


@pytest.mark.parametrize("settings", [
    {"learning_rate": 0.05}, {"weight_decay": 5e-5}, {"max_shift": 2}, {"warmup_steps": 55},
    {"augment": False, "max_shift": 3}], ids=str)
def test_an_explicit_value_equal_to_the_resolved_default_is_the_same_run(settings):
    saved = {**SAVED, "augment": settings.get("augment", True)}
    assert resume_check.check_resume(saved, Config(**settings)) == []


def test_another_optimizer_differs_with_its_defaults():
    with pytest.raises(infra_settings.ConfigMismatch) as info:
        resume_check.check_resume(SAVED, Config(optimizer="adamw"))
    message = str(info.value)
    assert "--optimizer: the run used sgd, now adamw" in message
    assert "--learning-rate: the run used 0.05 (default), now 0.01 (default)" in message
    assert "--weight-decay: the run used 5e-05 (default), now 0.05 (default)" in message


def test_an_old_config_json_compares_missing_fields_as_defaults():
    old = {k: v for k, v in SAVED.items()
           if k not in ("synthetic_examples", "keep_checkpoints", "seed")}
    old["a_removed_setting"] = 1
    assert resume_check.check_resume(old, Config(keep_checkpoints=5)) == []
    with pytest.raises(infra_settings.ConfigMismatch, match="--seed: the run used 0, now 4"):
        resume_check.check_resume(old, Config(seed=4))


def test_another_length_is_refused_without_the_opt_in():
    with pytest.raises(infra_settings.ConfigMismatch) as info:
        resume_check.check_resume(SAVED, Config(steps=1100))
    assert ("--steps: the run used 550 steps, now 1100 steps (another learning-rate schedule; "
            "--allow-schedule-change accepts it)") in str(info.value)


@pytest.mark.parametrize("step", [None, 200])
def test_another_length_with_the_opt_in_says_what_the_schedule_does(step):
    config = Config(steps=1100, allow_schedule_change=True)
    notes = resume_check.check_resume(SAVED, config, step=step)
    at = 550 if step is None else step
    was = float(optim.learning_rate_schedule(Config(), total_steps=550)(at))
    now = float(optim.learning_rate_schedule(config, total_steps=1100)(at))
    assert now > was
    assert notes == [
        "the learning-rate schedule is recomputed for 1100 steps instead of 550 "
        "(warm-up 110 steps instead of 55)",
        f"step {at} continues at learning rate {now:.4g} instead of {was:.4g}, "
        "decaying to 0 at step 1100"]


def test_a_shorter_schedule_past_the_resumed_step_trains_no_further():
    config = Config(steps=100, allow_schedule_change=True)
    notes = resume_check.check_resume(SAVED, config, step=300)
    assert notes[-1] == "the run is at step 300, past the new end: it trains no further"


def test_an_explicit_warmup_change_is_refused_even_with_the_opt_in():
    saved = {**SAVED, "warmup_steps": 30}
    config = Config(steps=600, warmup_steps=45, allow_schedule_change=True)
    with pytest.raises(infra_settings.ConfigMismatch,
                       match="--warmup-steps: the run used 30, now 45"):
        resume_check.check_resume(saved, config)


def test_epochs_compare_as_steps_when_the_training_set_is_known():
    # 1437 examples, batch 64: 22 steps per epoch, so 2 epochs are the run's 44 steps.
    saved = {**SAVED, "steps": 44}
    assert resume_check.check_resume(saved, Config(epochs=2.0), num_train=1437) == []
    with pytest.raises(infra_settings.ConfigMismatch,
                       match="--epochs: the run used 44 steps, now 66"):
        resume_check.check_resume(saved, Config(epochs=3.0), num_train=1437)


def test_steps_are_ignored_when_epochs_are_set():
    saved = {**SAVED, "epochs": 2.0, "steps": 300}
    assert resume_check.check_resume(saved, Config(epochs=2.0, steps=50)) == []


def test_epochs_without_the_training_set_are_described_in_epochs():
    saved = {**SAVED, "epochs": 2.0}
    notes = resume_check.check_resume(saved, Config(epochs=4.0, allow_schedule_change=True))
    assert notes == ["the learning-rate schedule is recomputed for 4.0 epochs instead of "
                     "2.0 epochs"]


def test_an_unchanged_run_with_the_opt_in_says_nothing():
    assert resume_check.check_resume(SAVED, Config(allow_schedule_change=True)) == []
