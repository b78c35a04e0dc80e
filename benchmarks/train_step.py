"""Train-step throughput: jaxprune vs an equivalent PyTorch step (when torch is installed).

    python benchmarks/train_step.py [--batch 128] [--steps 10]
        [--modes standard,ibp,crown_ibp] [--repeats 3] [--processes] [--cpu-time] [--check]

CNN-7L on CIFAR shapes (32x32x3), Adam, eps 2/255 (CROWN-IBP: eps 1/255 of
eps_max 2/255, mid-ramp, so its CROWN pass runs). Compile time is excluded
(one warm-up step). The PyTorch step does the same work: clean forward with
BN in train mode; for IBP the centre/radius bounds with the BN folded by the
clean batch's statistics and the margin specification folded into the last
layer; for CROWN-IBP also the loss-fusion CROWN pass (exp's chord on the
margins' IBP intervals, one backward pass with conv_transpose2d); then
backward and Adam. `--check` first prints both frameworks' losses on the same
weights and batch, to show the two steps compute the same thing. Like the
CLI, the script starts with `jaxprune.runtime.configure()` (Eigen convolutions,
JAXPRUNE_XLA_DEFAULTS=0: XLA's default; glibc's huge-page tunable for both
frameworks, JAXPRUNE_HUGE_PAGES=0: without); `--processes` measures every
round of each framework in a fresh process.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

from jaxprune import runtime

runtime.configure()  # first: XLA reads its flags when JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import models  # noqa: E402
from jaxprune.config import base_config  # noqa: E402
from jaxprune.data import CIFAR10_MEAN, CIFAR10_SHAPE, CIFAR10_STD, NUM_CLASSES  # noqa: E402
from jaxprune.registry import lookup  # noqa: E402
from jaxprune.train import losses  # noqa: E402
from jaxprune.train.loop import make_train_step  # noqa: E402
from jaxprune.train.state import init_state, make_optimizer  # noqa: E402


def jax_loss(mode: str):
  """jaxprune's loss function of a training mode."""
  return lookup(losses.LOSSES, mode, "training mode")


def mid_ramp(mode: str, eps: float) -> tuple[float, float]:
  """(eps, eps_max) of a step: CROWN-IBP runs at half its eps_max (CROWN-IBP weight 0.5)."""
  return (eps / 2, eps) if mode == "crown_ibp" else (eps, eps)


def jax_setup(mode: str, batch: int, eps: float):
  """(ctx, state, step, x, y, eps, kappa) of a jitted jaxprune train step on random data."""
  cfg = base_config().train
  cfg.mode = mode
  model = models.create("cnn7l")
  eps, eps_max = mid_ramp(mode, eps)
  ctx = losses.Context(model=model, mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=NUM_CLASSES,
                       eps_max=eps_max, bound_method=losses.BOUND_METHOD.get(mode, "ibp"))
  tx = make_optimizer(cfg, 100)
  state = init_state(model, CIFAR10_SHAPE, tx, 0)
  step = make_train_step(ctx, jax_loss(mode), tx)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, *CIFAR10_SHAPE), np.float32))
  y = jnp.asarray(rng.integers(0, NUM_CLASSES, batch).astype(np.int32))
  return ctx, state, step, x, y, jnp.float32(eps), jnp.float32(0.5)


def jax_step(mode: str, batch: int, eps: float):
  """A zero-argument callable running one jitted jaxprune train step (compiled, warmed up)."""
  _, state, step, x, y, e, kappa = jax_setup(mode, batch, eps)
  box = [state]

  def run():
    box[0], m = step(box[0], x, y, e, kappa)
    jax.block_until_ready(m)

  run()
  return run


BLOCKS = [(3, 32, 3, 1), (32, 64, 4, 2), (64, 64, 3, 1), (64, 128, 4, 2), (128, 128, 4, 2)]


def torch_loss(mode: str, eps: float, params=None):
  """(loss_fn(x, y), modules): the PyTorch equivalent of jaxprune's `mode` loss, kappa 0.5.

  x is NCHW in pixel space. `params` (jaxprune's CNN-7L params) are copied in
  when given, so that both frameworks can be checked to compute the same loss.
  """
  import torch
  import torch.nn as nn
  import torch.nn.functional as F

  torch.manual_seed(0)
  convs = nn.ModuleList([nn.Conv2d(i, o, k, s, 1) for i, o, k, s in BLOCKS])
  bns = nn.ModuleList([nn.BatchNorm2d(o) for _, o, _, _ in BLOCKS])
  fc1, fc2 = nn.Linear(2048, 100), nn.Linear(100, 10)
  if params is not None:
    t = lambda a: torch.tensor(np.asarray(a))
    with torch.no_grad():
      for i, (conv, bn) in enumerate(zip(convs, bns), 1):
        conv.weight.copy_(t(params[f"conv{i}"]["kernel"]).permute(3, 2, 0, 1))
        conv.bias.copy_(t(params[f"conv{i}"]["bias"]))
        bn.weight.copy_(t(params[f"bn{i}"]["scale"]))
        bn.bias.copy_(t(params[f"bn{i}"]["bias"]))
      # jaxprune flattens (h, w, c); PyTorch (c, h, w).
      fc1.weight.copy_(t(params["fc1"]["kernel"]).reshape(4, 4, 128, 100)
                       .permute(3, 2, 0, 1).reshape(100, 2048))
      fc1.bias.copy_(t(params["fc1"]["bias"]))
      fc2.weight.copy_(t(params["fc2"]["kernel"]).T)
      fc2.bias.copy_(t(params["fc2"]["bias"]))
  mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
  eps, eps_max = mid_ramp(mode, eps)
  crown_weight = (eps_max - eps) / eps_max

  def relax(a, l, u):
    """CROWN's ReLU relaxation of coefficients a (as jaxprune's `relu_transpose`)."""
    ub, lb = F.relu(u), torch.clamp(l, max=0)
    den = ub - lb
    up_slope = ub / torch.where(den > 0, den, torch.ones_like(den))
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    return pos * (u + l > 0).float() + neg * up_slope, (neg * -lb * up_slope).flatten(1).sum(1)

  def crown_ibp_bound(x_c, x_r, pre, l1, u1, wc, bc, mid, rad):
    """Loss fusion: upper bound of the worst-case CE (jaxprune's `fused_ce_bound`).

    The fused quantities are the margins z_j - z_y, the negated specification rows.
    """
    wm, bm = -wc, -bc
    shift = (rad - mid).max(1).values.detach()
    lo, up = -mid - rad - shift[:, None], rad - mid - shift[:, None]
    el, eu, width = lo.exp(), up.exp(), up - lo
    wide = width > 1e-6
    slope = torch.where(wide, (eu - el) / torch.where(wide, width, torch.ones_like(width)), eu)
    intercept = el - slope * lo
    a = -slope
    const = (a * bm).sum(1)
    a = torch.einsum("bs,bsi->bi", a, wm)
    a, k = relax(a, l1, u1)
    const = const + k + a @ fc1.bias
    a = (a @ fc1.weight).view(-1, 128, 4, 4)
    for conv, (l, u, w, b) in zip(reversed(convs), reversed(pre)):
      a, k = relax(a, l, u)
      s = a.sum((2, 3))
      const = const + k + s @ b
      a = a * w.view(1, -1, 1, 1)
      const = const + (s * w) @ conv.bias
      a = F.conv_transpose2d(a, conv.weight, stride=conv.stride, padding=conv.padding)
    neg = const + (a * x_c).flatten(1).sum(1) - (a.abs() * x_r).flatten(1).sum(1)
    crown_sum = (intercept - slope * shift[:, None]).sum(1) - neg
    total = crown_weight * crown_sum + (1 - crown_weight) * up.exp().sum(1)
    return (total.log() + shift).mean()

  def loss_fn(x, y):
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
    x_c, x_r, pre = c, r, []
    for conv, bn, (m, v) in zip(convs, bns, stats):
      c = conv(c)
      r = F.conv2d(r, conv.weight.abs(), None, conv.stride, conv.padding)
      w = bn.weight / torch.sqrt(v + bn.eps)
      b = bn.bias - m * w
      c = c * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
      r = r * w.abs().view(1, -1, 1, 1)
      pre.append((c - r, c + r, w, b))
      lo, hi = F.relu(c - r), F.relu(c + r)
      c, r = (hi + lo) / 2, (hi - lo) / 2
    c, r = c.flatten(1), r.flatten(1)
    c, r = fc1(c), r @ fc1.weight.abs().t()
    l1, u1 = c - r, c + r
    lo, hi = F.relu(l1), F.relu(u1)
    c, r = (hi + lo) / 2, (hi - lo) / 2
    # Margin specification z_y - z_j folded into the last layer; its IBP centre and radius.
    C = torch.eye(10)[y].unsqueeze(1) - torch.eye(10).unsqueeze(0)
    wc, bc = C @ fc2.weight, C @ fc2.bias
    mid = torch.einsum("bsi,bi->bs", wc, c) + bc
    rad = torch.einsum("bsi,bi->bs", wc.abs(), r)
    if mode == "crown_ibp":
      robust = crown_ibp_bound(x_c, x_r, pre, l1, u1, wc, bc, mid, rad)
    else:
      robust = F.cross_entropy(rad - mid, y)  # CE of the worst-case logits -(mid - rad)
    return 0.5 * clean + 0.5 * robust

  return loss_fn, nn.ModuleList([convs, bns, fc1, fc2])


def torch_step(mode: str, batch: int, eps: float):
  """(one-step callable, torch version, threads) for the equivalent PyTorch step, or None."""
  try:
    import torch
    import torch.nn as nn
  except ImportError:
    return None
  loss_fn, net = torch_loss(mode, eps)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
  x = torch.rand(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))

  def step():
    opt.zero_grad()
    loss = loss_fn(x, y)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), 8.0)
    opt.step()

  step()
  return step, torch.__version__, torch.get_num_threads()


def check(mode: str, batch: int, eps: float) -> str:
  """Both frameworks' losses on jaxprune's initial weights and the same batch, as text.

  Also at eps / 100: at the benchmark's eps the untrained net's IBP term dominates
  CROWN-IBP's loss, at the smaller eps the CROWN term shows.
  """
  import torch
  out = []
  for e_check in (eps, eps / 100):
    ctx, state, _, x, y, e, kappa = jax_setup(mode, batch, e_check)
    loss, _ = jax_loss(mode)(ctx, state.params, state.batch_stats, state.masks, (x, y), e,
                             kappa, jax.random.PRNGKey(0))
    loss_fn, _ = torch_loss(mode, e_check, state.params)
    with torch.no_grad():
      ref = loss_fn(torch.tensor(np.asarray(x)).permute(0, 3, 1, 2),
                    torch.tensor(np.asarray(y)).long()).item()
    out.append(f"{mode} (eps {e_check:.3g}): jaxprune loss {float(loss):.6g}, "
               f"PyTorch loss {ref:.6g}, relative difference {abs(float(loss) - ref) / abs(ref):.1e}")
  return "\n".join(out)


def timed(fn, steps: int, clock=time.perf_counter) -> float:
  t0 = clock()
  for _ in range(steps):
    fn()
  return clock() - t0


def fresh_process_rate(framework: str, mode: str, a) -> tuple[float, str]:
  """(img/s, label) of `a.steps` steps of one framework, run in a new process of this script."""
  cmd = [sys.executable, os.path.abspath(__file__), "--only", framework, "--modes", mode,
         "--batch", str(a.batch), "--steps", str(a.steps), "--eps", repr(a.eps)]
  out = subprocess.run(cmd + (["--cpu-time"] if a.cpu_time else []), capture_output=True,
                       text=True, check=True).stdout
  _, rate, label = [l for l in out.splitlines() if l.startswith("RESULT ")][-1].split(" ", 2)
  return float(rate), label


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--eps", type=float, default=2 / 255)
  p.add_argument("--modes", default="standard,ibp,crown_ibp")
  p.add_argument("--repeats", type=int, default=3,
                 help="rounds of `steps` JAX steps then `steps` PyTorch steps; medians reported")
  p.add_argument("--processes", action="store_true",
                 help="run every round of each framework in a fresh process, as users run them "
                      "(in one process, alternating frameworks slows both)")
  p.add_argument("--only", choices=("jax", "torch"), help=argparse.SUPPRESS)
  p.add_argument("--cpu-time", action="store_true",
                 help="time by this process's CPU time instead of wall time (for a shared machine "
                      "with `taskset -c 0`, one thread each; spinning threads inflate it otherwise)")
  p.add_argument("--check", action="store_true",
                 help="print both frameworks' losses on the same weights and batch first")
  a = p.parse_args()
  clock = time.process_time if a.cpu_time else time.perf_counter
  if a.only == "jax":
    rate = a.batch * a.steps / timed(jax_step(a.modes, a.batch, a.eps), a.steps, clock)
    print(f"RESULT {rate} jax {jax.__version__}")
    return
  if a.only == "torch":
    t = torch_step(a.modes, a.batch, a.eps)
    rate = float("nan") if t is None else a.batch * a.steps / timed(t[0], a.steps, clock)
    print(f"RESULT {rate} " + ("-" if t is None else f"torch {t[1]}, {t[2]} threads"))
    return
  print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {len(os.sched_getaffinity(0))} usable cores, "
        f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, "
        f"clock={'cpu' if a.cpu_time else 'wall'}, "
        f"{'a fresh process per round' if a.processes else 'one process'}")
  if a.check:
    for mode in a.modes.split(","):
      print(check(mode, a.batch, a.eps))
  print("| mode | jaxprune img/s | PyTorch img/s | ratio |\n|---|---|---|---|")
  for mode in a.modes.split(","):
    # Alternating rounds, so that both frameworks see the same load on a shared machine.
    if a.processes:
      jax_rate = lambda: fresh_process_rate("jax", mode, a)[0]
      torch_rate = lambda: fresh_process_rate("torch", mode, a)
    else:
      jstep, t = jax_step(mode, a.batch, a.eps), torch_step(mode, a.batch, a.eps)
      jax_rate = lambda: a.batch * a.steps / timed(jstep, a.steps, clock)
      torch_rate = lambda: (float("nan"), "-") if t is None else (
          a.batch * a.steps / timed(t[0], a.steps, clock), f"torch {t[1]}, {t[2]} threads")
    js, ts = [], []
    for _ in range(a.repeats):
      js.append(jax_rate())
      rate, label = torch_rate()
      ts.append(rate)
    j = float(np.median(js))
    if np.isnan(ts).any():
      print(f"| {mode} | {j:.1f} | (torch not installed) | - |")
    else:
      ratios = np.array(js) / np.array(ts)
      print(f"| {mode} | {j:.1f} | {np.median(ts):.1f} ({label}) | "
            f"{np.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)}) |")


if __name__ == "__main__":
  main()
