"""Shared CLI: `python -m jaxprune.experiments.<dataset> --workdir=DIR [--pruner=P] [--config.x=y]`.

A thin wrapper in the flax-examples style: flags and error reporting here,
all the work in `jaxprune.train.train_and_evaluate(config, workdir)` or, with
a pruner, `jaxprune.prune.driver.run(config, workdir)`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from jaxprune.runtime import reexec_with_huge_pages

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def run(dataset_config: str) -> None:
  """Parse flags with `configs/<dataset_config>.py` as the default config and run."""
  reexec_with_huge_pages()
  default = CONFIG_DIR / f"{dataset_config}.py"
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.jsonl.")
  flags.DEFINE_string("pruner", None, "Run iterative pruning with this pruner (overrides "
                      "config.prune.pruner); without it, a non-dense config.prune.pruner does.")
  # ml_collections applies --config.* overrides while defining the flag, so guard both steps.
  clear_errors(lambda: config_flags.DEFINE_config_file(
      "config", str(default), "Config file (path[:preset]).", lock_config=True), sys.argv)
  flags.mark_flags_as_required(["workdir"])
  app.run(lambda argv: main(argv, flags.FLAGS),
          flags_parser=lambda argv: clear_errors(lambda: flags.FLAGS(argv), argv))


def clear_errors(fn, argv):
  """Run a flag-parsing step; bad keys or values become one clear line and exit 2."""
  try:
    return fn()
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    print(f"error: unknown config key {e} (overrides given: {overrides})", file=sys.stderr)
  except (flags.Error, ValueError, TypeError) as e:
    print(f"error: bad command line: {e}", file=sys.stderr)
  sys.exit(2)


def use_compilation_cache() -> None:
  """Persist XLA compilations (pruning rounds and resumed runs rebuild identical steps).

  $JAX_COMPILATION_CACHE_DIR wins; otherwise ~/.cache/jaxprune/jit.
  """
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "jaxprune", "jit"))


def main(argv, FLAGS) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  use_compilation_cache()
  from jaxprune.data import DataError
  from jaxprune.train import ConfigError, NaNLossError, train_and_evaluate
  from jaxprune.prune import driver
  try:
    if FLAGS.pruner is not None or FLAGS.config.prune.pruner != "dense":
      driver.run(FLAGS.config, FLAGS.workdir, pruner=FLAGS.pruner)
    else:
      train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, DataError, NaNLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
