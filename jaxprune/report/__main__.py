"""`python -m jaxprune.report --runs PATTERN [PATTERN ...] --out DIR`.

Bad input (no pattern matched, a path that is not a pruning run, unreadable
run files) is one line on stderr and exit status 2, before anything is
written; otherwise it prints the main table and the path of index.md.
"""
from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not argparse's usage block
    fail(f"{message} (see --help)")


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse(argv: list[str]) -> argparse.Namespace:
  p = Parser(prog="python -m jaxprune.report",
             description="The paper's tables (2, 3) and figures (3-6) from pruning run "
                         "directories.")
  p.add_argument("--runs", nargs="+", action="extend", required=True, metavar="PATTERN",
                 help="run directories or glob patterns (quote them), several allowed")
  p.add_argument("--out", required=True, help="report directory (index.md, tables/, figures/)")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse(sys.argv[1:] if argv is None else argv)
  from jaxprune import report
  from jaxprune.errors import RunError
  try:
    run_dirs = report.expand(args.runs)
    files = report.render(report.collect(run_dirs))
    index = report.write_files(files, args.out)
  except RunError as e:
    fail(str(e))
  print(files["tables/table.md"], end="")
  print(f"report: {index}")


if __name__ == "__main__":
  main()
