"""The experiment config: schema and loading."""

from train.config.load import ConfigError, build_config, load_config, parse_overrides
from train.config.schema import ExperimentConfig

__all__ = ["ConfigError", "ExperimentConfig", "build_config", "load_config", "parse_overrides"]
