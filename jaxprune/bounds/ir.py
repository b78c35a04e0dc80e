"""The verification IR: a DAG of explicit, bound-friendly operations.

Built from our own `Layer` graphs (never from jaxprs): conv/dense become
`linear` nodes holding their (masked) kernels, BatchNorm becomes a
per-channel `affine` node folded from either the running statistics (eval,
for verification) or the clean batch's statistics (batch, for training).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from jaxprune.models import masks as masks_lib
from jaxprune.models.spec import INPUT, Layer, SpecNet, resolve_inputs
from jaxprune.ops import BN_EPS, conv, conv_geometry


@struct.dataclass
class Node:
  """One IR operation.

  op: "conv" (HWIO kernel), "dense" ((in, out) kernel), "affine" (per-channel
  scale `w` and shift `b` of a folded BN, with its `gamma` kept for NRSLoss),
  "relu", "flatten", "add", "avgpool".
  """

  op: str = struct.field(pytree_node=False)
  name: str = struct.field(pytree_node=False)
  inputs: tuple[str, ...] = struct.field(pytree_node=False)
  stride: int = struct.field(pytree_node=False, default=1)
  padding: int = struct.field(pytree_node=False, default=0)
  kernel: int = struct.field(pytree_node=False, default=0)
  w: Any = None
  b: Any = None
  gamma: Any = None


@struct.dataclass
class Net:
  nodes: tuple[Node, ...]

  @property
  def output(self) -> str:
    return self.nodes[-1].name

  def relu_nodes(self) -> list[Node]:
    return [n for n in self.nodes if n.op == "relu"]

  def node(self, name: str) -> Node:
    for n in self.nodes:
      if n.name == name:
        return n
    raise KeyError(name)


def fold_bn(params: dict, mean, var) -> tuple[jax.Array, jax.Array]:
  """BN(x) = x * w + b with w = gamma / sqrt(var + eps), b = beta - mean * w."""
  w = params["scale"] * jax.lax.rsqrt(var + BN_EPS)
  return w, params["bias"] - mean * w


def from_layers(layers: tuple[Layer, ...], variables: dict, masks=None, bn: str = "eval",
                stats: Optional[dict] = None) -> Net:
  """IR of a `Layer` graph. `stats` holds the clean batch's BN statistics when bn="batch".

  `stats` is the "intermediates" collection of
  `model.apply(..., train=True, mutable=["batch_stats", "intermediates"])`.
  """
  if bn not in ("eval", "batch"):
    raise ValueError(f"bn must be 'eval' or 'batch', got {bn!r}")
  if bn == "batch" and stats is None and any(l.op == "bn" for l in layers):
    raise ValueError("bn='batch' needs the clean batch's BN statistics (`stats`)")
  params = masks_lib.apply_masks(variables["params"], masks)
  nodes = []
  for layer, ins in zip(layers, resolve_inputs(layers)):
    common = dict(op=layer.op, name=layer.name, inputs=ins)
    if layer.op in ("conv", "dense"):
      p = params[layer.name]
      nodes.append(Node(**common, stride=layer.stride, padding=layer.padding,
                        kernel=layer.kernel, w=p["kernel"], b=p.get("bias")))
    elif layer.op == "bn":
      p = params[layer.name]
      # Running statistics, or the clean batch's (sown by models.spec.BatchNorm).
      s = variables["batch_stats"][layer.name] if bn == "eval" else stats[layer.name]
      w, b = fold_bn(p, s["mean"], s["var"])
      nodes.append(Node(op="affine", name=layer.name, inputs=ins, w=w, b=b, gamma=p["scale"]))
    else:
      nodes.append(Node(**common, kernel=layer.kernel))
  return Net(nodes=tuple(nodes))


def from_model(model, variables: dict, masks=None, bn: str = "eval",
               stats: Optional[dict] = None) -> Net:
  """IR of a registered model (a `SpecNet` or its registry name)."""
  if isinstance(model, str):
    from jaxprune import models
    model = models.create(model)
  if not isinstance(model, SpecNet):
    raise TypeError(f"from_model needs a jaxprune SpecNet model, got {type(model).__name__}")
  return from_layers(model.layers, variables, masks, bn, stats)


# --- elementary operations shared by every bound method -------------------------------

def linear(node: Node, x, kernel=None, bias: bool = True):
  """The affine map of a conv/dense/affine node (optionally with another kernel)."""
  w = node.w if kernel is None else kernel
  if node.op == "conv":
    y = conv(x, w, *conv_geometry(node.stride, node.padding))
  elif node.op == "dense":
    # A (B, in, out) kernel is a per-example specification folded in (`fold_spec`).
    y = jnp.einsum("bi,bio->bo", x, w) if w.ndim == 3 else x @ w
  elif node.op == "affine":
    y = x * w
  else:
    raise ValueError(f"{node.op} is not linear")
  if bias and node.b is not None:
    y = y + node.b
  return y


def avgpool(node: Node, x):
  k = node.kernel
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k, 1), (1, k, k, 1), "VALID") / (k * k)


def forward(net: Net, x, return_all: bool = False):
  """Concrete forward pass (equals `model.apply` in the matching BN mode)."""
  values = {INPUT: x}
  for node in net.nodes:
    args = [values[n] for n in node.inputs]
    h = args[0]
    if node.op in ("conv", "dense", "affine"):
      h = linear(node, h)
    elif node.op == "relu":
      h = jax.nn.relu(h)
    elif node.op == "flatten":
      h = h.reshape(h.shape[0], -1)
    elif node.op == "add":
      h = sum(args[1:], args[0])
    elif node.op == "avgpool":
      h = avgpool(node, h)
    values[node.name] = h
  return values if return_all else values[net.output]


def fold_spec(net: Net, C) -> Net:
  """Fold the specification C (S, K) or (B, S, K) into the last dense layer.

  As auto_LiRPA does: bounding `C f(x)` directly is tighter than bounding
  `f(x)` and combining, and costs no more. A net whose last node is not dense
  gets an extra bias-free dense node.
  """
  C = jnp.asarray(C)
  last = net.nodes[-1]
  if last.op == "dense" and last.w.ndim == 2:
    w = jnp.einsum("io,...so->...is", last.w, C)
    b = None if last.b is None else jnp.einsum("o,...so->...s", last.b, C)
    return net.replace(nodes=net.nodes[:-1] + (last.replace(w=w, b=b),))
  spec = Node(op="dense", name="spec", inputs=(last.name,), w=jnp.swapaxes(C, -1, -2))
  return net.replace(nodes=net.nodes + (spec,))
