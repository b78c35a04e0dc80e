"""PGD (bounds.attack): on a linear margin the worst case over a box is a known corner."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.bounds import Net, Node, attack

D = 6


def linear_net(w, b):
  """Two classes, logits (x @ w + b): the margin of class 0 is x . (w0 - w1) + (b0 - b1)."""
  return Net(nodes=(Node(op="dense", name="d0", inputs=("input",),
                         w=jnp.asarray(w, jnp.float32), b=jnp.asarray(b, jnp.float32)),))


def boxes(rng, n):
  """n pixel boxes inside [0, 1], some touching its ends (clipped eps balls)."""
  x = rng.uniform(0, 1, size=(n, D))
  eps = rng.uniform(0.05, 0.3, size=(n, 1))
  return (np.clip(x - eps, 0, 1).astype(np.float32), np.clip(x + eps, 0, 1).astype(np.float32))


@pytest.mark.parametrize("y,mean,std,restarts", [(0, 0.0, 1.0, 1), (1, 0.5, 0.25, 4)])
def test_pgd_finds_the_worst_corner_of_a_linear_margin(y, mean, std, restarts):
  rng = np.random.default_rng(y)
  w, b = rng.normal(size=(D, 2)), rng.normal(size=2)
  net = linear_net(w, b)
  direction = (w[:, y] - w[:, 1 - y]) / std  # d margin / d pixel
  lower, upper = boxes(rng, 5)
  xs, values = attack.pgd_batch(net, lower, upper, jnp.full((5,), y), mean, std,
                                jax.random.PRNGKey(0), restarts=restarts, steps=10)
  corner = np.where(direction > 0, lower, upper)  # the minimiser: -sign(direction) per pixel
  np.testing.assert_array_equal(np.asarray(xs), corner)
  logits = ((corner - mean) / std) @ w + b
  np.testing.assert_allclose(np.asarray(values), logits[:, y] - logits[:, 1 - y], rtol=1e-5,
                             atol=1e-5)
  x0, _ = attack.pgd(net, lower[0], upper[0], y, mean, std, jax.random.PRNGKey(0),
                     restarts=restarts, steps=10)  # the batch is `pgd` per sample
  np.testing.assert_array_equal(np.asarray(x0), corner[0])


def test_pgd_never_leaves_the_box():
  """Large steps from random starts on a non-linear net stay inside [lower, upper]."""
  rng = np.random.default_rng(3)
  nodes = (Node(op="dense", name="d0", inputs=("input",),
                w=jnp.asarray(rng.normal(size=(D, 16)), jnp.float32),
                b=jnp.asarray(rng.normal(size=16), jnp.float32)),
           Node(op="relu", name="r0", inputs=("d0",)),
           Node(op="dense", name="d1", inputs=("r0",),
                w=jnp.asarray(rng.normal(size=(16, 3)), jnp.float32),
                b=jnp.asarray(rng.normal(size=3), jnp.float32)))
  lower, upper = boxes(rng, 8)
  xs, values = attack.pgd_batch(Net(nodes=nodes), lower, upper, jnp.asarray(rng.integers(0, 3, 8)),
                                0.0, 1.0, jax.random.PRNGKey(1), restarts=4, steps=10,
                                step_size=2.0)
  xs = np.asarray(xs)
  assert np.all((xs >= lower) & (xs <= upper))
  assert np.all(np.isfinite(np.asarray(values)))
