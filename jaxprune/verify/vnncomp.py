"""VNN-COMP instances: an ONNX network and a VNNLIB property, verdicts in the competition's format.

    inst = vnncomp.verify_instance("net.onnx", "prop.vnnlib", timeout=60)
    print(inst.verdict)        # "unsat" (holds) | "sat" | "timeout" | "unknown"
    open("out.txt", "w").write(inst.text)   # "sat" is followed by ((X_0 v) ... (Y_0 v))

    vnncomp.run_instances("instances.csv", "results.csv")   # a benchmark folder, resumable

A VNNLIB file may hold several input boxes (cases); the property holds when
every case is verified (`verify.verify_property`, one deadline for all). A
`sat` is only reported after the counterexample, written back in the ONNX
input's layout, is re-checked: inside the box as written (float64) and in the
unsafe set by onnxruntime's forward pass of the ONNX file itself (our own
float32 forward pass when onnxruntime is not installed); a counterexample that
fails the re-check makes the verdict `unknown`, never `sat`.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import time
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jaxprune.bounds.crown import node_shapes
from jaxprune.interop import onnx as jonnx
from jaxprune.interop import vnnlib
from jaxprune.utils import atomic_open, atomic_write_text
from jaxprune.verify import Result, verify_property

VERDICTS = {"verified": "unsat", "falsified": "sat", "timeout": "timeout", "unknown": "unknown"}
COLUMNS = ("onnx", "vnnlib", "verdict", "seconds", "domains", "timeout", "note")


@dataclasses.dataclass
class Instance:
  verdict: str             # "unsat" | "sat" | "timeout" | "unknown"
  seconds: float           # loading included, as the competition measures
  domains: int = 0
  x: Optional[np.ndarray] = None   # sat: the counterexample, flat as VNNLIB's X_i
  y: Optional[np.ndarray] = None   # sat: the network's outputs there (the re-check's)
  note: str = ""

  @property
  def text(self) -> str:
    """The competition's result file."""
    if self.verdict != "sat":
      return self.verdict + "\n"
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.x)]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.y)]
    return "sat\n(" + "\n ".join(pairs) + ")\n"


def onnx_outputs(path: str, model: jonnx.OnnxNet, x_flat: np.ndarray) -> Optional[np.ndarray]:
  """Outputs (flat, float64) of the ONNX file at one flat input, by onnxruntime (None without it)."""
  try:
    import onnxruntime as ort
  except ImportError:
    return None
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  inp = session.get_inputs()[0]
  shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
  feed = np.asarray(x_flat, np.float32).reshape(shape)
  return np.asarray(session.run(None, {inp.name: feed})[0], np.float64).reshape(-1)


def unsafe(y: np.ndarray, disjuncts) -> bool:
  """Whether outputs y lie in some disjunct's polytope {C y <= d}."""
  return any(np.all(np.asarray(C) @ y <= np.ravel(d)) for C, d in disjuncts)


def verify_instance(onnx_path: str, vnnlib_path: str, timeout: float = 60.0,
                    **options) -> Instance:
  """The verdict of one instance within `timeout` seconds (loading included).

  `options` go to `verify.verify_property` (method, tol, restarts, batch, ...).
  Raises `interop.onnx.UnsupportedOnnx` / `interop.vnnlib.VnnlibError` for
  files it cannot represent exactly, ValueError when their sizes disagree.
  """
  start = time.monotonic()
  deadline = start + timeout
  model = jonnx.load(onnx_path)
  cases = vnnlib.read(vnnlib_path)
  n_in = math.prod(model.onnx_shape)
  n_out = math.prod(node_shapes(model.net, jnp.zeros((1,) + model.input_shape))[model.net.output])
  for case in cases:
    if case.lower.size != n_in:
      raise ValueError(f"{vnnlib_path} has {case.lower.size} inputs X_i; "
                       f"{onnx_path} takes {n_in}")
    for C, _ in case.disjuncts:
      if C.shape[1] > n_out:
        raise ValueError(f"{vnnlib_path} names {C.shape[1]} outputs Y_j; "
                         f"{onnx_path} has {n_out}")
  domains, status = 0, "verified"
  for case in cases:
    disjuncts = [(np.pad(C, ((0, 0), (0, n_out - C.shape[1]))), d) for C, d in case.disjuncts]
    lower, upper = (np.asarray(model.to_input(v[None]))[0] for v in (case.lower, case.upper))
    r: Result = verify_property(model.net, lower, upper, disjuncts, deadline=deadline, **options)
    domains += r.domains
    if r.status == "falsified":
      return _recheck(onnx_path, model, case, disjuncts, r, domains, start)
    if r.status == "timeout":
      return Instance("timeout", time.monotonic() - start, domains)
    if r.status == "unknown":
      status = "unknown"
  return Instance(VERDICTS[status], time.monotonic() - start, domains)


def _recheck(onnx_path, model, case, disjuncts, r: Result, domains: int, start: float):
  """`sat` if the counterexample is in the box and unsafe by the ONNX file's own forward pass."""
  x = np.asarray(model.from_input(r.counterexample[None]), np.float64)[0]
  inside = bool(np.all((x >= case.lower) & (x <= case.upper)))
  y = onnx_outputs(onnx_path, model, x)
  checker = "onnxruntime"
  if y is None:
    from jaxprune.bounds import forward
    y, checker = np.asarray(forward(model.net, r.counterexample[None]), np.float64)[0], "ours"
  seconds = time.monotonic() - start
  if inside and unsafe(y, disjuncts):
    return Instance("sat", seconds, domains, x, y, f"counterexample re-checked by {checker}")
  why = "outside the box" if not inside else f"not unsafe by {checker}'s forward pass"
  return Instance("unknown", seconds, domains, note=f"counterexample rejected: {why}")


# --- a benchmark folder ------------------------------------------------------------------

def read_instances(path: str) -> list[tuple[str, str, float]]:
  """(onnx path, vnnlib path, timeout) per line of a VNN-COMP instances.csv (paths relative to it)."""
  base = os.path.dirname(os.path.abspath(path))
  out = []
  with open(path) as f:
    for n, row in enumerate(csv.reader(f), 1):
      if not row or not "".join(row).strip():
        continue
      if len(row) != 3:
        raise ValueError(f"{path}:{n}: expected onnx,vnnlib,timeout, got {row}")
      try:
        timeout = float(row[2])
      except ValueError:
        raise ValueError(f"{path}:{n}: bad timeout {row[2]!r}") from None
      onnx_file, prop = (os.path.join(base, p.strip()) for p in row[:2])
      for p in (onnx_file, prop):
        if not os.path.isfile(p):
          raise ValueError(f"{path}:{n}: no such file {p}")
      out.append((onnx_file, prop, timeout))
  if not out:
    raise ValueError(f"{path}: no instances")
  return out


def _key(onnx_file: str, prop: str) -> tuple[str, str]:
  return os.path.basename(onnx_file), os.path.basename(prop)


def run_instances(instances_csv: str, out_csv: str, timeout: Optional[float] = None,
                  limit: Optional[int] = None, progress: bool = True, **options) -> list[dict]:
  """Runs a benchmark folder's instances; one CSV row each (`COLUMNS`), resumably.

  `timeout` overrides the file's per-instance timeouts; `limit` runs only the
  first instances. Each instance's competition result file goes to
  `<out_csv without .csv>_results/<onnx>__<vnnlib>.txt`. The CSV is rewritten
  atomically after every instance; started again, finished instances are
  skipped. Returns the rows.
  """
  from tqdm import tqdm
  every = read_instances(instances_csv)
  todo = every[:limit]
  rows = {}
  if os.path.exists(out_csv):
    with open(out_csv) as f:
      rows = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(f)}
  result_dir = os.path.splitext(out_csv)[0] + "_results"
  os.makedirs(result_dir, exist_ok=True)
  counts = collections.Counter(r["verdict"] for r in rows.values())
  bar = tqdm(todo, desc="instances", disable=not progress, dynamic_ncols=True)
  for onnx_file, prop, budget in bar:
    key = _key(onnx_file, prop)
    if key in rows:
      continue
    budget = budget if timeout is None else timeout
    inst = verify_instance(onnx_file, prop, budget, **options)
    stem = "__".join(os.path.splitext(k)[0] for k in key)
    atomic_write_text(os.path.join(result_dir, stem + ".txt"), inst.text)
    rows[key] = dict(zip(COLUMNS, (*key, inst.verdict, f"{inst.seconds:.3f}", inst.domains,
                                   budget, inst.note)))
    with atomic_open(out_csv) as f:
      w = csv.DictWriter(f, COLUMNS)
      w.writeheader()
      w.writerows(rows[_key(o, p)] for o, p, _ in every if _key(o, p) in rows)
    counts[inst.verdict] += 1
    bar.set_postfix(counts)
  return [rows[_key(o, p)] for o, p, _ in todo if _key(o, p) in rows]
