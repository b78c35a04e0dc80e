"""Bound engine: the IR and the bound methods over it.

    net = jaxprune.bounds.from_model(model, variables, masks=None, bn="eval")
    lower, upper = jaxprune.bounds.compute_bounds(net, x_lower, x_upper, C=None, method="ibp")

Inputs are in the model's input space (already normalised; see `input_box`).
"""
from __future__ import annotations

from typing import Callable

from jaxprune.bounds.alpha import alpha_crown
from jaxprune.bounds.crown import crown, crown_ibp
from jaxprune.bounds.ibp import ibp
from jaxprune.bounds.ir import Net, Node, fold_bn, fold_spec, forward, from_layers, from_model
from jaxprune.bounds.spec import input_box, margin_matrix, verified_from_margins
from jaxprune.registry import lookup

# Each method maps (net, lower, upper, **options) -> (lower, upper, relu_bounds).
METHODS: dict[str, Callable] = {"ibp": ibp, "crown": crown, "crown_ibp": crown_ibp,
                                "alpha_crown": alpha_crown}


def compute_bounds(net: Net, x_lower, x_upper, C=None, method: str = "ibp",
                   return_relu_bounds: bool = False, **options):
  """Bounds of `C @ f(x)` (of `f(x)` when C is None) for x in [x_lower, x_upper].

  Batched over the leading axis. With `return_relu_bounds`, also returns
  {relu name: (l, u)} of every ReLU's input, for counting unstable neurons.
  """
  bound = lookup(METHODS, method, "bound method")
  if C is not None:
    net = fold_spec(net, C)
  lower, upper, relu_bounds = bound(net, x_lower, x_upper, **options)
  return (lower, upper, relu_bounds) if return_relu_bounds else (lower, upper)


__all__ = ["Net", "Node", "METHODS", "compute_bounds", "from_model", "from_layers", "forward",
           "fold_bn", "fold_spec", "ibp", "crown", "crown_ibp", "alpha_crown", "input_box",
           "margin_matrix", "verified_from_margins"]
