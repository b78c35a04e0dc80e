"""Model registry: `create(name, **kwargs)` returns a flax.linen module.

Every model is a `SpecNet` over a `Layer` graph (see `spec.py`), applied
functionally: `model.apply({"params": p, "batch_stats": s}, x, train=...)`.
"""
from __future__ import annotations

from typing import Callable

from jaxprune.models import zoo
from jaxprune.models.masks import apply_masks, count_params, init_masks, remaining_fraction
from jaxprune.models.spec import INPUT, BatchNorm, Layer, SpecNet, resolve_inputs
from jaxprune.registry import lookup

REGISTRY: dict[str, Callable[..., tuple[Layer, ...]]] = {
    "cnn7l": zoo.cnn7l,
    "resnet18_nr": zoo.resnet18_nr,
    "cnn_tiny": zoo.cnn_tiny,
    "mlp_tiny": zoo.mlp_tiny,
    "resnet_tiny": zoo.resnet_tiny,
}


def create(name: str, num_classes: int = 10, **kwargs) -> SpecNet:
  return SpecNet(layers=lookup(REGISTRY, name, "model")(num_classes=num_classes, **kwargs),
                 num_classes=num_classes)


__all__ = ["REGISTRY", "create", "SpecNet", "Layer", "BatchNorm", "INPUT", "resolve_inputs",
           "apply_masks", "init_masks", "remaining_fraction", "count_params"]
