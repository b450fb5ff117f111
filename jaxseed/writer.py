"""What a training loop writes: the R run folders of its replicas, written together.

One ``RunWriter`` per loop owns every write into its replicas' folders (claimed for
the loop's lifetime, ``rundir.RunFolder``): the manifests, each epoch's metrics line,
the trace, and the final files; and what goes to experiment trackers (``track``). The
loop hands it values with a leading replica axis and never zips per-replica lists
itself. Only the writing process writes.
"""

from __future__ import annotations

import os
from typing import Callable

import jax

from jaxseed import manifest, mesh, outputs, plots, rundir, track
from jaxseed.errors import UserError


class RunWriter:
    """The run folders of R replicas, replica r in ``folders[r]``."""

    def __init__(self, folders: list[rundir.RunFolder], log: track.Log | None = None):
        self.folders = folders
        self.log = log
        self.infos: list[dict] = []  # each replica's manifest
        self.histories: list[list[dict]] = [[] for _ in folders]  # each replica's metrics lines
        self.trackers: list[list] = [[] for _ in folders]  # each replica's

    @classmethod
    def claim(cls, workdirs: list[str], resume: bool, overwrite: bool, log: track.Log | None = None) -> RunWriter:
        """Claim every replica's folder on the writing process; a refusal stops every process."""
        folders, refused = [], None
        try:
            for workdir in workdirs:
                folders.append(rundir.RunFolder.claim(workdir, resume=resume, overwrite=overwrite,
                                                      writer=mesh.is_writer()))
        except UserError as error:
            refused = error
        if mesh.any_process(refused is not None):
            for folder in folders:
                folder.release()
            raise refused or UserError(f"process 0 could not start the run in {workdirs[0]}")
        return cls(folders, log)

    def release(self) -> None:
        for folder in self.folders:
            folder.release()

    @property
    def writes(self) -> bool:
        return self.folders[0].writes

    @property
    def paths(self) -> list[str]:
        return [folder.path for folder in self.folders]

    def start(self, infos: list[dict], epochs_done: int, steps_done: int | None) -> None:
        """Write each replica's manifest (``infos``, status running), and keep only the metrics
        lines of the first ``epochs_done`` epochs and, where ``steps_done`` is given (--trace),
        the trace lines of the first ``steps_done`` steps: what a resumed run has already done."""
        if self.log and self.writes:  # first: a tracker that cannot start leaves the folders as they were
            tags = self.log.tags or ({},) * len(self.folders)
            names = ["/".join(filter(None, (tag.get("study"), os.path.basename(folder.path))))
                     for tag, folder in zip(tags, self.folders)]
            self.trackers = [track.open_trackers(self.log, name, tag) for name, tag in zip(names, tags)]
        self.infos = infos
        self.histories = [folder.kept_lines("metrics.jsonl", lambda row: row["epoch"] <= epochs_done,
                                            rundir.METRICS_FIELDS) for folder in self.folders]
        for folder, history, info in zip(self.folders, self.histories, infos):
            folder.write_lines("metrics.jsonl", history)
            if steps_done is not None:
                folder.write_lines("trace.jsonl", folder.kept_lines("trace.jsonl", lambda row: row["step"] < steps_done,
                                                                    rundir.TRACE_FIELDS))
            folder.write_json("manifest.json", info)
        for trackers, info in zip(self.trackers, infos):  # a resumed run logs anew from where it resumes
            for tracker in trackers:
                tracker.start(info["config"], info["streams"])

    def trace(self, first_step: int, epoch: int, steps: dict) -> None:
        """Append each step's loss and parameter checksum (``steps``: float[n, R], uint32[n, R])."""
        for r, folder in enumerate(self.folders):
            folder.append_lines("trace.jsonl", [
                {"step": first_step + j, "epoch": epoch + 1, "loss": float(steps["loss"][j, r]),
                 "param_checksum": int(steps["param_checksum"][j, r])} for j in range(len(steps["loss"]))])

    def end_epoch(self, rows: list[dict]) -> None:
        """Each replica's metrics line of the epoch just evaluated, replica r's in ``rows[r]``."""
        for folder, history, trackers, row in zip(self.folders, self.histories, self.trackers, rows):
            history.append(row)
            folder.write_lines("metrics.jsonl", history)
            for tracker in trackers:
                tracker.epoch(row)

    def finish(self, final_params, fingerprints: list[outputs.Fingerprints], examples: dict,
               panels: dict, finish_objective: Callable) -> list[dict]:
        """Each replica's final files: curves, per-test-example outputs, the objective's pictures
        (``finish_objective(params) -> (manifest fields, {name: (images, columns)})``) and the
        finished manifest; returns the manifests."""
        for r, (info, folder, history) in enumerate(zip(self.infos, self.folders, self.histories)):
            params = jax.tree.map(lambda leaf: leaf[r], final_params)
            info.update(status="finished", param_hash=manifest.tree_hash(params),
                        fingerprints=fingerprints[r].summary(info["init_param_hash"]),
                        final=history[-1] if history else None)
            if not folder.writes:
                continue
            folder.save_picture("curves.png", lambda f: plots.plot_curves(history, f, panels))
            for name, values in examples.items():  # for comparing runs example by example (ablate's instability)
                folder.save_array(f"test_{name}.npy", values[r])
            added, pictures = finish_objective(params)
            for name, (images, columns) in pictures.items():
                folder.save_picture(name, lambda f: plots.save_grid(images, f, columns))
            info.update(added)
            folder.write_json("manifest.json", info)
            for tracker in self.trackers[r]:
                tracker.finish(info)
        return self.infos
