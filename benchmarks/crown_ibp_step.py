"""CROWN-IBP (loss fusion) vs IBP train-step throughput, mid-ramp (CROWN-IBP weight 0.5).

    python benchmarks/crown_ibp_step.py

CNN-7L, batch 128, CIFAR shapes, eps 1/255 of eps_max 2/255; the two steps alternate in rounds.
"""
import time, jax, jax.numpy as jnp, numpy as np
from jaxprune import models
from jaxprune.train import losses
from jaxprune.train.config import base_config
from jaxprune.train.loop import make_train_step
from jaxprune.train.state import init_state, make_optimizer
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
cfg = base_config().train; model = models.create("cnn7l"); tx = make_optimizer(cfg, 100)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.random((128, 32, 32, 3), np.float32)); y = jnp.asarray(rng.integers(0, 10, 128).astype(np.int32))
steps = {}
for mode in ["ibp", "crown_ibp"]:
  ctx = losses.Context(model=model, mean=MEAN, std=STD, num_classes=10, eps_max=2/255, bound_method=mode, loss_fusion=True)
  st = init_state(model, (32, 32, 3), tx, 0); f = make_train_step(ctx, losses.LOSSES[mode], tx)
  st, m = f(st, x, y, jnp.float32(1/255), jnp.float32(0.5)); jax.block_until_ready(m)
  steps[mode] = [st, f]
res = {k: [] for k in steps}
for r in range(3):
  for mode, (st, f) in steps.items():
    t = time.perf_counter()
    for _ in range(3):
      st, m = f(st, x, y, jnp.float32(1/255), jnp.float32(0.5))  # mid-ramp: CROWN-IBP weight 0.5
    jax.block_until_ready(m); res[mode].append(128 * 3 / (time.perf_counter() - t)); steps[mode][0] = st
for k, v in res.items(): print(k, "img/s median", round(float(np.median(v)), 1), [round(a, 1) for a in v])
print("ratio crown_ibp/ibp cost", round(float(np.median(res["ibp"]) / np.median(res["crown_ibp"])), 2))
