"""Shared set-up of the experiments: a small config, seeds, a scratch folder.

MNIST comes the way it comes for users: downloaded once into the cache (set
JAXSEED_MNIST_MIRROR to a local copy to run offline).
"""

import os
import tempfile

from jaxseed import streams
from jaxseed.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))


def small_config(**changes) -> Config:
    """The CNN on the first 4096 MNIST images for two epochs: seconds per run on a CPU."""
    return Config(train_limit=4096, epochs=2, **changes)


def seeds(base: int = 0, **overrides) -> dict:
    return {**{name: base for name in streams.STREAMS}, **overrides}


def scratch(name: str) -> str:
    return tempfile.mkdtemp(prefix=f"jaxseed-{name}-")


def write_result(folder: str, lines: list[str]) -> None:
    """The experiment's result as README.md in its folder, and on stdout."""
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
