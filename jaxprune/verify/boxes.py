"""Input boxes computed in float64 and rounded to float32 in a chosen direction.

Bounds must hold on the whole pixel ball, so the normalised box they use is
rounded outward (never smaller than the exact ball); counterexamples must lie
in the ball, so the box they are checked against is rounded inward.
"""
from __future__ import annotations

import numpy as np


def round32(lower, upper, outward: bool):
  """float32 (lower, upper) containing (outward) or contained in (inward) the float64 box."""
  lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
  lo, hi = lower.astype(np.float32), upper.astype(np.float32)
  if outward:  # also one step out where equal: the float64 value itself carries rounding
    lo = np.where(lo >= lower, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi <= upper, np.nextafter(hi, np.float32(np.inf)), hi)
  else:
    lo = np.where(lo < lower, np.nextafter(lo, np.float32(np.inf)), lo)
    hi = np.where(hi > upper, np.nextafter(hi, np.float32(-np.inf)), hi)
  return lo.astype(np.float32), hi.astype(np.float32)


def pixel_box(x, eps, lo: float = 0.0, hi: float = 1.0):
  """The exact pixel ball [x - eps, x + eps] clipped to [lo, hi], float64."""
  x = np.asarray(x, np.float64)
  return np.clip(x - eps, lo, hi), np.clip(x + eps, lo, hi)


def normalised_box(x, eps, mean=0.0, std=1.0, lo: float = 0.0, hi: float = 1.0):
  """float32 box of (pixel - mean) / std over the ball, rounded outward (for bounds)."""
  p_lo, p_hi = pixel_box(x, eps, lo, hi)
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  a, b = (p_lo - mean) / std, (p_hi - mean) / std
  return round32(np.minimum(a, b), np.maximum(a, b), outward=True)
