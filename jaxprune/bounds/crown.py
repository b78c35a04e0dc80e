"""CROWN and CROWN-IBP: backward linear relaxation (LiRPA) over the IR DAG.

A lower bound of `<A, v_t>` (v_t the output of node t) is propagated from t
back to the input: a linear node maps A through its transpose and adds
`<A, bias>`, a ReLU through whichever of its two linear relaxations keeps the
bound valid for the sign of each coefficient, and the input box concretises
what is left (A+ x_l + A- x_u). A has shape (B, S, *node_shape): batch,
specification, NHWC node shape. Upper bounds are lower bounds of `-A`, stacked
on the spec axis, so one pass yields both.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

from jaxprune.bounds.ibp import ibp
from jaxprune.bounds.ir import Net, avgpool, forward
from jaxprune.models.spec import INPUT

LINEAR = ("conv", "dense", "affine")
# Elements of one A-matrix when `chunk_size` is automatic (64 MiB in float32).
CHUNK_ELEMENTS = 1 << 24


def node_shapes(net: Net, x) -> dict[str, tuple[int, ...]]:
  """Per-example output shape of every node (and of the input)."""
  out = jax.eval_shape(functools.partial(forward, return_all=True), net, x)
  return {name: tuple(v.shape[1:]) for name, v in out.items()}


def ancestors(net: Net, name: str) -> set[str]:
  """Names of the nodes `name` depends on (itself included, the input excluded)."""
  seen, todo = set(), [name]
  while todo:
    n = todo.pop()
    if n != INPUT and n not in seen:
      seen.add(n)
      todo.extend(net.node(n).inputs)
  return seen


# --- transposes of the linear nodes ----------------------------------------------------

def _conv(x, w, stride: int, padding: int):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(a, w, stride: int, padding: int, in_shape: tuple[int, ...]):
  """`W^T a`: the transpose of a conv w.r.t. its input, a of shape (N, *out_shape).

  Its custom VJP expresses both cotangents as ordinary convs because XLA:CPU
  differentiates the lhs-dilated transpose w.r.t. the kernel ~15x slower.
  """
  x = jax.ShapeDtypeStruct((a.shape[0],) + in_shape, a.dtype)
  return jax.linear_transpose(lambda x: _conv(x, w, stride, padding), x)(a)[0]


def _conv_transpose_fwd(a, w, stride, padding, in_shape):
  return conv_transpose(a, w, stride, padding, in_shape), (a, w)


def _conv_transpose_bwd(stride, padding, in_shape, res, g):
  a, w = res
  # <g, W^T a> = <W g, a>: d/da = W g, d/dw = the kernel gradient of the forward conv of g.
  da, vjp_w = jax.vjp(lambda w: _conv(g, w, stride, padding), w)
  return da, vjp_w(a)[0]


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def _per_example(node) -> bool:
  """A dense node carrying a specification folded per example (`fold_spec`)."""
  return node.op == "dense" and node.w.ndim == 3


def _bias_term(node, a):
  """<a, b> per (example, spec)."""
  b = node.b if _per_example(node) else node.b[None]
  return jnp.sum(a * b[:, None], axis=tuple(range(2, a.ndim)))


def _linear_transpose(node, a, in_shape):
  if node.op == "affine":
    return a * node.w
  if node.op == "dense":
    return jnp.einsum("bso,bio->bsi", a, node.w) if _per_example(node) else a @ node.w.T
  bs = a.shape[:2]
  t = conv_transpose(a.reshape((-1,) + a.shape[2:]), node.w, node.stride, node.padding, in_shape)
  return t.reshape(bs + in_shape)


def _avgpool_transpose(node, a, in_shape):
  bs = a.shape[:2]
  x = jax.ShapeDtypeStruct((math.prod(bs),) + in_shape, a.dtype)
  t = jax.linear_transpose(lambda x: avgpool(node, x), x)(a.reshape((-1,) + a.shape[2:]))[0]
  return t.reshape(bs + in_shape)


# --- ReLU relaxation -------------------------------------------------------------------

def relu_transpose(a, l, u, alpha=None):
  """Maps a (B, S, *shape) through a ReLU whose input lies in [l, u] (B, *shape).

  Unstable neurons (l < 0 < u): relu(x) <= u (x - l) / (u - l) (the line
  through (l, 0) and (u, u)) and relu(x) >= alpha x for any alpha in [0, 1];
  CROWN's adaptive alpha is 1 where u > -l, else 0. Positive coefficients take
  the lower line, negative ones the upper line. Stable neurons are exact.
  `alpha` broadcasts to a (a spec axis gives every specification its own).
  Returns the new coefficients and the constant term (B, S).
  """
  l, u = l[:, None], u[:, None]
  active = (l >= 0).astype(a.dtype)
  unstable = (l < 0) & (u > 0)
  den = jnp.where(unstable, u - l, 1.0)
  up_slope = jnp.where(unstable, u / den, active)
  up_bias = jnp.where(unstable, -l * u / den, 0.0)
  if alpha is None:
    alpha = (u > -l).astype(a.dtype)
  lo_slope = jnp.where(unstable, alpha, active)
  pos, neg = jnp.maximum(a, 0.0), jnp.minimum(a, 0.0)
  return pos * lo_slope + neg * up_slope, jnp.sum(neg * up_bias, axis=tuple(range(2, a.ndim)))


# --- backward bound propagation --------------------------------------------------------

def backward_bound(net: Net, start: str, a, x_lower, x_upper, bounds: dict, shapes: dict,
                   alphas: Optional[dict] = None):
  """Lower bound over the box of `<a, v_start>`, shape (B, S).

  `bounds` holds (l, u) of the input of every ReLU upstream of `start`;
  `alphas` optionally maps ReLU names to lower slopes (see `relu_transpose`).
  Fan-out (residual connections) sums the coefficients reaching a node.
  """
  names = [n.name for n in net.nodes]
  acc, const = {start: a}, 0.0
  for node in reversed(net.nodes[:names.index(start) + 1]):
    a = acc.pop(node.name, None)
    if a is None:
      continue
    in_shape = shapes[node.inputs[0]]
    if node.op in LINEAR:
      if node.b is not None:
        const = const + _bias_term(node, a)
      a = _linear_transpose(node, a, in_shape)
    elif node.op == "relu":
      a, c = relu_transpose(a, *bounds[node.name], None if alphas is None else alphas.get(node.name))
      const = const + c
    elif node.op == "flatten":
      a = a.reshape(a.shape[:2] + in_shape)
    elif node.op == "avgpool":
      a = _avgpool_transpose(node, a, in_shape)
    elif node.op != "add":
      raise ValueError(f"no backward rule for op {node.op!r}")
    for name in node.inputs:
      acc[name] = acc[name] + a if name in acc else a
  a = acc[INPUT]
  centre, radius = (x_upper + x_lower)[:, None] / 2, (x_upper - x_lower)[:, None] / 2
  axes = tuple(range(2, a.ndim))
  # |a| as a * sign(a): subgradient 0 at a = 0 (jnp.abs gives 1), which keeps
  # alpha-CROWN's ascent from being biased where coefficients cancel or are pruned.
  return const + jnp.sum(a * centre, axis=axes) - jnp.sum(a * jnp.sign(a) * radius, axis=axes)


def chunking(shapes: dict, target: str, batch: int, chunk_size: Optional[int]) -> tuple[int, int]:
  """(neurons per chunk, number of chunks) for bounding every neuron of `target`.

  Automatic chunks keep one A-matrix (B, 2 * chunk, *widest shape) near
  `CHUNK_ELEMENTS` elements.
  """
  n = math.prod(shapes[target])
  if chunk_size is None:
    widest = max(math.prod(s) for s in shapes.values())
    chunk_size = max(1, CHUNK_ELEMENTS // (2 * batch * widest))
  c = min(n, chunk_size)
  return c, -(-n // c)


def node_bounds(net: Net, target: str, x_lower, x_upper, bounds: dict, shapes: dict,
                chunk_size: Optional[int] = None, alphas: Optional[dict] = None,
                shared: bool = False):
  """(l, u) of every neuron of `target`, each (B, *shape), by chunks of neurons.

  Each chunk starts from the identity rows of its neurons (and their negation
  for the upper bound) and runs one backward pass under `lax.map`.
  `alphas` maps ReLU names to lower slopes: (chunks, B or 1, 2 * chunk, *shape)
  per chunk and spec, or (B or 1, 2, *shape) shared by all neurons of the target
  (one for the lower, one for the upper bounds) when `shared`.
  """
  shape, batch = shapes[target], x_lower.shape[0]
  n = math.prod(shape)
  c, k = chunking(shapes, target, batch, chunk_size)

  def one(args):
    i, al = args
    if shared:
      al = {r: jnp.repeat(v, c, axis=1) for r, v in alphas.items()}
    e = jax.nn.one_hot(i * c + jnp.arange(c), n, dtype=x_lower.dtype).reshape((c,) + shape)
    a = jnp.broadcast_to(jnp.concatenate([e, -e])[None], (batch, 2 * c) + shape)
    v = backward_bound(net, target, a, x_lower, x_upper, bounds, shapes, al)
    return v[:, :c], -v[:, c:]

  lo, up = jax.lax.map(one, (jnp.arange(k), None if shared else alphas))
  unchunk = lambda v: jnp.moveaxis(v, 0, 1).reshape(batch, k * c)[:, :n].reshape((batch,) + shape)
  return unchunk(lo), unchunk(up)


def crown_core(net: Net, lower, upper, relu_bounds: Optional[dict] = None,
               chunk_size: Optional[int] = None, compare_ibp: bool = False,
               alphas: Optional[dict] = None, shared: bool = False):
  """CROWN with optional per-target lower slopes (the engine of alpha-CROWN).

  Intermediate bounds are computed ReLU by ReLU in topological order, each
  from the bounds of the ReLUs before it; ReLUs in `relu_bounds` use the given
  bounds instead. `alphas[target]` holds the slopes used when bounding node
  `target` (net.output for the final bound: (B or 1, 2 S, *shape) per ReLU).
  """
  shapes = node_shapes(net, lower)
  given = relu_bounds or {}
  reference = ibp(net, lower, upper)[2] if compare_ibp else {}
  slopes = (lambda t: None) if alphas is None else alphas.get
  bounds = {}
  for relu in net.relu_nodes():
    t = relu.inputs[0]
    if relu.name in given:
      bounds[relu.name] = given[relu.name]
    elif t == INPUT:
      bounds[relu.name] = (lower, upper)
    else:
      l, u = node_bounds(net, t, lower, upper, bounds, shapes, chunk_size, slopes(t), shared)
      if relu.name in reference:
        l, u = jnp.maximum(l, reference[relu.name][0]), jnp.minimum(u, reference[relu.name][1])
      bounds[relu.name] = (l, u)
  out_shape = shapes[net.output]
  s = math.prod(out_shape)
  e = jnp.eye(s, dtype=lower.dtype).reshape((s,) + out_shape)
  a = jnp.broadcast_to(jnp.concatenate([e, -e])[None], (lower.shape[0], 2 * s) + out_shape)
  v = backward_bound(net, net.output, a, lower, upper, bounds, shapes, slopes(net.output))
  batch_shape = (lower.shape[0],) + out_shape
  return v[:, :s].reshape(batch_shape), -v[:, s:].reshape(batch_shape), bounds


def crown(net: Net, lower, upper, relu_bounds: Optional[dict] = None,
          chunk_size: Optional[int] = None, compare_ibp: bool = False):
  """CROWN: every pre-ReLU bound and the output bound by backward relaxation.

  `relu_bounds` ({relu name: (l, u)}) replaces the computed bounds of those
  ReLUs, e.g. tightened or split by branch and bound (l = 0 or u = 0); later
  ReLUs are then bounded from them. The result is sound for the inputs whose
  pre-activations lie in the given bounds. `chunk_size` caps the neurons
  bounded per backward pass (automatic by memory when None). CROWN's
  intermediate bounds can be looser than IBP's on some neurons (adaptive
  slopes); `compare_ibp` intersects them with IBP's (auto_LiRPA's
  compare_crown_with_ibp, from the input box rather than cascaded).
  """
  return crown_core(net, lower, upper, relu_bounds, chunk_size, compare_ibp)


def crown_ibp(net: Net, lower, upper, relu_bounds: Optional[dict] = None):
  """CROWN-IBP (Zhang et al. 2020): IBP pre-ReLU bounds, one CROWN pass for the output."""
  bounds = {**ibp(net, lower, upper)[2], **(relu_bounds or {})}
  return crown_core(net, lower, upper, bounds)
