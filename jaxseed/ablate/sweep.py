"""An ablation's sweep: what it trains (config, objective, plan of groups, strategy), where, and
whether a study folder or records file holds this sweep (its configuration less paths, its plan;
how it computes)."""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import jax

from jaxseed import cli, entry, machine, manifest, objective, rundir, streams
from jaxseed.ablate.strategy import choose_strategy
from jaxseed.config import Config
from jaxseed.errors import UserError
from jaxseed.study import plan

PROG = "python -m jaxseed.ablate"


class Sweep(NamedTuple):
    """What one ablation trains, how, and where."""

    config: Config
    objective: objective.Objective
    groups: dict  # group -> seeds of each run
    strategy: str  # resolved: sequential or vmap
    workdir: str
    header: dict  # what sweep.json records


def run_dir(workdir: str, group: str, index: int) -> str:
    return os.path.join(workdir, "runs", plan.run_name(group, index))

def plan_sweep(config: Config, found: objective.Objective, num_seeds: int, chosen: tuple[str, ...] | None = None,
               base_seed: int | str = 0, strategy: str = "auto", workdir: str | None = None) -> Sweep:
    """The sweep of ``found``: K = ``num_seeds`` runs per group, varying the ``chosen`` streams
    (default: every stream it uses); UserError on bad input. Touches no file."""
    # No persistent compilation cache here: the `none` group's runs must each compile their own program.
    entry.start_jax(config, compilation_cache=False)  # before jax.default_backend() starts JAX
    used = found.run_streams
    base_seed = streams.check_seed(base_seed, "--base-seed")
    # By default every stream this config draws from (varying one it does not draw would change no bit).
    groups = plan.plan_groups(base_seed, num_seeds, chosen or found.drawn_streams(config), used)
    strategy, strategy_reason = choose_strategy(strategy, jax.default_backend())
    workdir = workdir or os.path.join("runs", f"ablation-{cli.run_name(config)}-{time.strftime('%Y%m%d-%H%M%S')}")
    # JSON objects have no order: the groups' order, which decides what each shard runs, is kept beside them.
    header = {"config": manifest.config_record(config, workdir), "groups_planned": groups,
              "group_order": list(groups), "strategy": strategy,
              "strategy_reason": strategy_reason,
              "base_seed": base_seed, **manifest.environment()}
    return Sweep(config, found, groups, strategy, workdir, header)


def recorded_sweep(workdir: str, args) -> Sweep:
    """The sweep ``workdir`` holds, for ``--report``; the data and a user's objective are named by
    the flags where the record alone may not choose them (``manifest.config_from_record``)."""
    given = cli.config_changes(args)
    extra = sorted(set(given) - set(cli.RELOCATED))
    if extra:
        raise UserError("--report takes the study's settings from its sweep.json; drop "
                        + ", ".join("--" + name.replace("_", "-") for name in extra))
    try:
        recorded = rundir.read_json(workdir, "sweep.json")
    except FileNotFoundError:
        raise UserError(f"{workdir} holds no study (no sweep.json)") from None
    relocated = {name: value for name, value in given.items() if name in cli.RELOCATED}
    config = manifest.config_from_record(recorded.get("config"), workdir, **relocated)
    found = objective.resolve(config.model)
    groups = recorded.get("groups_planned")
    if not isinstance(groups, dict) or "none" not in groups or not all(isinstance(g, list) for g in groups.values()):
        raise UserError(f"{workdir}/sweep.json holds no plan of groups")
    order = recorded.get("group_order")
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(groups):  # a study of an older jaxseed
        order = sorted(groups, key=lambda name: (name in ("all", "none"), name == "none"))  # varied, all, none
    names = streams.seed_names(found.run_streams)
    groups = {str(name): [manifest.seeds_from_record(seeds, workdir, names) for seeds in groups[name]]
              for name in order}
    return Sweep(config, found, groups, str(recorded.get("strategy")), workdir, recorded)

def _on(groups, drawn: tuple[str, ...]):
    """A plan's seeds of the ``drawn`` streams only: the others draw nothing (and a plan recorded
    before a stream existed has no seed for it)."""
    if not isinstance(groups, dict):
        return groups
    return {name: [{stream: seeds.get(stream) for stream in drawn} if isinstance(seeds, dict) else seeds
                   for seeds in group] if isinstance(group, list) else group for name, group in groups.items()}


# What determines a study's results, beside its plan. Paths are not among them (the data's hash is):
# a study moves between folders and machines. The settings of how it computes (ARITHMETIC) must also
# match for runs to be added beside recorded ones; a study whose every run is recorded recomputes
# its report from them whatever they are.
PATHS = ("data_dir", "data")
ARITHMETIC = ("portable", "cpu_threads", "deterministic", "loop", "steps_per_call", "eval_batch_size", "devices",
              "mesh")
ENVIRONMENT = ("strategy", "backend", "versions", "xla_flags")


def _question(header: dict, names: list[str]) -> dict:
    """A study's configuration of the fields ``names`` (a field recorded before it existed: its default)."""
    config = header.get("config") if isinstance(header.get("config"), dict) else {}
    defaults = Config().to_dict()
    return {name: config.get(name, defaults.get(name)) for name in names}


def _first(pairs) -> str | None:
    return next((f"{name}: {there!r} there, {here!r} here" for name, there, here in pairs if there != here), None)


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def plan_difference(recorded: dict, header: dict, drawn: tuple[str, ...]) -> str | None:
    """The first difference between a recorded study's question (configuration less paths and
    ARITHMETIC, plan of groups) and this one's, said as "WHAT: A there, B here"; None if the same."""
    names = [name for name in header["config"] if name not in (*PATHS, *ARITHMETIC)]  # this objective's settings too
    here = _question(header, names)
    return _first([*((_flag(name), value, here[name]) for name, value in _question(recorded, names).items()),
                   ("the plan of groups and seeds", _on(recorded.get("groups_planned"), drawn),
                    _on(header["groups_planned"], drawn)),
                   ("the order of groups", recorded.get("group_order", header["group_order"]), header["group_order"])])


def arithmetic_difference(recorded: dict, header: dict, environment: bool) -> str | None:
    """The first difference in how two studies compute: their ARITHMETIC settings (less ``cpu_threads``
    where both compute the same bits on any pool: ``machine.pool_free``), and with ``environment`` the
    ENVIRONMENT they recorded."""
    config = recorded.get("config") if isinstance(recorded.get("config"), dict) else {}
    pool_free = (machine.pool_free(config.get("portable") is True, recorded.get("xla_flags"))
                 and machine.pool_free(header["config"]["portable"], header.get("xla_flags")))
    names = [name for name in ARITHMETIC if not (name == "cpu_threads" and pool_free)]
    return _first([*((_flag(name), config.get(name), header["config"][name]) for name in names),
                   *((name, recorded.get(name), header.get(name)) for name in ENVIRONMENT if environment)])

def open_sweep(sweep: Sweep) -> rundir.RunFolder:
    """Claim the sweep's folder (shared with the other shards of one study): start it, or check that
    the one there is this sweep, run the same way."""
    study = rundir.RunFolder.claim(sweep.workdir, "study", resume=True)
    try:
        if study.create_json("sweep.json", sweep.header):  # of shards starting together, one writes it
            return study
        recorded = rundir.read_json(sweep.workdir, "sweep.json")
        differs = (plan_difference(recorded, sweep.header, sweep.objective.drawn_streams(sweep.config))
                   or arithmetic_difference(recorded, sweep.header, environment=False))
        if differs:
            raise UserError(f"{sweep.workdir} holds a different sweep ({differs}); choose another --workdir")
        # Runs of one group made by other programs would not be comparable (vmap sums in another order).
        ran = (recorded.get("strategy"), recorded.get("backend"))
        if ran != (sweep.strategy, sweep.header["backend"]):
            raise UserError(f"the sweep in {sweep.workdir} ran with strategy {ran[0]} on backend {ran[1]}, this one "
                            f"would use {sweep.strategy} on {sweep.header['backend']}; finish it with --strategy "
                            f"{ran[0]} on that backend, or choose another --workdir")
    except BaseException:
        study.release()
        raise
    return study
