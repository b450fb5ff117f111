import os

import pytest

from jaxseed import machine
from jaxseed.config import Config

# Tests read and write nothing outside the repository and their temporary folders: no persistent
# compilation cache in ~/.cache (the CLI's default) for them or the commands they start.
os.environ["JAXSEED_COMPILATION_CACHE"] = ""
# The tests compile hundreds of tiny programs and run each for milliseconds, so LLVM's optimisation
# of XLA's generated code costs them more than it saves (a tiny run's first call: 17.8 s at the
# default level, 9.6 s at 0, here). Dots and convolutions run in XLA's kernel library either way,
# and what the tests compare (runs of one configuration against each other, files, errors) holds
# at any level. The commands they start inherit it; the portability check, which is about the
# compiled code, runs without it (tests/test_portable.py).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
# Before any test starts JAX, as the CLI does: the default thread pool and XLA flags of every run, so
# that runs trained in this process compute what the commands the tests start compute.
machine.require_flags(Config())


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the whole session, in a temporary folder: the
    commands the tests start (and the CLI called in-process) compile the same tiny programs
    again and again, and a cached program is the same program (same bits). Where a test is
    about compiling (the cache itself, ablate's determinism control, verify), the code under
    test turns it off or names its own."""
    folder = tmp_path_factory.mktemp("xla-cache")
    os.environ["JAXSEED_COMPILATION_CACHE"] = str(folder)
    machine.use_compilation_cache()  # this process's own compiles too (xdist workers share them)
    yield folder
    os.environ["JAXSEED_COMPILATION_CACHE"] = ""

# pytest-xdist hands each worker whole modules (--dist loadscope: a module's fixtures train once) in
# collection order (--no-loadscope-reorder, pyproject.toml); the longest first, so that no worker
# still runs a long module while the other has nothing left. Each module's tests' seconds summed,
# from a run of the whole suite on 2 cores (pytest --durations=0, 2026-12-03); the rest are short.
MODULE_SECONDS = {"test_machine.py": 111, "test_experiments.py": 85, "test_portable.py": 189, "test_benchmarks.py": 180, "test_resume.py": 105, "test_train.py": 104,
                  "test_study.py": 73, "test_ablate.py": 67, "test_examples.py": 59, "test_devices.py": 49,
                  "test_vae.py": 48, "test_rundir.py": 44, "test_processes.py": 40, "test_notebook.py": 35}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))  # stable: a module's own order is kept


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first 2000 training and 500 test examples of MNIST, cut by tests/data/cut_mnist_slice.py.
MNIST_SLICE_DIR = os.path.join(PROJECT_ROOT, "tests", "data", "mnist-slice")


# Two epochs of four steps on the synthetic set: one compiled call per epoch.
TINY_CONFIG = Config(data="synthetic", train_limit=256, batch_size=64, epochs=2, steps_per_call=4)


@pytest.fixture
def tiny_config() -> Config:
    return TINY_CONFIG
