"""Shared CLI: `python -m jaxprune.experiments.<dataset> --workdir=DIR [--pruner=P] [--config.x=y]`.

A thin wrapper in the flax-examples style: flags and error reporting here,
all the work in `jaxprune.train.train_and_evaluate(config, workdir)` or, with
a pruner, `jaxprune.prune.driver.run(config, workdir)`. Every usage or input
error is one line on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import os
import sys

USAGE = """usage: python -m jaxprune.experiments.{dataset} --workdir=DIR [options]

Certified training on {dataset} (configs/{dataset}.py); with a pruner, the
paper's iterative prune -> rewind -> retrain pipeline.

options:
  --workdir=DIR        run directory (required). Re-running the same command resumes;
                       a directory holding a run with another config is refused.
  --config=SPEC        config file or packaged name, with an optional preset:
                       configs/{dataset}.py:PRESET, {dataset}:PRESET, or a path (default: {dataset})
  --config.KEY=VALUE   override any config field, e.g. --config.train.epochs=5
  --pruner=NAME        iterative pruning with NAME: {pruners}
  --overwrite          empty DIR and start afresh
  -h, --help           show this message and exit

presets of {dataset}:
{presets}
"""


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def config_spec(argv: list[str], default: str) -> tuple[str, list[str]]:
  """(value of --config, argv without it): the file is loaded before the flags are defined."""
  spec, rest, i = default, [argv[0]], 1
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a == "--config":
      if i + 1 == len(argv):
        fail("--config needs a value")
      spec, i = argv[i + 1], i + 1
    else:
      rest.append(a)
    i += 1
  return spec, rest


def usage(dataset: str) -> str:
  from jaxprune import config as config_lib
  from jaxprune.prune import PRUNERS
  presets = config_lib.presets(dataset)
  width = max(map(len, presets), default=0)
  lines = [f"  {name:<{width}}  {text}" for name, text in presets.items()] or ["  (none)"]
  return USAGE.format(dataset=dataset, pruners=" ".join(PRUNERS), presets="\n".join(lines))


def run(dataset: str) -> None:
  """Parse flags with the packaged `configs/<dataset>.py` as the default config, and run."""
  from jaxprune import runtime
  runtime.configure()
  if any(a in ("-h", "--help", "--helpfull", "-?") for a in sys.argv[1:]):
    print(usage(dataset))
    sys.exit(0)
  from absl import flags
  from ml_collections import config_flags
  from jaxprune import config as config_lib
  spec, argv = config_spec(sys.argv, dataset)
  try:
    config = config_lib.load(spec)
  except (config_lib.ConfigError, ValueError) as e:
    fail(str(e))
  flags.DEFINE_string("workdir", None, "Run directory (resumed when it holds the same config).")
  flags.DEFINE_string("pruner", None, "Run iterative pruning with this pruner (overrides "
                      "config.prune.pruner); without it, a non-dense config.prune.pruner does.")
  flags.DEFINE_bool("overwrite", False, "Empty --workdir and start afresh.")
  try:  # ml_collections applies --config.* overrides while defining the flag, too
    config_flags.DEFINE_config_dict("config", config, "Config (see --help).", lock_config=True,
                                    sys_argv=argv)
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    fail(f"unknown config key {str(e).strip(chr(34) + chr(39))!r} (overrides given: "
         f"{', '.join(overrides)})")
  except (flags.Error, ValueError, TypeError) as e:
    fail(f"bad command line: {e}")
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]} (flags are written --name=value; see --help)")
  if not flags.FLAGS.workdir:
    fail("--workdir is required (see --help)")
  main(flags.FLAGS)


def use_compilation_cache() -> None:
  """Persist XLA compilations (pruning rounds and resumed runs rebuild identical steps).

  $JAX_COMPILATION_CACHE_DIR wins; otherwise ~/.cache/jaxprune/jit.
  """
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "jaxprune", "jit"))


def main(FLAGS) -> None:
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  use_compilation_cache()
  from jaxprune.data import DataError
  from jaxprune.errors import ConfigError, RunError
  from jaxprune.prune import driver
  from jaxprune.train import NaNLossError, train_and_evaluate
  from jaxprune.train.config import raise_if
  from jaxprune.verify import config as verify_config
  from jaxprune.verify import runner
  config, workdir = FLAGS.config, FLAGS.workdir
  try:
    raise_if(verify_config.problems(config))

    def verified(r=None) -> dict:
      """Complete (or incomplete) verification of a finished stage, for its summary."""
      s = runner.verify_stage(workdir, r)
      print(runner.summary_text(s), flush=True)
      return {"verify_method": s["method"], "verify_samples": s["samples"],
              "verified_acc": s["verified_acc"], "verify_pgd_acc": s["pgd_acc"],
              "verify_timeouts": s["num_timeout"], "verify_mean_seconds": s["mean_seconds"]}

    hook = verified if config.verify.method else None
    if FLAGS.pruner is not None or config.prune.pruner != "dense":
      driver.run(config, workdir, pruner=FLAGS.pruner, overwrite=FLAGS.overwrite,
                 round_hook=hook)
      from jaxprune import report  # the paper's table and figures of this run
      files = report.render(report.collect([workdir]))
      index = report.write_files(files, os.path.join(workdir, "report"))
      print(files["tables/table.md"], end="")
      print(f"report: {index}", flush=True)
    else:
      train_and_evaluate(config, workdir, overwrite=FLAGS.overwrite)
      if hook is not None:
        hook()
  except (ConfigError, DataError, RunError) as e:
    fail(str(e))
  except NaNLossError as e:
    fail(str(e), code=1)
