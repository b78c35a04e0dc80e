"""orbax checkpoints of the whole train state: `last` and `best`, each written atomically.

orbax writes a step directory under a temporary name and renames it when
complete, so a run killed mid-save keeps the previous checkpoint intact.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """One CheckpointManager per slot ("last", "best"), each keeping a single step."""

  def __init__(self, directory: str, slots=("last", "best")):
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

  def restore(self, slot: str, like: Any, step: Optional[int] = None):
    """(state, meta) of the slot's latest step, shaped and sharded like `like`."""
    step = self.latest_step(slot) if step is None else step
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    out = self.managers[slot].restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def close(self):
    for m in self.managers.values():
      m.close()
