"""Configurations for the MobileNet training example (see :mod:`mobilenet.configs.default`)."""

from mobilenet.configs.default import Config as Config
from mobilenet.configs.default import Resolved as Resolved
from mobilenet.configs.default import get_config as get_config
from mobilenet.configs.default import resolve as resolve
from mobilenet.infra.settings import ConfigMismatch as ConfigMismatch
from mobilenet.infra.settings import InvalidSetting as InvalidSetting

__all__ = ["Config", "ConfigMismatch", "InvalidSetting", "Resolved", "get_config", "resolve"]
