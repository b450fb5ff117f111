"""Shared set-up of the experiments: the command line, a small config, seeds, a scratch folder,
and the verdict each draws from its own result.

MNIST comes the way it comes for users: downloaded once into the cache, or read from
``--data-dir`` with no network. ``--tiny`` runs an experiment in seconds on a few hundred
examples and checks the same claim: tests/test_experiments.py runs each experiment that way,
so that none can break unnoticed.
"""

import argparse
import os
import tempfile
from typing import Callable, NamedTuple

from jaxseed import cli, entry, streams
from jaxseed.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))


def parser(script: str, doc: str, data_dir: str | None = None) -> argparse.ArgumentParser:
    """The flags every experiment takes (a usage error is one line, as for jaxseed's commands);
    ``script`` is the experiment's run.py, whose folder is the default --out, ``doc`` its docstring,
    ``data_dir`` the default --data-dir (None: the download cache)."""
    parser = cli.OneLineParser(prog=os.path.basename(script), description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("--data-dir", metavar="DIR", default=data_dir,
                        help="read MNIST's four IDX files from DIR, with no network (default: "
                             f"{data_dir or 'download them once into the cache'})")
    parser.add_argument("--tiny", action="store_true",
                        help="a few hundred examples and few runs, seconds on a CPU: what the tests run")
    parser.add_argument("--out", metavar="DIR", default=os.path.dirname(os.path.abspath(script)),
                        help="write README.md and the figures here (default: the experiment's folder, whose "
                             "README is the committed result)")
    return parser


def main(parser: argparse.ArgumentParser, experiment: Callable[[argparse.Namespace], object], argv=None) -> int:
    """Exit code of ``experiment(args)``: 0, or like every jaxseed command one stderr line and 2 on bad
    input (no data offline, a wrong --data-dir)."""
    args = parser.parse_args(argv)

    def run() -> int:
        experiment(args)
        return 0

    return entry.run(parser.prog, run)


def start_jax() -> None:
    """Before the first JAX computation, as every jaxseed command: the XLA flags and thread pool
    every run takes (the experiments keep Config's defaults for them), and the compilation cache."""
    entry.start_jax(Config(), compilation_cache=True)


def small_config(args: argparse.Namespace, **changes) -> Config:
    """The CNN on the first 4096 MNIST images for two epochs: seconds per run on a CPU.
    --tiny: one epoch of 8 steps, on the first 256 in batches of 32."""
    sizes = {"train_limit": 256, "batch_size": 32, "epochs": 1} if args.tiny else {"train_limit": 4096, "epochs": 2}
    return Config(data_dir=args.data_dir, **sizes).replace(**changes)


def seeds(base: int = 0, **overrides) -> dict:
    return {**{name: base for name in streams.STREAMS}, **overrides}


def scratch(name: str) -> tempfile.TemporaryDirectory:
    """A folder for an experiment's runs, deleted at its end: what they show goes into its README."""
    return tempfile.TemporaryDirectory(prefix=f"jaxseed-{name}-")


class Verdict(NamedTuple):
    """Whether an experiment's claim held, with the measured findings that decide it."""

    claim: str
    held: bool
    findings: str

    @property
    def conclusion(self) -> str:
        """The README's conclusion: never fixed text, so a claim that stops holding says so."""
        return f"**The claim {'held' if self.held else 'FAILED'}**: {self.claim}. {self.findings}"


def judge(claim: str, checks: list[tuple[bool, str]]) -> Verdict:
    """``claim`` holds when every check does; each check is (passed, what was measured), and the
    findings name the failed ones first."""
    failed = [text for passed, text in checks if not passed]
    passed = [text for passed, text in checks if passed]
    if not failed:
        return Verdict(claim, True, f"Measured: {'; '.join(passed)}.")
    return Verdict(claim, False, f"Not so: {'; '.join(failed)}." + (f" Held: {'; '.join(passed)}." if passed else ""))


def epochs(config: Config) -> str:
    return f"{config.epochs} epoch{'s' * (config.epochs != 1)}"


def write_result(folder: str, lines: list[str]) -> None:
    """The experiment's result as README.md in ``folder``, and on stdout."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
