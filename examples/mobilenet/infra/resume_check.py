"""Whether a run may resume under this invocation's settings: :func:`check_resume`.

A resumed run must continue the trajectory it started: every setting that can
change the result must be the run's own. The fields that cannot say why in their
metadata (``neutral``, see :func:`mobilenet.infra.settings.setting`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mobilenet import optim
from mobilenet.configs import default
from mobilenet.configs.default import Config
from mobilenet.infra.settings import ConfigMismatch, flag

# The run's length: changing it recomputes the learning-rate schedule, which only
# `allow_schedule_change` accepts.
_LENGTH_FIELDS = ("steps", "epochs")
# Fields whose `None` resolves from the config alone: compared as resolved values.
_RESOLVED = {"learning_rate": default.learning_rate, "weight_decay": default.weight_decay,
             "max_shift": default.max_shift}
# Fields that only matter for some data sets.
_DATA_ONLY = {"image_size": "synthetic", "synthetic_examples": "synthetic"}


def check_resume(saved: Mapping[str, Any], config: Config, *, num_train: int | None = None,
                 step: int | None = None) -> list[str]:
    """Checks that resuming a run saved with ``saved`` settings under ``config`` is sound.

    A setting that changes the trajectory (the model, the data, the optimizer and
    its hyperparameters, the batch, the seed, ...) must be the run's own. Fields
    whose metadata say they are neutral (logging, evaluation and checkpoint
    frequency, the evaluation batch, progress, plot, the data directory, ...) may
    change. Derived defaults compare as resolved values (``--lr 0.05`` with SGD is
    the default), and settings that do not apply are skipped (``image_size``
    without synthetic data, ``steps`` when ``epochs`` is set, ``max_shift``
    without augmentation). Another length (``steps``/``epochs``) recomputes the
    learning-rate schedule: refused unless ``config.allow_schedule_change``.

    Args:
      saved: The run's settings as written to its ``config.json``
        (``dataclasses.asdict`` of its :class:`~mobilenet.configs.default.Config`);
        missing fields take their defaults, unknown ones are ignored.
      config: The settings of this invocation.
      num_train: Training examples of the data set; needed to compare lengths in
        epochs as steps (without it, the epochs are compared and described).
      step: The step the run resumes from (for the description of a schedule
        change); ``None``: the end of the run's schedule.

    Returns:
      Lines that describe an accepted schedule change (empty without one).

    Raises:
      ConfigMismatch: one line per differing setting, with both values, then what to do.

    Examples:
      >>> check_resume({"steps": 300, "log_every": 25}, Config(steps=300, log_every=5))
      []
      >>> check_resume({"seed": 0, "learning_rate": None}, Config(seed=1, learning_rate=0.1))
      Traceback (most recent call last):
        ...
      mobilenet.infra.settings.ConfigMismatch: train: ...
        --learning-rate: the run used 0.05 (default), now 0.1
        --seed: the run used 0, now 1
      Use a new --workdir, or the run's settings (in its config.json).
    """
    names = {field.name for field in dataclasses.fields(Config)}
    old = dataclasses.replace(Config(), **{k: v for k, v in saved.items() if k in names})
    lines = _differing_settings(old, config)
    schedule_lines, notes = _schedule_changes(old, config, num_train, step)
    lines += schedule_lines
    if lines:
        raise ConfigMismatch(
            "train: the work directory holds a run with other settings, which change its "
            "result:\n" + "\n".join(lines) +
            "\nUse a new --workdir, or the run's settings (in its config.json).")
    return notes


def _schedule_changes(old: Config, new: Config, num_train: int | None, step: int | None
                      ) -> tuple[list[str], list[str]]:
    """Refused changes of the warm-up and the length (lines), and the notes of an allowed one."""
    lines, notes = [], []
    old_total, new_total = _length(old, num_train), _length(new, num_train)
    old_warmup, new_warmup = _warmup(old, old_total), _warmup(new, new_total)
    if (old_warmup[0] != new_warmup[0]
            and (old.warmup_steps, new.warmup_steps) != (None, None)):
        lines.append(_differs("warmup_steps", _show(*old_warmup), _show(*new_warmup)))
    if old_total != new_total:
        if new.allow_schedule_change:
            notes = _describe_schedule_change(old, new, old_total, new_total, step)
        else:
            lines.append(f"  {_length_flag(new)}: the run used {_show_length(old_total)}, "
                         f"now {_show_length(new_total)} (another learning-rate schedule; "
                         f"--allow-schedule-change accepts it)")
    return lines, notes


def _differing_settings(old: Config, new: Config) -> list[str]:
    """One line per setting (not neutral, not the length or the warm-up) that differs."""
    lines = []
    for field in dataclasses.fields(Config):
        name = field.name
        if field.metadata["neutral"] or name in _LENGTH_FIELDS or name == "warmup_steps":
            continue
        if name in _DATA_ONLY and _DATA_ONLY[name] not in (old.data, new.data):
            continue
        resolve_field = _RESOLVED.get(name)
        if resolve_field is not None:
            was, now = resolve_field(old), resolve_field(new)
            if was != now:
                lines.append(_differs(name, _show(was, getattr(old, name) is None),
                                      _show(now, getattr(new, name) is None)))
        elif getattr(old, name) != getattr(new, name):
            lines.append(_differs(name, _show_field(field, getattr(old, name)),
                                  _show_field(field, getattr(new, name))))
    return lines


def _differs(name: str, was: str, now: str) -> str:
    return f"  {flag(name)}: the run used {was}, now {now}"


def _show(value: Any, is_default: bool = False) -> str:
    if value is None:
        return "the default"
    if isinstance(value, bool):
        text = "on" if value else "off"
    else:
        text = str(value)
    return f"{text} (default)" if is_default else text


def _show_field(field: dataclasses.Field, value: Any) -> str:
    if value is None:
        return f"the default ({field.metadata['derived'] or 'none'})"
    return _show(value)


def _length(config: Config, num_train: int | None) -> tuple[str, float]:
    """``("steps", n)``, or ``("epochs", e)`` when the steps cannot be counted."""
    if config.epochs is not None and num_train is None:
        return "epochs", config.epochs
    if config.epochs is not None:
        return "steps", default.total_steps(config, num_train=num_train)
    return "steps", config.steps


def _length_flag(config: Config) -> str:
    return "--epochs" if config.epochs is not None else "--steps"


def _show_length(length: tuple[str, float]) -> str:
    return f"{length[1]} {length[0]}"


def _warmup(config: Config, length: tuple[str, float]) -> tuple[Any, bool]:
    """The resolved warm-up (or the raw field when the steps are unknown), and if default."""
    if length[0] == "steps":
        return (default.warmup_steps(config, total_steps=int(length[1])),
                config.warmup_steps is None)
    return config.warmup_steps, False


def _describe_schedule_change(old: Config, new: Config, old_length: tuple[str, float],
                              new_length: tuple[str, float], step: int | None) -> list[str]:
    if "epochs" in (old_length[0], new_length[0]):
        return [(f"the learning-rate schedule is recomputed for {_show_length(new_length)} "
                 f"instead of {_show_length(old_length)}")]
    old_total, new_total = int(old_length[1]), int(new_length[1])
    at = old_total if step is None else int(step)
    warmups = (default.warmup_steps(old, total_steps=old_total),
               default.warmup_steps(new, total_steps=new_total))
    text = (f"the learning-rate schedule is recomputed for {new_total} steps instead of "
            f"{old_total}" + (f" (warm-up {warmups[1]} steps instead of {warmups[0]})"
                              if warmups[0] != warmups[1] else ""))
    if at >= new_total:
        return [text, f"the run is at step {at}, past the new end: it trains no further"]
    # The schedule itself gives the values, as the training step sees them.
    was = float(optim.learning_rate_schedule(old, total_steps=old_total)(at))
    now = float(optim.learning_rate_schedule(new, total_steps=new_total)(at))
    return [text, (f"step {at} continues at learning rate {now:.4g} instead of {was:.4g}, "
                   f"decaying to 0 at step {new_total}")]
