"""Stability losses and metrics on hand-made bounds (the paper's Eqs. 3-5, computed by hand)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import bounds, models
from jaxprune.train import losses

L = jnp.array([[[-1.0, 0.5], [-2.0, -1.0]]])  # (batch 1, 2 positions, 2 channels)
U = jnp.array([[[2.0, 1.0], [1.0, -0.5]]])


def test_rs_loss_is_mean_of_channel_means():
  got = losses.rs_loss({"r": (L, U)})
  per = -np.tanh(1 + np.array(L) * np.array(U))  # [[-tanh(-1), -tanh(1.5)], [-tanh(-1), -tanh(1.5)]]
  np.testing.assert_allclose(got, per.reshape(-1, 2).mean(0).mean(), rtol=1e-6)


def test_instability_counts_and_sums_minus_lu_over_all_and_unstable_neurons():
  unstable, total, unstable_part, count = losses.instability({"r": (L, U)})
  assert count == 4 and float(unstable[0]) == 2.0  # (-1, 2) and (-2, 1)
  l, u = np.array(L), np.array(U)
  np.testing.assert_allclose(total[0], np.sum(-l * u), rtol=1e-6)  # Eq. 3: stable ones < 0
  np.testing.assert_allclose(unstable_part[0], 2.0 + 2.0, rtol=1e-6)  # -(-1)(2), -(-2)(1)
  assert float(total[0]) < float(unstable_part[0])


def tiny_net(gamma):
  model = models.create("cnn_tiny")
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  v["params"]["bn1"]["scale"] = gamma
  return bounds.from_model(model, v)


def test_nrs_loss_matches_formula_and_stops_gradient_on_gamma():
  gamma = jnp.array([0.5, 2.0, 1.0, 3.0])
  l = jnp.linspace(-1, 0.5, 2 * 3 * 3 * 4).reshape(2, 3, 3, 4)
  u = l + 1.2
  relu_bounds = {"relu1": (l, u)}  # relu1's input is bn1 (an affine node with gamma)

  def f(g):
    return losses.nrs_loss(tiny_net(g), relu_bounds)

  expected = (-np.tanh(1 + np.array(l * u) / (np.array(gamma) ** 2 + 1e-8))).reshape(-1, 4)
  np.testing.assert_allclose(f(gamma), expected.mean(0).mean(), rtol=1e-6)
  np.testing.assert_array_equal(jax.grad(f)(gamma), 0.0)
  assert float(jnp.abs(jax.grad(lambda a: losses.nrs_loss(tiny_net(gamma), {"relu1": (a, u)}))(l)).max()) > 0


def test_nrs_skips_relus_not_fed_by_batchnorm():
  net = tiny_net(jnp.ones(4))
  l, u = -jnp.ones((1, 16)), jnp.ones((1, 16))
  assert float(losses.nrs_loss(net, {"relu_fc1": (l, u)})) == 0.0
  assert float(losses.rs_loss({"relu_fc1": (l, u)})) == pytest.approx(-np.tanh(0.0))
