"""Training: config, the stage loop (teacher / csd / student), checkpoints, DDP and the CLI."""
from .config import ConfigError, TrainConfig, load_config, save_config
from .trainer import KILL_AFTER_ENV, NonFiniteLossError, train

__all__ = ["ConfigError", "KILL_AFTER_ENV", "NonFiniteLossError", "TrainConfig", "load_config",
           "save_config", "train"]
