"""Complete verification: BaB against an exact MILP, beta-CROWN soundness, PGD, compile counts,
FSB against brute force, memory caps, and 2-device sharding (a subprocess).

The random networks share one architecture per family (only weights differ,
passed as arguments), so the hundreds of instances reuse a few compiled programs.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.bounds import Net, Node, attack, forward
from jaxprune.bounds import beta as beta_lib
from jaxprune.bounds.crown import crown, crown_core
from jaxprune.bounds.ir import fold_spec
from jaxprune.interop import vnnlib
from jaxprune.models.spec import INPUT
from jaxprune.verify import bab, boxes, milp, stack_disjuncts, verify

K = 3
# Jitted once per shape: eager dispatch of the bound passes would dominate the test time.
beta_bound = jax.jit(beta_lib.beta_bound)
beta_crown = jax.jit(beta_lib.beta_crown, static_argnames=("iterations",))
crown_j = jax.jit(crown)
crown_core_j = jax.jit(crown_core, static_argnames=("bound_upper",))
forward_j = jax.jit(forward, static_argnames=("return_all",))


def _kernel(rng, shape, fan_in, scale=1.0, keep=0.8):
  """Random weights with a fraction 1 - keep masked (pruned)."""
  w = rng.normal(size=shape) * scale / math.sqrt(fan_in) * (rng.uniform(size=shape) < keep)
  return jnp.asarray(w, jnp.float32)


def _bias(rng, n):
  return jnp.asarray(0.3 * rng.normal(size=n), jnp.float32)


def _dense(name, inp, rng, n_in, n_out, keep=0.8, scale=1.0):
  return Node(op="dense", name=name, inputs=(inp,),
              w=_kernel(rng, (n_in, n_out), n_in, scale, keep), b=_bias(rng, n_out))


def _affine(name, inp, rng, n):
  """A folded BatchNorm: per-channel scales of both signs."""
  return Node(op="affine", name=name, inputs=(inp,),
              w=jnp.asarray(rng.normal(size=n), jnp.float32), b=_bias(rng, n))


def mlp(rng):
  """4-8-8-3 with a BN-like affine and masked weights."""
  return Net(nodes=(_dense("d1", "input", rng, 4, 8, scale=6.0), _affine("bn", "d1", rng, 8),
                    Node(op="relu", name="r1", inputs=("bn",)), _dense("d2", "r1", rng, 8, 8),
                    Node(op="relu", name="r2", inputs=("d2",)), _dense("d3", "r2", rng, 8, K)))


def residual(rng):
  """4-6-6-3 where the second pre-activation adds the first (fan-out at d1)."""
  return Net(nodes=(_dense("d1", "input", rng, 4, 6, scale=6.0),
                    Node(op="relu", name="r1", inputs=("d1",)),
                    _dense("d2", "r1", rng, 6, 6), Node(op="add", name="s", inputs=("d2", "d1")),
                    Node(op="relu", name="r2", inputs=("s",)), _dense("d3", "r2", rng, 6, K)))


def conv(rng):
  """(3, 3, 1) -> conv 2x2 (2 ch) -> BN -> relu -> conv 2x2 stride 1 (2 ch) -> relu -> dense 3."""
  def c(name, inp, cin, cout):
    w = _kernel(rng, (2, 2, cin, cout), 4 * cin, 6.0 if inp == "input" else 1.0)
    return Node(op="conv", name=name, inputs=(inp,), stride=1, padding=0, kernel=2, w=w,
                b=_bias(rng, cout))
  return Net(nodes=(c("c1", "input", 1, 2), _affine("bn", "c1", rng, 2),
                    Node(op="relu", name="r1", inputs=("bn",)), c("c2", "r1", 2, 2),
                    Node(op="relu", name="r2", inputs=("c2",)),
                    Node(op="flatten", name="f", inputs=("r2",)), _dense("d", "f", rng, 2, K)))


FAMILIES = {"mlp": (mlp, (4,)), "residual": (residual, (4,)), "conv": (conv, (3, 3, 1))}


def milp_min(net, x, y, eps):
  lo, hi = boxes.normalised_box(x[0], eps)
  C = np.eye(K)[y] - np.eye(K)
  return min(milp.minimum(net, lo, hi, C[j]).value for j in range(K) if j != y)


def instance(family, seed, near=True):
  """A random net, input, label and eps; `near`: eps around PGD's robust radius (the hard case)."""
  make, shape = FAMILIES[family]
  rng = np.random.default_rng(seed)
  net = make(rng)
  x = rng.uniform(0.1, 0.9, size=(1,) + shape).astype(np.float32)
  y = int(np.argmax(np.asarray(forward(net, jnp.asarray(x)))[0]))
  if not near:
    return net, x, y, float(rng.uniform(0.02, 0.35))
  lo, hi = 0.0, 0.5
  for _ in range(7):  # bisection on PGD's success: an upper estimate of the radius
    mid = (lo + hi) / 2
    p_lo, p_hi = (jnp.asarray(v) for v in boxes.round32(*boxes.pixel_box(x[0], mid), outward=False))
    found = float(attack.pgd(net, p_lo, p_hi, y, 0.0, 1.0, jax.random.PRNGKey(seed))[1]) < 0
    lo, hi = (lo, mid) if found else (mid, hi)
  return net, x, y, float(max(hi, 0.005) * rng.uniform(0.6, 1.15))


def assert_counterexample(net, x, y, eps, cex):
  lo, hi = boxes.pixel_box(x[0], eps)
  assert np.all(cex >= lo) and np.all(cex <= hi)
  logits = np.asarray(forward(net, jnp.asarray(cex[None])))[0]
  assert np.min(np.delete(logits[y] - logits, y)) < 0


@pytest.mark.parametrize("family,count", [("mlp", 100), ("residual", 50), ("conv", 60)])
def test_bab_agrees_with_milp(family, count):
  """No attack (restarts=0): the search alone must decide every instance, as the MILP does."""
  stats = {"verified": 0, "falsified": 0, "branched": 0}
  for seed in range(count):
    net, x, y, eps = instance(family, seed)
    r = verify(net, x, [y], eps=eps, restarts=0, timeout=60.0, batch=4)[0]
    m = milp_min(net, x, y, eps)
    if abs(m) < 1e-4:  # within float32's reach of 0: "unknown" is a correct answer
      stats["ties"] = stats.get("ties", 0) + 1
      assert r.status != "verified" or m > 0, (seed, m, r)
      continue
    assert r.status in ("verified", "falsified"), (seed, r)
    if r.status == "verified":
      assert m > 0 and r.lower_bound <= m + 1e-4, (seed, m, r)
    else:
      assert m < 1e-5, (seed, m, r)
      assert_counterexample(net, x, y, eps, r.counterexample)
    stats[r.status] += 1
    stats["branched"] += r.domains > 1
  # Both outcomes occur and the search does branch on some instances.
  assert stats.get("ties", 0) <= count // 10, stats
  assert stats["verified"] > 0 and stats["falsified"] > 0 and stats["branched"] > 0, stats


def _split_setup(seed, n_dom=6):
  net, x, y, eps = instance("mlp", seed)
  lo, hi = (jnp.asarray(v[None]) for v in boxes.normalised_box(x[0], max(eps, 0.2)))
  rb = crown_j(net, lo, hi)[2]
  rng = np.random.default_rng(seed + 1000)
  splits = {r: jnp.asarray(rng.integers(-1, 2, size=(n_dom,) + l.shape[1:])
                           * ((l < 0) & (u > 0)), jnp.float32) for r, (l, u) in rb.items()}
  return net, lo, hi, rb, splits, rng


@pytest.mark.parametrize("seed", range(4))
def test_beta_bound_sound(seed):
  """Sampled points of each split region never fall below the bound, for random alpha and beta."""
  net, lo, hi, rb, splits, rng = _split_setup(seed)
  d = next(iter(splits.values())).shape[0]
  draw = lambda f: {r: jnp.asarray(f(size=(d, K) + l.shape[1:]), jnp.float32)
                    for r, (l, _) in rb.items()}
  al, be = draw(rng.uniform), draw(rng.exponential)
  lb, aux = beta_bound(net, lo, hi, rb, splits, al, be)
  xs = jnp.asarray(rng.uniform(lo[0], hi[0], size=(20000,) + lo.shape[1:]), jnp.float32)
  vals = forward_j(net, xs, return_all=True)
  pre = {r.name: vals[r.inputs[0]] for r in net.relu_nodes()}
  for i in range(d):
    inside = np.ones(len(xs), bool)
    for r, s in splits.items():
      s = np.asarray(s[i])
      inside &= np.all((s == 0) | (s * np.asarray(pre[r]) >= 0), axis=1)
    assert not bool(aux["infeasible"][i])
    if inside.any():
      assert np.all(np.asarray(lb[i]) <= np.asarray(vals[net.output])[inside].min(0) + 1e-5)
  # Optimising alpha and beta only tightens (every evaluated bound is sound).
  opt = beta_crown(net, lo, hi, rb, splits, al, be, iterations=5)[0]
  assert np.all(np.asarray(opt) >= np.asarray(lb) - 1e-6)


def test_beta_zero_is_crown():
  """With beta = 0 the bound is CROWN's (alpha-CROWN's with given slopes) with the clamped bounds."""
  for seed in range(3):
    net, lo, hi, rb, splits, rng = _split_setup(seed, n_dom=3)
    zero = {r: jnp.zeros((3, K) + l.shape[1:]) for r, (l, _) in rb.items()}
    slopes = {r: jnp.asarray(rng.uniform(size=(3, K) + l.shape[1:]), jnp.float32)
              for r, (l, _) in rb.items()}
    for al in (None, slopes):
      lb, aux = beta_bound(net, lo, hi, rb, splits, al, zero)
      for i in range(3):
        given = {r: (l[i:i + 1], u[i:i + 1]) for r, (l, u) in aux["bounds"].items()}
        out_al = None if al is None else {net.output: {r: v[i:i + 1] for r, v in al.items()}}
        ref = crown_core_j(net, lo, hi, given, bound_upper=False, alphas=out_al)[0][0]
        # Equal up to the batch size's summation order.
        np.testing.assert_allclose(np.asarray(lb[i]), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_infeasible_split():
  """Splitting a stable neuron against its phase empties the domain: bound +inf."""
  net, lo, hi, rb, _, _ = _split_setup(0, n_dom=1)
  name, (l, u) = next((r, b) for r, b in rb.items() if np.any(np.asarray(b[0]) > 0))
  s = np.zeros((1,) + l.shape[1:], np.float32)
  s[0, np.flatnonzero(np.asarray(l[0]) > 0)[0]] = -1.0  # inactive although l > 0
  lb, aux = beta_bound(net, lo, hi, rb, {name: jnp.asarray(s)})
  assert bool(aux["infeasible"][0]) and np.all(np.isinf(np.asarray(lb)))


def test_no_recompilation_across_steps_and_instances():
  """After the first instance that branches, no jitted function of the pipeline compiles again."""
  from jaxprune.verify import margin_bounds
  fns = (bab.bound_domains, attack.check_spec, attack.pgd_spec, margin_bounds)
  sizes, branched = [], []
  for seed in range(12):
    net, x, y, eps = instance("mlp", seed)
    r = verify(net, x, [y], eps=eps, restarts=0 if seed % 2 else 16, batch=4)[0]
    branched.append(r.domains > 1)
    sizes.append(tuple(f._cache_size() for f in fns))
  first = branched.index(True)
  assert any(branched[first + 1:]) and len(set(sizes[first:])) == 1, (branched, sizes)


def test_coeff_hook_identity():
  """An identity hook changes nothing; a hook sees the coefficients of every node."""
  from jaxprune.bounds.crown import backward_bound, node_shapes
  net, lo, hi, rb, _, _ = _split_setup(0)
  shapes = node_shapes(net, lo)
  a = jnp.eye(K)[None]
  seen = []
  hook = lambda name, v: (seen.append(name), v)[1]
  ref = backward_bound(net, net.output, a, lo, hi, rb, shapes)
  out = backward_bound(net, net.output, a, lo, hi, rb, shapes, coeff_hook=hook)
  np.testing.assert_array_equal(np.asarray(ref), np.asarray(out))
  assert seen == [n.name for n in reversed(net.nodes)] + [INPUT]


def _hard():
  """4-32-32-3 (seed found by search) whose BaB at eps 0.448 takes thousands of domains."""
  rng = np.random.default_rng(2)
  net = Net(nodes=(_dense("d1", "input", rng, 4, 32, keep=1.0, scale=6.0),
                   Node(op="relu", name="r1", inputs=("d1",)),
                   _dense("d2", "r1", rng, 32, 32, keep=1.0),
                   Node(op="relu", name="r2", inputs=("d2",)),
                   _dense("d3", "r2", rng, 32, K, keep=1.0)))
  x = rng.uniform(0.3, 0.7, size=(1, 4)).astype(np.float32)
  y = int(np.argmax(np.asarray(forward(net, jnp.asarray(x)))[0]))
  return net, x, y, 0.448


def test_timeout_honoured():
  net, x, y, eps = _hard()
  verify(net, x, [y], eps=eps, restarts=0, batch=4)  # compiles
  full = verify(net, x, [y], eps=eps, restarts=0, batch=4)[0]
  assert full.status == "verified" and full.domains > 500  # (the MILP agrees: min 0.136)
  r = verify(net, x, [y], eps=eps, restarts=0, batch=4, timeout=full.seconds / 5)[0]
  assert r.status == "timeout" and 1 < r.domains < full.domains
  assert r.seconds < full.seconds / 5 + 0.1
  assert verify(net, x, [y], eps=eps, restarts=0, batch=4, max_domains=50)[0].status == "unknown"


def test_pgd_and_check():
  for seed in range(20):
    net, x, y, eps = instance("mlp", seed)
    if milp_min(net, x, y, eps) < -0.05:
      break
  lo, hi = (jnp.asarray(v) for v in boxes.round32(*boxes.pixel_box(x[0], eps), outward=False))
  C, d = (jnp.asarray(v, jnp.float32)
          for v in stack_disjuncts(vnnlib.robustness_disjuncts(y, K), K))
  check = lambda x: bool(attack.check_spec(net, x, lo, hi, C, d, 0.0, 1.0)[0])
  xa, value = attack.pgd_spec(net, lo, hi, C, d, 0.0, 1.0, jax.random.PRNGKey(0))
  xm, margin = attack.pgd(net, lo, hi, y, 0.0, 1.0, jax.random.PRNGKey(0))
  assert float(value) == float(margin) < 0 and check(xa[None])  # the same objective
  r = verify(net, x, [y], eps=eps)[0]
  assert r.status == "falsified" and r.domains == 0
  assert_counterexample(net, x, y, eps, r.counterexample)
  # A violating point outside the box is no counterexample.
  assert not check(xa[None] + 2 * eps)


def test_boxes_round_outward_and_inward():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(50, 3)).astype(np.float32)
  mean, std = np.array([0.49, 0.48, 0.45]), np.array([0.247, 0.243, 0.261])
  lo, hi = boxes.normalised_box(x, 2 / 255, mean, std)
  p_lo, p_hi = boxes.pixel_box(x, 2 / 255)
  assert np.all(lo.astype(np.float64) <= (p_lo - mean) / std)
  assert np.all(hi.astype(np.float64) >= (p_hi - mean) / std)
  i_lo, i_hi = boxes.round32(p_lo, p_hi, outward=False)
  assert np.all(i_lo >= p_lo) and np.all(i_hi <= p_hi) and np.all(i_lo <= i_hi)


def test_milp_is_exact_on_samples():
  for seed in range(5):
    net, x, y, eps = instance("conv", seed)
    lo, hi = boxes.normalised_box(x[0], eps)
    c = np.eye(K)[y] - np.eye(K)[(y + 1) % K]
    sol = milp.minimum(net, lo, hi, c)
    at = float(np.asarray(forward(net, jnp.asarray(sol.x.reshape(lo.shape)[None], jnp.float32)))[0] @ c)
    assert abs(at - sol.value) < 1e-4
    xs = np.random.default_rng(seed).uniform(lo, hi, size=(5000,) + lo.shape).astype(np.float32)
    assert sol.value <= (np.asarray(forward(net, jnp.asarray(xs))) @ c).min() + 1e-5


def test_incomplete_methods_and_misclassified():
  for seed in range(10):
    net, x, y, eps = instance("mlp", seed)
    m = milp_min(net, x, y, eps)
    for method in ("ibp", "crown", "alpha"):
      r = verify(net, x, [y], eps=eps, method=method)[0]
      assert r.status in ("verified", "unknown")
      assert r.status == "unknown" or m > 0
  r = verify(net, x, [(y + 1) % K], eps=eps)[0]
  assert r.status == "misclassified"
  with pytest.raises(ValueError, match="unknown verification method"):
    verify(net, x, [y], eps=eps, method="nope")
  with pytest.raises(ValueError, match="unknown branching heuristic"):
    verify(net, x, [y], eps=eps, branching="nope")


def test_random_branching_agrees():
  for seed in range(15):
    net, x, y, eps = instance("residual", seed)
    r = verify(net, x, [y], eps=eps, restarts=0, branching="random", batch=4)[0]
    m = milp_min(net, x, y, eps)
    assert (r.status == "verified" and m > 0) or (r.status == "falsified" and m < 1e-5), (seed, r, m)


def test_from_model_with_normalisation():
  """A registered model through `bounds.from_model`: pixel-space inputs, per-channel mean/std."""
  from jaxprune import bounds, models
  model = models.create("mlp_tiny", num_classes=K, hidden=8)
  x = np.random.default_rng(0).uniform(size=(6, 2, 2, 1)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x))
  variables = jax.tree.map(lambda v: 3 * v, variables)
  net = bounds.from_model(model, variables)
  mean, std = np.float32(0.4), np.float32(0.3)
  logits = np.asarray(model.apply(variables, (jnp.asarray(x) - mean) / std))
  y = logits.argmax(1)
  y[0] = (y[0] + 1) % K
  results = verify(net, x, y, eps=0.05, mean=mean, std=std, restarts=0)
  assert len(results) == len(x) and results[0].status == "misclassified"
  for i, r in enumerate(results[1:], 1):
    lo, hi = boxes.normalised_box(x[i], 0.05, mean, std)
    C = np.eye(K)[y[i]] - np.eye(K)
    m = min(milp.minimum(net, lo, hi, C[j]).value for j in range(K) if j != y[i])
    assert (r.status == "verified" and m > 0) or (r.status == "falsified" and m < 1e-5), (i, r, m)
    if r.status == "falsified":
      p_lo, p_hi = boxes.pixel_box(x[i], 0.05)
      assert np.all(r.counterexample >= p_lo) and np.all(r.counterexample <= p_hi)
      out = np.asarray(model.apply(variables, (jnp.asarray(r.counterexample[None]) - mean) / std))[0]
      assert out.argmax() != y[i] or np.min(np.delete(out[y[i]] - out, y[i])) < 0


def test_conv_model_runs():
  """cnn_tiny (conv, BN, strided conv, dense) end to end under a short timeout."""
  from jaxprune import bounds, models
  model = models.create("cnn_tiny", num_classes=K)
  x = np.random.default_rng(1).uniform(size=(1, 8, 8, 2)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(1), jnp.asarray(x))
  net = bounds.from_model(model, variables)
  y = int(np.asarray(model.apply(variables, jnp.asarray(x))).argmax())
  # At this eps (found by search) alpha-CROWN alone fails and BaB verifies within a few domains.
  r = verify(net, x, [y], eps=0.0033, timeout=10.0, restarts=0, batch=4)[0]
  assert r.status in ("verified", "falsified", "timeout"), r
  if r.status == "falsified":
    assert_counterexample(net, x, y, 0.0033, r.counterexample)


def test_unknown_option():
  net, x, y, eps = instance("mlp", 0, near=False)
  with pytest.raises(ValueError, match="unknown verify options"):
    verify(net, x, [y], eps=eps, batch_size=3)


def test_fsb_agrees():
  """FSB (and BaBSR, above) decide as the MILP does."""
  for seed in range(12):
    net, x, y, eps = instance("mlp", seed)
    r = verify(net, x, [y], eps=eps, restarts=0, branching="fsb", batch=4)[0]
    m = milp_min(net, x, y, eps)
    if abs(m) >= 1e-4:
      decided = (r.status == "verified" and m > 0) or (r.status == "falsified" and m < 1e-5)
      assert decided, (seed, r, m)


class _FSBAll(bab.FSB):
  k = 64  # every neuron of the tiny nets: FSB becomes exhaustive


def test_fsb_choice_brute_force():
  """FSB picks the best of its candidates by the worse child's bound, checked neuron by neuron.

  With k covering every neuron it must pick the brute-force best; with the
  default k, a neuron no worse than BaBSR's choice (its top candidate).
  """
  ranks = []
  for seed in range(4):
    net, lo, hi, rb, splits, _ = _split_setup(seed, n_dom=2)
    layout = bab.Layout.of(net, lo.shape[1:])
    net1 = fold_spec(net, jnp.eye(K)[:1] - jnp.eye(K)[1:2])
    flat_sp = np.asarray(layout.flatten(splits)).astype(bab.SPLIT_DTYPE)
    flat_sp[0] = 0  # the root, and a random split domain
    splits = layout.unflatten(jnp.asarray(flat_sp, jnp.float32))
    alpha0 = np.repeat(bab.initial_slopes(layout, rb), 2, 0)
    args = (net1, lo, hi, rb, flat_sp, alpha0, np.zeros_like(alpha0), jax.random.PRNGKey(0))
    picks = {h: bab.bound_domains(*args, layout=layout, heuristic=h)
             for h in (bab.BaBSR, bab.FSB, _FSBAll)}
    _, al, be, _, _ = picks[bab.FSB]
    per_spec = lambda v: {r: w[:, None]
                          for r, w in layout.unflatten(jnp.asarray(v, jnp.float32)).items()}
    twice = lambda v, i: per_spec(np.repeat(v[i:i + 1], 2, 0))
    clamped = beta_lib.clamp_bounds(rb, splits)
    unstable = np.asarray(layout.flatten({r: (l < 0) & (u > 0) for r, (l, u) in clamped.items()}))
    for i in range(2):
      value = {}
      for j in np.flatnonzero(unstable[i] & (flat_sp[i] == 0)):
        sp = np.repeat(flat_sp[i:i + 1], 2, 0).astype(np.float32)
        sp[:, j] = (1, -1)
        lb, _ = beta_bound(net1, lo, hi, rb, layout.unflatten(jnp.asarray(sp)),
                           twice(al, i), twice(be, i))
        value[j] = float(np.min(np.asarray(lb)))
      chosen = {h: int(p[3][i]) for h, p in picks.items()}
      if not value:  # nothing left to split: a leaf for every heuristic
        assert set(chosen.values()) == {-1}, chosen
        continue
      best = max(value.values())
      assert all(c >= 0 for c in chosen.values()), chosen
      assert value[chosen[_FSBAll]] >= best - 1e-5, (seed, i, value, chosen)
      assert value[chosen[bab.FSB]] >= value[chosen[bab.BaBSR]] - 1e-5, (seed, i, chosen)
      ranks.append(sorted(value.values(), reverse=True).index(value[chosen[bab.FSB]]))
  assert np.median(ranks) <= 2, ranks


SHARDED = """
import json, sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from test_verify import _hard, instance
from jaxprune.verify import bab, verify
assert jax.local_device_count() == 2
assert bab._placement(8)(np.zeros((8, 3))).sharding.num_devices == 2
out = []
for make in (_hard, lambda: instance("mlp", 1)):
  net, x, y, eps = make()
  rs = [verify(net, x, [y], eps=eps, restarts=0, batch=4, shard=s, max_domains=300)[0]
        for s in (True, False)]
  out.append([(r.status, r.domains, r.lower_bound) for r in rs])
print(json.dumps(out))
"""


def test_sharded_matches_one_device():
  """Domain batches sharded over 2 (fake CPU) devices give the verdicts and bounds of one."""
  import json
  import os
  import subprocess
  import sys
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  code = SHARDED.format(tests=os.path.dirname(__file__))
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(proc.stdout.strip().splitlines()[-1])
  assert any(a[1] > 1 for a, _ in rows), rows
  for sharded, single in rows:
    assert sharded[:2] == single[:2], rows
    np.testing.assert_allclose(sharded[2], single[2], rtol=1e-4, atol=1e-6)


def test_memory_caps():
  """Past their caps, alpha-CROWN refuses before allocating and BaB leaves LPs undecided."""
  from jaxprune.bounds.alpha import AlphaMemoryError, alpha_crown
  net, lo, hi, _, _, _ = _split_setup(0)
  with pytest.raises(AlphaMemoryError, match="intermediate='full'"):
    jax.eval_shape(lambda l, u: alpha_crown(net, l, u, intermediate="full", max_bytes=1), lo, hi)
  statuses = []
  for seed in range(4):  # seed 0 reaches a leaf's LP (found by search)
    net, x, y, eps = instance("conv", seed)
    full, capped = (verify(net, x, [y], eps=eps, restarts=0, batch=4, max_leaf_elements=cap)[0]
                    for cap in (bab.LEAF_ELEMENTS, 0))
    assert capped.status in (full.status, "unknown"), (seed, full, capped)
    statuses.append((full.status, capped.status))
  assert statuses[0] == ("falsified", "unknown"), statuses
