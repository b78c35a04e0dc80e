"""Validation of the config's `prune` section, before anything is written."""
from __future__ import annotations

from jaxprune.registry import unknown

MODES = ("rewind", "finetune", "one_shot")


def problems(c, pruning: bool) -> list[str]:
  """Problems of `c.prune`; the rewind epoch is checked only when the driver runs."""
  from jaxprune.prune.pruners import PRUNERS
  from jaxprune.prune.select import SCOPES
  p, problems = c.prune, []
  if p.pruner not in PRUNERS:
    problems.append(unknown("pruner", p.pruner, PRUNERS))
  elif p.include_dense and PRUNERS[p.pruner].kind == "structured":
    problems.append("prune.include_dense applies to unstructured pruners only")
  if p.rate is not None and not 0 < p.rate < 1:
    problems.append(f"prune.rate must lie in (0, 1), got {p.rate}")
  if p.mode not in MODES:
    problems.append(unknown("prune.mode", p.mode, MODES))
  if p.scope not in SCOPES:
    problems.append(unknown("prune.scope", p.scope, SCOPES))
  for key in ("rounds", "score_batches", "hydra_steps", "min_channels"):
    if not p[key] >= 1:
      problems.append(f"prune.{key} must be >= 1, got {p[key]}")
  if not p.rewind_epoch >= 0:
    problems.append(f"prune.rewind_epoch must be >= 0, got {p.rewind_epoch}")
  elif pruning and p.mode != "finetune" and not p.rewind_epoch < c.train.epochs:
    problems.append(f"prune.rewind_epoch ({p.rewind_epoch}) must be < train.epochs "
                    f"({c.train.epochs}): round 0 must reach the rewind point")
  return problems
