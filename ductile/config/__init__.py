"""Configuration: model (frozen dataclasses), loader, rules and JSON Schema."""

from ductile.config.load import LoadedConfig, inspect_config, load_config
from ductile.config.model import AccountConfig, Config, PluginConfig

__all__ = ["AccountConfig", "Config", "LoadedConfig", "PluginConfig", "inspect_config", "load_config"]
