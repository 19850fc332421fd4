"""Configuration: the pydantic schema and the one loader.

Load once at start with :func:`load_config` and pass the result in explicitly; nothing in the
project reads configuration from a module-level global.
"""
from config.loader import ConfigError, default_config_path, load_config
from config.schema import (
    AppConfig,
    DestinationConfig,
    NodeConfig,
    OutboxConfig,
    OutputConfig,
    PlannerConfig,
    QueueConfig,
    RouteConfig,
)

__all__ = [
    "AppConfig",
    "ConfigError",
    "DestinationConfig",
    "NodeConfig",
    "OutboxConfig",
    "OutputConfig",
    "PlannerConfig",
    "QueueConfig",
    "RouteConfig",
    "default_config_path",
    "load_config",
]
