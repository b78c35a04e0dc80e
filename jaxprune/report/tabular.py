"""Records -> the paper's Tables 2/3: per pruner, its best round, mean ± std over seeds.

Runs are grouped twice. A *section* is one (dataset, model, training mode,
eps, verification settings): numbers from different sections are never
compared in one column. Inside it a *series* is what one table row shows:
the complete runs whose configs agree on every key but the seed (averaged),
or one incomplete run alone (marked †). Two series of one pruner that differ
in some other key are named by it.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Optional

import numpy as np

from jaxprune import prune, runs
from jaxprune.report.records import best_round

INCOMPLETE = "†"
NAMES = {"dense": "Dense", "random": "Random", "imp": "IMP", "snip": "SNIP", "tp": "TP",
         "hydra": "HYDRA", "hydra_nrs": "HYDRA+NRS", "imp_rs": "IMP+RS", "imp_nrs": "IMP+NRS",
         "struct_lth": "StructLTH", "slim": "Slim"}
ORDER = list(prune.PRUNERS)
# (key, header, scale, decimals): what a row shows of its best round.
COLUMNS = (("remain", "Remain ratio", 1, 2), ("clean_acc", "std (%)", 100, 1),
           ("pgd_acc", "adv (%)", 100, 1), ("verified_acc", "ver (%)", 100, 1),
           ("seconds", "t (s/sample)", 1, 2))
HEADERS = ("Pruning method",) + tuple(c[1] for c in COLUMNS) + ("Best round", "Seeds")
# Paper Table 2's note, which the caption repeats.
REMAIN_NOTE = ("remain ratio: remaining conv weights for unstructured pruning, remaining "
               "channels for structured (StructLTH, Slim)")
STD_NOTE = "mean ± sample std (ddof 1) over seeds when a row has several"


# --- grouping ------------------------------------------------------------------------------

def section_key(record: dict) -> dict:
  return {"dataset": record["dataset"], "model": record["model"], "mode": record["mode"],
          "eps": record["eps"], "verify": record["verify"]}


def identity(record: dict) -> dict:
  """Everything a run's numbers depend on but its seed."""
  config = {k: v for k, v in record["config"].items() if k != "seed"}
  return {**config, "verification": record["verify"]}


def section_title(key: dict) -> str:
  v = key["verify"]
  head = f"{key['dataset']}, eps {key['eps']:g}, {key['model']}, {key['mode']} training"
  if not v["method"]:
    return f"{head}; verified: {v['metric']} on {v['num_samples']} test images (no verifier run)"
  extra = "".join(f", {k} {v[k]:g}" if isinstance(v[k], float) else f", {k} {v[k]}"
                  for k in ("eps", "dataset") if v.get(k) not in (None, key[k]))
  slot = "" if v.get("slot") in (None, "best") else f", {v['slot']} checkpoint"
  return (f"{head}; verified: {v['method']} on {v['num_samples']} test images, "
          f"{v['timeout']:g} s timeout{extra}{slot}")


def differing(group: dict, others: list[dict]) -> list[str]:
  """`key=value` of this group for every key in which it differs from the others."""
  out = []
  for other in others:
    for line in runs.config_diff(group, other):
      key, change = line.split(": ", 1)
      item = f"{key}={change.rsplit(' -> ', 1)[0]}"
      if item not in out:
        out.append(item)
  return out


def group(recs: list[dict]) -> list[list[dict]]:
  """Runs whose identities agree on every key that changes results (`runs.config_diff`)."""
  groups: list[list[dict]] = []
  for rec in recs:
    home = next((g for g in groups if not runs.config_diff(identity(g[0]), identity(rec))), None)
    if home is None:
      groups.append([rec])
    else:
      home.append(rec)
  return groups


def rank(s: dict) -> tuple:
  return ORDER.index(s["pruner"]) if s["pruner"] in ORDER else len(ORDER), s["incomplete"]


def series(records: list[dict]) -> list[dict]:
  """Sections in first-seen order, each a list of series in the paper's pruner order."""
  sections: dict[str, dict] = {}
  for rec in records:
    key = section_key(rec)
    sec = sections.setdefault(json.dumps(key, sort_keys=True), {"key": key, "recs": []})
    sec["recs"].append(rec)
  out = []
  for sec in sections.values():
    groups, rows = group(sec["recs"]), []
    for recs in groups:
      pruner = recs[0]["pruner"]
      rivals = [identity(g[0]) for g in groups if g is not recs and g[0]["pruner"] == pruner]
      suffix = differing(identity(recs[0]), rivals)
      label = NAMES.get(pruner, pruner) + (f" ({', '.join(suffix)})" if suffix else "")
      complete = [r for r in recs if not r["problems"]]
      if complete:
        rows.append(make_series(label, complete, False))
      rows += [make_series(label, [r], True) for r in recs if r["problems"]]
    out.append({"key": sec["key"], "title": section_title(sec["key"]),
                "series": sorted(rows, key=rank)})
  return out


def make_series(label: str, recs: list[dict], incomplete: bool) -> dict:
  return {"label": label + (f" {INCOMPLETE}" if incomplete else ""), "pruner": recs[0]["pruner"],
          "kind": recs[0]["kind"], "incomplete": incomplete,
          "records": sorted(recs, key=lambda r: r["seed"])}


# --- numbers -------------------------------------------------------------------------------

def mean_std(values: list) -> tuple[Optional[float], Optional[float]]:
  """(mean, sample std) of the values that exist; std None for fewer than two."""
  v = [float(x) for x in values if x is not None]
  if not v:
    return None, None
  return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def shown(round_: dict, kind: str) -> dict:
  """A round's table values: the remain ratio is of channels for structured pruners."""
  remain = round_["channel_remain_ratio"] if kind == "structured" else round_["remain_ratio"]
  return {"remain": remain, **{k: round_[k] for k, *_ in COLUMNS[1:]}}


def table_row(s: dict, label: str, pick) -> dict:
  """One row: `pick(record)` chooses each run's round (its best, or round 0)."""
  chosen = [r for r in map(pick, s["records"]) if r is not None]
  values = [shown(r, s["kind"]) for r in chosen]
  return {"label": label, "pruner": s["pruner"], "incomplete": s["incomplete"],
          "runs": [rec["run"] for rec in s["records"]],
          "seeds": [rec["seed"] for rec in s["records"]],
          "rounds": [r["round"] for r in chosen],
          "stats": {k: mean_std([v[k] for v in values]) for k, *_ in COLUMNS},
          "notes": [f"{rec['run']}: {p}" for rec in s["records"] for p in rec["problems"]]}


def round0(rec: dict) -> Optional[dict]:
  return next((r for r in rec["rounds"] if r["round"] == 0), None)


def dense_source(rows: list[dict]) -> Optional[dict]:
  """The series whose round 0 is the Dense row: IMP's (plain training), else the first one."""
  pool = [s for s in rows if not s["incomplete"]] or rows
  return next((s for s in pool if s["pruner"] == "imp"), pool[0] if pool else None)


def tables(records: list[dict]) -> list[dict]:
  """[{title, key, rows}] per section: a Dense row (round 0), then each series' best round."""
  out = []
  for sec in series(records):
    rows = []
    src = dense_source(sec["series"])
    if src is not None:
      name = src["label"].replace(f" {INCOMPLETE}", "")
      rows.append(table_row(src, f"Dense (round 0 of {name})"
                            + (f" {INCOMPLETE}" if src["incomplete"] else ""), round0))
      rows[-1]["notes"] = []  # its notes are on the series' own row
    rows += [table_row(s, s["label"], best_round) for s in sec["series"]]
    out.append({"title": sec["title"], "key": sec["key"], "rows": rows,
                "series": sec["series"]})
  return out


# --- formats -------------------------------------------------------------------------------

def cell(stat: tuple, scale: float, digits: int, pm: str = "±") -> str:
  mean, std = stat
  if mean is None:
    return "–"
  text = f"{mean * scale:.{digits}f}"
  return text if std is None else f"{text} {pm} {std * scale:.{digits}f}"


def cells(row: dict, pm: str = "±") -> list[str]:
  seeds = ", ".join(map(str, row["seeds"]))
  return ([row["label"]] + [cell(row["stats"][k], scale, d, pm) for k, _, scale, d in COLUMNS]
          + [", ".join(map(str, row["rounds"])), f"{len(row['seeds'])} ({seeds})"])


def notes(table: dict) -> list[str]:
  return [n for row in table["rows"] for n in row["notes"]]


def markdown(tabs: list[dict]) -> str:
  """One markdown table per section, with its incomplete-run notes under it."""
  parts = []
  for t in tabs:
    lines = [f"### {t['title']}", "", "| " + " | ".join(HEADERS) + " |",
             "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in t["rows"]]
    if notes(t):
      lines += ["", f"{INCOMPLETE} incomplete, not averaged with complete runs:"]
      lines += [f"- {n}" for n in notes(t)]
    parts.append("\n".join(lines))
  caption = (f"Best round per pruner (highest verified accuracy); {REMAIN_NOTE}; "
             f"{STD_NOTE}; std/adv on the verified samples when a verifier ran.")
  return caption + "\n\n" + "\n\n".join(parts) + "\n"


def csv_text(tabs: list[dict]) -> str:
  """One line per row: its section's settings, then mean and std of every column (in the
  units the tables show: accuracies in %), unrounded."""
  f = io.StringIO()
  w = csv.writer(f, lineterminator="\n")
  w.writerow(["section", "dataset", "model", "mode", "eps", "verify_method", "verify_samples",
              "verify_timeout", "label", "pruner", "incomplete", "seeds", "best_rounds"]
             + [f"{k}_{s}" for k, *_ in COLUMNS for s in ("mean", "std")] + ["runs", "notes"])
  for t in tabs:
    k, v = t["key"], t["key"]["verify"]
    for row in t["rows"]:
      stats = []
      for key, _, scale, _ in COLUMNS:
        stats += ["" if x is None else repr(x * scale) for x in row["stats"][key]]
      w.writerow([t["title"], k["dataset"], k["model"], k["mode"], k["eps"],
                  v["method"] or v.get("metric"), v["num_samples"], v.get("timeout", ""),
                  row["label"], row["pruner"], int(row["incomplete"]),
                  " ".join(map(str, row["seeds"])), " ".join(map(str, row["rounds"]))]
                 + stats + [" ".join(row["runs"]), "; ".join(row["notes"])])
  return f.getvalue()


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#",
       "{": r"\{", "}": r"\}", "$": r"\$", INCOMPLETE: r"$^\dagger$", "±": r"$\pm$",
       "–": "--"}


def tex_escape(text: str) -> str:
  return "".join(TEX.get(c, c) for c in text)


def latex(tabs: list[dict]) -> str:
  """A booktabs table in the paper's layout: one block of rows per section."""
  n = len(HEADERS)
  lines = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\begin{tabular}{l" + "r" * (n - 1) + "}", r"\toprule",
           " & ".join(tex_escape(h) for h in HEADERS) + r" \\"]
  for t in tabs:
    lines += [r"\midrule", rf"\multicolumn{{{n}}}{{l}}{{\emph{{{tex_escape(t['title'])}}}}} \\"]
    lines += [" & ".join(tex_escape(c) for c in cells(row)) + r" \\" for row in t["rows"]]
  all_notes = [n_ for t in tabs for n_ in notes(t)]
  note = (" $^\\dagger$ incomplete (not averaged with complete runs): "
          + tex_escape("; ".join(all_notes)) + ".") if all_notes else ""
  lines += [r"\bottomrule", r"\end{tabular}",
            r"\caption{" + tex_escape(f"Best round per pruner (highest verified accuracy); "
                                      f"{REMAIN_NOTE}; {STD_NOTE}.") + note + "}",
            r"\end{table}"]
  return "\n".join(lines) + "\n"
