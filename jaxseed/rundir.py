"""A run folder: the one module that claims, writes and reads what a run leaves in its workdir.

A workdir is new, empty, or a jaxseed folder, recognised by its marker file
``.jaxseed`` (written first); anything else is refused. The marker is also the
lock: a run holds an exclusive ``flock`` on it for its whole lifetime, so a
second run on the same folder is refused with the holder's name, and the OS
releases the claim when the process dies (SIGKILL leaves no stale claim). A
study's folder is claimed shared: the shards of one study (``ablate --shard``)
work in it at once, each run in its own exclusively claimed run folder, while a
run can claim it no more than another run's.

Writes never follow a link nor leave the folder: whole files are written under a
unique temporary name in the folder (``mkstemp``: O_EXCL) and renamed over the
target (a rename replaces a link, it does not write through it); appends open
with O_NOFOLLOW; sub-folders (checkpoints) must be real folders. A failed write
(no space, quota, permission) is a UserError naming the path and the OS error.

Reads of files jaxseed did not just write (a colleague's run, a crafted folder)
are bounded and checked: no link followed, a size cap, JSON rows validated,
``.npy`` headers checked before the body is read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Callable, Iterable

import numpy as np

from jaxseed import npyfile
from jaxseed.errors import UserError

MARKER = ".jaxseed"
# Exactly what a run and a study write: --overwrite removes these and nothing else.
OUTPUTS = {
    "run": ("manifest.json", "metrics.jsonl", "trace.jsonl", "curves.png", "samples.png", "reconstructions.png",
            "test_losses.npy", "test_probabilities.npy", "checkpoints", "checkpoints-unreadable"),
    "study": ("sweep.json", "study.json", "ablation.json", "ablation.csv", "ablation.md", "ablation.png",
              "unstable.png", "records.npz", "runs"),
}
# Fields every row must have, checked whenever a file is read back.
METRICS_FIELDS = {"epoch": int, "step": int}
TRACE_FIELDS = {"step": int, "epoch": int, "loss": (int, float), "param_checksum": int}
MANIFEST_FIELDS = {"config": dict, "streams": dict}
_HOLDER_BYTES = 512  # the marker's record, padded with spaces (JSON allows them)
MAX_JSON_BYTES = 64 << 20  # a manifest, a metrics or trace file of a very long run stays far below
# mkstemp makes files private (0600); a run's files get the modes the user's umask gives any file.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _os_error(path: str, error: OSError, doing: str = "write") -> UserError:
    reason = error.strerror or str(error)
    if error.errno == errno.ELOOP:
        reason = "it is a symbolic link, which jaxseed never follows"
    return UserError(f"cannot {doing} {path}: {reason}")


class RunFolder:
    """A claimed workdir. Writing methods do nothing on a process that does not write
    (every process but one of a multi-process run): every process can call them alike."""

    def __init__(self, path: str, kind: str, lock: int | None, writes: bool, made: tuple[bool, bool] = (False, False)):
        self.path, self.kind, self._lock, self.writes = path, kind, lock, writes
        self._made_folder, self._made_marker = made

    # ---------------------------------------------------------------- claiming

    @classmethod
    def claim(cls, path: str, kind: str = "run", *, resume: bool = False, overwrite: bool = False,
              writer: bool = True) -> "RunFolder":
        """Claim ``path`` for this process's lifetime (until ``release``).

        Fresh start (neither flag): the folder may not hold a finished or started
        run. ``resume``: continue what is there (or start, if nothing is).
        ``overwrite``: remove exactly the files a run writes, then start afresh.
        On a process that does not write, nothing is checked or claimed.
        """
        if not writer:
            return cls(path, kind, None, writes=False)
        made_folder = not os.path.lexists(path)
        if not made_folder and not os.path.isdir(path):
            raise UserError(f"workdir {path} exists and is not a folder")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create workdir {path}: {error.strerror}") from None
        marker = os.path.join(path, MARKER)
        try:
            entries = os.listdir(path)
        except OSError as error:
            raise _os_error(path, error, "read") from None
        if MARKER not in entries and entries:  # a folder of the user's: not ours to write into
            raise UserError(f"workdir {path} holds files jaxseed did not write ({', '.join(sorted(entries)[:3])}"
                            f"{', ...' if len(entries) > 3 else ''}); choose a new or empty folder")
        if os.path.islink(marker) or (MARKER in entries and not os.path.isfile(marker)):
            raise UserError(f"workdir {path}: {MARKER} is not a file jaxseed wrote; choose another folder")
        made_marker = MARKER not in entries
        try:
            lock = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            if made_folder:
                shutil.rmtree(path, ignore_errors=True)
            raise _os_error(marker, error) from None
        folder = cls(path, kind, lock, writes=True, made=(made_folder, made_marker))
        try:
            fcntl.flock(lock, (fcntl.LOCK_SH if kind == "study" else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock)
            os.close(lock)
            raise UserError(f"workdir {path} is in use by {holder}; wait for it to finish or choose another "
                            "--workdir") from None
        try:
            folder._check_and_clear(resume, overwrite)
            _write_holder(lock, kind)
        except BaseException:
            folder.release()
            raise
        return folder

    def _check_and_clear(self, resume: bool, overwrite: bool) -> None:
        recorded = _read_holder(self._lock, field="kind")
        others = [kind for kind, names in OUTPUTS.items() if kind != self.kind and any(
            os.path.lexists(self.file(name)) for name in names if name not in OUTPUTS[self.kind])]
        if recorded not in (None, self.kind) or others:
            found = others[0] if others else recorded  # a run's folder holding a study's files names the study
            raise UserError(f"workdir {self.path} holds a jaxseed {found}, not a {self.kind}")
        holds = any(os.path.lexists(self.file(name)) for name in OUTPUTS[self.kind])
        if holds and not (resume or overwrite):
            raise UserError(f"workdir {self.path} already holds a {self.kind}; pass --overwrite to start afresh, "
                            "--resume to continue it, or choose another --workdir")
        if overwrite:
            self.remove_outputs()

    def remove_outputs(self) -> None:
        """Remove exactly what a run writes (known names, temporary files of theirs), never following a link."""
        names = OUTPUTS[self.kind]
        for entry in os.listdir(self.path):
            temporary = entry.startswith(".") and entry[1:].split(".tmp.")[0] in names and ".tmp." in entry
            if entry not in names and not temporary:
                continue
            target = os.path.join(self.path, entry)
            try:
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)  # removes links inside, never what they point to
                else:
                    os.unlink(target)
            except OSError as error:
                raise _os_error(target, error, "remove") from None

    def release(self) -> None:
        """Give up the claim. A claim that left nothing but its marker leaves nothing at all."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            if self._made_marker and os.listdir(self.path) == [MARKER]:
                os.unlink(os.path.join(self.path, MARKER))
                if self._made_folder:
                    os.rmdir(self.path)
        os.close(self._lock)  # releases the flock
        self._lock = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ---------------------------------------------------------------- writing

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _replace(self, name: str, write: Callable[[Any], None], mode: str = "w", exclusive: bool = False) -> bool:
        """Write ``name`` whole: into a fresh temporary file beside it, then renamed over it, or with
        ``exclusive`` hard-linked to it (atomic, and refused where it exists). Whether it was written."""
        if not self.writes:
            return False
        target = self.file(name)
        try:
            fd, temporary = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(name)}.tmp.")
        except OSError as error:
            raise _os_error(target, error) from None
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            with os.fdopen(fd, mode) as f:
                write(f)
            (os.link if exclusive else os.replace)(temporary, target)
            return True
        except FileExistsError:  # only os.link meets an existing target
            return False
        except OSError as error:
            raise _os_error(target, error) from None
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)

    def write_json(self, name: str, data: dict) -> None:
        self._replace(name, lambda f: f.write(_json_text(data)))

    def create_json(self, name: str, data: dict) -> bool:
        """Write ``name`` only if it does not exist yet: of several processes creating it at once,
        exactly one does. Whether this one did."""
        return self._replace(name, lambda f: f.write(_json_text(data)), exclusive=True)

    def write_text(self, name: str, text: str) -> None:
        self._replace(name, lambda f: f.write(text))

    def write_lines(self, name: str, rows: Iterable[dict]) -> None:
        self._replace(name, lambda f: f.writelines(json.dumps(row) + "\n" for row in rows))

    def append_lines(self, name: str, rows: Iterable[dict]) -> None:
        if not self.writes:
            return
        target = self.file(name)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        except OSError as error:
            raise _os_error(target, error) from None

    def save_array(self, name: str, array: np.ndarray) -> None:
        self._replace(name, lambda f: np.save(f, np.asarray(array), allow_pickle=False), mode="wb")

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Several arrays in one compressed ``.npz``, whole or not at all."""
        self._replace(name, lambda f: np.savez_compressed(f, **arrays), mode="wb")

    def save_picture(self, name: str, draw: Callable[[Any], None]) -> None:
        """``draw(file)`` writes a PNG into an open binary file."""
        self._replace(name, draw, mode="wb")

    def folder(self, name: str) -> str:
        """A real sub-folder of the run, ``name`` relative to it (made if missing); a link or a
        file on the way is refused."""
        target = self.path
        for part in name.split(os.sep):
            target = os.path.join(target, part)
            if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
                raise UserError(f"{target} is not a folder jaxseed made (a link or a file); remove it or choose "
                                "another --workdir")
            if self.writes and not os.path.lexists(target):
                try:
                    os.mkdir(target)
                except FileExistsError:  # made by another shard of the study a moment ago: checked again
                    if os.path.islink(target) or not os.path.isdir(target):
                        raise UserError(f"{target} is not a folder jaxseed made (a link or a file); remove it or "
                                        "choose another --workdir") from None
                except OSError as error:
                    raise _os_error(target, error) from None
        return target

    def kept_lines(self, name: str, keep: Callable[[dict], bool], fields: dict) -> list[dict]:
        """The JSON lines of ``name`` that ``keep`` accepts (a resumed run redoes the others).
        A last line cut short by a kill is dropped with the rest that is redone."""
        return [row for row in read_lines(self.path, name, fields, cut_tail=True) if keep(row)]


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _read_holder(lock: int, field: str = "holder") -> Any:
    try:
        recorded = json.loads(os.pread(lock, 4096, 0) or b"{}")
        return recorded.get(field) if isinstance(recorded, dict) else None
    except (OSError, ValueError):
        return None if field != "holder" else "another process"


def _write_holder(lock: int, kind: str) -> None:
    """Who holds the claim, for the message a refused run prints (written under the lock, in place:
    the lock is on this file, so it must not be replaced by a rename)."""
    holder = f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    # One write of a fixed length, never a truncation: the shards of a study, which share the claim,
    # may write it at once, and each leaves a whole record.
    text = json.dumps({"kind": kind, "holder": holder[:400]}).ljust(_HOLDER_BYTES).encode()
    try:
        os.pwrite(lock, text, 0)
    except OSError as error:
        raise UserError(f"cannot write the workdir's {MARKER}: {error.strerror}") from None


# ---------------------------------------------------------------- reading any run folder


def _open_for_reading(path: str, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise
        raise _os_error(path, error, "read") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"cannot read {path}: larger than {limit >> 20} MB")
    return data


def _check_fields(row: Any, fields: dict, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object")
    for key, kind in fields.items():
        value = row.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise UserError(f"{where}: field {key!r} is missing or not of the expected type")
    return row


def read_json(folder: str, name: str, fields: dict | None = None) -> dict:
    """A JSON object of a run folder; FileNotFoundError if absent, UserError if not what jaxseed writes."""
    path = os.path.join(folder, name)
    try:
        value = json.loads(_open_for_reading(path, MAX_JSON_BYTES))
    except (ValueError, RecursionError) as error:
        raise UserError(f"cannot read {path}: not valid JSON ({str(error)[:80]})") from None
    return _check_fields(value, fields or {}, path)


def read_lines(folder: str, name: str, fields: dict, cut_tail: bool = False) -> list[dict]:
    """The rows of a JSON-lines file, each checked to have ``fields``; [] if absent.

    ``cut_tail``: stop at the first row that does not parse (a line cut short by a
    kill, and whatever follows it) instead of refusing the file.
    """
    path = os.path.join(folder, name)
    try:
        text = _open_for_reading(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            rows.append(_check_fields(json.loads(line), fields, f"{path} line {number}"))
        except (ValueError, RecursionError, UserError) as error:
            if cut_tail:
                break
            raise UserError(f"cannot read {path} line {number}: "
                            f"{error if isinstance(error, UserError) else 'not valid JSON'}") from None
    return rows


def read_manifest(folder: str, finished: bool = False) -> dict:
    """A run's manifest.json, checked to be one jaxseed writes (and, with ``finished``, of a finished run)."""
    recorded = read_json(folder, "manifest.json", MANIFEST_FIELDS)
    if finished:
        if recorded.get("status") != "finished":
            raise UserError(f"the run in {folder} has not finished; nothing to compare")
        _check_fields(recorded, {"param_hash": str}, os.path.join(folder, "manifest.json"))
    return recorded


def read_metrics(folder: str) -> list[dict]:
    return read_lines(folder, "metrics.jsonl", METRICS_FIELDS)


def read_trace(folder: str) -> list[dict]:
    return read_lines(folder, "trace.jsonl", TRACE_FIELDS)


def load_array(folder: str, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """An ``.npy`` file of a run, refused unless its header says ``dtype`` and ``shape``
    (checked before the body is read, so a crafted header costs nothing)."""
    path = os.path.join(folder, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            found_shape, fortran, found_dtype = npyfile.header(f)
            if found_shape != tuple(shape) or found_dtype != np.dtype(dtype) or fortran:
                raise ValueError(f"holds {found_dtype}{list(found_shape)}, expected {np.dtype(dtype)}{list(shape)}")
            array = np.fromfile(f, dtype=dtype, count=int(np.prod(shape)))
            if array.size != int(np.prod(shape)) or f.read(1):
                raise ValueError("its size does not match its header")
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    return array.reshape(shape)
