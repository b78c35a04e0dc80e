"""VNNLIB properties (VNN-COMP's input boxes and unsafe output sets): read and write.

    for lower, upper, disjuncts in vnnlib.read("prop.vnnlib"):
      for C, d in disjuncts:
        ...  # unsafe: some x in [lower, upper] with C @ f(x) <= d (every row)

    C, d = vnnlib.single_row_spec(disjuncts)      # one row per disjunct (robustness, ACAS Xu)
    lo32, hi32 = vnnlib.outward_float32(lower, upper)
    lo, _ = bounds.compute_bounds(net, m.to_input(lo32[None]), m.to_input(hi32[None]), C)
    holds = bool(np.all(lo > d))

    vnnlib.write("prop.vnnlib", lower, upper, vnnlib.robustness_disjuncts(label, 10))

A property is a list of `Case(lower, upper, disjuncts)`, one per input box: X in
[lower, upper] (flat float64 arrays indexed as X_i, i.e. the ONNX input in C order;
`interop.onnx.OnnxNet.to_input` maps them to a net's layout), and the UNSAFE output set,
the union over disjuncts (C, d) of the polytopes {y : C y <= d} (C of shape (rows, number
of Y_j)). The property holds (`unsat`) iff no case has an x in its box whose output lies
in one of its polytopes: per disjunct, it suffices that some row has c . f(x) > d over
the box. A disjunct without rows is the whole output space (the box itself is unsafe).
VNN-COMP 2021's several boxes, `(assert (or (and (<= X_0 ..) .. (<= Y_0 ..)) ..))`,
give several cases; disjuncts sharing a box are grouped into one case.

Read: `declare-const`, `assert` over `and` / `or` of `<=`, `>=`, `<`, `>`, `=` between
linear terms (`+`, `-`, `*` by constants) in numbers (scientific notation too), `;`
comments. Input atoms must bound one X_i each; output atoms are linear in the Y_j;
atoms mixing X and Y are refused. Strict inequalities are read as non-strict: the
unsafe set read is then the closure of the one written, a superset, so a property
verified as read holds as written.
"""
from __future__ import annotations

import itertools
import math
import re
from typing import NamedTuple, Optional, Sequence

import numpy as np

# Conjunctions one file may expand into (products of disjunctions), before refusing it.
MAX_CONJUNCTIONS = 100_000
_TOKEN = re.compile(r"[()]|[^\s()]+")
_VAR = re.compile(r"([XY])_(\d+)$")


class VnnlibError(ValueError):
  """A VNNLIB file this reader cannot represent exactly (or that is malformed)."""


class Case(NamedTuple):
  lower: np.ndarray
  upper: np.ndarray
  disjuncts: list  # [(C (rows, n_out), d (rows,))]: unsafe where C y <= d


def _parse(text: str) -> list:
  """S-expressions of `text` (comments removed) as nested lists of tokens."""
  stack, cur = [], []
  for tok in _TOKEN.findall(re.sub(r";[^\n]*", "", text)):
    if tok == "(":
      stack.append(cur)
      cur.append([])
      cur = cur[-1]
    elif tok == ")":
      if not stack:
        raise VnnlibError("unbalanced ')'")
      cur = stack.pop()
    else:
      cur.append(tok)
  if stack:
    raise VnnlibError("unbalanced '(' (file truncated?)")
  return cur


class _Reader:
  def __init__(self):
    self.sizes = {"X": 0, "Y": 0}
    self.declared = set()

  def declare(self, form):
    if len(form) != 3 or form[2] != "Real":
      raise VnnlibError(f"unsupported declaration {_show(form)}")
    m = _VAR.match(form[1])
    if not m:
      raise VnnlibError(f"variables must be named X_i or Y_j, got {form[1]!r}")
    self.declared.add(form[1])
    self.sizes[m[1]] = max(self.sizes[m[1]], int(m[2]) + 1)

  def linear(self, e) -> tuple[dict, float]:
    """({variable: coefficient}, constant) of a linear term."""
    if isinstance(e, str):
      if e in self.declared:
        return {e: 1.0}, 0.0
      try:
        return {}, float(e)
      except ValueError:
        raise VnnlibError(f"undeclared variable or bad number {e!r}") from None
    if not e:
      raise VnnlibError("empty term ()")
    head, args = e[0], [self.linear(a) for a in e[1:]]
    if head == "+" or (head == "-" and len(args) == 1):
      sign = -1.0 if head == "-" else 1.0
      return _combine(args, [sign] * len(args))
    if head == "-":
      return _combine(args, [1.0] + [-1.0] * (len(args) - 1))
    if head == "*":
      terms = [a for a in args if a[0]]
      if len(terms) > 1:
        raise VnnlibError(f"nonlinear term {_show(e)}")
      factor = math.prod(k for c, k in args if not c)
      coefs, const = terms[0] if terms else ({}, 1.0)
      return {v: factor * x for v, x in coefs.items()}, factor * const
    raise VnnlibError(f"unsupported term {_show(e)}")

  def rows(self, atom) -> list[tuple[dict, float]]:
    """An atom as rows sum(coef * var) <= bound."""
    if len(atom) != 3:
      raise VnnlibError(f"comparisons take two terms: {_show(atom)}")
    (lc, lk), (rc, rk) = self.linear(atom[1]), self.linear(atom[2])
    diff = dict(lc)
    for v, x in rc.items():
      diff[v] = diff.get(v, 0.0) - x
    le = (diff, rk - lk)  # lhs - rhs <= 0
    ge = ({v: -x for v, x in diff.items()}, lk - rk)
    return {"<=": [le], "<": [le], ">=": [ge], ">": [ge], "=": [le, ge]}[atom[0]]

  def dnf(self, e) -> list[list]:
    """A formula as a disjunction (list) of conjunctions (lists of rows)."""
    if not isinstance(e, list) or not e:
      raise VnnlibError(f"expected a formula, got {_show(e)}")
    if e[0] == "and":
      out = [[]]
      for child in e[1:]:
        out = [a + b for a in out for b in self.dnf(child)]
        _check_size(len(out))
      return out
    if e[0] == "or":
      return [conj for child in e[1:] for conj in self.dnf(child)]
    if e[0] in ("<=", "<", ">=", ">", "="):
      return [self.rows(e)]
    raise VnnlibError(f"unsupported formula {_show(e)}")

  def case(self, rows, lower, upper, out_rows) -> bool:
    """Adds rows to a box (input rows) and to a list of output rows, in place.

    False if a constant row is false (the conjunction is empty).
    """
    feasible = True
    for coefs, bound in rows:
      coefs = {v: c for v, c in coefs.items() if c != 0}
      kinds = {v[0] for v in coefs}
      if not coefs:
        feasible &= bound >= 0
        continue
      if kinds == {"X"}:
        if len(coefs) > 1:
          raise VnnlibError(f"input constraints must bound one X_i each, got {_show_row(coefs)}")
        (v, c), = coefs.items()
        i = int(v[2:])
        if c > 0:
          upper[i] = min(upper[i], bound / c)
        else:
          lower[i] = max(lower[i], bound / c + 0.0)  # + 0.0: no -0.0
      elif kinds == {"Y"}:
        row = np.zeros(self.sizes["Y"])
        for v, c in coefs.items():
          row[int(v[2:])] += c
        out_rows.append((row, bound))
      else:
        raise VnnlibError(f"constraints mixing inputs and outputs are not supported: "
                          f"{_show_row(coefs)}")
    return feasible


def _combine(args, signs):
  coefs, const = {}, 0.0
  for (c, k), s in zip(args, signs):
    for v, x in c.items():
      coefs[v] = coefs.get(v, 0.0) + s * x
    const += s * k
  return coefs, const


def _check_size(n: int):
  if n > MAX_CONJUNCTIONS:
    raise VnnlibError(f"the property expands into more than {MAX_CONJUNCTIONS} conjunctions")


def _show(e) -> str:
  return e if isinstance(e, str) else "(" + " ".join(_show(x) for x in e) + ")"


def _show_row(coefs) -> str:
  return " + ".join(f"{c:g}*{v}" for v, c in coefs.items())


def parse(text: str) -> list[Case]:
  """The cases of a VNNLIB property given as text (see the module docstring)."""
  reader, asserts = _Reader(), []
  for form in _parse(text):
    if not isinstance(form, list) or not form:
      raise VnnlibError(f"unexpected top-level {_show(form)}")
    if form[0] == "declare-const":
      reader.declare(form)
    elif form[0] == "assert":
      if len(form) != 2:
        raise VnnlibError(f"assert takes one formula: {_show(form)}")
      asserts.append(form[1])
    else:
      raise VnnlibError(f"unsupported command {form[0]!r}")
  n_in, n_out = reader.sizes["X"], reader.sizes["Y"]
  common, ors = [], []
  for formula in asserts:
    d = reader.dnf(formula)
    if len(d) == 1:
      common += d[0]
    else:
      ors.append(d)
  _check_size(math.prod(len(d) for d in ors))
  lower0, upper0, rows0 = np.full(n_in, -np.inf), np.full(n_in, np.inf), []
  feasible = reader.case(common, lower0, upper0, rows0)
  cases: dict[bytes, Case] = {}
  for combo in itertools.product(*ors) if feasible else ():
    lower, upper, rows = lower0.copy(), upper0.copy(), list(rows0)
    if not reader.case([r for conj in combo for r in conj], lower, upper, rows):
      continue
    if np.any(lower > upper):
      continue  # an empty box: nothing unsafe here
    unbounded = np.flatnonzero(~np.isfinite(lower) | ~np.isfinite(upper))
    if unbounded.size:
      raise VnnlibError(f"X_{unbounded[0]} needs a finite lower and upper bound")
    C = np.array([r for r, _ in rows]).reshape(len(rows), n_out)
    d = np.array([b for _, b in rows], np.float64)
    key = lower.tobytes() + upper.tobytes()
    if key not in cases:
      cases[key] = Case(lower, upper, [])
    cases[key].disjuncts.append((C, d))
  return list(cases.values())


def read(path: str) -> list[Case]:
  """The cases of the VNNLIB file at `path` (see the module docstring)."""
  with open(path) as f:
    return parse(f.read())


# --- writing ----------------------------------------------------------------------------

def outward_float32(lower, upper) -> tuple[np.ndarray, np.ndarray]:
  """The box in float32, rounded outwards: plain casting may shrink it (an unsound verdict)."""
  lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
  lo, hi = lower.astype(np.float32), upper.astype(np.float32)
  lo = np.where(lo > lower, np.nextafter(lo, np.float32(-np.inf)), lo)
  hi = np.where(hi < upper, np.nextafter(hi, np.float32(np.inf)), hi)
  return lo, hi


def robustness_disjuncts(label: int, num_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """"Some other logit is at least the true one": per class j != label, Y_label - Y_j <= 0.

  The rows are those of `bounds.margin_matrix`, so `single_row_spec` of these is the
  margin specification our verifiers bound (d = 0).
  """
  eye = np.eye(num_classes)
  return [((eye[label] - eye[j])[None], np.zeros(1)) for j in range(num_classes) if j != label]


def single_row_spec(disjuncts) -> tuple[np.ndarray, np.ndarray]:
  """(C (S, n_out), d (S,)) of one-row disjuncts: the property holds where C f(x) > d."""
  if any(C.shape[0] != 1 for C, _ in disjuncts):
    raise VnnlibError("every disjunct must have exactly one row")
  return (np.concatenate([C for C, _ in disjuncts]),
          np.concatenate([np.asarray(d, np.float64) for _, d in disjuncts]))


def _num(x: float) -> str:
  """Shortest decimal that reads back to the same float64 (no exponent, for strict parsers)."""
  return np.format_float_positional(float(x), unique=True, trim="0")


def _row_text(c: np.ndarray, d: float) -> str:
  nz = np.flatnonzero(c)
  if len(nz) == 2 and d == 0 and sorted(c[nz]) == [-1.0, 1.0]:  # Y_a - Y_b <= 0
    a, b = (nz if c[nz[0]] > 0 else nz[::-1])
    return f"(>= Y_{b} Y_{a})"
  if len(nz) == 1 and abs(c[nz[0]]) == 1:
    return (f"(<= Y_{nz[0]} {_num(d)})" if c[nz[0]] > 0 else f"(>= Y_{nz[0]} {_num(-d)})")
  terms = " ".join(f"(* {_num(c[j])} Y_{j})" for j in nz)
  return f"(<= (+ {terms}) {_num(d)})" if len(nz) > 1 else f"(<= {terms or '0'} {_num(d)})"


def to_text(lower, upper, disjuncts, comment: Optional[str] = None,
           num_outputs: Optional[int] = None) -> str:
  """VNNLIB text of one box and its disjuncts (the inverse of `parse` for one case)."""
  lower, upper = np.ravel(lower).astype(np.float64), np.ravel(upper).astype(np.float64)
  if lower.shape != upper.shape:
    raise ValueError(f"lower {lower.shape} and upper {upper.shape} differ")
  n_out = num_outputs if num_outputs is not None else np.shape(disjuncts[0][0])[1]
  lines = [f"; {line}" for line in (comment or "").splitlines()]
  lines += [f"(declare-const X_{i} Real)" for i in range(lower.size)] + [""]
  lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)] + ["", "; Input constraints:"]
  for i, (lo, hi) in enumerate(zip(lower, upper)):
    lines += [f"(assert (<= X_{i} {_num(hi)}))", f"(assert (>= X_{i} {_num(lo)}))"]
  lines += ["", "; Output constraints (the unsafe set):", "(assert (or"]
  for C, d in disjuncts:
    C, d = np.asarray(C, np.float64).reshape(-1, n_out), np.ravel(d)
    if C.shape[0] == 0:
      lines.append("    (and (<= 0 0))")
    else:
      lines.append("    (and " + " ".join(_row_text(c, b) for c, b in zip(C, d)) + ")")
  return "\n".join(lines + ["))", ""])


def write(path: str, lower, upper, disjuncts: Sequence, comment: Optional[str] = None,
          num_outputs: Optional[int] = None):
  """Writes one box and its unsafe disjuncts to `path` (`robustness_disjuncts` for a sample)."""
  with open(path, "w") as f:
    f.write(to_text(lower, upper, disjuncts, comment, num_outputs))
