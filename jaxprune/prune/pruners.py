"""The pruner registry and one pruning step (the iterative driver calls it per round)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax

from jaxprune.models.spec import Layer
from jaxprune.prune import channels, scores, select
from jaxprune.registry import lookup

KINDS = ("none", "unstructured", "structured")
UNSTRUCTURED_RATE, CHANNEL_RATE = 0.2, 0.11
RS_WEIGHT = 0.01  # RSLoss / NRSLoss weight (paper code default)
SLIM_L1 = 1e-4
# train_loss_extra -> the training config field that weighs it (jaxprune.train.config).
LOSS_FIELDS = {"rs": "rs_weight", "nrs": "nrs_weight", "slim_l1": "slim_l1"}


class ScoreInputs(NamedTuple):
  """Everything a scorer may need besides params and masks (each uses a few)."""

  rate: float
  scope: str
  key: Optional[jax.Array] = None
  grads: Any = None  # a params-shaped gradient pytree, or a list of per-batch ones
  loss_fn: Optional[scores.LossFn] = None
  batches: Optional[Sequence[Any]] = None
  layers: Optional[Sequence[Layer]] = None
  hydra: scores.HydraConfig = scores.HydraConfig()


@dataclasses.dataclass(frozen=True)
class Pruner:
  """A pruning method: how it scores, what it removes, and what training adds.

  `score(params, masks, inputs)` returns a mask-shaped pytree (unstructured)
  or {conv name: channel scores} (structured). `rate` is the default
  fraction of the remaining weights (channels) pruned per round.
  `train_loss_extra` ("rs" | "nrs" | "slim_l1" | None) and `loss_weight`
  tell the driver which regulariser to train with.
  """

  name: str
  kind: str
  score: Optional[Callable[..., Any]] = None
  rate: float = 0.0
  train_loss_extra: Optional[str] = None
  loss_weight: float = 0.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown pruner kind {self.kind!r}; expected one of {KINDS}")
    if self.train_loss_extra not in (None, *LOSS_FIELDS):
      raise ValueError(f"unknown train_loss_extra {self.train_loss_extra!r}")

  def train_weights(self) -> dict[str, float]:
    """Training-config overrides, e.g. {"nrs_weight": 0.01} for imp_nrs."""
    if self.train_loss_extra is None:
      return {}
    return {LOSS_FIELDS[self.train_loss_extra]: self.loss_weight}


def _need(value, what: str, pruner: str):
  if value is None:
    raise ValueError(f"pruner {pruner!r} needs {what}")
  return value


def _grads(params, masks, a: ScoreInputs, name: str, first_only: bool) -> list:
  if a.grads is not None:
    g = list(a.grads) if isinstance(a.grads, (list, tuple)) else [a.grads]
  else:
    batches = list(_need(a.batches, "`grads` or `loss_fn` and `batches`", name))
    g = scores.loss_grads(_need(a.loss_fn, "`grads` or `loss_fn` and `batches`", name),
                          params, masks, batches[:1] if first_only else batches)
  return g[:1] if first_only else g


def _random(params, masks, a):
  return scores.random_scores(_need(a.key, "a PRNG `key`", "random"), masks)


def _imp(params, masks, a):
  return scores.magnitude_scores(params, masks)


def _snip(params, masks, a):
  return scores.snip_scores(params, masks, _grads(params, masks, a, "snip", True)[0])


def _taylor(params, masks, a):
  return scores.taylor_scores(params, masks, _grads(params, masks, a, "tp", False))


def _hydra(params, masks, a):
  return scores.hydra_scores(params, masks, _need(a.loss_fn, "`loss_fn`", "hydra"),
                             _need(a.batches, "`batches`", "hydra"), rate=a.rate,
                             scope=a.scope, config=a.hydra)


def _slim(params, masks, a):
  return channels.slim_scores(params, masks, _need(a.layers, "`layers`", "slim"))


def _struct_lth(params, masks, a):
  return channels.struct_lth_scores(params, masks, imp_rate=UNSTRUCTURED_RATE, scope=a.scope)


PRUNERS: dict[str, Pruner] = {p.name: p for p in (
    Pruner("dense", "none"),
    Pruner("random", "unstructured", _random, UNSTRUCTURED_RATE),
    Pruner("imp", "unstructured", _imp, UNSTRUCTURED_RATE),
    Pruner("snip", "unstructured", _snip, UNSTRUCTURED_RATE),
    Pruner("tp", "unstructured", _taylor, UNSTRUCTURED_RATE),
    Pruner("hydra", "unstructured", _hydra, UNSTRUCTURED_RATE),
    Pruner("hydra_nrs", "unstructured", _hydra, UNSTRUCTURED_RATE, "nrs", RS_WEIGHT),
    Pruner("imp_rs", "unstructured", _imp, UNSTRUCTURED_RATE, "rs", RS_WEIGHT),
    Pruner("imp_nrs", "unstructured", _imp, UNSTRUCTURED_RATE, "nrs", RS_WEIGHT),
    Pruner("struct_lth", "structured", _struct_lth, CHANNEL_RATE),
    Pruner("slim", "structured", _slim, CHANNEL_RATE, "slim_l1", SLIM_L1),
)}


def get(name: str) -> Pruner:
  return lookup(PRUNERS, name, "pruner")


def prune_step(pruner: Pruner | str, params, masks, *, rate: Optional[float] = None,
               scope: str = "global", key: Optional[jax.Array] = None, grads=None,
               loss_fn: Optional[scores.LossFn] = None, batches: Optional[Sequence] = None,
               layers: Optional[Sequence[Layer]] = None, min_channels: int = 1,
               hydra: scores.HydraConfig = scores.HydraConfig()):
  """One pruning round: the new mask tree.

  Unstructured pruners keep the top (1 - rate) of the remaining masked
  weights by score. Structured pruners prune `rate` of the remaining channels
  of the masked convs and return a structured mask tree (needs `layers`).
  """
  pruner = get(pruner) if isinstance(pruner, str) else pruner
  select.check_scope(scope)
  if pruner.kind == "none":
    return masks
  rate = pruner.rate if rate is None else rate
  inputs = ScoreInputs(rate, scope, key, grads, loss_fn, batches, layers, hydra)
  s = pruner.score(params, masks, inputs)
  if pruner.kind == "unstructured":
    return select.update_masks(s, masks, rate, scope)
  layers = _need(layers, "`layers`", pruner.name)
  alive = channels.prune_channels(s, channels.channel_view(masks), rate, scope, min_channels)
  return channels.channel_masks(alive, masks, params, layers)
