"""Models: registry, parameter counts, shapes, masks, and the IR's forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxprune import bounds, models

SHAPES = {"cnn7l": (32, 32, 3), "resnet18_nr": (32, 32, 3), "cnn_tiny": (8, 8, 1),
          "mlp_tiny": (8, 8, 1), "resnet_tiny": (8, 8, 2)}


def init(name, shape, seed=0):
  model = models.create(name)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)))
  return model, variables


def kernel_counts(params):
  return {k[0]: v.size for k, v in traverse_util.flatten_dict(params).items() if k[-1] == "kernel"}


def test_cnn7l_parameter_count_matches_table_1():
  model, v = init("cnn7l", (32, 32, 3))
  expected = {"conv1": 3 * 32 * 9, "conv2": 32 * 64 * 16, "conv3": 64 * 64 * 9,
              "conv4": 64 * 128 * 16, "conv5": 128 * 128 * 16, "fc1": 2048 * 100,
              "fc2": 100 * 10}
  assert kernel_counts(v["params"]) == expected
  # Every kernel weight (the paper's "0.67 M" for CNN-7L) is covered by a conv/dense mask.
  masks = models.init_masks(v["params"], model.layers, include=("conv", "dense"))
  assert models.count_params(masks) == 669_512
  channels = 32 + 64 + 64 + 128 + 128
  assert models.count_params(v["params"]) == 669_512 + channels + 110 + 2 * channels


def test_cnn7l_fashion_mnist_variant_has_dense_1152():
  _, v = init("cnn7l", (28, 28, 1))
  assert v["params"]["fc1"]["kernel"].shape == (1152, 100)
  assert v["params"]["conv1"]["kernel"].shape == (3, 3, 1, 32)


def test_unknown_model_lists_registered_names():
  with pytest.raises(ValueError, match="unknown model 'vgg16'; valid: cnn7l, cnn_tiny, "):
    models.create("vgg16")


def test_masks_cover_conv_kernels_only_and_are_respected():
  model, v = init("cnn_tiny", (8, 8, 1))
  masks = models.init_masks(v["params"], model.layers)
  assert set(masks) == {"conv1", "conv2"} and set(masks["conv1"]) == {"kernel"}
  both = models.init_masks(v["params"], model.layers, include=("conv", "dense"))
  assert set(both) == {"conv1", "conv2", "fc1", "fc2"}
  rng = np.random.default_rng(0)
  masks = jax.tree_util.tree_map(lambda m: jnp.asarray(rng.random(m.shape) < 0.5, m.dtype), masks)
  masked = models.apply_masks(v["params"], masks)
  for name in masks:
    k = np.asarray(masked[name]["kernel"])
    assert np.all(k[np.asarray(masks[name]["kernel"]) == 0] == 0)
    assert np.array_equal(k[np.asarray(masks[name]["kernel"]) == 1],
                          np.asarray(v["params"][name]["kernel"])[np.asarray(masks[name]["kernel"]) == 1])
  assert masked["fc1"] is v["params"]["fc1"] or np.array_equal(masked["fc1"]["kernel"],
                                                               v["params"]["fc1"]["kernel"])
  assert 0.4 < models.remaining_fraction(masks) < 0.6


def random_bn_state(variables, seed):
  """Non-trivial running statistics and BN affine parameters."""
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape) if a.ndim else a, a.dtype),
      variables.get("batch_stats", {}))
  params = dict(variables["params"])
  for name, p in params.items():
    if set(p) == {"scale", "bias"}:
      params[name] = {"scale": jnp.asarray(rng.normal(size=p["scale"].shape), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=p["bias"].shape), jnp.float32)}
  return {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_ir_forward_equals_model_apply_with_masks(name):
  """Both BN modes: eval (running stats) and batch (the clean batch's sown stats)."""
  model, v = init(name, SHAPES[name])
  v = random_bn_state(v, 0)
  masks = models.init_masks(v["params"], model.layers, include=("conv", "dense"))
  rng = np.random.default_rng(1)
  masks = jax.tree_util.tree_map(lambda m: jnp.asarray(rng.random(m.shape) < 0.7, m.dtype), masks)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, *SHAPES[name]))
  masked = {**v, "params": models.apply_masks(v["params"], masks)}
  expected = model.apply(masked, x)
  assert expected.shape == (4, 10)
  net = bounds.from_model(model, v, masks=masks, bn="eval")
  np.testing.assert_allclose(bounds.forward(net, x), expected, atol=1e-5, rtol=1e-5)
  expected_t, mut = model.apply(masked, x, train=True, mutable=["batch_stats", "intermediates"])
  stats = mut.get("intermediates", {})
  assert len(stats) == sum(l.op == "bn" for l in model.layers)
  net_t = bounds.from_model(name, v, masks=masks, bn="batch", stats=stats)
  np.testing.assert_allclose(bounds.forward(net_t, x), expected_t, atol=1e-5, rtol=1e-5)
