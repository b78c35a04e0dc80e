"""The run-directory contract: what every stage writes and reads, and how.

A run directory (`workdir`) holds:

    config.json            the resolved config that shaped every file below
    metrics.jsonl          plain runs: one line per epoch ("epoch" counts from 1)
    checkpoints/{last,best}  plain runs: orbax checkpoints of the whole train state
    summary.jsonl          pruning runs: one line per finished round (round 0 is dense)
    rewind/state.npz       pruning runs: the rewind point
    round_NN/              pruning runs: masks.npz, checkpoints/, metrics.jsonl, summary.json

Train, prune, verify, report and the benchmarks go through this module, so
the layout is written down once. Every file is written atomically (temp file,
then rename) or appended line by line with a torn last line repaired, so a
kill at any point leaves the old content or the new, never half of it.

Lifecycle (`open_run`): a directory records the config that shaped it. The
same config resumes; a different one (any key that changes results) is
refused with the differences listed and nothing touched; `overwrite=True`
starts afresh.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from jaxprune import data, models
from jaxprune.errors import RunError
from jaxprune.utils import atomic_open, atomic_write_text

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.jsonl"
ROUND_SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
MASKS = "masks.npz"
REWIND = os.path.join("rewind", "state.npz")
SLOTS = ("last", "best")
# Keys (at any depth) that never change what a run computes: where the (checksummed) data
# lives, how processes find each other.
NON_RESULT_KEYS = ("data_dir", "distributed")


# --- layout ------------------------------------------------------------------------------

def round_dir(run: str, r: int) -> str:
  return os.path.join(run, f"round_{r:02d}")


def is_pruning_run(run: str) -> bool:
  return os.path.exists(os.path.join(run, SUMMARY)) or os.path.isdir(round_dir(run, 0))


def list_rounds(run: str) -> list[int]:
  """Indices of the finished rounds of a pruning run (those with a summary.json)."""
  if not os.path.isdir(run):
    return []
  rounds = []
  for name in os.listdir(run):
    if name.startswith("round_") and name[6:].isdigit() and os.path.exists(
        os.path.join(run, name, ROUND_SUMMARY)):
      rounds.append(int(name[6:]))
  return sorted(rounds)


def stage_dir(run: str, round: Optional[int] = None) -> str:
  """Where a stage's checkpoints and metrics live: the run itself, or one round of it."""
  return run if round is None else round_dir(run, round)


# --- jsonl and json --------------------------------------------------------------------

def read_jsonl(path: str) -> list[dict]:
  """All complete lines of a jsonl file ([] if absent); a torn last line is ignored."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    text = f.read()
  lines = text.split("\n")
  if not text.endswith("\n"):
    lines = lines[:-1]  # killed mid-append
  return [json.loads(line) for line in lines if line.strip()]


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
  """Replace the whole file atomically."""
  atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path: str, row: dict) -> None:
  """Append one line durably (fsync); a torn last line left by a kill is cut off first."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a+b") as f:
    size = f.seek(0, os.SEEK_END)
    if size:
      f.seek(max(0, size - 1))
      if f.read(1) != b"\n":
        f.seek(0)
        keep = f.read().rfind(b"\n") + 1
        f.truncate(keep)
    f.seek(0, os.SEEK_END)
    f.write((json.dumps(row) + "\n").encode())
    f.flush()
    os.fsync(f.fileno())


def write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1))


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


# --- .npz trees ------------------------------------------------------------------------

def save_tree(path: str, tree) -> None:
  """A nested dict of arrays as .npz ("a/b" keys), via a temp file and rename."""
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  with atomic_open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})


def load_tree(path: str) -> dict:
  import jax.numpy as jnp
  with np.load(path) as f:
    return traverse_util.unflatten_dict({k: jnp.asarray(f[k]) for k in f.files}, sep="/")


# --- checkpoints -----------------------------------------------------------------------

class Checkpoints:
  """One orbax CheckpointManager per slot ("last", "best"), each keeping a single step.

  orbax writes a step directory under a temporary name and renames it when
  complete, so a run killed mid-save keeps the previous checkpoint intact.
  """

  def __init__(self, directory: str, slots=SLOTS):
    self.managers = {
        slot: ocp.CheckpointManager(
            os.path.abspath(os.path.join(directory, slot)),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                 enable_async_checkpointing=False))
        for slot in slots}

  def save(self, slot: str, step: int, state: Any, meta: dict) -> None:
    self.managers[slot].save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self.managers[slot].wait_until_finished()

  def latest_step(self, slot: str) -> Optional[int]:
    return self.managers[slot].latest_step()

  def restore(self, slot: str, like: Any = None, step: Optional[int] = None):
    """(state, meta) of the slot's latest step.

    With `like` the state is shaped and sharded like it (an exact resume);
    without, it comes back as the nested dict it was saved as.
    """
    step = self.latest_step(slot) if step is None else step
    if step is None:
      raise RunError(f"no {slot!r} checkpoint in {os.path.dirname(self.managers[slot].directory)}")
    abstract = None if like is None else jax.tree_util.tree_map(
        ocp.utils.to_shape_dtype_struct, like)
    out = self.managers[slot].restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def close(self):
    for m in self.managers.values():
      m.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def checkpoints_of(directory: str, slots=SLOTS) -> Checkpoints:
  """The checkpoints of a stage directory (a plain run or one round)."""
  return Checkpoints(os.path.join(directory, CHECKPOINTS), slots)


def restore_state(directory: str, slot: str, like):
  """(train state shaped like `like`, meta) of a stage directory's checkpoint slot."""
  with checkpoints_of(directory, (slot,)) as ckpts:
    return ckpts.restore(slot, like)


# --- config and lifecycle --------------------------------------------------------------

def config_json(config) -> dict:
  """The config as stored in config.json (tuples become lists, as json reads them back)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config))


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = v
  return out


def config_diff(old: dict, new: dict) -> list[str]:
  """`key: old -> new` for every key that changes results (NON_RESULT_KEYS are ignored)."""
  a, b = _flat(old), _flat(new)
  keep = lambda k: not set(k.split(".")) & set(NON_RESULT_KEYS)
  missing = object()
  lines = []
  for k in sorted(set(a) | set(b)):
    if keep(k) and a.get(k, missing) != b.get(k, missing):
      show = lambda v: "(absent)" if v is missing else json.dumps(v)
      lines.append(f"{k}: {show(a.get(k, missing))} -> {show(b.get(k, missing))}")
  return lines


def _writable(path: str) -> bool:
  """Whether `path` (or, if it does not exist, its nearest existing parent) can be written."""
  p = os.path.abspath(path)
  while not os.path.exists(p):
    p = os.path.dirname(p)
  return os.access(p, os.W_OK | os.X_OK)


def check_run(workdir: str, config, overwrite: bool = False) -> str:
  """What opening `workdir` for `config` will do: "new", "resume" or "overwrite".

  Raises RunError, having touched nothing, when the directory cannot be used:
  a file, not writable, a different config, or a non-empty directory that is
  not a run.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise RunError(f"workdir {workdir} is a file, not a directory")
  if not _writable(workdir):
    raise RunError(f"workdir {workdir} is not writable")
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return "new"
  if overwrite:
    return "overwrite"
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    raise RunError(f"workdir {workdir} is not empty and holds no {CONFIG}: not a jaxprune run; "
                   "choose a new directory (or --overwrite to empty it)")
  diff = config_diff(read_json(path), config_json(config))
  if diff:
    raise RunError(f"workdir {workdir} holds a run with a different config "
                   f"({len(diff)} {'key differs' if len(diff) == 1 else 'keys differ'}: "
                   + "; ".join(diff) +
                   "); use another --workdir, or --overwrite to start afresh")
  return "resume"


def open_run(workdir: str, config, overwrite: bool = False) -> str:
  """Check `workdir` (see `check_run`), empty it if overwriting, write config.json.

  Returns "new", "resume" or "overwrite".
  """
  action = check_run(workdir, config, overwrite)
  try:
    if action == "overwrite":
      shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    if action != "resume":
      atomic_write_text(os.path.join(workdir, CONFIG), json.dumps(config_json(config), indent=2))
  except OSError as e:  # e.g. a read-only file system, where even root cannot write
    raise RunError(f"cannot write to workdir {workdir}: {e.strerror or e}") from None
  return action


def load_config(run: str) -> ml_collections.ConfigDict:
  path = os.path.join(run, CONFIG)
  if not os.path.exists(path):
    raise RunError(f"{run} is not a jaxprune run (no {CONFIG})")
  return ml_collections.ConfigDict(read_json(path))


def restore(run: str, round: Optional[int] = None, slot: str = "best"):
  """(model, variables, masks, config) of a run's checkpoint.

  `round` selects a round of a pruning run (default: its last finished one;
  a round still running has checkpoints too, which the pipeline verifies);
  plain runs have no rounds. `slot` is "best" (the epoch `fit` selected) or
  "last". `variables` is {"params", "batch_stats"} with masks already applied.
  """
  if slot not in SLOTS:
    raise RunError(f"unknown checkpoint slot {slot!r}; valid: {', '.join(SLOTS)}")
  config = load_config(run)
  if is_pruning_run(run):
    rounds = list_rounds(run)
    if round is None:
      if not rounds:
        raise RunError(f"{run}: no finished round yet")
      round = rounds[-1]
    elif round not in rounds and not os.path.isdir(
        os.path.join(round_dir(run, round), CHECKPOINTS, slot)):
      raise RunError(f"{run}: round {round} is not finished; finished rounds: {rounds}")
  elif round is not None:
    raise RunError(f"{run} is a plain training run: it has no rounds")
  with checkpoints_of(stage_dir(run, round), (slot,)) as ckpts:
    state, _ = ckpts.restore(slot)
  model = models.create(config.model, num_classes=data.NUM_CLASSES)
  masks = state.get("masks") or {}
  variables = {"params": models.apply_masks(state["params"], masks),
               "batch_stats": state.get("batch_stats") or {}}
  return model, variables, masks, config
