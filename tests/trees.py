"""Pytree assertions for tests: tree structure first, then the leaves.

Zipping `jax.tree.leaves(a)` with `jax.tree.leaves(b)` stops at the shorter
list, so a missing or extra leaf would go unnoticed; these helpers fail on it.
"""
import jax
import jax.numpy as jnp
import numpy as np


def assert_same_structure(a, b):
  """Equal tree structure (node types, keys, static fields, leaf count)."""
  sa, sb = jax.tree.structure(a), jax.tree.structure(b)
  assert sa == sb, f"tree structures differ:\n  {sa}\n  {sb}"


def leaf_pairs(a, b):
  """[(leaf of a, leaf of b)] in tree order, after asserting equal structure."""
  assert_same_structure(a, b)
  return list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_trees_close(a, b, rtol=1e-7, atol=0.0):
  """Equal structure, then every leaf pair within `np.testing.assert_allclose(rtol, atol)`."""
  for i, (x, y) in enumerate(leaf_pairs(a, b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=f"leaf {i}")


def assert_trees_equal(a, b):
  """Equal structure, then every leaf pair exactly equal (shape and values)."""
  for i, (x, y) in enumerate(leaf_pairs(a, b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape, f"leaf {i}: shapes {x.shape} != {y.shape}"
    np.testing.assert_array_equal(x, y, err_msg=f"leaf {i}")


def tree_vdot(a, b):
  """Sum of leafwise `vdot`s of two trees of equal structure (their inner product)."""
  return sum(jnp.vdot(x, y) for x, y in leaf_pairs(a, b))
