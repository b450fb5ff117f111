import collections
import json
import os

import pytest

from jaxseed import machine
from jaxseed.config import Config

# Tests read and write nothing outside the repository and their temporary folders: no persistent
# compilation cache in ~/.cache (the CLI's default) for them or the commands they start.
os.environ["JAXSEED_COMPILATION_CACHE"] = ""
# The tests compile hundreds of tiny programs and run each for milliseconds, so LLVM's full optimisation
# of XLA's generated code costs them more than it saves. Level 1: a tiny CLI run (256 images, 1 epoch)
# took 12.3 s against 16.6 s at the default level, and 2 epochs of 2048 images 23.2 s against 28.4 s;
# level 0 was fastest when YNNPACK ran most ops, but with XLA's own convolutions and elementwise code
# (issue 33) its step took 433 ms against 62 (13.8 s and 29.1 s). Dots and convolutions run in kernel
# libraries at any level, and what the tests compare (runs of one configuration against each other,
# files, errors) holds at any level. The commands they start inherit it; the portability check, which
# is about the compiled code, runs without it (tests/test_portable.py).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=1".strip()


def fresh_shell_xla_flags() -> str:
    """XLA_FLAGS as a shell that never ran jaxseed has them: the suite's without jaxseed's fusion flag."""
    flags = os.environ["XLA_FLAGS"]
    return " ".join(flag for flag in flags.split() if flag not in machine._fusion_flags(flags))


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
# collection order (--no-loadscope-reorder, pyproject.toml): the longest first, so that no worker still
# runs a long module while the other has nothing left. How long each module takes is what the last
# full run measured: `pytest --record-durations` writes it to tests/durations.json.
DURATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help=f"write each test module's seconds to {DURATIONS}, the order of later runs")


def pytest_collection_modifyitems(items):
    try:
        with open(DURATIONS) as f:
            seconds = json.load(f)
    except (OSError, ValueError):
        seconds = {}
    items.sort(key=lambda item: -seconds.get(item.path.name, 0))  # stable: a module's own order is kept


class DurationRecorder:
    """Each module's seconds (setup, call and teardown of its tests), as the reports reach the controller."""

    def __init__(self):
        self.seconds = collections.Counter()

    def pytest_runtest_logreport(self, report):
        self.seconds[os.path.basename(report.fspath)] += report.duration

    def pytest_sessionfinish(self, session):
        with open(DURATIONS, "w") as f:
            json.dump({name: round(value, 1) for name, value in self.seconds.most_common()}, f, indent=0)
            f.write("\n")


def pytest_configure(config):
    if config.getoption("record_durations") and not hasattr(config, "workerinput"):  # the controller only
        config.pluginmanager.register(DurationRecorder(), "jaxseed-durations")


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first 2000 training and 500 test examples of MNIST, cut by tests/data/cut_mnist_slice.py.
MNIST_SLICE_DIR = os.path.join(PROJECT_ROOT, "tests", "data", "mnist-slice")


# Two epochs of four steps on the synthetic set: one compiled call per epoch.
TINY_CONFIG = Config(data="synthetic", train_limit=256, batch_size=64, epochs=2, steps_per_call=4)


@pytest.fixture
def tiny_config() -> Config:
    return TINY_CONFIG
