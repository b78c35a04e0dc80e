"""Bound methods (IBP, CROWN-IBP, CROWN, alpha-CROWN): soundness, exactness, ordering, gradients.

Shapes are fixed per model (batch of 2 boxes, 10-class margin specs), so each
(model, method) pair compiles once and every hypothesis draw reuses it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads
from scipy.optimize import Bounds, LinearConstraint, milp

from jaxprune import bounds, models
from jaxprune.bounds import Net, Node
from jaxprune.bounds import alpha as alpha_lib
from jaxprune.bounds.crown import conv_transpose, crown_core, node_shapes, window_plan
from trees import assert_trees_close, tree_vdot

INPUT_SHAPES = {"mlp_tiny": (6,), "cnn_tiny": (8, 8, 2), "resnet_tiny": (8, 8, 3)}
# alpha-CROWN's slope layouts, one per model to bound compile time.
ALPHA = {"mlp_tiny": (("iterations", 5), ("intermediate", "shared"), ("share_alphas", True)),
         "cnn_tiny": (("iterations", 5),),
         "resnet_tiny": (("iterations", 5), ("intermediate", "fixed"))}
BATCH, K = 2, 10
# Most of this file's time is XLA:CPU compilation; the cheapest optimisation
# level halves it and changes no semantics (the tiny nets run in milliseconds).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


def methods(model):
  return {"ibp": (), "crown_ibp": (), "crown": (), "alpha_crown": ALPHA[model]}


@functools.cache
def bound_fn(method, opts=()):
  """jit(compute_bounds) returning (lower, upper, relu_bounds); compiled once per shape."""
  return jit(functools.partial(bounds.compute_bounds, method=method, return_relu_bounds=True,
                               **dict(opts)))


def all_bounds(model, net, xl, xu, C):
  out = {m: bound_fn(m, o)(net, xl, xu, C) for m, o in methods(model).items()}
  out["crown_unstable"] = bound_fn("crown", (("refine", "unstable"),))(net, xl, xu, C)
  return out


def random_variables(key, density, model, shape):
  """Random masks, biases, BN scales/shifts and running statistics."""
  variables = model.init(jax.random.fold_in(key, 0), jnp.zeros((1,) + shape))
  draw = {"bias": lambda k, s: 0.3 * jax.random.normal(k, s),
          "scale": lambda k, s: 0.8 + 0.6 * jax.random.normal(k, s),  # some BN scales < 0
          "mean": lambda k, s: 0.5 * jax.random.normal(k, s),
          "var": lambda k, s: jax.random.uniform(k, s, minval=0.2, maxval=2.0)}
  flat = traverse_util.flatten_dict(variables)
  flat = {p: draw[p[-1]](jax.random.fold_in(key, i + 1), v.shape) if p[-1] in draw else v
          for i, (p, v) in enumerate(sorted(flat.items()))}
  variables = traverse_util.unflatten_dict(flat)
  masks = models.init_masks(variables["params"], model.layers, include=("conv", "dense"))
  leaves, tree = jax.tree.flatten(masks)
  masks = jax.tree.unflatten(tree, [
      jax.random.bernoulli(jax.random.fold_in(key, 1000 + i), density, m.shape).astype(m.dtype)
      for i, m in enumerate(leaves)])
  return variables, masks


def random_model(name, seed, density, shape):
  """(model, variables, masks) of a random masked net, drawn in one compiled call."""
  model = models.create(name)
  draw = jit(lambda key: random_variables(key, density, model, shape))
  return (model, *draw(jax.random.PRNGKey(seed)))


@functools.partial(jit, static_argnums=0)
def random_problem(name, seed, eps, density):
  """A random masked net (eval-mode BN), BATCH boxes of radius eps and margin specs."""
  model = models.create(name)
  variables, masks = random_variables(jax.random.PRNGKey(seed), density, model, INPUT_SHAPES[name])
  kx, ky = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 2000))
  x = jax.random.normal(kx, (BATCH,) + INPUT_SHAPES[name])
  labels = jax.random.randint(ky, (BATCH,), 0, K)
  net = bounds.from_model(model, variables, masks, bn="eval")
  return net, x - eps, x + eps, bounds.margin_matrix(labels, K)


@jax.jit
def sample_values(net, xl, xu, C, key):
  """Spec values and ReLU inputs at 10^4 points per box: 5000 uniform, 5000 random corners."""
  n = 5000
  ku, kc = jax.random.split(key)
  u = jax.random.uniform(ku, (n,) + xl.shape)
  corners = jax.random.bernoulli(kc, 0.5, (n,) + xl.shape).astype(xl.dtype)
  xs = xl + (xu - xl) * jnp.concatenate([u, corners])
  vals = bounds.forward(net, xs.reshape((-1,) + xl.shape[1:]), return_all=True)
  vals = {k: v.reshape((2 * n,) + xl.shape[:1] + v.shape[1:]) for k, v in vals.items()}
  return jnp.einsum("nbk,bsk->nbs", vals[net.output], C), vals


@functools.partial(jax.jit, static_argnames=("steps", "restarts"))
def pgd(net, xl, xu, C, key, steps=20, restarts=3):
  """Per (box, spec): min and max of C f(x) found by signed-gradient PGD from random starts."""
  shape = (2, restarts, C.shape[1]) + xl.shape  # minimise, then maximise
  sign = jnp.array([1.0, -1.0])[:, None, None, None]

  def spec_values(x):
    out = bounds.forward(net, x.reshape((-1,) + xl.shape[1:])).reshape(shape[:4] + (-1,))
    return jnp.einsum("mrsbk,bsk->mrbs", out, C)

  def step(t, x):
    g = jax.grad(lambda x: jnp.sum(sign * spec_values(x)))(x)
    return jnp.clip(x - (xu - xl) * 0.25 * (1 - t / steps) * jnp.sign(g), xl, xu)

  x = jax.lax.fori_loop(0, steps, step, xl + (xu - xl) * jax.random.uniform(key, shape))
  values = spec_values(x)
  return values[0].min(0), values[1].max(0)


def assert_sound(net, xl, xu, C, results, seed):
  """Every bound holds at 10^4 samples and PGD extremes; every ReLU bound at the samples."""
  key = jax.random.PRNGKey(seed)
  ys, vals = sample_values(net, xl, xu, C, key)
  lo_pgd, hi_pgd = pgd(net, xl, xu, C, key)
  lo_seen = np.minimum(ys.min(0), lo_pgd)
  hi_seen = np.maximum(ys.max(0), hi_pgd)
  tol = 1e-5 * (1 + float(jnp.abs(ys).max()))
  for method, (lo, hi, rb) in results.items():
    assert np.all(np.asarray(lo) <= lo_seen + tol), (method, float((lo - lo_seen).max()))
    assert np.all(np.asarray(hi) >= hi_seen - tol), (method, float((hi_seen - hi).max()))
    for relu in net.relu_nodes():
      h = vals[relu.inputs[0]]
      l, u = rb[relu.name]
      t = 1e-5 * (1 + float(jnp.abs(h).max()))
      assert np.all(h.min(0) >= l - t) and np.all(h.max(0) <= u + t), (method, relu.name)


@pytest.mark.parametrize("model", list(INPUT_SHAPES))
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.sampled_from([0.01, 0.05, 0.2]),
       density=st.floats(0.3, 1.0))
def test_bounds_are_sound(model, seed, eps, density):
  """All methods on random masked MLP / conv-BN / residual nets in eval-mode BN.

  Theorems checked strictly (up to float rounding): every bound contains the
  sampled and PGD-found extremes; alpha-CROWN is never looser than CROWN (it
  keeps the best of its iterations, the first being CROWN) and neither are its
  ReLU bounds.
  """
  net, xl, xu, C = random_problem(model, seed, eps, density)
  results = all_bounds(model, net, xl, xu, C)
  assert_sound(net, xl, xu, C, results, seed)
  (lo_c, hi_c, rb_c), (lo_a, hi_a, rb_a) = results["crown"], results["alpha_crown"]
  tol = 1e-6 * (1 + np.abs(lo_c))
  assert np.all(lo_a >= lo_c - tol) and np.all(hi_a <= hi_c + 1e-6 * (1 + np.abs(hi_c)))
  for r in rb_c:
    assert np.all(rb_a[r][0] >= rb_c[r][0] - 1e-6) and np.all(rb_a[r][1] <= rb_c[r][1] + 1e-6)


def test_compare_ibp_is_sound_and_inside_ibp():
  """`compare_ibp` intersects CROWN's intermediate bounds with IBP's: sound, and inside both."""
  net, xl, xu, C = random_problem("mlp_tiny", 17, 0.3, 0.7)
  results = {name: bound_fn(m, o)(net, xl, xu, C) for name, m, o in [
      ("ibp", "ibp", ()), ("crown", "crown", ()), ("cmp", "crown", (("compare_ibp", True),))]}
  assert_sound(net, xl, xu, C, results, 17)
  rb_i, rb_c, rb_x = (results[m][2] for m in ("ibp", "crown", "cmp"))
  for r in rb_x:
    for inner, outer in ((rb_x, rb_i), (rb_x, rb_c)):
      assert np.all(inner[r][0] >= outer[r][0] - 1e-6) and np.all(inner[r][1] <= outer[r][1] + 1e-6)
  assert any(np.any(rb_x[r][0] > rb_c[r][0] + 1e-4) for r in rb_x)  # it does tighten CROWN here


@pytest.mark.parametrize("model,seed,eps", [
    ("mlp_tiny", 1, 0.05), ("mlp_tiny", 2, 0.2), ("cnn_tiny", 3, 0.05), ("cnn_tiny", 4, 0.2),
    ("resnet_tiny", 5, 0.01), ("resnet_tiny", 6, 0.05)])
def test_tightness_ordering_on_random_nets(model, seed, eps):
  """IBP <= CROWN-IBP <= CROWN <= alpha-CROWN for the summed margin lower bounds.

  Only CROWN <= alpha-CROWN is a theorem (checked elementwise in the soundness
  test). The others are empirical: over 120 draws each of the MLP and the CNN
  (seeds 0-39 x eps 0.02/0.1/0.3, density 0.7) the summed ordering always
  held, and it failed on 2 of 45 residual draws (seeds 0-14; seed 9 at eps 0.1
  and 0.3, CROWN-IBP > CROWN); elementwise, 0.5-4 % of the margins break it.
  Every break we inspected had CROWN intermediate bounds looser than IBP's on
  some neurons, which adaptive slopes allow (the hand example below: CROWN's
  lower bound of y1 is -1 where IBP's is 0; soundness is checked separately);
  `compare_ibp` removes that cause. These fixed draws are ones where it holds.
  """
  net, xl, xu, C = random_problem(model, seed, eps, 0.7)
  results = all_bounds(model, net, xl, xu, C)
  s = {m: float(jnp.sum(r[0])) for m, r in results.items()}
  assert s["ibp"] <= s["crown_ibp"] <= s["crown"] <= s["alpha_crown"] + 1e-5, s


def patch_net():
  """Conv-BN-ReLU, avgpool, conv, and a block whose stride-2 conv and stride-2 shortcut meet at
  an add: every patches rule (window union included), on a 12x12x2 input."""
  layer = models.Layer
  return models.SpecNet(layers=(
      layer("conv", "c1", features=3, kernel=3, padding=1), layer("bn", "bn1"), layer("relu", "r1"),
      layer("avgpool", "pool", kernel=2),
      layer("conv", "c2", features=4, kernel=3, padding=1), layer("bn", "bn2"), layer("relu", "r2"),
      layer("conv", "c3", features=4, kernel=3, stride=2, padding=1), layer("bn", "bn3"),
      layer("conv", "sc", ("r2",), features=4, kernel=1, stride=2),
      layer("add", "add", ("bn3", "sc")), layer("relu", "r3"),
      layer("flatten", "flatten"), layer("dense", "fc", features=K)))


def test_patches_equal_matrices():
  """Patches (per-neuron windows) and full-map A-matrices are the same arithmetic: equal CROWN
  bounds (patches in padded chunks of 7 neurons), also under given random slopes shared per
  node; every intermediate target here is bounded by patches."""
  model, shape = patch_net(), (12, 12, 2)
  draw = jit(lambda key: random_variables(key, 0.8, model, shape))
  variables, masks = draw(jax.random.PRNGKey(3))
  net = bounds.from_model(model, variables, masks)
  x = jax.random.normal(jax.random.PRNGKey(4), (BATCH,) + shape)
  xl, xu, C = x - 0.1, x + 0.1, bounds.margin_matrix(jnp.array([2, 7]), K)
  shapes = node_shapes(net, xl)
  assert all(window_plan(net, r.inputs[0], shapes) for r in net.relu_nodes())
  patches = bound_fn("crown", (("chunk_size", 7),))(net, xl, xu, C)
  assert_trees_close(patches, bound_fn("crown", (("conv_mode", "matrix"),))(net, xl, xu, C),
                     rtol=1e-5, atol=1e-5)

  # Given slopes (random, one set per node and side) are read the same way by both.
  @functools.partial(jit, static_argnums=0)
  def with_alphas(mode):
    alphas = alpha_lib.init_alphas(net, patches[2], {}, shapes, BATCH, intermediate="shared")
    leaves, tree = jax.tree.flatten(alphas)
    alphas = jax.tree.unflatten(tree, [jax.random.uniform(jax.random.PRNGKey(i), v.shape)
                                       for i, v in enumerate(leaves)])
    return crown_core(net, xl, xu, conv_mode=mode, alphas=alphas, shared=True)

  assert_trees_close(with_alphas("patches"), with_alphas("matrix"), rtol=1e-5, atol=1e-5)


def hand_net():
  """x in [-1, 1]^2; h = (x1 + x2 + .5, x1 - x2 + .5); y = (z1 + z2, z1 - z2), z = relu(h)."""
  nodes = (Node(op="dense", name="fc1", inputs=(models.INPUT,), w=jnp.array([[1., 1.], [1., -1.]]),
                b=jnp.array([.5, .5])),
           Node(op="relu", name="relu1", inputs=("fc1",)),
           Node(op="dense", name="fc2", inputs=("relu1",), w=jnp.array([[1., 1.], [1., -1.]]),
                b=jnp.zeros(2)))
  return Net(nodes=nodes), -jnp.ones((1, 2)), jnp.ones((1, 2))


def test_hand_computed_example():
  """h1, h2 in [-1.5, 2.5]: unstable, u > -l so CROWN's lower slope is 1; the upper
  line has slope 2.5/4 = .625 and intercept 1.5*2.5/4 = .9375.
  IBP: z in [0, 2.5] -> y1 in [0, 5], y2 in [-2.5, 2.5].
  CROWN: y1 >= h1 + h2 = 2 x1 + 1 >= -1;  y1 <= .625 (h1 + h2) + 1.875 = 1.25 x1 + 2.5 <= 3.75;
         y2 >= h1 - (.625 h2 + .9375) = .375 x1 + 1.625 x2 - .75 >= -2.75;
         y2 <= .625 h1 + .9375 - h2 = -.375 x1 + 1.625 x2 + .75 <= 2.75.
  True ranges: y1 in [0, 3], y2 in [-2, 2].
  alpha-CROWN: y1 >= a1 h1 + a2 h2 is maximal (0) at a = 0; y2 >= a1 h1 - .625 h2 - .9375
  has minimum -2.5 + .5 a1 for a1 <= .625 and -1.25 - 1.5 a1 above: at most -2.1875.
  """
  net, xl, xu = hand_net()
  lo, hi, rb = bounds.ibp(net, xl, xu)
  np.testing.assert_array_equal(lo, [[0., -2.5]])
  np.testing.assert_array_equal(hi, [[5., 2.5]])
  np.testing.assert_array_equal(rb["relu1"][0], [[-1.5, -1.5]])
  np.testing.assert_array_equal(rb["relu1"][1], [[2.5, 2.5]])
  for method in ("crown", "crown_ibp"):
    lo, hi = bounds.compute_bounds(net, xl, xu, method=method)
    np.testing.assert_allclose(lo, [[-1., -2.75]], atol=1e-6)
    np.testing.assert_allclose(hi, [[3.75, 2.75]], atol=1e-6)
  lo, hi = bounds.compute_bounds(net, xl, xu, method="alpha_crown", iterations=20)
  np.testing.assert_allclose(lo[0, 0], 0., atol=1e-6)
  assert -2.75 < lo[0, 1] <= -2.1875 + 1e-6
  np.testing.assert_allclose(hi, [[3.75, 2.75]], atol=1e-6)  # only lower bounds are optimised


def mlp_weights(net):
  dense = [n for n in net.nodes if n.op == "dense"]
  return [np.asarray(n.w, np.float64) for n in dense], [np.asarray(n.b, np.float64) for n in dense]


def milp_min(ws, bs, pre, xl, xu, c):
  """Exact min of c . f(x) over the box: big-M ReLU encoding with valid pre-activation bounds.

  Variables: x, then per hidden layer h (pre-activation), z (post), d (binary phase):
  h = W^T z_prev + b, z >= h, z >= 0, z <= h - l (1 - d), z <= u d.
  """
  sizes = [len(xl)] + [w.shape[1] for w in ws[:-1]]
  n = sizes[0] + 3 * sum(sizes[1:])
  lb, ub, integ = np.zeros(n), np.zeros(n), np.zeros(n)
  lb[:sizes[0]], ub[:sizes[0]] = xl, xu
  rows, lo, hi = [], [], []

  def row(coefs, low, high):
    r = np.zeros(n)
    for idx, v in coefs:
      r[idx] += v
    rows.append(r), lo.append(low), hi.append(high)

  prev, off = np.arange(sizes[0]), sizes[0]
  for w, b, (l, u), m in zip(ws[:-1], bs[:-1], pre, sizes[1:]):
    h, z, d = (np.arange(off + i * m, off + (i + 1) * m) for i in range(3))
    off += 3 * m
    lb[h], ub[h], lb[z], ub[z], lb[d], ub[d], integ[d] = l, u, 0, np.maximum(u, 0), 0, 1, 1
    for j in range(m):
      row([(h[j], 1.)] + [(prev[i], -w[i, j]) for i in range(len(prev))], b[j], b[j])
      row([(z[j], 1.), (h[j], -1.)], 0., np.inf)
      row([(z[j], 1.), (h[j], -1.), (d[j], -l[j])], -np.inf, -l[j])
      row([(z[j], 1.), (d[j], -u[j])], -np.inf, 0.)
    prev = z
  cost = np.zeros(n)
  cost[prev] = ws[-1] @ c
  res = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integ,
             bounds=Bounds(lb, ub), options={"mip_rel_gap": 1e-10})
  assert res.success, res.message
  return res.fun + c @ bs[-1], res.x[:sizes[0]]


def exact_margin_minima(net, xl, xu, C, labels):
  """MILP minima of every margin row j != y, with IBP's ReLU bounds (widened by 1e-5) as big-M."""
  ws, bs = mlp_weights(net)
  rb = bounds.ibp(net, xl, xu)[2]
  out = {}
  f64 = lambda v: np.asarray(v, np.float64)
  for b in range(xl.shape[0]):
    pre = [(f64(rb[r.name][0][b]) - 1e-5, f64(rb[r.name][1][b]) + 1e-5) for r in net.relu_nodes()]
    for j in range(C.shape[1]):
      if j != labels[b]:
        out[b, j] = milp_min(ws, bs, pre, f64(xl[b]), f64(xu[b]), f64(C[b, j]))
  return out


@jit
def small_mlp_problem(seed, eps):
  """3 inputs, 2 hidden layers of 5, 3 classes; BATCH boxes and margin specs."""
  model = models.create("mlp_tiny", num_classes=3, hidden=5)
  variables, masks = random_variables(jax.random.PRNGKey(seed), 0.8, model, (3,))
  kx, ky = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 2000))
  x = jax.random.normal(kx, (BATCH, 3))
  labels = jax.random.randint(ky, (BATCH,), 0, 3)
  return (bounds.from_model(model, variables, masks), x - eps, x + eps,
          bounds.margin_matrix(labels, 3), labels)


SMALL_METHODS = {"ibp": (), "crown_ibp": (), "crown": (), "alpha_crown": (("iterations", 10),)}


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.sampled_from([0.1, 0.3, 1.0]))
def test_bounds_below_exact_milp_minimum(seed, eps):
  """3 inputs, 2 hidden layers of 5, 3 classes: exact margin minima by MILP (HiGHS).

  The MILP optimum is attained by its x* (checked by a forward pass), lies below
  the 10^4 sampled values, and above every method's bound.
  """
  net, xl, xu, C, labels = small_mlp_problem(seed, eps)
  labels = np.asarray(labels)
  results = {m: bound_fn(m, o)(net, xl, xu, C) for m, o in SMALL_METHODS.items()}
  ys, _ = sample_values(net, xl, xu, C, jax.random.PRNGKey(seed))
  for (b, j), (exact, x_star) in exact_margin_minima(net, xl, xu, C, labels).items():
    at_x = float(C[b, j] @ bounds.forward(net, jnp.asarray(x_star, jnp.float32)[None])[0])
    assert abs(at_x - exact) <= 1e-5 * (1 + abs(exact))
    assert exact <= float(ys[:, b, j].min()) + 1e-5
    for method, (lo, _, _) in results.items():
      assert float(lo[b, j]) <= exact + 1e-5 * (1 + abs(exact)), (method, float(lo[b, j]), exact)


def test_crown_is_exact_when_every_relu_is_stable():
  """In a box where no ReLU changes phase the net is affine and CROWN is exact (MILP = CROWN)."""
  net, xl, xu, C, labels = small_mlp_problem(7, 1e-3)
  labels = np.asarray(labels)
  lo, _, rb = bound_fn("crown")(net, xl, xu, C)
  assert all(not np.any((l < 0) & (u > 0)) for l, u in rb.values())
  alpha_lo = bound_fn("alpha_crown", SMALL_METHODS["alpha_crown"])(net, xl, xu, C)[0]
  for (b, j), (exact, _) in exact_margin_minima(net, xl, xu, C, labels).items():
    np.testing.assert_allclose(lo[b, j], exact, atol=1e-5)
    np.testing.assert_allclose(alpha_lo[b, j], exact, atol=1e-5)


@pytest.mark.parametrize("model,seed", [("cnn_tiny", 11), ("resnet_tiny", 12)])
def test_crown_is_exact_on_a_linear_region(model, seed):
  """Tiny box, all ReLUs stable: C f(x) is affine with Jacobian J, so its minimum is
  C f(c) - |C J| r exactly; checks every transpose (conv strides/padding, BN, add, avgpool,
  flatten, per-example folded spec)."""
  net, xl, xu, C = random_problem(model, seed, 1e-4, 0.8)
  lo, hi, rb = bound_fn("crown")(net, xl, xu, C)
  assert all(not np.any((l < 0) & (u > 0)) for l, u in rb.values())
  c, r = (xl + xu) / 2, (xu - xl) / 2

  @jit
  @jax.vmap
  def exact(c, r, C):
    f = lambda x: C @ bounds.forward(net, x[None])[0]
    radius = jnp.abs(jax.jacobian(f)(c)).reshape(C.shape[0], -1) @ r.ravel()
    return f(c) - radius, f(c) + radius

  exact_lo, exact_hi = exact(c, r, C)
  np.testing.assert_allclose(lo, exact_lo, atol=2e-6)
  np.testing.assert_allclose(hi, exact_hi, atol=2e-6)


def test_relu_bounds_option_and_branch_split():
  """Passing CROWN's own ReLU bounds reproduces it; splitting an unstable neuron (l = 0 / u = 0,
  as branch and bound does) gives bounds sound on each half of the box."""
  net, xl, xu, C = random_problem("mlp_tiny", 21, 0.2, 0.8)
  lo, hi, rb = bound_fn("crown")(net, xl, xu, C)
  given = jit(lambda rb: bounds.compute_bounds(net, xl, xu, C, method="crown", relu_bounds=rb))
  lo2, hi2 = given(rb)
  np.testing.assert_allclose(lo2, lo, atol=1e-6)
  np.testing.assert_allclose(hi2, hi, atol=1e-6)
  l1, u1 = rb["relu1"]
  b, j = np.argwhere(np.asarray((l1 < 0) & (u1 > 0)))[0]
  ys, vals = sample_values(net, xl, xu, C, jax.random.PRNGKey(0))
  h = vals["fc1"][:, b, j]
  # Only relu1 is given: relu2's bounds are recomputed from the split ones.
  split = jit(lambda rb1: (bounds.compute_bounds(net, xl, xu, C, method="crown", relu_bounds=rb1),
                           bounds.compute_bounds(net, xl, xu, C, method="alpha_crown", iterations=5,
                                                 intermediate="fixed", relu_bounds=rb1)))
  for active in (True, False):
    l, u = (l1.at[b, j].set(0.), u1) if active else (l1, u1.at[b, j].set(0.))
    side = (h >= 0) if active else (h <= 0)
    for lo_s, hi_s in split({"relu1": (l, u)}):
      assert np.all(ys[side, b].min(0) >= lo_s[b] - 1e-5)
      assert np.all(ys[side, b].max(0) <= hi_s[b] + 1e-5)


@pytest.mark.parametrize("model,seed,eps", [("mlp_tiny", 8, 0.1), ("cnn_tiny", 9, 0.05)])
def test_refine_unstable_bounds_only_unstable_neurons(model, seed, eps):
  """refine="unstable": the second ReLU layer (whose earlier bounds both modes share) gets
  CROWN's bounds intersected with the intervals on each example's interval-unstable neurons,
  and the intervals elsewhere, through chunks of 3 neurons of which some are skipped."""
  net, xl, xu, C = random_problem(model, seed, eps, 0.8)
  _, _, rb_all = bound_fn("crown", (("chunk_size", 3),))(net, xl, xu, C)
  lo, _, rb = bound_fn("crown", (("chunk_size", 3), ("refine", "unstable")))(net, xl, xu, C)
  first, second = [r.name for r in net.relu_nodes()][:2]
  np.testing.assert_allclose(rb[first][0], rb_all[first][0], atol=1e-5)
  il, iu = bounds.ibp(net, xl, xu, {first: rb[first]})[2][second]
  selected = np.asarray((il < 0) & (iu > 0))  # per example: examples are bounded one by one
  assert 0 < selected.mean() < 1  # both kinds of neurons occur
  close = lambda a, b: np.isclose(a, b, rtol=1e-5, atol=1e-5)
  skipped = 0
  for got, crown_b, interval, tighter in ((rb[second][0], rb_all[second][0], il, np.maximum),
                                          (rb[second][1], rb_all[second][1], iu, np.minimum)):
    refined = close(got, tighter(crown_b, interval))
    assert np.all(refined[selected])
    # Unselected neurons sharing a chunk with selected ones are refined too; the rest skipped.
    assert np.all(refined | close(got, interval))
    skipped += np.sum(~refined)
  assert skipped > 0


def test_chunks_do_not_change_bounds():
  """CROWN in chunks of 3 neurons (the last one padded) equals the one-chunk run."""
  net, xl, xu, C = random_problem("mlp_tiny", 31, 0.1, 0.8)
  chunked = bound_fn("crown", (("chunk_size", 3),))(net, xl, xu, C)
  assert_trees_close(chunked, bound_fn("crown")(net, xl, xu, C), atol=1e-5)


def test_lower_only_matches():
  """`bound_upper=False`: the same lower bounds, upper bounds +inf (vacuous but valid)."""
  net, xl, xu, C = random_problem("mlp_tiny", 33, 0.1, 0.8)
  for method, opts in (("crown_ibp", ()), ("crown", ())):
    both = bound_fn(method, opts)(net, xl, xu, C)
    lower_only = bound_fn(method, opts + (("bound_upper", False),))(net, xl, xu, C)
    np.testing.assert_allclose(lower_only[0], both[0], atol=1e-6)
    assert np.all(np.isposinf(lower_only[1]))


def test_alpha_crown_gradient():
  """alpha-CROWN (lower bounds only) is differentiable w.r.t. the network, the slopes held at
  their optimised values: finite after optimisation, and with no iterations it is CROWN's."""
  net, xl, xu, C = random_problem("mlp_tiny", 35, 0.1, 0.8)

  def total(net, method, **options):
    return jnp.sum(bounds.compute_bounds(net, xl, xu, C, method=method, **options)[0])

  @jit
  def grads(net):
    alpha = functools.partial(total, method="alpha_crown", bound_upper=False)
    return [jax.grad(total)(net, "crown"), jax.grad(alpha)(net, iterations=0),
            jax.grad(alpha)(net, iterations=3)]

  crown_g, alpha0_g, alpha_g = grads(net)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(alpha_g))
  assert_trees_close(alpha0_g, crown_g, rtol=1e-5, atol=1e-5)


def relu_relaxation_autodiff(a, l, u):
  """CROWN's ReLU relaxation written out, for JAX's autodiff (the reference of the custom VJP)."""
  ub, lb = jnp.maximum(u, 0.0), jnp.minimum(l, 0.0)
  den = ub - lb
  up_slope = ub / jnp.where(den > 0, den, 1.0)
  lo_slope = (u + l > 0).astype(a.dtype)
  pos, neg = jnp.maximum(a, 0.0), jnp.minimum(a, 0.0)
  return pos * lo_slope + neg * up_slope, jnp.sum(neg * (-lb * up_slope), axis=(2, 3, 4))


@pytest.mark.parametrize("specs", [1, 3])
def test_relu_relaxation_vjp_matches_autodiff(specs):
  """CROWN's relaxation (hand-written VJP) has the values and gradients of JAX's autodiff of
  the written-out relaxation, ties at 0 included (a, l, u exactly 0, l = u = 0), with bounds
  broadcast over the spec axis."""
  from jaxprune.bounds.crown import relu_transpose
  with jax.enable_x64(True):
    k = jax.random.split(jax.random.PRNGKey(2), 5)
    a = jax.random.normal(k[0], (2, specs, 4, 4, 3), jnp.float64).at[:, :, 0].set(0.0)
    l = jax.random.normal(k[1], (2, 1, 4, 4, 3), jnp.float64)
    u = l + jnp.abs(jax.random.normal(k[2], l.shape, jnp.float64))
    l, u = l.at[:, :, 1, 0].set(0.0), u.at[:, :, 1, 1].set(0.0).at[:, :, 1, 2].set(0.0)
    l = l.at[:, :, 1, 1].set(-1.0).at[:, :, 1, 2].set(0.0)
    g = (jax.random.normal(k[3], a.shape, jnp.float64),
         jax.random.normal(k[4], (2, specs), jnp.float64))
    for f_out, r_out in zip(relu_transpose(a, l, u), relu_relaxation_autodiff(a, l, u)):
      np.testing.assert_array_equal(f_out, r_out)
    grads = jax.vjp(relu_transpose, a, l, u)[1](g)
    for f_g, r_g in zip(grads, jax.vjp(relu_relaxation_autodiff, a, l, u)[1](g)):
      np.testing.assert_allclose(f_g, r_g, rtol=1e-12, atol=1e-12)
    assert all(np.any(v != 0) for v in grads)


def test_conv_transpose_gradient():
  """The custom VJP of the conv transpose (both cotangents as ordinary convs) against finite
  differences, on a strided padded conv in float64."""
  with jax.enable_x64(True):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (3, 4, 4, 5), jnp.float64)
    w = jax.random.normal(k2, (4, 4, 2, 5), jnp.float64)
    f = lambda a, w: conv_transpose(a, w, 2, 1, (8, 8, 2))
    check_grads(jax.jit(f), (a, w), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("hw,kernel,stride,padding", [(16, 4, 2, 1), (8, 4, 2, 1), (8, 3, 1, 1)])
def test_conv_transpose_fast_paths_match_lax(hw, kernel, stride, padding, monkeypatch):
  """Space-to-depth transposes and kernel-operand weight gradients equal XLA's own."""
  from jaxprune import ops, runtime
  monkeypatch.setenv("XLA_FLAGS", runtime.XLA_CPU_DEFAULTS)  # the fast paths, whatever XLA runs
  assert ops._fast_s2d((2, hw, hw, 3), jnp.zeros((kernel, kernel, 3, 5)), (stride,) * 2,
                       ((padding,) * 2,) * 2) == (hw == 16)  # the fast path is exercised
  with jax.enable_x64(True):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    out = (hw + 2 * padding - kernel) // stride + 1
    a = jax.random.normal(k1, (2, out, out, 5), jnp.float64)
    w = jax.random.normal(k2, (kernel, kernel, 3, 5), jnp.float64)
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride,) * 2, ((padding,) * 2,) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x_shape = jax.ShapeDtypeStruct((2, hw, hw, 3), jnp.float64)
    ref = lambda a, w: jax.linear_transpose(lambda x: conv(x, w), x_shape)(a)[0]
    f = lambda a, w: conv_transpose(a, w, stride, padding, (hw, hw, 3))
    np.testing.assert_allclose(jax.jit(f)(a, w), ref(a, w), rtol=1e-10, atol=1e-10)
    g = jax.random.normal(k1, (2, hw, hw, 3), jnp.float64)
    for got, want in zip(jax.vjp(f, a, w)[1](g), jax.vjp(ref, a, w)[1](g)):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    check_grads(jax.jit(f), (a, w), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("model,method", [("mlp_tiny", "crown_ibp"), ("cnn_tiny", "crown")])
def test_gradient_matches_finite_differences(model, method):
  """d/dparams (through BN folding and masks) of the summed margin lower bounds, along a random
  direction, against central differences in float64 (a step too small for any ReLU or slope
  to switch phase): CROWN-IBP on the MLP; CROWN on the conv net, whose intermediate bounds use
  patches (conv targets) and matrices (the dense target) and whose output pass is CROWN-IBP's."""
  shape = INPUT_SHAPES[model]
  net_model, variables, masks = random_model(model, 41, 0.8, shape)

  def loss(params, variables, masks, x, C):
    net = bounds.from_model(net_model, {**variables, "params": params}, masks)
    return jnp.sum(bounds.compute_bounds(net, x - 0.1, x + 0.1, C, method=method)[0])

  @jit
  def check(variables, masks):
    """(gradient, its directional derivative, the central difference) in one compiled call."""
    to64 = lambda t: jax.tree.map(lambda v: v.astype(jnp.float64), t)
    params, variables, masks = to64(variables["params"]), to64(variables), to64(masks)
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH,) + shape, jnp.float64)
    C = bounds.margin_matrix(jnp.array([0, 1]), K).astype(jnp.float64)
    leaves, tree = jax.tree.flatten(params)
    direction = jax.tree.unflatten(tree, [jax.random.normal(jax.random.PRNGKey(i), v.shape, v.dtype)
                                          for i, v in enumerate(leaves)])
    at = lambda s: loss(jax.tree.map(lambda p, d: p + s * d, params, direction), variables, masks,
                        x, C)
    grad = jax.grad(loss)(params, variables, masks, x, C)
    analytic = tree_vdot(grad, direction)
    step = 1e-6
    return grad, analytic, (at(step) - at(-step)) / (2 * step)

  with jax.enable_x64(True):
    grad, analytic, fd = check(variables, masks)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
  np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-7)


def tail_net(tail):
  """A net whose last node is not dense, as ONNX imports produce, and its input shape:
  dense-relu-dense-relu ("relu"), or conv-relu-avgpool-flatten ("flatten")."""
  k = jax.random.split(jax.random.PRNGKey(41), 4)
  if tail == "relu":
    nodes = (Node(op="dense", name="fc1", inputs=(models.INPUT,),
                  w=jax.random.normal(k[0], (6, 8)) / 2, b=0.3 * jax.random.normal(k[1], (8,))),
             Node(op="relu", name="r1", inputs=("fc1",)),
             Node(op="dense", name="fc2", inputs=("r1",),
                  w=jax.random.normal(k[2], (8, 5)) / 2, b=0.3 * jax.random.normal(k[3], (5,))),
             Node(op="relu", name="r2", inputs=("fc2",)))
    return Net(nodes=nodes), (6,)
  nodes = (Node(op="conv", name="c1", inputs=(models.INPUT,), padding=1, kernel=3,
                w=jax.random.normal(k[0], (3, 3, 2, 3)) / 3, b=0.3 * jax.random.normal(k[1], (3,))),
           Node(op="relu", name="r1", inputs=("c1",)),
           Node(op="avgpool", name="pool", inputs=("r1",), kernel=2),
           Node(op="flatten", name="flatten", inputs=("pool",)))
  return Net(nodes=nodes), (8, 8, 2)


@pytest.mark.parametrize("tail", ["relu", "flatten"])
def test_fold_spec_on_a_net_not_ending_in_dense(tail):
  """fold_spec appends a bias-free dense node holding C: the folded net computes C f(x); on a
  point box every method bounds it exactly, on a wider box its bounds contain C f(x) at 10^4
  sampled points."""
  net, shape = tail_net(tail)
  x = jax.random.normal(jax.random.PRNGKey(42), (BATCH,) + shape)
  f = bounds.forward(net, x)
  C = jax.random.normal(jax.random.PRNGKey(43), (BATCH, 3, f.shape[-1]))
  folded = bounds.fold_spec(net, C)
  assert [n.name for n in folded.nodes] == [n.name for n in net.nodes] + ["spec"]
  spec = folded.node("spec")
  assert spec.op == "dense" and spec.inputs == (net.output,) and spec.b is None
  want = jnp.einsum("bsk,bk->bs", C, f)
  assert np.all(np.abs(want) > 1e-3)  # a nontrivial spec value to match
  np.testing.assert_allclose(bounds.forward(folded, x), want, rtol=1e-5, atol=1e-5)

  xl, xu = x - 0.3, x + 0.3
  ys, _ = sample_values(net, xl, xu, C, jax.random.PRNGKey(44))
  tol = 1e-5 * (1 + float(jnp.abs(ys).max()))
  for method in ("ibp", "crown_ibp", "crown"):
    lo, hi, _ = bound_fn(method)(folded, x, x, None)
    np.testing.assert_allclose(lo, want, rtol=1e-5, atol=1e-5, err_msg=method)
    np.testing.assert_allclose(hi, want, rtol=1e-5, atol=1e-5, err_msg=method)
    lo, hi, _ = bound_fn(method)(folded, xl, xu, None)
    assert np.all(np.asarray(lo) <= ys.min(0) + tol), (method, float((lo - ys.min(0)).max()))
    assert np.all(np.asarray(hi) >= ys.max(0) - tol), (method, float((ys.max(0) - hi).max()))
