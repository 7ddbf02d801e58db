"""Settings as dataclass fields that carry their own help, choices and bounds.

The machinery behind :class:`mobilenet.configs.default.Config`, for any dataclass
whose fields are made by :func:`setting`: construction by name (:func:`create`),
validation (:func:`validate`), the text ``--help`` shows (:func:`flag`,
:func:`default_text`, :func:`field_kind`) and the docstring's ``Attributes:``
(:func:`documented`). It imports no JAX and nothing of the example.

Examples:
  >>> import dataclasses
  >>> @documented
  ... @dataclasses.dataclass
  ... class Settings:
  ...     '''Two settings.'''
  ...     steps: int = setting(10, "training steps", group="run", minimum=1)
  ...     lr: float | None = setting(None, "learning rate", group="run", above=0,
  ...                                derived="0.1")
  >>> validate(Settings(steps=0))
  Traceback (most recent call last):
    ...
  mobilenet.infra.settings.InvalidSetting: Config: steps must be >= 1, got 0.
  >>> print(Settings.__doc__.splitlines()[-1])
    lr: learning rate (default: 0.1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, help: str, *, group: str, choices: tuple[str, ...] = (),
            minimum: float | None = None, above: float | None = None,
            below: float | None = None, derived: str | None = None,
            neutral: str | None = None) -> Any:
    """A dataclass field with its command-line metadata.

    Args:
      default: The default value.
      help: One phrase for ``--help`` (no default: it is appended).
      group: The section of ``--help``.
      choices: The allowed values (strings), if any.
      minimum: Inclusive lower bound of a number.
      above: Exclusive lower bound of a number.
      below: Exclusive upper bound of a number.
      derived: What ``None`` resolves to, for ``--help`` ("0.05 for sgd, ...").
      neutral: Why the field cannot change the trajectory or the final metrics;
        :func:`mobilenet.infra.resume_check.check_resume` then lets a resumed run
        change it. ``None``: it can.
    """
    metadata = {"help": help, "group": group, "choices": choices, "minimum": minimum,
                "above": above, "below": below, "derived": derived, "neutral": neutral}
    return dataclasses.field(default=default, metadata=metadata)


class InvalidSetting(ValueError):
    """A setting holds a value it does not allow.

    Attributes:
      field: The field's name.
      reason: What is wrong and what is allowed ("must be > 0, got -1").
    """

    def __init__(self, field: str, reason: str):
        super().__init__(f"Config: {field} {reason}.")
        self.field = field
        self.reason = reason


class ConfigMismatch(ValueError):
    """A resumed run's settings would change its trajectory (one line per differing setting)."""


def default_text(field: dataclasses.Field) -> str:
    """The default of a field as ``--help`` shows it: its value, ``on``/``off``, or what
    ``None`` resolves to."""
    if field.default is None:
        return field.metadata["derived"] or "none"
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    return str(field.default)


def per_choice(values: Mapping[str, float]) -> str:
    """A default per choice, in words (for ``derived``).

    Examples:
      >>> per_choice({"sgd": 0.05, "adamw": 1e-2})
      '0.05 for sgd, 0.01 for adamw'
    """
    return ", ".join(f"{value:g} for {name}" for name, value in values.items())


def flag(name: str) -> str:
    """The command-line flag of the field ``name``.

    Examples:
      >>> flag("batch_size")
      '--batch-size'
    """
    return "--" + name.replace("_", "-")


def field_kind(field: dataclasses.Field) -> tuple[type, bool]:
    """The base type of a field (bool, int, float or str) and whether it may be ``None``."""
    names = [name.strip() for name in str(field.type).split("|")]
    base = {"bool": bool, "int": int, "float": float, "str": str}[names[0]]
    return base, "None" in names


def documented(cls: type[T]) -> type[T]:
    """Appends ``Attributes:`` (each field's help and default) to a dataclass's docstring."""
    cls.__doc__ = (f"{cls.__doc__}\n\nAttributes:\n" + "\n".join(
        f"  {field.name}: {field.metadata['help']} (default: {default_text(field)})."
        for field in dataclasses.fields(cls)))  # type: ignore[arg-type]
    return cls


def create(cls: type[T], overrides: dict[str, Any], *, caller: str) -> T:
    """``cls(**overrides)``, for a dataclass ``cls`` (not validated).

    Raises:
      TypeError: an override names no field (the message names ``caller``).
    """
    fields = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{caller}: unknown setting(s) {unknown}; known: {sorted(fields)}.")
    return cls(**overrides)


def validate(settings: T) -> T:
    """Checks every field of ``settings`` against its type, choices and bounds; returns it.

    Numbers must be finite (no NaN or infinity).

    Raises:
      InvalidSetting: (a ``ValueError``) naming the bad field and what is allowed.
    """
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        _check_field(field, getattr(settings, field.name))
    return settings


def _check_type(name: str, base: type, value: Any) -> None:
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        allowed = "a number"
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        allowed = "an integer"
    else:
        ok = isinstance(value, base)
        allowed = {bool: "True or False", str: "a string"}[base]
    if not ok:
        raise InvalidSetting(name, f"must be {allowed}, got {value!r}")
    if base is float and not math.isfinite(value):
        raise InvalidSetting(name, f"must be a finite number, got {value!r}")


def _check_field(field: dataclasses.Field, value: Any) -> None:
    name, meta = field.name, field.metadata
    base, optional = field_kind(field)
    if value is None:
        if not optional:
            raise InvalidSetting(name, "must be set, got None")
        return
    _check_type(name, base, value)
    if meta["choices"] and value not in meta["choices"]:
        raise InvalidSetting(name, f"must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise InvalidSetting(name, f"must be >= {meta['minimum']}, got {value!r}")
    if meta["above"] is not None and value <= meta["above"]:
        raise InvalidSetting(name, f"must be > {meta['above']}, got {value!r}")
    if meta["below"] is not None and value >= meta["below"]:
        raise InvalidSetting(name, f"must be < {meta['below']}, got {value!r}")
