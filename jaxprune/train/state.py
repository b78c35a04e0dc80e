"""Train state and optimizer construction."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxprune.models import apply_masks, init_masks
from jaxprune.train import schedules


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  masks: Any
  key: jax.Array


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
  """Clip the global norm, add L2 weight decay (PyTorch-style, coupled), then Adam or SGD."""
  lr = schedules.lr_schedule(cfg.lr, cfg.lr_milestones, cfg.lr_decay, steps_per_epoch)
  if cfg.optimizer == "adam":
    core = optax.scale_by_adam()
  elif cfg.optimizer == "sgd":
    core = optax.trace(decay=cfg.momentum) if cfg.momentum else optax.identity()
  else:
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'sgd'")
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
      optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
      core,
      optax.scale_by_learning_rate(lr))


def init_state(model, input_shape, tx, seed: int, masks=None,
               mask_include=("conv",)) -> TrainState:
  """Fresh state; masks default to all-ones over the prunable kernels."""
  init_key, key = jax.random.split(jax.random.PRNGKey(seed))
  variables = jax.jit(model.init, static_argnames="train")(
      init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
  params = variables["params"]
  if masks is None:
    masks = init_masks(params, model.layers, mask_include)
  params = apply_masks(params, masks)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), masks=masks, key=key)
