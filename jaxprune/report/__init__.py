"""The paper's tables and figures from pruning run directories.

    index = jaxprune.report.write_report(["runs/fm_imp_s100", "runs/fm_imp_s101"], "report")
    python -m jaxprune.report --runs 'runs/fmnist/*' --out report/

`collect(run_dirs)` reads each run (through `jaxprune.runs` and the
verification summaries `runner.paths` names) into a record; `tables(records)`
groups them into sections (dataset, model, mode, eps, verification settings)
and rows (one pruner's complete seeds, averaged; an incomplete run alone,
marked †); `plots.figures(section)` draws Figures 3-6. `write_report`
writes, each file atomically, under `out`:

    index.md                 every table and figure, one sentence each
    tables/table.{md,csv,tex}  the best round per pruner (paper Tables 2/3)
    tables/rounds.csv        every round of every run, the numbers behind the figures
    figures/s<section>_<figure>_<dataset>.png

Every input is read and checked before anything is written: a bad run
directory is a RunError and leaves `out` untouched.
"""
from __future__ import annotations

import csv
import io
import os

from jaxprune.report.records import best_round, collect, expand
from jaxprune.report.plots import figures
from jaxprune.report.tabular import csv_text, latex, markdown, tables
from jaxprune.errors import RunError
from jaxprune.utils import atomic_open, atomic_write_text

__all__ = ["collect", "expand", "tables", "figures", "best_round", "render", "write_files",
           "write_report"]

TABLE_TEXT = ("For each pruner, the round with the highest verified accuracy, with its "
              "remain ratio, standard (clean), PGD and verified accuracy and verification "
              "seconds per sample, averaged over seeds (paper Tables 2 and 3).")


def rounds_csv(records: list[dict]) -> str:
  """Every round of every run, flat: what the figures plot, for other tools."""
  keys = next((list(rec["rounds"][0]) for rec in records if rec["rounds"]), ["round"])
  f = io.StringIO()
  w = csv.writer(f, lineterminator="\n")
  w.writerow(["run", "dataset", "eps", "pruner", "seed", "incomplete"] + keys)
  for rec in records:
    for r in rec["rounds"]:
      w.writerow([rec["run"], rec["dataset"], rec["eps"], rec["pruner"], rec["seed"],
                  int(bool(rec["problems"]))] + ["" if r[k] is None else r[k] for k in keys])
  return f.getvalue()


def index_text(records: list[dict], tabs: list[dict], figs: dict, main: str) -> str:
  lines = ["# jaxprune report", "",
           f"{len(records)} pruning runs: " + ", ".join(f"`{r['run']}`" for r in records) + ".",
           "", "## Tables", "", TABLE_TEXT + " Files: [markdown](tables/table.md), "
           "[CSV](tables/table.csv), [LaTeX](tables/table.tex); every round of every run: "
           "[rounds.csv](tables/rounds.csv).", "", main, "## Figures", ""]
  for t in tabs:
    lines += [f"### {t['title']}", ""]
    for path, (_, caption) in figs.items():
      if path.startswith(t["prefix"]):
        lines += [caption, "", f"![{os.path.basename(path)}]({path})", ""]
    if not any(p.startswith(t["prefix"]) for p in figs):
      lines += ["(no figure: no series had the data)", ""]
  return "\n".join(lines)


def render(records: list[dict]) -> dict[str, bytes | str]:
  """{relative path: content} of the whole report, built in memory."""
  tabs = tables(records)
  figs = {}
  for i, t in enumerate(tabs, 1):
    t["prefix"] = f"figures/s{i}_"
    for name, item in figures(t).items():
      figs[f"{t['prefix']}{name}_{t['key']['dataset']}.png"] = item
  main = markdown(tabs)
  out = {"tables/table.md": main, "tables/table.csv": csv_text(tabs),
         "tables/table.tex": latex(tabs), "tables/rounds.csv": rounds_csv(records),
         **{path: data for path, (data, _) in figs.items()}}
  out["index.md"] = index_text(records, tabs, figs, main)
  return out


def write_files(files: dict, out: str) -> str:
  """Write `render`'s files under `out`, each atomically; returns index.md's path."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise RunError(f"--out {out} is a file, not a directory")
  for rel, content in files.items():
    path = os.path.join(out, rel)
    if isinstance(content, bytes):
      with atomic_open(path, "wb") as f:
        f.write(content)
    else:
      atomic_write_text(path, content)
  return os.path.join(out, "index.md")


def write_report(run_dirs: list[str], out: str) -> str:
  """Read, check and render every run, then write the report; returns index.md's path."""
  return write_files(render(collect(run_dirs)), out)
