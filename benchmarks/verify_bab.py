"""Complete verification on random MLPs: beta-CROWN BaB against the exact MILP (HiGHS).

    python benchmarks/verify_bab.py [--widths 4,16,16,3] [--instances 30] [--batch 8]

Each instance is a random ReLU MLP (first layer scaled so that decisions vary
inside [0, 1]^d), a random input, and eps drawn around PGD's robust radius
(0.6x to 1.15x), where the question is hardest. For each, BaB (no attack,
so the search decides both ways) and the MILP solve every margin; the script
reports agreement, statuses, domains, and median seconds after one warm-up
instance (compilation excluded).
"""
from __future__ import annotations

import argparse
import time

from jaxprune import runtime

runtime.configure()  # first: XLA reads its flags when JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxprune.bounds import Net, Node, attack, forward  # noqa: E402
from jaxprune.verify import boxes, milp, verify  # noqa: E402


def random_mlp(rng, widths):
  nodes, prev = [], "input"
  for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
    scale = 6.0 if i == 0 else 1.0
    w = rng.normal(size=(a, b)) * scale / np.sqrt(a)
    nodes.append(Node(op="dense", name=f"d{i}", inputs=(prev,), w=jnp.asarray(w, jnp.float32),
                      b=jnp.asarray(0.3 * rng.normal(size=b), jnp.float32)))
    prev = f"d{i}"
    if i < len(widths) - 2:
      nodes.append(Node(op="relu", name=f"r{i}", inputs=(prev,)))
      prev = f"r{i}"
  return Net(nodes=tuple(nodes))


def pgd_radius(net, x, y, seed):
  lo, hi = 0.0, 0.5
  for _ in range(8):
    mid = (lo + hi) / 2
    p_lo, p_hi = (jnp.asarray(v) for v in boxes.round32(*boxes.pixel_box(x[0], mid), outward=False))
    found = float(attack.pgd(net, p_lo, p_hi, y, 0.0, 1.0, jax.random.PRNGKey(seed))[1]) < 0
    lo, hi = (lo, mid) if found else (mid, hi)
  return hi


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", default="4,16,16,3")
  parser.add_argument("--instances", type=int, default=30)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--timeout", type=float, default=60.0)
  args = parser.parse_args()
  widths = tuple(int(w) for w in args.widths.split(","))
  k = widths[-1]
  rows, agree = [], 0
  for seed in range(args.instances + 1):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, widths)
    x = rng.uniform(0.3, 0.7, size=(1, widths[0])).astype(np.float32)
    y = int(np.argmax(np.asarray(forward(net, jnp.asarray(x)))[0]))
    eps = pgd_radius(net, x, y, seed) * rng.uniform(0.6, 1.15)
    r = verify(net, x, [y], eps=eps, restarts=0, timeout=args.timeout, batch=args.batch)[0]
    lo, hi = boxes.normalised_box(x[0], eps)
    C = np.eye(k)[y] - np.eye(k)
    start = time.monotonic()
    m = min(milp.minimum(net, lo, hi, C[j]).value for j in range(k) if j != y)
    t_milp = time.monotonic() - start
    if seed == 0:
      continue  # warm-up (compilation)
    ok = (r.status == "verified" and m > 0) or (r.status == "falsified" and m < 1e-5)
    agree += ok
    rows.append((r.status, r.domains, r.seconds, t_milp))
    print(f"{seed:3d} eps={eps:.4f} {r.status:9s} domains={r.domains:6d} depth={r.depth:3d} "
          f"bab={r.seconds:7.3f}s milp_min={m:+.4f} milp={t_milp:6.3f}s "
          f"{'ok' if ok else 'DISAGREE'}")
  status, domains, t_bab, t_milp = zip(*rows)
  print(f"widths {widths}: {agree}/{len(rows)} agree with the MILP; "
        + ", ".join(f"{s} {status.count(s)}" for s in sorted(set(status))))
  print(f"median seconds: BaB {np.median(t_bab):.3f} (max {max(t_bab):.3f}), "
        f"MILP {np.median(t_milp):.3f} (max {max(t_milp):.3f}); "
        f"domains: median {int(np.median(domains))}, max {max(domains)}; "
        f"{sum(domains) / max(sum(t_bab), 1e-9):.0f} domains/s overall")


if __name__ == "__main__":
  main()
