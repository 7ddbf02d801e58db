"""Configurations for the MobileNet training example (see :mod:`mobilenet.configs.default`)."""

from mobilenet.configs.default import Config as Config
from mobilenet.configs.default import get_config as get_config

__all__ = ["Config", "get_config"]
