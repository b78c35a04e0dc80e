"""Sub-domains bounded per second by branch and bound's jitted `bound_domains`, per network.

    python benchmarks/bab_throughput.py [--nets mlp2,mlp4,fmnist_cnn,cifar_cnn,cnn7l]
        [--batches 8,32,128] [--seconds 5] [--verify]

The networks are the shapes of alpha-beta-CROWN's BaB benchmarks, built from
our own `Layer` graphs with random (initialisation) weights; BN folds from its
initial running statistics. For each, the root is bounded once (alpha-CROWN
with fixed intermediate bounds, as `verify` does), then `bound_domains` bounds
D children per call (random splits of unstable neurons, the parents' slopes as
warm starts) until `--seconds` pass, after one warm-up call (compilation
excluded). Throughput counts children, as alpha-beta-CROWN's "domains/s".
`--verify` also runs `verify(method="bab", restarts=0)` (no attack: the search
itself) on one input per net under a short timeout, and reports its status,
domains and the process's peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import time

from jaxprune import runtime

runtime.configure()  # first: XLA reads its flags when JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import bounds, models  # noqa: E402
from jaxprune.bounds.ir import fold_spec  # noqa: E402
from jaxprune.bounds.spec import margin_matrix  # noqa: E402
from jaxprune.models.spec import Layer, SpecNet  # noqa: E402
from jaxprune.verify import bab, boxes, margin_bounds, verify  # noqa: E402


def _mlp(*widths):
  layers = [Layer("flatten", "flatten")]
  for i, w in enumerate(widths):
    layers += [Layer("dense", f"fc{i}", features=w), Layer("relu", f"relu{i}")]
  return tuple(layers + [Layer("dense", "out", features=10)])


def _conv(i, c, k, s, p, bn):
  return [Layer("conv", f"conv{i}", features=c, kernel=k, stride=s, padding=p)] + (
      [Layer("bn", f"bn{i}")] if bn else []) + [Layer("relu", f"crelu{i}")]


# name: (layers, input shape (H, W, C), eps in pixel space)
NETS = {
    "mlp2": (_mlp(256, 256), (28, 28, 1), 0.01),
    "mlp4": (_mlp(256, 256, 256, 256), (28, 28, 1), 0.01),
    # Fashion-MNIST: Conv8-BN-ReLU, Conv16 stride 2-BN-ReLU, FC 3136-64-10.
    "fmnist_cnn": (tuple(_conv(1, 8, 3, 1, 1, True) + _conv(2, 16, 4, 2, 1, True)
                         + [Layer("flatten", "flatten"), Layer("dense", "fc1", features=64),
                            Layer("relu", "relu_fc1"), Layer("dense", "fc2", features=10)]),
                   (28, 28, 1), 0.01),
    # oval21 cifar_base_kw: Conv 8 4x4/2, Conv 16 4x4/2, FC 1024-100-10.
    "cifar_cnn": (tuple(_conv(1, 8, 4, 2, 1, False) + _conv(2, 16, 4, 2, 1, False)
                        + [Layer("flatten", "flatten"), Layer("dense", "fc1", features=100),
                           Layer("relu", "relu_fc1"), Layer("dense", "fc2", features=10)]),
                  (32, 32, 3), 2 / 255),
    # The repo's CNN-7L, Fashion-MNIST variant (1x28x28 input).
    "cnn7l": (models.create("cnn7l").layers, (28, 28, 1), 0.005),
}


def build(name: str, seed: int = 0):
  """(net, x (1, H, W, C) in [0, 1], label, eps) with random weights."""
  layers, shape, eps = NETS[name]
  model = SpecNet(layers=layers, num_classes=10)
  x = np.random.default_rng(seed).uniform(size=(1,) + shape).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(seed), jnp.asarray(x))
  net = bounds.from_model(model, variables)
  y = int(np.argmax(np.asarray(bounds.forward(net, jnp.asarray(x)))[0]))
  return net, x, y, eps


def setup(net, x, y, eps):
  """The folded margin net of the worst margin, the box, its root bounds and the layout."""
  lower, upper = (jnp.asarray(v[None]) for v in boxes.normalised_box(x[0], eps))
  C = jnp.asarray(margin_matrix(jnp.asarray([y]), 10)[0])
  lb, rb = margin_bounds(net, C, lower, upper)
  lb = np.asarray(lb)[0]
  j = int(np.argmin(np.where(np.arange(10) == y, np.inf, lb)))
  folded = fold_spec(net, C[j:j + 1])
  return folded, lower, upper, rb, bab.Layout.of(folded, lower.shape[1:]), float(lb[j])


def throughput(folded, lower, upper, rb, layout, batch, seconds, iterations, unroll=None,
               heuristic=bab.BaBSR, seed=0):
  """(children per second, seconds per call, seconds of the first call, unstable root neurons)."""
  rng = np.random.default_rng(seed)
  unstable = np.asarray(layout.flatten({r: (l < 0) & (u > 0) for r, (l, u) in rb.items()}))[0]
  idx = np.flatnonzero(unstable)
  splits = np.zeros((batch, layout.size), bab.SPLIT_DTYPE)
  for i in range(batch):  # a few splits each, as a search a few levels deep
    pick = rng.choice(idx, size=min(len(idx), 4), replace=False)
    splits[i, pick] = rng.choice([-1, 1], size=len(pick))
  alphas = np.repeat(bab.initial_slopes(layout, rb), batch, 0)
  betas = np.zeros_like(alphas)
  unroll = bab.unrolls(folded, layout) if unroll is None else unroll
  run = lambda: jax.block_until_ready(bab.bound_domains(
      folded, lower, upper, rb, splits, alphas, betas, jax.random.PRNGKey(0), layout=layout,
      heuristic=heuristic, iterations=iterations, unroll=unroll))
  start = time.perf_counter()
  run()  # compile
  first = time.perf_counter() - start
  calls, start = 0, time.perf_counter()
  while calls < 2 or time.perf_counter() - start < seconds:
    run()
    calls += 1
  per_call = (time.perf_counter() - start) / calls
  return batch / per_call, per_call, first, int(unstable.sum())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nets", default=",".join(NETS))
  parser.add_argument("--batches", default="8,32,128")
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--iterations", type=int, default=bab.ITERATIONS)
  parser.add_argument("--unroll", choices=("auto", "yes", "no"), default="auto",
                      help="beta-CROWN's steps unrolled (auto: as bab_row decides)")
  parser.add_argument("--branching", choices=tuple(bab.BRANCHING), default="babsr")
  parser.add_argument("--verify", action="store_true")
  parser.add_argument("--timeout", type=float, default=20.0)
  args = parser.parse_args()
  unroll = {"auto": None, "yes": True, "no": False}[args.unroll]
  print(f"{jax.devices()[0].platform} x{jax.device_count()}, iterations={args.iterations}, "
        f"unroll={args.unroll}, branching={args.branching}")
  print(f"{'net':11s} {'neurons':>7s} {'unstable':>8s} {'D':>4s} {'first s':>8s} {'ms/call':>9s} "
        f"{'domains/s':>10s}")
  for name in args.nets.split(","):
    net, x, y, eps = build(name)
    folded, lower, upper, rb, layout, _ = setup(net, x, y, eps)
    for d in (int(b) for b in args.batches.split(",")):
      rate, per_call, first, unstable = throughput(folded, lower, upper, rb, layout, d,
                                                   args.seconds, args.iterations, unroll,
                                                   bab.BRANCHING[args.branching])
      print(f"{name:11s} {layout.size:7d} {unstable:8d} {d:4d} {first:8.1f} {1e3 * per_call:9.1f} "
            f"{rate:10.1f}", flush=True)
    if args.verify:
      r = verify(net, x, [y], eps=eps, timeout=args.timeout, restarts=0,  # BaB itself
                 branching=args.branching)[0]
      rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
      print(f"{name:11s} verify: {r.status} domains={r.domains} depth={r.depth} "
            f"lb={r.lower_bound:+.4f} {r.seconds:.1f}s, peak RSS {rss:.2f} GiB", flush=True)


if __name__ == "__main__":
  main()
