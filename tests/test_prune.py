"""Pruners: exact masks on hand-made weights, round arithmetic, structure and compression."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import bounds, models, prune
from jaxprune.models import Layer
from jaxprune.prune import compression
from trees import assert_trees_equal, leaf_pairs

# Two "conv" kernels of 4 weights each (global order: a then b).
W = {"a": {"kernel": jnp.array([0.1, -2.0, 0.5, 3.0]).reshape(1, 1, 1, 4)},
     "b": {"kernel": jnp.array([-10.0, 2.0, 40.0, -3.0]).reshape(1, 1, 1, 4)}}
G1 = {"a": {"kernel": jnp.array([10.0, 0.1, 1.0, 0.01]).reshape(1, 1, 1, 4)},
      "b": {"kernel": jnp.array([0.1, 0.5, 0.01, 1.0]).reshape(1, 1, 1, 4)}}
G2 = {"a": {"kernel": jnp.array([-10.0, 0.1, 1.0, 0.01]).reshape(1, 1, 1, 4)}, "b": G1["b"]}


def ones_like(tree):
  return jax.tree_util.tree_map(jnp.ones_like, tree)


def flat(masks):
  return [np.asarray(masks[k]["kernel"]).ravel().tolist() for k in ("a", "b")]


@pytest.mark.parametrize("name,rate,scope,grads,expected", [
    # |w| = a [.1 2 .5 3], b [10 2 40 3]: the 2-2 tie goes to a (earlier leaf) first.
    ("imp", 0.5, "global", None, [[0, 0, 0, 1], [1, 0, 1, 1]]),
    ("imp", 0.375, "global", None, [[0, 0, 0, 1], [1, 1, 1, 1]]),
    ("imp", 0.5, "layerwise", None, [[0, 1, 0, 1], [1, 0, 1, 0]]),
    # |w g| = a [1 .2 .5 .03], b [1 1 .4 3].
    ("snip", 0.5, "global", [G1], [[1, 0, 0, 0], [1, 1, 0, 1]]),
    ("snip", 0.5, "global", [G1, G2], [[1, 0, 0, 0], [1, 1, 0, 1]]),  # first batch only
    # mean gradient first: a0's +10 and -10 cancel, so a0 scores 0 (per-batch |w g| gives 1).
    ("tp", 0.5, "global", [G1, G2], [[0, 0, 1, 0], [1, 1, 0, 1]]),
    ("tp", 0.5, "global", [G1], [[1, 0, 0, 0], [1, 1, 0, 1]]),  # one batch: SNIP
])
def test_scorers_give_expected_masks(name, rate, scope, grads, expected):
  masks = prune.prune_step(name, W, ones_like(W), rate=rate, scope=scope, grads=grads)
  assert flat(masks) == expected


def test_pruned_weights_stay_pruned_and_rate_is_of_remaining():
  masks = ones_like(W)
  masks["a"]["kernel"] = masks["a"]["kernel"].at[..., 3].set(0.0)  # |w| = 3, would survive
  new = prune.prune_step("imp", W, masks, rate=0.5)
  # 7 alive, round(3.5) = 4 pruned: a0 .1, a2 .5, a1 2, b1 2.
  assert flat(new) == [[0, 0, 0, 0], [1, 0, 1, 1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_reproducible_by_seed(seed):
  params = {"a": {"kernel": jnp.ones((3, 3, 8, 16))}}
  masks = ones_like(params)
  step = lambda s: prune.prune_step("random", params, masks, rate=0.3, key=jax.random.key(s))
  m1, m2, other = step(seed), step(seed), step(seed + 100)
  assert np.array_equal(m1["a"]["kernel"], m2["a"]["kernel"])
  assert not np.array_equal(m1["a"]["kernel"], other["a"]["kernel"])
  assert int(np.sum(m1["a"]["kernel"])) == 1152 - round(0.3 * 1152)


def random_variables(model, shape, seed):
  """Variables of `model` drawn with NumPy (no per-shape PRNG compiles): fan-in scaled
  kernels, and non-trivial BN scale, shift and running statistics."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))

  def draw(path, s):
    if path[-1].key == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
    scale = 1 / np.sqrt(np.prod(s.shape[:-1])) if path[-1].key == "kernel" else 0.3
    return jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def cnn7l_params():
  return random_variables(models.create("cnn7l"), (1, 32, 32, 3), 1)["params"]


@pytest.fixture(scope="module")
def imp_rounds(cnn7l_params):
  masks = [models.init_masks(cnn7l_params, models.REGISTRY["cnn7l"]())]
  for _ in range(5):
    masks.append(prune.prune_step("imp", cnn7l_params, masks[-1]))
  return masks


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_imp_leaves_point_eight_to_the_k(imp_rounds, k):
  total = sum(m["kernel"].size for m in imp_rounds[0].values())
  assert total == 463712  # conv weights of CNN-7L on 3x32x32
  n = total
  for _ in range(k):
    n -= round(0.2 * n)
  frac = prune.remaining_fraction(imp_rounds[k])
  assert frac == n / total
  assert abs(frac - 0.8 ** k) <= k / total
  assert set(imp_rounds[k]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}  # dense unpruned
  for old, new in leaf_pairs(imp_rounds[k - 1], imp_rounds[k]):
    assert np.all(np.asarray(new) <= np.asarray(old))


def test_registry_names_kinds_and_training_flags():
  expected = {"dense": ("none", None), "random": ("unstructured", None),
              "imp": ("unstructured", None), "snip": ("unstructured", None),
              "tp": ("unstructured", None), "hydra": ("unstructured", None),
              "hydra_nrs": ("unstructured", "nrs"), "imp_rs": ("unstructured", "rs"),
              "imp_nrs": ("unstructured", "nrs"), "struct_lth": ("structured", None),
              "slim": ("structured", "slim_l1")}
  assert {n: (p.kind, p.train_loss_extra) for n, p in prune.PRUNERS.items()} == expected
  assert prune.get("slim").train_weights() == {"slim_l1": 1e-4}
  assert prune.get("imp_nrs").train_weights() == {"nrs_weight": 0.01}
  assert prune.get("imp").train_weights() == {}
  assert flat(prune.prune_step("dense", W, ones_like(W))) == [[1] * 4, [1] * 4]
  with pytest.raises(ValueError, match="unknown pruner 'lth'; valid: dense, hydra, "):
    prune.get("lth")


@pytest.mark.parametrize("name,kwargs,match", [
    ("imp", {"scope": "local"}, "scope"),
    ("imp", {"rate": 1.5}, "rate"),
    ("random", {}, "key"),
    ("snip", {}, "grads"),
    ("hydra", {"batches": [None]}, "loss_fn"),
    ("slim", {}, "layers"),
])
def test_prune_step_rejects_missing_or_bad_arguments(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    prune.prune_step(name, W, ones_like(W), **kwargs)


# --- structured ------------------------------------------------------------------------------

def cnn7l_gammas(params, seed):
  """Random |gamma| per channel, conv1's all tiny so the global ranking wants to empty it."""
  rng = np.random.default_rng(seed)
  params = {k: dict(v) for k, v in params.items()}
  for i in range(1, 6):
    g = rng.uniform(0.5, 1.5, params[f"bn{i}"]["scale"].shape) * (1e-3 if i == 1 else 1.0)
    params[f"bn{i}"]["scale"] = jnp.asarray(g, jnp.float32)
  return params


@pytest.mark.parametrize("min_channels", [1, 3])
def test_slim_channel_counts_per_round(cnn7l_params, min_channels):
  layers = models.REGISTRY["cnn7l"]()
  params = cnn7l_gammas(cnn7l_params, 2)
  masks = models.init_masks(params, layers)
  alive = 32 + 64 + 64 + 128 + 128
  for _ in range(6):
    masks = prune.prune_step("slim", params, masks, layers=layers, min_channels=min_channels)
    alive -= round(0.11 * alive)
    counts = prune.channel_counts(masks)
    assert sum(counts.values()) == alive
    assert min(counts.values()) >= min_channels
  assert counts["conv1"] == min_channels  # its tiny gammas went first, but it never empties
  view = prune.channel_view(masks)
  for conv, bn in (("conv2", "bn2"), ("conv4", "bn4")):
    a = view[conv].astype(np.float32)
    for leaf in (masks[conv]["bias"], masks[bn]["scale"], masks[bn]["bias"]):
      assert np.array_equal(leaf, a)
    assert np.array_equal(masks[conv]["kernel"], np.broadcast_to(a, masks[conv]["kernel"].shape))


def test_slim_ranks_by_gamma_magnitude():
  layers = (Layer("conv", "c1", features=3, kernel=1), Layer("bn", "n1"),
            Layer("conv", "c2", features=3, kernel=1), Layer("bn", "n2"))
  params = {"c1": {"kernel": jnp.ones((1, 1, 2, 3)), "bias": jnp.zeros(3)},
            "n1": {"scale": jnp.array([0.5, -0.1, 0.3]), "bias": jnp.zeros(3)},
            "c2": {"kernel": jnp.ones((1, 1, 3, 3)), "bias": jnp.zeros(3)},
            "n2": {"scale": jnp.array([-2.0, 0.2, 0.05]), "bias": jnp.zeros(3)}}
  masks = models.init_masks(params, layers)
  new = prune.prune_step("slim", params, masks, rate=0.5, layers=layers)  # 3 of 6 channels
  assert {k: v.tolist() for k, v in prune.channel_view(new).items()} == {
      "c1": [True, False, True], "c2": [True, False, False]}


def test_struct_lth_ranks_after_imp_and_refills():
  # Summed |w|: ch0 1.05 < ch1 1.1, but IMP (rate .2 of 10) removes two of ch1's 0.05s,
  # leaving ch1 1.0 < ch0 1.05: StructLTH prunes ch1 and refills ch0 completely.
  kernel = jnp.stack([jnp.full(5, 0.21), jnp.array([0.9, 0.05, 0.05, 0.05, 0.05])], -1)
  params = {"c": {"kernel": kernel.reshape(1, 1, 5, 2), "bias": jnp.zeros(2)}}
  layers = (Layer("conv", "c", features=2, kernel=1),)
  masks = prune.prune_step("struct_lth", params, models.init_masks(params, layers), rate=0.5,
                           layers=layers)
  assert np.array_equal(masks["c"]["kernel"][..., 0], np.ones((1, 1, 5)))
  assert np.array_equal(masks["c"]["kernel"][..., 1], np.zeros((1, 1, 5)))
  assert masks["c"]["bias"].tolist() == [1.0, 0.0]


def test_struct_lth_rounds_on_cnn7l(cnn7l_params):
  layers = models.REGISTRY["cnn7l"]()
  masks = models.init_masks(cnn7l_params, layers)
  alive = 416
  for _ in range(3):
    prev = prune.channel_view(masks)
    masks = prune.prune_step("struct_lth", cnn7l_params, masks, layers=layers)
    alive -= round(0.11 * alive)
    view = prune.channel_view(masks)
    assert sum(int(v.sum()) for v in view.values()) == alive
    for conv, a in view.items():
      assert not np.any(a & ~prev[conv])  # pruned channels stay pruned
      k = np.asarray(masks[conv]["kernel"])
      assert np.all(k[..., a] == 1) and np.all(k[..., ~a] == 0)  # refilled, pure channel mask
  assert prune.remaining_fraction(masks) < 1.0
  assert prune.remaining_fraction is models.remaining_fraction


# --- compression ----------------------------------------------------------------------------

def random_masks(kind, variables, layers, seed):
  """Channel masks (structured), or kernel-only zero channels with BN left unmasked."""
  rng = np.random.default_rng(seed)
  params = variables["params"]
  masks = models.init_masks(params, layers)
  alive = {}
  for conv, a in prune.channel_view(masks).items():
    alive[conv] = rng.uniform(size=a.shape) < 0.5
    alive[conv][0] = True
  if kind == "channel":
    return prune.channel_masks(alive, masks, params, layers), alive
  return {c: {"kernel": jnp.broadcast_to(alive[c].astype(np.float32), m["kernel"].shape)}
          for c, m in masks.items()}, None


@pytest.mark.parametrize("name,shape,kind", [
    ("cnn_tiny", (2, 8, 8, 3), "channel"),
    ("cnn_tiny", (2, 8, 8, 3), "kernel_only"),
    ("resnet_tiny", (2, 8, 8, 3), "channel"),
    ("cnn7l", (2, 32, 32, 3), "channel"),
])
def test_compress_is_exact_and_smaller(name, shape, kind):
  model = models.create(name)
  variables = random_variables(model, shape, 3)
  masks, alive = random_masks(kind, variables, model.layers, 4)
  masked = dict(variables, params=models.apply_masks(variables["params"], masks))
  x = jnp.asarray(np.random.default_rng(5).standard_normal(shape), jnp.float32)
  want = jax.jit(model.apply)(masked, x)
  new_layers, new_vars = prune.compress(model.layers, variables, masks)
  got = jax.jit(models.SpecNet(layers=new_layers).apply)(new_vars, x)
  got_ir = jax.jit(lambda v, x: bounds.forward(bounds.from_layers(new_layers, v), x))(new_vars, x)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got_ir, want, atol=1e-5, rtol=1e-5)
  n_old, n_new = models.count_params(variables["params"]), models.count_params(new_vars["params"])
  if kind == "kernel_only":  # zero kernels under an unmasked BN are constants, not zeros
    assert n_new <= n_old
    return
  assert n_new < n_old
  if name == "cnn_tiny":  # conv(3x3x3) bn conv(4x4) bn flatten(4x4 spatial) fc1(16) fc2(10)
    c1, c2 = int(alive["conv1"].sum()), int(alive["conv2"].sum())
    assert n_new == (27 * c1 + c1 + 2 * c1 + 16 * c1 * c2 + c2 + 2 * c2
                     + 16 * c2 * 16 + 16 + 16 * 10 + 10)
  old = {l.name: l for l in model.layers}
  for layer in new_layers:
    if layer.op == "conv":  # shrunk exactly where the chain allows it (not before a residual add)
      removable = compression.removable_chain(layer.name, model.layers) is not None
      assert layer.features == (int(alive[layer.name].sum()) if removable
                                else old[layer.name].features)
  assert any(l.features < old[l.name].features for l in new_layers if l.op == "conv")


# --- gradient-based scorers through loss_fn, and HYDRA -----------------------------------------

@pytest.fixture(scope="module")
def mlp_problem():
  """mlp_tiny on random inputs labelled by a random linear teacher; dense kernels masked."""
  model = models.create("mlp_tiny", num_classes=3)
  rng = np.random.default_rng(6)
  x = rng.standard_normal((4, 64, 4, 4, 1)).astype(np.float32)
  y = np.argmax(x.reshape(4, 64, -1) @ rng.standard_normal((16, 3)), -1)
  params = random_variables(model, x[0].shape, 7)["params"]

  def loss_fn(params, masks, batch):
    logits = model.apply({"params": models.apply_masks(params, masks)}, batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  masks = models.init_masks(params, model.layers, include=("dense",))
  return params, masks, loss_fn, list(zip(x, y))


@pytest.mark.parametrize("name", ["snip", "tp"])
def test_gradient_scorers_take_loss_fn_or_grads(mlp_problem, name):
  params, masks, loss_fn, batches = mlp_problem
  grad = jax.jit(jax.grad(loss_fn))
  grads = [grad(params, masks, b) for b in batches]
  via_loss = prune.prune_step(name, params, masks, loss_fn=loss_fn, batches=batches)
  via_grads = prune.prune_step(name, params, masks, grads=grads)
  assert_trees_equal(via_loss, via_grads)
  assert prune.remaining_fraction(via_loss) == pytest.approx(0.8, abs=1e-3)


def test_hydra_learns_an_exact_density_mask_better_than_imp(mlp_problem):
  params, masks, loss_fn, batches = mlp_problem
  total = sum(m.size for m in jax.tree_util.tree_leaves(masks))
  loss = jax.jit(loss_fn)
  mean_loss = lambda m: float(np.mean([loss(params, m, b) for b in batches]))
  imp = prune.prune_step("imp", params, masks, rate=0.7)
  untrained = prune.prune_step("hydra", params, masks, rate=0.7, loss_fn=loss_fn,
                               batches=batches, hydra=prune.HydraConfig(steps=0))
  learned = prune.prune_step("hydra", params, masks, rate=0.7, loss_fn=loss_fn, batches=batches,
                             hydra=prune.HydraConfig(steps=200, optimizer=optax.adam(1e-2)))
  assert_trees_equal(untrained, imp)  # scores start proportional to |w|
  assert prune.remaining_fraction(learned) == (total - round(0.7 * total)) / total
  assert mean_loss(learned) < mean_loss(imp) - 0.05
