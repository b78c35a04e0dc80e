"""The paper's Figures 3-6 per section, as PNG bytes (matplotlib's Agg renderer).

Each series (see `tabular.series`) is one line: per round, the mean over its
seeds (error bars: sample std when it has several); incomplete runs are
dashed and marked †. A figure whose data no series has is not drawn.
Figures are `matplotlib.figure.Figure` objects rendered by Agg, never
pyplot's, so importing this selects no backend and keeps no global state.
"""
from __future__ import annotations

import io
from typing import Callable, Optional

from matplotlib import ticker
from matplotlib.figure import Figure

from jaxprune.report.tabular import mean_std

INSTABILITY_PRUNERS = ("imp", "imp_rs", "imp_nrs")
GiB = 2.0 ** 30


def curve(s: dict, x: Callable, y: Callable):
  """(xs, ys, yerr) over the rounds every run of the series finished and measured."""
  rounds = [{r["round"]: r for r in rec["rounds"]} for rec in s["records"]]
  common = sorted(set.intersection(*(set(r) for r in rounds)))
  xs, ys, err = [], [], []
  for i in common:
    xv = [x(r[i]) for r in rounds]
    yv = [y(r[i]) for r in rounds]
    if None in xv or None in yv:
      continue
    my, sy = mean_std(yv)
    xs.append(mean_std(xv)[0])
    ys.append(my)
    err.append(sy or 0.0)
  return xs, ys, err


def draw(ax, s: dict, x: Callable, y: Callable) -> bool:
  xs, ys, err = curve(s, x, y)
  if not xs:
    return False
  ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", capsize=3,
              linestyle="--" if s["incomplete"] else "-", label=s["label"])
  return True


def png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  return buf.getvalue()


def panel_figure(title: str, panels: list[tuple], series: list[dict], logx=False,
                 invert=False, integer_x=False) -> Optional[bytes]:
  """One figure of side-by-side panels (ylabel, xlabel, x, y); None if nothing to draw."""
  fig = Figure(figsize=(6 * len(panels), 4.2))
  axes = fig.subplots(1, len(panels), squeeze=False)
  drawn = False
  for ax, (ylabel, xlabel, x, y) in zip(axes[0], panels):
    here = [draw(ax, s, x, y) for s in series]
    drawn |= any(here)
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.grid(alpha=0.3)
    if logx:  # ticks at 1, 0.7, 0.5, 0.3, 0.2, 0.1, ...: readable over narrow ranges too
      ax.set_xscale("log")
      ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
      ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if invert:
      ax.invert_xaxis()
    if integer_x:
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if any(here):
      ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  return png(fig) if drawn else None


def figures(section: dict) -> dict[str, tuple[bytes, str]]:
  """{name: (PNG bytes, caption)} of one section (`tabular.tables` item)."""
  ss, t = section["series"], section["title"]
  method = section["key"]["verify"]["method"] or section["key"]["verify"]["metric"]
  pct = lambda key: (lambda r: None if r[key] is None else 100 * r[key])
  out = {}
  fig = panel_figure(f"Verified accuracy vs remaining weights\n{t}", [
      (f"verified accuracy (%, {method})", "remaining conv weights (fraction, log scale)",
       lambda r: r["remain_ratio"], pct("verified_acc"))], ss, logx=True, invert=True)
  if fig:
    out["verified_vs_remain"] = (fig, "Verified accuracy of every round against the fraction "
                                 "of conv weights left (paper Figure 3).")
  inst = [s for s in ss if s["pruner"] in INSTABILITY_PRUNERS]
  xl, xr = "pruning round (0: dense)", lambda r: r["round"]
  fig = panel_figure(f"Network instability vs pruning round\n{t}", [
      ("instability (sum of -l·u over unstable neurons)", xl, xr,
       lambda r: r["instability_unstable"])], inst, integer_x=True)
  if fig:
    out["instability"] = (fig, "Instability per round for IMP, IMP+RS and IMP+NRS (paper "
                          "Figure 5): the sum of -l·u over the *unstable* ReLU neurons only "
                          "(`instability_unstable`, ≥ 0), per test image, from the bounds at "
                          "the training eps; the paper's Eq. 1 sums over all neurons.")
  fig = panel_figure(f"Unstable-neuron ratio vs pruning round\n{t}", [
      ("unstable ReLU neurons (%)", xl, xr, pct("unstable_ratio"))], ss, integer_x=True)
  if fig:
    out["unstable_ratio"] = (fig, "Fraction of ReLU neurons whose bounds straddle zero, per "
                             "round (paper Figure 6).")
  structured = [s for s in ss if s["kind"] == "structured"]
  channels = lambda r: r["channel_remain_ratio"]
  fig = panel_figure(f"Verification cost vs remaining channels\n{t}", [
      ("mean verification time (s/sample)", "remaining channels (fraction)", channels,
       lambda r: r["seconds"]),
      ("peak memory (GiB)", "remaining channels (fraction)", channels,
       lambda r: None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / GiB)],
      structured, invert=True)
  if fig:
    out["verify_cost"] = (fig, "Mean verification seconds per sample and the verifying "
                          "process's peak resident (host, not GPU) memory so far, against the "
                          "fraction of conv channels left, for the structured pruners "
                          "StructLTH and Slim (paper Figure 4).")
  return out
