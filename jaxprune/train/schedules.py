"""Per-step schedules: perturbation radius, clean-loss weight, learning rate."""
from __future__ import annotations

import numpy as np
import optax


def smoothed_eps(step: int, eps_max: float, steps_per_epoch: int, start_epoch: int = 11,
                 length: int = 81, mid: float = 0.4, beta: float = 4.0) -> float:
  """auto_LiRPA's "SmoothedScheduler" (the paper's code): 0, then exponential, then linear.

  Epochs are 1-based as in the original: eps is 0 through epoch `start_epoch - 1`,
  grows as t^beta until `mid` of the ramp (slope-matched), then linearly to
  `eps_max` at the end of epoch `start_epoch + length - 1`.
  """
  epoch, batch = divmod(step, steps_per_epoch)
  t = epoch * steps_per_epoch + batch + 1  # (epoch-1)*len + batch with 1-based epoch/batch
  init_step = (start_epoch - 1) * steps_per_epoch + 1
  final_step = (start_epoch + length - 1) * steps_per_epoch
  mid_step = int((final_step - init_step) * mid) + init_step
  p = float(mid_step - init_step) ** (beta - 1.0)
  alpha = eps_max / ((final_step - mid_step) * beta * p + (mid_step - init_step) * p)
  mid_value = alpha * float(mid_step - init_step) ** beta
  if t <= init_step:
    return 0.0
  if t < mid_step:
    return alpha * float(t - init_step) ** beta
  return min(mid_value + (eps_max - mid_value) * (t - mid_step) / (final_step - mid_step), eps_max)


def linear_eps(step: int, eps_max: float, steps_per_epoch: int, start_epoch: int = 11,
               length: int = 81) -> float:
  """0 before `start_epoch` (1-based), linear ramp over `length` epochs, then `eps_max`."""
  begin = (start_epoch - 1) * steps_per_epoch
  frac = (step + 1 - begin) / max(length * steps_per_epoch, 1)
  return float(eps_max * np.clip(frac, 0.0, 1.0))


EPS_SCHEDULES = {"smoothed": smoothed_eps, "linear": linear_eps,
                 "constant": lambda step, eps_max, steps_per_epoch, **_: eps_max}


def eps_at(cfg, step: int, steps_per_epoch: int) -> float:
  """eps of the configured schedule (`cfg` is the `train` sub-config)."""
  kw = {}
  if cfg.eps_schedule in ("smoothed", "linear"):
    kw = dict(start_epoch=cfg.eps_start, length=cfg.eps_length)
    if cfg.eps_schedule == "smoothed":
      kw["mid"] = cfg.eps_mid
  return EPS_SCHEDULES[cfg.eps_schedule](step, cfg.eps, steps_per_epoch, **kw)


def kappa_at(cfg, eps: float) -> float:
  """Weight of the clean loss: from 1 at eps = 0 to `kappa_end` at eps_max (IBP/CROWN-IBP)."""
  if cfg.eps <= 0:
    return 1.0
  return 1.0 - (1.0 - cfg.kappa_end) * eps / cfg.eps


def lr_schedule(lr: float, milestones, decay: float, steps_per_epoch: int):
  """Piecewise-constant lr, multiplied by `decay` at each milestone epoch."""
  return optax.piecewise_constant_schedule(
      lr, {int(m) * steps_per_epoch: decay for m in milestones})
