"""A study's plan: groups of runs, the seeds of each run, and which runs a shard owns. Pure.

Groups of K runs each: one per chosen stream (only that stream's seed varies, the others stay at
the base seed); ``all`` (every stream varies together); ``none`` (K reruns of the base seeds,
each its own program: the determinism control, whose spread must be exactly zero).
"""

from __future__ import annotations

from jaxseed import streams
from jaxseed.errors import UserError

GROUPS = ("all", "none")  # the groups beside the streams': no stream may take their names


def run_name(group: str, index: int) -> str:
    return f"{group}-{index:03d}"


def plan_groups(base_seed: int, num_seeds: int, chosen: tuple[str, ...], used: tuple[str, ...]) -> dict:
    """group name -> the stream seeds of each of its ``num_seeds`` runs.

    Run k of a varied group gets seed base_seed + 1 + k on the varied stream(s),
    so no varied run repeats the base configuration.
    """
    for name in (*chosen, *used):
        if name in GROUPS:
            raise UserError(f"{name!r} names a study's group, not a stream; name the stream otherwise")
    base = streams.resolve_seeds(base_seed, None, used)
    for name in chosen:
        streams.resolve_seeds(base_seed, {name: base_seed}, used)  # unknown or unused stream: UserError
    groups = {name: [{**base, name: streams.check_seed(base_seed + 1 + k)} for k in range(num_seeds)]
              for name in chosen}
    groups["all"] = [{name: streams.check_seed(base_seed + 1 + k) for name in base} for k in range(num_seeds)]
    groups["none"] = [dict(base) for _ in range(num_seeds)]
    return groups


def programs(group: str, runs: list[int], together: bool) -> list[list[int]]:
    """The runs of ``group`` (indices) trained as one program each: ``together`` (vmap) a varied
    group's runs at once, but every ``none`` run alone, so the determinism control compares separate
    compilations and executions (replicas of one program would agree trivially)."""
    if together and group != "none":
        return [runs] if runs else []
    return [[k] for k in runs]


def shard_runs(groups: dict, shard: tuple[int, int], together: bool) -> dict[str, list[int]]:
    """The runs of shard I of N, group -> run indices. The plan is cut into units, a run each, but
    ``together`` a varied group's K runs as one (``programs``: split, its parts would be other
    programs); the j-th unit (groups in the plan's order) belongs to shard j mod N, so the N shards
    are disjoint and cover the plan."""
    index, count = shard
    units = [(name, runs) for name, group in groups.items()
             for runs in programs(name, list(range(len(group))), together)]
    mine = {name: [] for name in groups}
    for j, (name, runs) in enumerate(units):
        if j % count == index:
            mine[name] += runs
    return mine
