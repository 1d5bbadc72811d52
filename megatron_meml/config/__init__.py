"""Configuration: one dataclass tree (schema.py) and its YAML/CLI loader (loader.py)."""
from .loader import describe, load_config, save_config, to_dict
from .schema import (
                     CheckpointConfig,
                     Config,
                     ConfigError,
                     DataConfig,
                     EvalConfig,
                     ExpertsConfig,
                     LoggingConfig,
                     MEFConfig,
                     ModelConfig,
                     OptimizerConfig,
                     ParallelConfig,
                     PrecisionConfig,
                     RIELConfig,
                     RolloutConfig,
                     SyntheticConfig,
)

__all__ = ["Config", "ConfigError", "load_config", "save_config", "to_dict", "describe", "ModelConfig",
           "ParallelConfig", "PrecisionConfig", "OptimizerConfig", "DataConfig", "SyntheticConfig", "ExpertsConfig",
           "MEFConfig", "RIELConfig", "RolloutConfig", "EvalConfig", "CheckpointConfig", "LoggingConfig"]
