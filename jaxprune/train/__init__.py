"""Training: losses by mode, schedules, the jitted step and the resumable loop."""
from jaxprune.errors import ConfigError
from jaxprune.train.config import validate
from jaxprune.train.losses import LOSSES, Context
from jaxprune.train.loop import (NaNLossError, evaluate, fit, make_context, make_eval_fn,
                                 make_train_step, prepare, train_and_evaluate)
from jaxprune.train.state import TrainState, init_state, make_optimizer

__all__ = ["ConfigError", "validate", "LOSSES", "Context", "NaNLossError", "evaluate", "fit",
           "make_context", "make_eval_fn", "make_train_step", "prepare", "train_and_evaluate",
           "TrainState", "init_state", "make_optimizer"]
