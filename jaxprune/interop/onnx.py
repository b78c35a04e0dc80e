"""ONNX import and export of ReLU networks, through the bound IR (`jaxprune.bounds.ir`).

    from jaxprune.interop import onnx as jonnx
    m = jonnx.load("net.onnx")                 # OnnxNet
    x = m.to_input(x_onnx)                     # (B, *ONNX input shape) or VNNLIB-flat (B, n)
    logits = jaxprune.bounds.forward(m.net, x)
    lower, upper = jaxprune.bounds.compute_bounds(m.net, m.to_input(lo), m.to_input(hi), C)

    jonnx.save("cnn7l", "net.onnx", input_shape=(32, 32, 3), variables=variables, masks=masks,
               mean=mean, std=std)          # or save(net, ...) with a bounds.ir.Net

Going through the IR means an imported network is bounded by the same code as our own,
and an exported one is exactly the network we verified (BN folded in eval mode, masks
applied). Input normalisation (Sub/Div by constants) is folded into the imported net as
an affine node, so `m.net` takes the ONNX input as is; `save(..., mean, std)` writes it
as Sub/Div nodes, so the file takes pixel-space inputs as VNN-COMP networks do.

Layout: ONNX images are NCHW, the IR is NHWC. Conv kernels are transposed (OIHW ->
HWIO), and the dense layer after a Flatten has its rows permuted, as ONNX flattens in
(C, H, W) order and the IR in (H, W, C) order. `save` writes an NCHW input (VNN-COMP's
convention), batch axis 1 by default, so VNNLIB's X_i is element i of that input in C
order, which `OnnxNet.to_input` maps to the IR's layout. Inputs of rank 4 are images;
others are vectors (a rank-1 input has no batch axis, as in VNN-COMP's `test` nets).

Imported operators: Conv, Gemm, MatMul, Add (bias or residual), Sub/Mul/Div by
constants, Relu, Flatten, Reshape (when it flattens), BatchNormalization (inference),
AveragePool, GlobalAveragePool, Pad (constant zero, folded into the next Conv),
Constant, Identity, Dropout (inference). Anything else, and any attribute the IR cannot
express (asymmetric padding, dilations, groups, ...), raises `UnsupportedOnnx` naming
the operator and the node: an approximate graph would be verified wrongly.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from jaxprune.bounds import ir
from jaxprune.bounds.crown import ancestors, node_shapes
from jaxprune.models.spec import INPUT

OPSET = 13
# Old enough for most verifiers' onnx packages, new enough for opset 13.
IR_VERSION = 8
_RESERVED = (INPUT, "spec")  # IR names the bound engine uses itself


class UnsupportedOnnx(ValueError):
  """A graph (or IR net) with no exact counterpart on the other side."""


def nchw_flatten_perm(shape_hwc: Sequence[int]) -> np.ndarray:
  """perm with ours[i] = onnx[perm[i]]: NHWC flatten order in terms of NCHW flatten order."""
  h, w, c = shape_hwc
  return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def _same_perm(p, q) -> bool:
  return (p is None and q is None) or (p is not None and q is not None and np.array_equal(p, q))


def _unpermute(x, perm):
  """Rows of x (our flat order) in ONNX order: the inverse of `x_onnx[perm]`."""
  if perm is None:
    return x
  out = np.empty_like(x)
  out[perm] = x
  return out


@dataclasses.dataclass(frozen=True)
class OnnxNet:
  """An imported network: `net` takes inputs of `input_shape` (NHWC for an NCHW image)."""

  net: ir.Net
  input_shape: tuple[int, ...]   # per example, the IR's layout
  onnx_shape: tuple[int, ...]    # per example, the ONNX input's layout (no batch axis)
  input_name: str
  output_name: str

  def to_input(self, x):
    """A batch in ONNX layout, (B, *onnx_shape) or flat (B, n) as VNNLIB's X_i, for `net`."""
    x = x if hasattr(x, "reshape") else np.asarray(x)
    x = x.reshape((-1,) + self.onnx_shape)
    if len(self.input_shape) == 3:
      x = x.transpose(0, 2, 3, 1)
    return x.reshape((-1,) + self.input_shape)

  def from_input(self, x):
    """The inverse of `to_input`: a batch in the net's layout as flat (B, n) ONNX order (X_i)."""
    x = np.asarray(x).reshape((-1,) + self.input_shape)
    if len(self.input_shape) == 3:
      x = x.transpose(0, 3, 1, 2)
    return x.reshape(x.shape[0], -1)


# --- import -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Value:
  """An ONNX tensor the IR computes: node `name`, ONNX per-example `shape`.

  `image`: an ONNX (N, C, H, W) tensor held NHWC. Otherwise held flat (B, n), with
  ours[i] = onnx_flat[perm[i]] (perm None: the same order). `pad` is a pending zero
  Pad (top, left, bottom, right) that only a Conv may consume (`shape` stays unpadded).
  `batched`: the ONNX tensor has a leading batch axis (all but VNN-COMP's rank-1 inputs).
  """

  name: str
  shape: tuple[int, ...]
  image: bool
  perm: Optional[np.ndarray] = None
  batched: bool = True
  pad: Optional[tuple[int, int, int, int]] = None

  @property
  def full_shape(self) -> tuple[int, ...]:
    return ((1,) if self.batched else ()) + self.shape


class _Importer:
  def __init__(self, graph: onnx.GraphProto):
    self.graph = graph
    self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    self.values: dict[str, _Value] = {}
    self.nodes: dict[str, ir.Node] = {}  # insertion order = topological order
    self.owner: dict[str, str] = {}      # IR node -> the ONNX tensor it computes
    self.uses: dict[str, int] = {}
    for node in graph.node:
      for name in node.input:
        self.uses[name] = self.uses.get(name, 0) + 1
    for out in graph.output:
      self.uses[out.name] = self.uses.get(out.name, 0) + 1
    self.where = ""

  def error(self, msg: str) -> UnsupportedOnnx:
    return UnsupportedOnnx(f"{self.where}: {msg}")

  # Tensors.
  def const(self, name: str) -> np.ndarray:
    if name not in self.consts:
      raise self.error(f"input {name!r} must be a constant (initializer or Constant)")
    return self.consts[name]

  def value(self, name: str, image: Optional[bool] = None, pad_ok: bool = False) -> _Value:
    if name not in self.values:
      raise self.error(f"input {name!r} is not computed from the network input")
    v = self.values[name]
    if v.pad is not None and not pad_ok:
      raise self.error(f"input {name!r} comes from a Pad, which only a Conv may consume")
    if image is True and not v.image:
      raise self.error(f"input {name!r} must be an NCHW image, got shape {v.shape} "
                       "(flattened, or an earlier per-pixel constant forced a flatten)")
    if image is False and v.image:
      raise self.error(f"input {name!r} must be a vector, got an image of shape {v.shape}; "
                       "Flatten it first")
    return v

  def fresh(self, onnx_name: str) -> str:
    """An unused IR name, the ONNX tensor's where possible (an exported net reads back as is)."""
    name = "".join(ch if ch.isalnum() or ch in "_.-/" else "_" for ch in onnx_name) or "t"
    base, k = name, 1
    while name in self.nodes or name in _RESERVED:
      name, k = f"{base}_{k}", k + 1
    return name

  def emit(self, onnx_name: str, value: _Value, **fields) -> _Value:
    """Adds an IR node computing `value` (its name is filled in) for ONNX tensor onnx_name."""
    name = self.fresh(onnx_name)
    self.nodes[name] = ir.Node(name=name, **fields)
    self.owner[name] = onnx_name
    value = dataclasses.replace(value, name=name)
    self.values[onnx_name] = value
    return value

  def foldable(self, onnx_name: str, v: _Value, scale: bool) -> bool:
    """Whether v's node can absorb an affine map: it feeds only this ONNX tensor's one consumer.

    A shift folds into any linear node's bias (MatMul + Add), a scale only into an
    affine node (Sub + Div, Mul + Add): conv/dense kernels stay as written, so an
    exported net reads back node for node.
    """
    node = self.nodes.get(v.name)
    ops = ("affine",) if scale else ("conv", "dense", "affine")
    return (node is not None and node.op in ops and self.owner[v.name] == onnx_name
            and self.uses.get(onnx_name, 0) == 1)

  def to_ours(self, v: _Value, c) -> np.ndarray:
    """A constant that broadcasts to ONNX tensor v, in our layout: (C,) per channel, else full."""
    c = np.asarray(c, np.float64)
    full = v.full_shape
    try:
      ok = np.broadcast_shapes(c.shape, full) == full
    except ValueError:
      ok = False
    if not ok:
      raise self.error(f"constant of shape {c.shape} does not broadcast to the tensor {full}")
    c = np.broadcast_to(c, full)
    c = c[0] if v.batched else c
    if v.image:
      c = c.transpose(1, 2, 0)
      return c[0, 0] if np.all(c == c[:1, :1]) else c
    c = c.reshape(-1)
    return c if v.perm is None else c[v.perm]

  def flatten(self, onnx_name: str, v: _Value, shape: tuple[int, ...]) -> _Value:
    """An IR flatten of v, as ONNX tensor `shape`: an image's is read in `perm` order after."""
    perm = nchw_flatten_perm(v.shape[1:] + v.shape[:1]) if v.image else v.perm
    return self.emit(onnx_name, dataclasses.replace(v, shape=shape, image=False, perm=perm),
                     op="flatten", inputs=(v.name,))

  def elementwise(self, out: str, src: str, v: _Value, scale=None, shift=None,
                  fold: bool = True, gamma=None) -> _Value:
    """v * scale + shift (ONNX-layout constants) as an affine node, or folded into v's node."""
    s = None if scale is None else self.to_ours(v, scale)
    t = None if shift is None else self.to_ours(v, shift)
    if any(a is not None and a.ndim > 1 for a in (s, t)):  # per pixel: per feature after a flatten
      v = self.flatten(out + "/flat", v, v.shape)
      s = None if scale is None else self.to_ours(v, scale)
      t = None if shift is None else self.to_ours(v, shift)
      fold = False
    n = v.shape[0] if v.image else math.prod(v.shape)
    if gamma is not None:
      gamma = jnp.asarray(self.to_ours(v, gamma), jnp.float32)
    if fold and self.foldable(src, v, scale=s is not None):
      node = self.nodes[v.name]
      w, b = np.asarray(node.w, np.float64), node.b
      b = np.zeros(w.shape[-1]) if b is None else np.asarray(b, np.float64)
      if s is not None:
        w, b = w * s, b * s
      if t is not None:
        b = b + t
      # Renamed after its new tensor, in place: its one consumer is this node.
      name = self.fresh(out)
      node = node.replace(name=name, w=jnp.asarray(w, jnp.float32), b=jnp.asarray(b, jnp.float32))
      self.nodes = {(name if k == v.name else k): (node if k == v.name else n)
                    for k, n in self.nodes.items()}
      del self.owner[v.name]
      self.owner[name] = out
      self.values[out] = v = dataclasses.replace(v, name=name)
      return v
    w = np.ones(n) if s is None else np.broadcast_to(s, (n,))
    b = None if t is None else np.broadcast_to(t, (n,))
    return self.emit(out, dataclasses.replace(v), op="affine", inputs=(v.name,),
                     w=jnp.asarray(w, jnp.float32),
                     b=None if b is None else jnp.asarray(b, jnp.float32), gamma=gamma)

  def dense(self, out: str, v: _Value, w: np.ndarray, b) -> _Value:
    if v.shape != (w.shape[0],):
      raise self.error(f"input of shape {v.shape} does not match a ({w.shape[0]}, {w.shape[1]}) "
                       "weight (only vectors are multiplied; Flatten first)")
    w = w if v.perm is None else w[v.perm]
    return self.emit(out, _Value("", (w.shape[1],), False, batched=v.batched), op="dense",
                     inputs=(v.name,), w=jnp.asarray(w, jnp.float32),
                     b=None if b is None else jnp.asarray(b, jnp.float32))

  # Operators: each pops the attributes it understands; `run` rejects the rest.
  def op_Constant(self, node, attrs):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
      if key in attrs:
        val = attrs.pop(key)
        self.consts[node.output[0]] = (numpy_helper.to_array(val) if key == "value"
                                       else np.asarray(val))
        return
    raise self.error("only tensor/float/int values are supported")

  def op_Identity(self, node, attrs):
    src, out = node.input[0], node.output[0]
    if src in self.consts:
      self.consts[out] = self.consts[src]
    else:
      self.values[out] = self.value(src, pad_ok=True)

  def op_Dropout(self, node, attrs):
    for key in ("ratio", "seed", "is_test"):
      attrs.pop(key, None)
    if len(node.input) > 2 and node.input[2] and bool(self.const(node.input[2])):
      raise self.error("training_mode=True")
    self.op_Identity(node, attrs)

  def op_Relu(self, node, attrs):
    v = self.value(node.input[0])
    self.emit(node.output[0], dataclasses.replace(v), op="relu", inputs=(v.name,))

  def op_Conv(self, node, attrs):
    v = self.value(node.input[0], image=True, pad_ok=True)
    w = self.const(node.input[1]).astype(np.float64)
    b = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if w.ndim != 4:
      raise self.error(f"only 2-D convolutions are supported (kernel shape {w.shape})")
    if attrs.pop("group", 1) != 1:
      raise self.error("grouped convolutions (group > 1) are not supported")
    if any(d != 1 for d in attrs.pop("dilations", [1, 1])):
      raise self.error("dilations are not supported")
    auto_pad = attrs.pop("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b"VALID"):
      raise self.error(f"auto_pad={auto_pad.decode()} is not supported (give explicit pads)")
    kernel = tuple(attrs.pop("kernel_shape", w.shape[2:]))
    if kernel != w.shape[2:] or kernel[0] != kernel[1]:
      raise self.error(f"kernel_shape {kernel} (weights {w.shape[2:]}): only square kernels")
    strides = attrs.pop("strides", [1, 1])
    if strides[0] != strides[1]:
      raise self.error(f"strides {list(strides)}: only equal strides are supported")
    pads = np.array(attrs.pop("pads", [0, 0, 0, 0]))
    if v.pad is not None:  # ONNX pads are (top, left, bottom, right) for 2-D
      pads = pads + np.array(v.pad)
    if np.any(pads != pads[0]):
      raise self.error(f"asymmetric padding {pads.tolist()} (with any preceding Pad) "
                       "is not supported")
    c, h, wd = v.shape
    if w.shape[1] != c:
      raise self.error(f"kernel expects {w.shape[1]} input channels, the input has {c}")
    k, s, p = kernel[0], int(strides[0]), int(pads[0])
    shape = (w.shape[0], (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1)
    self.emit(node.output[0], _Value("", shape, True), op="conv", inputs=(v.name,), stride=s,
              padding=p, kernel=k, w=jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32),
              b=None if b is None else jnp.asarray(b, jnp.float32))

  def op_Gemm(self, node, attrs):
    if attrs.pop("transA", 0):
      raise self.error("transA=1 is not supported")
    alpha, beta = attrs.pop("alpha", 1.0), attrs.pop("beta", 1.0)
    w = self.const(node.input[1]).astype(np.float64)
    w = (w.T if attrs.pop("transB", 0) else w) * alpha
    v = self.value(node.input[0], image=False)
    if not v.batched:
      raise self.error("Gemm needs a 2-D (batched) input")
    b = None
    if len(node.input) > 2 and node.input[2]:
      c = self.const(node.input[2]).astype(np.float64) * beta
      try:
        b = np.broadcast_to(c, (1, w.shape[1]))[0]
      except ValueError:
        raise self.error(f"bias of shape {c.shape} is not per output") from None
    self.dense(node.output[0], v, w, b)

  def op_MatMul(self, node, attrs):
    a, b = node.input
    left = a in self.consts  # W @ x: only for an unbatched vector x (VNN-COMP's test nets)
    w = self.const(a if left else b).astype(np.float64)
    v = self.value(b if left else a, image=False)
    if w.ndim != 2 or (left and v.batched):
      raise self.error(f"only x @ W, or W @ x for a 1-D x, with a matrix W are supported "
                       f"(W of shape {w.shape} on the {'left' if left else 'right'})")
    self.dense(node.output[0], v, w.T if left else w, None)

  def binary(self, node, op: str):
    (a, b), out = node.input, node.output[0]
    if a not in self.consts and b not in self.consts:
      if op != "Add":
        raise self.error(f"{op} of two computed tensors is not supported")
      va, vb = self.value(a), self.value(b)
      if ((va.shape, va.image, va.batched) != (vb.shape, vb.image, vb.batched)
          or not _same_perm(va.perm, vb.perm)):
        raise self.error(f"residual Add of tensors of different shapes or layouts "
                         f"({va.shape}, {vb.shape})")
      self.emit(out, dataclasses.replace(va), op="add", inputs=(va.name, vb.name))
      return
    if a in self.consts and op in ("Add", "Mul"):
      a, b = b, a
    if a in self.consts:  # c - x or c / x
      if op == "Div":
        raise self.error("dividing a constant by the network's tensor is not linear")
      self.elementwise(out, b, self.value(b), scale=-1.0, shift=self.const(a))
      return
    v, c = self.value(a), np.asarray(self.const(b), np.float64)
    if op in ("Add", "Sub"):
      self.elementwise(out, a, v, shift=c if op == "Add" else -c)
    else:
      self.elementwise(out, a, v, scale=c if op == "Mul" else 1.0 / c)

  def op_Add(self, node, attrs):
    self.binary(node, "Add")

  def op_Sub(self, node, attrs):
    self.binary(node, "Sub")

  def op_Mul(self, node, attrs):
    self.binary(node, "Mul")

  def op_Div(self, node, attrs):
    self.binary(node, "Div")

  def op_BatchNormalization(self, node, attrs):
    if attrs.pop("training_mode", 0):
      raise self.error("training_mode=1 is not supported (export in eval mode)")
    if attrs.pop("spatial", 1) != 1:
      raise self.error("spatial=0 is not supported")
    eps = attrs.pop("epsilon", 1e-5)
    attrs.pop("momentum", None)
    v = self.value(node.input[0])
    scale, bias, mean, var = (self.const(n).astype(np.float64) for n in node.input[1:5])
    w = scale / np.sqrt(var + eps)
    per_channel = lambda a: a.reshape(a.shape + (1,) * (len(v.shape) - 1))
    self.elementwise(node.output[0], node.input[0], v, per_channel(w),
                     per_channel(bias - mean * w), fold=False, gamma=per_channel(scale))

  def op_Flatten(self, node, attrs):
    v = self.value(node.input[0])
    if attrs.pop("axis", 1) != 1 or not v.batched:
      raise self.error("only Flatten(axis=1) of a batched tensor is supported")
    self.flatten(node.output[0], v, (math.prod(v.shape),))

  def op_Reshape(self, node, attrs):
    v = self.value(node.input[0])
    shape = [int(d) for d in self.const(node.input[1])]
    allowzero = attrs.pop("allowzero", 0)
    full = v.full_shape
    shape = [full[i] if d == 0 and not allowzero and i < len(full) else d
             for i, d in enumerate(shape)]
    if -1 in shape:
      known = math.prod(d for d in shape if d != -1)
      shape[shape.index(-1)] = math.prod(full) // max(known, 1)
    shape = tuple(shape)
    if shape == full:
      self.values[node.output[0]] = v
    elif v.batched and len(shape) == 2 and shape == (1, math.prod(v.shape)):
      self.flatten(node.output[0], v, shape[1:])
    else:
      raise self.error(f"Reshape {full} -> {shape} is not a flatten")

  def op_AveragePool(self, node, attrs):
    v = self.value(node.input[0], image=True)
    kernel = tuple(attrs.pop("kernel_shape"))
    strides = tuple(attrs.pop("strides", (1, 1)))
    pads = attrs.pop("pads", [0, 0, 0, 0])
    ceil = attrs.pop("ceil_mode", 0)
    attrs.pop("count_include_pad", None)  # no padding: no effect
    auto_pad = attrs.pop("auto_pad", b"NOTSET")
    c, h, w = v.shape
    k = kernel[0]
    if (len(kernel) != 2 or kernel[0] != kernel[1] or strides != kernel or any(pads)
        or auto_pad not in (b"NOTSET", b"VALID") or (ceil and (h % k or w % k))):
      raise self.error(f"only square, unpadded pooling with stride = kernel is supported "
                       f"(kernel {list(kernel)}, strides {list(strides)}, pads {list(pads)})")
    self.emit(node.output[0], _Value("", (c, h // k, w // k), True), op="avgpool",
              inputs=(v.name,), kernel=k)

  def op_GlobalAveragePool(self, node, attrs):
    v = self.value(node.input[0], image=True)
    c, h, w = v.shape
    if h != w:
      raise self.error(f"only square inputs are supported (got {h}x{w})")
    self.emit(node.output[0], _Value("", (c, 1, 1), True), op="avgpool", inputs=(v.name,),
              kernel=h)

  def op_Pad(self, node, attrs):
    if attrs.pop("mode", b"constant") != b"constant":
      raise self.error("only constant padding is supported")
    pads = attrs.pop("pads", None)
    value = attrs.pop("value", 0.0)
    if pads is None:
      pads = self.const(node.input[1])
      if len(node.input) > 2 and node.input[2]:
        value = float(self.const(node.input[2]))
      if len(node.input) > 3 and node.input[3]:
        raise self.error("the axes input is not supported")
    pads = [int(p) for p in pads]
    v = self.value(node.input[0], image=True, pad_ok=True)
    if value != 0 or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
      raise self.error(f"only non-negative zero padding of H and W is supported (pads {pads})")
    old = v.pad or (0, 0, 0, 0)  # `shape` stays the unpadded one the Conv pads
    self.values[node.output[0]] = dataclasses.replace(
        v, pad=tuple(o + p for o, p in zip(old, (pads[2], pads[3], pads[6], pads[7]))))

  def run(self) -> OnnxNet:
    graph = self.graph
    inputs = [i for i in graph.input if i.name not in self.consts]
    if len(inputs) != 1 or len(graph.output) != 1:
      raise UnsupportedOnnx(f"need one input and one output, got inputs "
                            f"{[i.name for i in inputs]}, outputs "
                            f"{[o.name for o in graph.output]}")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inp.type.tensor_type.shape.dim]
    if any(d is None or d <= 0 for d in dims[1:]) or not dims:
      raise UnsupportedOnnx(f"input {inp.name!r} needs a static shape (batch axis aside), "
                            f"got {dims}")
    if len(dims) == 1:
      onnx_shape, image, batched = tuple(dims), False, False
    else:
      if dims[0] not in (None, 0, 1):
        raise UnsupportedOnnx(f"input {inp.name!r} has batch axis {dims[0]}; expected 1")
      onnx_shape, image, batched = tuple(dims[1:]), len(dims) == 4, True
    self.values[inp.name] = _Value(INPUT, onnx_shape, image, batched=batched)
    for i, node in enumerate(graph.node):
      self.where = f"ONNX node {node.name or '#' + str(i)!r} ({node.op_type})"
      handler = getattr(self, "op_" + node.op_type, None)
      if handler is None or node.domain not in ("", "ai.onnx"):
        raise UnsupportedOnnx(f"{self.where}: unsupported operator {node.op_type!r}; "
                              f"supported: {', '.join(SUPPORTED_OPS)}")
      attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
      if (node.op_type in _CONST_FOLD and node.input
          and all(n in self.consts for n in node.input if n)):
        self.consts[node.output[0]] = _CONST_FOLD[node.op_type](
            *(self.consts[n] for n in node.input if n))
        continue
      handler(node, attrs)
      if attrs:
        raise UnsupportedOnnx(f"{self.where}: unsupported attributes {sorted(attrs)}")
    out = graph.output[0].name
    self.where = f"output {out!r}"
    v = self.value(out, image=False)
    if v.name == INPUT:
      raise self.error("the output is the input")
    if v.perm is not None:
      raise self.error("the output is a flattened image, whose order the IR cannot keep")
    net = ir.Net(nodes=tuple(self.nodes.values()))
    keep = ancestors(net, v.name)
    net = ir.Net(nodes=tuple(n for n in net.nodes if n.name in keep))
    in_shape = (onnx_shape[1:] + onnx_shape[:1]) if image else (math.prod(onnx_shape),)
    return OnnxNet(net, in_shape, onnx_shape, inp.name, out)


# Nodes over constants only are evaluated (e.g. a normalisation computed in the graph).
_CONST_FOLD = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
               "Identity": lambda x: x,
               "Reshape": lambda x, s: x.reshape([x.shape[i] if d == 0 else int(d)
                                                  for i, d in enumerate(s)])}
SUPPORTED_OPS = tuple(sorted(n[3:] for n in dir(_Importer) if n.startswith("op_")))


def load(model) -> OnnxNet:
  """The IR of an ONNX model (a path, bytes or a ModelProto); see the module docstring."""
  if isinstance(model, (bytes, bytearray)):
    model = onnx.load_from_string(bytes(model))
  elif not isinstance(model, onnx.ModelProto):
    model = onnx.load(model)
  return _Importer(model.graph).run()


# --- export -----------------------------------------------------------------------------

class _Exporter:
  def __init__(self):
    self.nodes, self.inits, self.names = [], [], {"input", "output"}

  def const(self, base: str, array) -> str:
    name = f"{base}_{len(self.inits)}"
    self.names.add(name)
    self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
    return name

  def emit(self, op: str, inputs: list[str], name: str, **attrs) -> str:
    """Adds an ONNX node; its output is `name` where free (an IR node's last ONNX node)."""
    out, k = name, 1
    while out in self.names:
      out, k = f"{name}_{k}", k + 1
    self.names.add(out)
    self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
    return out


def _to_onnx_const(c, shape: tuple[int, ...], perm) -> np.ndarray:
  """A constant over our tensor of `shape` (per channel or full) in the ONNX tensor's layout."""
  c = np.asarray(c, np.float32)
  if len(shape) == 3:  # an image, NHWC -> NCHW
    if c.ndim <= 1:
      return np.broadcast_to(c, shape[-1:]).reshape(1, -1, 1, 1)
    return np.broadcast_to(c, shape).transpose(2, 0, 1)[None]
  return _unpermute(np.broadcast_to(c, shape).copy(), perm)


def to_model(net: ir.Net, input_shape: Sequence[int], mean=None, std=None,
             batch_size: Optional[int] = 1) -> onnx.ModelProto:
  """The ONNX model of `net` (see `save`)."""
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) not in (1, 3):
    raise UnsupportedOnnx(f"input_shape must be (H, W, C) or (n,), got {input_shape}")
  shapes = node_shapes(net, jnp.zeros((1,) + input_shape, jnp.float32))
  ex = _Exporter()
  batch = batch_size if batch_size is not None else "N"
  onnx_in = ([batch, input_shape[2], input_shape[0], input_shape[1]] if len(input_shape) == 3
             else [batch, input_shape[0]])
  # Per IR value: (ONNX tensor, perm of a flattened image or None).
  state = {INPUT: ("input", None)}
  for op, c in (("Sub", mean), ("Div", std)):  # pixel space -> the net's input space
    if c is not None:
      t = ex.const(op.lower(), _to_onnx_const(c, input_shape, None))
      state[INPUT] = (ex.emit(op, [state[INPUT][0], t], "normalise"), None)
  for node in net.nodes:
    x = state[node.inputs[0]]
    in_shape = shapes[node.inputs[0]]
    image = len(in_shape) == 3
    fail = lambda msg: UnsupportedOnnx(f"IR node {node.name!r} ({node.op}): {msg}")
    if node.op in ("conv", "avgpool") and not image:
      raise fail(f"needs an image input, got shape {in_shape}")
    perm = None
    if node.op == "conv":
      w = np.asarray(node.w, np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
      ins = [x[0], ex.const(node.name + "_w", w)]
      if node.b is not None:
        ins.append(ex.const(node.name + "_b", node.b))
      k = int(w.shape[2])
      t = ex.emit("Conv", ins, node.name, kernel_shape=[k, int(w.shape[3])],
                  strides=[node.stride] * 2, pads=[node.padding] * 4)
    elif node.op == "dense":
      if np.ndim(node.w) != 2 or image:
        raise fail("needs a 2-D kernel and a vector input (a folded spec, or an unflattened "
                   "input, cannot be exported)")
      w = _unpermute(np.asarray(node.w, np.float32), x[1])
      ins = [x[0], ex.const(node.name + "_w", w.T)]
      if node.b is not None:
        ins.append(ex.const(node.name + "_b", node.b))
      t = ex.emit("Gemm", ins, node.name, transB=1)
    elif node.op == "affine":
      t = ex.emit("Mul", [x[0], ex.const(node.name + "_w", _to_onnx_const(node.w, in_shape, x[1]))],
                  node.name if node.b is None else node.name + "/Mul")
      if node.b is not None:
        t = ex.emit("Add", [t, ex.const(node.name + "_b",
                                        _to_onnx_const(node.b, in_shape, x[1]))], node.name)
      perm = x[1]
    elif node.op == "relu":
      t, perm = ex.emit("Relu", [x[0]], node.name), x[1]
    elif node.op == "flatten":
      t = ex.emit("Flatten", [x[0]], node.name, axis=1)
      perm = nchw_flatten_perm(in_shape) if image else x[1]
    elif node.op == "add":
      args = [state[n] for n in node.inputs]
      if not all(_same_perm(a[1], x[1]) for a in args):
        raise fail("inputs in different layouts")
      t = x[0]
      for i, a in enumerate(args[1:], start=2):
        t = ex.emit("Add", [t, a[0]], node.name if i == len(args) else f"{node.name}/Add{i}")
      perm = x[1]
    elif node.op == "avgpool":
      k = node.kernel
      t = ex.emit("AveragePool", [x[0]], node.name, kernel_shape=[k, k], strides=[k, k])
    else:
      raise fail("no ONNX counterpart")
    state[node.name] = (t, perm)
  out, perm = state[net.output]
  out_shape = shapes[net.output]
  if perm is not None or len(out_shape) != 1:
    raise UnsupportedOnnx(f"the output must be a vector in its own order, got {out_shape}")
  ex.nodes.append(helper.make_node("Identity", [out], ["output"], name="output"))
  graph = helper.make_graph(
      ex.nodes, "jaxprune",
      [helper.make_tensor_value_info("input", TensorProto.FLOAT, onnx_in)],
      [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, out_shape[0]])],
      ex.inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name="jaxprune",
                            doc_string="NCHW input" if len(input_shape) == 3 else "")
  model.ir_version = IR_VERSION
  onnx.checker.check_model(model)
  return model


def save(net, path: str, input_shape: Sequence[int], *, variables: Optional[dict] = None,
         masks=None, mean=None, std=None, batch_size: Optional[int] = 1) -> onnx.ModelProto:
  """Writes `net` (a bounds.ir.Net, or a model / registry name with `variables`) to `path`.

  `input_shape` is per example in our layout, (H, W, C) or (n,); the file's input is
  (batch, C, H, W) or (batch, n), batch `batch_size` (None: a symbolic axis "N").
  Models are folded with `bounds.from_model` (masks applied, BN in eval mode).
  `mean`/`std` (per channel, pixel space) prepend Sub/Div nodes so that the file takes
  unnormalised inputs, as VNN-COMP networks do.
  """
  if not isinstance(net, ir.Net):
    if variables is None:
      raise TypeError("exporting a model needs its `variables`")
    net = ir.from_model(net, variables, masks, bn="eval")
  model = to_model(net, input_shape, mean, std, batch_size)
  onnx.save(model, path)
  return model
