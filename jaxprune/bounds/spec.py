"""Input sets and output specifications."""
from __future__ import annotations

import jax.numpy as jnp


def input_box(x, eps, mean=0.0, std=1.0, lo: float = 0.0, hi: float = 1.0):
  """L-inf ball of radius `eps` around pixel-space `x`, clipped to [lo, hi], then normalised.

  The ball lives in pixel space; after `(x - mean) / std` it is eps/std wide
  per channel. `mean`/`std` broadcast over the trailing (channel) axis.
  """
  mean, std = jnp.asarray(mean, x.dtype), jnp.asarray(std, x.dtype)
  lower = (jnp.clip(x - eps, lo, hi) - mean) / std
  upper = (jnp.clip(x + eps, lo, hi) - mean) / std
  return lower, upper


def margin_matrix(labels, num_classes: int):
  """C with row j = e_y - e_j, shape (B, K, K); row y is zero.

  The bound of C f(x) is the margin of the true class over each other class;
  a sample is verified when every row j != y has a positive lower bound.
  """
  eye = jnp.eye(num_classes)
  return eye[labels][:, None, :] - eye[None, :, :]


def verified_from_margins(lower, labels):
  """True where every margin lower bound (other than the zero row y) is positive."""
  num_classes = lower.shape[-1]
  others = jnp.arange(num_classes)[None, :] != labels[:, None]
  return jnp.all(jnp.where(others, lower > 0, True), axis=-1)
