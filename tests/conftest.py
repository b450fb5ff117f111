import os

import pytest

from jaxseed.config import Config

# Tests read and write nothing outside the repository: no persistent compilation cache in
# ~/.cache (the CLI's default) for them or the commands they start.
os.environ["JAXSEED_COMPILATION_CACHE"] = ""

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first 2000 training and 500 test examples of MNIST, cut by tests/data/cut_mnist_slice.py.
MNIST_SLICE_DIR = os.path.join(PROJECT_ROOT, "tests", "data", "mnist-slice")


@pytest.fixture
def tiny_config() -> Config:
    """Two epochs of four steps on the synthetic set: one compiled call per epoch."""
    return Config(data="synthetic", train_limit=256, batch_size=64, epochs=2, steps_per_call=4)
