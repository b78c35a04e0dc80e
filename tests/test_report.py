"""jaxprune.report: seeds averaged right, incomplete runs apart, formats agreeing, CLI errors."""
import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest

from jaxprune import config as config_lib
from jaxprune import report, runs
from jaxprune.errors import RunError
from jaxprune.report import __main__ as cli
from jaxprune.report import tabular as tables_lib
from jaxprune.verify import runner

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(root, name, verified, pruner="imp", seed=100, eps=0.05, method="bab",
             asked=40, samples=None, skip_summary=(), rounds=None):
  """A fabricated pruning run: round r has verified accuracy verified[r].

  `rounds` (default len(verified) - 1) is what the config asks for, so fewer
  `verified` entries make an unfinished run.
  """
  run = os.path.join(root, name)
  c = runs.config_json(config_lib.load("digits:prune_smoke"))
  c["seed"], c["train"]["eps"], c["prune"]["pruner"] = seed, eps, pruner
  c["prune"]["rounds"] = len(verified) - 1 if rounds is None else rounds
  c["verify"].update(method=method, num_samples=asked, timeout=5.0)
  os.makedirs(run)
  runs.write_json(os.path.join(run, runs.CONFIG), c)
  rows = []
  for r, v in enumerate(verified):
    row = {"round": r, "pruner": pruner, "remain_ratio": 0.8 ** r, "best_epoch": 4,
           "selected_by": "test_ibp_verified_acc", "test_clean_acc": 0.9,
           "test_ibp_verified_acc": v / 2, "test_pgd_acc": 0.8,
           "instability": -400.0 + r, "instability_unstable": 5.0 - r,
           "unstable_ratio": 0.1 / (r + 1),
           "num_test": 360, "train_time_s": 1.0}
    if pruner in ("slim", "struct_lth"):
      row.update(channel_remain_ratio=0.89 ** r, channels={"conv1": 4}, compressed_params=100)
    rows.append(row)
    runs.write_json(os.path.join(runs.round_dir(run, r), runs.ROUND_SUMMARY), row)
    if method and r not in skip_summary:
      stage = runs.round_dir(run, r)
      s = {"method": method, "eps": eps, "dataset": "digits", "num_samples": asked,
           "timeout": 5.0, "slot": "best", "samples": samples or asked, "num_timeout": 0,
           "clean_acc": v + 0.1, "pgd_acc": v + 0.05, "verified_acc": v,
           "mean_seconds": 2.0 - r * 0.5, "median_seconds": 1.0,
           "peak_memory_bytes": 2 ** 30 * (3 - r)}
      runs.write_json(runner.paths(stage, method)["summary"], s)
  runs.write_jsonl(os.path.join(run, runs.SUMMARY), rows)
  return run


def rows_of(tabs):
  return {row["label"]: row for t in tabs for row in t["rows"]}


@pytest.fixture
def seeds(tmp_path):
  """Three complete IMP seeds (best rounds 1, 1, 2) and one IMP+NRS and one Slim run."""
  curves = {100: [0.5, 0.6, 0.55], 101: [0.5, 0.7, 0.6], 102: [0.5, 0.65, 0.8]}
  dirs = [make_run(tmp_path, f"imp_{s}", v, seed=s) for s, v in curves.items()]
  dirs.append(make_run(tmp_path, "nrs", [0.5, 0.62, 0.7], pruner="imp_nrs"))
  dirs.append(make_run(tmp_path, "slim", [0.5, 0.52, 0.51], pruner="slim"))
  return dirs


def test_mean_and_std_over_three_seeds(seeds):
  tabs = report.tables(report.collect(seeds))
  assert len(tabs) == 1
  row = rows_of(tabs)["IMP"]
  assert row["seeds"] == [100, 101, 102] and row["rounds"] == [1, 1, 2]
  for key, values in {"verified_acc": [0.6, 0.7, 0.8], "remain_ratio": [0.8, 0.8, 0.64],
                      "clean_acc": [0.7, 0.8, 0.9], "seconds": [1.5, 1.5, 1.0]}.items():
    key = "remain" if key == "remain_ratio" else key
    mean, std = row["stats"][key]
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
  assert "| IMP | 0.75 ± 0.09 | 80.0 ± 10.0 | 75.0 ± 10.0 | 70.0 ± 10.0 | 1.33 ± 0.29 |" in (
      tables_lib.markdown(tabs))
  # structured rows show the remaining channels; Dense is round 0 of IMP
  assert rows_of(tabs)["Slim"]["stats"]["remain"][0] == pytest.approx(0.89)
  assert rows_of(tabs)["Dense (round 0 of IMP)"]["rounds"] == [0, 0, 0]


def test_incomplete_runs_are_marked_and_kept_apart(seeds, tmp_path):
  bad = [make_run(tmp_path, "unfinished", [0.5, 0.9], rounds=2, seed=103),
         make_run(tmp_path, "short", [0.5, 0.9, 0.9], samples=20, seed=104),
         make_run(tmp_path, "unverified", [0.5, 0.9, 0.9], skip_summary=(2,), seed=105)]
  tabs = report.tables(report.collect(seeds + bad))
  rows = [r for r in tabs[0]["rows"] if r["pruner"] == "imp" and "Dense" not in r["label"]]
  assert [(r["label"], r["seeds"]) for r in rows] == [
      ("IMP", [100, 101, 102]), ("IMP †", [103]), ("IMP †", [104]), ("IMP †", [105])]
  assert rows[0]["stats"]["verified_acc"][0] == pytest.approx(0.7)  # the 0.9s are not in it
  text = tables_lib.markdown(tabs)
  assert "round(s) 2 of 0-2 not finished" in text
  assert "round 1: bab verified 20 of 40 samples" in text
  assert "round 2: no bab verification summary" in text
  assert "$^\\dagger$" in tables_lib.latex(tabs)


def test_different_eps_or_verification_never_averaged(tmp_path):
  dirs = [make_run(tmp_path, "a", [0.5, 0.6], eps=0.05, seed=1),
          make_run(tmp_path, "b", [0.5, 0.8], eps=0.1, seed=2),
          make_run(tmp_path, "c", [0.5, 0.7], asked=20, seed=3),
          make_run(tmp_path, "d", [0.5, 0.7], method="", seed=4)]
  tabs = report.tables(report.collect(dirs))
  assert len(tabs) == 4
  assert all(len(r["seeds"]) == 1 for t in tabs for r in t["rows"])
  titles = [t["title"] for t in tabs]
  assert "eps 0.1," in titles[1] and "bab on 20 test images" in titles[2]
  assert "test_ibp_verified_acc on 360 test images" in titles[3]


def test_other_config_keys_split_one_pruner(tmp_path):
  a = make_run(tmp_path, "a", [0.5, 0.6], seed=1)
  b = make_run(tmp_path, "b", [0.5, 0.6], seed=2)
  c = runs.read_json(os.path.join(b, runs.CONFIG))
  c["train"]["lr"] = 0.01
  runs.write_json(os.path.join(b, runs.CONFIG), c)
  labels = [r["label"] for r in report.tables(report.collect([a, b]))[0]["rows"]]
  assert labels[1:] == ["IMP (train.lr=0.003)", "IMP (train.lr=0.01)"]


def test_report_files_figures_and_formats_agree(seeds, tmp_path):
  out = tmp_path / "report"
  index = report.write_report(seeds, str(out))
  assert index == str(out / "index.md")
  figs = sorted(p.name for p in (out / "figures").iterdir())
  assert figs == ["s1_instability_digits.png", "s1_unstable_ratio_digits.png",
                  "s1_verified_vs_remain_digits.png", "s1_verify_cost_digits.png"]
  for name in figs:
    data = (out / "figures" / name).read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    assert f"(figures/{name})" in (out / "index.md").read_text()
  md = (out / "tables" / "table.md").read_text()
  tex = (out / "tables" / "table.tex").read_text()
  lines = list(csv.DictReader(io.StringIO((out / "tables" / "table.csv").read_text())))
  assert len(lines) == 4  # Dense, IMP, IMP+NRS, Slim
  for line in lines:
    shown = [tables_lib.cell(tuple(float(line[f"{k}_{s}"]) if line[f"{k}_{s}"] else None
                                   for s in ("mean", "std")), 1, d)
             for k, _, _, d in tables_lib.COLUMNS]
    assert "| " + " | ".join([line["label"]] + shown) + " |" in md
    assert " & ".join([line["label"]] + [c.replace("±", r"$\pm$") for c in shown]) in tex
  assert len((out / "tables" / "rounds.csv").read_text().splitlines()) == 1 + 5 * 3


def test_cli_prints_table_and_index(seeds, tmp_path, capsys):
  out = tmp_path / "out"
  cli.main(["--runs", str(tmp_path / "imp_*"), "--runs", str(tmp_path / "nrs"),
            "--out", str(out)])
  printed = capsys.readouterr().out
  assert "| IMP | 0.75 ± 0.09 |" in printed and "IMP+NRS" in printed and "| Slim" not in printed
  assert printed.strip().endswith(f"report: {out / 'index.md'}")
  assert printed.startswith((out / "tables" / "table.md").read_text())


@pytest.mark.parametrize("case", ["no_match", "not_a_run", "plain_run", "torn_json", "no_args"])
def test_cli_errors_exit_2_and_write_nothing(seeds, tmp_path, capsys, case):
  out = tmp_path / "out"
  bad = tmp_path / "bad"
  bad.mkdir()
  args = {"no_match": ["--runs", str(tmp_path / "nothing*")],
          "not_a_run": ["--runs", seeds[0], str(bad)],
          "plain_run": ["--runs", str(bad)], "torn_json": ["--runs", seeds[0]],
          "no_args": []}[case]
  if case == "plain_run":
    runs.write_json(str(bad / runs.CONFIG), {"dataset": "digits"})
  if case == "torn_json":
    (Path(seeds[0]) / "round_01" / runs.ROUND_SUMMARY).write_text("{")
  with pytest.raises(SystemExit) as e:
    cli.main(args + ["--out", str(out)])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert not out.exists()


def test_expand_skips_files_a_glob_matches(seeds, tmp_path):
  (tmp_path / "imp_100.log").write_text("log")
  assert report.expand([str(tmp_path / "imp_*")]) == sorted(seeds[:3])
  with pytest.raises(RunError, match="not a jaxprune run"):
    report.collect([str(tmp_path / "imp_100.log")])


def test_out_that_is_a_file_is_refused(seeds, tmp_path, capsys):
  out = tmp_path / "out"
  out.write_text("")
  with pytest.raises(SystemExit) as e:
    cli.main(["--runs", seeds[0], "--out", str(out)])
  assert e.value.code == 2 and out.read_text() == ""


def test_real_tiny_run(tmp_path):
  """A run made by the pipeline (test_driver's tiny IMP run, whose compilations the session
  cache shares), its two rounds verified with IBP afterwards."""
  from test_driver import load_config
  from jaxprune.prune import driver
  run = str(tmp_path / "run")
  driver.run(load_config(**{"prune.pruner": "imp"}), run)
  for r in (0, 1):
    runner.verify_stage(run, r, method="ibp", verify_overrides={"num_samples": 8},
                        progress=False)
  rec, = report.collect([run])
  assert rec["problems"] == [] and rec["verify"]["method"] == "ibp"
  assert [r["samples"] for r in rec["rounds"]] == [8, 8]
  index = report.write_report([run], str(tmp_path / "report"))
  assert "verified: ibp on 8 test images" in Path(index).read_text()
