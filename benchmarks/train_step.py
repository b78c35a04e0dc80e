"""Train-step throughput: jaxprune vs an equivalent PyTorch step (when torch is installed).

    python benchmarks/train_step.py [--batch 128] [--steps 10] [--modes standard,ibp]
                                    [--repeats 3] [--cpu-time]

CNN-7L on CIFAR shapes (32x32x3), Adam, eps 2/255. Compile time is excluded
(one warm-up step). The PyTorch step does the same work: clean forward with
BN in train mode, and for IBP the centre/radius bounds with the BN folded by
the clean batch's statistics and the margin specification folded into the
last layer, then backward and Adam.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import models
from jaxprune.train import losses
from jaxprune.train.config import base_config
from jaxprune.train.loop import make_train_step
from jaxprune.train.state import init_state, make_optimizer

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def jax_step(mode: str, batch: int, eps: float):
  """A zero-argument callable running one jitted jaxprune train step (compiled, warmed up)."""
  cfg = base_config().train
  cfg.mode = mode
  model = models.create("cnn7l")
  ctx = losses.Context(model=model, mean=MEAN, std=STD, num_classes=10, eps_max=eps,
                       bound_method=losses.BOUND_METHOD.get(mode, "ibp"))
  tx = make_optimizer(cfg, 100)
  state = init_state(model, (32, 32, 3), tx, 0)
  step = make_train_step(ctx, losses.LOSSES[mode], tx)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, 32, 32, 3), np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
  kappa = jnp.float32(0.5)
  box = [state]
  e = jnp.float32(eps)

  def run():
    box[0], m = step(box[0], x, y, e, kappa)
    jax.block_until_ready(m)

  run()
  return run


def torch_step(mode: str, batch: int, eps: float):
  """(one-step callable, torch version, threads) for the equivalent PyTorch step, or None."""
  try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
  except ImportError:
    return None
  torch.manual_seed(0)
  blocks = [(3, 32, 3, 1), (32, 64, 4, 2), (64, 64, 3, 1), (64, 128, 4, 2), (128, 128, 4, 2)]
  convs = nn.ModuleList([nn.Conv2d(i, o, k, s, 1) for i, o, k, s in blocks])
  bns = nn.ModuleList([nn.BatchNorm2d(o) for _, o, _, _ in blocks])
  fc1, fc2 = nn.Linear(2048, 100), nn.Linear(100, 10)
  net = nn.ModuleList([convs, bns, fc1, fc2])
  opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
  mean = torch.tensor(MEAN).view(1, 3, 1, 1)
  std = torch.tensor(STD).view(1, 3, 1, 1)
  x = torch.rand(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))

  def loss_fn():
    h = (x - mean) / std
    stats = []
    for conv, bn in zip(convs, bns):
      z = conv(h)
      stats.append((z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)))
      h = F.relu(bn(z))
    logits = fc2(F.relu(fc1(h.flatten(1))))
    clean = F.cross_entropy(logits, y)
    if mode == "standard":
      return clean
    lo = ((x - eps).clamp(0, 1) - mean) / std
    hi = ((x + eps).clamp(0, 1) - mean) / std
    c, r = (hi + lo) / 2, (hi - lo) / 2
    for conv, bn, (m, v) in zip(convs, bns, stats):
      c = conv(c)
      r = F.conv2d(r, conv.weight.abs(), None, conv.stride, conv.padding)
      w = (bn.weight / torch.sqrt(v + bn.eps)).view(1, -1, 1, 1)
      c = (c - m.view(1, -1, 1, 1)) * w + bn.bias.view(1, -1, 1, 1)
      r = r * w.abs()
      lo, hi = F.relu(c - r), F.relu(c + r)
      c, r = (hi + lo) / 2, (hi - lo) / 2
    c, r = c.flatten(1), r.flatten(1)
    c, r = fc1(c), r @ fc1.weight.abs().t()
    lo, hi = F.relu(c - r), F.relu(c + r)
    c, r = (hi + lo) / 2, (hi - lo) / 2
    C = torch.eye(10)[y].unsqueeze(1) - torch.eye(10).unsqueeze(0)
    wc = C @ fc2.weight
    bc = C @ fc2.bias
    lower = torch.einsum("bsi,bi->bs", wc, c) + bc - torch.einsum("bsi,bi->bs", wc.abs(), r)
    return 0.5 * clean + 0.5 * F.cross_entropy(-lower, y)

  def step():
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 8.0)
    opt.step()

  step()
  return step, torch.__version__, torch.get_num_threads()


def timed(fn, steps: int, clock=time.perf_counter) -> float:
  t0 = clock()
  for _ in range(steps):
    fn()
  return clock() - t0


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--eps", type=float, default=2 / 255)
  p.add_argument("--modes", default="standard,ibp")
  p.add_argument("--repeats", type=int, default=3,
                 help="rounds of `steps` JAX steps then `steps` PyTorch steps; medians reported")
  p.add_argument("--cpu-time", action="store_true",
                 help="time by this process's CPU time instead of wall time (for a shared machine "
                      "with `taskset -c 0`, one thread each; spinning threads inflate it otherwise)")
  a = p.parse_args()
  clock = time.process_time if a.cpu_time else time.perf_counter
  print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {len(os.sched_getaffinity(0))} usable cores, "
        f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"clock={'cpu' if a.cpu_time else 'wall'}")
  print("| mode | jaxprune img/s | PyTorch img/s | ratio |\n|---|---|---|---|")
  for mode in a.modes.split(","):
    # Interleaved rounds, so that both frameworks see the same load on a shared machine.
    jstep, t = jax_step(mode, a.batch, a.eps), torch_step(mode, a.batch, a.eps)
    js, ts, ratios = [], [], []
    for _ in range(a.repeats):
      js.append(a.batch * a.steps / timed(jstep, a.steps, clock))
      if t is not None:
        ts.append(a.batch * a.steps / timed(t[0], a.steps, clock))
        ratios.append(js[-1] / ts[-1])
    j = float(np.median(js))
    if t is None:
      print(f"| {mode} | {j:.1f} | (torch not installed) | - |")
    else:
      print(f"| {mode} | {j:.1f} | {np.median(ts):.1f} (torch {t[1]}, {t[2]} threads) | "
            f"{np.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)}) |")


if __name__ == "__main__":
  main()
