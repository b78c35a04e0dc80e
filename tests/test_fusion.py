"""CROWN-IBP training: the fused cross-entropy bound, the loss, and its gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import jax.flatten_util
import optax
import pytest

from jaxprune import bounds, models
from jaxprune.bounds.fusion import chord, fused_ce_bound
from jaxprune.train import losses
from trees import assert_trees_close, tree_vdot


def setup(name="cnn_tiny", batch=4, seed=0):
  model = models.create(name)
  v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, 8, 8, 1))
  y = jnp.arange(batch) % 10
  return model, v, x, y


def test_chord_lies_above_exp():
  lo = jnp.array([-3.0, -1.0, 0.5, 2.0, 1.0])
  up = jnp.array([-1.0, 2.0, 0.5, 2.0 + 1e-8, 4.0])
  slope, icpt = chord(lo, up)
  t = jnp.linspace(0, 1, 101)[:, None]
  m = lo + t * (up - lo)
  assert jnp.all(slope * m + icpt >= jnp.exp(m) * (1 - 1e-6))


@pytest.mark.parametrize("name", ["cnn_tiny", "mlp_tiny"])
@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_fused_bound_upper_bounds_sampled_cross_entropy(name, weight):
  model, v, x, y = setup(name)
  net = bounds.from_model(model, v)
  eps = 0.03
  xl, xu = x - eps, x + eps
  bound, lower, _ = jax.jit(fused_ce_bound, static_argnums=4)(net, xl, xu, y, 10, weight)
  keys = jax.random.split(jax.random.PRNGKey(7), 5)
  worst = jnp.full(x.shape[0], -jnp.inf)
  for k in keys:  # 5 x 2000 uniform samples + corners of the box
    u = jax.random.uniform(k, (2000,) + x.shape)
    u = u.at[:100].set(jnp.round(u[:100]))
    xs = xl[None] + (xu - xl)[None] * u
    ce = jax.vmap(lambda z: optax.softmax_cross_entropy_with_integer_labels(
        bounds.forward(net, z), y))(xs)
    worst = jnp.maximum(worst, ce.max(0))
  assert jnp.all(bound >= worst - 1e-5)
  if weight == 0.0:  # pure IBP: exactly the CE of the IBP worst-case logits
    np.testing.assert_allclose(bound, optax.softmax_cross_entropy_with_integer_labels(-lower, y),
                               rtol=1e-5, atol=1e-5)


def ctx_for(model, nrs=0.01, fusion=True):
  return losses.Context(model=model, mean=(0.0,), std=(1.0,), num_classes=10, eps_max=0.05,
                        nrs_weight=nrs, bound_method="crown_ibp", loss_fusion=fusion)


@pytest.mark.parametrize("fusion", [True, False])
def test_crown_ibp_loss_is_an_upper_bound_of_clean_loss_and_finite(fusion):
  model, v, x, y = setup()
  ctx = ctx_for(model, nrs=0.0, fusion=fusion)
  masks = models.init_masks(v["params"], model.layers)
  loss, (stats, metrics) = jax.jit(losses.crown_ibp_loss, static_argnums=0)(
      ctx, v["params"], v["batch_stats"], masks, (x, y), 0.02, 0.0, jax.random.PRNGKey(0))
  assert np.isfinite(float(loss))
  assert metrics["robust_ce"] >= metrics["clean_ce"] - 1e-5


def test_gradient_of_crown_ibp_nrs_loss_matches_finite_differences():
  jax.config.update("jax_enable_x64", True)
  try:
    model, v, x, y = setup(batch=3, seed=3)
    to64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
    params, stats, x = to64(v["params"]), to64(v["batch_stats"]), x.astype(jnp.float64)
    ctx = ctx_for(model, nrs=0.5)
    masks = to64(models.init_masks(params, model.layers))

    def f(p):
      return losses.crown_ibp_loss(ctx, p, stats, masks, (x, y), 0.02, 0.3,
                                   jax.random.PRNGKey(0))[0]

    g = jax.grad(f)(params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    d = unravel(jax.random.normal(jax.random.PRNGKey(9), flat.shape, jnp.float64))
    # NRSLoss stops the gradient through BN gamma by design, so finite differences
    # along gamma would (rightly) disagree: perturb every other parameter.
    d = {k: {n: (jnp.zeros_like(a) if n == "scale" else a) for n, a in leaf.items()}
         for k, leaf in d.items()}
    h = 1e-6  # float64; 1e-5 already crosses a ReLU-stability kink on this draw
    shift = lambda s: jax.tree_util.tree_map(lambda p, q: p + s * q, params, d)
    fd = (f(shift(h)) - f(shift(-h))) / (2 * h)
    analytic = tree_vdot(g, d)
    np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-5)
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree_util.tree_leaves(g))
  finally:
    jax.config.update("jax_enable_x64", False)


def test_at_eps_max_the_crown_ibp_loss_is_the_ibp_loss():
  """Once eps reaches eps_max, training swaps in the IBP loss: same value and gradient."""
  model, v, x, y = setup()
  ctx = ctx_for(model)
  masks = models.init_masks(v["params"], model.layers)
  ctx_ibp, ibp_loss = losses.loss_at_eps_max(ctx, "crown_ibp")
  assert losses.loss_at_eps_max(ctx, "ibp") is None

  def run(ctx, fn):
    f = lambda p: fn(ctx, p, v["batch_stats"], masks, (x, y), ctx.eps_max, 0.25,
                     jax.random.PRNGKey(0))
    return jax.value_and_grad(f, has_aux=True)(v["params"])

  (want, (_, mw)), gw = run(ctx, losses.crown_ibp_loss)
  (got, (_, mg)), gg = run(ctx_ibp, ibp_loss)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(mg["verified"], mw["verified"])
  assert_trees_close(gg, gw, rtol=1e-4, atol=1e-6)
