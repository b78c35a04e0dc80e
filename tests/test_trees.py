"""The shared pytree assertions reject what a leaf-wise zip would let through."""
import jax.numpy as jnp
import pytest

from trees import assert_trees_close, assert_trees_equal, tree_vdot

A = {"a": jnp.ones(3), "b": {"k": jnp.arange(4.0)}}


def test_equal_trees_pass():
  assert_trees_equal(A, {"a": jnp.ones(3), "b": {"k": jnp.arange(4.0)}})
  assert_trees_close(A, {"a": jnp.ones(3) + 1e-6, "b": {"k": jnp.arange(4.0)}}, atol=1e-5)
  assert float(tree_vdot(A, A)) == 3 + 14


@pytest.mark.parametrize("other", [
    {"a": jnp.ones(3)},                                               # a leaf missing
    {"a": jnp.ones(3), "b": {"k": jnp.arange(4.0)}, "c": jnp.ones(1)},  # a leaf extra
    {"a": jnp.ones(3), "c": {"k": jnp.arange(4.0)}}])                 # a key renamed
def test_structure_mismatch_fails(other):
  for check in (assert_trees_equal, assert_trees_close, tree_vdot):
    with pytest.raises(AssertionError, match="structures differ"):
      check(A, other)


def test_value_and_shape_mismatch_fail():
  with pytest.raises(AssertionError):
    assert_trees_close(A, {"a": jnp.ones(3), "b": {"k": jnp.arange(4.0) + 1e-3}}, atol=1e-5)
  with pytest.raises(AssertionError, match="shapes"):
    assert_trees_equal({"a": jnp.ones(3)}, {"a": jnp.ones((1, 3))})
