"""Pruners of the paper, as pure functions over params and mask pytrees.

    pruner = jaxprune.prune.get("imp_nrs")      # PRUNERS[name]; registry.UnknownNameError
    masks = models.init_masks(params, layers)     # conv kernels (the paper prunes only those)
    masks = prune.prune_step(pruner, params, masks, rate=0.2, key=key,
                             loss_fn=loss_fn, batches=batches, layers=layers)
    prune.remaining_fraction(masks)               # unmasked fraction of the kernels
    prune.channel_counts(masks)                   # {conv: alive output channels}
    new_layers, new_vars = prune.compress(layers, variables, masks)

The iterative train-prune-rewind pipeline over rounds is
`jaxprune.prune.driver.run(config, workdir)` (CLI: `--pruner=NAME`).

A `Pruner` has `name`, `kind` ("none" | "unstructured" | "structured"),
`score`, a default per-round `rate` (0.2 of the remaining weights, 0.11 of the
remaining channels) and the training-time flags `train_loss_extra` ("rs" |
"nrs" | "slim_l1" | None) with `loss_weight`; `train_weights()` maps them to
the training config fields.

Unstructured (`select.update_masks`): global top-k over the masked leaves
(`scope="layerwise"`: per leaf); which leaves are masked decides what is
pruned (conv kernels by default, add dense ones via `init_masks(include=)`).
Pruned weights stay pruned. Scores: random (`key`), imp |w|, snip |w g| of
one batch, tp |w * mean_b g_b|, hydra (learned |scores| through a
straight-through top-k on `loss_fn(params, masks, batch)`, see
`HydraConfig`). Gradients come from `grads` (a pytree or a list of per-batch
pytrees) or from `loss_fn` on `batches`.

Structured (`channels`): slim ranks channels by the |gamma| of the following
BN, struct_lth by the summed |w| surviving an IMP step (then refills); at
least `min_channels` per layer survive. Structured masks also mask the conv
bias and the BN scale/bias of pruned channels, which makes the channels
exactly zero and `compress` exact.
"""
from __future__ import annotations

from jaxprune.models.masks import remaining_fraction
from jaxprune.prune.channels import (channel_counts, channel_masks, channel_view,
                                     prune_channels, slim_scores, struct_lth_scores)
from jaxprune.prune.compression import compress
from jaxprune.prune.pruners import (PRUNERS, Pruner, ScoreInputs, get, prune_step)
from jaxprune.prune.scores import (HydraConfig, hydra_scores, magnitude_scores, random_scores,
                                   snip_scores, taylor_scores)
from jaxprune.prune.select import update_masks

__all__ = ["PRUNERS", "Pruner", "ScoreInputs", "get", "prune_step", "compress",
           "remaining_fraction", "update_masks", "channel_counts", "channel_view",
           "channel_masks", "prune_channels", "slim_scores", "struct_lth_scores", "HydraConfig",
           "hydra_scores", "magnitude_scores", "random_scores", "snip_scores", "taylor_scores"]
