"""Training: losses by mode, schedules, the jitted step and the resumable loop."""
from jaxprune.train.config import ConfigError, base_config, validate_config
from jaxprune.train.losses import LOSSES, Context
from jaxprune.train.loop import (NaNLossError, evaluate, fit, make_context, make_eval_fn,
                                 make_train_step, train_and_evaluate)
from jaxprune.train.state import TrainState, init_state, make_optimizer

__all__ = ["ConfigError", "base_config", "validate_config", "LOSSES", "Context", "NaNLossError",
           "evaluate", "fit", "make_context", "make_eval_fn", "make_train_step",
           "train_and_evaluate", "TrainState", "init_state", "make_optimizer"]
