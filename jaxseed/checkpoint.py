"""Checkpoints of the training state with orbax-checkpoint.

orbax writes each checkpoint into a temporary folder and renames it when
complete, so a kill during a save leaves the previous checkpoints as they were.
No key is stored: every draw is a function of (seed, position), so the position
(epoch, step in epoch) is all a resumed run needs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save and restore (state, progress) pairs; keeps the last ``max_to_keep``.

    ``progress`` is a JSON-able dict: epoch, next step in that epoch, global
    step, and the epoch's running metric sums.
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, state: Any, progress: dict) -> None:
        # Leaves by position: restoring into the structure of a fresh state needs
        # nothing of the pytree's own node types.
        leaves = {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}
        self.manager.save(progress["global_step"], force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(leaves), progress=ocp.args.JsonSave(progress)))

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """(state, progress) of the newest readable checkpoint, shaped like ``like``.

        An unreadable checkpoint is moved to ``<directory>-unreadable/`` (kept for
        inspection, out of the way of new saves), reported on stderr, and the
        previous one tried.
        """
        leaves, treedef = jax.tree.flatten(like)
        target = {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()))
            except Exception as error:  # corrupt or partial files: any reader error
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
                aside = os.path.join(f"{self.directory}-unreadable", str(step))
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                os.replace(os.path.join(self.directory, str(step)), aside)
                self.manager.reload()
                print(f"jaxseed: checkpoint at step {step} is unreadable ({reason}); moved to {aside}, "
                      "trying the previous one", file=sys.stderr)
                continue
            state = jax.tree.unflatten(treedef, [restored.state[key] for key in sorted(target)])
            return state, dict(restored.progress)
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
