"""Checkpoints of the training state with orbax-checkpoint.

orbax writes each checkpoint into a temporary folder and renames it when
complete, so a kill or a full disk during a save leaves the previous checkpoints
as they were. The state is saved as the named pytree (``params``, ``opt_state``,
``step``) and restored against the abstract target, so a checkpoint is readable
by name. No key is stored: every draw is a function of (seed, position), so the
position (epoch, step in epoch) is all a resumed run needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxseed import mesh
from jaxseed.errors import UserError, one_line


def _reason(error: BaseException) -> str:
    """The OS error behind a failed write, as the OS words it (tensorstore reports its code), else the first line."""
    code = re.search(r"os_error_code='(\d+)'", str(error))
    return os.strerror(int(code.group(1))) if code else one_line(error)


@contextlib.contextmanager
def _quiet_orbax():
    """orbax logs a failed write's traceback from its writer thread before raising it here,
    where it becomes one line: hold that log back."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _is_orphaned_write(unraisable: Any) -> bool:
    """A tensorstore write that ends after orbax's save loop has closed on an earlier failed write.

    orbax runs a synchronous save on a fresh asyncio loop and closes it when the
    first write fails; the other writes still in flight then finish on
    tensorstore's threads and find no loop to report to. Their result is moot
    (the save already failed as one UserError), but Python prints each as an
    unraisable traceback, at any moment up to exit.
    """
    frames = unraisable.exc_traceback
    while frames is not None and frames.tb_next is not None:
        frames = frames.tb_next
    return (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
            and frames is not None and frames.tb_frame.f_code.co_name == "_check_closed")


def _drop_orphaned_writes() -> None:
    """Drops only those reports (see ``_is_orphaned_write``); every other one goes to the hook before."""
    previous = sys.unraisablehook
    if getattr(previous, "jaxseed_orphaned_writes", False):
        return

    def hook(unraisable):
        if not _is_orphaned_write(unraisable):
            previous(unraisable)

    hook.jaxseed_orphaned_writes = True
    sys.unraisablehook = hook


class Checkpointer:
    """Save and restore (state, progress) pairs; keeps the last ``max_to_keep``.

    ``progress`` is a JSON-able dict: epoch, next step in that epoch, global
    step, and the epoch's running metric sums. Saves are synchronous: a failed
    write (no space, quota, permission) is raised by the save that made it, as a
    UserError, never later from a background thread.
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        _drop_orphaned_writes()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
                "state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()})
        except (OSError, ValueError) as error:
            raise UserError(f"cannot open the checkpoints in {self.directory}: {one_line(error)}") from None

    def save(self, state: Any, progress: dict) -> None:
        try:
            with _quiet_orbax():
                self.manager.save(progress["global_step"], force=True, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))
        except Exception as error:  # orbax/tensorstore report a failed write in their own error types
            raise UserError(f"cannot write a checkpoint in {self.directory} at step {progress['global_step']}: "
                            f"{_reason(error)}; the checkpoints saved before are kept: free space, then resume "
                            "with --resume") from None

    def _is_named(self, step: int, like: Any) -> bool:
        """Whether the checkpoint at ``step`` holds ``like``'s fields by name (an older jaxseed saved
        positional leaves, "00000", ...)."""
        return set(self.manager.item_metadata(step)["state"].keys()) == set(like._fields)

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """(state, progress) of the newest readable checkpoint, shaped and placed like ``like``.

        A checkpoint whose files cannot be read is moved to ``<directory>-unreadable/``
        by the writing process (kept for inspection, out of the way of new saves),
        reported on stderr, and the previous one tried. One written by an older
        jaxseed (positional leaves) is refused in one line.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                if not self._is_named(step, like):
                    raise UserError(f"the checkpoint at step {step} in {self.directory} was written by an older "
                                    "jaxseed (or holds another model); it cannot be resumed: start afresh with "
                                    "--overwrite")
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore()))
                error = None
            except (OSError, ValueError, KeyError, TypeError) as failure:  # missing, corrupt or partial files
                error = failure
            if mesh.any_process(error is not None):  # every process skips it together
                self._set_aside(step, error)
                continue
            return restored.state, dict(restored.progress)
        return None

    def _set_aside(self, step: int, error: BaseException | None) -> None:
        aside = os.path.join(f"{self.directory}-unreadable", str(step))
        if mesh.is_writer():
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), aside)
            reason = one_line(error) if error else "on another process"
            print(f"jaxseed: checkpoint at step {step} is unreadable ({reason}); moved to {aside}, trying the "
                  "previous one", file=sys.stderr)
        mesh.wait_for_all(f"checkpoint {step} set aside")
        self.manager.reload()

    def close(self) -> None:
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()
