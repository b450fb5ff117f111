"""Command-line flags shared by jaxseed's entry points; turns them into a Config."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from jaxseed import manifest, objective, rundir, streams, track, userimport
from jaxseed.config import NPZ, Config, npz_path
from jaxseed.config import fields as config_fields
from jaxseed.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2; with ``add_config_flags``,
    the flags of the settings of the objective that --model (--objective) names are added as it parses."""

    objective_settings = False  # add_config_flags sets it

    def parse_known_args(self, args=None, namespace=None):
        if self.objective_settings:
            self.objective_settings = False
            model = _model_named(sys.argv[1:] if args is None else args)
            try:
                own = objective.resolve(model).settings
            except UserError as error:
                self.error(str(error))
            _add_fields(self.add_argument_group(f"settings of the model {model} (its objective's own)"), own)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def _stream_override(text: str) -> tuple[str, str]:
    name, sep, seed = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SEED, got {text!r}")
    return name.strip(), seed.strip()


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def number(expected: str, check):
    """An argparse type: a float for which ``check`` holds, else a one-line usage error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return value

    return parse


def shard(text: str) -> tuple[int, int]:
    """An argparse type: ``I/N``, share I (0 ... N-1) of N."""
    index, _, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"I/N needs 0 <= I < N, got {text!r}")
    return index, count


EXIT_CODES = ("exit codes: 0 done; 1 verify or diff found a difference; 2 bad input or a failed write (one line "
              "on stderr, nothing you had is changed); 3 non-finite loss; 130 interrupted (train saves a "
              "checkpoint, ablate keeps its finished runs)")
_ALIASES = {"learning_rate": ["--lr"], "model": ["--objective"]}


def _parse_as(kind: type):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None

    return parse


def add_config_flags(parser: OneLineParser) -> None:
    """One flag per Config field, named after it (``--batch-size`` sets ``batch_size``), and one per
    setting of the objective the command line names (added when it is parsed: ``OneLineParser``).

    A flag left out stays None, so the default applies; values are checked when the Config is built
    (``config_from_args``).
    """
    _add_fields(parser.add_argument_group("settings (each a field of jaxseed.config.Config)"), Config)
    parser.objective_settings = True


def _add_fields(group, settings: type) -> None:
    """A flag for each field of the Settings class ``settings``."""
    for name, (field, kind, _) in config_fields(settings).items():
        names = [f"--{name.replace('_', '-')}", *_ALIASES.get(name, [])]
        help_text = f"{field.metadata['help']} (default {field.default})"
        if kind is bool:
            group.add_argument(*names, dest=name, action="store_const", const=True, help=help_text)
        else:
            group.add_argument(*names, dest=name, type=_parse_as(kind), choices=field.metadata["choices"],
                               help=help_text)


DEFAULT_MODEL = Config.__dataclass_fields__["model"].default


def _model_named(argv: list[str]) -> str:
    """The model that --model or --objective names in ``argv`` (the default where neither does)."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--model", "--objective", dest="model", default=DEFAULT_MODEL)
    return peek.parse_known_args(argv)[0].model


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix must not pass for another flag (--seed for ablate's --seeds).
    return OneLineParser(prog=prog, description=description, epilog=EXIT_CODES, allow_abbrev=False)


def train_parser(prog: str = "python -m jaxseed.train") -> argparse.ArgumentParser:
    """Flags of a training run: the seeds, every Config field, the workdir and run control."""
    p = new_parser(prog, "Train a model with named, separately seeded key streams.")
    p.add_argument("--seed", type=str, default=None,
                   help=f"seed of every stream, an integer in [0, {streams.MAX_SEED}] (default 0)")
    p.add_argument("--stream", action="append", default=[], type=_stream_override, metavar="NAME=SEED",
                   help=f"override one stream's seed; repeatable. Streams: {', '.join(streams.STREAMS)}, and "
                        "those your objective declares")
    p.add_argument("--workdir", help="output folder (default: a new folder under ./runs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its latest checkpoint, bit for bit")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a workdir that already holds a run (exactly the files a run writes are "
                        "deleted first)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_log_flags(p)
    add_process_flags(p)
    add_config_flags(p)
    return p


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """Where runs are logged besides their folders (jaxseed.track)."""
    group = parser.add_argument_group("experiment trackers (pip install -e \".[track]\")")
    group.add_argument("--log", type=_parse_log, default=(), metavar="TRACKERS",
                       help=f"also log each run's config, seeds, metrics per epoch and manifest to these trackers, "
                            f"comma-separated: {', '.join(track.TRACKERS)} (MLflow's store: MLFLOW_TRACKING_URI, "
                            "else its default)")
    group.add_argument("--tensorboard-dir", default=track.Log(()).tensorboard_dir,
                       help="TensorBoard's event files go here, a folder per run (default: %(default)s)")


def _parse_log(text: str) -> tuple[str, ...]:
    try:
        return track.parse(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def log_from_args(args: argparse.Namespace, tags: tuple[dict, ...] = ()) -> track.Log | None:
    return track.Log(args.log, args.tensorboard_dir, tags) if args.log else None


def add_process_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of a run spread over several processes (hosts); see jaxseed.mesh."""
    group = parser.add_argument_group("several processes (all three, on every process; without them JAX's "
                                      "auto-detection joins a Cloud TPU pod or a Slurm job)")
    group.add_argument("--coordinator-address", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=int_at_least(1), help="how many processes take part")
    group.add_argument("--process-id", type=int_at_least(0), help="this process's number, from 0")


def config_changes(args: argparse.Namespace) -> dict:
    """Config fields and the objective's settings set explicitly on the command line (a flag left out is None)."""
    names = {*config_fields(Config), *config_fields(objective.resolve(getattr(args, "model", None) or
                                                                         DEFAULT_MODEL).settings)}
    changes = {name: value for name, value in vars(args).items() if value is not None and name in names}
    if changes.get("data_dir"):
        changes["data_dir"] = os.path.abspath(changes["data_dir"])
    if npz_path(changes.get("data")):  # a run folder records it relative to itself
        changes["data"] = NPZ + os.path.abspath(npz_path(changes["data"]))
    return changes


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config the flags ask for; UserError if a value is not valid."""
    return Config().replace(**config_changes(args))


def _seeds(args: argparse.Namespace, used: objective.Objective) -> tuple[int, dict[str, int]]:
    overrides = {}
    for name, seed in args.stream:
        if name in overrides:
            raise UserError(f"stream {name!r} is given twice with --stream")
        overrides[name] = seed
    seed = streams.check_seed(args.seed if args.seed is not None else 0, "--seed")
    return seed, streams.resolve_seeds(seed, overrides, used.run_streams)


def resolve(args: argparse.Namespace) -> tuple[Config, objective.Objective, int, dict[str, int]]:
    """(config, its objective, base seed, seed of every stream) from parsed flags; UserError on bad input."""
    config = config_from_args(args)
    found = objective.resolve(config.model)
    return (config, found, *_seeds(args, found))


# Given on --resume or to verify, these name where the data and the objective are now; the run's
# data hash (checked when training resumes) and its parameter hashes say whether they are the same.
RELOCATED = ("data_dir", "data", "model")


def resolve_resume(args: argparse.Namespace, workdir: str) -> tuple[Config, objective.Objective, dict[str, int]]:
    """The config, objective and seeds recorded in ``workdir``; UserError if a given flag differs.

    ``--data-dir``, ``--data`` and ``--objective`` may be given: they name where
    the data and the objective are now (``manifest.config_from_record``).
    """
    try:
        recorded = rundir.read_manifest(workdir)
    except FileNotFoundError:
        raise UserError(f"{workdir} holds no run to resume (no manifest.json)") from None
    given = config_changes(args)
    config = manifest.config_from_record(recorded["config"], workdir, **{name: given.get(name) for name in RELOCATED})
    found = objective.resolve(config.model)
    seeds = manifest.seeds_from_record(recorded["streams"], workdir, streams.seed_names(found.run_streams))
    recorded = config.to_dict()
    differences = [f"{field} is {recorded.get(field)!r} in the run, {value!r} given"
                   for field, value in given.items() if field not in RELOCATED and recorded.get(field) != value]
    if "model" in given and userimport.recorded_name(given["model"]) != userimport.recorded_name(config.model):
        differences.append(f"model is {config.model!r} in the run, {given['model']!r} given")
    if args.seed is not None or args.stream:
        given, drawn = _seeds(args, found)[1], found.drawn_streams(config)  # the others draw nothing
        differences += [f"seed of stream {name!r} is {seeds.get(name)} in the run, {given[name]} given"
                        for name in drawn if seeds.get(name) != given[name]]
    if differences:
        raise UserError(f"cannot resume {workdir} with other settings: " + "; ".join(differences))
    return config, found, seeds


def run_name(config: Config) -> str:
    """The model and data of a run, as a folder name: ``cnn-mnist``, ``resnet-npz-train``."""
    def short(text: str) -> str:
        return os.path.splitext(os.path.basename(text.rstrip("/")))[0]

    model = short(userimport.split_name(config.model)[0] or config.model)
    data = short(npz_path(config.data)) if npz_path(config.data) else config.data
    return f"{model}-{data}".replace(":", "-")


def default_workdir(config: Config, seed: int) -> str:
    """A new folder under ./runs/ named after the run."""
    return os.path.join("runs", f"{run_name(config)}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}")


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a study, ``jaxseed.ablate``'s and ``jaxseed.study``'s alike."""
    parser.add_argument("--seeds", type=int_at_least(2), default=5, help="runs per group, K (default 5)")
    parser.add_argument("--base-seed", type=str, default="0",
                        help=f"seed of every stream not varied, an integer in [0, {streams.MAX_SEED}] (default 0)")
    parser.add_argument("--workdir", help="output folder; the same one again completes an unfinished study "
                                          "(default: a new folder under ./runs/)")
    parser.add_argument("--shard", type=shard, default=(0, 1), metavar="I/N",
                        help="run only share I (0 ... N-1) of the plan's runs, so that N processes, hosts or a "
                             "Slurm job array on one shared --workdir finish one study together (default 0/1)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the report of the runs --workdir holds that have finished")
    parser.add_argument("--detect", type=number("> 0", lambda value: 0 < value < math.inf), metavar="DELTA",
                        help="a difference in the mean of the report's first metric (for jaxseed's classifiers test "
                             "accuracy, else test loss): the report states the seeds per configuration a two-sided "
                             "5%% t test needs to detect it with 80%% power")
    parser.add_argument("--correlation", type=number("in [-1, 1)", lambda value: -1 <= value < 1), metavar="R",
                        help="correlation of two configurations' results on the same seeds, as "
                             "experiments/fair_comparison measures it: the report adds the paired design (default: "
                             "unpaired only)")
    parser.add_argument("--records", metavar="FILE",
                        help="a records.npz of this study (the compact file every study writes beside its report): "
                             "the finished runs it holds are restored into --workdir and not trained again, so a "
                             "study continues on another machine or in a later session")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def study_outcome(markdown: str | None, workdir: str, files: str) -> None:
    """Print a study's report and where its ``files`` are, or that no group has two runs yet."""
    if markdown is None:
        print(f"no group of {workdir} has two finished runs yet: no report (the other shards' runs complete it; "
              "then --report)")
    else:
        print(markdown + f"\nreport in {workdir}: {files}")


def study_interrupted(given_workdir: str | None, workdir: str) -> str:
    """What an interrupted study says: its finished runs are kept, and how to complete it."""
    again = "the same command" if given_workdir else f"it with --workdir {workdir}"
    return f"interrupted; finished runs are kept: rerun {again} to complete the study"
