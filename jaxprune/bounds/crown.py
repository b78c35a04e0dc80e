"""CROWN and CROWN-IBP: backward linear relaxation (LiRPA) over the IR DAG.

A lower bound of `<A, v_t>` (v_t the output of node t) is propagated from t
back to the input: a linear node maps A through its transpose and adds
`<A, bias>`, a ReLU through whichever of its two linear relaxations keeps the
bound valid for the sign of each coefficient, and the input box concretises
what is left (A+ x_l + A- x_u). A has shape (B, S, *node_shape): batch,
specification, NHWC node shape. Upper bounds are lower bounds of `-A`, stacked
on the spec axis, so one pass yields both.

Intermediate bounds need one backward pass per neuron (chunked). For a
target reached only through conv/BN/ReLU/add/avgpool nodes, each neuron
depends on a window of every upstream map (its receptive field), so A is
kept as per-spec windows at per-spec offsets ("patches", as auto_LiRPA's
patches mode): the same arithmetic on the entries that can be non-zero.
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
from jaxprune.ops import conv2d, conv_geometry, conv_input_grad, conv_kernel_grad

LINEAR = ("conv", "dense", "affine")
PATCH_OPS = ("conv", "affine", "relu", "add", "avgpool")
CONV_MODES = ("patches", "matrix")
REFINE = ("all", "unstable")
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

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(a, w, stride: int, padding: int, in_shape: tuple[int, ...]):
  """`W^T a`: the transpose of a conv w.r.t. its input, a of shape (N, *out_shape).

  Forward and both cotangents are ordinary convs (`jaxprune.ops`' XLA:CPU fast
  paths): XLA lowers the transpose of a strided conv to a slow lhs-dilated
  conv and differentiates it w.r.t. the kernel more slowly still. The kernel
  gradient takes the fresh cotangent as the kernel operand, which keeps XLA
  from fusing its computation into a batch-minor transpose (a faster fused
  CROWN-IBP step, see benchmarks/RESULTS.md).
  """
  geom = conv_geometry(stride, padding)
  return conv_input_grad(a, w, *geom, (a.shape[0],) + tuple(in_shape))


def _conv_transpose_fwd(a, w, stride, padding, in_shape):
  return conv_transpose(a, w, stride, padding, in_shape), (a, w)


def _conv_transpose_bwd(stride, padding, in_shape, res, g):
  a, w = res
  # <g, W^T a> = <W g, a>: d/da = W g, d/dw = the kernel gradient of the forward conv of g.
  geom = conv_geometry(stride, padding)
  return conv2d(g, w, *geom), conv_kernel_grad(g, a, w, *geom, x_as_kernel=True)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def _per_example(node) -> bool:
  """A dense node carrying a specification folded per example (`fold_spec`)."""
  return node.op == "dense" and node.w.ndim == 3


def _bias_term(node, a):
  """<a, b> per (example, spec); b is per channel (last axis), per example if folded."""
  a = jnp.sum(a, axis=tuple(range(2, a.ndim - 1)))
  return jnp.einsum("bsc,bc->bs", a, node.b) if _per_example(node) else a @ node.b


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
  """Maps a (B, S, *shape) through a ReLU whose input lies in [l, u] (broadcast to a).

  Unstable neurons (l < 0 < u): relu(x) <= u (x - l) / (u - l) (the line
  through (l, 0) and (u, u)) and relu(x) >= alpha x for any alpha in [0, 1];
  CROWN's adaptive alpha is 1 where u > -l, else 0. Positive coefficients take
  the lower line, negative ones the upper line. Stable neurons are exact.
  `alpha` broadcasts to a (a spec axis gives every specification its own).
  Returns the new coefficients and the constant term (B, S).
  """
  if alpha is None:
    return _relu_crown(a, l, u)
  _, lb, _, up_slope = _upper_line(l, u)
  lo_slope = jnp.where((l < 0) & (u > 0), alpha, (l >= 0).astype(a.dtype))
  neg = jnp.minimum(a, 0.0)
  return (jnp.maximum(a, 0.0) * lo_slope + neg * up_slope,
          jnp.sum(neg * (-lb * up_slope), axis=tuple(range(2, a.ndim))))


def _upper_line(l, u):
  """(ub, lb, den, slope): max(u, 0), min(l, 0), ub - lb (1 where 0), the upper line's slope.

  The slope ub / den is u / (u - l) for unstable neurons, 1 for active and 0
  for inactive ones (whose upper line is then exact), with the intercept -lb
  times it: no case analysis to differentiate.
  """
  ub, lb = jnp.maximum(u, 0.0), jnp.minimum(l, 0.0)
  den = ub - lb
  den = jnp.where(den > 0, den, 1.0)
  return ub, lb, den, ub / den


@jax.custom_vjp
def _relu_crown(a, l, u):
  """`relu_transpose` with CROWN's adaptive lower slope (1 where u > -l, else 0).

  A hand-written VJP: XLA:CPU ran JAX's autodiff of this relaxation (balanced
  max/min ties, the division, saved intermediates) as many elementwise
  fusions, a sizeable part of the fused CROWN-IBP train step (see
  benchmarks/RESULTS.md); the VJP below recomputes the lines from (a, l, u)
  instead. Same values and gradients as autodiff, JAX's tie rule at 0 included.
  """
  _, lb, _, up_slope = _upper_line(l, u)
  lo_slope = (u + l > 0).astype(a.dtype)
  return (jnp.where(a > 0, a * lo_slope, a * up_slope),
          jnp.sum(jnp.minimum(a, 0.0) * (-lb * up_slope), axis=tuple(range(2, a.ndim))))


def _relu_crown_fwd(a, l, u):
  return _relu_crown(a, l, u), (a, l, u)


def _sum_to(g, shape):
  """g summed over the axes where `shape` is 1 (undoes broadcasting)."""
  axes = tuple(i for i, (m, n) in enumerate(zip(g.shape, shape)) if n == 1 and m != 1)
  return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def _ramp(x, sign):
  """Derivative of max(x, 0) (sign 1) or min(x, 0) (sign -1): 1, 0.5 at x = 0 (JAX's tie rule), 0."""
  return jnp.where(sign * x > 0, 1.0, jnp.where(x == 0, 0.5, 0.0)).astype(x.dtype)


def _relu_crown_bwd(res, cotangents):
  a, l, u = res
  g_a, g_c = cotangents
  g_c = g_c.reshape(g_c.shape + (1,) * (a.ndim - 2))
  ub, lb, den, up_slope = _upper_line(l, u)
  lo_slope = (u + l > 0).astype(a.dtype)
  neg, d_pos = jnp.minimum(a, 0.0), _ramp(a, 1)
  d_a = g_a * (d_pos * lo_slope + (1 - d_pos) * up_slope) - (1 - d_pos) * g_c * lb * up_slope
  # Through up_slope = ub / den and the intercept -lb * up_slope (den is 1 where ub = lb = 0).
  d_slope = _sum_to(neg * (g_a - g_c * lb), l.shape)
  d_lb = _sum_to(-neg * g_c * up_slope, l.shape)
  wide = ub - lb > 0  # else ub = lb = 0 and den is the constant 1
  d_ub = jnp.where(wide, -d_slope * lb / (den * den), d_slope)
  d_lb = d_lb + jnp.where(wide, d_slope * ub / (den * den), 0.0)
  return d_a, d_lb * _ramp(l, -1), d_ub * _ramp(u, 1)


_relu_crown.defvjp(_relu_crown_fwd, _relu_crown_bwd)


# --- backward bound propagation --------------------------------------------------------

def backward_bound(net: Net, start: str, a, x_lower, x_upper, bounds: dict, shapes: dict,
                   alphas: Optional[dict] = None, coeff_hook=None):
  """Lower bound over the box of `<a, v_start>`, shape (B, S).

  `bounds` holds (l, u) of the input of every ReLU upstream of `start`;
  `alphas` optionally maps ReLU names to lower slopes (see `relu_transpose`).
  Fan-out (residual connections) sums the coefficients reaching a node.
  `coeff_hook(name, a)`, when given, sees the coefficients of each node's
  output (and of the input) before they are propagated and returns those to
  use: beta-CROWN adds its split multipliers there, branching reads them.
  """
  names = [n.name for n in net.nodes]
  acc, const = {start: a}, 0.0
  for node in reversed(net.nodes[:names.index(start) + 1]):
    a = acc.pop(node.name, None)
    if a is None:
      continue
    if coeff_hook is not None:
      a = coeff_hook(node.name, a)
    in_shape = shapes[node.inputs[0]]
    if node.op in LINEAR:
      if node.b is not None:
        const = const + _bias_term(node, a)
      a = _linear_transpose(node, a, in_shape)
    elif node.op == "relu":
      l, u = bounds[node.name]
      a, c = relu_transpose(a, l[:, None], u[:, None],
                            None if alphas is None else alphas.get(node.name))
      const = const + c
    elif node.op == "flatten":
      a = a.reshape(a.shape[:2] + in_shape)
    elif node.op == "avgpool":
      a = _avgpool_transpose(node, a, in_shape)
    elif node.op != "add":
      raise ValueError(f"no backward rule for op {node.op!r}")
    for name in node.inputs:
      acc[name] = acc[name] + a if name in acc else a
  a = acc[INPUT] if coeff_hook is None else coeff_hook(INPUT, acc[INPUT])
  return const + _concretise(a, (x_upper + x_lower)[:, None] / 2,
                             (x_upper - x_lower)[:, None] / 2)


def _concretise(a, centre, radius):
  """min of <a, x> over the box |x - centre| <= radius, per (example, spec)."""
  axes = tuple(range(2, a.ndim))
  # |a| as a * sign(a): subgradient 0 at a = 0 (jnp.abs gives 1), which keeps
  # alpha-CROWN's ascent from being biased where coefficients cancel or are pruned.
  return jnp.sum(a * centre, axis=axes) - jnp.sum(a * jnp.sign(a) * radius, axis=axes)


# --- patches: per-spec windows of conv-only targets -------------------------------------

def _input_window(node, win):
  """The window of a node's input that its output window (size, stride multiple, shift) reads."""
  z, m, c = win
  if node.op == "conv":
    return (z - 1) * node.stride + node.kernel, m * node.stride, c * node.stride - node.padding
  if node.op == "avgpool":
    return z * node.kernel, m * node.kernel, c * node.kernel
  return win


def window_plan(net: Net, target: str, shapes: dict) -> Optional[dict]:
  """{node: (size, m, c)} for bounding the neurons of `target` by patches, or None.

  The neuron at position p of the target reads, at an upstream node, the
  square window of `size` starting at m * p + c (per spatial axis): static
  sizes and shifts, per-spec offsets. Windows from several consumers merge
  into their union. None (use matrices) when a dense/flatten node is upstream
  or a window would not be smaller than its map.
  """
  up = ancestors(net, target)
  if len(shapes[target]) != 3 or any(net.node(n).op not in PATCH_OPS for n in up):
    return None
  plan = {target: (1, 1, 0)}
  names = [n.name for n in net.nodes]
  for node in reversed(net.nodes[:names.index(target) + 1]):
    if node.name not in plan:
      continue
    z, m, c = _input_window(node, plan[node.name])
    for name in node.inputs:
      if name in plan:
        z0, m0, c0 = plan[name]
        if m0 != m:
          return None
        lo = min(c, c0)
        plan[name] = (max(c + z, c0 + z0) - lo, m, lo)
      else:
        plan[name] = (z, m, c)
  if any(z > min(shapes[n][:2]) for n, (z, _, _) in plan.items()):
    return None
  return plan


def _windows(x, pos, win, target_hw, index=None):
  """Per-spec windows of x (.., H, W, C), zero outside the map: (x.shape[0], S, z, z, C).

  Spec s reads the window at pos[s] * m + c, from x[:, index[s]] when `index`
  is given (x then has a spec axis at 1).
  """
  z, m, c = win
  pads = tuple((max(0, -c), max(0, m * (p - 1) + c + z - h))
               for p, h in zip(target_hw, x.shape[-3:-1]))
  xp = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + pads + ((0, 0),))
  start = pos * m + c + jnp.array([pads[0][0], pads[1][0]])
  size = (x.shape[0], z, z, x.shape[-1])

  def one(o, i):
    src = xp if index is None else xp[:, i]
    return jax.lax.dynamic_slice(src, (0, o[0], o[1], 0), size)

  index_or_zero = jnp.zeros(len(pos), jnp.int32) if index is None else index
  return jax.vmap(one, out_axes=1)(start, index_or_zero)


def backward_bound_patches(net: Net, target: str, plan: dict, a, pos, x_lower, x_upper,
                           bounds: dict, shapes: dict, alphas: Optional[dict] = None,
                           alpha_index=None):
  """`backward_bound` for one neuron per spec, with A as windows (see `window_plan`).

  a: (B, S, 1, 1, C) at the target, pos: (S, 2) the spec's neuron position.
  `alphas` maps ReLU names to slopes (B or 1, S', H, W, C), spec s reading
  slice alpha_index[s]. Entries of a window outside its map are the conv's
  zero padding: they are zeroed after each conv transpose.
  """
  names = [n.name for n in net.nodes]
  thw = shapes[target][:2]
  acc, const = {target: a}, 0.0
  for node in reversed(net.nodes[:names.index(target) + 1]):
    a = acc.pop(node.name, None)
    if a is None:
      continue
    win = plan[node.name]
    if node.op in ("conv", "affine"):
      if node.b is not None:
        const = const + _bias_term(node, a)
      if node.op == "affine":
        a = a * node.w
      else:
        win = _input_window(node, win)
        in_shape = (win[0], win[0], node.w.shape[2])
        t = conv_transpose(a.reshape((-1,) + a.shape[2:]), node.w, node.stride, 0, in_shape)
        in_map = jnp.ones((1,) + shapes[node.inputs[0]][:2] + (1,), a.dtype)
        a = t.reshape(a.shape[:2] + in_shape) * _windows(in_map, pos, win, thw)
    elif node.op == "relu":
      l, u = (_windows(v, pos, win, thw) for v in bounds[node.name])
      al = None
      if alphas is not None and node.name in alphas:
        al = _windows(alphas[node.name], pos, win, thw, alpha_index)
      a, c = relu_transpose(a, l, u, al)
      const = const + c
    elif node.op == "avgpool":
      win = _input_window(node, win)
      a = _avgpool_transpose(node, a, (win[0], win[0], a.shape[-1]))
    elif node.op != "add":
      raise ValueError(f"no patches rule for op {node.op!r}")
    for name in node.inputs:
      z, _, c = plan[name]
      lo, hi = win[2] - c, z - win[0] - (win[2] - c)
      a_in = jnp.pad(a, ((0, 0), (0, 0), (lo, hi), (lo, hi), (0, 0))) if lo or hi else a
      acc[name] = acc[name] + a_in if name in acc else a_in
  win = plan[INPUT]
  return const + _concretise(acc[INPUT], _windows((x_upper + x_lower) / 2, pos, win, thw),
                             _windows((x_upper - x_lower) / 2, pos, win, thw))


def chunking(shapes: dict, target: str, batch: int, chunk_size: Optional[int],
             plan: Optional[dict] = None) -> tuple[int, int]:
  """(neurons per chunk, number of chunks) for bounding every neuron of `target`.

  Automatic chunks keep one A-matrix (B, 2 * chunk, *widest map or window)
  near `CHUNK_ELEMENTS` elements.
  """
  n = math.prod(shapes[target])
  if chunk_size is None:
    if plan is None:
      widest = max(math.prod(s) for s in shapes.values())
    else:
      widest = max(z * z * shapes[name][-1] for name, (z, _, _) in plan.items())
    chunk_size = max(1, CHUNK_ELEMENTS // (2 * batch * widest))
  c = min(n, chunk_size)
  return c, -(-n // c)


def target_plan(net: Net, target: str, shapes: dict, conv_mode: str) -> Optional[dict]:
  """The patches plan of `target` under `conv_mode` (None: matrices)."""
  if conv_mode not in CONV_MODES:
    raise ValueError(f"conv_mode must be one of {CONV_MODES}, got {conv_mode!r}")
  return window_plan(net, target, shapes) if conv_mode == "patches" else None


def node_bounds(net: Net, target: str, x_lower, x_upper, bounds: dict, shapes: dict,
                chunk_size: Optional[int] = None, alphas: Optional[dict] = None,
                shared: bool = False, conv_mode: str = "patches", select=None):
  """(l, u) of every neuron of `target`, each (B, *shape), by chunks of neurons.

  Each chunk starts from the identity rows of its neurons (and their negation
  for the upper bound) and runs one backward pass under `lax.map`.
  `alphas` maps ReLU names to lower slopes: (chunks, B or 1, 2 * chunk, *shape)
  per chunk and spec, or (B or 1, 2, *shape) shared by all neurons of the target
  (one for the lower, one for the upper bounds) when `shared`.
  `select` (B, *shape), bool, without per-chunk `alphas`: only neurons
  selected for some example are bounded (moved to the front, whole chunks of
  unselected ones skipped at run time); the others get (-inf, inf).
  """
  shape, batch, dtype = shapes[target], x_lower.shape[0], x_lower.dtype
  n = math.prod(shape)
  plan = target_plan(net, target, shapes, conv_mode)
  c, k = chunking(shapes, target, batch, chunk_size, plan)
  if select is not None and alphas is not None and not shared:
    raise ValueError("select needs slopes shared by the target's neurons (or none)")
  if select is None:
    order, count = jnp.arange(n), n
  else:
    flags = jnp.any(select.reshape(batch, n), axis=0)
    order, count = jnp.argsort(~flags, stable=True), jnp.sum(flags)

  def bound(i, al):
    idx = order[jnp.minimum(i * c + jnp.arange(c), n - 1)]
    if plan is None:
      if shared:
        al = {r: jnp.repeat(v, c, axis=1) for r, v in alphas.items()}
      e = jax.nn.one_hot(idx, n, dtype=dtype).reshape((c,) + shape)
      a = jnp.broadcast_to(jnp.concatenate([e, -e])[None], (batch, 2 * c) + shape)
      v = backward_bound(net, target, a, x_lower, x_upper, bounds, shapes, al)
    else:
      h, w, ch = shape
      pos = jnp.stack([idx // (w * ch), idx // ch % w], axis=-1)
      e = jax.nn.one_hot(idx % ch, ch, dtype=dtype).reshape(c, 1, 1, ch)
      a = jnp.broadcast_to(jnp.concatenate([e, -e])[None], (batch, 2 * c, 1, 1, ch))
      if shared:
        al = alphas
      index = jnp.arange(2 * c) // (c if shared else 1)
      v = backward_bound_patches(net, target, plan, a, jnp.concatenate([pos, pos]), x_lower,
                                 x_upper, bounds, shapes, al, index)
    return v[:, :c], -v[:, c:]

  def one(args):
    i, al = args
    if select is None:
      return bound(i, al)
    skipped = jnp.full((batch, c), jnp.inf, dtype)
    return jax.lax.cond(i * c < count, bound, lambda *_: (-skipped, skipped), i, al)

  lo, up = jax.lax.map(one, (jnp.arange(k), None if shared else alphas))
  inverse = jnp.argsort(order)

  def unchunk(v):
    v = jnp.moveaxis(v, 0, 1).reshape(batch, k * c)[:, :n]
    return v[:, inverse].reshape((batch,) + shape)

  return unchunk(lo), unchunk(up)


def crown_core(net: Net, lower, upper, relu_bounds: Optional[dict] = None,
               chunk_size: Optional[int] = None, compare_ibp: bool = False,
               conv_mode: str = "patches", bound_upper: bool = True,
               alphas: Optional[dict] = None, shared: bool = False, refine: str = "all"):
  """CROWN with optional per-target lower slopes (the engine of alpha-CROWN).

  Intermediate bounds are computed ReLU by ReLU in topological order, each
  from the bounds of the ReLUs before it; ReLUs in `relu_bounds` use the given
  bounds instead. `alphas[target]` holds the slopes used when bounding node
  `target` (net.output for the final bound: (B or 1, 2 S, *shape) per ReLU,
  S without `bound_upper`). `refine` as in `crown`.
  """
  if refine not in REFINE:
    raise ValueError(f"refine must be one of {REFINE}, got {refine!r}")
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
      limits, select = reference.get(relu.name), None
      if refine == "unstable" and (slopes(t) is None or shared):
        # Intervals from the bounds found so far (within IBP's); CROWN only where they leave
        # the ReLU unstable.
        limits = ibp(net, lower, upper, relu_bounds=bounds)[2][relu.name]
        select = (limits[0] < 0) & (limits[1] > 0)
      l, u = node_bounds(net, t, lower, upper, bounds, shapes, chunk_size, slopes(t), shared,
                         conv_mode, select=select)
      if limits is not None:
        l, u = jnp.maximum(l, limits[0]), jnp.minimum(u, limits[1])
      bounds[relu.name] = (l, u)
  out_shape = shapes[net.output]
  s = math.prod(out_shape)
  e = jnp.eye(s, dtype=lower.dtype).reshape((s,) + out_shape)
  e = jnp.concatenate([e, -e]) if bound_upper else e
  a = jnp.broadcast_to(e[None], (lower.shape[0],) + e.shape)
  v = backward_bound(net, net.output, a, lower, upper, bounds, shapes, slopes(net.output))
  batch_shape = (lower.shape[0],) + out_shape
  lo = v[:, :s].reshape(batch_shape)
  up = -v[:, s:].reshape(batch_shape) if bound_upper else jnp.full_like(lo, jnp.inf)
  return lo, up, bounds


def crown(net: Net, lower, upper, relu_bounds: Optional[dict] = None,
          chunk_size: Optional[int] = None, compare_ibp: bool = False,
          conv_mode: str = "patches", bound_upper: bool = True, refine: str = "all"):
  """CROWN: every pre-ReLU bound and the output bound by backward relaxation.

  `relu_bounds` ({relu name: (l, u)}) replaces the computed bounds of those
  ReLUs, e.g. tightened or split by branch and bound (l = 0 or u = 0); later
  ReLUs are then bounded from them. The result is sound for the inputs whose
  pre-activations lie in the given bounds. `chunk_size` caps the neurons
  bounded per backward pass (automatic by memory when None). CROWN's
  intermediate bounds can be looser than IBP's on some neurons (adaptive
  slopes); `compare_ibp` intersects them with IBP's (auto_LiRPA's
  compare_crown_with_ibp, from the input box rather than cascaded).
  `conv_mode="matrix"` bounds conv targets with full-map A-matrices instead
  of patches (same bounds up to rounding, many times slower).
  `bound_upper=False` skips the output's upper bounds, returned as +inf (valid
  and vacuous): margins need lower bounds only, and the output pass halves.
  `refine="unstable"` bounds by CROWN only the neurons that interval
  propagation from the bounds found so far leaves unstable, and intersects
  with those intervals; examples are then bounded one at a time (`lax.map`),
  as each has its own unstable neurons. Stable neurons are relaxed exactly
  either way, so the bounds are as tight as with "all" or tighter, except
  where tighter intermediate bounds flip an adaptive slope (as CROWN vs
  CROWN-IBP, not a theorem); the cost follows the number of unstable neurons.
  The intermediate bounds reported for stable neurons are the intervals.
  """
  run = functools.partial(crown_core, chunk_size=chunk_size, compare_ibp=compare_ibp,
                          conv_mode=conv_mode, bound_upper=bound_upper, refine=refine)
  if refine == "unstable" and lower.shape[0] > 1:
    return map_examples(run, net, lower, upper, relu_bounds)
  return run(net, lower, upper, relu_bounds)


def map_examples(fn, net: Net, lower, upper, relu_bounds: Optional[dict] = None):
  """fn(net, lower, upper, relu_bounds) one example at a time (batch 1) under `lax.map`.

  Specifications folded per example (`fold_spec`) are sliced with the inputs.
  """
  folded = [i for i, n in enumerate(net.nodes) if _per_example(n)]

  def one(args):
    l, u, rb, wb = args
    nodes = list(net.nodes)
    for i, (w, b) in zip(folded, wb):
      nodes[i] = nodes[i].replace(w=w[None], b=None if b is None else b[None])
    batch1 = lambda tree: jax.tree.map(lambda v: v[None], tree)
    out = fn(net.replace(nodes=tuple(nodes)), l[None], u[None], batch1(rb))
    return jax.tree.map(lambda v: v[0], out)

  wb = [(net.nodes[i].w, net.nodes[i].b) for i in folded]
  return jax.lax.map(one, (lower, upper, relu_bounds or {}, wb))


def crown_ibp(net: Net, lower, upper, relu_bounds: Optional[dict] = None,
              bound_upper: bool = True):
  """CROWN-IBP (Zhang et al. 2020): IBP pre-ReLU bounds, one CROWN pass for the output.

  `bound_upper` as in `crown` (False halves the cost: training needs lower bounds only).
  """
  bounds = {**ibp(net, lower, upper)[2], **(relu_bounds or {})}
  return crown_core(net, lower, upper, bounds, bound_upper=bound_upper)
