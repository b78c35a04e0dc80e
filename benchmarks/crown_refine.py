"""CROWN with every intermediate neuron refined vs only the unstable ones, on a trained network.

    python benchmarks/crown_refine.py --run runs/fm_imp_nrs [--rounds 0,3] [--inputs 20]

Loads the last checkpoint of each pruning round of a `--pruner` run directory
(made with its config.json), folds BN with the running statistics and bounds
the margins of the first `--inputs` test images at the run's eps with full
CROWN, `refine="all"` vs `refine="unstable"` (CROWN only for the neurons that
interval propagation from the earlier bounds leaves unstable). Reports the
wall time of one batched call after compiling (both modes in the same
process), the verified counts, the largest difference of the margin lower
bounds, and the fraction of (image, intermediate neuron) pairs refined.
"""
from __future__ import annotations

import argparse
import time

from jaxprune import runtime

runtime.configure()  # first: XLA reads its flags when JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune import bounds, data, runs  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", required=True)
  parser.add_argument("--rounds", default="0,3")
  parser.add_argument("--inputs", type=int, default=20)
  parser.add_argument("--data-dir", default=None)
  args = parser.parse_args()
  config = runs.load_config(args.run)
  ds = data.load(config.dataset, data_dir=args.data_dir or config.data_dir or None)
  x, y = data.first_n_test(ds, args.inputs)
  xl, xu = bounds.input_box(jnp.asarray(x), config.train.eps, ds.mean, ds.std)
  C = bounds.margin_matrix(jnp.asarray(y), ds.num_classes)
  print(f"# {args.run}, {args.inputs} test images, eps {config.train.eps}, {jax.devices()[0]}")
  for r in [int(v) for v in args.rounds.split(",")]:
    model, variables, _, _ = runs.restore(args.run, r, "last")  # masks applied
    net = bounds.from_model(model, variables, bn="eval")
    out = {}
    for refine in ("all", "unstable"):
      f = jax.jit(lambda xl, xu, refine=refine: bounds.compute_bounds(
          net, xl, xu, C=C, method="crown", return_relu_bounds=True, bound_upper=False,
          refine=refine))
      t0 = time.perf_counter()
      compiled = f.lower(xl, xu).compile()
      compile_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      lo, _, rb = jax.block_until_ready(compiled(xl, xu))
      out[refine] = (time.perf_counter() - t0, compile_s, np.asarray(lo), rb)
    # Neurons refined: interval-unstable for some image, given the bounds of the ReLUs before.
    rb, names = out["unstable"][3], [n.name for n in net.relu_nodes()]
    refined = total = 0
    for i, name in enumerate(names):
      l, u = bounds.ibp(net, xl, xu, relu_bounds={n: rb[n] for n in names[:i]})[2][name]
      refined += int(((l < 0) & (u > 0)).sum())
      total += int(l.size)
    (ta, ca, la, _), (tu, cu, lu, _) = out["all"], out["unstable"]
    verified = lambda lo: int(np.asarray(bounds.verified_from_margins(lo, y)).sum())
    print(f"round {r}: all {ta:.1f} s (compile {ca:.0f} s), unstable {tu:.1f} s "
          f"(compile {cu:.0f} s), speedup {ta / tu:.1f}x; verified {verified(la)} vs "
          f"{verified(lu)} of {len(y)}; max |lower diff| {np.abs(la - lu).max():.2e}, "
          f"unstable-mode tighter by up to {np.max(lu - la):.2e}; {refined / total:.1%} of the "
          f"intermediate neurons (over all images) refined")


if __name__ == "__main__":
  main()
