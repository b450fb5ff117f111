"""Command-line flags shared by jaxseed's entry points; turns them into a Config."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from jaxseed import streams
from jaxseed.config import AUGMENTATIONS, BINARIZATIONS, DATASETS, LOOPS, MODELS, Config
from jaxseed.errors import UserError
from jaxseed.objectives import OBJECTIVES


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def train_parser(prog: str = "python -m jaxseed.train") -> argparse.ArgumentParser:
    """Flags of a training run. Defaults live in Config; a flag left out keeps it."""
    d = Config()
    p = OneLineParser(prog=prog, description="Train on MNIST with named, separately seeded key streams.")
    p.add_argument("--seed", type=str, default=None,
                   help=f"seed of every stream, an integer in [0, {streams.MAX_SEED}] (default 0)")
    p.add_argument("--stream", action="append", default=[], type=_stream_override, metavar="NAME=SEED",
                   help=f"override one stream's seed; repeatable. Streams: {', '.join(streams.STREAMS)}")
    p.add_argument("--model", choices=MODELS, help=f"model (default {d.model})")
    p.add_argument("--epochs", type=int_at_least(1), help=f"training epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int_at_least(1), help=f"examples per step (default {d.batch_size})")
    p.add_argument("--lr", type=_positive_float, help=f"peak learning rate of AdamW (default {d.learning_rate})")
    p.add_argument("--data", choices=DATASETS, help=f"data set (default {d.data})")
    p.add_argument("--data-dir", help="read raw IDX files (train-images-idx3-ubyte[.gz], ...) from this folder "
                                      "instead of tensorflow-datasets; needs no network")
    p.add_argument("--train-limit", type=int_at_least(1), help="train on the first N training examples")
    p.add_argument("--augment", choices=AUGMENTATIONS,
                   help=f"on-device augmentation from the 'augment' stream (default {d.augment})")
    p.add_argument("--binarize", choices=BINARIZATIONS,
                   help=f"VAE inputs: Bernoulli draws from the 'augment' stream, or a fixed 0.5 threshold "
                        f"(default {d.binarize})")
    p.add_argument("--latents", type=int_at_least(1), help=f"VAE latent dimensions (default {d.latents})")
    p.add_argument("--loop", choices=LOOPS, help="how steps are compiled: unrolled in one jit or lax.scan "
                                                 "(default auto: per backend)")
    p.add_argument("--steps-per-call", type=int_at_least(1), help="training steps per jitted call "
                                                                   "(default: per backend)")
    p.add_argument("--checkpoint-every", type=int_at_least(1),
                   help="also checkpoint every N steps (default: at the end of each epoch only)")
    p.add_argument("--trace", action="store_const", const=True,
                   help="write trace.jsonl: each step's loss and parameter checksum (for jaxseed.diff)")
    p.add_argument("--workdir", help="output folder (default: a new folder under ./runs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its latest checkpoint, bit for bit")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a workdir that already holds a run (its checkpoints are deleted)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


_FIELD_OF_FLAG = {"lr": "learning_rate"}  # every other flag is named as its Config field
_CONFIG_FIELDS = {field.name for field in dataclasses.fields(Config)}


def _changes(args: argparse.Namespace) -> dict:
    """Config fields set explicitly on the command line (a flag left out is None)."""
    changes = {_FIELD_OF_FLAG.get(flag, flag): value for flag, value in vars(args).items()
               if value is not None and _FIELD_OF_FLAG.get(flag, flag) in _CONFIG_FIELDS}
    if changes.get("data_dir"):
        changes["data_dir"] = os.path.abspath(changes["data_dir"])  # the manifest must work from anywhere
    return changes


def _seeds(args: argparse.Namespace, config: Config) -> tuple[int, dict[str, int]]:
    overrides = {}
    for name, seed in args.stream:
        if name in overrides:
            raise UserError(f"stream {name!r} is given twice with --stream")
        overrides[name] = seed
    seed = streams.check_seed(args.seed if args.seed is not None else 0, "--seed")
    return seed, streams.resolve_seeds(seed, overrides, OBJECTIVES[config.model].streams)


def resolve(args: argparse.Namespace) -> tuple[Config, int, dict[str, int]]:
    """(config, base seed, seed of every stream) from parsed flags; UserError on bad input."""
    config = Config().replace(**_changes(args))
    return (config, *_seeds(args, config))


def resolve_resume(args: argparse.Namespace, workdir: str) -> tuple[Config, dict[str, int]]:
    """The config and seeds recorded in ``workdir``; UserError if a given flag differs."""
    try:
        with open(os.path.join(workdir, "manifest.json")) as f:
            recorded = json.load(f)
        config, seeds = Config(**recorded["config"]), {k: int(v) for k, v in recorded["streams"].items()}
    except FileNotFoundError:
        raise UserError(f"{workdir} holds no run to resume (no manifest.json)") from None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserError(f"cannot read the manifest in {workdir}: {error}") from None
    differences = [f"{field} is {getattr(config, field)!r} in the run, {value!r} given"
                   for field, value in _changes(args).items() if getattr(config, field) != value]
    if args.seed is not None or args.stream:
        given = _seeds(args, config)[1]
        differences += [f"seed of stream {name!r} is {seeds.get(name)} in the run, {given[name]} given"
                        for name in given if seeds.get(name) != given[name]]
    if differences:
        raise UserError(f"cannot resume {workdir} with other settings: " + "; ".join(differences))
    return config, seeds


def prepare_workdir(workdir: str | None, config: Config, seed: int, overwrite: bool = False) -> tuple[str, bool]:
    """Create the run's folder; refuse one that holds a run unless ``overwrite``.

    Returns (path, whether this call created it).
    """
    if workdir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        workdir = os.path.join("runs", f"{config.model}-{config.data}-seed{seed}-{stamp}")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} exists and is not a folder")
    if os.path.exists(os.path.join(workdir, "manifest.json")) and not overwrite:
        raise UserError(f"workdir {workdir} already holds a run; pass --overwrite or choose another --workdir")
    created = not os.path.exists(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create workdir {workdir}: {error.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"workdir {workdir} is not writable")
    return workdir, created
