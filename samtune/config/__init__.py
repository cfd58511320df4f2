"""The one pydantic config tree, a module per section family (data, model, train, eval, registry,
stack), the root `Config` (root.py) and the loader (YAML, `extends`, `--set`, did-you-mean).
Imports pydantic and yaml only (the zoo lazily, to check a model); everything else imports it.
`from samtune.config import X` is the one import path for every name here."""
from samtune.config.base import Section
from samtune.config.data import (
    ConvertConfig,
    DataConfig,
    PhantomConfig,
    SplitConfig,
    ValidateConfig,
)
from samtune.config.eval import (
    BENCHMARK_FIXED,
    BenchmarkConfig,
    EvalConfig,
    InferConfig,
)
from samtune.config.loader import (
    CONFIGS_DIR,
    ConfigError,
    apply_overrides,
    load_config,
    resolve_config_path,
)
from samtune.config.model import LORA_TARGETS, LoraConfig, ModelConfig
from samtune.config.registry import RegistryConfig
from samtune.config.root import Config
from samtune.config.stack import ScheduleConfig, StackConfig, check_cron
from samtune.config.train import (
    AugmentConfig,
    DistributedConfig,
    PromptConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig", "BENCHMARK_FIXED", "BenchmarkConfig", "CONFIGS_DIR", "Config", "ConfigError",
    "ConvertConfig", "DataConfig", "DistributedConfig", "EvalConfig", "InferConfig",
    "LORA_TARGETS", "LoraConfig", "ModelConfig", "PhantomConfig", "PromptConfig",
    "RegistryConfig", "ScheduleConfig", "Section", "SplitConfig", "StackConfig", "TrainConfig",
    "ValidateConfig", "apply_overrides", "check_cron", "load_config", "resolve_config_path",
]
