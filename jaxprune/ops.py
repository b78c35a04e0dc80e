"""Convolution arithmetic shared by the models and the bound engine.

`conv2d` has the forward of `lax.conv_general_dilated` (NHWC/HWIO) and
mathematically the same gradients. On CPU, when XLA runs convolutions with
Eigen (`jaxprune.runtime.configure()` sets
--xla_cpu_experimental_ynn_fusion_type=-individual_convolution), the backward
pass of a stride-2 convolution with an even kernel is rewritten as the
backward pass of a stride-1 convolution over the space-to-depth input (XLA
lowers the input gradient of a strided convolution to a slow lhs-dilated
convolution), and its weight gradient is contracted with the input as the
kernel operand (so the large activation is transposed keeping its channel
axis minor; XLA's own lowering moves the batch axis minor, a strided copy
that costs more than the convolution). Elsewhere (other backends, YNNPACK
convolutions, other shapes) it is plain `lax.conv_general_dilated`; the fast
paths are chosen from XLA_FLAGS when a function is traced.
benchmarks/train_step.py measures the effect (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

# BatchNorm's epsilon: the models normalise with it and the bound IR folds BN with it.
BN_EPS = 1e-5

_DN = ("NHWC", "HWIO", "NHWC")
_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def _ynn_convolutions_off(flags: str) -> bool:
  """Whether XLA_FLAGS leave convolutions to Eigen (YNNPACK's convolution fusion off)."""
  values = [f[len(_YNN_FLAG):] for f in flags.split() if f.startswith(_YNN_FLAG)]
  if not values:
    return False  # XLA's default includes YNNPACK convolutions
  items = [v.strip().lower().replace("library_fusion_type_", "")
           for v in values[-1].split(",") if v.strip()]
  if any(v.startswith(("+", "-")) for v in items):
    return "-individual_convolution" in items
  return "individual_convolution" not in items


def _fast_conv_backward() -> bool:
  return (jax.default_backend() == "cpu"
          and _ynn_convolutions_off(os.environ.get("XLA_FLAGS", "")))


def conv(x, w, strides, padding):
  """`lax.conv_general_dilated` in NHWC/HWIO layout, with XLA's own gradients."""
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


def _space_to_depth(x, padding):
  """Pad, then fold 2x2 spatial blocks into channels ordered (row, col, channel)."""
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  h, w = x.shape[1] // 2, x.shape[2] // 2
  return x.reshape(b, h, 2, w, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, 4 * c)


def _kernel_to_s2d(w):
  k0, k1, c, o = w.shape
  return (w.reshape(k0 // 2, 2, k1 // 2, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
          .reshape(k0 // 2, k1 // 2, 4 * c, o))


def _kernel_from_s2d(ws, c):
  k0, k1, _, o = ws.shape
  return ws.reshape(k0, k1, 2, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(2 * k0, 2 * k1, c, o)


def _s2d_applies(x_shape, w, strides, padding) -> bool:
  """Stride 2, even kernel and even padded size, and a large enough input to pay off."""
  return (tuple(strides) == (2, 2) and w.shape[0] % 2 == 0 and w.shape[1] % 2 == 0
          and (x_shape[1] + sum(padding[0])) % 2 == 0 and (x_shape[2] + sum(padding[1])) % 2 == 0
          and x_shape[1] >= 16 and x_shape[2] >= 16)


def _weight_grad_valid(x, g, kernel_shape):
  """Gradient of a stride-1 VALID conv's kernel, with x as the kernel operand.

  dW[i, j] = sum_{n,h,w} x[n, h+i, w+j] g[n, h, w] is the VALID convolution of g padded
  by k-1 (batch = out channel, features = images) with x (in-features = images,
  out-features = in channels), flipped spatially.
  """
  k0, k1 = kernel_shape[:2]
  gp = jnp.pad(g, ((0, 0), (k0 - 1, k0 - 1), (k1 - 1, k1 - 1), (0, 0)))
  out = lax.conv_general_dilated(gp, x, (1, 1), "VALID", dimension_numbers=("CHWN", "IHWO", "NHWC"))
  return out[:, ::-1, ::-1, :].transpose(1, 2, 3, 0)


# The weight gradient is summed over batch chunks of this size (cache-friendlier for
# Eigen's convolution: a faster IBP step, see benchmarks/RESULTS.md).
_WGRAD_CHUNK = 32


def _fast_s2d(x_shape, w, strides, padding) -> bool:
  return _fast_conv_backward() and _s2d_applies(x_shape, w, strides, padding)


# XLA:CPU's transposed convolutions are much slower when the contracted channel count is
# not a multiple of 32 (multiples of 16 are not enough; benchmarks/structured.py, see
# benchmarks/RESULTS.md). Padding the output channels instead slows it.
_CHANNEL_MULTIPLE = 32


def conv_input_grad(g, w, strides, padding, x_shape):
  """`W^T g`: the cotangent of x in conv(x, w) for the output cotangent g.

  On the fast path, the transpose of the stride-1 VALID conv over the
  space-to-depth input (a plain conv), not XLA's lhs-dilated convolution. On
  CPU the channels of g are zero-padded to a multiple of `_CHANNEL_MULTIPLE`.
  """
  x = jax.ShapeDtypeStruct(tuple(x_shape), g.dtype)
  extra = -g.shape[-1] % _CHANNEL_MULTIPLE
  if extra and jax.default_backend() == "cpu":  # zero channels: same value, Eigen's fast path
    g = jnp.pad(g, ((0, 0),) * (g.ndim - 1) + ((0, extra),))
    w = jnp.pad(w, ((0, 0),) * 3 + ((0, extra),))
  if _fast_s2d(x_shape, w, strides, padding):
    ws = _kernel_to_s2d(w)
    f = lambda x: conv(_space_to_depth(x, padding), ws, (1, 1), "VALID")
  else:
    f = lambda x: conv(x, w, strides, padding)
  return jax.linear_transpose(f, x)(g)[0]


def _chunked_weight_grad(x, g, kernel_shape):
  n = x.shape[0]
  chunk = _WGRAD_CHUNK if n % _WGRAD_CHUNK == 0 else n
  return sum(_weight_grad_valid(x[i:i + chunk], g[i:i + chunk], kernel_shape)
             for i in range(0, n, chunk))


def conv_kernel_grad(x, g, w, strides, padding, x_as_kernel: bool = False):
  """The cotangent of w in conv(x, w) for the output cotangent g (see the module docstring).

  `x_as_kernel` also contracts stride-1 convs with x as the kernel operand:
  slower than XLA's lowering for a stored x, faster for an x computed just
  before (XLA fuses that computation into its batch-minor transpose).
  """
  if x_as_kernel and _fast_conv_backward() and tuple(strides) == (1, 1):
    return _chunked_weight_grad(jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),)), g, w.shape)
  if _fast_s2d(x.shape, w, strides, padding):
    ws_shape = (w.shape[0] // 2, w.shape[1] // 2, 4 * w.shape[2], w.shape[3])
    return _kernel_from_s2d(_chunked_weight_grad(_space_to_depth(x, padding), g, ws_shape),
                            x.shape[-1])
  return jax.vjp(lambda w: conv(x, w, strides, padding), w)[1](g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_s2d_backward(x, w, strides, padding):
  return conv(x, w, strides, padding)


def _conv_s2d_fwd(x, w, strides, padding):
  return conv(x, w, strides, padding), (x, w)


def _conv_s2d_bwd(strides, padding, res, g):
  x, w = res
  return (conv_input_grad(g, w, strides, padding, x.shape),
          conv_kernel_grad(x, g, w, strides, padding))


_conv_s2d_backward.defvjp(_conv_s2d_fwd, _conv_s2d_bwd)


def conv2d(x, w, strides=(1, 1), padding=((0, 0), (0, 0))):
  """NHWC x HWIO convolution (`lax.conv_general_dilated`), fast backward on XLA:CPU."""
  strides, padding = conv_geometry(strides, padding)
  if _fast_s2d(x.shape, w, strides, padding):
    return _conv_s2d_backward(x, w, strides, padding)
  return conv(x, w, strides, padding)


def conv_padding(p: int):
  """Symmetric padding `p` of both spatial axes."""
  return ((p, p), (p, p))


def conv_geometry(strides, padding):
  """(strides, padding) as tuples of pairs, from ints or sequences."""
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  padding = conv_padding(padding) if isinstance(padding, int) else \
      tuple((int(lo), int(hi)) for lo, hi in padding)
  return strides, padding


def flax_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` for `nn.Conv`, routed to `conv2d` in the plain 2-D case."""
  plain = (lhs.ndim == 4 and feature_group_count == 1 and precision is None and not kwargs
           and not isinstance(padding, str)
           and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN))
  if plain:
    return conv2d(lhs, rhs, window_strides, padding)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count,
                                  precision=precision, **kwargs)
