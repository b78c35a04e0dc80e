"""Training losses, each a pure function of (ctx, params, batch_stats, masks, batch, eps, key).

A loss returns `(loss, (new_batch_stats, metrics))`. Modes are picked by name
from `LOSSES`; new modes (e.g. CROWN-IBP) register themselves there.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxprune import bounds
from jaxprune.bounds.fusion import fused_ce_bound
from jaxprune.models import apply_masks
from jaxprune.models.spec import SpecNet


@dataclasses.dataclass(frozen=True)
class Context:
  """Static facts a loss needs (hashable, so it can close over a jitted step)."""

  model: SpecNet
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_classes: int
  eps_max: float = 0.0
  kappa_end: float = 0.0
  rs_weight: float = 0.0
  nrs_weight: float = 0.0
  slim_l1: float = 0.0
  fgsm_step: float = 1.25
  gradalign_weight: float = 0.2
  bound_method: str = "ibp"
  loss_fusion: bool = True

  def normalize(self, x):
    return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def clean_forward(ctx: Context, params, batch_stats, masks, x, train: bool = True):
  """Logits on pixel-space x, the updated running stats and the batch's BN statistics."""
  variables = {"params": apply_masks(params, masks), "batch_stats": batch_stats}
  if not train:
    return ctx.model.apply(variables, ctx.normalize(x), train=False), batch_stats, None
  logits, mut = ctx.model.apply(variables, ctx.normalize(x), train=True,
                                mutable=["batch_stats", "intermediates"])
  return logits, mut["batch_stats"], mut.get("intermediates", {})


def certified_bounds(ctx: Context, net, x, y, eps, method: str, **options):
  """Lower bounds of the margins y - j over the pixel-space eps ball, and ReLU bounds."""
  xl, xu = bounds.input_box(x, eps, ctx.mean, ctx.std)
  lower, _, relu_bounds = bounds.compute_bounds(
      net, xl, xu, C=bounds.margin_matrix(y, ctx.num_classes), method=method,
      return_relu_bounds=True, **options)
  return lower, relu_bounds


def robust_cross_entropy(margin_lower, y):
  """CE of the worst-case logits -lower(z_y - z_j) (0 for the true class)."""
  return cross_entropy(-margin_lower, y)


def per_channel(fn, l, u):
  """fn(l, u) averaged over every axis but the last (batch and space)."""
  return jnp.mean(fn(l, u).reshape(-1, l.shape[-1]), axis=0)


def rs_loss(relu_bounds) -> jax.Array:
  """RSLoss (Xiao et al. 2018; the paper, Sec. 3.4.2, Eq. 4): -tanh(1 + l u) per ReLU input."""
  if not relu_bounds:
    return jnp.zeros(())
  return jnp.concatenate([per_channel(lambda a, b: -jnp.tanh(1 + a * b), l, u)
                          for l, u in relu_bounds.values()]).mean()


def nrs_loss(net, relu_bounds) -> jax.Array:
  """NRSLoss (the paper, Sec. 3.4.2, Eq. 5): -tanh(1 + l u / (sg(gamma)^2 + 1e-8)).

  On the bounds of every BN output feeding a ReLU: channel means over batch
  and space, then the mean over all channels of all such layers (as the
  paper's code). The stop-gradient on gamma keeps BN free.
  """
  terms = []
  for node in net.relu_nodes():
    src = net.node(node.inputs[0])
    if src.op != "affine" or node.name not in relu_bounds:
      continue
    l, u = relu_bounds[node.name]
    g2 = jnp.square(jax.lax.stop_gradient(src.gamma)) + 1e-8
    terms.append(per_channel(lambda a, b: -jnp.tanh(1 + a * b / g2), l, u))
  return jnp.concatenate(terms).mean() if terms else jnp.zeros(())


def instability(relu_bounds):
  """Per example: unstable neurons (l < 0 < u), the paper's instability, its unstable part.

  The paper's Eq. (3) sums -l*u over *all* ReLU neurons: an unstable neuron
  adds a positive term, a stable one (l and u of one sign) a negative one, so
  on a trained network, where most neurons are stable, the sum is negative.
  The sum over the unstable neurons alone (>= 0) is what Figure 5's "fewer
  unstable, less unstable" reading needs, so both are returned, with the
  number of ReLU neurons per example.
  """
  unstable, total, unstable_part, count = 0.0, 0.0, 0.0, 0
  per_example = lambda a: a.reshape(a.shape[0], -1).sum(-1)
  for l, u in relu_bounds.values():
    is_unstable = (l < 0) & (u > 0)
    unstable = unstable + per_example(is_unstable)
    total = total + per_example(-l * u)
    unstable_part = unstable_part + per_example(jnp.where(is_unstable, -l * u, 0.0))
    count += l[0].size
  return unstable, total, unstable_part, count


def regularizers(ctx: Context, params, net, relu_bounds):
  """RS / NRS on `relu_bounds` and Network Slimming's L1 on BN gamma.

  The bounds are those at the current training eps (see `regularized`).
  """
  reg, metrics = jnp.zeros(()), {}
  if ctx.rs_weight:
    metrics["rs_loss"] = rs_loss(relu_bounds)
    reg += ctx.rs_weight * metrics["rs_loss"]
  if ctx.nrs_weight:
    metrics["nrs_loss"] = nrs_loss(net, relu_bounds)
    reg += ctx.nrs_weight * metrics["nrs_loss"]
  if ctx.slim_l1:
    gammas = [params[l.name]["scale"] for l in ctx.model.layers if l.op == "bn"]
    reg += ctx.slim_l1 * sum(jnp.sum(jnp.abs(g)) for g in gammas)
  return reg, metrics


def batch_net(ctx: Context, params, batch_stats, masks, stats):
  """The IR with BN folded by the clean batch's statistics (training-mode bounds)."""
  return bounds.from_layers(ctx.model.layers, {"params": params, "batch_stats": batch_stats},
                            masks, bn="batch", stats=stats)


def regularized(ctx: Context, params, batch_stats, masks, stats, batch, eps, loss, metrics):
  """`loss` plus `regularizers` on IBP bounds at eps, for the losses that bound nothing.

  eps is the current training eps, not eps_max: RS/NRS regularise the ReLU
  bounds of the radius being trained (the paper, Sec. 4.1.3: the certified
  loss's own bounds in certified training, IBP in adversarial training), as
  `mix` does with the certified loss's bounds. `stats` are the BN statistics
  of the batch the loss was taken on; the bounds are around the clean inputs.
  """
  if not (ctx.rs_weight or ctx.nrs_weight or ctx.slim_l1):
    return loss, metrics
  x, y = batch
  net = batch_net(ctx, params, batch_stats, masks, stats)
  relu_bounds = {}
  if ctx.rs_weight or ctx.nrs_weight:
    relu_bounds = certified_bounds(ctx, net, x, y, eps, "ibp")[1]
  reg, more = regularizers(ctx, params, net, relu_bounds)
  return loss + reg, {**metrics, **more}


def standard_loss(ctx: Context, params, batch_stats, masks, batch, eps, kappa, key):
  del kappa, key
  x, y = batch
  logits, new_stats, stats = clean_forward(ctx, params, batch_stats, masks, x)
  loss = cross_entropy(logits, y)
  loss, metrics = regularized(ctx, params, batch_stats, masks, stats, batch, eps, loss,
                              {"clean_ce": loss, "acc": accuracy(logits, y)})
  return loss, (new_stats, {"loss": loss, **metrics})


def mix(ctx: Context, params, net, relu_bounds, logits, y, kappa, robust, lower, new_stats):
  """kappa * clean CE + (1 - kappa) * robust CE + regularisers, with the step's metrics."""
  clean = cross_entropy(logits, y)
  reg, more = regularizers(ctx, params, net, relu_bounds)
  loss = kappa * clean + (1 - kappa) * robust + reg
  verified = bounds.verified_from_margins(lower, y)
  return loss, (new_stats, {"loss": loss, "clean_ce": clean, "robust_ce": robust,
                            "acc": accuracy(logits, y), "verified": jnp.mean(verified), **more})


def certified_loss(ctx: Context, params, batch_stats, masks, batch, eps, kappa, key):
  """kappa * clean CE + (1 - kappa) * CE of the worst-case logits from `ctx.bound_method`."""
  del key
  x, y = batch
  logits, new_stats, stats = clean_forward(ctx, params, batch_stats, masks, x)
  net = batch_net(ctx, params, batch_stats, masks, stats)
  lower, relu_bounds = certified_bounds(ctx, net, x, y, eps, ctx.bound_method)
  return mix(ctx, params, net, relu_bounds, logits, y, kappa, robust_cross_entropy(lower, y),
             lower, new_stats)


def crown_ibp_loss(ctx: Context, params, batch_stats, masks, batch, eps, kappa, key):
  """CROWN-IBP (Zhang et al. 2020): CROWN-IBP and IBP bounds mixed by (eps_max - eps)/eps_max.

  With `ctx.loss_fusion` the cross-entropy itself is bounded (one backward
  pass, see `bounds.fusion`); otherwise the nine margins are bounded and mixed.
  The CROWN pass runs even at weight 0: training switches to the IBP loss
  there (`loss_at_eps_max`).
  """
  del key
  x, y = batch
  logits, new_stats, stats = clean_forward(ctx, params, batch_stats, masks, x)
  net = batch_net(ctx, params, batch_stats, masks, stats)
  crown_weight = jnp.where(ctx.eps_max > 0, (ctx.eps_max - eps) / max(ctx.eps_max, 1e-12), 0.0)
  xl, xu = bounds.input_box(x, eps, ctx.mean, ctx.std)
  if ctx.loss_fusion:
    robust_per_example, lower, relu_bounds = fused_ce_bound(net, xl, xu, y, ctx.num_classes,
                                                            crown_weight)
    robust = jnp.mean(robust_per_example)
  else:
    C = bounds.margin_matrix(y, ctx.num_classes)
    ilb, _, relu_bounds = bounds.compute_bounds(net, xl, xu, C=C, method="ibp",
                                                return_relu_bounds=True)
    lower = crown_weight * bounds.compute_bounds(net, xl, xu, C=C, method="crown_ibp")[0] \
        + (1 - crown_weight) * ilb
    robust = robust_cross_entropy(lower, y)
  return mix(ctx, params, net, relu_bounds, logits, y, kappa, robust, lower, new_stats)


def fgsm_gradalign_loss(ctx: Context, params, batch_stats, masks, batch, eps, kappa, key):
  """FGSM from a random start (step 1.25 eps) + GradAlign (Andriushchenko & Flammarion 2020)."""
  del kappa
  x, y = batch
  k1, k2 = jax.random.split(key)

  def input_loss(xp):
    logits, _, _ = clean_forward(ctx, params, batch_stats, masks, xp)
    return cross_entropy(logits, y)

  delta = jax.random.uniform(k1, x.shape, x.dtype, -eps, eps)
  g = jax.grad(input_loss)(jnp.clip(x + delta, 0, 1))
  delta = jnp.clip(delta + ctx.fgsm_step * eps * jnp.sign(jax.lax.stop_gradient(g)), -eps, eps)
  x_adv = jnp.clip(x + delta, 0, 1)
  logits, new_stats, stats = clean_forward(ctx, params, batch_stats, masks, x_adv)
  adv = cross_entropy(logits, y)
  metrics = {"adv_ce": adv, "acc": accuracy(logits, y)}
  loss = adv
  if ctx.gradalign_weight:
    g1 = jax.grad(input_loss)(x).reshape(x.shape[0], -1)
    eta = jax.random.uniform(k2, x.shape, x.dtype, -eps, eps)
    g2 = jax.grad(input_loss)(jnp.clip(x + eta, 0, 1)).reshape(x.shape[0], -1)
    cos = jnp.sum(g1 * g2, -1) / (jnp.linalg.norm(g1, axis=-1) * jnp.linalg.norm(g2, axis=-1)
                                  + 1e-12)
    metrics["gradalign"] = jnp.mean(1.0 - cos)
    loss = loss + ctx.gradalign_weight * metrics["gradalign"]
  loss, metrics = regularized(ctx, params, batch_stats, masks, stats, batch, eps, loss, metrics)
  return loss, (new_stats, {"loss": loss, **metrics})


def loss_at_eps_max(ctx: Context, mode: str):
  """(ctx, loss) equal to `mode`'s loss once eps >= eps_max and cheaper, or None.

  CROWN-IBP's weight (eps_max - eps) / eps_max is 0 there, so its loss is the
  IBP loss and the CROWN pass can be left out of the compiled step.
  """
  if mode == "crown_ibp":
    return dataclasses.replace(ctx, bound_method="ibp"), certified_loss
  return None


LossFn = Callable
# Bound method used by each certified mode (training and the loss's "verified" metric).
BOUND_METHOD = {"ibp": "ibp", "crown_ibp": "crown_ibp"}
LOSSES: dict[str, LossFn] = {
    "standard": standard_loss,
    "ibp": certified_loss,
    "crown_ibp": crown_ibp_loss,
    "fgsm_gradalign": fgsm_gradalign_loss,
}
