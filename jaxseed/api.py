"""Python entry points, for notebooks and scripts: train and ablate any objective.

    from jaxseed import api
    manifest = api.train("cnn", seed=42, epochs=2, train_limit=10_000)
    manifest = api.train(MY_OBJECTIVE, seed=0, streams={"depth": 7}, data="npz:my_data.npz")
    report = api.ablate(MY_OBJECTIVE, seeds=5, epochs=1)

The objective is an ``Objective`` object (defined in the notebook itself), a built-in
model's name, or ``package.module:NAME``; keyword settings are ``Config`` fields and the
objective's own settings (``dropout_rate=0.3`` for the CNN). Both
write the same run and study folders as the command line.
"""

from __future__ import annotations

from jaxseed import ablate as ablation
from jaxseed import cli, entry, loop, objective, track
from jaxseed.streams import resolve_seeds
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.objective import Objective


def _objective(found: Objective | str) -> Objective:
    return objective.check(found, found.name) if isinstance(found, Objective) else objective.resolve(found)


def _config(found: Objective, settings: dict) -> Config:
    """The Config of ``found`` with ``settings``: its own settings from their defaults (an object
    defined in a notebook has no name to be found by)."""
    return Config(model=found.name, settings=found.settings()).replace(**settings)


def _log(log: str) -> track.Log | None:
    return track.Log(track.parse(log)) if log else None


def train(model: Objective | str = "cnn", *, seed: int = 0, streams: dict[str, int] | None = None,
          workdir: str | None = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
          log: str = "", **settings) -> dict:
    """Train one run of ``model``; returns its manifest (``final`` holds the last epoch's metrics).

    Args:
      seed: the seed of every stream; ``streams`` overrides some by name ({"dropout": 7}).
      workdir: the run folder (default: a new one under ./runs/); ``resume``, ``overwrite`` as on the CLI.
      log: experiment trackers to log to as well, as ``--log`` ("tensorboard", "mlflow", or both, comma-separated).
      settings: ``Config`` fields and the objective's own settings, e.g. ``epochs=2, data="npz:my.npz",
        augment="crop_flip", dropout_rate=0.3``.
    """
    found = _objective(model)
    config = _config(found, settings)
    seeds = resolve_seeds(seed, streams, found.run_streams)
    entry.start_jax(config, compilation_cache=True)
    return loop.train_and_evaluate(config, seeds, workdir or cli.default_workdir(config, seed), progress=progress,
                                   resume=resume, overwrite=overwrite, objective=found, log=_log(log))


def ablate(model: Objective | str = "cnn", *, seeds: int = 5, vary: tuple[str, ...] | None = None, base_seed: int = 0,
           strategy: str = "auto", workdir: str | None = None, quiet: bool = True, log: str = "", **settings) -> str:
    """Vary each stream of ``model`` alone (``vary``: which; default every stream it draws from),
    K = ``seeds`` runs per group, plus the ``all`` and ``none`` groups; returns the report
    (markdown). The same ``workdir`` again completes an unfinished study. ``log`` as in ``train``:
    each run is tagged with its study and group."""
    if not isinstance(seeds, int) or seeds < 2:
        raise UserError(f"seeds must be an integer >= 2 (a spread needs two runs), got {seeds!r}")
    found = _objective(model)
    config = _config(found, settings)
    sweep = ablation.plan_sweep(config, found, seeds, vary, base_seed, strategy, workdir)
    with ablation.open_sweep(sweep) as study:
        return ablation.run_sweep(sweep, study, quiet, log=_log(log))
