"""General properties (VNNLIB's boxes and unions of polytopes) and the VNN-COMP runner.

Every verdict is checked against an exact MILP (HiGHS) of the same network:
"unsat" only where no disjunct is reachable, "sat" only with a counterexample
that is inside the box and unsafe by a plain forward pass and by onnxruntime.
"""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.bounds import Net, Node, forward
from jaxprune.interop import onnx as jonnx
from jaxprune.interop import vnnlib
from jaxprune.verify import milp, verify_property, vnncomp

REPO = Path(__file__).resolve().parents[1]
TEST = REPO.parent / "shared" / "data" / "vnncomp2021" / "test"
OUT = 4


def dense(name, inp, rng, n_in, n_out, scale=1.0):
  return Node(op="dense", name=name, inputs=(inp,),
              w=jnp.asarray(rng.normal(size=(n_in, n_out)) * scale / math.sqrt(n_in), jnp.float32),
              b=jnp.asarray(0.3 * rng.normal(size=n_out), jnp.float32))


def mlp(rng, n_in=3, width=12):
  return Net(nodes=(dense("d1", "input", rng, n_in, width, 4.0),
                    Node(op="relu", name="r1", inputs=("d1",)), dense("d2", "r1", rng, width, width),
                    Node(op="relu", name="r2", inputs=("d2",)), dense("d3", "r2", rng, width, OUT)))


def random_property(rng, net, n_in):
  """A box and 1-3 disjuncts of 1-3 rows, offsets near the outputs at the centre (mixed verdicts)."""
  centre = rng.uniform(-1, 1, n_in)
  radius = rng.uniform(0.05, 0.5)
  lo, hi = centre - radius, centre + radius
  y0 = np.asarray(forward(net, jnp.asarray(centre[None], jnp.float32)), np.float64)[0]
  disjuncts = []
  for _ in range(rng.integers(1, 4)):
    C = rng.normal(size=(rng.integers(1, 4), OUT))
    disjuncts.append((C, C @ y0 - rng.uniform(-0.5, 1.5, len(C))))
  return lo, hi, disjuncts


def exact(net, lo, hi, disjuncts) -> float:
  """min over disjuncts of min_x max_rows (C f(x) - d): <= 0 iff the property is violated."""
  return min(milp.minimum(net, lo, hi, C, d=d).value for C, d in disjuncts)


def assert_counterexample(net, x, lo, hi, disjuncts):
  assert x.dtype == np.float32 and np.all((x >= lo) & (x <= hi))
  y = np.asarray(forward(net, jnp.asarray(x[None])), np.float64)[0]
  assert vnncomp.unsafe(y, disjuncts)


@pytest.mark.parametrize("input_split,restarts,n", [(True, 16, 20), (True, 0, 20), (False, 0, 20)])
def test_properties_agree_with_milp(input_split, restarts, n):
  """Input splits and ReLU splits (one row at a time), with and without the attack."""
  rng = np.random.default_rng(int(input_split) + restarts)
  counts = {"verified": 0, "falsified": 0, "unknown": 0}
  for _ in range(n):
    net = mlp(rng)
    lo, hi, disjuncts = random_property(rng, net, 3)
    truth = exact(net, lo, hi, disjuncts)
    if abs(truth) < 1e-3:
      continue  # a tie within the solvers' tolerances decides nothing
    r = verify_property(net, lo, hi, disjuncts, timeout=60.0, restarts=restarts,
                        input_split=input_split, batch=8,
                        **({} if input_split else {"max_domains": 3000}))
    counts[r.status] = counts.get(r.status, 0) + 1
    if r.status == "verified":
      assert truth > 0, (truth, r)
      assert r.lower_bound <= truth + 1e-4  # the bound is a lower bound of the exact minimum
    elif r.status == "falsified":
      assert truth < 0
      assert_counterexample(net, r.counterexample, lo, hi, disjuncts)
    else:  # ReLU splits may leave a multi-row conjunction undecided (within 3000 domains here)
      assert not input_split and truth > 0 and any(len(d) > 1 for _, d in disjuncts), r
  assert counts["verified"] >= 4 and counts["falsified"] >= 4, counts
  assert counts["unknown"] <= 4, counts


def test_empty_conjunction_and_constant_disjuncts():
  net = mlp(np.random.default_rng(0))
  lo, hi = -np.ones(3), np.ones(3)
  r = verify_property(net, lo, hi, [(np.zeros((0, OUT)), np.zeros(0))])
  assert r.status == "falsified"  # no rows: every input is unsafe
  assert_counterexample(net, r.counterexample, lo, hi, [(np.zeros((0, OUT)), np.zeros(0))])
  assert verify_property(net, lo, hi, []).status == "verified"


# --- files and the runner -------------------------------------------------------------

def write_instance(folder: Path, name: str, net: Net, in_shape, cases, mean=None, std=None):
  """An ONNX net (pixel input; normalisation inside when given) and a VNNLIB file of cases."""
  (folder / f"{name}.onnx").write_bytes(
      jonnx.to_model(net, in_shape, mean=mean, std=std).SerializeToString())
  text = "".join(vnnlib.to_text(lo, hi, dis, num_outputs=OUT) for lo, hi, dis in cases[:1])
  if len(cases) > 1:  # several boxes: VNN-COMP 2021's (or (and box_1 out_1) (and box_2 out_2))
    text = _multi_box(cases, len(np.ravel(cases[0][0])))
  (folder / f"{name}.vnnlib").write_text(text)
  return f"{name}.onnx", f"{name}.vnnlib"


def _multi_box(cases, n_in):
  decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
  decl += "".join(f"(declare-const Y_{j} Real)\n" for j in range(OUT))
  terms = []
  for lo, hi, dis in cases:
    (C, d), = dis
    box = " ".join(f"(>= X_{i} {float(a)!r}) (<= X_{i} {float(b)!r})" for i, (a, b) in enumerate(zip(lo, hi)))
    rows = " ".join("(<= (+ " + " ".join(f"(* {float(c)!r} Y_{j})" for j, c in enumerate(r)) +
                    f") {float(b)!r})" for r, b in zip(C, d))
    terms.append(f"(and {box} {rows})")
  return decl + "(assert (or " + " ".join(terms) + "))\n"


def conv_net(rng):
  w1 = rng.normal(size=(3, 3, 2, 3)) * 2.0
  return Net(nodes=(
      Node(op="conv", name="c1", inputs=("input",), stride=2, padding=1, kernel=3,
           w=jnp.asarray(w1, jnp.float32), b=jnp.asarray(0.1 * rng.normal(size=3), jnp.float32)),
      Node(op="relu", name="r1", inputs=("c1",)),
      Node(op="flatten", name="f", inputs=("r1",)),
      dense("d1", "f", rng, 48, 10), Node(op="relu", name="r2", inputs=("d1",)),
      dense("d2", "r2", rng, 10, OUT)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """Five generated instances with their exact verdicts (MILP), as a VNN-COMP folder."""
  d = tmp_path_factory.mktemp("bench")
  rng = np.random.default_rng(7)
  rows, truth = [], {}

  def add(name, net, in_shape, cases, mean=None, std=None):
    o, v = write_instance(d, name, net, in_shape, cases, mean, std)
    m = jonnx.load(str(d / o))
    value = min(exact(m.net, m.to_input(lo[None]), m.to_input(hi[None]), dis)
                for lo, hi, dis in vnnlib.read(str(d / v)))
    assert abs(value) > 1e-3, (name, value)
    rows.append(f"{o},{v},30")
    truth[(o, v)] = "sat" if value <= 0 else "unsat"

  # ACAS-like: "output 0 is minimal" is unsafe (a conjunction of 3 rows) on 2 inputs.
  net = mlp(rng, 2, 16)
  eye = np.eye(OUT)
  minimal0 = [(np.stack([eye[0] - eye[j] for j in (1, 2, 3)]), np.zeros(3))]
  for r, name in ((0.05, "acas_small"), (1.0, "acas_large")):
    add(name, net, (2,), [(np.full(2, 0.2) - r, np.full(2, 0.2) + r, minimal0)])
  # Robustness of a normalised conv net on an NCHW image in [0, 1], some eps of each verdict.
  cnet = conv_net(rng)
  x = rng.uniform(0.2, 0.8, size=(8, 8, 2))
  mean, std = np.array([0.4, 0.5]), np.array([0.3, 0.2])
  logits = np.asarray(forward(cnet, jnp.asarray(((x - mean) / std)[None], jnp.float32)))[0]
  label = int(np.argmax(logits))
  for eps, name in ((0.002, "conv_tight"), (0.2, "conv_wide")):
    lo, hi = np.clip(x - eps, 0, 1).transpose(2, 0, 1), np.clip(x + eps, 0, 1).transpose(2, 0, 1)
    add(name, cnet, (8, 8, 2), [(lo, hi, vnnlib.robustness_disjuncts(label, OUT))], mean, std)
  # Two boxes, each with one linear row.
  n2 = mlp(rng, 3, 8)
  cases = []
  for c in (-0.5, 0.5):
    lo, hi = np.full(3, c - 0.1), np.full(3, c + 0.1)
    y0 = np.asarray(forward(n2, jnp.asarray(np.full((1, 3), c), jnp.float32)), np.float64)[0]
    cases.append((lo, hi, [(eye[1:2], np.array([y0[1] - 2.0]))]))
  add("two_boxes", n2, (3,), cases)
  (d / "instances.csv").write_text("\n".join(rows) + "\n")
  return d, truth


def run_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "jaxprune.experiments.verify", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def test_runner_matches_the_exact_verdicts_and_resumes(folder, tmp_path):
  d, truth = folder
  assert set(truth.values()) == {"sat", "unsat"}
  out = tmp_path / "results.csv"
  res = run_cli(f"--instances={d / 'instances.csv'}", f"--out={out}", "--timeout=60")
  assert res.returncode == 0, res.stderr[-3000:]
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert {(r["onnx"], r["vnnlib"]): r["verdict"] for r in rows} == truth
  for r in rows:  # a sat's result file holds a re-checked counterexample
    text = (tmp_path / "results_results" /
            f"{r['onnx'][:-5]}__{r['vnnlib'][:-7]}.txt").read_text()
    assert text.split("\n")[0] == r["verdict"]
    if r["verdict"] == "sat":
      assert "re-checked by onnxruntime" in r["note"]
      check_sat_text(d / r["onnx"], d / r["vnnlib"], text)
  before = out.read_text()
  res = run_cli(f"--instances={d / 'instances.csv'}", f"--out={out}")
  assert res.returncode == 0 and out.read_text() == before  # nothing left to do


def check_sat_text(onnx_path, vnnlib_path, text):
  """The counterexample of a result file is in a box and its outputs, by onnxruntime, unsafe."""
  values = {}
  for tok in text.replace("(", " ").replace(")", " ").split()[1:]:
    if tok[:2] in ("X_", "Y_"):
      name = tok
    else:
      values[name] = float(tok)
  m = jonnx.load(str(onnx_path))
  x = np.array([values[f"X_{i}"] for i in range(math.prod(m.onnx_shape))])
  y = vnncomp.onnx_outputs(str(onnx_path), m, x)
  np.testing.assert_allclose(y, [values[f"Y_{j}"] for j in range(len(y))], rtol=0, atol=0)
  assert any(np.all((x >= c.lower) & (x <= c.upper)) and vnncomp.unsafe(y, c.disjuncts)
             for c in vnnlib.read(str(vnnlib_path)))


def test_single_instance_and_bad_input(folder, tmp_path):
  d, truth = folder
  o, v = next(k for k, t in truth.items() if t == "sat")
  res = run_cli(f"--onnx={d / o}", f"--vnnlib={d / v}", f"--result={tmp_path / 'r.txt'}")
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout == (tmp_path / "r.txt").read_text() and res.stdout.startswith("sat\n")
  check_sat_text(d / o, d / v, res.stdout)
  # MaxPool is refused by name; sizes must agree; files must exist. Nothing is written.
  from onnx import TensorProto, helper
  g = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])], "g",
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])])
  (tmp_path / "maxpool.onnx").write_bytes(helper.make_model(g).SerializeToString())
  for args, message in (([f"--onnx={tmp_path / 'maxpool.onnx'}", f"--vnnlib={d / v}"], "MaxPool"),
                        ([f"--onnx={d / 'acas_small.onnx'}", f"--vnnlib={d / 'conv_wide.vnnlib'}"],
                         "inputs X_i"),
                        ([f"--onnx={d / 'nope.onnx'}", f"--vnnlib={d / v}"], "no such file"),
                        ([f"--instances={d / 'instances.csv'}"], "needs --out"),
                        ([f"--onnx={d / o}"], "--vnnlib is required")):
    extra = [f"--result={tmp_path / 'bad.txt'}"] if args[0].startswith("--onnx") else []
    res = run_cli(*args, *extra)
    assert res.returncode == 2 and message in res.stderr, (args, res.stderr[-2000:])
    assert len(res.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "bad.txt").exists()


@pytest.mark.integration
@pytest.mark.skipif(not TEST.is_dir(), reason="needs ../shared/data/vnncomp2021")
def test_vnncomp2021_test_instances(tmp_path):
  """The competition's five sanity instances: test_sat is sat, the other four unsat."""
  rows = vnncomp.run_instances(str(TEST / "test_instances.csv"), str(tmp_path / "r.csv"),
                               progress=False)
  got = {r["onnx"]: r["verdict"] for r in rows}
  assert got == {"test_nano.onnx": "unsat", "test_tiny.onnx": "unsat", "test_small.onnx": "unsat",
                 "test_sat.onnx": "sat", "test_unsat.onnx": "unsat"}
  text = (tmp_path / "r_results" / "test_sat__test_prop.txt").read_text()
  check_sat_text(TEST / "test_sat.onnx", TEST / "test_prop.vnnlib", text)
