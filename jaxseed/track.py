"""Experiment trackers: each run's config, stream seeds, metrics per epoch and manifest, in
TensorBoard or MLflow, beside the run folder jaxseed writes.

``--log tensorboard`` writes TensorBoard event files under ``--tensorboard-dir`` (default
``runs/tensorboard``), one folder per run: ``tensorboard --logdir runs/tensorboard``.
``--log mlflow`` logs one MLflow run per jaxseed run to the tracking store MLflow itself
chooses (``MLFLOW_TRACKING_URI``, else MLflow's default local store; no server to start),
in the experiment ``jaxseed``. A study's runs carry the tags ``group`` (the stream it
varies, ``all`` or ``none``) and ``study``, so a tracker's UI groups them by source.
Both libraries are optional (``pip install -e ".[track]"``) and imported only when asked for.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import NamedTuple

from jaxseed.errors import UserError, one_line

TRACKERS = ("tensorboard", "mlflow")
_MODULES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}
EXPERIMENT = "jaxseed"


class Log(NamedTuple):
    """Where a loop's runs are logged besides their folders."""

    trackers: tuple[str, ...]  # of TRACKERS
    tensorboard_dir: str = os.path.join("runs", "tensorboard")
    tags: tuple[dict, ...] = ()  # each replica's (a study's group and name); none for a plain run


def parse(value: str) -> tuple[str, ...]:
    """``--log`` or ``log=``: tracker names, comma-separated ("" for none), each installed: checked before a
    run starts."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        try:
            importlib.import_module(_MODULES[name])
        except ImportError:
            raise UserError(f"{name} needs {_MODULES[name]}: pip install -e \".[track]\"") from None
    return names


class TensorBoard:
    """One run's event files, written by tensorboardX (no TensorFlow needed)."""

    def __init__(self, folder: str, name: str, tags: dict):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=os.path.join(folder, name))
        self.tags = tags

    def start(self, config: dict, seeds: dict) -> None:
        self.writer.add_text("config", _code(config))
        self.writer.add_text("seeds", _code({**seeds, **self.tags}))

    def epoch(self, row: dict) -> None:
        for name, value in row.items():
            if name not in ("epoch", "step"):
                self.writer.add_scalar(name, value, row["epoch"])
        self.writer.flush()

    def finish(self, manifest: dict) -> None:
        self.writer.add_text("manifest", _code(manifest))
        self.writer.close()


class MLflow:
    """One MLflow run, through MLflow's client (the store MLflow resolves, as its users expect)."""

    def __init__(self, name: str, tags: dict):
        import mlflow

        self.client = mlflow.MlflowClient()
        found = self.client.get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else self.client.create_experiment(EXPERIMENT)
        self.run = self.client.create_run(experiment, run_name=name, tags={f"jaxseed.{k}": str(v) for k, v in tags.items()})
        self.id = self.run.info.run_id

    def start(self, config: dict, seeds: dict) -> None:
        params = {**{f"config.{k}": json.dumps(v) for k, v in config.items()}, **{f"seed.{k}": v for k, v in seeds.items()}}
        for name, value in params.items():
            self.client.log_param(self.id, name, value)

    def epoch(self, row: dict) -> None:
        for name, value in row.items():
            if name not in ("epoch", "step"):
                self.client.log_metric(self.id, name, value, step=row["epoch"])

    def finish(self, manifest: dict) -> None:
        self.client.log_dict(self.id, manifest, "manifest.json")
        self.client.set_terminated(self.id)


def _code(data: dict) -> str:
    return "    " + json.dumps(data, indent=1, default=str).replace("\n", "\n    ")  # markdown code block


def log_finished(log: Log, run_name: str, tags: dict, settings: dict, seeds: dict, metrics: dict,
                 record: dict) -> None:
    """A finished run of a study of your own function, whose epochs jaxseed does not see: its
    settings, stream seeds, final metrics (logged once, at step 0) and ``record``."""
    for tracker in open_trackers(log, run_name, tags):
        tracker.start(settings, seeds)
        tracker.epoch({"epoch": 0, **metrics})
        tracker.finish(record)


def open_trackers(log: Log, run_name: str, tags: dict) -> list:
    """A tracker of each kind ``log`` names for the run ``run_name``; one line if one cannot start."""
    trackers = []
    for name in log.trackers:
        try:
            trackers.append(TensorBoard(log.tensorboard_dir, run_name, tags) if name == "tensorboard" else
                            MLflow(run_name, tags))
        except Exception as error:  # the tracker's store cannot be opened: one line, not its traceback
            raise UserError(f"--log {name}: cannot start logging ({one_line(error, with_type=True)})") from None
    return trackers
