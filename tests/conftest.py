import os

import pytest

from jaxseed.config import Config

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.normpath(os.path.join(PROJECT_ROOT, "..", "shared", "data", "mnist"))


@pytest.fixture
def tiny_config() -> Config:
    """Two epochs of four steps on the synthetic set: one compiled call per epoch."""
    return Config(data="synthetic", train_limit=256, batch_size=64, epochs=2, steps_per_call=4)
