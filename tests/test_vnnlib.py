"""VNNLIB reading and writing: boxes, disjunctions of conjunctions, comments, numbers."""
import csv
import glob
import os
import re

import numpy as np
import pytest

from jaxprune.interop import vnnlib

VNNCOMP = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vnncomp2021")

HEADER = """; a comment (with parentheses) and ; more
(declare-const X_0 Real)
(declare-const X_1 Real)  ; trailing comment
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
"""


def assert_cases_equal(got, want):
  assert len(got) == len(want)
  for g, (lo, hi, disjuncts) in zip(got, want):
    np.testing.assert_array_equal(g.lower, lo)
    np.testing.assert_array_equal(g.upper, hi)
    assert len(g.disjuncts) == len(disjuncts)
    for (C, d), (C2, d2) in zip(g.disjuncts, disjuncts):
      np.testing.assert_array_equal(C, np.reshape(C2, np.shape(C)))
      np.testing.assert_array_equal(d, d2)


def test_box_and_single_conjunction():
  """Top-level asserts conjoin: one disjunct with every output row (ACAS Xu's test_prop form)."""
  cases = vnnlib.parse(HEADER + """
(assert (<= X_0 1.5e-1))
(assert (>= X_0 -2E-2))
(assert (<= X_1 3))(assert (>= X_1 -3.))
(assert (<= Y_0 Y_1))
(assert (>= Y_2 -1e+2))
""")
  assert_cases_equal(cases, [([-0.02, -3.0], [0.15, 3.0],
                              [([[1, -1, 0], [0, 0, -1]], [0.0, 100.0])])])


def test_disjunction_of_conjunctions_and_linear_terms():
  cases = vnnlib.parse(HEADER + """
(assert (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1)))
(assert (or
    (and (>= Y_0 Y_2) (<= Y_1 0.5))
    (and (<= (+ (* 2 Y_0) (- Y_1) (* Y_2 -0.5)) (- 3)))
    (> (- Y_2 Y_1 1) 0)
    (and (= Y_0 1))
))
""")
  assert_cases_equal(cases, [([0, 0], [1, 1], [
      ([[-1, 0, 1], [0, 1, 0]], [0.0, 0.5]),
      ([[2, -1, -0.5]], [-3.0]),
      ([[0, 1, -1]], [-1.0]),
      ([[1, 0, 0], [-1, 0, 0]], [1.0, -1.0])])])


def test_several_boxes():
  """VNN-COMP 2021's form: each disjunct carries its own box; disjuncts sharing one are grouped."""
  cases = vnnlib.parse(HEADER + """
(assert (or
  (and (>= X_0 -1) (<= X_0 0) (>= X_1 0) (<= X_1 1) (>= Y_0 100))
  (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_1 Y_0))
  (and (>= X_0 -1) (<= X_0 0) (>= X_1 0) (<= X_1 1) (<= Y_2 0))
  (and (>= X_0 2) (<= X_0 1) (>= X_1 0) (<= X_1 1) (<= Y_2 0))
))
""")
  assert_cases_equal(cases, [
      ([-1, 0], [0, 1], [([[-1, 0, 0]], [-100.0]), ([[0, 0, 1]], [0.0])]),
      ([0, 0], [1, 1], [([[1, -1, 0]], [0.0])])])  # the empty box [2, 1] is dropped


@pytest.mark.parametrize("text, match", [
    ("(assert (<= X_0 Y_0))", "mixing inputs and outputs"),
    ("(assert (<= (+ X_0 X_1) 1))", "one X_i each"),
    ("(assert (<= X_0 1))", "X_0 needs a finite"),
    ("(assert (<= X_7 1))", "undeclared variable"),
    ("(assert (<= (* Y_0 Y_1) 1))", "nonlinear"),
    ("(assert (not (<= Y_0 1)))", "unsupported formula"),
    ("(assert (<= Y_0 1)", "unbalanced"),
])
def test_errors(text, match):
  with pytest.raises(vnnlib.VnnlibError, match=match):
    vnnlib.parse(HEADER + text)


def test_write_read_round_trip(tmp_path):
  """The robustness property of a sample, and general rows, read back exactly."""
  rng = np.random.RandomState(0)
  x = rng.rand(12).astype(np.float32)
  lower, upper = np.clip(x - 1e-3, 0, 1), np.clip(x + 1e-3, 0, 1)
  disjuncts = vnnlib.robustness_disjuncts(3, 5)
  path = tmp_path / "robust.vnnlib"
  vnnlib.write(path, lower, upper, disjuncts, comment="robustness of sample 0\nlabel 3")
  text = path.read_text()
  assert text.startswith("; robustness of sample 0\n; label 3\n")
  assert "(and (>= Y_0 Y_3))" in text and not re.search(r"\d[eE][-+]?\d", text)
  (case,) = vnnlib.read(path)
  assert_cases_equal([case], [(lower.astype(np.float64), upper.astype(np.float64), disjuncts)])
  C, d = vnnlib.single_row_spec(case.disjuncts)
  eye = np.eye(5)
  np.testing.assert_array_equal(C, np.stack([eye[3] - eye[j] for j in (0, 1, 2, 4)]))
  np.testing.assert_array_equal(d, np.zeros(4))

  general = [(rng.randn(2, 3) * 1e-7, rng.randn(2) * 1e5), (np.array([[0.0, -1, 0]]), [2.5]),
             (np.zeros((0, 3)), np.zeros(0))]
  vnnlib.write(path, [-1e-9, 0.5], [1e-9, 2e10], general)
  assert_cases_equal(vnnlib.read(path), [([-1e-9, 0.5], [1e-9, 2e10], general)])
  with pytest.raises(vnnlib.VnnlibError, match="exactly one row"):
    vnnlib.single_row_spec(general)


def test_outward_float32():
  lower, upper = np.array([0.1, -0.3, 0.5]), np.array([0.2, 1 / 3, 0.5])
  lo, hi = vnnlib.outward_float32(lower, upper)
  assert lo.dtype == hi.dtype == np.float32
  assert np.all(lo.astype(np.float64) <= lower) and np.all(hi.astype(np.float64) >= upper)
  assert np.all(np.nextafter(lo, np.float32(np.inf)) > lower)  # one ulp at most
  assert lo[2] == hi[2] == 0.5  # exact values stay


@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir(VNNCOMP), reason="needs ../shared/data/vnncomp2021")
def test_vnncomp2021_properties():
  """Every property parses, with a bounded box per case; sizes follow the instances' nets."""
  paths = sorted(glob.glob(os.path.join(VNNCOMP, "*", "*.vnnlib")))
  assert len(paths) == 34  # 30 mnistfc, 4 test
  parsed = {os.path.relpath(p, VNNCOMP): vnnlib.read(p) for p in paths}
  for name, cases in parsed.items():
    assert cases, name
    for c in cases:
      assert np.all(c.lower <= c.upper) and c.disjuncts, name
  for c in parsed["mnistfc/prop_0_0.03.vnnlib"]:
    assert c.lower.shape == (784,) and np.all(c.upper - c.lower <= 0.06 + 1e-6)
    # Label 8: Y_j >= Y_8 for some j, as we write robustness.
    assert_cases_equal([c], [(c.lower, c.upper, vnnlib.robustness_disjuncts(8, 10))])
  (prop,) = parsed["test/test_prop.vnnlib"]
  assert prop.lower.shape == (5,) and len(prop.disjuncts) == 1
  assert prop.disjuncts[0][0].shape == (4, 5)  # CoC minimal: four rows, one conjunction
  for rows in csv.reader(open(os.path.join(VNNCOMP, "mnistfc", "mnistfc_instances.csv"))):
    assert rows[1] in {os.path.basename(p) for p in paths}
